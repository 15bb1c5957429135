"""The server-side protocol v1 machine, frame by frame: no sockets, no event loop."""

from __future__ import annotations

import sys

import orjson
import pytest

from tokenwire.protocol import session as v1
from tokenwire.protocol.frames import Limits


def frame(**obj: object) -> str:
    return orjson.dumps(obj).decode()


def chat(id: str | None = None, **extra: object) -> str:
    obj: dict[str, object] = {"type": "chat", "content": "hi", **extra}
    if id is not None:
        obj["id"] = id
    return frame(**obj)


def machine(max_generations: int = 32) -> v1.V1Session[str]:
    return v1.V1Session(Limits(), max_generations)


def h(id: str) -> str:
    """The handle of generation ``id`` (one object per id: the machine compares handles by identity)."""
    return sys.intern("h:" + id)


def start(m: v1.V1Session[str], id: str, **extra: object) -> list[v1.Action]:
    """Feed a chat and report it started, with handle ``h(id)``."""
    (action,) = m.receive(chat(id, **extra))
    assert isinstance(action, v1.StartChat) and action.chat.id == id
    return m.started(id, h(id))


def error(actions: list[v1.Action]) -> v1.SendError:
    (action,) = actions
    assert isinstance(action, v1.SendError), action
    return action


def test_a_chat_becomes_a_start_and_the_started_generation_is_followed() -> None:
    m = machine()
    (action,) = m.receive(chat("a", model="gpt-4.1", stream_id="s_0123456789"))
    assert isinstance(action, v1.StartChat)
    assert action.chat.model == "gpt-4.1" and action.resumable is True
    assert not m.busy()  # starting is not running yet
    assert m.started("a", "h:a") == []
    assert m.runs == {"a": "h:a"} and m.busy()


def test_generations_without_an_id_are_numbered_on_the_socket() -> None:
    m = machine()
    ids = []
    for text in (frame(content="x"), frame(model="m", messages=[{"role": "user", "content": "x"}])):
        (action,) = m.receive(text)
        assert isinstance(action, v1.StartChat)
        ids.append(action.chat.id)
        m.started(action.chat.id, "h")
    (attach,) = m.receive(frame(type="attach", stream_id="s_0123456789"))
    assert isinstance(attach, v1.Attach)
    assert [*ids, attach.req.id] == ["g0", "g1", "g2"]
    m.receive(frame(type="ping"))  # other frames take no number
    (action,) = m.receive(frame(content="y"))
    assert isinstance(action, v1.StartChat) and action.chat.id == "g3"


def test_duplicate_id_while_running_or_starting() -> None:
    m = machine()
    start(m, "a")
    err = error(m.receive(chat("a")))
    assert err.err.code == "duplicate_id" and err.id == "a"
    (action,) = m.receive(chat("b"))  # not reported started yet
    assert isinstance(action, v1.StartChat)
    assert error(m.receive(chat("b"))).err.code == "duplicate_id"
    assert error(m.receive(frame(type="attach", id="a", stream_id="s_0123456789"))).err.code == "duplicate_id"
    m.ended("a", h("a"))
    (again,) = m.receive(chat("a"))  # ended: the id is free again
    assert isinstance(again, v1.StartChat)


def test_per_socket_generation_cap_counts_starting_ones_and_frees_on_failure() -> None:
    m = machine(max_generations=2)
    start(m, "a")
    m.receive(chat("b"))  # starting
    err = error(m.receive(chat("c")))
    assert err.err.code == "rate_limited" and err.err.retryable and err.id == "c"
    assert err.limit == "generations_per_socket"
    assert orjson.loads(err.payload) == {
        "type": "error",
        "id": "c",
        "code": "rate_limited",
        "message": "2 generations are already running on this socket",
        "retryable": True,
        "retry_after": 1,
    }
    m.failed("b")  # admission refused it
    (action,) = m.receive(chat("c"))
    assert isinstance(action, v1.StartChat)


def test_cancel_running_raced_with_end_and_unknown() -> None:
    m = machine()
    start(m, "a")
    assert m.receive(frame(type="cancel", id="a")) == [v1.Cancel("a", "h:a")]
    assert m.ended("a", h("a")) is True
    assert m.receive(frame(type="cancel", id="a")) == []  # raced with its end: nothing to do
    err = error(m.receive(frame(type="cancel", id="zz")))
    assert err.err.code == "not_found" and err.id == "zz"


def test_ended_of_an_earlier_generation_with_the_same_id_is_ignored() -> None:
    m = machine()
    start(m, "a")
    m.ended("a", h("a"))
    m.receive(chat("a"))
    m.started("a", "h:a2")
    assert m.ended("a", h("a")) is False  # the first one's late notice
    assert m.runs == {"a": "h:a2"}


def test_ended_ids_are_remembered_for_a_bounded_while() -> None:
    m = v1.V1Session(Limits(), 32, remember_ended=2)
    for id in ("a", "b", "c"):
        start(m, id)
        m.ended(id, h(id))
    assert m.receive(frame(type="cancel", id="c")) == []
    assert error(m.receive(frame(type="cancel", id="a"))).err.code == "not_found"


