"""The broker: kernel registry, routing, liveness, idle expiry, provisioning."""

from __future__ import annotations

from .server import Broker, run_foreground

__all__ = ["Broker", "run_foreground"]
