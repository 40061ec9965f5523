"""The operator's view of a cluster node (:mod:`vmqtw.cluster.monitor`) and the
``vmq-admin cluster`` commands on it: a :class:`ClusterNode` over ``MemoryMetadata`` on a
``Clock``, with links that only report their state (no sockets)."""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.admin.commands import Admin
from vmqtw.cluster.memory_metadata import MemoryEngine, MemoryMetadata
from vmqtw.cluster.monitor import NODE_OFFLINE, NOT_JOINED, UNKNOWN_STATUS
from vmqtw.cluster.node import ClusterNode
from vmqtw.config import ConfigError, parse
from vmqtw.core.broker import Broker
from vmqtw.http.status import status
from vmqtw.test.harness import BASE
from vmqtw.test.test_cluster_node import ClusterCase

CONFIG = BASE + "metadata_plugin = redis\nnodename = a\nlistener.vmq.c = 127.0.0.1:0\n"


class FakeLink:
    """An outgoing link that only has a state and counters."""

    def __init__(self) -> None:
        self.connected = False
        self.bytes_sent = 0
        self.bytes_dropped = 0
        self.state_observer: Any = None

    def up(self) -> None:
        self.connected = True
        self.state_observer(True)

    def lose(self) -> None:
        self.connected = False
        self.state_observer(False)

    def stop(self) -> Deferred[None]:
        """Closed by the node (its member went down)."""
        self.connected = False
        return succeed(None)


class Console:
    """The admin channel's side of a streaming command."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ended: list[int] = []
        self.trace = None

    def write(self, text: str) -> None:
        self.lines.append(text)

    def end(self, code: int = 0) -> None:
        self.ended.append(code)


class MonitorCase(SynchronousTestCase):
    """Node ``a`` (a ClusterNode) with members ``b`` and ``c`` on one engine."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.engine = MemoryEngine(self.clock)
        self.broker = Broker(parse(CONFIG), self.clock)
        self.metas = {n: MemoryMetadata(self.engine, n, node_timeout=3.0)
                      for n in ("a", "b", "c")}
        self.node = ClusterNode(parse(CONFIG), self.broker, self.clock,
                                metadata=self.metas["a"])
        self.monitor = self.node.monitor
        for meta in self.metas.values():
            meta.start()
        self.clock.advance(1.0)  # a heartbeat: a sees b and c
        self.node.joined = True
        self.links = {n: self.link(n) for n in ("b", "c")}
        self.addCleanup(self.stop_all)

    def stop_all(self) -> None:
        for meta in self.metas.values():
            meta.stop()

    def link(self, name: str) -> FakeLink:
        link = FakeLink()
        self.node.links[name] = link  # type: ignore[assignment]
        self.monitor.link_created(name, link)
        return link

    def expire(self, name: str) -> None:
        """``name`` stops heartbeating (killed) until the others declare it down."""
        self.metas[name].stop()
        self.clock.advance(4.0)  # ClusterNode.members_changed closes its link

    def admin(self, console: Any = None) -> tuple[Admin, Any]:
        admin = Admin(self.broker, self.broker.metrics, node="a")
        admin.cluster = self.node
        admin.console = console
        return admin, console


class MemberTableTests(MonitorCase):

    def test_running_means_an_established_link(self) -> None:
        """Every live member is listed; this node runs while joined and the engine
        answers, another member while its link is established."""
        self.links["b"].up()
        self.assertEqual(self.monitor.rows(), [("a", True), ("b", True), ("c", False)])
        self.node.joined = False
        self.assertEqual(self.monitor.rows()[0], ("a", False))

    def test_expired_member_stays_until_back_or_forgotten(self) -> None:
        """A member that expired without leaving is listed as not running; it runs again
        when it comes back, and ``forget`` removes it."""
        self.expire("c")
        self.assertEqual(self.monitor.rows(), [("a", True), ("b", False), ("c", False)])
        self.metas["c"] = MemoryMetadata(self.engine, "c", node_timeout=3.0)
        self.metas["c"].start()
        self.clock.advance(1.0)
        self.assertNotIn("c", self.monitor.down)
        self.expire("c")
        self.assertTrue(self.monitor.forget("c"))
        self.assertFalse(self.monitor.forget("c"))
        self.assertEqual([name for name, _ in self.monitor.rows()], ["a", "b"])

    def test_member_that_left_is_gone(self) -> None:
        """A member that left on purpose is dropped from the table."""
        self.metas["c"].leave()
        self.clock.advance(0)
        self.assertEqual([name for name, _ in self.monitor.rows()], ["a", "b"])
        self.assertEqual(self.monitor.down, set())


