"""MQTT 5.0 PUBLISH through MQTTProtocol + Broker, in memory: properties, message
expiry, topic aliases, receive maximum and maximum packet size.

Bytes the broker must send are written by hand (``vmqtw.test.wire``, MQTT 5.0
section 3), independently of our encoder; client packets are encoded with our
encoder (the codec has its own vectors) or written as raw bytes where the point
is a broken packet.  Every failure path checks the exact DISCONNECT (or CONNACK)
reason for the one client, and that a bystander keeps working.
"""
from __future__ import annotations

from typing import Any

from vmqtw.codec import Disconnect, Puback, Pubrec, Pubrel, SubOptions, reasons
from vmqtw.core.message import Message
from vmqtw.test.harness import (
    BASE5, BrokerTestCase, BystanderMixin, Harness, connect5, connected5, pub, subscribe5,
)
from vmqtw.test.wire import (
    connack_ok, disconnect5, p_alias, p_alias_max, p_content_type, p_correlation, p_expiry,
    p_format, p_max_packet, p_reason, p_response_topic, p_sub_id, p_user, puback5, pubcomp5,
    publish5, pubrec5, pubrel5,
)
from vmqtw.test.wire import publish as publish311
from vmqtw.test.wire import suback as suback311

NO_MATCH = reasons.NO_MATCHING_SUBSCRIBERS


# ---------------------------------------------------------------------------
# PUBLISH properties

