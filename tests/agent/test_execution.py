"""What a command sees and does in a warm local kernel, observed through a real broker."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import termios
import threading
import time
import uuid
from pathlib import Path

from stigmer_kernel import Client
from tests.conftest import processes_matching


def _wait_gone(text: str, timeout: float = 5.0) -> None:
    """Until no process's command line contains ``text`` (they may take a moment to exit)."""
    deadline = time.monotonic() + timeout
    while processes_matching(text):
        assert time.monotonic() < deadline, f"still running: {text} {processes_matching(text)}"
        time.sleep(0.05)


def _unread_shell_output(client: Client, kernel: str) -> int:
    """Bytes written by ``kernel``'s shell (and its jobs) that its agent has not read yet: what
    waits in the pipes of the agent's children (FIONREAD on the pipe, which reads nothing)."""
    (agent,) = [k["pid"] for k in client.list_kernels() if k["name"] == kernel]
    unread = 0
    for name in os.listdir("/proc"):
        try:
            stat = Path("/proc", name, "stat").read_text()
            if not name.isdigit() or int(stat.rsplit(")", 1)[1].split()[1]) != agent:
                continue
            for fd in (1, 2):
                path = f"/proc/{name}/fd/{fd}"
                if not os.readlink(path).startswith("pipe:"):
                    continue
                pipe = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    count = fcntl.ioctl(pipe, termios.FIONREAD, b"\0\0\0\0")
                    unread += struct.unpack("i", count)[0]
                finally:
                    os.close(pipe)
        except (OSError, ValueError, IndexError):
            continue
    return unread


def test_state_persists_between_commands(client: Client) -> None:
    first = client.execute(
        "cd /usr && export EXP=exported && plain=plainvar && declare -a arr=(x y z)\n"
        "greet() { echo \"hello $1\"; }\nalias ll='echo aliased'",
        kernel="state",
    )
    assert first.exit_code == 0, first.stderr
    r = client.execute(
        'pwd; echo "$EXP $plain ${arr[2]}"; greet you; ll; env | grep ^EXP=', kernel="state"
    )
    assert r.stdout.splitlines() == [
        "/usr",
        "exported plainvar z",
        "hello you",
        "aliased",
        "EXP=exported",
    ]
    assert r.cwd == "/usr"


def test_kernels_are_independent(client: Client) -> None:
    client.execute("cd /usr; v=one", kernel="a")
    client.execute("cd /etc; v=two", kernel="b")
    assert client.execute("pwd; echo $v", kernel="a").stdout == "/usr\none\n"
    assert client.execute("pwd; echo $v", kernel="b").stdout == "/etc\ntwo\n"


def test_exit_ends_the_command_but_not_the_session(client: Client) -> None:
    client.execute("keep=yes", kernel="ex")
    r = client.execute("echo before; exit 7; echo never", kernel="ex")
    assert (r.exit_code, r.status, r.stdout) == (7, "error", "before\n")
    assert r.session_reset is False
    assert client.execute("echo $keep", kernel="ex").stdout == "yes\n"
    assert client.execute("(exit 3)", kernel="ex").exit_code == 3
    assert client.execute("true; exit", kernel="ex").exit_code == 0


def test_stdout_and_stderr_stay_separate(client: Client) -> None:
    r = client.execute("echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 5")
    assert r.stdout == "out1\nout2\n"
    assert r.stderr == "err1\nerr2\n"
    assert r.exit_code == 5
    assert r.ename == "CommandFailed"


def test_output_streams_before_the_command_ends(client: Client) -> None:
    seen: list[tuple[float, str]] = []
    start = time.monotonic()
    r = client.execute(
        "echo first; echo warn >&2; sleep 2; echo second",
        on_stdout=lambda t: seen.append((time.monotonic() - start, "out:" + t)),
        on_stderr=lambda t: seen.append((time.monotonic() - start, "err:" + t)),
    )
    end = time.monotonic() - start
    assert r.stdout == "first\nsecond\n"
    first_out = next(t for t, text in seen if text == "out:first\n")
    first_err = next(t for t, text in seen if text == "err:warn\n")
    # Printed before the sleep, so it arrived long before the command finished.
    assert end - first_out > 1.5
    assert end - first_err > 1.5
    assert r.duration >= 2.0


