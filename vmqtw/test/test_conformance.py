"""Byte-level conformance tests: raw bytes in, raw bytes out (issue #19).

Every packet a client sends and every packet the broker must answer is
written out by hand below, never with our encoder or decoder, so a test
checks the wire against the specification text it quotes:

- MQTT 3.1 (IBM "MQIsdp", protocol level 3),
- MQTT 3.1.1 (OASIS, level 4, normative statements ``MQTT-x.y.z-n``),
- MQTT 5.0 (OASIS, level 5, its own statement numbering).

Each rule is checked at every protocol level it applies to, and each
failure path checks that a second, connected client keeps working.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.auth.chain import Authorizer, Chain
from vmqtw.codec import Connack, Decoder, MalformedPacket, ProtocolError, encode
from vmqtw.config import parse
from vmqtw.core.broker import Broker
from vmqtw.test.wire import disconnect5, props
from vmqtw.test.wire import fixed as packet
from vmqtw.test.wire import utf8 as s
from vmqtw.transport.protocol import MQTTFactory, MQTTProtocol

CONFIG = ("listener.tcp.t = 127.0.0.1:1883\nallow_anonymous = on\n"
          "listener.tcp.t.allowed_protocol_versions = 3,4,5\n")

LEVELS = (3, 4, 5)


# ---------------------------------------------------------------------------
# Wire format, by hand (MQTT 3.1.1 section 1.5 / 2.2, MQTT 5.0 sections 1.5, 2.2):
# the primitives come from the shared builder vmqtw.test.wire; the packets below
# take the protocol level as their first argument.

def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def connect(level: int, client_id: str, clean: bool = True, *, conn_props: bytes = b"",
            will: tuple[str | bytes, bytes] | None = None, will_props: bytes = b"") -> bytes:
    """A CONNECT: "MQIsdp" for level 3, "MQTT" otherwise, keep alive 0."""
    flags = 0x02 if clean else 0x00
    if will is not None:
        flags |= 0x04  # will flag, will QoS 0, will retain 0
    body = s("MQIsdp" if level == 3 else "MQTT") + bytes((level, flags)) + u16(0)
    if level == 5:
        body += props(conn_props)
    body += s(client_id)
    if will is not None:
        if level == 5:
            body += props(will_props)
        body += s(will[0]) + s(will[1])
    return packet(0x10, body)


def subscribe(level: int, pid: int, topic_filter: str, qos: int = 0,
              sub_props: bytes = b"") -> bytes:
    body = u16(pid) + (props(sub_props) if level == 5 else b"") + s(topic_filter) + bytes((qos,))
    return packet(0x82, body)


def unsubscribe(level: int, pid: int, *filters: str) -> bytes:
    body = u16(pid) + (props() if level == 5 else b"") + b"".join(s(f) for f in filters)
    return packet(0xA2, body)


def publish(level: int, topic: str, payload: bytes) -> bytes:
    """A QoS 0 PUBLISH without properties."""
    return packet(0x30, s(topic) + (props() if level == 5 else b"") + payload)


# Broker -> client.
# the default 5.0 CONNACK properties (maximum packet size: the default max_message_size)
CONNACK_OK_5 = bytes.fromhex("1021ffff27001000002501280129012a01")


def connack(level: int, code: int = 0, session_present: bool = False) -> bytes:
    """CONNACK: acknowledge flags, return/reason code (+ properties for 5.0)."""
    body = bytes((1 if session_present else 0, code))
    if level == 5:
        body += CONNACK_OK_5 if code == 0 else props()
    return packet(0x20, body)


def suback(level: int, pid: int, code: int) -> bytes:
    return packet(0x90, u16(pid) + (props() if level == 5 else b"") + bytes((code,)))


def unsuback(level: int, pid: int, *codes: int) -> bytes:
    if level < 5:
        return packet(0xB0, u16(pid))
    return packet(0xB0, u16(pid) + props() + bytes(codes))


DISCONNECT = b"\xe0\x00"
MALFORMED = 0x81
PROTOCOL_ERROR = 0x82


# ---------------------------------------------------------------------------
# In-memory broker and clients.

class Client:
    """One connection: a protocol on a StringTransportWithDisconnection
    (``loseConnection`` calls ``connectionLost`` at once)."""

    _port = 50000

    def __init__(self, factory: MQTTFactory) -> None:
        Client._port += 1
        addr = IPv4Address("TCP", "192.0.2.7", Client._port)
        self.protocol: MQTTProtocol = factory.buildProtocol(addr)
        self.transport = StringTransportWithDisconnection(peerAddress=addr)
        self.transport.protocol = self.protocol  # type: ignore[assignment]
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def lose(self) -> None:
        """The network connection breaks (no DISCONNECT)."""
        self.transport.connected = False
        self.protocol.connectionLost(Failure(ConnectionLost("network down")))

    @property
    def closed(self) -> bool:
        return not self.transport.connected or self.transport.disconnecting


class Server:
    """A broker with one listener that allows MQTT 3.1, 3.1.1 and 5.0."""

    def __init__(self, extra: str = "") -> None:
        self.config = parse(CONFIG + extra)
        self.clock = Clock()
        self.broker = Broker(self.config, self.clock)
        authorizer = Authorizer(Chain([]), self.config.allow_anonymous)
        (listener,) = self.config.listeners
        self.factory = MQTTFactory(self.broker, authorizer, listener, self.clock)

    def client(self) -> Client:
        return Client(self.factory)

    def connected(self, level: int, client_id: str, clean: bool = True,
                  session_present: bool = False, **kw: Any) -> Client:
        """A client that sent CONNECT and got the CONNACK it expects."""
        c = self.client()
        c.send(connect(level, client_id, clean, **kw))
        got = c.take()
        assert got == connack(level, 0, session_present), got
        return c

    def subscriber(self, level: int, client_id: str, topic_filter: str, qos: int = 0,
                   **kw: Any) -> Client:
        c = self.connected(level, client_id, **kw)
        c.send(subscribe(level, 1, topic_filter, qos))
        assert c.take() == suback(level, 1, qos)
        return c


class ConformanceCase(SynchronousTestCase):
    """Nothing may be logged as an error; a bystander pair checks isolation."""

    def tearDown(self) -> None:
        self.assertEqual(self.flushLoggedErrors(), [], "unexpected logged errors")

    def bystanders(self, hn: Server) -> tuple[Client, Client]:
        """A 3.1.1 subscriber to ``ok/#`` and a 5.0 publisher, both connected."""
        return hn.subscriber(4, "bystander-s", "ok/#"), hn.connected(5, "bystander-p")

    def assert_still_working(self, sub: Client, pub: Client) -> None:
        pub.send(publish(5, "ok/1", b"alive"))
        self.assertEqual(sub.take(), publish(4, "ok/1", b"alive"))
        self.assertEqual(pub.take(), b"")
        self.assertFalse(sub.closed)
        self.assertFalse(pub.closed)


