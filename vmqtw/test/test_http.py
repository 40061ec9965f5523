"""The HTTP modules on a real twisted.web Site (127.0.0.1, port 0), fetched
with twisted.web.client.Agent."""
from __future__ import annotations

import base64
import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.server import Site
from zope.interface import implementer

from vmqtw.admin.apikeys import ApiKeys
from vmqtw.admin.commands import Admin
from vmqtw.auth.api import IAuthOnPublish, IAuthOnRegister, IAuthOnSubscribe, OK, Error, Ok
from vmqtw.codec import Publish as PublishPacket
from vmqtw.http.api import command_line
from vmqtw.http.pub import PubSettings
from vmqtw.http.site import ALL_MODULES, build_root
from vmqtw.metrics import Metrics
from vmqtw.test.test_protocol import BASE, Harness


@implementer(IAuthOnRegister, IAuthOnPublish, IAuthOnSubscribe)
class Gate:
    """user "good"/password "pw" may connect; nobody may publish to "secret/#";
    publishing to "rewrite" is moved to "rewritten"."""

    def __init__(self) -> None:
        self.registers: list[Any] = []

    def auth_on_register(self, request: Any) -> Any:
        self.registers.append(request)
        if request.username == "good" and request.password == b"pw":
            return OK
        return Error("invalid_credentials")

    def auth_on_subscribe(self, client: Any, topics: Any) -> Any:
        return OK

    def auth_on_publish(self, client: Any, topic: str, payload: bytes, qos: int,
                        retain: bool) -> Any:
        if topic.startswith("secret/"):
            return Error("not_authorized")
        if topic == "rewrite":
            return Ok({"topic": "rewritten"})
        return OK


class Listeners:
    def __init__(self) -> None:
        self.rows = [{"type": "mqtt", "status": "running", "ip": "127.0.0.1", "port": 1883,
                      "mountpoint": "", "max_conns": 10000}]

    def __call__(self) -> list[dict[str, Any]]:
        return self.rows


class HttpTestCase(TestCase):

    config = BASE
    modules: tuple[str, ...] = ALL_MODULES
    auth_modes: dict[str, str] = {}

    def setUp(self) -> None:
        self.gate = Gate()
        self.hn = Harness(self.config, plugins=[("gate", self.gate)])
        self.authorizer = self.hn.authorizer
        self.metrics = Metrics(broker=self.hn.broker)
        self.keys = ApiKeys(None)
        self.admin = Admin(self.hn.broker, self.metrics, apikeys=self.keys)
        self.listeners = Listeners()
        root = build_root(self.admin, self.metrics, self.listeners, self.keys, self.modules,
                          self.auth_modes, self.authorizer, PubSettings())
        self.port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.agent = Agent(reactor)

    @inlineCallbacks
    def fetch(self, path: str, method: bytes = b"GET", headers: dict[str, str] | None = None,
              body: bytes | None = None) -> Any:
        from twisted.web.client import FileBodyProducer
        from io import BytesIO
        url = f"http://127.0.0.1:{self.port.getHost().port}{path}".encode()
        hdrs = Headers({k: [v] for k, v in (headers or {}).items()})
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        response = yield self.agent.request(method, url, hdrs, producer)
        data = yield readBody(response)
        return response, data


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:ignored".encode()).decode()}


class HealthTests(HttpTestCase):

    @inlineCallbacks
    def test_health_ok(self) -> None:
        """All listeners running: 200 {"status":"OK"} on each health route."""
        for path in ("/health", "/health/ping", "/health/listeners"):
            response, body = yield self.fetch(path)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(json.loads(body), {"status": "OK"})
            self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                             [b"application/json"])

    @inlineCallbacks
    def test_health_down_when_a_listener_is_suspended(self) -> None:
        """A listener not running: 503 DOWN with reasons (reason for /listeners);
        /health/ping stays OK."""
        self.listeners.rows[0]["status"] = "suspended"
        response, body = yield self.fetch("/health")
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(body), {
            "status": "DOWN", "reasons": ["Listeners are not ready: [{mqtt,suspended}]"]})
        response, body = yield self.fetch("/health/listeners")
        self.assertEqual(json.loads(body)["reason"],
                         "Listeners are not ready: [{mqtt,suspended}]")
        response, _ = yield self.fetch("/health/ping")
        self.assertEqual(response.code, 200)

    @inlineCallbacks
    def test_health_ignores_api_keys(self) -> None:
        """Health answers even when every module wants a key."""
        self.keys.add("k1", "health")
        response, _ = yield self.fetch("/health")
        self.assertEqual(response.code, 200)


