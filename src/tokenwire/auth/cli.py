"""``tokenwire keys create|list|revoke`` and ``tokenwire usage``: manage gateway API keys."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from ..config import load_settings
from .keys import KeyRecord, KeyStore, new_record, open_key_store

__all__: list[str] = []


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (default ./tokenwire.toml if present)")
    p.add_argument("--db", help="the gateway's SQLite file (default: as `tokenwire serve` uses)")


def _keys_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    c = sub.add_parser("create", help="create a key (shown once)")
    c.add_argument("--name", required=True, help="who or what the key is for")
    c.add_argument("--rpm", type=int, help="requests per minute")
    c.add_argument("--tpm", type=int, help="tokens per minute (prompt + completion)")
    c.add_argument("--budget-usd", type=float, help="total spend in USD, from the price table")
    c.add_argument("--models", help="comma-separated model names or patterns the key may use (default any)")
    c.add_argument("--json", action="store_true", help="print JSON")
    _store_args(c)
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


async def _keys(args: argparse.Namespace) -> int:
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
            record, key = new_record(args.name, rpm=args.rpm, tpm=args.tpm, budget_usd=args.budget_usd, models=models)
            await store.insert(record)
            if args.json:
                print(orjson.dumps({**record.public(), "key": key}).decode())
            else:
                print(key)
                print(
                    f"created key {record.id} ({args.name}); this is the only time it is shown — store it now",
                    file=sys.stderr,
                )
            if args.budget_usd is not None:
                _note_unpriced(args)
            return 0
        if args.keys_command == "list":
            records = await store.list()
            if args.json:
                print(orjson.dumps([r.public() for r in records]).decode())
                return 0
            if not records:
                print("no keys (the gateway runs in open mode on loopback only)")
                return 0
            rows = [["ID", "NAME", "KEY", "CREATED", "STATUS", "RPM", "TPM", "BUDGET", "MODELS"]]
            for r in records:
                rows.append(
                    [
                        r.id,
                        r.name,
                        r.shown + "…",
                        _when(r.created),
                        "revoked" if r.revoked else "active",
                        _fmt_limit(r.rpm),
                        _fmt_limit(r.tpm),
                        _fmt_limit(r.budget_usd, "$"),
                        ",".join(r.models) or "*",
                    ]
                )
            print(_table(rows))
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


async def _usage(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        records = await store.list()
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
HELP["keys"] = "create, list and revoke gateway API keys"
HELP["usage"] = "requests, tokens and spend per API key"
