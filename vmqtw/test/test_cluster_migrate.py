"""Persistent sessions moving between nodes (``vmqtw.cluster.migrate``), shared-group
picks acknowledged and re-picked, and ``cluster leave``: three brokers on one
``MemoryEngine`` and a ``Clock``, links carrying encoded records."""
from __future__ import annotations

import dataclasses
import random
import shutil
import tempfile
from types import SimpleNamespace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from vmqtw.auth.api import Error, Ok
from vmqtw.cluster.codec import (
    PUSH_REF, EnqAck, Handover, Msg, Record, SessionAck, SessionMsg, SessionState, Takeover,
    TakeoverDone, decode_batch, encode_record,
)
from vmqtw.cluster.leave import LeaveReport, leave
from vmqtw.cluster.migrate import INCOMPLETE, decode_state, encode_state
from vmqtw.cluster.registry import STALE
from vmqtw.cluster.shared import NO_MEMBER, SharedRoutes, enq_for_group
from vmqtw.codec import SubOptions
from vmqtw.core.message import Message
from vmqtw.core.session import Session
from vmqtw.core.values import WAIT_PUBACK, WAIT_PUBCOMP, SessionKey
from vmqtw.store.memory import MemoryStore
from vmqtw.store.sqlite import SQLiteStore
from vmqtw.test.harness import FakeConnection
from vmqtw.test.test_cluster_node import ClusterCase, FakeLink


class StoppableLink(FakeLink):
    """A FakeLink that can be stopped (``cluster leave`` stops the links)."""

    stopped = False

    def stop(self) -> None:
        self.stopped = True


class ClosingConnection(FakeConnection):
    """A FakeConnection that the broker may close: the session goes offline on the
    next reactor turn, as when the socket closes."""

    def __init__(self, broker: Any, clock: Any) -> None:
        super().__init__(5)
        self.broker = broker
        self.clock = clock
        self.closed_with: int | None = None

    def close(self, reason: int) -> None:
        self.closed_with = reason
        session = next(s for s in self.broker.sessions.values() if s.conn is self)
        self.clock.callLater(0, self.broker.connection_closed, session)


