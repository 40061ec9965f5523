"""vmq_webhooks: settings, VerneMQ's request bodies and answers, and the
plugin against a real twisted.web webhook service on 127.0.0.1."""
from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from vmqtw.auth import api
from vmqtw.auth.api import NEXT, OK, AuthRequest, Ok, RegisterRequest
from vmqtw.auth.context import PluginContext
from vmqtw.auth.webhooks import make_plugin
from vmqtw.auth.webhooks.answers import AnswerError, parse_answer
from vmqtw.auth.webhooks.bodies import properties_in, properties_out, register_body
from vmqtw.auth.webhooks.client import Cache
from vmqtw.auth.webhooks.plugin import WEBHOOK_FAILED
from vmqtw.auth.webhooks.settings import parse_settings
from vmqtw.test.test_webhooks_support import NEXT_ANSWER, OK_ANSWER, Reply, WebhookService


class Client:
    """A connected client as hooks see it (a Session's attributes)."""

    def __init__(self, level: int = 4, username: str | None = "alice") -> None:
        self.client_id = "c1"
        self.mountpoint = ""
        self.username = username
        self.peer = ("127.0.0.1", 50000)
        self.listener = "tcp.default"
        self.conn = type("Conn", (), {"protocol_level": level})()


def register_request(level: int = 4, password: bytes | None = b"secret",
                     properties: dict[str, Any] | None = None) -> RegisterRequest:
    return RegisterRequest(peer=("127.0.0.1", 50000), mountpoint="", client_id="c1",
                           username="alice", password=password, clean_start=True,
                           protocol_level=level, properties=properties,
                           listener="tcp.default", listener_address="127.0.0.1:1883",
                           listener_kind="tcp")


class SettingsTests(SynchronousTestCase):

    def test_endpoints_sorted_by_name_as_strings(self) -> None:
        """Names sort as strings (webhook10 before webhook2), as in VerneMQ."""
        s = parse_settings({
            "webhook2.hook": "auth_on_register", "webhook2.endpoint": "http://h/2",
            "webhook10.hook": "auth_on_register", "webhook10.endpoint": "http://h/10",
        })
        self.assertEqual([e.name for e in s.endpoints], ["webhook10", "webhook2"])

    def test_options_and_defaults(self) -> None:
        """base64 is on, no_payload off and response_timeout 5000 ms unless set;
        both spellings of the base64 switch are read."""
        s = parse_settings({
            "a.hook": "auth_on_publish", "a.endpoint": "http://h/a",
            "b.hook": "auth_on_publish", "b.endpoint": "http://h/b",
            "b.base64_payload": "off", "b.no_payload": "on", "b.response_timeout": "250",
            "c.hook": "on_publish", "c.endpoint": "http://h/c", "c.base64encode": "off",
            "pool_max_connections": "7", "pool_timeout": "1000",
        })
        a, b, c = s.endpoints
        self.assertEqual((a.base64_payload, a.no_payload, a.response_timeout), (True, False, 5.0))
        self.assertEqual((b.base64_payload, b.no_payload, b.response_timeout), (False, True, 0.25))
        self.assertFalse(c.base64_payload)
        self.assertEqual((s.pool_max_connections, s.pool_timeout), (7, 1.0))

    def test_bad_settings_are_named(self) -> None:
        """A missing endpoint, an unknown hook, a bad flag or key is a ValueError naming it."""
        cases = [
            ({"a.hook": "auth_on_register"}, "vmq_webhooks.a.endpoint is required"),
            ({"a.hook": "auth_on_nothing", "a.endpoint": "http://h"}, "unknown hook"),
            ({"a.hook": "on_publish", "a.endpoint": "http://h", "a.no_payload": "maybe"},
             "vmq_webhooks.a.no_payload must be on or off"),
            ({"a.hook": "on_publish", "a.endpoint": "ftp://h"}, "http:// or https://"),
            ({"a.hook": "on_publish", "a.endpoint": "http://h", "a.colour": "red"},
             "unknown setting vmq_webhooks.a.colour"),
            ({"tls_version": "sslv3"}, "tls_version"),
        ]
        for settings, text in cases:
            with self.assertRaises(ValueError) as e:
                parse_settings(settings)
            self.assertIn(text, str(e.exception))

    def test_no_endpoint_is_refused_by_make_plugin(self) -> None:
        """Enabling the plugin without a single webhook is a configuration error."""
        with self.assertRaises(ValueError):
            make_plugin({}, PluginContext(Clock(), "."))

    def test_missing_tls_file_is_a_startup_error(self) -> None:
        """An https endpoint with a cafile that cannot be read fails at startup."""
        with self.assertRaises(ValueError) as e:
            make_plugin({"a.hook": "auth_on_register", "a.endpoint": "https://h/a",
                         "cafile": "/nonexistent/ca.pem"}, PluginContext(Clock(), "."))
        self.assertIn("/nonexistent/ca.pem", str(e.exception))

    def test_interfaces_follow_the_configured_hooks(self) -> None:
        """The plugin provides exactly the hook interfaces it has endpoints for, so
        an auth_on_register-only webhook does not take part in authorization."""
        plugin = make_plugin({"a.hook": "auth_on_register", "a.endpoint": "http://h/a",
                              "b.hook": "on_client_gone", "b.endpoint": "http://h/b"},
                             PluginContext(Clock(), "."))
        self.assertTrue(api.IAuthOnRegister.providedBy(plugin))
        self.assertTrue(api.IOnClientGone.providedBy(plugin))
        self.assertFalse(api.IAuthOnPublish.providedBy(plugin))
        self.assertFalse(api.IAuthOnSubscribe.providedBy(plugin))