def p_session_expiry(seconds: int) -> bytes:
    return b"\x11" + u32(seconds)


def p_will_delay(seconds: int) -> bytes:
    return b"\x18" + u32(seconds)


def p_topic_alias(n: int) -> bytes:
    return b"\x23" + u16(n)


# ---------------------------------------------------------------------------
# 1. The CONNACK acknowledge flags of MQTT 3.1

class ConnackSessionPresentTests(ConformanceCase):
    """MQTT 3.1 reserves the first CONNACK variable-header byte; the Session
    Present flag exists from MQTT 3.1.1 on."""

    def resume(self, level: int) -> bytes:
        """Everything the broker sends to a client that comes back, with
        CleanSession/Clean Start 0, to the persistent session where one QoS 1
        message waits for it."""
        hn = Server()
        expiry = p_session_expiry(60) if level == 5 else b""
        c = hn.connected(level, "p", clean=False, conn_props=expiry)
        c.send(subscribe(level, 1, "t", 1))
        self.assertEqual(c.take(), suback(level, 1, 1))
        c.send(DISCONNECT)
        self.assertTrue(c.closed)
        pub = hn.connected(4, "pub")
        pub.send(packet(0x32, s("t") + u16(9) + b"x"))  # QoS 1 PUBLISH, packet id 9
        self.assertEqual(pub.take(), packet(0x40, u16(9)))
        back = hn.client()
        back.send(connect(level, "p", clean=False, conn_props=expiry))
        return back.take()

    def test_31_connack_first_byte_is_zero_on_resume(self) -> None:
        """MQTT 3.1 section 3.2 (CONNACK): the first byte of the variable
        header is "reserved, not used", so it is 0x00 even when the client
        resumes a stored session (the queued message proves it did)."""
        queued = packet(0x32, s("t") + u16(1) + b"x")
        self.assertEqual(self.resume(3), b"\x20\x02\x00\x00" + queued)

    def test_311_connack_sets_session_present_on_resume(self) -> None:
        """MQTT-3.2.2-2 (3.1.1): CleanSession 0 with stored session state
        gives Session Present 1."""
        queued = packet(0x32, s("t") + u16(1) + b"x")
        self.assertEqual(self.resume(4), b"\x20\x02\x01\x00" + queued)

    def test_5_connack_sets_session_present_on_resume(self) -> None:
        """MQTT-3.2.2-3 (5.0): Clean Start 0 with stored session state gives
        Session Present 1."""
        queued = packet(0x32, s("t") + u16(1) + props() + b"x")
        self.assertEqual(self.resume(5), connack(5, 0, True) + queued)

    def test_session_present_0_on_a_new_session_at_every_level(self) -> None:
        """MQTT-3.2.2-3 (3.1.1 and 5.0), MQTT 3.1 section 3.2: a new session
        (CleanSession / Clean Start 0, no stored state) has the flag at 0."""
        for level in LEVELS:
            hn = Server()
            c = hn.client()
            c.send(connect(level, "n", clean=False))
            self.assertEqual(c.take()[:4],
                             bytes((0x20, 2 if level < 5 else 2 + len(CONNACK_OK_5), 0, 0)))

    def test_encoder_clears_the_flag_for_31(self) -> None:
        """The encoder never sets the reserved bit for a 3.1 peer, and sets
        Session Present for 3.1.1 and 5.0."""
        self.assertEqual(encode(Connack(0, True), 3), b"\x20\x02\x00\x00")
        self.assertEqual(encode(Connack(0, True), 4), b"\x20\x02\x01\x00")
        self.assertEqual(encode(Connack(0, True), 5), b"\x20\x03\x01\x00\x00")


