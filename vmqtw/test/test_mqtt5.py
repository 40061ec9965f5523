"""MQTT 5.0 through MQTTProtocol + Broker, in memory (the Harness of test_protocol).

Bytes the broker must send are written by hand below (MQTT 5.0 section 3),
independently of our encoder; client packets are encoded with our encoder
(the codec has its own vectors) or written as raw bytes where the point is a
broken packet.  Every failure path checks the exact DISCONNECT (or CONNACK)
reason for the one client, and that a bystander keeps working.
"""
from __future__ import annotations

import struct
from typing import Any, Iterable

from twisted.internet import defer
from zope.interface import implementer

from vmqtw.auth.api import (
    NEXT, OK, IAuthOnPublish, IAuthOnPublishM5, IAuthOnRegister, IAuthOnSubscribe,
    IAuthOnSubscribeM5, IOnAuth, error, ok,
)
from vmqtw.codec import (
    Auth, Connect, Disconnect, Puback, Pubcomp, Publish, Pubrec, Pubrel, SubOptions,
    Subscribe, Unsubscribe, Will, encode,
)
from vmqtw.codec import reasons
from vmqtw.core.message import Message
from vmqtw.test.test_protocol import (
    BASE, BrokerTestCase, Client, Harness, connack, publish as publish311, suback as suback311,
)

BASE5 = BASE + "listener.tcp.t.allowed_protocol_versions = 3,4,5\n"


# ---------------------------------------------------------------------------
# Broker -> client bytes, by hand (MQTT 5.0 section 2.2.2 and 3).

