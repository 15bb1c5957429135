"""A raw WebSocket client for hostile-client tests: exact bytes, no library checks, tiny buffers."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

import orjson


def frame(payload: bytes, opcode: int = 1, fin: bool = True, mask: bool = True) -> bytes:
    """One client frame (masked as RFC 6455 requires unless ``mask=False``)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask_fast(payload, key)
    return head + key + masked


def _mask_fast(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")


def text(obj: object) -> bytes:
    return frame(obj if isinstance(obj, bytes) else orjson.dumps(obj))


class Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, head: bytes):
        self.reader = reader
        self.writer = writer
        self.status = status
        self.head = head

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        path: str = "/ws/chat",
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
        upgrade: bool = True,
    ) -> Raw:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096 if rcvbuf else 2**16)
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}"]
        if upgrade:
            lines += [
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
                "Sec-WebSocket-Version: 13",
            ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split(b" ", 2)[1])
        return cls(reader, writer, status, head)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv_frame(self, timeout: float = 10.0) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame."""

        async def one() -> tuple[int, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(n)

        return await asyncio.wait_for(one(), timeout)

    async def recv_json(self, timeout: float = 10.0) -> dict:
        while True:
            op, data = await self.recv_frame(timeout)
            if op == 1:
                return orjson.loads(data)
            if op == 8:
                raise ConnectionError(f"closed by the server: {data[:2].hex()} {data[2:]!r}")

    def reset(self) -> None:
        """Abort with a TCP RST (SO_LINGER 0)."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.transport.abort()
