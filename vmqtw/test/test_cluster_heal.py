"""Netsplit edges on a ``Clock`` with ``MemoryMetadata``: the connect grace of a node
whose links are coming up, a CONNECT waiting for a starting node, the split noticed and
healed, and the duplicate client ids resolved by epoch afterwards."""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.cluster.memory_metadata import MemoryEngine, MemoryMetadata
from vmqtw.cluster.netsplit import NETSPLIT, NetsplitGate
from vmqtw.cluster.node import ClusterNode
from vmqtw.cluster.reclaim import Reclaimer
from vmqtw.config import ClusterConfig, parse
from vmqtw.core.broker import Broker
from vmqtw.test.harness import BASE, FakeConnection
from vmqtw.test.test_cluster_node import ClusterCase

CONFIG = BASE + "metadata_plugin = redis\nnodename = a\nlistener.vmq.c = 127.0.0.1:0\n"


class FakeLink:
    """A link that is not up yet (``connected``) and has not failed (``failed_attempts``)."""

    def __init__(self) -> None:
        self.connected = False
        self.failed_attempts = 0
        self.sent: list[Any] = []

    def send(self, record: Any) -> bool:
        self.sent.append(record)
        return True

    def stop(self) -> Any:
        return defer.succeed(None)


class Inner:
    """The wrapped authorizer: registers everyone."""

    def register(self, request: Any, anonymous_override: bool = False) -> Any:
        return defer.succeed("registered")


