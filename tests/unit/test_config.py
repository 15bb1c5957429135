"""Configuration: zero-config default, environment providers, TOML (in-process; the one-line errors
`serve` prints: e2e/test_config_cli.py)."""

from __future__ import annotations

import pytest

from tokenwire.config import load_settings
from tokenwire.runtime.routing import Router
from tokenwire.upstream.http import SharedSession


def test_zero_config_is_simulated(tmp_path) -> None:
    s = load_settings(env={"HOME": str(tmp_path)})
    assert s.providers == [] and s.host == "127.0.0.1" and s.port == 8000
    router = Router(s, SharedSession())
    route = router.resolve("gpt-4.1")
    assert route.provider.simulated and router.default_model == "gpt-4.1"


@pytest.mark.parametrize(
    ("env", "name", "base"),
    [
        ({"HOLYSHEEP_API_KEY": "hs_SECRETKEY"}, "holysheep", "https://api.holysheep.ai/v1"),
        ({"DEEPSEEK_API_KEY": "sk-SECRETKEY"}, "deepseek", "https://api.deepseek.com/v1"),
        (
            {"OPENAI_API_KEY": "sk-SECRETKEY", "OPENAI_BASE_URL": "http://127.0.0.1:1234/v1"},
            "openai",
            "http://127.0.0.1:1234/v1",
        ),
    ],
)
def test_one_env_provider_takes_every_model_unchanged(env, name, base, tmp_path) -> None:
    s = load_settings(env={"HOME": str(tmp_path), **env})
    (p,) = s.providers
    assert (p.name, p.base_url, p.models) == (name, base, ["*"])
    route = Router(s, SharedSession()).resolve("some/model-x")
    assert route.upstream_model == "some/model-x" and route.provider.name == name
    assert "SECRETKEY" in p.api_key and "SECRETKEY" not in repr(p) + repr(s)


def test_toml_provider_and_settings(tmp_path) -> None:
    cfg = tmp_path / "tokenwire.toml"
    cfg.write_text(
        '[server]\nport = 9001\nidle_timeout = 30\n\n[providers.local]\nkind = "openai"\n'
        'base_url = "http://127.0.0.1:8001/v1"\nmodels = ["llama-3"]\nmodel_map = {fast = "llama-3-8b"}\n'
    )
    s = load_settings(str(cfg), env={"HOME": str(tmp_path)})
    assert s.port == 9001 and s.idle_timeout == 30.0
    router = Router(s, SharedSession())
    assert router.resolve("fast").upstream_model == "llama-3-8b"
    with pytest.raises(Exception, match="unknown model"):
        router.resolve("gpt-4.1")
