"""Whether the Docker engine answers, asked without holding up the broker's event loop.

:func:`ping_engine` blocks (a few seconds at most); :class:`EngineCheck` runs it on a thread of
its own and trusts each answer, yes or no, for :data:`ENGINE_CHECK_TTL` seconds, so the loop
waits :data:`ENGINE_CHECK_WAIT` seconds at most.
"""

from __future__ import annotations

import concurrent.futures
import os
import time

#: Seconds an answer of the engine check is trusted, whether the engine answered or not.
ENGINE_CHECK_TTL = 2.0
#: Seconds the event loop waits for a fresh ping (a local engine, or a missing socket, answers in
#: milliseconds); a slower ping goes on in the background.
ENGINE_CHECK_WAIT = 0.5
#: Seconds a ping may take before the engine counts as not reachable.
ENGINE_PING_TIMEOUT = 3


def engine_unreachable() -> str:
    """The one line that says there is no engine, and what to do."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return f"Docker engine not reachable at {host} — start Docker or use --mode local"


def ping_engine() -> tuple[str | None, float]:
    """(None if the engine answered, else :func:`engine_unreachable`; monotonic time of the answer).

    Blocks for up to :data:`ENGINE_PING_TIMEOUT` seconds: never call it on the event loop.
    """
    try:
        import docker

        probe = docker.from_env(timeout=ENGINE_PING_TIMEOUT)
        try:
            probe.ping()
        finally:
            probe.close()
    except Exception:  # DockerException, ConnectionError, FileNotFoundError...
        return engine_unreachable(), time.monotonic()
    return None, time.monotonic()


class EngineCheck:
    """The engine check of one provisioner: the ping in flight, and the last answer.

    Used from the event loop thread only (the ping itself runs on a thread of its own).
    """

    def __init__(self) -> None:
        self._pinger = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stigmer-ping")
        self.in_flight: concurrent.futures.Future[tuple[str | None, float]] | None = None
        self._error: str | None = None  # the last answer (None: the engine answered)
        self._checked_at: float | None = None  # monotonic time of the last answer

    @property
    def answered(self) -> bool:
        """Whether any ping has answered yet."""
        return self._checked_at is not None

    def error(self) -> str | None:
        """Why the engine is not reachable, or None (also while no ping has answered yet).

        A stale answer starts a new ping, waited for :data:`ENGINE_CHECK_WAIT` seconds at most;
        a ping still out after that leaves the previous answer in force."""
        self._take_answer()
        stale = self._checked_at is None or time.monotonic() - self._checked_at >= ENGINE_CHECK_TTL
        if self.in_flight is None and stale:
            self.in_flight = self._pinger.submit(ping_engine)
            concurrent.futures.wait([self.in_flight], timeout=ENGINE_CHECK_WAIT)
            self._take_answer()
        return self._error

    def _take_answer(self) -> None:
        """Adopt the answer of the ping in flight, if it has come."""
        ping = self.in_flight
        if ping is not None and ping.done():
            self.in_flight = None
            self._error, self._checked_at = ping.result()

    def close(self) -> None:
        self._pinger.shutdown(wait=False, cancel_futures=True)