# ---------------------------------------------------------------------------
# 2. The Will Delay Interval and a new connection with Clean Start 1

class WillDelayTests(ConformanceCase):
    """A 5.0 client with Will Delay 3 s and Session Expiry 30 s loses its
    network connection; what a new connection for its ClientID does to the
    delayed will."""

    def setUp(self) -> None:
        self.hn = Server()
        self.watcher = self.hn.subscriber(4, "w", "will/#")
        c = self.hn.connected(5, "c", clean=True, conn_props=p_session_expiry(30),
                              will=("will/c", b"gone"), will_props=p_will_delay(3))
        c.lose()
        self.hn.clock.advance(1)
        self.assertEqual(self.watcher.take(), b"")

    def assert_no_will(self) -> None:
        self.hn.clock.advance(60)  # past the will delay and the session expiry
        self.assertEqual(self.watcher.take(), b"")

    def test_published_when_the_delay_elapses(self) -> None:
        """MQTT-3.1.2-8 (5.0): without a new connection the will goes out
        when the Will Delay Interval has elapsed, not before."""
        self.hn.clock.advance(1.9)
        self.assertEqual(self.watcher.take(), b"")
        self.hn.clock.advance(0.1)
        self.assertEqual(self.watcher.take(), publish(4, "will/c", b"gone"))

    def test_5_clean_start_1_before_the_delay(self) -> None:
        """MQTT-3.1.2-8 and MQTT-3.1.3-9 (5.0): the will is not published
        when "a new Network Connection for the ClientID is opened before the
        Will Delay Interval has elapsed", whatever its Clean Start."""
        c = self.hn.connected(5, "c", clean=True)
        self.assert_no_will()
        self.assertFalse(c.closed)

    def test_5_clean_start_0_before_the_delay(self) -> None:
        """MQTT-3.1.3-9 (5.0): resuming the session in time cancels the will."""
        self.hn.connected(5, "c", clean=False, session_present=True,
                          conn_props=p_session_expiry(30))
        self.assert_no_will()

    def test_311_clean_session_1_before_the_delay(self) -> None:
        """MQTT-3.1.2-8 (5.0) at level 4: a new 3.1.1 connection for the
        ClientID, CleanSession 1, also stops the delayed will."""
        self.hn.connected(4, "c", clean=True)
        self.assert_no_will()

    def test_31_clean_session_1_before_the_delay(self) -> None:
        """MQTT-3.1.2-8 (5.0) at level 3: so does a new 3.1 connection."""
        self.hn.connected(3, "c", clean=True)
        self.assert_no_will()

    def test_new_connection_after_the_delay(self) -> None:
        """MQTT-3.1.2-8 (5.0): once the delay elapsed the will is published,
        exactly once; a later connection does not send it again."""
        self.hn.clock.advance(2)
        self.assertEqual(self.watcher.take(), publish(4, "will/c", b"gone"))
        self.hn.connected(5, "c", clean=True)
        self.assert_no_will()


