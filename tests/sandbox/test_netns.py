"""Network holders (stigmer_kernel/provisioners/netns.py): a new sandbox joins a network
namespace made ahead, keeps it to itself, and takes it away with it."""

from __future__ import annotations

import concurrent.futures
import signal
from typing import Any

from stigmer_kernel.provisioners import netns
from tests.conftest import Server, wait_for
from tests.sandbox.conftest import containers_of, holders_of


def ready_holder(docker_client: Any, srv: Server, besides: set[str] = frozenset()) -> Any:
    """Wait for a running holder of ``srv`` other than those in ``besides``; it."""
    found: list[Any] = []

    def ready() -> bool:
        found[:] = [
            h
            for h in holders_of(docker_client, srv)
            if h.status == "running" and h.id not in besides
        ]
        return bool(found)

    try:
        wait_for(ready, timeout=30)
    except AssertionError as exc:
        holders = holders_of(docker_client, srv)
        raise AssertionError(f"no holder ready: {holders}\n{srv.log()}") from exc
    return found[0]


def kernel_container(docker_client: Any, srv: Server, kernel: str) -> Any:
    (container,) = [
        c for c in containers_of(docker_client, srv) if c.labels["stigmer.kernel"] == kernel
    ]
    return container


def test_a_new_sandbox_joins_a_ready_holder_and_takes_it_away(
    sandbox: Server, docker_client: Any
) -> None:
    c = sandbox.client()
    assert c.execute("true", kernel="first", mode="sandbox").ok  # no holder yet: its own
    first = kernel_container(docker_client, sandbox, "first")
    assert first.attrs["HostConfig"]["NetworkMode"].startswith("stigmer-")
    holder = ready_holder(docker_client, sandbox)
    host = holder.attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and host["ReadonlyRootfs"] and host["PidsLimit"] == 4
    assert holder.attrs["Config"]["User"] == first.attrs["Config"]["User"]  # never root
    assert host["NetworkMode"] == first.attrs["HostConfig"]["NetworkMode"]

    r = c.execute("hostname; grep -c . /proc/net/route", kernel="second", mode="sandbox")
    assert r.ok, r.stderr
    assert r.stdout.splitlines()[0] == "sandbox"
    assert int(r.stdout.splitlines()[1]) > 1  # an interface with routes, not just lo
    second = kernel_container(docker_client, sandbox, "second")
    assert second.attrs["HostConfig"]["NetworkMode"] == f"container:{holder.id}"
    assert second.labels["stigmer.netns"] == holder.id
    # A sandbox never shares a namespace: the next one gets a holder of its own.
    following = ready_holder(docker_client, sandbox, besides={holder.id})
    assert c.execute("true", kernel="third", mode="sandbox").ok
    third = kernel_container(docker_client, sandbox, "third")
    assert third.attrs["HostConfig"]["NetworkMode"] == f"container:{following.id}"

    c.shutdown_kernel("second")
    wait_for(
        lambda: holder.id not in {h.id for h in holders_of(docker_client, sandbox)}, timeout=30
    )
    assert following.id in {h.id for h in holders_of(docker_client, sandbox)}  # still third's
    sandbox.stop()
    assert containers_of(docker_client, sandbox) == [] and holders_of(docker_client, sandbox) == []


def test_a_sandbox_whose_holder_is_gone_makes_its_own_namespace(
    sandbox: Server, docker_client: Any
) -> None:
    c = sandbox.client()
    assert c.execute("true", kernel="first", mode="sandbox").ok
    ready_holder(docker_client, sandbox).remove(force=True)  # a clumsy `docker rm -f`
    r = c.execute("echo up", kernel="next", mode="sandbox")
    assert (r.stdout, r.exit_code) == ("up\n", 0), r.stderr
    mode = kernel_container(docker_client, sandbox, "next").attrs["HostConfig"]["NetworkMode"]
    # Its own, as before holders: the engine's event of the removal came first, or the join
    # failed and the start went on without it.
    assert mode.startswith("stigmer-")
    ready_holder(docker_client, sandbox)  # and a new one is made for the start after


