"""The execution agent: the only code that runs user commands.

One agent serves one kernel. It connects a DEALER to the broker's agent endpoint, registers with
its kernel id (signed with the kernel's own key), then runs execute requests one at a time in its
warm :class:`~stigmer_kernel.agent.shell.BashSession`, streaming output as it is written.
Heartbeats come from a separate thread on a separate socket, so a busy agent still beats; the
broker answers each beat, and an agent that hears nothing for ``orphan_timeout`` exits.

The same module runs on the host (local mode) and inside sandbox containers.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shlex
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from .._version import __version__
from ..curve import ClientKeys, make_client
from ..errors import ProtocolError
from ..protocol import ErrorName, ExecStatus, Message, MsgType, Session
from ..protocol.constants import (
    EXIT_INTERRUPTED,
    EXIT_TIMEOUT,
    REPLY_FOR,
    STDIN_ACK_EVERY,
    STDIN_WINDOW,
    StreamName,
)
from . import introspect, procs
from .shell import BETWEEN_COMMANDS_LIMIT, BashSession, CommandEnd
from .stdin import StdinPipe

log = logging.getLogger("stigmer.agent")

#: Interrupt escalation: seconds after the interrupt at which each step happens.
_TERM_AFTER = 0.5  # SIGTERM the command's processes, SIGINT bash again
_KILL_AFTER = 1.5  # SIGKILL the command's processes
_RESET_AFTER = 3.0  # SIGKILL bash itself: the session is reset
_IDLE_CHECK = 1.0  # seconds between checks that a running command's end report is not lost
_ABORT_WAIT = 0.3  # seconds a stopped command waits for bash to act on the abort signal
_STARTUP_TIMEOUT = 10.0
_STDIN_POLL = 0.1  # seconds between checks for a command waiting on interactive stdin
_STDIN_END_POLL = 0.02  # seconds between checks that bash opened the FIFO (to close it at EOF)
_STDIN_PIPE_SIZE = 1024 * 1024  # capacity asked for the FIFO of streamed stdin (the usual cap)
_SEND_RETRY = 0.25  # seconds a blocked send waits before checking that the broker still answers
#: Requests that need the session and so wait their turn.
_QUEUED = {
    MsgType.EXECUTE_REQUEST.value,
    MsgType.COMPLETE_REQUEST.value,
    MsgType.INSPECT_REQUEST.value,
}


class _BrokerGone(Exception):
    """The broker stopped answering while a send was blocked on a full queue."""


@dataclass
class Run:
    """One execute request in progress."""

    msg: Message
    code: str
    kind: MsgType  # EXECUTE_REQUEST, or a hidden COMPLETE_REQUEST / INSPECT_REQUEST
    started: float
    started_ticks: int
    deadline: float | None
    output_limit: int  # bytes of output sent at most (0: no limit)
    execution_count: int
    window: int = 0  # stream messages sent ahead of the broker's output_ack (0: no flow control)
    sent: int = 0
    messages: int = 0  # stream messages sent
    acked: int = 0  # of which the broker said they reached the client
    dropped: int = 0
    stop_reason: str | None = None  # "timeout" | "interrupted"
    stop_started: float = 0.0
    stop_stage: int = 0
    captured: list[bytes] = field(default_factory=list)  # output of hidden runs
    query: introspect.CompletionQuery | None = None
    allow_stdin: bool = False
    waiting_input: bool = False
    stdin_stream: bool = False  # stdin arrives in stdin_chunk messages, into the FIFO
    stdin_eof: bool = False  # ... and has ended: the FIFO closes once all of it is in
    stdin_written: int = 0  # bytes of it written into the FIFO
    stdin_acked: int = 0  # ... as last told in a stdin_ack
    next_stdin_check: float = 0.0
    next_idle_check: float = 0.0
    exit_held: bytes = b""  # a trailing "exit\n" on stderr, sent unless the command ran `exit`
    problem: str | None = None  # what broke the session, when the agent ended bash for it

    @property
    def hidden(self) -> bool:
        return self.kind is not MsgType.EXECUTE_REQUEST

    @property
    def held_back(self) -> bool:
        """The client is behind: the command's output is not read until it catches up."""
        return self.window > 0 and self.messages - self.acked >= self.window


