"""Cross-node routing in one process: brokers on a ``Clock``, ``MemoryMetadata`` and links
that carry encoded records between the routers (no sockets), plus the cluster keys."""
from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.cluster.codec import (
    Msg, Record, Takeover, TakeoverDone, decode_batch, encode_record,
)
from vmqtw.cluster.memory_metadata import MemoryEngine, MemoryMetadata
from vmqtw.cluster.registry import STALE, ClientRegistry
from vmqtw.cluster.router import ClusterRouter, from_record, route_key, split_route, to_record
from vmqtw.cluster.wiring import ClusterConfigError, cluster_node
from vmqtw.codec import SubOptions
from vmqtw.config import ConfigError, parse
from vmqtw.core.broker import Broker
from vmqtw.core.message import Message
from vmqtw.core.session import Session
from vmqtw.test.harness import BASE, FakeConnection


class FakeLink:
    """An outgoing link that keeps the encoded records until ``pump``."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, record: Record) -> bool:
        self.sent.append(encode_record(record))
        return True


class Node:
    """One broker with its metadata view and router."""

    def __init__(self, engine: MemoryEngine, name: str, clock: Clock) -> None:
        self.name = name
        self.broker = Broker(parse(BASE), clock)
        self.meta = MemoryMetadata(engine, name, address=f"127.0.0.1:{len(name)}",
                                   heartbeat_interval=1.0, node_timeout=3.0)
        self.links: dict[str, FakeLink] = {}
        self.router = ClusterRouter(self.broker, self.meta, self.links)
        self.router.attach()
        self.registry = ClientRegistry(self.broker, self.meta, self.links)
        self.router.control = self.registry.control
        self.registry.attach()

    def online(self, client_id: str, mountpoint: str = "") -> tuple[Session, FakeConnection]:
        conn = FakeConnection(4)
        session, _ = self.broker.open_session((mountpoint, client_id), True, 0, conn)
        self.broker.session_resumed(session)
        return session, conn


class ClusterCase(SynchronousTestCase):
    """Three nodes ``a``, ``b``, ``c`` on one ``MemoryEngine`` and a ``Clock``."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.engine = MemoryEngine(self.clock)
        self.nodes = {n: Node(self.engine, n, self.clock) for n in ("a", "b", "c")}
        for node in self.nodes.values():
            for peer in self.nodes:
                if peer != node.name:
                    node.links[peer] = FakeLink()
            node.meta.start()
        self.settle()

    def settle(self) -> None:
        """Let metadata changes reach every node."""
        for _ in range(3):
            self.clock.advance(0)

    def pump(self) -> int:
        """Deliver every record sent on the links; returns how many."""
        count = 0
        for node in self.nodes.values():
            for peer, link in node.links.items():
                sent, link.sent = link.sent, []
                for data in sent:
                    records = decode_batch(data)
                    count += len(records)
                    self.nodes[peer].router.deliver(node.name, records)
        return count

    def sub(self, node: str, client_id: str, topic_filter: str, qos: int = 0,
            mountpoint: str = "") -> tuple[Session, FakeConnection]:
        session, conn = self.nodes[node].online(client_id, mountpoint)
        self.nodes[node].broker.subscribe(session, topic_filter, SubOptions(qos))
        conn.written.clear()
        return session, conn

    def publish(self, node: str, topic: str, payload: bytes, retain: bool = False,
                mountpoint: str = "", **props: Any) -> None:
        message = Message(topic, payload, 0, retain, props or None)
        message.start_expiry(self.clock.seconds())
        self.nodes[node].broker.publish(message, mountpoint)
        self.nodes[node].broker.flush()



