"""FrameWriter: RFC 6455 server frames written straight to the transport, and corking."""

from __future__ import annotations

from tokenwire.server.wsframe import WRITE_BUFFER_LIMIT, FrameWriter

DRAIN = object()  #: what the protocol's drain returns: the caller awaits it


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.buffered


class FakeWriter:
    use_mask = False
    compress = 0

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.protocol = type("P", (), {"_drain_helper": staticmethod(lambda: DRAIN)})()


class FakeWS:
    closed = False

    def __init__(self) -> None:
        self._writer = FakeWriter()


def writer() -> tuple[FrameWriter, FakeTransport]:
    ws = FakeWS()
    return FrameWriter(ws), ws._writer.transport  # type: ignore[arg-type]


def test_frames_have_the_right_header_for_each_length() -> None:
    w, t = writer()
    for n in (0, 125, 126, 65535, 65536):
        assert w.write(b"x" * n) is None
    assert t.writes[0] == b"\x81\x00"
    assert t.writes[1][:2] == b"\x81\x7d" and len(t.writes[1]) == 2 + 125
    assert t.writes[2][:4] == b"\x81\x7e\x00\x7e" and len(t.writes[2]) == 4 + 126
    assert t.writes[3][:4] == b"\x81\x7e\xff\xff"
    assert t.writes[4][:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")


def test_corked_frames_leave_in_one_write_in_order() -> None:
    w, t = writer()
    assert w.cork() is True
    assert w.cork() is False  # already corked (two subscribers on one socket)
    for token in (b"a", b"bb", b"ccc"):
        assert w.write(token) is None
    assert t.writes == []
    assert w.uncork() is None
    assert t.writes == [b"\x81\x01a\x81\x02bb\x81\x03ccc"]
    w.write(b"d")  # uncorked again: straight through
    assert t.writes[-1] == b"\x81\x01d"
    assert w.uncork() is None and len(t.writes) == 2  # nothing corked: nothing written


def test_uncork_reports_backpressure_like_write() -> None:
    w, t = writer()
    w.cork()
    w.write(b"x")
    t.buffered = WRITE_BUFFER_LIMIT + 1
    assert w.uncork() is DRAIN  # the caller must wait, as after a plain write
