"""``tokenwire chat`` (interactive, streaming, keeps the conversation) and ``tokenwire ask``
(one-shot, pipe-friendly). Both start an embedded gateway when none runs at the default URL."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from .core import DEFAULT_URL, Completion
from .errors import AuthError, ConnectionLostError, ConversationBusyError, TokenwireError
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


def _err(prefix: str, exc: TokenwireError, url: str = "") -> None:
    print(f"{prefix}: {_explain(exc, url) if url else f'{exc.message} [{exc.code}]'}", file=sys.stderr)


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


CHAT_HELP = """\
/help            this list
/model [NAME]    the models the gateway has; with NAME: use it from the next message on
/new             a new conversation (the current one stays stored on the gateway)
/key [KEY]       use another API key (without KEY it is asked for, not shown)
/quit            leave (so do Ctrl-D and /exit)
Ctrl-C stops a reply; anything else is sent as a message."""


def _explain(exc: TokenwireError, url: str) -> str:
    """What went wrong and what to do, in a sentence (no exception reprs)."""
    if isinstance(exc, ConnectionLostError) and exc.message.startswith("could not connect"):
        return (
            f"could not connect to the gateway at {url}: is it running? Start one with `tokenwire serve`, "
            f"or leave out --url to let chat start its own [{exc.code}]"
        )
    if isinstance(exc, AuthError):
        return f"{exc.message}: type /key to give an API key [{exc.code}]"
    return f"{exc.message} [{exc.code}]"


def _http_base(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(("https" if parts.scheme == "wss" else "http", parts.netloc, "", "", ""))


def _models(url: str, api_key: str | None) -> tuple[list[str], dict[str, str]] | None:
    """The gateway's model ids and aliases (GET /v1/models), or None when it cannot say."""
    req = urllib.request.Request(_http_base(url) + "/v1/models")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = json.load(resp)
    except (OSError, ValueError):
        return None
    return [m["id"] for m in body.get("data", [])], dict(body.get("aliases") or {})


class _Chat:
    """The interactive loop's state: the client (one per key), the conversation, the model."""

    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url
        self.model: str | None = args.model
        self.api_key: str | None = args.api_key or os.environ.get("TOKENWIRE_API_KEY") or None
        self.client = self._client()
        self.conv = self.client.conversation(args.system)

    def _client(self) -> Client:
        return Client(self.url, api_key=self.api_key, model=self.model, max_attempts=3, backoff_base=0.5)

    def say(self, text: str) -> None:
        print(_dim(text, sys.stderr), file=sys.stderr, flush=True)

    def command(self, line: str) -> bool | None:
        """Run a /command: True to leave, False if handled, None if ``line`` is not a command."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit", "/q"):
            return True
        if name in ("/help", "/?"):
            self.say(CHAT_HELP)
        elif name == "/new":
            self.conv = self.client.conversation(self.args.system)
            self.say(f"new conversation {self.conv.id}")
        elif name == "/model":
            self._model(arg)
        elif name == "/key":
            self._key(arg)
        else:
            self.say(f"unknown command {name}: /help lists them")
        return False

    def _model(self, name: str) -> None:
        listed = _models(self.url, self.api_key)
        if not name:
            now = self.model or "the gateway's default"
            shown = ", ".join(listed[0]) if listed else "(the gateway did not list them)"
            self.say(f"model: {now}\nmodels: {shown}")
            return
        if listed is not None:
            ids, aliases = listed
            if name.split("@")[0] not in ids and name.split("@")[0] not in aliases:
                self.say(f"unknown model {name!r}; models: {', '.join(ids)}")
                return
        self.model = name
        self.say(f"model: {name} (from the next message on)")

    def _key(self, key: str) -> None:
        if not key:
            try:
                key = getpass.getpass("API key (not shown): ").strip()
            except (EOFError, KeyboardInterrupt):
                key = ""
        if not key:
            self.say("no key given: nothing changed")
            return
        self.api_key = key
        self.client.close()
        self.client = self._client()
        self.conv = self.client.conversation(self.args.system, conversation_id=self.conv.id)
        try:
            self.client.connect()
        except TokenwireError as exc:
            print(f"error: {_explain(exc, self.url)}", file=sys.stderr, flush=True)
            return
        self.say("key accepted")

    def send(self, line: str) -> None:
        out, err = sys.stdout, sys.stderr
        stream = None
        opts = {"max_tokens": self.args.max_tokens} | ({"model": self.model} if self.model else {})
        try:
            stream = _stream_with_retry(lambda: self.conv.stream(line, **opts))
            for token in stream:
                out.write(token)
                out.flush()
        except KeyboardInterrupt:
            if stream is not None:
                stream.close()
            out.write("\n")
            print(_dim("[stopped]", err), file=err, flush=True)
            return
        except TokenwireError as exc:
            out.write("\n")
            print(f"error: {_explain(exc, self.url)}", file=err, flush=True)
            return
        out.write("\n")
        out.flush()
        print(_dim(stats_line(stream.result), err), file=err, flush=True)


def run_chat(args: argparse.Namespace) -> int:
    """interactive chat: streams replies, keeps the conversation, Ctrl-C stops a reply; /help lists commands"""
    out, err = sys.stdout, sys.stderr
    with _gateway(args) as url:
        chat = _Chat(args, url)
        try:
            try:
                chat.client.connect()
            except AuthError as exc:  # stay: /key can fix it
                print(f"tokenwire chat: {_explain(exc, url)}", file=err, flush=True)
            except TokenwireError as exc:
                print(f"tokenwire chat: {_explain(exc, url)}", file=err, flush=True)
                return 1
            chat.say(f"tokenwire chat · {url} · conversation {chat.conv.id}")
            chat.say("/help lists commands · Ctrl-C stops a reply · Ctrl-D or /quit exits")
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
                if line.startswith("/"):
                    leave = chat.command(line)
                    if leave:
                        return 0
                    continue
                chat.send(line)
        finally:
            chat.client.close()


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
            _err("tokenwire ask", exc, url)
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