class SpyStore(MemoryStore):
    """A MemoryStore that records what sessions and messages it is told about."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []

    def session_updated(self, session: Any) -> None:
        self.calls.append(("session", session.client_id))

    def session_deleted(self, key: SessionKey) -> None:
        self.calls.append(("deleted", key.client_id))

    def message_queued(self, key: Any, message: Message, qos: int, retain: bool = False,
                       sub_ids: tuple[int, ...] = ()) -> None:
        self.calls.append(("queued", message.payload, qos))

    def message_sent(self, key: Any, message: Message, qos: int, retain: bool,
                     packet_id: int, sub_ids: tuple[int, ...] = (),
                     queued: bool = False) -> None:
        self.calls.append(("sent", message.payload, packet_id))

    def message_released(self, key: Any, packet_id: int) -> None:
        self.calls.append(("released", packet_id))


class MoveCase(ClusterCase):
    """Helpers: a persistent session with inflight and queued messages on a node."""

    def setUp(self) -> None:
        super().setUp()
        for node in self.nodes.values():
            node.broker.store = SpyStore()

    def records(self, node: str, peer: str) -> list[Record]:
        return [r for data in self.nodes[node].links[peer].sent for r in decode_batch(data)]

    def carry(self, node: str, peer: str) -> list[Record]:
        """Deliver what ``node`` sent to ``peer`` (only that); returns the records."""
        link = self.nodes[node].links[peer]
        sent, link.sent = link.sent, []
        records = [r for data in sent for r in decode_batch(data)]
        self.nodes[peer].router.deliver(node, records)
        return records

    def persistent(self, node: str, client_id: str = "dev", level: int = 4,
                   expiry: float | None = None) -> tuple[Session, FakeConnection]:
        conn = FakeConnection(level)
        broker = self.nodes[node].broker
        session, _ = broker.open_session(("", client_id), False, expiry, conn)
        broker.session_resumed(session)
        return session, conn

    def publish_q(self, node: str, topic: str, payload: bytes, qos: int) -> None:
        broker = self.nodes[node].broker
        broker.publish(Message(topic, payload, qos), "")
        broker.flush()

    def loaded_session(self) -> Session:
        """On node a: subscribed to q/# at QoS 2 (and x at QoS 1), m1 (QoS 1) and m2
        (QoS 2, PUBREC received) inflight, then offline with m3 and m4 queued."""
        session, conn = self.persistent("a")
        self.nodes["a"].broker.subscribe(session, "q/#", SubOptions(2))
        self.nodes["a"].broker.subscribe(session, "x", SubOptions(1, no_local=True))
        self.publish_q("a", "q/1", b"m1", 1)
        self.publish_q("a", "q/2", b"m2", 2)
        self.assertTrue(session.pubrec(2))
        self.nodes["a"].broker.connection_closed(session)
        self.publish_q("a", "q/3", b"m3", 1)
        self.publish_q("a", "q/4", b"m4", 2)
        self.publish_q("a", "q/5", b"qos0", 0)  # offline QoS 0: dropped as usual
        self.settle()
        return session

    def connect(self, node: str, client_id: str = "dev", result: Any = None) -> Any:
        """What the registration gate does for a CONNECT with clean session 0."""
        return self.nodes[node].registry.registering(result or Ok(), "", client_id)


class CodecTests(MoveCase):

    def test_new_records_round_trip_with_their_types(self) -> None:
        """HANDOVER, SESSION_MSG, SESSION and SESSION_ACK decode to what was encoded,
        as the same record types (HANDOVER is not confused with TAKEOVER)."""
        records: list[Record] = [
            Handover(3, "mp", "c", 9), Takeover(3, "mp", "c", 9),
            SessionMsg(5, "t/ü", b"p" * 300, 2, True, b"\x01\x02", 65535, WAIT_PUBCOMP),
            SessionState(PUSH_REF | 4, "", "cl", 0, 2, b"state"), SessionAck(9, INCOMPLETE)]
        data = b"".join(encode_record(r) for r in records)
        decoded = decode_batch(data)
        self.assertEqual(decoded, records)
        self.assertEqual([type(r) for r in decoded], [type(r) for r in records])

    def test_state_round_trip(self) -> None:
        """A session's state (expiry, user, listener, incoming QoS 2 ids, subscriptions
        with options and identifiers) survives encoding."""
        session, _ = self.persistent("a", expiry=3600)
        session.username = "ann"
        session.listener = "tcp.default"
        session.qos2_received(7)
        session.sub_ids["a/+"] = 42
        broker = self.nodes["a"].broker
        broker.subscribe(session, "a/+", SubOptions(1, True, True, 2))
        broker.subscribe(session, "$share/g/b", SubOptions(2))
        state = decode_state(encode_state(session))
        self.assertEqual(state.expiry_interval, 3600)
        self.assertEqual((state.username, state.listener), ("ann", "tcp.default"))
        self.assertEqual(state.incoming_qos2, [7])
        self.assertEqual(state.subscriptions, {"a/+": (SubOptions(1, True, True, 2), 42),
                                               "$share/g/b": (SubOptions(2), 0)})
        session.expiry_interval = None
        session.username = None
        self.assertEqual(decode_state(encode_state(session))[:2], (None, None))


class HandoverTests(MoveCase):

    def test_offline_session_moves_with_inflight_and_queue(self) -> None:
        """A CONNECT with clean session 0 on b for a persistent session offline on a
        moves it: the CONNACK waits; b gets the subscriptions, the inflight messages
        under their packet ids (QoS 2 past PUBREC as PUBREL pending) and the queue in
        order, writes them through its store; a forgets it only after b's ack."""
        old = self.loaded_session()
        d = self.connect("b")
        self.assertIsInstance(d, Deferred)
        self.assertNoResult(d)  # waits for the session
        handover = self.carry("b", "a")
        self.assertEqual([type(r) for r in handover], [Handover])
        sent = self.records("a", "b")  # a sends the session
        self.assertEqual([type(r) for r in sent], [SessionMsg] * 4 + [SessionState])
        self.assertEqual([(r.payload, r.packet_id, r.state) for r in sent[:4]],
                         [(b"m1", 1, 1), (b"m2", 2, 3), (b"m3", 0, 0), (b"m4", 0, 0)])
        self.assertNotIn(old.key, self.nodes["a"].broker.sessions)  # taken out
        a_store = self.nodes["a"].broker.store
        self.assertNotIn(("deleted", "dev"), a_store.calls)  # but not forgotten yet
        self.carry("a", "b")  # b adopts and acks
        self.assertIsInstance(self.successResultOf(d), Ok)
        moved = self.nodes["b"].broker.sessions[old.key]
        self.assertEqual(set(moved.subscriptions), {"q/#", "x"})
        self.assertTrue(moved.subscriptions["x"].no_local)
        self.assertEqual({pid: e.state for pid, e in moved.inflight.items()},
                         {1: WAIT_PUBACK, 2: WAIT_PUBCOMP})
        self.assertEqual([item[0].payload for item in moved.queue], [b"m3", b"m4"])
        self.assertEqual(self.nodes["b"].broker.store.calls,
                         [("session", "dev"), ("sent", b"m1", 1), ("sent", b"m2", 2),
                          ("released", 2), ("queued", b"m3", 1), ("queued", b"m4", 2)])
        self.settle()
        self.assertEqual(self.engine.routes["b"], {"q/#", "x"})
        self.assertEqual(self.engine.routes["a"], set())
        self.assertEqual(self.carry("b", "a"), [SessionAck(1, 0)])
        self.assertIn(("deleted", "dev"), a_store.calls)
        self.assertEqual(self.nodes["a"].registry.migrator.sessions_out, 1)
        # The CONNECT goes on: the session is present, and everything is resent.
        conn = FakeConnection(4)
        session, present = self.nodes["b"].broker.open_session(("", "dev"), False, None, conn)
        self.assertTrue(present)
        self.assertIs(session, moved)
        self.nodes["b"].broker.session_resumed(session)
        out = b"".join(conn.written)
        self.assertEqual([out.find(p) >= 0 for p in (b"m1", b"m2", b"m3", b"m4")],
                         [True, False, True, True])
        self.assertLess(out.find(b"m1"), out.find(b"m3"))
        self.assertLess(out.find(b"m3"), out.find(b"m4"))
        self.assertIn(b"\x62\x02\x00\x02", out)  # PUBREL for packet id 2
        self.settle()
        self.assertEqual(self.records("b", "a"), [])  # no second claim, no TAKEOVER
        # Messages published later reach it on b.
        self.publish_q("a", "q/6", b"m6", 1)
        self.pump()
        self.assertIn(b"m6", b"".join(conn.written))

    def test_online_session_moves_with_its_inflight_messages(self) -> None:
        """The takeover of an online client closes its connection on a (session taken
        over) and carries its unacknowledged messages to b."""
        session, conn = self.persistent("a")
        self.nodes["a"].broker.subscribe(session, "q/#", SubOptions(1))
        self.publish_q("a", "q/1", b"m1", 1)
        self.publish_q("a", "q/2", b"m2", 1)
        self.settle()
        d = self.connect("b")
        self.carry("b", "a")
        self.assertTrue(conn.taken_over)
        self.carry("a", "b")
        moved = self.nodes["b"].broker.sessions[session.key]
        self.assertEqual([e.message.payload for e in moved.inflight.values()], [b"m1", b"m2"])
        self.assertIsInstance(self.successResultOf(d), Ok)

    def test_no_persistent_session_answers_at_once(self) -> None:
        """When a holds a clean session for the client id, it closes it and answers
        TAKEOVER_DONE: the CONNECT goes on with a fresh session."""
        _, conn = self.nodes["a"].online("dev")
        self.settle()
        d = self.connect("b")
        self.carry("b", "a")
        self.assertTrue(conn.taken_over)
        self.assertNoResult(d)
        self.assertEqual([type(r) for r in self.carry("a", "b")], [TakeoverDone])
        self.assertIsInstance(self.successResultOf(d), Ok)
        self.assertNotIn(SessionKey("", "dev"), self.nodes["b"].broker.sessions)

    def test_unknown_client_id_needs_no_handover(self) -> None:
        """A client id nobody owned: the CONNECT goes on at once after the claim."""
        d = self.connect("b", "new")
        self.assertIsInstance(self.successResultOf(d), Ok)
        self.assertEqual(self.records("b", "a") + self.records("b", "c"), [])

    def test_refused_connect_moves_nothing(self) -> None:
        """An authentication refusal is passed on and claims nothing."""
        self.loaded_session()
        refused = Error("not_authorized")
        self.assertIs(self.connect("b", result=refused), refused)
        self.assertEqual(self.records("b", "a"), [])
        self.assertIn(SessionKey("", "dev"), self.nodes["a"].broker.sessions)

    def test_silent_owner_times_out_then_late_session_joins(self) -> None:
        """If a does not answer within remote_enqueue_timeout the CONNECT goes on with
        a fresh session; the session arriving later joins it: its subscriptions are
        added and its messages delivered (a QoS 2 message past PUBREC is not)."""
        self.loaded_session()
        d = self.connect("b")
        timeout = self.nodes["b"].registry.migrator.timeout
        self.assertEqual(timeout, 5.0)  # VerneMQ's remote_enqueue_timeout default
        self.clock.advance(timeout)
        self.assertIsInstance(self.successResultOf(d), Ok)
        self.assertEqual(self.nodes["b"].registry.migrator.handover_timeouts, 1)
        conn = FakeConnection(4)
        session, present = self.nodes["b"].broker.open_session(("", "dev"), False, None, conn)
        self.assertFalse(present)
        self.nodes["b"].broker.session_resumed(session)
        self.pump()
        self.pump()
        self.assertEqual(set(session.subscriptions), {"q/#", "x"})
        out = b"".join(conn.written)
        self.assertEqual([p in out for p in (b"m1", b"m2", b"m3", b"m4")],
                         [True, False, True, True])
        self.pump()
        self.assertIn(("deleted", "dev"), self.nodes["a"].broker.store.calls)

    def test_incomplete_session_stays_on_the_old_node(self) -> None:
        """When fewer messages arrive than the SESSION record counts, b refuses the
        session and a puts it back (offline, subscribed again)."""
        old = self.loaded_session()
        d = self.connect("b")
        self.carry("b", "a")
        self.nodes["a"].links["b"].sent.pop(0)  # one SESSION_MSG lost on the way
        self.carry("a", "b")
        self.assertIsInstance(self.successResultOf(d), Ok)
        self.assertNotIn(old.key, self.nodes["b"].broker.sessions)
        self.assertEqual(self.carry("b", "a"), [SessionAck(1, INCOMPLETE)])
        self.assertIs(self.nodes["a"].broker.sessions[old.key], old)
        self.assertEqual(len(old.queue) + len(old.inflight), 4)
        self.settle()
        self.assertEqual(self.engine.routes["a"], {"q/#", "x"})
        self.assertNotIn(("deleted", "dev"), self.nodes["a"].broker.store.calls)

    def test_unacknowledged_session_is_put_back(self) -> None:
        """If b never acknowledges (it crashed mid-move), a puts the session back after
        the timeout: nothing is lost."""
        old = self.loaded_session()
        self.connect("b")
        self.carry("b", "a")
        self.nodes["a"].links["b"].sent.clear()  # b never gets it
        self.clock.advance(self.nodes["a"].registry.migrator.timeout)
        self.assertIs(self.nodes["a"].broker.sessions[old.key], old)
        self.assertEqual(self.nodes["a"].registry.migrator.moves_failed, 1)

    def test_stale_handover_is_refused(self) -> None:
        """A handover whose epoch is older than this node's claim is answered STALE
        and moves nothing."""
        session, conn = self.persistent("a")
        self.settle()
        mine = self.nodes["a"].registry.epochs[session.key]
        self.nodes["a"].registry.control("b", Handover(7, "", "dev", mine - 1))
        self.assertFalse(conn.taken_over)
        self.assertEqual(self.records("a", "b"), [TakeoverDone(7, "", "dev", mine - 1, STALE)])

    def test_coordinate_registrations_off_does_not_wait(self) -> None:
        """With coordinate_registrations = off the CONNECT goes on at once; the session
        joins when it arrives."""
        registry = self.nodes["b"].registry
        registry.coordinate = False
        self.loaded_session()
        result = Ok()
        self.assertIs(self.connect("b", result=result), result)
        conn = FakeConnection(4)
        session, present = self.nodes["b"].broker.open_session(("", "dev"), False, None, conn)
        self.assertFalse(present)
        self.nodes["b"].broker.session_resumed(session)
        self.assertEqual([type(r) for r in self.carry("b", "a")], [Handover])
        self.carry("a", "b")
        self.assertIn(b"m3", b"".join(conn.written))
        self.assertEqual([type(r) for r in self.carry("b", "a")], [SessionAck])

    def test_dead_owner_session_starts_fresh(self) -> None:
        """When the previous owner is not a live member (no link), nothing is asked."""
        self.loaded_session()
        del self.nodes["b"].links["a"]
        self.assertIsInstance(self.successResultOf(self.connect("b")), Ok)


