"""What a kernel's shell starts with, and the variables a client sets for one command.

* A new host kernel (local mode, and an auto kernel's local side) starts with the environment
  its creator sent (``kernel_env`` on the wire: the CLI's, the launcher's, a Python client's
  with ``inherit_env=True``), or the server's own when it sent none, in both cases minus
  stigmer's internals (:func:`inherited`), plus ``STIGMER_KERNEL`` (the kernel's name).
* Sandbox and remote kernels never get a host environment: ``kernel_env`` is ignored for them.
* ``env`` of an ``execute_request`` holds for that one command, in every mode.

Both fields are checked by :func:`checked_env` on the client (before sending) and the broker.
"""

from __future__ import annotations

import os
from _collections_abc import Mapping  # collections.abc's own (see protocol/session.py)

from .errors import RequestError

#: Largest environment a request may carry (names plus values, UTF-8, one ``=`` and one NUL
#: each), for ``env`` and ``kernel_env`` alike.
MAX_ENV_BYTES = 256 * 1024
#: Largest single ``NAME=value`` (with its NUL): Linux refuses to exec past it (MAX_ARG_STRLEN).
MAX_ENV_ENTRY_BYTES = 128 * 1024

#: Variables bash keeps read-only: setting one for a command cannot work.
READ_ONLY = frozenset({"BASHOPTS", "BASH_VERSINFO", "EUID", "PPID", "SHELLOPTS", "UID"})

#: Prefix of stigmer's own settings, never inherited by a kernel.
INTERNAL_PREFIX = "STIGMER_"
#: Never inherited either: a kernel is not a sub-make (``make run``'s MAKELEVEL would make
#: every ``make`` in it print "Entering directory"; MAKEFLAGS names a jobserver it cannot reach).
NOT_INHERITED = frozenset(
    {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKE_TERMOUT", "MAKE_TERMERR"}
)
#: Dropped from the server's own environment only: they describe whoever started the server
#: (a Jupyter launcher that autostarted it), not a kernel's creator.
SERVER_ONLY = frozenset({"JPY_PARENT_PID", "JPY_SESSION_NAME"})


def is_shell_name(name: str) -> bool:
    """Whether bash can set a variable called ``name`` for a command (``env``): ASCII letters,
    digits and ``_``, not starting with a digit (an ASCII identifier; no :mod:`re` to import)."""
    return name.isascii() and name.isidentifier()


def _bad(message: str) -> RequestError:
    from .protocol.enums import ErrorName  # only for a refusal: a plain run imports no enum

    return RequestError(message, ErrorName.BAD_REQUEST)


def checked_env(value: object, field: str = "env", *, shell_names: bool = True) -> dict[str, str]:
    """``value`` as an environment of at most :data:`MAX_ENV_BYTES`, or :class:`RequestError`
    (``BadRequest``). ``shell_names``: names bash can assign (``env``), else any name an exec
    takes (``kernel_env``, a process environment)."""
    if not isinstance(value, Mapping):
        raise _bad(f"{field} must be a map of variable names to strings")
    total = 0
    for name, text in value.items():
        if not isinstance(name, str) or not isinstance(text, str):
            raise _bad(f"{field}: names and values must be strings")
        if shell_names:
            if not is_shell_name(name):
                raise _bad(
                    f"{field}: {name[:80]!r} is not a variable name (letters, digits and _, "
                    "not starting with a digit)"
                )
            if name in READ_ONLY:
                raise _bad(f"{field}: {name} is read-only in bash and cannot be set")
        elif not name or "=" in name or "\0" in name:
            raise _bad(f"{field}: {name[:80]!r} is not an environment variable name")
        if "\0" in text:
            raise _bad(f"{field}: the value of {name} holds a NUL byte, which no variable can")
        try:
            size = len(name.encode()) + len(text.encode()) + 2
        except UnicodeEncodeError:
            raise _bad(f"{field}: the value of {name} is not valid text") from None
        if size > MAX_ENV_ENTRY_BYTES:
            raise _bad(
                f"{field}: {name} is {size:,} bytes, more than the {MAX_ENV_ENTRY_BYTES:,} a "
                "program can be started with — pass it in a file"
            )
        total += size
    if total > MAX_ENV_BYTES:
        raise _bad(
            f"{field} is {total:,} bytes, more than the {MAX_ENV_BYTES:,} a request carries — "
            "pass large values in files"
        )
    return dict(value)


def client_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a client sends as ``kernel_env``: its environment (default ``os.environ``) minus
    stigmer's internals and what the wire cannot carry (values that are not valid text)."""
    env = inherited(os.environ if environ is None else environ)
    for name, text in list(env.items()):
        try:
            name.encode()
            text.encode()
        except UnicodeEncodeError:  # undecodable bytes (surrogateescape): not text
            del env[name]
    return env


def inherited(base: Mapping[str, str], *, server: bool = False) -> dict[str, str]:
    """``base`` minus what no kernel inherits; ``server``: ``base`` is the server's own
    environment (a kernel whose creator sent none)."""
    drop = NOT_INHERITED | SERVER_ONLY if server else NOT_INHERITED
    return {
        name: value
        for name, value in base.items()
        if not name.startswith(INTERNAL_PREFIX) and name not in drop
    }


def kernel_environment(sent: Mapping[str, str] | None, kernel_name: str) -> dict[str, str]:
    """The environment a host kernel's shell starts with: what its creator sent, else the
    server's, minus stigmer's internals, plus ``STIGMER_KERNEL``."""
    from .names import EnvVar  # (the server's side: a plain run imports no enum)

    env = inherited(os.environ, server=True) if sent is None else inherited(sent)
    env[EnvVar.KERNEL.value] = kernel_name
    return env
