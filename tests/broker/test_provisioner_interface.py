"""The broker talks to provisioners and agent handles through their interface only
(provisioners/base.py): it never asks which backend it has. The wiring, Broker.__init__ in
broker/server.py, is the one place that names concrete provisioners."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import stigmer_kernel.broker

BROKER = Path(stigmer_kernel.broker.__file__).parent
CONCRETE = re.compile(r"^(Docker|Local|AdoptedLocal)\w*(Provisioner|Agent)$")
#: Provisioner and handle attributes the broker once probed for with getattr/hasattr.
PROBED = {
    "check_available",
    "adopt",
    "reap_leftovers",
    "shell_pgid",
    "container_id",
    "resource_id",
    "workdir",
    "renamed",
    "tcp_host_address",
    "set_tcp_host",
}


def _names(node: ast.expr) -> list[str]:
    elts = node.elts if isinstance(node, ast.Tuple) else [node]
    return [
        e.id if isinstance(e, ast.Name) else e.attr
        for e in elts
        if isinstance(e, ast.Name | ast.Attribute)
    ]


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    wiring: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.FunctionDef)
            and node.name == "__init__"
            and path.name == "server.py"
        ):
            wiring.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "isinstance" and len(node.args) == 2:
                concrete = [n for n in _names(node.args[1]) if CONCRETE.match(n)]
                if concrete:
                    found.append(f"{where}: isinstance(..., {', '.join(concrete)})")
            if node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2:
                attr = node.args[1]
                if isinstance(attr, ast.Constant) and attr.value in PROBED:
                    found.append(f"{where}: {node.func.id}(..., {attr.value!r})")
        concrete_name = isinstance(node, ast.Name) and CONCRETE.match(node.id)
        if concrete_name and isinstance(node.ctx, ast.Load) and node.lineno not in wiring:
            found.append(f"{where}: {node.id} used outside the wiring")
    return found


def test_broker_uses_the_provisioner_interface_only() -> None:
    files = sorted(BROKER.glob("*.py"))
    assert any(f.name == "server.py" for f in files)
    offences = [o for f in files for o in _offences(f)]
    assert offences == [], "\n".join(offences)
