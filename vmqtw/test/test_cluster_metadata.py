"""The behaviour every ``IMetadata`` implementation shares (:class:`MetadataContract`),
run here against ``MemoryMetadata``; tests/test_cluster_redis.py runs it against Redis.

Contract tests use the real reactor and poll the local views (bounded in time), since
an engine's changes reach the other nodes asynchronously.
"""
from __future__ import annotations

from typing import Any, Callable, Generator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from vmqtw.cluster.memory_metadata import MemoryEngine, MemoryMetadata
from vmqtw.cluster.metadata import (
    Claim, IMetadata, MetadataUnavailable, RetainedChange, RouteChange,
)

TIMEOUT = 10.0


@inlineCallbacks
def until(predicate: Callable[[], Any], what: str,
          timeout: float = TIMEOUT) -> Generator[Deferred[Any], Any, None]:
    """Poll ``predicate`` every 20 ms until it is true; fail after ``timeout``."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        yield deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class MetadataContract:
    """Mixed into a ``TestCase`` that provides:

    - ``node(name, **options)``: a new, unstarted ``IMetadata`` for node ``name`` with
      a 0.1 s heartbeat, a 1 s node timeout and address ``127.0.0.1:<4400+len(name)>``,
      stopped in a cleanup;
    - ``engine_down()``: make the engine unreachable;
    - ``engine_restart()``: make it lose all its data (``Deferred``);
    - ``engine_routes(node)``: the routes the engine holds for ``node`` (``Deferred``).
    """

    node: Callable[..., Any]
    engine_down: Callable[[], Any]
    engine_restart: Callable[[], Deferred[Any]]
    engine_routes: Callable[[str], Deferred[set[str]]]
    assertEqual: Callable[..., None]
    assertTrue: Callable[..., None]
    assertFalse: Callable[..., None]
    assertIn: Callable[..., None]
    assertNotIn: Callable[..., None]
    assertIsNone: Callable[..., None]
    assertGreater: Callable[..., None]
    assertRaises: Callable[..., Any]

    @inlineCallbacks
    def two_nodes(self, **options: Any) -> Generator[Deferred[Any], Any, tuple[Any, Any]]:
        a, b = self.node("node-a", **options), self.node("node-b", **options)
        yield a.start()
        yield b.start()
        yield until(lambda: set(a.members()) == {"node-a", "node-b"}, "a to see b")
        return a, b

    def test_provides_the_interface(self) -> None:
        """The implementation provides IMetadata."""
        self.assertTrue(verifyObject(IMetadata, self.node("x")))

    @inlineCallbacks
    def test_nodes_see_each_others_membership(self) -> Generator[Deferred[Any], Any, None]:
        """Two nodes on one engine see each other as members, with their vmq addresses,
        and a member watcher hears about the newcomer."""
        a = self.node("node-a")
        ups: list[dict] = []
        a.watch_members(lambda up, down: ups.append(up))
        yield a.start()
        b = self.node("node-b")
        yield b.start()
        self.assertEqual(set(b.members()), {"node-a", "node-b"})
        yield until(lambda: "node-b" in a.members(), "a to see b")
        self.assertEqual(a.members()["node-b"].address, "127.0.0.1:4406")
        self.assertTrue(any("node-b" in up for up in ups))
        self.assertTrue(a.reachable and b.reachable)

    @inlineCallbacks
    def test_route_changes_reach_the_other_node(self) -> Generator[Deferred[Any], Any, None]:
        """A route added or removed by one node shows up in the other node's view and
        its route watcher; a node started later loads existing routes."""
        a, b = yield self.two_nodes()
        seen: list[RouteChange] = []
        b.watch_routes(seen.extend)
        yield a.add_route("sensors/+/temp")
        yield a.add_route("$share/g/jobs/#")
        yield until(lambda: b.routes().get("node-a") == {"sensors/+/temp", "$share/g/jobs/#"},
                    "b to see a's routes")
        yield a.add_route("sensors/+/temp")        # idempotent: no second change
        yield a.remove_route("$share/g/jobs/#")
        yield until(lambda: b.routes().get("node-a") == {"sensors/+/temp"}, "the removal")
        self.assertEqual(seen, [RouteChange("node-a", "sensors/+/temp", True),
                                RouteChange("node-a", "$share/g/jobs/#", True),
                                RouteChange("node-a", "$share/g/jobs/#", False)])
        c = self.node("node-c")
        yield c.start()
        self.assertEqual(c.routes()["node-a"], {"sensors/+/temp"})

    @inlineCallbacks
    def test_expired_node_disappears(self) -> Generator[Deferred[Any], Any, None]:
        """A node that stops heartbeating (as if it crashed) is declared down after
        the node timeout; its routes leave the others' views and the engine."""
        a, b = yield self.two_nodes()
        yield a.add_route("x/#")
        yield until(lambda: "node-a" in b.routes(), "b to see a's route")
        downs: list[set] = []
        b.watch_members(lambda up, down: downs.append(down))
        yield a.stop()
        yield until(lambda: "node-a" not in b.members(), "node-a to expire", timeout=5)
        self.assertIn({"node-a"}, downs)
        self.assertNotIn("node-a", b.routes())
        self.assertEqual((yield self.engine_routes("node-a")), set())

    @inlineCallbacks
    def test_leave_is_seen_at_once(self) -> Generator[Deferred[Any], Any, None]:
        """A node that leaves is removed from the others' member and route views
        through the change log, without waiting for the node timeout."""
        a, b = yield self.two_nodes(node_timeout=30.0)
        yield a.add_route("y")
        yield until(lambda: "node-a" in b.routes(), "b to see a's route")
        yield a.leave()
        yield a.stop()
        yield until(lambda: "node-a" not in b.members() and "node-a" not in b.routes(),
                    "the leave", timeout=20.0)

    @inlineCallbacks
    def test_claims_give_increasing_epochs_and_fence_stale_owners(
            self) -> Generator[Deferred[Any], Any, None]:
        """Claiming a client id returns the previous owner and a larger epoch each
        time; the superseded owner is no longer owner and cannot release."""
        a, b = yield self.two_nodes()
        first = yield a.claim("", "client-1")
        self.assertEqual(first.previous, None)
        second = yield b.claim("", "client-1")
        self.assertEqual(second, Claim("node-a", second.epoch))
        self.assertGreater(second.epoch, first.epoch)
        self.assertFalse((yield a.is_owner("", "client-1", first.epoch)))
        self.assertTrue((yield b.is_owner("", "client-1", second.epoch)))
        self.assertFalse((yield a.release("", "client-1", first.epoch)))
        self.assertEqual((yield a.owner("", "client-1")), ("node-b", second.epoch))
        self.assertTrue((yield b.release("", "client-1", second.epoch)))
        self.assertIsNone((yield a.owner("", "client-1")))
        third = yield a.claim("", "client-1")
        self.assertEqual(third.previous, None)
        self.assertGreater(third.epoch, second.epoch)
        # Mountpoints separate client ids, even with ':' in them.
        other = yield a.claim("mp:1", "x")
        also = yield a.claim("mp", "1:x")
        self.assertEqual((other.previous, also.previous), (None, None))

    @inlineCallbacks
    def test_concurrent_claims_are_serialised(self) -> Generator[Deferred[Any], Any, None]:
        """Many claims sent at once by two nodes get distinct, increasing epochs and
        each names the owner before it."""
        a, b = yield self.two_nodes()
        claims = yield gatherResults([(a if i % 2 else b).claim("", "race") for i in range(20)])
        epochs = [c.epoch for c in claims]
        self.assertEqual(len(set(epochs)), 20)
        final = yield a.owner("", "race")
        self.assertEqual(final[1], max(epochs))

    @inlineCallbacks
    def test_retained_messages_are_shared(self) -> Generator[Deferred[Any], Any, None]:
        """A retained message stored by one node reaches the other's copy and watcher;
        deleting it removes it everywhere."""
        a, b = yield self.two_nodes()
        seen: list[RetainedChange] = []
        b.watch_retained(seen.extend)
        payload = bytes(range(256))
        yield a.set_retained("mp:x", "a/b", payload)
        yield until(lambda: ("mp:x", "a/b") in b.retained(), "b to get the retained message")
        self.assertEqual(b.retained()[("mp:x", "a/b")], payload)
        yield a.delete_retained("mp:x", "a/b")
        yield until(lambda: not b.retained(), "the deletion")
        self.assertEqual(seen, [RetainedChange("mp:x", "a/b", payload),
                                RetainedChange("mp:x", "a/b", None)])
        yield a.set_retained("", "late", b"1")
        c = self.node("node-c")
        yield c.start()
        self.assertEqual(c.retained(), {("", "late"): b"1"})

    @inlineCallbacks
    def test_persistent_session_subscriptions(self) -> Generator[Deferred[Any], Any, None]:
        """Subscriptions stored for a persistent session by one node are read by
        another; removing and deleting them works."""
        a, b = yield self.two_nodes()
        yield a.store_subscriptions("", "c1", {"a/#": b"\x01", "b": b"\x00"})
        self.assertEqual((yield b.subscriptions("", "c1")), {"a/#": b"\x01", "b": b"\x00"})
        yield b.remove_subscriptions("", "c1", ["b"])
        self.assertEqual((yield a.subscriptions("", "c1")), {"a/#": b"\x01"})
        yield a.delete_session("", "c1")
        self.assertEqual((yield b.subscriptions("", "c1")), {})

    @inlineCallbacks
    def test_engine_restart_routes_reannounced(self) -> Generator[Deferred[Any], Any, None]:
        """After the engine restarts empty, every owner re-announces its routes and
        member record; the other node's view keeps them without a flap and follows
        new changes."""
        a, b = yield self.two_nodes()
        yield a.add_route("r/1")
        yield b.add_route("r/2")
        yield until(lambda: "node-a" in b.routes() and "node-b" in a.routes(), "routes")
        removed: list[RouteChange] = []
        b.watch_routes(lambda cs: removed.extend(c for c in cs if not c.added))
        yield self.engine_restart()
        announced: list[bool] = []

        @inlineCallbacks
        def check() -> Generator[Deferred[Any], Any, None]:
            try:
                ra = yield self.engine_routes("node-a")
                rb = yield self.engine_routes("node-b")
            except Exception:
                return
            if ra == {"r/1"} and rb == {"r/2"}:
                announced.append(True)
        for _ in range(int(TIMEOUT / 0.05)):
            yield check()
            if announced:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(announced, "routes were not re-announced")
        yield until(lambda: a.reachable and b.reachable, "both nodes to reconnect")
        yield a.add_route("r/3")
        yield until(lambda: b.routes().get("node-a") == {"r/1", "r/3"}, "the new route")
        self.assertEqual(set(b.members()), {"node-a", "node-b"})
        self.assertEqual(removed, [])

    @inlineCallbacks
    def test_epochs_keep_increasing_across_an_engine_restart(
            self) -> Generator[Deferred[Any], Any, None]:
        """A claim after the engine lost its data still gets an epoch above every earlier
        one, so a node holding an old epoch stays fenced."""
        a, b = yield self.two_nodes()
        before = yield a.claim("", "c")
        yield self.engine_restart()
        yield until(lambda: a.reachable and b.reachable, "the nodes to reconnect")
        after = yield b.claim("", "c")
        self.assertEqual(after.previous, None)
        self.assertGreater(after.epoch, before.epoch)
        self.assertFalse((yield a.is_owner("", "c", before.epoch)))

    @inlineCallbacks
    def test_unavailable_engine_gives_a_clear_error(
            self) -> Generator[Deferred[Any], Any, None]:
        """With the engine gone every operation fails with MetadataUnavailable (in
        bounded time, never a hang) and heartbeats mark the node unreachable."""
        a, b = yield self.two_nodes()
        yield self.engine_down()
        for call in (lambda: a.claim("", "c"), lambda: a.add_route("z"),
                     lambda: a.set_retained("", "t", b"m"), lambda: a.subscriptions("", "c")):
            try:
                yield call()
            except MetadataUnavailable:
                pass
            else:
                raise AssertionError("no MetadataUnavailable")
        yield until(lambda: not a.reachable, "a to notice", timeout=5)



