"""``extract_key``: Anthropic's ``x-api-key`` header is a way to present a tokenwire key."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from tokenwire.auth.policy import extract_key
from tokenwire.protocol.errors import GatewayError


def key_of(headers: dict[str, str], path: str = "/v1/messages") -> str | None:
    return extract_key(make_mocked_request("POST", path, headers=headers))


def test_x_api_key_is_read() -> None:
    assert key_of({"x-api-key": "tw_abc"}) == "tw_abc"
    assert key_of({"X-Api-Key": " tw_abc "}) == "tw_abc"
    assert key_of({"x-api-key": ""}) is None
    assert key_of({}) is None


def test_authorization_comes_first_and_stays_strict() -> None:
    assert key_of({"Authorization": "Bearer tw_bearer", "x-api-key": "tw_other"}) == "tw_bearer"
    with pytest.raises(GatewayError) as exc:
        key_of({"Authorization": "Basic eA==", "x-api-key": "tw_other"})
    assert exc.value.code == "unauthorized"
    assert key_of({}, "/v1/messages?key=tw_q") == "tw_q"
