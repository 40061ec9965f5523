"""A real cluster: several ``python -m vmqtw -c CONF`` processes on 127.0.0.1 and one
``redis-server`` started by the test; paho clients connect to different nodes.

Every wait is bounded. A route reaches the other nodes through Redis asynchronously,
so before a test counts messages it *probes* the route: it publishes a probe on the
publishing node until the subscriber on the other node receives one (probes are left
out of what the test counts).
"""
from __future__ import annotations

import os
import re
import socket
import sys
import threading
from typing import Any, Generator

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial import unittest

from tests.pausable_proxy import PausableProxy
from tests.support import (
    TIMEOUT, MQTTv5, MQTTv311, Paho, RunningProcess, in_thread, quiet_period,
)
from tests.test_cluster_redis import RedisServer

#: Generous: several interpreters start at once on a loaded machine.
START_TIMEOUT = 30.0
#: cluster.node_timeout of the test nodes, in seconds.
NODE_TIMEOUT = 1.5
PROBE = b"probe"


def redis_command(port: int, *args: str) -> bytes:
    """One Redis command over a plain socket; the raw reply (for simple checks)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        raw = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"".join(parts))
        return s.recv(65536)


def unsubscribe(c: Paho, topic: str, wait: float = TIMEOUT) -> list[int] | None:
    """(thread) UNSUBSCRIBE ``topic``; the UNSUBACK's reason codes, or None when no
    UNSUBACK came within ``wait`` seconds."""
    got: dict[int, list[int]] = {}
    arrived = threading.Event()

    def on_unsubscribe(client: Any, userdata: Any, mid: int, codes: Any,
                       properties: Any) -> None:
        got[mid] = [code.value for code in codes]
        arrived.set()

    c.client.on_unsubscribe = on_unsubscribe
    rc, mid = c.client.unsubscribe(topic)
    if not arrived.wait(wait):
        return None
    return got.get(mid)


class Node:
    """One broker process of the test cluster."""

    def __init__(self, name: str, proc: RunningProcess) -> None:
        self.name = name
        self.proc = proc
        self.port = 0

    @property
    def out(self) -> bytes:
        return bytes(self.proc.proto.out)


class ClusterProcessTests(unittest.TestCase):

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Generator[Deferred[Any], Any, None]:
        self.redis = RedisServer(self)
        yield self.redis.start()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.clients: list[Paho] = []

    def config(self, name: str, cookie: str, link: str = "", extra: str = "") -> str:
        path = os.path.join(self.dir, f"{name}.conf")
        link = link or "listener.vmq.clustering = 127.0.0.1:0\n"
        with open(path, "w") as f:
            f.write(f"allow_anonymous = on\n"
                    f"nodename = {name}@127.0.0.1\n"
                    f"distributed_cookie = {cookie}\n"
                    f"metadata_plugin = redis\n"
                    f"metadata.redis.url = redis://127.0.0.1:{self.redis.port}\n"
                    f"cluster.heartbeat_interval = 200\n"
                    f"cluster.node_timeout = {int(NODE_TIMEOUT * 1000)}\n"
                    f"listener.tcp.default = 127.0.0.1:0\n"
                    f"listener.tcp.allowed_protocol_versions = 3,4,5\n"
                    f"persistent_store.enabled = off\n" + link + extra)
        return path

    @inlineCallbacks
    def start_node(self, name: str, cookie: str = "s3cret", link: str = "", extra: str = ""
                   ) -> Generator[Deferred[Any], Any, Node]:
        """Start a node and wait until it serves MQTT and has joined the cluster;
        ``link``: the config lines of its vmq listener (plain, on port 0, by default);
        ``extra``: more config lines."""
        config = self.config(name, cookie, link, extra)
        proc = RunningProcess(sys.executable, ["-m", "vmqtw", "-c", config], cwd=self.dir)
        self.addCleanup(proc.stop)
        node = Node(name, proc)
        m = yield proc.wait_for_output(rb"listener tcp\.default on 127\.0\.0\.1:(\d+)",
                                       timeout=START_TIMEOUT)
        node.port = int(m.group(1))
        yield proc.wait_for_output(
            rb"cluster node " + re.escape(name.encode()) + rb"@127\.0\.0\.1 joined",
            timeout=START_TIMEOUT)
        return node

    def client(self, node: Node, client_id: str, protocol: int = MQTTv311) -> Paho:
        c = Paho(node.port, client_id, protocol)
        self.clients.append(c)
        self.addCleanup(lambda: in_thread(c.close))
        return c

    @staticmethod
    def probe(pub: Paho, sub: Paho, topic: str, attempts: int = 100) -> None:
        """(thread) Publish probes on ``topic`` until ``sub`` gets one: the route of
        ``sub``'s node has reached ``pub``'s node and the link is up."""
        for _ in range(attempts):
            pub.publish(topic, PROBE)
            try:
                while True:
                    if sub.get(timeout=0.1).payload == PROBE:
                        return
            except AssertionError:
                continue
        raise AssertionError(f"no probe on {topic!r} reached {sub.client_id}")

    @staticmethod
    def collect(sub: Paho, n: int) -> list[tuple[str, bytes]]:
        """(thread) The next ``n`` messages that are not probes."""
        got: list[tuple[str, bytes]] = []
        for _ in range(n + 200):
            if len(got) == n:
                break
            m = sub.get()
            if m.payload != PROBE:
                got.append((m.topic, m.payload))
        return got

    @staticmethod
    def nothing_more(sub: Paho, wait: float = 0.5) -> list[bytes]:
        """(thread) What else (probes aside) arrives within ``wait`` seconds."""
        extra = []
        try:
            while True:
                m = sub.get(timeout=wait)
                if m.payload != PROBE:
                    extra.append(m.payload)
        except AssertionError:
            return extra

    # -- tests ------------------------------------------------------------------

    @inlineCallbacks
    def test_publish_reaches_subscribers_on_other_nodes(self) -> Generator[Deferred[Any],
                                                                           Any, None]:
        """Three nodes: QoS 1 messages published on node 1 reach a '#' subscriber on
        node 2 and a '+' subscriber on node 3 once each, in order; a topic neither
        filter matches reaches nobody."""
        n1, n2, n3 = yield self._start_all("n1", "n2", "n3")
        pub = self.client(n1, "pub")
        sub2 = self.client(n2, "sub2")
        sub3 = self.client(n3, "sub3")

        def scenario() -> tuple[Any, ...]:
            for c in (pub, sub2, sub3):
                c.connect()
            sub2.subscribe("news/#", 1)
            sub3.subscribe("news/+", 1)
            self.probe(pub, sub2, "news/probe")
            self.probe(pub, sub3, "news/probe")
            pub.publish("other/x", b"nobody", 1)
            for i in range(50):
                pub.publish(f"news/{i % 3}", str(i).encode(), 1)
            got2, got3 = self.collect(sub2, 50), self.collect(sub3, 50)
            return got2, got3, self.nothing_more(sub2), self.nothing_more(sub3, 0.1)

        got2, got3, extra2, extra3 = yield in_thread(scenario)
        expected = [(f"news/{i % 3}", str(i).encode()) for i in range(50)]
        self.assertEqual(got2, expected)
        self.assertEqual(got3, expected)
        self.assertEqual((extra2, extra3), ([], []))

    @inlineCallbacks
    def test_retained_set_on_one_node_read_on_another(self) -> Generator[Deferred[Any],
                                                                         Any, None]:
        """A retained message published on node 1 is delivered to a later subscriber
        on node 2; an empty retained payload on node 2 deletes it for node 1."""
        n1, n2 = yield self._start_all("n1", "n2")
        pub = self.client(n1, "pub")
        reader = self.client(n2, "reader")
        checker = self.client(n2, "checker")

        def scenario() -> tuple[Any, ...]:
            pub.connect()
            checker.connect()
            checker.subscribe("status/#", 1)
            self.probe(pub, checker, "status/probe")  # n1's messages reach n2
            pub.publish("status/a", b"up", 1, retain=True)
            self.collect(checker, 1)
            # The retained copy travels through Redis: bounded polling for it.
            for _ in range(100):
                reader.connect()
                reader.subscribe("status/a", 1)
                try:
                    got = reader.get(timeout=0.2)
                    break
                except AssertionError:
                    reader.disconnect()
            else:
                raise AssertionError("retained message never reached node 2")
            reader.disconnect()
            return got.topic, got.payload, got.retain

        self.assertEqual((yield in_thread(scenario)), ("status/a", b"up", True))

    @inlineCallbacks
    def test_wrong_cookie_refused(self) -> Generator[Deferred[Any], Any, None]:
        """A node with a wrong distributed_cookie is refused by the others, which log
        it; it gets no messages from them."""
        n1 = yield self.start_node("n1")
        bad = yield self.start_node("bad", cookie="wrong")
        yield n1.proc.wait_for_output(
            rb"vmq link from 127\.0\.0\.1:\d+: node bad@127\.0\.0\.1 sent a wrong cookie; "
            rb"refused", timeout=TIMEOUT)
        yield bad.proc.wait_for_output(rb"vmq link to node n1@127\.0\.0\.1 .*cookie",
                                       timeout=TIMEOUT)
        self.assertNotIn(b"vmq link from node bad@127.0.0.1", n1.out)

    @inlineCallbacks
    def test_killed_node(self) -> Generator[Deferred[Any], Any, None]:
        """SIGKILL of one node: within the node timeout the others declare it down and
        its routes leave Redis, and the survivors keep routing between themselves."""
        n1, n2, n3 = yield self._start_all("n1", "n2", "n3")
        pub = self.client(n1, "pub")
        sub2 = self.client(n2, "sub2")
        sub3 = self.client(n3, "sub3")

        def before() -> None:
            for c in (pub, sub2, sub3):
                c.connect()
            sub2.subscribe("k/#", 0)
            sub3.subscribe("k/#", 1)
            self.probe(pub, sub2, "k/probe")
            self.probe(pub, sub3, "k/probe")

        yield in_thread(before)
        routes_n2 = "{vmqtw}:routes:n2@127.0.0.1"
        self.assertIn(b"k/#", redis_command(self.redis.port, "HKEYS", routes_n2))
        n2.proc.transport.signalProcess("KILL")
        yield n1.proc.wait_for_output(rb"cluster members: up \[\], down \['n2@127\.0\.0\.1'\]",
                                      timeout=NODE_TIMEOUT + TIMEOUT)
        yield n3.proc.wait_for_output(rb"down \['n2@127\.0\.0\.1'\]", timeout=TIMEOUT)
        self.assertEqual(redis_command(self.redis.port, "EXISTS", routes_n2), b":0\r\n")

        def after() -> list[tuple[str, bytes]]:
            for i in range(5):
                pub.publish("k/after", str(i).encode(), 1)
            return self.collect(sub3, 5)

        got = yield in_thread(after)
        self.assertEqual(got, [("k/after", str(i).encode()) for i in range(5)])

    @inlineCallbacks
    def test_redis_restart_reannounces_routes(self) -> Generator[Deferred[Any], Any, None]:
        """Redis restarted empty: the nodes announce themselves and their routes again,
        so a node that joins afterwards routes to an existing subscriber."""
        n1, n2 = yield self._start_all("n1", "n2")
        sub = self.client(n2, "sub")
        yield in_thread(lambda: (sub.connect(), sub.subscribe("r/#", 1)))
        port = self.redis.port
        self.redis.kill()
        yield quiet_period(0.3)  # a heartbeat or two fail
        yield self.redis.start(port)
        yield n2.proc.wait_for_output(rb"node n2@127\.0\.0\.1 unknown to Redis; re-announcing",
                                      timeout=TIMEOUT)
        n3 = yield self.start_node("n3")
        yield self.linked(n1, n2, n3)
        pub = self.client(n3, "pub")
        old = self.client(n1, "old")

        def scenario() -> list[tuple[str, bytes]]:
            pub.connect()
            old.connect()
            self.probe(pub, sub, "r/probe")
            self.probe(old, sub, "r/probe")
            pub.publish("r/1", b"from-n3", 1)
            old.publish("r/1", b"from-n1", 1)
            return sorted(self.collect(sub, 2))

        self.assertEqual((yield in_thread(scenario)),
                         [("r/1", b"from-n1"), ("r/1", b"from-n3")])

    @inlineCallbacks
    def test_same_client_id_on_another_node(self) -> Generator[Deferred[Any], Any, None]:
        """An MQTT 5.0 client connected to node 1 is disconnected with 0x8E (session
        taken over) when a client with the same id connects to node 2, and node 1
        drops its subscription: messages for it now reach only the new connection."""
        n1, n2 = yield self._start_all("n1", "n2")
        first = self.client(n1, "dev", MQTTv5)
        second = self.client(n2, "dev", MQTTv5)
        pub = self.client(n1, "pub")

        def scenario() -> tuple[Any, ...]:
            first.connect()
            first.subscribe("dev/in", 1)
            second.connect()
            second.subscribe("dev/in", 1)
            first.wait_disconnected()
            pub.connect()
            self.probe(pub, second, "dev/in")
            pub.publish("dev/in", b"after", 1)
            got = self.collect(second, 1)
            return first.disconnect_reason.value, got, self.nothing_more(second)

        reason, got, extra = yield in_thread(scenario)
        self.assertEqual(reason, 0x8E)
        self.assertEqual((got, extra), ([("dev/in", b"after")], []))
        self.assertIn(b"client 'dev' connected to node n2@127.0.0.1; session here closed",
                      n1.out)

    @inlineCallbacks
    def test_tls_link(self) -> Generator[Deferred[Any], Any, None]:
        """With listener.vmqs (certificate, CA) on both nodes the links run over TLS,
        the server certificate checked against the CA, and messages cross them."""
        from tests.certs import certs
        c = certs()
        link = (f"listener.vmqs.clustering = 127.0.0.1:0\n"
                f"listener.vmqs.certfile = {c.server}\n"
                f"listener.vmqs.keyfile = {c.server_key}\n"
                f"listener.vmqs.cafile = {c.ca}\n")
        n1 = yield self.start_node("n1", link=link)
        n2 = yield self.start_node("n2", link=link)
        yield self.linked(n1, n2)
        self.assertIn(b"vmq link on tls:127.0.0.1:", n1.out)
        pub = self.client(n2, "pub")
        sub = self.client(n1, "sub")

        def scenario() -> list[tuple[str, bytes]]:
            pub.connect()
            sub.connect()
            sub.subscribe("t/#", 1)
            self.probe(pub, sub, "t/probe")
            pub.publish("t/1", b"over-tls", 1)
            return self.collect(sub, 1)

        self.assertEqual((yield in_thread(scenario)), [("t/1", b"over-tls")])

    @inlineCallbacks
    def test_netsplit_flags(self) -> Generator[Deferred[Any], Any, None]:
        """While a member cannot be reached (here: it has a wrong cookie), a node with
        the netsplit flags off refuses CONNECT with "server unavailable"; a node with
        them on serves; once the member has expired, the first node serves again."""
        n1 = yield self.start_node("n1")
        n2 = yield self.start_node("n2", extra="allow_register_during_netsplit = on\n"
                                   "allow_subscribe_during_netsplit = on\n"
                                   "allow_publish_during_netsplit = on\n")
        yield self.linked(n1, n2)
        bad = yield self.start_node("bad", cookie="wrong")
        yield n1.proc.wait_for_output(rb"vmq link to node bad@127\.0\.0\.1 .*cookie",
                                      timeout=TIMEOUT)
        refused = self.client(n1, "refused")
        served = self.client(n2, "served")

        def during() -> tuple[Any, ...]:
            code = refused.connect(expect_success=False)[0]
            refused.wait_disconnected()
            served.connect()
            return code, served.subscribe("x", 1)

        # paho reports the 3.1.1 CONNACK code 3 as its 5.0 equivalent 0x88.
        self.assertEqual((yield in_thread(during)), (0x88, [1]))
        yield bad.proc.stop()
        yield n1.proc.wait_for_output(rb"down \['bad@127\.0\.0\.1'\]",
                                      timeout=NODE_TIMEOUT + TIMEOUT)
        again = self.client(n1, "again")
        self.assertEqual((yield in_thread(again.connect)), (0, False))

    @inlineCallbacks
    def test_netsplit_unsubscribe_and_heal(self) -> Generator[Deferred[Any], Any, None]:
        """Node 2's link to node 1 runs through a proxy; cutting it makes node 2 not
        ready: an UNSUBSCRIBE there fails (5.0: UNSUBACK 0x80; 3.1.1: no UNSUBACK) and
        the subscription stays (node 1's publishes still reach it over node 1's own
        link). Healed, node 2 reconnects, logs the end of the split and unsubscribes."""
        n1, n2 = yield self._start_all("n1", "n2")
        proxy = yield self.proxied_link(n1, n2)
        sub = self.client(n2, "sub", MQTTv5)
        sub3 = self.client(n2, "sub3")
        pub = self.client(n1, "pub")

        def before() -> None:
            for c in (sub, sub3, pub):
                c.connect()
            sub.subscribe("u/1", 1)
            sub3.subscribe("u/1", 1)
            self.probe(pub, sub, "u/1")
            self.probe(pub, sub3, "u/1")

        yield in_thread(before)
        proxy.pause()
        yield n2.proc.wait_for_output(rb"vmq link to node n1@127\.0\.0\.1 lost",
                                      timeout=TIMEOUT)

        def during() -> tuple[Any, ...]:
            codes5 = unsubscribe(sub, "u/1")
            codes3 = unsubscribe(sub3, "u/1", wait=1.0)
            pub.publish("u/1", b"still", 1)
            return codes5, codes3, self.collect(sub, 1), self.collect(sub3, 1)

        self.assertEqual((yield in_thread(during)),
                         ([0x80], None, [("u/1", b"still")], [("u/1", b"still")]))
        proxy.resume()
        yield n2.proc.wait_for_output(rb"netsplit resolved", timeout=TIMEOUT + 10)

        def after() -> tuple[Any, ...]:
            codes = unsubscribe(sub, "u/1")
            pub.publish("u/1", b"gone", 1)
            return codes, self.nothing_more(sub)

        self.assertEqual((yield in_thread(after)), ([0], []))

    @inlineCallbacks
    def test_duplicate_client_id_resolved_after_heal(self) -> Generator[Deferred[Any], Any,
                                                                            None]:
        """Node 1 reaches Redis through a proxy. Cut off, it keeps its client "dev"
        (allow_register_during_netsplit = on) while node 2, which saw node 1 expire,
        accepts another "dev" that could not take over node 1's. Healed, node 1 finds
        the id owned by node 2 with a newer epoch and disconnects its client with 0x8E
        at once (no new CONNECT needed); node 2's client stays. Node 1's routes, dropped
        by node 2 when node 1 expired, are announced again: node 2's publishes reach
        node 1's subscriber."""
        rproxy = PausableProxy(self.redis.port)
        rport = rproxy.start()
        self.addCleanup(rproxy.stop)
        flags = "allow_register_during_netsplit = on\n"
        n1 = yield self.start_node(
            "n1", extra=flags + f"metadata.redis.url = redis://127.0.0.1:{rport}\n")
        n2 = yield self.start_node("n2", extra=flags)
        yield self.linked(n1, n2)
        old = self.client(n1, "dev", MQTTv5)
        new = self.client(n2, "dev", MQTTv5)
        sub = self.client(n1, "sub")
        pub = self.client(n2, "pub")

        def before() -> None:
            for c in (old, sub, pub):
                c.connect()
            sub.subscribe("h/#", 1)
            self.probe(pub, sub, "h/probe")

        yield in_thread(before)
        rproxy.pause()
        yield n2.proc.wait_for_output(rb"down \['n1@127\.0\.0\.1'\]",
                                      timeout=NODE_TIMEOUT + TIMEOUT)
        yield in_thread(new.connect)
        self.assertFalse(old.disconnected.is_set())
        rproxy.resume()

        def healed() -> tuple[Any, ...]:
            old.wait_disconnected()
            return old.disconnect_reason.value, new.disconnected.wait(0.5)

        self.assertEqual((yield in_thread(healed)), (0x8E, False))
        self.assertIn(b"client 'dev' is owned by node n2@127.0.0.1 since the split", n1.out)
        self.assertIn(b"node n1@127.0.0.1 unknown to Redis; re-announcing 1 routes", n1.out)

        def routes_back() -> list[tuple[str, bytes]]:
            self.probe(pub, sub, "h/probe")
            pub.publish("h/1", b"healed", 1)
            return self.collect(sub, 1)

        self.assertEqual((yield in_thread(routes_back)), [("h/1", b"healed")])

    @inlineCallbacks
    def test_fresh_node_serves_at_once(self) -> Generator[Deferred[Any], Any, None]:
        """A node starting in a healthy cluster (flags off) accepts a CONNECT as soon as
        its MQTT listener is up, joined or not yet; a member that sees it appear keeps
        accepting CONNECTs while its link to the newcomer comes up (connect grace)."""
        n1, n2 = yield self._start_all("n1", "n2")
        proc = RunningProcess(sys.executable, ["-m", "vmqtw", "-c",
                                               self.config("n3", "s3cret")], cwd=self.dir)
        self.addCleanup(proc.stop)
        n3 = Node("n3", proc)
        m = yield proc.wait_for_output(rb"listener tcp\.default on 127\.0\.0\.1:(\d+)",
                                       timeout=START_TIMEOUT)
        n3.port = int(m.group(1))
        early = self.client(n3, "early")
        self.assertEqual((yield in_thread(early.connect)), (0, False))
        yield n1.proc.wait_for_output(rb"up \['n3@127\.0\.0\.1'\]", timeout=TIMEOUT)
        beside = self.client(n1, "beside")
        self.assertEqual((yield in_thread(beside.connect)), (0, False))

    @inlineCallbacks
    def proxied_link(self, target: Node, via: Node) -> Generator[Deferred[Any], Any,
                                                                  PausableProxy]:
        """Make ``via``'s link to ``target`` run through a :class:`PausableProxy`: the
        address ``target`` announced in Redis is changed to the proxy's, which ``via``
        follows at its next heartbeat (``target``'s own link to ``via`` stays direct)."""
        m = re.search(rb"vmq link on 127\.0\.0\.1:(\d+)", target.out)
        assert m is not None
        proxy = PausableProxy(int(m.group(1)))
        port = proxy.start()
        self.addCleanup(proxy.stop)
        redis_command(self.redis.port, "HSET", f"{{vmqtw}}:node:{target.name}@127.0.0.1",
                      "addr", f"127.0.0.1:{port}")
        name = re.escape(target.name.encode())
        established = rb"vmq link to node " + name + rb"@127\.0\.0\.1 established"
        yield via.proc.wait_for_output(established + rb"(?s:.*)" + established,
                                       timeout=TIMEOUT)
        self.assertEqual(proxy.accepted, 1)
        return proxy

    @inlineCallbacks
    def _start_all(self, *names: str) -> Generator[Deferred[Any], Any, list[Node]]:
        nodes = []
        for name in names:
            nodes.append((yield self.start_node(name)))
        yield self.linked(*nodes)
        return nodes

    @inlineCallbacks
    def linked(self, *nodes: Node) -> Generator[Deferred[Any], Any, None]:
        """Wait until each node has a link to each other one: the nodes are ready (a
        node refuses CONNECT while it cannot reach a member: netsplit flags off)."""
        for node in nodes:
            for other in nodes:
                if other is not node:
                    yield node.proc.wait_for_output(
                        rb"vmq link to node " + re.escape(other.name.encode())
                        + rb"@127\.0\.0\.1 established", timeout=TIMEOUT)
