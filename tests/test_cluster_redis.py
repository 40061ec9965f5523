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
from typing import Any, Callable, Generator, Sequence

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.support import missing
from vmqtw.cluster.metadata import MetadataUnavailable
from vmqtw.cluster.redis_metadata import RedisMetadata
from vmqtw.test.test_cluster_metadata import MetadataContract, until

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


def bounded(d: Deferred[Any], seconds: float) -> Deferred[Any]:
    """``d``, failing the test with AssertionError if it has not fired in ``seconds``."""
    def late(f: Any) -> Any:
        if f.check(CancelledError):
            raise AssertionError(f"no answer within {seconds}s: the call hangs")
        return f
    done: Deferred[Any] = Deferred(lambda _: None)
    timer = reactor.callLater(seconds, lambda: done.called or done.cancel())

    def fire(result: Any) -> None:
        if timer.active():
            timer.cancel()
        if not done.called:
            done.callback(result)
    d.addBoth(fire)
    return done.addErrback(late)


class RedisServer:
    """A throw-away ``redis-server`` without persistence, killed by PID.

    :param args: more command-line options (``--replicaof HOST PORT``, ...).
    :param sentinel: configuration lines: run as a Redis Sentinel with them.
    """

    def __init__(self, case: unittest.TestCase, args: Sequence[str] = (),
                 sentinel: Sequence[str] = ()) -> None:
        if shutil.which("redis-server") is None:
            missing("redis-server is not installed (apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="vmqtw-redis-")
        case.addCleanup(shutil.rmtree, self.dir, True)
        case.addCleanup(self.kill)
        self.args = list(args)
        self.sentinel = list(sentinel)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        common = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                  "--loglevel", "warning"]
        if self.sentinel:
            conf = os.path.join(self.dir, "sentinel.conf")
            with open(conf, "w") as f:
                f.write("\n".join(self.sentinel) + "\n")
            return ["redis-server", conf, "--sentinel", *common]
        return ["redis-server", *common, "--save", "", "--appendonly", "no", *self.args]

    @inlineCallbacks
    def start(self, port: int | None = None) -> Generator[Deferred[Any], Any, None]:
        """Start on ``port`` (a free one if None) and wait until it answers PING."""
        for _ in range(5):
            self.port = port or free_port()
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
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


class RedisMetadataTests(MetadataContract, unittest.TestCase):
    """The metadata contract on Redis, and what only Redis has (the key layout, its
    scripts, the change-log follower)."""

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Generator[Deferred[Any], Any, None]:
        # Runs last: txredisapi resumes a paused reader with callLater(0) as its
        # connections close; let such calls run before trial checks the reactor.
        self.addCleanup(deferLater, reactor, 0.01, lambda: None)
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

    def engine_down(self) -> None:
        self.redis.kill()

    @inlineCallbacks
    def engine_restart(self) -> Generator[Deferred[Any], Any, None]:
        port = self.redis.port
        self.redis.kill()
        yield self.redis.start(port)

    def engine_routes(self, node: str) -> Deferred[set[str]]:
        d = self.redis_call("HKEYS", f"{{test}}:routes:{node}")
        return d.addCallback(lambda keys: {k.decode() for k in keys})

    @inlineCallbacks
    def test_expired_node_is_reaped_from_redis(self) -> Generator[Deferred[Any], Any, None]:
        """The first heartbeat after a node's expiry removes its member entry, record
        and routes from Redis and logs a reset for it."""
        a, b = yield self.two_nodes()
        yield a.add_route("x/#")
        yield a.stop()
        yield until(lambda: "node-a" not in b.members(), "node-a to expire", timeout=5)
        self.assertIsNone((yield self.redis_call("ZSCORE", "{test}:members", "node-a")))
        self.assertEqual((yield self.redis_call("EXISTS", "{test}:routes:node-a",
                                                "{test}:node:node-a")), 0)
        last = yield self.redis_call("XREVRANGE", "{test}:rlog", "+", "-", "COUNT", 1)
        self.assertEqual(last[0][1], [b"node", b"node-a", b"op", b"reset", b"filter", b""])

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
        """A node whose Redis is down, or was never there, gets MetadataUnavailable
        naming the server from start() and every call, well within ten times the
        operation timeout (a hang would miss that bound)."""
        a, b = yield self.two_nodes()
        self.redis.kill()
        with self.assertRaises(MetadataUnavailable):
            yield bounded(a.claim("", "c"), 10 * 2.0)
        nowhere = self.node("node-x", port=free_port(), op_timeout=0.5)
        with self.assertRaises(MetadataUnavailable) as cm:
            yield bounded(nowhere.start(), 10 * 0.5)
        self.assertIn(f"Redis at 127.0.0.1:{nowhere.port} unavailable", str(cm.exception))
        with self.assertRaises(MetadataUnavailable):
            yield bounded(nowhere.add_route("z"), 10 * 0.5)