class RouterTests(ClusterCase):

    def test_routes_collapse_per_filter(self) -> None:
        """Two local subscribers of one filter make one route, withdrawn only with the
        last of them; the other nodes follow."""
        s1, _ = self.sub("a", "x1", "t/#")
        s2, _ = self.sub("a", "x2", "t/#")
        self.settle()
        self.assertEqual(self.engine.routes["a"], {"t/#"})
        self.assertEqual(self.nodes["b"].router.nodes_for("", "t/1"), {"a"})
        self.nodes["a"].broker.unsubscribe(s1, "t/#")
        self.settle()
        self.assertEqual(self.engine.routes["a"], {"t/#"})
        self.nodes["a"].broker.connection_closed(s2)  # a clean session ends
        self.settle()
        self.assertEqual(self.engine.routes["a"], set())
        self.assertEqual(self.nodes["b"].router.nodes_for("", "t/1"), set())

    def test_subscriptions_before_attach_are_announced_once(self) -> None:
        """Subscriptions made before the router is attached (a restored store) are
        announced when it attaches, counted once, and withdrawn with the last one."""
        broker = Broker(parse(BASE), self.clock)
        conn = FakeConnection(4)
        session, _ = broker.open_session(("", "early"), True, 0, conn)
        broker.subscribe(session, "e/#", SubOptions(0))
        meta = MemoryMetadata(self.engine, "d")
        meta.start()
        router = ClusterRouter(broker, meta, {})
        router.attach()
        self.settle()
        self.assertEqual(self.engine.routes["d"], {"e/#"})
        self.assertEqual(router.local, {("", "e/#"): 1})
        broker.unsubscribe(session, "e/#")
        self.settle()
        self.assertEqual(self.engine.routes["d"], set())
        meta.stop()

    def test_publish_reaches_each_matching_node_once(self) -> None:
        """A publish goes once to each node with matching routes, however many of its
        subscriptions match, and to no other node; each subscriber gets one copy."""
        _, b1 = self.sub("b", "b1", "s/+")
        _, b2 = self.sub("b", "b2", "s/#")
        _, c1 = self.sub("c", "c1", "s/1")
        self.settle()
        self.publish("a", "s/1", b"hello")
        self.assertEqual([len(link.sent) for link in self.nodes["a"].links.values()], [1, 1])
        self.assertEqual(self.pump(), 2)
        for conn in (b1, b2, c1):
            self.assertEqual(len(conn.written), 1)
            self.assertIn(b"hello", conn.written[0])
        self.publish("a", "s/2", b"only-b")
        self.assertEqual(len(self.nodes["a"].links["c"].sent), 0)
        self.assertEqual(self.pump(), 1)

    def test_received_messages_are_not_forwarded_again(self) -> None:
        """A node matches a message from a peer against its local subscribers only: it
        sends nothing back nor on to a third node."""
        self.sub("a", "a1", "loop")
        self.sub("b", "b1", "loop")
        self.sub("c", "c1", "loop")
        self.settle()
        self.publish("a", "loop", b"1")
        self.assertEqual(self.pump(), 2)
        self.assertEqual(self.pump(), 0)

    def test_order_is_kept_per_node(self) -> None:
        """Messages from one node reach a subscriber on another in publish order."""
        _, conn = self.sub("b", "b1", "o")
        self.settle()
        for i in range(20):
            self.publish("a", "o", str(i).encode())
        self.pump()
        self.assertEqual([data[-len(str(i)):] for i, data in enumerate(conn.written)],
                         [str(i).encode() for i in range(20)])

    def test_mountpoints_are_separate(self) -> None:
        """A route in one mountpoint does not match publishes in another."""
        _, conn = self.sub("b", "b1", "m/#", mountpoint="mp1")
        self.settle()
        self.assertEqual(self.engine.routes["b"], {route_key("mp1", "m/#")})
        self.publish("a", "m/x", b"default")
        self.assertEqual(self.pump(), 0)
        self.publish("a", "m/x", b"mp1", mountpoint="mp1")
        self.assertEqual(self.pump(), 1)
        self.assertEqual(len(conn.written), 1)

    def test_shared_subscriptions_are_announced(self) -> None:
        """$share filters are announced as routes (groups span nodes, see
        test_cluster_shared), but never match as plain routes."""
        self.sub("b", "b1", "$share/g/t")
        self.settle()
        self.assertEqual(self.engine.routes.get("b", set()), {"$share/g/t"})
        self.assertEqual(self.nodes["a"].router.nodes_for("", "t"), set())

    def test_retained_message_read_on_another_node(self) -> None:
        """A retained message published on one node is in every node's store, and a
        later subscriber on another node gets it; an empty payload deletes it there."""
        self.publish("a", "r/1", b"kept", retain=True)
        self.settle()
        _, conn = self.sub_with_retained("c", "c1", "r/#")
        self.assertEqual(len(conn.written), 1)
        self.assertIn(b"kept", conn.written[0])
        self.publish("b", "r/1", b"", retain=True)
        self.settle()
        for node in self.nodes.values():
            self.assertEqual(list(node.broker.store.retained_match("", "r/#")), [])

    def sub_with_retained(self, node: str, client_id: str,
                          topic_filter: str) -> tuple[Session, FakeConnection]:
        session, conn = self.nodes[node].online(client_id)
        self.nodes[node].broker.subscribe(session, topic_filter, SubOptions(0))
        return session, conn

    def test_dead_node_routes_dropped(self) -> None:
        """When a node stops heartbeating, the others drop its routes once its expiry
        (the node timeout) has passed, and stop forwarding to it."""
        self.sub("b", "b1", "d")
        self.settle()
        self.assertEqual(self.nodes["a"].router.nodes_for("", "d"), {"b"})
        self.nodes["b"].meta.stop()
        for _ in range(5):
            self.clock.advance(1.0)
            self.settle()
        self.assertEqual(self.nodes["a"].router.nodes_for("", "d"), set())
        self.publish("a", "d", b"x")
        self.assertEqual(len(self.nodes["a"].links["b"].sent), 0)

    def test_routes_announced_while_engine_away(self) -> None:
        """A subscription made while the engine is unreachable becomes a route once it
        answers again (the node re-announces all its routes)."""
        self.engine.available = False
        self.sub("b", "b1", "late")
        self.engine.available = True
        self.clock.advance(1.0)
        self.settle()
        self.assertEqual(self.nodes["a"].router.nodes_for("", "late"), {"b"})


