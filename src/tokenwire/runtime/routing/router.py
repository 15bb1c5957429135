"""Which provider answers a model name, and as which upstream model id.

A name is first looked up in the aliases (``fast``, ``cheap``, ``best`` or the
config's ``[aliases]``), then in ``[routes.NAME]`` (explicit deployments, a
selection strategy, fallbacks), then in the providers' model lists. The result
is a :class:`Route` for the preferred deployment carrying the whole
:class:`~tokenwire.routing.Plan`; the relay walks it before the first token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from fnmatch import fnmatchcase
from typing import Any

from ...catalog import build_catalog
from ...config import ConfigError, ProviderConfig, Settings
from ...protocol.errors import GatewayError
from ...protocol.frames import did_you_mean
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

MODELS_TTL = 300.0  #: seconds a provider's own model list (GET /models) is kept
MODELS_RETRY = 30.0  #: after a failed GET /models, seconds before asking again (the configured names meanwhile)
MODELS_TIMEOUT = 3.0  #: seconds a GET /models may take (start-up waits at most this long for a dead provider)

log = logging.getLogger("tokenwire.routing")


def _is_pattern(name: str) -> bool:
    return "*" in name or "?" in name or "[" in name


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
        #: provider name -> the model ids its own GET /models listed (providers routed by a pattern)
        self.listed: dict[str, list[str]] = {}
        self._next_ask: dict[str, float] = {}
        self._discovery: asyncio.Future[None] | None = None
        self._default_given = bool(settings.default_model)
        if settings.default_model:
            try:
                self.resolve(settings.default_model)
            except GatewayError:
                known = self.model_names()
                raise ConfigError(
                    f"default_model {settings.default_model[:80]!r} is not served by any provider"
                    f"{did_you_mean(settings.default_model, known)}; served: {', '.join(known) or 'none'}"
                ) from None

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

    # -- the providers' own model lists -------------------------------------------------
    async def discover(self, timeout: float = MODELS_TIMEOUT) -> None:
        """Ask providers routed by a pattern ("*", "gpt-*") for their models (cached for MODELS_TTL).

        A provider without a list, or one that fails or does not answer within ``timeout``,
        keeps its configured names (asked again after MODELS_RETRY). Concurrent callers share
        one round of requests.
        """
        now = time.monotonic()
        due = [
            (cfg, p)
            for cfg, p in self.providers
            if hasattr(p, "list_models")
            and any(_is_pattern(m) for m in cfg.models)
            and now >= self._next_ask.get(cfg.name, 0.0)
        ]
        if not due:
            return
        if self._discovery is None or self._discovery.done():
            self._discovery = asyncio.ensure_future(self._ask(due, timeout))
        await asyncio.shield(self._discovery)

    async def _ask(self, due: list[tuple[ProviderConfig, Provider]], timeout: float) -> None:
        async def one(cfg: ProviderConfig, provider: Any) -> None:
            try:
                ids = await asyncio.wait_for(provider.list_models(timeout), timeout + 0.5)
            except Exception as exc:  # a best-effort list: any failure means the configured names
                self._next_ask[cfg.name] = time.monotonic() + MODELS_RETRY
                if cfg.name not in self.listed:
                    if isinstance(exc, GatewayError):
                        reason = exc.message
                    elif isinstance(exc, TimeoutError):
                        reason = f"no answer within {timeout:g} s"
                    else:
                        reason = f"{type(exc).__name__}: {exc}"
                    log.warning("%s: cannot list its models (%s); listing the configured names", cfg.name, reason)
                return
            self.listed[cfg.name] = ids
            self._next_ask[cfg.name] = time.monotonic() + MODELS_TTL

        await asyncio.gather(*(one(cfg, p) for cfg, p in due))
        if not self._default_given:
            ids = [i for cfg, _ in self.providers for i in self.listed.get(cfg.name, [])]
            if ids and self.default_model not in ids and not self._exact(self.default_model or ""):
                self.default_model = ids[0]

    def _pattern_owner(self, name: str) -> ProviderConfig | None:
        """The provider a name no one lists by name goes to (the first whose pattern matches)."""
        for cfg in self.configs:
            if any(fnmatchcase(name, pat) for pat in cfg.models if _is_pattern(pat)):
                return cfg
        return None

    def _exact(self, name: str) -> bool:
        """Is ``name`` routed by name (a route, a provider's list, the catalog), not by a pattern?"""
        if not name:
            return False
        if name in self.routes or any(name in cfg.models or name in cfg.model_map for cfg in self.configs):
            return True
        info = self.catalog.get(name)
        return info is not None and info.provider in self.by_name

    def health(self) -> list[dict[str, Any]]:
        """Circuit-breaker state and observed latency of every deployment used so far."""
        return [dep.snapshot() for dep in self.deployments.values()]

    def model_names(self) -> list[str]:
        """Names a client can ask for by name (patterns are routing rules, not models)."""
        names: list[str] = []
        for cfg, _ in self.providers:
            for m in [*cfg.models, *cfg.model_map, *self.listed.get(cfg.name, [])]:
                if m not in names and not _is_pattern(m):
                    names.append(m)
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
                if name not in seen and not _is_pattern(name):
                    add(name, cfg, provider)
        for cfg, provider in self.providers:
            for name in self.listed.get(cfg.name, []):
                if name not in seen and not self._exact(name) and self._pattern_owner(name) is cfg:
                    add(name, cfg, provider)
        for name in [*self.routes, *self.catalog]:
            if name in seen:
                continue
            try:
                route = self.resolve(name)
            except GatewayError:
                continue
            cfg = self.by_name[route.provider.name][0]
            if cfg.name in self.listed and not self._exact(name):
                continue  # matched only by a pattern, and the provider's own list does not have it
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