class BodyTests(SynchronousTestCase):

    def test_register_body_fields_in_order(self) -> None:
        """auth_on_register: VerneMQ's fields in VerneMQ's order, listener fields last."""
        body = register_body(register_request(), m5=False, base64_payload=True)
        self.assertEqual(list(body), [
            "peer_addr", "peer_port", "mountpoint", "client_id", "username", "password",
            "clean_session", "listener_addr", "listener_port", "listener_type"])
        self.assertEqual((body["password"], body["listener_addr"], body["listener_port"],
                          body["listener_type"]), ("secret", "127.0.0.1", 1883, "mqtt"))

    def test_register_m5_body(self) -> None:
        """auth_on_register_m5 has clean_start and properties in VerneMQ's p_* names;
        a missing password is null."""
        body = register_body(register_request(5, None, {
            "session_expiry_interval": 60, "user_property": [("k", "v")]}),
            m5=True, base64_payload=True)
        self.assertEqual(list(body)[:8], [
            "peer_addr", "peer_port", "mountpoint", "client_id", "username", "password",
            "clean_start", "properties"])
        self.assertIsNone(body["password"])
        self.assertEqual(body["properties"], {
            "p_session_expiry_interval": 60,
            "p_user_property": [{"key": "aw==", "val": "dg=="}]})

    def test_properties_round_trip(self) -> None:
        """Properties translate to VerneMQ's names and back (user properties b64,
        correlation data raw, payload format as utf8/undefined)."""
        ours = {"user_property": [("a", "b")], "content_type": "text/plain",
                "payload_format_indicator": 1, "correlation_data": b"corr",
                "response_topic": "r/t", "message_expiry_interval": 9}
        theirs = properties_out(ours)
        self.assertEqual(theirs["p_payload_format_indicator"], "utf8")
        self.assertEqual(theirs["p_correlation_data"], "corr")
        self.assertEqual(properties_in(theirs), ours)


