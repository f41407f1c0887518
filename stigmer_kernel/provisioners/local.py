"""Local mode: the agent is a host process, a child of the broker."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..agent import procs
from ..config import EnvVar
from .base import AgentHandle, AgentSpec, Provisioner


class LocalAgent(AgentHandle):
    def __init__(self, proc: subprocess.Popen[bytes], workdir: Path) -> None:
        self.proc = proc
        self.workdir = workdir
        self.log_path = str(workdir / "agent.log")
        self.shell_pgid: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def poll(self) -> str | None:
        code = self.proc.poll()
        if code is None:
            return None
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"agent process {self.proc.pid} was killed by {name}"
        return f"agent process {self.proc.pid} exited with code {code}{self._log_tail()}"

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 400))
                tail = handle.read().decode("utf-8", "replace").strip().splitlines()
        except OSError:
            return ""
        return f" ({tail[-1]})" if tail else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            procs.signal_group(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        if self.shell_pgid and self.shell_pgid > 0:
            procs.kill_session(self.shell_pgid)
        # No wait here (this runs in the broker's loop): poll() reaps it later.

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        return {"pid": self.proc.pid}


class LocalProvisioner(Provisioner):
    mode = "local"

    def start(self, spec: AgentSpec) -> LocalAgent:
        spec.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = spec.workdir / "agent.log"
        env = dict(os.environ)
        env.pop(EnvVar.AGENT_KEY.value, None)
        # The agent must import this very package, wherever it was imported from.
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        argv = [
            sys.executable,
            "-m",
            "stigmer_kernel.agent",
            "--endpoint", spec.endpoint,
            "--kernel-id", spec.kernel_id,
            "--cwd", spec.cwd,
            "--workdir", str(spec.workdir),
            "--shell", spec.shell,
            "--heartbeat-interval", str(spec.heartbeat_interval),
            "--orphan-timeout", str(spec.orphan_timeout),
            "--timeout", str(spec.command_timeout or 0),
            "--output-limit", str(spec.output_limit),
        ]  # fmt: skip
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=spec.workdir,
                start_new_session=True,
                close_fds=True,
            )
        # The key goes through a pipe, not the environment: /proc/PID/environ would show it.
        assert proc.stdin is not None
        try:
            proc.stdin.write(spec.key + b"\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the agent died at once; poll() will say how
        return LocalAgent(proc, spec.workdir)
