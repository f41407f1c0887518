"""The error names on the wire: one enum, listed in docs/protocol.md, each mapped by the client
to its exception, and never written as a bare string elsewhere in the package."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import stigmer_kernel
from stigmer_kernel import errors
from stigmer_kernel.client._errors import EXCEPTION_FOR, EXECUTE_REFUSALS, raise_for, refused
from stigmer_kernel.errors import (
    ChecksumMismatch,
    DirectoryNotEmpty,
    FileError,
    FileExists,
    FileNotFound,
    IsADirectory,
    KernelError,
    KernelMismatch,
    ModeUnavailable,
    NoSpace,
    NoSuchProcess,
    NotADirectory,
    PermissionDenied,
    RequestError,
)
from stigmer_kernel.protocol import ErrorName

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(stigmer_kernel.__file__).resolve().parent
ENUM_MODULE = PACKAGE / "protocol" / "enums.py"
NAMES = {member.value for member in ErrorName}


def _docs_table() -> dict[str, str]:
    """``ename`` -> its "From" cell, from the "Error names" table of docs/protocol.md."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("\n## Error names\n", 1)[1].split("\n## ", 1)[0]
    body = section.split("\n|---|---|---|\n", 1)[1].split("\n\n", 1)[0]  # below the header
    rows = {}
    for line in body.splitlines():
        row = re.match(r"\| `(\w+)` \| ([^|]+) \| (.+) \|$", line)
        assert row, f"not a row of the table: {line[:80]!r}"
        assert row[1] not in rows, f"{row[1]} is listed twice"
        rows[row[1]] = row[2].strip()
    assert rows, "no rows found in the Error names table"
    return rows


def test_the_docs_table_lists_every_name_and_no_other() -> None:
    listed = set(_docs_table())
    assert NAMES - listed == set(), "in ErrorName but not in docs/protocol.md"
    assert listed - NAMES == set(), "in docs/protocol.md but not in ErrorName"
    for name, sender in _docs_table().items():
        assert set(sender.split(", ")) <= {"broker", "agent", "client"}, (name, sender)


def test_the_client_maps_every_name() -> None:
    assert set(EXCEPTION_FOR) == set(ErrorName)
    assert all(issubclass(cls, RequestError) for cls in EXCEPTION_FOR.values())
    assert set(ErrorName) >= EXECUTE_REFUSALS


@pytest.mark.parametrize("name", sorted(NAMES))
def test_a_reply_raises_its_exception(name: str) -> None:
    reply = {"status": "error", "ename": name, "evalue": "what happened"}
    with pytest.raises(RequestError) as caught:
        raise_for(reply)
    assert type(caught.value) is EXCEPTION_FOR[ErrorName(name)]
    assert caught.value.ename == name and type(caught.value.ename) is str
    assert str(caught.value) == "what happened"
    raise_for({**reply, "status": "ok"})  # no error, no exception


def test_the_special_exceptions() -> None:
    special = {name: cls for name, cls in EXCEPTION_FOR.items() if cls is not RequestError}
    assert special == {
        ErrorName.MODE_MISMATCH: KernelMismatch,
        ErrorName.OPTION_MISMATCH: KernelMismatch,
        ErrorName.MODE_UNAVAILABLE: ModeUnavailable,
        ErrorName.NO_SUCH_KERNEL: KernelError,
        ErrorName.FILE_NOT_FOUND: FileNotFound,
        ErrorName.IS_A_DIRECTORY: IsADirectory,
        ErrorName.NOT_A_DIRECTORY: NotADirectory,
        ErrorName.PERMISSION_DENIED: PermissionDenied,
        ErrorName.FILE_EXISTS: FileExists,
        ErrorName.DIRECTORY_NOT_EMPTY: DirectoryNotEmpty,
        ErrorName.NO_SPACE: NoSpace,
        ErrorName.CHECKSUM_MISMATCH: ChecksumMismatch,
        ErrorName.FILE_ERROR: FileError,
        ErrorName.NO_SUCH_PROCESS: NoSuchProcess,
    }
    file_errors = [ChecksumMismatch, DirectoryNotEmpty, FileExists, FileNotFound, IsADirectory]
    file_errors += [NoSpace, NotADirectory, PermissionDenied]
    assert all(issubclass(cls, FileError) for cls in file_errors)
    refusals = {
        ErrorName.BAD_REQUEST,
        ErrorName.MODE_UNAVAILABLE,
        ErrorName.MODE_MISMATCH,
        ErrorName.OPTION_MISMATCH,
        ErrorName.KERNEL_BUSY,
        ErrorName.TOO_MANY_KERNELS,
        ErrorName.TOO_MANY_PROCESSES,
    }
    assert refusals == EXECUTE_REFUSALS


def test_unknown_and_missing_names_raise_request_error() -> None:
    with pytest.raises(RequestError) as caught:
        raise_for({"status": "error", "ename": "SomethingNewer", "evalue": "x"})
    assert type(caught.value) is RequestError and caught.value.ename == "SomethingNewer"
    with pytest.raises(RequestError) as caught:
        raise_for({"status": "error"})
    assert type(caught.value) is RequestError and caught.value.ename == "RequestError"
    assert str(caught.value) == "request failed"
    assert refused({"status": "error", "ename": "BadRequest"})
    assert not refused({"status": "error", "ename": "KernelDied"})
    assert not refused({"status": "error", "ename": ["BadRequest"]})
    assert not refused({"status": "ok", "ename": "BadRequest"})


def test_a_name_reads_as_its_wire_value() -> None:
    for member in ErrorName:
        assert member == member.value and str(member) == f"{member}" == member.value


