"""MQTT 5.0 connections through MQTTProtocol + Broker, in memory (``vmqtw.test.harness``):
CONNECT/CONNACK, session expiry, wills and the will delay, DISCONNECT reasons,
3.1.1 clients alongside, and stopping the broker.

Bytes the broker must send are written by hand (``vmqtw.test.wire``, MQTT 5.0
section 3), independently of our encoder; client packets are encoded with our
encoder (the codec has its own vectors) or written as raw bytes where the point
is a broken packet.  Every failure path checks the exact DISCONNECT (or CONNACK)
reason for the one client, and that a bystander keeps working.
"""
from __future__ import annotations

from vmqtw.codec import Connect, Disconnect, Publish, SubOptions, Will, reasons
from vmqtw.test.harness import (
    BASE5, BrokerTestCase, BystanderMixin, Client, Harness, connect5, connected5, pub,
    subscribe5,
)
from vmqtw.test.wire import (
    AVAILABLE, _s, connack, connack5, connack_ok, disconnect5, p_alias_max, p_assigned_id,
    p_content_type, p_expiry, p_max_packet, p_receive_max, p_server_keep_alive, p_user, props,
    puback5, publish5, vbi,
)
from vmqtw.test.wire import publish as publish311


# ---------------------------------------------------------------------------
# CONNECT / CONNACK

