"""MQTTProtocol + Broker + Authorizer driven through in-memory transports.

Every test builds a broker from a config text (``vmqtw.config.parse``),
connects protocols to ``StringTransportWithDisconnection`` objects and runs
time on a ``Clock``; nothing touches a socket.  Bytes the broker must send are
written by hand below (``connack``, ``suback``, ``publish``...) instead of
with our encoder; the client side is encoded with our encoder (the codec has
its own vectors) and decoded with a client-side ``Decoder``.
"""
from __future__ import annotations

from typing import Any, Iterable

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.auth.chain import Authorizer, Chain
from vmqtw.codec import (
    Connect, Decoder, Disconnect, Pingreq, Puback, Pubcomp, Publish, Pubrec, Pubrel,
    SubOptions, Subscribe, Unsubscribe, Will, encode,
)
from vmqtw.config import parse
from vmqtw.core.broker import Broker
from vmqtw.core.message import Message
from vmqtw.transport.protocol import CONNECTED, MQTTFactory, MQTTProtocol

BASE = "listener.tcp.t = 127.0.0.1:1883\nallow_anonymous = on\n"


# ---------------------------------------------------------------------------
# Broker -> client bytes, written by hand (MQTT 3.1.1 section 3).

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pid(pid: int) -> bytes:
    return bytes((pid >> 8, pid & 0xFF))


def connack(rc: int, session_present: bool = False) -> bytes:
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


def unsuback(pid: int) -> bytes:
    return b"\xb0\x02" + _pid(pid)


PINGRESP = b"\xd0\x00"


def publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False,
            dup: bool = False, pid: int | None = None) -> bytes:
    t = topic.encode("utf-8")
    packet_id = _pid(pid) if qos else b""  # type: ignore[arg-type]
    body = len(t).to_bytes(2, "big") + t + packet_id + payload
    b0 = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    return bytes((b0,)) + _varint(len(body)) + body


# ---------------------------------------------------------------------------
# The harness.

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
        self.send(Connect(client_id, self.level, clean, keepalive, will, username, password),
                  *extra)

    def subscribe(self, pid: int, *filters: tuple[str, int]) -> None:
        self.send(Subscribe(pid, [(f, SubOptions(q)) for f, q in filters]))

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                pid: int | None = None, dup: bool = False) -> None:
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
# CONNECT

