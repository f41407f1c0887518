"""Sending a message's frames on a ZeroMQ socket, at the least cost per frame.

pyzmq's ``send_multipart`` checks each frame's type, combines enum flags per frame and, with
``copy=False``, looks at each frame's buffer: on a round trip's small frames that costs several
times the send itself. :func:`send_frames` sends the same multipart message frame by frame with
plain int flags, copying small frames (as pyzmq does below its ``copy_threshold``) and handing
large ones over without a copy. :func:`waiting` tells whether a receive would find a message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq

NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_POLLIN = int(zmq.POLLIN)
#: Frames at least this large are sent without a copy (pyzmq's default ``copy_threshold``).
ZERO_COPY_MIN = zmq.COPY_THRESHOLD


def send_frames(
    sock: zmq.Socket[Any], frames: Sequence[Any], flags: int = 0, copy_all: bool = False
) -> None:
    """``sock.send_multipart(frames, flags, copy=False)``, cheaper: raises as it does (zmq.Again
    on the first frame when the queue is full; no later frame of a message is refused).
    ``copy_all``: large frames are copied too (where pyzmq's zero-copy release costs more)."""
    send = sock.send
    more = flags | _SNDMORE
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        copy = copy_all or len(frame) < ZERO_COPY_MIN
        send(frame, more if index < last else flags, copy=copy)


def waiting(sock: zmq.Socket[Any]) -> bool:
    """Does a message wait on ``sock``? Asking costs a fraction of a non-blocking recv that
    raises zmq.Again on an empty queue (the exception is built in Python)."""
    return bool(int(sock.getsockopt(zmq.EVENTS)) & _POLLIN)