def vbi(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return len(b).to_bytes(2, "big") + b


def props(*items: bytes) -> bytes:
    body = b"".join(items)
    return vbi(len(body)) + body


# One property each (identifier + value).
def p_format(v: int) -> bytes: return bytes((0x01, v))
def p_expiry(v: int) -> bytes: return b"\x02" + struct.pack(">I", v)
def p_content_type(s: str) -> bytes: return b"\x03" + _s(s)
def p_response_topic(s: str) -> bytes: return b"\x08" + _s(s)
def p_correlation(b: bytes) -> bytes: return b"\x09" + _s(b)
def p_sub_id(n: int) -> bytes: return b"\x0b" + vbi(n)
def p_assigned_id(s: str) -> bytes: return b"\x12" + _s(s)
def p_server_keep_alive(n: int) -> bytes: return b"\x13" + struct.pack(">H", n)
def p_auth_method(s: str) -> bytes: return b"\x15" + _s(s)
def p_auth_data(b: bytes) -> bytes: return b"\x16" + _s(b)
def p_reason(s: str) -> bytes: return b"\x1f" + _s(s)
def p_receive_max(n: int) -> bytes: return b"\x21" + struct.pack(">H", n)
def p_alias_max(n: int) -> bytes: return b"\x22" + struct.pack(">H", n)
def p_alias(n: int) -> bytes: return b"\x23" + struct.pack(">H", n)
def p_user(k: str, v: str) -> bytes: return b"\x26" + _s(k) + _s(v)
def p_max_packet(n: int) -> bytes: return b"\x27" + struct.pack(">I", n)


AVAILABLE = (b"\x25\x01", b"\x28\x01", b"\x29\x01", b"\x2a\x01")  # retain/wildcard/subid/shared


def connack5(rc: int = 0, session_present: bool = False, *items: bytes) -> bytes:
    body = bytes((1 if session_present else 0, rc)) + props(*items)
    return b"\x20" + vbi(len(body)) + body


def connack_ok(session_present: bool = False, *before: bytes, receive_max: int = 65535,
               limits: Iterable[bytes] = (), after: Iterable[bytes] = ()) -> bytes:
    """The CONNACK of a successful 5.0 CONNECT: ``before`` (assigned client id,
    server keep alive), receive maximum, ``limits`` (topic alias maximum, maximum
    packet size), the availability flags, ``after`` (authentication)."""
    return connack5(0, session_present, *before, p_receive_max(receive_max), *limits,
                    *AVAILABLE, *after)


def publish5(topic: str, payload: bytes, *items: bytes, qos: int = 0, retain: bool = False,
             dup: bool = False, pid: int | None = None) -> bytes:
    body = _s(topic) + (pid.to_bytes(2, "big") if qos else b"") + props(*items) + payload  # type: ignore[union-attr]
    b0 = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    return bytes((b0,)) + vbi(len(body)) + body


def _ack(b0: int, pid: int, rc: int, items: tuple[bytes, ...]) -> bytes:
    if rc == 0 and not items:
        return bytes((b0, 2)) + pid.to_bytes(2, "big")
    body = pid.to_bytes(2, "big") + bytes((rc,)) + props(*items)
    return bytes((b0,)) + vbi(len(body)) + body


def puback5(pid: int, rc: int = 0, *items: bytes) -> bytes:
    return _ack(0x40, pid, rc, items)


def pubrec5(pid: int, rc: int = 0, *items: bytes) -> bytes:
    return _ack(0x50, pid, rc, items)


def pubrel5(pid: int, rc: int = 0) -> bytes:
    return _ack(0x62, pid, rc, ())


def pubcomp5(pid: int, rc: int = 0) -> bytes:
    return _ack(0x70, pid, rc, ())


def suback5(pid: int, *codes: int) -> bytes:
    body = pid.to_bytes(2, "big") + b"\x00" + bytes(codes)
    return b"\x90" + vbi(len(body)) + body


def unsuback5(pid: int, *codes: int) -> bytes:
    body = pid.to_bytes(2, "big") + b"\x00" + bytes(codes)
    return b"\xb0" + vbi(len(body)) + body


def disconnect5(rc: int) -> bytes:
    return bytes((0xE0, 2, rc, 0))


def auth5(rc: int, *items: bytes) -> bytes:
    body = bytes((rc,)) + props(*items)
    return b"\xf0" + vbi(len(body)) + body


NO_MATCH = reasons.NO_MATCHING_SUBSCRIBERS


# ---------------------------------------------------------------------------
# Helpers on top of the Harness.

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
    c.send(Subscribe(pid, list(filters), {"subscription_identifier": [sub_id]} if sub_id else {}))
    codes = expect if expect is not None else tuple(o.qos for _f, o in filters)
    data = c.take()
    if data[:len(suback5(pid, *codes))] != suback5(pid, *codes):
        raise AssertionError(f"expected SUBACK {codes}, got {data!r}")
    c.transport.clear()
    c.transport.write(data[len(suback5(pid, *codes)):])


def pub(c: Client, topic: str, payload: bytes, qos: int = 0, pid: int | None = None,
        retain: bool = False, dup: bool = False, **properties: Any) -> None:
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


# ---------------------------------------------------------------------------
# CONNECT / CONNACK

class ConnectTests(BrokerTestCase):

    def test_connack_announces_the_broker_limits(self) -> None:
        hn = Harness(BASE5)
        c = connect5(hn, "c1")
        self.assertEqual(c.take(), bytes.fromhex("200e00000b21ffff2501280129012a01"))
        self.assertEqual(c.take(), b"")
        self.assertFalse(c.closed)

    def test_connack_limits_from_config(self) -> None:
        hn = Harness(BASE5 + "receive_max_broker = 5\ntopic_alias_max_broker = 10\n"
                     "max_message_size = 1000\nmax_keep_alive = 60\n")
        c = connect5(hn, "c1", keepalive=0)
        self.assertEqual(c.take(), connack5(
            0, False, p_server_keep_alive(60), p_receive_max(5), p_alias_max(10),
            p_max_packet(1000), *AVAILABLE))

    def test_keepalive_within_the_cap_is_kept(self) -> None:
        hn = Harness(BASE5 + "max_keep_alive = 60\n")
        c = connected5(hn, "c1", keepalive=30)
        hn.clock.advance(44)
        self.assertFalse(c.closed)
        hn.clock.advance(1)
        self.assertEqual(c.take(), disconnect5(reasons.KEEP_ALIVE_TIMEOUT))
        self.assertTrue(c.closed)

    def test_keepalive_above_the_cap_answered_with_server_keep_alive(self) -> None:
        hn = Harness(BASE5 + "max_keep_alive = 60\n")
        s, p = BystanderMixin().bystanders(hn)
        c = connected5(hn, "c1", keepalive=600,
                       expected=connack_ok(False, p_server_keep_alive(60)))
        hn.clock.advance(89)
        pub(p, "ok/x", b"keep", qos=0)  # the bystanders talk; c stays silent
        s.take()
        self.assertFalse(c.closed)
        hn.clock.advance(1)
        self.assertEqual(c.take(), disconnect5(reasons.KEEP_ALIVE_TIMEOUT))
        self.assertTrue(c.closed)

    def test_no_cap_no_server_keep_alive(self) -> None:
        hn = Harness(BASE5)
        connected5(hn, "c1", keepalive=0)  # default CONNACK has no server keep alive

    def test_assigned_client_identifier(self) -> None:
        hn = Harness(BASE5)
        for clean in (True, False):
            c = connect5(hn, "", clean=clean)
            data = c.take()
            (key,) = [k for k in hn.broker.sessions if k[1].startswith("vmqtw-")]
            self.assertEqual(data, connack_ok(False, p_assigned_id(key[1])))
            self.assertIs(hn.broker.sessions[key].conn, c.protocol)
            c.send(Disconnect())
            self.assertEqual(hn.broker.sessions, {})

    def test_not_authorized_is_0x87(self) -> None:
        hn = Harness(BASE5.replace("allow_anonymous = on", "allow_anonymous = off"))
        c = connect5(hn, "c1")
        self.assertEqual(c.take(), connack5(reasons.NOT_AUTHORIZED))
        self.assertTrue(c.closed)

    def test_duplicate_property_in_connect(self) -> None:
        hn = Harness(BASE5)
        c = hn.client(level=5)
        # CONNECT v5, clean, keepalive 0, properties: receive maximum twice, id "x"
        body = _s("MQTT") + b"\x05\x02\x00\x00" + props(p_receive_max(1), p_receive_max(2)) + _s("x")
        c.send(b"\x10" + vbi(len(body)) + body)
        self.assertEqual(c.take(), connack5(reasons.PROTOCOL_ERROR))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_malformed_property_in_connect(self) -> None:
        hn = Harness(BASE5)
        c = hn.client(level=5)
        # property identifier 0x7f does not exist
        body = _s("MQTT") + b"\x05\x02\x00\x00" + props(b"\x7f\x01") + _s("x")
        c.send(b"\x10" + vbi(len(body)) + body)
        self.assertEqual(c.take(), connack5(reasons.MALFORMED_PACKET))
        self.assertTrue(c.closed)

    def test_connect_too_large(self) -> None:
        hn = Harness(BASE5 + "max_message_size = 50\n")
        c = connect5(hn, "c" * 80)
        self.assertEqual(c.take(), connack5(reasons.PACKET_TOO_LARGE))
        self.assertTrue(c.closed)

    def test_authentication_data_without_method(self) -> None:
        hn = Harness(BASE5)
        c = connect5(hn, "c1", authentication_data=b"x")
        self.assertEqual(c.take(), connack5(reasons.PROTOCOL_ERROR))
        self.assertTrue(c.closed)

    def test_will_payload_not_utf8(self) -> None:
        hn = Harness(BASE5)
        c = connect5(hn, "c1", will=Will("w", b"\xff\xfe", 0, False,
                                         {"payload_format_indicator": 1}))
        self.assertEqual(c.take(), connack5(reasons.PAYLOAD_FORMAT_INVALID))
        self.assertTrue(c.closed)

    def test_will_response_topic_with_wildcard(self) -> None:
        hn = Harness(BASE5)
        c = connect5(hn, "c1", will=Will("w", b"x", 0, False, {"response_topic": "r/#"}))
        self.assertEqual(c.take(), connack5(reasons.PROTOCOL_ERROR))
        self.assertTrue(c.closed)

    def test_second_connect(self) -> None:
        hn = Harness(BASE5)
        s, p = BystanderMixin().bystanders(hn)
        c = connected5(hn, "c1")
        c.send(Connect("c1", 5))
        self.assertEqual(c.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.assertTrue(c.closed)
        BystanderMixin().still_working(s, p)

    def test_mqtt311_on_a_5_listener_unchanged(self) -> None:
        hn = Harness(BASE5)
        c = hn.client(level=4)
        c.connect("old")
        self.assertEqual(c.take(), connack(0))


# ---------------------------------------------------------------------------
# Clean start and session expiry

class SessionExpiryTests(BrokerTestCase):

    def offline_subscriber(self, hn: Harness, expiry: int, client_id: str = "s") -> None:
        s = connected5(hn, client_id, clean=True, session_expiry_interval=expiry)
        subscribe5(s, 1, ("t", SubOptions(1)))
        s.send(Disconnect())
        self.assertTrue(s.closed)

    def test_expiry_0_ends_with_the_connection(self) -> None:
        hn = Harness(BASE5)
        s = connected5(hn, "s", clean=False)
        subscribe5(s, 1, ("t", SubOptions(1)))
        s.lose()
        self.assertEqual(hn.broker.sessions, {})

    def test_resume_within_expiry(self) -> None:
        hn = Harness(BASE5)
        self.offline_subscriber(hn, 60)
        p = connected5(hn, "p")
        pub(p, "t", b"queued", qos=1, pid=5)
        self.assertEqual(p.take(), puback5(5))
        hn.clock.advance(59)
        s2 = connect5(hn, "s", clean=False, session_expiry_interval=60)
        self.assertEqual(s2.take(), connack_ok(True) + publish5("t", b"queued", qos=1, pid=1))

    def test_clean_start_discards(self) -> None:
        hn = Harness(BASE5)
        self.offline_subscriber(hn, 60)
        s2 = connected5(hn, "s", clean=True, session_present=False)
        self.assertEqual(hn.broker.sessions[("", "s")].subscriptions, {})
        s2.send(Disconnect())

    def test_expires_after_the_interval(self) -> None:
        hn = Harness(BASE5 + "persistent_client_expiration = 1w\n")
        self.offline_subscriber(hn, 10)
        hn.clock.advance(9)
        self.assertIn(("", "s"), hn.broker.sessions)
        hn.clock.advance(1)
        self.assertNotIn(("", "s"), hn.broker.sessions)

    def test_never_expires(self) -> None:
        """0xFFFFFFFF: never, whatever persistent_client_expiration (3.x only) says."""
        hn = Harness(BASE5 + "persistent_client_expiration = 1h\n")
        self.offline_subscriber(hn, 0xFFFFFFFF)
        hn.clock.advance(10 * 24 * 3600)
        self.assertIn(("", "s"), hn.broker.sessions)
        connected5(hn, "s", clean=False, session_present=True)

    def test_persistent_client_expiration_is_for_3x_only(self) -> None:
        hn = Harness(BASE5 + "persistent_client_expiration = 1h\n")
        c = hn.connected("old", clean=False)
        c.send(Disconnect())
        hn.clock.advance(3599)
        self.assertIn(("", "old"), hn.broker.sessions)
        hn.clock.advance(1)
        self.assertNotIn(("", "old"), hn.broker.sessions)

    def test_disconnect_shortens_to_0(self) -> None:
        hn = Harness(BASE5)
        s = connected5(hn, "s", session_expiry_interval=60)
        s.send(Disconnect(0, {"session_expiry_interval": 0}))
        self.assertTrue(s.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_disconnect_extends(self) -> None:
        hn = Harness(BASE5)
        s = connected5(hn, "s", session_expiry_interval=10)
        s.send(Disconnect(0, {"session_expiry_interval": 100}))
        hn.clock.advance(99)
        self.assertIn(("", "s"), hn.broker.sessions)
        hn.clock.advance(1)
        self.assertEqual(hn.broker.sessions, {})

    def test_disconnect_from_0_to_nonzero_is_a_protocol_error(self) -> None:
        hn = Harness(BASE5)
        w = connected5(hn, "w")
        subscribe5(w, 1, ("will", SubOptions(0)))
        s = connected5(hn, "s", will=Will("will", b"bye"))
        s.send(Disconnect(0, {"session_expiry_interval": 30}))
        self.assertEqual(s.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.assertTrue(s.closed)
        self.assertNotIn(("", "s"), hn.broker.sessions)  # still ends: expiry stays 0
        self.assertEqual(w.take(), publish5("will", b"bye"))  # not a valid DISCONNECT
        self.assertFalse(w.closed)


# ---------------------------------------------------------------------------
# PUBLISH properties

class PublishPropertiesTests(BrokerTestCase, BystanderMixin):

    def test_properties_passed_through_in_order(self) -> None:
        hn = Harness(BASE5 + "topic_alias_max_broker = 5\n")
        s = connected5(hn, "s")
        subscribe5(s, 1, ("t", SubOptions(1)))
        p = connected5(hn, "p")
        pub(p, "t", b"\xc3\xa9t\xc3\xa9", qos=1, pid=3, payload_format_indicator=1,
            content_type="text/plain", response_topic="reply/here",
            correlation_data=b"\x00\x01", topic_alias=2,
            user_property=[("z", "1"), ("a", "2"), ("z", "3")])
        self.assertEqual(p.take(), puback5(3))
        self.assertEqual(s.take(), publish5(
            "t", b"\xc3\xa9t\xc3\xa9", p_format(1), p_content_type("text/plain"),
            p_response_topic("reply/here"), p_correlation(b"\x00\x01"),
            p_user("z", "1"), p_user("a", "2"), p_user("z", "3"), qos=1, pid=1))

    def test_v5_publisher_to_311_subscriber(self) -> None:
        hn = Harness(BASE5)
        s = hn.subscriber("old", ("t", 1))
        p = connected5(hn, "p")
        pub(p, "t", b"hi", qos=1, pid=1, user_property=[("k", "v")], content_type="c",
            message_expiry_interval=100)
        self.assertEqual(s.take(), publish311("t", b"hi", qos=1, pid=1))

    def test_311_publisher_to_v5_subscriber(self) -> None:
        hn = Harness(BASE5)
        s = connected5(hn, "s")
        subscribe5(s, 1, ("t", SubOptions(2)), sub_id=9)
        p = hn.connected("old")
        p.publish("t", b"hi", qos=2, pid=4)
        self.assertEqual(s.take(), publish5("t", b"hi", p_sub_id(9), qos=2, pid=1))

    def test_puback_no_matching_subscribers(self) -> None:
        hn = Harness(BASE5)
        p = connected5(hn, "p")
        pub(p, "nobody", b"x", qos=1, pid=1)
        self.assertEqual(p.take(), puback5(1, NO_MATCH))
        pub(p, "nobody", b"x", qos=2, pid=2)
        self.assertEqual(p.take(), pubrec5(2, NO_MATCH))
        p.send(Pubrel(2))
        self.assertEqual(p.take(), pubcomp5(2))

    def test_payload_format_invalid_qos0_disconnects(self) -> None:
        hn = Harness(BASE5)
        s, p = self.bystanders(hn)
        bad = connected5(hn, "bad")
        pub(bad, "ok/1", b"\xff", payload_format_indicator=1)
        self.assertEqual(bad.take(), disconnect5(reasons.PAYLOAD_FORMAT_INVALID))
        self.assertTrue(bad.closed)
        self.assertEqual(s.take(), b"")
        self.still_working(s, p)

    def test_payload_format_invalid_qos1_and_2_acknowledged(self) -> None:
        hn = Harness(BASE5)
        s, p = self.bystanders(hn)
        c = connected5(hn, "c")
        pub(c, "ok/1", b"\xff", qos=1, pid=1, payload_format_indicator=1)
        self.assertEqual(c.take(), puback5(1, reasons.PAYLOAD_FORMAT_INVALID,
                                           p_reason("payload is not valid UTF-8")))
        pub(c, "ok/1", b"\xff", qos=2, pid=2, payload_format_indicator=1)
        self.assertEqual(c.take(), pubrec5(2, reasons.PAYLOAD_FORMAT_INVALID,
                                           p_reason("payload is not valid UTF-8")))
        self.assertEqual(s.take(), b"")
        self.assertFalse(c.closed)
        pub(c, "ok/1", b"fine", qos=1, pid=3, payload_format_indicator=1)
        self.assertEqual(c.take(), puback5(3))
        self.assertEqual(s.take(), publish5("ok/1", b"fine", p_format(1), qos=1, pid=1))

    def test_no_reason_string_without_problem_information(self) -> None:
        hn = Harness(BASE5)
        c = connected5(hn, "c", request_problem_information=0)
        pub(c, "t", b"\xff", qos=1, pid=1, payload_format_indicator=1)
        self.assertEqual(c.take(), puback5(1, reasons.PAYLOAD_FORMAT_INVALID))

    def test_response_topic_with_wildcard(self) -> None:
        hn = Harness(BASE5)
        s, p = self.bystanders(hn)
        bad = connected5(hn, "bad")
        pub(bad, "ok/1", b"x", response_topic="r/+")
        self.assertEqual(bad.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.assertTrue(bad.closed)
        self.still_working(s, p)

    def test_subscription_identifier_from_a_client(self) -> None:
        hn = Harness(BASE5)
        s, p = self.bystanders(hn)
        bad = connected5(hn, "bad")
        pub(bad, "ok/1", b"x", subscription_identifier=[3])
        self.assertEqual(bad.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.still_working(s, p)

    def test_invalid_topic_name(self) -> None:
        hn = Harness(BASE5)
        s, p = self.bystanders(hn)
        bad = connected5(hn, "bad")
        pub(bad, "ok/#", b"x")
        self.assertEqual(bad.take(), disconnect5(reasons.TOPIC_NAME_INVALID))
        self.assertTrue(bad.closed)
        self.still_working(s, p)

    def test_one_encoding_per_variant(self) -> None:
        """Fan-out: 3.x recipients share one encoding, 5.0 recipients with the
        same subscription identifiers share another."""
        hn = Harness(BASE5)
        olds = [hn.subscriber("o%d" % i, ("t", 0)) for i in range(2)]
        news = [connected5(hn, "n%d" % i) for i in range(3)]
        for i, n in enumerate(news):
            subscribe5(n, 1, ("t", SubOptions(0)), sub_id=5 if i else None)
        seen: list[Any] = []
        original = Message.encoded5

        def spy(self: Message, *a: Any, **kw: Any) -> bytes:
            seen.append(a)
            return original(self, *a, **kw)
        Message.encoded5 = spy  # type: ignore[method-assign]
        self.addCleanup(setattr, Message, "encoded5", original)
        p = connected5(hn, "p")
        pub(p, "t", b"x", user_property=[("k", "v")])
        self.assertEqual(len(seen), 2)  # no ids, ids (5,)
        for o in olds:
            self.assertEqual(o.take(), publish311("t", b"x"))
        self.assertEqual(news[0].take(), publish5("t", b"x", p_user("k", "v")))
        for n in news[1:]:
            self.assertEqual(n.take(), publish5("t", b"x", p_user("k", "v"), p_sub_id(5)))


# ---------------------------------------------------------------------------
# Message expiry

class MessageExpiryTests(BrokerTestCase):

    def offline(self, hn: Harness, topic: str = "t", qos: int = 1) -> None:
        s = connected5(hn, "s", session_expiry_interval=1000)
        subscribe5(s, 1, (topic, SubOptions(qos)))
        s.send(Disconnect())

    def test_live_delivery_carries_the_interval(self) -> None:
        hn = Harness(BASE5)
        s = connected5(hn, "s")
        subscribe5(s, 1, ("t", SubOptions(0)))
        p = connected5(hn, "p")
        pub(p, "t", b"x", message_expiry_interval=30)
        self.assertEqual(s.take(), publish5("t", b"x", p_expiry(30)))

    def test_remaining_time_forwarded_from_the_queue(self) -> None:
        hn = Harness(BASE5)
        self.offline(hn)
        p = connected5(hn, "p")
        pub(p, "t", b"x", qos=1, pid=1, message_expiry_interval=60)
        hn.clock.advance(20)
        s2 = connect5(hn, "s", clean=False, session_expiry_interval=1000)
        self.assertEqual(s2.take(), connack_ok(True) + publish5("t", b"x", p_expiry(40),
                                                                  qos=1, pid=1))

    def test_expired_in_the_queue_is_dropped(self) -> None:
        hn = Harness(BASE5)
        self.offline(hn)
        p = connected5(hn, "p")
        pub(p, "t", b"old", qos=1, pid=1, message_expiry_interval=10)
        pub(p, "t", b"new", qos=1, pid=2)
        hn.clock.advance(10)
        s2 = connect5(hn, "s", clean=False, session_expiry_interval=1000)
        self.assertEqual(s2.take(), connack_ok(True) + publish5("t", b"new", qos=1, pid=1))
        self.assertEqual(s2.session.dropped, 1)

    def test_expired_while_waiting_for_the_window(self) -> None:
        hn = Harness(BASE5)
        s = connected5(hn, "s", receive_maximum=1)
        subscribe5(s, 1, ("t", SubOptions(1)))
        p = connected5(hn, "p")
        pub(p, "t", b"1", qos=1, pid=1)
        pub(p, "t", b"2", qos=1, pid=2, message_expiry_interval=5)
        self.assertEqual(s.take(), publish5("t", b"1", qos=1, pid=1))
        hn.clock.advance(6)
        s.send(Puback(1))
        self.assertEqual(s.take(), b"")
        self.assertEqual(len(s.session.queue), 0)

    def test_inflight_resent_even_when_expired(self) -> None:
        """Once sent, a message is delivered: the resend says 0 seconds left."""
        hn = Harness(BASE5)
        s = connected5(hn, "s", session_expiry_interval=100)
        subscribe5(s, 1, ("t", SubOptions(1)))
        p = connected5(hn, "p")
        pub(p, "t", b"x", qos=1, pid=1, message_expiry_interval=5)
        self.assertEqual(s.take(), publish5("t", b"x", p_expiry(5), qos=1, pid=1))
        s.lose()
        hn.clock.advance(10)
        s2 = connect5(hn, "s", clean=False, session_expiry_interval=100)
        self.assertEqual(s2.take(), connack_ok(True) + publish5("t", b"x", p_expiry(0),
                                                                  qos=1, pid=1, dup=True))

    def test_retained_expiry(self) -> None:
        hn = Harness(BASE5)
        p = connected5(hn, "p")
        pub(p, "r", b"kept", qos=1, pid=1, retain=True, message_expiry_interval=5)
        self.assertEqual(p.take(), puback5(1, NO_MATCH))
        hn.clock.advance(2)
        s = connected5(hn, "s")
        subscribe5(s, 1, ("r", SubOptions(1)))
        self.assertEqual(s.take(), publish5("r", b"kept", p_expiry(3), qos=1, pid=1, retain=True))
        hn.clock.advance(3)
        s2 = connected5(hn, "s2")
        subscribe5(s2, 1, ("r", SubOptions(1)))
        self.assertEqual(s2.take(), b"")
        self.assertEqual(hn.broker.store.retained_count(), 0)

    def test_3x_subscriber_also_gets_no_expired_message(self) -> None:
        hn = Harness(BASE5)
        p = connected5(hn, "p")
        pub(p, "r", b"kept", qos=1, pid=1, retain=True, message_expiry_interval=5)
        hn.clock.advance(5)
        s = hn.connected("old")
        s.subscribe(1, ("r", 1))
        self.assertEqual(s.take(), suback311(1, 1))


# ---------------------------------------------------------------------------
# Topic aliases

class TopicAliasTests(BrokerTestCase, BystanderMixin):

    def test_inbound_alias(self) -> None:
        hn = Harness(BASE5 + "topic_alias_max_broker = 5\n")
        s = connected5(hn, "s", expected=connack_ok(limits=[p_alias_max(5)]))
        subscribe5(s, 1, ("a/b", SubOptions(0)))
        old = hn.subscriber("old", ("a/b", 0))
        p = connect5(hn, "p")
        p.take()
        pub(p, "a/b", b"1", topic_alias=5)
        pub(p, "", b"2", topic_alias=5)
        pub(p, "a/b", b"3")
        self.assertEqual(s.take(), publish5("a/b", b"1") + publish5("a/b", b"2")
                         + publish5("a/b", b"3"))
        self.assertEqual(old.take(), publish311("a/b", b"1") + publish311("a/b", b"2")
                         + publish311("a/b", b"3"))
        # re-mapped
        pub(p, "x", b"4", topic_alias=5)
        pub(p, "", b"5", topic_alias=5)
        self.assertEqual(s.take(), b"")
        self.assertFalse(p.closed)

    def test_alias_above_the_maximum(self) -> None:
        for config, alias in ((BASE5, 1), (BASE5 + "topic_alias_max_broker = 5\n", 6)):
            hn = Harness(config)
            s, p = self.bystanders(hn)
            bad = connect5(hn, "bad")
            bad.take()
            pub(bad, "ok/x", b"x", topic_alias=alias)
            self.assertEqual(bad.take(), disconnect5(reasons.TOPIC_ALIAS_INVALID))
            self.assertTrue(bad.closed)
            self.still_working(s, p)

    def test_alias_zero(self) -> None:
        hn = Harness(BASE5 + "topic_alias_max_broker = 5\n")
        s, p = self.bystanders(hn)
        bad = connect5(hn, "bad")
        bad.take()
        pub(bad, "ok/x", b"x", topic_alias=0)
        self.assertEqual(bad.take(), disconnect5(reasons.TOPIC_ALIAS_INVALID))
        self.assertTrue(bad.closed)
        self.still_working(s, p)

    def test_unknown_alias(self) -> None:
        hn = Harness(BASE5 + "topic_alias_max_broker = 5\n")
        s, p = self.bystanders(hn)
        bad = connect5(hn, "bad")
        bad.take()
        pub(bad, "", b"x", topic_alias=2)
        self.assertEqual(bad.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.assertTrue(bad.closed)
        self.still_working(s, p)

    def test_empty_topic_without_alias(self) -> None:
        hn = Harness(BASE5)
        s, p = self.bystanders(hn)
        bad = connected5(hn, "bad")
        pub(bad, "", b"x")
        self.assertEqual(bad.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.still_working(s, p)

    def test_aliases_are_per_connection(self) -> None:
        hn = Harness(BASE5 + "topic_alias_max_broker = 5\n")
        p = connect5(hn, "p", session_expiry_interval=100)
        p.take()
        pub(p, "a", b"1", topic_alias=1)
        p.send(Disconnect())
        p2 = connect5(hn, "p", clean=False, session_expiry_interval=100)
        p2.take()
        pub(p2, "", b"2", topic_alias=1)
        self.assertEqual(p2.take(), disconnect5(reasons.PROTOCOL_ERROR))

    def test_outbound_aliases(self) -> None:
        hn = Harness(BASE5 + "topic_alias_max_client = 2\n")
        s = connected5(hn, "s", topic_alias_maximum=10)  # capped to 2 by the broker
        subscribe5(s, 1, ("t/#", SubOptions(1)))
        p = connected5(hn, "p")
        for i, topic in enumerate(["t/1", "t/1", "t/2", "t/3", "t/2", "t/1"]):
            pub(p, topic, b"%d" % i)
        self.assertEqual(s.take(),
                         publish5("t/1", b"0", p_alias(1))
                         + publish5("", b"1", p_alias(1))
                         + publish5("t/2", b"2", p_alias(2))
                         + publish5("t/3", b"3")           # no alias left
                         + publish5("", b"4", p_alias(2))
                         + publish5("", b"5", p_alias(1)))
        pub(p, "t/1", b"q", qos=1, pid=9)
        self.assertEqual(s.take(), publish5("", b"q", p_alias(1), qos=1, pid=1))

    def test_no_outbound_aliases_when_the_broker_allows_none(self) -> None:
        hn = Harness(BASE5)  # topic_alias_max_client = 0 (VerneMQ's default): off
        s = connected5(hn, "s", topic_alias_maximum=10)
        subscribe5(s, 1, ("t", SubOptions(0)))
        p = connected5(hn, "p")
        pub(p, "t", b"0")
        pub(p, "t", b"1")
        self.assertEqual(s.take(), publish5("t", b"0") + publish5("t", b"1"))

    def test_no_outbound_aliases_when_the_client_allows_none(self) -> None:
        hn = Harness(BASE5 + "topic_alias_max_client = 2\n")
        s = connected5(hn, "s")
        subscribe5(s, 1, ("t", SubOptions(0)))
        p = connected5(hn, "p")
        pub(p, "t", b"0")
        pub(p, "t", b"1")
        self.assertEqual(s.take(), publish5("t", b"0") + publish5("t", b"1"))

    def test_outbound_aliases_restart_on_reconnect(self) -> None:
        hn = Harness(BASE5 + "topic_alias_max_client = 2\n")
        s = connected5(hn, "s", topic_alias_maximum=2, session_expiry_interval=100)
        subscribe5(s, 1, ("t", SubOptions(1)))
        p = connected5(hn, "p")
        pub(p, "t", b"0", qos=1, pid=1)
        self.assertEqual(s.take(), publish5("t", b"0", p_alias(1), qos=1, pid=1))
        s.lose()
        s2 = connect5(hn, "s", clean=False, topic_alias_maximum=2, session_expiry_interval=100)
        self.assertEqual(s2.take(), connack_ok(True)
                         + publish5("t", b"0", p_alias(1), qos=1, pid=1, dup=True))


# ---------------------------------------------------------------------------
# Receive maximum

class ReceiveMaximumTests(BrokerTestCase, BystanderMixin):

    def test_client_exceeding_the_broker_receive_maximum(self) -> None:
        hn = Harness(BASE5 + "receive_max_broker = 2\n")
        s = connected5(hn, "bystander-s", expected=connack_ok(receive_max=2))
        subscribe5(s, 1, ("ok/#", SubOptions(1)))
        p = connected5(hn, "bystander-p", expected=connack_ok(receive_max=2))
        c = connected5(hn, "c", expected=connack_ok(receive_max=2))
        pub(c, "x", b"1", qos=2, pid=1)
        pub(c, "x", b"2", qos=2, pid=2)
        self.assertEqual(c.take(), pubrec5(1, NO_MATCH) + pubrec5(2, NO_MATCH))
        pub(c, "x", b"2", qos=2, pid=2, dup=True)      # a resend does not count
        self.assertEqual(c.take(), pubrec5(2))
        c.send(Pubrel(1))                              # frees one
        self.assertEqual(c.take(), pubcomp5(1))
        pub(c, "x", b"3", qos=1, pid=3)
        self.assertEqual(c.take(), puback5(3, NO_MATCH))
        pub(c, "x", b"4", qos=2, pid=4)
        self.assertEqual(c.take(), pubrec5(4, NO_MATCH))
        pub(c, "x", b"5", qos=1, pid=5)                # third unacknowledged
        self.assertEqual(c.take(), disconnect5(reasons.RECEIVE_MAXIMUM_EXCEEDED))
        self.assertTrue(c.closed)
        self.still_working(s, p)

    def test_broker_respects_the_client_receive_maximum(self) -> None:
        hn = Harness(BASE5)
        s = connected5(hn, "s", receive_maximum=2)
        subscribe5(s, 1, ("t", SubOptions(2)))
        p = connected5(hn, "p")
        for i in range(4):
            pub(p, "t", b"%d" % i, qos=1, pid=i + 1)
        self.assertEqual(s.take(), publish5("t", b"0", qos=1, pid=1)
                         + publish5("t", b"1", qos=1, pid=2))
        s.send(Puback(1))
        self.assertEqual(s.take(), publish5("t", b"2", qos=1, pid=3))
        s.send(Puback(2), Puback(3))
        self.assertEqual(s.take(), publish5("t", b"3", qos=1, pid=4))

    def test_max_inflight_messages_still_applies(self) -> None:
        hn = Harness(BASE5 + "max_inflight_messages = 1\n")
        s = connected5(hn, "s", receive_maximum=5)
        subscribe5(s, 1, ("t", SubOptions(1)))
        p = connected5(hn, "p")
        pub(p, "t", b"0", qos=1, pid=1)
        pub(p, "t", b"1", qos=1, pid=2)
        self.assertEqual(s.take(), publish5("t", b"0", qos=1, pid=1))

    def test_pubrec_error_from_the_client_ends_the_flow(self) -> None:
        hn = Harness(BASE5)
        s = connected5(hn, "s", receive_maximum=1)
        subscribe5(s, 1, ("t", SubOptions(2)))
        p = connected5(hn, "p")
        pub(p, "t", b"0", qos=2, pid=1)
        pub(p, "t", b"1", qos=2, pid=2)
        self.assertEqual(s.take(), publish5("t", b"0", qos=2, pid=1))
        s.send(Pubrec(1, reasons.UNSPECIFIED_ERROR))
        self.assertEqual(s.take(), publish5("t", b"1", qos=2, pid=2))  # no PUBREL for 1
        s.send(Pubrec(2))
        self.assertEqual(s.take(), pubrel5(2))


# ---------------------------------------------------------------------------
# Maximum packet size

class MaximumPacketSizeTests(BrokerTestCase, BystanderMixin):

    def test_inbound_packet_too_large(self) -> None:
        hn = Harness(BASE5 + "max_message_size = 100\n")
        s = connected5(hn, "bystander-s", expected=connack_ok(limits=[p_max_packet(100)]))
        subscribe5(s, 1, ("ok/#", SubOptions(1)))
        big = connect5(hn, "big")
        big.take()
        pub(big, "ok/1", b"x" * 200)
        self.assertEqual(big.take(), disconnect5(reasons.PACKET_TOO_LARGE))
        self.assertTrue(big.closed)
        self.assertEqual(s.take(), b"")

    def test_outbound_too_large_is_dropped(self) -> None:
        hn = Harness(BASE5)
        s = connected5(hn, "s", maximum_packet_size=40)
        subscribe5(s, 1, ("t", SubOptions(1)))
        p = connected5(hn, "p")
        pub(p, "t", b"x" * 100, qos=1, pid=1)
        pub(p, "t", b"x" * 100)
        pub(p, "t", b"small", qos=1, pid=2)
        self.assertEqual(p.take(), puback5(1) + puback5(2))
        self.assertEqual(s.take(), publish5("t", b"small", qos=1, pid=1))
        self.assertEqual(s.session.dropped, 2)
        self.assertEqual(s.session.inflight.keys(), {1})

    def test_outbound_exact_limit_is_sent(self) -> None:
        hn = Harness(BASE5)
        size = len(publish5("t", b"x" * 10))
        s = connected5(hn, "s", maximum_packet_size=size)
        subscribe5(s, 1, ("t", SubOptions(0)))
        p = connected5(hn, "p")
        pub(p, "t", b"x" * 10)
        pub(p, "t", b"x" * 11)
        self.assertEqual(s.take(), publish5("t", b"x" * 10))

    def test_dropped_alias_is_not_used(self) -> None:
        hn = Harness(BASE5 + "topic_alias_max_client = 5\n")
        s = connected5(hn, "s", maximum_packet_size=30, topic_alias_maximum=5)
        subscribe5(s, 1, ("t", SubOptions(0)))
        p = connected5(hn, "p")
        pub(p, "t", b"x" * 40)
        pub(p, "t", b"y")
        self.assertEqual(s.take(), publish5("t", b"y", p_alias(1)))


# ---------------------------------------------------------------------------
# Subscription options and identifiers, shared subscriptions

class SubscriptionTests(BrokerTestCase, BystanderMixin):

    def test_no_local(self) -> None:
        hn = Harness(BASE5)
        c = connected5(hn, "c")
        subscribe5(c, 1, ("t", SubOptions(0, no_local=True)))
        other = connected5(hn, "other")
        subscribe5(other, 1, ("t", SubOptions(0)))
        pub(c, "t", b"mine")
        self.assertEqual(c.take(), b"")
        self.assertEqual(other.take(), publish5("t", b"mine"))
        pub(other, "t", b"theirs")
        self.assertEqual(c.take(), publish5("t", b"theirs"))

    def test_no_local_with_an_overlapping_subscription(self) -> None:
        hn = Harness(BASE5)
        c = connected5(hn, "c")
        subscribe5(c, 1, ("t", SubOptions(1, no_local=True)), ("#", SubOptions(0)))
        pub(c, "t", b"mine", qos=1, pid=1)
        self.assertEqual(c.take(), publish5("t", b"mine") + puback5(1))

    def test_retain_as_published(self) -> None:
        hn = Harness(BASE5)
        s = connected5(hn, "s")
        subscribe5(s, 1, ("a", SubOptions(0, retain_as_published=True)),
                   ("b", SubOptions(0)))
        p = connected5(hn, "p")
        pub(p, "a", b"1", retain=True)
        pub(p, "b", b"2", retain=True)
        self.assertEqual(s.take(), publish5("a", b"1", retain=True) + publish5("b", b"2"))

    def test_retain_handling(self) -> None:
        hn = Harness(BASE5)
        p = connected5(hn, "p")
        pub(p, "r", b"kept", retain=True)
        s = connected5(hn, "s")
        retained = publish5("r", b"kept", retain=True)
        subscribe5(s, 1, ("r", SubOptions(0, retain_handling=0)))
        self.assertEqual(s.take(), retained)
        subscribe5(s, 2, ("r", SubOptions(0, retain_handling=0)))
        self.assertEqual(s.take(), retained)          # 0: at every subscribe
        subscribe5(s, 3, ("r", SubOptions(0, retain_handling=1)))
        self.assertEqual(s.take(), b"")               # 1: only for a new subscription
        subscribe5(s, 4, ("r2/#", SubOptions(0, retain_handling=1)))
        pub(p, "r2/x", b"k2", retain=True)
        s.take()
        s.send(Unsubscribe(5, ["r"]))
        self.assertEqual(s.take(), unsuback5(5, 0))
        subscribe5(s, 6, ("r", SubOptions(0, retain_handling=1)))
        self.assertEqual(s.take(), retained)
        subscribe5(s, 7, ("#", SubOptions(0, retain_handling=2)))
        self.assertEqual(s.take(), b"")               # 2: never

    def test_subscription_identifier(self) -> None:
        hn = Harness(BASE5)
        s = connected5(hn, "s")
        subscribe5(s, 1, ("t/#", SubOptions(1)), sub_id=7)
        subscribe5(s, 2, ("u", SubOptions(1)), sub_id=268435455)
        p = connected5(hn, "p")
        pub(p, "t/x", b"1")
        pub(p, "u", b"2")
        self.assertEqual(s.take(), publish5("t/x", b"1", p_sub_id(7))
                         + publish5("u", b"2", p_sub_id(268435455)))
        subscribe5(s, 3, ("t/#", SubOptions(1)))  # replaced without an identifier
        pub(p, "t/x", b"3")
        self.assertEqual(s.take(), publish5("t/x", b"3"))

    def test_overlapping_subscriptions_one_copy_with_every_identifier(self) -> None:
        hn = Harness(BASE5)
        s = connected5(hn, "s")
        subscribe5(s, 1, ("a/#", SubOptions(0)), sub_id=1)
        subscribe5(s, 2, ("a/b", SubOptions(2)), sub_id=2)
        subscribe5(s, 3, ("+/b", SubOptions(1)))              # no identifier
        p = connected5(hn, "p")
        pub(p, "a/b", b"x", qos=2, pid=1)
        self.assertEqual(s.take(), publish5("a/b", b"x", p_sub_id(1), p_sub_id(2), qos=2,
                                            pid=1))
        pub(p, "a/c", b"y", qos=2, pid=2)
        self.assertEqual(s.take(), publish5("a/c", b"y", p_sub_id(1)))

    def test_identifier_on_retained_messages(self) -> None:
        hn = Harness(BASE5)
        p = connected5(hn, "p")
        pub(p, "r", b"kept", retain=True)
        s = connected5(hn, "s")
        subscribe5(s, 1, ("r", SubOptions(0)), sub_id=42)
        self.assertEqual(s.take(), publish5("r", b"kept", p_sub_id(42), retain=True))

    def test_identifier_kept_for_offline_delivery(self) -> None:
        hn = Harness(BASE5)
        s = connected5(hn, "s", session_expiry_interval=100)
        subscribe5(s, 1, ("t", SubOptions(1)), sub_id=3)
        s.send(Disconnect())
        p = connected5(hn, "p")
        pub(p, "t", b"x", qos=1, pid=1)
        s2 = connect5(hn, "s", clean=False, session_expiry_interval=100)
        self.assertEqual(s2.take(), connack_ok(True) + publish5("t", b"x", p_sub_id(3),
                                                                  qos=1, pid=1))

    def test_unsubscribe_reason_codes(self) -> None:
        hn = Harness(BASE5)
        s = connected5(hn, "s")
        subscribe5(s, 1, ("a", SubOptions(0)), sub_id=4)
        s.send(Unsubscribe(2, ["a", "b"]))
        self.assertEqual(s.take(), unsuback5(2, 0x00, reasons.NO_SUBSCRIPTION_EXISTED))
        self.assertEqual(s.session.sub_ids, {})

    def test_invalid_filter(self) -> None:
        hn = Harness(BASE5)
        s = connected5(hn, "s")
        subscribe5(s, 1, ("a/#/b", SubOptions(0)), ("ok", SubOptions(1)),
                   expect=(reasons.TOPIC_FILTER_INVALID, 1))
        self.assertFalse(s.closed)

    def test_shared_subscription(self) -> None:
        hn = Harness(BASE5)
        p = connected5(hn, "p")
        pub(p, "t", b"kept", retain=True)
        members = [connected5(hn, "m%d" % i) for i in range(2)]
        for m in members:
            subscribe5(m, 1, ("$share/g/t", SubOptions(1)), sub_id=11)
            self.assertEqual(m.take(), b"")  # no retained message on $share
        pub(p, "t", b"1", qos=1, pid=1)
        pub(p, "t", b"2", qos=1, pid=2)
        got = [m.take() for m in members]
        self.assertEqual(sorted(got), sorted([publish5("t", b"1", p_sub_id(11), qos=1, pid=1),
                                              publish5("t", b"2", p_sub_id(11), qos=1, pid=1)]))

    def test_no_local_on_a_shared_subscription(self) -> None:
        hn = Harness(BASE5)
        s, p = self.bystanders(hn)
        bad = connected5(hn, "bad")
        bad.send(Subscribe(1, [("$share/g/t", SubOptions(0, no_local=True))]))
        self.assertEqual(bad.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.assertTrue(bad.closed)
        self.still_working(s, p)


# ---------------------------------------------------------------------------
# Will properties and the will delay interval

class WillTests(BrokerTestCase):

    def watcher(self, hn: Harness) -> Client:
        w = connected5(hn, "w")
        subscribe5(w, 1, ("will/#", SubOptions(1)))
        return w

    def test_will_properties(self) -> None:
        hn = Harness(BASE5)
        w = self.watcher(hn)
        old = hn.subscriber("old", ("will/#", 0))
        c = connected5(hn, "c", will=Will("will/c", b"gone", 1, False, {
            "will_delay_interval": 0, "content_type": "text/plain",
            "user_property": [("b", "2"), ("a", "1")], "message_expiry_interval": 99}))
        c.lose()
        self.assertEqual(w.take(), publish5("will/c", b"gone", p_content_type("text/plain"),
                                            p_user("b", "2"), p_user("a", "1"), p_expiry(99),
                                            qos=1, pid=1))
        self.assertEqual(old.take(), publish311("will/c", b"gone"))

    def test_delayed(self) -> None:
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c", session_expiry_interval=60,
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 10}))
        c.lose()
        hn.clock.advance(9)
        self.assertEqual(w.take(), b"")
        hn.clock.advance(1)
        self.assertEqual(w.take(), publish5("will/c", b"gone"))

    def test_cancelled_when_the_session_resumes_in_time(self) -> None:
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c", session_expiry_interval=60,
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 10}))
        c.lose()
        hn.clock.advance(5)
        connected5(hn, "c", clean=False, session_present=True, session_expiry_interval=60)
        hn.clock.advance(100)
        self.assertEqual(w.take(), b"")

    def test_sent_when_the_session_ends_first(self) -> None:
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c", session_expiry_interval=5,
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 100}))
        c.lose()
        hn.clock.advance(4)
        self.assertEqual(w.take(), b"")
        hn.clock.advance(1)
        self.assertEqual(w.take(), publish5("will/c", b"gone"))

    def test_session_expiry_0_sends_it_at_once(self) -> None:
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c",
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 100}))
        c.lose()
        self.assertEqual(w.take(), publish5("will/c", b"gone"))

    def test_capped_by_max_last_will_delay(self) -> None:
        hn = Harness(BASE5 + "max_last_will_delay = 3\n")
        w = self.watcher(hn)
        c = connected5(hn, "c", session_expiry_interval=60,
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 50}))
        c.lose()
        hn.clock.advance(3)
        self.assertEqual(w.take(), publish5("will/c", b"gone"))

    def test_message_expiry_starts_when_published(self) -> None:
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c", session_expiry_interval=60, will=Will(
            "will/c", b"gone", 0, False,
            {"will_delay_interval": 10, "message_expiry_interval": 30}))
        c.lose()
        hn.clock.advance(10)
        self.assertEqual(w.take(), publish5("will/c", b"gone", p_expiry(30)))

    def test_disconnect_with_will_message(self) -> None:
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c", will=Will("will/c", b"gone"))
        c.send(Disconnect(reasons.DISCONNECT_WITH_WILL))
        self.assertEqual(c.take(), b"")  # no DISCONNECT back
        self.assertEqual(w.take(), publish5("will/c", b"gone"))
        d = connected5(hn, "d", will=Will("will/d", b"gone"))
        d.send(Disconnect(0))
        self.assertEqual(w.take(), b"")

    def test_takeover_resuming_the_session_cancels_a_delayed_will(self) -> None:
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c", session_expiry_interval=60,
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 10}))
        connected5(hn, "c", clean=False, session_present=True, session_expiry_interval=60)
        self.assertEqual(c.take(), disconnect5(reasons.SESSION_TAKEN_OVER))
        hn.clock.advance(20)
        self.assertEqual(w.take(), b"")

    def test_takeover_with_clean_start_sends_a_delayed_will(self) -> None:
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c", session_expiry_interval=60,
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 10}))
        connected5(hn, "c", clean=True)
        self.assertEqual(c.take(), disconnect5(reasons.SESSION_TAKEN_OVER))
        self.assertEqual(w.take(), publish5("will/c", b"gone"))