class ConnectTests(BrokerTestCase):

    def test_anonymous_allowed(self) -> None:
        hn = Harness()
        c = hn.client()
        c.connect("c1")
        self.assertEqual(c.take(), connack(0))
        self.assertFalse(c.closed)
        self.assertEqual(c.protocol.state, CONNECTED)
        self.assertIn(("", "c1"), hn.broker.sessions)

    def test_anonymous_refused_without_plugin(self) -> None:
        hn = Harness("listener.tcp.t = 127.0.0.1:1883\nallow_anonymous = off\n")
        c = hn.client()
        c.connect("c1")
        self.assertEqual(c.take(), connack(5))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_allow_anonymous_override(self) -> None:
        hn = Harness("listener.tcp.t = 127.0.0.1:1883\n"
                     "listener.tcp.o = 127.0.0.1:1884\n"
                     "listener.tcp.o.allow_anonymous_override = on\n"
                     "allow_anonymous = off\n")
        c = hn.client("o")
        c.connect("c1")
        self.assertEqual(c.take(), connack(0))
        self.assertFalse(c.closed)
        d = hn.client("t")
        d.connect("c2")
        self.assertEqual(d.take(), connack(5))
        self.assertTrue(d.closed)

    def test_version_not_allowed_311(self) -> None:
        hn = Harness(BASE + "listener.tcp.t.allowed_protocol_versions = 3\n")
        c = hn.client()
        c.connect("c1")
        self.assertEqual(c.take(), connack(1))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})
        # MQTT 3.1 is allowed there.
        d = hn.client(level=3)
        d.connect("c2")
        self.assertEqual(d.take(), connack(0))

    def test_version_not_allowed_5_with_default(self) -> None:
        """Default allowed_protocol_versions is 3,4: a 5.0 CONNECT gets the
        3.x CONNACK 0x01 (unacceptable protocol version), then the close."""
        hn = Harness()
        self.assertEqual(hn.config.listeners[0].allowed_protocol_versions, frozenset({3, 4}))
        c = hn.client(level=5)
        c.connect("c5")
        self.assertEqual(c.take(), connack(1))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_unknown_protocol_level(self) -> None:
        hn = Harness()
        c = hn.client()
        # CONNECT "MQTT" level 6, clean, keepalive 60, client id "x".
        c.send(bytes.fromhex("100d00044d5154540602003c000178"))
        self.assertEqual(c.take(), connack(1))
        self.assertTrue(c.closed)

    def test_unknown_protocol_name(self) -> None:
        hn = Harness()
        c = hn.client()
        # CONNECT "MQTX" level 4.
        c.send(bytes.fromhex("100d00044d5154580402003c000178"))
        self.assertEqual(c.take(), connack(1))
        self.assertTrue(c.closed)

    def test_empty_client_id_311_clean_gets_an_id(self) -> None:
        hn = Harness()
        c = hn.client()
        c.connect("", clean=True)
        self.assertEqual(c.take(), connack(0))
        self.assertFalse(c.closed)
        (key,) = hn.broker.sessions
        self.assertEqual(key[0], "")
        self.assertTrue(key[1])
        self.assertEqual(c.session.client_id, key[1])
        # A second anonymous client gets another id.
        d = hn.client()
        d.connect("", clean=True)
        self.assertEqual(d.take(), connack(0))
        self.assertEqual(len(hn.broker.sessions), 2)
        self.assertFalse(c.closed)

    def test_empty_client_id_311_persistent_refused(self) -> None:
        hn = Harness()
        c = hn.client()
        c.connect("", clean=False)
        self.assertEqual(c.take(), connack(2))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_empty_client_id_31_refused(self) -> None:
        hn = Harness()
        c = hn.client(level=3)
        c.connect("", clean=True)
        self.assertEqual(c.take(), connack(2))
        self.assertTrue(c.closed)

    def test_client_id_too_long(self) -> None:
        hn = Harness(BASE + "max_client_id_size = 5\n")
        c = hn.client()
        c.connect("abcdef")
        self.assertEqual(c.take(), connack(2))
        self.assertTrue(c.closed)
        d = hn.client()
        d.connect("abcde")
        self.assertEqual(d.take(), connack(0))

    def test_client_id_size_counts_utf8_bytes(self) -> None:
        hn = Harness(BASE + "max_client_id_size = 5\n")
        c = hn.client()
        c.connect("\u00e9\u00e9\u00e9")  # 3 characters, 6 bytes
        self.assertEqual(c.take(), connack(2))

    def test_second_connect_closes(self) -> None:
        hn = Harness()
        c = hn.connected("c1")
        c.connect("c1")
        self.assertEqual(c.take(), b"")
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_first_packet_not_connect_closes(self) -> None:
        hn = Harness()
        c = hn.client()
        c.send(Pingreq())
        self.assertEqual(c.take(), b"")
        self.assertTrue(c.closed)

    def test_first_packet_publish_closes(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("#", 0))
        c = hn.client()
        c.publish("a", b"x")
        self.assertTrue(c.closed)
        self.assertEqual(s.take(), b"")

    def test_connect_timeout(self) -> None:
        hn = Harness(BASE + "mqtt_connect_timeout = 2000\n")
        c = hn.client()
        hn.clock.advance(1.9)
        self.assertFalse(c.closed)
        hn.clock.advance(0.2)
        self.assertTrue(c.closed)
        self.assertEqual(c.take(), b"")

    def test_connect_timeout_cancelled_by_connect(self) -> None:
        hn = Harness()
        c = hn.connected("c1")
        hn.clock.advance(100)
        self.assertFalse(c.closed)

    def test_connect_in_pieces(self) -> None:
        hn = Harness()
        c = hn.client()
        data = encode(Connect("c1", 4, True, 0), 4)
        for i in range(len(data)):
            c.send(data[i:i + 1])
        self.assertEqual(c.take(), connack(0))

    def test_keepalive_timeout(self) -> None:
        hn = Harness()
        c = hn.connected("c1", keepalive=10)
        hn.clock.advance(14.9)
        self.assertFalse(c.closed)
        hn.clock.advance(0.2)
        self.assertTrue(c.closed)
        self.assertNotIn(("", "c1"), hn.broker.sessions)

    def test_pingreq_resets_keepalive(self) -> None:
        hn = Harness()
        c = hn.connected("c1", keepalive=10)
        hn.clock.advance(10)
        c.send(Pingreq())
        self.assertEqual(c.take(), PINGRESP)
        hn.clock.advance(14.9)  # t = 24.9, 14.9 s after the PINGREQ
        self.assertFalse(c.closed)
        c.send(Pingreq())
        self.assertEqual(c.take(), PINGRESP)
        hn.clock.advance(14.9)
        self.assertFalse(c.closed)
        hn.clock.advance(0.2)
        self.assertTrue(c.closed)

    def test_keepalive_zero_never_times_out(self) -> None:
        hn = Harness()
        c = hn.connected("c1", keepalive=0)
        hn.clock.advance(100000)
        self.assertFalse(c.closed)

    def test_max_connection_lifetime(self) -> None:
        hn = Harness(BASE + "listener.tcp.t.max_connection_lifetime = 30\n")
        c = hn.connected("c1", keepalive=10)
        for _ in range(5):
            hn.clock.advance(5.9)
            c.send(Pingreq())
        self.assertFalse(c.closed)  # t = 29.5
        hn.clock.advance(0.6)
        self.assertTrue(c.closed)

    def test_disconnect_closes(self) -> None:
        hn = Harness()
        c = hn.connected("c1")
        c.send(Disconnect())
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})


# ---------------------------------------------------------------------------
# PUBLISH in and out, all QoS

