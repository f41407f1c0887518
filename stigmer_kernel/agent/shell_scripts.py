"""The bash code a kernel's session runs (docs/architecture.md, "The shell session").

* :func:`rc_file`: bash's ``--rcfile``. It moves the output pipes to fds 61 and 62, installs the
  EXIT trap (:func:`exit_script`) and the end report (:func:`hook`), reads back a saved state.
* :func:`command_line`: the one line that runs a command; :func:`assignments`, the variables
  put before it for that command only.
* :func:`hook`: ``PROMPT_COMMAND[999]``, the end report bash prints on its own stderr (the
  control pipe) before every prompt. It calls no command a user could redefine: a redirection
  from ``/dev/null/MARKER...`` fails, and bash prints the expanded name.
* :func:`exit_script`: run by the EXIT trap (``exit``, ``set -e``, the abort signal); it saves
  the session's state for the next bash. :func:`late_script` sets its options and traps again at
  that bash's first prompt.

Nothing here does I/O: these are strings, written to the kernel's work directory by
:class:`~stigmer_kernel.agent.shell.BashSession`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from ..environment import is_shell_name

#: Descriptors the command's stdout and stderr are kept on in bash (closed for the command).
OUT_FD = 61
ERR_FD = 62
#: bash's copy of its control pipe (closed for the command), for the EXIT trap's report.
CTL_FD = 60

# Markers on the control pipe: MARKER KIND PAYLOAD END. Kinds:
#   s<flag>        the rc file ran (flag "r": the saved state was read back)
#   r<rc>;<fn>     the end report's first half, printed by `\eval` (fn non-empty or the message
#                  missing: `eval` is not the builtin)
#   e<line>;<opts>;<pwd>  the end report, after the command line numbered <line> ($- in opts)
#   x<rc>          a line the agent sent to put the end report back (the command removed it)
#   q              the EXIT trap runs: bash is exiting with its control pipe still open (no
#                  such report before the pipe closes: `exec`, or a command closed it)
#   b<p>;<fn>      printed through `\builtin eval` (fn empty): `builtin` is bash's own, so the
#                  next line may run its command with it (see :func:`command_line`); p: what
#                  CAPTURE_PIPES saw (see below)
KIND_START, KIND_RESULT, KIND_END, KIND_REPAIR, KIND_EXIT = "s", "r", "e", "x", "q"
KIND_BUILTIN = "b"

#: The last line of a complete saved state.
STATE_DONE = b"__stg_ok=r\n"

_HOOK = (
    "\\eval '! 9</dev/null/\"{m}r${{__stgR-${{__stgS-$?}}}};${{FUNCNAME[0]-}}{e}\"'; "
    '\\builtin eval \'! 9</dev/null/"{m}b${{__stgP-}};${{FUNCNAME[0]-}}{e}"; '
    "${{__stgL+builtin unset -v __stgR __stgS __stgL __stgP}}'; "
    '! 9</dev/null/"{m}e$LINENO;$-;${{PWD-}}{e}"'
)

# What a command leaves to the next: $?, PIPESTATUS and $_ (agent/last_command.py). CAPTURE
# follows a user command's code, on a line of its own, inside its `eval`: it saves them while
# expanding to an empty command (no trace; bash runs the DEBUG trap before it, though).
# CAPTURE_PIPES also saves the pipeline's length, its statuses (joined by IFS's first
# character) and the options. LAST_TESTED or LAST_PLAIN end the line: `builtin true` sets $_ to
# the code's (PROMPT_COMMAND keeps it for the next line); a plain `eval` whose code ended before
# CAPTURE keeps its status in __stgS. The end report sends __stgR (else __stgS) as the status
# and __stgP, and unsets them all if __stgL is set (it is whenever any is; an `unset` costs ~8
# microseconds). bash parses all of this for every command: it is kept short.
CAPTURE = "\n${BASH_ALIASES[/${__stgR=$?}${__stgL=${_-}}]-}"
CAPTURE_PIPES = (
    "\n${BASH_ALIASES[/${__stgR=$?}${__stgL=${_-}}"
    "${__stgP=${#PIPESTATUS[@]};${PIPESTATUS[*]};$SHELLOPTS}]-}"
)
LAST_TESTED = ' && \\builtin true "${__stgL-}"'
LAST_PLAIN = '; __stgS=$?; \\builtin true "${__stgL=}"'
#: Before and after a hidden line of the agent's own: $_ is kept (its status is tested, in
#: __stgS when it failed).
KEEP_LAST = "__stgL=${_-}; "
KEPT_LAST = ' || __stgS=$?; \\builtin true "$__stgL"'
# (Lines that capture use no reserved word but `!`, which no alias replaces: a user's `alias
# for=...` would make every line a syntax error.)
#: The script that sets ``$?`` to its first argument (``. FILE STATUS "$_"`` keeps ``$_``).
RETURN_SCRIPT = '\\builtin return "$1"\n'

_RC = r"""
exec 60>&2 61>&{out} 62>&{err} {out}>&- {err}>&-
set +o history +H
unset HISTFILE MAILCHECK PROMPT_COMMAND TMOUT
shopt -u expand_aliases checkwinsize
PS1='' PS2='' PS0='' PS4='+ '
__stg_ok=
{restore}
\builtin trap -- '{{ __stg_s=$?; ! 2>&60 9</dev/null/"{quit}{end}"
  __stg_o=$SHELLOPTS __stg_b=$BASHOPTS POSIXLY_CORRECT=y
  \unset -f enable; \enable . builtin; \. {exitsh}; }} >/dev/null 2>&1' EXIT
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 501)); then
  PROMPT_COMMAND[999]={hook}
