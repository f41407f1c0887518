"""``stigmer cp`` both ways, as a user types it: real processes, a server it starts itself."""

from __future__ import annotations

import os
from pathlib import Path

from stigmer_kernel.cli.cp import split
from tests.cli.conftest import stigmer
from tests.conftest import short_tempdir


def test_which_argument_is_the_kernels() -> None:
    assert split("build:/tmp/x") == ("build", "/tmp/x")
    assert split("build:") == ("build", ".")
    assert split("./a:b") == (None, "./a:b") and split("/a:b") == (None, "/a:b")
    assert split("plain") == (None, "plain") and split("-") == (None, "-")


def test_cp_both_ways(env: dict[str, str]) -> None:
    here = Path(os.path.realpath(short_tempdir("stg-cp-")))
    (here / "a.txt").write_bytes(b"alpha\n")
    (here / "tree" / "sub").mkdir(parents=True)
    (here / "tree" / "sub" / "b.bin").write_bytes(os.urandom(2_500_000))
    assert stigmer(env, "run", "-k", "k", "--", f"mkdir {here}/in && cd {here}/in").returncode == 0

    r = stigmer(env, "cp", str(here / "a.txt"), "k:")  # k: is the kernel's cwd
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")  # quiet when not a terminal
    assert (here / "in" / "a.txt").read_bytes() == b"alpha\n"
    assert stigmer(env, "cp", str(here / "tree"), "k:copied").returncode == 0
    copied = here / "in" / "copied" / "sub" / "b.bin"
    assert copied.read_bytes() == (here / "tree" / "sub" / "b.bin").read_bytes()

    out = here / "out"
    out.mkdir()
    assert stigmer(env, "cp", "k:a.txt", str(out)).returncode == 0  # into a directory
    assert (out / "a.txt").read_bytes() == b"alpha\n"
    assert stigmer(env, "cp", "k:copied", str(out / "tree2")).returncode == 0
    assert (out / "tree2" / "sub" / "b.bin").read_bytes() == copied.read_bytes()

    assert stigmer(env, "cp", "-", "k:from-stdin", input=b"piped\n").returncode == 0
    r = stigmer(env, "cp", "k:from-stdin", "-")
    assert (r.returncode, r.stdout) == (0, b"piped\n")


def test_cp_failures(env: dict[str, str]) -> None:
    here = os.path.realpath(short_tempdir("stg-cp-"))
    r = stigmer(env, "cp", "k:/no/such/file", here)
    assert r.returncode == 1
    assert r.stderr == b"stigmer: error: cannot stat /no/such/file: no such file or directory\n"
    r = stigmer(env, "cp", f"{here}/missing", "k:/tmp/")
    assert r.returncode == 1 and b"No such file or directory" in r.stderr
    assert stigmer(env, "cp", "a", "b").returncode == 2
    assert stigmer(env, "cp", "k:a", "j:b").returncode == 2
    r = stigmer(env, "cp", "--mode", "sandbox", f"{here}", "k:/tmp/")  # k runs in local mode
    assert r.returncode == 2 and b"runs in local mode" in r.stderr
    assert os.listdir(here) == []
