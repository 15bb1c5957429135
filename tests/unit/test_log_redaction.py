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
