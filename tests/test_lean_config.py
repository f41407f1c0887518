"""``lean_settings`` (what a plain ``stigmer run`` reads instead of building a ``Config``) gives
``load_config``'s values, or leaves the case to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from stigmer_kernel import lean_config
from stigmer_kernel.config import FIELDS, load_config, write_config_file
from stigmer_kernel.errors import ConfigError
from stigmer_kernel.lean_config import NOT_SETTINGS, LeanSettings, lean_settings
from stigmer_kernel.names import EnvVar, ExecutionMode

#: Every setting a LeanSettings holds (its slots and its class-level defaults).
LEAN_FIELDS = sorted(name for name in dir(LeanSettings) if not name.startswith("_"))


def _compare(env: dict[str, str], runtime_dir: str | None) -> LeanSettings | None:
    """``lean_settings``'s answer, after checking it against ``load_config``'s."""
    lean = lean_settings(runtime_dir, env)
    try:
        full = load_config({"runtime_dir": runtime_dir}, env=env)
    except ConfigError:
        assert lean is None  # the refusal is load_config's to make, as before
        return None
    if lean is not None:
        for name in LEAN_FIELDS:
            value = getattr(full, name)
            if name == "runtime_dir":  # the lean one is a string: no pathlib imported
                value = str(value)
            assert getattr(lean, name) == value, name
    return lean


@pytest.fixture
def no_file(tmp_path: Path) -> dict[str, str]:
    """An environment whose config file does not exist."""
    return {"STIGMER_CONFIG": str(tmp_path / "missing.toml")}


@pytest.mark.parametrize(
    ("given", "runtime_dir"),
    [
        ({}, None),
        ({"STIGMER_RUNTIME_DIR": "/tmp/stg-lean"}, None),
        ({"STIGMER_RUNTIME_DIR": " /tmp//stg-lean/./x/ "}, None),
        ({"STIGMER_RUNTIME_DIR": "relative/dir"}, None),
        ({"STIGMER_RUNTIME_DIR": "~/stg"}, None),
        ({"STIGMER_RUNTIME_DIR": "~"}, None),
        ({"STIGMER_RUNTIME_DIR": "~//a/../b/"}, None),
        ({"STIGMER_RUNTIME_DIR": "//net/x"}, None),
        ({"STIGMER_RUNTIME_DIR": "///many//x"}, None),
        ({"STIGMER_RUNTIME_DIR": "."}, None),
        ({"STIGMER_RUNTIME_DIR": "./a/./b/.."}, None),
        ({"STIGMER_RUNTIME_DIR": ""}, None),
        ({"STIGMER_RUNTIME_DIR": "/tmp/a"}, "/tmp/b"),
        ({}, "rel"),
        ({"STIGMER_EXECUTION_MODE": "sandbox"}, None),
        ({"STIGMER_EXECUTION_MODE": " AUTO "}, "/tmp/c"),
        ({"STIGMER_EXECUTION_MODE": ""}, None),
        ({"STIGMER_KERNEL": "build", "STIGMER_AGENT_KEY": "k"}, None),  # no settings
    ],
)
def test_the_plain_cases_are_lean_and_give_load_configs_values(
    no_file: dict[str, str], given: dict[str, str], runtime_dir: str | None
) -> None:
    lean = _compare({**no_file, **given}, runtime_dir)
    assert lean is not None


@pytest.mark.parametrize(
    ("given", "runtime_dir"),
    [
        ({"STIGMER_KERNEL_TTL": "20"}, None),  # another setting: only load_config reads it
        ({"STIGMER_OUTPUT_LIMIT": "5", "STIGMER_RUNTIME_DIR": "/tmp/d"}, None),
        ({"STIGMER_TIMEOUT": "oops"}, None),  # refused by load_config
        ({"STIGMER_EXECUTION_MODE": "cloud"}, None),
        ({"STIGMER_RUNTIME_DIR": "   "}, None),
        ({"STIGMER_RUNTIME_DIR": "/tmp/e"}, ""),
        ({}, "~no-such-user-of-stigmer/x"),
    ],
)
def test_other_cases_are_left_to_load_config(
    no_file: dict[str, str], given: dict[str, str], runtime_dir: str | None
) -> None:
    assert lean_settings(runtime_dir, {**no_file, **given}) is None
    if "~" not in (runtime_dir or ""):  # Path.expanduser raises that one, as it always did
        _compare({**no_file, **given}, runtime_dir)


@pytest.mark.parametrize("content", [{}, {"execution_mode": "auto"}, {"kernel_ttl": 5.0}])
def test_a_config_file_is_left_to_load_config(tmp_path: Path, content: dict[str, object]) -> None:
    path = tmp_path / "config.toml"
    write_config_file(path, content)
    env = {"STIGMER_CONFIG": str(path), "STIGMER_RUNTIME_DIR": "/tmp/f"}
    assert lean_settings(None, env) is None
    _compare(env, None)
    path.unlink()
    path.mkdir()  # unreadable as a file: load_config says so
    assert _compare(env, None) is None


@pytest.mark.parametrize("xdg", [None, "", "exists", "missing"])
@pytest.mark.parametrize("home", [None, "", "/", "relative"])
def test_the_default_paths_are_config_s(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_file: dict[str, str],
    xdg: str | None,
    home: str | None,
) -> None:
    for var, value in (("XDG_RUNTIME_DIR", xdg), ("HOME", home)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            value = {"exists": f"{tmp_path}//run/", "missing": f"{tmp_path}/no"}.get(value, value)
            monkeypatch.setenv(var, value)
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path)
    assert _compare(no_file, None) is not None
    assert _compare(no_file, "~/x") is not None


def test_the_default_config_path_counts_too(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert _compare(env, "/tmp/g") is not None
    write_config_file(tmp_path / "stigmer" / "config.toml", {"sandbox_ttl": 9.0})
    assert lean_settings("/tmp/g", env) is None


def test_every_variable_but_the_listed_ones_is_a_setting() -> None:
    settings = {f.metadata["env"] for f in FIELDS.values() if "env" in f.metadata}
    names = {var.value for var in EnvVar}
    assert settings == names - NOT_SETTINGS and names >= NOT_SETTINGS
    assert set(LEAN_FIELDS) <= set(FIELDS)


def test_the_names_it_reads_are_envvar_values() -> None:
    assert EnvVar.CONFIG.value == lean_config._CONFIG
    assert EnvVar.RUNTIME_DIR.value == lean_config._RUNTIME_DIR
    assert EnvVar.EXECUTION_MODE.value == lean_config._EXECUTION_MODE
    assert all(var.value.startswith(lean_config._PREFIX) for var in EnvVar)
    assert LeanSettings("/x", "local", frozenset()).execution_mode is ExecutionMode.LOCAL


@pytest.mark.parametrize("name", ["STIGMER_BENCH_SAMPLES", "STIGMER_FROM_A_NEWER_VERSION"])
def test_a_variable_that_is_no_setting_is_ignored_as_load_config_ignores_it(
    no_file: dict[str, str], name: str
) -> None:
    plain = lean_settings(None, no_file)
    with_it = lean_settings(None, {**no_file, name: "1"})
    assert plain is not None and with_it is not None
    assert (with_it.runtime_dir, with_it.explicit) == (plain.runtime_dir, plain.explicit)
    assert load_config(env={**no_file, name: "1"}) == load_config(env=no_file)


def test_a_setting_in_the_environment_is_left_to_load_config(no_file: dict[str, str]) -> None:
    assert lean_settings(None, {**no_file, "STIGMER_TIMEOUT": "5"}) is None
    assert lean_settings(None, {**no_file, "STIGMER_TIMEOUT": ""}) is not None  # empty: not set