class PublishTests(BrokerTestCase):

    def test_qos0(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("a/b", 0))
        p = hn.connected("p")
        p.publish("a/b", b"hello")
        self.assertEqual(p.take(), b"")
        self.assertEqual(s.take(), publish("a/b", b"hello"))

    def test_qos1_in_and_out(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("a/b", 1))
        p = hn.connected("p")
        p.publish("a/b", b"m1", qos=1, pid=0x1234)
        self.assertEqual(p.take(), puback(0x1234))
        self.assertEqual(s.take(), publish("a/b", b"m1", qos=1, pid=1))
        self.assertEqual(list(s.session.inflight), [1])
        p.publish("a/b", b"m2", qos=1, pid=7)
        self.assertEqual(s.take(), publish("a/b", b"m2", qos=1, pid=2))
        s.send(Puback(1), Puback(2))
        self.assertEqual(s.session.inflight, {})
        self.assertEqual(s.take(), b"")

    def test_qos2_in(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("a/b", 0))
        p = hn.connected("p")
        p.publish("a/b", b"m", qos=2, pid=9)
        self.assertEqual(p.take(), pubrec(9))
        self.assertEqual(s.take(), publish("a/b", b"m"))
        self.assertEqual(p.session.incoming_qos2, {9})
        p.send(Pubrel(9))
        self.assertEqual(p.take(), pubcomp(9))
        self.assertEqual(p.session.incoming_qos2, set())
        # The id is free again: a new QoS 2 PUBLISH with it is a new message.
        p.publish("a/b", b"n", qos=2, pid=9)
        self.assertEqual(p.take(), pubrec(9))
        self.assertEqual(s.take(), publish("a/b", b"n"))

    def test_qos2_out(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("a/b", 2))
        p = hn.connected("p")
        p.publish("a/b", b"m", qos=2, pid=3)
        self.assertEqual(s.take(), publish("a/b", b"m", qos=2, pid=1))
        s.send(Pubrec(1))
        self.assertEqual(s.take(), pubrel(1))
        self.assertEqual(len(s.session.inflight), 1)
        s.send(Pubcomp(1))
        self.assertEqual(s.take(), b"")
        self.assertEqual(s.session.inflight, {})

    def test_qos2_duplicate_delivered_once(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("a/b", 2))
        p = hn.connected("p")
        p.publish("a/b", b"m", qos=2, pid=5)
        p.publish("a/b", b"m", qos=2, pid=5, dup=True)
        self.assertEqual(p.take(), pubrec(5) + pubrec(5))
        self.assertEqual(s.take(), publish("a/b", b"m", qos=2, pid=1))
        p.send(Pubrel(5))
        self.assertEqual(p.take(), pubcomp(5))

    def test_qos_downgraded_to_subscription(self) -> None:
        hn = Harness()
        s0 = hn.subscriber("s0", ("t", 0))
        s1 = hn.subscriber("s1", ("t", 1))
        s2 = hn.subscriber("s2", ("t", 2))
        p = hn.connected("p")
        p.publish("t", b"x", qos=2, pid=1)
        self.assertEqual(s0.take(), publish("t", b"x"))
        self.assertEqual(s1.take(), publish("t", b"x", qos=1, pid=1))
        self.assertEqual(s2.take(), publish("t", b"x", qos=2, pid=1))
        p.publish("t", b"y", qos=1, pid=2)
        self.assertEqual(s2.take(), publish("t", b"y", qos=1, pid=2))

    def test_upgrade_outgoing_qos(self) -> None:
        hn = Harness(BASE + "upgrade_outgoing_qos = on\n")
        s = hn.subscriber("s", ("t", 2))
        p = hn.connected("p")
        p.publish("t", b"x", qos=0)
        self.assertEqual(s.take(), publish("t", b"x", qos=2, pid=1))

    def test_wildcard_in_publish_topic_closes(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("#", 0))
        p = hn.connected("p")
        p.publish("a/+", b"x")
        self.assertTrue(p.closed)
        p2 = hn.connected("p2")
        p2.publish("a/#", b"x", qos=1)
        self.assertTrue(p2.closed)
        self.assertEqual(p2.take(), b"")
        self.assertEqual(s.take(), b"")
        self.assertFalse(s.closed)

    def test_topic_max_depth(self) -> None:
        hn = Harness(BASE + "topic_max_depth = 3\n")
        s = hn.subscriber("s", ("#", 0))
        p = hn.connected("p")
        p.publish("a/b/c", b"ok")
        self.assertEqual(s.take(), publish("a/b/c", b"ok"))
        p.publish("a/b/c/d", b"deep")
        self.assertTrue(p.closed)
        self.assertEqual(s.take(), b"")

    def test_puback_for_unknown_id_ignored(self) -> None:
        hn = Harness()
        c = hn.connected("c")
        c.send(Puback(77), Pubcomp(78))
        self.assertFalse(c.closed)
        self.assertEqual(c.take(), b"")

    def test_pubrel_unknown_id_answered(self) -> None:
        hn = Harness()
        c = hn.connected("c")
        c.send(Pubrel(4))
        self.assertEqual(c.take(), pubcomp(4))

    def test_mqtt31_client(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("t", 1), level=3)
        p = hn.connected("p", level=3)
        p.publish("t", b"x", qos=1, pid=2)
        self.assertEqual(p.take(), puback(2))
        self.assertEqual(s.take(), publish("t", b"x", qos=1, pid=1))

    def test_packet_ids_wrap_and_skip_inflight(self) -> None:
        hn = Harness(BASE + "max_inflight_messages = 0\n")
        s = hn.subscriber("s", ("t", 1))
        session = s.session
        session._next_pid = 65535
        p = hn.connected("p")
        p.publish("t", b"a", qos=1, pid=1)
        p.publish("t", b"b", qos=1, pid=2)
        self.assertEqual(s.take(), publish("t", b"a", qos=1, pid=65535)
                         + publish("t", b"b", qos=1, pid=1))


# ---------------------------------------------------------------------------
# The inflight window and the online queue

