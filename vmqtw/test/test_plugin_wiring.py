"""Plugin answers reaching the protocol: publish/subscribe modifiers, the
notification hooks, and the pre-auth username replacing the CONNECT one."""
from __future__ import annotations

from typing import Any

from zope.interface import implementer

from vmqtw.auth.api import (
    NEXT, OK, IAuthOnPublish, IAuthOnRegister, IAuthOnSubscribe, IOnDeliver,
    IOnOfflineMessage, IOnPublish, IOnSubscribe, IOnUnsubscribe, error, ok,
)
from vmqtw.auth.hooks import Notifier
from vmqtw.codec import Unsubscribe
from vmqtw.test.harness import BASE, BrokerTestCase, Harness
from vmqtw.test.wire import connack, publish, suback, unsuback
from vmqtw.transport.protocol import MQTTFactory


class PluginHarness(Harness):
    """Harness whose factories also carry the plugins' notification hooks."""

    def __init__(self, config_text: str = BASE, plugins: list[tuple[str, Any]] = ()) -> None:
        super().__init__(config_text, plugins)
        notifier = Notifier(list(plugins))
        if notifier.deliver or notifier.offline_message:  # as BrokerService does
            self.broker.deliver_hook = notifier.on_deliver
            self.broker.offline_hook = notifier.on_offline_message
        self.factories = {
            listener.name: MQTTFactory(self.broker, self.authorizer, listener, self.clock,
                                       notifier)
            for listener in self.config.listeners
        }


@implementer(IAuthOnPublish, IAuthOnSubscribe)
class Rewriter:
    """Publishes to in/X go to out/X; subscribing to 'deny' is refused,
    'wide/#' is narrowed to 'wide/ok' at QoS 0."""

    def __init__(self, publish_mods: dict[str, Any] | None = None) -> None:
        self.publish_mods = publish_mods

    def auth_on_publish(self, client, topic, payload, qos, retain):
        if self.publish_mods is not None:
            return ok(**self.publish_mods)
        if topic.startswith("in/"):
            return ok(topic="out/" + topic[3:], payload=payload.upper())
        return OK

    def auth_on_subscribe(self, client, topics):
        out = []
        for f, q in topics:
            if f == "deny":
                out.append((f, 128))
            elif f == "wide/#":
                out.append(("wide/ok", 0))
            else:
                out.append((f, q))
        return ok(topics=out)


@implementer(IOnPublish, IOnSubscribe, IOnUnsubscribe)
class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_publish(self, client, topic, payload, qos, retain):
        self.events.append(("publish", client.client_id, topic, payload, qos, retain))

    def on_subscribe(self, client, topics):
        self.events.append(("subscribe", client.client_id, topics))

    def on_unsubscribe(self, client, topics):
        self.events.append(("unsubscribe", client.client_id, topics))
        return ok(topics=[t for t in topics if t != "keep"])


class PublishModifierTests(BrokerTestCase):
    def test_topic_and_payload_rewritten(self) -> None:
        """auth_on_publish ok(topic=..., payload=...) routes the rewritten message:
        subscribers of the new topic get the new payload, subscribers of the original
        topic get nothing."""
        hn = PluginHarness(plugins=[("rw", Rewriter())])
        out = hn.subscriber("s1", ("out/#", 0))
        orig = hn.subscriber("s2", ("in/#", 0))
        pub = hn.connected("p")
        pub.publish("in/a", b"hello")
        self.assertEqual(out.take(), publish("out/a", b"HELLO"))
        self.assertEqual(orig.take(), b"")

    def test_mountpoint_modifier_publishes_into_another_tree(self) -> None:
        """A mountpoint modifier from auth_on_publish publishes into that mountpoint: a
        subscriber on the listener with that mountpoint gets the message, one in the
        publisher's own mountpoint does not."""
        text = ("listener.tcp.a = 127.0.0.1:1883\nlistener.tcp.b = 127.0.0.1:1884\n"
                "listener.tcp.b.mountpoint = other\nallow_anonymous = on\n")
        hn = PluginHarness(text, plugins=[("rw", Rewriter({"mountpoint": "other"}))])
        there = hn.subscriber("s-b", ("t", 0), listener="b")
        here = hn.subscriber("s-a", ("t", 0), listener="a")
        pub = hn.connected("p", listener="a")
        pub.publish("t", b"x")
        self.assertEqual(there.take(), publish("t", b"x"))
        self.assertEqual(here.take(), b"")

    def test_qos_modifier_keeps_the_publishers_ack_flow(self) -> None:
        """A qos modifier changes the QoS the message is routed with, but the publisher
        still gets the PUBACK of the QoS 1 it sent."""
        hn = PluginHarness(plugins=[("rw", Rewriter({"qos": 0}))])
        sub = hn.subscriber("s", ("t", 1))
        pub = hn.connected("p")
        pub.publish("t", b"x", qos=1, pid=7)
        self.assertEqual(pub.take(), b"\x40\x02\x00\x07")  # PUBACK for the client's QoS 1
        self.assertEqual(sub.take(), publish("t", b"x"))   # routed at QoS 0

    def test_invalid_modifier_refuses_the_publish(self) -> None:
        """An unknown publish modifier refuses the PUBLISH: nothing is routed and the 3.1.1
        publisher is disconnected."""
        hn = PluginHarness(plugins=[("rw", Rewriter({"colour": "blue"}))])
        sub = hn.subscriber("s", ("t", 0))
        pub = hn.connected("p")
        pub.publish("t", b"x")
        self.assertEqual(sub.take(), b"")
        self.assertTrue(pub.closed)  # 3.1.1: a refused publish disconnects

    def test_wildcard_topic_from_a_modifier_is_refused(self) -> None:
        """A topic modifier containing a wildcard refuses the PUBLISH: nothing is routed and
        the publisher is disconnected."""
        hn = PluginHarness(plugins=[("rw", Rewriter({"topic": "a/#"}))])
        sub = hn.subscriber("s", ("#", 0))
        pub = hn.connected("p")
        pub.publish("t", b"x")
        self.assertEqual(sub.take(), b"")
        self.assertTrue(pub.closed)