def test_socket_pause_applies_to_every_generation_and_to_later_ones() -> None:
    m = machine()
    start(m, "a")
    start(m, "b")
    assert m.receive(frame(type="pause")) == [
        v1.SetPause("a", "h:a", True, by_socket=True),
        v1.SetPause("b", "h:b", True, by_socket=True),
    ]
    assert m.paused
    assert start(m, "c") == [v1.SetPause("c", "h:c", True, by_socket=True)]
    assert m.receive(frame(type="resume")) == [
        v1.SetPause(id, f"h:{id}", False, by_socket=True) for id in ("a", "b", "c")
    ]
    assert start(m, "d") == []


def test_pause_by_id_is_the_generation_s_own() -> None:
    m = machine()
    start(m, "a")
    assert m.receive(frame(type="pause", id="a")) == [v1.SetPause("a", "h:a", True, by_socket=False)]
    assert not m.paused
    assert m.receive(frame(type="resume", id="a")) == [v1.SetPause("a", "h:a", False, by_socket=False)]
    m.ended("a", h("a"))
    assert m.receive(frame(type="pause", id="a")) == []
    assert error(m.receive(frame(type="resume", id="nope"))).err.code == "not_found"


def test_content_frames_share_the_socket_s_own_conversation() -> None:
    m = machine()
    (first,) = m.receive(frame(content="one"))
    (second,) = m.receive(frame(content="two"))
    assert isinstance(first, v1.StartChat) and isinstance(second, v1.StartChat)
    assert first.conversation_id is not None and first.conversation_id.startswith("c_")
    assert second.conversation_id == first.conversation_id == m.conversation_id
    (own,) = m.receive(frame(content="three", conversation_id="mine"))
    assert isinstance(own, v1.StartChat) and own.conversation_id == "mine"
    (plain,) = m.receive(chat("x", content=None, messages=[{"role": "user", "content": "x"}]))
    assert isinstance(plain, v1.StartChat) and plain.conversation_id is None  # messages: stateless
    assert other_socket_conversation() != first.conversation_id


def other_socket_conversation() -> str | None:
    (action,) = machine().receive(frame(content="x"))
    assert isinstance(action, v1.StartChat)
    return action.conversation_id


@pytest.mark.parametrize(
    ("data", "payload"),
    [(None, b'{"type":"pong"}'), ("still here", b'{"type":"pong","data":"still here"}')],
)
def test_ping_is_answered_with_a_pong(data: object, payload: bytes) -> None:
    obj: dict[str, object] = {"type": "ping"}
    if data is not None:
        obj["data"] = data
    (action,) = machine().receive(frame(**obj))
    assert action == v1.SendPong(data) and action.payload == payload


def test_bad_frames_become_errors_with_their_id() -> None:
    m = machine()
    err = error(m.receive("{not json"))
    assert err.err.code == "invalid_json" and err.id is None
    err = error(m.receive(frame(type="chat", id="q", model=7, content="x")))
    assert err.err.code == "bad_request" and err.id == "q" and "id" not in err.err.extra
    assert orjson.loads(err.payload)["id"] == "q"
    assert error(m.receive(frame(type="nope"))).err.code == "unknown_type"
    assert error(m.binary()).err.code == "unsupported_frame"


def test_attach_replays_the_log_before_live_events_each_exactly_once() -> None:
    m = machine()
    (action,) = m.receive(frame(type="attach", id="r", stream_id="s_0123456789", last_seq=3))
    assert isinstance(action, v1.Attach) and action.req.last_seq == 3
    replay, actions = m.attached("r", "h:r", [b"4", b"5"])
    assert actions == [] and m.runs == {"r": "h:r"}
    replay.append(b"6")  # live, while the log is being written
    assert replay.take() == [b"4", b"5", b"6"]
    replay.append(b"7")  # live, while that batch is being written
    replay.append(b"8")
    assert replay.take() == [b"7", b"8"]
    assert replay.take() == []  # everything out: live from here, written directly
    assert replay.done
    with pytest.raises(RuntimeError):
        replay.append(b"9")  # a writer that kept queueing would lose it: refused loudly


def test_attach_while_the_socket_is_paused_pauses_the_attached_generation() -> None:
    m = machine()
    m.receive(frame(type="pause"))
    m.receive(frame(type="attach", id="r", stream_id="s_0123456789"))
    _, actions = m.attached("r", "h:r", [])
    assert actions == [v1.SetPause("r", "h:r", True, by_socket=True)]


def test_attach_to_an_ended_stream_or_a_failed_one_leaves_nothing_running() -> None:
    m = machine()
    m.receive(frame(type="attach", id="r", stream_id="s_0123456789"))
    m.failed("r")
    assert not m.busy()
    (again,) = m.receive(frame(type="attach", id="r", stream_id="s_0123456789"))
    assert isinstance(again, v1.Attach)


def test_a_cut_cancels_every_generation_with_its_reason_and_clear_forgets_them() -> None:
    m = machine()
    start(m, "a")
    start(m, "b")
    assert m.cut("slow_consumer") == [v1.Cancel("a", "h:a", "slow_consumer"), v1.Cancel("b", "h:b", "slow_consumer")]
    assert m.clear() == ["h:a", "h:b"]
    assert not m.busy() and m.runs == {}


def test_the_machine_does_no_io() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(v1))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"asyncio", "aiohttp", "socket", "selectors"}, imported
