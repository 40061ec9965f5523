"""auth_on_publish/auth_on_subscribe webhooks that answer after an HTTP round
trip, with a real broker (port 0), raw MQTT clients and a real twisted.web
webhook service on 127.0.0.1: the client's packets wait in order, a slow
endpoint refuses after response_timeout and stalls nobody else."""
from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import inlineCallbacks

from tests.support import read_packet, with_timeout
from tests.test_auth_plugins import CONNACK_OK, AuthTestCase, login_packet
from tests.test_webhooks import LogLines
from vmqtw.codec import Publish, encode
from vmqtw.test.test_webhooks_support import OK_ANSWER, WebhookService
from vmqtw.test.wire import parse_publish, publish_packet, subscribe_packet

PUBACK = 0x40
PUBLISH = 0x30


def later(seconds: float, answer: Any) -> "defer.Deferred[Any]":
    """An endpoint answer given ``seconds`` from now."""
    d: defer.Deferred[Any] = defer.Deferred()
    call = reactor.callLater(seconds, d.callback, answer)
    d.addErrback(lambda f: call.cancel() if call.active() else None)  # cancelled: stop the timer
    return d


class LateWebhookTests(AuthTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.hooks = WebhookService().listen(self)
        self.hooks.route("/auth", OK_ANSWER)
        self.hooks.route("/sub", lambda body: later(0.05, OK_ANSWER))
        self.log = LogLines(self)

    def broker(self, extra: str = "") -> Any:
        lines = ["allow_anonymous = off", "listener.tcp.default = 127.0.0.1:0",
                 "listener.tcp.default.allowed_protocol_versions = 3,4,5",
                 "plugins.vmq_webhooks = on"]
        for i, (hook, path) in enumerate([
                ("auth_on_register", "/auth"), ("auth_on_register_m5", "/auth"),
                ("auth_on_publish", "/pub"), ("auth_on_publish_m5", "/pub"),
                ("auth_on_subscribe", "/sub"), ("auth_on_subscribe_m5", "/sub")]):
            lines.append(f"vmq_webhooks.h{i}.hook = {hook}")
            lines.append(f"vmq_webhooks.h{i}.endpoint = {self.hooks.url(path)}")
        return self.start("\n".join(lines) + "\n" + extra)

    @inlineCallbacks
    def client(self, service: Any, client_id: str, level: int = 4):
        """A raw client logged in through the /auth webhook (CONNACK read)."""
        client = yield self.raw_client(service)
        client.send(login_packet(client_id, "user", "x", level))
        first, body = yield read_packet(client, what=f"CONNACK of {client_id}")
        self.assertEqual((first, body[1]), (CONNACK_OK[0], 0))
        return client

    @inlineCallbacks
    def subscriber(self, service: Any):
        """A client subscribed to ``#`` (its SUBSCRIBE authorized by a late webhook)."""
        sub = yield self.client(service, "sub")
        sub.send(subscribe_packet("#", 1))
        self.assertEqual((yield sub.read(5, what="SUBACK")), b"\x90\x03\x00\x01\x01")
        return sub

    @inlineCallbacks
    def received(self, client: Any, n: int):
        """The (topic, payload) of the next ``n`` PUBLISHes ``client`` receives."""
        got = []
        for _ in range(n):
            first, body = yield read_packet(client, what="a delivered PUBLISH")
            topic, payload, qos, _retain, _dup, pid = parse_publish(first, body)
            got.append((topic, payload))
            if qos == 1:
                client.send(b"\x40\x02" + pid.to_bytes(2, "big"))
        return got

    @inlineCallbacks
    def test_late_answers_keep_the_order(self):
        """auth_on_publish answered after a delay (longer for the first message):
        messages are delivered in the order sent, each acknowledged in order."""
        self.hooks.route("/pub", lambda body: later(0.3 if body["topic"] == "t/1" else 0.01,
                                                    OK_ANSWER))
        service = self.broker()
        sub = yield self.subscriber(service)
        pub = yield self.client(service, "pub")
        pub.send(publish_packet("t/1", b"one", 1, 1) + publish_packet("t/2", b"two", 1, 2)
                 + publish_packet("t/3", b"three", 0))
        pub.send(publish_packet("t/4", b"four", 1, 3))
        self.assertEqual((yield pub.read(12, what="three PUBACKs")),
                         b"\x40\x02\x00\x01\x40\x02\x00\x02\x40\x02\x00\x03")
        self.assertEqual((yield self.received(sub, 4)),
                         [("t/1", b"one"), ("t/2", b"two"), ("t/3", b"three"),
                          ("t/4", b"four")])
        self.assertEqual([b["topic"] for b in self.hooks.bodies("/pub")],
                         ["t/1", "t/2", "t/3", "t/4"])

    @inlineCallbacks
    def test_slow_endpoint_refuses_and_stalls_nobody(self):
        """An auth_on_publish_m5 endpoint that does not answer within
        response_timeout refuses (PUBACK 0x87, logged); the client's next message
        goes on after it, and another client is served while it waits."""
        hanging: defer.Deferred[Any] = defer.Deferred()
        self.hooks.route("/pub", lambda body: hanging if body["topic"] == "hang" else OK_ANSWER)
        service = self.broker("".join(f"vmq_webhooks.h{i}.response_timeout = 500\n"
                                      for i in (2, 3)))
        sub = yield self.subscriber(service)
        slow = yield self.client(service, "slow", level=5)
        fast = yield self.client(service, "fast")
        asked = self.hooks.next_request("/pub")
        slow.send(encode(Publish("hang", b"h", 1, packet_id=1), 5)
                  + encode(Publish("after", b"a", 1, packet_id=2), 5))
        yield with_timeout(asked, what="the hanging webhook request")
        fast.send(publish_packet("fast", b"f", 1, 1))
        self.assertEqual((yield fast.read(4, what="PUBACK of the fast client")),
                         b"\x40\x02\x00\x01")
        self.assertEqual((yield self.received(sub, 1)), [("fast", b"f")])
        self.assertEqual(slow.buffer, b"")  # still waiting for its verdict
        first, body = yield read_packet(slow, what="PUBACK of the refused message")
        self.assertEqual((first, body[:3]), (PUBACK, b"\x00\x01\x87"))
        first, body = yield read_packet(slow, what="PUBACK of the next message")
        self.assertEqual((first, body[:2]), (PUBACK, b"\x00\x02"))
        self.assertEqual((yield self.received(sub, 1)), [("after", b"a")])
        self.assertEqual(len(self.log.matching(self.hooks.url("/pub"), "timeout")), 1)

    @inlineCallbacks
    def test_connection_ending_cancels_the_request(self):
        """A connection that ends while its publish is being authorized (here its
        session is taken over) abandons the webhook request: the service sees the
        HTTP request go, and no timeout or refusal is logged."""
        hanging: defer.Deferred[Any] = defer.Deferred()
        gone: defer.Deferred[Any] = defer.Deferred()

        def request_gone(failure: Any) -> Any:  # the service cancels it when the request goes
            gone.callback(None)
            return failure

        hanging.addErrback(request_gone)
        self.hooks.route("/pub", lambda body: hanging)
        service = self.broker()
        pub = yield self.client(service, "pub")
        asked = self.hooks.next_request("/pub")
        pub.send(publish_packet("t", b"x", 1, 1))
        yield with_timeout(asked, what="the webhook request")
        yield self.client(service, "pub")  # takes the session over
        yield pub.when_closed()
        yield with_timeout(gone, timeout=3, what="the webhook request to be abandoned")
        self.assertEqual(self.log.matching(self.hooks.url("/pub")), [])
