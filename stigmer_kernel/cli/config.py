"""``stigmer config get|set|unset|list|path``: the saved preferences (the config file; the
settings themselves and their precedence: stigmer_kernel/config.py).

It loads no configuration to change the file, so that a bad saved value can still be fixed.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
from typing import Any

from ..config import (
    FIELDS,
    USER_KEYS,
    default_config_path,
    parse_value,
    read_config_file,
    write_config_file,
)
from .common import fail, load


def add_parser(sub: Any) -> None:
    config = sub.add_parser("config", help="read or change saved preferences")
    csub = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    keys = _settings_help()
    get = csub.add_parser(
        "get",
        help="print the effective value of a setting",
        epilog=keys,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    get.add_argument("key", help="a setting (listed below)")
    cset = csub.add_parser(
        "set",
        help="save a setting in the config file",
        description="Save KEY = VALUE in the config file (`stigmer config path`); the "
        "environment (STIGMER_*) still wins over it. VALUE none removes it.",
        epilog=keys,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cset.add_argument("key", help="a setting (listed below)")
    cset.add_argument("value", help="as you would type it: 300, true, none, a path, a,comma,list")
    unset = csub.add_parser(
        "unset",
        help="remove a setting from the config file",
        epilog=keys,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    unset.add_argument("key", help="a setting (listed below)")
    csub.add_parser("list", help="every setting with its value and where it comes from")
    csub.add_parser("path", help="print the config file path")


def _settings_help() -> str:
    """The settings ``stigmer config`` knows, one line each (for its --help)."""
    lines = ["settings (environment variable, default):"]
    for key in USER_KEYS:
        field = FIELDS[key]
        default = field.default if field.default is not dataclasses.MISSING else None
        lines.append(f"  {key:<28} {field.metadata['env']}, {_user_text(default)}")
    return "\n".join(lines)


def _user_text(value: Any) -> str:
    """A setting's value as a user types it: none, true/false, 300, a,b (not a Python repr)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(_user_text(v) for v in value) or "none"
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def run(args: argparse.Namespace) -> int:
    path = default_config_path()
    if args.action == "path":
        print(path)
        return 0
    if args.action in ("get", "set", "unset") and args.key not in USER_KEYS:
        return fail(f"unknown setting {args.key!r}; known settings: {', '.join(USER_KEYS)}")
    stored = read_config_file(path)
    if args.action == "set":
        value = parse_value(args.key, args.value)
        if value is None:  # "none": the default of every setting that can be empty
            stored.pop(args.key, None)
            write_config_file(path, stored)
            print(f"{args.key} = none  (unset in {path})")
            return 0
        stored[args.key] = str(value) if not isinstance(value, (bool, int, float)) else value
        if hasattr(value, "value"):
            stored[args.key] = value.value
        write_config_file(path, stored)
        print(f"{args.key} = {stored[args.key]}  (saved in {path})")
        return 0
    if args.action == "unset":
        stored.pop(args.key, None)
        write_config_file(path, stored)
        return 0
    config = load(args).to_dict()
    if args.action == "get":
        value = config[args.key]
        print("" if value is None else _user_text(value))
        return 0
    for key in USER_KEYS:  # list
        var = FIELDS[key].metadata["env"]
        source = "env" if os.environ.get(var) else "file" if key in stored else "default"
        if key == "runtime_dir" and args.runtime_dir:
            source = "--runtime-dir"
        print(f"{key} = {_user_text(config[key])}  ({source}; {var})")
    return 0
