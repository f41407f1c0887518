"""Network namespaces made ahead: a new sandbox joins a holder's instead of waiting for its own.

Docker makes a container's network namespace while it starts the container, and on a
user-defined network (the isolated default, network.py) Docker 20.10 also sets up its embedded
DNS resolver in it: of a sandbox's cold start (~330 ms on a 2-core machine), the engine's
start of the container took ~230 ms, ~60 ms of them for the network alone. A container that
joins the namespace of a running one (``network_mode=container:ID``) starts without any of that
(~70 ms). So the provisioner keeps one *holder* ready: a container that only sleeps, on the
sandbox network, with the sandbox's hostname and extra hosts, in an empty network namespace of
its own; the next sandbox takes it, and a new holder for the one after is started in the
background :data:`REFILL_DELAY` seconds later (on 2 cores the engine's work on a new holder
would otherwise slow the start it follows by as much as it saves).

One holder serves one sandbox for its whole life and is removed with it: sandboxes never share
a namespace, so they are as isolated as with namespaces of their own (no traffic between them,
none to the host: network.py's bridge options and firewall rules see the same interface). A
holder runs ``sleep`` from the sandbox image as the sandbox uid, with no capability,
no-new-privileges, a read-only root, no mount and small memory and pid limits; it is labelled
with its server like the sandboxes (so a dead server's holders are reaped with its containers)
and with :data:`LABEL_ROLE`, and the sandbox that took one names it in :data:`LABEL_NETNS`.

A start that finds no holder ready (the server's first sandbox, the next of a burst) has its
namespace made as before, and so does one whose holder is gone or cannot be joined. An image
whose holder failed to start :data:`REFUSE_AFTER` times in a row (no ``sleep`` in it) gets no
holder again; one failure alone proves nothing about the image (a holder removed by hand while
it started fails too: "cannot start a stopped process"), so a failed holder is made again
:data:`REFILL_DELAY` seconds later. Containers kept
stopped for reuse (``sandbox_cleanup=false``) never join one: they are started again later,
when a holder might be gone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("stigmer.sandbox")

#: On a holder: what it is (kernel containers have no such label).
LABEL_ROLE = "stigmer.role"
ROLE_NETNS = "netns"
#: On a sandbox that joined a holder's namespace: the holder's container id.
LABEL_NETNS = "stigmer.netns"
#: What of a sandbox's ``containers.create`` arguments a joining container may not set (Docker
#: refuses them with ``container:`` networking): the holder is given them instead.
_NAMESPACE_KEYS = ("network_mode", "hostname", "extra_hosts")
#: How long a holder sleeps: 68 years.
HOLDER_SLEEP = 2**31 - 1
#: Seconds from a start to the making of the next holder.
REFILL_DELAY = 0.5
#: Failed holder starts in a row after which an image gets no holder.
REFUSE_AFTER = 3
_HOLDER_MEMORY = "16m"
_HOLDER_PIDS = 4


def holder_args(create: Mapping[str, Any], owner: Mapping[str, str]) -> dict[str, Any]:
    """``containers.create``'s arguments of a holder for the sandbox that ``create`` makes;
    ``owner``: the server's labels."""
    return {
        "image": create["image"],
        # Seconds, not "infinity": every sleep (coreutils, busybox) reads a plain number.
        "command": ["sleep", str(HOLDER_SLEEP)],
        "entrypoint": [],
        "user": create.get("user"),
        "labels": {**owner, LABEL_ROLE: ROLE_NETNS},
        "network_mode": create["network_mode"],
        "hostname": create.get("hostname"),
        "extra_hosts": create.get("extra_hosts"),
        "init": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "mem_limit": _HOLDER_MEMORY,
        "pids_limit": _HOLDER_PIDS,
    }