class TakeoverTests(ClusterCase):
    """The client-id registry on top of the same three nodes."""

    def records(self, node: str, peer: str) -> list[Record]:
        return [r for data in self.nodes[node].links[peer].sent for r in decode_batch(data)]

    def test_connect_on_another_node_takes_over(self) -> None:
        """A CONNECT on node b for a client connected on node a closes the connection
        on a (session taken over) and drops the session there; b answers nothing,
        a confirms with TAKEOVER_DONE."""
        old, old_conn = self.nodes["a"].online("dev")
        self.sub_on(old, "a", "dev/in")
        self.settle()
        new, new_conn = self.nodes["b"].online("dev")
        self.settle()
        sent = self.records("b", "a")
        self.assertEqual([type(r) for r in sent], [Takeover])
        self.pump()
        self.assertTrue(old_conn.taken_over)
        self.assertNotIn(old.key, self.nodes["a"].broker.sessions)
        self.assertFalse(new_conn.taken_over)
        self.assertIs(self.nodes["b"].broker.sessions[new.key], new)
        self.settle()
        self.assertEqual(self.engine.routes["a"], set())  # a's subscription went with it
        self.pump()
        self.assertEqual(self.nodes["b"].registry.takeovers_done, 1)

    def sub_on(self, session: Session, node: str, topic_filter: str) -> None:
        self.nodes[node].broker.subscribe(session, topic_filter, SubOptions(0))

    def test_stale_takeover_is_ignored(self) -> None:
        """A takeover whose epoch is not newer than this node's own claim changes
        nothing and is answered as stale (fencing)."""
        session, conn = self.nodes["a"].online("dev")
        self.settle()
        mine = self.nodes["a"].registry.epochs[session.key]
        self.nodes["a"].registry.control("b", Takeover(7, "", "dev", mine - 1))
        self.assertFalse(conn.taken_over)
        self.assertIn(session.key, self.nodes["a"].broker.sessions)
        self.assertEqual(self.records("a", "b"), [TakeoverDone(7, "", "dev", mine - 1, STALE)])

    def test_reconnect_on_the_same_node_sends_nothing(self) -> None:
        """A client that reconnects to the node that owns it causes no takeover record."""
        self.nodes["a"].online("dev")
        self.settle()
        self.nodes["a"].online("dev")
        self.settle()
        self.assertEqual(self.records("a", "b") + self.records("a", "c"), [])


