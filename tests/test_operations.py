"""Operating a broker process as an operator does: ``python -m vmqtw`` with a
tcp and an http listener (port 0), real paho clients, Prometheus scrapes of
``/metrics`` parsed with prometheus_client's parser, the health check a load
balancer polls, and ``vmq-admin`` (the script) against the same process."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

from paho.mqtt.client import MQTTv5, MQTTv311
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from tests.support import BrokerTestCase, RunningProcess, in_thread, run_process

PROCESS_TIMEOUT = 30.0
Labels = tuple[tuple[str, str], ...]


def parse_exposition(text: str) -> dict[tuple[str, Labels], float]:
    """(name, labels without ``node``) -> value, through prometheus_client's parser
    (which names a counter's samples NAME_total: the family has the name served)."""
    out: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "node"))
            name = family.name if family.type == "counter" else sample.name
            out[(name, labels)] = sample.value
    return out


class RunningBrokerTestCase(BrokerTestCase):
    """A broker process with ``listener.tcp.default`` and ``listener.http.default``."""

    timeout = 120
    extra_config = ""

    @inlineCallbacks
    def setUp(self) -> Any:
        # short: the admin socket's path must fit in 108 bytes
        self.dir = tempfile.mkdtemp(prefix="vmqtw-ops-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.config = os.path.join(self.dir, "broker.conf")
        with open(self.config, "w", encoding="utf-8") as f:
            f.write("allow_anonymous = on\nnodename = VerneMQ@ops\n"
                    "listener.tcp.default = 127.0.0.1:0\n"
                    "listener.tcp.default.allowed_protocol_versions = 3,4,5\n"
                    "listener.http.default = 127.0.0.1:0\n" + self.extra_config)
        self.proc = RunningProcess(sys.executable, ["-m", "vmqtw", "-c", self.config])
        self.addCleanup(self._stop)
        m = yield self.proc.wait_for_output(rb"listener tcp\.default on 127\.0\.0\.1:(\d+)",
                                            timeout=PROCESS_TIMEOUT)
        self.port = int(m.group(1))
        m = yield self.proc.wait_for_output(rb"listener http\.default on 127\.0\.0\.1:(\d+)",
                                            timeout=PROCESS_TIMEOUT)
        self.http_port = int(m.group(1))
        yield self.proc.wait_for_output(rb"admin channel on ", timeout=PROCESS_TIMEOUT)

    @inlineCallbacks
    def _stop(self) -> Any:
        out, err, code = yield self.proc.stop(timeout=PROCESS_TIMEOUT)
        self.assertIn(code, (0, -15), (out[-2000:], err))
        self.assertNotIn(b"Traceback", out + err)

    @inlineCallbacks
    def get(self, path: str, headers: dict[bytes, list[bytes]] | None = None) -> Any:
        """GET on the http listener: (status code, body)."""
        url = f"http://127.0.0.1:{self.http_port}{path}".encode()
        response = yield Agent(reactor).request(b"GET", url, Headers(headers or {}))
        body = yield readBody(response)
        return response.code, body

    @inlineCallbacks
    def scrape(self) -> Any:
        code, body = yield self.get("/metrics")
        self.assertEqual(code, 200)
        return parse_exposition(body.decode())

    @inlineCallbacks
    def vmq_admin(self, *args: str) -> Any:
        """The vmq-admin script on this broker's config: (stdout, stderr, exit code)."""
        result = yield run_process(sys.executable, ["-m", "vmqtw.admin.cli", "-c",
                                                    self.config, *args])
        return result

    @inlineCallbacks
    def admin_ok(self, *args: str) -> Any:
        out, err, code = yield self.vmq_admin(*args)
        self.assertEqual(code, 0, (out, err))
        return out.decode()


def v(version: str, **labels: str) -> Labels:
    return tuple(sorted({"mqtt_version": version, **labels}.items()))


class PrometheusTests(RunningBrokerTestCase):

    @inlineCallbacks
    def test_counters_follow_paho_traffic(self) -> None:
        """After real paho traffic (a 3.1.1 subscriber, a 3.1.1 publisher sending 5
        QoS 0 and 3 QoS 1 messages, a 5.0 publisher sending one), a scrape parsed by
        prometheus_client shows VerneMQ's counters moved by exactly those amounts, by
        mqtt_version and CONNACK code, and the connection gauges count the clients."""
        before = yield self.scrape()
        sub = self.paho(self.port, "sub", MQTTv311)
        pub = self.paho(self.port, "pub", MQTTv311)
        pub5 = self.paho(self.port, "pub5", MQTTv5)

        def traffic() -> list[Any]:
            sub.connect()
            sub.subscribe("t/#", 1)
            pub.connect()
            pub5.connect()
            for i in range(5):
                pub.publish("t/a", b"q0-%d" % i, 0)
            for i in range(3):
                pub.publish("t/b", b"q1-%d" % i, 1)
            pub5.publish("t/c", b"v5", 0)
            return sub.get_many(9)

        got = yield in_thread(traffic)
        self.assertEqual(len(got), 9)
        after = yield self.scrape()

        def moved(name: str, labels: Labels = ()) -> float:
            ns = "vernemq_" + name
            return after[(ns, labels)] - before[(ns, labels)]

        self.assertEqual(moved("mqtt_connect_received", v("4")), 2)
        self.assertEqual(moved("mqtt_connect_received", v("5")), 1)
        self.assertEqual(moved("mqtt_connack_sent", v("4", return_code="success")), 2)
        self.assertEqual(moved("mqtt_connack_sent", v("5", reason_code="success")), 1)
        self.assertEqual(moved("mqtt_subscribe_received", v("4")), 1)
        self.assertEqual(moved("mqtt_suback_sent", v("4")), 1)
        self.assertEqual(moved("mqtt_publish_received", v("4")), 8)
        self.assertEqual(moved("mqtt_publish_received", v("5")), 1)
        self.assertEqual(moved("mqtt_puback_sent", v("4")), 3)
        self.assertEqual(moved("mqtt_publish_sent", v("4")), 9)  # all to the 3.1.1 subscriber
        self.assertEqual(moved("router_matches_local"), 9)
        self.assertEqual(moved("queue_message_in"), 9)
        self.assertEqual(moved("queue_message_out"), 9)
        self.assertEqual(moved("socket_open"), 3)
        self.assertGreater(moved("bytes_received"), 9 * 4)
        self.assertGreater(moved("bytes_sent"), 9 * 4)
        self.assertEqual(after[("vernemq_active_mqtt_connections", ())], 3)
        self.assertEqual(after[("vernemq_queue_processes", ())], 3)
        self.assertEqual(after[("vernemq_router_subscriptions", ())], 1)

        yield in_thread(pub.disconnect)
        final = yield self.scrape()
        self.assertEqual(final[("vernemq_mqtt_disconnect_received", v("4"))]
                         - before[("vernemq_mqtt_disconnect_received", v("4"))], 1)
        self.assertEqual(final[("vernemq_socket_close", ())]
                         - before[("vernemq_socket_close", ())], 1)
        self.assertEqual(final[("vernemq_active_mqtt_connections", ())], 2)

    @inlineCallbacks
    def test_every_series_has_the_node_label(self) -> None:
        """Every series of the scrape carries node="<nodename>" (the configured
        nodename), and counters have no _total suffix, as VerneMQ's dashboards expect."""
        code, body = yield self.get("/metrics")
        self.assertEqual(code, 200)
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                self.assertEqual(sample.labels.get("node"), "VerneMQ@ops", sample)
        self.assertIn(b"\nvernemq_mqtt_publish_received{node=", body)
        self.assertNotIn(b"vernemq_mqtt_publish_received_total", body)


class HealthTests(RunningBrokerTestCase):

    @inlineCallbacks
    def test_health_follows_vmq_admin_listener_stop(self) -> None:
        """/health answers 200 OK; after `vmq-admin listener stop` of the MQTT listener
        it answers 503 DOWN naming it (a load balancer takes the node out) while
        /health/ping stays OK; after `listener restart` it is 200 again.  listener show
        lists the http listener too."""
        code, body = yield self.get("/health")
        self.assertEqual((code, json.loads(body)), (200, {"status": "OK"}))
        out = yield self.admin_ok("listener", "show", "--format=json")
        rows = {r["type"]: r for r in json.loads(out)["table"]}
        self.assertEqual(sorted(rows), ["http", "mqtt"])
        self.assertEqual(int(rows["http"]["port"]), self.http_port)
        self.assertEqual(rows["http"]["status"], "running")
        yield self.admin_ok("listener", "stop", "address=127.0.0.1", f"port={self.port}")
        code, body = yield self.get("/health")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body), {
            "status": "DOWN", "reasons": ["Listeners are not ready: [{mqtt,suspended}]"]})
        code, body = yield self.get("/health/listeners")
        self.assertEqual((code, json.loads(body)["reason"]),
                         (503, "Listeners are not ready: [{mqtt,suspended}]"))
        code, _ = yield self.get("/health/ping")
        self.assertEqual(code, 200)
        yield self.admin_ok("listener", "restart", "address=127.0.0.1", f"port={self.port}")
        code, _ = yield self.get("/health")
        self.assertEqual(code, 200)


