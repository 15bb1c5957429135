"""The one pooled, keep-alive HTTP client a gateway process uses for every provider."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from ..protocol.errors import GatewayError

__all__ = ["HTTPUpstream", "SharedSession", "not_an_event_stream", "read_error_body"]

_MAX_ERROR_BODY = 64 * 1024


class SharedSession:
    """Lazily creates one :class:`aiohttp.ClientSession` per event loop and shares it."""

    def __init__(self, connect_timeout: float = 10.0) -> None:
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

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


async def read_error_body(resp: aiohttp.ClientResponse) -> bytes:
    """Read at most 64 KiB of an error response, then drop the connection."""
    try:
        body = await asyncio.wait_for(resp.content.read(_MAX_ERROR_BODY), 10)
    except (TimeoutError, aiohttp.ClientError):
        body = b""
    resp.close()
    return body


async def not_an_event_stream(upstream: HTTPUpstream, resp: aiohttp.ClientResponse) -> GatewayError | None:
    """A 200 that is not ``text/event-stream`` (an HTML error page from a proxy, a JSON body from a
    server that ignored ``stream: true``) named as what it is, instead of an empty stream."""
    ctype = resp.headers.get("Content-Type", "")
    if ctype.split(";", 1)[0].strip().lower() == "text/event-stream":
        return None
    raw = await read_error_body(resp)
    snippet = " ".join(raw[:200].decode("utf-8", "replace").split())
    return upstream.redact(
        GatewayError(
            "upstream_bad_response",
            f"{upstream.name} answered HTTP {resp.status} with Content-Type {ctype[:100] or '(none)'!r}, "
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

    async def post(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        """``headers``: this call's own (ChatCall.headers, e.g. ``traceparent``) on top of the provider's."""
        url = self.base_url + path
        sent = self._headers if not headers else {**self._headers, **headers}
        try:
            return await self._session.get().post(url, data=orjson.dumps(body), headers=sent)
        except TimeoutError:
            raise GatewayError(
                "upstream_timeout",
                f"{self.name} did not answer within {self._session.connect_timeout:g} s",
                retryable=True,
                extra={"provider": self.name},
            ) from None
        except aiohttp.ClientError as exc:
            raise self.redact(
                GatewayError(
                    "upstream_unavailable",
                    f"cannot reach {self.name} at {self.base_url}: {exc}",
                    retryable=True,
                    extra={"provider": self.name},
                )
            ) from None

    def redact(self, err: GatewayError) -> GatewayError:
        """Provider keys never reach a client: scrub the key from any message."""
        if self.api_key and self.api_key in err.message:
            err.message = err.message.replace(self.api_key, "[redacted]")
            err.args = (err.message,)
        return err

    async def aclose(self) -> None:
        return None
