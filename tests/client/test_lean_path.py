"""``Client.execute`` on its lean socket: in the calling thread, alongside the asyncio path,
one client to the server whichever socket a request took."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from stigmer_kernel import Client, RequestError, StigmerError
from tests.conftest import Server, processes_matching, wait_for


def test_callbacks_of_a_plain_execute_run_in_the_calling_thread(client: Client) -> None:
    threads: set[int] = set()
    r = client.execute(
        "printf 'a\\nb'; echo err >&2",
        on_stdout=lambda text: threads.add(threading.get_ident()),
        on_stderr=lambda text: threads.add(threading.get_ident()),
        stdin="ignored",  # small stdin travels in the request: still the lean way
    )
    assert (r.status, r.stdout, r.stderr) == ("ok", "a\nb", "err\n")
    assert threads == {threading.get_ident()}
    assert client.execute("cat", stdin=b"fed\n").stdout == "fed\n"


def test_a_second_thread_takes_the_asyncio_path_meanwhile(client: Client) -> None:
    first = threading.Thread(target=client.execute, args=("sleep 1",), kwargs={"kernel": "one"})
    first.start()
    wait_for(lambda: bool(processes_matching("sleep 1")))
    assert client.execute("echo beside", kernel="two").stdout == "beside\n"  # not blocked
    first.join(timeout=15)
    assert not first.is_alive()


def test_output_limit_and_streamed_stdin_behave_alike_on_both_paths(client: Client) -> None:
    seen: list[bytes] = []
    r = client.execute(
        "head -c 3000 /dev/zero", output_limit=10, on_output=lambda name, data: seen.append(data)
    )
    assert len(r.stdout_bytes) == 10 and r.stdout_dropped == 2990 and r.truncated
    assert sum(map(len, seen)) == 3000
    streamed = client.execute("wc -c", stdin=iter([b"x" * 100, b"y" * 20]))  # the asyncio way
    assert streamed.stdout.strip() == "120"


def test_kernels_count_for_the_client_whichever_socket_made_them(
    server_factory: Callable[..., Server],
) -> None:
    srv = server_factory(STIGMER_MAX_KERNELS_PER_CLIENT="2")
    c = srv.client()
    c.execute("true", kernel="lean")  # the lean socket
    c.execute("cat", kernel="loop", stdin=iter([b"x"]))  # streamed stdin: the asyncio socket
    with pytest.raises(RequestError) as refused:
        c.execute("true", kernel="third")
    assert "max_kernels_per_client 2" in str(refused.value)
    c.close()
    other = srv.client()
    other.execute("true", kernel="third")  # another client has its own count


def test_close_fails_a_call_waiting_in_another_thread(server: Server) -> None:
    c = Client(server.config, autostart=False)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            c.execute("sleep 30", kernel="long")
        except StigmerError as exc:
            failures.append(exc)

    waiting = threading.Thread(target=run)
    waiting.start()
    wait_for(lambda: bool(processes_matching("sleep 30")))
    c.close()
    waiting.join(timeout=15)
    assert not waiting.is_alive()
    assert [str(f) for f in failures] == ["client closed"]


def test_close_from_a_callback_of_the_running_call(server: Server) -> None:
    c = Client(server.config, autostart=False)
    with pytest.raises(StigmerError, match="client closed"):
        c.execute("echo go; sleep 30", kernel="cb", on_stdout=lambda text: c.close())
    with pytest.raises(StigmerError, match="closed"):
        c.execute("true", kernel="cb")
