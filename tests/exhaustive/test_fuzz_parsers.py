"""Property-based fuzzing of the frame parser and the HTTP request parser (hypothesis).

The property: whatever arrives, the parser returns a typed request or raises
:class:`GatewayError` whose event is valid JSON, never any other exception.
Case counts are printed at the end (``pytest -s``) and recorded in docs/security.md.
Set ``TOKENWIRE_FUZZ_EXAMPLES`` to run more.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenwire.dialects.openai_chat import parse_request
from tokenwire.protocol import frames as fr
from tokenwire.protocol.errors import GatewayError
from tokenwire.server.http_api import read_json_body

N = int(os.environ.get("TOKENWIRE_FUZZ_EXAMPLES", "2000"))
LIMITS = fr.Limits(max_frame_bytes=64 * 1024, max_messages=50)
pytestmark = pytest.mark.timeout(900)
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck), database=None)
COUNTS: dict[str, int] = {}

KEYS = [
    "type", "id", "model", "messages", "content", "system", "conversation_id", "params", "stream_id",
    "last_seq", "data", "stream", "role", "temperature", "max_tokens", "top_p", "stop", "tools", "n",
    "stream_options", "seed", "logit_bias", "user", "response_format", "x",
]  # fmt: skip
TYPES = ["chat", "cancel", "pause", "resume", "ping", "attach", "CHAT", "", None]
ROLES = ["system", "developer", "user", "assistant", "tool", "root", ""]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.sampled_from(TYPES[:-1] + ROLES + ["s_0123456789", "gpt-4.1", "g1", "-1"]),
)


def _nested(max_leaves: int) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=5),
            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=5),
        ),
        max_leaves=max_leaves,
    )


json_values = _nested(10)
small_json = _nested(4)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES)},
    optional={"content": st.one_of(st.text(max_size=30), small_json), "name": small_json},
)
frame_objects = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(TYPES) | json_values,
        "id": st.one_of(st.text(max_size=140), st.integers(-(2**63), 2**64 - 1), json_values),
        "model": st.one_of(st.sampled_from(["gpt-4.1", "", "x" * 201]), json_values),
        "messages": st.one_of(st.lists(message, max_size=55), small_json),
        "content": st.one_of(st.text(max_size=50), json_values),
        "system": json_values,
        "conversation_id": st.one_of(st.text(max_size=130), json_values),
        "stream_id": st.one_of(st.text(alphabet="abc_-0123456789", max_size=70), json_values),
        "params": st.one_of(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=5), json_values),
        "last_seq": json_values,
        "data": json_values,
        "temperature": json_values,
        "stream": json_values,
    },
)


def count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


def check_parse(data: str | bytes) -> None:
    try:
        req = fr.parse_frame(data, LIMITS, 7)
    except GatewayError as err:
        orjson.dumps(err.to_event(err.extra.get("id")))  # always encodable
        assert err.code in ("invalid_json", "bad_request", "unknown_type", "frame_too_large"), err
        return
    assert isinstance(req, fr.Chat | fr.Cancel | fr.Pause | fr.Resume | fr.Ping | fr.Attach)
    if isinstance(req, fr.Chat):
        assert (req.messages is None) != (req.content is None)
        assert req.messages is None or 0 < len(req.messages) <= LIMITS.max_messages
        assert req.owner is None  # a client can never set who is charged


@FUZZ
@given(frame_objects)
def test_fuzz_frame_objects(obj: dict[str, Any]) -> None:
    count("frame objects")
    check_parse(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode())


@FUZZ
@given(json_values)
def test_fuzz_frame_any_json(value: Any) -> None:
    count("frame any JSON")
    check_parse(orjson.dumps(value).decode())


@FUZZ
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_fuzz_frame_raw_text_and_bytes(data: str | bytes) -> None:
    count("frame raw text/bytes")
    check_parse(data)


@FUZZ
@given(st.integers(), st.sampled_from(["id", "last_seq", "max_tokens", "type", "data"]))
def test_fuzz_frame_big_numbers(n: int, field: str) -> None:
    """Integers of any size (past 64 bits orjson refuses them: invalid_json, not a crash)."""
    count("frame big numbers")
    check_parse(f'{{"type":"chat","content":"x","{field}":{n},"params":{{"max_tokens":{n}}}}}')
    check_parse(f'{{"type":"attach","stream_id":"s_01234567","last_seq":{n}}}')


@FUZZ
@given(st.binary(max_size=200), st.integers(0, 3000))
def test_fuzz_frame_mutated(junk: bytes, at: int) -> None:
    """Valid frames with bytes spliced in, and deep nesting."""
    count("frame mutated")
    good = b'{"type":"chat","id":"c1","messages":[{"role":"user","content":"hi"}],"params":{"max_tokens":3}}'
    at = at % (len(good) + 1)
    check_parse(good[:at] + junk + good[at:])
    check_parse(b"[" * (at + 1) + b"]" * (at + 1))


def check_http(body: Any) -> None:
    try:
        chat, stream, include_usage = parse_request(body, LIMITS)
    except GatewayError as err:
        orjson.dumps(err.to_openai())
        assert 400 <= err.http_status < 500, err
        return
    assert isinstance(stream, bool) and isinstance(include_usage, bool)
    assert chat.messages and chat.owner is None


http_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.sampled_from(["gpt-4.1", ""]), small_json),
        "messages": st.one_of(st.lists(message, max_size=55), small_json),
        "stream": small_json,
        "stream_options": small_json,
        "n": small_json,
        "temperature": small_json,
        "max_tokens": small_json,
        "conversation_id": small_json,
        "tools": small_json,
        "store": small_json,
        "evil": small_json,
    },
)


@FUZZ
@given(http_bodies)
def test_fuzz_http_chat_bodies(body: dict[str, Any]) -> None:
    count("HTTP chat bodies")
    check_http(body)


class _Content:
    """A request body already received whole (read in as many calls as the reader makes)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    async def read(self, n: int) -> bytes:
        chunk, self.raw = self.raw[:n], self.raw[n:]
        return chunk


@FUZZ
@given(st.one_of(st.binary(max_size=300), json_values.map(orjson.dumps), http_bodies.map(orjson.dumps)))
def test_fuzz_http_raw_bodies(raw: bytes) -> None:
    """The body reader and parser together, as a request delivers them."""
    count("HTTP raw bodies")
    request = SimpleNamespace(content_length=len(raw), content=_Content(raw), app={})  # no connection guard
    coro = read_json_body(request, 1024)  # type: ignore[arg-type]
    try:
        coro.send(None)  # the fake content never suspends: one step runs it to the end
        raise AssertionError("read_json_body suspended")
    except StopIteration as done:
        body = done.value
    except GatewayError as err:
        assert err.code in ("invalid_json", "bad_request", "frame_too_large")
        return
    check_http(body)


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    total = sum(COUNTS.values())
    lines = [f"  {name}: {n}" for name, n in COUNTS.items()]
    print(f"\nfuzz cases run: {total}\n" + "\n".join(lines))
