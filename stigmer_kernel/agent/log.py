"""The agent's log (logger ``stigmer.agent``): :mod:`logging` is imported at the first line an
agent logs, not at its start. An agent seldom logs (a warning on a rare path, a pool member's
joins and claims), and the import (with traceback, linecache, tokenize, string) costs
milliseconds of every start, in a container more."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    import logging

NAME = "stigmer.agent"
#: What an agent started by ``python -m stigmer_kernel.agent`` writes to stderr.
FORMAT = "%(asctime)s agent[%(process)d] %(levelname)s %(message)s"

_to_stderr = False


def to_stderr() -> None:
    """``logging.basicConfig`` at INFO in :data:`FORMAT`, done at the first line logged (or now,
    if :mod:`logging` is imported already)."""
    global _to_stderr
    _to_stderr = True
    if "logging" in sys.modules:
        _logger()


def _logger() -> logging.Logger:
    global _to_stderr
    import logging  # lazily: see the module's doc

    if _to_stderr:
        _to_stderr = False
        logging.basicConfig(level=logging.INFO, format=FORMAT)
    return logging.getLogger(NAME)


def info(msg: str, *args: object) -> None:
    _logger().info(msg, *args)


def warning(msg: str, *args: object) -> None:
    _logger().warning(msg, *args)
