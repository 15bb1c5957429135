"""Which provider answers a model name, and as which upstream model id."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from .catalog import CATALOG
from .config import ProviderConfig, Settings
from .protocol.errors import GatewayError
from .simulate.reply import PROFILES
from .upstream.base import Provider
from .upstream.http import SharedSession
from .upstream.openai import OpenAIProvider
from .upstream.simulated import SimulatedProvider

__all__ = ["Route", "Router"]

_DEFAULT_MODEL = {"deepseek": "deepseek-chat", "ollama": "llama3.2"}


@dataclass(frozen=True, slots=True)
class Route:
    model: str  #: the name the client asked for
    upstream_model: str  #: the provider's own id
    provider: Provider


def build_provider(cfg: ProviderConfig, session: SharedSession, speed: float) -> Provider:
    if cfg.kind == "simulated":
        return SimulatedProvider(cfg.name, speed)
    if cfg.kind == "openai":
        return OpenAIProvider(cfg.name, cfg.base_url, cfg.api_key, session, cfg.headers)
    from . import upstream  # native providers register themselves there

    factory = upstream.NATIVE.get(cfg.kind)
    if factory is None:
        raise GatewayError("internal_error", f"provider kind {cfg.kind!r} is not available")
    return factory(cfg.name, cfg.base_url, cfg.api_key, session, cfg.headers)


class Router:
    def __init__(self, settings: Settings, session: SharedSession) -> None:
        configs = settings.providers or [ProviderConfig("simulated", "simulated", "", models=list(PROFILES))]
        self.configs = configs
        self.providers: list[tuple[ProviderConfig, Provider]] = [
            (cfg, build_provider(cfg, session, settings.simulated_speed)) for cfg in configs
        ]
        self.default_model = settings.default_model or self._guess_default()

    def _guess_default(self) -> str | None:
        for cfg, _ in self.providers:
            for name in cfg.models:
                if "*" not in name:
                    return name
            if cfg.name in _DEFAULT_MODEL:
                return _DEFAULT_MODEL[cfg.name]
            if cfg.kind in ("openai",) and cfg.name in ("openai", "holysheep", "openrouter"):
                return "gpt-4.1" if cfg.name != "openrouter" else "openai/gpt-4.1"
        return None

    def resolve(self, model: str | None) -> Route:
        if not model:
            if not self.default_model:
                raise GatewayError("bad_request", 'no "model" given and no default_model is configured')
            model = self.default_model
        for cfg, provider in self.providers:  # exact names first
            if model in cfg.models or model in cfg.model_map:
                return Route(model, cfg.model_map.get(model, model), provider)
        for cfg, provider in self.providers:
            if any(fnmatchcase(model, pat) for pat in cfg.models if "*" in pat or "?" in pat):
                return Route(model, cfg.model_map.get(model, model), provider)
        raise GatewayError(
            "unknown_model",
            f"unknown model {model[:80]!r}; available: {', '.join(self.model_names()) or 'none'}",
        )

    def model_names(self) -> list[str]:
        names: list[str] = []
        for cfg, _ in self.providers:
            names += [m for m in [*cfg.models, *cfg.model_map] if m not in names]
        return names

    def models(self) -> list[dict[str, Any]]:
        """The ``/v1/models`` list, saying which models are simulated."""
        out = []
        for cfg, provider in self.providers:
            for name in [*cfg.models, *cfg.model_map]:
                info = CATALOG.get(name)
                entry: dict[str, Any] = {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": info.owned_by if info else cfg.name,
                    "provider": cfg.name,
                    "simulated": provider.simulated,
                }
                if info:
                    entry["context_window"] = info.context_window
                    entry["pricing"] = {
                        "input_per_mtok": info.input_per_mtok,
                        "output_per_mtok": info.output_per_mtok,
                    }
                out.append(entry)
        return out

    async def aclose(self) -> None:
        for _, provider in self.providers:
            await provider.aclose()