@dataclass
class AgentOptions:
    endpoint: str
    kernel_id: str
    key: bytes
    cwd: str
    workdir: Path
    shell: str = "bash"
    heartbeat_interval: float = 1.0
    orphan_timeout: float = 60.0
    command_timeout: float | None = None
    output_limit: int = 0  # bytes of output sent per command at most (0: no limit)
    join: str | None = None  # a remote agent: the kernel name it offers to serve
    curve: ClientKeys | None = None  # CurveZMQ to the broker over TCP (remote, sandbox on tcp)
    env: dict[str, str] | None = None  # the shell's environment (None: the agent's own)


def secure(sock: zmq.Socket[Any], opts: AgentOptions) -> None:
    """CurveZMQ on a TCP connection to the broker (remote agents)."""
    if opts.curve is not None:
        make_client(sock, opts.curve)


class Heartbeat(threading.Thread):
    """Sends a beat every interval on its own socket and notes the broker's answers."""

    def __init__(self, ctx: zmq.Context[Any], opts: AgentOptions, identity: bytes) -> None:
        super().__init__(name="stigmer-heartbeat", daemon=True)
        self.ctx = ctx
        self.opts = opts
        self.identity = identity + b":hb"
        self.stop_event = threading.Event()
        self.last_ack = time.monotonic()
        self.busy = False
        self.shell_pgid = -1

    def run(self) -> None:
        session = Session(self.opts.key, check_replay=False)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, self.identity)
        sock.setsockopt(zmq.SNDHWM, 10)
        secure(sock, self.opts)
        sock.connect(self.opts.endpoint)
        try:
            while not self.stop_event.is_set():
                beat = session.msg(
                    MsgType.AGENT_HEARTBEAT.value,
                    {
                        "kernel_id": self.opts.kernel_id,
                        "pid": os.getpid(),
                        "shell_pgid": self.shell_pgid,
                        "busy": self.busy,
                    },
                )
                with contextlib.suppress(zmq.Again):
                    sock.send_multipart(session.serialize(beat), flags=zmq.NOBLOCK)
                deadline = time.monotonic() + self.opts.heartbeat_interval
                while (left := deadline - time.monotonic()) > 0 and not self.stop_event.is_set():
                    if sock.poll(min(left, 0.2) * 1000):
                        try:
                            session.deserialize(sock.recv_multipart())
                        except ProtocolError:
                            continue  # only a signed answer proves the broker is there
                        self.last_ack = time.monotonic()
        finally:
            sock.close(0)