class NetsplitTests(MonitorCase):

    def test_lost_link_is_a_netsplit_until_reached_again(self) -> None:
        """Losing the established link to a live member counts ``netsplit_detected``
        once and makes /health DOWN; reaching it again counts ``netsplit_resolved``."""
        for link in self.links.values():
            link.up()
        self.assertIsNone(self.monitor.health_problem())
        self.links["b"].lose()
        self.links["b"].lose()
        self.assertEqual((self.monitor.netsplits_detected, self.monitor.netsplits_resolved),
                         (1, 0))
        self.assertEqual(self.monitor.health_problem(), NODE_OFFLINE)
        self.links["b"].up()
        self.assertEqual((self.monitor.netsplits_detected, self.monitor.netsplits_resolved),
                         (1, 1))
        self.assertIsNone(self.monitor.health_problem())

    def test_split_member_that_expires_resolves_it(self) -> None:
        """A split member that expires resolves the split (the cluster is consistent
        again); /health is OK, /health/listeners_full_cluster still sees it offline."""
        for link in self.links.values():
            link.up()
        self.links["c"].lose()
        self.expire("c")
        self.assertEqual((self.monitor.netsplits_detected, self.monitor.netsplits_resolved),
                         (1, 1))
        self.assertIsNone(self.monitor.health_problem())
        self.assertEqual(self.monitor.full_cluster_problem(), NODE_OFFLINE)

    def test_replaced_link_is_not_a_netsplit(self) -> None:
        """A link the node no longer uses (replaced or closed) reports nothing."""
        old = self.links["b"]
        old.up()
        self.link("b")
        old.lose()
        self.assertEqual(self.monitor.netsplits_detected, 0)

    def test_health_reasons(self) -> None:
        """Not joined, then joined with the engine down: VerneMQ's two reasons."""
        for link in self.links.values():
            link.up()
        self.node.joined = False
        self.assertEqual(self.monitor.health_problem(), NOT_JOINED)
        self.node.joined = True
        self.engine.available = False
        self.clock.advance(1.0)
        self.assertEqual(self.monitor.health_problem(), UNKNOWN_STATUS)
        self.monitor.left = True
        self.assertEqual(self.monitor.health_problem(), NOT_JOINED)

    def test_status_json_mystatus_lists_members(self) -> None:
        """/status.json's ``mystatus`` is this node's view of every member."""
        self.links["b"].up()
        doc = status(self.broker.metrics, self.broker, lambda: [], self.node)
        (node,) = doc[0].values()
        self.assertEqual(node["mystatus"], [{"a": True, "b": True, "c": False}])


class MetricsTests(MonitorCase):

    def test_link_counters_summed_at_scrape_and_never_go_back(self) -> None:
        """cluster_bytes_sent/dropped are the links' own counts summed when read, and
        keep what a closed link had sent; received comes from the vmq listener."""
        metrics = self.broker.metrics
        self.links["b"].bytes_sent, self.links["c"].bytes_sent = 100, 20
        self.links["c"].bytes_dropped = 7
        self.node.server.bytes_received = 55
        got = metrics.aggregated()
        self.assertEqual((got["cluster_bytes_sent"][1], got["cluster_bytes_dropped"][1],
                          got["cluster_bytes_received"][1]), (120, 7, 55))
        self.expire("c")  # c's link closed
        self.link("b").bytes_sent = 5  # b's link replaced by a new one
        got = metrics.aggregated()
        self.assertEqual((got["cluster_bytes_sent"][1], got["cluster_bytes_dropped"][1]),
                         (125, 7))
        self.node.links.pop("b")
        self.assertEqual(metrics.aggregated()["cluster_bytes_sent"][1], 125)

    def test_netsplit_counters_exported(self) -> None:
        """netsplit_detected/resolved are read from the monitor (VerneMQ's names)."""
        self.links["b"].up()
        self.links["b"].lose()
        got = self.broker.metrics.aggregated()
        self.assertEqual((got["netsplit_detected"][1], got["netsplit_resolved"][1]), (1, 0))


