"""A server on another host: where it is and which keys reach it (:class:`RemoteServer`), and
the CurveZMQ link to it as a socket monitor reports it (:class:`Link`), so that a refused key or
a server that cannot be reached ends requests with an error instead of silence."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

import zmq

from ..curve import client_keys, make_client
from ..errors import ServerNotRunning


@dataclasses.dataclass(frozen=True)
class RemoteServer:
    """A server on another host, reached over TCP with CurveZMQ.

    ``key`` is the server's HMAC key (its RUNTIME_DIR/key file); ``server_public_key`` its
    ``curve/server.key``; ``client_cert`` this client's secret certificate (``stigmer curve
    keygen``), whose public half the server authorized.
    """

    endpoint: str
    key: bytes
    server_public_key: str
    client_cert: str

    def secure(self, sock: Any) -> None:
        """CurveZMQ on ``sock``; :class:`CurveKeyError` if a key file cannot be used."""
        make_client(sock, client_keys(self.server_public_key, self.client_cert))


class Link:
    """The CurveZMQ link to a remote server, watched through a socket monitor: a refused key or
    a server that cannot be reached ends requests with an error instead of silence."""

    #: Seconds without a working link before waiting requests fail.
    UNREACHABLE_AFTER = 10.0

    def __init__(self, endpoint: str, sock: Any) -> None:
        self.endpoint = endpoint
        self.up = False
        self.down_since = time.monotonic()
        self.refused: str | None = None
        self.sock = sock
        # Queue only to a connection whose handshake is done: a request is sent now or never
        # (a failed one is not delivered later behind the caller's back).
        sock.setsockopt(zmq.IMMEDIATE, 1)
        # ZMTP heartbeats: a half-open link (host gone, NAT dropped it) ends as a disconnect.
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        self.monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_DISCONNECTED
        )
        self.task = asyncio.create_task(self._watch(), name="stigmer-client-link")

    async def _watch(self) -> None:
        from zmq.utils.monitor import parse_monitor_message

        while True:
            event = parse_monitor_message(await self.monitor.recv_multipart())["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.up, self.refused = True, None
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.up = False
                self.refused = (
                    f"the server at {self.endpoint} refused this client's CURVE key: ask its "
                    "owner to `stigmer curve authorize` your NAME.key"
                )
            elif event in (
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
            ):
                self.up = False
                self.refused = (
                    f"no CurveZMQ handshake with {self.endpoint}: is that the server's "
                    "client_endpoint, and its curve/server.key the one given?"
                )
            elif event == zmq.EVENT_DISCONNECTED and self.up:
                self.up, self.down_since = False, time.monotonic()

    async def send(self, frames: list[bytes]) -> None:
        """Send once a link is up; raise (nothing sent) if none comes."""
        while True:
            try:
                await self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                self.check(sent=False)
                await asyncio.sleep(0.05)

    def check(self, sent: bool) -> None:
        if self.refused is not None:
            raise ServerNotRunning(self.refused)
        if not self.up and time.monotonic() - self.down_since > self.UNREACHABLE_AFTER:
            raise ServerNotRunning(
                f"no connection to the stigmer server at {self.endpoint} for "
                f"{self.UNREACHABLE_AFTER:g}s"
                + (
                    "; the request was sent before, so it may or may not have run — check "
                    "before retrying"
                    if sent
                    else "; the request was not sent"
                )
            )

    def close_now(self) -> None:
        self.task.cancel()
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.monitor.close(linger=0)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.wait({self.task})
        self.close_now()