def _same_namespace(made: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """A holder made with ``made`` serves a sandbox that wants ``wanted``: the image it sleeps
    in does not matter to the namespace."""
    return {**made, "image": None} == {**wanted, "image": None}


def joined(create: Mapping[str, Any], holder: str) -> dict[str, Any]:
    """``create`` for a sandbox that joins ``holder``'s network namespace."""
    args = {key: value for key, value in create.items() if key not in _NAMESPACE_KEYS}
    args["network_mode"] = f"container:{holder}"
    args["labels"] = {**create["labels"], LABEL_NETNS: holder}
    return args


class Holders:
    """At most one holder ready, made on the provisioner's thread pool.

    ``make(args)`` creates and starts a container and returns its id; ``remove(id)`` removes
    one (both Docker calls, on the pool); ``submit`` runs a call on the pool."""

    def __init__(
        self,
        make: Callable[[dict[str, Any]], str],
        remove: Callable[[str], None],
        submit: Callable[..., Any],
    ) -> None:
        self._make = make
        self._remove = remove
        self._submit = submit
        self._lock = threading.Lock()
        self._ready: tuple[dict[str, Any], str] | None = None  # (its arguments, its id)
        self._making = False  # a holder is being made, or is about to be
        self._failures: dict[str, int] = {}  # image -> its holders' failed starts in a row
        self._closed = False

    def take(self, args: dict[str, Any]) -> str | None:
        """The id of the ready holder if it was made with ``args`` (the image aside), else
        None; either way a holder with ``args`` is made for the next start,
        :data:`REFILL_DELAY` seconds later."""
        with self._lock:
            ready, self._ready = self._ready, None
        taken = None
        if ready is not None:
            if _same_namespace(ready[0], args):
                taken = ready[1]
            else:  # made for another image, user or network: of no use now
                self._submit(self._remove, ready[1])
        self._refill(args)
        return taken

    def _refill(self, args: dict[str, Any]) -> None:
        with self._lock:
            if self._making or self._closed or self.refused(args["image"]):
                return
            self._making = True
        self._fill_later(args)

    def _fill_later(self, args: dict[str, Any]) -> None:
        timer = threading.Timer(REFILL_DELAY, self._start_fill, (args,))
        timer.daemon = True
        timer.start()

    def _start_fill(self, args: dict[str, Any]) -> None:
        try:
            if not self._closed:
                self._submit(self._fill, args)
                return
        except RuntimeError:  # the pool was shut down: the provisioner is closing
            pass
        with self._lock:
            self._making = False

    def _fill(self, args: dict[str, Any]) -> None:
        holder = None
        try:
            holder = self._make(args)
        except Exception as exc:  # e.g. no `sleep` in the image, or removed while it started
            with self._lock:
                failures = self._failures.get(args["image"], 0) + 1
                self._failures[args["image"]] = failures
            log.info(
                "network holder for %s failed to start (%s)%s",
                args["image"],
                exc,
                ": its sandboxes make their own" if failures >= REFUSE_AFTER else "",
            )
        with self._lock:
            # A failure is tried again by itself: the start that asked for this holder is
            # over, and the next may come much later.
            retry = holder is None and not self._closed and not self.refused(args["image"])
            self._making = retry
            if holder is not None:
                self._failures.pop(args["image"], None)
                if not self._closed and self._ready is None:
                    self._ready, holder = (args, holder), None
        if retry:
            self._fill_later(args)
        if holder is not None:  # closed meanwhile
            self._remove(holder)

    def refused(self, image: str) -> bool:
        """``image``'s sandboxes get no holder: its holders failed to start too often."""
        return self._failures.get(image, 0) >= REFUSE_AFTER

    def failed(self, holder: str, detail: str) -> None:
        """A sandbox could not join ``holder`` (gone, or stopped): it is removed."""
        log.info("sandbox could not join network holder %s (%s)", holder[:12], detail)
        self._remove(holder)

    def died(self, container_id: str) -> None:
        """Docker said ``container_id`` died: if it was the ready holder (killed or stopped by
        hand), it is ready no more, and removed."""
        with self._lock:
            if self._ready is None or self._ready[1] != container_id:
                return
            self._ready = None
        self._submit(self._remove, container_id)

    def close(self) -> None:
        """Make no more; remove the ready one."""
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, None
        if ready is not None:
            with contextlib.suppress(Exception):
                self._remove(ready[1])