# ---------------------------------------------------------------------------
# 3. An invalid Will Topic in CONNECT

BAD_WILL_TOPICS = ("", "will/#", "#", "+", "a/+/b", "a+")


class WillTopicTests(ConformanceCase):

    def refused(self, level: int, topic: str) -> bytes:
        """What the broker sends to a CONNECT with will topic ``topic``; checks
        the connection was closed, no session exists and bystanders work."""
        hn = Server()
        sub, pub = self.bystanders(hn)
        c = hn.client()
        c.send(connect(level, "c", will=(topic, b"x")))
        self.assertTrue(c.closed, (level, topic))
        self.assertNotIn(("", "c"), hn.broker.sessions)
        self.assert_still_working(sub, pub)
        return c.take()

    def test_311_closes_without_connack(self) -> None:
        """MQTT-3.1.4-1 and MQTT-4.8.0-1 (3.1.1): a CONNECT that breaks the
        protocol closes the connection without a CONNACK.  A will topic must be
        at least one character long (MQTT-4.7.3-1) and holds no wildcard
        (MQTT-4.7.1-1)."""
        for topic in BAD_WILL_TOPICS:
            self.assertEqual(self.refused(4, topic), b"", topic)

    def test_31_closes_without_connack(self) -> None:
        """MQTT 3.1 at level 3: the same broken will topics close the
        connection without a CONNACK (3.1 has no return code for them)."""
        for topic in BAD_WILL_TOPICS:
            self.assertEqual(self.refused(3, topic), b"", topic)

    def test_5_connack_malformed_then_close(self) -> None:
        """MQTT-4.13.1-1 and MQTT-3.2.2-7 (5.0): a broken CONNECT may get a
        CONNACK with a reason of 0x80 or more, then the connection closes.
        0x90 (Topic Name invalid) is only for a will topic that is "not
        malformed"; an empty one (MQTT-4.7.3-1) or one with a wildcard
        (MQTT-4.7.0-1) gets 0x81 Malformed Packet."""
        for topic in BAD_WILL_TOPICS:
            self.assertEqual(self.refused(5, topic), b"\x20\x03\x00\x81\x00", topic)

    def test_nul_in_will_topic(self) -> None:
        """MQTT-1.5.3-2 (3.1.1) / MQTT-1.5.4-2 (5.0): U+0000 in a string is
        malformed: closed without CONNACK (3.x), CONNACK 0x81 (5.0)."""
        self.assertEqual(self.refused(4, "a\x00b"), b"")
        self.assertEqual(self.refused(3, "a\x00b"), b"")
        self.assertEqual(self.refused(5, "a\x00b"), b"\x20\x03\x00\x81\x00")

    def test_valid_will_topics_accepted(self) -> None:
        """Neighbour case: a will topic of one character, with levels, or
        starting with ``$`` or ``/`` is accepted at every level."""
        for level in LEVELS:
            for topic in ("w", "will/c", "/", "$x/y", "a//b"):
                hn = Server()
                c = hn.client()
                c.send(connect(level, "c", will=(topic, b"x")))
                self.assertEqual(c.take(), connack(level), (level, topic))
                self.assertFalse(c.closed)

    def test_decoder_raises_malformed_packet(self) -> None:
        """The decoder itself rejects the CONNECT (a typed MalformedPacket,
        reason 0x81) at every level."""
        for level in LEVELS:
            for topic in BAD_WILL_TOPICS:
                data = connect(level, "c", will=(topic, b"x"))
                with self.assertRaises(MalformedPacket):
                    Decoder().feed(data)