# ---------------------------------------------------------------------------
# DISCONNECT from the broker, one reason per cause

class ServerDisconnectTests(BrokerTestCase, BystanderMixin):

    def test_session_taken_over(self) -> None:
        hn = Harness(BASE5)
        c1 = connected5(hn, "dup")
        connected5(hn, "dup")
        self.assertEqual(c1.take(), disconnect5(reasons.SESSION_TAKEN_OVER))
        self.assertTrue(c1.closed)

    def test_keep_alive_timeout(self) -> None:
        hn = Harness(BASE5)
        c = connected5(hn, "c", keepalive=10)
        hn.clock.advance(15)
        self.assertEqual(c.take(), disconnect5(reasons.KEEP_ALIVE_TIMEOUT))

    def test_max_connection_lifetime(self) -> None:
        hn = Harness(BASE5 + "listener.tcp.t.max_connection_lifetime = 30\n")
        c = connected5(hn, "c")
        hn.clock.advance(30)
        self.assertEqual(c.take(), disconnect5(reasons.MAXIMUM_CONNECT_TIME))

    def test_server_shutting_down(self) -> None:
        hn = Harness(BASE5)
        c = connected5(hn, "c")
        c.protocol.close(reasons.SERVER_SHUTTING_DOWN)  # what BrokerService.disconnect_all does
        self.assertEqual(c.take(), disconnect5(reasons.SERVER_SHUTTING_DOWN))
        self.assertTrue(c.closed)

    def test_malformed_and_protocol_errors(self) -> None:
        cases = [
            # PUBACK with a property length overrunning the packet
            (b"\x40\x05\x00\x01\x00\x09\x00", reasons.MALFORMED_PACKET),
            # PUBLISH with an unknown property
            (b"\x30\x07\x00\x01t\x02\x7f\x00x", reasons.MALFORMED_PACKET),
            # PUBLISH with the content type twice
            (b"\x30\x0d\x00\x01t\x08\x03\x00\x01a\x03\x00\x01bx", reasons.PROTOCOL_ERROR),
            # SUBSCRIBE carrying a topic alias (not allowed on SUBSCRIBE): 5.0 2.2.2.2
            (b"\x82\x0a\x00\x01\x03\x23\x00\x01\x00\x01t\x00", reasons.MALFORMED_PACKET),
            # SUBSCRIBE with reserved option bits set
            (b"\x82\x07\x00\x01\x00\x00\x01t\xc0", reasons.MALFORMED_PACKET),
            # a PUBLISH of QoS 3
            (b"\x36\x06\x00\x01t\x00\x01\x00", reasons.MALFORMED_PACKET),
            # CONNACK from a client
            (b"\x20\x03\x00\x00\x00", reasons.PROTOCOL_ERROR),
        ]
        for junk, rc in cases:
            hn = Harness(BASE5)
            s, p = self.bystanders(hn)
            bad = connected5(hn, "bad")
            bad.send(junk)
            self.assertEqual(bad.take(), disconnect5(rc), junk)
            self.assertTrue(bad.closed)
            self.still_working(s, p)

    def test_client_disconnect_gets_no_disconnect(self) -> None:
        hn = Harness(BASE5)
        c = connected5(hn, "c")
        c.send(Disconnect(reasons.UNSPECIFIED_ERROR, {"reason_string": "bye"}))
        self.assertEqual(c.take(), b"")
        self.assertTrue(c.closed)


