"""The package as sandbox containers run it: a copy with its bytecode, made once per server.

A container's Python would otherwise compile every module of the agent at each start (the
package is mounted read-only and no container may write bytecode another one runs): tens of
milliseconds of a cold start. So at its first sandbox start the server copies the package, in
the background, into ``agent-package/`` of its runtime directory with the bytecode of its own
Python (``__pycache__/*.cpython-3XX.pyc``); once the copy is whole, new containers mount it
read-only instead of the package. A container whose Python has another version ignores that
bytecode and compiles as before; Python checks each file against its source's size and mtime.
The copy is the package as the server started with it, as the server runs it. Nothing written
in a sandbox reaches it.
"""

from __future__ import annotations

import logging
import os
import py_compile
import shutil
import tempfile
import threading
from pathlib import Path

log = logging.getLogger("stigmer.sandbox")

#: The copy's directory in the runtime directory.
COPY_NAME = "agent-package"


class AgentPackage:
    """What containers mount as ``stigmer_kernel``: ``package`` until its compiled copy in
    ``runtime_path`` is whole (:meth:`ensure` starts it, once, on a thread of its own). Each
    server makes its own copy, removed by :meth:`close` once its containers are gone; that of a
    server that did not stop stays, for the containers a next server re-adopts."""

    def __init__(self, package: Path, runtime_path: Path) -> None:
        self.package = package
        self.parent = runtime_path / COPY_NAME
        self._copy: Path | None = None  # <parent>/<unique>/stigmer_kernel, once whole
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def source(self) -> Path:
        """The directory a new container mounts."""
        return self._copy or self.package

    def ensure(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._make, name="stigmer-agent-package", daemon=True
            )
            self._thread.start()

    def _make(self) -> None:
        top: Path | None = None
        try:
            self.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            top = Path(tempfile.mkdtemp(prefix="copy-", dir=self.parent))
            os.chmod(top, 0o755)  # the sandbox uid reads it
            tree = top / "stigmer_kernel"
            shutil.copytree(
                self.package, tree, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )  # copy2: sizes and mtimes kept, as the bytecode records them
            for source in tree.rglob("*.py"):
                py_compile.compile(str(source), doraise=True)
            for path in (tree, *tree.rglob("*")):
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
            self._copy = tree
        except (OSError, py_compile.PyCompileError) as exc:
            log.info("sandbox containers mount the package itself (no compiled copy: %s)", exc)
            if top is not None:
                shutil.rmtree(top, ignore_errors=True)

    def close(self) -> None:
        """Remove the copy (at shutdown, once this server's containers are gone)."""
        thread = self._thread
        if thread is not None:
            thread.join()
        if self._copy is not None:
            shutil.rmtree(self._copy.parent, ignore_errors=True)
            self._copy = None
