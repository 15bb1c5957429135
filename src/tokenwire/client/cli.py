"""``tokenwire chat`` (interactive, streaming, keeps the conversation) and ``tokenwire ask``
(one-shot, pipe-friendly). Both start an embedded gateway when none runs at the default URL."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from .core import DEFAULT_URL, Completion
from .errors import ConversationBusyError, TokenwireError
from .sync import Client, SyncTokenStream

__all__ = ["run_ask", "run_chat"]


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help=f"gateway WebSocket URL (default $TOKENWIRE_URL or {DEFAULT_URL})")
    p.add_argument("--model", help="model name (default: the gateway's default model)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-tokens", type=int, help="reply length limit")
    p.add_argument("--api-key", help="API key (default $TOKENWIRE_API_KEY); sent as Authorization: Bearer")


def _chat_args(p: argparse.ArgumentParser) -> None:
    _common_args(p)


def _ask_args(p: argparse.ArgumentParser) -> None:
    _common_args(p)
    p.add_argument("--stats", action="store_true", help="print TTFT, tokens/s, tokens and cost on stderr")
    p.add_argument("prompt", nargs="*", help='the question ("-" or nothing: read stdin)')


@contextmanager
def _gateway(args: argparse.Namespace) -> Iterator[str]:
    """The URL to use; starts an embedded gateway when no URL was given and none listens."""
    if args.url:
        yield args.url
        return
    url = os.environ.get("TOKENWIRE_URL") or DEFAULT_URL
    from .embedded import EmbeddedGateway, is_listening

    if is_listening(url):
        yield url
        return
    gw = EmbeddedGateway()
    try:
        local = gw.start()
        print(
            f"tokenwire: no gateway at {url}; started an embedded one at {local} (providers: {gw.providers})",
            file=sys.stderr,
        )
        yield local
    finally:
        gw.stop()


def _client(args: argparse.Namespace, url: str) -> Client:
    return Client(
        url,
        api_key=args.api_key or os.environ.get("TOKENWIRE_API_KEY") or None,
        model=args.model,
        max_attempts=3,
        backoff_base=0.5,
    )


def _dim(text: str, stream: TextIO) -> str:
    return f"\x1b[2m{text}\x1b[0m" if stream.isatty() else text


def stats_line(r: Completion) -> str:
    """TTFT · tokens/s · tokens · cost, from what the gateway reported at ``end``."""
    ttft = r.client_ttft_ms if r.client_ttft_ms is not None else r.timing.get("ttft_ms")
    tps = r.timing.get("tokens_per_s")
    parts = [
        f"TTFT {ttft:.0f} ms" if ttft is not None else "TTFT –",
        f"{tps:.1f} tokens/s" if tps is not None else "– tokens/s",
        f"{r.tokens} tokens",
        f"${r.cost_usd:.6f}" if r.cost_usd is not None else "cost –",
    ]
    if r.model:
        parts.append(f"{r.model} ({r.provider})")
    return " · ".join(parts)


def _err(prefix: str, exc: TokenwireError) -> None:
    print(f"{prefix}: {exc.message} [{exc.code}]", file=sys.stderr)


def _stream_with_retry(make: object, tries: int = 20) -> SyncTokenStream:
    """The previous (stopped) reply may still be finishing server-side: wait for it."""
    for i in range(tries):
        s: SyncTokenStream = make()  # type: ignore[operator]
        try:
            first = next(s, None)
        except ConversationBusyError:
            if i == tries - 1:
                raise
            time.sleep(0.1)
            continue
        return _Prefetched(s, first)  # type: ignore[return-value]
    raise AssertionError("unreachable")


class _Prefetched:
    """A stream whose first token was already read (to catch conversation_busy early)."""

    def __init__(self, s: SyncTokenStream, first: str | None) -> None:
        self.s = s
        self.first = first

    def __iter__(self) -> Iterator[str]:
        if self.first is not None:
            yield self.first
            yield from self.s

    def close(self) -> None:
        self.s.close()

    @property
    def result(self) -> Completion:
        return self.s.result


def run_chat(args: argparse.Namespace) -> int:
    """interactive chat: streams replies, keeps the conversation, Ctrl-C stops a reply"""
    out, err = sys.stdout, sys.stderr
    with _gateway(args) as url, _client(args, url) as client:
        try:
            client.connect()
        except TokenwireError as exc:
            _err("tokenwire chat", exc)
            return 1
        conv = client.conversation(args.system)
        print(
            _dim(f"tokenwire chat · {url} · conversation {conv.id}\nCtrl-C stops a reply · Ctrl-D or /quit exits", err),
            file=err,
        )
        while True:
            try:
                line = input("you> ")
            except EOFError:
                print(file=out)
                return 0
            except KeyboardInterrupt:
                print(file=out)
                continue
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit", "/q"):
                return 0
            stream = None
            try:
                stream = _stream_with_retry(lambda text=line: conv.stream(text, max_tokens=args.max_tokens))
                for token in stream:
                    out.write(token)
                    out.flush()
            except KeyboardInterrupt:
                if stream is not None:
                    stream.close()
                out.write("\n")
                print(_dim("[stopped]", err), file=err, flush=True)
                continue
            except TokenwireError as exc:
                out.write("\n")
                _err("error", exc)
                continue
            out.write("\n")
            out.flush()
            print(_dim(stats_line(stream.result), err), file=err, flush=True)


def run_ask(args: argparse.Namespace) -> int:
    """one-shot question: the reply on stdout, errors on stderr (non-zero exit)"""
    prompt = " ".join(args.prompt).strip()
    if not prompt or prompt == "-":
        prompt = sys.stdin.read().strip()
    if not prompt:
        print("tokenwire ask: no question given", file=sys.stderr)
        return 2
    out = sys.stdout
    with _gateway(args) as url, _client(args, url) as client:
        stream = client.stream(prompt, system=args.system, max_tokens=args.max_tokens)
        last = ""
        try:
            for token in stream:
                out.write(token)
                out.flush()
                last = token
        except TokenwireError as exc:
            if last:
                out.write("\n")
            _err("tokenwire ask", exc)
            return 1
        if not last.endswith("\n"):
            out.write("\n")
        out.flush()
        if args.stats:
            print(stats_line(stream.result), file=sys.stderr)
    return 0


#: subcommands this module adds to ``tokenwire`` (read by tokenwire.cli): name -> (add_arguments, run)
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}
HELP: dict[str, str] = {}
COMMANDS["chat"] = (_chat_args, run_chat)
COMMANDS["ask"] = (_ask_args, run_ask)
