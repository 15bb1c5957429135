"""The ``tokenwire`` command: serve, simulate, chat, ask, bench, loadtest, keys, usage."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .config import ConfigError, StartupError, load_settings
from .version import __version__

__all__ = ["main"]

#: Later subcommands register here: name -> (add_arguments, run)
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 = any free port)")
    p.add_argument("--config", help="TOML config file (default ./tokenwire.toml if present)")
    p.add_argument("--db", help='SQLite file for conversations (":memory:" = not kept)')
    p.add_argument("--log-level", default=None, help="debug, info, warning (default info)")
    p.add_argument(
        "--workers",
        type=int,
        help="gateway processes sharing the port, one per core (default 1; more needs TOKENWIRE_REDIS_URL)",
    )
    p.add_argument(
        "--insecure-open",
        action="store_const",
        const=True,
        help="serve without API keys on a non-loopback address (only behind something that authenticates)",
    )


def _serve(args: argparse.Namespace) -> int:
    from .server.app import run_server

    settings = load_settings(
        args.config,
        overrides={
            "host": args.host,
            "port": args.port,
            "db_path": args.db,
            "log_level": args.log_level,
            "insecure_open": args.insecure_open,
            "workers": args.workers,
        },
    )
    from .runtime.metrics import setup_logging

    setup_logging(settings.log_level)
    if settings.workers > 1:
        from .server.workers import serve_workers

        return serve_workers(settings)
    run_server(settings)
    return 0


def _simulate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100, help="port (default 8100; 0 = any free port)")
    p.add_argument("--tokens", type=int, help="reply length in tokens (default: max_tokens, else 100)")
    p.add_argument("--tps", type=float, help="tokens per second (default: the model's measured speed)")
    p.add_argument("--fast", action="store_true", help="as fast as possible (no pacing, no TTFT)")
    p.add_argument("--ttft-ms", type=float, help="time to first token in ms")
    p.add_argument("--split", type=int, default=0, help="write each SSE event in N-byte pieces")
    p.add_argument("--batch", type=int, default=1, help="with --fast: tokens per network write")
    p.add_argument(
        "--fault",
        help="for every request: 429, 500, 503, cut:N, malformed:N, stall:N, error:N",
    )
    p.add_argument("--retry-after", type=float, help="Retry-After seconds sent with --fault 429")
    p.add_argument("--fixtures", help="folder of recorded streams served for model names ending @replay=FILE")
    p.add_argument("--pace-ms", type=float, default=0.0, help="with --fast: pause after each write, ms")
    p.add_argument("--text", help="every token is TEXT instead of the deterministic reply")
    p.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (chain)")
    p.add_argument("--tls-key", help="the private key of --tls-cert (PEM; default: in the same file)")
    p.add_argument(
        "--wheel",
        action="store_true",
        help="the lean load-test engine: one timer for every stream, timestamped tokens, OpenAI only "
        "(--tps default 50, --tokens 100, --ttft-ms 100)",
    )
    p.add_argument(
        "--reuse-port",
        action="store_true",
        help="with --wheel: SO_REUSEPORT, so several simulators share one port (load beyond one process)",
    )


def _simulate(args: argparse.Namespace) -> int:
    if args.wheel:
        from .simulate.wheel import run_wheel

        options = {
            "--split": args.split,
            "--batch": args.batch != 1,
            "--fault": args.fault,
            "--retry-after": args.retry_after,
            "--fixtures": args.fixtures,
            "--pace-ms": args.pace_ms,
            "--text": args.text,
            "--tls-cert": args.tls_cert,
        }
        if given := [flag for flag, value in options.items() if value]:
            print(f"tokenwire simulate --wheel does not take {', '.join(given)}", file=sys.stderr)
            return 2
        tps = 0.0 if args.fast else (50.0 if args.tps is None else args.tps)
        ttft = 100.0 if args.ttft_ms is None else args.ttft_ms
        run_wheel(args.host, args.port, tps, args.tokens or 100, ttft, reuse_port=args.reuse_port)
        return 0
    from .simulate.server import SimOptions, run_simulator

    opts = SimOptions(
        tokens=args.tokens,
        tps=0.0 if args.fast else args.tps,
        ttft_ms=args.ttft_ms,
        split=args.split,
        fault=args.fault,
        retry_after=args.retry_after,
        batch=args.batch,
        fixtures=args.fixtures,
        pace_ms=args.pace_ms,
        text=args.text,
    )
    run_simulator(args.host, args.port, opts, cert=args.tls_cert, key=args.tls_key)
    return 0


COMMANDS["serve"] = (_serve_args, _serve)
COMMANDS["simulate"] = (_simulate_args, _simulate)

_HELP = {
    "serve": "run the gateway (simulated models when no provider is configured)",
    "simulate": "run a standalone OpenAI-compatible fake upstream (tests, benchmarks)",
}


def _load_plugins() -> None:
    """Subcommands living in their own modules register themselves on import."""
    import importlib

    for name in ("tokenwire.client.cli", "tokenwire.bench.cli", "tokenwire.auth.cli"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
            continue
        COMMANDS.update(module.COMMANDS)
        _HELP.update(module.HELP)


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
    parser = argparse.ArgumentParser(prog="tokenwire", description="Stream LLM chat tokens over WebSocket and SSE.")
    parser.add_argument("--version", action="version", version=f"tokenwire {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=_HELP.get(name, getattr(run, "__doc__", None)))
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except StartupError as exc:
        print(f"tokenwire: cannot start: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"tokenwire: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