def test_a_readopted_sandbox_keeps_its_holder(sandbox: Server, docker_client: Any) -> None:
    c = sandbox.client()
    assert c.execute("true", kernel="first", mode="sandbox").ok
    holder = ready_holder(docker_client, sandbox)
    assert c.execute("cd /tmp && KEPT=yes", kernel="joined", mode="sandbox").ok
    assert kernel_container(docker_client, sandbox, "joined").labels["stigmer.netns"] == holder.id
    spare = ready_holder(docker_client, sandbox, besides={holder.id})
    assert sandbox.proc is not None
    sandbox.proc.send_signal(signal.SIGKILL)  # the broker only: the containers live on
    sandbox.proc.wait()
    sandbox.start()  # re-adopts both kernels; the dead server's spare is a leftover
    wait_for(lambda: spare.id not in {h.id for h in holders_of(docker_client, sandbox)}, timeout=30)
    r = c.execute("pwd; echo $KEPT; hostname", kernel="joined", mode="sandbox")
    assert r.stdout == "/tmp\nyes\nsandbox\n", r.stderr
    holder.reload()
    assert holder.status == "running"  # kept: its sandbox was re-adopted
    c.shutdown_kernel("joined")
    wait_for(
        lambda: holder.id not in {h.id for h in holders_of(docker_client, sandbox)}, timeout=30
    )


def test_the_ready_holder_of_a_dead_server_is_removed_by_the_next_one(
    sandbox_factory: Any, docker_client: Any
) -> None:
    dead = sandbox_factory()
    c = dead.client()
    assert c.execute("true", kernel="lives-on", mode="sandbox").ok
    spare = ready_holder(docker_client, dead)
    assert dead.proc is not None
    dead.proc.send_signal(signal.SIGKILL)  # its containers live on: it may yet restart
    dead.proc.wait()
    other = sandbox_factory()  # another runtime directory: its start-up sweep looks at all
    other.client().execute("true", kernel="x")
    # A holder never exits by itself: one made ahead goes with its server.
    wait_for(lambda: spare.id not in {h.id for h in holders_of(docker_client, dead)}, timeout=60)
    assert [k.status for k in containers_of(docker_client, dead)] == ["running"]
    dead.start()  # back on its runtime directory: re-adopts its kernel, and stops clean
    assert c.execute("echo back", kernel="lives-on", mode="sandbox").stdout == "back\n"
    dead.stop()
    assert containers_of(docker_client, dead) == [] and holders_of(docker_client, dead) == []


def test_a_ready_holder_killed_by_hand_is_removed_then_made_again(
    sandbox: Server, docker_client: Any
) -> None:
    c = sandbox.client()
    assert c.execute("true", kernel="first", mode="sandbox").ok
    spare = ready_holder(docker_client, sandbox)
    spare.kill()  # `docker kill`: it stays, exited, unless the server removes it
    wait_for(lambda: spare.id not in {h.id for h in holders_of(docker_client, sandbox)}, timeout=30)
    r = c.execute("echo up", kernel="next", mode="sandbox")
    assert (r.stdout, r.exit_code) == ("up\n", 0), r.stderr
    ready_holder(docker_client, sandbox, besides={spare.id})


def test_one_failed_holder_start_is_retried_but_an_image_that_keeps_failing_is_refused(
    monkeypatch: Any,
) -> None:
    """The policy alone (no engine): a holder removed while it started fails once and is made
    again; an image whose holders fail :data:`netns.REFUSE_AFTER` times in a row (no ``sleep``)
    gets no more attempts."""
    monkeypatch.setattr(netns, "REFILL_DELAY", 0.0)
    outcomes = {"flaky": ["fail", "ok", "ok"], "no-sleep": ["fail"] * 10}
    made: list[str] = []
    removed: list[str] = []

    def make(args: dict[str, Any]) -> str:
        image = args["image"]
        made.append(image)
        if outcomes[image].pop(0) == "fail":
            raise RuntimeError("cannot start a stopped process")
        return f"holder-{len(made)}"

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        holders = netns.Holders(make, removed.append, pool.submit)

        def settle() -> None:  # the refill timer has run and its fill is done
            wait_for(lambda: not holders._making, timeout=10)

        flaky = {"image": "flaky", "network_mode": "n"}
        assert holders.take(flaky) is None
        settle()  # the first fill failed, and was tried again by itself
        assert not holders.refused("flaky")
        assert holders.take(flaky) == "holder-2"
        settle()  # and holder-3, for the next start

        broken = {"image": "no-sleep", "network_mode": "m"}  # no use of holder-3
        assert holders.take(broken) is None
        settle()  # tried REFUSE_AFTER times, then given up
        assert holders.refused("no-sleep")
        tries = made.count("no-sleep")
        assert holders.take(broken) is None
        settle()
        assert made.count("no-sleep") == tries == netns.REFUSE_AFTER
        assert removed == ["holder-3"]
        holders.close()
