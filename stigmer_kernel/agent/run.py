"""One command's state and what its reply says: plain data in, message content out (no I/O).

:class:`Run` is what the agent knows about the request running now: when it started, its limits,
the output and stdin it has moved so far, how far a stop has escalated.
:func:`execute_reply` and :func:`hidden_reply` build the content of its reply once it has ended.
"""

from __future__ import annotations

from typing import Any

from ..protocol import ErrorName, ExecStatus, Message, MsgType
from ..protocol.constants import EXIT_INTERRUPTED, EXIT_TIMEOUT
from . import introspect
from .shell import CommandEnd
from .shell_pipes import BETWEEN_COMMANDS_LIMIT


class Run:
    """One execute request in progress."""

    # A plain class, not a dataclass: an agent's start imports no dataclasses (inspect, ast).

    msg: Message
    code: str
    kind: MsgType  # EXECUTE_REQUEST, or a hidden COMPLETE_REQUEST / INSPECT_REQUEST
    started: float
    started_ticks: int
    deadline: float | None
    output_limit: int  # bytes of output sent at most (0: no limit)
    execution_count: int
    window: int  # stream messages sent ahead of the broker's output_ack (0: no flow control)
    sent: int
    messages: int  # stream messages sent
    acked: int  # of which the broker said they reached the client
    dropped: int
    stop_reason: str | None  # "timeout" | "interrupted"
    stop_started: float
    stop_stage: int
    captured: list[bytes]  # output of hidden runs
    query: introspect.CompletionQuery | None
    allow_stdin: bool
    waiting_input: bool
    stdin_stream: bool  # stdin arrives in stdin_chunk messages, into the FIFO
    stdin_eof: bool  # ... and has ended: the FIFO closes once all of it is in
    stdin_written: int  # bytes of it written into the FIFO
    stdin_acked: int  # ... as last told in a stdin_ack
    next_stdin_check: float
    next_idle_check: float
    exit_held: bytes  # a trailing "exit\n" on stderr, sent unless the command ran `exit`
    problem: str | None  # what broke the session, when the agent ended bash for it
    internal: bool  # a line of the agent's own (a background start, a cwd put back)

    def __init__(
        self,
        msg: Message,
        code: str,
        kind: MsgType,
        started: float,
        started_ticks: int,
        deadline: float | None,
        output_limit: int,
        execution_count: int,
        window: int = 0,
        sent: int = 0,
        messages: int = 0,
        acked: int = 0,
        dropped: int = 0,
        stop_reason: str | None = None,
        stop_started: float = 0.0,
        stop_stage: int = 0,
        captured: list[bytes] | None = None,
        query: introspect.CompletionQuery | None = None,
        allow_stdin: bool = False,
        waiting_input: bool = False,
        stdin_stream: bool = False,
        stdin_eof: bool = False,
        stdin_written: int = 0,
        stdin_acked: int = 0,
        next_stdin_check: float = 0.0,
        next_idle_check: float = 0.0,
        exit_held: bytes = b"",
        problem: str | None = None,
        internal: bool = False,
    ) -> None:
        self.msg = msg
        self.code = code
        self.kind = kind
        self.started = started
        self.started_ticks = started_ticks
        self.deadline = deadline
        self.output_limit = output_limit
        self.execution_count = execution_count
        self.window = window
        self.sent = sent
        self.messages = messages
        self.acked = acked
        self.dropped = dropped
        self.stop_reason = stop_reason
        self.stop_started = stop_started
        self.stop_stage = stop_stage
        self.captured = [] if captured is None else captured
        self.query = query
        self.allow_stdin = allow_stdin
        self.waiting_input = waiting_input
        self.stdin_stream = stdin_stream
        self.stdin_eof = stdin_eof
        self.stdin_written = stdin_written
        self.stdin_acked = stdin_acked
        self.next_stdin_check = next_stdin_check
        self.next_idle_check = next_idle_check
        self.exit_held = exit_held
        self.problem = problem
        self.internal = internal

    @property
    def hidden(self) -> bool:
        return self.internal or self.kind is not MsgType.EXECUTE_REQUEST

    @property
    def held_back(self) -> bool:
        """The client is behind: the command's output is not read until it catches up."""
        return self.window > 0 and self.messages - self.acked >= self.window


def execute_reply(
    run: Run, end: CommandEnd, now: float, cwd: str | None, stopping: bool
) -> dict[str, Any]:
    """The ``execute_reply`` content for a user command that ended as ``end``, in ``cwd``, at
    ``now`` (monotonic). ``stopping``: the agent is shutting down, so no fresh session follows."""
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
        "duration": round(now - run.started, 6),
        "execution_count": run.execution_count,
        "cwd": cwd,
        "truncated": bool(run.dropped),
        "session_reset": end.session_ended,
    }
    if status is ExecStatus.TIMEOUT:
        assert run.deadline is not None
        content["ename"] = ErrorName.TIMEOUT
        content["evalue"] = f"command timed out after {run.deadline - run.started:g}s and was ended"
    elif status is ExecStatus.INTERRUPTED:
        content["ename"] = ErrorName.INTERRUPTED
        content["evalue"] = "command interrupted"
    elif status is ExecStatus.ERROR:
        content["ename"] = ErrorName.COMMAND_FAILED
        content["evalue"] = f"exit code {exit_code}"
    if end.problem is not None:
        content["evalue"] = end.problem
    if end.session_ended and not stopping:
        content["evalue"] = (
            content.get("evalue", "") + "; the shell exited, so a fresh session was started "
            "(variables and functions were reset)"
        ).lstrip("; ")
    elif end.problem is not None:
        content["evalue"] += "; the shell was restarted with its state (variables, "
        "functions, options and cwd kept)"
    return content


def truncated_notice(run: Run) -> bytes:
    """The stderr line that ends a command whose output passed its limit."""
    return (
        f"\n[stigmer] output truncated: {run.dropped} bytes past the limit of "
        f"{run.output_limit} bytes were discarded\n"
    ).encode()


def between_notice(dropped: int) -> bytes:
    """The stderr line that says background jobs' output between commands was discarded."""
    return (
        f"[stigmer] {dropped} bytes of output written between commands were "
        f"discarded (more than {BETWEEN_COMMANDS_LIMIT} bytes per stream)\n"
    ).encode()


def hidden_reply(run: Run) -> tuple[MsgType, dict[str, Any]]:
    """The reply type and content of a completion or inspection, from the output it captured."""
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
    return reply_type, content
