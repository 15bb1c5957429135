"""No route for an API path is a JSON error in the caller's dialect, not aiohttp's plain text."""

from __future__ import annotations

import aiohttp
import anthropic
import openai
import pytest


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/v1/chat/completions", 405, "POST"),
        ("PUT", "/api/chat", 405, "POST"),
        ("DELETE", "/v1/models", 405, "GET,HEAD"),
        ("POST", "/v1/chat/completions/", 404, None),
        ("POST", "/v1/chat/completion", 404, None),
    ],
)
async def test_openai_shaped(gateway, method: str, path: str, status: int, allow: str | None) -> None:
    async with aiohttp.ClientSession() as s, s.request(method, gateway.http + path) as r:
        assert r.status == status and r.content_type == "application/json"
        assert r.headers.get("Allow") == allow
        error = (await r.json())["error"]
    assert error["code"] == ("method_not_allowed" if status == 405 else "not_found")
    assert path in error["message"] and error["type"] == "invalid_request_error"


async def test_anthropic_shaped_under_v1_messages(gateway) -> None:
    async with aiohttp.ClientSession() as s, s.get(gateway.http + "/v1/messages") as r:
        assert r.status == 405 and r.headers["Allow"] == "POST"
        body = await r.json()
    assert body["type"] == "error" and "GET is not allowed on /v1/messages" in body["error"]["message"]


async def test_pages_keep_their_own_answers(gateway) -> None:
    async with aiohttp.ClientSession() as s, s.get(gateway.http + "/no-such-page") as r:
        assert r.status == 404 and r.content_type == "text/plain"


def test_the_sdks_raise_their_own_error_classes(gateway) -> None:
    with openai.OpenAI(base_url=gateway.http + "/v1", api_key="x", max_retries=0) as c:
        with pytest.raises(openai.NotFoundError) as exc:
            c.post("/chat/completion", body={}, cast_to=object)
        assert "no such endpoint" in exc.value.message
    with anthropic.Anthropic(base_url=gateway.http, api_key="x", max_retries=0) as a:
        with pytest.raises(anthropic.APIStatusError) as aexc:
            a.get("/v1/messages", cast_to=object)
        assert aexc.value.status_code == 405 and "not allowed" in aexc.value.message


def test_models_retrieve_in_both_sdks(gateway) -> None:
    """``models.retrieve``: the model in the SDK's own shape; an unknown id is its NotFoundError."""
    with openai.OpenAI(base_url=gateway.http + "/v1", api_key="x", max_retries=0) as c:
        model = c.models.retrieve("gpt-4.1")
        assert (model.id, model.object) == ("gpt-4.1", "model")
        assert model.id in [m.id for m in c.models.list()]
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("no-such-model")
    with anthropic.Anthropic(base_url=gateway.http, api_key="x", max_retries=0) as a:
        info = a.models.retrieve("claude-sonnet-4.5")
        assert (info.id, info.type) == ("claude-sonnet-4.5", "model")
        with pytest.raises(anthropic.NotFoundError):
            a.models.retrieve("no-such-model")