class RouterMatchesRemoteTests(ClusterCase):

    def test_one_increment_per_publish_that_leaves_the_node(self) -> None:
        """router_matches_remote counts a publish once however many nodes (and
        subscriptions) it reaches, and not at all when it stays local."""
        self.sub("b", "b1", "s/+")
        self.sub("b", "b2", "s/#")
        self.sub("c", "c1", "s/1")
        self.settle()
        router = self.nodes["a"].router
        self.publish("a", "s/1", b"x")
        self.assertEqual(router.matches_remote, 1)
        self.publish("a", "other", b"x")
        self.assertEqual(router.matches_remote, 1)
        self.sub("b", "g1", "$share/g/q")
        self.settle()
        self.publish("a", "q", b"x")  # a shared pick on another node
        self.assertEqual(router.matches_remote, 2)


class AdminTests(MonitorCase):

    def run_admin(self, *argv: str, console: Any = None) -> tuple[int, str]:
        admin, _ = self.admin(console)
        reply = admin.run(list(argv), console=console)
        return reply.code, reply.render()

    def test_cluster_show(self) -> None:
        """``cluster show``: VerneMQ's Node/Running table of the members."""
        self.links["b"].up()
        code, text = self.run_admin("cluster", "show")
        self.assertEqual(code, 0)
        lines = [line for line in text.splitlines() if line.startswith("|")]
        self.assertEqual([line.split("|")[1:3] for line in lines],
                         [[" Node ", " Running "], [" a    ", " true    "],
                          [" b    ", " true    "], [" c    ", " false   "]])

    def test_cluster_show_single_node(self) -> None:
        """Without a metadata engine the table has one row: this node, running."""
        admin = Admin(self.broker, node="VerneMQ@x")
        reply = admin.run(["cluster", "show", "--format=json"])
        self.assertEqual(reply.render("json").strip(),
                         '{"type": "table", "table": [{"Node": "VerneMQ@x", "Running": true}]}')

    def test_join_and_leave_need_a_cluster(self) -> None:
        """join and leave on a single node say that clustering needs the engine."""
        admin = Admin(self.broker, node="VerneMQ@x")
        for argv in (["cluster", "join", "discovery-node=b"], ["cluster", "leave", "node=b"]):
            reply = admin.run(argv)
            self.assertEqual(reply.code, 1)
            self.assertIn("clustering needs metadata_plugin = redis", reply.render())

    def test_join_usage_and_checks(self) -> None:
        """join: a missing argument is a usage error; this node, an unknown node or a
        member not live are refused in VerneMQ's words; a live member is Done."""
        code, text = self.run_admin("cluster", "join")
        self.assertEqual(code, 1)
        self.assertIn("Missing argument: discovery-node", text)
        self.assertIn("cluster join discovery-node=<Node>", text)
        code, text = self.run_admin("cluster", "join", "discovery-node=a")
        self.assertEqual((code, text.split(":")[0]), (1, "Couldn't join cluster due to self_join"))
        code, text = self.run_admin("cluster", "join", "discovery-node=zz")
        self.assertEqual(code, 1)
        self.assertIn("Couldn't join cluster due to not_reachable: zz is not a live member of "
                      "cluster 'vmqtw'", text)
        self.assertIn("members: b, c", text)
        self.assertEqual(self.run_admin("cluster", "join", "discovery-node=b"), (0, "Done\n"))

    def test_leave_usage(self) -> None:
        """leave: node= is required and the interval/timeout flags take numbers."""
        code, text = self.run_admin("cluster", "leave")
        self.assertEqual(code, 1)
        self.assertIn("Missing argument: node", text)
        code, text = self.run_admin("cluster", "leave", "node=a", "-t", "soon")
        self.assertEqual(code, 1)
        self.assertIn("Invalid value for --timeout: soon", text)
        code, text = self.run_admin("cluster", "leave", "node=a", "--bogus")
        self.assertIn("Invalid flag: --bogus", text)

    def test_leave_another_node(self) -> None:
        """leave node=OTHER: a running member is refused (run it there); an expired one
        is removed from the table; an unknown one is an error."""
        code, text = self.run_admin("cluster", "leave", "node=b")
        self.assertEqual(code, 1)
        self.assertIn("b is running; run cluster leave node=b on b itself", text)
        self.expire("c")
        self.assertEqual(self.run_admin("cluster", "leave", "node=c", "-k"), (0, "Done\n"))
        self.assertNotIn("c", [name for name, _ in self.monitor.rows()])
        code, text = self.run_admin("cluster", "leave", "node=zz")
        self.assertIn("zz is not a member of the cluster", text)

    def test_leave_this_node_waits_on_the_console(self) -> None:
        """leave node=THIS calls ClusterNode.leave and streams: progress lines every
        --summary-interval, then the report and exit 0; the node is then shown as left
        and join discovery-node=b re-admits it."""
        pending: Deferred[Any] = Deferred()
        self.node.leave = lambda target=None: pending  # type: ignore[attr-defined]
        console = Console()
        admin, _ = self.admin(console)
        reply = admin.run(["cluster", "leave", "node=a", "-i", "2"], console=console)
        self.assertEqual((reply.code, reply.streaming), (0, True))
        self.clock.advance(2)
        self.clock.advance(2.5)
        self.assertEqual(console.lines, ["cluster leave: still waiting after 2s",
                                         "cluster leave: still waiting after 4s"])

        class Report:
            sessions_moved, messages_moved, errors = 3, 7, []
        pending.callback(Report())
        self.assertEqual(console.ended, [0])
        self.assertEqual(console.lines[-1], "Done: a left the cluster; moved 3 offline "
                                            "sessions with 7 messages")
        self.assertEqual(self.monitor.rows(), [("a", False)])
        self.assertEqual(self.monitor.health_problem(), NOT_JOINED)
        code, text = self.run_admin("cluster", "leave", "node=a")
        self.assertIn("a has already left", text)
        # join again: the metadata session restarts (synchronous on MemoryMetadata).
        self.assertEqual(self.run_admin("cluster", "join", "discovery-node=b"), (0, "Done\n"))
        self.assertFalse(self.monitor.left)
        self.assertIn("a", self.engine.members)

    def test_leave_timeout_and_errors(self) -> None:
        """A leave that does not finish within --timeout ends the console with exit 1;
        one that reports errors lists them and exits 1."""
        self.node.leave = lambda target=None: Deferred()  # type: ignore[attr-defined]
        console = Console()
        admin, _ = self.admin(console)
        admin.run(["cluster", "leave", "node=a", "--timeout=3"], console=console)
        self.clock.advance(3)
        self.assertEqual(console.ended, [1])
        self.assertIn("not finished after 3s", console.lines[-1])

        class Report:
            sessions_moved, messages_moved, errors = 0, 0, ["session x: no member"]
        self.node.leave = lambda target=None: succeed(Report())  # type: ignore[attr-defined]
        code, text = self.run_admin("cluster", "leave", "node=a", console=Console())
        self.assertEqual(code, 1)
        self.assertIn("session x: no member", text)

    def test_leave_without_console(self) -> None:
        """Outside the console (the HTTP API) leave says it needs the console and does not
        start leaving."""
        code, text = self.run_admin("cluster", "leave", "node=a")
        self.assertEqual(code, 1)
        self.assertIn("needs the vmq-admin console", text)
        self.assertFalse(self.monitor.left)


