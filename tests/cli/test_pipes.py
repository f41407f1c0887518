"""The CLI as a Unix tool in a pipeline: a reader that goes away ends the command, quietly."""

from __future__ import annotations

import os
import subprocess
import sys

from stigmer_kernel import Client, load_config
from tests.cli.conftest import stigmer
from tests.conftest import short_tempdir

CLI = [sys.executable, "-m", "stigmer_kernel"]


def pipeline(
    env: dict[str, str], cli_args: list[str], reader: list[str]
) -> tuple[int, bytes, bytes]:
    """``stigmer ARGS | READER``: (stigmer's exit code, its stderr, what the reader printed)."""
    cli = subprocess.Popen(
        [*CLI, *cli_args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert cli.stdout is not None
    head = subprocess.run(reader, stdin=cli.stdout, capture_output=True, timeout=60)
    cli.stdout.close()  # only the reader held the pipe: now that it exited, the pipe is closed
    cli.stdout = None
    _, err = cli.communicate(timeout=60)
    return cli.returncode, err, head.stdout


def quiet(err: bytes) -> bool:
    """Nothing on stderr: no traceback, no BrokenPipe, no notice (streamed output is never cut,
    so there is no truncation notice either)."""
    return err == b""


def test_a_closed_stdout_interrupts_an_endless_command(env: dict[str, str]) -> None:
    code, err, out = pipeline(env, ["run", "--", "yes"], ["head", "-1"])
    assert (code, out) == (141, b"y\n")
    assert quiet(err)
    after = stigmer(env, "run", "--", "echo still here")
    assert (after.returncode, after.stdout) == (0, b"still here\n")  # the kernel is not busy


def test_a_closed_stdout_stops_the_rest_of_the_command_line(env: dict[str, str]) -> None:
    mark = os.path.join(short_tempdir("stg-pipe-"), "ran-to-the-end")
    code, err, out = pipeline(env, ["run", "--", f"seq 1 1000000000; touch {mark}"], ["head", "-1"])
    assert (code, out) == (141, b"1\n")
    assert quiet(err)
    assert not os.path.exists(mark)  # interrupted: the line never reached its end


def test_other_subcommands_exit_quietly_on_a_closed_pipe(env: dict[str, str]) -> None:
    assert stigmer(env, "run", "--", "true").returncode == 0  # the server runs
    with Client(load_config(env=env), autostart=False) as client:
        for i in range(40):  # enough kernels that the listing outgrows what `head -c1` reads
            assert client.execute("true", kernel=f"k{i}").exit_code == 0
    code, err, out = pipeline(env, ["kernels", "list", "--json"], ["head", "-c1"])
    assert out == b"["
    assert b"Traceback" not in err and err == b""
    assert code in (0, 141)  # 0 if it all fitted in the pipe before the reader left
