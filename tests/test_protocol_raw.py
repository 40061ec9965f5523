"""MQTT 3.1.1 behaviour checked byte by byte with raw clients (packets built by
hand in ``vmqtw.test.wire``, independently of vmqtw's codec)."""
from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from tests.support import (
    BrokerTestCase, abort_timers_pending, in_thread, read_packet, stop_broker,
    when_session_event, with_timeout,
)
from vmqtw.test.wire import (
    CONNACK_OK, DISCONNECT, PUBACK, PUBCOMP, PUBREC, PUBREL, ack, connect_packet,
    parse_publish, publish_packet, subscribe_packet, utf8, varint,
)




class RawProtocolTests(BrokerTestCase):

    def setUp(self):
        self.broker = self.start_broker()

    @inlineCallbacks
    def subscribed(self, client_id, topic_filter, qos, clean=True):
        client = yield self.raw_client(self.broker)
        client.send(connect_packet(client_id, clean=clean))
        self.assertEqual((yield client.read(4, what="CONNACK")), CONNACK_OK)
        client.send(subscribe_packet(topic_filter, qos, 1))
        self.assertEqual((yield client.read(5, what="SUBACK")),
                         b"\x90\x03\x00\x01" + bytes([qos]))
        return client

    @inlineCallbacks
    def test_unacknowledged_qos1_is_resent_with_dup_on_reconnect(self):
        """A QoS 1 message a persistent-session subscriber received but never acknowledged
        is resent with DUP set and the same packet id when it reconnects (CONNACK session
        present); its subscription survives and a new message arrives without DUP."""
        sub = yield self.subscribed("inflight", "r/t", 1, clean=False)
        pub = yield self.connected_raw_client(self.broker, "pub")
        pub.send(publish_packet("r/t", b"hello", qos=1, packet_id=5))
        self.assertEqual((yield pub.read(4, what="PUBACK")), ack(PUBACK, 5))
        topic, payload, qos, retain, dup, pid = parse_publish(*(yield read_packet(sub)))
        self.assertEqual((topic, payload, qos, retain, dup), ("r/t", b"hello", 1, False, False))
        # Gone without PUBACK and without DISCONNECT.
        offline = when_session_event(self.broker, "inflight", ["offline"])
        yield sub.abort()
        yield offline
        again = yield self.raw_client(self.broker)
        again.send(connect_packet("inflight", clean=False))
        self.assertEqual((yield again.read(4, what="CONNACK")), b"\x20\x02\x01\x00")
        resent = parse_publish(*(yield read_packet(again, "the resent PUBLISH")))
        self.assertEqual(resent, ("r/t", b"hello", 1, False, True, pid))
        again.send(ack(PUBACK, pid))
        # The subscription survived; a new message gets a fresh, non-dup delivery.
        pub.send(publish_packet("r/t", b"next", qos=1, packet_id=6))
        self.assertEqual((yield pub.read(4)), ack(PUBACK, 6))
        topic, payload, qos, retain, dup, pid2 = parse_publish(*(yield read_packet(again)))
        self.assertEqual((payload, qos, dup), (b"next", 1, False))

    @inlineCallbacks
    def test_qos2_publish_sent_twice_is_delivered_once(self):
        """A QoS 2 PUBLISH resent with DUP before PUBREL gets a second PUBREC but is routed
        once: the subscriber gets it once, followed by the next message."""
        sub = yield self.subscribed("q2sub", "d/#", 0)
        pub = yield self.connected_raw_client(self.broker, "q2pub")
        pub.send(publish_packet("d/t", b"once", qos=2, packet_id=9))
        self.assertEqual((yield pub.read(4, what="PUBREC")), ack(PUBREC, 9))
        duplicate = bytearray(publish_packet("d/t", b"once", qos=2, packet_id=9))
        duplicate[0] |= 0x08  # DUP
        pub.send(bytes(duplicate))
        self.assertEqual((yield pub.read(4, what="second PUBREC")), ack(PUBREC, 9))
        pub.send(ack(PUBREL, 9))
        self.assertEqual((yield pub.read(4, what="PUBCOMP")), ack(PUBCOMP, 9))
        pub.send(publish_packet("d/marker", b"marker"))
        got = []
        for _ in range(2):
            got.append(parse_publish(*(yield read_packet(sub)))[:2])
        self.assertEqual(got, [("d/t", b"once"), ("d/marker", b"marker")])

    @inlineCallbacks
    def test_qos2_outgoing_flow(self):
        """A QoS 2 message goes through the whole flow on both sides: PUBREC/PUBREL/PUBCOMP
        with the publisher, PUBLISH/PUBREC/PUBREL/PUBCOMP with the subscriber, after which
        the session has nothing in flight."""
        sub = yield self.subscribed("q2out", "o/t", 2)
        pub = yield self.connected_raw_client(self.broker, "q2outpub")
        pub.send(publish_packet("o/t", b"exactly once", qos=2, packet_id=1))
        self.assertEqual((yield pub.read(4)), ack(PUBREC, 1))
        pub.send(ack(PUBREL, 1))
        self.assertEqual((yield pub.read(4)), ack(PUBCOMP, 1))
        topic, payload, qos, retain, dup, pid = parse_publish(*(yield read_packet(sub)))
        self.assertEqual((topic, payload, qos), ("o/t", b"exactly once", 2))
        sub.send(ack(PUBREC, pid))
        self.assertEqual((yield sub.read(4, what="PUBREL")), ack(PUBREL, pid))
        sub.send(ack(PUBCOMP, pid))
        session = self.broker.broker.sessions[("", "q2out")]
        # PUBCOMP processed: a PINGREQ answered afterwards proves the order.
        sub.send(b"\xc0\x00")
        self.assertEqual((yield sub.read(2)), b"\xd0\x00")
        self.assertEqual(session.inflight, {})

    @inlineCallbacks
    def test_unsubscribe_stops_delivery(self):
        """After UNSUBSCRIBE (answered by UNSUBACK with its packet id) a client gets no more
        messages on that filter, only the later marker it is still subscribed to."""
        sub = yield self.subscribed("unsub", "u/#", 0)
        sub.send(b"\xa2" + varint(2 + 2 + 3) + b"\x00\x02" + utf8("u/#"))
        self.assertEqual((yield sub.read(4, what="UNSUBACK")), b"\xb0\x02\x00\x02")
        sub.send(subscribe_packet("marker", 0, 3))
        self.assertEqual((yield sub.read(5)), b"\x90\x03\x00\x03\x00")
        pub = yield self.connected_raw_client(self.broker, "unsubpub")
        pub.send(publish_packet("u/t", b"not for you"))
        pub.send(publish_packet("marker", b"marker"))
        self.assertEqual(parse_publish(*(yield read_packet(sub)))[:2], ("marker", b"marker"))

    @inlineCallbacks
    def test_wildcards_do_not_match_dollar_topics(self):
        """Topics beginning with $ are not matched by filters starting with a wildcard (# or
        +/x): the subscriber gets only the ordinary topic."""
        sub = yield self.subscribed("dollar", "#", 0)
        sub.send(subscribe_packet("+/x", 0, 2))
        self.assertEqual((yield sub.read(5)), b"\x90\x03\x00\x02\x00")
        pub = yield self.connected_raw_client(self.broker, "dollarpub")
        pub.send(publish_packet("$private/x", b"hidden"))
        pub.send(publish_packet("$SYS/x", b"hidden"))
        pub.send(publish_packet("plain/x", b"seen"))
        got = parse_publish(*(yield read_packet(sub)))[:2]
        self.assertEqual(got, ("plain/x", b"seen"))

    @inlineCallbacks
    def test_client_id_rules(self):
        """An empty client id is accepted only with clean session in 3.1.1 (the server
        assigns one); an empty id without clean session, an empty id in 3.1, and an id
        longer than max_client_id_size (100) are refused with CONNACK 2 and closed."""
        cases = [
            (connect_packet("", level=4, clean=True), 0x00),   # server assigns an id
            (connect_packet("", level=4, clean=False), 0x02),
            (connect_packet("", level=3, clean=True), 0x02),   # 3.1 needs a client id
            (connect_packet("x" * 101, level=4), 0x02),        # max_client_id_size = 100
            (connect_packet("x" * 100, level=4), 0x00),
        ]
        for packet, code in cases:
            client = yield self.raw_client(self.broker)
            client.send(packet)
            connack = yield client.read(4, what="CONNACK")
            self.assertEqual(connack, b"\x20\x02\x00" + bytes([code]), packet[:20])
            if code:
                yield client.when_closed()
            else:
                yield client.close()

    @inlineCallbacks
    def test_keepalive_timeout_closes_connection(self):
        """A client silent for 1.5 times its keep-alive (1 s) is disconnected by the
        broker."""
        client = yield self.raw_client(self.broker)
        client.send(connect_packet("sleepy", keepalive=1))
        self.assertEqual((yield client.read(4)), CONNACK_OK)
        # Nothing sent for 1.5 x keepalive: the broker must close the connection.
        yield client.when_closed(timeout=5, what="the keep-alive timeout")

    @inlineCallbacks
    def test_pingreq_keeps_connection_alive_past_keepalive(self):
        """PINGREQs every half keep-alive are each answered with PINGRESP and keep the
        connection open past 1.5 times the keep-alive."""
        client = yield self.raw_client(self.broker)
        client.send(connect_packet("pinger", keepalive=1))
        self.assertEqual((yield client.read(4)), CONNACK_OK)
        for _ in range(4):  # 4 pings at 0.5 s: 2 s, past the 1.5 s limit
            yield with_timeout(task_later(0.5), what="a pause")
            client.send(b"\xc0\x00")
            self.assertEqual((yield client.read(2, what="PINGRESP")), b"\xd0\x00")
        self.assertFalse(client.is_closed)

    @inlineCallbacks
    def test_stop_closes_every_connection(self):
        """Stopping the broker closes every connection, a connected client's and one that
        has not sent CONNECT yet."""
        connected = yield self.connected_raw_client(self.broker, "stopme")
        silent = yield self.raw_client(self.broker)  # no CONNECT yet
        yield with_timeout(self.broker.listeners["tcp.default"].limiter.when(lambda n: n == 2))
        yield stop_broker(self.broker)
        yield connected.when_closed(what="the broker to close a client on stop")
        yield silent.when_closed(what="the broker to close a pre-CONNECT client on stop")

    @inlineCallbacks
    def test_invalid_subscription_filter(self):
        """3.1.1 answers SUBACK 0x80 for a bad filter and keeps the connection;
        3.1 has no failure code and closes it."""
        client = yield self.connected_raw_client(self.broker, "badfilter")
        client.send(subscribe_packet("a/#/b", 1, 4))
        self.assertEqual((yield client.read(5, what="SUBACK")), b"\x90\x03\x00\x04\x80")
        client.send(b"\xc0\x00")
        self.assertEqual((yield client.read(2, what="PINGRESP")), b"\xd0\x00")
        old = yield self.connected_raw_client(self.broker, "badfilter31", level=3)
        old.send(subscribe_packet("a/#/b", 1, 4))
        yield old.when_closed()

    @inlineCallbacks
    def test_subscribe_to_several_filters_at_once(self):
        """One SUBSCRIBE with three filters at QoS 0, 1 and 2 gets one SUBACK granting each
        at its QoS, in order."""
        client = yield self.connected_raw_client(self.broker, "multi")
        body = b"\x00\x09" + utf8("m/0") + b"\x00" + utf8("m/1") + b"\x01" + utf8("m/2") + b"\x02"
        client.send(b"\x82" + varint(len(body)) + body)
        self.assertEqual((yield client.read(7, what="SUBACK")), b"\x90\x05\x00\x09\x00\x01\x02")


