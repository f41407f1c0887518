"""A kernel behaves like bash in a terminal, whatever the command does to the shell (issue 11).

Each test drives a real local kernel through the Python client and compares with what bash
itself does (``bash -c``, or an interactive bash on a pipe) where that helps.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from stigmer_kernel import Client, ExecResult
from tests.conftest import Server, processes_matching


def _bash(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=10)


def _wait_for(predicate: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _interrupted(client: Client, kernel: str, code: str, started: str | Path) -> ExecResult:
    """Run ``code`` and interrupt it once a process whose command line holds ``started`` runs
    (or once the file ``started`` exists)."""
    results: list[ExecResult] = []
    worker = threading.Thread(target=lambda: results.append(client.execute(code, kernel=kernel)))
    worker.start()
    if isinstance(started, Path):
        _wait_for(started.exists, f"{started} to exist")
    else:
        _wait_for(lambda: processes_matching(started), f"a process matching {started}")
    assert client.interrupt(kernel)["was_busy"] is True
    worker.join(timeout=15)
    (result,) = results
    return result


# -- 1. exit anywhere ends the command, not the session -----------------------------------------
def test_exit_in_a_function_ends_the_command_like_bash_and_keeps_the_session(
    client: Client,
) -> None:
    client.execute(
        "cd /usr; keep=yes; declare -A map=([k]=v); alias ll='echo aliased'", kernel="ex"
    )
    code = 'die() { echo "fatal: $*" >&2; exit 1; }; die boom; echo after'
    expected = _bash(code)
    r = client.execute(code, kernel="ex")
    assert (r.exit_code, r.stdout, r.stderr) == (expected.returncode, "", "fatal: boom\n")
    assert expected.stdout == "" and expected.stderr == "fatal: boom\n"
    assert r.status == "error" and r.session_reset is False
    after = client.execute('echo "$? $keep ${map[k]} $PWD"; ll; die again', kernel="ex")
    assert after.stdout == "1 yes v /usr\naliased\n"
    assert (after.exit_code, after.stderr) == (1, "fatal: again\n")


def test_exit_in_a_sourced_file_and_at_top_level(client: Client, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("echo in-script; exit 3\necho not-reached\n")
    code = f"cd {tmp_path}; . ./script.sh; echo after"
    expected = _bash(code)
    r = client.execute(code, kernel="src")
    assert (r.exit_code, r.stdout) == (expected.returncode, expected.stdout) == (3, "in-script\n")
    assert r.session_reset is False
    assert client.execute("pwd", kernel="src").stdout == f"{tmp_path}\n"
    top = client.execute("echo before; exit 7; echo never", kernel="src")
    assert (top.exit_code, top.stdout, top.stderr) == (7, "before\n", "")


def test_set_e_ends_the_command_with_its_status_and_keeps_the_session(client: Client) -> None:
    client.execute("kept=1; f() { echo f; }", kernel="errexit")
    code = "set -e; echo start; false; echo never"
    expected = _bash(code)
    r = client.execute(code, kernel="errexit")
    assert (r.exit_code, r.stdout) == (expected.returncode, expected.stdout) == (1, "start\n")
    assert r.session_reset is False
    # The session keeps its state, -e included: the next failing command ends there too.
    again = client.execute('echo "$kept $-"; f; (exit 4); echo never', kernel="errexit")
    assert again.exit_code == 4 and again.session_reset is False
    first, second = again.stdout.splitlines()
    assert first.startswith("1 ") and "e" in first.split()[1] and second == "f"
    assert client.execute("set +e; false; echo went-on", kernel="errexit").stdout == "went-on\n"


def test_state_kept_across_the_end_of_a_command_by_set_e(client: Client) -> None:
    client.execute(
        "cd /tmp; export EXP=exported; declare -ri ro=5; arr=(a 'b c'); shopt -s extglob; "
        "set -o pipefail; umask 027; trap 'echo usr2' USR2; greet() { echo \"hi $1\"; }; "
        "set -- p1 'p 2'",
        kernel="state",
    )
    ended = client.execute("set -e; (exit 9); echo never", kernel="state")
    assert (ended.exit_code, ended.stdout, ended.session_reset) == (9, "", False)
    client.execute("set +e", kernel="state")
    r = client.execute(
        'echo "$EXP $ro ${arr[1]} $# $2"; shopt -q extglob && set -o | grep -c "pipefail.*on"; '
        "umask; trap -p USR2; greet you; env | grep -c ^EXP=; pwd",
        kernel="state",
    )
    assert r.stdout.splitlines() == [
        "exported 5 b c 2 p 2",
        "1",
        "0027",
        "trap -- 'echo usr2' SIGUSR2",
        "hi you",
        "1",
        "/tmp",
    ]


def test_exit_in_a_function_does_not_leak_its_locals(client: Client) -> None:
    client.execute("x=outer", kernel="locals")
    r = client.execute("f() { local x=inner y=only-local; exit 2; }; f", kernel="locals")
    assert r.exit_code == 2
    after = client.execute('echo "$x ${y-unset}"', kernel="locals")
    assert after.stdout == "outer unset\n"


# -- 2. background jobs survive later commands' timeouts and interrupts ------------------------
_DEV_SERVER = r"""
import signal, socket, sys
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))  # stops on Ctrl-C, like a dev server
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
open(sys.argv[1] + ".tmp", "w").write(str(listener.getsockname()[1]))
__import__("os").rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    conn, _ = listener.accept()
    conn.sendall(b"alive\n")
    conn.close()
