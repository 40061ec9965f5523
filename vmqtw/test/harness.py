"""Test harness shared by the unit tests: a Broker, its Authorizer and one
MQTTFactory per listener built from a config text, with in-memory clients.

``Harness`` connects ``MQTTProtocol`` objects to ``StringTransport`` objects and
runs time on a ``Clock``; nothing touches a socket.  ``Client`` sends packets
encoded with our encoder (the codec has its own hand-written vectors) and
reads the broker's raw bytes, which tests compare with the hand-written
packets of ``vmqtw.test.wire``.  ``FakeConnection`` stands in for a connection
when a ``Session`` is driven on its own.  ``connect5``, ``connected5``,
``subscribe5`` and ``pub`` drive MQTT 5.0 clients (with properties) on the
same harness.
"""
from __future__ import annotations

from typing import Any, Iterable

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from vmqtw.auth.chain import Authorizer, Chain
from vmqtw.codec import Connect, Decoder, Puback, Publish, SubOptions, Subscribe, Will, encode
from vmqtw.config import parse
from vmqtw.core.broker import Broker
from vmqtw.core.session import IClientConnection
from vmqtw.test.wire import connack, puback5, suback, suback5
from vmqtw.transport.protocol import MQTTFactory, MQTTProtocol

BASE = "listener.tcp.t = 127.0.0.1:1883\nallow_anonymous = on\n"


# ---------------------------------------------------------------------------
# Broker + protocol, in memory

