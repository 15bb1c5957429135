"""Settings: defaults, then ``tokenwire.toml``, then environment, then command line.

With nothing configured the gateway serves the embedded simulated models. A
provider comes from one environment variable (``HOLYSHEEP_API_KEY``,
``DEEPSEEK_API_KEY``, ``OPENAI_API_KEY`` [+ ``OPENAI_BASE_URL``], …) or from a
``[providers.NAME]`` table. Every mistake raises :class:`ConfigError` with one
line that says what to fix.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["PRESETS", "ConfigError", "Preset", "ProviderConfig", "Settings", "StartupError", "load_settings"]


class ConfigError(Exception):
    """A configuration mistake; the message is one line saying what to fix."""


class StartupError(ConfigError):
    """Something outside the settings stops start-up (port taken, Redis unreachable…); one line, what to do."""


@dataclass(frozen=True, slots=True)
class Preset:
    kind: str  #: wire format: "openai", "anthropic", "gemini", "simulated"
    base_url: str
    key_env: str | None  #: environment variable holding the key
    base_url_env: str | None = None
    needs_key: bool = True
    #: model names routed here when several providers are configured ("*" = any)
    patterns: tuple[str, ...] = ("*",)


PRESETS: dict[str, Preset] = {
    "holysheep": Preset("openai", "https://api.holysheep.ai/v1", "HOLYSHEEP_API_KEY"),
    "openai": Preset(
        "openai",
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        patterns=("gpt-*", "o1*", "o3*", "o4*", "chatgpt-*", "text-*"),
    ),
    "deepseek": Preset("openai", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", patterns=("deepseek-*",)),
    "openrouter": Preset("openai", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", patterns=("*/*",)),
    "anthropic": Preset(
        "anthropic",
        "https://api.anthropic.com/v1",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        patterns=("claude-*",),
    ),
    "gemini": Preset(
        "gemini",
        "https://generativelanguage.googleapis.com/v1beta",
        "GEMINI_API_KEY",
        patterns=("gemini-*",),
    ),
    "ollama": Preset("openai", "http://127.0.0.1:11434/v1", None, "OLLAMA_BASE_URL", needs_key=False),
    "vllm": Preset("openai", "http://127.0.0.1:8001/v1", "VLLM_API_KEY", "VLLM_BASE_URL", needs_key=False),
    "openai-compatible": Preset("openai", "", None, needs_key=False),
    "simulated": Preset("simulated", "", None, needs_key=False),
}

#: Presets picked up from the environment alone, in routing-priority order.
ENV_PRESETS = ("openai", "deepseek", "anthropic", "gemini", "openrouter", "holysheep")

KINDS = ("openai", "anthropic", "gemini", "simulated")


@dataclass(slots=True)
class ProviderConfig:
    name: str
    kind: str
    base_url: str
    api_key: str | None = None
    #: model names this provider serves; ``["*"]`` = any name, passed on unchanged
    models: list[str] = field(default_factory=lambda: ["*"])
    #: client-facing name -> the provider's own model id
    model_map: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    from_env: bool = False

    def __repr__(self) -> str:  # never print a key
        return f"ProviderConfig(name={self.name!r}, kind={self.kind!r}, base_url={self.base_url!r})"


@dataclass(slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    providers: list[ProviderConfig] = field(default_factory=list)
    default_model: str | None = None
    #: SQLite file for conversations; ":memory:" keeps them in the process only
    db_path: str = ""
    redis_url: str | None = None
    #: key prefix in Redis, so several deployments (or tests) can share one server
    redis_prefix: str = "tw"
    #: seconds any one Redis call may take before it counts as a fault
    redis_timeout: float = 2.0
    #: how often resumable streams' new events are shipped to Redis, in one pipeline
    redis_flush_ms: float = 10.0
    max_frame_bytes: int = 1024 * 1024
    max_messages: int = 1000
    #: a stored conversation sends at most its newest turns that fit in these (and in the model's
    #: context window); the oldest go first, never the system prompt (0: no cap)
    max_history_messages: int = 200
    max_history_bytes: int = 1_000_000
    #: what one stored conversation may hold: past either, its oldest turns are dropped from storage
    #: at the next append (the newest turn is always kept; 0: no cap)
    max_conversation_messages: int = 1000
    max_conversation_bytes: int = 4_000_000
    #: stored conversations per API key (per open-mode gateway without keys); a new one past it is
    #: refused with ``too_many_conversations`` (delete some, or wait for conversation_ttl; 0: no cap)
    max_conversations_per_key: int = 1000
    #: seconds a stored conversation is kept after its last turn (0: for ever); 30 days
    conversation_ttl: float = 30 * 86400.0
    #: the largest max_tokens a request may ask for; a reply is also cut there if a provider ignores it
    max_output_tokens: int = 1_000_000
    max_generations_per_socket: int = 32
    idle_timeout: float = 120.0
    ws_ping_interval: float = 20.0
    #: seconds an SSE reply waits for its first event before its headers are sent anyway (an upstream
    #: that fails sooner still gets the client a real HTTP status; < 0 = only with the first event)
    sse_headers_after: float = 1.0
    #: seconds of silence after which an SSE reply gets a keep-alive comment (or its dialect's ping)
    sse_keepalive: float = 15.0
    resume_retention: float = 120.0
    #: generations whose detail each process keeps for the admin dashboard (docs/admin.md)
    admin_recent: int = 500
    simulated_speed: float = 1.0
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    drain_timeout: float = 30.0
    log_level: str = "info"
    #: "auto" (uvloop when installed: ~20 % less CPU per paced token), "uvloop" or "asyncio" (docs/benchmarks-load.md)
    event_loop: str = "auto"
    #: "tuned" (start-up heap frozen, full GC passes 10x rarer: fewer ~100 ms pauses with many
    #: sockets) or "default" (CPython's own); server/heap.py
    gc_policy: str = "tuned"
    #: gateway processes sharing the port (SO_REUSEPORT), one per core; > 1 needs redis_url
    workers: int = 1
    # routing: retries, fallbacks, circuit breakers (docs/providers.md)
    first_token_timeout: float = 60.0  #: request sent -> first token (retried/fallen back on expiry)
    max_retries: int = 2  #: per deployment, before the first token, on 429/5xx/connect errors
    retry_backoff: float = 0.25  #: first backoff (s), doubled each retry
    retry_max_wait: float = 5.0  #: a longer Retry-After is not waited for: the next deployment is tried
    circuit_failures: int = 5  #: consecutive failures that open a deployment's circuit
    circuit_cooldown: float = 30.0  #: seconds an open circuit is skipped before one probe
    #: ``[models.NAME]`` catalog overrides, ``[aliases]``, ``[routes.NAME]`` (validated)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: one JSON line per HTTP request / WebSocket on stderr (generations always log one)
    access_log: bool = True
    #: debug only: put prompts and replies into the generation log lines
    log_prompts: bool = False
    # -- access and limits (docs/security.md) --
    #: serve without keys on a non-loopback address (otherwise refused at start-up)
    insecure_open: bool = False
    #: browser Origins allowed to open sockets, comma-separated ("*" = any; "" = same host only)
    allowed_origins: str = ""
    #: host names a request's Host header may name besides loopback names and IP addresses,
    #: comma-separated ("*" = any): what stops DNS rebinding in open mode (docs/security.md)
    allowed_hosts: str = ""
    #: seconds a key lookup is cached (a revoked key is refused within this time)
    key_cache_ttl: float = 1.0
    #: concurrent sockets per key (0 = no limit)
    max_sockets_per_key: int = 256
    #: replies in flight at once per key; 0 = no limit
    max_inflight_per_key: int = 64
    #: output tokens a reply without max_tokens holds of a key's budget or TPM (and may use)
    reserve_tokens: int = 16_384
    #: limits for clients without a key (open mode), per IP address (0 = no limit)
    ip_rpm: int = 0
    ip_tpm: int = 0
    ip_max_sockets: int = 0
    ip_max_inflight: int = 0
    #: frames a client may send per second on one socket (a burst of this many is allowed)
    max_frames_per_second: int = 200
    #: serve /metrics without a key even when keys exist (only where the scraper alone can reach it)
    metrics_open: bool = False
    #: seconds a socket's send buffer may stay full before its generations are cut (0 = never)
    slow_consumer_timeout: float = 30.0
    #: seconds a request head may take from its first byte (or a new connection to its first request): 408
    header_timeout: float = 10.0
    #: seconds a request body may take to arrive whole (a body shorter than its Content-Length): 408
    body_timeout: float = 30.0
    #: seconds an idle keep-alive connection is kept between two requests
    keepalive_timeout: float = 75.0
    #: open connections per client address; the next is answered 429 and closed (0 = no limit)
    max_connections_per_ip: int = 256
    #: loopback clients (127.0.0.1, ::1) are not counted against max_connections_per_ip: behind a
    #: reverse proxy on the same host every client is loopback
    loopback_exempt: bool = True

    def __repr__(self) -> str:
        return f"Settings(host={self.host!r}, port={self.port}, providers={self.providers!r})"


_SERVER_KEYS = {f.name for f in fields(Settings)} - {"providers", "models", "aliases", "routes"}
_PROVIDER_KEYS = {"preset", "kind", "base_url", "api_key", "api_key_env", "models", "model_map", "headers"}


def default_db_path() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "tokenwire" / "tokenwire.db")


def _coerce(name: str, value: Any, where: str) -> Any:
    default = getattr(Settings(), name)
    if name == "redis_url" or name == "default_model":
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where}: {name} must be a string")
        return value or None
    want = type(default)
    try:
        if want is bool:
            return str(value).lower() in ("1", "true", "yes", "on")
        if want is int:
            if isinstance(value, float) or (isinstance(value, str) and "." in value):
                raise ValueError
            return int(value)
        if want is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name} must be a {want.__name__}, got {value!r}") from None


def _provider_from_table(name: str, table: Any, path: str) -> ProviderConfig:
    where = f"{path} [providers.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(table) - _PROVIDER_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(_PROVIDER_KEYS))})")
    preset_name = table.get("preset", name if name in PRESETS else None)
    kind = table.get("kind")
    if preset_name is not None:
        preset = PRESETS.get(preset_name)
        if preset is None:
            raise ConfigError(f"{where}: unknown provider preset {preset_name!r} (known: {', '.join(PRESETS)})")
    else:
        if kind is None:
            raise ConfigError(
                f"{where}: unknown provider {name!r}; set preset = one of {', '.join(PRESETS)}, "
                'or kind = "openai" and base_url'
            )
        preset = PRESETS["openai-compatible"]
    kind = kind or preset.kind
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    base_url = table.get("base_url") or (
        (preset.base_url_env and os.environ.get(preset.base_url_env)) or preset.base_url
    )
    if kind != "simulated" and not base_url:
        raise ConfigError(f"{where}: base_url is missing")
    if kind != "simulated" and not str(base_url).startswith(("http://", "https://")):
        raise ConfigError(f"{where}: base_url must start with http:// or https://")
    key = table.get("api_key")
    if key is not None and (not isinstance(key, str) or not key.strip()):
        raise ConfigError(f"{where}: api_key is empty; put the key in it, or remove the line")
    key_env = table.get("api_key_env") or preset.key_env
    if not key and key_env:
        key = os.environ.get(key_env)
        if key is not None and not key.strip():
            raise ConfigError(f"{where}: {key_env} is set but empty; put the key in it, or unset it")
    if not key and preset.needs_key and kind != "simulated" and "api_key_env" not in table:
        hint = f"set {key_env} or " if key_env else ""
        raise ConfigError(f'{where}: no API key; {hint}add api_key = "…" to the table')
    if not key and "api_key_env" in table:
        raise ConfigError(f"{where}: api_key_env names {key_env}, which is not set")
    models = table.get("models", ["*"])
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"{where}: models must be a list of model names")
    model_map = table.get("model_map", {})
    headers = table.get("headers", {})
    for label, value in (("model_map", model_map), ("headers", headers)):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{where}: {label} must be a table of strings")
    return ProviderConfig(
        name=name,
        kind=kind,
        base_url=str(base_url),
        api_key=key,
        models=models,
        model_map=dict(model_map),
        headers=dict(headers),
    )


def _env_providers(env: dict[str, str]) -> list[ProviderConfig]:
    found: list[ProviderConfig] = []
    for name in ENV_PRESETS:
        preset = PRESETS[name]
        key = env.get(preset.key_env or "")
        if key is not None and not key.strip():
            raise ConfigError(f"{preset.key_env} is set but empty; put the provider's key in it, or unset it")
        env_url = env.get(preset.base_url_env or "") or None
        if not key and not (env_url and preset.kind == "openai"):
            # OPENAI_BASE_URL alone is a local OpenAI-compatible server without a key (llama.cpp, vLLM, Ollama)
            continue
        if env_url and not env_url.startswith(("http://", "https://")):
            raise ConfigError(f"{preset.base_url_env} must start with http:// or https:// (not {env_url[:80]!r})")
        base_url = env_url or preset.base_url
        found.append(
            ProviderConfig(
                name=name,
                kind=preset.kind,
                base_url=base_url,
                api_key=key or None,
                models=list(preset.patterns),
                from_env=True,
            )
        )
    if len(found) == 1:
        # One provider from the environment: every model name goes to it unchanged.
        found[0].models = ["*"]
    return found


def load_settings(
    config_path: str | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Build settings from file, environment and command-line overrides."""
    env = dict(os.environ if env is None else env)
    settings = Settings()
    path = config_path or env.get("TOKENWIRE_CONFIG")
    if path is None and Path("tokenwire.toml").is_file():
        path = "tokenwire.toml"
    file_providers: list[ProviderConfig] = []
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        for section, table in data.items():
            if section == "providers":
                if not isinstance(table, dict):
                    raise ConfigError(f"{path}: [providers] must hold [providers.NAME] tables")
                for name, ptable in table.items():
                    file_providers.append(_provider_from_table(name, ptable, path))
            elif section in ("models", "aliases", "routes"):
                _routing_table(settings, section, table, path)
            elif section in ("server", "limits", "store", "stream", "upstream", "routing"):
                if not isinstance(table, dict):
                    raise ConfigError(f"{path}: [{section}] must be a table")
                for key, value in table.items():
                    if key not in _SERVER_KEYS:
                        raise ConfigError(
                            f"{path} [{section}]: unknown setting {key!r} (known: {', '.join(sorted(_SERVER_KEYS))})"
                        )
                    setattr(settings, key, _coerce(key, value, f"{path} [{section}]"))
            else:
                raise ConfigError(
                    f"{path}: unknown section [{section}] (known: server, limits, store, stream, upstream, "
                    "routing, providers, models, aliases, routes)"
                )
    for key in _SERVER_KEYS:
        value = env.get(f"TOKENWIRE_{key.upper()}")
        if value is not None and value != "":
            setattr(settings, key, _coerce(key, value, f"TOKENWIRE_{key.upper()}"))
    if env.get("TOKENWIRE_DB"):
        settings.db_path = env["TOKENWIRE_DB"]
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(settings, key, value)
    names = {p.name for p in file_providers}
    env_providers = [p for p in _env_providers(env) if p.name not in names]
    if file_providers and env_providers:
        for p in env_providers:
            p.models = list(PRESETS[p.name].patterns)
    settings.providers = file_providers + env_providers
    if not settings.db_path:
        settings.db_path = default_db_path()
    if not 0 <= settings.port < 65536:
        raise ConfigError(f"port {settings.port} is out of range (0-65535; 0 = any free port)")
    if settings.max_frame_bytes < 1024:
        raise ConfigError("max_frame_bytes must be at least 1024")
    if settings.workers < 1:
        raise ConfigError(f"workers must be at least 1 (not {settings.workers})")
    if settings.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level must be debug, info, warning or error (not {settings.log_level!r})")
    if settings.event_loop not in ("auto", "uvloop", "asyncio"):
        raise ConfigError(f"event_loop must be auto, uvloop or asyncio (not {settings.event_loop!r})")
    if settings.gc_policy not in ("tuned", "default"):
        raise ConfigError(f"gc_policy must be tuned or default (not {settings.gc_policy!r})")
    _check_routes(settings, path or "config")
    return settings


