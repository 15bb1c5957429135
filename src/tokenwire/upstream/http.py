"""The HTTP clients a gateway process shares across providers.

Streamed calls (the token path) go over :class:`.wire.Pool`: our own keep-alive HTTP/1.1
connections, read by a Protocol that hands events to the relay in its ``data_received``. Calls
off the token path (``GET /models``) use one shared :class:`aiohttp.ClientSession`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from ..protocol.errors import GatewayError
from ..version import __version__
from .base import StreamParser, http_error, retry_after_seconds
from .h1 import encode_request
from .wire import H1Stream, Origin, Pool

__all__ = ["HTTPUpstream", "SharedSession", "not_an_event_stream"]

#: how long an error answer's body is waited for before the error is reported without it
ERROR_BODY_TIMEOUT = 10.0


class SharedSession:
    """Lazily creates one :class:`aiohttp.ClientSession` per event loop and shares it."""

    def __init__(self, connect_timeout: float = 10.0) -> None:
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        #: the keep-alive connections of every streamed call (no event loop needed to make it)
        self.pool = Pool(connect_timeout)

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=0, keepalive_timeout=60, enable_cleanup_closed=False
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # No ``sock_read``: it costs a timer reset per received chunk (per token). A
                # silent provider is caught by the relay's one watchdog (Registry._watch_reads)
                # and, before the first token, by routing's first-token timeout.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=None),
                json_serialize=lambda o: orjson.dumps(o).decode(),
                auto_decompress=True,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
        await self.pool.aclose()


def not_an_event_stream(upstream: HTTPUpstream, status: int, ctype: str, raw: bytes) -> GatewayError:
    """A 200 that is not ``text/event-stream`` (an HTML error page from a proxy, a JSON body from a
    server that ignored ``stream: true``) named as what it is, instead of an empty stream."""
    snippet = " ".join(raw[:200].decode("utf-8", "replace").split())
    return upstream.redact(
        GatewayError(
            "upstream_bad_response",
            f"{upstream.name} answered HTTP {status} with Content-Type {ctype[:100] or '(none)'!r}, "
            f"not an event stream: {snippet!r}",
            retryable=True,
            extra={"provider": upstream.name},
        )
    )


class HTTPUpstream:
    """Base for providers reached over HTTP: base URL, auth headers, key redaction."""

    simulated = False
    auth_header = "Authorization"
    auth_prefix = "Bearer "

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        session: SharedSession,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._session = session
        self._headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if api_key:
            self._headers[self.auth_header] = f"{self.auth_prefix}{api_key}"
        if headers:
            self._headers.update(headers)
        # The streamed calls' own wire: origin (the pool's key), Host header and path prefix, once.
        self._headers.setdefault("User-Agent", f"tokenwire/{__version__}")
        self._headers.setdefault("Accept-Encoding", "identity")  # per-token SSE gains nothing from gzip
        url = urlsplit(self.base_url)
        tls = url.scheme == "https"
        self._origin: Origin | None = None
        if url.scheme in ("http", "https") and url.hostname:
            try:
                port = url.port or (443 if tls else 80)
            except ValueError:
                port = None
            if port is not None:
                self._origin = Origin(url.hostname, port, tls)
        self._host = url.netloc.rpartition("@")[2]
        self._prefix = url.path.rstrip("/")

    async def stream(
        self, path: str, body: dict[str, Any], parser: StreamParser, headers: dict[str, str] | None = None
    ) -> H1Stream:
        """POST ``body`` to ``path`` and return its event stream, once a ``200 text/event-stream`` head is in.

        ``headers``: this call's own (ChatCall.headers, e.g. ``traceparent``) on top of the provider's.

        Any other answer is read (at most 64 KiB, for ``ERROR_BODY_TIMEOUT`` seconds) and raised
        as :meth:`error_for` says; its connection is closed.
        """
        origin = self._origin
        if origin is None:
            raise GatewayError(
                "upstream_unavailable",
                f"{self.name}'s base_url {self.base_url!r} is not an http:// or https:// URL",
                extra={"provider": self.name},
            )
        sent = self._headers if not headers else {**self._headers, **headers}
        request = encode_request("POST", self._host, self._prefix + path, sent, orjson.dumps(body))
        try:
            stream = await self._session.pool.request(origin, request, parser, self.name)
        except GatewayError as err:
            raise self.redact(err) from None
        resp = stream.response
        if resp.is_event_stream:
            return stream
        try:
            async with asyncio.timeout(ERROR_BODY_TIMEOUT):
                raw = await stream.wait_body()
        except (TimeoutError, GatewayError):
            raw = bytes(resp.body)
        finally:
            stream.close()
        if resp.status != 200:
            raise self.redact(self.error_for(resp.status, resp.headers, raw))
        raise not_an_event_stream(self, resp.status, resp.headers.get("content-type", ""), raw)

    def error_for(self, status: int, headers: Mapping[str, str], raw: bytes) -> GatewayError:
        """A provider's HTTP error answer as a gateway error (a provider reads its own error body)."""
        text = " ".join(raw[:300].decode("utf-8", "replace").split())
        return http_error(self.name, status, text or "no message", retry_after_seconds(headers))

    def redact(self, err: GatewayError) -> GatewayError:
        """Provider keys never reach a client: scrub the key from any message."""
        if self.api_key and self.api_key in err.message:
            err.message = err.message.replace(self.api_key, "[redacted]")
            err.args = (err.message,)
        return err

    async def aclose(self) -> None:
        return None
