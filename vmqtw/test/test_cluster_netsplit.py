"""The netsplit flags: what a client sees from a node that does not see the whole
cluster (in memory: the Harness broker with its authorizer behind a ``NetsplitGate``),
and when a ``ClusterNode`` counts as ready."""
from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.cluster.memory_metadata import MemoryEngine, MemoryMetadata
from vmqtw.cluster.netsplit import NetsplitGate
from vmqtw.cluster.node import ClusterNode
from vmqtw.codec import Connack, Puback, Suback, Unsuback, Unsubscribe
from vmqtw.config import ClusterConfig, parse
from vmqtw.core.broker import Broker
from vmqtw.test.harness import BASE, BrokerTestCase, Client, Harness, connected5

BASE5 = BASE + "listener.tcp.t.allowed_protocol_versions = 3,4,5\n"


class GateTests(BrokerTestCase):

    def setUp(self) -> None:
        self.make()

    def make(self, **flags: bool) -> None:
        self.hn = Harness(BASE5)
        self.ready = False
        self.gate = NetsplitGate(self.hn.authorizer, lambda: self.ready,
                                 ClusterConfig(**flags))
        for factory in self.hn.factories.values():
            factory.authorizer = self.gate

    def connect(self, level: int) -> tuple[Client, list[Any]]:
        c = self.hn.client(level=level)
        c.connect("c")
        return c, c.packets()

    def test_connect_refused_server_unavailable(self) -> None:
        """While not ready, CONNECT gets "server unavailable": 3 for 3.1.1, 0x88 for 5.0,
        and the connection closes."""
        for level, code in ((4, 3), (5, 0x88)):
            c, packets = self.connect(level)
            self.assertEqual([(type(p), p.reason_code) for p in packets], [(Connack, code)])
            self.assertTrue(c.closed)
        self.ready = True
        _, packets = self.connect(4)
        self.assertEqual([p.reason_code for p in packets], [0])

    def test_flag_on_allows_connect(self) -> None:
        """With allow_register_during_netsplit the CONNECT is accepted while not ready."""
        self.make(allow_register_during_netsplit=True)
        _, packets = self.connect(4)
        self.assertEqual([p.reason_code for p in packets], [0])

    def connected(self, level: int) -> Client:
        self.ready = True
        c = self.hn.connected("c") if level == 4 else connected5(self.hn, "c")
        self.ready = False
        return c

    def test_publish_dropped(self) -> None:
        """While not ready a PUBLISH is dropped: a 3.1.1 QoS 1 publish gets no PUBACK
        (the connection stays), a 5.0 one PUBACK 0x80; a local subscriber gets nothing."""
        self.ready = True
        sub = self.hn.subscriber("s", ("t", 1))
        for level, expected in ((4, []), (5, [(Puback, 0x80)])):
            c = self.connected(level)
            c.publish("t", b"x", 1)
            self.assertEqual([(type(p), p.reason_code) for p in c.packets()], expected)
            self.assertFalse(c.closed)
        self.assertEqual(sub.take(), b"")
        self.assertEqual(self.gate.refused, 2)

    def test_subscribe_refused(self) -> None:
        """While not ready a SUBSCRIBE gets the failure code 0x80 (3.1.1 and 5.0)."""
        for level in (4, 5):
            c = self.connected(level)
            c.subscribe(1, ("t", 1))
            packets = c.packets()
            self.assertEqual([(type(p), p.reason_codes) for p in packets], [(Suback, [0x80])])

    def counter(self, name: str) -> float:
        return self.hn.broker.metrics.aggregated()[name][1]

    def test_refusals_counted_as_netsplit_errors(self) -> None:
        """Refused PUBLISH and SUBSCRIBE count in VerneMQ's mqtt_publish_error and
        mqtt_subscribe_error, not in the *_auth_error counters."""
        for level in (4, 5):
            c = self.connected(level)
            c.publish("t", b"x", 1)
            c.subscribe(1, ("t", 1))
        self.assertEqual(self.counter("mqtt_publish_error"), 2)
        self.assertEqual(self.counter("mqtt_subscribe_error"), 2)
        self.assertEqual(self.counter("mqtt_publish_auth_error"), 0)
        self.assertEqual(self.counter("mqtt_subscribe_auth_error"), 0)

    def unsubscribe_while_split(self, level: int) -> tuple[Client, list[Any]]:
        """A client subscribed to "t" while ready sends UNSUBSCRIBE [t, u] while not."""
        self.ready = True
        c = self.hn.connected("c") if level == 4 else connected5(self.hn, "c")
        c.subscribe(1, ("t", 1))
        c.packets()
        self.ready = False
        c.send(Unsubscribe(2, ["t", "u"]))
        return c, c.packets()

    def test_unsubscribe_refused(self) -> None:
        """While not ready, with allow_unsubscribe_during_netsplit off, an UNSUBSCRIBE
        fails: 5.0 gets UNSUBACK 0x80 per filter, 3.1.1 no UNSUBACK (as VerneMQ); the
        subscription stays (a later publish reaches it) and mqtt_unsubscribe_error counts
        each refusal."""
        for level, expected in ((4, []), (5, [(Unsuback, [0x80, 0x80])])):
            c, packets = self.unsubscribe_while_split(level)
            self.assertEqual([(type(p), p.reason_codes) for p in packets], expected)
            self.assertFalse(c.closed)
            self.assertIn("t", c.session.subscriptions)
            self.ready = True
            pub = self.hn.connected("p")
            pub.publish("t", b"still")
            self.assertIn(b"still", c.take())
        self.assertEqual(self.counter("mqtt_unsubscribe_error"), 2)
        self.assertEqual(self.gate.refused, 2)

    def test_unsubscribe_flag_on(self) -> None:
        """With allow_unsubscribe_during_netsplit on, an UNSUBSCRIBE works while not
        ready: UNSUBACK success, the subscription is gone."""
        self.make(allow_register_during_netsplit=True,
                  allow_unsubscribe_during_netsplit=True)
        c, packets = self.unsubscribe_while_split(5)
        self.assertEqual([(type(p), p.reason_codes) for p in packets],
                         [(Unsuback, [0, 0x11])])
        self.assertNotIn("t", c.session.subscriptions)
        self.assertEqual(self.counter("mqtt_unsubscribe_error"), 0)

    def test_flags_on_allow_everything(self) -> None:
        """With the publish and subscribe flags on, a node that is not ready serves
        them locally."""
        self.make(allow_register_during_netsplit=True, allow_publish_during_netsplit=True,
                  allow_subscribe_during_netsplit=True)
        sub = self.hn.subscriber("s", ("t", 0))
        pub = self.hn.connected("p")
        pub.publish("t", b"x")
        self.assertIn(b"x", sub.take())
        self.assertEqual(self.gate.refused, 0)


