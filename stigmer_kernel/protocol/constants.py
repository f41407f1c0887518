"""Protocol constants: the frame marker, limits, flow-control windows, the CLI's exit codes.

Every message on every socket uses the Jupyter wire layout (see docs/protocol.md)::

    [routing ids...] DELIM signature header parent_header metadata content [buffers...]

The names on the wire (message types, states, statuses, error names) are enums, in
:mod:`.enums`: not imported here, so that a plain ``stigmer run`` (which needs a few of these
numbers) does not import :mod:`enum` and build the enum classes, a fifth of its start.
"""

from __future__ import annotations

#: Separates routing identities from the message frames (the Jupyter delimiter).
DELIM = b"<IDS|MSG>"
#: Jupyter messaging protocol version our headers declare.
PROTOCOL_VERSION = "5.3"
#: How many message frames follow the delimiter at least (signature + four dicts).
MIN_FRAMES = 5
#: Cap on the number of buffers a message may carry.
MAX_BUFFERS = 16
#: Streamed stdin (``stdin_stream`` in a native execute_request): stdin up to this many bytes
#: known in full at once travels in the request's ``stdin`` field instead (no extra round trip).
STDIN_INLINE_MAX = 1024 * 1024
#: Bytes of a command's stdin a client sends ahead of the agent's ``stdin_ack`` (which counts
#: the bytes written into the command's stdin pipe). A command that does not read makes the
#: client stop reading its own stdin, as a full pipe does in a shell.
STDIN_WINDOW = 2 * 1024 * 1024
#: ``data`` of one ``stdin_chunk``: the most our client sends; the most the broker accepts.
STDIN_CHUNK = 256 * 1024
STDIN_CHUNK_MAX = 1024 * 1024
#: ``data`` of one file_request ``read`` reply or ``write_chunk`` request, at most: with its
#: envelope it fits the agent sockets' 16 MiB frames and the native clients' 32 MiB.
FILE_CHUNK_MAX = 1024 * 1024
#: The agent acknowledges stdin every this many bytes written (and whenever its buffer empties).
STDIN_ACK_EVERY = 256 * 1024
#: Bytes of command output one ``stream`` message carries at most: what one read of its pipe
#: (grown to this size) takes. Fewer, bigger messages: much of the cost of streaming is per
#: message.
OUTPUT_CHUNK = 1024 * 1024
#: Flow control of a command's output: stream messages (<= ``OUTPUT_CHUNK``) an agent sends ahead
#: of the broker's ``output_ack`` (which says how many reached the client's socket). A client
#: that reads slowly makes the command wait on its pipe, as a slow reader does in a shell.
OUTPUT_WINDOW = 16
#: In a client's DEALER identity, what follows this is the tag of one of its sockets: the
#: server counts kernels per client by the identity up to it (see ``client/_blocking.py``).
CLIENT_SOCKET_SEP = b"/"
#: The broker acknowledges a command's output every this many delivered stream messages.
OUTPUT_ACK_EVERY = 4
#: Output a command wrote but the agent had not sent yet when it ended travels inside its
#: ``execute_reply`` (its ``output`` list), at most this many bytes: a short command's output
#: then costs no stream message of its own. Reads of this size or more are streamed as ever.
INLINE_OUTPUT_MAX = 16 * 1024


#: Exit codes the CLI and replies use for endings that are not the command's own.
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
EXIT_STIGMER_ERROR = 125