class AnswerTests(SynchronousTestCase):

    def test_ok_next_error(self) -> None:
        """The three answers VerneMQ knows; an error never means bad credentials."""
        self.assertIs(parse_answer("auth_on_register", b'{"result":"ok"}'), OK)
        self.assertIs(parse_answer("auth_on_register", b'{"result":"next"}'), NEXT)
        err = parse_answer("auth_on_register", b'{"result":{"error":"not_allowed"}}')
        self.assertEqual(err.reason, "not_allowed")
        err = parse_answer("auth_on_register",
                           b'{"result":{"error":"invalid_credentials"}}')
        self.assertNotEqual(err.reason, "invalid_credentials")

    def test_malformed_answers(self) -> None:
        """Not JSON, no result, an unknown result or modifier: AnswerError."""
        for hook, data in [
            ("auth_on_register", b"<html>"),
            ("auth_on_register", b'{"foo": 1}'),
            ("auth_on_register", b'{"result": "maybe"}'),
            ("auth_on_register", b'{"result":"ok","modifiers":{"colour":"red"}}'),
            ("auth_on_register", b'{"result":"ok","modifiers":{"client_id":"x"}}'),
            ("auth_on_publish", b'{"result":"ok","modifiers":{"qos":3}}'),
            ("auth_on_publish", b'{"result":"ok","modifiers":{"payload":"!!"}}'),
        ]:
            with self.assertRaises(AnswerError, msg=data):
                parse_answer(hook, data)

    def test_register_modifiers_translated(self) -> None:
        """retry_interval comes in milliseconds and leaves in seconds; max_message_rate
        is kept (vmqtw rate-limits as VerneMQ); VerneMQ-only modifiers are accepted and
        dropped; client_id goes with mountpoint."""
        result = parse_answer("auth_on_register", json.dumps({"result": "ok", "modifiers": {
            "retry_interval": 20000, "upgrade_qos": True, "max_message_rate": 10,
            "allow_publish": True, "client_id": "new", "mountpoint": "mp"}}).encode())
        self.assertEqual(result.modifiers, {"retry_interval": 20, "upgrade_qos": True,
                                            "max_message_rate": 10,
                                            "client_id": "new", "mountpoint": "mp"})

    def test_publish_modifiers(self) -> None:
        """Payload modifiers are base64-decoded (unless base64 is off); _m5 properties
        are translated."""
        result = parse_answer("auth_on_publish_m5", json.dumps({"result": "ok", "modifiers": {
            "topic": "new/t", "payload": "aGk=", "qos": 1, "retain": False, "throttle": 5,
            "properties": {"p_content_type": "x"}}}).encode())
        self.assertEqual(result.modifiers, {"topic": "new/t", "payload": b"hi", "qos": 1,
                                            "retain": False,
                                            "properties": {"content_type": "x"}})
        raw = parse_answer("auth_on_publish", b'{"result":"ok","modifiers":{"payload":"hi"}}',
                           base64_payload=False)
        self.assertEqual(raw.modifiers, {"payload": b"hi"})

    def test_subscribe_topics_top_level_v3_modifiers_m5(self) -> None:
        """v3 answers put topics at the top level, _m5 answers under modifiers."""
        v3 = parse_answer("auth_on_subscribe",
                          b'{"result":"ok","topics":[{"topic":"a/b","qos":128}]}')
        m5 = parse_answer("auth_on_subscribe_m5",
                          b'{"result":"ok","modifiers":{"topics":[{"topic":"x","qos":1}]}}')
        self.assertEqual(v3.modifiers, {"topics": [("a/b", 128)]})
        self.assertEqual(m5.modifiers, {"topics": [("x", 1)]})

    def test_on_auth_continue(self) -> None:
        """on_auth_m5 reason_code 24 continues with the answer's authentication data."""
        result = parse_answer("on_auth_m5", b'{"result":"ok","modifiers":{"reason_code":24,'
                              b'"properties":{"p_authentication_data":"Y2hhbA=="}}}')
        self.assertEqual(result.modifiers, {"continue_authentication": True,
                                            "authentication_data": b"chal"})

    def test_cache_expiry(self) -> None:
        """A cached answer is valid while now <= inserted + max_age, then dropped."""
        clock = Clock()
        cache = Cache(clock)
        cache.put(("u", "h", "k"), 10, OK)
        clock.advance(10)
        self.assertIs(cache.get(("u", "h", "k")), OK)
        clock.advance(1)
        self.assertIsNone(cache.get(("u", "h", "k")))
        self.assertEqual(cache.entries, {})


class Logged:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def texts(self) -> list[str]:
        return [formatEvent(e) for e in self.events]