class SubscribeModifierTests(BrokerTestCase):
    def test_rewrite_and_deny_single_entries(self) -> None:
        """auth_on_subscribe ok(topics=...) refuses single filters (SUBACK 0x80) and
        rewrites others (filter and granted QoS): the session subscribes to the rewritten
        filters only and gets only what matches them."""
        hn = PluginHarness(plugins=[("rw", Rewriter())])
        c = hn.connected("s")
        c.subscribe(3, ("deny", 1), ("wide/#", 2), ("plain", 1))
        self.assertEqual(c.take(), suback(3, 0x80, 0, 1))
        pub = hn.connected("p")
        pub.publish("wide/ok", b"1")
        pub.publish("wide/other", b"2")
        pub.publish("deny", b"3")
        self.assertEqual(c.take(), publish("wide/ok", b"1"))
        self.assertEqual(set(c.session.subscriptions), {"wide/ok", "plain"})


class NotificationTests(BrokerTestCase):
    def test_on_publish_on_subscribe_on_unsubscribe(self) -> None:
        """on_subscribe, on_publish and on_unsubscribe are called with the client's requests
        in order; the topics on_unsubscribe returns are the ones actually removed (the
        plugin kept one subscribed)."""
        rec = Recorder()
        hn = PluginHarness(plugins=[("rec", rec)])
        c = hn.connected("c")
        c.subscribe(1, ("a", 1), ("keep", 0))
        c.take()
        c.publish("a", b"p", qos=1)
        c.send(Unsubscribe(2, ["a", "keep"]))
        self.assertEqual(c.packets()[-1].packet_id, 2)
        self.assertEqual(rec.events, [
            ("subscribe", "c", [("a", 1), ("keep", 0)]),
            ("publish", "c", "a", b"p", 1, False),
            ("unsubscribe", "c", ["a", "keep"]),
        ])
        # The plugin kept 'keep' subscribed.
        self.assertEqual(set(c.session.subscriptions), {"keep"})

    def test_unsuback_has_one_code_per_requested_filter(self) -> None:
        """When on_unsubscribe keeps a filter subscribed, the 3.1.1 client still gets a
        plain UNSUBACK for its request."""
        hn = PluginHarness(plugins=[("rec", Recorder())])
        c = hn.connected("c")
        c.subscribe(1, ("keep", 0))
        c.take()
        c.send(Unsubscribe(5, ["keep"]))
        self.assertEqual(c.take(), unsuback(5))


@implementer(IAuthOnRegister)
class SeesUsername:
    def __init__(self) -> None:
        self.usernames: list[str | None] = []

    def auth_on_register(self, request):
        self.usernames.append(request.username)
        return OK if request.username == "device-7" else NEXT


class PreauthTests(BrokerTestCase):
    TEXT = ("listener.ssl.s = 127.0.0.1:8883\nlistener.ssl.certfile = c.pem\n"
            "listener.ssl.keyfile = k.pem\nlistener.ssl.s.use_identity_as_username = on\n")

    def test_identity_replaces_the_connect_username_before_auth(self) -> None:
        """With use_identity_as_username, the TLS(-PSK) identity replaces the CONNECT user
        name before auth_on_register sees it, and becomes the session's user name."""
        seen = SeesUsername()
        hn = PluginHarness(self.TEXT, plugins=[("seen", seen)])
        c = hn.client()
        c.transport.psk_identity = "device-7"  # what the TLS-PSK layer exposes
        c.connect("c", username="spoofed", password=b"pw")
        self.assertEqual(c.take(), connack(0))
        self.assertEqual(seen.usernames, ["device-7"])
        self.assertEqual(c.session.username, "device-7")

    def test_no_identity_keeps_the_connect_username(self) -> None:
        """With use_identity_as_username but no TLS identity on the connection,
        auth_on_register sees the CONNECT user name (and here no plugin knows it:
        CONNACK 4, the answer to a wrong password too)."""
        seen = SeesUsername()
        hn = PluginHarness(self.TEXT, plugins=[("seen", seen)])
        c = hn.client()
        c.connect("c", username="someone", password=b"pw")
        self.assertEqual(c.take(), connack(4))
        self.assertEqual(seen.usernames, ["someone"])


