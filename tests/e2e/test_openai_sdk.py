"""The official ``openai`` SDK against the gateway, changing only ``base_url``."""

from __future__ import annotations

import openai
import pytest

from tokenwire.simulate.reply import reply_tokens


def expected(prompt: str, n: int) -> str:
    return "".join(reply_tokens([{"role": "user", "content": prompt}], n))


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=gateway.http + "/v1", api_key="unused", max_retries=0, timeout=20) as c:
        yield c


def test_streaming(client) -> None:
    stream = client.chat.completions.create(
        model="gemini-2.5-flash",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        max_tokens=15,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected("stream please", 15)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 15


def test_non_streaming(client) -> None:
    reply = client.chat.completions.create(
        model="deepseek-v3.2", messages=[{"role": "user", "content": "whole"}], max_tokens=9
    )
    assert reply.choices[0].message.content == expected("whole", 9)
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens == 9


def test_models(client) -> None:
    ids = {m.id for m in client.models.list()}
    assert ids == {"gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-flash", "deepseek-v3.2"}


def test_errors_map_to_sdk_exceptions(client) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert "unknown model" in str(exc.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4.1", messages=[{"role": "wizard", "content": "x"}])


async def test_async_sdk_against_relay_with_upstream_429(relay) -> None:
    async with openai.AsyncOpenAI(base_url=relay.http + "/v1", api_key="unused", max_retries=0) as c:
        with pytest.raises(openai.RateLimitError) as exc:
            await c.chat.completions.create(
                model="gpt-4.1@fault=429", messages=[{"role": "user", "content": "x"}], stream=True
            )
        assert "Rate limit reached" in str(exc.value)
        stream = await c.chat.completions.create(
            model="gpt-4.1@tps=0", messages=[{"role": "user", "content": "ok"}], stream=True, max_tokens=6
        )
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
    assert text == expected("ok", 6)


@pytest.mark.parametrize("fault", ["cut:3", "error:3"])
async def test_a_reply_that_fails_after_some_text_is_an_error_not_a_whole_completion(relay, fault: str) -> None:
    """Not streamed: the SDK raises (502, the provider's failure) instead of returning a cut-short
    message with ``finish_reason: "stop"`` that looks complete. Streamed, the text so far arrives and
    then the error."""
    async with openai.AsyncOpenAI(base_url=relay.http + "/v1", api_key="unused", max_retries=0) as c:
        with pytest.raises(openai.InternalServerError) as exc:
            await c.chat.completions.create(
                model=f"gpt-4.1@tps=0@fault={fault}", messages=[{"role": "user", "content": "x"}], max_tokens=20
            )
        assert exc.value.status_code == 502
        stream = await c.chat.completions.create(
            model=f"gpt-4.1@tps=0@fault={fault}", messages=[{"role": "user", "content": "x"}], stream=True
        )
        text = []
        with pytest.raises(openai.APIError):
            async for ch in stream:
                if ch.choices:
                    text.append(ch.choices[0].delta.content or "")
    assert "".join(text) == expected("x", 3)


def test_a_malformed_tool_turn_is_a_bad_request_not_an_internal_error(client) -> None:
    """Every provider's request builder reads ``tool_calls`` as objects: a string there is the
    client's mistake (400, naming the field), whichever provider the model is on."""
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="gpt-4.1",
            messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": "x"}],
        )
    assert "messages[1].tool_calls must be a list" in str(exc.value)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "x"}], top_p=1.5, stream=True
        )
    assert "top_p" in str(exc.value)
