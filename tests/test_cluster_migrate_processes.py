"""Persistent sessions moving between real cluster nodes (``python -m vmqtw``
processes and a ``redis-server`` started by the test): on a takeover by a CONNECT on
another node, and when a node leaves the cluster.

The subscriber whose messages must stay unacknowledged is a raw socket client (paho
acknowledges everything itself); the client that picks the session up on the other
node is paho. Every wait is bounded.
"""
from __future__ import annotations

import os
import signal
import struct
import sys
from typing import Any, Generator

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet import reactor
from twisted.trial import unittest

from tests import test_cluster_processes as processes
from tests.support import (
    TIMEOUT, MQTTv311, Paho, RawClient, RunningProcess, in_thread, quiet_period,
    read_packet, with_timeout,
)
from vmqtw.codec import SubOptions, encode
from vmqtw.codec.packets import Connect, Puback, Pubcomp, Pubrec, Subscribe

Node = processes.Node
_base = processes.ClusterProcessTests

#: Runs a node like ``python -m vmqtw -c CONF``, and calls ``ClusterNode.leave()`` on
#: SIGUSR1 (a test-only way in, until ``vmq-admin cluster leave`` calls it).
LEAVE_ON_SIGNAL = """
import signal, sys
from twisted.internet import reactor
import vmqtw.service, vmqtw.tap

made = []
_make = vmqtw.service.make_service

def make_service(*args, **kwargs):
    made.append(_make(*args, **kwargs))
    return made[0]

def leave():
    d = made[0].cluster.leave()
    d.addCallback(lambda report: print("leave report:", report, flush=True))

vmqtw.service.make_service = make_service
signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(leave))
vmqtw.tap.main(sys.argv[1:])
"""


class RawSubscriber:
    """An MQTT 3.1.1 client on a raw socket that acknowledges only what it is told to."""

    def __init__(self, port: int, client_id: str) -> None:
        self.port = port
        self.client_id = client_id
        self.proto = RawClient()

    @inlineCallbacks
    def connect_only(self) -> Generator[Deferred[Any], Any, bool]:
        """CONNECT with clean session 0; returns the session present flag."""
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        yield with_timeout(connectProtocol(endpoint, self.proto), what="TCP connect")
        self.proto.send(encode(Connect(self.client_id, 4, False, 60), 4))
        first, body = yield read_packet(self.proto, "CONNACK")
        assert (first, body[1]) == (0x20, 0), (first, body)
        return bool(body[0] & 1)

    @inlineCallbacks
    def connect(self, topic_filter: str, qos: int) -> Generator[Deferred[Any], Any, None]:
        yield self.connect_only()
        self.proto.send(encode(Subscribe(1, [(topic_filter, SubOptions(qos))]), 4))
        first, _ = yield read_packet(self.proto, "SUBACK")
        assert first == 0x90, first

    @inlineCallbacks
    def publish(self) -> Generator[Deferred[Any], Any, tuple[bytes, int, int]]:
        """The next PUBLISH: (payload, QoS, packet id)."""
        kind, payload, qos, pid = yield self.packet()
        assert kind == "PUBLISH", kind
        return payload, qos, pid

    @inlineCallbacks
    def packet(self) -> Generator[Deferred[Any], Any, tuple[str, bytes, int, int]]:
        """The next packet, PUBLISH or PUBREL: (kind (with DUP), payload, QoS,
        packet id)."""
        first, body = yield read_packet(self.proto, "PUBLISH or PUBREL")
        if first == 0x62:
            return "PUBREL", b"", 1, struct.unpack_from(">H", body)[0]
        assert first >> 4 == 3, first
        qos = first >> 1 & 3
        (n,) = struct.unpack_from(">H", body)
        if not qos:
            return "PUBLISH", body[2 + n:], 0, 0
        (pid,) = struct.unpack_from(">H", body, 2 + n)
        return "PUBLISH" + (" DUP" if first & 8 else ""), body[4 + n:], qos, pid


