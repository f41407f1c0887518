"""Configuration precedence and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from stigmer_kernel.config import ExecutionMode, load_config, write_config_file
from stigmer_kernel.errors import ConfigError


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(env={}, config_path=tmp_path / "none.toml")
    assert cfg.execution_mode is ExecutionMode.LOCAL
    assert cfg.kernel_ttl == 3600.0
    assert cfg.sandbox_ttl == 3600.0 and cfg.sandbox_auto_pull and cfg.sandbox_cleanup
    assert cfg.command_timeout is None


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    write_config_file(path, {"kernel_ttl": 10.0, "execution_mode": "auto", "log_level": "DEBUG"})
    cfg = load_config(env={"STIGMER_KERNEL_TTL": "20"}, config_path=path)
    assert (cfg.kernel_ttl, cfg.execution_mode, cfg.log_level) == (
        20.0,
        ExecutionMode.AUTO,
        "DEBUG",
    )
    cfg = load_config({"kernel_ttl": "30"}, env={"STIGMER_KERNEL_TTL": "20"}, config_path=path)
    assert cfg.kernel_ttl == 30.0


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("STIGMER_EXECUTION_MODE", "cloud", "one of local, sandbox, auto"),
        ("STIGMER_SANDBOX_AUTO_PULL", "maybe", "true or false"),
        ("STIGMER_KERNEL_TTL", "-1", "positive number"),
        ("STIGMER_HEARTBEAT_MISSES", "0", "positive integer"),
    ],
)
def test_bad_environment_values(tmp_path: Path, var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env={var: value}, config_path=tmp_path / "none.toml")


def test_bad_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("kernel_ttl = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(env={}, config_path=path)
    path.write_text('colour = "blue"\n')
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_config(env={}, config_path=path)
