"""MQTT 5.0 enhanced authentication (AUTH packets, the on_auth hook) and the
auth_on_publish_m5 / auth_on_subscribe_m5 hooks, through MQTTProtocol + Broker,
in memory.

Bytes the broker must send are written by hand (``vmqtw.test.wire``, MQTT 5.0
section 3), independently of our encoder; client packets are encoded with our
encoder (the codec has its own vectors) or written as raw bytes where the point
is a broken packet.  Every failure path checks the exact DISCONNECT (or CONNACK)
reason for the one client, and that a bystander keeps working.
"""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from vmqtw.auth.api import (
    NEXT, OK, IAuthOnPublish, IAuthOnPublishM5, IAuthOnRegister, IAuthOnSubscribe,
    IAuthOnSubscribeM5, IOnAuth, error, ok,
)
from vmqtw.codec import Auth, Publish, SubOptions, Subscribe, Will, reasons
from vmqtw.test.harness import (
    BASE5, BrokerTestCase, BystanderMixin, Client, Harness, connect5, connected5, pub,
    subscribe5,
)
from vmqtw.test.wire import (
    auth5, connack5, connack_ok, disconnect5, p_auth_data, p_auth_method, p_reason, puback5,
    publish5, pubrec5, suback5,
)

NO_MATCH = reasons.NO_MATCHING_SUBSCRIBERS


# ---------------------------------------------------------------------------
# Enhanced authentication (AUTH packets, the on_auth hook)

@implementer(IOnAuth, IAuthOnRegister)
class ChallengeAuth:
    """on_auth: method "CHAL"; the client must answer b"secret" to the challenge."""

    def __init__(self, deferred: bool = False) -> None:
        self.requests: list[Any] = []
        self.registered: list[Any] = []
        self.deferred = deferred

    def on_auth(self, request: Any) -> Any:
        self.requests.append(request)
        if request.method != "CHAL":
            result: Any = error("bad_authentication_method")
        elif request.data in (None, b"hello"):
            result = ok(continue_authentication=True, authentication_data=b"challenge")
        elif request.data == b"secret":
            result = ok(authentication_data=b"welcome")
        else:
            result = error("not_authorized")
        return defer.succeed(result) if self.deferred else result

    def auth_on_register(self, request: Any) -> Any:
        self.registered.append(request)
        return OK