# ---------------------------------------------------------------------------
# Enhanced authentication (AUTH packets, the on_auth hook)

@implementer(IOnAuth, IAuthOnRegister)
class ChallengeAuth:
    """on_auth: method "CHAL"; the client must answer b"secret" to the challenge."""

    def __init__(self, deferred: bool = False) -> None:
        self.requests: list[Any] = []
        self.registered: list[Any] = []
        self.deferred = deferred

    def on_auth(self, request: Any) -> Any:
        self.requests.append(request)
        if request.method != "CHAL":
            result: Any = error("bad_authentication_method")
        elif request.data in (None, b"hello"):
            result = ok(continue_authentication=True, authentication_data=b"challenge")
        elif request.data == b"secret":
            result = ok(authentication_data=b"welcome")
        else:
            result = error("not_authorized")
        return defer.succeed(result) if self.deferred else result

    def auth_on_register(self, request: Any) -> Any:
        self.registered.append(request)
        return OK


class EnhancedAuthTests(BrokerTestCase, BystanderMixin):

    config = BASE5.replace("allow_anonymous = on", "allow_anonymous = off")

    def challenge(self, hn: Harness, method: str = "CHAL", **kw: Any) -> Client:
        c = connect5(hn, "c", authentication_method=method, authentication_data=b"hello", **kw)
        self.assertEqual(c.take(), auth5(0x18, p_auth_method("CHAL"), p_auth_data(b"challenge")))
        return c

    def test_no_plugin_is_bad_authentication_method(self) -> None:
        hn = Harness(BASE5)
        c = connect5(hn, "c", authentication_method="SCRAM-SHA-1")
        self.assertEqual(c.take(), connack5(reasons.BAD_AUTHENTICATION_METHOD))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_unknown_method(self) -> None:
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth())])
        c = connect5(hn, "c", authentication_method="OTHER")
        self.assertEqual(c.take(), connack5(reasons.BAD_AUTHENTICATION_METHOD))

    def test_challenge_and_success(self) -> None:
        for deferred in (False, True):
            plugin = ChallengeAuth(deferred)
            hn = Harness(self.config, plugins=[("chal", plugin)])
            c = self.challenge(hn)
            c.send(Auth(0x18, {"authentication_method": "CHAL", "authentication_data": b"secret"}))
            self.assertEqual(c.take(), connack_ok(
                False, after=[p_auth_method("CHAL"), p_auth_data(b"welcome")]))
            self.assertEqual([r.data for r in plugin.requests], [b"hello", b"secret"])
            self.assertEqual(len(plugin.registered), 1)  # auth_on_register still runs
            self.assertIn(("", "c"), hn.broker.sessions)

    def test_wrong_answer(self) -> None:
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth())])
        c = self.challenge(hn)
        c.send(Auth(0x18, {"authentication_method": "CHAL", "authentication_data": b"wrong"}))
        self.assertEqual(c.take(), connack5(reasons.NOT_AUTHORIZED))
        self.assertTrue(c.closed)

    def test_other_method_in_auth(self) -> None:
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth())])
        c = self.challenge(hn)
        c.send(Auth(0x18, {"authentication_method": "X", "authentication_data": b"secret"}))
        self.assertEqual(c.take(), connack5(reasons.PROTOCOL_ERROR))
        self.assertTrue(c.closed)

    def test_publish_during_the_exchange(self) -> None:
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth())])
        c = self.challenge(hn)
        pub(c, "t", b"too early")
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_packets_held_while_the_plugin_decides(self) -> None:
        """AUTH and PUBLISH arrive in one chunk: the PUBLISH is handled after CONNACK."""
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth(deferred=True))])
        s = connected5(hn, "s", authentication_method="CHAL", authentication_data=b"secret",
                       expected=connack_ok(False, after=[p_auth_method("CHAL"),
                                                         p_auth_data(b"welcome")]))
        subscribe5(s, 1, ("t", SubOptions(0)))
        c = self.challenge(hn)
        c.send(Auth(0x18, {"authentication_method": "CHAL", "authentication_data": b"secret"}),
               Publish("t", b"after", 0))
        self.assertEqual(c.take(), connack_ok(
            False, after=[p_auth_method("CHAL"), p_auth_data(b"welcome")]))
        self.assertEqual(s.take(), publish5("t", b"after"))

    def test_exchange_times_out(self) -> None:
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth())])
        c = self.challenge(hn)
        hn.clock.advance(5)
        self.assertTrue(c.closed)

    def test_reauthentication(self) -> None:
        plugin = ChallengeAuth()
        hn = Harness(self.config, plugins=[("chal", plugin)])
        c = connected5(hn, "c", authentication_method="CHAL", authentication_data=b"secret",
                       expected=connack_ok(False, after=[p_auth_method("CHAL"),
                                                         p_auth_data(b"welcome")]))
        c.send(Auth(0x19, {"authentication_method": "CHAL", "authentication_data": b"hello"}))
        self.assertEqual(c.take(), auth5(0x18, p_auth_method("CHAL"), p_auth_data(b"challenge")))
        pub(c, "t", b"meanwhile", qos=1, pid=1)        # other traffic goes on
        self.assertEqual(c.take(), puback5(1, NO_MATCH))
        c.send(Auth(0x18, {"authentication_method": "CHAL", "authentication_data": b"secret"}))
        self.assertEqual(c.take(), auth5(0x00, p_auth_method("CHAL"), p_auth_data(b"welcome")))
        self.assertTrue(plugin.requests[-1].reauthenticate)
        self.assertFalse(c.closed)

    def test_reauthentication_failure(self) -> None:
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth())])
        s, p = self.bystanders_with_auth(hn)
        c = connected5(hn, "c", authentication_method="CHAL", authentication_data=b"secret",
                       expected=connack_ok(False, after=[p_auth_method("CHAL"),
                                                         p_auth_data(b"welcome")]))
        c.send(Auth(0x19, {"authentication_method": "CHAL", "authentication_data": b"nope"}))
        self.assertEqual(c.take(), disconnect5(reasons.NOT_AUTHORIZED))
        self.assertTrue(c.closed)
        self.still_working(s, p)

    def bystanders_with_auth(self, hn: Harness) -> tuple[Client, Client]:
        out = []
        for cid in ("bystander-s", "bystander-p"):
            out.append(connected5(hn, cid, authentication_method="CHAL",
                                  authentication_data=b"secret",
                                  expected=connack_ok(False, after=[
                                      p_auth_method("CHAL"), p_auth_data(b"welcome")])))
        subscribe5(out[0], 1, ("ok/#", SubOptions(1)))
        return out[0], out[1]

    def test_unexpected_auth(self) -> None:
        hn = Harness(BASE5)
        s, p = self.bystanders(hn)
        c = connected5(hn, "c")                                      # no method at CONNECT
        c.send(Auth(0x19, {"authentication_method": "CHAL"}))
        self.assertEqual(c.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.still_working(s, p)

    def test_continue_without_a_challenge(self) -> None:
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth())])
        c = connected5(hn, "c", authentication_method="CHAL", authentication_data=b"secret",
                       expected=connack_ok(False, after=[p_auth_method("CHAL"),
                                                         p_auth_data(b"welcome")]))
        c.send(Auth(0x18, {"authentication_method": "CHAL", "authentication_data": b"secret"}))
        self.assertEqual(c.take(), disconnect5(reasons.PROTOCOL_ERROR))