class SharedPickAckTests(MoveCase):

    def setUp(self) -> None:
        super().setUp()
        self.patch(SharedRoutes, "rng", random.Random(3))
        for node in self.nodes.values():
            node.broker.config = dataclasses.replace(node.broker.config,
                                                     shared_subscription_policy="random")

    def test_pick_is_acknowledged(self) -> None:
        """A node that receives a pick answers ENQ_ACK; the pick is then forgotten."""
        _, b1 = self.sub("b", "b1", "$share/g/t")
        self.settle()
        self.publish("a", "t", b"x")
        self.assertEqual(len(self.nodes["a"].router.picks), 1)
        self.carry("a", "b")
        self.assertEqual([type(r) for r in self.carry("b", "a")], [EnqAck])
        self.assertEqual(len(self.nodes["a"].router.picks), 0)
        self.assertEqual(len(b1.written), 1)

    def test_refused_pick_goes_to_another_node(self) -> None:
        """A pick refused because the node's last member just left is picked again
        among the remaining nodes, once."""
        sb, _ = self.sub("b", "b1", "$share/g/t")
        _, c1 = self.sub("c", "c1", "$share/g/t")
        self.settle()
        self.nodes["b"].broker.connection_closed(sb)  # gone; a does not know yet
        self.nodes["c"].broker.connection_closed(self.nodes["c"].broker.sessions[
            SessionKey("", "c1")])  # and c's too: the second pick fails as well
        router = self.nodes["a"].router
        for i in range(6):
            self.publish("a", "t", b"%d" % i)
        for _ in range(6):
            self.pump()
        self.assertEqual(router.shared_repicked, 6)
        self.assertEqual(router.shared_dropped, 6)
        self.assertEqual(len(router.picks), 0)

    def test_unanswered_pick_is_picked_again_after_the_timeout(self) -> None:
        """A pick not acknowledged within remote_enqueue_timeout goes to the other
        node with members."""
        _, b1 = self.sub("b", "b1", "$share/g/t")
        _, c1 = self.sub("c", "c1", "$share/g/t")
        self.settle()
        self.publish("a", "t", b"x")
        router = self.nodes["a"].router
        first = next(iter(router.picks.pending.values())).node
        self.nodes["a"].links[first].sent.clear()  # lost
        self.clock.advance(5.0)
        self.assertEqual(router.shared_repicked, 1)
        self.pump()
        self.pump()
        other = c1 if first == "b" else b1
        self.assertEqual(len(other.written), 1)
        self.assertEqual(len(router.picks), 0)

    def test_refusal_status(self) -> None:
        """A pick for a group without members here is answered NO_MEMBER."""
        self.sub("b", "b1", "$share/g/t")
        self.settle()
        self.nodes["c"].router.deliver("a", [enq_for_group(Msg("", "t", b"x"), "g", "t", 77)])
        self.assertEqual(self.records("c", "a"), [EnqAck(77, NO_MEMBER)])


