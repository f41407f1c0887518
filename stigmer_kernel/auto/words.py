"""Splitting a command line as a shell would, for the rules (no shell is run).

:func:`lex` splits a line into words and operators (quoting and comments as bash reads them);
:func:`command_words` takes a simple command's words past its assignments and wrappers
(``env VAR=x``, ``nohup``, ``time``...); :func:`raw_substitutions` finds the text of command
substitutions before any lexing.
"""

from __future__ import annotations

import re
import shlex

#: Tokens that end a simple command (``|`` and ``|&`` also join it into a pipeline).
OPERATORS = {";", "&&", "||", "|", "|&", "&", "(", ")", "{", "}", "\n", "!"}
#: Output redirections: the token after one is the file written.
REDIRECTS = {">", ">>", ">|", "&>", "&>>", "<>"}
_WRAPPERS = {
    "command",
    "exec",
    "nohup",
    "time",
    "nice",
    "ionice",
    "stdbuf",
    "timeout",
    "xargs",
    "builtin",
    "then",
    "do",
    "else",
    "elif",
    "if",
    "while",
    "until",
}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=")


def raw_substitutions(code: str) -> list[str]:
    """Text inside backticks and innermost ``$(...)``, found before any tokenizing."""
    return [
        t for t in re.findall(r"`([^`]*)`", code) + re.findall(r"\$\(([^()]*)\)", code) if t.strip()
    ]


def first_word(code: str) -> str:
    words = code.split()
    return words[0].rsplit("/", 1)[-1] if words else ""


def lex(code: str) -> list[str]:
    lexer = shlex.shlex(_strip_comments(code), posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    lexer.commenters = ""
    out: list[str] = []
    for token in lexer:
        out.extend(_split_newlines(token))
    return out


def _strip_comments(code: str) -> str:
    """``code`` without shell comments: a ``#`` that starts a word, outside quotes, to the end
    of its line (``x.sh#v1`` and ``"#"`` are not comments)."""
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(code):
        ch = code[i]
        if quote:
            if ch == "\\" and quote == '"' and i + 1 < len(code):
                out.append(code[i : i + 2])
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch == "\\" and i + 1 < len(code):
            out.append(code[i : i + 2])
            i += 2
            continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or code[i - 1] in " \t\n;&|()"):
            end = code.find("\n", i)
            i = len(code) if end < 0 else end
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _split_newlines(token: str) -> list[str]:
    if "\n" not in token or token.strip() == "":
        return ["\n"] if "\n" in token else [token]
    parts: list[str] = []
    for index, piece in enumerate(token.split("\n")):
        if index:
            parts.append("\n")
        if piece:
            parts.append(piece)
    return parts


def command_words(command: list[str]) -> list[str]:
    """The words of a simple command after assignments and wrappers (env, nohup, time...)."""
    words = list(command)
    while words:
        head = words[0]
        if _ASSIGNMENT.match(head):
            words.pop(0)
        elif head == "env":
            words.pop(0)
            while words and (words[0].startswith("-") or _ASSIGNMENT.match(words[0])):
                option = words.pop(0)
                if option in ("-u", "-C", "--unset", "--chdir", "-S") and words:
                    words.pop(0)
        elif head in _WRAPPERS:
            words.pop(0)
            while words and words[0].startswith("-"):
                words.pop(0)
            if head == "timeout" and words and re.fullmatch(r"[\d.]+[smhd]?", words[0]):
                words.pop(0)
        else:
            break
    if words:
        words[0] = words[0].rsplit("/", 1)[-1]  # /usr/bin/pip -> pip
    return words
