"""The vmq link handshake: both nodes prove they know ``distributed_cookie`` (sans-IO).

Four frames, each side sending a fresh 16-byte nonce::

    client -> HELLO      magic "VMQTW" | version u8 | len u16 | client name | nonce_c
    server -> CHALLENGE  len u16 | server name | nonce_s | mac_s
    client -> RESPONSE   mac_c
    server -> ACCEPT     (empty)          or REFUSE  reason (UTF-8) and close

``mac_s = HMAC-SHA256(cookie, b"S" + transcript)`` and ``mac_c = HMAC-SHA256(cookie,
b"C" + transcript)`` where ``transcript = nonce_c + nonce_s + names``, so the client checks
the server as well, and a recorded exchange cannot be replayed against new nonces. MACs
are compared with :func:`hmac.compare_digest`. The cookie never crosses the wire.

Each side is a small state machine: feed it the frames from
:class:`~vmqtw.cluster.codec.FrameDecoder` with :meth:`receive`, send what it returns,
and stop on :class:`CookieMismatch` / :class:`HandshakeError`.
"""
from __future__ import annotations

import hmac
import os
import struct
from hashlib import sha256

from vmqtw.cluster.codec import (
    ACCEPT, CHALLENGE, HELLO, REFUSE, RESPONSE, LinkError, encode_frame,
)

MAGIC = b"VMQTW"
VERSION = 1
NONCE_SIZE = 16
MAC_SIZE = 32
MAX_NAME = 1024

_U16 = struct.Struct(">H")


class HandshakeError(LinkError):
    """The handshake failed: unexpected or malformed message, version, refusal.

    ``refusal`` is the ``REFUSE`` frame to send the peer before closing, if any."""

    refusal: bytes | None = None


class CookieMismatch(HandshakeError):
    """The peer does not know our ``distributed_cookie`` (or we do not know its)."""


class HandshakeRefused(HandshakeError):
    """The server refused us; ``reason`` is its explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"refused by the peer: {reason}")
        self.reason = reason


class WrongCookieRefused(HandshakeRefused, CookieMismatch):
    """The server refused us because our proof of the cookie was wrong."""


REFUSED_COOKIE = "wrong cookie"


def _mac(cookie: bytes, side: bytes, nonce_c: bytes, nonce_s: bytes,
         client: bytes, server: bytes) -> bytes:
    msg = b"".join((side, nonce_c, nonce_s, _U16.pack(len(client)), client,
                    _U16.pack(len(server)), server))
    return hmac.new(cookie, msg, sha256).digest()


def _name(buf: bytes, p: int) -> tuple[bytes, int]:
    if p + 2 > len(buf):
        raise HandshakeError("truncated node name")
    (n,) = _U16.unpack_from(buf, p)
    end = p + 2 + n
    if not 0 < n <= MAX_NAME or end > len(buf):
        raise HandshakeError("bad node name length")
    raw = buf[p + 2:end]
    try:
        raw.decode()
    except UnicodeDecodeError:
        raise HandshakeError("node name is not valid UTF-8") from None
    return raw, end


def _cookie(cookie: str | bytes) -> bytes:
    return cookie.encode() if isinstance(cookie, str) else cookie


class ClientHandshake:
    """The connecting node's side. :meth:`start` gives the ``HELLO`` frame."""

    def __init__(self, node_name: str, cookie: str | bytes, nonce: bytes | None = None) -> None:
        self.name = node_name.encode()
        if not 0 < len(self.name) <= MAX_NAME:
            raise ValueError("node name must be 1..1024 bytes")
        self.cookie = _cookie(cookie)
        self.nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
        self.peer_name: str | None = None
        self.done = False
        self._state = "new"
        self._server_ok = False

    def start(self) -> bytes:
        if self._state != "new":
            raise HandshakeError("handshake already started")
        self._state = "hello"
        body = MAGIC + bytes((VERSION,)) + _U16.pack(len(self.name)) + self.name + self.nonce
        return encode_frame(HELLO, body)

    def receive(self, frame_type: int, body: bytes) -> bytes | None:
        """Handle one frame from the server; return the frame to send, if any."""
        if self._state == "hello" and frame_type == CHALLENGE:
            server, p = _name(body, 0)
            if len(body) != p + NONCE_SIZE + MAC_SIZE:
                raise HandshakeError("bad CHALLENGE length")
            nonce_s = body[p:p + NONCE_SIZE]
            mac_s = body[p + NONCE_SIZE:]
            expect = _mac(self.cookie, b"S", self.nonce, nonce_s, self.name, server)
            # Answer even if the server's proof is wrong: cookies that differ fail on
            # both sides, and this way the server can log and refuse the wrong cookie.
            # The mismatch is raised if the server accepts anyway (an impostor).
            self._server_ok = hmac.compare_digest(mac_s, expect)
            self.peer_name = server.decode()
            self._state = "response"
            mac_c = _mac(self.cookie, b"C", self.nonce, nonce_s, self.name, server)
            return encode_frame(RESPONSE, mac_c)
        if self._state == "response" and frame_type == ACCEPT:
            if not self._server_ok:
                self._state = "failed"
                raise CookieMismatch(f"node {self.peer_name!r} does not know our cookie")
            self._state = "done"
            self.done = True
            return None
        if frame_type == REFUSE:
            reason = body.decode(errors="replace")
            if reason == REFUSED_COOKIE:
                raise WrongCookieRefused(reason)
            raise HandshakeRefused(reason)
        raise HandshakeError(f"unexpected frame type {frame_type} in state {self._state}")


