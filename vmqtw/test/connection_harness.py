"""Drive a ``vmqtw.connection.Connection`` without Twisted I/O.

``FakeTransport`` is a plain object providing ``IConnectionTransport``: it
keeps what the connection wrote (flushed by ``Broker.flush`` as the real
adapter is), records durable writes, read pauses and the close.  Time runs on
``twisted.internet.task.Clock``.  Bytes the broker must send are written by
hand here; client packets are encoded with our encoder (the codec has its own
vectors).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from vmqtw.auth.api import IAuthOnRegister
from vmqtw.auth.chain import Authorizer, Chain
from vmqtw.codec import Connect, Decoder, encode
from vmqtw.config import parse
from vmqtw.connection import Connection, IConnectionTransport
from vmqtw.core.broker import Broker
from vmqtw.core.session import Session

BASE = ("listener.tcp.t = 127.0.0.1:1883\nallow_anonymous = on\n"
        "listener.tcp.t.allowed_protocol_versions = 3,4,5\n")


def _pid(pid: int) -> bytes:
    return bytes((pid >> 8, pid & 0xFF))


def connack(rc: int, session_present: bool = False) -> bytes:
    """A 3.1.1 CONNACK (MQTT 3.1.1 s3.2)."""
    return bytes((0x20, 0x02, 1 if session_present else 0, rc))


def puback(pid: int) -> bytes:
    return b"\x40\x02" + _pid(pid)


def pubrec(pid: int) -> bytes:
    return b"\x50\x02" + _pid(pid)


def pubrel(pid: int) -> bytes:
    return b"\x62\x02" + _pid(pid)


def pubcomp(pid: int) -> bytes:
    return b"\x70\x02" + _pid(pid)


def suback(pid: int, *codes: int) -> bytes:
    return bytes((0x90, 2 + len(codes))) + _pid(pid) + bytes(codes)


def publish(topic: str, payload: bytes, qos: int = 0, pid: int | None = None) -> bytes:
    """A 3.1.1 PUBLISH without retain or dup (MQTT 3.1.1 s3.3)."""
    t = topic.encode("utf-8")
    body = len(t).to_bytes(2, "big") + t + (_pid(pid) if qos and pid else b"") + payload
    return bytes((0x30 | (qos << 1), len(body))) + body


def disconnect5(reason: int) -> bytes:
    """A 5.0 DISCONNECT with a reason code and no properties (MQTT 5.0 s3.14)."""
    return bytes((0xE0, 0x02, reason, 0x00))


PINGRESP = b"\xd0\x00"


@implementer(IConnectionTransport)
class FakeTransport:
    """What a connection's transport was asked to do, in memory."""

    def __init__(self, broker: Broker, peer: tuple[str, int] = ("192.0.2.7", 50000),
                 preauth: str | None = None) -> None:
        self.broker = broker
        self.peer = peer
        self.preauth = preauth
        self.certificate: bytes | None = None  # the client's TLS certificate (DER)
        self.protocol_level = 4
        self.out5: Any = None
        self.paused = False
        self.connection: Connection | None = None
        self.buffer: list[bytes] = []     # written, not yet flushed
        self.wire = bytearray()           # flushed: what the client would read
        self.durable_writes: list[bytes] = []
        self.reading = True
        self.read_pauses = 0
        self.closed = False
        self.aborted = False

    # IClientConnection
    def write(self, data: bytes) -> None:
        if not self.buffer:
            self.broker.dirty.append(self)
        self.buffer.append(data)

    def write_durable(self, data: bytes) -> None:
        self.durable_writes.append(data)
        self.write(data)  # the memory store is always durable

    def flush(self) -> None:
        if not self.closed:
            self.wire += b"".join(self.buffer)
        self.buffer = []

    def session_taken_over(self) -> None:
        assert self.connection is not None
        self.connection.session_taken_over()

    def close(self, reason_code: int | None = None) -> None:
        assert self.connection is not None
        self.connection.close(reason_code)

    # IConnectionTransport
    def close_connection(self, final: bytes = b"") -> None:
        if self.closed:
            return
        if final:
            self.write(final)
        self.flush()
        self.closed = True

    def abort_connection(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False
        self.read_pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def preauth_username(self) -> str | None:
        return self.preauth

    def client_certificate(self) -> bytes | None:
        return self.certificate


class Client:
    """One connection as its client sees it."""

    def __init__(self, rig: Rig, level: int, preauth: str | None) -> None:
        self.level = level
        self.transport = FakeTransport(rig.broker, preauth=preauth)
        self.connection = Connection(self.transport, rig.broker, rig.authorizer, rig.listener,
                                     rig.clock)
        self.transport.connection = self.connection
        self.decoder = Decoder(protocol_level=level)
        self.connection.connection_made()

    def send(self, *items: Any) -> None:
        """Packets (encoded for this client's level) and raw bytes, as one chunk."""
        self.connection.data_received(
            b"".join(i if isinstance(i, bytes) else encode(i, self.level) for i in items))

    def take(self) -> bytes:
        """Everything the broker sent since the last ``take``."""
        data = bytes(self.transport.wire)
        self.transport.wire.clear()
        return data

    def packets(self) -> list[Any]:
        return self.decoder.feed(self.take())

    def lose(self) -> None:
        """The stream ends (as the adapter reports it after a close or a network error)."""
        self.transport.closed = True
        self.connection.connection_lost()

    @property
    def session(self) -> Session:
        session = self.connection.session
        assert session is not None, "not connected"
        return session

    @property
    def closed(self) -> bool:
        return self.transport.closed


class Rig:
    """A broker, an authorizer and a clock for connections on fake transports."""

    def __init__(self, config_text: str = BASE, plugins: Iterable[tuple[str, Any]] = ()) -> None:
        self.config = parse(config_text)
        self.clock = Clock()
        self.broker = Broker(self.config, self.clock)
        self.authorizer = Authorizer(Chain(list(plugins)), self.config.allow_anonymous)
        (self.listener,) = self.config.listeners

    def client(self, level: int = 4, preauth: str | None = None) -> Client:
        return Client(self, level, preauth)

    def connected(self, client_id: str = "c", level: int = 4, **kw: Any) -> Client:
        """A client whose CONNECT was accepted (its output taken)."""
        c = self.client(level)
        c.send(Connect(client_id, level, kw.pop("clean", True), kw.pop("keepalive", 0), **kw))
        data = c.take()
        if level < 5 and data[:4] != connack(0):
            raise AssertionError(f"expected CONNACK 0 for {client_id!r}, got {data!r}")
        return c


@implementer(IAuthOnRegister)
class LateRegister:
    """An auth_on_register plugin that answers when the test says so."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []
        self.requests: list[Any] = []

    def auth_on_register(self, request: Any) -> Deferred[Any]:
        self.requests.append(request)
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d