class LogFileTests(BrokerTestCase):

    @inlineCallbacks
    def test_log_file_only_while_running(self) -> None:
        """log.console = file: the broker's log goes to log.console.file from its start
        to the end of its stop, and nothing after that."""
        from vmqtw import logs
        from tests.support import stop_broker
        path = os.path.abspath(os.path.join(self.mktemp(), "console.log"))
        service = self.start_broker("allow_anonymous = on\nlistener.tcp.default = "
                                    f"127.0.0.1:0\nlog.console = file\n"
                                    f"log.console.file = {path}\n")
        logs.Logger(namespace="vmqtw.test").info("while running")
        yield stop_broker(service)
        logs.Logger(namespace="vmqtw.test").info("after stopping")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.assertIn("listener tcp.default on 127.0.0.1:", text)
        self.assertIn("while running", text)
        self.assertNotIn("after stopping", text)


class AdminTests(RunningBrokerTestCase):

    @inlineCallbacks
    def test_sessions_retained_and_metrics(self) -> None:
        """session show, session unsubscribe, disconnect clients, retain show/delete,
        metrics show and metrics reset against a broker process with paho clients."""
        a = self.paho(self.port, "client-a", MQTTv311)
        b = self.paho(self.port, "client-b", MQTTv311)

        def setup() -> None:
            a.connect()
            a.subscribe("x/#", 0)
            b.connect()
            b.publish("keep/me", b"kept", 1, retain=True)

        yield in_thread(setup)
        out = yield self.admin_ok("session", "show", "--client_id", "--is_online",
                                  "--format=json")
        rows = sorted((r["client_id"], r["is_online"]) for r in json.loads(out)["table"])
        self.assertEqual(rows, [("client-a", True), ("client-b", True)])
        out = yield self.admin_ok("session", "show", "--client_id=client-a", "--topic",
                                  "--format=json")
        self.assertEqual([r["topic"] for r in json.loads(out)["table"]], ["x/#"])
        out = yield self.admin_ok("session", "unsubscribe", "client-id=client-a", "topic=x/#")
        self.assertEqual(out, "Done\n")
        out = yield self.admin_ok("retain", "show", "--format=json")
        self.assertEqual(json.loads(out)["table"], [{"payload": "kept", "topic": "keep/me"}])
        yield self.admin_ok("retain", "delete", "--topic=keep/me")
        out = yield self.admin_ok("retain", "show")
        self.assertEqual(out, "")
        out = yield self.admin_ok("metrics", "show")
        self.assertIn("counter.mqtt_connect_received = 2\n", out)
        self.assertIn("gauge.active_mqtt_connections = 2\n", out)
        out = yield self.admin_ok("metrics", "reset")
        self.assertEqual(out, "Done\n")
        out = yield self.admin_ok("metrics", "show")
        self.assertIn("counter.mqtt_connect_received = 0\n", out)
        out = yield self.admin_ok("disconnect", "clients", "client-ids=client-a,client-b")
        self.assertEqual(out, "Done\n")
        yield in_thread(a.wait_disconnected)
        yield in_thread(b.wait_disconnected)

    @inlineCallbacks
    def test_api_keys_guard_the_http_api(self) -> None:
        """api-key create makes a key the HTTP API accepts (Basic user name or
        x-api-key); a wrong key gets 401 with VerneMQ's realm; api-key delete revokes it;
        plugin show, cluster show, log show config and log level answer."""
        key = (yield self.admin_ok("api-key", "create")).strip()
        code, body = yield self.get("/api/v1/cluster/show", {b"x-api-key": [key.encode()]})
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["table"][0]["Node"], "VerneMQ@ops")
        code, _ = yield self.get("/api/v1/cluster/show", {b"x-api-key": [b"wrong"]})
        self.assertEqual(code, 401)
        yield self.admin_ok("api-key", "add", "key=OperatorsOwnKey1", "scope=mgmt")
        import base64
        basic = b"Basic " + base64.b64encode(b"OperatorsOwnKey1:")
        code, _ = yield self.get("/api/v1/session/show", {b"authorization": [basic]})
        self.assertEqual(code, 200)
        yield self.admin_ok("api-key", "delete", f"key={key}")
        code, _ = yield self.get("/api/v1/cluster/show", {b"x-api-key": [key.encode()]})
        self.assertEqual(code, 401)
        out = yield self.admin_ok("plugin", "show")
        self.assertEqual(out, "")
        out = yield self.admin_ok("cluster", "show")
        self.assertIn("VerneMQ@ops", out)
        out = yield self.admin_ok("log", "show", "config")
        self.assertIn("| default | info ", out)
        out = yield self.admin_ok("log", "level", "logger=console", "level=debug")
        self.assertEqual(out, "Done\n")
