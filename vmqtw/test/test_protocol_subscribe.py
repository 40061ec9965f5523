"""MQTT 3.1/3.1.1 SUBSCRIBE and UNSUBSCRIBE through MQTTProtocol + Broker, in
memory: wildcards, overlapping subscriptions, $ topics, shared subscriptions,
limits, and mountpoints.

Every test builds a broker from a config text (``vmqtw.config.parse``), connects
protocols to in-memory transports and runs time on a ``Clock``; nothing touches a
socket (``vmqtw.test.harness``).  Bytes the broker must send are written by hand
(``vmqtw.test.wire``: ``connack``, ``suback``, ``publish``...) instead of with our
encoder; the client side is encoded with our encoder (the codec has its own
vectors) and decoded with a client-side ``Decoder``.
"""
from __future__ import annotations

import random

from vmqtw.codec import Disconnect, Publish, Unsubscribe
from vmqtw.core.broker import SharedGroup
from vmqtw.core.message import Message
from vmqtw.test.harness import BASE, BrokerTestCase, Harness
from vmqtw.test.wire import publish, suback, unsuback


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
        spread over the members, while normal subscribers still get every message.
        (VerneMQ picks a member at random; the source is seeded here to be repeatable.)"""
        self.patch(SharedGroup, "rng", random.Random(4))
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
