"""What runs in a request's own context in the session: a command with a ``workdir`` of its
own, a background start, and the hidden lines of the agent's own they need.

:class:`ContextMixin` is part of :class:`~stigmer_kernel.agent.agent.Agent` (kept apart so
that agent.py stays the loop). A ``workdir`` is checked here, put before the command's line
(``builtin cd -- DIR``, as auto mode's ``chdir``), and afterwards a hidden line puts the
session back where it was: the command's reply reports that cwd. A background start runs a
hidden line that writes the session's exported environment (the request's ``env`` included)
to a file, then spawns the process there (agent/processes.py) and answers at once.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..protocol import ErrorName, ExecStatus, Message, MsgType
from ..protocol.enums import REPLY_FOR
from .command import Command
from .processes import ProcessError, ProcessTable
from .shell import BashSession, CommandEnd
from .shell_scripts import capture_env_script
from .stdin import StdinPipe

if TYPE_CHECKING:
    from .agent import AgentOptions


class ContextMixin:
    """Workdirs, background starts and process requests, for the agent."""

    opts: AgentOptions
    shell: BashSession
    stdin_pipe: StdinPipe
    processes: ProcessTable
    command: Command | None
    execution_count: int
    last_status: int
    stopping: bool
    broker_gone: bool

    def send(
        self,
        msg_type: MsgType,
        content: dict[str, Any],
        parent: Message | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        raise NotImplementedError

    def respawn(self, restore: bool, status: int = 0) -> None:
        raise NotImplementedError

    def _begin(self, command: Command) -> None:
        raise NotImplementedError

    def _internal(
        self,
        msg: Message,
        script: str,
        on_end: Callable[[CommandEnd], None],
        env: dict[str, str] | None = None,
    ) -> None:
        """Run a hidden line of the agent's own in the session (for the request ``msg``)."""
        self.command = Command(
            msg,
            script,
            shell=self.shell,
            stdin_pipe=self.stdin_pipe,
            link=self,
            execution_count=self.execution_count,
            last_status=self.last_status,
            command_timeout=None,
            output_limit=0,
            internal=on_end,
            env=env,
        )
        self._begin(self.command)

    def _cwd_before(self, msg: Message) -> str:
        """Where the session is when ``msg`` starts (auto mode may carry it over first)."""
        chdir = msg.content.get("chdir")
        if isinstance(chdir, str) and chdir and os.path.isdir(chdir):
            return chdir
        return self.shell.cwd

    def _workdir(self, msg: Message) -> str | None:
        """The request's own working directory, absolute (relative ones start from the
        session's cwd); if it is not a directory the kernel can enter, the request is
        answered with an error and None returned."""
        given = msg.content.get("workdir")
        cwd = self._cwd_before(msg)
        if isinstance(given, str) and given:
            target = os.path.normpath(os.path.join(cwd, given))
            if os.path.isdir(target) and os.access(target, os.X_OK):
                return target
            why = f"workdir {given!r} is not a directory this kernel can enter"
            if not os.path.isabs(given):
                why += f" (relative to its cwd {cwd})"
        else:
            why = "'workdir' must be a non-empty string"
        self._reply_error(msg, ErrorName.BAD_REQUEST, why)
        return None

    def _reply_error(self, msg: Message, ename: ErrorName, evalue: str) -> None:
        self.send(
            MsgType.EXECUTE_REPLY,
            {"status": ExecStatus.ERROR.value, "exit_code": None, "ename": ename, "evalue": evalue},
            parent=msg,
        )

    # -- background processes -----------------------------------------------------------------
    def _start_background(self, msg: Message, code: str, workdir: str | None) -> None:
        """A background start: a hidden line captures the session's context (its exported
        environment with the request's own variables, and its cwd), then the agent spawns
        the process and answers at once with its handle."""
        env_file = self.shell.files.workdir / "background.env"
        env = msg.content.get("env")
        started = time.monotonic()

        def spawned(end: CommandEnd) -> None:
            try:
                data = env_file.read_bytes()
            except OSError:
                data = None
            with contextlib.suppress(OSError):
                env_file.unlink()
            if self.stopping:
                self._reply_aborted(msg, "the kernel is shutting down")
                return
            if data is None or end.problem is not None:
                self._reply_error(
                    msg,
                    ErrorName.BAD_REQUEST,
                    "could not read the session's environment to start the process"
                    + (f": {end.problem}" if end.problem else ""),
                )
                return
            environment = dict(
                entry.split("=", 1)
                for entry in data.decode("utf-8", "surrogateescape").split("\0")
                if "=" in entry and not entry.startswith("__stg_")
            )
            cwd = workdir or self.shell.cwd
            try:
                proc = self.processes.start(code, shell=self.opts.shell, cwd=cwd, env=environment)
            except ProcessError as exc:
                self._reply_error(msg, ErrorName(exc.ename), exc.message)
                return
            self.send(
                MsgType.EXECUTE_REPLY,
                {
                    "status": ExecStatus.OK.value,
                    "exit_code": 0,
                    "duration": round(time.monotonic() - started, 6),
                    "execution_count": self.execution_count,
                    "cwd": self.shell.cwd,
                    "truncated": False,
                    "session_reset": end.session_ended,
                    "process": {
                        "id": proc.id,
                        "pid": proc.pid,
                        "command": code,
                        "started": proc.started,
                        "cwd": cwd,
                    },
                },
                parent=msg,
            )

        script = capture_env_script(env_file, self.last_status)
        self._internal(msg, script, spawned, env if isinstance(env, dict) else None)

    def _process_answer(self, msg: Message, content: dict[str, Any]) -> None:
        if not self.broker_gone:
            self.send(MsgType.PROCESS_REPLY, content, parent=msg)

    def background_pids(self) -> set[int]:
        return self.processes.pids()

    def _reply_aborted(self, msg: Message, reason: str) -> None:
        reply_type = REPLY_FOR.get(MsgType(msg.msg_type), MsgType.EXECUTE_REPLY)
        self.send(
            reply_type,
            {
                "status": ExecStatus.ABORTED.value,
                "exit_code": None,
                "duration": 0.0,
                "ename": ErrorName.ABORTED,
                "evalue": reason,
            },
            parent=msg,
        )