# ---------------------------------------------------------------------------
# 4. A property that its packet type may not carry

class PropertyNotAllowedTests(ConformanceCase):
    """MQTT 5.0 section 2.2.2.2: "A Control Packet which contains an
    Identifier which is not valid for its packet type ... is a Malformed
    Packet.  If received, use a CONNACK or DISCONNECT packet with Reason Code
    0x81 (Malformed Packet)"."""

    # (what, packet bytes from a connected client), each with one property its
    # packet type may not carry (table 2-4).
    CONNECTED_CASES = (
        ("SUBSCRIBE + topic alias",
         packet(0x82, u16(1) + props(p_topic_alias(1)) + s("t") + b"\x00")),
        ("UNSUBSCRIBE + subscription identifier",
         packet(0xA2, u16(1) + props(b"\x0b\x01") + s("t"))),
        ("PUBLISH + session expiry interval",
         packet(0x30, s("t") + props(p_session_expiry(1)) + b"x")),
        ("PUBLISH + will delay interval",
         packet(0x30, s("t") + props(p_will_delay(1)) + b"x")),
        ("PUBACK + topic alias", packet(0x40, u16(1) + b"\x00" + props(p_topic_alias(1)))),
        ("PUBREC + topic alias", packet(0x50, u16(1) + b"\x00" + props(p_topic_alias(1)))),
        ("PUBREL + topic alias", packet(0x62, u16(1) + b"\x00" + props(p_topic_alias(1)))),
        ("PUBCOMP + topic alias", packet(0x70, u16(1) + b"\x00" + props(p_topic_alias(1)))),
        ("DISCONNECT + topic alias", packet(0xE0, b"\x00" + props(p_topic_alias(1)))),
        ("AUTH + session expiry interval",
         packet(0xF0, b"\x18" + props(p_session_expiry(1)))),
    )

    def test_subscribe_with_topic_alias(self) -> None:
        """5.0 section 2.2.2.2: the Topic Alias in a SUBSCRIBE makes it a
        Malformed Packet: DISCONNECT 0x81 (not 0x82), close; others go on."""
        hn = Server()
        sub, pub = self.bystanders(hn)
        c = hn.connected(5, "c")
        c.send(packet(0x82, u16(1) + props(p_topic_alias(1)) + s("t") + b"\x00"))
        self.assertEqual(c.take(), disconnect5(MALFORMED))
        self.assertTrue(c.closed)
        self.assert_still_working(sub, pub)

    def test_every_packet_a_client_sends(self) -> None:
        """5.0 section 2.2.2.2 for every packet type a client sends after
        CONNECT: DISCONNECT 0x81 and close, and a second client keeps working."""
        for what, data in self.CONNECTED_CASES:
            hn = Server()
            sub, pub = self.bystanders(hn)
            c = hn.connected(5, "c")
            c.send(data)
            self.assertEqual(c.take(), disconnect5(MALFORMED), what)
            self.assertTrue(c.closed, what)
            self.assert_still_working(sub, pub)

    def test_connect_and_will_properties(self) -> None:
        """5.0 section 2.2.2.2 and MQTT-4.13.1-1: a CONNECT, or its Will Properties,
        with a property they may not carry gets CONNACK 0x81, then the close."""
        cases = (
            connect(5, "c", conn_props=p_topic_alias(1)),
            connect(5, "c", conn_props=b"\x02" + u32(5)),  # message expiry interval
            connect(5, "c", will=("w", b"x"), will_props=p_session_expiry(1)),
            connect(5, "c", will=("w", b"x"), will_props=p_topic_alias(1)),
        )
        for data in cases:
            hn = Server()
            sub, pub = self.bystanders(hn)
            c = hn.client()
            c.send(data)
            self.assertEqual(c.take(), b"\x20\x03\x00\x81\x00", data)
            self.assertTrue(c.closed)
            self.assertNotIn(("", "c"), hn.broker.sessions)
            self.assert_still_working(sub, pub)

    def test_allowed_property_accepted(self) -> None:
        """Neighbour case: a property the packet may carry (a User Property
        on SUBSCRIBE, table 2-4) is accepted."""
        hn = Server()
        c = hn.connected(5, "c")
        c.send(packet(0x82, u16(1) + props(b"\x26" + s("k") + s("v")) + s("t") + b"\x00"))
        self.assertEqual(c.take(), suback(5, 1, 0))
        self.assertFalse(c.closed)

    def test_duplicate_property_stays_a_protocol_error(self) -> None:
        """Neighbour case, 5.0 section 3.8.2.1.2: two Subscription Identifiers
        in a SUBSCRIBE are a Protocol Error (0x82), not a malformed packet."""
        hn = Server()
        c = hn.connected(5, "c")
        c.send(packet(0x82, u16(1) + props(b"\x0b\x01\x0b\x02") + s("t") + b"\x00"))
        self.assertEqual(c.take(), disconnect5(PROTOCOL_ERROR))
        self.assertTrue(c.closed)

    def test_decoder_audit_of_table_2_4(self) -> None:
        """Every (packet type, property) pair that table 2-4 does not allow
        raises MalformedPacket (reason 0x81) in the decoder; every allowed
        pair decodes."""
        from vmqtw.codec import properties as P

        sample = {P.BYTE: b"\x01", P.TWO_BYTE_INT: u16(1), P.FOUR_BYTE_INT: u32(1),
                  P.VARINT: b"\x01", P.UTF8: s("a"), P.BINARY: s(b"a"),
                  P.UTF8_PAIR: s("a") + s("b")}
        checked = 0
        for ptype, allowed in P.ALLOWED.items():
            for pid, name, kind, _types in P.PROPERTIES:
                block = props(bytes((pid,)) + sample[kind])
                if name in allowed:
                    P.decode_properties(block, 0, ptype)
                    continue
                with self.assertRaises(MalformedPacket, msg=(ptype, name)) as cm:
                    P.decode_properties(block, 0, ptype)
                self.assertEqual(cm.exception.reason_code, MALFORMED)
                self.assertNotIsInstance(cm.exception, ProtocolError)
                checked += 1
        self.assertGreater(checked, 200)


