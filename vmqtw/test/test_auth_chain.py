"""The auth hook chain (vmqtw.auth.chain) on its own and through the protocol."""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from vmqtw.auth.api import (
    IAuthOnSubscribeM5,
    NEXT, OK, Error, IAuthOnPublish, IAuthOnRegister, IAuthOnSubscribe, Ok, RegisterRequest,
    error,
)
from vmqtw.auth.chain import (
    CHAIN_EXHAUSTED, PLUGIN_ERROR, Authorizer, Chain, PluginResultError,
)
from vmqtw.codec import Pubrel, Will
from vmqtw.test.harness import BASE, BrokerTestCase, Harness
from vmqtw.test.wire import connack, puback, pubcomp, publish, pubrec, suback

NO_ANON = "listener.tcp.t = 127.0.0.1:1883\nallow_anonymous = off\n"


@implementer(IAuthOnRegister, IAuthOnPublish, IAuthOnSubscribe)
class Plugin:
    """Answers every hook with ``answer`` (a value, or a callable taking the args)."""

    def __init__(self, answer: Any = NEXT, register: Any = None, publish: Any = None,
                 subscribe: Any = None) -> None:
        self.answers = {
            "register": answer if register is None else register,
            "publish": answer if publish is None else publish,
            "subscribe": answer if subscribe is None else subscribe,
        }
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def _answer(self, hook: str, *args: Any) -> Any:
        self.calls.append((hook, args))
        a = self.answers[hook]
        return a(*args) if callable(a) else a

    def auth_on_register(self, request: RegisterRequest) -> Any:
        return self._answer("register", request)

    def auth_on_publish(self, client: Any, topic: str, payload: bytes, qos: int,
                        retain: bool) -> Any:
        return self._answer("publish", client, topic, payload, qos, retain)

    def auth_on_subscribe(self, client: Any, topics: list[tuple[str, int]]) -> Any:
        return self._answer("subscribe", client, topics)


@implementer(IAuthOnPublish)
class PublishOnly:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def auth_on_publish(self, *args: Any) -> Any:
        return self.answer


def raises(*args: Any) -> Any:
    raise ZeroDivisionError("plugin bug")


def request(client_id: str = "c") -> RegisterRequest:
    return RegisterRequest(("192.0.2.1", 1), "", client_id, "u", b"pw", True, 4)


def result_of(d: "defer.Deferred[Any]") -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    return results[0]