class Agent:
    def __init__(self, opts: AgentOptions) -> None:
        self.opts = opts
        self.session = Session(opts.key)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.identity = f"{opts.kernel_id}:{os.getpid()}:{os.urandom(4).hex()}".encode()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.IDENTITY, self.identity)
        # A small queue: when the broker falls behind, sends block, output stops being read
        # and the command itself waits on its pipe. Backpressure instead of unbounded memory.
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        # ...but a send blocked for good (the broker is gone) must not stop the orphan check.
        self.sock.setsockopt(zmq.SNDTIMEO, int(_SEND_RETRY * 1000))
        self.shell = BashSession(opts.workdir, opts.cwd, opts.shell, env=_clean_env(opts.env))
        self.queue: collections.deque[Message] = collections.deque()
        self.run_state: Run | None = None
        self.execution_count = 0
        self.last_status = 0  # exit status of the last user command; hidden runs restore it
        self.lost_session = False  # bash died between commands without its state: say so next
        self.stdin_pipe = StdinPipe(opts.workdir / "stdin.fifo")
        self.heartbeat = Heartbeat(self.ctx, opts, self.identity)
        self.stopping = False
        self.subreaper = False

    # -- plumbing ---------------------------------------------------------------------------
    def send(
        self,
        msg_type: MsgType,
        content: dict[str, Any],
        parent: Message | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        msg = self.session.msg(msg_type.value, content, parent, metadata)
        frames = self.session.serialize(msg)
        while True:  # a slow broker loses nothing: retry for as long as it answers heartbeats
            try:
                self.sock.send_multipart(frames, copy=False)
                return
            except zmq.Again:
                if self._orphaned():
                    raise _BrokerGone from None

    def _orphaned(self) -> bool:
        """True once the broker has not answered a heartbeat for ``orphan_timeout``."""
        return time.monotonic() - self.heartbeat.last_ack > self.opts.orphan_timeout

    def start_shell(self, restore: bool = False, status: int = 0) -> None:
        """Spawn bash and read until its first prompt (discarding its start-up chatter).

        With ``restore``, the new bash reads back the state its predecessor's EXIT trap saved,
        and ``$?`` is ``status``; if that fails, a fresh bash is started instead.
        """
        self.shell.spawn(restore, status)
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        poller = zmq.Poller()
        poller.register(self.shell.ctl_fd, zmq.POLLIN)
        while not self.shell.ready:
            if time.monotonic() > deadline or self.shell.reap() or self.shell.ctl_fd < 0:
                if restore:  # the saved state stops bash from starting: do without it
                    self.shell.signal_shell(signal.SIGKILL)
                    self.shell.reap(block=True)
                    self.shell.release()
                    self.start_shell()
                    return
                raise RuntimeError(f"bash ({self.opts.shell}) did not start")
            if poller.poll(200):
                self.shell.read_control()
        if restore and not self.shell.restored:  # read back only in part: not a session
            self.shell.signal_shell(signal.SIGKILL)
            self.shell.reap(block=True)
            self.shell.release()
            self.start_shell()
            return
        self.heartbeat.shell_pgid = self.shell.pid

    # -- main loop --------------------------------------------------------------------------
    def run(self) -> int:
        self.subreaper = procs.set_child_subreaper()
        self.start_shell()
        secure(self.sock, self.opts)
        self.sock.connect(self.opts.endpoint)
        linger = 2000
        try:
            self._register()
            self.heartbeat.start()
            self._loop()
        except _BrokerGone:
            log.warning(
                "no answer from the broker for %.0fs while sending to it; exiting",
                self.opts.orphan_timeout,
            )
            linger = 0  # nobody will take what is still queued
        finally:
            self.heartbeat.stop_event.set()
            self.shell.close()
            if self.subreaper:
                # Whatever the kernel ever started ends with it: daemons that left bash's
                # session (setsid, double fork) were reparented to this subreaper.
                procs.end_descendants(os.getpid())
            if self.heartbeat.is_alive():
                self.heartbeat.join(timeout=2)
            self.sock.close(linger=linger)
            self.ctx.term()
        return 0

    def _register(self) -> None:
        self.send(
            MsgType.AGENT_REGISTER,
            {
                "kernel_id": self.opts.kernel_id,
                "pid": os.getpid(),
                "shell_pgid": self.shell.pid,
                "hostname": socket.gethostname(),
                "version": __version__,
                "cwd": self.shell.cwd,
                "bash_version": self.shell.version(),
                # A remote agent joins: it names its kernel and the key it signs with (sent
                # only over an authenticated, encrypted CurveZMQ connection).
                **(
                    {"join": self.opts.join, "key": self.opts.key.decode()}
                    if self.opts.join
                    else {}
                ),
            },
        )

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        registered_fds: tuple[int, ...] = (-1, -1, -1, -1, -1)
        while not self.stopping:
            shell = self.shell
            run = self.run_state
            # Streamed stdin the FIFO could not take yet: written when it has room.
            feed = self.stdin_pipe.fd if self.stdin_pipe.pending else -1
            if run is not None and run.held_back:  # the command waits on its full pipe
                fds = (-1, -1, shell.ctl_fd, shell.pidfd, feed)
            else:
                fds = (shell.stdout_fd, shell.stderr_fd, shell.ctl_fd, shell.pidfd, feed)
            if fds != registered_fds:
                for fd in registered_fds:
                    if fd >= 0:
                        poller.unregister(fd)
                for fd in fds[:4]:
                    if fd >= 0:
                        poller.register(fd, zmq.POLLIN)
                if feed >= 0:
                    poller.register(feed, zmq.POLLOUT)
                registered_fds = fds
            timeout_ms = self._next_timer_ms()
            for sock_or_fd, events in poller.poll(timeout_ms):
                if sock_or_fd is self.sock:
                    self._drain_socket()
                elif events & zmq.POLLOUT:
                    if run is not None and run is self.run_state:
                        self._feed_stdin(run)
                else:
                    self._on_output(int(sock_or_fd))
            self._tick()
            if self._orphaned():
                log.warning(
                    "no answer from the broker for %.0fs; exiting", self.opts.orphan_timeout
                )
                self.stopping = True

    def _next_timer_ms(self) -> int:
        run = self.run_state
        if run is None:
            return 1000
        now = time.monotonic()
        waits = [1.0]
        if run.allow_stdin:
            waits.append(run.next_stdin_check - now)
        if run.stdin_eof and self.stdin_pipe.fd >= 0 and not self.stdin_pipe.pending:
            waits.append(_STDIN_END_POLL)  # closed once bash has opened it
        if run.stop_reason is not None:
            waits.append(0.1)
        elif run.deadline is not None:
            waits.append(run.deadline - now)
        return max(0, int(min(waits) * 1000))

    def _drain_socket(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                _, msg = self.session.deserialize(frames)
            except ProtocolError as exc:
                log.warning("dropped a bad message from the broker: %s", exc)
                continue
            self._on_message(msg)

    def _on_message(self, msg: Message) -> None:
        mtype = msg.msg_type
        if mtype in _QUEUED:
            self.queue.append(msg)
            if self.run_state is None:
                self._start_next()
        elif mtype == MsgType.IS_COMPLETE_REQUEST.value:
            code = msg.content.get("code")
            status = introspect.is_complete(code if isinstance(code, str) else "", self.opts.shell)
            reply: dict[str, Any] = {"status": status}
            if status == "incomplete":
                reply["indent"] = ""
            self.send(MsgType.IS_COMPLETE_REPLY, reply, parent=msg)
        elif mtype == MsgType.INPUT_REPLY.value:
            run = self.run_state
            value = msg.content.get("value")
            if run is not None and run.allow_stdin and isinstance(value, str):
                run.waiting_input = False
                self.stdin_pipe.write(value.encode("utf-8", "surrogateescape") + b"\n")
        elif mtype == MsgType.INTERRUPT_REQUEST.value:
            if self.run_state is not None and self.run_state.stop_reason is None:
                self._begin_stop(self.run_state, "interrupted")
        elif mtype == MsgType.AGENT_SHUTDOWN.value:
            self.stopping = True
            if self.run_state is not None:
                self._begin_stop(self.run_state, "interrupted")
                self._finish(self.run_state, CommandEnd(EXIT_INTERRUPTED, None))
            for queued in self.queue:
                self._reply_aborted(queued, "the kernel is shutting down")
            self.queue.clear()
            self.send(MsgType.AGENT_GOODBYE, {"kernel_id": self.opts.kernel_id})
        elif mtype == MsgType.STDIN_CHUNK.value:
            run = self.run_state
            if run is None or not run.stdin_stream or msg.parent_id != run.msg.msg_id:
                return  # its command ended: what it did not read goes
            data = msg.content.get("data")
            if isinstance(data, bytes) and data and not run.stdin_eof:
                self.stdin_pipe.pending += data
            if msg.content.get("eof") is True:
                run.stdin_eof = True
            self._feed_stdin(run)
        elif mtype == MsgType.OUTPUT_ACK.value:
            run = self.run_state
            acked = msg.content.get("delivered")
            if run is not None and msg.parent_id == run.msg.msg_id and isinstance(acked, int):
                run.acked = max(run.acked, acked)
        elif mtype == MsgType.AGENT_WELCOME.value:
            self.heartbeat.last_ack = time.monotonic()
        else:
            log.warning("ignored message of unknown type %r", mtype)

    # -- commands ---------------------------------------------------------------------------
    def _start_next(self) -> None:
        while self.queue and self.run_state is None:
            msg = self.queue.popleft()
            content = msg.content
            kind = MsgType(msg.msg_type)
            code = content.get("code")
            if not isinstance(code, str):
                self._reply_aborted(msg, f"{kind.value} content needs a string 'code'")
                continue
            cursor = content.get("cursor_pos")
            cursor = cursor if isinstance(cursor, int) else None
            query = None
            if kind is MsgType.COMPLETE_REQUEST:
                query = introspect.completion_query(code, cursor)
                script = introspect.completion_code(query, self.last_status)
            elif kind is MsgType.INSPECT_REQUEST:
                script = introspect.inspect_code(introspect.word_at(code, cursor), self.last_status)
            else:
                script = code
                chdir = content.get("chdir")
                if isinstance(chdir, str) and chdir:
                    # Auto mode carries the cwd across sides: same line, so line numbers hold.
                    script = f"builtin cd -- {shlex.quote(chdir)} 2>/dev/null; {code}"
            stdin = content.get("stdin")
            if isinstance(stdin, str):
                stdin = stdin.encode()
            elif not isinstance(stdin, bytes):
                stdin = None
            allow_stdin = kind is MsgType.EXECUTE_REQUEST and content.get("allow_stdin") is True
            timeout = content.get("timeout", None)
            if not isinstance(timeout, (int, float)) or timeout <= 0:
                timeout = self.opts.command_timeout
            limit = content.get("output_limit")
            if not isinstance(limit, int) or limit <= 0:
                limit = self.opts.output_limit
            window = content.get("window")
            count = content.get("execution_count")
            if kind is MsgType.EXECUTE_REQUEST:
                if isinstance(count, int):
                    self.execution_count = count
                elif not content.get("silent") and content.get("store_history", True):
                    self.execution_count += 1
            now = time.monotonic()
            self.run_state = run = Run(
                msg=msg,
                code=code,
                kind=kind,
                started=now,
                started_ticks=procs.boot_ticks(),
                deadline=now + timeout if timeout and kind is MsgType.EXECUTE_REQUEST else None,
                output_limit=limit,
                execution_count=self.execution_count,
                window=window if isinstance(window, int) and window > 0 else 0,
                query=query,
                allow_stdin=allow_stdin and stdin is None,
                stdin_stream=stdin is None
                and kind is MsgType.EXECUTE_REQUEST
                and content.get("stdin_stream") is True,
                next_stdin_check=now + _STDIN_POLL,
            )
            self.heartbeat.busy = True
            if not run.hidden:
                # Output background jobs wrote between commands comes first (a completion or
                # inspection leaves it for the next command).
                between = self.shell.between
                for fd, name in self._streams():
                    if kept := between.take(fd):
                        self._forward(run, name, kept)
                if dropped := between.take_dropped():
                    notice = (
                        f"[stigmer] {dropped} bytes of output written between commands were "
                        f"discarded (more than {BETWEEN_COMMANDS_LIMIT} bytes per stream)\n"
                    ).encode()
                    self.send(MsgType.STREAM, {"name": "stderr", "data": notice}, parent=msg)
            run.next_idle_check = now + _IDLE_CHECK
            if self.shell.reap():  # bash ended since the last command: this one gets the next
                self._restart_idle()
            env = content.get("env") if kind is MsgType.EXECUTE_REQUEST else None
            env = env if isinstance(env, dict) else None  # this command's own variables
            if run.stdin_stream:
                self.stdin_pipe.open(_STDIN_PIPE_SIZE)
                self.shell.begin(script, stdin_file=self.stdin_pipe.path, env=env)
                # Credit: the client sends its stdin from now on, ``window`` bytes ahead.
                self.send(MsgType.STDIN_ACK, {"written": 0, "window": STDIN_WINDOW}, parent=msg)
            elif run.allow_stdin:
                self.stdin_pipe.open()
                self.shell.begin(script, stdin_file=self.stdin_pipe.path, env=env)
            else:
                self.shell.begin(script, stdin, env=env)

    def _streams(self) -> tuple[tuple[int, StreamName], tuple[int, StreamName]]:
        return (
            (self.shell.stdout_fd, StreamName.STDOUT),
            (self.shell.stderr_fd, StreamName.STDERR),
        )

    def _on_output(self, fd: int) -> None:
        if fd == self.shell.ctl_fd:
            self.shell.read_control()
        elif fd in (self.shell.stdout_fd, self.shell.stderr_fd):
            data, _ = self.shell.read(fd)
            run = self.run_state
            if data and run is None:
                self.shell.between.keep(fd, data)
            elif data and run is not None:
                name = StreamName.STDOUT if fd == self.shell.stdout_fd else StreamName.STDERR
                self._forward(run, name, data)
        self._check_done()  # (the pidfd: bash exited)

    def _forward(self, run: Run, name: StreamName, data: bytes) -> None:
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
            if name is StreamName.STDOUT and run.sent < 4 * 1024 * 1024:
                run.captured.append(data)
                run.sent += len(data)
            return
        self._send_stream(run, name, data)

    def _send_stream(self, run: Run, name: StreamName, data: bytes) -> None:
        if run.output_limit > 0:  # a cut the request asked for
            room = run.output_limit - run.sent
            if room <= 0:
                run.dropped += len(data)
                return
            if len(data) > room:
                run.dropped += len(data) - room
                data = data[:room]
        run.sent += len(data)
        run.messages += 1
        self.send(MsgType.STREAM, {"name": name.value, "data": data}, parent=run.msg)

    def _check_done(self) -> None:
        run = self.run_state
        if run is None:
            if not self.stopping and self.shell.reap():
                self._restart_idle()  # e.g. an abort signal that landed after the command
            return
        end = self.shell.finished()
        if end is None and self.shell.reap():
            end = self._after_exit(run)
        elif end is not None:
            self._drain(run)  # all the command wrote is in the pipes by now
            if end.problem is not None:
                self.shell.signal_shell(signal.SIGKILL)
                self.shell.reap(block=True)
                self._respawn(restore=False)
                end.session_ended = True
            elif run.stop_stage and self.shell.wait_exit(_ABORT_WAIT):
                self._after_exit(run)  # the abort signal raced the end: bash is restarted now
        if end is not None:
            self._finish(run, end)

    def _drain(self, run: Run) -> None:
        for fd, name in self._streams():
            if data := self.shell.drain(fd):
                self._forward(run, name, data)

    def _after_exit(self, run: Run) -> CommandEnd:
        """bash exited during ``run``: forward what it left and start the next bash, with the
        state its EXIT trap saved (exit, set -e, the abort signal) or afresh."""
        self._drain(run)
        status = self.shell.exit_status if self.shell.exit_status is not None else -1
        code = 128 - status if status < 0 else status
        detached = self.shell.closed_before_exit(exit_printed=bool(run.exit_held))
        restore = self.shell.saved_state()
        if restore and status >= 0:
            run.exit_held = b""  # bash's "exit" line: the command ran `exit`
        # After a stop, $? is what a Ctrl-C leaves (not the abort signal's 138).
        self._respawn(restore, EXIT_INTERRUPTED if run.stop_stage else code)
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

    def _respawn(self, restore: bool, status: int = 0) -> None:
        self.shell.release()
        if not self.stopping:
            self.start_shell(restore, status)

    def _restart_idle(self) -> None:
        """bash exited between commands: start the next one (with its saved state)."""
        restore = self.shell.saved_state()
        self._respawn(restore, self.last_status)
        if not self.shell.restored:
            self.lost_session = True

    def _finish(self, run: Run, end: CommandEnd) -> None:
        # A stop the command line outlived (a SIGINT trap that let it go on to its end) did not
        # stop it: the reply says how it really ended.
        if run.stop_reason is not None and not (
            run.stop_stage or end.exit_code == EXIT_INTERRUPTED or end.session_ended
        ):
            run.stop_reason = None
        # Whatever the command started and left behind ends with it if it was stopped.
        if run.stop_reason is not None:
            procs.signal_pids(
                procs.started_since(os.getpid(), run.started_ticks, {self.shell.pid}),
                signal.SIGKILL,
            )
        if run.exit_held and not run.hidden:
            self._send_stream(run, StreamName.STDERR, run.exit_held)
        run.exit_held = b""
        if run.allow_stdin or run.stdin_stream:
            self.stdin_pipe.close()
        if run.hidden:
            self._finish_hidden(run, end)
            return
        if self.lost_session:  # the session this command started in was a fresh one
            self.lost_session = False
            end.session_ended = True
        self.last_status = end.exit_code
        if run.dropped:
            notice = (
                f"\n[stigmer] output truncated: {run.dropped} bytes past the limit of "
                f"{run.output_limit} bytes were discarded\n"
            ).encode()
            self.send(MsgType.STREAM, {"name": "stderr", "data": notice}, parent=run.msg)
        exit_code: int | None = end.exit_code
        if end.problem is not None and end.exit_code < 0:
            exit_code = None  # the command may not have run at all
        if run.stop_reason == "timeout":
            status = ExecStatus.TIMEOUT
            exit_code = EXIT_TIMEOUT
        elif run.stop_reason == "interrupted":
            status = ExecStatus.INTERRUPTED
            exit_code = EXIT_INTERRUPTED
        elif end.problem is not None:
            status = ExecStatus.ERROR
        else:
            status = ExecStatus.OK if exit_code == 0 else ExecStatus.ERROR
        content: dict[str, Any] = {
            "status": status.value,
            "exit_code": exit_code,
            "duration": round(time.monotonic() - run.started, 6),
            "execution_count": run.execution_count,
            "cwd": self.shell.cwd,
            "truncated": bool(run.dropped),
            "session_reset": end.session_ended,
        }
        if status is ExecStatus.TIMEOUT:
            assert run.deadline is not None
            content["ename"] = ErrorName.TIMEOUT
            content["evalue"] = (
                f"command timed out after {run.deadline - run.started:g}s and was ended"
            )
        elif status is ExecStatus.INTERRUPTED:
            content["ename"] = ErrorName.INTERRUPTED
            content["evalue"] = "command interrupted"
        elif status is ExecStatus.ERROR:
            content["ename"] = ErrorName.COMMAND_FAILED
            content["evalue"] = f"exit code {exit_code}"
        if end.problem is not None:
            content["evalue"] = end.problem
        if end.session_ended and not self.stopping:
            content["evalue"] = (
                content.get("evalue", "") + "; the shell exited, so a fresh session was started "
                "(variables and functions were reset)"
            ).lstrip("; ")
        elif end.problem is not None:
            content["evalue"] += "; the shell was restarted with its state (variables, "
            "functions, options and cwd kept)"
        self.send(MsgType.EXECUTE_REPLY, content, parent=run.msg)
        with contextlib.suppress(FileNotFoundError):
            self.shell.stdin_path.unlink()
        self._next(end)

    def _next(self, end: CommandEnd) -> None:
        self.run_state = None
        self.heartbeat.busy = False
        if not self.stopping:
            self._start_next()

    def _finish_hidden(self, run: Run, end: CommandEnd) -> None:
        output = b"".join(run.captured).decode("utf-8", "replace")
        content: dict[str, Any]
        if run.kind is MsgType.COMPLETE_REQUEST:
            assert run.query is not None
            content = {
                "status": "ok",
                "matches": introspect.completion_matches(run.query, output),
                "cursor_start": run.query.cursor_start,
                "cursor_end": run.query.cursor_end,
                "metadata": {},
            }
            reply_type = MsgType.COMPLETE_REPLY
        else:
            found, text = introspect.inspect_result(output)
            content = {
                "status": "ok",
                "found": found,
                "data": {"text/plain": text} if found else {},
                "metadata": {},
            }
            reply_type = MsgType.INSPECT_REPLY
        self.send(reply_type, content, parent=run.msg)
        self._next(end)

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

    def _begin_stop(self, run: Run, reason: str) -> None:
        run.stop_reason = reason
        run.stop_started = time.monotonic()
        run.stop_stage = 0
        # The command's processes only: what earlier commands left running is not its own.
        pids = procs.started_since(os.getpid(), run.started_ticks, {self.shell.pid})
        if self.shell.ignores_sigint():  # trap '' INT: Ctrl-C would stop nothing
            run.stop_stage = 1
            self.shell.abort()
            procs.signal_pids(pids, signal.SIGTERM)
        else:
            self.shell.interrupt(pids)

    def _tick(self) -> None:
        self._reap_orphans()
        run = self.run_state
        if run is None:
            self._check_done()  # bash exiting between commands (without a pidfd to tell)
            return
        now = time.monotonic()
        if run.stop_reason is None:
            if run.deadline is not None and now >= run.deadline:
                self._begin_stop(run, "timeout")
            elif run.allow_stdin and now >= run.next_stdin_check:
                self._check_stdin(run, now)
            if run.stdin_eof:
                self._end_stdin(run)
            if now >= run.next_idle_check:
                self._check_idle(run, now)
            self._check_done()
            return
        elapsed = now - run.stop_started
        mine = {self.shell.pid}
        if run.stop_stage == 0 and elapsed >= _TERM_AFTER:
            run.stop_stage = 1
            survivors = procs.started_since(os.getpid(), run.started_ticks, mine)
            # Ctrl-C again first: a program started just as the first one was sent missed it.
            # Then the abort signal, which ends the command line even if bash's SIGINT trap
            # would let it go on once its programs die of the SIGTERM that follows.
            procs.signal_pids(survivors, signal.SIGINT)
            self.shell.abort()
            procs.signal_pids(survivors, signal.SIGTERM)
        elif run.stop_stage == 1 and elapsed >= _KILL_AFTER:
            run.stop_stage = 2
            procs.signal_pids(
                procs.started_since(os.getpid(), run.started_ticks, mine), signal.SIGKILL
            )
            self.shell.abort()
        elif run.stop_stage == 2 and elapsed >= _RESET_AFTER:
            run.stop_stage = 3
            self.shell.signal_shell(signal.SIGKILL)
        self._check_done()

    def _check_idle(self, run: Run, now: float) -> None:
        """A command whose end report went missing: bash reads its next line already. Either
        the command removed the report (PROMPT_COMMAND) and it is put back, or it closed the
        shell's own descriptors and the shell is restarted."""
        run.next_idle_check = now + _IDLE_CHECK
        self.shell.read_control()
        if self.shell.finished() is None and not self.shell.repairing and self.shell.idle():
            if self.shell.detached:
                run.problem = "the command closed the shell's own descriptors"
                self.shell.signal_shell(signal.SIGKILL)
            else:
                self.shell.repair()

    def _check_stdin(self, run: Run, now: float) -> None:
        """Ask the client for a line when the command sits waiting on an empty stdin."""
        run.next_stdin_check = now + _STDIN_POLL
        self.stdin_pipe.flush()
        if run.waiting_input:
            return
        pids = [self.shell.pid, *procs.started_since(os.getpid(), run.started_ticks, set())]
        if self.stdin_pipe.reader_waiting(pids):
            run.waiting_input = True
            self.send(MsgType.INPUT_REQUEST, {"prompt": "", "password": False}, parent=run.msg)

    def _feed_stdin(self, run: Run) -> None:
        """Write streamed stdin into the FIFO as far as it takes it; acknowledge what went in
        (the client sends more as this frees room), and end it once the client's input did."""
        run.stdin_written += self.stdin_pipe.flush()
        unacked = run.stdin_written - run.stdin_acked
        if unacked >= STDIN_ACK_EVERY or (unacked and not self.stdin_pipe.pending):
            run.stdin_acked = run.stdin_written
            self.send(MsgType.STDIN_ACK, {"written": run.stdin_written}, parent=run.msg)
        if run.stdin_eof:
            self._end_stdin(run)

    def _end_stdin(self, run: Run) -> None:
        """The client's stdin ended and all of it is in the FIFO: close our end, so the command
        reads EOF after the rest, once bash holds the FIFO open for it."""
        pipe = self.stdin_pipe
        if pipe.fd >= 0 and not pipe.pending and pipe.opened_by(self.shell.pid):
            pipe.close()

    def _reap_orphans(self) -> None:
        """Collect exited children other than bash (orphans reparented to us)."""
        if not self.subreaper:
            return
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0 or info.si_pid == self.shell.pid:
                return
            try:
                os.waitpid(info.si_pid, os.WNOHANG)
            except ChildProcessError:
                return


def _clean_env(given: dict[str, str] | None = None) -> dict[str, str]:
    """The shell's environment (``given``, else the agent's) minus what must not reach user
    commands."""
    env = dict(os.environ if given is None else given)
    for name in list(env):
        if name.startswith("STIGMER_AGENT_"):
            del env[name]
    return env