class LeaveTests(MoveCase):

    def setUp(self) -> None:
        super().setUp()
        for node in self.nodes.values():
            for peer in node.links:
                node.links[peer] = StoppableLink()

    def node(self, name: str) -> Any:
        self.clock.advance(1.0)  # a heartbeat: every node sees the others
        n = self.nodes[name]
        return SimpleNamespace(cluster=SimpleNamespace(nodename=name), metadata=n.meta,
                               links=n.links, broker=n.broker, registry=n.registry,
                               parent=None, joined=True)

    def test_leave_moves_offline_sessions_round_robin(self) -> None:
        """leave() disconnects online clients (0x8B), moves every persistent session
        with its messages to the other members in turn, ends the clean ones and
        leaves the membership."""
        self.loaded_session()
        s2, _ = self.persistent("a", "dev2")
        self.nodes["a"].broker.subscribe(s2, "q/#", SubOptions(1))
        self.nodes["a"].broker.connection_closed(s2)
        self.publish_q("a", "q/9", b"m9", 1)
        broker = self.nodes["a"].broker
        online = ClosingConnection(broker, self.clock)
        s3, _ = broker.open_session(("", "online"), False, None, online)
        broker.subscribe(s3, "q/#", SubOptions(1))
        clean, _ = self.nodes["a"].online("clean")
        clean.conn = ClosingConnection(broker, self.clock)
        self.settle()
        d = leave(self.node("a"))
        self.assertEqual(online.closed_with, 0x8B)
        for _ in range(3):
            self.clock.advance(0)
            self.pump()
        report = self.successResultOf(d)
        self.assertEqual(report, LeaveReport(3, 6, [], True))
        self.assertEqual(self.nodes["a"].broker.sessions, {})
        moved = {n: {k.client_id for k in self.nodes[n].broker.sessions} for n in "bc"}
        self.assertEqual(moved["b"] | moved["c"], {"dev", "dev2", "online"})
        self.assertTrue(moved["b"] and moved["c"], moved)
        self.assertNotIn("a", self.engine.members)
        self.assertEqual(self.engine.owners[("", "dev")][0] in ("b", "c"), True)

    def test_leave_to_a_target(self) -> None:
        """With a target every session goes there; an unknown target does nothing."""
        self.loaded_session()
        report = self.successResultOf(leave(self.node("a"), "nowhere"))
        self.assertFalse(report.left)
        self.assertEqual(len(report.errors), 1)
        d = leave(self.node("a"), "c")
        for _ in range(3):
            self.pump()
        self.assertEqual(self.successResultOf(d).sessions_moved, 1)
        self.assertIn(SessionKey("", "dev"), self.nodes["c"].broker.sessions)


