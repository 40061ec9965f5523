"""Operating a real cluster: ``python -m vmqtw -c CONF`` nodes with an HTTP listener and
an admin socket each, one ``redis-server`` started by the test; ``vmq-admin`` runs as a
child process, ``/metrics``, ``/health`` and ``/status.json`` are read over HTTP."""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Generator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from tests.support import TIMEOUT, RunningProcess, in_thread, run_process
from tests import test_cluster_processes as processes
from tests.test_cluster_redis import RedisServer, free_port
from tests.test_operations import parse_exposition


class ClusterAdminTests(unittest.TestCase):

    timeout = 120

    # The cluster helpers of test_cluster_processes, without its tests.
    client = processes.ClusterProcessTests.client
    probe = staticmethod(processes.ClusterProcessTests.probe)
    collect = staticmethod(processes.ClusterProcessTests.collect)
    linked = processes.ClusterProcessTests.linked

    @inlineCallbacks
    def setUp(self) -> Generator[Deferred[Any], Any, None]:
        self.redis = RedisServer(self)
        yield self.redis.start()
        # short: an admin socket's path must fit in 108 bytes
        self.dir = tempfile.mkdtemp(prefix="vmqtw-ca-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.clients: list[Any] = []

    def config(self, name: str, cookie: str, link: str = "", extra: str = "") -> str:
        return processes.ClusterProcessTests.config(  # type: ignore[arg-type]
            self, name, cookie, link,
            f"listener.http.default = 127.0.0.1:0\nadmin_socket = {name}.sock\n" + extra)

    @inlineCallbacks
    def start_node(self, name: str, cookie: str = "s3cret") -> Generator[Deferred[Any], Any,
                                                                         Any]:
        """A node that serves MQTT and HTTP and has joined the cluster."""
        start = processes.ClusterProcessTests.start_node
        node = yield start(self, name, cookie)  # type: ignore[arg-type]
        m = re.search(rb"listener http\.default on 127\.0\.0\.1:(\d+)", node.out)
        if m is None:
            m = yield node.proc.wait_for_output(
                rb"listener http\.default on 127\.0\.0\.1:(\d+)",
                timeout=processes.START_TIMEOUT)
        node.http_port = int(m.group(1))
        node.config = os.path.join(self.dir, f"{name}.conf")
        return node

    @inlineCallbacks
    def get(self, node: Any, path: str) -> Generator[Deferred[Any], Any, tuple[int, Any]]:
        """GET on ``node``'s HTTP listener: (status code, body)."""
        url = f"http://127.0.0.1:{node.http_port}{path}".encode()
        response = yield Agent(reactor).request(b"GET", url, Headers({}))
        body = yield readBody(response)
        return response.code, body

    @inlineCallbacks
    def admin(self, node: Any, *args: str) -> Generator[Deferred[Any], Any,
                                                         tuple[int, str, str]]:
        """vmq-admin on ``node``: (exit code, stdout, stderr)."""
        out, err, code = yield run_process(sys.executable, ["-m", "vmqtw.admin.cli", "-c",
                                                            node.config, *args])
        return code, out.decode(), err.decode()

    @inlineCallbacks
    def members(self, node: Any) -> Generator[Deferred[Any], Any, dict[str, bool]]:
        """``cluster show --format=json`` on ``node``: name -> running."""
        code, out, err = yield self.admin(node, "cluster", "show", "--format=json")
        self.assertEqual(code, 0, err)
        return {row["Node"]: row["Running"] for row in json.loads(out)["table"]}

    @inlineCallbacks
    def until(self, check: Any, what: str, limit: float = TIMEOUT
              ) -> Generator[Deferred[Any], Any, Any]:
        """Poll the Deferred-returning ``check`` until it returns a true value (bounded)."""
        from tests.support import quiet_period
        for _ in range(int(limit / 0.2)):
            value = yield check()
            if value:
                return value
            yield quiet_period(0.2)
        raise AssertionError(f"never: {what}")

    # -- tests ------------------------------------------------------------------------

    @inlineCallbacks
    def test_show_metrics_health_after_a_cross_node_publish(self) -> Generator[Deferred[Any],
                                                                               Any, None]:
        """Two linked nodes: cluster show lists both running on each; after messages
        published on n1 reach a subscriber on n2, n1's /metrics has cluster_bytes_sent
        and router_matches_remote (one per publish), n2's cluster_bytes_received, the
        same figures in vmq-admin metrics show; /health is OK and mystatus lists both."""
        n1 = yield self.start_node("n1")
        n2 = yield self.start_node("n2")
        yield self.linked(n1, n2)
        both = {"n1@127.0.0.1": True, "n2@127.0.0.1": True}
        self.assertEqual((yield self.members(n1)), both)
        self.assertEqual((yield self.members(n2)), both)
        pub = self.client(n1, "pub")
        sub = self.client(n2, "sub")
        before = yield self.get(n1, "/metrics")
        sent_before = parse_exposition(before[1].decode())[("vernemq_router_matches_remote",
                                                             ())]

        def scenario() -> int:
            pub.connect()
            sub.connect()
            sub.subscribe("m/#", 1)
            probes = 0
            for _ in range(100):  # the probe loop, counting what it published
                pub.publish("m/probe", b"probe")
                probes += 1
                try:
                    if sub.get(timeout=0.1).payload == b"probe":
                        break
                except AssertionError:
                    continue
            for i in range(5):
                pub.publish(f"m/{i}", b"x" * 100, 1)
            self.collect(sub, 5)
            return probes

        probes = yield in_thread(scenario)
        m1 = parse_exposition((yield self.get(n1, "/metrics"))[1].decode())
        m2 = parse_exposition((yield self.get(n2, "/metrics"))[1].decode())
        # Probes published before the route reached n1 stayed local: at most all of them.
        remote = m1[("vernemq_router_matches_remote", ())] - sent_before
        self.assertGreaterEqual(remote, 5 + 1)
        self.assertLessEqual(remote, 5 + probes)
        self.assertGreater(m1[("vernemq_cluster_bytes_sent", ())], 5 * 100)
        self.assertGreater(m2[("vernemq_cluster_bytes_received", ())], 5 * 100)
        self.assertEqual(m2[("vernemq_router_matches_remote", ())], 0)
        for name in ("cluster_bytes_dropped", "netsplit_detected", "netsplit_resolved"):
            self.assertEqual(m1[("vernemq_" + name, ())], 0)
        code, out, err = yield self.admin(n1, "metrics", "show")
        self.assertEqual(code, 0, err)
        shown = dict(line.split(" = ") for line in out.splitlines())
        self.assertGreaterEqual(int(shown["counter.router_matches_remote"]),
                                int(m1[("vernemq_router_matches_remote", ())]))
        self.assertIn("counter.cluster_bytes_sent", shown)
        self.assertEqual((yield self.get(n1, "/health")), (200, b'{"status": "OK"}'))
        code, body = yield self.get(n1, "/status.json")
        self.assertEqual(json.loads(body)[0]["n1@127.0.0.1"]["mystatus"], [both])

    @inlineCallbacks
    def test_killed_node(self) -> Generator[Deferred[Any], Any, None]:
        """SIGKILL of n2: n1 counts a netsplit, resolved when n2 expires; cluster show
        then lists n2 as not running; /health is OK (the cluster is consistent) but
        /health/listeners_full_cluster is DOWN until `cluster leave node=n2` removes
        it."""
        n1 = yield self.start_node("n1")
        n2 = yield self.start_node("n2")
        yield self.linked(n1, n2)
        n2.proc.transport.signalProcess("KILL")
        yield n1.proc.wait_for_output(rb"down \['n2@127\.0\.0\.1'\]",
                                      timeout=processes.NODE_TIMEOUT + TIMEOUT)
        self.assertEqual((yield self.members(n1)),
                         {"n1@127.0.0.1": True, "n2@127.0.0.1": False})
        m1 = parse_exposition((yield self.get(n1, "/metrics"))[1].decode())
        self.assertEqual((m1[("vernemq_netsplit_detected", ())],
                          m1[("vernemq_netsplit_resolved", ())]), (1, 1))
        self.assertEqual((yield self.get(n1, "/health"))[0], 200)
        code, body = yield self.get(n1, "/health/listeners_full_cluster")
        self.assertEqual((code, json.loads(body)),
                         (503, {"status": "DOWN", "reasons": ["At least one node is offline"]}))
        code, out, err = yield self.admin(n1, "cluster", "leave", "node=n2@127.0.0.1")
        self.assertEqual((code, out), (0, "Done\n"), err)
        self.assertEqual((yield self.members(n1)), {"n1@127.0.0.1": True})
        self.assertEqual((yield self.get(n1, "/health/listeners_full_cluster"))[0], 200)

    @inlineCallbacks
    def test_unreachable_member(self) -> Generator[Deferred[Any], Any, None]:
        """A member n1 cannot link to (a wrong cookie) makes n1's /health DOWN with
        "At least one node is offline" and shows as not running; join names a live
        member (Done) or fails in VerneMQ's words; leaving another running node is
        refused with what to do instead."""
        n1 = yield self.start_node("n1")
        yield self.start_node("bad", cookie="wrong")
        yield n1.proc.wait_for_output(rb"vmq link to node bad@127\.0\.0\.1 .*cookie",
                                      timeout=TIMEOUT)
        code, body = yield self.get(n1, "/health")
        self.assertEqual((code, json.loads(body)),
                         (503, {"status": "DOWN", "reasons": ["At least one node is offline"]}))
        self.assertEqual((yield self.members(n1)),
                         {"n1@127.0.0.1": True, "bad@127.0.0.1": False})
        code, out, err = yield self.admin(n1, "cluster", "join", "discovery-node=bad@127.0.0.1")
        self.assertEqual((code, out), (0, "Done\n"), err)
        code, out, err = yield self.admin(n1, "cluster", "join", "discovery-node=x@127.0.0.1")
        self.assertEqual(code, 1)
        self.assertIn("Couldn't join cluster due to not_reachable: x@127.0.0.1 is not a live "
                      "member of cluster 'vmqtw' on Redis at 127.0.0.1:", err)
        code, out, err = yield self.admin(n1, "cluster", "leave", "node=bad@127.0.0.1")
        self.assertEqual(code, 1)
        self.assertIn("bad@127.0.0.1 is running; run cluster leave node=bad@127.0.0.1 on "
                      "bad@127.0.0.1 itself", err)
        code, out, err = yield self.admin(n1, "cluster", "leave")
        self.assertEqual(code, 1)
        self.assertIn("Missing argument: node\ncluster leave node=<Node> [-k|--kill_sessions]",
                      err)

    @inlineCallbacks
    def test_leave_and_join_again(self) -> Generator[Deferred[Any], Any, None]:
        """`cluster leave node=n1` on n1 (ClusterNode.leave): the console reports it,
        n2 no longer lists n1, n1's /health says it has not joined; `cluster join
        discovery-node=n2` makes it a running member again."""
        n1 = yield self.start_node("n1")
        n2 = yield self.start_node("n2")
        yield self.linked(n1, n2)
        code, out, err = yield self.admin(n1, "cluster", "leave", "node=n1@127.0.0.1")
        self.assertEqual(code, 0, err)
        self.assertIn("Done: n1@127.0.0.1 left the cluster", out)
        self.assertEqual((yield self.members(n2)), {"n2@127.0.0.1": True})
        code, body = yield self.get(n1, "/health")
        self.assertEqual(json.loads(body)["reasons"][0], "Node has not joined cluster")
        code, out, err = yield self.admin(n1, "cluster", "join", "discovery-node=n2@127.0.0.1")
        self.assertEqual(code, 0, out + err)

        @inlineCallbacks
        def both_running() -> Generator[Deferred[Any], Any, bool]:
            members = yield self.members(n2)
            return members == {"n1@127.0.0.1": True, "n2@127.0.0.1": True}
        yield self.until(both_running, "n1 running again on n2")


class WorkersKeyTests(unittest.TestCase):

    timeout = 120

    @inlineCallbacks
    def test_workers_from_the_file(self) -> Generator[Deferred[Any], Any, None]:
        """`workers = 2` in the file makes `vmqtw -c FILE` supervise two worker nodes,
        as `--workers 2` does."""
        redis = RedisServer(self)
        yield redis.start()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "w.conf")
        with open(path, "w") as f:
            f.write(f"allow_anonymous = on\nnodename = w@127.0.0.1\n"
                    f"metadata_plugin = redis\n"
                    f"metadata.redis.url = redis://127.0.0.1:{redis.port}\n"
                    f"listener.tcp.default = 127.0.0.1:{free_port()}\n"
                    f"persistent_store.enabled = off\n"
                    f"listener.vmq.clustering = 127.0.0.1:0\nworkers = 2\n")
        proc = RunningProcess(sys.executable, ["-m", "vmqtw", "-c", path], cwd=directory)
        self.addCleanup(proc.stop)
        for i in (1, 2):
            yield proc.wait_for_output(rb"worker %d \(node w-%d@127\.0\.0\.1\) started" % (i, i),
                                       timeout=processes.START_TIMEOUT)
        yield proc.wait_for_output(rb"cluster node w-2@127\.0\.0\.1 joined",
                                   timeout=processes.START_TIMEOUT)

    @inlineCallbacks
    def test_bad_workers_values(self) -> Generator[Deferred[Any], Any, None]:
        """A bad `workers` value, or workers without the metadata engine, stops
        `vmqtw -c FILE` with the file and line, exit 2."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "w.conf")
        for text, message in (
                ("workers = many\n", b"w.conf:2: workers: expected an integer"),
                ("workers = 2\n", b"w.conf:2: workers: workers are cluster nodes: they "
                                  b"need metadata_plugin = redis")):
            with open(path, "w") as f:
                f.write("listener.tcp.default = 127.0.0.1:0\n" + text)
            out, err, code = yield run_process(sys.executable, ["-m", "vmqtw", "-c", path])
            self.assertEqual(code, 2, err)
            self.assertIn(message, err)
