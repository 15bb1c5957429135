"""Who may connect, what each may spend: the access policy behind the Gateway's hooks.

Everything here runs once per handshake, per request or per generation end,
never per token: token buckets are checked at admission and debited when a
reply ends (its usage is known then).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from ..config import ConfigError, Settings
from ..protocol.errors import GatewayError, set_redactor
from ..protocol.frames import Chat
from ..runtime.routing import Route
from ..simulate.reply import estimate_tokens
from .keys import KeyRecord, SQLiteKeyStore, bucket_of, hash_key, open_key_store
from .ledger import Ledger, LocalLedger, RedisLedger
from .limits import Principal, Reservation, TokenBucket
from .redact import Redactor, install_log_filter

if TYPE_CHECKING:
    from ..runtime.summary import RunSummary

__all__ = ["PRINCIPAL", "WS_PATHS", "AccessPolicy", "extract_key", "is_loopback"]

log = logging.getLogger("tokenwire.auth")

PRINCIPAL = "tokenwire.principal"  #: request key the middleware stores the principal under
WS_PATHS = frozenset({"/ws/chat", "/v1/ws/chat"})
USAGE_RETRY_FIRST = 0.5  #: seconds before unsaved usage is written again (doubled each failure)
USAGE_RETRY_MAX = 5.0  #: the longest wait between two attempts

_NEED_KEY = (
    "this gateway needs an API key: send the header 'Authorization: Bearer tw_…' (or 'x-api-key: tw_…'), "
    "or (browsers) the WebSocket subprotocols 'tokenwire.v1, bearer.tw_…', or ?key=tw_…"
)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str | None:
    """The name in a Host header, without its port (None if it is not a well-formed host)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else None
    name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip(".") or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def extract_key(request: web.BaseRequest) -> str | None:
    """The key a client presented: Authorization header, ``x-api-key`` (Anthropic's SDK), then
    subprotocol, then ``?key=``."""
    auth = request.headers.get("Authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise GatewayError("unauthorized", "the Authorization header must be 'Bearer <key>'")
        return value.strip()
    key = request.headers.get("x-api-key", "").strip()
    if key:
        return key
    for header in request.headers.getall("Sec-WebSocket-Protocol", ()):
        for proto in header.split(","):
            proto = proto.strip()
            if proto.startswith("bearer."):
                return proto[7:]
    key = request.query.get("key")
    return key or None


class AccessPolicy:
    """Keys, Origin checks and per-key (or per-IP) limits for one gateway process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = open_key_store(settings.db_path)
        self.keys_exist = self._has_keys_now()
        self._keys_checked = time.monotonic()
        if not self.keys_exist and not settings.insecure_open and not is_loopback(settings.host):
            self._close_sync()
            raise ConfigError(
                f"refusing to serve on {settings.host} with no API keys (anyone could spend the provider keys); "
                "create one with `tokenwire keys create --name NAME`, bind to 127.0.0.1, "
                "or pass --insecure-open (TOKENWIRE_INSECURE_OPEN=1) if something in front authenticates"
            )
        self.origins = {o.strip().rstrip("/").lower() for o in settings.allowed_origins.split(",") if o.strip()}
        self.hosts = {h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip()}
        self.principals: dict[str, Principal] = {}
        #: budget reservations: in this process, or in Redis for every instance (auth.ledger)
        self.ledger: Ledger = LocalLedger()
        if settings.redis_url:
            from ..store.redis import RedisLink

            self.ledger = RedisLedger(RedisLink(settings.redis_url, settings.redis_timeout), settings.redis_prefix)
        self._tasks: set[asyncio.Task[Any]] = set()
        #: usage not yet written to the key store, per (key id, model, minute): [requests, prompt, completion, cost]
        self.unsaved_usage: dict[tuple[str, str, int], list[Any]] = {}
        self.usage_error: str | None = None  #: the last error writing usage, while some is unsaved
        self._usage_task: asyncio.Task[None] | None = None
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        self.redactor = Redactor(p.api_key for p in settings.providers if p.api_key)
        set_redactor(self.redactor.secrets_only)
        install_log_filter(self.redactor)

    def _has_keys_now(self) -> bool:
        if isinstance(self.store, SQLiteKeyStore):
            return bool(self.store.call(self.store._has_keys))
        return False

    def _close_sync(self) -> None:
        if isinstance(self.store, SQLiteKeyStore):
            self.store.close_sync()

    # -- who is asking --------------------------------------------------------
    def check_host(self, request: web.BaseRequest) -> None:
        """Refuse a request whose Host names a server we are not (DNS rebinding).

        A page on ``evil.example`` whose name is re-resolved to 127.0.0.1 reaches a loopback
        gateway with ``Host: evil.example``: in open mode nothing else would stop it. Loopback
        names, IP literals (a rebinding needs a name) and ``allowed_hosts`` pass, as in
        Jupyter and Vite. With keys the check applies only once ``allowed_hosts`` is set (a
        rebound page has no key).
        """
        hosts = self.hosts
        if "*" in hosts or (self.keys_exist and not hosts):
            return
        raw = request.headers.get("Host")
        if raw is None:
            return  # HTTP/1.0 without Host: no name to have been rebound
        name = _host_name(raw)
        if name is not None and (
            name in ("localhost", self.settings.host.lower())
            or name.endswith(".localhost")
            or name in hosts
            or _is_ip(name)
        ):
            return
        raise GatewayError(
            "forbidden",
            f"Host {raw[:200]!r} is not a name of this gateway (DNS rebinding?); "
            "add it to allowed_hosts (TOKENWIRE_ALLOWED_HOSTS) if it is",
        )

    def check_origin(self, request: web.BaseRequest) -> None:
        """Refuse browser requests from pages not on the allowlist (cross-site WebSocket hijacking).

        In open mode (no keys, and so bound to loopback) any loopback page may connect, as to
        Ollama: e.g. a chat page served by ``python3 -m http.server`` on another port. A
        rebound name cannot pose as loopback: :meth:`check_host` refuses it first.
        """
        origin = request.headers.get("Origin")
        if origin is None or "*" in self.origins:
            return
        normal = origin.strip().rstrip("/").lower()
        if normal in self.origins:
            return
        parts = urlsplit(normal)
        if not self.keys_exist and parts.scheme in ("http", "https") and is_loopback(parts.hostname or ""):
            return
        if not self.origins:
            if parts.scheme in ("http", "https") and parts.netloc and parts.netloc == (request.host or "").lower():
                return
        raise GatewayError(
            "forbidden",
            f"Origin {origin[:200]!r} is not allowed to connect; add it to allowed_origins (TOKENWIRE_ALLOWED_ORIGINS)",
        )

    async def _lookup(self, key: str) -> KeyRecord | None:
        h = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(h)
        if hit is not None and now - hit[0] < self.settings.key_cache_ttl:
            record = hit[1]
        else:
            record = await self.store.find(h)
            if len(self._cache) > 10_000:
                self._cache.clear()  # unknown keys sprayed at us must not grow memory
            self._cache[h] = (now, record)
        if record is None or not record.matches(key):
            return None
        return record

    async def _refresh_keys_exist(self) -> None:
        now = time.monotonic()
        if not self.keys_exist and now - self._keys_checked >= self.settings.key_cache_ttl:
            self._keys_checked = now
            self.keys_exist = await self.store.has_keys()

    async def authenticate(self, request: web.BaseRequest) -> Principal:
        """The principal behind a request, or GatewayError ``unauthorized``/``forbidden``."""
        self.check_origin(request)
        key = extract_key(request)
        await self._refresh_keys_exist()
        if not self.keys_exist:
            return self._ip_principal(request.remote or "?")
        if key is None:
            raise GatewayError("unauthorized", _NEED_KEY)
        record = await self._lookup(key)
        if record is None:
            raise GatewayError("unauthorized", "the API key is not valid")
        if record.revoked is not None:
            raise GatewayError("unauthorized", f"the API key {record.shown}… has been revoked")
        p = self.principals.get("k:" + record.id)
        if p is None:
            p = Principal(label=f"key {record.name!r} ({record.shown}…)", record=record, spent=record.cost_usd)
            self.principals["k:" + record.id] = p
        else:
            p.record = record
            p.spent = max(p.spent, record.cost_usd)
        p.checked = time.monotonic()
        return p

    def changed(self, record: KeyRecord) -> None:
        """A key was revoked or edited through this process (``/admin``): it takes effect now,
        not after ``key_cache_ttl``; its live rate buckets start again from the new limits."""
        self._cache.pop(record.hash, None)
        p = self.principals.get("k:" + record.id)
        if p is not None:
            if p.record is None or p.record.rpm != record.rpm:
                p.rpm = None
            if p.record is None or p.record.tpm != record.tpm:
                p.tpm = None
            p.record = record
            p.checked = time.monotonic()
        if record.revoked is None:
            self.keys_exist = True

    def _ip_principal(self, ip: str) -> Principal:
        p = self.principals.get("ip:" + ip)
        if p is None:
            if len(self.principals) > 50_000:
                self._prune()
            p = Principal(label=f"ip {ip}", ip=ip)
            self.principals["ip:" + ip] = p
        return p

    def _prune(self) -> None:
        for name, p in list(self.principals.items()):
            if p.record is None and p.sockets == 0 and not p.in_flight:
                del self.principals[name]

    # -- hooks ----------------------------------------------------------------
    async def authenticate_ws(self, request: web.Request) -> Principal:
        """The principal of a WebSocket handshake (already checked by the server's middleware)."""
        p = request.get(PRINCIPAL)
        if isinstance(p, Principal):
            return p
        return await self.authenticate(request)

    async def authenticate_http(self, request: web.Request) -> Principal:
        return await self.authenticate(request)

    async def admit(self, p: Any, chat: Chat, route: Route, sent: list[dict[str, Any]] | None = None) -> None:
        """Refuse a generation over a limit (before it starts); charge it to its principal.

        ``sent``: the messages that go upstream (with a stored conversation's history), if known.
        """
        if not isinstance(p, Principal):
            return
        now = time.monotonic()
        record = p.record
        if record is not None:
            if now - p.checked >= self.settings.key_cache_ttl:
                fresh = await self.store.get(record.id)
                p.checked = now
                if fresh is not None:
                    p.record = record = fresh
                    p.spent = max(p.spent, fresh.cost_usd)
            if record.revoked is not None:
                raise GatewayError(
                    "unauthorized", f"the API key {record.shown}… has been revoked", extra={"id": chat.id}
                )
            if record.models and not any(fnmatchcase(route.model, pat) for pat in record.models):
                raise GatewayError(
                    "forbidden",
                    f"{p.label} may not use model {route.model[:80]!r} (allowed: {', '.join(record.models)})",
                    extra={"id": chat.id},
                )
            rpm, tpm = record.rpm, record.tpm
        else:
            rpm, tpm = self.settings.ip_rpm, self.settings.ip_tpm
        limit = self.settings.max_inflight_per_key if record is not None else self.settings.ip_max_inflight
        if limit and len(p.in_flight) >= limit:
            setting = "max_inflight_per_key" if record is not None else "ip_max_inflight"
            raise GatewayError(
                "rate_limited",
                f"{p.label} already has {limit} replies in flight ({setting})",
                retryable=True,
                extra={"id": chat.id, "retry_after": 1, "limit": "inflight"},
            )
        if rpm:
            if p.rpm is None:
                p.rpm = TokenBucket.per_minute(rpm, now)
            wait = p.rpm.take(now)
            if wait > 0:
                raise _limited(chat, f"{p.label} reached its {rpm} requests per minute", wait)
        await self._reserve(p, chat, route, tpm, now, sent)
        chat.owner = p

    async def _reserve(
        self, p: Principal, chat: Chat, route: Route, tpm: int | None, now: float, sent: list[dict[str, Any]] | None
    ) -> None:
        """Hold the reply's worst case against the key's budget and tokens per minute (see auth.ledger).

        ``max_tokens`` is cut to what is left, so that a reply can never spend past either; the
        reply's end then settles with the real figures. The prompt counted here is ``sent``, what
        goes upstream: a stored conversation's history with it (counting only the request's own
        messages let a long conversation overrun a budget or TPM by its whole history each turn).
        """
        record = p.record
        budget = record.budget_usd if record is not None else None
        if budget is None and not tpm:
            p.in_flight[id(chat)] = Reservation()
            return
        params = chat.params
        asked = params.get("max_tokens") or params.get("max_completion_tokens")
        # a reply that names no max_tokens holds reserve_tokens of the budget, not all of it
        cap = asked or min(self.settings.max_output_tokens, self.settings.reserve_tokens)
        if sent is not None:
            prompt = estimate_tokens(sent)
        else:
            prompt = estimate_tokens(chat.messages or [{"content": chat.content or ""}]) + (
                estimate_tokens([{"content": chat.system}]) if chat.system else 0
            )
        res = Reservation()
        cut_by: str | None = None
        if budget is not None and record is not None:
            info = route.info
            if info is None or info.input_per_mtok is None or info.output_per_mtok is None:
                raise GatewayError(
                    "forbidden",
                    f"{p.label} has a budget, and {route.model[:80]!r} has no price in this gateway's catalog, so "
                    f"its cost could not be counted; set [models.{route.model[:80]}] input_per_mtok and "
                    "output_per_mtok, or use a priced model",
                    extra={"id": chat.id, "limit": "budget"},
                )
            n, res.usd = await self.ledger.reserve(
                record.id, budget, p.spent, prompt * info.input_per_mtok / 1e6, info.output_per_mtok / 1e6, cap
            )
            if n < 1:
                raise GatewayError(
                    "budget_exceeded",
                    f"{p.label} has spent ${p.spent:.6f} of its ${budget:g} budget"
                    + (" (the rest is held by replies in flight)" if p.in_flight else ""),
                    extra={"id": chat.id, "limit": "budget"},
                )
            if n < cap or not asked:
                cap, cut_by = n, "budget"
        if tpm:
            if p.tpm is None:
                p.tpm = TokenBucket.per_minute(tpm, now)
            left = int(p.tpm.available(now)) - prompt
            if left < 1:
                if record is not None and res.usd:
                    await self.ledger.settle(record.id, res.usd, 0.0)
                wait = (1 - left) / p.tpm.rate
                raise _limited(chat, f"{p.label} used its {tpm} tokens per minute", wait, "tpm")
            if left < cap or not asked:
                cap, cut_by = min(cap, left), cut_by or "tpm"
            res.tokens = prompt + cap
            p.tpm.debit(now, res.tokens)
        if cut_by is not None:
            params.pop("max_completion_tokens", None)
            params["max_tokens"] = cap
            chat.cut_by = cut_by
        p.in_flight[id(chat)] = res

    def release(self, p: Any, chat: Chat) -> None:
        """A chat admitted but never started (e.g. its conversation was busy): give back what it held."""
        if not isinstance(p, Principal):
            return
        res = p.in_flight.pop(id(chat), None)
        if res is None:
            return
        if p.tpm is not None and res.tokens:
            p.tpm.debit(time.monotonic(), -res.tokens)
        if res.usd and p.record is not None:
            task = asyncio.get_running_loop().create_task(self.ledger.settle(p.record.id, res.usd, 0.0))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def on_finish(self, summary: RunSummary) -> None:
        """Settle a finished generation: its real tokens and cost replace what was reserved."""
        p = summary.owner
        if not isinstance(p, Principal):
            return
        res = p.in_flight.pop(id(summary.chat), None) or Reservation()
        usage = summary.usage
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        cost = summary.cost_usd or 0.0  # the reply's ``end.cost_usd``: this gateway's catalog prices
        if not summary.billable or not (prompt or completion):
            prompt = completion = 0  # refused upstream before anything was generated: not billed
            cost = 0.0
        if p.tpm is not None:
            p.tpm.debit(time.monotonic(), prompt + completion - res.tokens)
        p.spent += cost
        record = p.record
        if record is not None:
            if record.budget_usd is not None:
                try:
                    await self.ledger.settle(record.id, res.usd, cost)
                except GatewayError:
                    log.warning("could not settle the budget of %s (Redis down?)", p.label)
            self._record_usage(record.id, prompt, completion, cost, summary.model)

    def _record_usage(self, key_id: str, prompt: int, completion: int, cost: float, model: str = "") -> None:
        """Add a reply's usage to what is waiting to be written, and write it (retried until it lands).

        Pending usage is kept per key, model and minute, so the usage table (spend per key and
        per model over a window, ``/admin``) gets the minute the reply ended in, even when the
        write lands later.
        """
        pending = self.unsaved_usage.setdefault((key_id, model, bucket_of(time.time())), [0, 0, 0, 0.0])
        pending[0] += 1
        pending[1] += prompt
        pending[2] += completion
        pending[3] += cost
        if self._usage_task is None or self._usage_task.done():
            self._usage_task = asyncio.get_running_loop().create_task(self._write_usage(), name="tokenwire-usage")

    async def _write_usage(self) -> None:
        """Write every key's unsaved usage; on a store error keep it (in memory) and retry, backing off.

        Accounting is never dropped: a full disk or a locked file delays it, and ``/healthz`` says
        so (``usage_unsaved``) until it has landed.
        """
        delay = USAGE_RETRY_FIRST
        while self.unsaved_usage:
            (key_id, model, bucket), pending = next(iter(self.unsaved_usage.items()))
            requests, prompt, completion, cost = pending
            try:
                await self.store.add_usage(
                    key_id, prompt, completion, cost, requests=requests, model=model, bucket=bucket
                )
            except Exception as exc:
                if self.usage_error is None:
                    log.error("could not write the usage of key %s (kept in memory, retried): %s", key_id, exc)
                self.usage_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(delay)
                delay = min(delay * 2, USAGE_RETRY_MAX)
                continue
            # what came in meanwhile stays pending; what was written is taken off
            pending[0] -= requests
            pending[1] -= prompt
            pending[2] -= completion
            pending[3] -= cost
            if pending[0] <= 0:
                self.unsaved_usage.pop((key_id, model, bucket), None)
            if self.usage_error is not None and not self.unsaved_usage:
                log.warning("the unsaved usage has been written")
            self.usage_error = None
            delay = USAGE_RETRY_FIRST

    def frame_gate(self) -> Callable[[Any], GatewayError | None] | None:
        """A per-socket check run on each client frame: refuses frames over ``max_frames_per_second``."""
        n = self.settings.max_frames_per_second
        if n <= 0:
            return None
        bucket = TokenBucket(n, n, time.monotonic())

        def gate(data: Any) -> GatewayError | None:
            wait = bucket.take(time.monotonic())
            if wait <= 0:
                return None
            gen_id = None
            if isinstance(data, str) and len(data) < 65536:
                try:
                    obj = orjson.loads(data)
                    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                        gen_id = obj["id"][:128]
                except orjson.JSONDecodeError:
                    pass
            return GatewayError(
                "rate_limited",
                f"more than {n} frames per second on this socket; this frame was dropped",
                retryable=True,
                extra={"id": gen_id, "retry_after": round(wait, 3)},
            )

        return gate

    def socket_opened(self, p: Principal) -> None:
        """Count a socket against its principal's limit; raise ``rate_limited`` if it is over."""
        limit = self.settings.max_sockets_per_key if p.record is not None else self.settings.ip_max_sockets
        if limit and p.sockets >= limit:
            raise GatewayError(
                "rate_limited",
                f"{p.label} already has {limit} open sockets (max_sockets_per_key / ip_max_sockets)",
                retryable=True,
                extra={"retry_after": 1},
            )
        p.sockets += 1

    def socket_closed(self, p: Principal) -> None:
        p.sockets -= 1

    async def aclose(self) -> None:
        task = self._usage_task
        if task is not None and not task.done():
            try:  # a last chance for unsaved usage: one attempt each, bounded
                await asyncio.wait_for(asyncio.shield(task), 2.0)
            except (TimeoutError, Exception):
                task.cancel()
            if self.unsaved_usage:
                log.error("usage of %d key(s) could not be written: %s", len(self.unsaved_usage), self.unsaved_usage)
        await self.store.aclose()
        await self.ledger.aclose()


def unpriced_models(models: list[dict[str, Any]]) -> list[str]:
    """The served models (``Router.models()`` entries) with no price: a budgeted key is refused them."""
    return [m["id"] for m in models if "pricing" not in m and not str(m["id"]).endswith("*")]


def warn_unpriced(gw: Any) -> None:
    """One start-up log line when keys with budgets exist and some served models have no price."""
    access = gw.access
    if not isinstance(access, AccessPolicy) or not isinstance(access.store, SQLiteKeyStore):
        return
    try:
        budgeted = access.store.call(access.store._budgeted)
    except Exception:
        return
    names = unpriced_models(gw.router.models()) if budgeted else []
    if names:
        log.warning(
            "%d key(s) have a budget, and these served models have no price, so those keys are refused them: %s "
            "(set [models.NAME] input_per_mtok and output_per_mtok)",
            budgeted,
            ", ".join(names[:20]),
        )


def _limited(chat: Chat, why: str, wait: float, limit: str = "rpm") -> GatewayError:
    return GatewayError(
        "rate_limited",
        f"{why}; retry in {wait:.1f} s",
        retryable=True,
        extra={"id": chat.id, "retry_after": round(wait, 3), "limit": limit},
    )