class LimitsTests(BrokerTestCase):

    @inlineCallbacks
    def test_offline_queue_limit(self):
        """max_offline_messages = 2 keeps the first two messages queued for an offline
        persistent session and drops the later ones (fifo), delivered when it comes back."""
        broker = self.start_broker(
            "allow_anonymous = on\nlistener.tcp.default = 127.0.0.1:0\n"
            "max_offline_messages = 2\n")
        port = self.port_of(broker)
        away = self.paho(port, "away", clean_session=False)
        pub = self.paho(port, "pub")

        def first():
            away.connect()
            away.subscribe("q", 1)
            away.disconnect()
            pub.connect()
            for i in range(4):
                pub.publish("q", f"m{i}".encode(), 1)
            pub.publish("q/marker", b"marker", 1)

        yield in_thread(first)

        def back():
            away.connect()
            away.subscribe("q/marker", 1)
            pub.publish("q/marker", b"marker", 1)
            return [m.payload for m in away.get_many(3)]

        # fifo: the queue keeps the first two; later messages are dropped.
        self.assertEqual((yield in_thread(back)), [b"m0", b"m1", b"marker"])

    @inlineCallbacks
    def test_max_connection_lifetime(self):
        """A listener's max_connection_lifetime (1 s) makes the broker close a connection
        after that time."""
        broker = self.start_broker(
            "allow_anonymous = on\nlistener.tcp.default = 127.0.0.1:0\n"
            "listener.tcp.default.max_connection_lifetime = 1\n")
        client = yield self.connected_raw_client(broker, "mortal")
        yield client.when_closed(timeout=5, what="max_connection_lifetime to end the connection")

    @inlineCallbacks
    def test_will_stays_in_its_mountpoint(self):
        """A will is published in its client's mountpoint: a subscriber in the same
        mountpoint gets it, one on the same topic in another mountpoint does not."""
        broker = self.start_broker(
            "allow_anonymous = on\n"
            "listener.tcp.a = 127.0.0.1:0\nlistener.tcp.a.mountpoint = a\n"
            "listener.tcp.b = 127.0.0.1:0\nlistener.tcp.b.mountpoint = b\n")
        a, b = self.port_of(broker, "tcp.a"), self.port_of(broker, "tcp.b")
        sub_a = self.paho(a, "sub")
        sub_b = self.paho(b, "sub")
        dying = self.paho(a, "dying", will=("w", b"will of a", 1, False))
        marker = self.paho(b, "marker")
        gone = when_session_event(broker, "dying", ["gone"])

        def setup():
            sub_a.connect()
            sub_a.subscribe("w", 1)
            sub_b.connect()
            sub_b.subscribe("w", 1)
            dying.connect()
            dying.drop()

        yield in_thread(setup)
        yield gone

        def check():
            marker.connect()
            marker.publish("w", b"marker", 1)
            return sub_a.get().payload, sub_b.get().payload

        self.assertEqual((yield in_thread(check)), (b"will of a", b"marker"))


