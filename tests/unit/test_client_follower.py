"""The client-side protocol v1 machine (tokenwire.protocol.follower), with no socket at all:
frames in, actions and frames out."""

from __future__ import annotations

from typing import Any

import pytest

from tokenwire.protocol.events import REASONING, TOKEN, TOOL_CALL
from tokenwire.protocol.follower import (
    Ended,
    Failed,
    Send,
    Stall,
    StrayError,
    StreamState,
    V1Client,
    Wake,
)


def chat(id: str = "r1", stream_id: str = "s_0123456789") -> dict[str, Any]:
    return {"type": "chat", "id": id, "stream_id": stream_id, "messages": [{"role": "user", "content": "hi"}]}


def opened(
    v1: V1Client, id: str = "r1", *, high: int = 100, low: int = 20, cap: int = 1000, now: float = 0.0
) -> StreamState:
    st = StreamState(id, chat(id, f"s_{id}_0123456789"), high_water=high, low_water=low, max_buffer=cap)
    v1.begin(st)
    assert v1.open(st, now) is st.chat
    return st


def start(id: str = "r1") -> dict[str, Any]:
    return {"type": "start", "id": id, "seq": 0, "stream_id": f"s_{id}_0123456789", "conversation_id": "c_1"}


def tok(seq: int, content: str, id: str = "r1") -> dict[str, Any]:
    return {"type": "token", "id": id, "seq": seq, "content": content}


def end(seq: int, id: str = "r1") -> dict[str, Any]:
    return {"type": "end", "id": id, "seq": seq, "status": "completed", "finish_reason": "stop"}


def drain(st: StreamState) -> list[tuple[int, Any]]:
    out = []
    while (item := st.take()) is not None:
        out.append(item)
    return out


def sends(actions: list) -> list[dict[str, Any]]:
    return [a.frame for a in actions if isinstance(a, Send)]


def test_in_order_delivery_with_reasoning_and_tool_calls() -> None:
    v1 = V1Client()
    st = opened(v1, now=10.0)
    assert st.t0 == 10.0 and v1.streams == {"r1": st}
    assert v1.receive(start(), 10.1) == ()
    assert st.start is not None and st.start["conversation_id"] == "c_1"
    actions = [
        v1.receive({"type": "reasoning", "id": "r1", "seq": 1, "content": "hmm"}, 10.2),
        v1.receive(tok(2, "Hel"), 10.3),
        v1.receive({"type": "tool_call", "id": "r1", "seq": 3, "delta": {"index": 0, "name": "f"}}, 10.4),
        v1.receive(tok(4, "lo"), 10.5),
    ]
    assert actions == [(Wake(st),)] * 4
    assert st.t_first == 10.3, "the first *token*, not the first event"
    assert st.last_seq == 4 and st.max_buffered == 4
    assert drain(st) == [(REASONING, "hmm"), (TOKEN, "Hel"), (TOOL_CALL, {"index": 0, "name": "f"}), (TOKEN, "lo")]
    assert v1.receive(end(5), 10.6) == (Ended(st),)
    assert st.done and st.end is not None and st.end["status"] == "completed"
    assert v1.streams == {}


