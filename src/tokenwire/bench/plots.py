"""Benchmark figures drawn with matplotlib (the optional extra ``tokenwire[bench]``).

matplotlib replaced a hand-written PNG encoder (a 3x5 bitmap font): real axes, legible labels,
and SVG or PNG from one figure. It is imported only when a figure is asked for, with the Agg
renderer (no screen, no GUI toolkit), and without pyplot's global state: each function builds
its own ``Figure``. Without the extra, :func:`require` says in one line how to get it.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

__all__ = ["INSTALL", "MissingExtra", "bench_figure", "html_report", "loadtest_figure", "png", "require"]

INSTALL = "pip install 'tokenwire[bench]'"

#: the latency figures of a loadtest report, in the order they are drawn
_LATENCIES = (("added_ttft_ms", "added TTFT"), ("relay_latency_ms", "relay latency"), ("added_gap_ms", "added gap"))
_QUANTILES = ("p50", "p90", "p99", "p99.9")


class MissingExtra(RuntimeError):
    """matplotlib is not installed: the message is the one line to show."""


def require() -> None:
    """Fail early (before a long run) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtra(f"figures need matplotlib, which is not installed: {INSTALL}") from None


def _figure(width: float, height: float) -> Any:
    require()
    import matplotlib

    matplotlib.use("Agg", force=False)  # never a screen; a no-op when a backend is already chosen
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def loadtest_figure(report: dict[str, Any]) -> Any:
    """Latency percentiles (added TTFT, relay latency, added gap) and, if sampled, gateway memory."""
    rss = report.get("rss_samples_mb") or []
    fig = _figure(10, 4.2)
    axes = fig.subplots(1, 2 if rss else 1, squeeze=False)[0]
    ax = axes[0]
    shown = [(key, label) for key, label in _LATENCIES if isinstance(report.get(key), dict)]
    if report.get("mode") == "idle" or not shown:
        shown = [("client_loop_lag_ms", "client loop lag")]
    width = 0.8 / len(_QUANTILES)
    for j, q in enumerate(_QUANTILES):
        xs = [i + (j - (len(_QUANTILES) - 1) / 2) * width for i in range(len(shown))]
        ys = [(report.get(key) or {}).get(q) or 0.0 for key, _ in shown]
        bars = ax.bar(xs, ys, width, label=q)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(shown)), [label for _, label in shown])
    ax.set_ylabel("ms (the gateway's added share)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    cpu = report.get("gateway_cpu_us_per_token")
    ax.set_title(
        f"{report.get('streams', 0):,} streams × {report.get('tps') or 0:g} tok/s"
        + (f", gateway {cpu} µs CPU/token" if cpu is not None else ""),
        fontsize=10,
    )
    if rss:
        ax2 = axes[1]
        ax2.plot([t for t, _ in rss], [m for _, m in rss], marker="o")
        ax2.set_xlabel("s since the sockets were open")
        ax2.set_ylabel("gateway RSS (MB)")
        growth = report.get("rss_growth_mb_per_min")
        ax2.set_title(f"gateway memory ({growth} MB/min)" if growth is not None else "gateway memory", fontsize=10)
        ax2.grid(alpha=0.3)
    fig.suptitle(f"tokenwire loadtest {report.get('date', '')} — {report.get('machine', '')}", fontsize=9)
    return fig


def bench_figure(report: dict[str, Any]) -> Any:
    """``tokenwire bench``: p50 TTFT and p50 time for the whole reply, per model and transport."""
    results = report["results"]
    fig = _figure(10, 1.6 + 0.35 * max(1, len(results)))
    axes = fig.subplots(1, 2, sharey=True)
    labels = [f"{r['model']} {r['transport']}" for r in results]
    transports = list(report["transports"])
    colours = [f"C{transports.index(r['transport']) % 10}" for r in results]
    for ax, key, title in (
        (axes[0], "ttft_ms", "TTFT p50 (ms)"),
        (axes[1], "total_ms", f"{report['max_tokens']} tokens p50 (ms)"),
    ):
        ys = [r[key]["p50"] or 0.0 for r in results]
        bars = ax.barh(range(len(results)), ys, color=colours)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(results)), labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"tokenwire bench {report['date'][:10]} ({report['runs']} runs)", fontsize=10)
    return fig


def html_report(title: str, text: str, figures: list[Any], data: dict[str, Any] | None = None) -> str:
    """One self-contained HTML file: the figures as base64 PNG, the text report, the JSON."""
    import orjson

    imgs = "\n".join(
        f'<img alt="figure {i + 1}" src="data:image/png;base64,{base64.b64encode(png(f)).decode()}">'
        for i, f in enumerate(figures)
    )
    raw = ""
    if data is not None:
        raw = (
            "<details><summary>the report as JSON</summary><pre>"
            + html.escape(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
            + "</pre></details>"
        )
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:1100px}"
        "img{max-width:100%;display:block;margin:1em 0}pre{background:#f6f6f6;padding:1em;overflow:auto}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>\n{imgs}\n<pre>{html.escape(text)}</pre>\n{raw}\n</body></html>\n"
    )