class ChainTests(SynchronousTestCase):

    def run_both(self, plugins: list[tuple[str, Any]]) -> tuple[Any, Any]:
        chain = Chain(plugins)
        return (chain.run_sync(IAuthOnPublish, "auth_on_publish", None, "t", b"", 0, False),
                result_of(chain.run_async(IAuthOnRegister, "auth_on_register", request())))

    def test_first_non_next_wins(self) -> None:
        """In a plugin chain, the first answer that is not NEXT decides, for synchronous and
        Deferred-based hooks alike; later plugins are not asked."""
        later = Plugin(error("later"))
        sync, async_ = self.run_both([("a", Plugin(NEXT)), ("b", Plugin(OK)), ("c", later)])
        self.assertIs(sync, OK)
        self.assertIs(async_, OK)
        self.assertEqual(later.calls, [])

    def test_error_wins_over_later_ok(self) -> None:
        """An error from an earlier plugin decides even when a later plugin would answer OK,
        and keeps its reason."""
        sync, async_ = self.run_both([("a", Plugin(error("nope"))), ("b", Plugin(OK))])
        self.assertIsInstance(sync, Error)
        self.assertEqual(sync.reason, "nope")
        self.assertEqual(async_.reason, "nope")

    def test_ok_with_modifiers(self) -> None:
        """An Ok result keeps the modifiers the plugin returned."""
        sync, _ = self.run_both([("a", Plugin(Ok({"topic": "x"})))])
        self.assertEqual(sync.modifiers, {"topic": "x"})

    def test_exhausted(self) -> None:
        """When every plugin answers NEXT, the chain gives an error with reason
        CHAIN_EXHAUSTED (VerneMQ: chain_exhausted)."""
        sync, async_ = self.run_both([("a", Plugin(NEXT)), ("b", Plugin(NEXT))])
        self.assertEqual(sync.reason, CHAIN_EXHAUSTED)
        self.assertEqual(async_.reason, CHAIN_EXHAUSTED)

    def test_empty_chain_exhausted(self) -> None:
        """A chain with no plugin for the hook gives an error with reason CHAIN_EXHAUSTED."""
        sync, async_ = self.run_both([])
        self.assertEqual(sync.reason, CHAIN_EXHAUSTED)
        self.assertEqual(async_.reason, CHAIN_EXHAUSTED)

    def test_plugins_without_the_hook_are_skipped(self) -> None:
        """Plugins that do not provide a hook's interface are skipped for that hook and not
        counted among its providers."""
        chain = Chain([("p", PublishOnly(error("x"))), ("a", Plugin(OK))])
        self.assertIs(result_of(chain.run_async(IAuthOnRegister, "auth_on_register",
                                                request())), OK)
        self.assertEqual(len(chain.providers(IAuthOnRegister)), 1)

    def test_raising_plugin_is_an_error_and_logged(self) -> None:
        """A plugin raising in a hook is logged and makes the result an error with reason
        PLUGIN_ERROR; later plugins are not asked."""
        after = Plugin(OK)
        sync, async_ = self.run_both([("bad", Plugin(raises)), ("after", after)])
        self.assertEqual(sync.reason, PLUGIN_ERROR)
        self.assertEqual(async_.reason, PLUGIN_ERROR)
        self.assertEqual(after.calls, [])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)

    def test_non_result_values_are_errors_and_logged(self) -> None:
        """A hook answer that is not a plugin result (True, False, None, a str, 0) is logged
        as a PluginResultError and gives an error with reason PLUGIN_ERROR."""
        for value in (True, False, None, "ok", 0):
            sync, async_ = self.run_both([("bad", Plugin(value)), ("after", Plugin(OK))])
            self.assertEqual(sync.reason, PLUGIN_ERROR, value)
            self.assertEqual(async_.reason, PLUGIN_ERROR, value)
            self.assertEqual(len(self.flushLoggedErrors(PluginResultError)), 2, value)

    def test_sync_hook_returning_deferred_is_an_error(self) -> None:
        """A synchronous hook (auth_on_publish) returning a Deferred is logged as a
        PluginResultError and gives PLUGIN_ERROR."""
        chain = Chain([("d", Plugin(defer.succeed(OK)))])
        result = chain.run_sync(IAuthOnPublish, "auth_on_publish", None, "t", b"", 0, False)
        self.assertEqual(result.reason, PLUGIN_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(PluginResultError)), 1)

    def test_deferred_register(self) -> None:
        """auth_on_register may answer with a Deferred: the chain waits for it, and a NEXT
        it fires with passes on to the next plugin."""
        pending: "defer.Deferred[Any]" = defer.Deferred()
        chain = Chain([("slow", Plugin(register=pending)), ("b", Plugin(OK))])
        d = chain.run_async(IAuthOnRegister, "auth_on_register", request())
        self.assertNoResult(d)
        pending.callback(NEXT)
        self.assertIs(self.successResultOf(d), OK)

    def test_deferred_register_failing(self) -> None:
        """A Deferred from auth_on_register that fails is logged and gives an error with
        reason PLUGIN_ERROR."""
        pending: "defer.Deferred[Any]" = defer.Deferred()
        chain = Chain([("slow", Plugin(register=pending)), ("b", Plugin(OK))])
        d = chain.run_async(IAuthOnRegister, "auth_on_register", request())
        pending.errback(ZeroDivisionError("late bug"))
        self.assertEqual(self.successResultOf(d).reason, PLUGIN_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_deferred_firing_with_non_result(self) -> None:
        """A Deferred from auth_on_register firing with something that is not a plugin
        result is logged as a PluginResultError and gives PLUGIN_ERROR."""
        chain = Chain([("slow", Plugin(register=lambda r: defer.succeed(True)))])
        d = chain.run_async(IAuthOnRegister, "auth_on_register", request())
        self.assertEqual(self.successResultOf(d).reason, PLUGIN_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(PluginResultError)), 1)


