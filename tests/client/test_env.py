"""What a kernel inherits: its creator's environment (the CLI's, a Python client's when asked),
minus stigmer's internals; ``env`` / ``--env`` for one command; sandboxes get no host env."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stigmer_kernel import Client
from stigmer_kernel.environment import MAX_ENV_BYTES, is_shell_name
from stigmer_kernel.errors import RequestError
from stigmer_kernel.protocol import Session
from tests.conftest import Server, short_tempdir
from tests.sandbox.conftest import docker_client, sandbox_factory  # noqa: F401

#: Shows a kernel's environment, one NAME=VALUE per line, sorted.
SHOW_ENV = "env | LC_ALL=C sort"


#: Names bash takes and not, with non-ASCII letters and digits (é, fullwidth A, a combining
#: accent, superscript two, roman numeral one) that a Python identifier may hold.
_NAMES = ["A", "_", "a1", "_9_x", "PATH", "if", "", "1A", "A-B", "A B", "A\n", "A=", "A.B"]
_NAMES += ["$A", "\u00e9", "a\u00e9", "\uff21", "A\u0301", "x" * 300, "\u00b2", "a\u00b2", "\u2170"]


@pytest.mark.parametrize("name", _NAMES)
def test_a_shell_name_is_what_bash_takes(name: str) -> None:
    import re

    assert is_shell_name(name) == bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name))


def stigmer(env: dict[str, str], *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


def parse_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def fake_venv() -> str:
    """A bin directory with its own ``python``, as an activated venv puts first on PATH."""
    bin_dir = Path(short_tempdir("stg-venv-")) / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.write_text("#!/bin/sh\necho fake-venv-python\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return str(bin_dir)


@pytest.fixture
def made_server(server_factory: Callable[..., Server]) -> Server:
    """A server started as `make run` starts it: MAKELEVEL and MAKEFLAGS in its environment,
    and a variable no client has."""
    return server_factory(MAKELEVEL="1", MAKEFLAGS="w", SERVER_ONLY_VAR="server")


def test_a_kernel_the_cli_creates_has_the_cli_environment(made_server: Server) -> None:
    venv = fake_venv()
    cli_env = dict(
        made_server.env,
        PATH=f"{venv}:{made_server.env['PATH']}",
        CLI_ONLY_VAR="from the cli",
        MAKELEVEL="2",  # the CLI run from a Makefile: still no sub-make in the kernel
        MFLAGS="-s",
    )
    cli_env.pop("SERVER_ONLY_VAR")
    r = stigmer(cli_env, "run", "-k", "venv", "--", f"python; {SHOW_ENV}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "fake-venv-python"  # `which python`: the CLI's
    env = parse_env(r.stdout)
    assert env["CLI_ONLY_VAR"] == "from the cli"
    assert env["PATH"].split(":")[0] == venv
    assert "SERVER_ONLY_VAR" not in env
    for name in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS"):
        assert name not in env
    # Of stigmer's own variables, only the one that says which kernel this is.
    assert {k: v for k, v in env.items() if k.startswith("STIGMER_")} == {"STIGMER_KERNEL": "venv"}
    assert "PYTHONPATH" not in env or env["PYTHONPATH"] == cli_env.get("PYTHONPATH")

    # An existing kernel keeps its environment, as a shell does.
    later = dict(cli_env, CLI_ONLY_VAR="another cli", LATER_VAR="x")
    r = stigmer(later, "run", "-k", "venv", "--", 'echo "$CLI_ONLY_VAR|${LATER_VAR-unset}"')
    assert r.stdout == "from the cli|unset\n", r.stderr


def test_cli_env_option_holds_for_one_command(server: Server) -> None:
    weird = "a b $HOME `x` \"q\" 'q' \\ ! é 🙂\nline2"
    r = stigmer(
        server.env,
        "run",
        "-k",
        "opt",
        "--env",
        "ONE=1",
        "--env",
        f"WEIRD={weird}",
        "-e",
        "ONE=2",  # a later one wins
        "--",
        'printf "%s|%s" "$ONE" "$WEIRD"; sh -c \'printf "|%s" "$ONE"\'',
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"2|{weird}|2"
    r = stigmer(server.env, "run", "-k", "opt", "--", 'echo "${ONE-unset}|${WEIRD-unset}"')
    assert r.stdout == "unset|unset\n"

    for bad, says in (
        ("A-B=x", "'A-B' is not a variable name"),
        ("noequals", "--env takes NAME=VALUE"),
    ):
        r = stigmer(server.env, "run", "-k", "opt", "--env", bad, "--", "echo ran")
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
        assert r.stdout == ""
        assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_execute_env_sets_variables_for_one_command(server: Server) -> None:
    c = server.client()
    weird = "quotes ' \" `\\` $(false) ${X} \\n\n\ttab ! é — 🙂 \x1b[0m"
    c.execute("export KEPT=before; plain=shellvar", kernel="e")
    r = c.execute(
        'printf "%s|%s|%s" "$WEIRD" "$KEPT" "$plain"; sh -c \'printf "|%s|%s" "$WEIRD" "$plain"\'',
        kernel="e",
        env={"WEIRD": weird, "KEPT": "during", "plain": "set"},
    )
    assert r.status == "ok", r.stderr
    # Exported to what the command runs, whatever was there before.
    assert r.stdout == f"{weird}|during|set|{weird}|set"
    r = c.execute(
        'echo "${WEIRD-unset}|$KEPT|$plain"; sh -c \'echo "${plain-unexported}"\'', kernel="e"
    )
    assert r.stdout == "unset|before|shellvar\nunexported\n"

    # An interrupted (timed out) command does not leave its variables either.
    r = c.execute("sleep 30", kernel="e", env={"GONE": "1"}, timeout=0.5)
    assert r.status == "timeout"
    assert c.execute('echo "${GONE-unset}"', kernel="e").stdout == "unset\n"
    # An empty map is no variable at all.
    assert c.execute("echo ok", kernel="e", env={}).stdout == "ok\n"


@pytest.mark.parametrize(
    "ending",
    ["exit 3", "f() { exit 4; }; f", "set -e; false", ". ./ends.sh"],
    ids=["exit", "exit-in-function", "set-e", "exit-in-sourced-file"],
)
def test_a_command_that_exits_keeps_none_of_its_own_variables(server: Server, ending: str) -> None:
    c = server.client()
    work = short_tempdir("stg-envexit-")
    Path(work, "ends.sh").write_text("exit 5\n")
    c.execute("SHADOWED=global; export EXPORTED=kept", kernel="x", cwd=work)
    r = c.execute(
        f'echo "$SHADOWED $EXPORTED $ONLY"; {ending}',
        kernel="x",
        env={"SHADOWED": "tmp", "EXPORTED": "tmp", "ONLY": "secret"},
    )
    assert (r.stdout, r.session_reset) == ("tmp tmp secret\n", False)
    after = c.execute('set +e; echo "$SHADOWED $EXPORTED ${ONLY-unset}"', kernel="x")
    assert after.stdout == "global kept unset\n"


#: Bad ``env`` maps and what the error says about each.
BAD_ENVS: list[tuple[dict[str, Any], str]] = [
    ({"1A": "x"}, "'1A' is not a variable name"),
    ({"A B": "x"}, "'A B' is not a variable name"),
    ({"": "x"}, "'' is not a variable name"),
    ({"EUID": "0"}, "EUID is read-only"),
    ({"NUL": "a\0b"}, "holds a NUL byte"),
    ({"NUM": 3}, "must be strings"),
    ({"BIG": "x" * (200 * 1024)}, "more than the 131,072"),
    ({f"V{i}": "x" * 100_000 for i in range(3)}, f"more than the {MAX_ENV_BYTES:,}"),
]


def test_bad_env_is_a_clear_error(client: Client) -> None:
    for env, says in BAD_ENVS:
        with pytest.raises(RequestError) as info:
            client.execute("echo never", kernel="bad", env=env)
        assert info.value.ename == "BadRequest"
        assert says in str(info.value), env
    assert client.execute("echo fine", kernel="bad").stdout == "fine\n"


def test_the_broker_refuses_bad_env_from_a_raw_client(server: Server) -> None:
    """A client that skips the checks gets BadRequest, and the kernel and server carry on."""
    import zmq

    runtime = Path(server.runtime_dir)
    session = Session(runtime.joinpath("key").read_bytes().strip())
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"ipc://{runtime}/clients.sock")
    try:
        for content in (
            {"env": {"1A": "x"}},
            {"env": ["not", "a", "map"]},
            {"env": {"A": "x" * (MAX_ENV_BYTES + 1)}},
            {"kernel_env": {"A=B": "x"}},
            {"kernel_env": {"A": 1}},
        ):
            request = session.msg(
                "execute_request", {"code": "echo never", "kernel": "raw", **content}
            )
            sock.send_multipart(session.serialize(request))
            assert sock.poll(15000), content
            _, reply = session.deserialize(sock.recv_multipart())
            assert reply.parent_id == request.msg_id
            assert reply.content["status"] == "error", content
            assert reply.content["ename"] == "BadRequest", reply.content
        sock.send_multipart(session.serialize(session.msg("detach_request")))
    finally:
        sock.close(linger=500)
        ctx.term()
    kernels = [k["name"] for k in server.client().list_kernels()]
    assert "raw" not in kernels  # refused before anything was created


def test_python_client_sends_its_environment_only_when_asked(
    made_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIENT_ONLY_VAR", "mine")
    monkeypatch.setenv("STIGMER_SECRET_SETTING", "internal")
    monkeypatch.setenv("MAKELEVEL", "4")
    asked = made_server.client(inherit_env=True)
    env = parse_env(asked.execute(SHOW_ENV, kernel="asked").stdout)
    assert env["CLIENT_ONLY_VAR"] == "mine"
    assert "SERVER_ONLY_VAR" not in env and "MAKELEVEL" not in env
    assert "STIGMER_SECRET_SETTING" not in env

    # By default: the server's environment, minus stigmer's internals and make's.
    default = made_server.client()
    env = parse_env(default.execute(SHOW_ENV, kernel="plain").stdout)
    assert "CLIENT_ONLY_VAR" not in env
    assert env["SERVER_ONLY_VAR"] == "server"
    assert "MAKELEVEL" not in env and "MAKEFLAGS" not in env
    assert [k for k in env if k.startswith("STIGMER_")] == ["STIGMER_KERNEL"]

    # An explicit kernel_env is the whole environment of the kernel it creates.
    given = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), "ONLY": "this"}
    env = parse_env(default.execute(SHOW_ENV, kernel="given", kernel_env=given).stdout)
    assert env["ONLY"] == "this" and "SERVER_ONLY_VAR" not in env


def test_auto_kernel_local_side_inherits(server: Server) -> None:
    cli_env = dict(server.env, CLI_ONLY_VAR="auto-cli")
    r = stigmer(cli_env, "run", "--mode", "auto", "-k", "au", "--", 'echo "$CLI_ONLY_VAR"')
    assert r.returncode == 0, r.stderr
    assert r.stdout == "auto-cli\n"


def test_sandbox_kernels_get_no_host_environment(
    sandbox_factory: Callable[..., Server],  # noqa: F811
) -> None:
    srv = sandbox_factory()
    workspace = short_tempdir("stg-envws-")
    os.chmod(workspace, 0o755)  # the sandbox uid enters it
    cli_env = dict(srv.env, HOST_SECRET_TOKEN="s3cret", PATH=f"/host/only/bin:{srv.env['PATH']}")
    r = stigmer(
        cli_env,
        "run",
        "--mode",
        "sandbox",
        "-k",
        "sb",
        "--env",
        "GIVEN=for this command",
        "--",
        f'echo "${{HOST_SECRET_TOKEN-unset}}|$GIVEN"; {SHOW_ENV}',
        cwd=workspace,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "unset|for this command"
    env = parse_env(r.stdout)
    assert "/host/only/bin" not in env["PATH"]
    assert not any("s3cret" in v for v in env.values())
    r = stigmer(cli_env, "run", "--mode", "sandbox", "-k", "sb", "--", 'echo "${GIVEN-unset}"')
    assert r.stdout == "unset\n", r.stderr


def test_kernels_connection_file_creates_the_kernel_with_the_cli_environment(
    server: Server,
) -> None:
    r = stigmer(dict(server.env, CLI_ONLY_VAR="conn"), "kernels", "connection-file", "cf")
    assert r.returncode == 0, r.stderr
    assert server.client().execute('echo "$CLI_ONLY_VAR"', kernel="cf").stdout == "conn\n"