# ---------------------------------------------------------------------------
# auth_on_publish_m5 / auth_on_subscribe_m5

@implementer(IAuthOnPublishM5, IAuthOnSubscribeM5, IAuthOnPublish, IAuthOnSubscribe)
class M5Hooks:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def auth_on_publish_m5(self, client: Any, topic: str, payload: bytes, qos: int,
                           retain: bool, properties: dict[str, Any]) -> Any:
        self.calls.append(("publish_m5", properties))
        return error() if topic.startswith("deny") else OK

    def auth_on_publish(self, client: Any, topic: str, payload: bytes, qos: int,
                        retain: bool) -> Any:
        self.calls.append(("publish", topic))
        return error() if topic.startswith("deny") else OK

    def auth_on_subscribe_m5(self, client: Any, topics: list[tuple[str, int]],
                             properties: dict[str, Any]) -> Any:
        self.calls.append(("subscribe_m5", properties))
        return error() if any(t.startswith("deny") for t, _q in topics) else OK

    def auth_on_subscribe(self, client: Any, topics: list[tuple[str, int]]) -> Any:
        self.calls.append(("subscribe", topics))
        return error() if any(t.startswith("deny") for t, _q in topics) else OK


@implementer(IAuthOnPublish)
class PlainOnly:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def auth_on_publish(self, client: Any, topic: str, payload: bytes, qos: int,
                        retain: bool) -> Any:
        self.topics.append(topic)
        return NEXT if topic.startswith("pass") else OK


