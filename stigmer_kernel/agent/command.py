"""One command's life in the agent: from its request to its reply.

A :class:`Command` starts one execute (or hidden complete / inspect) request in the warm
:class:`~stigmer_kernel.agent.shell.BashSession`, forwards its output under the broker's
``output_ack`` credit, feeds it interactive or streamed stdin, stops it on a timeout or an
interrupt (the escalation ladder), notices its end and sends its reply (built by run.py). The
:class:`~stigmer_kernel.agent.agent.Agent` drives it from its loop; the command reaches back only
through the narrow :class:`Link` it is given (sending a message, starting the next bash), so this
module does not import the agent.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..protocol import Message, MsgType
from ..protocol.constants import EXIT_INTERRUPTED, STDIN_ACK_EVERY, STDIN_WINDOW
from ..protocol.enums import StreamName
from . import introspect, procs
from .run import Run, between_notice, execute_reply, hidden_reply, truncated_notice
from .shell import BashSession, CommandEnd
from .stdin import StdinPipe
from .unsent import UnsentOutput

#: Interrupt escalation: seconds after the interrupt at which each step happens.
_TERM_AFTER = 0.5  # SIGTERM the command's processes, SIGINT bash again
_KILL_AFTER = 1.5  # SIGKILL the command's processes
_RESET_AFTER = 3.0  # SIGKILL bash itself: the session is reset
_IDLE_CHECK = 1.0  # seconds between checks that a running command's end report is not lost
_ABORT_WAIT = 0.3  # seconds a stopped command waits for bash to act on the abort signal
_STDIN_POLL = 0.1  # seconds between checks for a command waiting on interactive stdin
_STDIN_END_POLL = 0.02  # seconds between checks that bash opened the FIFO (to close it at EOF)
_STDIN_PIPE_SIZE = 1024 * 1024  # capacity asked for the FIFO of streamed stdin (the usual cap)
_HIDDEN_CAPTURE = 4 * 1024 * 1024  # bytes of a hidden run's stdout kept for its reply


class Link(Protocol):
    """What a command needs of the agent that runs it."""

    @property
    def stopping(self) -> bool:
        """The agent is shutting down: no next bash, no "fresh session" note."""
        ...

    def send(
        self,
        msg_type: MsgType,
        content: dict[str, Any],
        parent: Message | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Sign and send one message to the broker."""
        ...

    def respawn(self, restore: bool, status: int = 0) -> None:
        """bash exited: release it and start the next one (unless the agent is stopping)."""
        ...

    def background_pids(self) -> set[int]:
        """The kernel's running background processes: no stop of this command touches their
        trees (they have sessions of their own)."""
        ...