class RecordTests(SynchronousTestCase):

    def test_properties_and_expiry_cross_the_link(self) -> None:
        """Forwarded MQTT 5 properties travel with a message, per-hop ones do not, and
        the expiry interval arrives as what is left of it."""
        m = Message("t", b"p", 1, True, {"content_type": "text/plain",
                                         "user_property": [("k", "v")],
                                         "message_expiry_interval": 60, "topic_alias": 3})
        m.start_expiry(100.0)
        record = to_record(m, "mp", 110.0)
        back = from_record(decode_batch(encode_record(record))[0], 500.0)  # type: ignore
        self.assertEqual((back.topic, back.payload, back.qos, back.retain),
                         ("t", b"p", 1, True))
        self.assertEqual(back.properties, {"content_type": "text/plain",
                                           "user_property": [("k", "v")],
                                           "message_expiry_interval": 50})
        self.assertEqual(back.expires_at, 550.0)
        self.assertEqual(record.mountpoint, "mp")

    def test_plain_message_has_no_properties(self) -> None:
        """A 3.1.1 message crosses with an empty property block."""
        record = to_record(Message("t", b"p"), "", 0.0)
        self.assertEqual(record, Msg("", "t", b"p", 0, False, b""))

    def test_route_keys(self) -> None:
        """Routes of the default mountpoint are the filter itself; others carry the
        mountpoint, and split back."""
        self.assertEqual(route_key("", "a/#"), "a/#")
        self.assertEqual(split_route(route_key("m:1", "a/#")), ("m:1", "a/#"))
        self.assertEqual(split_route("a/#"), ("", "a/#"))