class AuthorizerTests(SynchronousTestCase):

    def test_anonymous_skips_register_only(self) -> None:
        """With allow_anonymous the register check is OK without asking the plugins, but
        publish and subscribe are still authorised by them."""
        plugin = Plugin(error("no"))
        auth = Authorizer(Chain([("p", plugin)]), allow_anonymous=True)
        self.assertIs(self.successResultOf(auth.register(request())), OK)
        self.assertEqual(plugin.calls, [])
        self.assertIsInstance(auth.publish(None, "t", b"", 0, False), Error)
        self.assertIsInstance(auth.subscribe(None, [("t", 0)]), Error)

    def test_listener_override(self) -> None:
        """Without allow_anonymous and without plugins a CONNECT is refused (chain
        exhausted), unless the listener's allow_anonymous_override is set."""
        auth = Authorizer(Chain([]), allow_anonymous=False)
        self.assertEqual(self.successResultOf(auth.register(request())).reason, CHAIN_EXHAUSTED)
        self.assertIs(self.successResultOf(auth.register(request(), True)), OK)

    def test_no_authz_plugins_allows(self) -> None:
        """Without any authorization plugin, publish and subscribe are allowed."""
        auth = Authorizer(Chain([]), allow_anonymous=True)
        self.assertIs(auth.publish(None, "t", b"", 0, False), OK)
        self.assertIs(auth.subscribe(None, [("t", 0)]), OK)

    def test_separate_authz_chain(self) -> None:
        """A separate authorization chain decides publish, while register is still decided
        by the authentication chain."""
        auth = Authorizer(Chain([("a", Plugin(error("no")))]), False,
                          authz_chain=Chain([("z", Plugin(OK))]))
        self.assertIs(auth.publish(None, "t", b"", 0, False), OK)
        self.assertEqual(self.successResultOf(auth.register(request())).reason, "no")


# ---------------------------------------------------------------------------
# Through the protocol

