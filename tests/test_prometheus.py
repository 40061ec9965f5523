"""A real Prometheus server scrapes a vmqtw broker process, and the queries of a
VerneMQ Grafana dashboard resolve against what it stored.

The broker runs as an operator runs it (``python -m vmqtw`` with a tcp and an
http listener on port 0, as in ``tests/test_operations.py``); ``prometheus``
(Debian's package, ``/usr/bin/prometheus``) runs with its own configuration and
storage in a temporary directory, scraping ``/metrics`` every second.  Paho
clients make traffic; then the dashboard's PromQL goes through Prometheus's
HTTP API (``/api/v1/query``), so names, types, labels and the exposition
format are checked by the program that consumes them in production."""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from typing import Any, Callable
from urllib.parse import quote

from paho.mqtt.client import MQTTv5, MQTTv311
from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, readBody

from tests.support import RunningProcess, in_thread, missing, with_timeout
from tests.test_operations import RunningBrokerTestCase
from vmqtw.auth.passwd import hash_password

NODE = "VerneMQ@ops"
#: Seconds Prometheus may take to start, and then to see what a test waits for.
PROMETHEUS_START = 20.0
SCRAPE_WAIT = 15.0
#: How often a bounded wait asks Prometheus again, and how long one request may take.
POLL = 0.25
REQUEST_TIMEOUT = 5.0

Vector = list[dict[str, Any]]


def prometheus_binary() -> str:
    """The ``prometheus`` program (see ``tests.support.missing`` when it is absent)."""
    path = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not os.access(path, os.X_OK):
        missing("prometheus is not installed (apt-get install prometheus)")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (Prometheus cannot
    listen on port 0 and tell us which port it got)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_config(target: str) -> str:
    return ("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: vmqtw\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['{target}']\n")


class PrometheusServerTestCase(RunningBrokerTestCase):
    """A broker process (with vmq_passwd, so a login can be refused) and a
    ``prometheus`` server scraping its ``listener.http.default`` every second."""

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        binary = prometheus_binary()
        self.prom_dir = tempfile.mkdtemp(prefix="vmqtw-prom-")
        self.addCleanup(shutil.rmtree, self.prom_dir, True)
        passwd = os.path.join(self.prom_dir, "vmq.passwd")
        with open(passwd, "w", encoding="utf-8") as f:
            f.write(f"alice:{hash_password(b'secret')}\n")
        self.extra_config = ("plugins.vmq_passwd = on\n"
                             f"vmq_passwd.password_file = {passwd}\n"
                             "vmq_passwd.password_reload_interval = 0\n")
        yield super().setUp()
        config = os.path.join(self.prom_dir, "prometheus.yml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(prometheus_config(f"127.0.0.1:{self.http_port}"))
        self.addCleanup(self._stop_prometheus)
        for attempt in range(3):  # the free port may be taken before Prometheus binds it
            self.prom_port = free_port()
            self.prom = RunningProcess(binary, [
                f"--config.file={config}",
                f"--storage.tsdb.path={os.path.join(self.prom_dir, f'data{attempt}')}",
                f"--web.listen-address=127.0.0.1:{self.prom_port}",
                "--log.level=warn"])
            try:
                yield self.poll(self.prom_targets, lambda t: t and t[0]["health"] == "up",
                                PROMETHEUS_START, "Prometheus to scrape the broker (target up)")
                break
            except AssertionError:
                if attempt == 2 or b"address already in use" not in bytes(self.prom.proto.err):
                    raise

    def _stop(self) -> Any:
        """Stop the broker once (a test may stop it before the cleanup does)."""
        if getattr(self, "broker_stopped", False):
            return None
        self.broker_stopped = True
        return super()._stop()

    @inlineCallbacks
    def _stop_prometheus(self) -> Any:
        out, err, code = yield self.prom.stop(timeout=PROMETHEUS_START)
        self.assertIn(code, (0, -15), err[-2000:])

    @inlineCallbacks
    def prom_get(self, path: str) -> Any:
        """GET on Prometheus's HTTP API: the decoded JSON, or None while it
        does not answer yet (starting) or answers an error; fails once the
        process has exited."""
        url = f"http://127.0.0.1:{self.prom_port}{path}".encode()
        try:
            response = yield with_timeout(Agent(reactor).request(b"GET", url),
                                          REQUEST_TIMEOUT, f"GET {path}")
            body = yield with_timeout(readBody(response), REQUEST_TIMEOUT, f"GET {path}")
        except Exception:
            if self.prom.proto.ended.called:
                raise AssertionError(
                    f"prometheus exited: {bytes(self.prom.proto.err)!r}") from None
            return None
        if response.code != 200:
            return None
        return json.loads(body)

    @inlineCallbacks
    def prom_targets(self) -> Any:
        """The active scrape targets (``/api/v1/targets``), or None."""
        answer = yield self.prom_get("/api/v1/targets")
        return None if answer is None else answer["data"]["activeTargets"]

    @inlineCallbacks
    def query(self, promql: str) -> Any:
        """An instant query: the result vector, [{"metric": labels, "value": float}]."""
        answer = yield self.prom_get("/api/v1/query?query=" + quote(promql))
        self.assertIsNotNone(answer, promql)
        self.assertEqual(answer["data"]["resultType"], "vector", promql)
        return [{"metric": r["metric"], "value": float(r["value"][1])}
                for r in answer["data"]["result"]]

    @inlineCallbacks
    def poll(self, read: Callable[[], Any], done: Callable[[Any], bool],
             timeout: float, what: str) -> Any:
        """Call ``read()`` every ``POLL`` seconds until ``done(result)``; fails
        after ``timeout`` seconds with the last result."""
        last: Any = None
        for _ in range(int(timeout / POLL) + 1):
            last = yield read()
            if done(last):
                return last
            yield task.deferLater(reactor, POLL, lambda: None)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")

    def wait_query(self, promql: str, done: Callable[[Vector], bool]) -> Any:
        """The result of ``promql`` once ``done(result)`` holds (bounded)."""
        return self.poll(lambda: self.query(promql), done, SCRAPE_WAIT, promql)


def by_label(vector: Vector, label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): r["value"] for r in vector}


