"""Incremental Server-Sent Events decoder (bytes in, events out, no I/O).

Follows the WHATWG event-stream rules that matter for LLM providers: LF, CR
and CRLF line endings (a CRLF may be split across reads), comments (``: ping``),
``data:`` with or without the space, multi-line data joined by LF, named events
and a leading BOM. It works on bytes and splits only on CR/LF, so a multi-byte
character split across reads, or a U+2028 inside JSON, never breaks a line
(``str.splitlines`` would).
"""

from __future__ import annotations

__all__ = ["SSEDecoder", "SSEError", "SSEEvent"]

_BOM = b"\xef\xbb\xbf"
#: b"\r" as a byte value: ``bytes in bytes`` first tries its needle as an integer, and that
#: raises and clears a TypeError inside CPython 3.11 (~1,800 instructions, per token here)
_CR = 13
_LF = 10
_MAX_EVENT_LINES = 100_000  #: data lines in one event (bounds the size check's own cost too)


class SSEError(ValueError):
    """The byte stream is not a usable event stream (e.g. an endless line)."""


#: One dispatched event: ``(name, data)`` -- the name is ``"message"`` unless the event
#: was named; data is the raw bytes (multi-line data joined by LF). A plain tuple,
#: because the hot path makes one per token. ``SSEDecoder.last_event_id`` has the id.
SSEEvent = tuple[str, bytes]


class SSEDecoder:
    """Feed it network reads with :meth:`feed`; call :meth:`close` at end of stream."""

    __slots__ = ("_buf", "_data", "_event", "_last_id", "_max_event", "_max_line", "_started")

    def __init__(self, max_line: int = 8 * 1024 * 1024, max_event: int = 8 * 1024 * 1024) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event = ""
        self._last_id: str | None = None
        self._started = False
        self._max_line = max_line
        #: one event's data may not grow past this (a stream that never sends the blank line
        #: ending an event would otherwise grow memory without limit)
        self._max_event = max_event

    @property
    def last_event_id(self) -> str | None:
        return self._last_id

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode as much as ``chunk`` completes; keep the rest for the next call."""
        if self._started and not self._buf and not self._data:
            # One whole event and nothing else in this read: what a paced provider sends per token
            # (one chunk per read). The general path below splits it into lines to get the same
            # answer; this skips that. The tests are byte values (``_LF``, ``_CR``) on the payload
            # that is returned anyway: ``bytes.find`` parses an argument tuple and takes a buffer
            # of its needle (~630 instructions).
            payload = None
            if chunk[-2:] == b"\n\n":
                if chunk[:6] == b"data: ":  # OpenAI-compatible
                    payload = chunk[6:-2]
                    if _LF in payload or _CR in chunk:
                        payload = None
                elif chunk[:7] == b"event: ":  # a named event and its data line (Anthropic)
                    head, sep, rest = chunk.partition(b"\ndata: ")
                    data = rest[:-2]
                    if sep and _LF not in head and _LF not in data and _CR not in chunk:
                        self._event = ""
                        return [(head[7:].decode("utf-8", "replace") or "message", data)]
            elif chunk[-4:] == b"\r\n\r\n" and chunk[:6] == b"data: ":  # CRLF line ends (Gemini)
                payload = chunk[6:-4]
                if _LF in payload or _CR in payload:
                    payload = None
            if payload is not None:
                name = self._event or "message"
                self._event = ""
                return [(name, payload)]
        buf = self._buf + chunk if self._buf else chunk
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._buf = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[3:]
        hold = b""
        if _CR in buf:
            if buf.endswith(b"\r"):
                # Might be the first half of a CRLF: decide on the next read.
                hold = b"\r"
                buf = buf[:-1]
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        rest = lines.pop()
        if len(rest) > self._max_line:
            raise SSEError(f"event-stream line longer than {self._max_line} bytes")
        self._buf = rest + hold if hold else rest
        if not lines:
            return []
        return self._lines(lines)

    def close(self) -> list[SSEEvent]:
        """End of stream: a last event without its blank line is still dispatched.

        The spec discards it, but real servers sometimes end without the final
        blank line, and dropping a provider's last chunk would lose tokens.
        """
        events: list[SSEEvent] = []
        if self._buf:
            line = self._buf.rstrip(b"\r")
            self._buf = b""
            events = self._lines([line])
        if self._data:
            events.append(self._dispatch())
        return events

    def _lines(self, lines: list[bytes]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    out.append((self._event or "message", data[0] if len(data) == 1 else b"\n".join(data)))
                    data.clear()
                self._event = ""
                continue
            if line[0] == 58:  # b":" -> comment (": ping", ": OPENROUTER PROCESSING")
                continue
            if line[:5] == b"data:":  # the common case first
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
                continue
            colon = line.find(b":")
            if colon < 0:
                field, value = line, b""
            else:
                field = line[:colon]
                value = line[colon + 1 :]
                if value[:1] == b" ":
                    value = value[1:]
            if field == b"data":
                data.append(value)
            elif field == b"event":
                self._event = value.decode("utf-8", "replace")
            elif field == b"id":
                if b"\x00" not in value:
                    self._last_id = value.decode("utf-8", "replace")
            # "retry" and unknown fields are ignored, as the spec says.
        if data and (len(data) > _MAX_EVENT_LINES or sum(map(len, data)) > self._max_event):
            raise SSEError(f"event-stream event larger than {self._max_event} bytes (no blank line ends it)")
        return out

    def _dispatch(self) -> SSEEvent:
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        event = (self._event or "message", data)
        self._data = []
        self._event = ""
        return event