class InflightTests(BrokerTestCase):

    def test_window_of_two(self) -> None:
        hn = Harness(BASE + "max_inflight_messages = 2\n")
        s = hn.subscriber("s", ("t", 1))
        p = hn.connected("p")
        for i in range(1, 6):
            p.publish("t", b"m%d" % i, qos=1, pid=i)
        self.assertEqual(s.take(), publish("t", b"m1", qos=1, pid=1)
                         + publish("t", b"m2", qos=1, pid=2))
        self.assertEqual(len(s.session.queue), 3)
        s.send(Puback(1))
        self.assertEqual(s.take(), publish("t", b"m3", qos=1, pid=3))
        s.send(Puback(3))
        self.assertEqual(s.take(), publish("t", b"m4", qos=1, pid=4))
        s.send(Puback(2), Puback(4))
        self.assertEqual(s.take(), publish("t", b"m5", qos=1, pid=5))
        s.send(Puback(5))
        self.assertEqual(s.session.inflight, {})
        self.assertEqual(len(s.session.queue), 0)

    def test_qos0_waits_behind_queued_qos1(self) -> None:
        hn = Harness(BASE + "max_inflight_messages = 1\n")
        s = hn.subscriber("s", ("t", 1))
        p = hn.connected("p")
        p.publish("t", b"a", qos=1, pid=1)
        p.publish("t", b"b", qos=1, pid=2)
        p.publish("t", b"c", qos=0)
        self.assertEqual(s.take(), publish("t", b"a", qos=1, pid=1))
        s.send(Puback(1))
        self.assertEqual(s.take(), publish("t", b"b", qos=1, pid=2) + publish("t", b"c"))

    def test_qos2_holds_slot_until_pubcomp(self) -> None:
        hn = Harness(BASE + "max_inflight_messages = 1\n")
        s = hn.subscriber("s", ("t", 2))
        p = hn.connected("p")
        p.publish("t", b"a", qos=2, pid=1)
        p.publish("t", b"b", qos=2, pid=2)
        self.assertEqual(s.take(), publish("t", b"a", qos=2, pid=1))
        s.send(Pubrec(1))
        self.assertEqual(s.take(), pubrel(1))
        s.send(Pubcomp(1))
        self.assertEqual(s.take(), publish("t", b"b", qos=2, pid=2))

    def test_online_queue_overflow_drops(self) -> None:
        hn = Harness(BASE + "max_inflight_messages = 1\nmax_online_messages = 3\n")
        s = hn.subscriber("s", ("t", 1))
        p = hn.connected("p")
        for i in range(1, 7):
            p.publish("t", b"m%d" % i, qos=1, pid=i)
        self.assertEqual(p.take(), b"".join(puback(i) for i in range(1, 7)))
        self.assertEqual(s.take(), publish("t", b"m1", qos=1, pid=1))
        self.assertEqual(len(s.session.queue), 3)
        self.assertEqual(s.session.dropped, 2)
        self.assertEqual(hn.broker.dropped, 2)
        got = []
        for pid in range(1, 5):
            s.send(Puback(pid))
            got.append(s.take())
        self.assertEqual(got, [publish("t", b"m%d" % i, qos=1, pid=i) for i in range(2, 5)]
                         + [b""])


# ---------------------------------------------------------------------------
# Retained messages

class RetainedTests(BrokerTestCase):

    def test_stored_and_delivered_on_subscribe(self) -> None:
        hn = Harness()
        p = hn.connected("p")
        p.publish("r/t", b"kept", qos=1, retain=True, pid=1)
        self.assertEqual(p.take(), puback(1))
        self.assertEqual(hn.broker.store.retained_count(), 1)
        s = hn.connected("s")
        s.subscribe(4, ("r/#", 1))
        # SUBACK first, then the retained message with retain = 1.
        self.assertEqual(s.take(), suback(4, 1) + publish("r/t", b"kept", qos=1, retain=True,
                                                          pid=1))

    def test_retained_downgraded_to_subscription_qos(self) -> None:
        hn = Harness()
        p = hn.connected("p")
        p.publish("r", b"kept", qos=2, retain=True, pid=1)
        s = hn.connected("s")
        s.subscribe(1, ("r", 0))
        self.assertEqual(s.take(), suback(1, 0) + publish("r", b"kept", retain=True))

    def test_live_delivery_has_retain_0(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("r/#", 0))
        p = hn.connected("p")
        p.publish("r/t", b"v", retain=True)
        self.assertEqual(s.take(), publish("r/t", b"v"))
        self.assertEqual(hn.broker.store.retained_count(), 1)

    def test_replaced(self) -> None:
        hn = Harness()
        p = hn.connected("p")
        p.publish("r", b"one", retain=True)
        p.publish("r", b"two", retain=True)
        s = hn.connected("s")
        s.subscribe(1, ("r", 0))
        self.assertEqual(s.take(), suback(1, 0) + publish("r", b"two", retain=True))

    def test_empty_payload_clears(self) -> None:
        hn = Harness()
        p = hn.connected("p")
        p.publish("r/t", b"kept", retain=True)
        s1 = hn.connected("s1")
        s1.subscribe(1, ("r/t", 0))
        p.publish("r/t", b"", retain=True)
        # Current subscribers get the empty message as a normal one.
        self.assertEqual(s1.take(), suback(1, 0) + publish("r/t", b"kept", retain=True)
                         + publish("r/t", b""))
        self.assertEqual(hn.broker.store.retained_count(), 0)
        s2 = hn.connected("s2")
        s2.subscribe(1, ("r/#", 0))
        self.assertEqual(s2.take(), suback(1, 0))

    def test_not_retained_without_flag(self) -> None:
        hn = Harness()
        p = hn.connected("p")
        p.publish("r", b"x")
        self.assertEqual(hn.broker.store.retained_count(), 0)