class ConnectTests(BrokerTestCase):

    def test_connack_announces_the_broker_limits(self) -> None:
        """A successful 5.0 CONNACK announces receive maximum 65535 and that retained
        messages, wildcard subscriptions, subscription identifiers and shared
        subscriptions are available, and nothing else follows it."""
        hn = Harness(BASE5)
        c = connect5(hn, "c1")
        self.assertEqual(c.take(), bytes.fromhex("2013000010" "21ffff" "2700100000"
                                                     "2501280129012a01"))
        self.assertEqual(c.take(), b"")
        self.assertFalse(c.closed)

    def test_connack_limits_from_config(self) -> None:
        """The 5.0 CONNACK announces the configured limits: server keep alive
        (max_keep_alive), receive maximum (receive_max_broker), topic alias maximum
        (topic_alias_max_client) and maximum packet size (max_message_size)."""
        hn = Harness(BASE5 + "receive_max_broker = 5\ntopic_alias_max_client = 10\n"
                     "max_message_size = 1000\nmax_keep_alive = 60\n")
        c = connect5(hn, "c1", keepalive=0)
        self.assertEqual(c.take(), connack5(
            0, False, p_server_keep_alive(60), p_receive_max(5), p_alias_max(10),
            p_max_packet(1000), *AVAILABLE))

    def test_keepalive_within_the_cap_is_kept(self) -> None:
        """A keep alive at or below max_keep_alive is used as the client asked: the client
        is disconnected with reason 0x8D (keep alive timeout) after one and a half
        periods of silence."""
        hn = Harness(BASE5 + "max_keep_alive = 60\n")
        c = connected5(hn, "c1", keepalive=30)
        hn.clock.advance(44)
        self.assertFalse(c.closed)
        hn.clock.advance(1)
        self.assertEqual(c.take(), disconnect5(reasons.KEEP_ALIVE_TIMEOUT))
        self.assertTrue(c.closed)

    def test_keepalive_above_the_cap_answered_with_server_keep_alive(self) -> None:
        """A keep alive above max_keep_alive is answered with a server keep alive of
        max_keep_alive in the CONNACK (5.0 s3.2.2.3.14), which is then the period the
        broker enforces."""
        hn = Harness(BASE5 + "max_keep_alive = 60\n")
        s, p = BystanderMixin().bystanders(hn)
        c = connected5(hn, "c1", keepalive=600,
                       expected=connack_ok(False, p_server_keep_alive(60)))
        hn.clock.advance(89)
        pub(p, "ok/x", b"keep", qos=0)  # the bystanders talk; c stays silent
        s.take()
        self.assertFalse(c.closed)
        hn.clock.advance(1)
        self.assertEqual(c.take(), disconnect5(reasons.KEEP_ALIVE_TIMEOUT))
        self.assertTrue(c.closed)

    def test_no_cap_no_server_keep_alive(self) -> None:
        """Without max_keep_alive the CONNACK carries no server keep alive."""
        hn = Harness(BASE5)
        connected5(hn, "c1", keepalive=0)  # default CONNACK has no server keep alive

    def test_assigned_client_identifier(self) -> None:
        """A 5.0 CONNECT with an empty client id gets a broker-assigned id in the CONNACK's
        assigned client identifier (5.0 s3.2.2.3.7), with clean start or not; that
        session ends at DISCONNECT."""
        hn = Harness(BASE5)
        for clean in (True, False):
            c = connect5(hn, "", clean=clean)
            data = c.take()
            (key,) = [k for k in hn.broker.sessions if k[1].startswith("vmqtw-")]
            self.assertEqual(data, connack_ok(False, p_assigned_id(key[1])))
            self.assertIs(hn.broker.sessions[key].conn, c.protocol)
            c.send(Disconnect())
            self.assertEqual(hn.broker.sessions, {})

    def test_not_authorized_is_0x87(self) -> None:
        """A refused 5.0 CONNECT gets CONNACK reason 0x87 (not authorized) and is closed."""
        hn = Harness(BASE5.replace("allow_anonymous = on", "allow_anonymous = off"))
        c = connect5(hn, "c1")
        self.assertEqual(c.take(), connack5(reasons.NOT_AUTHORIZED))
        self.assertTrue(c.closed)

    def test_duplicate_property_in_connect(self) -> None:
        """A 5.0 CONNECT with a property given twice gets CONNACK 0x82 (protocol error), is
        closed and creates no session."""
        hn = Harness(BASE5)
        c = hn.client(level=5)
        # CONNECT v5, clean, keepalive 0, properties: receive maximum twice, id "x"
        body = (_s("MQTT") + b"\x05\x02\x00\x00" + props(p_receive_max(1), p_receive_max(2))
                + _s("x"))
        c.send(b"\x10" + vbi(len(body)) + body)
        self.assertEqual(c.take(), connack5(reasons.PROTOCOL_ERROR))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_malformed_property_in_connect(self) -> None:
        """A 5.0 CONNECT with an unknown property identifier gets CONNACK 0x81 (malformed
        packet) and is closed."""
        hn = Harness(BASE5)
        c = hn.client(level=5)
        # property identifier 0x7f does not exist
        body = _s("MQTT") + b"\x05\x02\x00\x00" + props(b"\x7f\x01") + _s("x")
        c.send(b"\x10" + vbi(len(body)) + body)
        self.assertEqual(c.take(), connack5(reasons.MALFORMED_PACKET))
        self.assertTrue(c.closed)

    def test_connect_too_large(self) -> None:
        """A 5.0 CONNECT larger than max_message_size gets CONNACK 0x95 (packet too large)
        and is closed."""
        hn = Harness(BASE5 + "max_message_size = 50\n")
        c = connect5(hn, "c" * 80)
        self.assertEqual(c.take(), connack5(reasons.PACKET_TOO_LARGE))
        self.assertTrue(c.closed)

    def test_authentication_data_without_method(self) -> None:
        """Authentication data without an authentication method in CONNECT gets CONNACK 0x82
        (protocol error, 5.0 s3.1.2.11.10)."""
        hn = Harness(BASE5)
        c = connect5(hn, "c1", authentication_data=b"x")
        self.assertEqual(c.take(), connack5(reasons.PROTOCOL_ERROR))
        self.assertTrue(c.closed)

    def test_will_payload_not_utf8(self) -> None:
        """A will payload that is not UTF-8 while its payload format indicator says UTF-8
        gets CONNACK 0x99 (payload format invalid)."""
        hn = Harness(BASE5)
        c = connect5(hn, "c1", will=Will("w", b"\xff\xfe", 0, False,
                                         {"payload_format_indicator": 1}))
        self.assertEqual(c.take(), connack5(reasons.PAYLOAD_FORMAT_INVALID))
        self.assertTrue(c.closed)

    def test_will_response_topic_with_wildcard(self) -> None:
        """A will response topic containing a wildcard gets CONNACK 0x82 (protocol error)."""
        hn = Harness(BASE5)
        c = connect5(hn, "c1", will=Will("w", b"x", 0, False, {"response_topic": "r/#"}))
        self.assertEqual(c.take(), connack5(reasons.PROTOCOL_ERROR))
        self.assertTrue(c.closed)

    def test_second_connect(self) -> None:
        """A second 5.0 CONNECT on a connection is answered with DISCONNECT 0x82 (protocol
        error) and closed; other clients keep working."""
        hn = Harness(BASE5)
        s, p = BystanderMixin().bystanders(hn)
        c = connected5(hn, "c1")
        c.send(Connect("c1", 5))
        self.assertEqual(c.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.assertTrue(c.closed)
        BystanderMixin().still_working(s, p)

    def test_mqtt311_on_a_5_listener_unchanged(self) -> None:
        """A 3.1.1 client on a listener that also allows 5.0 gets the plain 3.1.1 CONNACK."""
        hn = Harness(BASE5)
        c = hn.client(level=4)
        c.connect("old")
        self.assertEqual(c.take(), connack(0))


# ---------------------------------------------------------------------------
# Clean start and session expiry

class SessionExpiryTests(BrokerTestCase):

    def offline_subscriber(self, hn: Harness, expiry: int, client_id: str = "s") -> None:
        s = connected5(hn, client_id, clean=True, session_expiry_interval=expiry)
        subscribe5(s, 1, ("t", SubOptions(1)))
        s.send(Disconnect())
        self.assertTrue(s.closed)

    def test_expiry_0_ends_with_the_connection(self) -> None:
        """A 5.0 session without a session expiry interval (0) ends when the connection
        breaks, even without clean start."""
        hn = Harness(BASE5)
        s = connected5(hn, "s", clean=False)
        subscribe5(s, 1, ("t", SubOptions(1)))
        s.lose()
        self.assertEqual(hn.broker.sessions, {})

    def test_resume_within_expiry(self) -> None:
        """A 5.0 session with a session expiry interval survives the disconnect and, resumed
        before it expires, gets session present and its queued message."""
        hn = Harness(BASE5)
        self.offline_subscriber(hn, 60)
        p = connected5(hn, "p")
        pub(p, "t", b"queued", qos=1, pid=5)
        self.assertEqual(p.take(), puback5(5))
        hn.clock.advance(59)
        s2 = connect5(hn, "s", clean=False, session_expiry_interval=60)
        self.assertEqual(s2.take(), connack_ok(True) + publish5("t", b"queued", qos=1, pid=1))

    def test_clean_start_discards(self) -> None:
        """Clean start on reconnect discards the previous session: no session present, no
        subscriptions."""
        hn = Harness(BASE5)
        self.offline_subscriber(hn, 60)
        s2 = connected5(hn, "s", clean=True, session_present=False)
        self.assertEqual(hn.broker.sessions[("", "s")].subscriptions, {})
        s2.send(Disconnect())

    def test_expires_after_the_interval(self) -> None:
        """An offline 5.0 session expires exactly when its session expiry interval has
        passed, whatever persistent_client_expiration says."""
        hn = Harness(BASE5 + "persistent_client_expiration = 1w\n")
        self.offline_subscriber(hn, 10)
        hn.clock.advance(9)
        self.assertIn(("", "s"), hn.broker.sessions)
        hn.clock.advance(1)
        self.assertNotIn(("", "s"), hn.broker.sessions)

    def test_never_expires(self) -> None:
        """0xFFFFFFFF: never, with persistent_client_expiration at its default
        (never); a finite one caps it (see test_hardening_limits)."""
        hn = Harness(BASE5)
        self.offline_subscriber(hn, 0xFFFFFFFF)
        hn.clock.advance(10 * 24 * 3600)
        self.assertIn(("", "s"), hn.broker.sessions)
        connected5(hn, "s", clean=False, session_present=True)

    def test_persistent_client_expiration_is_for_3x_only(self) -> None:
        """persistent_client_expiration applies to 3.x persistent sessions on a listener
        that also allows 5.0 (and caps 5.0 session expiry intervals)."""
        hn = Harness(BASE5 + "persistent_client_expiration = 1h\n")
        c = hn.connected("old", clean=False)
        c.send(Disconnect())
        hn.clock.advance(3599)
        self.assertIn(("", "old"), hn.broker.sessions)
        hn.clock.advance(1)
        self.assertNotIn(("", "old"), hn.broker.sessions)

    def test_disconnect_shortens_to_0(self) -> None:
        """A DISCONNECT setting the session expiry interval to 0 ends the session at once."""
        hn = Harness(BASE5)
        s = connected5(hn, "s", session_expiry_interval=60)
        s.send(Disconnect(0, {"session_expiry_interval": 0}))
        self.assertTrue(s.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_disconnect_extends(self) -> None:
        """A DISCONNECT may change a non-zero session expiry interval, here extending it,
        and the new value applies."""
        hn = Harness(BASE5)
        s = connected5(hn, "s", session_expiry_interval=10)
        s.send(Disconnect(0, {"session_expiry_interval": 100}))
        hn.clock.advance(99)
        self.assertIn(("", "s"), hn.broker.sessions)
        hn.clock.advance(1)
        self.assertEqual(hn.broker.sessions, {})

    def test_disconnect_from_0_to_nonzero_is_a_protocol_error(self) -> None:
        """A DISCONNECT setting a session expiry interval when the CONNECT had 0 is a
        protocol error (5.0 s3.14.2.2.2): DISCONNECT 0x82 from the broker, the session
        still ends, and the will is published since the client's DISCONNECT was invalid."""
        hn = Harness(BASE5)
        w = connected5(hn, "w")
        subscribe5(w, 1, ("will", SubOptions(0)))
        s = connected5(hn, "s", will=Will("will", b"bye"))
        s.send(Disconnect(0, {"session_expiry_interval": 30}))
        self.assertEqual(s.take(), disconnect5(reasons.PROTOCOL_ERROR))
        self.assertTrue(s.closed)
        self.assertNotIn(("", "s"), hn.broker.sessions)  # still ends: expiry stays 0
        self.assertEqual(w.take(), publish5("will", b"bye"))  # not a valid DISCONNECT
        self.assertFalse(w.closed)


# ---------------------------------------------------------------------------
# Will properties and the will delay interval

class WillTests(BrokerTestCase):

    def watcher(self, hn: Harness) -> Client:
        w = connected5(hn, "w")
        subscribe5(w, 1, ("will/#", SubOptions(1)))
        return w

    def test_will_properties(self) -> None:
        """A will's properties (content type, user properties in order, message expiry) are
        published with it to 5.0 subscribers, and dropped for 3.1.1 subscribers; the will
        delay interval itself is not forwarded."""
        hn = Harness(BASE5)
        w = self.watcher(hn)
        old = hn.subscriber("old", ("will/#", 0))
        c = connected5(hn, "c", will=Will("will/c", b"gone", 1, False, {
            "will_delay_interval": 0, "content_type": "text/plain",
            "user_property": [("b", "2"), ("a", "1")], "message_expiry_interval": 99}))
        c.lose()
        self.assertEqual(w.take(), publish5("will/c", b"gone", p_content_type("text/plain"),
                                            p_user("b", "2"), p_user("a", "1"), p_expiry(99),
                                            qos=1, pid=1))
        self.assertEqual(old.take(), publish311("will/c", b"gone"))

    def test_delayed(self) -> None:
        """A will with a will delay interval is published when that delay has passed after
        the connection broke, not before."""
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c", session_expiry_interval=60,
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 10}))
        c.lose()
        hn.clock.advance(9)
        self.assertEqual(w.take(), b"")
        hn.clock.advance(1)
        self.assertEqual(w.take(), publish5("will/c", b"gone"))

    def test_cancelled_when_the_session_resumes_in_time(self) -> None:
        """A delayed will is not published when the client resumes its session before the
        delay ends (5.0 s3.1.3.2.2)."""
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c", session_expiry_interval=60,
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 10}))
        c.lose()
        hn.clock.advance(5)
        connected5(hn, "c", clean=False, session_present=True, session_expiry_interval=60)
        hn.clock.advance(100)
        self.assertEqual(w.take(), b"")

    def test_sent_when_the_session_ends_first(self) -> None:
        """A delayed will is published when the session expires, if that comes before the
        will delay."""
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c", session_expiry_interval=5,
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 100}))
        c.lose()
        hn.clock.advance(4)
        self.assertEqual(w.take(), b"")
        hn.clock.advance(1)
        self.assertEqual(w.take(), publish5("will/c", b"gone"))

    def test_session_expiry_0_sends_it_at_once(self) -> None:
        """With session expiry 0 the session ends with the connection, so the will is
        published at once whatever its delay."""
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c",
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 100}))
        c.lose()
        self.assertEqual(w.take(), publish5("will/c", b"gone"))

    def test_capped_by_max_last_will_delay(self) -> None:
        """max_last_will_delay caps the will delay interval a client asks for."""
        hn = Harness(BASE5 + "max_last_will_delay = 3\n")
        w = self.watcher(hn)
        c = connected5(hn, "c", session_expiry_interval=60,
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 50}))
        c.lose()
        hn.clock.advance(3)
        self.assertEqual(w.take(), publish5("will/c", b"gone"))

    def test_message_expiry_starts_when_published(self) -> None:
        """A delayed will's message expiry interval counts from when it is published, not
        from when the connection broke."""
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c", session_expiry_interval=60, will=Will(
            "will/c", b"gone", 0, False,
            {"will_delay_interval": 10, "message_expiry_interval": 30}))
        c.lose()
        hn.clock.advance(10)
        self.assertEqual(w.take(), publish5("will/c", b"gone", p_expiry(30)))

    def test_disconnect_with_will_message(self) -> None:
        """DISCONNECT with reason 0x04 (disconnect with will message) publishes the will and
        gets no DISCONNECT back; a normal DISCONNECT (0) does not publish it."""
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c", will=Will("will/c", b"gone"))
        c.send(Disconnect(reasons.DISCONNECT_WITH_WILL))
        self.assertEqual(c.take(), b"")  # no DISCONNECT back
        self.assertEqual(w.take(), publish5("will/c", b"gone"))
        d = connected5(hn, "d", will=Will("will/d", b"gone"))
        d.send(Disconnect(0))
        self.assertEqual(w.take(), b"")

    def test_takeover_resuming_the_session_cancels_a_delayed_will(self) -> None:
        """A takeover that resumes the session (clean start 0) sends DISCONNECT 0x8E to the
        old connection and cancels its delayed will."""
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c", session_expiry_interval=60,
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 10}))
        connected5(hn, "c", clean=False, session_present=True, session_expiry_interval=60)
        self.assertEqual(c.take(), disconnect5(reasons.SESSION_TAKEN_OVER))
        hn.clock.advance(20)
        self.assertEqual(w.take(), b"")

    def test_takeover_with_clean_start_sends_a_delayed_will(self) -> None:
        """A takeover with clean start ends the old session, so its delayed will is
        published at once; the old connection gets DISCONNECT 0x8E."""
        hn = Harness(BASE5)
        w = self.watcher(hn)
        c = connected5(hn, "c", session_expiry_interval=60,
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 10}))
        connected5(hn, "c", clean=True)
        self.assertEqual(c.take(), disconnect5(reasons.SESSION_TAKEN_OVER))
        self.assertEqual(w.take(), publish5("will/c", b"gone"))


