"""The names on the wire: message types, kernel states, execute statuses, error names, kernel
events and stream names, as ``str`` enums (a member equals its wire string)."""

from __future__ import annotations

import enum


class MsgType(str, enum.Enum):
    """Every message type on the native protocol."""

    # client -> broker
    EXECUTE_REQUEST = "execute_request"
    INTERRUPT_REQUEST = "interrupt_request"
    KERNEL_INFO_REQUEST = "kernel_info_request"
    KERNEL_LIST_REQUEST = "kernel_list_request"
    KERNEL_SHUTDOWN_REQUEST = "kernel_shutdown_request"
    KERNEL_RESTART_REQUEST = "kernel_restart_request"
    SERVER_INFO_REQUEST = "server_info_request"
    SERVER_SHUTDOWN_REQUEST = "server_shutdown_request"
    DETACH_REQUEST = "detach_request"
    KERNEL_CONNECT_REQUEST = "kernel_connect_request"
    # client -> broker -> agent, answered by the agent without waiting for the running command
    FILE_REQUEST = "file_request"  # one file operation in the kernel's world (``op``)
    PROCESS_REQUEST = "process_request"  # one operation on a background process (``op``)
    # broker -> client
    EXECUTE_REPLY = "execute_reply"
    INTERRUPT_REPLY = "interrupt_reply"
    KERNEL_INFO_REPLY = "kernel_info_reply"
    KERNEL_LIST_REPLY = "kernel_list_reply"
    KERNEL_SHUTDOWN_REPLY = "kernel_shutdown_reply"
    KERNEL_RESTART_REPLY = "kernel_restart_reply"
    SERVER_INFO_REPLY = "server_info_reply"
    SERVER_SHUTDOWN_REPLY = "server_shutdown_reply"
    ERROR_REPLY = "error_reply"
    KERNEL_EVENT = "kernel_event"
    KERNEL_CONNECT_REPLY = "kernel_connect_reply"
    FILE_REPLY = "file_reply"
    PROCESS_REPLY = "process_reply"
    # Jupyter requests the agent serves (from the broker) and their replies
    COMPLETE_REQUEST = "complete_request"
    COMPLETE_REPLY = "complete_reply"
    INSPECT_REQUEST = "inspect_request"
    INSPECT_REPLY = "inspect_reply"
    IS_COMPLETE_REQUEST = "is_complete_request"
    IS_COMPLETE_REPLY = "is_complete_reply"
    INPUT_REQUEST = "input_request"
    INPUT_REPLY = "input_reply"
    # Jupyter-only (answered by the broker, or published on iopub)
    HISTORY_REQUEST = "history_request"
    HISTORY_REPLY = "history_reply"
    COMM_INFO_REQUEST = "comm_info_request"
    COMM_INFO_REPLY = "comm_info_reply"
    SHUTDOWN_REQUEST = "shutdown_request"
    SHUTDOWN_REPLY = "shutdown_reply"
    EXECUTE_INPUT = "execute_input"
    ERROR = "error"
    # agent -> broker (and forwarded to clients where they concern them)
    AGENT_REGISTER = "agent_register"
    AGENT_HEARTBEAT = "agent_heartbeat"
    AGENT_GOODBYE = "agent_goodbye"
    STREAM = "stream"
    STATUS = "status"
    # broker -> agent
    AGENT_WELCOME = "agent_welcome"
    AGENT_SHUTDOWN = "agent_shutdown"
    AGENT_CLAIM = "agent_claim"  # a pool member: serve this kernel incarnation
    AGENT_REFUSED = "agent_refused"  # a pool member that may not join: why
    OUTPUT_ACK = "output_ack"  # flow control: how many of a command's stream messages arrived
    STDIN_CHUNK = "stdin_chunk"  # streamed stdin (client -> broker -> agent)
    STDIN_ACK = "stdin_ack"  # its flow control: bytes written to the command (agent -> client)


#: Requests the broker forwards to a kernel's agent without a turn in its queue: the agent
#: answers them at once, even while a command runs (they never make the kernel busy).
NO_TURN: frozenset[MsgType] = frozenset(
    {MsgType.IS_COMPLETE_REQUEST, MsgType.FILE_REQUEST, MsgType.PROCESS_REQUEST}
)

#: Requests a client may send and the reply type each gets.
REPLY_FOR: dict[MsgType, MsgType] = {
    MsgType.EXECUTE_REQUEST: MsgType.EXECUTE_REPLY,
    MsgType.INTERRUPT_REQUEST: MsgType.INTERRUPT_REPLY,
    MsgType.KERNEL_INFO_REQUEST: MsgType.KERNEL_INFO_REPLY,
    MsgType.KERNEL_LIST_REQUEST: MsgType.KERNEL_LIST_REPLY,
    MsgType.KERNEL_SHUTDOWN_REQUEST: MsgType.KERNEL_SHUTDOWN_REPLY,
    MsgType.KERNEL_RESTART_REQUEST: MsgType.KERNEL_RESTART_REPLY,
    MsgType.SERVER_INFO_REQUEST: MsgType.SERVER_INFO_REPLY,
    MsgType.SERVER_SHUTDOWN_REQUEST: MsgType.SERVER_SHUTDOWN_REPLY,
    MsgType.KERNEL_CONNECT_REQUEST: MsgType.KERNEL_CONNECT_REPLY,
    MsgType.FILE_REQUEST: MsgType.FILE_REPLY,
    MsgType.PROCESS_REQUEST: MsgType.PROCESS_REPLY,
    MsgType.COMPLETE_REQUEST: MsgType.COMPLETE_REPLY,
    MsgType.INSPECT_REQUEST: MsgType.INSPECT_REPLY,
    MsgType.IS_COMPLETE_REQUEST: MsgType.IS_COMPLETE_REPLY,
    MsgType.HISTORY_REQUEST: MsgType.HISTORY_REPLY,
    MsgType.COMM_INFO_REQUEST: MsgType.COMM_INFO_REPLY,
    MsgType.SHUTDOWN_REQUEST: MsgType.SHUTDOWN_REPLY,
}


