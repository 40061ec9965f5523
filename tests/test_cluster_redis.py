"""``RedisMetadata`` against a real ``redis-server`` started by the test on 127.0.0.1.

Two ``RedisMetadata`` objects in this process play two cluster nodes: they only share
the Redis server, exactly as two broker processes would.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from typing import Any, Callable, Generator

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.support import missing
from vmqtw.cluster.metadata import (
    Claim, IMetadata, MetadataUnavailable, RetainedChange, RouteChange,
)
from vmqtw.cluster.redis_metadata import RedisMetadata

TIMEOUT = 10.0


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@inlineCallbacks
def until(predicate: Callable[[], Any], what: str,
          timeout: float = TIMEOUT) -> Generator[Deferred[Any], Any, None]:
    """Poll ``predicate`` every 20 ms until it is true; fail after ``timeout``."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        yield deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RedisServer:
    """A throw-away ``redis-server`` without persistence, killed by PID."""

    def __init__(self, case: unittest.TestCase) -> None:
        if shutil.which("redis-server") is None:
            missing("redis-server is not installed (apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="vmqtw-redis-")
        case.addCleanup(shutil.rmtree, self.dir, True)
        case.addCleanup(self.kill)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @inlineCallbacks
    def start(self, port: int | None = None) -> Generator[Deferred[Any], Any, None]:
        """Start on ``port`` (a free one if None) and wait until it answers PING."""
        for _ in range(5):
            self.port = port or free_port()
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", self.dir,
                 "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(250):
                if self.proc.poll() is not None or pong(self.port):
                    break
                yield deferLater(reactor, 0.02, lambda: None)
            if self.proc.poll() is None and pong(self.port):
                return
            self.kill()
            if port is not None:
                # The fixed port is still taken (a closing socket): try again.
                yield deferLater(reactor, 0.1, lambda: None)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL, as a crash: no chance to save or close anything."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


class FromUrlTests(unittest.SynchronousTestCase):

    def test_url_parts(self) -> None:
        """metadata.redis.url gives host, port, database and password."""
        m = RedisMetadata.from_url("redis://:s%40cret@10.0.0.5:6380/2", "n1")
        self.assertEqual((m.host, m.port, m.dbid, m.password), ("10.0.0.5", 6380, 2, "s@cret"))
        m = RedisMetadata.from_url("redis://localhost", "n1")
        self.assertEqual((m.host, m.port, m.dbid, m.password), ("localhost", 6379, None, None))

    def test_other_schemes_refused(self) -> None:
        """A URL that is not redis:// is a ValueError."""
        self.assertRaises(ValueError, RedisMetadata.from_url, "http://x", "n1")


class RedisMetadataTests(unittest.TestCase):

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Generator[Deferred[Any], Any, None]:
        self.redis = RedisServer(self)
        yield self.redis.start()
        self.raw = txredisapi.RedisFactory("raw", None, 1, isLazy=True, charset=None,
                                           convertNumbers=False)
        self.raw.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", self.redis.port))
        self.addCleanup(self.raw.disconnect)

    def node(self, name: str, **kwargs: Any) -> RedisMetadata:
        options: dict[str, Any] = dict(address=f"127.0.0.1:{4400 + len(name)}",
                                       port=self.redis.port, heartbeat_interval=0.1,
                                       node_timeout=1.0, op_timeout=2.0, block_ms=200,
                                       cluster_name="test")
        options.update(kwargs)
        meta = RedisMetadata(name, **options)
        self.addCleanup(meta.stop)
        return meta

    def redis_call(self, *args: Any) -> Deferred[Any]:
        return self.raw.handler.execute_command(*args)

    @inlineCallbacks
    def two_nodes(self) -> Generator[Deferred[Any], Any, tuple[RedisMetadata, RedisMetadata]]:
        a, b = self.node("node-a"), self.node("node-b")
        yield a.start()
        yield b.start()
        yield until(lambda: set(a.members()) == {"node-a", "node-b"}, "a to see b")
        return a, b

    def test_provides_the_interface(self) -> None:
        """RedisMetadata implements IMetadata."""
        from zope.interface.verify import verifyObject
        self.assertTrue(verifyObject(IMetadata, self.node("x")))

    @inlineCallbacks
    def test_nodes_see_each_others_membership(self) -> Generator[Deferred[Any], Any, None]:
        """Two nodes on one Redis see each other as members, with their vmq addresses,
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
        the node timeout; its routes leave the others' views and Redis."""
        a, b = yield self.two_nodes()
        yield a.add_route("x/#")
        yield until(lambda: "node-a" in b.routes(), "b to see a's route")
        downs: list[set] = []
        b.watch_members(lambda up, down: downs.append(down))
        yield a.stop()
        yield until(lambda: "node-a" not in b.members(), "node-a to expire", timeout=5)
        self.assertIn({"node-a"}, downs)
        self.assertNotIn("node-a", b.routes())
        score = yield self.redis_call("ZSCORE", "{test}:members", "node-a")
        self.assertIsNone(score)
        self.assertEqual((yield self.redis_call("EXISTS", "{test}:routes:node-a")), 0)

    @inlineCallbacks
    def test_leave_is_seen_at_once(self) -> Generator[Deferred[Any], Any, None]:
        """A node that leaves is removed from the others' member and route views
        through the change log, without waiting for the node timeout."""
        a, b = yield self.two_nodes()
        yield a.add_route("y")
        yield until(lambda: "node-a" in b.routes(), "b to see a's route")
        yield a.leave()
        yield a.stop()
        yield until(lambda: "node-a" not in b.members() and "node-a" not in b.routes(),
                    "the leave", timeout=0.9)

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
        from twisted.internet.defer import gatherResults
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
    def test_redis_restart_routes_reannounced(self) -> Generator[Deferred[Any], Any, None]:
        """After Redis restarts empty, every owner re-announces its routes and member
        record; the other node's view keeps them without a flap and follows new
        changes."""
        a, b = yield self.two_nodes()
        yield a.add_route("r/1")
        yield b.add_route("r/2")
        yield until(lambda: "node-a" in b.routes() and "node-b" in a.routes(), "routes")
        removed: list[RouteChange] = []
        b.watch_routes(lambda cs: removed.extend(c for c in cs if not c.added))
        port = self.redis.port
        self.redis.kill()
        yield self.redis.start(port)

        @inlineCallbacks
        def announced() -> Generator[Deferred[Any], Any, bool]:
            ra = yield self.redis_call("HKEYS", "{test}:routes:node-a")
            rb = yield self.redis_call("HKEYS", "{test}:routes:node-b")
            return ra == [b"r/1"] and rb == [b"r/2"]
        ok: list[bool] = []
        for _ in range(int(TIMEOUT / 0.05)):
            try:
                if (yield announced()):
                    ok.append(True)
                    break
            except Exception:
                pass
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(ok, "routes were not re-announced")
        yield a.add_route("r/3")
        yield until(lambda: b.routes().get("node-a") == {"r/1", "r/3"}, "the new route")
        self.assertEqual(set(b.members()), {"node-a", "node-b"})
        self.assertEqual(removed, [])
        self.assertTrue(a.reachable and b.reachable)

    @inlineCallbacks
    def test_epochs_keep_increasing_across_a_redis_restart(
            self) -> Generator[Deferred[Any], Any, None]:
        """A claim after Redis lost its data still gets an epoch above every earlier
        one, so a node holding an old epoch stays fenced."""
        a, b = yield self.two_nodes()
        before = yield a.claim("", "c")
        port = self.redis.port
        self.redis.kill()
        yield self.redis.start(port)
        yield until(lambda: a.reachable and b.reachable, "the nodes to reconnect")
        after = yield b.claim("", "c")
        self.assertEqual(after.previous, None)
        self.assertGreater(after.epoch, before.epoch)
        self.assertFalse((yield a.is_owner("", "c", before.epoch)))

    @inlineCallbacks
    def test_follower_reloads_after_losing_its_connection(
            self) -> Generator[Deferred[Any], Any, None]:
        """When the change-log connection is killed, the node reconnects, reloads the
        views and sees changes made meanwhile."""
        a, b = yield self.two_nodes()
        yield a.add_route("f/1")
        yield until(lambda: "node-a" in b.routes(), "b to see a's route")
        clients = yield self.redis_call("CLIENT", "LIST")
        blocked = [line.split(b" ")[0].split(b"=")[1] for line in clients.splitlines()
                   if b"cmd=xread" in line]
        self.assertTrue(blocked)
        for cid in blocked:
            yield self.redis_call("CLIENT", "KILL", "ID", cid)
        yield a.remove_route("f/1")
        yield a.set_retained("", "t", b"v")
        yield until(lambda: "node-a" not in b.routes() and b.retained() == {("", "t"): b"v"},
                    "b to catch up")

    @inlineCallbacks
    def test_trimmed_log_is_detected(self) -> Generator[Deferred[Any], Any, None]:
        """A change log trimmed past the last entry a node read is reported as a gap
        (the follower then reloads), an untrimmed one is not."""
        a, b = yield self.two_nodes()
        yield a.add_route("g/1")
        yield until(lambda: "node-a" in b.routes(), "b to see a's route")
        last = b._rlog_id
        self.assertFalse((yield b._trimmed(b"{test}:rlog", last)))
        yield a.add_route("g/2")
        yield a.add_route("g/3")
        yield self.redis_call("XTRIM", "{test}:rlog", "MAXLEN", "1")
        self.assertTrue((yield b._trimmed(b"{test}:rlog", last)))

    @inlineCallbacks
    def test_dead_redis_gives_a_clear_error(self) -> Generator[Deferred[Any], Any, None]:
        """With Redis gone, start() and every operation fail with MetadataUnavailable
        within the operation timeout instead of hanging; heartbeats mark the node
        unreachable."""
        a, b = yield self.two_nodes()
        self.redis.kill()
        started = reactor.seconds()
        with self.assertRaises(MetadataUnavailable):
            yield a.claim("", "c")
        self.assertLess(reactor.seconds() - started, 2.0 + 1.0)
        yield until(lambda: not a.reachable, "a to notice", timeout=5)
        nowhere = self.node("node-x", port=free_port(), op_timeout=0.5)
        started = reactor.seconds()
        with self.assertRaises(MetadataUnavailable) as cm:
            yield nowhere.start()
        self.assertLess(reactor.seconds() - started, 3.0)
        self.assertIn("unavailable", str(cm.exception))
        with self.assertRaises(MetadataUnavailable):
            yield nowhere.add_route("z")
