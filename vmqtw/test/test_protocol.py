"""MQTTProtocol + Broker + Authorizer driven through in-memory transports.

Every test builds a broker from a config text (``vmqtw.config.parse``),
connects protocols to ``StringTransportWithDisconnection`` objects and runs
time on a ``Clock``; nothing touches a socket (``vmqtw.test.harness``).  Bytes
the broker must send are written by hand (``vmqtw.test.wire``: ``connack``,
``suback``, ``publish``...) instead of with our encoder; the client side is encoded with our encoder (the codec has
its own vectors) and decoded with a client-side ``Decoder``.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import (
    Connect, Disconnect, Pingreq, Puback, Pubcomp, Publish, Pubrec, Pubrel,
    Unsubscribe, Will, encode,
)
from vmqtw.core.message import Message
from vmqtw.test.harness import BASE, BrokerTestCase, Client, Harness
from vmqtw.test.wire import (
    PINGRESP, connack, puback, pubcomp, publish, pubrec, pubrel, suback, unsuback,
)
from vmqtw.transport.protocol import CONNECTED


# ---------------------------------------------------------------------------
# CONNECT

class ConnectTests(BrokerTestCase):

    def test_anonymous_allowed(self) -> None:
        """With allow_anonymous = on a CONNECT without credentials is accepted: CONNACK 0,
        the connection is CONNECTED and a session exists for the client id."""
        hn = Harness()
        c = hn.client()
        c.connect("c1")
        self.assertEqual(c.take(), connack(0))
        self.assertFalse(c.closed)
        self.assertEqual(c.protocol.state, CONNECTED)
        self.assertIn(("", "c1"), hn.broker.sessions)

    def test_anonymous_refused_without_plugin(self) -> None:
        """With allow_anonymous = off and no authentication plugin a CONNECT is refused with
        CONNACK 5 (not authorized), the connection closed and no session created."""
        hn = Harness("listener.tcp.t = 127.0.0.1:1883\nallow_anonymous = off\n")
        c = hn.client()
        c.connect("c1")
        self.assertEqual(c.take(), connack(5))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_allow_anonymous_override(self) -> None:
        """A listener's allow_anonymous_override = on accepts anonymous clients on that
        listener only, while the other listeners still refuse them."""
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
        """A 3.1.1 CONNECT on a listener whose allowed_protocol_versions is 3 is refused
        with CONNACK 1 (unacceptable protocol version) and closed, while a 3.1 CONNECT is
        accepted."""
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
        """A CONNECT with protocol level 6 is answered with CONNACK 1 and the connection
        closed (3.1.1 s3.1.2.2)."""
        hn = Harness()
        c = hn.client()
        # CONNECT "MQTT" level 6, clean, keepalive 60, client id "x".
        c.send(bytes.fromhex("100d00044d5154540602003c000178"))
        self.assertEqual(c.take(), connack(1))
        self.assertTrue(c.closed)

    def test_unknown_protocol_name(self) -> None:
        """A CONNECT with an unknown protocol name ("MQTX") is answered with CONNACK 1 and
        the connection closed."""
        hn = Harness()
        c = hn.client()
        # CONNECT "MQTX" level 4.
        c.send(bytes.fromhex("100d00044d5154580402003c000178"))
        self.assertEqual(c.take(), connack(1))
        self.assertTrue(c.closed)

    def test_empty_client_id_311_clean_gets_an_id(self) -> None:
        """A 3.1.1 clean session CONNECT with an empty client id is accepted and the broker
        assigns a unique id (3.1.1 s3.1.3.1); two such clients get different sessions."""
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
        """A 3.1.1 persistent CONNECT (clean session 0) with an empty client id is refused
        with CONNACK 2 (identifier rejected) and closed."""
        hn = Harness()
        c = hn.client()
        c.connect("", clean=False)
        self.assertEqual(c.take(), connack(2))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_empty_client_id_31_refused(self) -> None:
        """An MQTT 3.1 CONNECT with an empty client id is refused with CONNACK 2, even with
        clean session."""
        hn = Harness()
        c = hn.client(level=3)
        c.connect("", clean=True)
        self.assertEqual(c.take(), connack(2))
        self.assertTrue(c.closed)

    def test_client_id_too_long(self) -> None:
        """A client id longer than max_client_id_size is refused with CONNACK 2; one exactly
        that long is accepted."""
        hn = Harness(BASE + "max_client_id_size = 5\n")
        c = hn.client()
        c.connect("abcdef")
        self.assertEqual(c.take(), connack(2))
        self.assertTrue(c.closed)
        d = hn.client()
        d.connect("abcde")
        self.assertEqual(d.take(), connack(0))

    def test_client_id_size_counts_utf8_bytes(self) -> None:
        """max_client_id_size counts UTF-8 bytes, not characters."""
        hn = Harness(BASE + "max_client_id_size = 5\n")
        c = hn.client()
        c.connect("\u00e9\u00e9\u00e9")  # 3 characters, 6 bytes
        self.assertEqual(c.take(), connack(2))

    def test_second_connect_closes(self) -> None:
        """A second CONNECT on a connected connection is a protocol violation (3.1.1 s3.1):
        the connection is closed without an answer and its clean session removed."""
        hn = Harness()
        c = hn.connected("c1")
        c.connect("c1")
        self.assertEqual(c.take(), b"")
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_first_packet_not_connect_closes(self) -> None:
        """A connection whose first packet is not a CONNECT is closed without an answer."""
        hn = Harness()
        c = hn.client()
        c.send(Pingreq())
        self.assertEqual(c.take(), b"")
        self.assertTrue(c.closed)

    def test_first_packet_publish_closes(self) -> None:
        """A PUBLISH before CONNECT closes the connection and is not routed."""
        hn = Harness()
        s = hn.subscriber("s", ("#", 0))
        c = hn.client()
        c.publish("a", b"x")
        self.assertTrue(c.closed)
        self.assertEqual(s.take(), b"")

    def test_connect_timeout(self) -> None:
        """A connection that sends no CONNECT within mqtt_connect_timeout (milliseconds) is
        closed without an answer."""
        hn = Harness(BASE + "mqtt_connect_timeout = 2000\n")
        c = hn.client()
        hn.clock.advance(1.9)
        self.assertFalse(c.closed)
        hn.clock.advance(0.2)
        self.assertTrue(c.closed)
        self.assertEqual(c.take(), b"")

    def test_connect_timeout_cancelled_by_connect(self) -> None:
        """Once the CONNECT is accepted, the connect timeout no longer applies."""
        hn = Harness()
        c = hn.connected("c1")
        hn.clock.advance(100)
        self.assertFalse(c.closed)

    def test_connect_in_pieces(self) -> None:
        """A CONNECT arriving one byte at a time is answered with CONNACK 0 once complete."""
        hn = Harness()
        c = hn.client()
        data = encode(Connect("c1", 4, True, 0), 4)
        for i in range(len(data)):
            c.send(data[i:i + 1])
        self.assertEqual(c.take(), connack(0))

    def test_keepalive_timeout(self) -> None:
        """A client silent for one and a half keep alive periods is disconnected (3.1.1
        s3.1.2.10), not before, and its clean session removed."""
        hn = Harness()
        c = hn.connected("c1", keepalive=10)
        hn.clock.advance(14.9)
        self.assertFalse(c.closed)
        hn.clock.advance(0.2)
        self.assertTrue(c.closed)
        self.assertNotIn(("", "c1"), hn.broker.sessions)

    def test_pingreq_resets_keepalive(self) -> None:
        """Each PINGREQ is answered with PINGRESP and restarts the keep alive timer: the
        client is disconnected one and a half periods after its last packet."""
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
        """Keep alive 0 turns the keep alive timeout off."""
        hn = Harness()
        c = hn.connected("c1", keepalive=0)
        hn.clock.advance(100000)
        self.assertFalse(c.closed)

    def test_max_connection_lifetime(self) -> None:
        """A listener's max_connection_lifetime closes the connection after that many
        seconds even when the client is active."""
        hn = Harness(BASE + "listener.tcp.t.max_connection_lifetime = 30\n")
        c = hn.connected("c1", keepalive=10)
        for _ in range(5):
            hn.clock.advance(5.9)
            c.send(Pingreq())
        self.assertFalse(c.closed)  # t = 29.5
        hn.clock.advance(0.6)
        self.assertTrue(c.closed)

    def test_disconnect_closes(self) -> None:
        """DISCONNECT closes the connection and ends a clean session."""
        hn = Harness()
        c = hn.connected("c1")
        c.send(Disconnect())
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})


# ---------------------------------------------------------------------------
# PUBLISH in and out, all QoS

class PublishTests(BrokerTestCase):

    def test_qos0(self) -> None:
        """A QoS 0 PUBLISH is not acknowledged and is delivered to a QoS 0 subscriber."""
        hn = Harness()
        s = hn.subscriber("s", ("a/b", 0))
        p = hn.connected("p")
        p.publish("a/b", b"hello")
        self.assertEqual(p.take(), b"")
        self.assertEqual(s.take(), publish("a/b", b"hello"))

    def test_qos1_in_and_out(self) -> None:
        """A QoS 1 PUBLISH is answered with PUBACK carrying the publisher's packet id; the
        subscriber gets it with the broker's own packet ids, held in flight until its
        PUBACK."""
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
        """A QoS 2 PUBLISH is answered with PUBREC and routed once; its packet id is
        remembered until PUBREL, answered with PUBCOMP, after which the id may carry a
        new message."""
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
        """A QoS 2 delivery goes PUBLISH, PUBREC from the subscriber, PUBREL from the
        broker, PUBCOMP, and stays in flight until the PUBCOMP."""
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
        """A QoS 2 PUBLISH resent with DUP before PUBREL is answered with PUBREC again but
        delivered only once."""
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
        """A message is delivered at the lower of its QoS and the subscription's granted
        QoS."""
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
        """With upgrade_outgoing_qos = on a message is delivered at the subscription's QoS
        even when published at a lower one."""
        hn = Harness(BASE + "upgrade_outgoing_qos = on\n")
        s = hn.subscriber("s", ("t", 2))
        p = hn.connected("p")
        p.publish("t", b"x", qos=0)
        self.assertEqual(s.take(), publish("t", b"x", qos=2, pid=1))

    def test_wildcard_in_publish_topic_closes(self) -> None:
        """A PUBLISH whose topic contains "+" or "#" closes the publisher's connection
        without acknowledgement and is not routed; other clients are unaffected."""
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
        """A PUBLISH whose topic has more levels than topic_max_depth closes the connection
        and is not routed; one at the limit is delivered."""
        hn = Harness(BASE + "topic_max_depth = 3\n")
        s = hn.subscriber("s", ("#", 0))
        p = hn.connected("p")
        p.publish("a/b/c", b"ok")
        self.assertEqual(s.take(), publish("a/b/c", b"ok"))
        p.publish("a/b/c/d", b"deep")
        self.assertTrue(p.closed)
        self.assertEqual(s.take(), b"")

    def test_puback_for_unknown_id_ignored(self) -> None:
        """A PUBACK or PUBCOMP for a packet id not in flight is ignored and the connection
        stays open."""
        hn = Harness()
        c = hn.connected("c")
        c.send(Puback(77), Pubcomp(78))
        self.assertFalse(c.closed)
        self.assertEqual(c.take(), b"")

    def test_pubrel_unknown_id_answered(self) -> None:
        """A PUBREL for an unknown packet id is still answered with PUBCOMP."""
        hn = Harness()
        c = hn.connected("c")
        c.send(Pubrel(4))
        self.assertEqual(c.take(), pubcomp(4))

    def test_mqtt31_client(self) -> None:
        """MQTT 3.1 clients publish and receive QoS 1 messages like 3.1.1 clients."""
        hn = Harness()
        s = hn.subscriber("s", ("t", 1), level=3)
        p = hn.connected("p", level=3)
        p.publish("t", b"x", qos=1, pid=2)
        self.assertEqual(p.take(), puback(2))
        self.assertEqual(s.take(), publish("t", b"x", qos=1, pid=1))

    def test_packet_ids_wrap_and_skip_inflight(self) -> None:
        """Outgoing packet ids wrap from 65535 to 1, never using 0."""
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
        """max_inflight_messages limits the unacknowledged deliveries per session: later
        messages wait in the queue and each PUBACK sends the next one, in order."""
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
        """A QoS 0 message does not overtake QoS 1 messages queued behind a full inflight
        window: order is kept."""
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
        """A QoS 2 delivery keeps its inflight slot until PUBCOMP, not just until PUBREC."""
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
        """Messages beyond the inflight window and max_online_messages are dropped and
        counted on the session and the broker; the publisher is still acknowledged for
        every message."""
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
        """A retained PUBLISH is stored and delivered to a later subscriber right after the
        SUBACK, with the retain flag set."""
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
        """A retained message is delivered on subscribe at the lower of its QoS and the
        granted QoS."""
        hn = Harness()
        p = hn.connected("p")
        p.publish("r", b"kept", qos=2, retain=True, pid=1)
        s = hn.connected("s")
        s.subscribe(1, ("r", 0))
        self.assertEqual(s.take(), suback(1, 0) + publish("r", b"kept", retain=True))

    def test_live_delivery_has_retain_0(self) -> None:
        """A retained PUBLISH delivered to existing subscribers has retain 0 (3.1.1
        s3.3.1.3) and is stored."""
        hn = Harness()
        s = hn.subscriber("s", ("r/#", 0))
        p = hn.connected("p")
        p.publish("r/t", b"v", retain=True)
        self.assertEqual(s.take(), publish("r/t", b"v"))
        self.assertEqual(hn.broker.store.retained_count(), 1)

    def test_replaced(self) -> None:
        """A new retained PUBLISH on a topic replaces the stored one."""
        hn = Harness()
        p = hn.connected("p")
        p.publish("r", b"one", retain=True)
        p.publish("r", b"two", retain=True)
        s = hn.connected("s")
        s.subscribe(1, ("r", 0))
        self.assertEqual(s.take(), suback(1, 0) + publish("r", b"two", retain=True))

    def test_empty_payload_clears(self) -> None:
        """A retained PUBLISH with an empty payload clears the stored message; current
        subscribers get it as a normal message, later subscribers get nothing."""
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
        """A PUBLISH without the retain flag is not stored."""
        hn = Harness()
        p = hn.connected("p")
        p.publish("r", b"x")
        self.assertEqual(hn.broker.store.retained_count(), 0)


# ---------------------------------------------------------------------------
# Will messages and session takeover

class WillTests(BrokerTestCase):

    def test_will_on_abnormal_loss(self) -> None:
        """The will is published, at its QoS and not retained, when the connection breaks
        without DISCONNECT."""
        hn = Harness()
        s = hn.subscriber("s", ("will/#", 1))
        c = hn.connected("c", will=Will("will/c", b"gone", 1))
        c.lose()
        self.assertEqual(s.take(), publish("will/c", b"gone", qos=1, pid=1))
        self.assertEqual(hn.broker.store.retained_count(), 0)

    def test_no_will_after_disconnect(self) -> None:
        """No will is published after a clean DISCONNECT (3.1.1 s3.1.2.5)."""
        hn = Harness()
        s = hn.subscriber("s", ("will/#", 1))
        c = hn.connected("c", will=Will("will/c", b"gone", 1))
        c.send(Disconnect())
        self.assertTrue(c.closed)
        self.assertEqual(s.take(), b"")

    def test_will_on_protocol_violation(self) -> None:
        """The will is published when the broker closes the connection for a protocol
        violation."""
        hn = Harness()
        s = hn.subscriber("s", ("will/#", 0))
        c = hn.connected("c", will=Will("will/c", b"gone"))
        c.send(b"\x00\x00")
        self.assertTrue(c.closed)
        self.assertEqual(s.take(), publish("will/c", b"gone"))

    def test_will_on_keepalive_timeout(self) -> None:
        """The will is published when the broker closes the connection for a keep alive
        timeout."""
        hn = Harness()
        s = hn.subscriber("s", ("will/#", 0))
        c = hn.connected("c", keepalive=2, will=Will("will/c", b"gone"))
        hn.clock.advance(3)
        self.assertTrue(c.closed)
        self.assertEqual(s.take(), publish("will/c", b"gone"))

    def test_will_retain(self) -> None:
        """A will with the retain flag is stored as a retained message."""
        hn = Harness()
        c = hn.connected("c", will=Will("will/c", b"gone", 0, True))
        c.lose()
        self.assertEqual(hn.broker.store.retained_count(), 1)
        s = hn.connected("s")
        s.subscribe(1, ("will/c", 0))
        self.assertEqual(s.take(), suback(1, 0) + publish("will/c", b"gone", retain=True))

    def test_invalid_will_topic_refused(self) -> None:
        """A CONNECT whose will topic contains a wildcard is refused with a non-zero CONNACK
        and the connection closed."""
        hn = Harness()
        c = hn.client()
        c.connect("c", will=Will("will/#", b"x"))
        data = c.take()
        self.assertEqual(data[:3], b"\x20\x02\x00")
        self.assertNotEqual(data[3], 0)
        self.assertTrue(c.closed)

    def test_takeover_closes_first_and_fires_will(self) -> None:
        """A second connection with the same client id closes the first, whose will is
        published; the session belongs to the new connection, and the old connection's
        late close changes nothing."""
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
        """With suppress_lwt_on_session_takeover = on, the taken-over connection's will is
        not published."""
        hn = Harness(BASE + "suppress_lwt_on_session_takeover = on\n")
        s = hn.subscriber("s", ("will/#", 0))
        c1 = hn.connected("dup", will=Will("will/dup", b"taken"))
        c2 = hn.client()
        c2.connect("dup")
        self.assertEqual(c2.take(), connack(0))
        self.assertTrue(c1.closed)
        self.assertEqual(s.take(), b"")

    def test_taken_over_session_still_routes_to_new_connection(self) -> None:
        """After a clean takeover the old subscriptions are gone, and new subscriptions
        route to the new connection only."""
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
        """"+" matches exactly one level and "#" the parent level and all below (3.1.1
        s4.7)."""
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
        """A client with several matching subscriptions gets each message once, at the
        highest granted QoS that the message allows."""
        hn = Harness()
        s = hn.subscriber("s", ("a/+/c", 0), ("a/#", 2), ("a/b/c", 1))
        p = hn.connected("p")
        p.publish("a/b/c", b"x", qos=2, pid=1)
        self.assertEqual(s.take(), publish("a/b/c", b"x", qos=2, pid=1))
        p.publish("a/b/c", b"y", qos=1, pid=2)
        self.assertEqual(s.take(), publish("a/b/c", b"y", qos=1, pid=2))

    def test_resubscribe_replaces_qos(self) -> None:
        """Subscribing again to the same filter replaces its QoS (3.1.1 s3.8.4)."""
        hn = Harness()
        s = hn.subscriber("s", ("t", 0))
        s.subscribe(2, ("t", 1))
        self.assertEqual(s.take(), suback(2, 1))
        p = hn.connected("p")
        p.publish("t", b"x", qos=1, pid=1)
        self.assertEqual(s.take(), publish("t", b"x", qos=1, pid=1))

    def test_dollar_topics_not_matched_by_wildcards(self) -> None:
        """Topics starting with "$" are not matched by filters starting with "#" or "+",
        only by filters naming the "$" level (3.1.1 s4.7.2)."""
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
        """A message to a shared subscription goes to exactly one member of the group,
        spread over the members, while normal subscribers still get every message."""
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
        """Each shared subscription group gets its own copy of a message."""
        hn = Harness()
        a = hn.subscriber("a", ("$share/g1/t", 0))
        b = hn.subscriber("b", ("$share/g2/t", 0))
        p = hn.connected("p")
        p.publish("t", b"x")
        self.assertEqual(a.take(), publish("t", b"x"))
        self.assertEqual(b.take(), publish("t", b"x"))

    def test_shared_subscription_no_retained(self) -> None:
        """Subscribing to a shared subscription does not send retained messages."""
        hn = Harness()
        p = hn.connected("p")
        p.publish("t", b"r", retain=True)
        a = hn.connected("a")
        a.subscribe(1, ("$share/g/t", 0))
        self.assertEqual(a.take(), suback(1, 0))

    def test_shared_member_leaving(self) -> None:
        """A member that disconnected no longer receives shared messages; when the last
        member unsubscribes nothing is delivered and the group is gone."""
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
        """UNSUBSCRIBE is answered with UNSUBACK and stops delivery for that filter only;
        unsubscribing from an unknown filter still gets UNSUBACK (3.1.1 s3.10.4)."""
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
        """An invalid topic filter gets SUBACK 0x80 while the other filters in the same
        SUBSCRIBE are granted and the connection stays open."""
        hn = Harness()
        s = hn.connected("s")
        s.subscribe(3, ("a/#/b", 1), ("ok", 1))
        self.assertEqual(s.take(), suback(3, 0x80, 1))
        self.assertFalse(s.closed)

    def test_max_subscriptions_per_client(self) -> None:
        """max_subscriptions_per_client refuses new filters beyond the limit with 0x80;
        replacing an existing subscription is allowed."""
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
        """Messages published on a listener with a mountpoint reach only subscribers of that
        mountpoint, not other mountpoints nor the listener without one."""
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
        """The same client id on two mountpoints makes two separate sessions, neither taking
        the other over."""
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
        """Retained messages are kept per mountpoint."""
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
        """Garbage instead of a CONNECT closes that connection only; other clients keep
        working."""
        hn = Harness()
        s, p = self._bystanders(hn)
        bad = hn.client()
        bad.send(b"\xff\xff\xff\xff\xff\xff")
        self.assertTrue(bad.closed)
        self._still_working(s, p)

    def test_malformed_after_connect(self) -> None:
        """Each kind of malformed or forbidden packet after CONNECT closes that connection
        only, while other clients keep publishing and receiving."""
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
        """Valid packets received before malformed bytes in the same chunk are handled
        (routed and acknowledged) before the connection is closed."""
        hn = Harness()
        s, p = self._bystanders(hn)
        bad = hn.connected("bad")
        bad.send(Publish("t", b"first", 1, packet_id=3), b"\x00\x00")
        self.assertEqual(bad.take(), puback(3))
        self.assertTrue(bad.closed)
        self.assertEqual(s.packets()[-1].payload, b"first")

    def test_oversize_packet(self) -> None:
        """A PUBLISH larger than max_message_size closes that connection without routing it;
        others keep working."""
        hn = Harness(BASE + "max_message_size = 100\n")
        s, p = self._bystanders(hn)
        big = hn.connected("big")
        big.publish("t", b"x" * 200)
        self.assertTrue(big.closed)
        self.assertEqual(s.take(), b"")
        self._still_working(s, p)

    def test_oversize_announced_closes_before_body(self) -> None:
        """A fixed header announcing a packet larger than max_message_size closes the
        connection before the body arrives."""
        hn = Harness(BASE + "max_message_size = 100\n")
        s, p = self._bystanders(hn)
        big = hn.connected("big")
        big.send(b"\x30\xff\xff\x03")  # announces 65535 bytes, sends none
        self.assertTrue(big.closed)
        self._still_working(s, p)

    def test_oversize_connect(self) -> None:
        """A CONNECT larger than max_message_size closes the connection and creates no
        session."""
        hn = Harness(BASE + "max_message_size = 100\n")
        c = hn.client()
        c.connect("c" * 200)
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_data_after_close_ignored(self) -> None:
        """Bytes arriving after the broker closed a connection are ignored."""
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
        """While the transport asks the broker to pause, deliveries wait in the session
        queue; on resume they are written in order and live delivery continues."""
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
        """The queue behind a paused transport is capped by max_online_messages: the oldest
        messages are kept and the rest dropped and counted."""
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
        """Fifty PUBLISHes in one chunk cause a single transport write per connection: one
        with all fifty PUBACKs for the publisher, one with the deliveries (up to the
        inflight window of 20) for each subscriber."""
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
        """Messages for a persistent session whose connection is closing but not yet closed
        are not written but kept, and delivered on reconnect."""
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
        """When the broker closes a connection (keep alive timeout) and the close completes
        later, the will is published exactly once."""
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
        """A takeover while the first connection is still closing succeeds; the will is
        published when the first close completes, and the session stays with the new
        connection."""
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
        """A takeover closes the first transport and unregisters the protocol as its
        producer; the late close leaves the session with the new connection."""
        hn = Harness()
        c1 = hn.connected("dup", sync_close=False)
        c2 = hn.client()
        c2.connect("dup")
        self.assertTrue(c1.transport.disconnecting)
        self.assertIsNone(c1.transport.producer)
        c1.finish_close()
        self.assertIs(hn.broker.sessions[("", "dup")].conn, c2.protocol)

    def test_peer_that_stops_reading_is_aborted(self) -> None:
        """A connection the broker closed but whose peer does not finish the close is
        aborted after a few seconds."""
        hn = Harness()
        c = hn.connected("c", sync_close=False)
        c.send(b"\x00\x00")
        self.assertTrue(c.transport.disconnecting)
        self.assertFalse(c.transport.disconnected)
        hn.clock.advance(5)
        self.assertTrue(c.transport.disconnected)  # abortConnection()

    def test_no_timer_left_after_close(self) -> None:
        """No delayed call is left on the clock after a client disconnects, whether the
        close completes at once or later."""
        hn = Harness()
        for sync_close in (True, False):
            c = hn.connected("c", keepalive=30, sync_close=sync_close)
            c.send(Disconnect())
            if not sync_close:
                c.finish_close()
            self.assertEqual(hn.clock.getDelayedCalls(), [])

    def test_no_timer_left_after_connect_timeout(self) -> None:
        """No delayed call is left on the clock after a connect timeout closes a connection."""
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
        """A connected protocol instance has at most 30 attributes, so CPython keeps its
        attribute dict compact."""
        hn = Harness()
        c = hn.connected("small")
        self.assertLessEqual(len(vars(c.protocol)), 30, sorted(vars(c.protocol)))