@implementer(IOnDeliver, IOnOfflineMessage)
class DeliverPlugin:
    """Tags payloads for client 'tagged'; fails for 'boom'; errors for 'err'."""

    def __init__(self) -> None:
        self.offline: list[tuple[Any, ...]] = []

    def on_deliver(self, client, topic, payload, qos, retain):
        if client.client_id == "tagged":
            return ok(payload=b"[" + payload + b"]")
        if client.client_id == "moved":
            return ok(topic="elsewhere/" + topic)
        if client.client_id == "boom":
            raise RuntimeError("plugin bug")
        if client.client_id == "err":
            return error("nope")
        if client.client_id == "bad":
            return ok(topic="a/#")
        return NEXT

    def on_offline_message(self, mountpoint, client_id, qos, topic, payload, retain):
        self.offline.append((mountpoint, client_id, qos, topic, payload, retain))


class DeliverHookTests(BrokerTestCase):
    def test_rewrites_per_recipient_and_always_delivers(self) -> None:
        """on_deliver may rewrite the payload or topic for one recipient only; NEXT, an
        error result, an invalid modifier or a raising plugin (logged) leave the message
        unchanged, and every subscriber still gets it."""
        hn = PluginHarness(plugins=[("d", DeliverPlugin())])
        subs = {cid: hn.subscriber(cid, ("t", 0))
                for cid in ("tagged", "moved", "plain", "err", "bad")}
        boom = hn.subscriber("boom", ("t", 0))
        pub = hn.connected("p")
        pub.publish("t", b"x")
        self.assertEqual(subs["tagged"].take(), publish("t", b"[x]"))
        self.assertEqual(subs["moved"].take(), publish("elsewhere/t", b"x"))
        for cid in ("plain", "err", "bad"):
            self.assertEqual(subs[cid].take(), publish("t", b"x"), cid)
        self.assertEqual(boom.take(), publish("t", b"x"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_offline_message_hook(self) -> None:
        """on_offline_message is called with (mountpoint, client id, QoS, topic, payload,
        retain) when a message is queued for an offline session; a QoS 0 message, which
        is not queued, does not call it."""
        plugin = DeliverPlugin()
        hn = PluginHarness(plugins=[("d", plugin)])
        s = hn.subscriber("away", ("t", 1), clean=False)
        s.lose()
        pub = hn.connected("p")
        pub.publish("t", b"q1", qos=1)
        pub.publish("t", b"q0", qos=0)  # QoS 0 is not queued for offline sessions
        self.assertEqual(plugin.offline, [("", "away", 1, "t", b"q1", False)])


class PublishPropertiesModifierTests(BrokerTestCase):
    """ok(properties=...) replaces a message's MQTT 5.0 properties."""

    TEXT = BASE + "listener.tcp.allowed_protocol_versions = 3,4,5\n"

    def test_properties_replaced_for_5_0_subscribers(self) -> None:
        """ok(properties=...) from auth_on_publish replaces the properties a 5.0 subscriber
        receives with the message."""
        from vmqtw.codec import Subscribe, Connect
        from vmqtw.codec.packets import SubOptions
        mods = {"properties": {"user_property": [("tenant", "a")], "content_type": "text"}}
        hn = PluginHarness(self.TEXT, plugins=[("rw", Rewriter(mods))])
        sub = hn.client(level=5)
        sub.send(Connect("s5", 5))
        sub.send(Subscribe(1, [("t", SubOptions(0))]))
        sub.take()
        pub = hn.connected("p")
        pub.publish("t", b"x")
        (msg,) = sub.packets()
        self.assertEqual(msg.properties, mods["properties"])

    def test_invalid_properties_refuse_the_publish(self) -> None:
        """Properties a plugin may not set (topic alias), of the wrong type, or not a dict
        refuse the PUBLISH: nothing is routed and the publisher is disconnected."""
        for bad in ({"topic_alias": 3}, {"content_type": 7}, ["not", "a", "dict"]):
            hn = PluginHarness(self.TEXT, plugins=[("rw", Rewriter({"properties": bad}))])
            sub = hn.subscriber("s", ("t", 0))
            pub = hn.connected("p")
            pub.publish("t", b"x")
            self.assertEqual(sub.take(), b"", bad)
            self.assertTrue(pub.closed, bad)
