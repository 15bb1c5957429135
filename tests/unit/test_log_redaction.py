"""The log filter masks client keys, keys in URLs and provider keys (in-process logging, no gateway)."""

from __future__ import annotations

import logging

from tokenwire.auth.redact import Redactor, install_log_filter


def test_log_redaction_masks_keys_urls_and_provider_keys(capfd) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        install_log_filter(Redactor(["sk-provider-secret-123"]))
        log = logging.getLogger("aiohttp.access")
        log.warning('127.0.0.1 "GET /ws/chat?key=%s HTTP/1.1" 101', "tw_abcdefghijklmnop")
        log.warning("upstream said: Incorrect API key sk-provider-secret-123; bearer.tw_zzzzzzzzzzzz")
        try:
            raise ValueError("boom sk-provider-secret-123")
        except ValueError:
            log.exception("failed")
    finally:
        root.removeHandler(handler)
    err = capfd.readouterr().err
    assert "tw_abcdefghijklmnop" not in err and "sk-provider-secret-123" not in err and "tw_zzzz" not in err
    assert "key=[redacted]" in err and "ValueError" in err


def test_a_request_aiohttp_cannot_parse_is_one_info_line_without_its_bytes(capfd) -> None:
    """aiohttp's parser error quotes the bytes it stopped at (the client's prompt): not logged."""
    from aiohttp.http_exceptions import BadHttpMessage

    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    try:
        install_log_filter(Redactor())
        log = logging.getLogger("aiohttp.server")
        try:
            raise BadHttpMessage('Data after `Connection: close`:\n\n  b\'{"content":"SECRET PROMPT"}\'\n  ^')
        except BadHttpMessage:
            log.exception("Error handling request from %s", "127.0.0.1")
        try:
            raise ValueError("a real bug")  # anything else aiohttp logs keeps its level and traceback
        except ValueError:
            log.exception("Error handling request")
    finally:
        root.removeHandler(handler)
    err = capfd.readouterr().err
    assert "SECRET" not in err
    assert (
        "INFO aiohttp.server Error handling request from 127.0.0.1: malformed HTTP request "
        "(400, Data after `Connection: close`)"
    ) in err
    assert "ERROR aiohttp.server Error handling request" in err and "ValueError: a real bug" in err
