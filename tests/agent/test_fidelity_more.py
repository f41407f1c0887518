"""More of a terminal bash's behaviour through a real kernel (issue 11, item 5): a line's
failure is seen by the ERR trap and ``set -e`` once, as at a prompt.

Each test drives a real local kernel through the Python client; the expected values are what an
interactive bash on a pipe prints for the same lines.
"""

from __future__ import annotations

import subprocess

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