class Client:
    """One client connection: a protocol on a StringTransportWithDisconnection."""

    _port = 40000

    def __init__(self, factory: MQTTFactory, level: int = 4, sync_close: bool = True) -> None:
        Client._port += 1
        addr = IPv4Address("TCP", "192.0.2.1", Client._port)
        self.protocol: MQTTProtocol = factory.buildProtocol(addr)
        if sync_close:
            # loseConnection() calls connectionLost() at once.
            self.transport = StringTransportWithDisconnection(peerAddress=addr)
            self.transport.protocol = self.protocol
        else:
            # As a real reactor: connectionLost() comes later (call finish_close()).
            self.transport = StringTransport(peerAddress=addr)
        self.protocol.makeConnection(self.transport)
        self.level = level
        self.decoder = Decoder(protocol_level=level)

    # -- input to the broker
    def send(self, *items: Any) -> None:
        """Send packets (encoded for this client's level) and raw bytes as ONE chunk."""
        data = b"".join(i if isinstance(i, bytes) else encode(i, self.level) for i in items)
        self.protocol.dataReceived(data)

    def connect(self, client_id: str = "c", clean: bool = True, keepalive: int = 0,
                will: Will | None = None, username: str | None = None,
                password: bytes | None = None, extra: Iterable[Any] = ()) -> None:
        """Send a CONNECT at this client's level, with ``extra`` in the same chunk."""
        self.send(Connect(client_id, self.level, clean, keepalive, will, username, password),
                  *extra)

    def subscribe(self, pid: int, *filters: tuple[str, int]) -> None:
        """Send a SUBSCRIBE of ``(filter, QoS)`` pairs."""
        self.send(Subscribe(pid, [(f, SubOptions(q)) for f, q in filters]))

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                pid: int | None = None, dup: bool = False) -> None:
        """Send a PUBLISH (packet id 1 by default for QoS > 0)."""
        if qos and pid is None:
            pid = 1
        self.send(Publish(topic, payload, qos, retain, dup, pid if qos else None))

    def lose(self) -> None:
        """The network connection breaks (no DISCONNECT)."""
        self.transport.connected = False
        self.protocol.connectionLost(Failure(ConnectionLost("network down")))

    # -- output of the broker
    def take(self) -> bytes:
        """All bytes the broker wrote since the last take()."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def packets(self) -> list[Any]:
        """The packets the broker wrote since the last take(), decoded."""
        return self.decoder.feed(self.take())

    def finish_close(self) -> None:
        """The reactor reports the end of a connection the broker closed."""
        assert self.transport.disconnecting
        self.transport.connected = False
        self.protocol.connectionLost(Failure(ConnectionDone()))

    @property
    def closed(self) -> bool:
        return not self.transport.connected or self.transport.disconnecting

    @property
    def session(self) -> Any:
        return self.protocol.session


class Harness:
    """A Broker, an Authorizer and one MQTTFactory per configured listener."""

    def __init__(self, config_text: str = BASE, plugins: Iterable[tuple[str, Any]] = (),
                 store: Any = None) -> None:
        self.config = parse(config_text)
        self.clock = Clock()
        self.broker = Broker(self.config, self.clock, store)
        self.chain = Chain(list(plugins))
        self.authorizer = Authorizer(self.chain, self.config.allow_anonymous)
        self.factories = {
            listener.name: MQTTFactory(self.broker, self.authorizer, listener, self.clock)
            for listener in self.config.listeners
        }

    def client(self, listener: str | None = None, level: int = 4,
               sync_close: bool = True) -> Client:
        """A new connection on ``listener`` (the only one when not given)."""
        if listener is None:
            (factory,) = self.factories.values()
        else:
            factory = self.factories[listener]
        return Client(factory, level, sync_close)

    def connected(self, client_id: str = "c", clean: bool = True, listener: str | None = None,
                  level: int = 4, session_present: bool = False, sync_close: bool = True,
                  **kw: Any) -> Client:
        """A client that has sent CONNECT and received CONNACK 0 (output cleared)."""
        c = self.client(listener, level, sync_close)
        c.connect(client_id, clean, **kw)
        data = c.take()
        expected = connack(0, session_present)
        if data[:4] != expected:
            raise AssertionError(f"expected {expected!r} for {client_id!r}, got {data!r}")
        c.transport.clear()
        c.transport.write(data[4:])  # keep anything sent after the CONNACK
        return c

    def subscriber(self, client_id: str, *filters: tuple[str, int], **kw: Any) -> Client:
        """A connected client subscribed to ``filters`` (SUBACK checked, output cleared)."""
        c = self.connected(client_id, **kw)
        c.subscribe(1, *filters)
        data = c.take()
        codes = [q for _f, q in filters]
        if data != suback(1, *codes):
            raise AssertionError(f"expected SUBACK {codes} for {client_id!r}, got {data!r}")
        return c


class BrokerTestCase(SynchronousTestCase):
    """Checks after every test that nothing was logged as an error."""

    def tearDown(self) -> None:
        errors = self.flushLoggedErrors()
        self.assertEqual(errors, [], "unexpected logged errors")


# ---------------------------------------------------------------------------
# A connection for a Session on its own

@implementer(IClientConnection)
class FakeConnection:
    """Records what a ``Session`` writes; ``paused`` stands for a full transport."""

    def __init__(self, level: int = 4) -> None:
        self.protocol_level = level
        self.paused = False
        self.written: list[bytes] = []
        self.taken_over = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def session_taken_over(self) -> None:
        self.taken_over = True


# ---------------------------------------------------------------------------
# MQTT 5.0 clients on the Harness

BASE5 = BASE + "listener.tcp.t.allowed_protocol_versions = 3,4,5\n"


def connect5(hn: Harness, client_id: str = "c", clean: bool = True, keepalive: int = 0,
             will: Will | None = None, username: str | None = None,
             password: bytes | None = None, level: int = 5, listener: str | None = None,
             sync_close: bool = True, **properties: Any) -> Client:
    """A 5.0 client that has sent CONNECT (with ``properties``); output not read."""
    c = hn.client(listener, level, sync_close)
    c.send(Connect(client_id, level, clean, keepalive, will, username, password, properties))
    return c


def connected5(hn: Harness, client_id: str = "c", clean: bool = True,
               session_present: bool = False, expected: bytes | None = None,
               **kw: Any) -> Client:
    """A 5.0 client whose CONNACK was checked: exactly ``expected``, or else a
    success with the expected session present flag (output cleared)."""
    c = connect5(hn, client_id, clean, **kw)
    data = c.take()
    if expected is not None:
        want = expected
    else:
        want = data[:2 + data[1]] if len(data) > 1 else b""
        if want[:4] != bytes((0x20, want[1:2][0] if want else 0, int(session_present), 0)):
            raise AssertionError(f"expected a CONNACK 0 for {client_id!r}, got {data!r}")
    if data[:len(want)] != want:
        raise AssertionError(f"expected {want!r} for {client_id!r}, got {data!r}")
    c.transport.clear()
    c.transport.write(data[len(want):])
    return c


def subscribe5(c: Client, pid: int, *filters: tuple[str, SubOptions], sub_id: int | None = None,
               expect: tuple[int, ...] | None = None) -> None:
    """``c`` subscribes and gets exactly the SUBACK with ``expect`` (default: the
    requested QoS); anything sent after the SUBACK is kept for the test."""
    c.send(Subscribe(pid, list(filters), {"subscription_identifier": [sub_id]} if sub_id else {}))
    codes = expect if expect is not None else tuple(o.qos for _f, o in filters)
    data = c.take()
    if data[:len(suback5(pid, *codes))] != suback5(pid, *codes):
        raise AssertionError(f"expected SUBACK {codes}, got {data!r}")
    c.transport.clear()
    c.transport.write(data[len(suback5(pid, *codes)):])


def pub(c: Client, topic: str, payload: bytes, qos: int = 0, pid: int | None = None,
        retain: bool = False, dup: bool = False, **properties: Any) -> None:
    """A PUBLISH with 5.0 ``properties`` from ``c`` (packet id 1 by default for QoS > 0)."""
    if qos and pid is None:
        pid = 1
    c.send(Publish(topic, payload, qos, retain, dup, pid if qos else None, properties))


class BystanderMixin:
    """A 5.0 subscriber and a 5.0 publisher that must keep working while a third
    client is disconnected."""

    def bystanders(self, hn: Harness) -> tuple[Client, Client]:
        s = connected5(hn, "bystander-s")
        subscribe5(s, 1, ("ok/#", SubOptions(1)))
        p = connected5(hn, "bystander-p")
        return s, p

    def still_working(self, s: Client, p: Client) -> None:
        pub(p, "ok/1", b"alive", qos=1, pid=77)
        assert p.take() == puback5(77), "bystander publisher lost its PUBACK"
        (got,) = s.packets()
        assert (got.topic, got.payload, got.qos) == ("ok/1", b"alive", 1), got
        s.send(Puback(got.packet_id))
        assert not s.closed and not p.closed