class NodeCase(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        self.engine = MemoryEngine(self.clock)
        config = parse(CONFIG)
        self.broker = Broker(config, self.clock)
        self.meta = MemoryMetadata(self.engine, "a")
        self.other = MemoryMetadata(self.engine, "b", address="127.0.0.1:1")
        self.node = ClusterNode(config, self.broker, self.clock, metadata=self.meta)
        self.fakes: dict[str, FakeLink] = {}
        self.node._link = self.fake_link  # type: ignore[method-assign]
        self.addCleanup(self.meta.stop)
        self.addCleanup(self.other.stop)

    def fake_link(self, member: Any) -> FakeLink:
        link = self.fakes[member.name] = FakeLink()
        return link

    def start(self) -> None:
        """Start the node's service parts without binding (startService)."""
        self.node.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.node.running:
            self.node.stopService()


class ConnectGraceTests(NodeCase):

    def test_new_member_counts_as_reachable_while_its_link_comes_up(self) -> None:
        """A member that just appeared does not make the node unready while its first
        link is being set up, for at most connect_grace seconds; a failed attempt ends
        the grace at once, and an established link that is lost counts at once."""
        self.start()
        self.assertTrue(self.node.joined)
        self.assertTrue(self.node.is_ready())
        self.other.start()
        self.clock.advance(1.0)  # a heartbeat: a sees b and creates a link to it
        link = self.fakes["b"]
        self.assertTrue(self.node.is_ready())
        self.clock.advance(self.node.connect_grace)
        self.assertFalse(self.node.is_ready())  # the grace is over, still no link
        link.connected = True
        self.assertTrue(self.node.is_ready())
        link.connected = False
        link.failed_attempts = 1  # lost: PeerLink counts a lost link as a failure
        self.assertFalse(self.node.is_ready())

    def test_failed_first_attempt_ends_the_grace(self) -> None:
        """A member whose first connection attempt failed (refused, wrong cookie) makes
        the node unready at once, inside the grace."""
        self.start()
        self.other.start()
        self.clock.advance(1.0)
        self.fakes["b"].failed_attempts = 1
        self.assertFalse(self.node.is_ready())

    def test_connect_waits_for_a_starting_node(self) -> None:
        """A CONNECT reaching a node that has not joined yet waits (at most
        connect_grace seconds from the start) and is served once the node is ready."""
        gate = NetsplitGate(Inner(), self.node.is_ready, ClusterConfig(),
                            settle=self.node.settle)
        self.engine.available = False
        self.start()
        self.assertFalse(self.node.joined)
        got: list[Any] = []
        gate.register(None).addCallback(got.append)
        self.assertEqual(got, [])
        self.engine.available = True
        self.clock.pump([0.1] * 15)  # the join is retried within ~1.1 s
        self.assertTrue(self.node.joined)
        self.assertEqual(got, ["registered"])
        self.assertEqual(gate.refused, 0)

    def test_connect_refused_after_the_grace(self) -> None:
        """A starting node that cannot join within connect_grace refuses the CONNECTs
        waiting for it, and refuses later ones at once."""
        gate = NetsplitGate(Inner(), self.node.is_ready, ClusterConfig(),
                            settle=self.node.settle)
        self.engine.available = False
        self.start()
        got: list[Any] = []
        gate.register(None).addCallback(got.append)
        self.clock.pump([0.1] * 25)
        self.assertEqual([r.reason for r in got], [NETSPLIT])
        gate.register(None).addCallback(got.append)
        self.assertEqual([r.reason for r in got], [NETSPLIT, NETSPLIT])
        self.assertEqual(gate.refused, 2)

    def test_split_noticed_and_resolved(self) -> None:
        """The periodic readiness check notices a split (a member's link lost) and its
        end, and then reconciles the client ids held here."""
        self.start()
        self.other.start()
        self.clock.advance(1.0)
        link = self.fakes["b"]
        link.connected = True
        calls: list[int] = []
        self.node.reclaimer.reconcile = lambda: calls.append(1)  # type: ignore[method-assign]
        link.connected = False
        link.failed_attempts = 1
        self.clock.advance(self.node.readiness_interval)
        self.assertTrue(self.node.split)
        self.assertEqual(calls, [])
        link.connected = True
        self.clock.advance(self.node.readiness_interval)
        self.assertFalse(self.node.split)
        self.assertEqual(calls, [1])


class BlipTests(NodeCase):

    def test_failed_claim_between_checks_is_reconciled(self) -> None:
        """A claim that failed during an engine blip shorter than the readiness check
        (the node never looked split) is made again at the next check."""
        self.start()
        self.engine.available = False
        conn = FakeConnection(4)
        session, _ = self.broker.open_session(("", "dev"), True, 0, conn)
        self.broker.session_resumed(session)
        self.assertEqual(self.node.registry.claim_errors, 1)
        self.engine.available = True
        self.clock.advance(self.node.readiness_interval)
        self.assertFalse(self.node.split)
        self.assertEqual(self.engine.owners[("", "dev")][0], "a")
        self.assertEqual(self.node.reclaimer.reclaimed, 1)


class ReclaimTests(ClusterCase):
    """Nodes ``a``, ``b`` (and ``c``) of :class:`ClusterCase` after a split healed."""

    def reclaimer(self, node: str) -> Reclaimer:
        n = self.nodes[node]
        return Reclaimer(n.broker, n.meta, n.registry)

    def test_claim_failed_during_the_split(self) -> None:
        """A client accepted on node a while it could not claim the id (engine away),
        and on node b meanwhile: once healed, a sees b owns it and closes its
        connection as a takeover; b's stays."""
        self.engine.available = False
        session_a, conn_a = self.nodes["a"].online("dev")
        self.settle()
        self.assertNotIn(session_a.key, self.nodes["a"].registry.epochs)
        self.engine.available = True
        session_b, conn_b = self.nodes["b"].online("dev")
        self.settle()
        reclaimer = self.reclaimer("a")
        reclaimer.reconcile()
        self.settle()
        self.assertTrue(conn_a.taken_over)
        self.assertNotIn(session_a.key, self.nodes["a"].broker.sessions)
        self.assertFalse(conn_b.taken_over)
        self.assertIs(self.nodes["b"].broker.sessions[session_b.key], session_b)
        self.assertEqual(reclaimer.closed, 1)

    def test_takeover_lost_during_the_split(self) -> None:
        """Node a claimed the id first; node b's later claim (larger epoch) could not
        reach a (no link): after the heal a's older epoch loses."""
        self.nodes["b"].links.pop("a")
        _, conn_a = self.nodes["a"].online("dev")
        self.settle()
        self.clock.advance(1)  # a later claim gets a larger epoch
        _, conn_b = self.nodes["b"].online("dev")
        self.settle()
        self.assertEqual(self.pump(), 0)  # nothing reached a
        self.assertFalse(conn_a.taken_over)
        self.reclaimer("a").reconcile()
        self.reclaimer("b").reconcile()
        self.settle()
        self.assertEqual((conn_a.taken_over, conn_b.taken_over), (True, False))

    def test_owner_lost_by_the_engine_is_claimed_again(self) -> None:
        """The engine lost the registry (a Redis restart) while nodes a and b both hold
        a client "dev" (b's takeover never reached a): each claims its ids again, and
        the later claim's takeover fences the earlier one: one connection is left."""
        _, conn_a = self.nodes["a"].online("dev")
        self.settle()
        _, conn_b = self.nodes["b"].online("dev")
        self.settle()
        self.nodes["b"].links["a"].sent.clear()  # the takeover is lost
        self.engine.wipe()
        a, b = self.reclaimer("a"), self.reclaimer("b")
        a.reconcile()
        self.settle()
        self.assertEqual(self.engine.owners[("", "dev")][0], "a")
        b.reconcile()
        self.settle()
        self.assertEqual((a.reclaimed, b.reclaimed), (1, 1))
        self.assertEqual(self.engine.owners[("", "dev")][0], "b")
        self.pump()  # b's takeover reaches a, whose epoch is older
        self.assertEqual((conn_a.taken_over, conn_b.taken_over), (True, False))
        self.assertNotIn(("", "dev"), {tuple(k) for k in self.nodes["a"].broker.sessions})

    def test_own_ids_left_alone(self) -> None:
        """A client whose id this node owns with its epoch is neither closed nor
        claimed again."""
        _, conn = self.nodes["a"].online("dev")
        self.settle()
        claims = dict(self.engine.owners)
        r = self.reclaimer("a")
        r.reconcile()
        self.settle()
        self.assertFalse(conn.taken_over)
        self.assertEqual((r.closed, r.reclaimed), (0, 0))
        self.assertEqual(self.engine.owners, claims)


class ReadyCacheTests(NodeCase):

    def test_gate_reuses_a_positive_answer_briefly(self) -> None:
        """ready_now (what the gate asks per PUBLISH) reuses a positive answer for
        ready_ttl seconds, recomputes after it, and forgets it when members change."""
        self.start()
        self.other.start()
        self.clock.advance(1.0)
        link = self.fakes["b"]
        link.connected = True
        self.assertTrue(self.node.ready_now())
        link.connected = False
        link.failed_attempts = 1
        self.assertFalse(self.node.is_ready())
        self.assertTrue(self.node.ready_now())  # cached
        self.clock.advance(self.node.ready_ttl)
        self.assertFalse(self.node.ready_now())
        link.connected = True
        self.assertTrue(self.node.ready_now())
        self.node.members_changed({}, {"b"})
        self.assertEqual(self.node._ready_until, 0.0)

    def test_link_change_forgets_the_cached_answer(self) -> None:
        """A link that comes up, is lost or fails an attempt (its on_change) makes the
        gate ask again at once: a lost link refuses the next operation."""
        self.start()
        self.other.start()
        self.clock.advance(1.0)
        link = self.fakes["b"]
        link.connected = True
        self.assertTrue(self.node.ready_now())
        link.connected = False
        link.failed_attempts = 1
        link.on_change()  # type: ignore[attr-defined]
        self.assertFalse(self.node.ready_now())
