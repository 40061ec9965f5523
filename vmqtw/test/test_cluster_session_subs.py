"""Persistent sessions' subscriptions in the metadata (``vmqtw.cluster.session_subs``):
written by the owning node, removed when the session ends, restored for a client whose
node died. Three brokers on one ``MemoryEngine`` and a ``Clock``."""
from __future__ import annotations

from typing import Any

from vmqtw.auth.api import Error, Ok
from vmqtw.cluster.codec import Handover
from vmqtw.cluster.netsplit import NETSPLIT
from vmqtw.cluster.session_subs import decode_subinfo, encode_subinfo
from vmqtw.codec import SubOptions
from vmqtw.core.message import Message
from vmqtw.core.values import SessionKey
from vmqtw.test.harness import FakeConnection
from vmqtw.test.test_cluster_migrate import MoveCase

DEV = ("", "dev")


class SubinfoTests(MoveCase):

    def test_subinfo_round_trip(self) -> None:
        """Options and the subscription identifier survive encoding."""
        options = SubOptions(2, True, True, 2)
        got, sub_id = decode_subinfo(encode_subinfo(options, 77))
        self.assertEqual((got.qos, got.no_local, got.retain_as_published,
                          got.retain_handling, sub_id), (2, True, True, 2, 77))


class WriteTests(MoveCase):

    def stored(self) -> dict[str, tuple[int, int]]:
        subs = self.engine.sessions.get(DEV, {})
        return {f: (o.qos, i) for f, (o, i) in
                ((f, decode_subinfo(v)) for f, v in subs.items())}

    def test_subscribe_and_unsubscribe_are_written(self) -> None:
        """A persistent session's SUBSCRIBE and UNSUBSCRIBE reach the metadata after
        the reactor turn (not inside the call)."""
        session, _ = self.persistent("a")
        broker = self.nodes["a"].broker
        session.sub_ids["q/#"] = 5
        broker.subscribe(session, "q/#", SubOptions(1))
        broker.subscribe(session, "x", SubOptions(2))
        self.assertEqual(self.stored(), {})
        self.settle()
        self.assertEqual(self.stored(), {"q/#": (1, 5), "x": (2, 0)})
        broker.unsubscribe(session, "x")
        broker.subscribe(session, "q/#", SubOptions(0))
        self.settle()
        self.assertEqual(self.stored(), {"q/#": (0, 5)})

    def test_several_subscribes_in_one_turn_make_one_write(self) -> None:
        """Subscriptions made in one reactor turn are written together."""
        session, _ = self.persistent("a")
        subs = self.nodes["a"].registry.subs
        self.settle()
        before = subs.writes
        for i in range(5):
            self.nodes["a"].broker.subscribe(session, f"t/{i}", SubOptions(1))
        self.settle()
        self.assertEqual(subs.writes - before, 1)
        self.assertEqual(len(self.stored()), 5)

    def test_a_subscribe_writes_only_its_filter(self) -> None:
        """A session with many subscriptions that subscribes once more writes that
        one filter, not the whole set again."""
        session, _ = self.persistent("a")
        broker = self.nodes["a"].broker
        for i in range(50):
            broker.subscribe(session, f"t/{i}", SubOptions(1))
        self.settle()
        meta = self.nodes["a"].meta
        calls: list[dict[str, bytes]] = []
        store = meta.store_subscriptions

        def spy(mountpoint: str, client_id: str, subs: dict[str, bytes]) -> Any:
            calls.append(subs)
            return store(mountpoint, client_id, subs)
        self.patch(meta, "store_subscriptions", spy)
        broker.subscribe(session, "u", SubOptions(2))
        self.settle()
        self.assertEqual([set(c) for c in calls], [{"u"}])
        self.assertEqual(len(self.stored()), 51)

    def test_clean_session_is_not_written(self) -> None:
        """A clean session's subscriptions stay out of the metadata."""
        session, _ = self.sub("a", "dev", "t")
        self.settle()
        self.assertEqual(self.engine.sessions, {})

    def test_clean_connect_of_a_new_client_id_writes_nothing(self) -> None:
        """A clean session of a client id no other node owned, or one reconnecting to
        the node that had it, costs no metadata write."""
        subs = self.nodes["a"].registry.subs
        session, _ = self.sub("a", "fresh", "t")
        self.nodes["a"].broker.connection_closed(session)
        self.sub("a", "fresh", "t")
        self.settle()
        self.assertEqual(subs.writes, 0)

    def test_expiry_removes_the_copy(self) -> None:
        """A persistent session that expires removes its stored subscriptions."""
        session, _ = self.persistent("a", expiry=10)
        self.nodes["a"].broker.subscribe(session, "t", SubOptions(1))
        self.settle()
        self.assertEqual(self.stored(), {"t": (1, 0)})
        self.nodes["a"].broker.connection_closed(session)
        self.clock.advance(11)
        self.settle()
        self.assertEqual(self.engine.sessions, {})

    def test_clean_start_on_another_node_removes_the_copy(self) -> None:
        """A client that reconnects with clean session 1 on another node removes the
        stored subscriptions (the node it left does not delete the new owner's)."""
        session, _ = self.persistent("a")
        self.nodes["a"].broker.subscribe(session, "t", SubOptions(1))
        self.settle()
        self.assertIn(DEV, self.engine.sessions)
        self.nodes["b"].online("dev")
        self.settle()
        self.pump()
        self.pump()
        self.settle()
        self.assertNotIn(DEV, self.engine.sessions)
        self.assertNotIn(SessionKey(*DEV), self.nodes["a"].broker.sessions)

    def test_moved_session_is_owned_by_the_new_node(self) -> None:
        """A session that moves (live owner, clean session 0) keeps its stored
        subscriptions, now written by the node it moved to."""
        self.loaded_session()
        self.assertEqual(self.stored(), {"q/#": (2, 0), "x": (1, 0)})
        d = self.connect("b")
        self.assertEqual([type(r) for r in self.carry("b", "a")], [Handover])
        self.carry("a", "b")
        self.carry("b", "a")
        self.assertIsInstance(self.successResultOf(d), Ok)
        self.settle()
        self.assertEqual(self.stored(), {"q/#": (2, 0), "x": (1, 0)})
        key = SessionKey(*DEV)
        self.assertIn(key, self.nodes["b"].registry.subs.owned)
        self.assertNotIn(key, self.nodes["a"].registry.subs.owned)
        session = self.nodes["b"].broker.sessions[key]
        self.nodes["b"].broker.unsubscribe(session, "x")
        self.settle()
        self.assertEqual(self.stored(), {"q/#": (2, 0)})

    def test_failed_write_is_retried(self) -> None:
        """A write while the engine is unreachable is retried once it answers (the
        readiness check's retry), with the full set of subscriptions."""
        session, _ = self.persistent("a")
        self.settle()
        self.engine.available = False
        self.nodes["a"].broker.subscribe(session, "t", SubOptions(1))
        self.settle()
        subs = self.nodes["a"].registry.subs
        self.assertEqual(subs.failed, {SessionKey(*DEV)})
        self.engine.available = True
        self.clock.advance(1)  # a heartbeat: reachable again
        subs.retry()
        self.settle()
        self.assertEqual(self.stored(), {"t": (1, 0)})
        self.assertEqual(subs.failed, set())

    def test_engine_wipe_rewrites_on_announce(self) -> None:
        """After the engine lost everything (a restart), the node's re-announce writes
        every kept session's subscriptions again."""
        session, _ = self.persistent("a")
        self.nodes["a"].broker.subscribe(session, "t", SubOptions(1))
        self.settle()
        self.engine.wipe()
        self.clock.advance(1)  # the heartbeat finds the node unknown: re-announce
        self.settle()
        self.assertEqual(self.stored(), {"t": (1, 0)})