# ---------------------------------------------------------------------------
# Will messages and session takeover

class WillTests(BrokerTestCase):

    def test_will_on_abnormal_loss(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("will/#", 1))
        c = hn.connected("c", will=Will("will/c", b"gone", 1))
        c.lose()
        self.assertEqual(s.take(), publish("will/c", b"gone", qos=1, pid=1))
        self.assertEqual(hn.broker.store.retained_count(), 0)

    def test_no_will_after_disconnect(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("will/#", 1))
        c = hn.connected("c", will=Will("will/c", b"gone", 1))
        c.send(Disconnect())
        self.assertTrue(c.closed)
        self.assertEqual(s.take(), b"")

    def test_will_on_protocol_violation(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("will/#", 0))
        c = hn.connected("c", will=Will("will/c", b"gone"))
        c.send(b"\x00\x00")
        self.assertTrue(c.closed)
        self.assertEqual(s.take(), publish("will/c", b"gone"))

    def test_will_on_keepalive_timeout(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("will/#", 0))
        c = hn.connected("c", keepalive=2, will=Will("will/c", b"gone"))
        hn.clock.advance(3)
        self.assertTrue(c.closed)
        self.assertEqual(s.take(), publish("will/c", b"gone"))

    def test_will_retain(self) -> None:
        hn = Harness()
        c = hn.connected("c", will=Will("will/c", b"gone", 0, True))
        c.lose()
        self.assertEqual(hn.broker.store.retained_count(), 1)
        s = hn.connected("s")
        s.subscribe(1, ("will/c", 0))
        self.assertEqual(s.take(), suback(1, 0) + publish("will/c", b"gone", retain=True))

    def test_invalid_will_topic_refused(self) -> None:
        hn = Harness()
        c = hn.client()
        c.connect("c", will=Will("will/#", b"x"))
        self.assertEqual(c.take(), b"")  # MQTT-3.1.4-1: closed without a CONNACK
        self.assertTrue(c.closed)

    def test_takeover_closes_first_and_fires_will(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("will/#", 0))
        c1 = hn.connected("dup", will=Will("will/dup", b"taken"))
        c2 = hn.client()
        c2.connect("dup")
        self.assertEqual(c2.take(), connack(0))
        self.assertTrue(c1.closed)
        self.assertFalse(c2.closed)
        self.assertEqual(s.take(), publish("will/dup", b"taken"))
        self.assertIs(hn.broker.sessions[("", "dup")].conn, c2.protocol)
        # The old connection going away later changes nothing.
        c1.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertIs(hn.broker.sessions[("", "dup")].conn, c2.protocol)
        self.assertEqual(s.take(), b"")

    def test_takeover_will_suppressed(self) -> None:
        hn = Harness(BASE + "suppress_lwt_on_session_takeover = on\n")
        s = hn.subscriber("s", ("will/#", 0))
        c1 = hn.connected("dup", will=Will("will/dup", b"taken"))
        c2 = hn.client()
        c2.connect("dup")
        self.assertEqual(c2.take(), connack(0))
        self.assertTrue(c1.closed)
        self.assertEqual(s.take(), b"")

    def test_taken_over_session_still_routes_to_new_connection(self) -> None:
        hn = Harness()
        c1 = hn.subscriber("dup", ("t", 0))
        c2 = hn.connected("dup")   # clean: subscriptions are gone
        p = hn.connected("p")
        p.publish("t", b"x")
        self.assertEqual(c1.take(), b"")
        self.assertEqual(c2.take(), b"")
        c2.subscribe(1, ("t", 0))
        self.assertEqual(c2.take(), suback(1, 0))
        p.publish("t", b"y")
        self.assertEqual(c2.take(), publish("t", b"y"))


# ---------------------------------------------------------------------------
# Subscriptions: wildcards, overlaps, $ topics, shared, unsubscribe

