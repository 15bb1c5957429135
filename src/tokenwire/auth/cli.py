"""``tokenwire keys create|list|edit|revoke`` and ``tokenwire usage``: manage gateway API keys.

Each works on the gateway's SQLite file, or, with ``--gateway URL --admin-key K`` (or
``TOKENWIRE_GATEWAY`` and ``TOKENWIRE_ADMIN_KEY``), through a running gateway's admin API
(docs/admin.md): then a revoke or an edit takes effect at once, not after ``key_cache_ttl``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson

from ..config import load_settings
from .keys import KeyRecord, KeyStore, new_record, open_key_store
from .usage import parse_window, plan, summarize

__all__: list[str] = []


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (default ./tokenwire.toml if present)")
    p.add_argument("--db", help="the gateway's SQLite file (default: as `tokenwire serve` uses)")
    p.add_argument(
        "--gateway",
        default=os.environ.get("TOKENWIRE_GATEWAY"),
        help="a running gateway's URL (env TOKENWIRE_GATEWAY): use its admin API instead of the SQLite file",
    )
    p.add_argument(
        "--admin-key",
        default=os.environ.get("TOKENWIRE_ADMIN_KEY"),
        help="an admin key of that gateway (env TOKENWIRE_ADMIN_KEY; `keys create --admin` makes one)",
    )


def _limit_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("--rpm", type=int, help="requests per minute")
    c.add_argument("--tpm", type=int, help="tokens per minute (prompt + completion)")
    c.add_argument("--budget-usd", type=float, help="total spend in USD, from the price table")
    c.add_argument("--models", help="comma-separated model names or patterns the key may use (default any)")


def _keys_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    c = sub.add_parser("create", help="create a key (shown once)")
    c.add_argument("--name", required=True, help="who or what the key is for")
    _limit_args(c)
    c.add_argument("--admin", action="store_true", help="an admin key: may use /admin and the admin API")
    c.add_argument("--json", action="store_true", help="print JSON")
    _store_args(c)
    e = sub.add_parser("edit", help="change a key's limits, budget or models (0 or '' clears one)")
    e.add_argument("ref", help="key id (k_…)")
    _limit_args(e)
    e.add_argument("--json", action="store_true", help="print JSON")
    _store_args(e)
    ls = sub.add_parser("list", help="list keys (never the keys themselves)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    _store_args(ls)
    r = sub.add_parser("revoke", help="revoke a key by id, name or its shown prefix")
    r.add_argument("ref", help="key id (k_…), name, or the first characters of the key (tw_…)")
    _store_args(r)


def _open(args: argparse.Namespace) -> KeyStore:
    settings = load_settings(getattr(args, "config", None), overrides={"db_path": getattr(args, "db", None)})
    if settings.db_path == ":memory:":
        print("tokenwire: keys need a database file; set --db or TOKENWIRE_DB", file=sys.stderr)
        raise SystemExit(2)
    return open_key_store(settings.db_path)


def _note_unpriced(args: argparse.Namespace) -> None:
    """One line on stderr naming the served models a budgeted key will be refused (no price)."""
    from ..runtime.routing import Router
    from ..upstream.http import SharedSession
    from .policy import unpriced_models

    try:
        settings = load_settings(getattr(args, "config", None), overrides={"db_path": getattr(args, "db", None)})
        names = unpriced_models(Router(settings, SharedSession(settings.connect_timeout)).models())
    except Exception:
        return
    if names:
        print(
            f"note: these served models have no price, so this budgeted key is refused them: {', '.join(names[:20])}",
            file=sys.stderr,
        )


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        print(f"tokenwire: --{name} must be positive", file=sys.stderr)
        raise SystemExit(2)


def _fmt_limit(v: Any, unit: str = "") -> str:
    return "-" if v is None else f"{unit}{v:g}" if isinstance(v, float) else f"{unit}{v}"


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


class _Refused(Exception):
    """The gateway answered an admin API call with an error (its message is the text)."""


def _api(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """One call of a running gateway's admin API (``--gateway``, ``--admin-key``): its JSON answer."""
    if not args.admin_key:
        print("tokenwire: --gateway needs --admin-key (or TOKENWIRE_ADMIN_KEY): an admin key", file=sys.stderr)
        raise SystemExit(2)
    url = args.gateway.rstrip("/") + path
    data = orjson.dumps(body) if body is not None else None
    headers = {"Authorization": f"Bearer {args.admin_key}", "Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = orjson.loads(exc.read())["error"]["message"]
        except Exception:
            message = exc.reason
        raise _Refused(f"the gateway refused {method} {path} ({exc.code}): {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Refused(f"cannot reach the gateway at {args.gateway} ({reason})") from None


def _record_of(obj: dict[str, Any]) -> KeyRecord:
    """A key as the admin API lists it, as a record (for the same tables as the local listing)."""
    shown = str(obj.get("key") or "").rstrip("…")
    fields = {k: obj.get(k) for k in KeyRecord.__dataclass_fields__ if k not in ("hash", "shown")}
    return KeyRecord(hash="", shown=shown, **{k: v for k, v in fields.items() if v is not None})


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    """The limits ``keys edit`` was given (0 or an empty --models clears one)."""
    out: dict[str, Any] = {}
    for name, value in (("rpm", args.rpm), ("tpm", args.tpm), ("budget_usd", args.budget_usd)):
        if value is not None:
            if value < 0:
                print(f"tokenwire: --{name.replace('_', '-')} must be positive (0 clears it)", file=sys.stderr)
                raise SystemExit(2)
            out[name] = value or None
    if args.models is not None:
        out["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if not out:
        print("tokenwire: keys edit needs at least one of --rpm, --tpm, --budget-usd, --models", file=sys.stderr)
        raise SystemExit(2)
    return out


def _print_created(args: argparse.Namespace, record: KeyRecord, key: str, public: dict[str, Any]) -> None:
    if args.json:
        print(orjson.dumps({**public, "key": key}).decode())
    else:
        print(key)
        kind = "admin key" if record.admin else "key"
        print(
            f"created {kind} {record.id} ({record.name}); this is the only time it is shown — store it now",
            file=sys.stderr,
        )


def _print_list(args: argparse.Namespace, records: list[KeyRecord]) -> None:
    if args.json:
        print(orjson.dumps([r.public() for r in records]).decode())
        return
    if not records:
        print("no keys (the gateway runs in open mode on loopback only)")
        return
    rows = [["ID", "NAME", "KEY", "CREATED", "STATUS", "RPM", "TPM", "BUDGET", "MODELS"]]
    for r in records:
        rows.append(
            [
                r.id,
                r.name,
                r.shown + "…",
                _when(r.created),
                ("revoked" if r.revoked else "active") + (" admin" if r.admin else ""),
                _fmt_limit(r.rpm),
                _fmt_limit(r.tpm),
                _fmt_limit(r.budget_usd, "$"),
                ",".join(r.models) or "*",
            ]
        )
    print(_table(rows))


def _remote_keys(args: argparse.Namespace) -> int:
    """``tokenwire keys`` through a running gateway's admin API (so its caches change at once)."""
    try:
        if args.keys_command == "create":
            body: dict[str, Any] = {"name": args.name, "admin": args.admin}
            for name in ("rpm", "tpm", "budget_usd"):
                if getattr(args, name) is not None:
                    body[name] = getattr(args, name)
            if args.models:
                body["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
            out = _api(args, "POST", "/admin/api/keys", body)
            key = out.pop("key")
            record = _record_of(out)
            _print_created(args, record, key, record.public())
            return 0
        if args.keys_command == "list":
            _print_list(args, [_record_of(o) for o in _api(args, "GET", "/admin/api/keys")["data"]])
            return 0
        if args.keys_command == "edit":
            out = _api(args, "PATCH", "/admin/api/keys/" + urllib.parse.quote(args.ref, safe=""), _changes(args))
            print(orjson.dumps(out).decode() if args.json else f"changed {out['id']} ({out['name']})")
            return 0
        out = _api(args, "POST", "/admin/api/keys/" + urllib.parse.quote(args.ref, safe="") + "/revoke")
        for r in out["revoked"]:
            print(f"revoked {r['id']} ({r['name']}, {r['key']})")
        return 0
    except _Refused as exc:
        print(f"tokenwire: {exc}", file=sys.stderr)
        return 1


async def _keys(args: argparse.Namespace) -> int:
    if args.gateway:
        return _remote_keys(args)
    store = _open(args)
    try:
        if args.keys_command == "create":
            _positive("rpm", args.rpm)
            _positive("tpm", args.tpm)
            _positive("budget-usd", args.budget_usd)
            models = [m.strip() for m in (args.models or "").split(",") if m.strip()]
            if any(r.name == args.name and r.revoked is None for r in await store.list()):
                print(f"tokenwire: an active key named {args.name!r} exists; revoke it or pick another name")
                return 1
            record, key = new_record(
                args.name, rpm=args.rpm, tpm=args.tpm, budget_usd=args.budget_usd, models=models, admin=args.admin
            )
            await store.insert(record)
            _print_created(args, record, key, record.public())
            if args.budget_usd is not None:
                _note_unpriced(args)
            return 0
        if args.keys_command == "list":
            _print_list(args, await store.list())
            return 0
        if args.keys_command == "edit":
            changes = _changes(args)
            found = await store.get(args.ref)
            if found is None:
                print(f"tokenwire: no key {args.ref!r} (give its id, k_…)", file=sys.stderr)
                return 1
            updated = await store.update(found.id, changes)
            assert updated is not None
            print(
                orjson.dumps(updated.public()).decode()
                if args.json
                else f"changed {updated.id} ({updated.name}); a running gateway sees it within key_cache_ttl"
            )
            return 0
        revoked = await store.revoke(args.ref)
        if not revoked:
            print(f"tokenwire: no active key matches {args.ref!r}", file=sys.stderr)
            return 1
        for r in revoked:
            print(f"revoked {r.id} ({r.name}, {r.shown}…)")
        return 0
    finally:
        await store.aclose()


def _usage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--window",
        help="spend and tokens per key and per model over this window (15m, 1h, 24h, 7d…) instead of all-time totals",
    )
    _store_args(p)


def _usage_rows(records: list[KeyRecord]) -> list[list[str]]:
    rows = [["NAME", "KEY", "STATUS", "REQUESTS", "PROMPT_TOK", "COMPL_TOK", "SPENT_USD", "BUDGET", "LAST_USED"]]
    for r in records:
        rows.append(
            [
                r.name,
                r.shown + "…",
                "revoked" if r.revoked else "active",
                str(r.requests),
                str(r.prompt_tokens),
                str(r.completion_tokens),
                f"{r.cost_usd:.6f}",
                _fmt_limit(r.budget_usd, "$"),
                _when(r.last_used),
            ]
        )
    return rows


def _window_tables(out: dict[str, Any]) -> str:
    head = ["REQUESTS", "PROMPT_TOK", "COMPL_TOK", "SPENT_USD"]

    def nums(r: dict[str, Any]) -> list[str]:
        return [str(r["requests"]), str(r["prompt_tokens"]), str(r["completion_tokens"]), f"{r['cost_usd']:.6f}"]

    keys = [["NAME", "KEY", *head]] + [[r["name"], r["key"] or "-", *nums(r)] for r in out["by_key"]]
    models = [["MODEL", *head]] + [[r["model"], *nums(r)] for r in out["by_model"]]
    span = f"{_when(out['since'])} to {_when(out['until'])}"
    if len(keys) == 1:
        return f"no usage from {span}"
    return f"usage from {span}\n\n{_table(keys)}\n\n{_table(models)}"


async def _usage(args: argparse.Namespace) -> int:
    if args.window is not None:
        try:
            window = parse_window(args.window)
        except ValueError as exc:
            print(f"tokenwire: --window: {exc}", file=sys.stderr)
            return 2
    if args.gateway:
        try:
            if args.window is not None:
                out = _api(args, "GET", "/admin/api/usage?window=" + urllib.parse.quote(args.window))
                print(orjson.dumps(out).decode() if args.json else _window_tables(out))
                return 0
            records = [_record_of(o) for o in _api(args, "GET", "/admin/api/keys")["data"]]
        except _Refused as exc:
            print(f"tokenwire: {exc}", file=sys.stderr)
            return 1
    else:
        store = _open(args)
        try:
            records = await store.list()
            if args.window is not None:
                now = time.time()
                out = summarize(await store.usage_since(*plan(window, now)), records, window, now)
                print(orjson.dumps(out).decode() if args.json else _window_tables(out))
                return 0
        finally:
            await store.aclose()
    if args.json:
        print(orjson.dumps([r.public() for r in records]).decode())
    elif not records:
        print("no keys yet: usage is recorded per key (`tokenwire keys create --name NAME`)")
    else:
        print(_table(_usage_rows(records)))
    return 0


def _run_keys(args: argparse.Namespace) -> int:
    return asyncio.run(_keys(args))


def _run_usage(args: argparse.Namespace) -> int:
    return asyncio.run(_usage(args))


#: subcommands this module adds to ``tokenwire`` (read by tokenwire.cli): name -> (add_arguments, run)
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}
HELP: dict[str, str] = {}
COMMANDS["keys"] = (_keys_args, _run_keys)
COMMANDS["usage"] = (_usage_args, _run_usage)
HELP["keys"] = "create, list, edit and revoke gateway API keys (locally, or through a gateway's admin API)"
HELP["usage"] = "requests, tokens and spend per API key"
