"""MQTT 3.1/3.1.1 PUBLISH through MQTTProtocol + Broker, in memory: the QoS 0, 1
and 2 flows, the inflight window and online queue, retained messages, wills and
session takeover.

Every test builds a broker from a config text (``vmqtw.config.parse``), connects
protocols to in-memory transports and runs time on a ``Clock``; nothing touches a
socket (``vmqtw.test.harness``).  Bytes the broker must send are written by hand
(``vmqtw.test.wire``: ``connack``, ``suback``, ``publish``...) instead of with our
encoder; the client side is encoded with our encoder (the codec has its own
vectors) and decoded with a client-side ``Decoder``.
"""
from __future__ import annotations

import dataclasses

from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from vmqtw.codec import Disconnect, Puback, Pubcomp, Pubrec, Pubrel, Will
from vmqtw.test.harness import BASE, BrokerTestCase, Harness
from vmqtw.test.wire import connack, puback, pubcomp, publish, pubrec, pubrel, suback


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

    def test_topic_checks_after_a_valid_topic(self) -> None:
        """A publisher's repeated topic is not checked again, but a different
        invalid topic after a valid one still closes the connection, and a
        lower topic_max_depth (changed at runtime) applies to the repeated topic."""
        hn = Harness(BASE + "topic_max_depth = 3\n")
        s = hn.subscriber("s", ("#", 0))
        p = hn.connected("p")
        p.publish("a/b/c", b"1")
        p.publish("a/b/c", b"2")
        self.assertEqual(s.take(), publish("a/b/c", b"1") + publish("a/b/c", b"2"))
        p.publish("a/+/c", b"3")
        self.assertTrue(p.closed)
        self.assertEqual(s.take(), b"")
        q = hn.connected("q")
        q.publish("a/b/c", b"4")
        self.assertEqual(s.take(), publish("a/b/c", b"4"))
        hn.broker.config = dataclasses.replace(hn.broker.config, topic_max_depth=2)
        q.publish("a/b/c", b"5")
        self.assertTrue(q.closed)
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
        """A CONNECT whose will topic contains a wildcard is a malformed CONNECT: the
        connection is closed without a CONNACK (MQTT-3.1.4-1)."""
        hn = Harness()
        c = hn.client()
        c.connect("c", will=Will("will/#", b"x"))
        self.assertEqual(c.take(), b"")  # MQTT-3.1.4-1: closed without a CONNACK
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
