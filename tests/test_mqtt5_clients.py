"""MQTT 5.0 against a broker in this process: paho-mqtt's v5 client,
``mosquitto_pub/sub -V mqttv5`` and byte-level raw clients for the failure paths.

Every wait is on an event with a timeout.  Where a test needs time to pass for
the broker (message expiry), it moves the broker's clock (the ``Broker`` takes
its clock as a parameter) instead of sleeping.
"""
from __future__ import annotations

import shutil
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from zope.interface import implementer

from tests.support import (
    BrokerTestCase, MQTTv311, MQTTv5, Paho, SubscriptionWatcher, in_thread,
    need_mosquitto_clients, read_packet, run_process, stop_broker, when_session_event,
)
from vmqtw.auth.api import OK, IAuthOnRegister, IOnAuth, error, ok
from vmqtw.config import load
from vmqtw.core.broker import SharedGroup
from vmqtw.service import BrokerService
from vmqtw.test.wire import (
    _s, connect_packet, p_auth_data, p_auth_method, p_receive_max, props, publish5, vbi,
)

PUB = shutil.which("mosquitto_pub")
SUB = shutil.which("mosquitto_sub")

CONFIG5 = """\
allow_anonymous = on
listener.tcp.default = 127.0.0.1:0
listener.tcp.default.allowed_protocol_versions = 3,4,5
listener.tcp.old = 127.0.0.1:0
listener.tcp.old.allowed_protocol_versions = 3,4
topic_alias_max_broker = 10
topic_alias_max_client = 10
"""


def publish_props(**values: Any) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(p, name, value)
    return p