else
  PROMPT_COMMAND={hook}"${{PROMPT_COMMAND:+; $PROMPT_COMMAND}}"
fi
! 9</dev/null/"{start}${{__stg_ok}}{end}"
\builtin unset -v __stg_ok
{aliases}
{status}
"""

# Reading the saved state back: variables, functions, cwd... in the rc file; options and traps
# (which would act on the rc file itself) from the first prompt, where $? is kept, except
# `expand_aliases` and `verbose`, which bash resets after PROMPT_COMMAND.
_RESTORE = r"""\builtin . {state} 2>/dev/null
[[ -v __stg_a ]] && \builtin set -- "${{__stg_a[@]}}"
\builtin unset -v __stg_a
[[ :${{__stg_b-}}: == *:expand_aliases:* ]] && \builtin shopt -s expand_aliases"""

_RESTORE_VERBOSE = "[[ :${__stg_o-}: == *:verbose:* ]] && \\builtin set -v"

_LATE = r"""# The saved options and traps (docs/architecture.md, "The shell session").
__stg_k=:history:histexpand:emacs:vi:monitor:login_shell:restricted_shell:
for __stg_x in ${{SHELLOPTS//:/ }}; do
  [[ $__stg_k$__stg_o: == *:$__stg_x:* ]] || \builtin set +o "$__stg_x"
done
for __stg_x in ${{__stg_o//:/ }}; do
  [[ $__stg_k == *:$__stg_x:* ]] || \builtin set -o "$__stg_x"
done
for __stg_x in ${{BASHOPTS//:/ }}; do
  [[ $__stg_k$__stg_b: == *:$__stg_x:* ]] || \builtin shopt -u "$__stg_x"
done
for __stg_x in ${{__stg_b//:/ }}; do
  [[ $__stg_k == *:$__stg_x:* ]] || \builtin shopt -s "$__stg_x"
done
\builtin unset -v __stg_k __stg_x __stg_o __stg_b
\builtin . {traps}
PROMPT_COMMAND[999]={hook}
"""

# Runs in bash's EXIT trap with stdout and stderr on /dev/null. It may run inside functions:
# the innermost one's locals are unset first, so that what they hide is what gets saved. The
# trap saves $? and the options, then sets posix mode, where special builtins (`.`, `unset`)
# come before functions: that is how user functions named `enable` and `builtin` are removed
# (and `.` and `builtin` enabled again) before anything else runs.
_EXIT = r"""\unset -f builtin
\unset -v POSIXLY_CORRECT
\builtin set +euo pipefail
\builtin shopt -u localvar_unset
\builtin trap -p >| {traps}
\builtin trap - DEBUG ERR RETURN
if ((${{#FUNCNAME[@]}} > 1)); then
  \builtin local -p >| {locals}
  \builtin mapfile -t __stg_l < {locals}
  __stg_n=()
  for __stg_x in "${{__stg_l[@]}}"; do
    [[ $__stg_x =~ ^declare\ -[-a-zA-Z]*\ ([A-Za-z_][A-Za-z0-9_]*) ]] &&
      __stg_n+=("${{BASH_REMATCH[1]}}")
  done
  __stg_up() {{ \builtin unset -v "$@"; }}
  __stg_up "${{__stg_n[@]}}"
  \builtin unset -f __stg_up
  \builtin unset -v __stg_l __stg_n __stg_x
else
  __stg_a=("$@")
fi
[[ -s {tmpenv} ]] && \builtin . {tmpenv}
{{
  \builtin umask -p
  [[ -n ${{PWD-}} ]] && \builtin printf '\\builtin cd -- %q\n' "$PWD"
  \builtin unset -v __stg_s BASH_ARGC BASH_ARGV BASH_ARGV0 BASH_COMMAND \
    BASH_EXECUTION_STRING BASH_LINENO BASH_REMATCH BASH_SOURCE BASH_SUBSHELL BASHPID DIRSTACK \
    EPOCHREALTIME EPOCHSECONDS FUNCNAME GROUPS HISTCMD LINENO PIPESTATUS RANDOM SRANDOM _
  \builtin declare -p
  \builtin declare -f
  \builtin declare -F
  \builtin declare -p BASH_ALIASES
  \builtin printf '__stg_ok=r\n'
}} >| {state}
"""

_QUOTE_RE = re.compile(r"[^ -~]|['\\!]")


def _q(path: Path) -> str:
    return shlex.quote(str(path))


def hook(marker: str, end: str) -> str:
    """The end report (``PROMPT_COMMAND[999]``), ``marker`` and ``end`` as they are."""
    return _HOOK.format(m=marker, e=end)


def rc_file(
    *,
    out_fd: int,
    err_fd: int,
    marker: str,
    end: str,
    exit_sh: Path,
    state: Path | None = None,
    late_sh: Path | None = None,
    status: int = 0,
) -> str:
    """The rc file of a bash whose output pipes are passed as ``out_fd`` and ``err_fd``; with
    ``state`` and ``late_sh``, one that reads back a saved state and ends with ``$?`` set to
    ``status``."""
    first = hook(marker, end)
    if late_sh is not None:
        first = f"\\builtin . {_q(late_sh)} 2>/dev/null; {first}"
    return _RC.format(
        out=out_fd,
        err=err_fd,
        restore=_RESTORE.format(state=_q(state)) if state is not None else "",
        exitsh=_q(exit_sh).replace("'", "'\\''"),  # (inside the trap's single quotes)
        hook=shlex.quote(first),
        aliases=_RESTORE_VERBOSE if state is not None else "shopt -s expand_aliases",
        start=marker + KIND_START,
        quit=marker + KIND_EXIT,
        end=end,
        status=f"(\\builtin exit {status & 0xFF})" if status else "",
    )


def late_script(*, traps: Path, marker: str, end: str) -> str:
    """Run once from a restored bash's first prompt: options, traps, then the usual hook."""
    return _LATE.format(traps=_q(traps), hook=shlex.quote(hook(marker, end)))


def exit_script(*, traps: Path, locals_file: Path, state: Path, tmpenv: Path) -> str:
    """Run by the EXIT trap: writes ``traps`` and then ``state`` (last line :data:`STATE_DONE`).
    ``tmpenv``, when not empty, unsets the command's own variables first (see
    :func:`tmpenv_script`), so that the values they hid are what is saved."""
    return _EXIT.format(traps=_q(traps), locals=_q(locals_file), state=_q(state), tmpenv=_q(tmpenv))


#: Set (to 1) before a line with temporary variables, with them: the EXIT trap sees it only
#: while they are still in effect (bash has dropped them already after a `set -e` exit).
TMPENV_FLAG = "__stg_t"


def tmpenv_script(names: list[str]) -> str:
    """Unsets a command's temporary variables (``NAME=VALUE`` before its line) in the EXIT
    trap, if still in effect: the value each one hid (or none) comes back, as after the line
    in a shell."""
    return (
        f"[[ -n ${{{TMPENV_FLAG}-}} ]] && \\builtin unset -v -- {TMPENV_FLAG} "
        + " ".join(names)
        + "\n"
    )


def assignments(env: Mapping[str, str]) -> str:
    """``NAME=$'VALUE' ...`` put before a command line: bash sets them for that line's ``eval``
    only (temporary assignments before a builtin, exported to what it runs) and puts back what
    was there afterwards, an interrupt included. Names bash cannot assign are skipped (the
    broker refuses them)."""
    return f"{TMPENV_FLAG}=1 " + "".join(
        f"{name}={quote_code(value)} "
        for name, value in env.items()
        if isinstance(name, str) and isinstance(value, str) and is_shell_name(name)
    )


def command_line(
    code: str, stdin: Path | None, *, tested: bool = False, tail: str | None = None
) -> str:
    """The line that runs ``code`` at top level with the output pipes as its stdout and stderr,
    ``stdin`` (else /dev/null) as its stdin, and none of the session's descriptors.

    With ``tested`` (the last end report found `builtin` to be bash's own, and no temporary
    assignments precede the line), the code runs as ``\\builtin eval CODE && for _ in; do :;
    done``: the status of the first command of an `&&` list is tested, so bash neither runs
    the ERR trap nor exits for ``set -e`` when the line fails (the code's own failures did
    that already, inside); `builtin` bypasses the rule that turns ``set -e`` and the ERR trap
    off inside an `eval` whose status is tested. The empty loop (no command, so no DEBUG trap
    or trace) keeps the status. A plain ``\\eval`` runs the ERR trap a second time for a line
    whose last command failed, and exits for ``set -e`` after ``false && true``. ``tail``, if
    given, replaces what follows the `eval` (see CAPTURE)."""
    source = "/dev/null" if stdin is None else _q(stdin)
    runner = "\\builtin eval" if tested else "\\eval"
    if tail is None:
        tail = " && for _ in; do :; done" if tested else ""
    return (
        f"{runner} {quote_code(code + chr(10))} <{source} "
        f">&{OUT_FD} 2>&{ERR_FD} {CTL_FD}>&- {OUT_FD}>&- {ERR_FD}>&-{tail}\n"
    )


def repair_line(marker: str, end: str) -> str:
    """A line that reports ``$?`` (kind ``x``), sets the hook again and leaves ``$?`` as it was
    (for a command that unset PROMPT_COMMAND or replaced the array)."""
    return (
        f"__stg_r=$? PROMPT_COMMAND[999]={shlex.quote(hook(marker, end))}; "
        f'! 9</dev/null/"{marker}{KIND_REPAIR}$__stg_r{end}"; '
        '\\eval "\\builtin unset -v __stg_r; (\\builtin exit $__stg_r)"\n'
    )


def quote_code(code: str) -> str:
    """``code`` as one ANSI-C quoted word (``$'...'``) on a single line.

    Printable ASCII stays as it is; ``'``, ``\\``, ``!`` (history expansion) and every other
    byte become ``\\xHH``. NUL bytes, which no bash string can hold, are dropped.
    """
    data = code.encode("utf-8", "surrogateescape").replace(b"\0", b"")
    return "$'" + _QUOTE_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", data.decode("latin-1")) + "'"


def capture_env_script(path: Path, status: int) -> str:
    """Hidden code that writes the exported environment (the command's own variables
    included) to ``path`` as ``NAME=VALUE`` entries ended by NUL, with builtins only (a
    ``PATH`` the user changed does not matter), and leaves ``$?`` at ``status``: what a
    background process started from the session gets (agent/processes.py)."""
    return (
        "\\builtin mapfile -t __stg_e < <(\\builtin compgen -e)\n"
        'for __stg_n in "${__stg_e[@]}"; do\n'
        '  if [[ -v $__stg_n ]]; then \\builtin printf \'%s=%s\\0\' "$__stg_n" "${!__stg_n}"; fi\n'
        f"done >| {_q(path)}\n"
        "\\builtin unset -v __stg_e __stg_n\n"
        f"(\\builtin exit {status & 0xFF})"
    )


def chdir_back_script(cwd: str, status: int) -> str:
    """Hidden code that puts the session back in ``cwd`` after a command with a ``workdir``
    of its own, leaving ``$?`` at ``status``."""
    return f"\\builtin cd -- {shlex.quote(cwd)} 2>/dev/null; (\\builtin exit {status & 0xFF})"