# -- no error-name literal outside the enum ----------------------------------------------------

#: Exception class names (``"ModeUnavailable"`` is one too): strings naming a Python class,
#: as in the package's lazy exports, are not error names.
_CLASS_NAMES = {name for name, obj in vars(errors).items() if inspect.isclass(obj)}


def _ename_params(trees: dict[Path, ast.Module]) -> dict[str, set[int]]:
    """Callable name -> position of its ``ename`` parameter (``self`` not counted), for every
    function and class (by its ``__init__``) in the package that takes one; subclasses of
    RequestError inherit its constructor."""
    params: dict[str, set[int]] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            for owner, func in _functions(node):
                names = [a.arg for a in func.args.posonlyargs + func.args.args]
                if "ename" in names:
                    offset = 1 if names and names[0] in ("self", "cls") else 0
                    params.setdefault(owner or func.name, set()).add(names.index("ename") - offset)
    stack = [RequestError]
    while stack:
        cls = stack.pop()
        params.setdefault(cls.__name__, params["RequestError"])
        stack.extend(cls.__subclasses__())
    return params


def _functions(node: ast.AST) -> list[tuple[str | None, ast.FunctionDef | ast.AsyncFunctionDef]]:
    if isinstance(node, ast.ClassDef):
        return [
            (node.name, item)
            for item in node.body
            if isinstance(item, ast.FunctionDef) and item.name == "__init__"
        ]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "__init__":
        return [(None, node)]
    return []


def _mentions_ename(node: ast.AST) -> bool:
    """``ename``, ``x.ename`` or ``x.get("ename")``."""
    if isinstance(node, ast.Name):
        return node.id == "ename"
    if isinstance(node, ast.Attribute):
        return node.attr == "ename"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr == "get" and _is_str(node.args[0] if node.args else None, "ename")
    return False


def _is_str(node: ast.AST | None, value: str | None = None) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and (value is None or node.value == value)
    )


def _literals(node: ast.AST | None) -> list[ast.Constant]:
    """String constants in ``node``, itself or the items of a tuple, list or set."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [i for i in node.elts if isinstance(i, ast.Constant) and isinstance(i.value, str)]
    return [node] if isinstance(node, ast.Constant) and isinstance(node.value, str) else []


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def literal_enames(trees: dict[Path, ast.Module]) -> list[str]:
    """Each place a string literal is an error name: a literal equal to an ErrorName value
    anywhere, and any literal where an ``ename`` goes (an argument bound to a parameter
    called ``ename``, an ``"ename"`` key's value, compared with or defaulting an ename)."""
    params = _ename_params(trees)
    found = []
    for path, tree in trees.items():
        where = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path
        hits: list[ast.Constant] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in NAMES - _CLASS_NAMES:
                hits.append(node)
            if isinstance(node, ast.Call):
                for position in params.get(_callee(node) or "", ()):
                    if position < len(node.args):
                        hits += _literals(node.args[position])
                hits += [
                    lit for kw in node.keywords if kw.arg == "ename" for lit in _literals(kw.value)
                ]
                if _mentions_ename(node) and len(node.args) > 1:  # .get("ename", default)
                    hits += _literals(node.args[1])
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if _is_str(key, "ename"):
                        hits += _literals(value)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(
                    _mentions_ename(t)
                    or (isinstance(t, ast.Subscript) and _is_str(t.slice, "ename"))
                    for t in targets
                ):
                    hits += _literals(node.value)
            elif isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(_mentions_ename(op) for op in operands):
                    hits += [lit for op in operands for lit in _literals(op)]
            elif isinstance(node, ast.BoolOp) and any(_mentions_ename(v) for v in node.values):
                hits += [lit for v in node.values for lit in _literals(v)]
        seen = set()
        for hit in hits:
            if id(hit) not in seen:
                seen.add(id(hit))
                found.append(f"{where}:{hit.lineno}: {ast.unparse(hit)}")
    return sorted(found)


def test_no_error_name_is_written_as_a_literal() -> None:
    files = [p for p in sorted(PACKAGE.rglob("*.py")) if p != ENUM_MODULE]
    assert len(files) > 20
    trees = {p: ast.parse(p.read_text(), str(p)) for p in files}
    assert literal_enames(trees) == [], "use ErrorName members (stigmer_kernel/protocol)"


def test_the_literal_check_finds_them() -> None:
    """The check itself: each way an error name can be spelt as a literal is found."""
    trees = {p: ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}
    source = """
raise RequestError("bad", "Brandnew")
raise KernelMismatch("bad", ename="Brandnew2")
self.fail(kernel, pending, status, "Brandnew3", reason)
content = {"status": "error", "ename": "Brandnew4"}
content["ename"] = "Brandnew5"
if exc.ename == "Brandnew6" or content.get("ename") in ("Brandnew7", "x"): pass
ename = content.get("ename", "Brandnew8")
ename = str(content.get("ename") or "Brandnew9")
x = "KernelDied"
__all__ = ["ModeUnavailable"]
raise RequestError("no error name in a message: KernelDied", ErrorName.KERNEL_DIED)
"""
    trees[PACKAGE / "example.py"] = ast.parse(source)
    found = [f for f in literal_enames(trees) if f.startswith("stigmer_kernel/example.py")]
    expected = {f"'Brandnew{n}'" for n in ["", 2, 3, 4, 5, 6, 7, 8, 9]} | {"'x'", "'KernelDied'"}
    assert {f.split(": ", 1)[1] for f in found} == expected
    assert len(found) == len(expected)