class PublishPropertiesTests(BrokerTestCase, BystanderMixin):

    def test_properties_passed_through_in_order(self) -> None:
        """Payload format indicator, content type, response topic, correlation data and user
        properties (in order, repeats kept) are forwarded to subscribers; the topic alias
        is not."""
        hn = Harness(BASE5 + "topic_alias_max_client = 5\n")
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
        """A 3.1.1 subscriber gets a 5.0 message without its properties."""
        hn = Harness(BASE5)
        s = hn.subscriber("old", ("t", 1))
        p = connected5(hn, "p")
        pub(p, "t", b"hi", qos=1, pid=1, user_property=[("k", "v")], content_type="c",
            message_expiry_interval=100)
        self.assertEqual(s.take(), publish311("t", b"hi", qos=1, pid=1))

    def test_311_publisher_to_v5_subscriber(self) -> None:
        """A 5.0 subscriber gets a 3.1.1 message with the subscription identifier of its
        subscription."""
        hn = Harness(BASE5)
        s = connected5(hn, "s")
        subscribe5(s, 1, ("t", SubOptions(2)), sub_id=9)
        p = hn.connected("old")
        p.publish("t", b"hi", qos=2, pid=4)
        self.assertEqual(s.take(), publish5("t", b"hi", p_sub_id(9), qos=2, pid=1))

    def test_puback_no_matching_subscribers(self) -> None:
        """A 5.0 QoS 1 or QoS 2 PUBLISH that matches no subscriber is acknowledged with
        reason 0x10 (no matching subscribers); PUBCOMP is plain."""
        hn = Harness(BASE5)
        p = connected5(hn, "p")
        pub(p, "nobody", b"x", qos=1, pid=1)
        self.assertEqual(p.take(), puback5(1, NO_MATCH))
        pub(p, "nobody", b"x", qos=2, pid=2)
        self.assertEqual(p.take(), pubrec5(2, NO_MATCH))
        p.send(Pubrel(2))
        self.assertEqual(p.take(), pubcomp5(2))

    def test_payload_format_invalid_qos0_disconnects(self) -> None:
        """A QoS 0 PUBLISH whose payload is not UTF-8 while its payload format indicator
        says UTF-8 is not routed and gets DISCONNECT 0x99 (payload format invalid); other
        clients keep working."""
        hn = Harness(BASE5)
        s, p = self.bystanders(hn)
        bad = connected5(hn, "bad")
        pub(bad, "ok/1", b"\xff", payload_format_indicator=1)
        self.assertEqual(bad.take(), disconnect5(reasons.PAYLOAD_FORMAT_INVALID))
        self.assertTrue(bad.closed)
        self.assertEqual(s.take(), b"")
        self.still_working(s, p)

    def test_payload_format_invalid_qos1_and_2_acknowledged(self) -> None:
        """A QoS 1 or QoS 2 PUBLISH with an invalid UTF-8 payload is refused in its PUBACK
        or PUBREC with 0x99 and a reason string, not routed, and the connection stays
        usable."""
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
        """With request problem information 0 the broker sends no reason string in a PUBACK
        (5.0 s3.1.2.11.7)."""
        hn = Harness(BASE5)
        c = connected5(hn, "c", request_problem_information=0)
        pub(c, "t", b"\xff", qos=1, pid=1, payload_format_indicator=1)
        self.assertEqual(c.take(), puback5(1, reasons.PAYLOAD_FORMAT_INVALID))

    def test_response_topic_with_wildcard(self) -> None:
        """A PUBLISH whose response topic contains a wildcard gets DISCONNECT 0x82 (protocol
        error); other clients keep working."""
        hn = Harness(BASE5)
        s, p = self.bystanders(hn)
        bad = connected5(hn, "bad")
        pub(bad, "ok/1", b"x", response_topic="r/+")
        self.assertEqual(bad.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.assertTrue(bad.closed)
        self.still_working(s, p)

    def test_subscription_identifier_from_a_client(self) -> None:
        """A PUBLISH from a client carrying a subscription identifier gets DISCONNECT 0x82
        (protocol error, 5.0 s3.3.4)."""
        hn = Harness(BASE5)
        s, p = self.bystanders(hn)
        bad = connected5(hn, "bad")
        pub(bad, "ok/1", b"x", subscription_identifier=[3])
        self.assertEqual(bad.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.still_working(s, p)

    def test_invalid_topic_name(self) -> None:
        """A 5.0 PUBLISH whose topic contains a wildcard gets DISCONNECT 0x90 (topic name
        invalid) and is closed; other clients keep working."""
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
        """A message delivered at once carries the message expiry interval it was published
        with."""
        hn = Harness(BASE5)
        s = connected5(hn, "s")
        subscribe5(s, 1, ("t", SubOptions(0)))
        p = connected5(hn, "p")
        pub(p, "t", b"x", message_expiry_interval=30)
        self.assertEqual(s.take(), publish5("t", b"x", p_expiry(30)))

    def test_remaining_time_forwarded_from_the_queue(self) -> None:
        """A message delivered from an offline queue carries the expiry interval minus the
        time it waited (5.0 s3.3.2.3.3)."""
        hn = Harness(BASE5)
        self.offline(hn)
        p = connected5(hn, "p")
        pub(p, "t", b"x", qos=1, pid=1, message_expiry_interval=60)
        hn.clock.advance(20)
        s2 = connect5(hn, "s", clean=False, session_expiry_interval=1000)
        self.assertEqual(s2.take(), connack_ok(True) + publish5("t", b"x", p_expiry(40),
                                                                  qos=1, pid=1))

    def test_expired_in_the_queue_is_dropped(self) -> None:
        """A queued message whose expiry interval has passed is dropped and counted, not
        delivered; the others are."""
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
        """A message that expires while waiting for the client's receive maximum window is
        dropped when the window frees."""
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
        """A retained message is sent to new subscribers with its remaining expiry interval,
        and is removed once it expires."""
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
        """An expired retained message is not sent to a 3.1.1 subscriber either."""
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
        """A PUBLISH with a topic and a topic alias sets the alias; later PUBLISHes with an
        empty topic and that alias go to that topic (for 5.0 and 3.1.1 subscribers alike,
        without the alias), and a new topic with the same alias re-maps it."""
        hn = Harness(BASE5 + "topic_alias_max_client = 5\n")
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

    def test_alias_keys_mean_what_they_mean_in_vernemq(self) -> None:
        """VerneMQ's ``topic_alias_max_client`` is the inbound limit (the CONNACK's Topic
        Alias Maximum) and ``topic_alias_max_broker`` the outbound one: a migrated config
        that sets only the client key lets a client use inbound aliases (no DISCONNECT
        0x94) and makes the broker send none; one that sets only the broker key announces
        no inbound aliases but sends them."""
        hn = Harness(BASE5 + "topic_alias_max_client = 10\n")
        s = connected5(hn, "s", topic_alias_maximum=10,
                       expected=connack_ok(limits=[p_alias_max(10)]))
        subscribe5(s, 1, ("a/b", SubOptions(0)))
        p = connected5(hn, "p", expected=connack_ok(limits=[p_alias_max(10)]))
        pub(p, "a/b", b"1", topic_alias=10)
        pub(p, "", b"2", topic_alias=10)
        self.assertFalse(p.closed)
        self.assertEqual(p.take(), b"")
        self.assertEqual(s.take(), publish5("a/b", b"1") + publish5("a/b", b"2"))

        hn = Harness(BASE5 + "topic_alias_max_broker = 10\n")
        s = connected5(hn, "s", topic_alias_maximum=10)  # CONNACK without an alias maximum
        subscribe5(s, 1, ("a/b", SubOptions(0)))
        p = connected5(hn, "p")
        pub(p, "a/b", b"1")
        self.assertEqual(s.take(), publish5("a/b", b"1", p_alias(1)))
        pub(p, "a/b", b"2", topic_alias=1)
        self.assertEqual(p.take(), disconnect5(reasons.TOPIC_ALIAS_INVALID))

    def test_alias_above_the_maximum(self) -> None:
        """A topic alias above the topic alias maximum the broker announced (0 when none is
        configured) gets DISCONNECT 0x94 (topic alias invalid); other clients keep
        working."""
        for config, alias in ((BASE5, 1), (BASE5 + "topic_alias_max_client = 5\n", 6)):
            hn = Harness(config)
            s, p = self.bystanders(hn)
            bad = connect5(hn, "bad")
            bad.take()
            pub(bad, "ok/x", b"x", topic_alias=alias)
            self.assertEqual(bad.take(), disconnect5(reasons.TOPIC_ALIAS_INVALID))
            self.assertTrue(bad.closed)
            self.still_working(s, p)

    def test_alias_zero(self) -> None:
        """Topic alias 0 gets DISCONNECT 0x94 (topic alias invalid)."""
        hn = Harness(BASE5 + "topic_alias_max_client = 5\n")
        s, p = self.bystanders(hn)
        bad = connect5(hn, "bad")
        bad.take()
        pub(bad, "ok/x", b"x", topic_alias=0)
        self.assertEqual(bad.take(), disconnect5(reasons.TOPIC_ALIAS_INVALID))
        self.assertTrue(bad.closed)
        self.still_working(s, p)

    def test_unknown_alias(self) -> None:
        """A PUBLISH with an empty topic and an alias never set gets DISCONNECT 0x82
        (protocol error)."""
        hn = Harness(BASE5 + "topic_alias_max_client = 5\n")
        s, p = self.bystanders(hn)
        bad = connect5(hn, "bad")
        bad.take()
        pub(bad, "", b"x", topic_alias=2)
        self.assertEqual(bad.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.assertTrue(bad.closed)
        self.still_working(s, p)

    def test_empty_topic_without_alias(self) -> None:
        """A 5.0 PUBLISH with an empty topic and no alias gets DISCONNECT 0x82 (protocol
        error)."""
        hn = Harness(BASE5)
        s, p = self.bystanders(hn)
        bad = connected5(hn, "bad")
        pub(bad, "", b"x")
        self.assertEqual(bad.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.still_working(s, p)

    def test_aliases_are_per_connection(self) -> None:
        """Inbound topic aliases do not survive a reconnect, even when the session does (5.0
        s3.3.2.3.4)."""
        hn = Harness(BASE5 + "topic_alias_max_client = 5\n")
        p = connect5(hn, "p", session_expiry_interval=100)
        p.take()
        pub(p, "a", b"1", topic_alias=1)
        p.send(Disconnect())
        p2 = connect5(hn, "p", clean=False, session_expiry_interval=100)
        p2.take()
        pub(p2, "", b"2", topic_alias=1)
        self.assertEqual(p2.take(), disconnect5(reasons.PROTOCOL_ERROR))

    def test_outbound_aliases(self) -> None:
        """With topic_alias_max_broker the broker sends topic aliases to a 5.0 subscriber,
        up to the lower of that setting and the client's topic alias maximum: a new topic
        gets a free alias, a known one is sent with an empty topic, and topics beyond the
        aliases go without one."""
        hn = Harness(BASE5 + "topic_alias_max_broker = 2\n")
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
        """With topic_alias_max_broker = 0 (the default) the broker sends no topic aliases,
        even to a client that accepts them."""
        hn = Harness(BASE5)  # topic_alias_max_broker = 0 (VerneMQ's default): off
        s = connected5(hn, "s", topic_alias_maximum=10)
        subscribe5(s, 1, ("t", SubOptions(0)))
        p = connected5(hn, "p")
        pub(p, "t", b"0")
        pub(p, "t", b"1")
        self.assertEqual(s.take(), publish5("t", b"0") + publish5("t", b"1"))

    def test_no_outbound_aliases_when_the_client_allows_none(self) -> None:
        """The broker sends no topic alias to a client that announced no topic alias
        maximum."""
        hn = Harness(BASE5 + "topic_alias_max_broker = 2\n")
        s = connected5(hn, "s")
        subscribe5(s, 1, ("t", SubOptions(0)))
        p = connected5(hn, "p")
        pub(p, "t", b"0")
        pub(p, "t", b"1")
        self.assertEqual(s.take(), publish5("t", b"0") + publish5("t", b"1"))

    def test_outbound_aliases_restart_on_reconnect(self) -> None:
        """Outbound aliases start afresh on a new connection: a message resent after
        reconnect carries its full topic and sets the alias again."""
        hn = Harness(BASE5 + "topic_alias_max_broker = 2\n")
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
        """Receive maximum from the broker's CONNACK limits unacknowledged incoming QoS 1
        and 2 PUBLISHes: a resent QoS 2 packet does not count, PUBREL frees a slot, and
        one more than allowed gets DISCONNECT 0x93 (receive maximum exceeded); other
        clients keep working."""
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
        """The broker sends no more unacknowledged QoS 1 and 2 messages than the client's
        receive maximum; each PUBACK lets the next one go."""
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
        """max_inflight_messages still limits deliveries when it is lower than the client's
        receive maximum."""
        hn = Harness(BASE5 + "max_inflight_messages = 1\n")
        s = connected5(hn, "s", receive_maximum=5)
        subscribe5(s, 1, ("t", SubOptions(1)))
        p = connected5(hn, "p")
        pub(p, "t", b"0", qos=1, pid=1)
        pub(p, "t", b"1", qos=1, pid=2)
        self.assertEqual(s.take(), publish5("t", b"0", qos=1, pid=1))

    def test_pubrec_error_from_the_client_ends_the_flow(self) -> None:
        """A PUBREC with an error reason from the subscriber ends that QoS 2 flow: no PUBREL
        is sent and its slot goes to the next message."""
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
        """A PUBLISH larger than the maximum packet size the broker announced gets
        DISCONNECT 0x95 (packet too large) and is not routed."""
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
        """A message larger than the subscriber's maximum packet size is dropped and counted
        for that subscriber (5.0 s3.1.2.11.4), without using a packet id, while the
        publisher is still acknowledged and smaller messages are delivered."""
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
        """A message exactly as large as the client's maximum packet size is sent; one byte
        more is dropped."""
        hn = Harness(BASE5)
        size = len(publish5("t", b"x" * 10))
        s = connected5(hn, "s", maximum_packet_size=size)
        subscribe5(s, 1, ("t", SubOptions(0)))
        p = connected5(hn, "p")
        pub(p, "t", b"x" * 10)
        pub(p, "t", b"x" * 11)
        self.assertEqual(s.take(), publish5("t", b"x" * 10))

    def test_dropped_alias_is_not_used(self) -> None:
        """A message dropped for the client's maximum packet size does not take a topic
        alias: the next message sets alias 1."""
        hn = Harness(BASE5 + "topic_alias_max_broker = 5\n")
        s = connected5(hn, "s", maximum_packet_size=30, topic_alias_maximum=5)
        subscribe5(s, 1, ("t", SubOptions(0)))
        p = connected5(hn, "p")
        pub(p, "t", b"x" * 40)
        pub(p, "t", b"y")
        self.assertEqual(s.take(), publish5("t", b"y", p_alias(1)))
