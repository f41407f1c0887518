"""``stigmer run``'s options read without argparse, for a plain run (argparse's import and
parser cost a plain run more than the rest of its start); anything else goes to argparse."""

from __future__ import annotations

from types import SimpleNamespace

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from .common import Args


#: ``stigmer run``'s options that take a value, and the attribute each sets (see add_parser).
_VALUED = {
    "--mode": "mode",
    "--kernel": "kernel",
    "-k": "kernel",
    "--timeout": "timeout",
    "-t": "timeout",
    "--cwd": "cwd",
    "--workdir": "workdir",
    "-w": "workdir",
    "--sandbox-image": "sandbox_image",
    "--pool": "pool",
    "--requirements": "requirements",
    "--env": "env",
    "-e": "env",
}
#: Its flags: the attribute each sets, and to what.
_FLAGS = {
    "--stdin": ("stdin", True),
    "--no-stdin": ("stdin", False),
    "--explain": ("explain", True),
    "--json": ("json", True),
}
_MODES = ("local", "sandbox", "auto", "remote")


def parse_plain(argv: list[str]) -> Args | None:
    """``argv`` (``run`` first) parsed as argparse would parse it, without argparse (whose
    import and parser cost a plain run more than the rest of its start), or None for anything
    but plain options before the command (help, a global option, an abbreviation, a value that
    looks like an option, a mistake...): argparse then parses it, and says what is wrong."""
    args = SimpleNamespace(
        runtime_dir=None,
        remote=None,
        remote_key=None,
        server_key=None,
        curve_cert=None,
        command="run",
        mode=None,
        kernel="default",
        timeout=None,
        cwd=None,
        workdir=None,
        sandbox_image=None,
        pool=None,
        requirements=None,
        env=[],
        stdin=None,
        explain=False,
        json=False,
        argv=[],
    )
    seen_stdin: set[bool] = set()
    i = 1
    while i < len(argv):
        token = argv[i]
        if token == "--" or (token and token[0] != "-"):
            args.argv = argv[i:]  # argparse.REMAINDER keeps the "--"
            return args
        if token in _FLAGS:
            attr, value = _FLAGS[token]
            if attr == "stdin":
                seen_stdin.add(value)
                if len(seen_stdin) > 1:  # --stdin with --no-stdin: argparse says why not
                    return None
            setattr(args, attr, value)
            i += 1
            continue
        name, eq, given = token.partition("=")
        if eq and name.startswith("--"):
            i += 1
        elif token in _VALUED and i + 1 < len(argv) and argv[i + 1][:1] not in ("-", ""):
            name, given = token, argv[i + 1]
            i += 2
        else:
            return None
        dest = _VALUED.get(name)
        if dest is None or (dest == "mode" and given not in _MODES):
            return None
        if dest == "env":
            args.env.append(given)
        elif dest == "timeout":
            try:
                args.timeout = float(given)  # argparse's type=float
            except ValueError:
                return None
        else:
            setattr(args, dest, given)
    return args