class SubscriptionTests(BrokerTestCase):

    def test_wildcards(self) -> None:
        hn = Harness()
        plus = hn.subscriber("plus", ("a/+/c", 0))
        hash_ = hn.subscriber("hash", ("a/#", 0))
        p = hn.connected("p")
        p.publish("a/b/c", b"1")
        p.publish("a", b"2")
        p.publish("a/b/c/d", b"3")
        p.publish("b/b/c", b"4")
        self.assertEqual(plus.take(), publish("a/b/c", b"1"))
        self.assertEqual(hash_.take(), publish("a/b/c", b"1") + publish("a", b"2")
                         + publish("a/b/c/d", b"3"))

    def test_overlapping_delivered_once_at_highest_qos(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("a/+/c", 0), ("a/#", 2), ("a/b/c", 1))
        p = hn.connected("p")
        p.publish("a/b/c", b"x", qos=2, pid=1)
        self.assertEqual(s.take(), publish("a/b/c", b"x", qos=2, pid=1))
        p.publish("a/b/c", b"y", qos=1, pid=2)
        self.assertEqual(s.take(), publish("a/b/c", b"y", qos=1, pid=2))

    def test_resubscribe_replaces_qos(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("t", 0))
        s.subscribe(2, ("t", 1))
        self.assertEqual(s.take(), suback(2, 1))
        p = hn.connected("p")
        p.publish("t", b"x", qos=1, pid=1)
        self.assertEqual(s.take(), publish("t", b"x", qos=1, pid=1))

    def test_dollar_topics_not_matched_by_wildcards(self) -> None:
        hn = Harness()
        hash_ = hn.subscriber("hash", ("#", 0))
        plus = hn.subscriber("plus", ("+/x", 0))
        sys_ = hn.subscriber("sys", ("$SYS/#", 0))
        hn.broker.publish(Message("$SYS/x", b"sys"), "")
        hn.broker.flush()
        self.assertEqual(hash_.take(), b"")
        self.assertEqual(plus.take(), b"")
        self.assertEqual(sys_.take(), publish("$SYS/x", b"sys"))

    def test_shared_subscription_each_message_to_one_member(self) -> None:
        hn = Harness()
        a = hn.subscriber("a", ("$share/g/s/t", 0))
        b = hn.subscriber("b", ("$share/g/s/t", 0))
        other = hn.subscriber("o", ("s/t", 0))
        p = hn.connected("p")
        n = 10
        p.send(*[Publish("s/t", b"%d" % i) for i in range(n)])
        got_a = [pk.payload for pk in a.packets()]
        got_b = [pk.payload for pk in b.packets()]
        self.assertEqual(sorted(got_a + got_b, key=int), [b"%d" % i for i in range(n)])
        self.assertTrue(got_a and got_b, (got_a, got_b))
        self.assertEqual(len(other.packets()), n)

    def test_shared_subscription_groups_are_independent(self) -> None:
        hn = Harness()
        a = hn.subscriber("a", ("$share/g1/t", 0))
        b = hn.subscriber("b", ("$share/g2/t", 0))
        p = hn.connected("p")
        p.publish("t", b"x")
        self.assertEqual(a.take(), publish("t", b"x"))
        self.assertEqual(b.take(), publish("t", b"x"))

    def test_shared_subscription_no_retained(self) -> None:
        hn = Harness()
        p = hn.connected("p")
        p.publish("t", b"r", retain=True)
        a = hn.connected("a")
        a.subscribe(1, ("$share/g/t", 0))
        self.assertEqual(a.take(), suback(1, 0))

    def test_shared_member_leaving(self) -> None:
        hn = Harness()
        a = hn.subscriber("a", ("$share/g/t", 0))
        b = hn.subscriber("b", ("$share/g/t", 0))
        b.send(Disconnect())
        p = hn.connected("p")
        for i in range(3):
            p.publish("t", b"%d" % i)
        self.assertEqual(len(a.packets()), 3)
        a.send(Unsubscribe(2, ["$share/g/t"]))
        self.assertEqual(a.take(), unsuback(2))
        p.publish("t", b"x")
        self.assertEqual(a.take(), b"")
        self.assertEqual(hn.broker.trees, {})

    def test_unsubscribe(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("a/#", 0), ("b", 0))
        s.send(Unsubscribe(9, ["a/#"]))
        self.assertEqual(s.take(), unsuback(9))
        p = hn.connected("p")
        p.publish("a/x", b"1")
        p.publish("b", b"2")
        self.assertEqual(s.take(), publish("b", b"2"))
        # Unsubscribing from something never subscribed still gets an UNSUBACK.
        s.send(Unsubscribe(10, ["nope"]))
        self.assertEqual(s.take(), unsuback(10))

    def test_invalid_filter_gets_failure_code(self) -> None:
        hn = Harness()
        s = hn.connected("s")
        s.subscribe(3, ("a/#/b", 1), ("ok", 1))
        self.assertEqual(s.take(), suback(3, 0x80, 1))
        self.assertFalse(s.closed)

    def test_max_subscriptions_per_client(self) -> None:
        hn = Harness(BASE + "max_subscriptions_per_client = 2\n")
        s = hn.connected("s")
        s.subscribe(1, ("a", 1), ("b", 1), ("c", 1))
        self.assertEqual(s.take(), suback(1, 1, 1, 0x80))
        self.assertEqual(sorted(s.session.subscriptions), ["a", "b"])
        # Replacing an existing one is not a new subscription.
        s.subscribe(2, ("a", 0), ("d", 0))
        self.assertEqual(s.take(), suback(2, 0, 0x80))
        self.assertEqual(sorted(s.session.subscriptions), ["a", "b"])


# ---------------------------------------------------------------------------
# Mountpoints

MOUNTS = ("allow_anonymous = on\n"
          "listener.tcp.a = 127.0.0.1:1883\n"
          "listener.tcp.a.mountpoint = site-a\n"
          "listener.tcp.b = 127.0.0.1:1884\n"
          "listener.tcp.b.mountpoint = site-b\n"
          "listener.tcp.n = 127.0.0.1:1885\n")


