"""Protocol v1 (docs/protocol.md), tokenwire's own socket dialect; seed 002's page reads it too.

Every event is already encoded once by the run, without its id; a socket's frame is
that encoding behind the generation's id prefix (``{"id":"c1",``), so encoding is
one concatenation per token. Requests are parsed by :mod:`tokenwire.protocol.frames`.
"""

from __future__ import annotations

from typing import Any

from ..protocol.stream import id_prefix

__all__ = ["V1Encoder"]


class V1Encoder:
    __slots__ = ("prefix",)

    def __init__(self, id: str) -> None:
        self.prefix = id_prefix(id)

    def encode(self, rest: bytes, kind: int, value: Any) -> bytes:
        return self.prefix + rest
