"""What an ``execute_request`` says and what its reply means, for both transports.

:func:`execute_content` builds the request's content from the caller's options and the client's
configuration; :func:`exec_result` turns the reply and the :class:`~._call.Call` that collected
the output into an :class:`ExecResult`. :class:`~._async.AsyncClient` and the blocking path of
:class:`~._sync.Client` both use them, so the two never differ in what they send or return.
Nothing here does I/O or needs an event loop.
"""

from __future__ import annotations

import os

from ..environment import checked_env, client_environment
from ..errors import RequestError

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from ..config import Config
    from ..lean_config import LeanSettings
    from ..protocol import Message
    from ._call import Call
    from .result import ExecResult

    #: A client's configuration, or the few settings of it a plain ``stigmer run`` reads.
    Settings = Config | LeanSettings


def default_mode(config: Settings) -> str | None:
    """The mode a request names when the caller gave none: the client's configured mode if it
    was set (config file, environment, override), else none, so the server applies its own
    default (``stigmer server start --execution-mode``) or an existing kernel's mode."""
    if "execution_mode" in config.explicit:
        return config.execution_mode.value
    return None


def add_kernel_env(
    content: dict[str, Any], given: Mapping[str, str] | None, inherit_env: bool
) -> None:
    """``kernel_env`` of a request that may create a kernel: ``given``, else this process's
    environment with ``inherit_env``, else none (the server's)."""
    if given is not None:
        content["kernel_env"] = checked_env(given, "kernel_env", shell_names=False)
    elif inherit_env:
        content["kernel_env"] = checked_env(client_environment(), "kernel_env", shell_names=False)


def add_kernel_options(content: dict[str, Any], config: Settings, **given: Any) -> None:
    """Say which kernel options the caller chose (``explicit``: an existing kernel must have
    them), and add the client's own settings as defaults for a kernel the request creates: its
    ``kernel_cwd``, ``sandbox_image``, ``kernel_ttl`` and ``sandbox_ttl``, when its config set
    them (a server started earlier has its own)."""
    content["explicit"] = sorted(name for name, value in given.items() if value is not None)
    if given.get("cwd") is None and "kernel_cwd" in config.explicit and config.kernel_cwd:
        content["cwd"] = config.kernel_cwd
    if content.get("sandbox_image") is None and "sandbox_image" in config.explicit:
        content["sandbox_image"] = config.sandbox_image
    settings = {
        name: getattr(config, name)
        for name in ("kernel_ttl", "sandbox_ttl")
        if name in config.explicit
    }
    if settings:
        content["settings"] = settings


def execute_content(
    config: Settings,
    code: str,
    *,
    remote: bool,
    inherit_env: bool,
    kernel: str,
    mode: str | None,
    timeout: float | None,
    cwd: str | None,
    output_limit: int | None,
    ttl: float | None,
    sandbox_image: str | None,
    requirements: str | None,
    workspace: str | None,
    env: Mapping[str, str] | None,
    kernel_env: Mapping[str, str] | None,
    sticky: bool | None,
    workdir: str | None,
    background: bool,
    pool: str | None,
) -> tuple[dict[str, Any], int]:
    """The content of an execute_request (without its stdin) and the bytes of each stream the
    result keeps; the options are :meth:`AsyncClient.execute`'s."""
    content: dict[str, Any] = {
        "code": code,
        "kernel": kernel,
        "mode": mode or default_mode(config),
        "cwd": cwd or (None if remote else current_dir()),  # ours means nothing there
        "silent": False,
        "store_history": True,
        "allow_stdin": False,
        "inline_output": True,  # the command's last output may come inside its reply
    }
    if timeout is not None:
        content["timeout"] = timeout
    keep = config.output_limit if output_limit is None else output_limit
    if keep < 0:
        from ..protocol.enums import ErrorName

        raise RequestError(f"output_limit must be >= 0 bytes, not {keep}", ErrorName.BAD_REQUEST)
    if ttl is not None:
        content["ttl"] = ttl
    if sandbox_image is not None:
        content["sandbox_image"] = sandbox_image
    if requirements is not None:
        content["requirements"] = requirements
    if workspace is not None:
        content["workspace"] = workspace
    if pool is not None:
        content["pool"] = pool
    if env:
        content["env"] = checked_env(env, "env")
    if workdir is not None:
        content["workdir"] = workdir
    if background:
        content["background"] = True
    own_timeout = "command_timeout" in config.explicit  # our setting, not the server's
    if timeout is None and own_timeout and config.command_timeout is not None:
        content["timeout"] = config.command_timeout
    if sticky is None and "auto_sticky" in config.explicit:
        sticky = config.auto_sticky  # our setting travels with the request
    if sticky is not None:
        content["sticky"] = sticky
    add_kernel_options(
        content,
        config,
        mode=mode,
        cwd=cwd,
        ttl=ttl,
        sandbox_image=sandbox_image,
        requirements=requirements,
        workspace=workspace,
        pool=pool,
    )
    add_kernel_env(content, kernel_env, inherit_env)
    return content, keep


def exec_result(content: Mapping[str, Any], reply: Message, call: Call) -> ExecResult:
    """The result of the execute_request ``content`` from its reply (refusals raise)."""
    from .result import ExecResult

    return ExecResult(**result_fields(content, reply, call))


def result_fields(content: Mapping[str, Any], reply: Message, call: Call) -> dict[str, Any]:
    """:class:`ExecResult`'s fields for the execute_request ``content`` from its reply
    (refusals raise); ``stigmer run`` reads them without building one."""
    c = reply.content
    exit_code = c.get("exit_code")
    # A refusal never ran a command: its exit_code is null (docs/protocol.md). The table of
    # error names (and the enum) is imported for such a reply only, not for a command's own
    # failure (``CommandFailed``, with its exit code).
    if c.get("status") == "error" and not isinstance(exit_code, int):
        from ._errors import raise_for, refused

        if refused(c):
            raise_for(c)
    auto = c.get("auto") if isinstance(c.get("auto"), dict) else None
    return dict(
        kernel=str(content["kernel"]),
        mode=str(auto["mode"] if auto else c.get("mode") or content["mode"] or "unknown"),
        auto=auto,
        status=str(c.get("status", "error")),
        exit_code=exit_code if isinstance(exit_code, int) else None,
        stdout_bytes=call.output("stdout"),
        stderr_bytes=call.output("stderr"),
        duration=float(c.get("duration") or 0.0),
        execution_count=c.get("execution_count"),
        cwd=c.get("cwd"),
        truncated=bool(c.get("truncated") or any(call.dropped.values())),
        stdout_dropped=call.dropped["stdout"],
        stderr_dropped=call.dropped["stderr"],
        lost_messages=int(c.get("lost_messages") or 0),
        session_reset=bool(c.get("session_reset")),
        ename=c.get("ename"),
        evalue=c.get("evalue"),
        events=call.events,
        process=c.get("process") if isinstance(c.get("process"), dict) else None,
    )


def current_dir() -> str | None:
    try:
        return os.getcwd()
    except FileNotFoundError:
        return None
