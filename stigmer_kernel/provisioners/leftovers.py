"""What dead servers left on the engine: their containers (network holders included) and
networks, removed by the next server's check at start (and again until the engine answers)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..runtime import RuntimeDir
from .container import LABEL_KERNEL_ID, LABEL_RUNTIME, LABEL_SERVER
from .engine import ping_engine
from .netns import LABEL_NETNS, LABEL_ROLE, ROLE_NETNS
from .network import reap_networks

log = logging.getLogger("stigmer.sandbox")


def reap_leftovers(
    client: Callable[[], Any], server: str, keep: set[str], before: float | None
) -> int | None:
    """Remove containers left by servers that are not running (server ``server``'s past
    included), except those of kernels in ``keep`` (kernel or container ids being re-adopted),
    the holders whose namespace those joined, containers created at or after ``before`` (by
    this very server meanwhile) and the still running containers of another runtime
    directory's server (it may be restarting): of its network holders, those a running sandbox
    joined, or all while that server runs. Returns how many went, or None if the engine could
    not be asked (the caller tries again later)."""
    removed = 0
    unreachable, _ = ping_engine()  # a hung engine costs a few seconds, not the client's 120
    if unreachable is not None:
        log.info("no leftover check yet: %s", unreachable)
        return None
    try:
        containers = client().containers.list(
            all=True, ignore_removed=True, filters={"label": LABEL_SERVER}
        )
    except Exception as exc:
        log.info("no leftover check yet: %s", exc)
        return None

    def kept(container: Any) -> bool:
        return (container.labels or {}).get(LABEL_KERNEL_ID) in keep or container.id in keep

    holders = {(c.labels or {}).get(LABEL_NETNS) for c in containers if kept(c)}
    joined = {(c.labels or {}).get(LABEL_NETNS) for c in containers if c.status == "running"}
    for container in containers:
        labels = container.labels or {}
        if kept(container) or container.id in holders:
            continue
        if before is not None and _created(container) >= before:
            continue  # started by this very server (e.g. its warm pool) meanwhile
        owner = labels.get(LABEL_RUNTIME)
        if labels.get(LABEL_SERVER) == server:
            alive = False  # we hold this runtime dir's lock: it is a dead server's container
        elif labels.get(LABEL_ROLE) == ROLE_NETNS:
            # A network holder never exits by itself: it lives while the sandbox that joined
            # it runs, or (one made ahead) while its server does.
            alive = container.id in joined or (
                isinstance(owner, str) and RuntimeDir(Path(owner)).server_running()
            )
        elif container.status == "running":
            # Another server's, its agent still running: that server may be restarting and
            # re-adopt it (or live where its runtime directory cannot be seen from here, as
            # in the compose setup). An agent whose server stays away exits after its orphan
            # timeout; the stopped container is removed next time.
            alive = True
        else:
            alive = isinstance(owner, str) and RuntimeDir(Path(owner)).server_running()
        if not alive:
            with contextlib.suppress(Exception):
                container.remove(force=True)
                removed += 1
    if removed:
        log.info("removed %d leftover sandbox container(s) of stopped servers", removed)

    def network_dead(labels: Any) -> bool:
        if labels.get(LABEL_SERVER) == server:
            return False  # this server's own (maybe with re-adopted containers): close()
        owner = labels.get(LABEL_RUNTIME)
        return not (isinstance(owner, str) and RuntimeDir(Path(owner)).server_running())

    try:
        reap_networks(client(), LABEL_SERVER, network_dead)
    except Exception as exc:
        log.info("no leftover network check: %s", exc)
    return removed


def _created(container: Any) -> float:
    """A container's creation time (epoch seconds); 0 if unknown."""
    from datetime import datetime

    text = str(container.attrs.get("Created", ""))
    try:
        return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0