"""


def _answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        return conn.makefile("rb").readline() == b"alive\n"


def test_a_background_server_survives_later_timeouts_and_interrupts(
    client: Client, tmp_path: Path
) -> None:
    server = tmp_path / "server.py"
    server.write_text(_DEV_SERVER)
    port_file = tmp_path / "port"
    tag = uuid.uuid4().hex[:8]
    started = client.execute(
        f"python3 {server} {port_file} >/dev/null 2>&1 & echo $! > {tmp_path}/pid", kernel="bg"
    )
    assert started.exit_code == 0
    _wait_for(port_file.exists, "the server to listen")
    port = int(port_file.read_text())
    pid = int((tmp_path / "pid").read_text())
    try:
        timed_out = client.execute(f"sleep 100 # {tag}", kernel="bg", timeout=1)
        assert timed_out.status == "timeout"
        assert _answers(port)
        stopped = _interrupted(client, "bg", f"bash -c 'exec -a slp-{tag} sleep 100'", tag)
        assert stopped.status == "interrupted"
        assert _answers(port)
        # A job the stopped command itself started ends with it.
        mine = client.execute(
            f"bash -c 'exec -a own-{tag} sleep 100' & sleep 100", kernel="bg", timeout=1
        )
        assert mine.status == "timeout"
        _wait_for(lambda: not processes_matching(f"own-{tag}"), "the command's own job to end")
        assert _answers(port)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- 3. prompts never leak into output -------------------------------------------------------
def test_prompts_and_prompt_hooks_never_reach_output(client: Client, tmp_path: Path) -> None:
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "activate").write_text(  # what a virtualenv's activate does to the prompt
        '_OLD_PS1="${PS1-}"; PS1="(venv) ${PS1-}"; export VIRTUAL_ENV=' + str(tmp_path) + "\n"
        'deactivate() { PS1="$_OLD_PS1"; unset VIRTUAL_ENV; unset -f deactivate; }\n'
    )
    steps = [
        f"source {venv}/activate",
        "echo one",
        'echo "$PS1"',
        "deactivate",
        "PS0='ps0> '; PS1='ps1> '; PS2='ps2> '",
        "if true\nthen\n  echo multi\nfi",
        # Tools' hooks: direnv and zoxide assign the scalar; starship appends to it.
        "PROMPT_COMMAND='hook_runs=$((hook_runs+1)); echo hook-noise >&2'",
        'PROMPT_COMMAND="extra=1;${PROMPT_COMMAND}"',
        'echo "$hook_runs $extra"',
        'echo "$hook_runs"',
    ]
    results = [client.execute(code, kernel="prompts") for code in steps]
    assert [r.stderr for r in results] == [""] * len(steps)
    assert [r.exit_code for r in results] == [0] * len(steps)
    assert results[1].stdout == "one\n" and results[2].stdout == "(venv) \n"
    assert results[5].stdout == "multi\n"
    runs, extra = results[8].stdout.split()
    assert extra == "1" and int(results[9].stdout) == int(runs) + 1


# -- 4. the plumbing cannot be broken by the user's definitions -------------------------------
def test_definitions_that_shadow_builtins_do_not_touch_the_session(client: Client) -> None:
    breakers = (
        "printf() { echo P; }; local() { :; }; builtin() { :; }; command() { :; }; "
        ".() { echo dot; }; source() { :; }; trap() { :; }; unset() { :; }; "
        "alias .=echo return=echo eval=echo exec=echo; enable -n . source; "
        "exec 61>&- 62>/dev/null; exec 63>&1 64>&2; echo defined"
    )
    r = client.execute(breakers, kernel="shadow")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "defined\n", "")
    for i in range(3):
        r = client.execute(f"echo out-{i}; echo err-{i} >&2; (exit {i})", kernel="shadow")
        assert (r.exit_code, r.stdout, r.stderr) == (i, f"out-{i}\n", f"err-{i}\n")
    assert client.execute("exit 5", kernel="shadow").exit_code == 5
    assert client.execute("type -t printf", kernel="shadow").stdout == "function\n"


@pytest.mark.parametrize("breaker", ["eval() { echo mine; }", "enable -n eval"])
def test_redefining_eval_gives_a_clear_error_and_a_fresh_session(
    client: Client, breaker: str
) -> None:
    client.execute("cd /usr; v=1", kernel="evil")
    r = client.execute(breaker, kernel="evil")
    assert r.status == "error" and r.exit_code is None and r.session_reset
    assert "redefined or disabled `eval`" in (r.evalue or "")
    assert "fresh session" in (r.evalue or "")
    after = client.execute('echo "${v-unset}"; pwd', kernel="evil")
    assert (after.exit_code, after.stdout) == (0, "unset\n/usr\n")


def test_closing_every_descriptor_gives_a_clear_error_and_keeps_the_state(
    client: Client,
) -> None:
    client.execute("kept=yes", kernel="fds")
    r = client.execute(
        'for fd in {3..255}; do eval "exec $fd>&-"; done; echo closed', kernel="fds", timeout=20
    )
    assert r.status == "error" and r.exit_code is not None
    assert r.stdout == "closed\n"
    assert "closed the shell's own descriptors" in (r.evalue or "")
    assert "\x1e" not in r.stderr  # the shell's own end report is not shown
    after = client.execute('echo "$kept"', kernel="fds")
    assert (after.exit_code, after.stdout, after.stderr) == (0, "yes\n", "")


def test_a_command_that_removes_the_prompt_hook_still_ends(client: Client) -> None:
    for code in ("unset PROMPT_COMMAND; echo a; (exit 3)", "PROMPT_COMMAND=(); echo b"):
        r = client.execute(code, kernel="nohook", timeout=20)
        assert r.status != "timeout" and r.stdout[0] in "ab"
    assert client.execute("(exit 3)", kernel="nohook").exit_code == 3
    assert client.execute('echo "rc=$?"', kernel="nohook").stdout == "rc=3\n"


# -- 5. no internals visible --------------------------------------------------------------------
def test_traces_errors_and_traps_show_only_the_users_commands(client: Client) -> None:
    traced = client.execute("set -x; echo hi; set +x", kernel="inner")
    assert traced.stdout == "hi\n"
    assert [line.lstrip("+ ") for line in traced.stderr.splitlines()] == ["echo hi", "set +x"]
    # Errors read as an interactive bash prints them, never with a file of ours.
    interactive = subprocess.run(
        ["bash", "--norc", "-i"], input="echo (\nno_such_cmd_x\n", capture_output=True, text=True
    ).stderr
    syntax = client.execute("echo (", kernel="inner")
    missing = client.execute("no_such_cmd_x", kernel="inner")
    assert syntax.stderr == "bash: syntax error near unexpected token `newline'\n"
    assert missing.stderr == "bash: no_such_cmd_x: command not found\n"
    assert syntax.stderr in interactive and missing.stderr in interactive
    err = client.execute("trap 'echo ERR >&2' ERR; false", kernel="inner")
    assert err.stderr == "ERR\n"  # once: for `false`, not again for the line that ran it
    client.execute("trap - ERR", kernel="inner")
    ret = client.execute("trap 'echo RET' RETURN; echo x", kernel="inner")
    assert client.execute("echo y; trap - RETURN", kernel="inner").stdout == "y\n"
    assert ret.stdout == "x\n"
    dbg = client.execute("trap 'dbg=1' DEBUG; trap -p DEBUG", kernel="inner")
    assert dbg.stdout == "trap -- 'dbg=1' DEBUG\n"
    assert client.execute("trap - DEBUG; trap -p DEBUG", kernel="inner").stdout == ""
    code = "unset -f $(compgen -A function); compgen -A function || echo none"
    unset = client.execute(code, kernel="inner")
    assert (unset.exit_code, unset.stdout, unset.stderr) == (0, "none\n", "")
    names = client.execute("compgen -v | grep -c '^__stg' || true; type -t exit", kernel="inner")
    assert names.stdout == "0\nbuiltin\n"  # no variable of ours; `exit` is bash's own


def test_exec_bash_starts_the_new_session_where_it_was(client: Client) -> None:
    client.execute("cd /usr; v=1", kernel="execd")
    assert client.execute("exit 3", kernel="execd").exit_code == 3  # (its state is used up)
    # The cwd is read from the program exec'd while it runs: one that ends at once (`exec bash`
    # on /dev/null) may be gone before the agent is scheduled, and its cwd with it.
    r = client.execute("cd /; exec bash -c 'sleep 0.5'", kernel="execd")
    assert r.session_reset and "exec" in (r.evalue or "")
    assert client.execute('pwd; echo "${v-unset}"', kernel="execd").stdout == "/\nunset\n"


def _shells_of(client: Client, kernel: str) -> list[int]:
    """The bash processes that are children of ``kernel``'s agent (one, but none while a
    session is being replaced)."""
    (agent,) = [k["pid"] for k in client.list_kernels() if k["name"] == kernel]
    shells = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            stat = Path("/proc", name, "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == agent and "(bash)" in stat:
                shells.append(int(name))
    return shells


def _shell_of(client: Client, kernel: str) -> int:
    (bash,) = _shells_of(client, kernel)
    return bash


def test_a_shell_that_ends_between_commands_is_reported_with_the_next_one(
    client: Client,
) -> None:
    client.execute("v=kept; false", kernel="between")
    old = _shell_of(client, "between")
    os.kill(old, signal.SIGUSR1)  # the stop signal, landing late: the state is kept
    _wait_for(lambda: _shells_of(client, "between") not in ([], [old]), "the next bash")
    r = client.execute('echo "$? $v"', kernel="between")
    assert (r.stdout, r.session_reset) == ("1 kept\n", False)
    killed = _shell_of(client, "between")
    os.kill(killed, signal.SIGKILL)  # no state: said so, once
    # (A command sent before the agent sees the death goes to the dying shell, and dies too.)
    _wait_for(lambda: _shells_of(client, "between") not in ([], [killed]), "the next bash")
    r = client.execute('echo "${v-unset}"', kernel="between")
    assert (r.stdout, r.session_reset) == ("unset\n", True)
    assert "fresh session" in (r.evalue or "")
    assert client.execute("true", kernel="between").session_reset is False


# -- 6. framing cannot be forged by output -----------------------------------------------------
def test_no_output_ends_a_command_or_reaches_another(client: Client, server: Server) -> None:
    dump = client.execute(
        'for v in $(compgen -v); do printf \'%s=%s\\n\' "$v" "${!v}"; done; '
        "declare -p PROMPT_COMMAND; declare -p PROMPT_COMMAND >&2; echo END-OF-DUMP",
        kernel="forge",
    )
    assert (dump.exit_code, dump.status) == (0, "ok")
    assert dump.stdout.endswith("END-OF-DUMP\n") and "PROMPT_COMMAND" in dump.stderr
    # A deliberate forge: the session's own end reports, token and all, printed on both streams.
    (rc_file,) = Path(server.runtime_dir, "kernels").glob("forge-*/bashrc")
    marker = re.search(rb"\x1e\x1f[0-9a-f]{24}", rc_file.read_bytes())
    assert marker is not None
    mark, end = marker.group(), b"\x1f\x1e" + marker.group()[2:]
    forged = b"".join(
        b"bash: /dev/null/" + mark + report + end + b": Not a directory\n"
        for report in (b"r0;", b"e0;/forged", b"e99;/forged", b"s")
    )
    r = client.execute("tee /dev/stderr; sleep 0.3; echo real-end", kernel="forge", stdin=forged)
    assert (r.stdout_bytes, r.stderr_bytes) == (forged + b"real-end\n", forged)
    assert (r.exit_code, r.cwd) == (0, dump.cwd)
    after = client.execute("echo next", kernel="forge")
    assert (after.stdout, after.stderr, after.exit_code) == ("next\n", "", 0)


# -- 7. an interrupt after trap '' INT stops the command line ------------------------------------
def test_interrupt_after_trap_ignoring_sigint_stops_the_line(
    client: Client, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    client.execute("trap '' INT; keep=7", kernel="ign")
    r = _interrupted(
        client, "ign", f"echo go; bash -c 'exec -a ign-{tag} sleep 300'; echo never", f"ign-{tag}"
    )
    assert (r.status, r.exit_code, r.stdout) == ("interrupted", 130, "go\n")
    _wait_for(lambda: not processes_matching(f"ign-{tag}"), "the command's sleep to end")
    after = client.execute('echo "$keep"; trap -p INT', kernel="ign")
    assert after.stdout == "7\ntrap -- '' SIGINT\n"
    # A builtin loop, which no signal to a program can end.
    ready = tmp_path / "looping"
    loop = _interrupted(client, "ign", f"touch {ready}; while :; do :; done; echo never", ready)
    assert loop.status == "interrupted" and "never" not in loop.stdout
