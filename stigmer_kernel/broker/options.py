"""What a request asks of the kernel it names, and what a restart may change.

A request that creates a kernel shapes it: mode, cwd, sandbox image, requirements, workspace,
TTL. A request that names an existing kernel cannot change those (a kernel keeps its own cwd,
as a shell does), so the options the caller *chose* (listed in the request's ``explicit``) must
match what the kernel has, or the request is refused with one line saying how to restart or
remove the kernel (:class:`~stigmer_kernel.errors.KernelMismatch`, ``ModeMismatch`` or
``OptionMismatch`` on the wire). What a client only took from its defaults (its own directory,
its configured mode or image) applies to a new kernel and never conflicts.

``kernel_restart_request`` (:func:`restart_changes`) gives a kernel a fresh session with the
options it has, or with a new cwd, image or requirements; its mode never changes.
"""

from __future__ import annotations

import os
import shlex
from typing import TYPE_CHECKING, Any

from ..config import ExecutionMode, parse_value
from ..errors import ConfigError, RequestError
from ..protocol import ErrorName
from ..provisioners.workspace import check_workspace
from .auto_router import translate
from .model import REMOTE, Kernel

if TYPE_CHECKING:
    from ..config import Config

#: Request fields that shape a kernel when the request creates it, with the CLI option that
#: sets each (as error messages name them).
KERNEL_OPTIONS = {
    "mode": "--mode",
    "cwd": "--cwd",
    "sandbox_image": "--sandbox-image",
    "requirements": "--requirements",
    "workspace": "workspace",
    "ttl": "ttl",
    "pool": "--pool",
}
#: Of those, what ``stigmer kernels restart NAME`` may change.
RESTART_OPTIONS = ("cwd", "sandbox_image", "requirements")
#: A client's own settings a request carries in ``settings``: they shape a kernel it creates
#: (the server's apply otherwise).
REQUEST_SETTINGS = ("kernel_ttl", "sandbox_ttl")

SANDBOX = ExecutionMode.SANDBOX.value
AUTO = ExecutionMode.AUTO.value


def chosen(content: dict[str, Any]) -> frozenset[str]:
    """The kernel options the caller chose itself (``explicit``); without that field, the
    ``mode`` if one was given."""
    given = content.get("explicit")
    if given is None:
        return frozenset({"mode"}) if content.get("mode") else frozenset()
    if not isinstance(given, list) or not all(isinstance(name, str) for name in given):
        raise RequestError("'explicit' must be a list of field names", ErrorName.BAD_REQUEST)
    unknown = sorted(set(given) - set(KERNEL_OPTIONS))
    if unknown:
        raise RequestError(
            f"'explicit' names {', '.join(unknown)}; it may name {', '.join(KERNEL_OPTIONS)}",
            ErrorName.BAD_REQUEST,
        )
    return frozenset(name for name in given if content.get(name) is not None)


def ttls(content: dict[str, Any], config: Config) -> dict[str, float] | None:
    """The TTL of a new kernel, by mode, from the client's own ``settings`` (``kernel_ttl``
    for local kernels, ``sandbox_ttl`` for sandbox ones); None if it sent none."""
    settings = content.get("settings")
    if settings is None:
        return None
    if not isinstance(settings, dict):
        raise RequestError("'settings' must be a map", ErrorName.BAD_REQUEST)
    values: dict[str, float] = {}
    for key, raw in settings.items():
        if key not in REQUEST_SETTINGS:
            raise RequestError(
                f"setting {key!r} is the server's: set it where the server starts (`stigmer "
                f"server stop`, then start it with the new value); a request may carry "
                f"{', '.join(REQUEST_SETTINGS)}",
                ErrorName.BAD_REQUEST,
            )
        try:
            values[key] = parse_value(key, raw)
        except ConfigError as exc:
            raise RequestError(str(exc), ErrorName.BAD_REQUEST) from None
    if not values:
        return None
    return {
        ExecutionMode.LOCAL.value: values.get("kernel_ttl", config.kernel_ttl),
        SANDBOX: values.get("sandbox_ttl", config.sandbox_ttl),
    }


def mode_mismatch(kernel: Kernel, mode: str) -> RequestError:
    if kernel.mode == REMOTE:
        return RequestError(
            f"kernel {kernel.name!r} runs in remote mode, not {mode} (its agent joined from "
            "another host) — reach it with --mode remote, or name another kernel (--kernel NAME)",
            ErrorName.MODE_MISMATCH,
        )
    return RequestError(
        f"kernel {kernel.name!r} runs in {kernel.mode} mode, not {mode}; a mode applies to a "
        f"new kernel only — {_remove_hint(kernel)}",
        ErrorName.MODE_MISMATCH,
    )


