"""The compiled copy of the package that sandbox containers mount (provisioners/bytecode.py)."""

from __future__ import annotations

import importlib.util
import stat
import sys
from pathlib import Path

import stigmer_kernel
from stigmer_kernel.provisioners.bytecode import AgentPackage

PACKAGE = Path(stigmer_kernel.__file__).resolve().parent


def made(tmp_path: Path) -> AgentPackage:
    package = AgentPackage(PACKAGE, tmp_path)
    assert package.source() == PACKAGE  # until the copy is whole
    package.ensure()
    assert package._thread is not None
    package._thread.join()
    return package


def test_copy_has_the_sources_and_their_bytecode_readable_by_anyone(tmp_path: Path) -> None:
    package = made(tmp_path)
    copy = package.source()
    assert copy != PACKAGE and copy.name == "stigmer_kernel"
    agent = copy / "agent" / "agent.py"
    assert agent.read_bytes() == (PACKAGE / "agent" / "agent.py").read_bytes()
    assert agent.stat().st_mtime == (PACKAGE / "agent" / "agent.py").stat().st_mtime
    if sys.implementation.cache_tag is not None:
        assert Path(importlib.util.cache_from_source(str(agent))).is_file()
    for path in (copy, *copy.rglob("*")):
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644)


def test_close_removes_the_copy(tmp_path: Path) -> None:
    package = made(tmp_path)
    copy = package.source()
    package.close()
    assert not copy.exists() and package.source() == PACKAGE
    assert list((tmp_path / "agent-package").iterdir()) == []
