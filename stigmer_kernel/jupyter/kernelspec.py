"""Kernelspecs: how Jupyter programs find and start stigmer kernels.

Each spec's argv runs :mod:`stigmer_kernel.jupyter.launcher` with the connection file Jupyter
wrote; the launcher has the stigmer server (started if none runs) host the kernel on exactly
those ports and key, so TTL, liveness and sharing apply to notebook kernels too.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

#: mode -> (kernelspec name, display name). Sandbox and auto join when those modes exist.
SPECS: dict[str, tuple[str, str]] = {
    "local": ("stigmer-local", "Stigmer (local)"),
    "sandbox": ("stigmer-sandbox", "Stigmer (sandbox)"),
    "auto": ("stigmer-auto", "Stigmer (auto)"),
}


def kernel_json(mode: str = "local") -> dict[str, Any]:
    _name, display = SPECS[mode]
    return {
        "argv": [
            sys.executable,
            "-m",
            "stigmer_kernel.jupyter.launcher",
            "--mode",
            mode,
            "-f",
            "{connection_file}",
        ],
        "display_name": display,
        "language": "bash",
        "interrupt_mode": "message",
        "metadata": {"stigmer": {"mode": mode}, "debugger": False},
    }


def install(
    mode: str = "local",
    *,
    user: bool = False,
    sys_prefix: bool = False,
    prefix: str | None = None,
) -> str:
    """Install the kernelspec of ``mode``; returns the directory it went to.

    With no location flag it goes to the user's Jupyter data directory.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    if mode not in SPECS:
        raise ValueError(f"no kernelspec for mode {mode!r}; available: {', '.join(SPECS)}")
    if sys_prefix:
        prefix = sys.prefix
    if prefix is None and not user:
        user = True
    name = SPECS[mode][0]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.json").write_text(json.dumps(kernel_json(mode), indent=2) + "\n")
        return str(
            KernelSpecManager().install_kernel_spec(
                tmp, kernel_name=name, user=user, prefix=prefix, replace=True
            )
        )