# ---------------------------------------------------------------------------
# 5. UNSUBSCRIBE topic filters

BAD_FILTERS = ("", "#/test/topic", "a/#/b", "a+", "a/b#", "+a/b", "#/", "a/#b")
GOOD_FILTERS = ("#", "+", "a/+/b", "a/#", "+/+", "/", "/#", "$share/g/a/#", "$SYS/#")


class UnsubscribeFilterTests(ConformanceCase):
    """MQTT-4.7.3-1 (a topic filter is at least one character long) and the
    wildcard rules (3.1.1: MQTT-4.7.1-2 and MQTT-4.7.1-3; 5.0: MQTT-4.7.1-1
    and MQTT-4.7.1-2) apply to every topic filter, UNSUBSCRIBE's too."""

    def unsubscribe_bad(self, level: int, *filters: str) -> bytes:
        hn = Server()
        sub, pub = self.bystanders(hn)
        c = hn.connected(level, "c")
        c.send(unsubscribe(level, 2, *filters))
        data = c.take()
        self.assertTrue(c.closed, filters)
        self.assert_still_working(sub, pub)
        return data

    def test_311_closes_without_unsuback(self) -> None:
        """MQTT-4.8.0-1 (3.1.1): a malformed topic filter in UNSUBSCRIBE is a
        protocol violation: the connection closes, no UNSUBACK."""
        for bad in BAD_FILTERS:
            self.assertEqual(self.unsubscribe_bad(4, bad), b"", bad)

    def test_31_closes_without_unsuback(self) -> None:
        """MQTT 3.1 at level 3: the same, the connection closes."""
        for bad in BAD_FILTERS:
            self.assertEqual(self.unsubscribe_bad(3, bad), b"", bad)

    def test_5_disconnect_malformed(self) -> None:
        """MQTT-4.13.1-1 (5.0): a malformed topic filter makes a Malformed
        Packet: DISCONNECT 0x81, then the close (UNSUBACK 0x8F is for a
        well-formed filter that is not allowed)."""
        for bad in BAD_FILTERS:
            self.assertEqual(self.unsubscribe_bad(5, bad), disconnect5(MALFORMED), bad)

    def test_one_bad_filter_spoils_the_packet(self) -> None:
        """A valid filter next to a malformed one does not save the packet:
        nothing is unsubscribed, no UNSUBACK (3.x) / DISCONNECT 0x81 (5.0)."""
        for level in LEVELS:
            want = disconnect5(MALFORMED) if level == 5 else b""
            self.assertEqual(self.unsubscribe_bad(level, "ok", "a/#/b"), want, level)

    def test_valid_filters_get_unsuback(self) -> None:
        """Neighbour case: well-formed filters, subscribed or not, get an
        UNSUBACK (5.0: 0x00 Success / 0x11 No subscription existed)."""
        for level in LEVELS:
            hn = Server()
            c = hn.subscriber(level, "c", "a/#")
            c.send(unsubscribe(level, 2, "a/#", *GOOD_FILTERS))
            codes = [0x00] + [0x11] * len(GOOD_FILTERS)
            codes[1 + GOOD_FILTERS.index("a/#")] = 0x11  # already gone
            self.assertEqual(c.take(), unsuback(level, 2, *codes), level)
            self.assertFalse(c.closed)
            self.assertEqual(hn.broker.sessions[("", "c")].subscriptions, {})

    def test_decoder_raises_malformed_packet(self) -> None:
        """The decoder itself rejects such an UNSUBSCRIBE with a typed
        MalformedPacket (reason 0x81) at every level."""
        for level in LEVELS:
            for bad in BAD_FILTERS:
                decoder = Decoder(protocol_level=level)
                with self.assertRaises(MalformedPacket, msg=(level, bad)):
                    decoder.feed(unsubscribe(level, 2, bad))