# ---------------------------------------------------------------------------
# DISCONNECT from the broker, one reason per cause

class ServerDisconnectTests(BrokerTestCase, BystanderMixin):

    def test_session_taken_over(self) -> None:
        """A 5.0 connection taken over by another with the same client id gets DISCONNECT
        0x8E (session taken over) and is closed."""
        hn = Harness(BASE5)
        c1 = connected5(hn, "dup")
        connected5(hn, "dup")
        self.assertEqual(c1.take(), disconnect5(reasons.SESSION_TAKEN_OVER))
        self.assertTrue(c1.closed)

    def test_keep_alive_timeout(self) -> None:
        """A keep alive timeout sends DISCONNECT 0x8D (keep alive timeout)."""
        hn = Harness(BASE5)
        c = connected5(hn, "c", keepalive=10)
        hn.clock.advance(15)
        self.assertEqual(c.take(), disconnect5(reasons.KEEP_ALIVE_TIMEOUT))

    def test_max_connection_lifetime(self) -> None:
        """A listener's max_connection_lifetime ends a 5.0 connection with DISCONNECT 0xA0
        (maximum connect time)."""
        hn = Harness(BASE5 + "listener.tcp.t.max_connection_lifetime = 30\n")
        c = connected5(hn, "c")
        hn.clock.advance(30)
        self.assertEqual(c.take(), disconnect5(reasons.MAXIMUM_CONNECT_TIME))

    def test_server_shutting_down(self) -> None:
        """Closing a connection because the broker stops sends DISCONNECT 0x8B (server
        shutting down) and closes it."""
        hn = Harness(BASE5)
        c = connected5(hn, "c")
        c.protocol.close(reasons.SERVER_SHUTTING_DOWN)  # what BrokerService.disconnect_all does
        self.assertEqual(c.take(), disconnect5(reasons.SERVER_SHUTTING_DOWN))
        self.assertTrue(c.closed)

    def test_malformed_and_protocol_errors(self) -> None:
        """Malformed packets (a property not allowed on its packet included, 5.0 s2.2.2.2)
        get DISCONNECT 0x81 (malformed packet) and protocol violations (a duplicate
        property, a CONNACK from a client) get 0x82 (protocol error), each closing only that
        client while others keep working."""
        cases = [
            # PUBACK with a property length overrunning the packet
            (b"\x40\x05\x00\x01\x00\x09\x00", reasons.MALFORMED_PACKET),
            # PUBLISH with an unknown property
            (b"\x30\x07\x00\x01t\x02\x7f\x00x", reasons.MALFORMED_PACKET),
            # PUBLISH with the content type twice
            (b"\x30\x0d\x00\x01t\x08\x03\x00\x01a\x03\x00\x01bx", reasons.PROTOCOL_ERROR),
            # SUBSCRIBE carrying a topic alias (not allowed on SUBSCRIBE): 5.0 2.2.2.2
            (b"\x82\x0a\x00\x01\x03\x23\x00\x01\x00\x01t\x00", reasons.MALFORMED_PACKET),
            # SUBSCRIBE with reserved option bits set
            (b"\x82\x07\x00\x01\x00\x00\x01t\xc0", reasons.MALFORMED_PACKET),
            # a PUBLISH of QoS 3
            (b"\x36\x06\x00\x01t\x00\x01\x00", reasons.MALFORMED_PACKET),
            # CONNACK from a client
            (b"\x20\x03\x00\x00\x00", reasons.PROTOCOL_ERROR),
        ]
        for junk, rc in cases:
            hn = Harness(BASE5)
            s, p = self.bystanders(hn)
            bad = connected5(hn, "bad")
            bad.send(junk)
            self.assertEqual(bad.take(), disconnect5(rc), junk)
            self.assertTrue(bad.closed)
            self.still_working(s, p)

    def test_client_disconnect_gets_no_disconnect(self) -> None:
        """A DISCONNECT from the client, even with an error reason, closes the connection
        without a DISCONNECT from the broker."""
        hn = Harness(BASE5)
        c = connected5(hn, "c")
        c.send(Disconnect(reasons.UNSPECIFIED_ERROR, {"reason_string": "bye"}))
        self.assertEqual(c.take(), b"")
        self.assertTrue(c.closed)


