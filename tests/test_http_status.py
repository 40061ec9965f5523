"""The HTTP modules wired to a running broker (BrokerService + Operations),
and the status page rendered by headless Chromium."""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource

from tests.support import BrokerTestCase, missing, run_process
from vmqtw.admin.ops import Operations


class CountingStatus(Resource):
    """status.json that simulates traffic: every fetch adds 30 received and
    45 sent PUBLISHes, so the page's rates have something to show."""

    isLeaf = True

    def __init__(self, inner: Any, ops: Operations) -> None:
        super().__init__()
        self.inner = inner
        self.ops = ops

    def render_GET(self, request: Any) -> bytes:
        self.ops.metrics.inc("mqtt_publish_received", 30, mqtt_version="4")
        self.ops.metrics.inc("mqtt_publish_sent", 45, mqtt_version="5")
        return self.inner.render_GET(request)


class HttpListenerTestCase(BrokerTestCase):

    def setUp(self) -> None:
        self.state = tempfile.mkdtemp(prefix="vmqtw-http-")
        self.addCleanup(shutil.rmtree, self.state, True)
        self.service = self.start_broker(
            "allow_anonymous = on\nlistener.tcp.default = 127.0.0.1:0\n"
            f"persistent_store.directory = {self.state}\n")
        self.ops = Operations(self.service)
        site = self.ops.http_site({}, None)
        self.root = site.resource
        self.web = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.web.stopListening)
        self.base = f"http://127.0.0.1:{self.web.getHost().port}"

    @inlineCallbacks
    def get(self, path: str) -> Any:
        response = yield Agent(reactor).request(b"GET", (self.base + path).encode())
        body = yield readBody(response)
        return response.code, body


class WiredTests(HttpListenerTestCase):

    @inlineCallbacks
    def test_scrape_a_running_broker(self) -> None:
        """A Prometheus scrape of a running broker parses and counts its clients."""
        yield self.connected_raw_client(self.service, "one")
        code, body = yield self.get("/metrics")
        self.assertEqual(code, 200)
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        self.assertEqual(fams["vernemq_active_mqtt_connections"].samples[0].value, 1)
        self.assertEqual(fams["vernemq_queue_processes"].samples[0].value, 1)

    @inlineCallbacks
    def test_health_follows_listener_control(self) -> None:
        """/health turns 503 when an admin stops a listener, 200 once it restarts."""
        code, _ = yield self.get("/health")
        self.assertEqual(code, 200)
        port = self.port_of(self.service)
        self.assertEqual(self.ops.admin.run(
            ["listener", "stop", "address=127.0.0.1", f"port={port}"]).code, 0)
        code, body = yield self.get("/health")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["reasons"],
                         ["Listeners are not ready: [{mqtt,suspended}]"])
        self.assertEqual(self.ops.admin.run(
            ["listener", "restart", "address=127.0.0.1", f"port={port}"]).code, 0)
        code, _ = yield self.get("/health/listeners")
        self.assertEqual(code, 200)

    @inlineCallbacks
    def test_status_json_lists_the_listener(self) -> None:
        """status.json shows the broker's real listener with its bound port."""
        code, body = yield self.get("/status.json")
        listeners = json.loads(body)[0]["VerneMQ@127.0.0.1"]["listeners"]
        self.assertEqual(listeners, [{"type": "mqtt", "status": "running", "ip": "127.0.0.1",
                                      "port": self.port_of(self.service), "mountpoint": [],
                                      "max_conns": 10000}])


class StatusPageBrowserTests(HttpListenerTestCase):

    timeout = 90

    @inlineCallbacks
    def test_page_shows_live_numbers_in_chromium(self) -> None:
        """Headless Chromium renders /status: sessions online, the listener table
        and non-zero message rates computed from successive status.json fetches."""
        chromium = shutil.which("chromium")
        if chromium is None:
            missing("chromium is not installed: run `apt-get install -y chromium`")
        yield self.connected_raw_client(self.service, "one")
        yield self.connected_raw_client(self.service, "two")
        self.root.putChild(b"status.json",
                           CountingStatus(self.root.children[b"status.json"], self.ops))
        profile = tempfile.mkdtemp(prefix="vmqtw-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        out, err, code = yield run_process(chromium, [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            "--virtual-time-budget=4000", "--dump-dom",
            self.base + "/status?refresh=1000"], timeout=60)
        self.assertEqual(code, 0, err[-2000:])
        dom = out.decode()

        def value(name: str) -> str:
            m = re.search(rf'id="{name}">([^<]*)<', dom)
            self.assertIsNotNone(m, f"#{name} missing from {dom[:500]}")
            return m.group(1)  # type: ignore[union-attr]

        self.assertEqual(value("num_online"), "2")
        self.assertEqual(value("num_offline"), "0")
        self.assertNotEqual(value("updated"), "never")
        self.assertFalse(value("updated").startswith("failed"))
        self.assertGreater(float(value("rate_in")), 0)
        self.assertGreater(float(value("rate_out")), float(value("rate_in")))
        port = self.port_of(self.service)
        self.assertIn(f"<td>mqtt</td><td>running</td><td>127.0.0.1</td><td>{port}</td>", dom)