class ProtocolAuthTests(BrokerTestCase):

    def test_register_sees_the_connect(self) -> None:
        """auth_on_register gets the CONNECT's client id, user name, password, clean start
        and protocol level together with the listener, mountpoint and peer address; the
        request's repr does not show the password."""
        plugin = Plugin(register=OK)
        hn = Harness(NO_ANON, [("p", plugin)])
        c = hn.client()
        c.connect("cid", username="user", password=b"secret")
        self.assertEqual(c.take(), connack(0))
        (hook, (req,)), = plugin.calls
        self.assertEqual((req.client_id, req.username, req.password, req.mountpoint,
                          req.listener, req.clean_start, req.protocol_level),
                         ("cid", "user", b"secret", "", "tcp.t", True, 4))
        self.assertEqual(req.peer[0], "192.0.2.1")
        self.assertNotIn("secret", repr(req))

    def test_invalid_credentials(self) -> None:
        """auth_on_register answering error("invalid_credentials") refuses the 3.1.1 CONNECT
        with CONNACK 4 (bad user name or password) and closes the connection."""
        hn = Harness(NO_ANON, [("p", Plugin(register=error("invalid_credentials")))])
        c = hn.client()
        c.connect("c", username="u", password=b"bad")
        self.assertEqual(c.take(), connack(4))
        self.assertTrue(c.closed)

    def test_other_error_not_authorized(self) -> None:
        """Any other auth_on_register error refuses the CONNECT with CONNACK 5 (not
        authorized) and closes the connection."""
        hn = Harness(NO_ANON, [("p", Plugin(register=error("banned")))])
        c = hn.client()
        c.connect("c")
        self.assertEqual(c.take(), connack(5))
        self.assertTrue(c.closed)

    def test_exhausted_chain_refuses(self) -> None:
        """A register chain where every plugin answers NEXT refuses the CONNECT with CONNACK
        5."""
        hn = Harness(NO_ANON, [("p", Plugin(register=NEXT))])
        c = hn.client()
        c.connect("c")
        self.assertEqual(c.take(), connack(5))

    def test_raising_register_plugin(self) -> None:
        """A raising auth_on_register plugin is logged and the CONNECT refused with CONNACK
        5."""
        hn = Harness(NO_ANON, [("p", Plugin(register=raises))])
        c = hn.client()
        c.connect("c")
        self.assertEqual(c.take(), connack(5))
        self.assertTrue(c.closed)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_register_returning_true(self) -> None:
        """auth_on_register returning a value that is not a plugin result is logged and the
        CONNECT refused with CONNACK 5."""
        hn = Harness(NO_ANON, [("p", Plugin(register=True))])
        c = hn.client()
        c.connect("c")
        self.assertEqual(c.take(), connack(5))
        self.assertEqual(len(self.flushLoggedErrors(PluginResultError)), 1)

    def test_deferred_register_others_served_meanwhile(self) -> None:
        """While one client's auth_on_register Deferred is pending, other clients connect,
        subscribe and publish normally; when it fires, the waiting client gets its
        CONNACK and the SUBACK for the SUBSCRIBE it pipelined, then live messages."""
        pending: dict[str, "defer.Deferred[Any]"] = {}

        def register(req: RegisterRequest) -> Any:
            if req.client_id == "slow":
                d: "defer.Deferred[Any]" = defer.Deferred()
                pending[req.client_id] = d
                return d
            return OK
        hn = Harness(NO_ANON, [("p", Plugin(register=register, publish=OK, subscribe=OK))])
        slow = hn.client()
        # CONNECT and the SUBSCRIBE pipelined behind it in one chunk.
        slow.connect("slow", extra=[])
        slow.subscribe(1, ("t", 1))
        self.assertEqual(slow.take(), b"")
        self.assertFalse(slow.closed)
        fast_sub = hn.subscriber("fast-sub", ("t", 1))
        fast_pub = hn.connected("fast-pub")
        fast_pub.publish("t", b"x", qos=1, pid=3)
        self.assertEqual(fast_pub.take(), puback(3))
        self.assertEqual(fast_sub.take(), publish("t", b"x", qos=1, pid=1))
        pending["slow"].callback(OK)
        self.assertEqual(slow.take(), connack(0) + suback(1, 1))
        fast_pub.publish("t", b"y", qos=1, pid=4)
        self.assertEqual(slow.take(), publish("t", b"y", qos=1, pid=1))

    def test_deferred_register_refused_later(self) -> None:
        """A pending auth_on_register that finally fails refuses the CONNECT (CONNACK 4) and
        closes the connection; the PUBLISH sent meanwhile is never processed."""
        d: "defer.Deferred[Any]" = defer.Deferred()
        hn = Harness(NO_ANON, [("p", Plugin(register=lambda r: d))])
        c = hn.client()
        c.connect("c")
        c.publish("t", b"held")
        d.callback(error("invalid_credentials"))
        self.assertEqual(c.take(), connack(4))
        self.assertTrue(c.closed)

    def test_client_gone_before_register_answers(self) -> None:
        """When the client disconnects before auth_on_register answers, the late OK writes
        nothing and creates no session."""
        d: "defer.Deferred[Any]" = defer.Deferred()
        hn = Harness(NO_ANON, [("p", Plugin(register=lambda r: d))])
        c = hn.client()
        c.connect("c")
        c.lose()
        d.callback(OK)
        self.assertEqual(c.take(), b"")
        self.assertEqual(hn.broker.sessions, {})

    def test_bad_bytes_while_authenticating(self) -> None:
        """Malformed bytes after a CONNECT whose auth_on_register is pending are handled
        only after the answer: the client gets its CONNACK, then the connection is closed
        and no session is kept."""
        d: "defer.Deferred[Any]" = defer.Deferred()
        hn = Harness(NO_ANON, [("p", Plugin(register=lambda r: d))])
        c = hn.client()
        c.connect("c", extra=[b"\x00\x00"])
        self.assertFalse(c.closed)
        d.callback(OK)
        self.assertEqual(c.take(), connack(0))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_publish_denied_311_disconnects(self) -> None:
        """A 3.1.1 PUBLISH refused by auth_on_publish closes the connection without an
        acknowledgement and is not routed; allowed PUBLISHes before it were delivered."""
        hn = Harness(BASE, [("p", Plugin(publish=lambda c, t, *a: error() if t == "no" else OK,
                                         subscribe=OK))])
        s = hn.subscriber("s", ("#", 1))
        p = hn.connected("p")
        p.publish("yes", b"1", qos=1, pid=1)
        self.assertEqual(p.take(), puback(1))
        p.publish("no", b"2", qos=1, pid=2)
        self.assertTrue(p.closed)
        self.assertEqual(p.take(), b"")
        self.assertEqual(s.take(), publish("yes", b"1", qos=1, pid=1))

    def test_publish_denied_31_fake_ack(self) -> None:
        """An MQTT 3.1 PUBLISH refused by auth_on_publish is acknowledged as usual (PUBACK,
        PUBREC/PUBCOMP) but not routed nor retained, and the client stays connected
        (VerneMQ behaviour)."""
        hn = Harness(BASE, [("p", Plugin(publish=lambda c, t, *a: error() if t == "no" else OK,
                                         subscribe=OK))])
        s = hn.subscriber("s", ("#", 2))
        p = hn.connected("p", level=3)
        p.publish("no", b"q1", qos=1, pid=1)
        self.assertEqual(p.take(), puback(1))
        p.publish("no", b"q2", qos=2, pid=2)
        self.assertEqual(p.take(), pubrec(2))
        p.send(Pubrel(2))
        self.assertEqual(p.take(), pubcomp(2))
        p.publish("no", b"q0")
        self.assertFalse(p.closed)
        self.assertEqual(s.take(), b"")
        self.assertEqual(hn.broker.store.retained_count(), 0)

    def test_publish_denied_31_disconnect_option(self) -> None:
        """With disconnect_on_unauthorized_publish_v3 = on, a refused MQTT 3.1 PUBLISH
        closes the connection without an acknowledgement."""
        hn = Harness(BASE + "disconnect_on_unauthorized_publish_v3 = on\n",
                     [("p", Plugin(publish=error(), subscribe=OK))])
        p = hn.connected("p", level=3)
        p.publish("no", b"q1", qos=1, pid=1)
        self.assertEqual(p.take(), b"")
        self.assertTrue(p.closed)

    def test_denied_retained_publish_not_stored(self) -> None:
        """A refused retained PUBLISH does not change the retained messages."""
        hn = Harness(BASE, [("p", Plugin(publish=error(), subscribe=OK))])
        p = hn.connected("p", level=3)
        p.publish("r", b"x", retain=True)
        self.assertEqual(hn.broker.store.retained_count(), 0)

    def test_publish_plugin_sees_session(self) -> None:
        """auth_on_publish gets the client (client id, mountpoint) and the PUBLISH's topic,
        payload, QoS and retain flag."""
        plugin = Plugin(publish=OK, subscribe=OK)
        hn = Harness(BASE + "listener.tcp.t.mountpoint = mp\n", [("p", plugin)])
        p = hn.connected("pub")
        p.publish("t", b"payload", qos=1, pid=1, retain=True)
        (hook, (client, topic, payload, qos, retain)), = plugin.calls
        self.assertEqual((client.client_id, client.mountpoint, topic, payload, qos, retain),
                         ("pub", "mp", "t", b"payload", 1, True))

    def test_subscribe_denied(self) -> None:
        """A SUBSCRIBE refused by auth_on_subscribe is answered with 0x80 for each filter,
        subscribes to nothing and keeps the connection open."""
        hn = Harness(BASE, [("p", Plugin(subscribe=error(), publish=OK))])
        s = hn.connected("s")
        s.subscribe(5, ("a", 1), ("b", 2))
        self.assertEqual(s.take(), suback(5, 0x80, 0x80))
        self.assertEqual(s.session.subscriptions, {})
        p = hn.connected("p")
        p.publish("a", b"x")
        self.assertEqual(s.take(), b"")
        self.assertFalse(s.closed)

    def test_subscribe_plugin_raising(self) -> None:
        """A raising auth_on_subscribe plugin is logged and the filter refused with SUBACK
        0x80."""
        hn = Harness(BASE, [("p", Plugin(subscribe=raises, publish=OK))])
        s = hn.connected("s")
        s.subscribe(5, ("a", 1))
        self.assertEqual(s.take(), suback(5, 0x80))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_will_denied(self) -> None:
        """A will message that auth_on_publish refuses makes the CONNECT fail with CONNACK
        5, closes the connection and creates no session."""
        hn = Harness(BASE, [("p", Plugin(publish=error(), subscribe=OK))])
        c = hn.client()
        c.connect("c", will=Will("w", b"x"))
        self.assertEqual(c.take(), connack(5))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})





