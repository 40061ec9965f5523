"""Shared subscription groups spanning real node processes (``python -m vmqtw``) and a
real ``redis-server``; the helpers are those of :mod:`tests.test_cluster_processes`."""
from __future__ import annotations

from typing import Any, Generator

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial import unittest

from tests.support import Paho, in_thread
from tests import test_cluster_processes as cp
from tests.test_cluster_processes import PROBE

# The class is not imported by name: trial would collect its tests here as well.
_base = cp.ClusterProcessTests.__dict__


class SharedGroupProcessTests(unittest.TestCase):

    timeout = 120

    setUp = _base["setUp"]
    config = _base["config"]
    start_node = _base["start_node"]
    client = _base["client"]
    linked = _base["linked"]
    probe = _base["probe"]
    collect = _base["collect"]
    nothing_more = _base["nothing_more"]

    @staticmethod
    def drain(subs: list[Paho], n: int) -> list[list[bytes]]:
        """(thread) Payloads (probes aside) reaching each of ``subs`` until ``n`` in all
        have arrived or none came for a while."""
        got: list[list[bytes]] = [[] for _ in subs]
        for _ in range(n + 200):
            if sum(map(len, got)) >= n:
                break
            idle = True
            for i, sub in enumerate(subs):
                try:
                    m = sub.get(timeout=0.05)
                except AssertionError:
                    continue
                idle = False
                if m.payload != PROBE:
                    got[i].append(m.payload)
            if idle and sum(map(len, got)) >= n:
                break
        return got

    @inlineCallbacks
    def test_group_spans_nodes(self) -> Generator[Deferred[Any], Any, None]:
        """A ``$share`` group with members on two nodes: with ``random`` every message
        published on one of them reaches exactly one member, and both members get
        some; a node with ``local_only`` and no member delivers to the group nowhere,
        while the plain subscribers on the other nodes get its messages (the group
        members there do not)."""
        n1 = yield self.start_node("n1", extra="shared_subscription_policy = random\n")
        n2 = yield self.start_node("n2", extra="shared_subscription_policy = random\n")
        n3 = yield self.start_node("n3", extra="shared_subscription_policy = local_only\n")
        yield self.linked(n1, n2, n3)
        m1, w1, p1 = (self.client(n1, c) for c in ("m1", "w1", "p1"))
        m2, w2 = (self.client(n2, c) for c in ("m2", "w2"))
        p3 = self.client(n3, "p3")

        def scenario() -> tuple[Any, ...]:
            for c in (m1, w1, p1, m2, w2, p3):
                c.connect()
            # Group members first: the watchers' later routes follow them in the log.
            m1.subscribe("$share/g/s/#", 1)
            m2.subscribe("$share/g/s/#", 1)
            w1.subscribe("s/#", 1)
            w2.subscribe("s/#", 1)
            self.probe(p3, w1, "s/probe")
            self.probe(p3, w2, "s/probe")
            self.probe(p1, w2, "s/probe")
            for i in range(20):
                p3.publish("s/local-only", b"L%d" % i, 1)
            seen = self.collect(w1, 20), self.collect(w2, 20)
            not_grouped = self.nothing_more(m1, 0.3), self.nothing_more(m2, 0.1)
            for i in range(40):
                p1.publish("s/shared", b"S%d" % i, 1)
            shared = self.drain([m1, m2], 40)
            extra = self.nothing_more(m1, 0.3) + self.nothing_more(m2, 0.1)
            return seen, not_grouped, shared, extra

        seen, not_grouped, shared, extra = yield in_thread(scenario)
        expected = [("s/local-only", b"L%d" % i) for i in range(20)]
        self.assertEqual(seen, (expected, expected))
        self.assertEqual(not_grouped, ([], []))
        got1, got2 = shared
        self.assertEqual(sorted(got1 + got2), sorted(b"S%d" % i for i in range(40)))
        self.assertTrue(got1 and got2, (got1, got2))
        self.assertEqual(extra, [])