class WorkersSettingTests(SynchronousTestCase):

    def test_workers_key(self) -> None:
        """``workers = N`` is an integer >= 1, needs the metadata engine (the --workers
        message, on the key's line) and is 0 when not set."""
        cluster = "metadata_plugin = redis\nlistener.vmq.c = 127.0.0.1:0\n"
        self.assertEqual(parse(BASE + cluster + "workers = 3\n").cluster.workers, 3)
        self.assertEqual(parse(BASE + cluster).cluster.workers, 0)
        for bad, message in (("0", "expected an integer >= 1"), ("two", "expected an integer")):
            with self.assertRaises(ConfigError) as e:
                parse(BASE + cluster + f"workers = {bad}\n", "f.conf")
            self.assertIn(f"f.conf:5: workers: {message}", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            parse(BASE + "workers = 2\n", "f.conf")
        self.assertIn("f.conf:3: workers: workers are cluster nodes: they need "
                      "metadata_plugin = redis", str(e.exception))

    def test_command_line_wins(self) -> None:
        """vmqtw uses --workers when given, else the file's key, else one process; a
        worker's raw nodename (metrics label, vmq-admin) is its own."""
        from vmqtw.workers import configured_workers, worker_config
        config = parse(BASE + "metadata_plugin = redis\nlistener.vmq.c = 127.0.0.1:0\n"
                       "nodename = n@h\nworkers = 3\n")
        self.assertEqual(configured_workers(config, None), 3)
        self.assertEqual(configured_workers(config, 2), 2)
        self.assertIsNone(configured_workers(parse(BASE), None))
        self.assertEqual(worker_config(config, 2).extra["nodename"], "n-2@h")