class DurableMoveTests(MoveCase):

    def test_moved_session_is_in_the_durable_store(self) -> None:
        """The new owner writes the moved session through its durable store: after a
        restart of that node it has the subscriptions, the inflight messages (under
        their packet ids and states) and the queue."""
        path = tempfile.mkdtemp(prefix="vmqtw-migrate-")
        self.addCleanup(shutil.rmtree, path, True)
        store = SQLiteStore(path, reactor, clock=self.clock.seconds)
        store.load(self.clock.seconds())
        self.nodes["b"].broker.store = store
        old = self.loaded_session()
        self.connect("b")
        self.carry("b", "a")
        self.carry("a", "b")
        self.assertIn(old.key, self.nodes["b"].broker.sessions)
        store.close()
        again = SQLiteStore(path, reactor, clock=self.clock.seconds)
        self.addCleanup(again.close)
        [stored] = again.load(self.clock.seconds()).sessions
        self.assertEqual((stored.mountpoint, stored.client_id), ("", "dev"))
        self.assertEqual(set(stored.subscriptions), {"q/#", "x"})
        self.assertEqual([(d.message.payload, d.state, d.packet_id) for d in stored.deliveries],
                         [(b"m1", WAIT_PUBACK, 1), (b"m2", WAIT_PUBCOMP, 2),
                          (b"m3", 0, None), (b"m4", 0, None)])