class ServerHandshake:
    """The accepting node's side: answers ``HELLO`` and checks ``RESPONSE``."""

    def __init__(self, node_name: str, cookie: str | bytes, nonce: bytes | None = None) -> None:
        self.name = node_name.encode()
        self.cookie = _cookie(cookie)
        self.nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
        self.peer_name: str | None = None
        self.done = False
        self._state = "new"
        self._client = b""
        self._nonce_c = b""

    def receive(self, frame_type: int, body: bytes) -> bytes:
        """Handle one frame from the client; return the frame to send.

        A wrong proof raises :class:`CookieMismatch` whose ``refusal`` attribute holds
        the ``REFUSE`` frame to send before closing.
        """
        if self._state == "new" and frame_type == HELLO:
            if body[:len(MAGIC)] != MAGIC:
                raise HandshakeError("not a vmq link client")
            p = len(MAGIC)
            if len(body) <= p or body[p] != VERSION:
                raise HandshakeError("unsupported link version")
            client, p = _name(body, p + 1)
            if len(body) != p + NONCE_SIZE:
                raise HandshakeError("bad HELLO length")
            self._client = client
            self._nonce_c = body[p:]
            self._state = "challenge"
            mac_s = _mac(self.cookie, b"S", self._nonce_c, self.nonce, client, self.name)
            return encode_frame(CHALLENGE, _U16.pack(len(self.name)) + self.name + self.nonce
                                + mac_s)
        if self._state == "challenge" and frame_type == RESPONSE:
            expect = _mac(self.cookie, b"C", self._nonce_c, self.nonce, self._client, self.name)
            if not hmac.compare_digest(body, expect):
                self._state = "failed"
                error = CookieMismatch(f"node {self._client.decode()!r} sent a wrong "
                                       "cookie proof")
                error.refusal = encode_frame(REFUSE, REFUSED_COOKIE.encode())
                raise error
            self.peer_name = self._client.decode()
            self._state = "done"
            self.done = True
            return encode_frame(ACCEPT, b"")
        raise HandshakeError(f"unexpected frame type {frame_type} in state {self._state}")

    @property
    def claimed_name(self) -> str | None:
        """The node name the client announced in ``HELLO`` (unproven until ``done``)."""
        return self._client.decode() if self._client else None