def test_duplicates_dropped_exactly_once_across_a_replay_straddling_last_seq() -> None:
    v1 = V1Client()
    st = opened(v1)
    v1.receive(start(), 0)
    for seq, text in ((1, "a"), (2, "b"), (3, "c")):
        v1.receive(tok(seq, text), 0)
    assert v1.receive(tok(2, "b"), 0) == (), "a plain duplicate"
    # the socket drops; the new socket's attach asks for everything after seq 3 ...
    assert v1.reattach_frames() == [{"type": "attach", "id": "r1", "stream_id": st.stream_id, "last_seq": 3}]
    # ... and the replay starts a little earlier than that (it straddles last_seq)
    for seq, text in ((1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")):
        v1.receive(tok(seq, text), 0)
    assert v1.receive(tok(5, "e"), 0) == ()
    assert v1.receive(end(6), 0) == (Ended(st),)
    assert [v for _, v in drain(st)] == ["a", "b", "c", "d", "e"]
    assert st.last_seq == 6
    assert v1.receive(end(6), 0) == (), "after the end the id is unknown: ignored"


def test_a_gap_fails_the_stream_with_stream_gap() -> None:
    v1 = V1Client()
    st = opened(v1)
    v1.receive(start(), 0)
    v1.receive(tok(1, "a"), 0)
    v1.receive(tok(2, "b"), 0)
    actions = v1.receive(tok(5, "e"), 0)
    assert actions == (Failed(st, "stream_gap", "events 3..4 are missing", None),)
    assert st.done and "r1" not in v1.streams
    assert [v for _, v in drain(st)] == ["a", "b"], "what came before the gap is still delivered"
    assert st.last_seq == 2
    assert v1.receive(tok(6, "f"), 0) == (), "nothing after the failure reaches the stream"


def test_watermarks_pause_and_resume_exactly_once_each() -> None:
    v1 = V1Client()
    st = opened(v1, high=4, low=1, cap=50)
    v1.receive(start(), 0)
    pauses: list[dict[str, Any]] = []
    for seq in range(1, 11):  # 10 tokens, nobody consumes: pause at the 4th, never again
        actions = v1.receive(tok(seq, str(seq)), 0)
        assert actions[0] == Wake(st)
        pauses += sends(actions)
        if seq == 4:
            assert sends(actions) == [{"type": "pause", "id": "r1"}]
    assert pauses == [{"type": "pause", "id": "r1"}]
    assert st.paused and st.pauses == 1 and st.max_buffered == 10
    resumes: list[dict[str, Any]] = []
    taken = []
    while (item := st.take()) is not None:
        taken.append(item[1])
        frame = st.consumed()
        if frame is not None:
            assert len(st.items) == 1, "resume exactly at low_water"
            assert st.consumed() is None, "not twice while the first one is being sent"
            st.resume_sent(True)
            resumes.append(frame)
    assert taken == [str(i) for i in range(1, 11)]
    assert resumes == [{"type": "resume", "id": "r1"}]
    assert not st.paused and (st.pauses, st.resumes) == (1, 1)
    # a second crossing pauses again, once
    again = [f for seq in range(11, 16) for f in sends(v1.receive(tok(seq, "x"), 0))]
    assert again == [{"type": "pause", "id": "r1"}] and st.pauses == 2


def test_a_resume_that_could_not_be_sent_is_asked_again() -> None:
    v1 = V1Client()
    st = opened(v1, high=2, low=0)
    v1.receive(start(), 0)
    for seq in range(1, 3):
        v1.receive(tok(seq, "t"), 0)
    assert st.paused
    st.take()
    assert st.consumed() is None  # 1 left, low_water is 0
    st.take()
    frame = st.consumed()
    assert frame == {"type": "resume", "id": "r1"}
    st.resume_sent(False)  # the socket was down
    assert st.paused and st.resumes == 0 and not st.resume_pending
    assert st.consumed() == frame


def test_max_buffer_stalls_the_reader_unless_closed() -> None:
    v1 = V1Client()
    st = opened(v1, high=2, low=1, cap=3)
    v1.receive(start(), 0)
    assert v1.receive(tok(1, "a"), 0) == (Wake(st),)
    assert v1.receive(tok(2, "b"), 0) == (Wake(st), Send({"type": "pause", "id": "r1"}))
    assert v1.receive(tok(3, "c"), 0) == (Wake(st), Stall(st))
    other = opened(v1, "r2", high=2, low=1, cap=2)
    other.closed = True  # its consumer left: never stall the socket for it
    v1.receive(start("r2"), 0)
    assert v1.receive(tok(1, "a", "r2"), 0) == (Wake(other),)
    assert v1.receive(tok(2, "b", "r2"), 0) == (Wake(other), Send({"type": "pause", "id": "r2"}))


def test_reattach_frames_carry_last_seq_and_restate_pause() -> None:
    v1 = V1Client()
    never = opened(v1, "a", high=3, low=1)
    still = opened(v1, "b", high=3, low=1)
    drained = opened(v1, "c", high=3, low=1)
    for st in (never, still, drained):
        v1.receive(start(st.id), 0)
    v1.receive(tok(1, "x", "a"), 0)
    for seq in range(1, 5):
        v1.receive(tok(seq, "x", "b"), 0)
        v1.receive(tok(seq, "x", "c"), 0)
    assert (never.paused, still.paused, drained.paused) == (False, True, True)
    # c's consumer took its buffer down to low_water while the socket was down: its resume was lost
    for _ in range(3):
        drained.take()
        frame = drained.consumed()
    assert frame == {"type": "resume", "id": "c"}
    drained.resume_sent(False)
    assert v1.reattach_frames() == [
        {"type": "attach", "id": "a", "stream_id": never.stream_id, "last_seq": 1},
        {"type": "attach", "id": "b", "stream_id": still.stream_id, "last_seq": 4},
        {"type": "pause", "id": "b"},
        {"type": "attach", "id": "c", "stream_id": drained.stream_id, "last_seq": 4},
        {"type": "resume", "id": "c"},
    ]
    assert still.paused and not drained.paused
    # a stream paused and resumed before the drop is restated as resumed
    assert v1.reattach_frames()[-1] == {"type": "resume", "id": "c"}


def test_end_and_error_finish_a_stream() -> None:
    v1 = V1Client()
    ok = opened(v1, "ok")
    bad = opened(v1, "bad")
    v1.receive(start("ok"), 0)
    v1.receive(start("bad"), 0)
    err = {
        "type": "error",
        "id": "bad",
        "seq": 1,
        "code": "upstream_rate_limited",
        "message": "slow down",
        "retryable": True,
    }
    assert v1.receive(err, 0) == (Failed(bad, "upstream_rate_limited", "slow down", err),)
    assert bad.done and list(v1.streams) == ["ok"]
    assert v1.receive(end(2, "bad"), 0) == (), "the end after the error: the id is gone"
    assert v1.receive(end(1, "ok"), 0) == (Ended(ok),)
    assert ok.done and v1.streams == {}
    assert ok.end is not None and ok.end["seq"] == 1


def test_not_found_is_ignored() -> None:
    v1 = V1Client()
    st = opened(v1)
    v1.receive(start(), 0)
    nf = {"type": "error", "id": "r1", "code": "not_found", "message": "no generation r1"}
    assert v1.receive(nf, 0) == ()
    assert not st.done and v1.streams == {"r1": st}
    assert v1.receive(tok(1, "a"), 0) == (Wake(st),)


def test_stream_expired_before_start_resends_the_chat_once() -> None:
    v1 = V1Client()
    st = opened(v1)
    expired = {"type": "error", "id": "r1", "code": "stream_expired", "message": "unknown stream"}
    assert v1.receive(expired, 0) == (Send(st.chat),)
    assert st.retried_chat and not st.done
    failed = v1.receive(expired, 0)
    assert failed == (Failed(st, "stream_expired", "unknown stream", expired),), "only once"
    assert st.done and v1.streams == {}


def test_stream_expired_after_start_is_a_failure() -> None:
    v1 = V1Client()
    st = opened(v1)
    v1.receive(start(), 0)
    expired = {"type": "error", "id": "r1", "code": "stream_expired", "message": "gone"}
    assert v1.receive(expired, 0) == (Failed(st, "stream_expired", "gone", expired),)
    assert not st.retried_chat


def test_errors_outside_a_generation_are_stray() -> None:
    v1 = V1Client()
    opened(v1)
    bad = {"type": "error", "id": None, "code": "invalid_json", "message": "not JSON"}
    assert v1.receive(bad, 0) == (StrayError(bad),)
    unknown = {"type": "error", "id": "nope", "code": "x"}
    assert v1.receive(unknown, 0) == (StrayError(unknown),)
    assert v1.receive({"type": "pong"}, 0) == ()
    assert v1.receive(tok(1, "a", "nope"), 0) == ()


def test_close_cancels_only_a_running_generation() -> None:
    v1 = V1Client()
    st = opened(v1)
    v1.receive(start(), 0)
    v1.receive(tok(1, "a"), 0)
    assert st.items
    assert v1.close(st) == {"type": "cancel", "id": "r1"}
    assert st.closed and st.done and not st.items and v1.streams == {}
    assert v1.close(st) is None, "closing twice sends nothing"
    finished = opened(v1, "r2")
    v1.receive(end(0, "r2"), 0)
    assert v1.close(finished) is None, "it already ended"
    never = StreamState("r3", chat("r3"), high_water=2, low_water=1, max_buffer=4)
    assert v1.close(never) is None, "never started"


def test_closing_the_client_cancels_what_runs_and_drops_everything() -> None:
    v1 = V1Client()
    a, b = opened(v1, "a"), opened(v1, "b")
    unsent = StreamState("c", chat("c"), high_water=2, low_water=1, max_buffer=4)
    v1.streams["c"] = unsent  # registered but its consumer never started it
    assert v1.cancel_frames() == [{"type": "cancel", "id": "a"}, {"type": "cancel", "id": "b"}]
    assert v1.drop_all() == [a, b, unsent]
    assert all(st.done for st in (a, b, unsent)) and v1.streams == {}
    assert v1.cancel_frames() == [] and v1.reattach_frames() == []


def test_open_failed_marks_the_stream_over() -> None:
    v1 = V1Client()
    st = StreamState("r1", chat(), high_water=2, low_water=1, max_buffer=4)
    v1.begin(st)
    v1.open_failed(st)
    assert st.opened and st.done and st.closed and v1.streams == {}


@pytest.mark.parametrize(("high", "low", "cap"), [(5, 5, 10), (5, -1, 10), (5, 1, 4)])
def test_watermarks_are_checked(high: int, low: int, cap: int) -> None:
    with pytest.raises(ValueError):
        StreamState("r1", chat(), high_water=high, low_water=low, max_buffer=cap)


def test_a_reused_id_wakes_the_new_stream() -> None:
    v1 = V1Client()
    first = opened(v1)
    v1.receive(start(), 0)
    assert v1.receive(tok(1, "a"), 0) == (Wake(first),)
    v1.receive(end(2), 0)
    second = opened(v1)
    v1.receive(start(), 0)
    assert v1.receive(tok(1, "b"), 0) == (Wake(second),)
    assert [v for _, v in drain(first)] == ["a"] and [v for _, v in drain(second)] == ["b"]