def test_timeout_ends_every_process_keeps_output_and_session(client: Client) -> None:
    tag = uuid.uuid4().hex[:8]
    client.execute("keep=1", kernel="to")
    r = client.execute(
        f"echo started; sleep 300{tag}-a 2>/dev/null || sleep 300 & "
        f"bash -c 'exec -a sleep-{tag} sleep 300' & sleep 301; echo never",
        kernel="to",
        timeout=1,
    )
    assert r.status == "timeout"
    assert r.exit_code == 124
    assert r.stdout == "started\n"
    assert "timed out after 1s" in (r.evalue or "")
    _wait_gone(f"sleep-{tag}")
    after = client.execute("echo $keep", kernel="to")
    assert after.stdout == "1\n" and after.exit_code == 0


def test_interrupt_ends_the_command_and_its_children(client: Client) -> None:
    tag = uuid.uuid4().hex[:8]
    client.execute("keep=2", kernel="int")
    results = []
    worker = threading.Thread(
        target=lambda: results.append(
            client.execute(
                f"echo go; bash -c 'exec -a child-{tag} sleep 300' & "
                "trap '' TERM; while :; do :; done; echo never",
                kernel="int",
            )
        )
    )
    worker.start()
    deadline = time.monotonic() + 10
    while not processes_matching(f"child-{tag}") and time.monotonic() < deadline:
        time.sleep(0.05)
    reply = client.interrupt("int")
    assert reply["was_busy"] is True
    worker.join(timeout=10)
    (r,) = results
    assert (r.status, r.exit_code, r.stdout) == ("interrupted", 130, "go\n")
    _wait_gone(f"child-{tag}")
    assert client.execute("echo $keep", kernel="int").stdout == "2\n"


def _ignores_sigint(text: str) -> bool:
    for pid in processes_matching(text):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            ignored = next(line for line in status.splitlines() if line.startswith("SigIgn:"))
            if int(ignored.split()[1], 16) & (1 << (signal.SIGINT - 1)):
                return True
    return False


def test_interrupt_of_a_program_that_ignores_sigint(client: Client) -> None:
    tag = uuid.uuid4().hex[:8]
    results = []
    worker = threading.Thread(
        target=lambda: results.append(
            client.execute(
                f"python3 -c 'import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                f"time.sleep(300)' stubborn-{tag}; echo never",
                kernel="stub",
            )
        )
    )
    worker.start()
    deadline = time.monotonic() + 10
    # Once it ignores SIGINT (earlier, Python turns the SIGINT into an exception and exits 1,
    # and bash goes on with the line, as at a prompt).
    while not _ignores_sigint(f"stubborn-{tag}") and time.monotonic() < deadline:
        time.sleep(0.05)
    client.interrupt("stub")
    worker.join(timeout=10)
    assert results[0].status == "interrupted"
    assert "never" not in results[0].stdout
    assert processes_matching(f"stubborn-{tag}") == []


def test_stdin_is_empty_unless_given(client: Client) -> None:
    r = client.execute('cat; read -r line; echo "rc=$?"', timeout=10)
    assert r.status == "ok" and r.stdout == "rc=1\n"
    fed = client.execute("tr a-z A-Z", stdin="hello\nworld\n")
    assert fed.stdout == "HELLO\nWORLD\n"


def test_noninteractive_defaults(client: Client) -> None:
    r = client.execute("echo $DEBIAN_FRONTEND $GIT_TERMINAL_PROMPT $PAGER")
    assert r.stdout == "noninteractive 0 cat\n"
    leaked = client.execute("env | grep -c STIGMER_AGENT_KEY || true")
    assert leaked.stdout.strip() == "0"


def test_hundred_thousand_lines_arrive_complete_and_in_order(client: Client) -> None:
    r = client.execute("seq 1 100000; echo done >&2")
    lines = r.stdout.splitlines()
    assert len(lines) == 100000
    assert lines == [str(i) for i in range(1, 100001)]
    assert r.stderr == "done\n"
    assert not r.truncated