class ClusterNodesCase(unittest.TestCase):
    """Real nodes and a real Redis (the helpers of ``ClusterProcessTests``), plus
    persistent paho clients; no tests of its own."""

    timeout = 120

    setUp = _base.setUp
    config = _base.config
    start_node = _base.start_node
    client = _base.client
    probe = staticmethod(_base.probe)
    collect = staticmethod(_base.collect)
    nothing_more = staticmethod(_base.nothing_more)
    _start_all = _base._start_all
    linked = _base.linked

    def persistent(self, node: Node, client_id: str) -> Paho:
        c = Paho(node.port, client_id, MQTTv311, clean_session=False)
        self.clients.append(c)
        self.addCleanup(lambda: in_thread(c.close))
        return c


class MigrateProcessTests(ClusterNodesCase):
    """Two nodes; a persistent session moves from node 1 to node 2."""

    @inlineCallbacks
    def test_session_moves_with_unacked_and_queued_messages(self) -> Generator[
            Deferred[Any], Any, None]:
        """A persistent subscriber on node 1 leaves QoS 1 and QoS 2 messages
        unacknowledged (one QoS 2 past PUBREC), goes away, more are queued; it
        reconnects on node 2 with clean session 0: session present, every message
        once and in order (the one past PUBREC only as PUBREL), its subscription
        works on node 2, and node 1 no longer has the session."""
        n1, n2 = yield self._start_all("n1", "n2")
        raw = RawSubscriber(n1.port, "dev")
        yield raw.connect("q/#", 2)
        pub = self.client(n1, "pub")
        yield in_thread(pub.connect)
        yield in_thread(pub.publish, "q/1", b"a1", 1)
        yield in_thread(pub.publish, "q/2", b"a2", 2)
        yield in_thread(pub.publish, "q/3", b"a3", 2)
        got_n1 = []
        for _ in range(3):
            got_n1.append((yield raw.publish()))
        self.assertEqual([(p, q) for p, q, _ in got_n1],
                         [(b"a1", 1), (b"a2", 2), (b"a3", 2)])
        raw.proto.send(encode(Pubrec(got_n1[2][2]), 4))  # only a3 gets as far as PUBREC
        first, _ = yield read_packet(raw.proto, "PUBREL")
        self.assertEqual(first, 0x62)
        yield raw.proto.close()
        yield n1.proc.wait_for_output(rb"client 'dev' .* disconnected")
        yield in_thread(pub.publish, "q/4", b"b4", 1)
        yield in_thread(pub.publish, "q/5", b"b5", 2)
        dev = RawSubscriber(n2.port, "dev")
        present = yield dev.connect_only()
        self.assertTrue(present)
        got = []
        for _ in range(5):
            got.append((yield dev.packet()))
        self.assertEqual([(kind, p, q) for kind, p, q, _ in got],
                         [("PUBLISH DUP", b"a1", 1), ("PUBLISH DUP", b"a2", 2),
                          ("PUBREL", b"", 1), ("PUBLISH", b"b4", 1),
                          ("PUBLISH", b"b5", 2)])
        # What was inflight on node 1: in the same order, under the same packet ids.
        self.assertEqual([pid for *_, pid in got[:3]], [pid for *_, pid in got_n1])
        dev.proto.send(encode(Puback(got[0][3]), 4) + encode(Pubcomp(got[2][3]), 4)
                       + encode(Puback(got[3][3]), 4))
        # Node 1 routes to node 2 once node 2's route reached it through Redis.
        for _ in range(100):
            yield in_thread(pub.publish, "q/probe", b"probe", 0)
            yield quiet_period(0.1)
            if dev.proto.buffer:
                break
        while dev.proto.buffer:
            self.assertEqual((yield dev.publish())[0], b"probe")
        yield in_thread(pub.publish, "q/6", b"c6", 1)
        self.assertEqual((yield dev.publish())[:2], (b"c6", 1))
        yield quiet_period(0.5)
        self.assertEqual(dev.proto.buffer, b"")  # nothing more
        self.addCleanup(dev.proto.close)
        yield n1.proc.wait_for_output(rb"session of client 'dev' moved to node n2@127\.0\.0\.1 "
                                      rb"\(5 messages\)")

    @inlineCallbacks
    def test_online_takeover_carries_inflight(self) -> Generator[Deferred[Any], Any, None]:
        """A client connected to node 1 with unacknowledged QoS 1 messages is taken
        over by a CONNECT on node 2 (clean session 0): node 1 closes it, and the new
        connection gets the messages, session present."""
        n1, n2 = yield self._start_all("n1", "n2")
        raw = RawSubscriber(n1.port, "dev")
        yield raw.connect("q/#", 1)
        pub = self.client(n1, "pub")
        yield in_thread(pub.connect)
        for i in range(3):
            yield in_thread(pub.publish, "q/x", b"m%d" % i, 1)
        got = []
        for _ in range(3):
            got.append((yield raw.publish()))
        self.assertEqual([p for p, _, _ in got], [b"m0", b"m1", b"m2"])
        dev = self.persistent(n2, "dev")

        def scenario() -> tuple[Any, ...]:
            connack = dev.connect()
            return connack, self.collect(dev, 3), self.nothing_more(dev)

        connack, got, extra = yield in_thread(scenario)
        yield raw.proto.when_closed()
        self.assertEqual(connack, (0, True))
        self.assertEqual([p for _, p in got], [b"m0", b"m1", b"m2"])
        self.assertEqual(extra, [])

    @inlineCallbacks
    def test_leave_moves_offline_sessions(self) -> Generator[Deferred[Any], Any, None]:
        """Node 1 leaves the cluster with an offline persistent session holding
        queued QoS 1 messages: its client, reconnecting on node 2, gets them."""
        script = os.path.join(self.dir, "leave_on_signal.py")
        with open(script, "w") as f:
            f.write(LEAVE_ON_SIGNAL)
        proc = RunningProcess(sys.executable, [script, "-c", self.config("n1", "s3cret")],
                              cwd=self.dir)
        self.addCleanup(proc.stop)
        n1 = Node("n1", proc)
        m = yield proc.wait_for_output(rb"listener tcp\.default on 127\.0\.0\.1:(\d+)",
                                       timeout=processes.START_TIMEOUT)
        n1.port = int(m.group(1))
        yield proc.wait_for_output(rb"cluster node n1@127\.0\.0\.1 joined",
                                   timeout=processes.START_TIMEOUT)
        n2 = yield self.start_node("n2")
        yield self.linked(n1, n2)
        dev = self.persistent(n1, "dev")
        pub = self.client(n1, "pub")

        def before() -> None:
            dev.connect()
            dev.subscribe("q/#", 1)
            dev.disconnect()
            pub.connect()
            for i in range(5):
                pub.publish("q/x", b"m%d" % i, 1)

        yield in_thread(before)
        proc.transport.signalProcess(signal.SIGUSR1)
        m = yield proc.wait_for_output(rb"leave report: ([^\n]*)\n", timeout=TIMEOUT)
        self.assertIn(b"sessions_moved=1, messages_moved=5, errors=[], left=True", m.group(1))
        yield n2.proc.wait_for_output(rb"node n1@127\.0\.0\.1 is down")
        dev2 = self.persistent(n2, "dev")

        def after() -> tuple[Any, ...]:
            connack = dev2.connect()
            return connack, self.collect(dev2, 5), self.nothing_more(dev2)

        connack, got, extra = yield in_thread(after)
        self.assertEqual(connack, (0, True))
        self.assertEqual([p for _, p in got], [b"m%d" % i for i in range(5)])
        self.assertEqual(extra, [])


del _base  # not a test case of this module
