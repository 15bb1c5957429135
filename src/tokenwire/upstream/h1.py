"""One HTTP/1.1 response from a provider, decoded as its bytes arrive: no sockets, no event loop.

:class:`H1Response` is fed the raw bytes of a connection (a response head, then a body in
chunked framing, with a ``Content-Length`` or up to the close) and, when the response is a
``200 text/event-stream``, hands each piece of body straight to the provider's
:class:`~tokenwire.upstream.base.StreamParser`: what comes out is the provider-neutral events,
collected in :attr:`H1Response.events` until the I/O layer (:mod:`.wire`) takes them. Any other
answer (an error status, an HTML page from a proxy) keeps at most ``max_body`` bytes of its
body, for the error message.

The head and the chunked framing are parsed by ``httptools`` (llhttp, the parser uvicorn
uses): one C call per network read and one Python callback per body piece, which is what lets
a paced token cost one wake-up of the gateway and nothing more. Being pure, it is what
``tests/unit`` drives at every byte split.
"""

from __future__ import annotations

import zlib
from typing import Any

import httptools

from ..protocol import events as ev
from ..protocol.errors import GatewayError
from ..protocol.events import Event
from .base import StreamParser

__all__ = ["H1Error", "H1Response", "Headers", "encode_request"]

MAX_ERROR_BODY = 64 * 1024  #: bytes of a non-stream answer kept for its error message


class H1Error(ValueError):
    """The bytes are not a valid HTTP/1.1 response (bad framing, bad chunk size, …)."""


class Headers(dict[str, str]):
    """Response headers by lower-cased name; ``get`` takes any case (as HTTP names are)."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


def _clean(text: str, what: str) -> str:
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError(f"the request {what} {text[:40]!r} contains a line break")
    return text


def encode_request(method: str, host: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
    """One HTTP/1.1 request with a ``Content-Length`` body (what every provider call is)."""
    lines = [f"{method} {_clean(target, 'target')} HTTP/1.1", f"Host: {_clean(host, 'host')}"]
    for name, value in headers.items():
        lines.append(f"{_clean(name, 'header name')}: {_clean(str(value), 'header value')}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class H1Response:
    """One response's bytes in; its head, then its events (an event stream) or its body (anything else)."""

    __slots__ = (
        "_inflate",
        "_max",
        "_parser",
        "_stream",
        "_until_close",
        "body",
        "complete",
        "events",
        "head",
        "headers",
        "keep_alive",
        "received",
        "status",
        "stream_parser",
    )

    def __init__(self, stream_parser: StreamParser | None, max_body: int = MAX_ERROR_BODY) -> None:
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.stream_parser = stream_parser
        self.status = 0
        self.headers = Headers()
        self.head = False  #: the head (status line and headers) is complete
        self.complete = False  #: the whole response has arrived (its end flushed into ``events``)
        self.keep_alive = False  #: the connection may carry another request afterwards
        self.events: list[Event] = []  #: decoded and not yet taken
        self.body = bytearray()  #: a non-stream answer's body (at most ``max_body`` bytes)
        self.received = 0  #: bytes fed (0: the peer sent nothing, e.g. a stale keep-alive connection)
        self._stream = False  #: the body goes to ``stream_parser``
        self._until_close = False  #: no length and not chunked: the body ends when the connection does
        self._inflate: Any = None
        self._max = max_body

    @property
    def is_event_stream(self) -> bool:
        return self._stream

    # -- input ------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes from the connection, in order; raises :class:`H1Error` on a malformed response."""
        parser = self._parser
        if parser is None:
            if data:
                raise H1Error("bytes after the end of the response")
            return
        self.received += len(data)
        try:
            parser.feed_data(data)
            if self.complete:
                self._parser = None  # see release()
        except httptools.HttpParserUpgrade as exc:  # 101 and friends: not an answer to a POST
            raise H1Error(f"unexpected protocol upgrade ({exc})") from None
        except httptools.HttpParserError as exc:
            inner = exc.__context__  # an error raised in one of our callbacks (httptools wraps it)
            if isinstance(inner, H1Error):
                raise inner from None
            raise H1Error(str(exc) or type(exc).__name__) from None

    def feed_eof(self, provider: str) -> None:
        """The connection closed. A body delimited by the close ends here; any other is cut."""
        self._parser = None  # see release()
        if self.complete:
            return
        if self.head and self._until_close:
            self._end(provider)
            return
        self.complete = True
        self.keep_alive = False
        if self._stream:
            self.events.append(
                (
                    ev.ERROR,
                    GatewayError(
                        "upstream_error",
                        f"{provider} cut the stream mid-way (the connection closed inside the response)",
                        retryable=True,
                        extra={"provider": provider},
                    ),
                )
            )

    def release(self) -> None:
        """Drop the parser: no more bytes will come (the connection closed or was given up).

        The parser holds this object's bound callbacks and this object holds the parser: a
        reference cycle, which only the cyclic garbage collector would free, and a serving
        process runs the collector's full passes rarely (server/heap.py), so a reply's
        response, decoder and parser would pile up between them. The cycle is cut as soon as
        the response is over (:meth:`feed` on its last byte, :meth:`feed_eof`, or the
        connection's owner giving it up).
        """
        self._parser = None

    def take(self) -> list[Event]:
        """The events decoded since the last call."""
        events = self.events
        if events:
            self.events = []
        return events

    # -- httptools callbacks ------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = dict.get(self.headers, key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        self.status = status = parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real head follows
            self.headers = Headers()
            return
        self.head = True
        self.keep_alive = bool(parser.should_keep_alive())
        headers = self.headers
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._until_close = not chunked and "content-length" not in headers and status not in (204, 304)
        ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        self._stream = status == 200 and ctype == "text/event-stream" and self.stream_parser is not None
        coding = headers.get("content-encoding", "").strip().lower()
        if coding in ("gzip", "deflate", "x-gzip"):
            self._inflate = zlib.decompressobj(47)  # gzip or zlib, told apart by their header
        elif coding not in ("", "identity"):
            raise H1Error(f"unsupported Content-Encoding {coding[:40]!r}")

    def on_body(self, data: bytes) -> None:
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except zlib.error as exc:
                raise H1Error(f"a compressed body that does not decompress ({exc})") from None
        if self._stream:
            out = self.stream_parser.feed(data)  # type: ignore[union-attr]
            if out:
                if self.events:
                    self.events += out
                else:
                    self.events = out
        elif len(self.body) < self._max:
            self.body += data[: self._max - len(self.body)]

    def on_message_complete(self) -> None:
        if self.head:
            parser = self._parser
            self.keep_alive = self.keep_alive and parser is not None and bool(parser.should_keep_alive())
            self._end(self.stream_parser.provider if self.stream_parser is not None else "upstream")

    def _end(self, provider: str) -> None:
        self.complete = True
        parser = self.stream_parser
        if not self._stream or parser is None:
            return
        out = parser.close()
        if not parser.done and not parser.finished:
            out.append(
                (
                    ev.ERROR,
                    GatewayError(
                        "upstream_error",
                        f"{parser.provider} ended the stream before it finished",
                        retryable=True,
                    ),
                )
            )
        self.events += out
