"""Security hardening (#14), part B: bounded work and memory per client --
retained delivery in slices, retained quotas, per-client limits."""
from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import Connect, Disconnect, Publish, Subscribe, SubOptions, Unsubscribe
from vmqtw.core.message import Message
from vmqtw.core.retained import RetainedTree
from vmqtw.core.retained_delivery import STEPS_PER_TURN
from vmqtw.test.connection_harness import BASE, Rig, puback, suback


def retain_many(rig: Rig, n: int, prefix: str = "r") -> None:
    """``n`` retained messages ``prefix/i`` straight into the broker."""
    for i in range(n):
        rig.broker.publish(Message(f"{prefix}/{i}", b"v", 0, True), "")


class RetainedSliceTests(SynchronousTestCase):
    """Item 3: a wildcard SUBSCRIBE's retained delivery does bounded work per turn."""

    def test_other_clients_served_between_slices(self) -> None:
        """The issue's probe, scaled down: with 5 slices' worth of retained
        messages, a ``#`` SUBSCRIBE gets one slice at once and the rest on later
        reactor turns; a PUBLISH from another client sent meanwhile is routed
        (and acknowledged) before the subscriber has all the retained messages
        (before: the whole scan ran first, 6.7 s for 200,000 messages)."""
        rig = Rig()
        n = 5 * STEPS_PER_TURN
        retain_many(rig, n)
        greedy = rig.connected("greedy")
        other = rig.connected("other")
        watcher = rig.connected("watcher")
        watcher.send(Subscribe(1, [("live", SubOptions(0))]))
        watcher.take()
        greedy.send(Subscribe(1, [("#", SubOptions(0))]))
        first = greedy.take()
        self.assertTrue(first.startswith(suback(1, 0)))
        self.assertLess(first.count(b"r/"), n)
        other.send(Publish("live", b"hello", 1, False, False, 9))
        self.assertEqual(other.take(), puback(9))
        self.assertIn(b"hello", watcher.take())
        got = first.count(b"r/")
        for _turn in range(10 * n // STEPS_PER_TURN):
            if not rig.broker.retained.pending:
                break
            rig.clock.advance(0)
            got += greedy.take().count(b"r/")
        self.assertEqual(got, n)
        self.assertEqual(rig.broker.retained.pending, 0)

    def test_small_lookup_at_once(self) -> None:
        """A lookup that fits one slice is delivered right behind the SUBACK."""
        rig = Rig()
        retain_many(rig, 10)
        c = rig.connected("c")
        c.send(Subscribe(1, [("r/+", SubOptions(0))]))
        self.assertEqual(c.take().count(b"r/"), 10)
        self.assertEqual(rig.broker.retained.pending, 0)

    def test_unsubscribe_stops_the_delivery(self) -> None:
        """An UNSUBSCRIBE (or a new SUBSCRIBE of the filter) stops the old job."""
        rig = Rig()
        retain_many(rig, 3 * STEPS_PER_TURN)
        c = rig.connected("c")
        c.send(Subscribe(1, [("#", SubOptions(0))]), Unsubscribe(2, ["#"]))
        c.take()
        rig.clock.advance(0)
        self.assertEqual(c.take(), b"")
        self.assertEqual(rig.broker.retained.pending, 0)

    def test_session_gone_stops_the_delivery(self) -> None:
        """A client that leaves mid-way stops the job (nothing is queued for it)."""
        rig = Rig()
        retain_many(rig, 3 * STEPS_PER_TURN)
        c = rig.connected("c")
        c.send(Subscribe(1, [("#", SubOptions(0))]))
        c.lose()
        rig.clock.advance(0)
        self.assertEqual(rig.broker.retained.pending, 0)
        self.assertNotIn(("", "c"), rig.broker.sessions)


class IterMatchTests(SynchronousTestCase):
    """``RetainedTree.iter_match``, the step-wise lookup behind the slices."""

    def test_same_as_match(self) -> None:
        """On random trees and filters (``$`` topics, empty levels, ``+`` and
        ``#``), the messages ``iter_match`` yields are those of ``match``, in the
        same order, and the byte count follows every set and clear."""
        rnd = random.Random(14)
        words = ["a", "b", "$SYS", "x", ""]
        for _tree in range(200):
            tree = RetainedTree()
            topics = []
            for _ in range(rnd.randint(0, 30)):
                topic = "/".join(rnd.choice(words) for _ in range(rnd.randint(1, 4)))
                if topic:
                    tree.set("", topic, Message(topic, b"p" * rnd.randint(1, 5), 0, True))
                    topics.append(topic)
            for topic in topics[:3]:
                tree.set("", topic, None)
            for _ in range(20):
                levels = [rnd.choice(words + ["+", "+"]) for _ in range(rnd.randint(1, 4))]
                if rnd.random() < 0.4:
                    levels.append("#")
                topic_filter = "/".join(levels)
                stepped = [m for m in tree.iter_match("", topic_filter) if m is not None]
                self.assertEqual(stepped, tree.match("", topic_filter), topic_filter)
            self.assertEqual(tree.nbytes, sum(len(m.payload) for _, _, m in tree.items()))

    def test_changes_between_steps(self) -> None:
        """A topic cleared while a lookup is under way is not yielded."""
        tree = RetainedTree()
        for i in range(10):
            tree.set("", f"a/{i}", Message(f"a/{i}", b"v", 0, True))
        steps = tree.iter_match("", "a/#")
        first = [next(steps) for _ in range(3)]
        tree.set("", "a/9", None)
        rest = [m.topic for m in steps if m is not None]
        self.assertNotIn("a/9", rest)
        self.assertEqual(len([m for m in first if m is not None]) + len(rest), 9)


class RetainedQuotaTests(SynchronousTestCase):
    """Item 3: ``max_retained_messages`` / ``max_retained_bytes``."""

    def test_count_quota_3x(self) -> None:
        """Over ``max_retained_messages`` a 3.x retained PUBLISH is routed and
        acknowledged but not retained (a log line says so); replacing a topic's
        message and clearing one still work."""
        rig = Rig(BASE + "max_retained_messages = 2\n")
        sub = rig.connected("sub")
        sub.send(Subscribe(1, [("t/#", SubOptions(0))]))
        sub.take()
        c = rig.connected("c")
        for i, topic in enumerate(("t/a", "t/b", "t/c", "t/a"), 1):
            c.send(Publish(topic, b"v%d" % i, 1, True, False, i))
            self.assertEqual(c.take(), puback(i))
        self.assertEqual(sub.take().count(b"t/"), 4)  # all routed
        tree = rig.broker.store.retained_tree()
        self.assertEqual(sorted(t for _, t, _ in tree.items()), ["t/a", "t/b"])
        self.assertEqual(tree.get("", "t/a").payload, b"v4")
        self.assertEqual(rig.broker.retained.refused, 1)
        c.send(Publish("t/b", b"", 0, True, False, None), Publish("t/c", b"v", 0, True, False,
                                                                  None))
        self.assertEqual(sorted(t for _, t, _ in tree.items()), ["t/a", "t/c"])

    def test_count_quota_5_quota_exceeded(self) -> None:
        """A 5.0 QoS 1 retained PUBLISH over the quota gets PUBACK 0x97 (quota
        exceeded) and is not routed."""
        rig = Rig(BASE + "max_retained_messages = 1\n")
        c = rig.client(5)
        c.send(Connect("c", 5))
        c.take()
        c.send(Publish("a", b"1", 1, True, False, 1), Publish("b", b"2", 1, True, False, 2))
        acks = c.packets()
        self.assertEqual([(a.packet_id, a.reason_code) for a in acks], [(1, 0x10), (2, 0x97)])
        self.assertEqual(rig.broker.store.retained_count(), 1)

    def test_bytes_quota(self) -> None:
        """``max_retained_bytes`` caps the retained payload bytes (the issue: one
        200 MiB retained PUBLISH held 400 MiB of RAM and 529 MiB on disk)."""
        rig = Rig(BASE + "max_retained_bytes = 1000\n")
        c = rig.connected("c")
        c.send(Publish("big", b"x" * 900, 0, True, False, None),
               Publish("more", b"x" * 200, 0, True, False, None),
               Publish("small", b"x" * 100, 0, True, False, None))
        tree = rig.broker.store.retained_tree()
        self.assertEqual(sorted(t for _, t, _ in tree.items()), ["big", "small"])
        self.assertEqual(tree.nbytes, 1000)

    def test_will_over_the_quota_not_retained(self) -> None:
        """A retained will is subject to the quota as well."""
        rig = Rig(BASE + "max_retained_messages = 1\n")
        retain_many(rig, 1)
        rig.broker.publish(Message("will", b"gone", 0, True), "")
        self.assertEqual(rig.broker.store.retained_count(), 1)


class PerClientLimitTests(SynchronousTestCase):
    """Item 9: finite per-client limits by default."""

    def test_subscriptions_per_client_finite_by_default(self) -> None:
        """``max_subscriptions_per_client`` defaults to 10,000 (VerneMQ: unlimited;
        the issue's 100k subscriptions held 144 MiB): the 10,001st filter is
        refused (3.x 0x80, 5.0 0x97 quota exceeded)."""
        rig = Rig()
        self.assertEqual(rig.config.max_subscriptions_per_client, 10000)
        for level, refused in ((4, 0x80), (5, 0x97)):
            c = rig.client(level)
            c.send(Connect(f"many{level}", level))
            c.take()
            filters = [(f"f/{i}", SubOptions(0)) for i in range(10001)]
            c.send(Subscribe(1, filters))
            (ack,) = c.packets()
            self.assertEqual(ack.reason_codes[-2:], [0, refused])
            self.assertEqual(len(c.session.subscriptions), 10000)

    def test_inflight_bytes(self) -> None:
        """``max_inflight_bytes`` bounds the payload bytes sent and not acknowledged:
        a message that does not fit waits in the queue until a PUBACK frees room."""
        rig = Rig(BASE + "max_inflight_bytes = 1000\n")
        sub = rig.connected("sub")
        sub.send(Subscribe(1, [("t", SubOptions(1))]))
        sub.take()
        p = rig.connected("p")
        for pid in (1, 2):
            p.send(Publish("t", bytes([48 + pid]) * 600, 1, False, False, pid))
        p.take()
        (first,) = sub.packets()
        self.assertEqual(sub.session.inflight_bytes, 600)
        self.assertEqual(len(sub.session.queue), 1)
        sub.send(puback(first.packet_id))
        (second,) = sub.packets()
        self.assertEqual(second.payload, b"2" * 600)
        self.assertEqual(sub.session.inflight_bytes, 600)
        sub.send(puback(second.packet_id))
        self.assertEqual(sub.session.inflight_bytes, 0)

    def test_one_big_message_always_passes(self) -> None:
        """A message over ``max_inflight_bytes`` is still sent when nothing is inflight."""
        rig = Rig(BASE + "max_inflight_bytes = 100\n")
        sub = rig.connected("sub")
        sub.send(Subscribe(1, [("t", SubOptions(1))]))
        sub.take()
        rig.broker.publish(Message("t", b"x" * 500, 1), "")
        rig.broker.flush()
        (msg,) = sub.packets()
        self.assertEqual(len(msg.payload), 500)

    def test_session_expiry_capped_by_persistent_client_expiration(self) -> None:
        """A 5.0 Session Expiry Interval above ``persistent_client_expiration``
        (here 1 hour; 0xFFFFFFFF = never) is capped, and the CONNACK tells the
        client the value in force; a shorter one is kept as asked."""
        rig = Rig(BASE + "persistent_client_expiration = 1h\n")
        c = rig.client(5)
        c.send(Connect("c", 5, False, 0, properties={"session_expiry_interval": 0xFFFFFFFF}))
        (ack,) = c.packets()
        self.assertEqual(ack.properties["session_expiry_interval"], 3600)
        self.assertEqual(c.session.expiry_interval, 3600)
        short = rig.client(5)
        short.send(Connect("s", 5, False, 0, properties={"session_expiry_interval": 60}))
        (ack,) = short.packets()
        self.assertNotIn("session_expiry_interval", ack.properties)
        self.assertEqual(short.session.expiry_interval, 60)
        c.lose()
        rig.clock.advance(3600)
        self.assertNotIn(("", "c"), rig.broker.sessions)

    def test_disconnect_cannot_extend_past_the_cap(self) -> None:
        """A 5.0 DISCONNECT raising the session expiry is capped the same way."""
        rig = Rig(BASE + "persistent_client_expiration = 1h\n")
        c = rig.client(5)
        c.send(Connect("c", 5, False, 0, properties={"session_expiry_interval": 60}))
        c.take()
        session = c.session
        c.send(Disconnect(0, {"session_expiry_interval": 0xFFFFFFFF}))
        self.assertEqual(session.expiry_interval, 3600)