class MountpointTests(BrokerTestCase):

    def test_no_cross_delivery(self) -> None:
        hn = Harness(MOUNTS)
        sa = hn.subscriber("sa", ("#", 0), listener="a")
        sb = hn.subscriber("sb", ("#", 0), listener="b")
        sn = hn.subscriber("sn", ("#", 0), listener="n")
        pa = hn.connected("pa", listener="a")
        pa.publish("t", b"from-a")
        self.assertEqual(sa.take(), publish("t", b"from-a"))
        self.assertEqual(sb.take(), b"")
        self.assertEqual(sn.take(), b"")

    def test_same_client_id_two_sessions(self) -> None:
        hn = Harness(MOUNTS)
        ca = hn.subscriber("same", ("t", 0), listener="a")
        cb = hn.subscriber("same", ("t", 0), listener="b")
        self.assertFalse(ca.closed)
        self.assertFalse(cb.closed)
        self.assertIn(("site-a", "same"), hn.broker.sessions)
        self.assertIn(("site-b", "same"), hn.broker.sessions)
        pb = hn.connected("p", listener="b")
        pb.publish("t", b"b")
        self.assertEqual(ca.take(), b"")
        self.assertEqual(cb.take(), publish("t", b"b"))

    def test_retained_separate(self) -> None:
        hn = Harness(MOUNTS)
        pa = hn.connected("p", listener="a")
        pa.publish("r", b"a-value", retain=True)
        sb = hn.connected("s", listener="b")
        sb.subscribe(1, ("r", 0))
        self.assertEqual(sb.take(), suback(1, 0))
        sa = hn.connected("s", listener="a")
        sa.subscribe(1, ("r", 0))
        self.assertEqual(sa.take(), suback(1, 0) + publish("r", b"a-value", retain=True))


# ---------------------------------------------------------------------------
# Bad input hurts only the sender

class RobustnessTests(BrokerTestCase):

    def _bystanders(self, hn: Harness) -> tuple[Client, Client]:
        s = hn.subscriber("s", ("t", 1))
        p = hn.connected("p")
        return s, p

    def _still_working(self, s: Client, p: Client) -> None:
        p.publish("t", b"alive", qos=1, pid=42)
        self.assertEqual(p.take(), puback(42))
        self.assertEqual(s.packets()[-1].payload, b"alive")
        self.assertFalse(s.closed)
        self.assertFalse(p.closed)

    def test_garbage_before_connect(self) -> None:
        hn = Harness()
        s, p = self._bystanders(hn)
        bad = hn.client()
        bad.send(b"\xff\xff\xff\xff\xff\xff")
        self.assertTrue(bad.closed)
        self._still_working(s, p)

    def test_malformed_after_connect(self) -> None:
        hn = Harness()
        s, p = self._bystanders(hn)
        for junk in (b"\x00\x00",                       # packet type 0
                     b"\x82\x02\x00\x01",               # SUBSCRIBE with no filter
                     b"\x32\x03\x00\x01a",              # QoS 1 PUBLISH without id
                     b"\x30\x04\x00\x02\xc3\x28",       # topic not UTF-8
                     b"\x36\x05\x00\x01a\x00\x01",      # QoS 3
                     b"\x40\x03\x00\x01\x00",           # 3.1.1 PUBACK of length 3
                     b"\xe0\x01\x00",                   # DISCONNECT with a body
                     b"\x30\xff\xff\xff\xff\x7f",       # remaining length > 4 bytes
                     b"\x20\x02\x00\x00",               # CONNACK from a client
                     b"\xf0\x00"):                      # AUTH in 3.1.1
            bad = hn.connected("bad")
            bad.send(junk)
            self.assertTrue(bad.closed, junk)
            self._still_working(s, p)

    def test_valid_packets_before_bad_bytes_are_handled(self) -> None:
        hn = Harness()
        s, p = self._bystanders(hn)
        bad = hn.connected("bad")
        bad.send(Publish("t", b"first", 1, packet_id=3), b"\x00\x00")
        self.assertEqual(bad.take(), puback(3))
        self.assertTrue(bad.closed)
        self.assertEqual(s.packets()[-1].payload, b"first")

    def test_oversize_packet(self) -> None:
        hn = Harness(BASE + "max_message_size = 100\n")
        s, p = self._bystanders(hn)
        big = hn.connected("big")
        big.publish("t", b"x" * 200)
        self.assertTrue(big.closed)
        self.assertEqual(s.take(), b"")
        self._still_working(s, p)

    def test_oversize_announced_closes_before_body(self) -> None:
        hn = Harness(BASE + "max_message_size = 100\n")
        s, p = self._bystanders(hn)
        big = hn.connected("big")
        big.send(b"\x30\xff\xff\x03")  # announces 65535 bytes, sends none
        self.assertTrue(big.closed)
        self._still_working(s, p)

    def test_oversize_connect(self) -> None:
        hn = Harness(BASE + "max_message_size = 100\n")
        c = hn.client()
        c.connect("c" * 200)
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_data_after_close_ignored(self) -> None:
        hn = Harness()
        s, p = self._bystanders(hn)
        bad = hn.connected("bad")
        bad.send(b"\x00\x00")
        bad.protocol.dataReceived(encode(Publish("t", b"late"), 4))
        self.assertEqual(s.take(), b"")


# ---------------------------------------------------------------------------
# Back-pressure and output batching