class RestoreTests(MoveCase):

    def dead_owner(self) -> None:
        """dev subscribed on node a (q/# QoS 2, x QoS 1), then node a is dead to b."""
        self.loaded_session()
        del self.nodes["b"].links["a"]

    def test_dead_owner_subscriptions_are_restored(self) -> None:
        """A CONNECT with clean session 0 whose previous owner is dead resumes the
        session with the stored subscriptions: session present, routes announced, a
        message published on another node delivered without a new SUBSCRIBE."""
        self.dead_owner()
        self.assertIsInstance(self.successResultOf(self.connect("b")), Ok)
        conn = FakeConnection(4)
        broker = self.nodes["b"].broker
        session, present = broker.open_session(DEV, False, None, conn)
        self.assertTrue(present)
        broker.session_resumed(session)
        self.assertEqual({f: o.qos for f, o in session.subscriptions.items()},
                         {"q/#": 2, "x": 1})
        self.assertFalse(session.queue)  # lost with the dead node
        self.settle()
        self.assertIn("q/#", self.nodes["c"].meta.routes()["b"])
        self.nodes["c"].broker.publish(Message("q/9", b"hello", 1), "")
        self.nodes["c"].broker.flush()
        self.pump()
        self.assertIn(b"hello", b"".join(conn.written))
        self.assertEqual(self.nodes["b"].registry.subs.restored, 1)

    def test_nothing_stored_starts_fresh(self) -> None:
        """Without stored subscriptions a dead owner's client starts fresh."""
        self.dead_owner()
        self.engine.sessions.clear()
        self.assertIsInstance(self.successResultOf(self.connect("b")), Ok)
        self.assertNotIn(SessionKey(*DEV), self.nodes["b"].broker.sessions)

    def test_restarted_node_restores_its_own(self) -> None:
        """A node that owned the client id but no longer has the session (it was
        restarted) restores the stored subscriptions too."""
        self.loaded_session()
        broker = self.nodes["a"].broker
        session = broker.sessions[SessionKey(*DEV)]
        self.nodes["a"].registry.subs.release(session.key)  # a restart forgets, keeps
        broker.sessions.pop(session.key)
        self.assertIsInstance(self.successResultOf(self.connect("a")), Ok)
        restored = broker.sessions[SessionKey(*DEV)]
        self.assertIsNot(restored, session)
        self.assertEqual(set(restored.subscriptions), {"q/#", "x"})

    def test_unreachable_metadata_refuses_when_register_not_allowed(self) -> None:
        """The subscriptions cannot be read (engine unreachable after the claim):
        with allow_register_during_netsplit = off the CONNECT is refused."""
        self.dead_owner()
        registry = self.nodes["b"].registry
        self.patch(registry.subs.metadata, "subscriptions", self._unavailable)
        result = self.successResultOf(self.connect("b"))
        self.assertIsInstance(result, Error)
        self.assertEqual(result.reason, NETSPLIT)

    def test_unreachable_metadata_starts_fresh_when_register_allowed(self) -> None:
        """With allow_register_during_netsplit = on, the same CONNECT starts fresh."""
        self.dead_owner()
        registry = self.nodes["b"].registry
        registry.allow_register = True
        self.patch(registry.subs.metadata, "subscriptions", self._unavailable)
        self.assertIsInstance(self.successResultOf(self.connect("b")), Ok)
        self.assertNotIn(SessionKey(*DEV), self.nodes["b"].broker.sessions)

    def test_late_restore_joins_an_open_session(self) -> None:
        """coordinate_registrations = off: the session opens before the stored
        subscriptions are read; they join it when they arrive."""
        self.dead_owner()
        registry = self.nodes["b"].registry
        registry.coordinate = False
        from twisted.internet.defer import Deferred
        waiting: Deferred[dict[str, bytes]] = Deferred()
        stored = dict(self.engine.sessions[DEV])
        self.patch(registry.subs.metadata, "subscriptions", lambda mp, cid: waiting)
        self.assertIsInstance(self.connect("b"), Ok)
        conn = FakeConnection(4)
        broker = self.nodes["b"].broker
        session, present = broker.open_session(DEV, False, None, conn)
        self.assertFalse(present)
        broker.session_resumed(session)
        waiting.callback(stored)
        self.assertEqual(set(session.subscriptions), {"q/#", "x"})

    @staticmethod
    def _unavailable(mountpoint: str, client_id: str) -> Any:
        from twisted.internet.defer import fail
        from vmqtw.cluster.metadata import MetadataUnavailable
        return fail(MetadataUnavailable("down"))


del MoveCase  # not a test case of this module