class PluginTests(TestCase):
    """The plugin against a real webhook service."""

    timeout = 30

    def setUp(self) -> None:
        self.service = WebhookService().listen(self)
        self.logged = Logged()

    def plugin(self, **endpoints: Any) -> Any:
        """``name=(hook, path[, {option: value}])`` per endpoint."""
        settings: dict[str, str] = {}
        for name, spec in endpoints.items():
            settings[f"{name}.hook"] = spec[0]
            settings[f"{name}.endpoint"] = self.service.url(spec[1])
            for k, v in (spec[2] if len(spec) > 2 else {}).items():
                settings[f"{name}.{k}"] = v
        plugin = make_plugin(settings, PluginContext(
            reactor, ".", Logger(namespace="test.webhooks", observer=self.logged)))
        self.addCleanup(plugin.stop)
        return plugin

    @defer.inlineCallbacks
    def test_register_ok_with_header_and_body(self):
        """auth_on_register posts JSON with the vernemq-hook header and grants on ok."""
        plugin = self.plugin(w=("auth_on_register", "/auth"))
        result = yield plugin.auth_on_register(register_request())
        self.assertIs(result, OK)
        [req] = self.service.requests
        self.assertEqual((req.hook, req.content_type), ("auth_on_register", "application/json"))
        self.assertEqual(req.body["username"], "alice")
        self.assertEqual(req.body["password"], "secret")

    @defer.inlineCallbacks
    def test_next_asks_the_next_endpoint_then_the_chain(self):
        """next goes to the hook's next endpoint; when all say next the plugin says NEXT."""
        self.service.route("/a", NEXT_ANSWER)
        self.service.route("/b", NEXT_ANSWER)
        plugin = self.plugin(w1=("auth_on_register", "/a"), w2=("auth_on_register", "/b"))
        result = yield plugin.auth_on_register(register_request())
        self.assertIs(result, NEXT)
        self.assertEqual([r.path for r in self.service.requests], ["/a", "/b"])

    @defer.inlineCallbacks
    def test_error_answer_refuses(self):
        """{"error": ...} refuses with that reason."""
        self.service.route("/a", {"result": {"error": "not_allowed"}})
        plugin = self.plugin(w=("auth_on_register", "/a"))
        result = yield plugin.auth_on_register(register_request())
        self.assertEqual(result.reason, "not_allowed")

    @defer.inlineCallbacks
    def test_failures_refuse_with_one_log_line(self):
        """A 500, a non-JSON body and a bad modifier each refuse (fail closed) and
        log one line naming the endpoint and the reason."""
        self.service.route("/500", Reply(500, b"oops"))
        self.service.route("/html", Reply(200, b"<html>"))
        self.service.route("/bad", {"result": "ok", "modifiers": {"colour": "red"}})
        for path, reason in (("/500", "invalid_response_code 500"),
                             ("/html", "received_payload_not_json"),
                             ("/bad", "unknown modifier 'colour'")):
            plugin = self.plugin(w=("auth_on_register", path))
            result = yield plugin.auth_on_register(register_request())
            self.assertEqual(result.reason, WEBHOOK_FAILED)
            line = self.logged.texts()[-1]
            self.assertIn(self.service.url(path), line)
            self.assertIn(reason, line)

    @defer.inlineCallbacks
    def test_slow_endpoint_times_out_and_others_are_served(self):
        """An endpoint slower than response_timeout refuses after the timeout; a
        request to another endpoint meanwhile is answered at once."""
        hanging: defer.Deferred[Any] = defer.Deferred()
        self.service.route("/slow", lambda body: hanging)
        slow = self.plugin(w=("auth_on_register", "/slow", {"response_timeout": "300"}))
        fast = self.plugin(w=("auth_on_register", "/fast"))
        pending = slow.auth_on_register(register_request())
        quick = yield fast.auth_on_register(register_request())
        self.assertIs(quick, OK)
        self.assertNoResult(pending)
        result = yield pending
        self.assertEqual(result.reason, WEBHOOK_FAILED)
        self.assertIn("timeout", self.logged.texts()[-1])

    @defer.inlineCallbacks
    def test_cancelled_request_is_not_an_endpoint_failure(self):
        """Cancelling a pending answer (the client left) cancels the HTTP request
        and logs nothing about the endpoint."""
        hanging: defer.Deferred[Any] = defer.Deferred()
        self.service.route("/slow", lambda body: hanging)
        plugin = self.plugin(w=("auth_on_register", "/slow"))
        asked = self.service.next_request("/slow")
        pending = plugin.auth_on_register(register_request())
        yield asked
        pending.cancel()
        self.failureResultOf(pending, defer.CancelledError)
        self.assertEqual(self.logged.texts(), [])

    @defer.inlineCallbacks
    def test_unreachable_endpoint_refuses(self):
        """A closed port (connection refused) refuses too."""
        port = reactor.listenTCP(0, self.service.site, interface="127.0.0.1")
        url = f"http://127.0.0.1:{port.getHost().port}/x"
        yield port.stopListening()
        plugin = make_plugin({"w.hook": "auth_on_register", "w.endpoint": url},
                             PluginContext(reactor, ".", Logger(observer=self.logged)))
        result = yield plugin.auth_on_register(register_request())
        self.assertEqual(result.reason, WEBHOOK_FAILED)
        self.assertIn(url, self.logged.texts()[-1])

    @defer.inlineCallbacks
    def test_cache_control_max_age_caches_ok(self):
        """An ok with cache-control max-age is answered from the cache next time,
        synchronously and without a request; another password is not a hit."""
        self.service.route("/a", Reply(200, b'{"result":"ok"}', {"cache-control": "max-age=60"}))
        plugin = self.plugin(w=("auth_on_register", "/a"))
        first = yield plugin.auth_on_register(register_request())
        second = plugin.auth_on_register(register_request())
        self.assertIs(first, OK)
        self.assertIsInstance(second, Ok)  # a plain Result: no Deferred
        self.assertEqual(len(self.service.requests), 1)
        yield plugin.auth_on_register(register_request(password=b"other"))
        self.assertEqual(len(self.service.requests), 2)

    @defer.inlineCallbacks
    def test_no_cache_without_max_age_or_for_errors(self):
        """Answers without max-age, and error answers even with it, are not cached."""
        self.service.route("/a", Reply(200, b'{"result":{"error":"no"}}',
                                       {"cache-control": "max-age=60"}))
        self.service.route("/b", OK_ANSWER)
        for path in ("/a", "/b"):
            plugin = self.plugin(w=("auth_on_register", path))
            yield plugin.auth_on_register(register_request())
            yield plugin.auth_on_register(register_request())
            self.assertEqual(len(self.service.bodies(path)), 2)

    @defer.inlineCallbacks
    def test_connections_are_pooled(self):
        """Consecutive requests to one endpoint reuse one connection."""
        plugin = self.plugin(w=("auth_on_register", "/a"))
        for _ in range(3):
            yield plugin.auth_on_register(register_request())
        self.assertEqual(len({r.peer_port for r in self.service.requests}), 1)

    @defer.inlineCallbacks
    def test_pool_max_connections_limits_requests_in_flight(self):
        """With pool_max_connections = 1 a second request waits until the first
        one has its answer."""
        release: defer.Deferred[Any] = defer.Deferred()
        self.service.route("/a", lambda body: release if body["client_id"] == "c1"
                           else OK_ANSWER)
        settings = {"w.hook": "auth_on_register", "w.endpoint": self.service.url("/a"),
                    "pool_max_connections": "1"}
        plugin = make_plugin(settings, PluginContext(reactor, ".", Logger(observer=self.logged)))
        self.addCleanup(plugin.stop)
        asked = self.service.next_request("/a")
        first = plugin.auth_on_register(register_request())
        yield asked
        second_request = register_request()
        second_request.client_id = "c2"
        second = plugin.auth_on_register(second_request)
        asked = self.service.next_request("/a")
        _, limit = plugin.poster._agent(self.service.url("/a"))
        self.assertEqual((limit.tokens, len(limit.waiting)), (0, 1))  # queued, not sent
        self.assertNoResult(second)
        release.callback(OK_ANSWER)
        self.assertIs((yield first), OK)
        yield asked
        self.assertIs((yield second), OK)

    @defer.inlineCallbacks
    def test_publish_body_and_modifiers(self):
        """auth_on_publish sends VerneMQ's fields in order (payload base64) and
        returns the translated modifiers; MQTT 5.0 clients skip the v3 hook."""
        self.service.route("/p", {"result": "ok", "modifiers": {"topic": "x/y",
                                                                 "payload": "bmV3"}})
        plugin = self.plugin(w=("auth_on_publish", "/p"))
        result = yield plugin.auth_on_publish(Client(), "a/b", b"hello", 1, True)
        self.assertEqual(result.modifiers, {"topic": "x/y", "payload": b"new"})
        [body] = self.service.bodies("/p")
        self.assertEqual(list(body), ["username", "mountpoint", "client_id", "qos", "topic",
                                      "payload", "retain"])
        self.assertEqual((body["payload"], body["retain"]), ("aGVsbG8=", True))
        self.assertIs(plugin.auth_on_publish(Client(level=5), "a/b", b"", 0, False), NEXT)

    @defer.inlineCallbacks
    def test_no_payload_and_raw_payload(self):
        """no_payload drops the payload field; base64 off sends it as text."""
        plugin = self.plugin(a=("auth_on_publish", "/a", {"no_payload": "on"}),
                             b=("auth_on_publish_m5", "/b", {"base64encode": "off"}))
        yield plugin.auth_on_publish(Client(), "t", b"x", 0, False)
        yield plugin.auth_on_publish_m5(Client(5), "t", b"text", 0, False,
                                        {"content_type": "c"})
        self.assertNotIn("payload", self.service.bodies("/a")[0])
        body = self.service.bodies("/b")[0]
        self.assertEqual((body["payload"], body["properties"]),
                         ("text", {"p_content_type": "c"}))

    @defer.inlineCallbacks
    def test_subscribe_v3_and_m5(self):
        """auth_on_subscribe(_m5) bodies list {topic, qos} objects (m5: with options)."""
        self.service.route("/s", {"result": "ok", "topics": [{"topic": "a", "qos": 0}]})
        plugin = self.plugin(a=("auth_on_subscribe", "/s"), b=("auth_on_subscribe_m5", "/m"))
        result = yield plugin.auth_on_subscribe(Client(), [("a", 1)])
        self.assertEqual(result.modifiers, {"topics": [("a", 0)]})
        yield plugin.auth_on_subscribe_m5(Client(5), [("b", 2)], {})
        self.assertEqual(self.service.bodies("/s")[0]["topics"], [{"topic": "a", "qos": 1}])
        self.assertEqual(self.service.bodies("/m")[0]["topics"], [
            {"topic": "b", "qos": 2, "no_local": False, "rap": False,
             "retain_handling": "send_retain"}])

    @defer.inlineCallbacks
    def test_on_auth_m5(self):
        """on_auth_m5 sends the method and base64 data and continues on reason 24."""
        self.service.route("/auth", {"result": "ok", "modifiers": {"reason_code": 24}})
        plugin = self.plugin(w=("on_auth_m5", "/auth"))
        result = yield plugin.on_auth(AuthRequest(("127.0.0.1", 1), "", "c1", "u", "SCRAM",
                                                  b"\x00\x01"))
        self.assertEqual(result.modifiers, {"continue_authentication": True})
        self.assertEqual(self.service.bodies("/auth")[0], {
            "username": "u", "mountpoint": "", "client_id": "c1",
            "properties": {"p_authentication_method": "SCRAM",
                           "p_authentication_data": "AAE="}})

    @defer.inlineCallbacks
    def test_notifications_do_not_wait(self):
        """Notification hooks post VerneMQ's bodies and return at once; a failing
        notification endpoint is logged and changes nothing."""
        self.service.route("/gone", Reply(500, b""))
        plugin = self.plugin(a=("on_register", "/reg"), b=("on_client_gone", "/gone"),
                             c=("on_offline_message", "/off"),
                             d=("on_unsubscribe", "/unsub"))
        got = self.service.next_request("/reg")
        self.assertIsNone(plugin.on_register(Client()))
        body = yield got
        self.assertEqual(list(body), ["peer_addr", "peer_port", "mountpoint", "client_id",
                                      "username"])
        got = self.service.next_request("/off")
        plugin.on_offline_message("", "c1", 1, "t", b"p", False)
        body = yield got
        self.assertEqual(body, {"mountpoint": "", "client_id": "c1", "qos": 1, "topic": "t",
                                "payload": "cA==", "retain": False})
        got = self.service.next_request("/unsub")
        self.assertIs(plugin.on_unsubscribe(Client(), ["a/b"]), NEXT)
        body = yield got
        self.assertEqual(body["topics"], ["a/b"])
        got = self.service.next_request("/gone")
        plugin.on_client_gone("", "c1")
        body = yield got
        self.assertEqual(body, {"mountpoint": "", "client_id": "c1"})
        yield plugin.idle()  # the failure is logged when the answer arrives
        self.assertIn("on_client_gone", self.logged.texts()[-1])
        self.assertIn("invalid_response_code 500", self.logged.texts()[-1])