def test_output_limit_caps_what_the_result_keeps_and_says_so(client: Client) -> None:
    seen: list[int] = []
    r = client.execute(
        "head -c 5000000 /dev/zero | tr '\\0' x; echo; echo end",
        output_limit=1000,
        on_output=lambda name, data: seen.append(len(data)) if name == "stdout" else None,
    )
    assert r.truncated and r.stdout_truncated and not r.stderr_truncated
    assert len(r.stdout_bytes) == 1000
    assert r.stdout_dropped == 5_000_005 - 1000
    assert sum(seen) == 5_000_005  # the callback got it all
    assert r.stderr == ""  # no notice mixed into the command's own output
    assert client.execute("echo fine").stdout == "fine\n"


def test_new_kernel_starts_where_the_client_asked_from(client: Client, tmp_path: object) -> None:
    path = os.path.realpath(str(tmp_path))
    r = client.execute("pwd", kernel="here", cwd=path)
    assert r.stdout.strip() == path


def test_binary_output_is_kept_exactly(client: Client) -> None:
    r = client.execute("printf '\\xff\\xfe\\x00abc'")
    assert r.stdout_bytes == b"\xff\xfe\x00abc"


def test_shell_that_dies_is_restarted_with_notice(client: Client) -> None:
    client.execute("cd /usr; v=1", kernel="reset")
    r = client.execute("kill -KILL $$", kernel="reset")  # (an `exit` keeps the session)
    assert r.exit_code == 137
    assert r.session_reset
    assert "fresh session" in (r.evalue or "")
    after = client.execute('pwd; echo "v=${v:-unset}"', kernel="reset")
    assert after.stdout == "/usr\nv=unset\n"


def test_background_output_between_commands_is_capped_with_a_notice(
    client: Client, tmp_path: object
) -> None:
    done = os.path.join(str(tmp_path), "done")
    # A background job writes 3 MB after its command ended; 1 MiB is kept for the next command.
    started = client.execute(
        f"(sleep 0.2; head -c 3000000 /dev/zero | tr '\\0' x; touch {done}) &", kernel="bg"
    )
    assert started.stdout == "" and started.exit_code == 0
    deadline = time.monotonic() + 5
    while not os.path.exists(done):
        assert time.monotonic() < deadline, "the background job did not finish"
        time.sleep(0.05)
    deadline = time.monotonic() + 15
    while _unread_shell_output(client, "bg"):  # the agent drains the last pipe buffer
        assert time.monotonic() < deadline, "the agent did not read the background output"
        time.sleep(0.05)
    r = client.execute("echo next", kernel="bg")
    assert r.stdout == "x" * (1 << 20) + "next\n"
    dropped = 3000000 - (1 << 20)
    assert r.stderr == (
        f"[stigmer] {dropped} bytes of output written between commands were discarded "
        f"(more than {1 << 20} bytes per stream)\n"
    )
    # The notice comes once; a command's own output is never capped.
    big = client.execute("head -c 3000000 /dev/zero | tr '\\0' y", kernel="bg")
    assert (big.stdout, big.stderr) == ("y" * 3000000, "")


def test_a_ctrl_c_reaching_bash_at_its_prompt_does_not_end_the_next_command(
    client: Client,
) -> None:
    client.execute("X=kept", kernel="prompt")
    (agent,) = [k["pid"] for k in client.list_kernels() if k["name"] == "prompt"]
    shells = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path("/proc", name, "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == agent and "(bash)" in stat:
            shells.append(int(name))
    (bash,) = shells
    # A Ctrl-C that lands when the command already ended makes bash show its prompt again:
    # one more end marker, for no command. It must not be taken for the next command's end.
    os.kill(bash, 2)
    time.sleep(0.3)
    r = client.execute("sleep 0.3; echo $X", kernel="prompt")
    # (The new line bash writes for that Ctrl-C, as in a terminal, reaches the next stderr.)
    assert (r.exit_code, r.stdout, r.stderr.strip()) == (0, "kept\n", "")
    assert client.execute("false; echo again", kernel="prompt").stdout == "again\n"
    assert client.execute('echo "rc=$?"', kernel="prompt").stdout == "rc=0\n"