class AuthHookM5Tests(BrokerTestCase):

    def test_publish_m5_sees_properties_and_denies(self) -> None:
        hooks = M5Hooks()
        hn = Harness(BASE5, plugins=[("m5", hooks)])
        c = connected5(hn, "c")
        pub(c, "deny/x", b"x", qos=1, pid=1, user_property=[("k", "v")])
        self.assertEqual(c.take(), puback5(1, reasons.NOT_AUTHORIZED, p_reason("not authorized")))
        pub(c, "deny/x", b"x", qos=2, pid=2)
        self.assertEqual(c.take(), pubrec5(2, reasons.NOT_AUTHORIZED, p_reason("not authorized")))
        pub(c, "deny/x", b"x")                      # QoS 0: dropped silently
        self.assertEqual(c.take(), b"")
        self.assertFalse(c.closed)
        self.assertEqual(hooks.calls[0], ("publish_m5", {"user_property": [("k", "v")]}))
        self.assertEqual({name for name, _ in hooks.calls}, {"publish_m5"})

    def test_plain_hooks_for_3x_clients(self) -> None:
        hooks = M5Hooks()
        hn = Harness(BASE5, plugins=[("m5", hooks)])
        c = hn.connected("old")
        c.publish("ok", b"x")
        c.subscribe(1, ("ok", 0))
        self.assertEqual([name for name, _ in hooks.calls], ["publish", "subscribe"])

    def test_plain_hook_used_for_5_when_a_plugin_has_no_m5_variant(self) -> None:
        plain, hooks = PlainOnly(), M5Hooks()
        hn = Harness(BASE5, plugins=[("plain", plain), ("m5", hooks)])
        c = connected5(hn, "c")
        pub(c, "pass/x", b"x", qos=1, pid=1)          # plain says NEXT, then the m5 hook
        pub(c, "y", b"x", qos=1, pid=2)               # plain says OK
        self.assertEqual(c.take(), puback5(1, NO_MATCH) + puback5(2, NO_MATCH))
        self.assertEqual(plain.topics, ["pass/x", "y"])
        self.assertEqual([name for name, _ in hooks.calls], ["publish_m5"])

    def test_subscribe_m5_denies_entries(self) -> None:
        hooks = M5Hooks()
        hn = Harness(BASE5, plugins=[("m5", hooks)])
        c = connected5(hn, "c")
        c.send(Subscribe(1, [("deny/a", SubOptions(1)), ("bad/#/x", SubOptions(0))],
                         {"subscription_identifier": [3]}))
        self.assertEqual(c.take(), suback5(1, reasons.NOT_AUTHORIZED,
                                           reasons.TOPIC_FILTER_INVALID))
        self.assertEqual(hooks.calls, [("subscribe_m5", {"subscription_identifier": [3]})])
        self.assertEqual(c.session.subscriptions, {})

    def test_will_checked_with_publish_m5(self) -> None:
        hooks = M5Hooks()
        hn = Harness(BASE5, plugins=[("m5", hooks)])
        c = connect5(hn, "c", will=Will("deny/will", b"x", 0, False, {"content_type": "t"}))
        self.assertEqual(c.take(), connack5(reasons.NOT_AUTHORIZED))
        self.assertEqual(hooks.calls[0][0], "publish_m5")


