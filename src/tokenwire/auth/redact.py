"""Keep secrets out of log lines and client-bound error messages.

Gateway keys can arrive in a URL (``?key=`` for seed 000's client), so any log
line may carry one: a filter on every root handler rewrites the formatted
message and traceback of each record. Provider keys are masked by exact value
wherever they appear (an upstream may echo them in an error body).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["Redactor", "install_log_filter"]

_PATTERNS = [
    (re.compile(r"([?&](?:key|api_key|api-key|access_token)=)[^&\s\"']+", re.I), r"\1[redacted]"),
    (re.compile(r"(bearer[ .])[A-Za-z0-9._~+/=-]{8,}", re.I), r"\1[redacted]"),
    (re.compile(r"\btw_[A-Za-z0-9_-]{8,}"), "tw_[redacted]"),
]


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        #: exact secret strings (provider keys); short ones are ignored, they would mask ordinary words
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def secrets_only(self, text: str) -> str:
        """Mask the exact secrets only (client-bound messages keep everything else)."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text

    def __call__(self, text: str) -> str:
        """Mask secrets and anything shaped like a credential (log lines)."""
        text = self.secrets_only(text)
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
        return text


class _Filter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__("tokenwire-redact")
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_tokenwire_redacted", False):
            return True
        _client_mistake(record)
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        record.msg = self.redactor(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        record._tokenwire_redacted = True  # type: ignore[attr-defined]
        return True


def install_log_filter(redactor: Redactor) -> None:
    """Put the redacting filter on every root handler (aiohttp's access and error logs included)."""
    root = logging.getLogger()
    for handler in root.handlers:
        for f in list(handler.filters):
            if isinstance(f, _Filter):
                handler.removeFilter(f)
        handler.addFilter(_Filter(redactor))


def _client_mistake(record: logging.LogRecord) -> None:
    """aiohttp's record of a request it could not parse: one line at INFO, without the request.

    aiohttp logs a malformed request (e.g. a body with no length after ``Connection: close``) as
    an error with the parser's message, which quotes the bytes it stopped at: the client's
    prompt. A client's mistake is not the gateway's error, and prompts are never logged.
    """
    exc = record.exc_info[1] if record.exc_info else None
    if record.name != "aiohttp.server" or not isinstance(exc, HttpProcessingError):
        return
    what = (exc.message or "").strip().splitlines()
    record.msg = f"{record.getMessage()}: malformed HTTP request ({exc.code}, {what[0].rstrip(':') if what else '?'})"
    record.args = None
    record.exc_info = None
    record.exc_text = None
    record.levelno, record.levelname = logging.INFO, "INFO"
