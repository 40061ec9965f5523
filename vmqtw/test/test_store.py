"""MemoryStore (vmqtw.store.memory) and the one-off filter matcher of vmqtw.core.topics."""
from __future__ import annotations

import itertools
import random

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from vmqtw.core.message import Message
from vmqtw.core.interfaces import IStore
from vmqtw.core.topics import TopicTree, filter_matches
from vmqtw.store.memory import MemoryStore


class FilterMatchesTests(SynchronousTestCase):

    def test_cases(self) -> None:
        """filter_matches follows the MQTT matching rules: "+" matches exactly one level (empty
        levels included), "#" matches the parent level and everything below, matching is
        case-sensitive, a trailing slash is a level of its own, and wildcards at the first
        level do not match "$" topics."""
        cases = [
            ("a/b", "a/b", True), ("a/b", "a/c", False), ("a/+", "a/b", True),
            ("a/+", "a", False), ("a/+", "a/b/c", False), ("a/#", "a", True),
            ("a/#", "a/b/c", True), ("#", "a/b", True), ("+", "a", True),
            ("+", "a/b", False), ("+/+", "/", True), ("a//b", "a//b", True),
            ("a/+/b", "a//b", True), ("#", "$SYS/x", False), ("+/x", "$SYS/x", False),
            ("$SYS/#", "$SYS", True), ("$SYS/+", "$SYS/x", True), ("A", "a", False),
            ("a/b", "a/b/", False), ("a/b/", "a/b/", True), ("+/#", "$x", False),
        ]
        for f, t, expected in cases:
            self.assertEqual(filter_matches(f, t), expected, (f, t))

    def test_agrees_with_topic_tree(self) -> None:
        """For every filter built from a few words, "+" and "#" and for 300 random topics,
        filter_matches selects exactly the filters the TopicTree matches."""
        rng = random.Random(1234)
        words = ["a", "b", "", "$s"]
        filters = set()
        for n in range(1, 4):
            for levels in itertools.product(words + ["+"], repeat=n):
                filters.add("/".join(levels))
                filters.add("/".join(levels[:-1] + ("#",)))
        topics = {"/".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
                  for _ in range(300)}
        tree: TopicTree[str, None] = TopicTree()
        for f in filters:
            tree.add(f, f, None)
        for t in topics:
            expected = {f for f, _k, _v in tree.match(t)}
            got = {f for f in filters if filter_matches(f, t)}
            self.assertEqual(got, expected, t)


class MemoryStoreTests(SynchronousTestCase):

    def test_provides_istore(self) -> None:
        """MemoryStore provides IStore."""
        self.assertTrue(verifyObject(IStore, MemoryStore()))

    def test_set_replace_clear(self) -> None:
        """Setting a retained message replaces the previous one on the same topic, setting None
        clears it, and clearing a topic that was never set is not an error."""
        store = MemoryStore()
        m1, m2 = Message("a/b", b"1", 1, True), Message("a/b", b"2", 0, True)
        store.retained_set("", "a/b", m1)
        store.retained_set("", "a/b", m2)
        self.assertEqual(store.retained_count(), 1)
        self.assertEqual(store.retained_match("", "a/b"), [m2])
        store.retained_set("", "a/b", None)
        self.assertEqual(store.retained_count(), 0)
        self.assertEqual(store.retained_match("", "a/b"), [])
        self.assertEqual(store.retained_match("", "#"), [])
        store.retained_set("", "never/set", None)  # clearing nothing is fine

    def test_mountpoints_separate(self) -> None:
        """Retained messages are kept per mountpoint: a match in one mountpoint never returns
        another mountpoint's message, and retained_items lists (mountpoint, topic) pairs."""
        store = MemoryStore()
        store.retained_set("m1", "t", Message("t", b"1", 0, True))
        store.retained_set("m2", "t", Message("t", b"2", 0, True))
        self.assertEqual([m.payload for m in store.retained_match("m1", "#")], [b"1"])
        self.assertEqual([m.payload for m in store.retained_match("m2", "t")], [b"2"])
        self.assertEqual(store.retained_match("", "t"), [])
        self.assertEqual(store.retained_count(), 2)
        self.assertEqual(sorted((mp, t) for mp, t, _m in store.retained_items()),
                         [("m1", "t"), ("m2", "t")])

    def test_wildcard_match(self) -> None:
        """retained_match applies wildcard filters, and "#" and "+" do not return "$" topics
        while "$SYS/#" does."""
        store = MemoryStore()
        for t in ("a", "a/b", "a/b/c", "b", "$SYS/x"):
            store.retained_set("", t, Message(t, b"x", 0, True))
        self.assertEqual(sorted(m.topic for m in store.retained_match("", "a/#")),
                         ["a", "a/b", "a/b/c"])
        self.assertEqual(sorted(m.topic for m in store.retained_match("", "+")), ["a", "b"])
        self.assertEqual(sorted(m.topic for m in store.retained_match("", "#")),
                         ["a", "a/b", "a/b/c", "b"])
        self.assertEqual([m.topic for m in store.retained_match("", "$SYS/#")], ["$SYS/x"])

    def test_session_notifications_are_noops(self) -> None:
        """The session and queue notifications and close() are accepted and do nothing in the
        memory store."""
        store = MemoryStore()
        store.session_updated(object())  # type: ignore[arg-type]
        store.session_deleted(("", "c"))
        store.message_queued(("", "c"), Message("t", b""), 1)
        store.message_dequeued(("", "c"), Message("t", b""))
        store.close()