class MetricsTests(HttpTestCase):

    @inlineCallbacks
    def test_scrape_parses(self) -> None:
        """/metrics serves the text format that prometheus_client parses, with
        live values from the broker."""
        self.hn.subscriber("s", ("t", 0))
        self.metrics.inc("mqtt_publish_received", 7, mqtt_version="5")
        response, body = yield self.fetch("/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0]
                        .startswith(b"text/plain; version=0.0.4"))
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        values = {s.labels.get("mqtt_version"): s.value
                  for s in fams["vernemq_mqtt_publish_received"].samples}
        self.assertEqual(values, {"4": 0, "5": 7})
        self.assertEqual(fams["vernemq_router_subscriptions"].samples[0].value, 1)
        self.assertEqual(fams["vernemq_active_mqtt_connections"].samples[0].value, 1)


class MetricsWithKeyTests(HttpTestCase):
    auth_modes = {"vmq_metrics_http": "apikey"}

    @inlineCallbacks
    def test_metrics_scope(self) -> None:
        """With auth.mode apikey, /metrics needs a key of scope metrics."""
        response, _ = yield self.fetch("/metrics")
        self.assertEqual(response.code, 401)
        self.keys.add("m1", "metrics")
        self.keys.add("g1", "mgmt")
        response, _ = yield self.fetch("/metrics", headers={"x-api-key": "g1"})
        self.assertEqual(response.code, 401)
        response, _ = yield self.fetch("/metrics", headers={"x-api-key": "m1"})
        self.assertEqual(response.code, 200)


class StatusTests(HttpTestCase):

    @inlineCallbacks
    def test_status_json_shape(self) -> None:
        """/status.json: a one-element array keyed by node, VerneMQ's fields,
        listener mountpoint "" written as []."""
        self.hn.connected("on")
        off = self.hn.connected("off", clean=False)
        off.lose()
        p = self.hn.connected("p")
        p.publish("r", b"x", retain=True)
        self.metrics.inc("mqtt_publish_received", 2, mqtt_version="4")
        response, body = yield self.fetch("/status.json")
        self.assertEqual(response.code, 200)
        doc = json.loads(body)
        self.assertEqual(len(doc), 1)
        node = doc[0]["VerneMQ@127.0.0.1"]
        self.assertEqual((node["num_online"], node["num_offline"]), (2, 1))
        self.assertEqual(node["msg_in"], 2)
        self.assertEqual(node["num_retained"], 1)
        self.assertEqual(node["mystatus"], [{"VerneMQ@127.0.0.1": True}])
        self.assertEqual(node["listeners"], [{"type": "mqtt", "status": "running",
                                              "ip": "127.0.0.1", "port": 1883,
                                              "mountpoint": [], "max_conns": 10000}])
        for key in ("msg_out", "queue_in", "queue_out", "queue_drop", "queue_unhandled",
                    "num_subscriptions", "matches_local", "matches_remote", "version"):
            self.assertIn(key, node)

    @inlineCallbacks
    def test_status_page(self) -> None:
        """/status is a self-contained HTML page (no external assets)."""
        response, body = yield self.fetch("/status")
        self.assertEqual(response.code, 200)
        self.assertIn(b"<canvas", body)
        self.assertNotIn(b"src=\"http", body)
        self.assertNotIn(b"<link", body)