def one(vector: Vector) -> float:
    assert len(vector) == 1, vector
    return vector[0]["value"]


class DashboardQueryTests(PrometheusServerTestCase):

    @inlineCallbacks
    def test_dashboard_queries_resolve(self) -> None:
        """After paho traffic (a 3.1.1 subscriber to ``t/#`` at QoS 1, a 3.1.1
        publisher sending 4 QoS 0, 3 QoS 1 and one retained message, a 5.0
        publisher sending 2, a refused 3.1.1 login), the PromQL of a VerneMQ
        dashboard, by node, returns series carrying ``node`` whose values match the
        traffic: publishes received and sent, queue in/out, connections,
        subscriptions, retained messages, CONNACKs by return code, and rates above
        zero; process figures (utilization, memory) are there and plausible."""
        sub = self.paho(self.port, "sub", MQTTv311)
        pub = self.paho(self.port, "pub", MQTTv311)
        pub5 = self.paho(self.port, "pub5", MQTTv5)
        intruder = self.paho(self.port, "intruder", MQTTv311,
                             username="alice", password="wrong")

        def traffic() -> list[Any]:
            sub.connect()
            sub.subscribe("t/#", 1)
            pub.connect()
            pub5.connect()
            for i in range(4):
                pub.publish("t/q0", b"q0-%d" % i, 0)
            for i in range(3):
                pub.publish("t/q1", b"q1-%d" % i, 1)
            pub.publish("t/kept", b"retained", 1, retain=True)
            for i in range(2):
                pub5.publish("t/v5", b"v5-%d" % i, 1)
            code, _ = intruder.connect(expect_success=False)
            assert code == 134, code  # paho names 3.1.1 return code 4 as 5.0 does
            return sub.get_many(10)

        got = yield in_thread(traffic)
        self.assertEqual(len(got), 10)
        received, delivered = 10, 10

        # A scrape after the traffic is stored: the refused login's socket closed
        # last, so once Prometheus has it, the counters have their final values.
        yield self.wait_query("vernemq_socket_close", lambda v: len(v) == 1
                              and v[0]["value"] == 1)
        total = yield self.wait_query(
            "sum by (node) (vernemq_mqtt_publish_received)",
            lambda v: len(v) == 1 and v[0]["value"] == received)
        self.assertEqual(total[0]["metric"], {"node": NODE})

        # Every series a dashboard panel shows per node carries the node label.
        exact = {
            "sum by (node) (vernemq_active_mqtt_connections)": 3,
            "vernemq_total_active_connections": 3,
            "vernemq_active_mqttws_connections": 0,
            'vernemq_mqtt_publish_received{mqtt_version="4"}': 8,
            'vernemq_mqtt_publish_received{mqtt_version="5"}': 2,
            "sum by (node) (vernemq_mqtt_publish_sent)": delivered,
            "vernemq_queue_message_in": delivered,
            "vernemq_queue_message_out": delivered,
            "vernemq_queue_message_drop": 0,
            "vernemq_queue_processes": 3,
            "vernemq_router_subscriptions": 1,
            "vernemq_router_matches_local": delivered,
            "vernemq_retain_messages": 1,
            "vernemq_retain_memory": len("t/kept") + len("retained"),
            "sum by (node) (vernemq_mqtt_connect_received)": 4,
            "vernemq_socket_open - vernemq_socket_close": 4 - 1,
        }
        for promql, expected in exact.items():
            vector = yield self.query(promql)
            self.assertEqual(len(vector), 1, (promql, vector))
            self.assertEqual(vector[0]["metric"].get("node"), NODE, (promql, vector))
            self.assertEqual(vector[0]["value"], expected, promql)

        connacks = yield self.query(
            'sum by (return_code) (vernemq_mqtt_connack_sent{mqtt_version="4"})')
        codes = by_label(connacks, "return_code")
        self.assertEqual(codes["success"], 2)
        self.assertEqual(codes["bad_username_or_password"], 1)
        self.assertEqual(sum(codes.values()), 3)
        v5 = yield self.query(
            'sum by (reason_code) (vernemq_mqtt_connack_sent{mqtt_version="5"})')
        self.assertEqual(by_label(v5, "reason_code")["success"], 1)

        # Rates need two samples around the traffic: the scrape before it (the
        # target was up first) and the one just waited for.
        rates = [
            "sum by (node) (rate(vernemq_mqtt_publish_received[1m]))",
            "rate(vernemq_mqtt_publish_sent[1m])",
            "sum(rate(vernemq_queue_message_in[1m]))",
            "sum by (node) (rate(vernemq_queue_message_out[1m]))",
            "rate(vernemq_bytes_received[1m])",
            "rate(vernemq_bytes_sent[1m])",
            'sum by (node) (rate(vernemq_mqtt_connack_sent{mqtt_version="4"}[1m]))',
        ]
        for promql in rates:
            vector = yield self.query(promql)
            self.assertTrue(vector, promql)
            if promql.startswith("sum("):
                self.assertGreater(one(vector), 0, promql)
                continue
            for series in vector:
                self.assertEqual(series["metric"].get("node"), NODE, (promql, series))
            self.assertGreater(max(s["value"] for s in vector), 0, (promql, vector))
        sent = yield self.query("rate(vernemq_mqtt_publish_sent[1m])")
        self.assertEqual(sorted(s["metric"]["mqtt_version"] for s in sent), ["4", "5"])
        self.assertGreater(by_label(sent, "mqtt_version")["4"], 0)

        # Process figures: present per node, in their documented range.
        utilization = yield self.query("vernemq_system_utilization")
        self.assertEqual(utilization[0]["metric"].get("node"), NODE)
        self.assertTrue(0 <= one(utilization) <= 100, utilization)
        memory = yield self.query("vernemq_vm_memory_total")
        self.assertGreater(one(memory), 1_000_000)
        runtime = yield self.query("rate(vernemq_system_runtime[1m])")
        self.assertGreaterEqual(one(runtime), 0)
        threads = yield self.query("vernemq_system_process_count")
        self.assertGreaterEqual(one(threads), 1)

    @inlineCallbacks
    def test_stopped_broker_target_goes_down(self) -> None:
        """When the broker process stops, Prometheus's next scrape fails: the
        target's health turns ``down`` and ``up{job="vmqtw"}`` is 0, as an alert
        rule on a dead VerneMQ node expects."""
        yield self._stop()
        targets = yield self.poll(self.prom_targets,
                                  lambda t: t and t[0]["health"] == "down",
                                  SCRAPE_WAIT, "the target to turn down")
        self.assertTrue(targets[0]["lastError"], targets)
        up = yield self.wait_query('up{job="vmqtw"}', lambda v: len(v) == 1
                                   and v[0]["value"] == 0)
        self.assertEqual(up[0]["metric"]["instance"], f"127.0.0.1:{self.http_port}")


class UtilizationTests(SynchronousTestCase):

    def test_utilization_is_a_bounded_percentage_of_all_cpus(self) -> None:
        """``system_utilization`` is CPU seconds over wall seconds times the CPUs
        the process may use, in percent, clamped to 0..100 (0 when no time passed)."""
        from vmqtw.metrics import _utilization
        cpus = len(os.sched_getaffinity(0))
        self.assertEqual(_utilization(0.5 * cpus, 1.0), 50)
        self.assertEqual(_utilization(3.0 * cpus, 1.0), 100)
        self.assertEqual(_utilization(1.0, 0.0), 0)
        self.assertEqual(_utilization(-1.0, 1.0), 0)