class TimerLeakTests(BrokerTestCase):

    @inlineCallbacks
    def test_no_timer_left_after_a_connection_closes(self):
        """After a client's DISCONNECT the connection is closed and gone; the
        broker should keep no timer for it (MQTTProtocol.close() schedules
        ``_abort_if_open`` 5 s ahead and connectionLost never cancels it)."""
        broker = self.start_broker()
        limiter = broker.listeners["tcp.default"].limiter
        before = abort_timers_pending()
        client = yield self.connected_raw_client(broker, "leaver")
        client.send(DISCONNECT)
        yield client.when_closed()
        yield with_timeout(limiter.when(lambda n: n == 0), what="the server side to close")
        self.assertEqual(abort_timers_pending() - before, 0,
                         "a DelayedCall to _abort_if_open outlives the connection")


class WillTests(BrokerTestCase):

    @inlineCallbacks
    def _takeover(self, suppress: bool):
        config = "allow_anonymous = on\nlistener.tcp.default = 127.0.0.1:0\n"
        if suppress:
            config += "suppress_lwt_on_session_takeover = on\n"
        broker = self.start_broker(config)
        port = self.port_of(broker)
        sub = self.paho(port, "will-sub")
        first = self.paho(port, "twin", will=("will/t", b"first died", 1, False))
        second = self.paho(port, "twin")
        marker = self.paho(port, "marker")

        def scenario():
            sub.connect()
            sub.subscribe("will/#", 1)
            first.connect()
            second.connect()
            first.wait_disconnected()
            marker.connect()
            marker.publish("will/marker", b"marker", 1)
            return [m.payload for m in sub.get_many(1 if suppress else 2)]

        return (yield in_thread(scenario))

    @inlineCallbacks
    def test_takeover_publishes_will(self):
        """When a second client takes over a client id, the first connection's will is
        published (before later messages)."""
        self.assertEqual((yield self._takeover(False)), [b"first died", b"marker"])

    @inlineCallbacks
    def test_takeover_will_suppressed(self):
        """With suppress_lwt_on_session_takeover on, a session takeover does not publish the
        old connection's will."""
        self.assertEqual((yield self._takeover(True)), [b"marker"])

    @inlineCallbacks
    def test_retained_will(self):
        """A will with the retain flag is retained: a client subscribing after the will was
        published gets it as a retained QoS 1 message."""
        broker = self.start_broker()
        port = self.port_of(broker)
        dying = self.paho(port, "dying", will=("status/dying", b"offline", 1, True))
        late = self.paho(port, "late")

        gone = when_session_event(broker, "dying", ["gone"])

        def scenario():
            dying.connect()
            dying.drop()

        yield in_thread(scenario)
        yield gone  # the will was routed (and retained) before this event

        def subscribe_later():
            late.connect()
            late.subscribe("status/#", 1)
            m = late.get()
            return m.topic, m.payload, m.retain, m.qos

        self.assertEqual((yield in_thread(subscribe_later)),
                         ("status/dying", b"offline", True, 1))


def task_later(seconds):
    from twisted.internet import reactor, task
    return task.deferLater(reactor, seconds, lambda: None)
