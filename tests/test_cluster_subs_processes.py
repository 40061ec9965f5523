"""Persistent sessions' subscriptions kept in Redis across real cluster nodes (``python
-m vmqtw`` processes and a ``redis-server`` started by the test): a client whose node
was killed resumes its subscriptions on another node. Every wait is bounded."""
from __future__ import annotations

from typing import Any, Generator

from twisted.internet.defer import Deferred, inlineCallbacks

from tests import test_cluster_processes as processes
from tests.support import TIMEOUT, in_thread, quiet_period
from tests.test_cluster_migrate_processes import ClusterNodesCase

Node = processes.Node

#: Where the nodes keep the subscriptions of client ``dev`` (mountpoint "").
DEV_KEY = "{vmqtw}:sess:0::dev"


class SessionSubsProcessTests(ClusterNodesCase):
    """Three nodes; node 1 is killed under a persistent subscriber."""

    @inlineCallbacks
    def stored(self, want: bytes | None) -> Generator[Deferred[Any], Any, bytes]:
        """Wait (bounded) until Redis holds the filter ``want`` for ``dev``, or (None)
        nothing at all; returns the last ``HKEYS`` reply."""
        reply = b""
        for _ in range(int(TIMEOUT / 0.1)):
            reply = processes.redis_command(self.redis.port, "HKEYS", DEV_KEY)
            if (want in reply) if want is not None else reply == b"*0\r\n":
                break
            yield quiet_period(0.1)
        return reply

    @inlineCallbacks
    def test_killed_owner_subscriptions_resume_elsewhere(self) -> Generator[
            Deferred[Any], Any, None]:
        """A persistent subscriber on node 1; node 1 is SIGKILLed; the client
        reconnects on node 2 with clean session 0: session present, and a message
        published on node 3 reaches it without a new SUBSCRIBE. A clean-session
        reconnect then removes the stored subscriptions."""
        n1, n2, n3 = yield self._start_all("n1", "n2", "n3")
        dev = self.persistent(n1, "dev")

        def before() -> None:
            dev.connect()
            dev.subscribe("d/#", 1)

        yield in_thread(before)
        self.assertIn(b"d/#", (yield self.stored(b"d/#")))
        n1.proc.transport.signalProcess("KILL")
        yield in_thread(dev.close)
        yield n2.proc.wait_for_output(rb"down \['n1@127\.0\.0\.1'\]",
                                      timeout=processes.NODE_TIMEOUT + TIMEOUT)
        yield n3.proc.wait_for_output(rb"down \['n1@127\.0\.0\.1'\]", timeout=TIMEOUT)
        dev2 = self.persistent(n2, "dev")
        pub = self.client(n3, "pub")

        def after() -> tuple[Any, ...]:
            connack = dev2.connect()
            pub.connect()
            self.probe(pub, dev2, "d/probe")
            pub.publish("d/x", b"after", 1)
            return connack, self.collect(dev2, 1), self.nothing_more(dev2)

        connack, got, extra = yield in_thread(after)
        self.assertEqual(connack, (0, True))
        self.assertEqual(got, [("d/x", b"after")])
        self.assertEqual(extra, [])
        yield n2.proc.wait_for_output(rb"client 'dev' was on node n1@127\.0\.0\.1, which is "
                                      rb"gone: its subscriptions are restored here")
        yield in_thread(dev2.close)
        clean = self.client(n3, "dev")
        yield in_thread(clean.connect)
        self.assertEqual((yield self.stored(None)), b"*0\r\n")


    @inlineCallbacks
    def test_redis_restart_rewrites_subscriptions(self) -> Generator[
            Deferred[Any], Any, None]:
        """Redis restarted empty: the node holding a persistent session writes its
        subscriptions again when it re-announces itself (the way routes come back)."""
        n1, n2 = yield self._start_all("n1", "n2")
        dev = self.persistent(n1, "dev")
        yield in_thread(lambda: (dev.connect(), dev.subscribe("d/#", 1)))
        self.assertIn(b"d/#", (yield self.stored(b"d/#")))
        port = self.redis.port
        self.redis.kill()
        yield quiet_period(0.3)  # a heartbeat or two fail
        yield self.redis.start(port)
        yield n1.proc.wait_for_output(rb"node n1@127\.0\.0\.1 unknown to Redis; re-announcing",
                                      timeout=TIMEOUT)
        self.assertIn(b"d/#", (yield self.stored(b"d/#")))


