"""Shared subscription groups spanning nodes (``vmqtw.cluster.shared``): three brokers on
one ``MemoryEngine`` and a ``Clock``, links carrying encoded records."""
from __future__ import annotations

import dataclasses
import random

from vmqtw.cluster.codec import Enq, Msg
from vmqtw.cluster.shared import GROUP_MARK, SharedRoutes, enq_for_group, group_of
from vmqtw.test.harness import FakeConnection
from vmqtw.test.test_cluster_node import ClusterCase


class SharedGroupTests(ClusterCase):

    def setUp(self) -> None:
        super().setUp()
        self.patch(SharedRoutes, "rng", random.Random(7))

    def policy(self, policy: str) -> None:
        for node in self.nodes.values():
            node.broker.config = dataclasses.replace(node.broker.config,
                                                     shared_subscription_policy=policy)

    def received(self, *conns: FakeConnection) -> list[int]:
        return [len(c.written) for c in conns]

    def test_random_gives_each_message_to_one_member_across_nodes(self) -> None:
        """With ``random``, a group with members on two other nodes gets every message
        published on a third node exactly once, and both nodes get some."""
        self.policy("random")
        _, b1 = self.sub("b", "b1", "$share/g/t/+")
        _, c1 = self.sub("c", "c1", "$share/g/t/+")
        self.settle()
        for i in range(40):
            self.publish("a", "t/x", b"%d" % i)
        self.pump()
        counts = self.received(b1, c1)
        self.assertEqual(sum(counts), 40)
        self.assertTrue(all(counts), counts)

    def test_random_includes_local_members(self) -> None:
        """With ``random``, local online members and remote nodes share the messages;
        each message once."""
        self.policy("random")
        _, a1 = self.sub("a", "a1", "$share/g/t")
        _, b1 = self.sub("b", "b1", "$share/g/t")
        self.settle()
        for i in range(40):
            self.publish("a", "t", b"%d" % i)
        self.pump()
        counts = self.received(a1, b1)
        self.assertEqual(sum(counts), 40)
        self.assertTrue(all(counts), counts)

    def test_prefer_local_keeps_messages_on_the_node(self) -> None:
        """With ``prefer_local`` an online local member takes every message; without
        one, a remote node does."""
        self.policy("prefer_local")
        a_session, a1 = self.sub("a", "a1", "$share/g/t")
        _, b1 = self.sub("b", "b1", "$share/g/t")
        self.settle()
        for i in range(10):
            self.publish("a", "t", b"%d" % i)
        self.assertEqual(self.pump(), 0)
        self.assertEqual(self.received(a1, b1), [10, 0])
        self.nodes["a"].broker.unsubscribe(a_session, "$share/g/t")
        self.settle()
        self.publish("a", "t", b"later")
        self.pump()
        self.assertEqual(self.received(a1, b1), [10, 1])

    def test_local_only_never_crosses_nodes(self) -> None:
        """With ``local_only`` a publish reaches only this node's members: nothing is
        sent for a group whose members are all on other nodes."""
        self.policy("local_only")
        _, b1 = self.sub("b", "b1", "$share/g/t")
        self.settle()
        self.publish("a", "t", b"x")
        self.assertEqual(self.pump(), 0)
        self.assertEqual(self.received(b1), [0])

    def test_plain_forward_skips_the_receivers_group(self) -> None:
        """A message forwarded for a plain subscriber is not given to the receiving
        node's group members as well: the publishing node made the group's pick."""
        self.policy("prefer_local")
        _, a1 = self.sub("a", "a1", "$share/g/t")
        _, b1 = self.sub("b", "b1", "$share/g/t")
        _, b2 = self.sub("b", "b2", "t")
        self.settle()
        self.publish("a", "t", b"x")
        self.pump()
        self.assertEqual(self.received(a1, b1, b2), [1, 0, 1])

    def test_group_pick_for_a_member_that_left_is_counted(self) -> None:
        """An ``ENQ`` for a group that has no member here any more is dropped and
        counted."""
        record = enq_for_group(Msg("", "t", b"x"), "g", "t")
        self.nodes["b"].router.deliver("a", [record])
        self.assertEqual(self.nodes["b"].router.shared_lost, 1)

    def test_group_enq_encoding(self) -> None:
        """A group ``ENQ`` names the group behind a NUL (never a real client id); a
        real client id is not a group."""
        record = enq_for_group(Msg("mp", "t/1", b"x", 1), "g", "t/+")
        self.assertEqual(record.client_id, GROUP_MARK + "$share/g/t/+")
        self.assertEqual(group_of(record), ("g", "t/+"))
        self.assertIsNone(group_of(Enq(1, "", "$share/g/t", "t", b"")))