def check_existing(
    kernel: Kernel, content: dict[str, Any], names: frozenset[str], config: Config
) -> None:
    """Refuse options the caller chose that ``kernel`` does not have (``mode`` aside)."""
    differences: list[str] = []
    restartable = kernel.mode != REMOTE
    fixes: list[str] = []
    sandboxed = kernel.mode in (SANDBOX, AUTO)
    for name in sorted(names - {"mode"}):
        value = content.get(name)
        flag = KERNEL_OPTIONS[name]
        if name in ("sandbox_image", "requirements", "workspace") and not sandboxed:
            differences.append(f"{flag} applies to sandbox and auto kernels, not {kernel.mode}")
            restartable = False
            continue
        if name == "cwd":
            here = host_cwd(kernel)
            if isinstance(value, str) and _same_dir(value, here):
                continue
            differences.append(f"its cwd is {here}, not {value}")
            fixes.append(f"--cwd {shlex.quote(str(value))}")
        elif name == "sandbox_image":
            has = kernel.image or config.sandbox_image
            if value == has:
                continue
            differences.append(f"its sandbox image is {has}, not {value}")
            fixes.append(f"--sandbox-image {shlex.quote(str(value))}")
        elif name == "requirements":
            if (value or None) == (kernel.requirements or None):
                continue
            differences.append("it was made with other requirements")
            fixes.append("--requirements FILE")
        elif name == "workspace":
            if isinstance(value, str) and _same_dir(value, kernel.workspace or ""):
                continue
            differences.append(f"its workspace is {kernel.workspace}, not {value}")
            restartable = False
        elif name == "pool":
            if value == kernel.pool:
                continue
            differences.append(
                f"it comes from pool {kernel.pool!r}, not {value!r}"
                if kernel.pool
                else f"it is not a pool kernel (asked: pool {value!r})"
            )
            restartable = False
        elif name == "ttl":
            has_ttl = kernel.ttl_asked if kernel.mode == AUTO and kernel.ttl_asked else kernel.ttl
            if isinstance(value, (int, float)) and float(value) == has_ttl:
                continue
            differences.append(f"its ttl is {has_ttl:g}s, not {value}")
            restartable = False
    if not differences:
        return
    hint = _remove_hint(kernel)
    if restartable and fixes:
        restart = f"stigmer kernels restart {kernel.name} {' '.join(fixes)}"
        hint = f"restart it with them (`{restart}`), {hint[0].lower()}{hint[1:]}"
    raise RequestError(
        f"kernel {kernel.name!r} exists and keeps its own options: {'; '.join(differences)} "
        f"— {hint}",
        ErrorName.OPTION_MISMATCH,
    )


def _remove_hint(kernel: Kernel) -> str:
    return (
        f"remove it (`stigmer kernels shutdown {kernel.name}`) and run again, or name another "
        "kernel (--kernel NAME)"
    )


def host_cwd(kernel: Kernel) -> str:
    """Where ``kernel``'s next command runs, as a host path where it has one."""
    if kernel.mode == AUTO:
        side = kernel.children.get(kernel.last_side or "")
        return host_cwd(side) if side is not None else kernel.cwd
    if kernel.mode == SANDBOX and kernel.workspace:
        path = translate(kernel.cwd, SANDBOX, "local", kernel.workspace)
        if path is not None and path.startswith("/"):
            return path
    return kernel.cwd


def _same_dir(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def restart_changes(
    kernel: Kernel, content: dict[str, Any], config: Config
) -> tuple[dict[str, Any], list[str]]:
    """The new options a restart of ``kernel`` asks for, checked (a RequestError if any is
    refused), and what changes, as text. The lifecycle sets them (``Lifecycle.restart``)."""
    cwd, image, requirements = (content.get(name) for name in RESTART_OPTIONS)
    if cwd is not None and (
        not isinstance(cwd, str)
        or not os.path.isabs(cwd)
        or not (kernel.pool or os.path.isdir(cwd))  # a pool kernel's is on its member
    ):
        raise RequestError(f"working directory {cwd!r} does not exist", ErrorName.BAD_REQUEST)
    if image is not None and (not isinstance(image, str) or not image):
        raise RequestError("'sandbox_image' must be an image name", ErrorName.BAD_REQUEST)
    if requirements is not None and not isinstance(requirements, str):
        raise RequestError(
            "'requirements' must be the text of a requirements file", ErrorName.BAD_REQUEST
        )
    if (image is not None or requirements is not None) and kernel.mode not in (SANDBOX, AUTO):
        raise RequestError(
            f"kernel {kernel.name!r} is a {kernel.mode} kernel: --sandbox-image and "
            f"--requirements apply to sandbox and auto kernels — {_remove_hint(kernel)} "
            "with --mode sandbox",
            ErrorName.BAD_REQUEST,
        )
    changes: dict[str, Any] = {}
    text = []
    if cwd is not None:
        text.append(f"cwd {cwd}")
        changes["cwd"] = cwd
        if kernel.mode in (SANDBOX, AUTO) and not config.sandbox_workspace and not kernel.pool:
            # the workspace follows the cwd, as at creation
            changes["workspace"] = check_workspace(cwd, config)
    if image is not None:
        text.append(f"sandbox image {image}")
        changes["image"] = image
    if requirements is not None:
        text.append("new requirements")
        changes["requirements"] = requirements or None
    return changes, text
