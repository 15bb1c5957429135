"""W3C traceparent parsing, the v1 frame's field, per-generation trace ids, and the OTel switch."""

from __future__ import annotations

import sys

import pytest

from tokenwire.protocol.errors import GatewayError
from tokenwire.protocol.frames import V1_CHAT_FIELDS, Chat, Limits, parse_frame
from tokenwire.protocol.tracecontext import format_traceparent, parse_traceparent
from tokenwire.runtime.tracing import INSTALL_HINT, start_telemetry, start_trace, telemetry_wanted

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_gives_its_ids_and_flags() -> None:
    parsed = parse_traceparent(TP)
    assert parsed == (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1)
    assert format_traceparent(*parsed) == TP
    # a later version may carry more fields; the first four are read as version 00's
    assert parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra")[2] == 0


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is forbidden
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case hex
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  # version 00 has exactly 4 fields
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # 31 hex digits
        "x" * 600,
        17,
        None,
    ],
)
def test_an_invalid_traceparent_is_ignored(bad: object) -> None:
    assert parse_traceparent(bad) is None


def test_the_v1_chat_frame_takes_a_traceparent_and_refuses_a_bad_one() -> None:
    chat = parse_frame(f'{{"type":"chat","id":"c1","content":"hi","traceparent":"{TP}"}}', Limits())
    assert isinstance(chat, Chat) and chat.traceparent == TP
    assert "traceparent" in V1_CHAT_FIELDS
    with pytest.raises(GatewayError) as err:
        parse_frame('{"type":"chat","id":"c1","content":"hi","traceparent":"00-abc"}', Limits())
    assert err.value.code == "bad_request" and '"traceparent" must be a W3C traceparent' in err.value.message
    assert err.value.extra.get("id") == "c1"
    with pytest.raises(GatewayError) as err:
        parse_frame('{"type":"chat","id":"c1","content":"hi","traceparnet":"x"}', Limits())
    assert 'did you mean "traceparent"' in err.value.message


def test_a_generation_is_a_child_of_the_callers_span_and_each_attempt_gets_its_own_span_id() -> None:
    ids = start_trace(TP)
    assert (ids.trace_id, ids.parent_id, ids.flags) == (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1)
    assert ids.span_id not in (0, ids.parent_id)
    (a, ha), (b, hb) = ids.attempt(), ids.attempt()
    assert a != b and a != ids.span_id
    assert ha == {"traceparent": f"00-4bf92f3577b34da6a3ce929d0e0e4736-{a:016x}-01"}
    assert parse_traceparent(hb["traceparent"]) == (ids.trace_id, b, 1)
    # the caller's sampling decision is passed on
    unsampled = start_trace(TP[:-2] + "00")
    assert unsampled.attempt()[1]["traceparent"].endswith("-00")


def test_without_a_valid_traceparent_a_generation_starts_a_new_sampled_trace() -> None:
    for given in (None, "garbage"):
        ids = start_trace(given)
        assert ids.parent_id is None and ids.flags == 1 and ids.trace_id > 0
    assert start_trace(None).trace_id != start_trace(None).trace_id


def test_export_is_on_only_with_an_otlp_endpoint_and_not_disabled() -> None:
    assert not telemetry_wanted({})
    assert telemetry_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert telemetry_wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert not telemetry_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})


class _Registry:
    tracing = False

    def __init__(self) -> None:
        self.on_finish: list = []


def test_without_the_extra_one_line_says_how_to_install_it_and_the_gateway_carries_on(monkeypatch, capsys) -> None:
    monkeypatch.delitem(sys.modules, "tokenwire.runtime.telemetry", raising=False)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if it were not installed
    registry = _Registry()
    assert start_telemetry(registry, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) is None
    err = capsys.readouterr().err
    assert err == INSTALL_HINT + "\n" and "pip install 'tokenwire[otel]'" in err
    assert registry.tracing is False and registry.on_finish == []
    assert start_telemetry(registry, {}) is None and capsys.readouterr().err == ""  # not asked for: silent