class FlowTests(BrokerTestCase):

    def test_pause_and_resume(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("t", 1))
        p = hn.connected("p")
        s.protocol.pauseProducing()
        p.publish("t", b"0")
        p.publish("t", b"1", qos=1, pid=1)
        p.publish("t", b"2")
        self.assertEqual(s.take(), b"")
        self.assertEqual(len(s.session.queue), 3)
        s.protocol.resumeProducing()
        self.assertEqual(s.take(), publish("t", b"0") + publish("t", b"1", qos=1, pid=1)
                         + publish("t", b"2"))
        self.assertEqual(len(s.session.queue), 0)
        p.publish("t", b"3")
        self.assertEqual(s.take(), publish("t", b"3"))

    def test_paused_queue_is_bounded(self) -> None:
        hn = Harness(BASE + "max_online_messages = 5\n")
        s = hn.subscriber("s", ("t", 0))
        p = hn.connected("p")
        s.protocol.pauseProducing()
        p.send(*[Publish("t", b"%d" % i) for i in range(50)])
        self.assertEqual(len(s.session.queue), 5)
        self.assertEqual(s.session.dropped, 45)
        s.protocol.resumeProducing()
        self.assertEqual([pk.payload for pk in s.packets()], [b"%d" % i for i in range(5)])

    def test_one_write_per_connection_per_batch(self) -> None:
        hn = Harness()
        subs = [hn.subscriber("s%d" % i, ("t/#", 1)) for i in range(3)]
        p = hn.connected("p")
        counts = {}
        for s in subs + [p]:
            real = s.transport.write

            def counting(data: bytes, real: Any = real, s: Client = s) -> None:
                counts[s] = counts.get(s, 0) + 1
                real(data)
            s.transport.write = counting  # type: ignore[method-assign]
        p.send(*[Publish("t/%d" % i, b"x", 1, packet_id=i + 1) for i in range(50)])
        for s in subs:
            self.assertEqual(counts[s], 1)
            self.assertEqual(len(s.packets()), 20)  # the inflight window
        self.assertEqual(counts[p], 1)
        self.assertEqual(p.take(), b"".join(puback(i + 1) for i in range(50)))


# ---------------------------------------------------------------------------
# connectionLost arriving later than loseConnection(), as with a real reactor

class DelayedCloseTests(BrokerTestCase):

    def test_messages_for_a_closing_persistent_session_are_kept(self) -> None:
        hn = Harness()
        s = hn.subscriber("s", ("t", 1), clean=False, sync_close=False)
        s.send(b"\x00\x00")                     # protocol violation: closing
        self.assertTrue(s.transport.disconnecting)
        p = hn.connected("p")
        p.publish("t", b"during-close", qos=1, pid=1)
        self.assertEqual(s.take(), b"")           # nothing written after the close
        s.finish_close()
        p.publish("t", b"after-close", qos=1, pid=2)
        s2 = hn.client()
        s2.connect("s", clean=False)
        self.assertEqual(s2.take(), connack(0, True)
                         + publish("t", b"during-close", qos=1, pid=1, dup=True)
                         + publish("t", b"after-close", qos=1, pid=2))

    def test_will_once_when_closed_by_broker(self) -> None:
        hn = Harness()
        w = hn.subscriber("w", ("will", 0))
        c = hn.connected("c", keepalive=1, will=Will("will", b"bye"), sync_close=False)
        hn.clock.advance(2)
        self.assertTrue(c.transport.disconnecting)
        c.finish_close()
        self.assertEqual(w.take(), publish("will", b"bye"))
        hn.clock.advance(10)
        self.assertEqual(w.take(), b"")

    def test_takeover_while_first_is_closing(self) -> None:
        hn = Harness()
        w = hn.subscriber("w", ("will", 0))
        c1 = hn.connected("dup", will=Will("will", b"bye"), sync_close=False)
        c1.send(b"\x00\x00")
        c2 = hn.client()
        c2.connect("dup")
        self.assertEqual(c2.take(), connack(0))
        c1.finish_close()
        self.assertEqual(w.take(), publish("will", b"bye"))
        self.assertIs(hn.broker.sessions[("", "dup")].conn, c2.protocol)

    def test_takeover_closes_first_transport(self) -> None:
        hn = Harness()
        c1 = hn.connected("dup", sync_close=False)
        c2 = hn.client()
        c2.connect("dup")
        self.assertTrue(c1.transport.disconnecting)
        self.assertIsNone(c1.transport.producer)
        c1.finish_close()
        self.assertIs(hn.broker.sessions[("", "dup")].conn, c2.protocol)

    def test_peer_that_stops_reading_is_aborted(self) -> None:
        hn = Harness()
        c = hn.connected("c", sync_close=False)
        c.send(b"\x00\x00")
        self.assertTrue(c.transport.disconnecting)
        self.assertFalse(c.transport.disconnected)
        hn.clock.advance(5)
        self.assertTrue(c.transport.disconnected)  # abortConnection()

    def test_no_timer_left_after_close(self) -> None:
        hn = Harness()
        for sync_close in (True, False):
            c = hn.connected("c", keepalive=30, sync_close=sync_close)
            c.send(Disconnect())
            if not sync_close:
                c.finish_close()
            self.assertEqual(hn.clock.getDelayedCalls(), [])

    def test_no_timer_left_after_connect_timeout(self) -> None:
        hn = Harness()
        c = hn.client(sync_close=False)
        hn.clock.advance(5)
        self.assertTrue(c.closed)
        c.finish_close()
        self.assertEqual(hn.clock.getDelayedCalls(), [])


class FootprintTests(SynchronousTestCase):
    """An idle connection's attribute dict stays compact: CPython shares keys
    (and stores values inline) only up to 30 attributes per instance."""

    def test_connected_protocol_has_at_most_30_attributes(self) -> None:
        hn = Harness()
        c = hn.connected("small")
        self.assertLessEqual(len(vars(c.protocol)), 30, sorted(vars(c.protocol)))