class ClusterConfigTests(SynchronousTestCase):

    def test_cluster_keys(self) -> None:
        """The cluster keys become a typed ClusterConfig (milliseconds to seconds)."""
        c = parse("nodename = n1@10.0.0.1\ndistributed_cookie = s\nmetadata_plugin = redis\n"
                  "metadata.redis.url = redis://r:7000/2\ncluster.heartbeat_interval = 250\n"
                  "cluster.node_timeout = 2000\noutgoing_clustering_buffer_size = 1000\n"
                  "outgoing_clustering_flush_threshold = 100\n"
                  "incoming_clustering_buffer_size = 8192\nremote_enqueue_timeout = 700\n"
                  "metadata.redis.sentinels = s1:26380, s2\n"
                  "metadata.redis.master_name = m\n").cluster
        self.assertTrue(c.enabled)
        self.assertEqual((c.nodename, c.host, c.cookie, c.redis_url),
                         ("n1@10.0.0.1", "10.0.0.1", "s", "redis://r:7000/2"))
        self.assertEqual((c.heartbeat_interval, c.node_timeout, c.remote_enqueue_timeout),
                         (0.25, 2.0, 0.7))
        self.assertEqual((c.outgoing_buffer_size, c.flush_threshold, c.incoming_buffer_size),
                         (1000, 100, 8192))
        self.assertEqual(c.redis_sentinels, (("s1", 26380), ("s2", 26379)))
        self.assertEqual(c.redis_master_name, "m")

    def test_metadata_from_the_keys(self) -> None:
        """The Redis metadata is built from metadata.redis.url, or from the Sentinels
        when they are given (the URL then gives only database and password), with the
        cluster name and timings."""
        from vmqtw.cluster.node import make_metadata
        c = parse("nodename = n1\nmetadata.redis.url = redis://:pw@r:7000/2\n"
                  "cluster.name = c1\ncluster.heartbeat_interval = 300\n").cluster
        m = make_metadata(c, Clock())
        self.assertEqual((m.node_name, m.host, m.port, m.dbid, m.password, m.prefix),
                         ("n1", "r", 7000, 2, "pw", "{c1}"))
        self.assertEqual(m.heartbeat_interval, 0.3)
        c = parse("metadata.redis.sentinels = s1:26380\n"
                  "metadata.redis.url = redis://:pw@ignored/3\n"
                  "metadata.redis.master_name = mm\n").cluster
        m = make_metadata(c, Clock())
        self.assertEqual((m.sentinels, m.master_name, m.dbid, m.password),
                         ([("s1", 26380)], "mm", 3, "pw"))

    def test_defaults_are_one_node(self) -> None:
        """Without metadata_plugin the broker is not a cluster node."""
        config = parse(BASE)
        self.assertFalse(config.cluster.enabled)
        self.assertIsNone(cluster_node(config, None, None))

    def test_bad_values(self) -> None:
        """An unknown engine or a node timeout not above the heartbeat is an error naming
        the line."""
        with self.assertRaises(ConfigError) as e:
            parse("metadata_plugin = etcd\n", "b.conf")
        self.assertIn("b.conf:1: metadata_plugin: expected one of", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            parse("cluster.node_timeout = 500\n", "b.conf")
        self.assertIn("b.conf:1: cluster.node_timeout: must be longer", str(e.exception))

    def test_vmq_listener_without_engine_is_a_warning(self) -> None:
        """A listener.vmq without a metadata engine (VerneMQ's stock file) leaves the
        broker a single node: the listener is not opened and a warning says why."""
        config = parse(BASE + "listener.vmq.clustering = 127.0.0.1:0\n", "b.conf")
        self.assertIsNone(cluster_node(config, None, None))
        self.assertEqual([l.key for l in config.unserved_listeners],
                         ["listener.vmq.clustering"])
        self.assertIn("b.conf:3: listener.vmq.clustering: VerneMQ's cluster listener (vmq) "
                      "is not served", "\n".join(str(w) for w in config.warnings))
        self.assertIn("metadata_plugin = redis", str(config.warnings[-1]))

    def test_cluster_keys_warned_only_on_a_single_node(self) -> None:
        """nodename, distributed_cookie... have no effect (a warning) without a metadata
        engine, and no warning on a cluster node, which honours them."""
        keys = ("nodename = n@h\ndistributed_cookie = c\nallow_publish_during_netsplit = on\n"
                "allow_unsubscribe_during_netsplit = on\ncoordinate_registrations = off\n")
        def warned(config: Any) -> list[str]:  # the default plugins' files aside
            return sorted(w.key for w in config.warnings if not w.key.startswith("plugins."))

        single = parse(BASE + keys)
        self.assertEqual(warned(single),
                         ["allow_publish_during_netsplit", "allow_unsubscribe_during_netsplit",
                          "coordinate_registrations", "distributed_cookie", "nodename"])
        node = parse(BASE + keys + "metadata_plugin = redis\n"
                     "listener.vmq.clustering = 127.0.0.1:0\n")
        self.assertEqual(warned(node), [])

    def test_engine_needs_a_vmq_listener(self) -> None:
        """A metadata engine without a listener.vmq is refused: peers could not connect."""
        config = parse(BASE + "metadata_plugin = redis\n", "b.conf")
        with self.assertRaises(ClusterConfigError) as e:
            cluster_node(config, Broker(config, Clock()), Clock())
        self.assertIn("listener.vmq.NAME", str(e.exception))
