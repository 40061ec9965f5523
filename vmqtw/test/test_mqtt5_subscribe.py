"""MQTT 5.0 SUBSCRIBE and UNSUBSCRIBE through MQTTProtocol + Broker, in memory:
subscription options (no local, retain as published, retain handling),
subscription identifiers, reason codes and shared subscriptions.

Bytes the broker must send are written by hand (``vmqtw.test.wire``, MQTT 5.0
section 3), independently of our encoder; client packets are encoded with our
encoder (the codec has its own vectors) or written as raw bytes where the point
is a broken packet.  Every failure path checks the exact DISCONNECT (or CONNACK)
reason for the one client, and that a bystander keeps working.
"""
from __future__ import annotations

import random

from vmqtw.codec import Disconnect, SubOptions, Subscribe, Unsubscribe, reasons
from vmqtw.core.broker import SharedGroup
from vmqtw.test.harness import (
    BASE5, BrokerTestCase, BystanderMixin, Harness, connect5, connected5, pub, subscribe5,
)
from vmqtw.test.wire import connack_ok, disconnect5, p_sub_id, puback5, publish5, unsuback5


# ---------------------------------------------------------------------------
# Subscription options and identifiers, shared subscriptions

class SubscriptionTests(BrokerTestCase, BystanderMixin):

    def test_no_local(self) -> None:
        """With no local a client does not get its own messages on that subscription, while
        other subscribers do and it still gets messages from others."""
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
        """No local applies to its own subscription only: the client's own message still
        arrives through an overlapping subscription without no local, at that
        subscription's QoS."""
        hn = Harness(BASE5)
        c = connected5(hn, "c")
        subscribe5(c, 1, ("t", SubOptions(1, no_local=True)), ("#", SubOptions(0)))
        pub(c, "t", b"mine", qos=1, pid=1)
        self.assertEqual(c.take(), publish5("t", b"mine") + puback5(1))

    def test_retain_as_published(self) -> None:
        """Retain as published keeps the retain flag on live deliveries for that
        subscription; other subscriptions get retain 0."""
        hn = Harness(BASE5)
        s = connected5(hn, "s")
        subscribe5(s, 1, ("a", SubOptions(0, retain_as_published=True)),
                   ("b", SubOptions(0)))
        p = connected5(hn, "p")
        pub(p, "a", b"1", retain=True)
        pub(p, "b", b"2", retain=True)
        self.assertEqual(s.take(), publish5("a", b"1", retain=True) + publish5("b", b"2"))

    def test_retain_handling(self) -> None:
        """Retain handling 0 sends retained messages at every SUBSCRIBE, 1 only when the
        subscription is new (again after an unsubscribe), 2 never (5.0 s3.8.3.1);
        UNSUBACK reason 0 confirms the removal."""
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
        """Messages carry the subscription identifier of the matching subscription, up to
        the maximum 268,435,455; re-subscribing without one removes it."""
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
        """With overlapping subscriptions a 5.0 client gets one copy at the highest granted
        QoS, carrying the identifiers of every matching subscription that has one (5.0
        s3.3.4)."""
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
        """Retained messages sent on subscribe carry the new subscription's identifier."""
        hn = Harness(BASE5)
        p = connected5(hn, "p")
        pub(p, "r", b"kept", retain=True)
        s = connected5(hn, "s")
        subscribe5(s, 1, ("r", SubOptions(0)), sub_id=42)
        self.assertEqual(s.take(), publish5("r", b"kept", p_sub_id(42), retain=True))

    def test_identifier_kept_for_offline_delivery(self) -> None:
        """A message queued for an offline session keeps the subscription identifier and
        carries it when delivered after reconnect."""
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
        """UNSUBACK gives a reason code per filter: 0 for a removed subscription, 0x11 (no
        subscription existed) for an unknown one; the removed subscription's identifier
        is forgotten."""
        hn = Harness(BASE5)
        s = connected5(hn, "s")
        subscribe5(s, 1, ("a", SubOptions(0)), sub_id=4)
        s.send(Unsubscribe(2, ["a", "b"]))
        self.assertEqual(s.take(), unsuback5(2, 0x00, reasons.NO_SUBSCRIPTION_EXISTED))
        self.assertEqual(s.session.sub_ids, {})

    def test_invalid_filter(self) -> None:
        """An invalid topic filter gets SUBACK reason 0x8F (topic filter invalid) while the
        other filters are granted and the connection stays open."""
        hn = Harness(BASE5)
        s = connected5(hn, "s")
        subscribe5(s, 1, ("a/#/b", SubOptions(0)), ("ok", SubOptions(1)),
                   expect=(reasons.TOPIC_FILTER_INVALID, 1))
        self.assertFalse(s.closed)

    def test_shared_subscription(self) -> None:
        """Members of a shared subscription get no retained message on subscribe, and each
        message goes to one member, with the subscription identifier.
        (VerneMQ picks a member at random; the source is seeded here to be repeatable.)"""
        self.patch(SharedGroup, "rng", random.Random(4))
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
        """No local on a shared subscription gets DISCONNECT 0x82 (protocol error, 5.0
        s3.8.3.1); other clients keep working."""
        hn = Harness(BASE5)
        s, p = self.bystanders(hn)
        bad = connected5(hn, "bad")
        bad.send(Subscribe(1, [("$share/g/t", SubOptions(0, no_local=True))]))
        self.assertEqual(bad.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.assertTrue(bad.closed)
        self.still_working(s, p)