class SentinelTests(unittest.TestCase):
    """``metadata.redis.sentinels``: the cluster follows a Sentinel failover."""

    timeout = 90

    def redis(self, *args: str) -> RedisServer:
        server = RedisServer(self, args)
        return server

    @inlineCallbacks
    def call(self, port: int, *args: Any) -> Generator[Deferred[Any], Any, Any]:
        conn = yield txredisapi.Connection("127.0.0.1", port, reconnect=False, charset=None,
                                           convertNumbers=False)
        try:
            return (yield conn.execute_command(*args))
        finally:
            yield conn.disconnect()

    @inlineCallbacks
    def wait_for(self, port: int, args: tuple[Any, ...], check: Callable[[Any], bool],
                 what: str, timeout: float = 20.0) -> Generator[Deferred[Any], Any, None]:
        """Poll a command on ``port`` until ``check(reply)`` holds (bounded)."""
        for _ in range(int(timeout / 0.1)):
            try:
                if check((yield self.call(port, *args))):
                    return
            except Exception:
                pass
            yield deferLater(reactor, 0.1, lambda: None)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    @inlineCallbacks
    def test_cluster_continues_after_a_failover(self) -> Generator[Deferred[Any], Any, None]:
        """With the Redis master killed, Sentinel promotes the replica; both nodes
        reconnect to it, keep their views, re-announce, and new changes flow."""
        self.addCleanup(deferLater, reactor, 0.01, lambda: None)
        master = RedisServer(self)
        yield master.start()
        replica = RedisServer(self, ["--replicaof", "127.0.0.1", str(master.port)])
        yield replica.start()
        yield self.wait_for(replica.port, ("INFO", "replication"),
                            lambda r: b"master_link_status:up" in r, "the replica to sync")
        sentinel = RedisServer(self, sentinel=[
            f"sentinel monitor vmq 127.0.0.1 {master.port} 1",
            "sentinel down-after-milliseconds vmq 300",
            "sentinel failover-timeout vmq 3000",
        ])
        yield sentinel.start()
        yield self.wait_for(sentinel.port, ("SENTINEL", "REPLICAS", "vmq"), bool,
                            "Sentinel to discover the replica")
        options: dict[str, Any] = dict(sentinels=[("127.0.0.1", sentinel.port)],
                                       master_name="vmq", heartbeat_interval=0.1,
                                       node_timeout=5.0, op_timeout=1.0, block_ms=200,
                                       cluster_name="test")
        a = RedisMetadata("node-a", **options)
        b = RedisMetadata("node-b", **options)
        self.addCleanup(a.stop)
        self.addCleanup(b.stop)
        yield a.start()
        yield b.start()
        self.assertIn("Sentinels", a.server)
        yield a.add_route("before/failover")
        yield until(lambda: "node-a" in b.routes(), "b to see a's route")
        first = yield a.claim("", "c")
        master.kill()
        yield self.wait_for(sentinel.port, ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "vmq"),
                            lambda r: r and int(r[1]) == replica.port, "the failover",
                            timeout=30.0)
        yield until(lambda: a.reachable and b.reachable, "both nodes on the new master",
                    timeout=20.0)
        for _ in range(100):
            try:
                yield a.add_route("after/failover")
                break
            except MetadataUnavailable:
                yield deferLater(reactor, 0.1, lambda: None)
        yield until(lambda: b.routes().get("node-a") == {"before/failover", "after/failover"},
                    "b to see both of a's routes")
        self.assertEqual(set(b.members()), {"node-a", "node-b"})
        second = yield b.claim("", "c")
        self.assertGreater(second.epoch, first.epoch)
        routes = yield self.call(replica.port, "HKEYS", "{test}:routes:node-a")
        self.assertEqual(set(routes), {b"before/failover", b"after/failover"})