class MemoryMetadataTests(MetadataContract, unittest.TestCase):

    timeout = 60

    def setUp(self) -> None:
        self.engine = MemoryEngine(reactor)

    def node(self, name: str, **kwargs: Any) -> MemoryMetadata:
        options: dict[str, Any] = dict(address=f"127.0.0.1:{4400 + len(name)}",
                                       heartbeat_interval=0.1, node_timeout=1.0)
        options.update(kwargs)
        meta = MemoryMetadata(self.engine, name, **options)
        self.addCleanup(meta.stop)
        return meta

    def engine_down(self) -> None:
        self.engine.available = False

    def engine_restart(self) -> Deferred[None]:
        self.engine.wipe()
        return succeed(None)

    def engine_routes(self, node: str) -> Deferred[set[str]]:
        return succeed(set(self.engine.routes.get(node, ())))


class MemoryMetadataClockTests(unittest.SynchronousTestCase):
    """MemoryMetadata on a Clock: what wiring tests of the core can rely on."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.engine = MemoryEngine(self.clock)
        self.a = MemoryMetadata(self.engine, "a", heartbeat_interval=1.0, node_timeout=5.0)
        self.b = MemoryMetadata(self.engine, "b", heartbeat_interval=1.0, node_timeout=5.0)
        self.a.start()
        self.b.start()
        self.clock.advance(1.0)

    def test_changes_arrive_after_the_call(self) -> None:
        """A route change reaches the other node on the next reactor turn, never
        inside the caller's call."""
        seen: list[RouteChange] = []
        self.b.watch_routes(seen.extend)
        self.a.add_route("t/#")
        self.assertEqual(seen, [])
        self.clock.advance(0)
        self.assertEqual(seen, [RouteChange("a", "t/#", True)])

    def test_expiry_on_the_engine_clock(self) -> None:
        """A stopped node is still a member until its expiry has passed, then down."""
        self.a.stop()
        self.clock.advance(5.0)
        self.assertIn("a", self.b.members())
        self.clock.advance(1.0)
        self.assertNotIn("a", self.b.members())

    def test_claims_are_fired_deferreds(self) -> None:
        """Registry calls answer at once; claims fence the previous owner."""
        first = self.successResultOf(self.a.claim("", "c"))
        second = self.successResultOf(self.b.claim("", "c"))
        self.assertEqual(second, Claim("a", second.epoch))
        self.assertGreater(second.epoch, first.epoch)
        self.assertFalse(self.successResultOf(self.a.release("", "c", first.epoch)))

    def test_unavailable_engine(self) -> None:
        """An unavailable engine fails calls with MetadataUnavailable; once back, the
        node re-announces routes added meanwhile."""
        self.engine.available = False
        self.failureResultOf(self.a.add_route("x"), MetadataUnavailable)
        self.clock.advance(1.0)
        self.assertFalse(self.a.reachable)
        self.engine.available = True
        self.clock.advance(1.0)
        self.clock.advance(0)
        self.assertTrue(self.a.reachable)
        self.assertEqual(self.b.routes(), {"a": frozenset({"x"})})
