"""The execution agent: the only code that runs user commands.

One agent serves one kernel. It connects a DEALER to the broker's agent endpoint, registers with
its kernel id (signed with the kernel's own key), then runs execute requests one at a time in its
warm :class:`~stigmer_kernel.agent.shell.BashSession`, streaming output as it is written. This
module is the loop (sockets, heartbeat, dispatch, the queue, the shell's restarts); one
request's life, from its start to its reply, is a :class:`~stigmer_kernel.agent.command.Command`;
a request's own context (a ``workdir``, a background start) is context.py's; background
processes are processes.py's, whose pipes this loop polls too. Heartbeats come from a
separate thread on a separate socket (heartbeat.py), so a busy agent still beats; the broker
answers each beat, and an agent that hears nothing for ``orphan_timeout`` exits.

The same module runs on the host (local mode) and inside sandbox containers.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import time
from _socket import gethostname  # not socket: its import (enums, selectors) slows a start
from typing import Any

import zmq

from .._version import __version__
from ..errors import ProtocolError
from ..protocol import ErrorName, Message, MsgType, Session
from ..protocol.constants import EXIT_INTERRUPTED
from ..protocol.enums import StreamName
from ..protocol.wire import send_frames, waiting
from . import introspect, log, procs
from .command import Command
from .context import ContextMixin
from .files import Files, shell_cwd
from .heartbeat import Heartbeat, secure
from .options import AgentOptions as AgentOptions  # re-exported: its home was here
from .processes import ProcessTable
from .shell import BashSession, CommandEnd
from .shell_scripts import chdir_back_script
from .stdin import StdinPipe
from .unsent import UNSENT_WAIT_MS

_STARTUP_TIMEOUT = 10.0
_SEND_RETRY = 0.25  # seconds a blocked send waits before checking that the broker still answers
#: Requests that need the session and so wait their turn.
_QUEUED = {
    MsgType.EXECUTE_REQUEST.value,
    MsgType.COMPLETE_REQUEST.value,
    MsgType.INSPECT_REQUEST.value,
}


class _BrokerGone(Exception):
    """The broker stopped answering while a send was blocked on a full queue."""


class Agent(ContextMixin):
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
        self.command: Command | None = None  # the request running now
        self.execution_count = 0
        self.last_status = 0  # exit status of the last user command; hidden runs restore it
        self.lost_session = False  # bash died between commands without its state: say so next
        self.stdin_pipe = StdinPipe(opts.workdir / "stdin.fifo")
        self.heartbeat = Heartbeat(self.ctx, opts, self.identity)
        self.stopping = False
        self.subreaper = False
        self.files = Files(  # file_request: answered at once, even while a command runs
            lambda reply, parent: self.send(MsgType.FILE_REPLY, reply, parent=parent),
            cwd=lambda: shell_cwd(self.shell.pid, self.shell.cwd),
        )
        self.broker_gone = False
        self.processes = ProcessTable(self._process_answer, opts.journal_bytes)

    # -- plumbing ---------------------------------------------------------------------------
    def send(
        self,
        msg_type: MsgType,
        content: dict[str, Any],
        parent: Message | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.send_raw(msg_type.value, content, parent, metadata)

    def send_raw(
        self,
        msg_type: str,
        content: dict[str, Any],
        parent: Message | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        msg = self.session.msg(msg_type, content, parent, metadata)
        frames = self.session.serialize(msg)
        while True:  # a slow broker loses nothing: retry for as long as it answers heartbeats
            try:
                # Copied into libzmq's messages (a memcpy): a zero-copy send of a big chunk
                # costs more, pyzmq's garbage thread taking the GIL to release each one.
                send_frames(self.sock, frames, copy_all=True)
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
            self.broker_gone = True
            log.warning(
                "no answer from the broker for %.0fs while sending to it; exiting",
                self.opts.orphan_timeout,
            )
            linger = 0  # nobody will take what is still queued
        finally:
            self.heartbeat.stop_event.set()
            self.files.close()
            with contextlib.suppress(_BrokerGone):
                self.processes.close()  # killed, their long-polls answered
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
                "hostname": gethostname(),
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
        registered_bg: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
        table = self.processes
        while not self.stopping:
            shell = self.shell
            command = self.command
            # Streamed stdin the FIFO could not take yet: written when it has room.
            feed = self.stdin_pipe.fd if self.stdin_pipe.pending else -1
            if command is not None and command.held_back:  # the command waits on its full pipe
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
            bg = (tuple(table.read_fds()), tuple(table.write_fds()))
            if bg != registered_bg:  # a background process's pipes and pidfd
                for fd in {*registered_bg[0], *registered_bg[1]}:
                    poller.unregister(fd)
                for fd in {*bg[0], *bg[1]}:
                    poller.register(
                        fd, (zmq.POLLIN if fd in bg[0] else 0) | (zmq.POLLOUT if fd in bg[1] else 0)
                    )
                registered_bg = bg
            timeout_ms = self._next_timer_ms()
            ready = None
            if command is not None and command.unsent:
                # Output read but not sent: the reply carries it if the command ends now (its
                # end report is there, or comes within UNSENT_WAIT: bash reports right after
                # the last write); else it goes before the loop waits, so that a long command
                # streams as it writes.
                ready = poller.poll(min(timeout_ms, UNSENT_WAIT_MS))
                if command.unsent.due(time.monotonic(), not ready and timeout_ms > 0):
                    command.flush()
            for sock_or_fd, events in ready or poller.poll(timeout_ms):
                if sock_or_fd is self.sock:
                    self._drain_socket()
                elif table.owns(int(sock_or_fd)) or int(sock_or_fd) in bg[1]:
                    if events & zmq.POLLOUT:
                        table.on_writable(int(sock_or_fd))
                    if events & (zmq.POLLIN | zmq.POLLERR):
                        table.on_readable(int(sock_or_fd))
                elif events & zmq.POLLOUT:
                    if command is not None and command is self.command:
                        command.feed_stdin()
                else:
                    self._on_output(int(sock_or_fd))
            table.tick(time.monotonic())
            self.heartbeat.processes = table.running
            self._tick()
            if self._orphaned():
                log.warning(
                    "no answer from the broker for %.0fs; exiting", self.opts.orphan_timeout
                )
                self.stopping = True

    def _next_timer_ms(self) -> int:
        now = time.monotonic()
        command = self.command
        if self.files.busy:  # a file job does a slice of its work each turn
            return 0
        wait = 1.0 if command is None else command.next_timer(now)
        deadline = self.processes.next_deadline()
        if deadline is not None:
            wait = min(wait, deadline - now)
        return max(0, int(wait * 1000))

    def _drain_socket(self) -> None:
        while waiting(self.sock):  # (cheaper than a recv raising zmq.Again)
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
        command = self.command
        if mtype in _QUEUED:
            self.queue.append(msg)
            if command is None:
                self._start_next()
        elif mtype == MsgType.IS_COMPLETE_REQUEST.value:
            code = msg.content.get("code")
            status = introspect.is_complete(code if isinstance(code, str) else "", self.opts.shell)
            reply: dict[str, Any] = {"status": status}
            if status == "incomplete":
                reply["indent"] = ""
            self.send(MsgType.IS_COMPLETE_REPLY, reply, parent=msg)
        elif mtype == MsgType.FILE_REQUEST.value:
            self.files.handle(msg.content, msg)
        elif mtype == MsgType.PROCESS_REQUEST.value:
            self.processes.request(msg, time.monotonic())
        elif mtype == MsgType.INPUT_REPLY.value:
            if command is not None:
                command.input_reply(msg.content.get("value"))
        elif mtype == MsgType.INTERRUPT_REQUEST.value:
            if command is not None and not command.stopped and command.internal is None:
                command.stop("interrupted")
        elif mtype == MsgType.AGENT_SHUTDOWN.value:
            self.stopping = True
            if command is not None:
                command.stop("interrupted")
                self._finish(command, CommandEnd(EXIT_INTERRUPTED, None))
            for queued in self.queue:
                self._reply_aborted(queued, "the kernel is shutting down")
            self.queue.clear()
            self.send(MsgType.AGENT_GOODBYE, {"kernel_id": self.opts.kernel_id})
        elif mtype == MsgType.STDIN_CHUNK.value:
            if command is not None:
                command.stdin_chunk(msg)
        elif mtype == MsgType.OUTPUT_ACK.value:
            if command is not None:
                command.output_ack(msg)
        elif mtype == MsgType.AGENT_WELCOME.value:
            self.heartbeat.last_ack = time.monotonic()
        elif mtype.endswith("_request"):  # a newer broker's: answered, so nobody waits forever
            reply = {
                "status": "error",
                "ename": ErrorName.UNKNOWN_MESSAGE_TYPE.value,
                "evalue": f"this agent (stigmer-kernel {__version__}) cannot serve {mtype}",
            }
            self.send_raw(mtype.removesuffix("_request") + "_reply", reply, parent=msg)
        else:
            log.warning("ignored message of unknown type %r", mtype)

    # -- commands ---------------------------------------------------------------------------
    def _start_next(self) -> None:
        while self.queue and self.command is None:
            msg = self.queue.popleft()
            content = msg.content
            kind = MsgType(msg.msg_type)
            code = content.get("code")
            if not isinstance(code, str):
                self._reply_aborted(msg, f"{kind.value} content needs a string 'code'")
                continue
            count = content.get("execution_count")
            if kind is MsgType.EXECUTE_REQUEST:
                if isinstance(count, int):
                    self.execution_count = count
                elif not content.get("silent") and content.get("store_history", True):
                    self.execution_count += 1
            workdir = None
            if kind is MsgType.EXECUTE_REQUEST and content.get("workdir") is not None:
                workdir = self._workdir(msg)
                if workdir is None:
                    continue  # refused: answered
            if kind is MsgType.EXECUTE_REQUEST and content.get("background") is True:
                self._start_background(msg, code, workdir)
                continue
            self.command = command = Command(
                msg,
                code,
                shell=self.shell,
                stdin_pipe=self.stdin_pipe,
                link=self,
                execution_count=self.execution_count,
                last_status=self.last_status,
                command_timeout=self.opts.command_timeout,
                output_limit=self.opts.output_limit,
                workdir=workdir,
            )
            if workdir is not None:  # the session goes back where it is once it has ended
                command.reply_cwd = self._cwd_before(msg)
            self._begin(command)

    def _begin(self, command: Command) -> None:
        self.heartbeat.busy = True
        command.take_between()
        if self.shell.reap():  # bash ended since the last command: this one gets the next
            self._restart_idle()
        command.start()

    def _on_output(self, fd: int) -> None:
        if fd == self.shell.ctl_fd:
            self.shell.read_control()
        elif fd in (self.shell.stdout_fd, self.shell.stderr_fd):
            data, _ = self.shell.read(fd)
            command = self.command
            if data and command is None:
                self.shell.between.keep(fd, data)
            elif data and command is not None:
                name = StreamName.STDOUT if fd == self.shell.stdout_fd else StreamName.STDERR
                command.forward(name, data)
        self._check_done()  # (the pidfd: bash exited)

    def _check_done(self) -> None:
        command = self.command
        if command is None:
            if not self.stopping and self.shell.reap():
                self._restart_idle()  # e.g. an abort signal that landed after the command
            return
        end = command.check_end()
        if end is not None:
            self._finish(command, end)

    def respawn(self, restore: bool, status: int = 0) -> None:
        """bash exited: release it and start the next one (unless the agent is stopping)."""
        self.shell.release()
        if not self.stopping:
            self.start_shell(restore, status)

    def _restart_idle(self) -> None:
        """bash exited between commands: start the next one (with its saved state)."""
        restore = self.shell.files.saved_state()
        self.respawn(restore, self.last_status)
        if not self.shell.restored:
            self.lost_session = True

    def _finish(self, command: Command, end: CommandEnd) -> None:
        """The command's reply, then the next request in the queue."""
        # The session a user command started in was a fresh one: its reply says so.
        fresh_session = self.lost_session and not command.hidden
        if fresh_session:
            self.lost_session = False
        if not command.hidden:
            self.last_status = end.exit_code
        command.finish(end, fresh_session)
        self.command = None
        self.heartbeat.busy = False
        if self.stopping:
            return
        if command.reply_cwd is not None:  # a command with its own workdir: the cwd goes back
            script = chdir_back_script(command.reply_cwd, self.last_status)
            self._internal(command.run.msg, script, lambda _end: None)
            return
        self._start_next()

    def _tick(self) -> None:
        self._reap_orphans()
        self.files.tick()
        if self.command is not None:
            self.command.tick(time.monotonic())
        self._check_done()  # (with no command: bash exiting between commands, without a pidfd)

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
            if self.processes.reap_pid(info.si_pid):
                continue  # a background process: its exit status is kept
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