_MODEL_KEYS = {
    "provider": str,
    "upstream_model": str,
    "owned_by": str,
    "context_window": int,
    "input_per_mtok": float,
    "output_per_mtok": float,
    "cached_input_per_mtok": float,
    "cache_write_per_mtok": float,
}
_ROUTE_KEYS = {"deployments", "strategy", "weights", "fallbacks"}
STRATEGIES = ("ordered", "latency", "weighted")


def _routing_table(settings: Settings, section: str, table: Any, path: str) -> None:
    """``[models.NAME]``, ``[aliases]`` and ``[routes.NAME]``: checked here, used by the router."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{section}] must be a table")
    if section == "aliases":
        for alias, target in table.items():
            if not isinstance(target, str) or not target:
                raise ConfigError(f"{path} [aliases]: {alias} must name a model (a string)")
            settings.aliases[alias] = target
        return
    for name, entry in table.items():
        where = f"{path} [{section}.{name}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        if section == "models":
            out: dict[str, Any] = {}
            for key, value in entry.items():
                want = _MODEL_KEYS.get(key)
                if want is None:
                    raise ConfigError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(_MODEL_KEYS))})")
                ok = isinstance(value, str) if want is str else isinstance(value, int | float) and value >= 0
                if not ok or isinstance(value, bool) or (want is int and isinstance(value, float)):
                    raise ConfigError(f"{where}: {key} must be a {'string' if want is str else 'number >= 0'}")
                out[key] = float(value) if want is float else value
            settings.models[name] = out
            continue
        unknown = set(entry) - _ROUTE_KEYS
        if unknown:
            allowed = ", ".join(sorted(_ROUTE_KEYS))
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: {allowed})")
        for key in ("deployments", "fallbacks"):
            value = entry.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{where}: {key} must be a list of names")
        strategy = entry.get("strategy", "ordered")
        if strategy not in STRATEGIES:
            raise ConfigError(f"{where}: strategy must be one of {', '.join(STRATEGIES)}")
        weights = entry.get("weights")
        if weights is not None and (
            not isinstance(weights, list)
            or len(weights) != len(entry.get("deployments", []))
            or not all(isinstance(w, int | float) and not isinstance(w, bool) and w >= 0 for w in weights)
        ):
            raise ConfigError(f"{where}: weights must be one number >= 0 per deployment")
        settings.routes[name] = dict(entry)


def _check_routes(settings: Settings, path: str) -> None:
    """Deployments must name configured providers (``provider`` or ``provider:upstream-id``)."""
    names = {p.name for p in settings.providers} or {"simulated"}
    for model, route in settings.routes.items():
        for dep in route.get("deployments", []):
            provider = dep.split(":", 1)[0]
            if provider not in names:
                raise ConfigError(
                    f"{path} [routes.{model}]: deployment {dep!r} names no configured provider "
                    f"(configured: {', '.join(sorted(names))})"
                )