# ---------------------------------------------------------------------------
# 3.1.1 and 5.0 side by side

class InteropTests(BrokerTestCase):

    def test_both_ways_all_qos(self) -> None:
        hn = Harness(BASE5)
        new = connected5(hn, "new")
        subscribe5(new, 1, ("from/old", SubOptions(2)))
        old = hn.subscriber("old", ("from/new", 2))
        for qos in (0, 1, 2):
            pid = qos or None
            pub(new, "from/new", b"n%d" % qos, qos=qos, pid=pid, user_property=[("a", "b")],
                correlation_data=b"id", response_topic="from/old")
            old.publish("from/old", b"o%d" % qos, qos=qos, pid=pid)
        got_old = old.packets()
        got_new = new.packets()
        self.assertEqual([(p.topic, p.payload, p.qos, p.properties) for p in got_old
                          if p.__class__ is Publish],
                         [("from/new", b"n%d" % q, q, {}) for q in (0, 1, 2)])
        self.assertEqual([(p.topic, p.payload, p.qos) for p in got_new
                          if p.__class__ is Publish],
                         [("from/old", b"o%d" % q, q) for q in (0, 1, 2)])


# ---------------------------------------------------------------------------
# Stopping the broker

class StopTests(BrokerTestCase):

    def test_stop_cancels_expiry_and_publishes_delayed_wills(self) -> None:
        hn = Harness(BASE5)
        w = connected5(hn, "w")
        subscribe5(w, 1, ("will/#", SubOptions(0)))
        c = connected5(hn, "c", session_expiry_interval=60,
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 30}))
        c.lose()
        live = connected5(hn, "live", session_expiry_interval=60)
        hn.broker.stop()
        self.assertEqual(w.take(), publish5("will/c", b"gone"))
        live.lose()                                 # closes after stop(): no new timer
        w.lose()
        self.assertEqual(hn.clock.getDelayedCalls(), [])
        self.assertIn(("", "live"), hn.broker.sessions)
