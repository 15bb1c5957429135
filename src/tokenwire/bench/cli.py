"""Registers ``tokenwire bench``, ``tokenwire loadtest`` and ``tokenwire capacity`` (imported by tokenwire.cli)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="ws://127.0.0.1:8000/ws/chat", help="the gateway's WebSocket URL")
    p.add_argument("--models", help="comma-separated models (default: every model the gateway lists)")
    p.add_argument("--runs", type=int, default=10, help="generations per model and transport (default 10)")
    p.add_argument("--transport", default="ws", help="comma-separated: ws, sse, poll (default ws)")
    p.add_argument("--max-tokens", type=int, default=100, help="reply length asked for (default 100)")
    p.add_argument(
        "--poll-interval", type=float, default=0.1, help="seconds between polls (default 0.1; 0 = long polling)"
    )
    p.add_argument("--json", metavar="FILE", help="write the results as JSON (- = stdout; the table goes to stderr)")
    p.add_argument("--chart", metavar="FILE", help="write a PNG bar chart (needs pip install 'tokenwire[bench]')")


def _bench(args: argparse.Namespace) -> int:
    from .run import main

    return main(args)


def _loadtest_args(p: argparse.ArgumentParser) -> None:
    from .loadtest import add_arguments

    add_arguments(p)


def _loadtest(args: argparse.Namespace) -> int:
    from .loadtest import main

    return main(args)


def _capacity_args(p: argparse.ArgumentParser) -> None:
    from .capacity import add_arguments

    add_arguments(p)


def _capacity(args: argparse.Namespace) -> int:
    from .capacity import main

    return main(args)


#: subcommands this module adds to ``tokenwire`` (read by tokenwire.cli): name -> (add_arguments, run)
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}
HELP: dict[str, str] = {}
COMMANDS["bench"] = (_bench_args, _bench)
COMMANDS["loadtest"] = (_loadtest_args, _loadtest)
HELP["bench"] = "a benchmark table (TTFT, tokens/s, 100-token latency, price) against a gateway"
HELP["loadtest"] = "many concurrent streams (or idle sockets) against a gateway in front of a fake upstream"
COMMANDS["capacity"] = (_capacity_args, _capacity)
HELP["capacity"] = "per-core capacity: the gateway pinned to a core, paced streams, stall-free count, relay floor"