class ApiV1Tests(HttpTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.keys.add("mgmtkey", "mgmt")

    @inlineCallbacks
    def test_needs_a_key(self) -> None:
        """No key or a bad key: 401 with VerneMQ's realm header; a good key in
        Basic (user name) or x-api-key works."""
        for headers in ({}, basic("wrong"), {"x-api-key": "wrong"},
                        {"Authorization": "Basic !!!"}, {"Authorization": "Bearer mgmtkey"}):
            response, _ = yield self.fetch("/api/v1/session/show", headers=headers)
            self.assertEqual(response.code, 401, headers)
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                             [b'Authorization realm="VerneMQ"'])
        for headers in (basic("mgmtkey"), {"x-api-key": "mgmtkey"}):
            response, body = yield self.fetch("/api/v1/session/show", headers=headers)
            self.assertEqual(response.code, 200)

    @inlineCallbacks
    def test_commands_as_json(self) -> None:
        """Path words and query items make the command; the answer is the JSON writer's."""
        self.hn.connected("c1")
        response, body = yield self.fetch("/api/v1/session/show?--client_id&--limit=5",
                                          headers=basic("mgmtkey"))
        self.assertEqual(json.loads(body), {"type": "table", "table": [{"client_id": "c1"}]})
        response, body = yield self.fetch("/api/v1/sessions", headers=basic("mgmtkey"))
        self.assertEqual(json.loads(body)["table"][0]["client_id"], "c1")
        response, body = yield self.fetch("/api/v1/session/disconnect?client-id=c1&--cleanup",
                                          headers=basic("mgmtkey"))
        self.assertEqual(json.loads(body), {"type": "text", "text": "Done"})
        self.assertEqual(self.hn.broker.sessions, {})

    @inlineCallbacks
    def test_bad_command_is_400_empty(self) -> None:
        """A command that does not parse: 400 with an empty body; `cluster`
        maps to the nonexistent `cluster status`, as in VerneMQ."""
        for path in ("/api/v1/nope", "/api/v1/cluster", "/api/v1/session/show?--bad"):
            response, body = yield self.fetch(path, headers=basic("mgmtkey"))
            self.assertEqual((response.code, body), (400, b""), path)

    @inlineCallbacks
    def test_options_cors(self) -> None:
        """OPTIONS answers with VerneMQ's CORS headers."""
        response, _ = yield self.fetch("/api/v1/session/show", method=b"OPTIONS",
                                       headers=basic("mgmtkey"))
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"*"])

    def test_aliases(self) -> None:
        """sessions, listeners, plugins and cluster map as VerneMQ's API does."""
        self.assertEqual(command_line(["sessions"], []), ["session", "show", "--format=json"])
        self.assertEqual(command_line(["sessions", "disconnect"], [("client-id", "a")]),
                         ["session", "disconnect", "client-id=a", "--format=json"])
        self.assertEqual(command_line(["listeners"], []), ["listener", "show", "--format=json"])
        self.assertEqual(command_line(["cluster"], []), ["cluster", "status", "--format=json"])
        self.assertEqual(command_line(["cluster", "show"], [("--x", None)]),
                         ["cluster", "show", "--x", "--format=json"])


class ApiV2Tests(HttpTestCase):

    @inlineCallbacks
    def test_client_and_disconnect(self) -> None:
        """v2 client tells online/offline/unknown and topics; disconnect closes."""
        self.keys.add("k2", "api2")
        c = self.hn.subscriber("c", ("a/b", 1))
        response, body = yield self.fetch("/api/v2/client?client_id=c&topics",
                                          headers=basic("k2"))
        self.assertEqual(json.loads(body), {"status": "online", "topics": {"a/b": 1}})
        response, body = yield self.fetch("/api/v2/client?client_id=zz", headers=basic("k2"))
        self.assertEqual(json.loads(body), {"status": "unknown"})
        response, body = yield self.fetch("/api/v2/disconnect?client_id=c",
                                          headers=basic("k2"))
        self.assertEqual(json.loads(body), {"status": "ok"})
        self.assertTrue(c.closed)
        response, body = yield self.fetch("/api/v2/other", headers=basic("k2"))
        self.assertEqual((response.code, json.loads(body)), (400, "invalid_command"))