# ---------------------------------------------------------------------------
# 3.1.1 and 5.0 side by side

class InteropTests(BrokerTestCase):

    def test_both_ways_all_qos(self) -> None:
        """5.0 and 3.1.1 clients exchange messages at QoS 0, 1 and 2 in both directions; the
        3.1.1 side gets no properties."""
        hn = Harness(BASE5)
        new = connected5(hn, "new")
        subscribe5(new, 1, ("from/old", SubOptions(2)))
        old = hn.subscriber("old", ("from/new", 2))
        for qos in (0, 1, 2):
            pid = qos or None
            pub(new, "from/new", b"n%d" % qos, qos=qos, pid=pid, user_property=[("a", "b")],
                correlation_data=b"id", response_topic="from/old")
            old.publish("from/old", b"o%d" % qos, qos=qos, pid=pid)
        got_old = old.packets()
        got_new = new.packets()
        self.assertEqual([(p.topic, p.payload, p.qos, p.properties) for p in got_old
                          if p.__class__ is Publish],
                         [("from/new", b"n%d" % q, q, {}) for q in (0, 1, 2)])
        self.assertEqual([(p.topic, p.payload, p.qos) for p in got_new
                          if p.__class__ is Publish],
                         [("from/old", b"o%d" % q, q) for q in (0, 1, 2)])


# ---------------------------------------------------------------------------
# Stopping the broker

class StopTests(BrokerTestCase):

    def test_stop_cancels_expiry_and_publishes_delayed_wills(self) -> None:
        """Stopping the broker publishes pending delayed wills, cancels session expiry
        timers (none is left, even for connections closing afterwards) and keeps the
        persistent sessions."""
        hn = Harness(BASE5)
        w = connected5(hn, "w")
        subscribe5(w, 1, ("will/#", SubOptions(0)))
        c = connected5(hn, "c", session_expiry_interval=60,
                       will=Will("will/c", b"gone", 0, False, {"will_delay_interval": 30}))
        c.lose()
        live = connected5(hn, "live", session_expiry_interval=60)
        hn.broker.stop()
        self.assertEqual(w.take(), publish5("will/c", b"gone"))
        live.lose()                                 # closes after stop(): no new timer
        w.lose()
        self.assertEqual(hn.clock.getDelayedCalls(), [])
        self.assertIn(("", "live"), hn.broker.sessions)