class Paho5(Paho):
    """The support module's Paho client, speaking MQTT 5.0 with properties."""

    def __init__(self, port: int, client_id: str, **kwargs: Any) -> None:
        super().__init__(port, client_id, MQTTv5, **kwargs)
        self.connack_properties: Any = None

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        self.connack_properties = properties
        super()._on_connect(client, userdata, flags, reason, properties)

    def connect5(self, clean_start: bool = True, expect_success: bool = True,
                 **properties: Any) -> tuple[int, bool]:
        """CONNECT with ``properties`` (paho names, e.g. SessionExpiryInterval=60)."""
        p = None
        if properties:
            p = Properties(PacketTypes.CONNECT)
            for name, value in properties.items():
                setattr(p, name, value)
        return self.connect(expect_success, clean_start=clean_start, properties=p)

    def subscribe5(self, topic: str, qos: int = 0, sub_id: int | None = None,
                   **options: Any) -> list[int]:
        p = None
        if sub_id is not None:
            p = Properties(PacketTypes.SUBSCRIBE)
            p.SubscriptionIdentifier = sub_id
        with self._cond:
            rc, mid = self.client.subscribe(topic, options=SubscribeOptions(qos, **options),
                                            properties=p)
            if rc != 0:
                raise AssertionError(f"{self.client_id}: subscribe failed: {rc}")
            if not self._cond.wait_for(lambda: mid in self._subacks, self.timeout):
                raise AssertionError(f"{self.client_id}: no SUBACK for {topic!r}")
            return self._subacks.pop(mid)

    def publish5(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                 **properties: Any) -> None:
        info = self.client.publish(topic, payload, qos, retain,
                                   publish_props(**properties) if properties else None)
        info.wait_for_publish(self.timeout)
        if not info.is_published():
            raise AssertionError(f"{self.client_id}: publish to {topic!r} not completed")

    def disconnect5(self, **properties: Any) -> None:
        p = None
        if properties:
            p = Properties(PacketTypes.DISCONNECT)
            for name, value in properties.items():
                setattr(p, name, value)
        self.client.disconnect(ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection"), p)
        self.wait_disconnected()


class ShiftedClock:
    """The reactor's clock, ``shift`` seconds ahead (for the broker only)."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.shift = 0.0

    def seconds(self) -> float:
        return self.clock.seconds() + self.shift

    def callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(*args, **kwargs)


def user_props(message: Any) -> list[tuple[str, str]]:
    return list(getattr(message.properties, "UserProperty", []) or [])


def stop_broker5(service: BrokerService) -> Any:
    """stop_broker, with ``Broker.stop()`` first: MQTT 5.0 sessions outlive
    their connections, and their expiry timers must not outlive the test."""
    service.broker.stop()
    return stop_broker(service)


class _Alternating:
    """Stands for ``random.Random`` in ``SharedGroup``: picks members in turn."""

    def __init__(self) -> None:
        self.n = 0

    def choice(self, pool: list[Any]) -> Any:
        self.n += 1
        return pool[self.n % len(pool)]


class Broker5TestCase(BrokerTestCase):

    def start_broker5(self, text: str = "", plugins: Any = None) -> BrokerService:
        service = BrokerService(load(self.write_config(text or CONFIG5)), reactor,
                                plugins=plugins)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(stop_broker5, service)
        return service


# ---------------------------------------------------------------------------
# paho-mqtt v5

class Paho5Tests(Broker5TestCase):

    def setUp(self) -> None:
        self.broker = self.start_broker5(CONFIG5)
        self.port = self.port_of(self.broker)

    def client(self, name: str, **kwargs: Any) -> Paho5:
        c = Paho5(self.port, f"v5-{name}", **kwargs)
        self.addCleanup(lambda: in_thread(c.close))
        return c

    def _round_trip(self, qos: int) -> Any:
        sub, pub = self.client("sub"), self.client("pub")
        topic = f"v5/rt/{qos}"

        def scenario() -> Any:
            sub.connect5()
            self.assertEqual(sub.subscribe5(topic, qos), [qos])
            pub.connect5()
            pub.publish5(topic, b"payload \x00\xff", qos)
            m = sub.get()
            return m.topic, m.payload, m.qos, m.retain

        return in_thread(scenario).addCallback(
            self.assertEqual, (topic, b"payload \x00\xff", qos, False))

    def test_qos0_round_trip(self) -> Any:
        """An MQTT 5.0 paho subscriber gets a QoS 0 message from a 5.0 publisher with its
        topic and binary payload intact, at QoS 0 and without the retain flag."""
        return self._round_trip(0)

    def test_qos1_round_trip(self) -> Any:
        """An MQTT 5.0 paho subscriber gets a QoS 1 message from a 5.0 publisher with its
        topic and binary payload intact, at QoS 1 and without the retain flag."""
        return self._round_trip(1)

    def test_qos2_round_trip(self) -> Any:
        """An MQTT 5.0 paho subscriber gets a QoS 2 message from a 5.0 publisher with its
        topic and binary payload intact, at QoS 2 and without the retain flag."""
        return self._round_trip(2)

    def test_connack_announces_the_limits(self) -> Any:
        """The 5.0 CONNACK announces Receive Maximum 65535, the configured Topic Alias
        Maximum (10), retain, wildcard, subscription identifier and shared subscriptions
        available, and no Maximum QoS (all QoS levels are supported)."""
        c = self.client("c")

        def scenario() -> Any:
            c.connect5()
            p = c.connack_properties
            return (p.ReceiveMaximum, p.TopicAliasMaximum, p.RetainAvailable,
                    p.WildcardSubscriptionAvailable, p.SubscriptionIdentifierAvailable,
                    p.SharedSubscriptionAvailable, hasattr(p, "MaximumQoS"))

        return in_thread(scenario).addCallback(
            self.assertEqual, (65535, 10, 1, 1, 1, 1, False))

    def test_properties_passed_through(self) -> Any:
        """A PUBLISH's payload format indicator, content type, response topic, correlation
        data and user properties (duplicates and order kept) reach the subscriber unchanged;
        the message expiry interval arrives counted down (290-300 s of 300) and the
        publisher's topic alias is not forwarded."""
        sub, pub = self.client("sub"), self.client("pub")

        def scenario() -> Any:
            sub.connect5()
            sub.subscribe5("v5/props", 1)
            pub.connect5()
            pub.publish5("v5/props", "héllo".encode(), 1, PayloadFormatIndicator=1,
                         ContentType="text/plain", ResponseTopic="v5/reply",
                         CorrelationData=b"\x01\x02", MessageExpiryInterval=300,
                         UserProperty=[("z", "1"), ("a", "2"), ("z", "3")])
            m = sub.get()
            p = m.properties
            return (m.payload, p.PayloadFormatIndicator, p.ContentType, p.ResponseTopic,
                    p.CorrelationData, 290 < p.MessageExpiryInterval <= 300, user_props(m),
                    hasattr(p, "TopicAlias"))

        return in_thread(scenario).addCallback(self.assertEqual, (
            "héllo".encode(), 1, "text/plain", "v5/reply", b"\x01\x02", True,
            [("z", "1"), ("a", "2"), ("z", "3")], False))

    def test_request_response(self) -> Any:
        """MQTT 5.0 request/response: the responder reads the request's response topic and
        correlation data and answers there; the requester receives the answer with the same
        correlation data."""
        requester, responder = self.client("req"), self.client("resp")

        def scenario() -> Any:
            responder.connect5()
            responder.subscribe5("v5/service", 1)
            requester.connect5()
            requester.subscribe5("v5/answers/req", 1)
            requester.publish5("v5/service", b"2+2", 1, ResponseTopic="v5/answers/req",
                               CorrelationData=b"ticket-7")
            request = responder.get()
            responder.publish5(request.properties.ResponseTopic, b"4", 1,
                               CorrelationData=request.properties.CorrelationData)
            answer = requester.get()
            return answer.topic, answer.payload, answer.properties.CorrelationData

        return in_thread(scenario).addCallback(
            self.assertEqual, ("v5/answers/req", b"4", b"ticket-7"))

    @inlineCallbacks
    def test_session_expiry_resume_and_end(self) -> Any:
        """A client with Session Expiry Interval 60 that disconnects keeps its session: on
        return with clean start off the CONNACK says session present and the three QoS 1
        messages published meanwhile arrive in order; disconnecting with Session Expiry
        Interval 0 ends the session at once."""
        durable, pub = self.client("durable"), self.client("pub")

        def first_visit() -> None:
            self.assertEqual(durable.connect5(SessionExpiryInterval=60), (0, False))
            durable.subscribe5("v5/offline", 1)
            durable.disconnect()

        yield in_thread(first_visit)

        def while_away() -> None:
            pub.connect5()
            for i in range(3):
                pub.publish5("v5/offline", b"m%d" % i, 1)

        yield in_thread(while_away)

        def come_back() -> Any:
            connack = durable.connect5(clean_start=False, SessionExpiryInterval=60)
            return connack, [m.payload for m in durable.get_many(3)]

        connack, got = yield in_thread(come_back)
        self.assertEqual(connack, (0, True))
        self.assertEqual(got, [b"m0", b"m1", b"m2"])
        gone = when_session_event(self.broker, durable.client_id, ["gone"])
        yield in_thread(durable.disconnect5, SessionExpiryInterval=0)
        yield gone
        self.assertNotIn(("", durable.client_id), self.broker.broker.sessions)

    @inlineCallbacks
    def test_session_without_expiry_ends_at_disconnect(self) -> Any:
        """A 5.0 session without a Session Expiry Interval (0 by default) is removed when
        the client disconnects, even with clean start off: the session is gone, not
        offline."""
        c = self.client("c")
        gone = when_session_event(self.broker, c.client_id, ["gone", "offline"])

        def scenario() -> None:
            c.connect5(clean_start=False)
            c.subscribe5("v5/x", 1)
            c.disconnect()

        yield in_thread(scenario)
        self.assertEqual((yield gone), "gone")

    @inlineCallbacks
    def test_message_expiry(self) -> Any:
        """A queued message whose Message Expiry Interval runs out while its subscriber is
        offline is dropped (and counted); the others are delivered, with the expiry interval
        reduced by the time they waited (100 - 40 s) and none added to a message that had
        none."""
        clock = ShiftedClock(reactor)
        self.broker.broker.clock = clock
        durable, pub = self.client("durable"), self.client("pub")

        def first_visit() -> None:
            durable.connect5(SessionExpiryInterval=600)
            durable.subscribe5("v5/exp", 1)
            durable.disconnect()
            pub.connect5()
            pub.publish5("v5/exp", b"short", 1, MessageExpiryInterval=30)
            pub.publish5("v5/exp", b"long", 1, MessageExpiryInterval=100)
            pub.publish5("v5/exp", b"forever", 1)

        yield in_thread(first_visit)
        clock.shift = 40  # the broker sees 40 s pass

        def come_back() -> Any:
            durable.connect5(clean_start=False, SessionExpiryInterval=600)
            return [(m.payload, getattr(m.properties, "MessageExpiryInterval", None))
                    for m in durable.get_many(2)]

        got = yield in_thread(come_back)
        self.assertEqual([g[0] for g in got], [b"long", b"forever"])
        self.assertTrue(55 <= got[0][1] <= 60, got)  # 100 - 40, minus real time
        self.assertIsNone(got[1][1])
        self.assertEqual(self.broker.broker.sessions[("", durable.client_id)].dropped, 1)

    def test_subscription_identifiers(self) -> Any:
        """A message matching two of a client's subscriptions is delivered once, carrying
        both subscription identifiers, at the highest granted QoS; a message matching one
        carries only that one's identifier and its QoS."""
        sub, pub = self.client("sub"), self.client("pub")

        def scenario() -> Any:
            sub.connect5()
            sub.subscribe5("v5/si/#", 0, sub_id=7)
            sub.subscribe5("v5/si/a", 2, sub_id=8)
            pub.connect5()
            pub.publish5("v5/si/a", b"both", 2)
            pub.publish5("v5/si/b", b"one", 2)
            got = sorted(((m.payload, m.qos, sorted(m.properties.SubscriptionIdentifier))
                          for m in sub.get_many(2)))
            return got

        return in_thread(scenario).addCallback(
            self.assertEqual, [(b"both", 2, [7, 8]), (b"one", 0, [7])])

    def test_no_local(self) -> Any:
        """With the No Local option a client does not get its own messages back on that
        subscription, while other subscribers get them and it still gets messages from other
        clients."""
        me, other = self.client("me"), self.client("other")

        def scenario() -> Any:
            me.connect5()
            me.subscribe5("v5/nl", 1, noLocal=True)
            me.subscribe5("v5/nl-marker", 1)
            other.connect5()
            other.subscribe5("v5/nl", 1)
            me.publish5("v5/nl", b"mine", 1)
            mine_elsewhere = other.get().payload
            me.publish5("v5/nl-marker", b"marker", 1)
            # Deliveries to one client keep their order: had "mine" come back,
            # it would arrive before the marker.
            first = me.get().payload
            other.publish5("v5/nl", b"theirs", 1)
            return mine_elsewhere, first, me.get().payload

        return in_thread(scenario).addCallback(
            self.assertEqual, (b"mine", b"marker", b"theirs"))

    def test_retain_handling_and_retain_as_published(self) -> Any:
        """Retain Handling 2 never sends the retained message, 1 sends it only for a new
        subscription (not on re-subscribing), 0 always sends it (retain flag set); live
        messages arrive with retain cleared unless the subscription has Retain As
        Published."""
        sub, pub = self.client("sub"), self.client("pub")

        def scenario() -> Any:
            pub.connect5()
            pub.publish5("v5/rh", b"kept", 1, retain=True)
            sub.connect5()
            seen = []
            sub.subscribe5("v5/rh", 1, retainHandling=2)          # never
            pub.publish5("v5/rh", b"live1", 1)
            m = sub.get()
            seen.append((m.payload, m.retain))
            sub.subscribe5("v5/rh", 1, retainHandling=1)          # exists: not sent
            sub.subscribe5("v5/rh", 1, retainHandling=0)          # sent
            m = sub.get()
            seen.append((m.payload, m.retain))
            sub.subscribe5("v5/rh", 1, retainAsPublished=True, retainHandling=1)
            pub.publish5("v5/rh", b"live2", 1, retain=True)
            m = sub.get()
            seen.append((m.payload, m.retain))
            return seen

        return in_thread(scenario).addCallback(self.assertEqual, [
            (b"live1", False), (b"kept", True), (b"live2", True)])

    def test_topic_alias_from_paho(self) -> Any:
        """Topic aliases set by a 5.0 publisher (full topic with alias 3, then an empty
        topic with alias 3) are resolved by the broker: both a 5.0 and a 3.1.1 subscriber
        receive all three messages under the full topic."""
        sub, pub, _old = self.client("sub"), self.client("pub"), self.client("old")
        old_client = Paho(self.port, "v5-old311", MQTTv311)
        self.addCleanup(lambda: in_thread(old_client.close))

        def scenario() -> Any:
            sub.connect5()
            sub.subscribe5("v5/alias/#", 1)
            old_client.connect()
            old_client.subscribe("v5/alias/#", 1)
            pub.connect5()
            pub.publish5("v5/alias/long/topic", b"1", 1, TopicAlias=3)
            pub.publish5("", b"2", 1, TopicAlias=3)
            pub.publish5("", b"3", 0, TopicAlias=3)
            return ([(m.topic, m.payload) for m in sub.get_many(3)],
                    [(m.topic, m.payload) for m in old_client.get_many(3)])

        expected = [("v5/alias/long/topic", b"%d" % i) for i in (1, 2, 3)]
        return in_thread(scenario).addCallback(self.assertEqual, (expected, expected))

    def test_topic_alias_above_the_maximum(self) -> Any:
        """A client using a topic alias above the broker's Topic Alias Maximum (11 > 10) is
        disconnected with reason 0x94 (Topic Alias invalid), and another client keeps being
        served."""
        bad, bystander = self.client("bad"), self.client("bystander")

        def scenario() -> Any:
            bystander.connect5()
            bystander.subscribe5("v5/ok", 1)
            bad.connect5()
            bad.client.publish("v5/x", b"x", 0, properties=publish_props(TopicAlias=11))
            bad.wait_disconnected()
            bystander.publish5("v5/ok", b"still here", 1)
            return bad.disconnect_reason.value, bystander.get().payload

        return in_thread(scenario).addCallback(self.assertEqual, (0x94, b"still here"))

    def test_shared_subscription(self) -> Any:
        """Messages to a $share/g/ group are split between its two members, each message
        delivered to exactly one of them, and no retained message is sent on subscribing to
        a shared subscription.  (The member is picked at random, as in VerneMQ; here the
        random source alternates so that each member gets two.)"""
        self.patch(SharedGroup, "rng", _Alternating())
        a, b, pub = self.client("a"), self.client("b"), self.client("pub")

        def scenario() -> Any:
            pub.connect5()
            pub.publish5("v5/shared", b"retained", 1, retain=True)
            a.connect5()
            a.subscribe5("$share/g/v5/shared", 1)
            b.connect5()
            b.subscribe5("$share/g/v5/shared", 1)
            for i in range(4):
                pub.publish5("v5/shared", b"%d" % i, 1)
            got = [m.payload for m in a.get_many(2)] + [m.payload for m in b.get_many(2)]
            return sorted(got)

        # Four messages shared two by two; no retained message on $share.
        return in_thread(scenario).addCallback(self.assertEqual, [b"0", b"1", b"2", b"3"])

    @inlineCallbacks
    def test_will_delay(self) -> Any:
        """A will with Will Delay Interval 1 s, on a session that outlives the connection,
        is published about 1 s after the client drops (not earlier), with its user
        property."""
        watcher, dying = self.client("watcher"), self.client("dying")
        will = Properties(PacketTypes.WILLMESSAGE)
        will.WillDelayInterval = 1
        will.UserProperty = ("why", "dropped")
        dying.client.will_set("v5/will", b"gone", 1, False, will)

        def setup() -> None:
            watcher.connect5()
            watcher.subscribe5("v5/will", 1)
            dying.connect5(SessionExpiryInterval=60)

        yield in_thread(setup)
        started = reactor.seconds()

        def die_and_wait() -> Any:
            dying.drop()
            m = watcher.get()
            return m.payload, user_props(m)

        got = yield in_thread(die_and_wait)
        self.assertEqual(got, (b"gone", [("why", "dropped")]))
        self.assertGreaterEqual(reactor.seconds() - started, 1.0)

    @inlineCallbacks
    def test_will_delay_cancelled_by_resuming(self) -> Any:
        """A delayed will (30 s) waits after the client drops; when the client resumes its
        session before the delay runs out the will timer is cancelled and the will is
        discarded, never sent."""
        dying = self.client("dying")
        will = Properties(PacketTypes.WILLMESSAGE)
        will.WillDelayInterval = 30
        dying.client.will_set("v5/will", b"gone", 1, False, will)
        offline = when_session_event(self.broker, dying.client_id, ["offline"])

        def setup() -> None:
            dying.connect5(SessionExpiryInterval=60)
            dying.drop()

        yield in_thread(setup)
        yield offline
        session = self.broker.broker.sessions[("", dying.client_id)]
        self.assertIsNotNone(session.will_call)  # the will waits for its delay
        again = self.client("dying")
        connack = yield in_thread(again.connect5, False, True, SessionExpiryInterval=60)
        self.assertEqual(connack, (0, True))
        self.assertIsNone(session.will_call)     # resumed in time: never sent
        self.assertIsNone(session.will)

    def test_no_authentication_plugin(self) -> Any:
        """A CONNECT with an Authentication Method when no plugin handles enhanced
        authentication is refused with reason 0x8C (Bad authentication method)."""
        c = self.client("c")

        def scenario() -> Any:
            reason, _ = c.connect5(expect_success=False, AuthenticationMethod="SCRAM-SHA-1")
            c.wait_disconnected()
            return reason

        return in_thread(scenario).addCallback(self.assertEqual, 0x8C)

    def test_mqtt5_refused_where_not_allowed(self) -> Any:
        """On a listener whose allowed_protocol_versions omit 5, a 5.0 CONNECT is refused
        with reason 0x84 (Unsupported Protocol Version)."""
        c = Paho5(self.port_of(self.broker, "tcp.old"), "v5-refused")
        self.addCleanup(lambda: in_thread(c.close))

        def scenario() -> Any:
            reason, _ = c.connect5(expect_success=False)
            c.wait_disconnected()
            return reason

        return in_thread(scenario).addCallback(self.assertEqual, 0x84)

    def test_v5_publisher_v311_subscriber_and_back(self) -> Any:
        """Messages cross between an MQTT 5.0 and a 3.1.1 client in both directions at QoS
        0, 1 and 2 with topic, payload and QoS kept; the 5.0 subscriber also gets its
        subscription identifier."""
        new = self.client("new")
        old = Paho(self.port, "v5-interop-311", MQTTv311)
        self.addCleanup(lambda: in_thread(old.close))

        def scenario() -> Any:
            new.connect5()
            new.subscribe5("v5/from311", 2, sub_id=5)
            old.connect()
            old.subscribe("v5/from5", 2)
            got = []
            for qos in (0, 1, 2):
                new.publish5("v5/from5", b"n%d" % qos, qos, UserProperty=[("k", "v")],
                             MessageExpiryInterval=60)
                m = old.get()
                got.append((m.topic, m.payload, m.qos))
                old.publish("v5/from311", b"o%d" % qos, qos)
                m = new.get()
                got.append((m.topic, m.payload, m.qos, m.properties.SubscriptionIdentifier))
            return got

        return in_thread(scenario).addCallback(self.assertEqual, [
            ("v5/from5", b"n0", 0), ("v5/from311", b"o0", 0, [5]),
            ("v5/from5", b"n1", 1), ("v5/from311", b"o1", 1, [5]),
            ("v5/from5", b"n2", 2), ("v5/from311", b"o2", 2, [5])])


# ---------------------------------------------------------------------------
# Byte-level clients: flow control and the failure paths, exact reason codes

def connect5_packet(client_id: str, *items: bytes, clean: bool = True,
                    keepalive: int = 60) -> bytes:
    """A 5.0 CONNECT with the property ``items``, built by hand (vmqtw.test.wire)."""
    return connect_packet(client_id, 5, clean, keepalive, properties=items)


def publish5_packet(topic: str, payload: bytes, qos: int = 0, pid: int = 1,
                    *items: bytes) -> bytes:
    """A 5.0 PUBLISH with the property ``items``, built by hand (vmqtw.test.wire)."""
    return publish5(topic, payload, *items, qos=qos, pid=pid)


PINGREQ, PINGRESP = b"\xc0\x00", b"\xd0\x00"


class RawMQTT5Tests(Broker5TestCase):

    config = CONFIG5 + "receive_max_broker = 2\nmax_message_size = 200\n"

    def setUp(self) -> None:
        self.broker = self.start_broker5(self.config)

    @inlineCallbacks
    def connected(self, client_id: str, *items: bytes) -> Any:
        client = yield self.raw_client(self.broker)
        client.send(connect5_packet(client_id, *items))
        first, body = yield read_packet(client, "CONNACK")
        self.assertEqual((first, body[:2]), (0x20, b"\x00\x00"))
        return client

    @inlineCallbacks
    def assert_alive(self, client: Any) -> Any:
        client.send(PINGREQ)
        self.assertEqual((yield client.read(2, what="PINGRESP")), PINGRESP)

    @inlineCallbacks
    def assert_disconnected_with(self, client: Any, reason: int) -> Any:
        first, body = yield read_packet(client, "DISCONNECT")
        self.assertEqual((first, body[:1]), (0xE0, bytes((reason,))))
        yield client.when_closed()

    @inlineCallbacks
    def test_receive_maximum_exceeded_by_the_client(self) -> Any:
        """A client that sends more unacknowledged QoS 2 PUBLISHes than the broker's Receive
        Maximum (2) is disconnected with reason 0x93 (Receive Maximum exceeded); another
        client stays connected and is answered."""
        bystander = yield self.connected("bystander")
        bad = yield self.connected("bad")
        for pid in (1, 2):
            bad.send(publish5_packet("x", b"q2", 2, pid))
            first, body = yield read_packet(bad, "PUBREC")
            self.assertEqual(first, 0x50)
        bad.send(publish5_packet("x", b"third", 1, 3))
        yield self.assert_disconnected_with(bad, 0x93)
        yield self.assert_alive(bystander)

    @inlineCallbacks
    def test_packet_above_the_broker_maximum(self) -> Any:
        """A PUBLISH larger than max_message_size (200 bytes) gets the client disconnected
        with reason 0x95 (Packet too large); another client stays connected."""
        bystander = yield self.connected("bystander")
        bad = yield self.connected("bad")
        bad.send(publish5_packet("x", b"y" * 300))
        yield self.assert_disconnected_with(bad, 0x95)
        yield self.assert_alive(bystander)

    @inlineCallbacks
    def test_duplicate_property(self) -> Any:
        """A PUBLISH carrying a property that may appear only once twice (content type) gets
        the client disconnected with reason 0x82 (Protocol Error); another client stays
        connected."""
        bystander = yield self.connected("bystander")
        bad = yield self.connected("bad")
        bad.send(publish5_packet("x", b"y", 0, 1, b"\x03" + _s("a"), b"\x03" + _s("b")))
        yield self.assert_disconnected_with(bad, 0x82)
        yield self.assert_alive(bystander)

    @inlineCallbacks
    def test_malformed_property(self) -> Any:
        """A PUBLISH with an unknown property identifier gets the client disconnected with
        reason 0x81 (Malformed Packet); another client stays connected."""
        bystander = yield self.connected("bystander")
        bad = yield self.connected("bad")
        bad.send(publish5_packet("x", b"y", 0, 1, b"\x7f\x00"))
        yield self.assert_disconnected_with(bad, 0x81)
        yield self.assert_alive(bystander)

    @inlineCallbacks
    def test_topic_alias_out_of_range(self) -> Any:
        """A raw PUBLISH using topic alias 11 when the broker allows 10 gets the client
        disconnected with reason 0x94 (Topic Alias invalid); another client stays
        connected."""
        bystander = yield self.connected("bystander")
        bad = yield self.connected("bad")
        bad.send(publish5_packet("x", b"y", 0, 1, b"\x23\x00\x0b"))  # alias 11 > 10
        yield self.assert_disconnected_with(bad, 0x94)
        yield self.assert_alive(bystander)

    @inlineCallbacks
    def test_outbound_topic_aliases(self) -> Any:
        """To a subscriber with Topic Alias Maximum 2 the broker assigns aliases to outgoing
        topics: the first message of a topic carries the topic and a new alias, repeats
        carry an empty topic and the alias, and once both aliases are used a new topic goes
        out in full without one."""
        sub = yield self.connected("sub", b"\x22\x00\x02")  # topic alias maximum 2
        body = b"\x00\x01\x00" + _s("ta/#") + b"\x00"
        sub.send(b"\x82" + vbi(len(body)) + body)
        first, _ = yield read_packet(sub, "SUBACK")
        pub = yield self.connected("pub")
        for topic in ("ta/one", "ta/one", "ta/two", "ta/three", "ta/one"):
            pub.send(publish5_packet(topic, b"x"))
        yield self.assert_alive(pub)
        got = []
        for _ in range(5):
            got.append((yield read_packet(sub, "PUBLISH"))[1])
        alias = lambda n: props(b"\x23" + n.to_bytes(2, "big"))  # noqa: E731
        self.assertEqual(got, [_s("ta/one") + alias(1) + b"x", _s("") + alias(1) + b"x",
                               _s("ta/two") + alias(2) + b"x", _s("ta/three") + b"\x00x",
                               _s("") + alias(1) + b"x"])

    @inlineCallbacks
    def test_broker_respects_the_client_receive_maximum(self) -> Any:
        """With a subscriber's Receive Maximum 2 the broker has at most two QoS 1 PUBLISHes
        unacknowledged towards it and holds the rest; each PUBACK releases the next, so all
        five arrive, in order."""
        sub = yield self.connected("sub", p_receive_max(2))
        body = b"\x00\x01\x00" + _s("rm/t") + b"\x01"
        sub.send(b"\x82" + vbi(len(body)) + body)
        first, _ = yield read_packet(sub, "SUBACK")
        self.assertEqual(first, 0x90)
        pub = self.paho(self.port_of(self.broker), "rm-pub")

        def publish_all() -> None:
            pub.connect()
            for i in range(5):
                pub.publish("rm/t", b"%d" % i, 1)

        yield in_thread(publish_all)   # every PUBACK is in: the broker routed all five
        got = []
        for _ in range(2):
            got.append((yield read_packet(sub, "PUBLISH")))
        yield self.assert_alive(sub)   # PINGRESP comes next: no third PUBLISH was sent
        self.assertEqual(sub.buffer, b"")
        for _first, body in got:
            sub.send(b"\x40\x02" + body[6:8])  # PUBACK (topic "rm/t" is 6 bytes)
            got.append((yield read_packet(sub, "PUBLISH")))
            if len(got) == 5:
                break
        self.assertEqual([b[-1:] for _f, b in got], [b"0", b"1", b"2", b"3", b"4"])


@implementer(IOnAuth, IAuthOnRegister)
class ChallengePlugin:
    """Enhanced authentication with method "CHAL": the answer to b"challenge" is b"secret"."""

    def on_auth(self, request: Any) -> Any:
        if request.data == b"secret":
            return ok(authentication_data=b"welcome")
        if request.data in (None, b"hello"):
            return ok(continue_authentication=True, authentication_data=b"challenge")
        return error("not_authorized")

    def auth_on_register(self, request: Any) -> Any:
        return OK


class EnhancedAuthTests(Broker5TestCase):

    def setUp(self) -> None:
        self.broker = self.start_broker5(
            CONFIG5.replace("allow_anonymous = on", "allow_anonymous = off"),
            plugins=[("chal", ChallengePlugin())])

    @inlineCallbacks
    def test_challenge_response_then_reauthentication(self) -> Any:
        """Enhanced authentication: a CONNECT with an Authentication Method gets an AUTH
        challenge (0x18 continue), the right answer gets a CONNACK success with the plugin's
        data; a re-authentication (AUTH 0x19) while connected goes through the same
        challenge and ends with AUTH success (0x00)."""
        c = yield self.raw_client(self.broker)
        c.send(connect5_packet("enh", p_auth_method("CHAL"), p_auth_data(b"hello")))
        first, body = yield read_packet(c, "AUTH")
        self.assertEqual((first, body), (0xF0, b"\x18" + props(p_auth_method("CHAL"),
                                                               p_auth_data(b"challenge"))))
        answer = b"\x18" + props(p_auth_method("CHAL"), p_auth_data(b"secret"))
        c.send(b"\xf0" + vbi(len(answer)) + answer)
        first, body = yield read_packet(c, "CONNACK")
        self.assertEqual((first, body[:2]), (0x20, b"\x00\x00"))
        self.assertTrue(body.endswith(p_auth_method("CHAL") + p_auth_data(b"welcome")))
        # Re-authentication while connected.
        again = b"\x19" + props(p_auth_method("CHAL"), p_auth_data(b"hello"))
        c.send(b"\xf0" + vbi(len(again)) + again)
        first, body = yield read_packet(c, "AUTH")
        self.assertEqual(body[:1], b"\x18")
        c.send(b"\xf0" + vbi(len(answer)) + answer)
        first, body = yield read_packet(c, "AUTH")
        self.assertEqual((first, body), (0xF0, b"\x00" + props(p_auth_method("CHAL"),
                                                               p_auth_data(b"welcome"))))

    @inlineCallbacks
    def test_wrong_answer(self) -> Any:
        """A wrong answer to the enhanced authentication challenge is refused with CONNACK
        0x87 (Not authorized), and the broker closes the connection."""
        c = yield self.raw_client(self.broker)
        c.send(connect5_packet("enh", p_auth_method("CHAL")))
        yield read_packet(c, "AUTH")
        answer = b"\x18" + props(p_auth_method("CHAL"), p_auth_data(b"guess"))
        c.send(b"\xf0" + vbi(len(answer)) + answer)
        first, body = yield read_packet(c, "CONNACK")
        self.assertEqual((first, body), (0x20, b"\x00\x87\x00"))
        yield c.when_closed()


# ---------------------------------------------------------------------------
# mosquitto_pub / mosquitto_sub -V mqttv5

class Mosquitto5Tests(Broker5TestCase):

    def setUp(self) -> None:
        need_mosquitto_clients()
        self.broker = self.start_broker5(CONFIG5)
        self.port = self.port_of(self.broker)
        self.watcher = SubscriptionWatcher(self.broker)

    def common(self, version: str = "mqttv5", listener: str = "tcp.default") -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port_of(self.broker, listener)),
                "-V", version]

    def sub(self, topic: str, *extra: str, qos: int = 1, count: int = 1,
            fmt: str = "%q %r %t %p", version: str = "mqttv5") -> Any:
        args = self.common(version) + ["-t", topic, "-q", str(qos), "-C", str(count),
                                       "-W", "10", "-F", fmt, *extra]
        return run_process(SUB, args, timeout=15)

    def pub(self, topic: str, *extra: str, qos: int = 1, version: str = "mqttv5") -> Any:
        return run_process(PUB, self.common(version) + ["-t", topic, "-q", str(qos), *extra])

    @inlineCallbacks
    def exchange(self, topic: str, sub_extra: tuple[str, ...], pub_extra: tuple[str, ...],
                 fmt: str, count: int = 1, sub_version: str = "mqttv5",
                 pub_version: str = "mqttv5", qos: int = 1) -> Any:
        received = self.sub(topic, *sub_extra, fmt=fmt, count=count, version=sub_version,
                            qos=qos)
        yield self.watcher.wait(topic)
        out, err, code = yield self.pub(topic, *pub_extra, version=pub_version, qos=qos)
        self.assertEqual((code, err), (0, b""), out)
        out, err, code = yield received
        self.assertEqual((code, err), (0, b""))
        return out.decode()

    @inlineCallbacks
    def test_round_trips(self) -> Any:
        """mosquitto_sub and mosquitto_pub speaking MQTT 5.0 exchange a message at QoS 0, 1
        and 2, received with the same QoS, topic and payload and without the retain flag."""
        for qos in (0, 1, 2):
            topic = f"mq5/rt/{qos}"
            out = yield self.exchange(topic, (), ("-m", f"hello {qos}"), "%q %r %t %p", qos=qos)
            self.assertEqual(out, f"{qos} 0 {topic} hello {qos}\n")

    @inlineCallbacks
    def test_user_properties_in_order(self) -> Any:
        """User properties sent by mosquitto_pub reach mosquitto_sub in their original
        order, a repeated name included."""
        out = yield self.exchange(
            "mq5/up", (), ("-m", "x", "-D", "publish", "user-property", "b", "1",
                           "-D", "publish", "user-property", "a", "2",
                           "-D", "publish", "user-property", "b", "3"), "%P")
        self.assertEqual(out, "b:1 a:2 b:3\n")

    @inlineCallbacks
    def test_content_type_response_topic_correlation_data_expiry(self) -> Any:
        """Content type, response topic, correlation data and payload format indicator set
        by mosquitto_pub arrive unchanged at mosquitto_sub; the message expiry interval
        arrives counted down (115-120 of 120 s)."""
        out = yield self.exchange(
            "mq5/props", (), ("-m", "x", "-D", "publish", "content-type", "text/plain",
                              "-D", "publish", "response-topic", "mq5/reply",
                              "-D", "publish", "correlation-data", "abc",
                              "-D", "publish", "message-expiry-interval", "120",
                              "-D", "publish", "payload-format-indicator", "1"),
            "%C|%R|%D|%F|%E")
        content, response, correlation, pfi, expiry = out.strip().split("|")
        self.assertEqual((content, response, correlation, pfi),
                         ("text/plain", "mq5/reply", "abc", "1"))
        self.assertTrue(115 <= int(expiry) <= 120, expiry)

    @inlineCallbacks
    def test_subscription_identifier(self) -> Any:
        """mosquitto_sub's subscription identifier (7) comes back on the messages delivered
        for that subscription."""
        out = yield self.exchange("mq5/sid", ("-D", "subscribe", "subscription-identifier", "7"),
                                  ("-m", "x"), "%S %p")
        self.assertEqual(out, "7 x\n")

    @inlineCallbacks
    def test_session_expiry_resume(self) -> Any:
        """A mosquitto_sub session with clean start off and session expiry 60 s outlives its
        connection: a QoS 1 message published while it is away is delivered when it
        reconnects with the same client id."""
        ident = ["-i", "mq5-durable", "-c", "-x", "60"]
        # Subscribe and leave at once (-E): the session stays for 60 s.
        out, err, code = yield run_process(SUB, self.common() + [
            "-t", "mq5/durable", "-q", "1", "-E", *ident], timeout=15)
        self.assertEqual((code, err), (0, b""))
        out, err, code = yield self.pub("mq5/durable", "-m", "while away")
        self.assertEqual((code, err), (0, b""))
        out, err, code = yield run_process(SUB, self.common() + [
            "-t", "mq5/durable", "-q", "1", "-C", "1", "-W", "10", "-F", "%t %p", *ident],
            timeout=15)
        self.assertEqual((code, err, out), (0, b"", b"mq5/durable while away\n"))

    @inlineCallbacks
    def test_topic_alias_from_mosquitto_pub(self) -> Any:
        """Lines sent by mosquitto_pub with topic alias 1 (full topic once, then the alias)
        are delivered to a 3.1.1 subscriber under the full topic, all three in order."""
        lines = ["one", "two", "three"]
        received = self.sub("mq5/alias", count=3, fmt="%t %p", version="mqttv311")
        yield self.watcher.wait("mq5/alias")
        out, err, code = yield run_process(
            PUB, self.common() + ["-t", "mq5/alias", "-q", "1", "-l",
                                  "-D", "publish", "topic-alias", "1"],
            stdin=("\n".join(lines) + "\n").encode())
        self.assertEqual((code, err), (0, b""))
        out, err, code = yield received
        self.assertEqual((code, err), (0, b""))
        self.assertEqual(out.decode().splitlines(), [f"mq5/alias {x}" for x in lines])

    @inlineCallbacks
    def test_topic_alias_to_mosquitto_sub(self) -> Any:
        """A client announcing a topic alias maximum gets aliases.  (libmosquitto
        2.0 announces it but cannot resolve an empty topic, so only the first
        message - full topic plus alias - is checked here; the raw-client test
        checks the following ones.)"""
        out = yield self.exchange("mq5/out/t", ("-D", "connect", "topic-alias-maximum", "5"),
                                  ("-m", "m0"), "%A %t %p")
        self.assertEqual(out, "1 mq5/out/t m0\n")

    @inlineCallbacks
    def test_v5_to_v311_and_back(self) -> Any:
        """A 5.0 mosquitto_pub message with a user property reaches a 3.1.1 subscriber;
        a 3.1.1 publisher's message reaches a 5.0 subscriber with no user properties."""
        out = yield self.exchange("mq5/to311", (), ("-m", "x", "-D", "publish", "user-property",
                                                    "k", "v"),
                                  "%q %t %p", sub_version="mqttv311")
        self.assertEqual(out, "1 mq5/to311 x\n")
        out = yield self.exchange("mq5/to5", (), ("-m", "y"), "%q %t %p [%P]",
                                  pub_version="mqttv311")
        self.assertEqual(out, "1 mq5/to5 y []\n")

    @inlineCallbacks
    def test_authentication_method_without_a_plugin(self) -> Any:
        """mosquitto_pub with an authentication method the broker has no plugin for is
        refused (Bad authentication method) and exits with an error."""
        out, err, code = yield self.pub("mq5/x", "-m", "y",
                                        "-D", "connect", "authentication-method", "SCRAM-SHA-1")
        self.assertNotEqual(code, 0)
        self.assertIn(b"Bad authentication method", err)

    @inlineCallbacks
    def test_refused_where_5_is_not_allowed(self) -> Any:
        """mosquitto_pub speaking 5.0 to a listener that does not allow version 5 is refused
        with an unsupported protocol version error."""
        out, err, code = yield run_process(
            PUB, self.common(listener="tcp.old") + ["-t", "x", "-m", "y"])
        self.assertNotEqual(code, 0)
        self.assertIn(b"protocol version", err.lower())