class PubTests(HttpTestCase):
    config = "listener.tcp.t = 127.0.0.1:1883\nallow_anonymous = off\nmax_message_size = 64\n"

    def setUp(self) -> None:
        super().setUp()
        self.keys.add("pubkey", "httppub")
        self.reader = self.hn.subscriber("reader", ("#", 1), username="good", password=b"pw")

    def post(self, path: str, body: bytes, ctype: str = "application/json",
             **headers: str) -> Any:
        return self.fetch(path, b"POST", {"content-type": ctype, "x-api-key": "pubkey",
                                          **headers}, body)

    def received(self) -> dict[str, bytes]:
        return {p.topic: p.payload for p in self.reader.packets()
                if isinstance(p, PublishPacket)}

    @inlineCallbacks
    def test_json_body(self) -> None:
        """A JSON body with credentials is published to subscribers."""
        response, body = yield self.post("/restmqtt/api/v1/publish", json.dumps({
            "topic": "a/b", "payload": "hello", "qos": 1, "user": "good",
            "password": "pw", "client_id": "web"}).encode())
        self.assertEqual((response.code, body), (200, b"Published"))
        self.assertEqual(self.received(), {"a/b": b"hello"})
        self.assertEqual(self.gate.registers[-1].client_id, "web")

    @inlineCallbacks
    def test_header_and_query_styles_and_base64(self) -> None:
        """Topic in a header or the query takes the body as payload; ?encoding=base64."""
        response, _ = yield self.post("/restmqtt/api/v1/publish", b"raw",
                                      "application/octet-stream", topic="h/1", user="good",
                                      password="pw", retain="true", qos="1")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.hn.broker.store.retained_count(), 1)
        response, _ = yield self.post("/restmqtt/api/v1/publish?topic=q/1&user=good"
                                      "&password=pw", b"qq", "application/octet-stream")
        self.assertEqual(response.code, 200)
        response, _ = yield self.post("/restmqtt/api/v1/publish?encoding=base64", json.dumps({
            "topic": "b/1", "payload": base64.b64encode(b"\x00\x01").decode(),
            "user": "good", "password": "pw"}).encode())
        self.assertEqual(response.code, 200)
        self.assertEqual(self.received(), {"h/1": b"raw", "q/1": b"qq", "b/1": b"\x00\x01"})

    @inlineCallbacks
    def test_auth_failures(self) -> None:
        """Bad credentials: 401; an ACL refusal: 403; a bad API key: 401."""
        response, body = yield self.post("/restmqtt/api/v1/publish", json.dumps({
            "topic": "a", "payload": "x", "user": "good", "password": "no"}).encode())
        self.assertEqual((response.code, body), (401, b"Authentication failure."))
        response, body = yield self.post("/restmqtt/api/v1/publish", json.dumps({
            "topic": "secret/x", "payload": "x", "user": "good", "password": "pw"}).encode())
        self.assertEqual((response.code, body), (403, b"Authorization failure."))
        response, _ = yield self.fetch("/restmqtt/api/v1/publish", b"POST",
                                       {"content-type": "application/json",
                                        "x-api-key": "nope"}, b"{}")
        self.assertEqual(response.code, 401)
        self.assertEqual(self.received(), {})
        self.assertEqual(self.metrics.aggregated()["http_pub_auth_error"], ("counter", 2))

    @inlineCallbacks
    def test_modifiers_rewrite_topic(self) -> None:
        """A topic modifier from auth_on_publish is honoured."""
        response, _ = yield self.post("/restmqtt/api/v1/publish", json.dumps({
            "topic": "rewrite", "payload": "x", "user": "good", "password": "pw"}).encode())
        self.assertEqual(response.code, 200)
        self.assertEqual(self.received(), {"rewritten": b"x"})

    @inlineCallbacks
    def test_bad_input(self) -> None:
        """Bad topics, QoS, retain, JSON, encodings, sizes and content types are refused."""
        cases = [
            ({"topic": "$SYS/x", "payload": "x"}, "", 400, b"Invalid topic"),
            ({"topic": "a/#", "payload": "x"}, "", 400, b"Invalid topic"),
            ({"topic": "a", "payload": "x", "qos": 3}, "", 400,
             b"Invalid QoS value. Must be 0, 1 or 2."),
            ({"topic": "a", "payload": "x", "retain": "maybe"}, "", 400,
             b"Invalid retain flag. Must be true or false."),
            ({"topic": "a", "payload": "x" * 65}, "", 413, b"Payload too large."),
            ({"topic": "a", "payload": "x"}, "?encoding=rot13", 400,
             b"Only encoding plain or base64 allows as URL parameter"),
            ({"topic": "a", "payload": "%%%"}, "?encoding=base64", 400,
             b"Unknown payload encoding"),
        ]
        for doc, query, code, text in cases:
            doc.update(user="good", password="pw")
            response, body = yield self.post("/restmqtt/api/v1/publish" + query,
                                             json.dumps(doc).encode())
            self.assertEqual((response.code, body), (code, text), doc)
        response, body = yield self.post("/restmqtt/api/v1/publish", b"{nope")
        self.assertEqual((response.code, body), (400, b"Content is not a valid json"))
        response, _ = yield self.post("/restmqtt/api/v1/publish", b"x", "text/plain")
        self.assertEqual(response.code, 415)
        totals = self.metrics.aggregated()
        self.assertEqual(totals["http_pub_api_error"], ("counter", 9))
        self.assertEqual(totals["http_pub_published"], ("counter", 0))
        response, body = yield self.post("/restmqtt/api/v1/publish?topic=a", b"x",
                                         "application/octet-stream", topic="b")
        self.assertEqual(body, b"Parameters found in header as well as url-encoded")
        self.assertEqual(self.received(), {})
