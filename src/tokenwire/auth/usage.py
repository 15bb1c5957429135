"""Spend and tokens per key and per model over a window, from the usage table's minute rows.

Pure functions (no store, no clock of their own): the admin API (``/admin/api/usage``) and
``tokenwire usage --window`` both sum :data:`~.keys.UsageRow` rows with :func:`summarize`,
so the two always agree.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .keys import USAGE_BUCKET, KeyRecord, UsageRow

__all__ = ["MAX_WINDOW", "WINDOWS", "parse_window", "plan", "summarize"]

#: the windows the dashboard offers (any "<n><unit>" up to MAX_WINDOW is accepted)
WINDOWS = ("15m", "1h", "6h", "24h", "7d", "30d")
MAX_WINDOW = 90 * 86400  #: seconds; the usage table is not pruned, but a window past this is a typo
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_WINDOW = re.compile(r"(\d{1,6})([smhd])")
POINTS = 60  #: points of the series over any window (each a whole number of buckets)


def parse_window(text: str | None) -> int:
    """``"15m"``, ``"1h"``, ``"7d"``… as seconds; ValueError naming what is accepted otherwise."""
    m = _WINDOW.fullmatch((text or "").strip().lower())
    seconds = int(m.group(1)) * _UNITS[m.group(2)] if m else 0
    if not m or not USAGE_BUCKET <= seconds <= MAX_WINDOW:
        raise ValueError(
            f"window must be a number and a unit (s, m, h, d) from 1m to {MAX_WINDOW // 86400}d, "
            f"e.g. {', '.join(WINDOWS)}; got {str(text)[:40]!r}"
        )
    return seconds


def plan(window: int, now: float) -> tuple[int, int]:
    """``(first, step)``: the start of a window's first step and the step, in whole buckets.

    The window is widened back to a step boundary, so each point of the series is a whole step
    and the store can sum the rows per step (``KeyStore.usage_since(first, step)``).
    """
    step = max(1, math.ceil(window / POINTS / USAGE_BUCKET)) * USAGE_BUCKET
    return int((now - window) // step) * step, step


def summarize(rows: list[UsageRow], keys: list[KeyRecord], window: int, now: float) -> dict[str, Any]:
    """Totals per key and per model, and a series of spend and tokens, over ``window`` seconds to ``now``.

    ``rows`` are the store's from :func:`plan`'s ``first`` on (per bucket or already per step).
    The series has at most :data:`POINTS` + 1 points of a whole step each, oldest first, with
    quiet steps as zeros (a chart's x axis must not skip quiet minutes).
    """
    first, step = plan(window, now)
    n = int((now - first) // step) + 1
    times = [first + i * step for i in range(n)]
    cost = [0.0] * n
    tokens = [0] * n
    names = {k.id: k for k in keys}
    by_key: dict[str, list[Any]] = {}
    by_model: dict[str, list[Any]] = {}
    for bucket, key_id, model, requests, prompt, completion, usd in rows:
        if bucket < first:
            continue
        i = min(n - 1, int((bucket - first) // step))
        cost[i] += usd
        tokens[i] += prompt + completion
        for table, name in ((by_key, key_id), (by_model, model or "?")):
            t = table.setdefault(name, [0, 0, 0, 0.0])
            t[0] += requests
            t[1] += prompt
            t[2] += completion
            t[3] += usd

    def row(t: list[Any]) -> dict[str, Any]:
        return {
            "requests": t[0],
            "prompt_tokens": t[1],
            "completion_tokens": t[2],
            "tokens": t[1] + t[2],
            "cost_usd": round(t[3], 8),
        }

    key_rows = []
    for key_id, t in by_key.items():
        rec = names.get(key_id)
        key_rows.append(
            {"id": key_id, "name": rec.name if rec else key_id, "key": rec.shown + "…" if rec else None, **row(t)}
        )
    model_rows = [{"model": m, **row(t)} for m, t in by_model.items()]
    order = lambda r: (-r["cost_usd"], -r["tokens"])  # noqa: E731
    return {
        "window_s": window,
        "since": first,
        "until": now,
        "step_s": step,
        "by_key": sorted(key_rows, key=order),
        "by_model": sorted(model_rows, key=order),
        "series": {"t": times, "cost_usd": [round(c, 8) for c in cost], "tokens": tokens},
        "total": row(
            [
                sum(r["requests"] for r in key_rows),
                sum(r["prompt_tokens"] for r in key_rows),
                sum(r["completion_tokens"] for r in key_rows),
                sum(cost),
            ]
        ),
    }