class EnhancedAuthTests(BrokerTestCase, BystanderMixin):

    config = BASE5.replace("allow_anonymous = on", "allow_anonymous = off")

    def challenge(self, hn: Harness, method: str = "CHAL", **kw: Any) -> Client:
        c = connect5(hn, "c", authentication_method=method, authentication_data=b"hello", **kw)
        self.assertEqual(c.take(), auth5(0x18, p_auth_method("CHAL"), p_auth_data(b"challenge")))
        return c

    def test_no_plugin_is_bad_authentication_method(self) -> None:
        """An authentication method in CONNECT with no on_auth plugin gets CONNACK 0x8C (bad
        authentication method), is closed and creates no session."""
        hn = Harness(BASE5)
        c = connect5(hn, "c", authentication_method="SCRAM-SHA-1")
        self.assertEqual(c.take(), connack5(reasons.BAD_AUTHENTICATION_METHOD))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_unknown_method(self) -> None:
        """An authentication method the on_auth plugin refuses gets CONNACK 0x8C (bad
        authentication method)."""
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth())])
        c = connect5(hn, "c", authentication_method="OTHER")
        self.assertEqual(c.take(), connack5(reasons.BAD_AUTHENTICATION_METHOD))

    def test_challenge_and_success(self) -> None:
        """Enhanced authentication: on_auth answering continue_authentication sends AUTH
        0x18 with the challenge; the client's AUTH answer accepted by on_auth gives
        CONNACK 0 with the method and the plugin's final data, and auth_on_register still
        runs. The same holds when on_auth answers with Deferreds."""
        for deferred in (False, True):
            plugin = ChallengeAuth(deferred)
            hn = Harness(self.config, plugins=[("chal", plugin)])
            c = self.challenge(hn)
            c.send(Auth(0x18, {"authentication_method": "CHAL", "authentication_data": b"secret"}))
            self.assertEqual(c.take(), connack_ok(
                False, after=[p_auth_method("CHAL"), p_auth_data(b"welcome")]))
            self.assertEqual([r.data for r in plugin.requests], [b"hello", b"secret"])
            self.assertEqual(len(plugin.registered), 1)  # auth_on_register still runs
            self.assertIn(("", "c"), hn.broker.sessions)

    def test_wrong_answer(self) -> None:
        """A wrong answer to the challenge gets CONNACK 0x87 (not authorized) and the
        connection is closed."""
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth())])
        c = self.challenge(hn)
        c.send(Auth(0x18, {"authentication_method": "CHAL", "authentication_data": b"wrong"}))
        self.assertEqual(c.take(), connack5(reasons.NOT_AUTHORIZED))
        self.assertTrue(c.closed)

    def test_other_method_in_auth(self) -> None:
        """An AUTH with a different authentication method than the CONNECT gets CONNACK 0x82
        (protocol error, 5.0 s4.12)."""
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth())])
        c = self.challenge(hn)
        c.send(Auth(0x18, {"authentication_method": "X", "authentication_data": b"secret"}))
        self.assertEqual(c.take(), connack5(reasons.PROTOCOL_ERROR))
        self.assertTrue(c.closed)

    def test_publish_during_the_exchange(self) -> None:
        """A PUBLISH sent before the authentication exchange has finished closes the
        connection and creates no session."""
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth())])
        c = self.challenge(hn)
        pub(c, "t", b"too early")
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_packets_held_while_the_plugin_decides(self) -> None:
        """AUTH and PUBLISH arrive in one chunk: the PUBLISH is handled after CONNACK."""
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth(deferred=True))])
        s = connected5(hn, "s", authentication_method="CHAL", authentication_data=b"secret",
                       expected=connack_ok(False, after=[p_auth_method("CHAL"),
                                                         p_auth_data(b"welcome")]))
        subscribe5(s, 1, ("t", SubOptions(0)))
        c = self.challenge(hn)
        c.send(Auth(0x18, {"authentication_method": "CHAL", "authentication_data": b"secret"}),
               Publish("t", b"after", 0))
        self.assertEqual(c.take(), connack_ok(
            False, after=[p_auth_method("CHAL"), p_auth_data(b"welcome")]))
        self.assertEqual(s.take(), publish5("t", b"after"))

    def test_exchange_times_out(self) -> None:
        """An authentication exchange the client does not finish is closed after a timeout."""
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth())])
        c = self.challenge(hn)
        hn.clock.advance(5)
        self.assertTrue(c.closed)

    def test_reauthentication(self) -> None:
        """Re-authentication (AUTH 0x19) after CONNACK runs the same exchange, marked as
        reauthenticate for the plugin, ends with AUTH 0x00, and other traffic goes on
        meanwhile."""
        plugin = ChallengeAuth()
        hn = Harness(self.config, plugins=[("chal", plugin)])
        c = connected5(hn, "c", authentication_method="CHAL", authentication_data=b"secret",
                       expected=connack_ok(False, after=[p_auth_method("CHAL"),
                                                         p_auth_data(b"welcome")]))
        c.send(Auth(0x19, {"authentication_method": "CHAL", "authentication_data": b"hello"}))
        self.assertEqual(c.take(), auth5(0x18, p_auth_method("CHAL"), p_auth_data(b"challenge")))
        pub(c, "t", b"meanwhile", qos=1, pid=1)        # other traffic goes on
        self.assertEqual(c.take(), puback5(1, NO_MATCH))
        c.send(Auth(0x18, {"authentication_method": "CHAL", "authentication_data": b"secret"}))
        self.assertEqual(c.take(), auth5(0x00, p_auth_method("CHAL"), p_auth_data(b"welcome")))
        self.assertTrue(plugin.requests[-1].reauthenticate)
        self.assertFalse(c.closed)

    def test_reauthentication_failure(self) -> None:
        """A failed re-authentication gets DISCONNECT 0x87 (not authorized) and closes only
        that client."""
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth())])
        s, p = self.bystanders_with_auth(hn)
        c = connected5(hn, "c", authentication_method="CHAL", authentication_data=b"secret",
                       expected=connack_ok(False, after=[p_auth_method("CHAL"),
                                                         p_auth_data(b"welcome")]))
        c.send(Auth(0x19, {"authentication_method": "CHAL", "authentication_data": b"nope"}))
        self.assertEqual(c.take(), disconnect5(reasons.NOT_AUTHORIZED))
        self.assertTrue(c.closed)
        self.still_working(s, p)

    def bystanders_with_auth(self, hn: Harness) -> tuple[Client, Client]:
        out = []
        for cid in ("bystander-s", "bystander-p"):
            out.append(connected5(hn, cid, authentication_method="CHAL",
                                  authentication_data=b"secret",
                                  expected=connack_ok(False, after=[
                                      p_auth_method("CHAL"), p_auth_data(b"welcome")])))
        subscribe5(out[0], 1, ("ok/#", SubOptions(1)))
        return out[0], out[1]

    def test_unexpected_auth(self) -> None:
        """An AUTH from a client that connected without an authentication method gets
        DISCONNECT 0x82 (protocol error)."""
        hn = Harness(BASE5)
        s, p = self.bystanders(hn)
        c = connected5(hn, "c")                                      # no method at CONNECT
        c.send(Auth(0x19, {"authentication_method": "CHAL"}))
        self.assertEqual(c.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.still_working(s, p)

    def test_continue_without_a_challenge(self) -> None:
        """An AUTH 0x18 (continue authentication) when no exchange is in progress gets
        DISCONNECT 0x82 (protocol error)."""
        hn = Harness(self.config, plugins=[("chal", ChallengeAuth())])
        c = connected5(hn, "c", authentication_method="CHAL", authentication_data=b"secret",
                       expected=connack_ok(False, after=[p_auth_method("CHAL"),
                                                         p_auth_data(b"welcome")]))
        c.send(Auth(0x18, {"authentication_method": "CHAL", "authentication_data": b"secret"}))
        self.assertEqual(c.take(), disconnect5(reasons.PROTOCOL_ERROR))


# ---------------------------------------------------------------------------
# auth_on_publish_m5 / auth_on_subscribe_m5

@implementer(IAuthOnPublishM5, IAuthOnSubscribeM5, IAuthOnPublish, IAuthOnSubscribe)
class M5Hooks:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def auth_on_publish_m5(self, client: Any, topic: str, payload: bytes, qos: int,
                           retain: bool, properties: dict[str, Any]) -> Any:
        self.calls.append(("publish_m5", properties))
        return error() if topic.startswith("deny") else OK

    def auth_on_publish(self, client: Any, topic: str, payload: bytes, qos: int,
                        retain: bool) -> Any:
        self.calls.append(("publish", topic))
        return error() if topic.startswith("deny") else OK

    def auth_on_subscribe_m5(self, client: Any, topics: list[tuple[str, int]],
                             properties: dict[str, Any]) -> Any:
        self.calls.append(("subscribe_m5", properties))
        return error() if any(t.startswith("deny") for t, _q in topics) else OK

    def auth_on_subscribe(self, client: Any, topics: list[tuple[str, int]]) -> Any:
        self.calls.append(("subscribe", topics))
        return error() if any(t.startswith("deny") for t, _q in topics) else OK


@implementer(IAuthOnPublish)
class PlainOnly:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def auth_on_publish(self, client: Any, topic: str, payload: bytes, qos: int,
                        retain: bool) -> Any:
        self.topics.append(topic)
        return NEXT if topic.startswith("pass") else OK


class AuthHookM5Tests(BrokerTestCase):

    def test_publish_m5_sees_properties_and_denies(self) -> None:
        """For 5.0 clients auth_on_publish_m5 is called with the PUBLISH's properties; a
        refusal is answered with reason 0x87 and a reason string in PUBACK or PUBREC, a
        refused QoS 0 PUBLISH is dropped silently, and the connection stays open."""
        hooks = M5Hooks()
        hn = Harness(BASE5, plugins=[("m5", hooks)])
        c = connected5(hn, "c")
        pub(c, "deny/x", b"x", qos=1, pid=1, user_property=[("k", "v")])
        self.assertEqual(c.take(), puback5(1, reasons.NOT_AUTHORIZED, p_reason("not authorized")))
        pub(c, "deny/x", b"x", qos=2, pid=2)
        self.assertEqual(c.take(), pubrec5(2, reasons.NOT_AUTHORIZED, p_reason("not authorized")))
        pub(c, "deny/x", b"x")                      # QoS 0: dropped silently
        self.assertEqual(c.take(), b"")
        self.assertFalse(c.closed)
        self.assertEqual(hooks.calls[0], ("publish_m5", {"user_property": [("k", "v")]}))
        self.assertEqual({name for name, _ in hooks.calls}, {"publish_m5"})

    def test_plain_hooks_for_3x_clients(self) -> None:
        """3.1.1 clients are checked with the plain auth_on_publish and auth_on_subscribe
        hooks, not the _m5 ones."""
        hooks = M5Hooks()
        hn = Harness(BASE5, plugins=[("m5", hooks)])
        c = hn.connected("old")
        c.publish("ok", b"x")
        c.subscribe(1, ("ok", 0))
        self.assertEqual([name for name, _ in hooks.calls], ["publish", "subscribe"])

    def test_plain_hook_used_for_5_when_a_plugin_has_no_m5_variant(self) -> None:
        """For a 5.0 client, a plugin without auth_on_publish_m5 is asked through its plain
        auth_on_publish, in chain order with the _m5 hooks of other plugins."""
        plain, hooks = PlainOnly(), M5Hooks()
        hn = Harness(BASE5, plugins=[("plain", plain), ("m5", hooks)])
        c = connected5(hn, "c")
        pub(c, "pass/x", b"x", qos=1, pid=1)          # plain says NEXT, then the m5 hook
        pub(c, "y", b"x", qos=1, pid=2)               # plain says OK
        self.assertEqual(c.take(), puback5(1, NO_MATCH) + puback5(2, NO_MATCH))
        self.assertEqual(plain.topics, ["pass/x", "y"])
        self.assertEqual([name for name, _ in hooks.calls], ["publish_m5"])

    def test_subscribe_m5_denies_entries(self) -> None:
        """auth_on_subscribe_m5 is called once with the SUBSCRIBE's properties; its refusal
        gives SUBACK 0x87 for the valid filter, the invalid filter gets 0x8F, and nothing is
        subscribed."""
        hooks = M5Hooks()
        hn = Harness(BASE5, plugins=[("m5", hooks)])
        c = connected5(hn, "c")
        c.send(Subscribe(1, [("deny/a", SubOptions(1)), ("bad/#/x", SubOptions(0))],
                         {"subscription_identifier": [3]}))
        self.assertEqual(c.take(), suback5(1, reasons.NOT_AUTHORIZED,
                                           reasons.TOPIC_FILTER_INVALID))
        self.assertEqual(hooks.calls, [("subscribe_m5", {"subscription_identifier": [3]})])
        self.assertEqual(c.session.subscriptions, {})

    def test_will_checked_with_publish_m5(self) -> None:
        """A 5.0 client's will is checked with auth_on_publish_m5, and a refusal gives
        CONNACK 0x87."""
        hooks = M5Hooks()
        hn = Harness(BASE5, plugins=[("m5", hooks)])
        c = connect5(hn, "c", will=Will("deny/will", b"x", 0, False, {"content_type": "t"}))
        self.assertEqual(c.take(), connack5(reasons.NOT_AUTHORIZED))
        self.assertEqual(hooks.calls[0][0], "publish_m5")
