"""Local mode: the agent is a host process, a child of the broker."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..agent import procs
from ..config import EnvVar
from ..environment import kernel_environment
from .base import AgentHandle, AgentSpec, Provisioner

#: The kernel's shell environment in its work directory, until the agent has read it.
ENV_FILE = "env.json"
#: Seconds a stopping server waits for its agents to exit before ending their orphans.
_CLOSE_WAIT = 2.0


class LocalAgent(AgentHandle):
    def __init__(
        self, proc: subprocess.Popen[bytes], workdir: Path, provisioner: LocalProvisioner
    ) -> None:
        self.proc = proc
        self._workdir = workdir
        self.log_path = str(workdir / "agent.log")
        self.provisioner = provisioner
        # Read while the agent is our unreaped child: its pid cannot belong to anyone else.
        self.start = procs.start_time(proc.pid)
        self._shell: tuple[int, int | None] | None = None  # bash's (pid = pgid = sid, start)

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def shell_pgid(self) -> int | None:
        return self._shell[0] if self._shell else None

    @shell_pgid.setter
    def shell_pgid(self, pgid: int | None) -> None:
        """Bash's pid as the agent reports it (registration, every heartbeat): recorded with
        its start time only while it is this agent's child."""
        if pgid is None or pgid == self.shell_pgid:
            return
        alive = self.proc.returncode is None
        self._shell = (pgid, procs.child_start(pgid, self.proc.pid) if alive else None)

    def record(self) -> dict[str, Any]:
        return process_record(self.pid, self.start, self._shell)

    def poll(self) -> str | None:
        code = self._returncode()
        if code is None:
            return None
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"agent process {self.proc.pid} was killed by {name}"
        return f"agent process {self.proc.pid} exited with code {code}{self._log_tail()}"

    def _returncode(self) -> int | None:
        if self.proc.returncode is not None:
            return self.proc.returncode
        code = self.proc.poll()
        if code is not None:
            # Reparented to the server: what the agent could not end itself (it was killed).
            self.provisioner.agent_ended(self)
        return code

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
        if self._returncode() is None:
            # Stopped, its processes killed, then itself; without /proc, its group.
            if not procs.kill_tree(self.proc.pid, self.start, procs.KILL_TIMEOUT):
                procs.signal_group(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        if self._shell is not None:
            procs.kill_session(self._shell[0], self._shell[1])
        # No wait here (this runs in the broker's loop): poll() reaps it later.

    def cleanup(self) -> None:
        shutil.rmtree(self._workdir, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        return {"pid": self.proc.pid}


def _write_env(spec: AgentSpec) -> Path:
    """The kernel's shell environment, in a file of its private directory that the agent reads
    and deletes: the agent's own environment (the server's, with this package on PYTHONPATH)
    stays its own."""
    path = spec.workdir / ENV_FILE
    env = kernel_environment(spec.env, spec.kernel_name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(env, handle)  # ASCII, \u escapes: any text (and lone surrogates) round-trips
    return path


def process_record(
    pid: int | None, start: int | None, shell: tuple[int, int | None] | None
) -> dict[str, Any]:
    """A local agent's processes as a re-adoption record holds them: each pid with its start
    time, the proof a restarted server asks of a pid before it signals it."""
    return {
        "agent_pid": pid,
        "agent_start": start,
        "shell_pgid": shell[0] if shell else None,
        "shell_start": shell[1] if shell else None,
    }


class AdoptedLocalAgent(AgentHandle):
    """A local agent started by a previous broker: no longer our child, so watched by pid.

    Its pid, and bash's, are signalled only while they are still the processes recorded (the
    same start time): after a crash the OS may have given either pid to an unrelated process.
    """

    def __init__(self, record: Mapping[str, Any], workdir: Path) -> None:
        self._pid = _int(record.get("agent_pid"))
        self.start = _int(record.get("agent_start"))
        shell = _int(record.get("shell_pgid"))
        self._shell = (shell, _int(record.get("shell_start"))) if shell else None
        self._workdir = workdir
        self.killed = False

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def shell_pgid(self) -> int | None:
        return self._shell[0] if self._shell else None

    @shell_pgid.setter
    def shell_pgid(self, pgid: int | None) -> None:
        """Bash's pid from a heartbeat of the re-attached agent: recorded with its start time
        only while it is the child of the recorded agent."""
        if pgid is None or pgid == self.shell_pgid:
            return
        ours = self._pid is not None and procs.start_time(self._pid) == self.start
        self._shell = (pgid, procs.child_start(pgid, self._pid) if ours and self._pid else None)

    def record(self) -> dict[str, Any]:
        return process_record(self._pid, self.start, self._shell)

    def poll(self) -> str | None:
        if self.killed:
            return "agent killed"
        if not self._pid:
            return None  # unknown pid: the heartbeats decide
        info = procs.stat(self._pid)
        if info is None:
            return f"agent process {self._pid} is gone"
        if self.start is not None and info.start != self.start:
            return f"agent process {self._pid} is gone (its pid now belongs to another process)"
        if not info.alive:  # a zombie nobody reaps (our predecessor was its parent)
            return f"agent process {self._pid} has exited"
        return None

    def kill(self) -> None:
        self.killed = True
        if self._pid:  # with everything below it, if it is still the agent recorded
            procs.kill_tree(self._pid, self.start, procs.KILL_TIMEOUT)
        if self._shell is not None:
            procs.kill_session(self._shell[0], self._shell[1])

    def cleanup(self) -> None:
        shutil.rmtree(self._workdir, ignore_errors=True)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class LocalProvisioner(Provisioner):
    """Starts agents as children of the server, which becomes a child subreaper for them.

    An agent ends every process its kernel started when it ends (it is a subreaper itself); one
    that is killed cannot, and its processes (bash, daemons that left bash's session) are then
    reparented to the server. :meth:`agent_ended` ends them: the server's children that are none
    of its agents and not in its own session (everything an agent starts is in a session of its
    own, and no process can join another's session), so nothing the server did not start.
    """

    mode = "local"

    def __init__(self) -> None:
        self._agents: dict[int, LocalAgent] = {}  # agents not yet reaped, by pid
        self._subreaper: bool | None = None  # set when the first agent starts

    def agent_ended(self, agent: LocalAgent) -> None:
        """``agent`` exited (and was reaped): end the processes it left to the server."""
        self._agents.pop(agent.proc.pid, None)
        self.end_orphans()

    def end_orphans(self) -> None:
        """SIGKILL and reap the server's children that none of its live agents is (the
        processes of agents that died), with everything below them."""
        if not self._subreaper:
            return
        me, session = os.getpid(), os.getsid(0)
        deadline = time.monotonic() + procs.KILL_TIMEOUT
        while True:
            left = False
            for pid in procs.children(me):
                info = procs.stat(pid)
                if pid in self._agents or info is None or info.sid == session:
                    continue  # an agent, gone, or started by the server itself
                if info.alive:
                    left = True
                    # Our child, unreaped: its pid is its own until waited for.
                    procs.kill_tree(pid, info.start, timeout=procs.KILL_TIMEOUT)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            if not left or time.monotonic() > deadline:
                return
            time.sleep(0.005)

    def close(self) -> None:
        """At server stop: wait a little for the agents told to end, then end their orphans."""
        deadline = time.monotonic() + _CLOSE_WAIT
        for agent in list(self._agents.values()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            if agent.proc.returncode is not None:
                self._agents.pop(agent.proc.pid, None)
        self.end_orphans()

    def adopt(self, record: Mapping[str, Any], workdir: Path) -> AdoptedLocalAgent:
        """The agent of a previous broker, watched by its recorded pids (no longer our child)."""
        return AdoptedLocalAgent(record, workdir)

    def start(self, spec: AgentSpec) -> LocalAgent:
        if self._subreaper is None:
            self._subreaper = procs.set_child_subreaper()
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
            "--journal-bytes", str(spec.journal_bytes),
            "--env-file", str(_write_env(spec)),
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
        agent = self._agents[proc.pid] = LocalAgent(proc, spec.workdir, self)
        return agent