class Command:
    """One request's execution in the session, driven by the agent's loop.

    The agent builds it from the request (``code`` already checked to be a string), lets it
    :meth:`take_between` the output background jobs wrote since the last command, then
    :meth:`start`\\ s it. Events go in (:meth:`forward`, :meth:`output_ack`, :meth:`input_reply`,
    :meth:`stdin_chunk`, :meth:`feed_stdin`, :meth:`stop`, :meth:`tick`); :meth:`check_end`
    says when it ended and :meth:`finish` sends what is left and its reply.
    """

    def __init__(
        self,
        msg: Message,
        code: str,
        *,
        shell: BashSession,
        stdin_pipe: StdinPipe,
        link: Link,
        execution_count: int,
        last_status: int,
        command_timeout: float | None,
        output_limit: int,
        workdir: str | None = None,
        internal: Callable[[CommandEnd], None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``workdir``: an existing directory the command runs in (the agent puts the session
        back where it was afterwards). ``internal``: a hidden line of the agent's own
        (``code`` is the script, ``env`` its variables), whose end goes to that callback
        instead of a reply."""
        self.shell = shell
        self.stdin_pipe = stdin_pipe
        self.link = link
        content = msg.content
        kind = MsgType(msg.msg_type)
        cursor = content.get("cursor_pos")
        cursor = cursor if isinstance(cursor, int) else None
        query = None
        if kind is MsgType.COMPLETE_REQUEST:
            query = introspect.completion_query(code, cursor)
            script = introspect.completion_code(query, last_status)
        elif kind is MsgType.INSPECT_REQUEST:
            script = introspect.inspect_code(introspect.word_at(code, cursor), last_status)
        else:
            script = code
            chdir = content.get("chdir")
            if workdir is not None:  # this command's own directory, checked to exist
                script = f"builtin cd -- {shlex.quote(workdir)} 2>/dev/null; {code}"
            elif isinstance(chdir, str) and chdir:
                # Auto mode carries the cwd across sides: same line, so line numbers hold.
                script = f"builtin cd -- {shlex.quote(chdir)} 2>/dev/null; {code}"
        stdin = content.get("stdin")
        if isinstance(stdin, str):
            stdin = stdin.encode()
        elif not isinstance(stdin, bytes):
            stdin = None
        if internal is not None:
            kind, stdin, content = MsgType.EXECUTE_REQUEST, None, {}
        allow_stdin = kind is MsgType.EXECUTE_REQUEST and content.get("allow_stdin") is True
        timeout = content.get("timeout")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            timeout = command_timeout
        limit = content.get("output_limit")
        if not isinstance(limit, int) or limit <= 0:
            limit = output_limit
        window = content.get("window")
        if internal is None:
            env = content.get("env") if kind is MsgType.EXECUTE_REQUEST else None
        #: The broker takes this command's last output inside its reply (``inline_output``);
        #: output read is kept in ``unsent`` until :meth:`flush` or the reply.
        self.inline = kind is MsgType.EXECUTE_REQUEST and content.get("inline_output") is True
        self.unsent = UnsentOutput()
        self.script = script
        self.stdin = stdin
        self.env = env if isinstance(env, dict) else None  # this command's own variables
        self.internal = internal
        #: The cwd its reply reports, when not the shell's after it (a ``workdir`` command's
        #: session goes back where it was).
        self.reply_cwd: str | None = None
        now = time.monotonic()
        self.run = Run(
            msg=msg,
            code=code,
            kind=kind,
            started=now,
            started_ticks=procs.boot_ticks(),
            deadline=now + timeout
            if timeout and kind is MsgType.EXECUTE_REQUEST and internal is None
            else None,
            output_limit=limit,
            execution_count=execution_count,
            window=window if isinstance(window, int) and window > 0 else 0,
            query=query,
            allow_stdin=allow_stdin and stdin is None,
            stdin_stream=stdin is None
            and kind is MsgType.EXECUTE_REQUEST
            and content.get("stdin_stream") is True,
            next_stdin_check=now + _STDIN_POLL,
            next_idle_check=now + _IDLE_CHECK,
            internal=internal is not None,
        )

    # -- what the agent asks ----------------------------------------------------------------
    @property
    def hidden(self) -> bool:
        """A completion or inspection: its output makes its reply, the client sees none."""
        return self.run.hidden

    @property
    def held_back(self) -> bool:
        """The client is behind: the command's output is not read until it catches up."""
        return self.run.held_back

    @property
    def stopped(self) -> bool:
        """A timeout or an interrupt began to stop it."""
        return self.run.stop_reason is not None

    def next_timer(self, now: float) -> float:
        """Seconds until the command needs a :meth:`tick` at the latest."""
        run = self.run
        waits = [1.0]
        if run.allow_stdin:
            waits.append(run.next_stdin_check - now)
        if run.stdin_eof and self.stdin_pipe.fd >= 0 and not self.stdin_pipe.pending:
            waits.append(_STDIN_END_POLL)  # closed once bash has opened it
        if run.stop_reason is not None:
            waits.append(0.1)
        elif run.deadline is not None:
            waits.append(run.deadline - now)
        return min(waits)

    # -- start ------------------------------------------------------------------------------
    def take_between(self) -> None:
        """Output background jobs wrote between commands comes first (a completion or
        inspection leaves it for the next command)."""
        if self.run.hidden:
            return
        between = self.shell.between
        for fd, name in self._streams():
            if kept := between.take(fd):
                self.forward(name, kept)
        if dropped := between.take_dropped():
            self._emit(StreamName.STDERR, between_notice(dropped))

    def start(self) -> None:
        """Write the command line to bash, its stdin wired as the request asked."""
        run = self.run
        begin = functools.partial(self.shell.begin, self.script, env=self.env, user=not run.hidden)
        if run.stdin_stream:
            self.stdin_pipe.open(_STDIN_PIPE_SIZE)
            begin(stdin_file=self.stdin_pipe.path)
            # Credit: the client sends its stdin from now on, ``window`` bytes ahead.
            self.link.send(
                MsgType.STDIN_ACK, {"written": 0, "window": STDIN_WINDOW}, parent=run.msg
            )
        elif run.allow_stdin:
            self.stdin_pipe.open()
            begin(stdin_file=self.stdin_pipe.path)
        else:
            begin(self.stdin)

    # -- output -----------------------------------------------------------------------------
    def _streams(self) -> tuple[tuple[int, StreamName], tuple[int, StreamName]]:
        return (
            (self.shell.stdout_fd, StreamName.STDOUT),
            (self.shell.stderr_fd, StreamName.STDERR),
        )

    def forward(self, name: StreamName, data: bytes) -> None:
        """Output the command wrote: to the client, or kept for a hidden run's reply."""
        run = self.run
        if name is StreamName.STDERR:
            if self.shell.marker in data:
                self.shell.read_control()  # (its end: already there if it was closed)
                if self.shell.detached or self.shell.unreported:  # its stderr was lost
                    data = self.shell.strip_reports(data)
            # bash prints "exit" when `exit` runs: held back until it is known whether it did.
            data, run.exit_held = run.exit_held + data, b""
            if data.endswith(b"exit\n"):
                data, run.exit_held = data[:-5], b"exit\n"
            if not data:
                return
        if run.hidden:
            if name is StreamName.STDOUT and run.sent < _HIDDEN_CAPTURE:
                run.captured.append(data)
                run.sent += len(data)
            return
        self._send_stream(name, data)

    def _send_stream(self, name: StreamName, data: bytes) -> None:
        run = self.run
        if run.output_limit > 0:  # a cut the request asked for
            room = run.output_limit - run.sent
            if room <= 0:
                run.dropped += len(data)
                return
            if len(data) > room:
                run.dropped += len(data) - room
                data = data[:room]
        run.sent += len(data)
        self._emit(name, data)

    def _emit(self, name: StreamName, data: bytes) -> None:
        """Output for the client, in order: kept while the reply may carry it, else sent."""
        if self.inline:
            self._send(self.unsent.add(name.value, data, time.monotonic()))
        else:
            self._send([[name.value, data]])

    def flush(self) -> None:
        """Send the output kept (the agent's loop is about to wait: output never waits too)."""
        self._send(self.unsent.take())

    def _send(self, chunks: list[list[Any]]) -> None:
        for name, data in chunks:
            self.run.messages += 1
            self.link.send(MsgType.STREAM, {"name": name, "data": data}, parent=self.run.msg)

    def output_ack(self, msg: Message) -> None:
        """The broker's credit: how many of this command's stream messages reached the client."""
        run = self.run
        acked = msg.content.get("delivered")
        if msg.parent_id == run.msg.msg_id and isinstance(acked, int):
            run.acked = max(run.acked, acked)

    def _drain(self) -> None:
        for fd, name in self._streams():
            if data := self.shell.drain(fd):
                self.forward(name, data)

    # -- stdin ------------------------------------------------------------------------------
    def input_reply(self, value: object) -> None:
        """A line the client typed, for a command that allows interactive stdin."""
        run = self.run
        if run.allow_stdin and isinstance(value, str):
            run.waiting_input = False
            self.stdin_pipe.write(value.encode("utf-8", "surrogateescape") + b"\n")

    def stdin_chunk(self, msg: Message) -> None:
        """Streamed stdin from the client (``stigmer run`` reading its own stdin)."""
        run = self.run
        if not run.stdin_stream or msg.parent_id != run.msg.msg_id:
            return  # its command ended: what it did not read goes
        data = msg.content.get("data")
        if isinstance(data, bytes) and data and not run.stdin_eof:
            self.stdin_pipe.pending += data
        if msg.content.get("eof") is True:
            run.stdin_eof = True
        self.feed_stdin()

    def feed_stdin(self) -> None:
        """Write streamed stdin into the FIFO as far as it takes it; acknowledge what went in
        (the client sends more as this frees room), and end it once the client's input did."""
        run = self.run
        run.stdin_written += self.stdin_pipe.flush()
        unacked = run.stdin_written - run.stdin_acked
        if unacked >= STDIN_ACK_EVERY or (unacked and not self.stdin_pipe.pending):
            run.stdin_acked = run.stdin_written
            self.link.send(MsgType.STDIN_ACK, {"written": run.stdin_written}, parent=run.msg)
        if run.stdin_eof:
            self._end_stdin()

    def _end_stdin(self) -> None:
        """The client's stdin ended and all of it is in the FIFO: close our end, so the command
        reads EOF after the rest, once bash holds the FIFO open for it."""
        pipe = self.stdin_pipe
        if pipe.fd >= 0 and not pipe.pending and pipe.opened_by(self.shell.pid):
            pipe.close()

    def _check_stdin(self, now: float) -> None:
        """Ask the client for a line when the command sits waiting on an empty stdin."""
        run = self.run
        run.next_stdin_check = now + _STDIN_POLL
        self.stdin_pipe.flush()
        if run.waiting_input:
            return
        pids = [
            self.shell.pid,
            *procs.started_since(
                os.getpid(), run.started_ticks, set(), self.link.background_pids()
            ),
        ]
        if self.stdin_pipe.reader_waiting(pids):
            run.waiting_input = True
            self.flush()  # (the prompt it printed comes first)
            self.link.send(MsgType.INPUT_REQUEST, {"prompt": "", "password": False}, parent=run.msg)

    # -- timers and stopping ----------------------------------------------------------------
    def stop(self, reason: str) -> None:
        """Begin the stop ladder (``reason``: "timeout" or "interrupted")."""
        run = self.run
        run.stop_reason = reason
        run.stop_started = time.monotonic()
        run.stop_stage = 0
        # The command's processes only: what earlier commands left running is not its own.
        pids = procs.started_since(
            os.getpid(), run.started_ticks, {self.shell.pid}, self.link.background_pids()
        )
        if self.shell.ignores_sigint():  # trap '' INT: Ctrl-C would stop nothing
            run.stop_stage = 1
            self.shell.abort()
            procs.signal_pids(pids, signal.SIGTERM)
        else:
            self.shell.interrupt(pids)

    def tick(self, now: float) -> None:
        """The timers: the deadline, stdin checks, the lost end report, the stop ladder."""
        run = self.run
        if run.stop_reason is None:
            if run.deadline is not None and now >= run.deadline:
                self.stop("timeout")
            elif run.allow_stdin and now >= run.next_stdin_check:
                self._check_stdin(now)
            if run.stdin_eof:
                self._end_stdin()
            if now >= run.next_idle_check:
                self._check_idle(now)
            return
        elapsed = now - run.stop_started
        mine = {self.shell.pid}
        if run.stop_stage == 0 and elapsed >= _TERM_AFTER:
            run.stop_stage = 1
            survivors = procs.started_since(
                os.getpid(), run.started_ticks, mine, self.link.background_pids()
            )
            # Ctrl-C again first: a program started just as the first one was sent missed it.
            # Then the abort signal, which ends the command line even if bash's SIGINT trap
            # would let it go on once its programs die of the SIGTERM that follows.
            procs.signal_pids(survivors, signal.SIGINT)
            self.shell.abort()
            procs.signal_pids(survivors, signal.SIGTERM)
        elif run.stop_stage == 1 and elapsed >= _KILL_AFTER:
            run.stop_stage = 2
            procs.signal_pids(
                procs.started_since(
                    os.getpid(), run.started_ticks, mine, self.link.background_pids()
                ),
                signal.SIGKILL,
            )
            self.shell.abort()
        elif run.stop_stage == 2 and elapsed >= _RESET_AFTER:
            run.stop_stage = 3
            self.shell.signal_shell(signal.SIGKILL)

    def _check_idle(self, now: float) -> None:
        """A command whose end report went missing: bash reads its next line already. Either
        the command removed the report (PROMPT_COMMAND) and it is put back, or it closed the
        shell's own descriptors and the shell is restarted."""
        self.run.next_idle_check = now + _IDLE_CHECK
        self.shell.read_control()
        if self.shell.finished() is None and not self.shell.repairing and self.shell.idle():
            if self.shell.detached:
                self.run.problem = "the command closed the shell's own descriptors"
                self.shell.signal_shell(signal.SIGKILL)
            else:
                self.shell.repair()

    # -- the end ----------------------------------------------------------------------------
    def check_end(self) -> CommandEnd | None:
        """How the command ended, once it has (its output read to the end); else None."""
        run = self.run
        end = self.shell.finished()
        if end is None and self.shell.reap():
            end = self._after_exit()
        elif end is not None:
            self._drain()  # all the command wrote is in the pipes by now
            if end.problem is not None:
                self.shell.signal_shell(signal.SIGKILL)
                self.shell.reap(block=True)
                self.link.respawn(restore=False)
                end.session_ended = True
            elif run.stop_stage and self.shell.wait_exit(_ABORT_WAIT):
                self._after_exit()  # the abort signal raced the end: bash is restarted now
        return end

    def _after_exit(self) -> CommandEnd:
        """bash exited during the command: forward what it left and start the next bash, with
        the state its EXIT trap saved (exit, set -e, the abort signal) or afresh."""
        run = self.run
        self._drain()
        status = self.shell.exit_status if self.shell.exit_status is not None else -1
        code = 128 - status if status < 0 else status
        detached = self.shell.closed_before_exit(exit_printed=bool(run.exit_held))
        restore = self.shell.files.saved_state()
        if restore and status >= 0:
            run.exit_held = b""  # bash's "exit" line: the command ran `exit`
        # After a stop, $? is what a Ctrl-C leaves (not the abort signal's 138).
        self.link.respawn(restore, EXIT_INTERRUPTED if run.stop_stage else code)
        problem = run.problem
        if problem is not None:
            pass
        elif detached and restore:
            problem = "the command closed the shell's own descriptors"
        elif detached:
            problem = "the shell was replaced by `exec`"
        return CommandEnd(
            exit_code=code,
            cwd=self.shell.cwd,
            session_ended=not self.shell.restored,
            problem=problem,
        )

    def finish(self, end: CommandEnd, fresh_session: bool = False) -> None:
        """Send what is left of the command's output and its reply. ``fresh_session``: the
        session it started in was a fresh one (bash died between commands without its state)."""
        run = self.run
        # A stop the command line outlived (a SIGINT trap that let it go on to its end) did not
        # stop it: the reply says how it really ended.
        if run.stop_reason is not None and not (
            run.stop_stage or end.exit_code == EXIT_INTERRUPTED or end.session_ended
        ):
            run.stop_reason = None
        # Whatever the command started and left behind ends with it if it was stopped.
        if run.stop_reason is not None:
            procs.signal_pids(
                procs.started_since(
                    os.getpid(), run.started_ticks, {self.shell.pid}, self.link.background_pids()
                ),
                signal.SIGKILL,
            )
        if run.exit_held and not run.hidden:
            self._send_stream(StreamName.STDERR, run.exit_held)
        run.exit_held = b""
        if run.allow_stdin or run.stdin_stream:
            self.stdin_pipe.close()
        if self.internal is not None:
            self.internal(end)
            return
        if run.hidden:
            self.link.send(*hidden_reply(run), parent=run.msg)
            return
        if fresh_session:
            end.session_ended = True
        if run.dropped:
            self._emit(StreamName.STDERR, truncated_notice(run))
        cwd = self.reply_cwd or self.shell.cwd
        content = execute_reply(run, end, time.monotonic(), cwd, self.link.stopping)
        if self.unsent:  # the output read since the loop last waited: in the reply
            content["output"] = self.unsent.take()
        if content["exit_code"] == 137 and procs.oom_killed():
            content["oom_killed"] = True  # (the engine's own event may come after this reply)
        self.link.send(MsgType.EXECUTE_REPLY, content, parent=run.msg)
        if self.shell.stdin_written:
            self.shell.stdin_written = False
            with contextlib.suppress(FileNotFoundError):
                self.shell.files.stdin_path.unlink()
