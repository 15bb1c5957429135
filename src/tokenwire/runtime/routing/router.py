"""Which provider answers a model name, and as which upstream model id.

A name is first looked up in the aliases (``fast``, ``cheap``, ``best`` or the
config's ``[aliases]``), then in ``[routes.NAME]`` (explicit deployments, a
selection strategy, fallbacks), then in the providers' model lists. The result
is a :class:`Route` for the preferred deployment carrying the whole
:class:`~tokenwire.routing.Plan`; the relay walks it before the first token.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from ...catalog import build_catalog
from ...config import ProviderConfig, Settings
from ...protocol.errors import GatewayError
from ...simulate.reply import PROFILES
from ...upstream.base import Provider
from ...upstream.http import SharedSession
from ...upstream.openai import OpenAIProvider
from ...upstream.simulated import SimulatedProvider
from .deployment import Deployment, Policy
from .plan import Group, Plan, Route

__all__ = ["ALIASES", "Router", "build_provider"]

_DEFAULT_MODEL = {
    "deepseek": "deepseek-chat",
    "ollama": "llama3.2",
    "anthropic": "claude-sonnet-4.5",
    "gemini": "gemini-2.5-flash",
}

#: Built-in aliases (a config's ``[aliases]`` table overrides or adds to them).
ALIASES = {"fast": "gemini-2.5-flash", "cheap": "deepseek-v3.2", "best": "claude-sonnet-4.5"}

_MAX_DEPLOYMENTS = 4096  #: breaker/latency state kept for at most this many (provider, model) pairs


def build_provider(cfg: ProviderConfig, session: SharedSession, speed: float) -> Provider:
    if cfg.kind == "simulated":
        return SimulatedProvider(cfg.name, speed)
    if cfg.kind == "openai":
        return OpenAIProvider(cfg.name, cfg.base_url, cfg.api_key, session, cfg.headers)
    from ... import upstream  # native providers register themselves there

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
        self.catalog = build_catalog(settings.models)
        # built-in aliases never shadow a name some provider lists; the config's own always apply
        explicit = {n for cfg in configs for n in (*cfg.models, *cfg.model_map)} | set(settings.routes)
        self.aliases = {**{k: v for k, v in ALIASES.items() if k not in explicit}, **settings.aliases}
        self.routes = settings.routes
        self.policy = Policy.from_settings(settings)
        self.by_name = {cfg.name: (cfg, provider) for cfg, provider in self.providers}
        self.deployments: dict[tuple[str, str], Deployment] = {}

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
        name = self.aliases.get(model, model)
        groups = [self._group(name)]
        for fallback in (self.routes.get(name) or {}).get("fallbacks", []):
            try:
                groups.append(self._group(self.aliases.get(fallback, fallback)))
            except GatewayError:
                continue  # a fallback nobody serves is skipped, not fatal
        first = groups[0].targets[0]
        return Route(
            first.model,
            first.upstream_model,
            first.provider,
            first.deployment,
            Plan(groups, self.policy),
            first.info,
        )

    def _group(self, name: str) -> Group:
        """The deployments serving ``name``, with the route's strategy."""
        route = self.routes.get(name) or {}
        targets: list[Route] = []
        for dep in route.get("deployments", []):
            pname, _, upstream = dep.partition(":")
            if pname in self.by_name:
                cfg, provider = self.by_name[pname]
                targets.append(self._target(name, cfg, provider, upstream or None))
        if not targets:  # every provider that lists the name exactly, in config order
            targets = [
                self._target(name, cfg, provider)
                for cfg, provider in self.providers
                if name in cfg.models or name in cfg.model_map
            ]
        info = self.catalog.get(name)
        if not targets and info is not None and info.provider in self.by_name:  # the catalog says where it lives
            cfg, provider = self.by_name[info.provider]
            targets = [self._target(name, cfg, provider)]
        if not targets:
            for cfg, provider in self.providers:
                if any(fnmatchcase(name, pat) for pat in cfg.models if "*" in pat or "?" in pat):
                    targets = [self._target(name, cfg, provider)]
                    break
        if not targets:
            raise GatewayError(
                "unknown_model",
                f"unknown model {name[:80]!r}; available: {', '.join(self.model_names()) or 'none'}",
            )
        weights = (
            route.get("weights") if route.get("deployments") and len(targets) == len(route["deployments"]) else None
        )
        return Group(targets, route.get("strategy", "ordered"), weights)

    def _target(self, name: str, cfg: ProviderConfig, provider: Provider, upstream: str | None = None) -> Route:
        info = self.catalog.get(name)
        if upstream is None:
            upstream = cfg.model_map.get(name)
        if upstream is None:
            official = info is not None and info.upstream_model and info.provider in (cfg.name, cfg.kind)
            upstream = info.upstream_model if official and info else name
        key = (cfg.name, upstream)
        dep = self.deployments.get(key)
        if dep is None:
            if len(self.deployments) >= _MAX_DEPLOYMENTS:
                self.deployments.pop(next(iter(self.deployments)))
            dep = self.deployments[key] = Deployment(provider, upstream, self.policy)
        return Route(name, upstream, provider, dep, None, info)

    def health(self) -> list[dict[str, Any]]:
        """Circuit-breaker state and observed latency of every deployment used so far."""
        return [dep.snapshot() for dep in self.deployments.values()]

    def model_names(self) -> list[str]:
        names: list[str] = []
        for cfg, _ in self.providers:
            names += [m for m in [*cfg.models, *cfg.model_map] if m not in names]
        return names

    def models(self) -> list[dict[str, Any]]:
        """The ``/v1/models`` list: configured names, then catalog models someone serves."""
        out: list[dict[str, Any]] = []
        seen: set[str] = set()

        def add(name: str, cfg: ProviderConfig, provider: Provider, **extra: Any) -> None:
            info = self.catalog.get(name)
            entry: dict[str, Any] = {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": info.owned_by if info else cfg.name,
                "provider": cfg.name,
                "simulated": provider.simulated,
                **extra,
            }
            if info:
                entry["context_window"] = info.context_window
                if info.input_per_mtok is not None and info.output_per_mtok is not None:
                    entry["pricing"] = {
                        "input_per_mtok": info.input_per_mtok,
                        "output_per_mtok": info.output_per_mtok,
                    }
                    for k in ("cached_input_per_mtok", "cache_write_per_mtok"):
                        if getattr(info, k) is not None:
                            entry["pricing"][k] = getattr(info, k)
            out.append(entry)
            seen.add(name)

        for cfg, provider in self.providers:
            for name in [*cfg.models, *cfg.model_map]:
                if name not in seen:
                    add(name, cfg, provider)
        for name in [*self.routes, *self.catalog]:
            if name in seen:
                continue
            try:
                route = self.resolve(name)
            except GatewayError:
                continue
            cfg = self.by_name[route.provider.name][0]
            extra: dict[str, Any] = {"upstream_model": route.upstream_model}
            if route.plan is not None:
                extra["deployments"] = [t.deployment.key for g in route.plan.groups for t in g.targets if t.deployment]
            add(name, cfg, route.provider, **extra)
        return out

    def alias_map(self) -> dict[str, str]:
        """Aliases whose target someone serves (shown beside ``/v1/models``)."""
        out = {}
        for alias in self.aliases:
            try:
                out[alias] = self.resolve(alias).model
            except GatewayError:
                continue
        return out

    async def aclose(self) -> None:
        for _, provider in self.providers:
            await provider.aclose()
