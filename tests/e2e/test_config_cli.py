"""Configuration errors as `tokenwire serve` prints them: one line, exit code 2 (a real process).
(Loading settings in-process: unit/test_config.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tokenwire.config import ConfigError, load_settings


def run_cli(args: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenwire", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    ("toml", "env", "needle"),
    [
        ("[providers.acme]\napi_key = 'x'\n", {}, "unknown provider 'acme'"),
        ("[providers.openai]\n", {}, "no API key; set OPENAI_API_KEY"),
        ("[server\nport = 1", {}, "not valid TOML"),
        ("[server]\nport = 'eighty'\n", {}, "port must be a int"),
        ("[server]\nprot = 80\n", {}, "unknown setting 'prot'"),
        ("[providers.x]\npreset = 'nope'\n", {}, "unknown provider preset 'nope'"),
        ("[providers.x]\nkind = 'openai'\nbase_url = 'ftp://x'\n", {}, "must start with http"),
    ],
)
def test_config_errors_are_one_line(tmp_path, toml, env, needle) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_settings(str(cfg), env={"HOME": str(tmp_path), **env})
    proc = run_cli(["serve", "--config", str(cfg), "--port", "0"], {"HOME": str(tmp_path), **env}, tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokenwire: configuration error:") and needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_config_file(tmp_path) -> None:
    proc = run_cli(["serve", "--config", "nope.toml"], {"HOME": str(tmp_path)}, tmp_path)
    assert proc.returncode == 2 and "config file nope.toml not found" in proc.stderr
