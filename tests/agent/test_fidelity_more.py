"""More of a terminal bash's behaviour through a real kernel (issue 11, item 5): a line's
failure is seen by the ERR trap and ``set -e`` once, as at a prompt.

Each test drives a real local kernel through the Python client; the expected values are what an
interactive bash on a pipe prints for the same lines.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from stigmer_kernel import Client


def _terminal(lines: list[str]) -> str:
    """What an interactive bash prints on stdout for ``lines``, one prompt line each."""
    return subprocess.run(
        ["bash", "--norc", "--noediting", "-i"],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout


def _run(client: Client, kernel: str, lines: list[str]) -> list[str]:
    return [client.execute(line, kernel=kernel).stdout for line in lines]


COUNTER = "trap 'echo ERR >&2; n=$((n+1))' ERR"


def test_err_trap_runs_once_for_a_failing_line(client: Client) -> None:
    lines = [
        f"n=0; {COUNTER}",
        "false",
        'echo "plain $n"',
        "n=0; echo ok; ls /no/such/dir_x 2>/dev/null",
        'echo "last of several $n"',
        "n=0; set -E; g() { false; }; g",  # once in g, once for the call: as in bash
        'echo "errtrace $n"; set +E',
    ]
    expected = _terminal(lines)
    outputs = _run(client, "errtrap", lines)
    assert "".join(outputs) == expected
    assert outputs[2] == "plain 1\n" and outputs[6] == "errtrace 2\n"
    r = client.execute("false", kernel="errtrap")
    assert (r.exit_code, r.stderr) == (1, "ERR\n")


def test_set_e_with_err_trap_runs_it_once_and_keeps_the_state(client: Client) -> None:
    client.execute(f"n=0; kept=yes; {COUNTER}; set -eE; f() {{ false; echo no; }}", kernel="sete")
    r = client.execute("f", kernel="sete")
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", "ERR\n")
    after = client.execute('echo "$n $kept $-"', kernel="sete")
    assert after.stdout.split()[:2] == ["1", "yes"] and "e" in after.stdout.split()[2]


def test_set_e_does_not_end_the_shell_for_a_line_ending_in_a_tested_failure(
    client: Client,
) -> None:
    """``false && true`` fails without making ``set -e`` exit (its failure is tested): the
    shell goes on, its job table included, as at a prompt."""
    client.execute("set -e; sleep 30 & pid=$$", kernel="tested")
    for line in ("false && true", "! true"):
        r = client.execute(line, kernel="tested")
        assert (r.exit_code, r.session_reset) == (1, False)
    after = client.execute('echo "$? $(( pid == $$ ))"; jobs | wc -l; kill %1', kernel="tested")
    assert after.stdout == "1 1\n1\n"


def test_a_function_named_builtin_keeps_the_session_working(client: Client) -> None:
    client.execute(f"n=0; {COUNTER}", kernel="shadowed")
    client.execute("builtin() { echo mine; }", kernel="shadowed")
    for i in range(2):
        r = client.execute(f"echo out-{i}; (exit {i + 2})", kernel="shadowed")
        assert (r.exit_code, r.stdout) == (i + 2, f"out-{i}\n")
    client.execute("unset -f builtin", kernel="shadowed")
    assert client.execute("echo back", kernel="shadowed").stdout == "back\n"


# -- what a command leaves to the next: $?, $_ and PIPESTATUS ----------------------------------
def test_status_last_argument_and_pipestatus_carry_to_the_next_command(
    client: Client, tmp_path: Path
) -> None:
    made = tmp_path / "made dir"
    lines = [
        "true abc",
        'echo "[$_] $?"',
        "false 'q r'",
        'echo "[$_] $? ${PIPESTATUS[*]}"',
        "(exit 3)",
        'echo "$? ${PIPESTATUS[*]}"',
        "false | true | (exit 3)",
        'echo "${PIPESTATUS[*]} $?"',
        "! false last",
        'echo "${PIPESTATUS[*]} $? [$_]"',
        "set -o pipefail; (exit 2) | true",
        'echo "${PIPESTATUS[*]} $?"; set +o pipefail',
        "IFS=,; false | true",
        'echo "${PIPESTATUS[*]}"; unset IFS',
        "printf '%s' x $'two\\nlines' 'ü \\\\ $(no)'",
        'echo "[$_]"',
        f"mkdir -p '{made}'",
        'cd "$_" && pwd',
        "cat <<EOF\nhere\nEOF",
        'echo "[$_]"',
    ]
    expected = _terminal(lines)
    outputs = _run(client, "carry", lines)
    assert "".join(outputs) == expected
    assert outputs[1] == "[abc] 0\n" and outputs[3] == "[q r] 1 1\n"
    assert outputs[5] == "3 3\n" and outputs[7] == "1 0 3 3\n" and outputs[9] == "1 0 [last]\n"
    assert outputs[15] == "[ü \\\\ $(no)]\n" and outputs[17] == f"{made}\n"
    assert client.execute("compgen -v | grep -c __stg", kernel="carry").stdout == "0\n"


def test_the_carried_status_runs_no_err_trap_and_no_set_e_exit(client: Client) -> None:
    lines = [
        f"n=0; {COUNTER}",
        "false z",
        'echo "$n [$_] $?"',
        "(exit 4)",
        'echo "$n $?"',
        "set -e; ! true y",
        'echo "$? [$_] $n"; set +e',
    ]
    expected = _terminal(lines)
    outputs = _run(client, "carry-err", lines)
    assert "".join(outputs) == expected
    assert outputs[2] == "1 [] 1\n"  # (the trap assigned last)
    assert outputs[4] == "2 4\n" and outputs[6] == "1 [y] 2\n"
    r = client.execute("echo done", kernel="carry-err")
    assert (r.stdout, r.session_reset) == ("done\n", False)


def test_the_carry_is_invisible_to_traces_and_survives_env_and_workdir(
    client: Client, tmp_path: Path
) -> None:
    traced = client.execute("set -x; true traced; set +x", kernel="carry-x")
    again = client.execute('echo "[$_]"', kernel="carry-x")
    assert again.stdout == "[+x]\n"
    for r in (traced, again):
        assert "__stg" not in r.stderr and "builtin" not in r.stderr and "for _" not in r.stderr
    client.execute("true with-env", kernel="carry-x", env={"ONLY": "here"})
    r = client.execute('echo "[$_] ${ONLY-unset}"', kernel="carry-x")
    assert r.stdout == "[with-env] unset\n"
    client.execute("true in-workdir; (exit 6)", kernel="carry-x", workdir=str(tmp_path))
    r = client.execute('echo "$? [$_] $PWD"', kernel="carry-x")
    assert r.stdout.split(" ")[:2] == ["6", "[in-workdir]"]
    verbose = client.execute("set -v; echo loud", kernel="carry-x")
    assert verbose.stdout == "loud\n"
    r = client.execute("echo quiet; set +v", kernel="carry-x")
    assert r.stderr == "echo quiet; set +v\n"


def test_code_the_capture_cannot_follow_runs_as_written(client: Client) -> None:
    """An unterminated here-document or a line continued with `|` would take in a line after
    the code: none is added (such a command's ``$_`` is its code, as before)."""
    heredoc = client.execute("cat <<EOF\nhi", kernel="nocap")
    assert heredoc.stdout == "hi\n" and "wanted `EOF'" in heredoc.stderr
    piped = client.execute("echo a |", kernel="nocap")
    assert (piped.exit_code, piped.stdout) == (2, "")
    assert piped.stderr == "bash: syntax error: unexpected end of file\n"
    client.execute("true before-bg", kernel="nocap")
    assert client.start("true started", kernel="nocap").wait(timeout=15) == 0
    assert client.execute('echo "[$_]"', kernel="nocap").stdout == "[before-bg]\n"


def test_aliases_of_reserved_words_leave_the_session_working(client: Client) -> None:
    lines = [
        "alias for='echo HIJACK' do='echo D' done='echo E'",
        "false",
        'echo "$? [$_]"',
        "(exit 3)",
        'echo "$? [$_]"',
        "unalias for do done",
        "echo ok",
    ]
    expected = _terminal(lines)
    outputs = _run(client, "aliased", lines)
    assert "".join(outputs) == expected
    assert outputs[2] == "1 [false]\n" and outputs[4] == "3 [1 [false]]\n" and outputs[6] == "ok\n"


def test_a_pipeline_cut_short_by_sigpipe_prints_what_bash_prints(client: Client) -> None:
    """`yes | head -1`: yes dies of SIGPIPE. An interactive bash then sets its terminal back
    and, its terminal being a pipe, said "bash: [PID: 2 (255)] tcsetattr: Inappropriate ioctl
    for device" on the command's stderr, every time."""
    code = 'yes | head -1; seq 100000 | head -c 3; echo; echo "${PIPESTATUS[*]}"; yes | true'
    expected = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=10)
    for _ in range(3):
        r = client.execute(code, kernel="sigpipe")
        assert (r.stdout, r.stderr, r.exit_code) == (expected.stdout, "", 0)
    # What a program prints is never touched, even a line like bash's, nor what it wrote on
    # stderr just before the message.
    line = "bash: [1: 2 (255)] tcsetattr: Inappropriate ioctl for device"
    r = client.execute(f"yes | head -c1 >/dev/null; echo '{line}' >&2", kernel="sigpipe")
    assert r.stderr == line + "\n"
    code = "printf 'partial ' >&2; yes | head -c1 >/dev/null; echo end >&2"
    r = client.execute(code, kernel="sigpipe")
    assert r.stderr == "partial end\n"
