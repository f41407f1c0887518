"""The broker's shape, checked from its source: a core without socket code, no import cycle,
nothing importing the wiring back, no module too big to read."""

from __future__ import annotations

import ast
from pathlib import Path

import stigmer_kernel

PACKAGE = Path(stigmer_kernel.__file__).parent
#: The core: kernel state and its rules. No socket code, directly or through what it imports.
CORE = {
    "broker.model",
    "broker.scheduler",
    "broker.lifecycle",
    "broker.creation",
    "broker.liveness",
    "broker.auto_router",
    "broker.service",
}
SOCKETS = ("zmq", "asyncio")
MAX_LINES = 520  # "no module over ~500 lines"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_only(tree: ast.Module) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks (annotations, not dependencies)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(path: Path, runtime_only: bool) -> set[str]:
    """Modules ``path`` imports: package-relative names ("broker.model"), or top-level
    outside ones ("zmq")."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_only(tree) if runtime_only else set()
    here = _module(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", 0) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                found.add(
                    name.removeprefix("stigmer_kernel.")
                    if name.startswith("stigmer_kernel.")
                    else name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                name = node.module or ""
                if name.startswith("stigmer_kernel."):
                    base = name.removeprefix("stigmer_kernel.")
                else:
                    found.add(name.split(".")[0])
                    continue
            else:
                base_parts = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                base = ".".join([*base_parts, *([node.module] if node.module else [])]).strip(".")
            for alias in node.names:  # `from . import adoption` imports a module
                candidate = f"{base}.{alias.name}" if base else alias.name
                found.add(candidate if _exists(candidate) else base)
    return {name for name in found if name}


def _exists(module: str) -> bool:
    path = PACKAGE.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph(runtime_only: bool = True) -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {dep for dep in _imports(path, runtime_only) if dep in modules and dep != name}
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in graph.get(node, ()):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    # Package __init__ files re-export their package's modules: importing a module through
    # its package is not a dependency of the package on that module's importers.
    graph = {
        name: {dep for dep in deps if not _is_package_of(dep, name)}
        for name, deps in _graph().items()
    }
    assert _cycles(graph) == []


def _is_package_of(package: str, module: str) -> bool:
    return (PACKAGE / package.replace(".", "/") / "__init__.py").is_file() and module.startswith(
        package + "."
    )


def test_nothing_imports_the_wiring_back() -> None:
    importers = [
        name
        for name, deps in _graph(runtime_only=False).items()
        if "broker.server" in deps and name != "broker"
    ]
    assert importers == []


def test_the_core_has_no_socket_code() -> None:
    graph = _graph()
    for module in sorted(CORE):
        reached, todo = set(), [module]
        while todo:  # everything it imports at run time, through the package
            current = todo.pop()
            if current in reached:
                continue
            reached.add(current)
            todo.extend(graph.get(current, ()))
        outside = set()
        for name in reached:
            path = PACKAGE.joinpath(*name.split("."))
            path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
            outside |= _imports(path, runtime_only=True)
        assert not outside & set(SOCKETS), (module, sorted(outside & set(SOCKETS)))
        assert not reached & {"broker.reactor", "broker.agents", "broker.server"}, module


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_too_long_to_read() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
