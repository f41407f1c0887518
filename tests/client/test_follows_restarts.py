"""A long-lived client outlives server restarts: it follows the new server and its key."""

from __future__ import annotations

import signal
import time

from stigmer_kernel import Client
from tests.conftest import Server


def test_a_client_carries_on_after_a_clean_restart_with_a_new_key(server: Server) -> None:
    with Client(server.config, autostart=False) as c:
        assert c.execute("echo one", kernel="k").stdout == "one\n"
        old_key = server.runtime.key_path.read_bytes()
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)  # a clean stop: kernels end, the key is removed
        server.proc.wait(timeout=15)
        server.start()
        assert server.runtime.key_path.read_bytes() != old_key
        started = time.monotonic()
        # Signed with the old key, the request is dropped by the new server unread; the client
        # notices the new server at its next liveness check and sends it again, signed anew.
        r = c.execute("echo two", kernel="k")
        assert (r.status, r.stdout) == ("ok", "two\n")
        assert time.monotonic() - started < 10
        assert c.execute("sleep 1.5; echo three", kernel="k").stdout == "three\n"
        assert [k["name"] for k in c.list_kernels()] == ["k"]
