"""paho-mqtt clients (MQTT 3.1 and 3.1.1) against a broker in this process."""
from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from tests.support import (
    TIMEOUT, BrokerTestCase, MQTTv31, MQTTv311, in_thread, payloads, when_session_event,
)


class _PahoScenarios:
    """Scenarios run once per protocol version (see the subclasses)."""

    protocol: int
    tag: str
    #: The CONNACK flag on a resumed session: MQTT 3.1 reserves that byte (0).
    session_present = True

    def setUp(self) -> None:
        self.broker = self.start_broker()
        self.port = self.port_of(self.broker)

    def client(self, name: str, **kwargs):
        # Client ids stay within MQTT 3.1's 23 characters.
        return self.paho(self.port, f"{self.tag}-{name}", self.protocol, **kwargs)

    def _round_trip(self, qos: int):
        sub = self.client("sub")
        pub = self.client("pub")
        topic = f"{self.tag}/rt/{qos}"
        payload = f"qos {qos} payload \x00\xff".encode("latin-1")

        def scenario():
            self.assertEqual(sub.connect(), (0, False))
            self.assertEqual(sub.subscribe(topic, qos), [qos])
            pub.connect()
            pub.publish(topic, payload, qos)
            msg = sub.get()
            return msg.topic, msg.payload, msg.qos, msg.retain

        return in_thread(scenario).addCallback(
            self.assertEqual, (topic, payload, qos, False))

    def test_qos0_round_trip(self):
        """A paho subscriber gets a QoS 0 message from another paho client with its topic
        and binary payload intact, at QoS 0 and not flagged retained (run for MQTT 3.1 and
        3.1.1)."""
        return self._round_trip(0)

    def test_qos1_round_trip(self):
        """A paho subscriber gets a QoS 1 message from another paho client with its topic
        and binary payload intact, at QoS 1 and not flagged retained."""
        return self._round_trip(1)

    def test_qos2_round_trip(self):
        """A paho subscriber gets a QoS 2 message from another paho client with its topic
        and binary payload intact, at QoS 2 and not flagged retained."""
        return self._round_trip(2)

    def test_delivery_qos_is_min_of_publish_and_subscription(self):
        """A QoS 2 publish to a QoS 1 subscription arrives at QoS 1, and a
        QoS 0 publish to a QoS 2 subscription arrives at QoS 0."""
        sub1 = self.client("s1")
        sub2 = self.client("s2")
        pub = self.client("pub")
        t = f"{self.tag}/down"

        def scenario():
            sub1.connect()
            sub1.subscribe(t, 1)
            sub2.connect()
            sub2.subscribe(t, 2)
            pub.connect()
            pub.publish(t, b"two", 2)
            pub.publish(t, b"zero", 0)
            # Sorted: paho hands a QoS 2 message to the application only at
            # PUBREL, so a later QoS 0 message may overtake it.
            got1 = sorted((m.payload, m.qos) for m in sub1.get_many(2))
            got2 = sorted((m.payload, m.qos) for m in sub2.get_many(2))
            return got1, got2

        return in_thread(scenario).addCallback(
            self.assertEqual, ([(b"two", 1), (b"zero", 0)], [(b"two", 2), (b"zero", 0)]))

    def test_retained_message_reaches_later_subscriber(self):
        """A retained message reaches a client that subscribes after it was published, with
        the retain flag and its QoS; a live message published afterwards arrives with retain
        cleared."""
        pub = self.client("pub")
        sub = self.client("sub")
        topic = f"{self.tag}/retained"

        def scenario():
            pub.connect()
            pub.publish(topic, b"kept", 1, retain=True)
            pub.disconnect()
            sub.connect()
            sub.subscribe(topic, 1)
            first = sub.get()
            # A live publish after subscribing is not flagged as retained.
            pub2 = self.client("pub2")
            pub2.connect()
            pub2.publish(topic, b"live", 1, retain=False)
            second = sub.get()
            return [(m.payload, m.retain, m.qos) for m in (first, second)]

        return in_thread(scenario).addCallback(
            self.assertEqual, [(b"kept", True, 1), (b"live", False, 1)])

    def test_empty_retained_message_clears(self):
        """Publishing an empty retained message clears the retained message of that topic: a
        later subscriber gets only the other topic's retained message."""
        pub = self.client("pub")
        sub = self.client("sub")
        topic = f"{self.tag}/cleared"

        def scenario():
            pub.connect()
            pub.publish(topic, b"old", 1, retain=True)
            pub.publish(topic, b"", 1, retain=True)
            pub.publish(f"{topic}/marker", b"marker", 1, retain=True)
            sub.connect()
            sub.subscribe(f"{topic}/#", 1)
            sub.subscribe(topic, 1)
            return sub.get().payload

        # Only the marker's retained message exists; the cleared one is gone.
        return in_thread(scenario).addCallback(self.assertEqual, b"marker")

    @inlineCallbacks
    def test_will_on_abrupt_close(self):
        """A client's will is not published while it is connected; when its connection drops
        without DISCONNECT the will is published to subscribers with its topic, payload and
        QoS."""
        topic = f"{self.tag}/will"
        sub = self.client("sub")
        dying = self.client("dying", will=(topic, b"gone", 1, False))

        def setup():
            sub.connect()
            sub.subscribe(topic, 1)
            dying.connect()

        yield in_thread(setup)
        # No will while the client is alive.
        self.assertTrue(sub.messages.empty())

        def die_and_receive():
            dying.drop()
            msg = sub.get()
            return msg.topic, msg.payload, msg.qos

        got = yield in_thread(die_and_receive)
        self.assertEqual(got, (topic, b"gone", 1))

    @inlineCallbacks
    def test_no_will_after_clean_disconnect(self):
        """A client that disconnects cleanly (DISCONNECT) has its will discarded: the
        subscriber's next message is a later marker, not the will."""
        topic = f"{self.tag}/will"
        sub = self.client("sub")
        leaving = self.client("leaving", will=(topic, b"gone", 1, False))
        marker = self.client("marker")

        def setup():
            sub.connect()
            sub.subscribe(topic, 1)
            leaving.connect()

        yield in_thread(setup)
        gone = when_session_event(self.broker, leaving.client_id, ["gone"])
        yield in_thread(leaving.disconnect)
        # The broker has processed the end of that connection (a will would be
        # routed before this event); anything published now comes after it.
        yield gone

        def rest():
            marker.connect()
            marker.publish(topic, b"marker", 1)
            return sub.get().payload

        first = yield in_thread(rest)
        self.assertEqual(first, b"marker")

    @inlineCallbacks
    def test_offline_queue_of_persistent_session(self):
        """QoS 1 messages published while a persistent-session (clean session off) client is
        away are queued for it, and delivered in order when it reconnects with session
        present."""
        topic = f"{self.tag}/offline"
        durable = self.client("durable", clean_session=False)
        pub = self.client("pub")

        def first_visit():
            self.assertEqual(durable.connect(), (0, False))
            durable.subscribe(topic, 1)
            durable.disconnect()

        yield in_thread(first_visit)

        def while_away():
            pub.connect()
            for i in range(3):
                pub.publish(topic, f"m{i}".encode(), 1)
            pub.disconnect()

        yield in_thread(while_away)
        self.assertEqual(
            len(self.broker.broker.sessions[("", durable.client_id)].queue), 3)

        def come_back():
            connack = durable.connect()
            return connack, [(m.payload, m.qos) for m in durable.get_many(3)]

        connack, got = yield in_thread(come_back)
        self.assertEqual(connack, (0, self.session_present))
        self.assertEqual(got, [(b"m0", 1), (b"m1", 1), (b"m2", 1)])

    @inlineCallbacks
    def test_clean_session_discards_offline_messages(self):
        """Reconnecting with clean session on discards the previous session: CONNACK says no
        session present, the message queued for it is lost and its old subscription is
        gone."""
        topic = f"{self.tag}/clean"
        c = self.client("c", clean_session=False)
        pub = self.client("pub")

        def scenario():
            c.connect()
            c.subscribe(topic, 1)
            c.disconnect()
            pub.connect()
            pub.publish(topic, b"lost", 1)
            # Reconnect with a clean session: nothing from before survives.
            fresh = self.client("c", clean_session=True)
            connack = fresh.connect()
            fresh.subscribe(f"{topic}/marker", 1)
            pub.publish(f"{topic}/marker", b"marker", 1)
            pub.publish(topic, b"not subscribed", 1)
            pub.publish(f"{topic}/marker", b"marker2", 1)
            return connack, payloads(fresh.get_many(2))

        connack, got = yield in_thread(scenario)
        self.assertEqual(connack, (0, False))
        self.assertEqual(got, [b"marker", b"marker2"])

    @inlineCallbacks
    def test_takeover_disconnects_first_client(self):
        """A second connection with the same client id takes the session over: the first
        connection is disconnected and the second is served."""
        topic = f"{self.tag}/takeover"
        first = self.client("same")
        second = self.client("same")

        def scenario():
            first.connect()
            second.connect()
            first.wait_disconnected()
            # The second connection is the live one.
            second.subscribe(topic, 1)
            second.publish(topic, b"still here", 1)
            return second.get().payload

        got = yield in_thread(scenario)
        self.assertEqual(got, b"still here")
        self.assertTrue(first.disconnected.is_set())
        session = self.broker.broker.sessions[("", first.client_id)]
        self.assertIsNotNone(session.conn)

    @inlineCallbacks
    def test_shared_subscription_splits_messages(self):
        """$share/g/ subscribers split the messages: each of 20 QoS 1 messages reaches
        exactly one of the two members, both get some, nothing is lost."""
        topic = f"{self.tag}/shared"
        a = self.client("a")
        b = self.client("b")
        pub = self.client("pub")
        count = 20

        def scenario():
            for c in (a, b):
                c.connect()
                self.assertEqual(c.subscribe(f"$share/g/{topic}", 1), [1])
            pub.connect()
            for i in range(count):
                pub.publish(topic, str(i).encode(), 1)
            # A marker on a normal subscription of `a`, published last:
            # everything shared was routed before it.
            a.subscribe(f"{topic}/end", 1)
            pub.publish(f"{topic}/end", b"end", 1)
            got_a, got_b = [], []
            while True:
                m = a.get()
                if m.topic.endswith("/end"):
                    break
                got_a.append(m.payload)
            # b may still be reading what was sent to it before the marker.
            while len(got_a) + len(got_b) < count:
                got_b.append(b.get().payload)
            return got_a, got_b

        got_a, got_b = yield in_thread(scenario)
        everything = sorted(got_a + got_b, key=int)
        self.assertEqual(everything, [str(i).encode() for i in range(count)])
        self.assertTrue(got_a and got_b, f"one subscriber got nothing: {got_a} / {got_b}")
        self.assertTrue(b.messages.empty())

    @inlineCallbacks
    def test_many_qos1_messages_arrive_in_order(self):
        """More messages than the inflight window (20): the rest are queued and
        drained as PUBACKs come back, in order."""
        topic = f"{self.tag}/many"
        sub = self.client("sub")
        pub = self.client("pub")
        count = 300

        def scenario():
            sub.connect()
            sub.subscribe(topic, 1)
            pub.connect()
            infos = [pub.client.publish(topic, str(i).encode(), 1) for i in range(count)]
            for info in infos:
                info.wait_for_publish(TIMEOUT)
            return [m.payload for m in sub.get_many(count)]

        got = yield in_thread(scenario)
        self.assertEqual(got, [str(i).encode() for i in range(count)])

    @inlineCallbacks
    def test_megabytes_of_qos0_arrive_in_order(self):
        """Enough data to fill the transport's write buffer (the protocol is
        paused as a producer and resumed); nothing is lost or reordered."""
        topic = f"{self.tag}/bulk"
        sub = self.client("sub")
        pub = self.client("pub")
        count, size = 200, 20 * 1024

        def scenario():
            sub.connect()
            sub.subscribe(topic, 0)
            pub.connect()
            infos = [pub.client.publish(topic, b"%05d" % i + b"x" * (size - 5), 0)
                     for i in range(count)]
            for info in infos:
                info.wait_for_publish(TIMEOUT)
            got = sub.get_many(count)
            return [(m.payload[:5], len(m.payload)) for m in got]

        got = yield in_thread(scenario)
        self.assertEqual(got, [(b"%05d" % i, size) for i in range(count)])

    @inlineCallbacks
    def test_takeover_of_persistent_session_keeps_subscriptions(self):
        """A second connection taking over a persistent session gets session present and
        inherits its subscriptions: a message published afterwards reaches the new
        connection."""
        topic = f"{self.tag}/keep"
        first = self.client("pers", clean_session=False)
        second = self.client("pers", clean_session=False)
        pub = self.client("pub")

        def scenario():
            self.assertEqual(first.connect(), (0, False))
            first.subscribe(topic, 1)
            connack = second.connect()
            first.wait_disconnected()
            pub.connect()
            pub.publish(topic, b"to the new connection", 1)
            return connack, second.get().payload

        connack, payload = yield in_thread(scenario)
        self.assertEqual(connack, (0, self.session_present))
        self.assertEqual(payload, b"to the new connection")


class Paho31Tests(_PahoScenarios, BrokerTestCase):
    protocol = MQTTv31
    tag = "v31"
    session_present = False


class Paho311Tests(_PahoScenarios, BrokerTestCase):
    protocol = MQTTv311
    tag = "v311"
