"""Provisioners: how execution agents come to exist (host process, container, ...)."""

from __future__ import annotations

from .base import AgentHandle, AgentSpec, Provisioner
from .local import LocalProvisioner

__all__ = ["AgentHandle", "AgentSpec", "LocalProvisioner", "Provisioner"]
