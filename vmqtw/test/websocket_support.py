"""WebSocket bytes built by hand (RFC 6455), independently of
vmqtw.transport.websocket: upgrade requests, masked client frames, and parsers
for the server's response and frames.

Shared by the in-memory tests (vmqtw/test/test_websocket.py) and the tests
with real sockets (tests/test_websocket.py).
"""
from __future__ import annotations

import base64
import os
import struct

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def upgrade_request(path: str = "/mqtt", protocols: str | None = "mqtt",
                    headers: tuple[tuple[str, str], ...] = (), host: str = "127.0.0.1",
                    key: str | None = None) -> bytes:
    """An RFC 6455 upgrade request (``protocols`` None: no subprotocol header)."""
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if protocols is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def client_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0,
                 mask: bytes | None = None) -> bytes:
    """A masked client-to-server frame."""
    mask = mask if mask is not None else os.urandom(4)
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def parse_frame(data: bytes) -> tuple[int, bool, bytes, int] | None:
    """(opcode, fin, payload, bytes used) of the first (unmasked, server)
    frame in ``data``, or None if it is incomplete."""
    if len(data) < 2:
        return None
    first, second = data[0], data[1]
    n = second & 0x7F
    pos = 2
    if n == 126:
        if len(data) < 4:
            return None
        n = struct.unpack("!H", data[2:4])[0]
        pos = 4
    elif n == 127:
        if len(data) < 10:
            return None
        n = struct.unpack("!Q", data[2:10])[0]
        pos = 10
    if second & 0x80:
        raise AssertionError("the server masked a frame")
    if len(data) < pos + n:
        return None
    return first & 0x0F, bool(first & 0x80), data[pos:pos + n], pos + n


def split_response(data: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """(status, lower-case headers, rest) of an HTTP response, or None if the
    head is incomplete."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, data[end + 4:]
