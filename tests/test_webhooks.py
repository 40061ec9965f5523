"""vmq_webhooks with a real broker (port 0), raw MQTT clients and a real
twisted.web webhook service on 127.0.0.1: what a VerneMQ webhook service
sees and what its answers do to clients."""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher

from tests.support import publish_packet, with_timeout
from tests.test_auth_plugins import (
    CONNACK_NOT_AUTHORIZED, CONNACK_OK, AuthTestCase, login_packet,
)
from vmqtw.test.test_webhooks_support import NEXT_ANSWER, OK_ANSWER, WebhookService


class LogLines:
    """Formatted global log events while a test runs."""

    def __init__(self, testcase: Any) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self)
        testcase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        self.lines.append(formatEvent(event))

    def matching(self, *words: str) -> list[str]:
        return [line for line in self.lines if all(w in line for w in words)]


class WebhookBrokerTests(AuthTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.hooks = WebhookService().listen(self)
        self.log = LogLines(self)

    def broker(self, *hooks: tuple[str, str], extra: str = "") -> Any:
        lines = ["allow_anonymous = off", "listener.tcp.default = 127.0.0.1:0",
                 "plugins.vmq_webhooks = on"]
        for i, (hook, path) in enumerate(hooks):
            lines.append(f"vmq_webhooks.hook{i}.hook = {hook}")
            lines.append(f"vmq_webhooks.hook{i}.endpoint = {self.hooks.url(path)}")
        return self.start("\n".join(lines) + "\n" + extra)

    @inlineCallbacks
    def test_register_ok_and_error(self):
        """A VerneMQ auth_on_register service decides CONNECTs: ok is CONNACK 0, an
        error is CONNACK 5; it gets the client's credentials and listener."""
        self.hooks.route("/auth", lambda body: OK_ANSWER if body["password"] == "good"
                         else {"result": {"error": "wrong"}})
        service = self.broker(("auth_on_register", "/auth"))
        self.assertEqual((yield self.connack(service, "c1", "alice", "good")), CONNACK_OK)
        self.assertEqual((yield self.connack(service, "c2", "alice", "bad")),
                         CONNACK_NOT_AUTHORIZED)
        first = self.hooks.bodies("/auth")[0]
        self.assertEqual((first["client_id"], first["username"], first["clean_session"],
                          first["listener_type"], first["mountpoint"]),
                         ("c1", "alice", True, "mqtt", ""))
        self.assertEqual(self.hooks.requests[0].hook, "auth_on_register")

    @inlineCallbacks
    def test_next_falls_through_to_the_next_plugin(self):
        """"next" hands the CONNECT to the rest of the chain (here vmq_passwd)."""
        self.passwd(alice="secret")
        self.hooks.route("/auth", NEXT_ANSWER)
        service = self.broker(("auth_on_register", "/auth"), extra=(
            "plugins.vmq_webhooks.priority = 1\n"
            "plugins.vmq_passwd = on\nvmq_passwd.password_file = vmq.passwd\n"
            "vmq_passwd.password_reload_interval = 0\n"))
        self.assertEqual((yield self.connack(service, "c1", "alice", "secret")), CONNACK_OK)
        self.assertEqual(len(self.hooks.bodies("/auth")), 1)

    @inlineCallbacks
    def test_slow_endpoint_refuses_after_timeout_and_stalls_nobody(self):
        """A CONNECT whose webhook does not answer within response_timeout is refused
        (CONNACK 5, one log line naming the endpoint); another client is served
        meanwhile."""
        hanging: defer.Deferred[Any] = defer.Deferred()
        self.hooks.route("/auth", lambda body: hanging if body["username"] == "slow"
                         else OK_ANSWER)
        service = self.broker(("auth_on_register", "/auth"),
                              extra="vmq_webhooks.hook0.response_timeout = 500\n")
        slow = yield self.raw_client(service)
        asked = self.hooks.next_request("/auth")
        slow.send(login_packet("slow-1", "slow", "x"))
        yield with_timeout(asked, what="the slow webhook request")
        self.assertEqual((yield self.connack(service, "fast-1", "fast", "x")), CONNACK_OK)
        self.assertEqual((yield slow.read(4, what="the slow CONNACK")), CONNACK_NOT_AUTHORIZED)
        self.assertEqual(len(self.log.matching(self.hooks.url("/auth"), "timeout")), 1)

    @inlineCallbacks
    def test_failing_endpoint_refuses(self):
        """A webhook service that is down refuses logins (CONNACK 5) with a log line."""
        service = self.broker(("auth_on_register", "/auth"))
        yield self.hooks.stop()
        self.assertEqual((yield self.connack(service, "c1", "alice", "x")),
                         CONNACK_NOT_AUTHORIZED)
        self.assertTrue(self.log.matching(self.hooks.url("/auth"), "refused"))

    @inlineCallbacks
    def test_register_modifiers_apply(self):
        """ok with modifiers changes the session (here its mountpoint and client id)."""
        self.hooks.route("/auth", {"result": "ok", "modifiers": {
            "mountpoint": "tenant", "client_id": "renamed"}})
        service = self.broker(("auth_on_register", "/auth"))
        self.assertEqual((yield self.connack(service, "c1", "alice", "x")), CONNACK_OK)
        self.assertIn(("tenant", "renamed"), service.broker.sessions)

    @inlineCallbacks
    def test_notifications_reach_the_service(self):
        """on_register and on_client_gone are posted with VerneMQ's bodies."""
        self.hooks.route("/auth", OK_ANSWER)
        service = self.broker(("auth_on_register", "/auth"), ("on_register", "/reg"),
                              ("on_client_gone", "/gone"))
        registered = self.hooks.next_request("/reg")
        gone = self.hooks.next_request("/gone")
        client = yield self.raw_client(service)
        client.send(login_packet("c1", "alice", "x"))
        self.assertEqual((yield client.read(4)), CONNACK_OK)
        body = yield with_timeout(registered, what="on_register")
        self.assertEqual((body["client_id"], body["username"]), ("c1", "alice"))
        yield client.close()
        body = yield with_timeout(gone, what="on_client_gone")
        self.assertEqual(body, {"mountpoint": "", "client_id": "c1"})

    @inlineCallbacks
    def test_publish_webhook_is_waited_for(self):
        """An auth_on_publish webhook answers later; the connection waits for it
        (no "fail closed" refusal) and the PUBLISH is acknowledged.  Ordering and
        slow endpoints: tests/test_webhooks_late.py."""
        self.hooks.route("/auth", OK_ANSWER)
        service = self.broker(("auth_on_register", "/auth"), ("auth_on_publish", "/pub"))
        client = yield self.raw_client(service)
        client.send(login_packet("c1", "alice", "x"))
        self.assertEqual((yield client.read(4)), CONNACK_OK)
        client.send(publish_packet("a/b", b"hi", qos=1))
        self.assertEqual((yield client.read(4, what="PUBACK")), b"\x40\x02\x00\x01")
        self.assertEqual([b["topic"] for b in self.hooks.bodies("/pub")], ["a/b"])
        self.assertFalse(self.log.matching("fail closed"))


class WebhookTLSTests(AuthTestCase):
    """https:// endpoints: the server certificate is checked against
    vmq_webhooks.cafile unless verify_peer is off."""

    def setUp(self) -> None:
        super().setUp()
        from OpenSSL import crypto
        from twisted.internet import reactor, ssl

        from tests.certs import certs
        self.certs = certs()
        with open(self.certs.server, "rb") as f:
            end = b"-----END CERTIFICATE-----"
            blocks = [b + end for b in f.read().split(end) if b"-----BEGIN" in b]
        with open(self.certs.server_key, "rb") as f:
            key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
        options = ssl.CertificateOptions(
            privateKey=key, certificate=ssl.Certificate.loadPEM(blocks[0]).original,
            extraCertChain=[ssl.Certificate.loadPEM(b).original for b in blocks[1:]])
        self.hooks = WebhookService()
        self.port = reactor.listenSSL(0, self.hooks.site, options, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"https://127.0.0.1:{self.port.getHost().port}/auth"
        self.log = LogLines(self)

    def plugin(self, **settings: str) -> Any:
        from twisted.internet import reactor

        from vmqtw.auth.context import PluginContext
        from vmqtw.auth.webhooks import make_plugin
        plugin = make_plugin({"w.hook": "auth_on_register", "w.endpoint": self.url,
                              **settings}, PluginContext(reactor, self.dir))
        self.addCleanup(plugin.stop)
        return plugin

    @inlineCallbacks
    def test_trusted_server(self):
        """With cafile naming the server's CA the request goes through."""
        from vmqtw.test.test_webhooks import register_request
        result = yield self.plugin(cafile=self.certs.ca).auth_on_register(register_request())
        self.assertEqual(repr(result), "OK")
        self.assertEqual(self.hooks.requests[0].hook, "auth_on_register")

    @inlineCallbacks
    def test_untrusted_server_refuses(self):
        """A server certificate nobody vouches for refuses (fail closed), logged."""
        from vmqtw.test.test_webhooks import register_request
        result = yield self.plugin().auth_on_register(register_request())
        self.assertEqual(result.reason, "webhook_failed")
        self.assertEqual(self.hooks.requests, [])
        self.assertTrue(self.log.matching(self.url, "refused"))

    @inlineCallbacks
    def test_verify_peer_off(self):
        """verify_peer = off accepts any server certificate."""
        from vmqtw.test.test_webhooks import register_request
        result = yield self.plugin(verify_peer="off").auth_on_register(register_request())
        self.assertEqual(repr(result), "OK")