class FakeLink:
    connected = True


class ReadinessTests(SynchronousTestCase):

    def test_ready_needs_engine_and_every_link(self) -> None:
        """A node is ready once joined, while the engine answers, with a connected link
        to every other live member."""
        clock = Clock()
        engine = MemoryEngine(clock)
        config = parse(BASE + "metadata_plugin = redis\nnodename = a\n"
                       "listener.vmq.c = 127.0.0.1:0\n")
        broker = Broker(config, clock)
        metas = [MemoryMetadata(engine, n) for n in ("a", "b")]
        node = ClusterNode(config, broker, clock, metadata=metas[0])
        self.assertFalse(node.is_ready())  # not joined
        for m in metas:
            m.start()
        clock.advance(1.0)  # a heartbeat: a sees b
        self.assertEqual(set(metas[0].members()), {"a", "b"})
        node.joined = True
        self.assertFalse(node.is_ready())  # no link to b
        link = FakeLink()
        node.links["b"] = link  # type: ignore[assignment]
        self.assertTrue(node.is_ready())
        link.connected = False
        self.assertFalse(node.is_ready())
        link.connected = True
        engine.available = False
        clock.advance(1.0)  # a heartbeat fails
        self.assertFalse(node.is_ready())
        for m in metas:
            m.stop()