@implementer(IAuthOnPublish)
class _PublishOnlyAcl:
    def auth_on_publish(self, *args):
        return OK


@implementer(IAuthOnSubscribeM5)
class _SubscribeM5Only:
    def auth_on_subscribe_m5(self, *args):
        return OK


class AuthorizerWithPartialPlugins(SynchronousTestCase):
    """Once any authorization plugin is enabled, a hook nobody provides denies
    (VerneMQ: no_matching_hook_found), instead of silently allowing."""

    def test_acl_without_subscribe_hook_denies_subscribe(self):
        """With a plugin providing only auth_on_publish, subscribe is denied (no matching
        hook) while publish is decided by the plugin."""
        auth = Authorizer(Chain([("pub_acl", _PublishOnlyAcl())]))
        self.assertIsInstance(auth.subscribe(object(), [("any/topic", 0)]), Error)
        self.assertIs(auth.publish(object(), "t", b"", 0, False), OK)

    def test_m5_only_acl_still_checks_311_clients(self):
        """With a plugin providing only auth_on_subscribe_m5, 3.1.1 subscriptions are denied
        instead of passing unchecked, and 5.0 ones are decided by the plugin."""
        auth = Authorizer(Chain([("sub5", _SubscribeM5Only())]))
        self.assertIsInstance(auth.subscribe(object(), [("t", 0)]), Error)
        self.assertIs(auth.subscribe_m5(object(), [("t", 0)], {}), OK)

    def test_no_authorization_plugin_allows(self):
        """Without any authorization plugin, authorization is off and subscribe is allowed."""
        auth = Authorizer(Chain([]))
        self.assertFalse(auth.authz_enabled)
        self.assertIs(auth.subscribe(object(), [("t", 0)]), OK)