class KernelState(str, enum.Enum):
    """Life cycle of a kernel in the broker's registry."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DEAD = "dead"


class ExecStatus(str, enum.Enum):
    """``status`` of an execute_reply."""

    OK = "ok"  # the command ran and exited 0
    ERROR = "error"  # the command exited non-zero, or the kernel could not run it
    TIMEOUT = "timeout"  # the command ran past its timeout and was ended
    INTERRUPTED = "interrupted"  # an interrupt_request ended it
    ABORTED = "aborted"  # never started: the kernel died or shut down first


class ErrorName(str, enum.Enum):
    """``ename`` of a reply with status ``error``, ``timeout``, ``interrupted`` or ``aborted``.

    The one list of names on the wire; docs/protocol.md's "Error names" table says who sends
    each and when, and the client's table (client/_errors.py) the exception each raises.
    ``str()`` and f-strings give the wire value, as ``==`` with a plain string does.
    """

    # A request refused before any kernel ran it.
    BAD_REQUEST = "BadRequest"  # a field is missing, of the wrong type or out of range
    UNKNOWN_MESSAGE_TYPE = "UnknownMessageType"  # no handler for that msg_type (error_reply)
    NO_SUCH_KERNEL = "NoSuchKernel"  # no kernel of that name (or no remote agent joined as it)
    MODE_UNAVAILABLE = "ModeUnavailable"  # that mode cannot run here (no Docker engine...)
    MODE_MISMATCH = "ModeMismatch"  # the kernel exists in another mode than the one asked
    OPTION_MISMATCH = "OptionMismatch"  # the kernel exists with another cwd, image, ttl...
    RESTART_UNAVAILABLE = "RestartUnavailable"  # a remote kernel cannot be restarted from here
    KERNEL_BUSY = "KernelBusy"  # the kernel's queue is full
    TOO_MANY_KERNELS = "TooManyKernels"  # max_kernels or max_kernels_per_client reached
    # A stdin_chunk refused (its error_reply is parented to the chunk).
    NOT_RUNNING = "NotRunning"  # the request it feeds does not run now (ended, not started)
    NOT_OWNER = "NotOwner"  # the request it feeds is another client's
    STDIN_OVERFLOW = "StdinOverflow"  # more than two stdin windows ahead of the stdin_acks
    # A process_request refused (background processes, agent/processes.py).
    NO_SUCH_PROCESS = "NoSuchProcess"  # no background process of that id in the kernel
    TOO_MANY_PROCESSES = "TooManyProcesses"  # the kernel runs as many as it may already
    # A request the kernel took but could not finish.
    KERNEL_DIED = "KernelDied"  # its agent died, could not start, or (remote) went silent
    KERNEL_SHUTDOWN = "KernelShutdown"  # the kernel expired, was shut down, or the server stopped
    KERNEL_RESTARTED = "KernelRestarted"  # a Jupyter restart of a live kernel dropped it
    ABORTED = "Aborted"  # never run: stop_on_error after a failure, or the agent stopping
    # A command that ran (the agent's verdict).
    COMMAND_FAILED = "CommandFailed"  # it exited non-zero
    TIMEOUT = "Timeout"  # it ran past its timeout and was ended
    INTERRUPTED = "Interrupted"  # an interrupt ended it (or cancelled it while queued)
    # A file operation the kernel's agent could not do (file_reply; nothing was changed).
    FILE_NOT_FOUND = "FileNotFound"  # no such file or directory
    IS_A_DIRECTORY = "IsADirectory"  # a directory where a file was meant
    NOT_A_DIRECTORY = "NotADirectory"  # a file where a directory was meant
    PERMISSION_DENIED = "PermissionDenied"  # the kernel's user may not (or a read-only fs)
    FILE_EXISTS = "FileExists"  # something is already there (mkdir)
    DIRECTORY_NOT_EMPTY = "DirectoryNotEmpty"  # remove of a directory without recursive
    NO_SPACE = "NoSpace"  # the disk (or quota, or tmpfs) filled up during a write
    CHECKSUM_MISMATCH = "ChecksumMismatch"  # the bytes that arrived are not those sent
    FILE_ERROR = "FileError"  # any other: an upload token unknown, not a regular file, EIO...

    def __str__(self) -> str:
        return self.value


class KernelEvent(str, enum.Enum):
    """``event`` of a kernel_event message sent to attached clients."""

    RESTARTED = "restarted"
    DIED = "died"
    EXPIRED = "expired"
    SHUTDOWN = "shutdown"
    PROGRESS = "progress"  # a sandbox being prepared: pulling or building its image


class StreamName(str, enum.Enum):
    STDOUT = "stdout"
    STDERR = "stderr"
