"""MQTT 3.1/3.1.1 connections through MQTTProtocol + Broker + Authorizer, in memory:
CONNECT and its timers, bad input that must hurt only the sender, back-pressure
and output batching, and closes that complete later.

Every test builds a broker from a config text (``vmqtw.config.parse``), connects
protocols to in-memory transports and runs time on a ``Clock``; nothing touches a
socket (``vmqtw.test.harness``).  Bytes the broker must send are written by hand
(``vmqtw.test.wire``: ``connack``, ``suback``, ``publish``...) instead of with our
encoder; the client side is encoded with our encoder (the codec has its own
vectors) and decoded with a client-side ``Decoder``.
"""
from __future__ import annotations

import gc
import weakref
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import Connect, Disconnect, Pingreq, Publish, Will, encode
from vmqtw.test.harness import BASE, BrokerTestCase, Client, Harness
from vmqtw.test.wire import PINGRESP, connack, puback, publish
from vmqtw.transport.protocol import CLOSED, CONNECTED


# ---------------------------------------------------------------------------
# CONNECT

class ConnectTests(BrokerTestCase):

    def test_anonymous_allowed(self) -> None:
        """With allow_anonymous = on a CONNECT without credentials is accepted: CONNACK 0,
        the connection is CONNECTED and a session exists for the client id."""
        hn = Harness()
        c = hn.client()
        c.connect("c1")
        self.assertEqual(c.take(), connack(0))
        self.assertFalse(c.closed)
        self.assertEqual(c.protocol.state, CONNECTED)
        self.assertIn(("", "c1"), hn.broker.sessions)

    def test_anonymous_refused_without_plugin(self) -> None:
        """With allow_anonymous = off and no authentication plugin a CONNECT is refused with
        CONNACK 5 (not authorized), the connection closed and no session created."""
        hn = Harness("listener.tcp.t = 127.0.0.1:1883\nallow_anonymous = off\n")
        c = hn.client()
        c.connect("c1")
        self.assertEqual(c.take(), connack(5))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_allow_anonymous_override(self) -> None:
        """A listener's allow_anonymous_override = on accepts anonymous clients on that
        listener only, while the other listeners still refuse them."""
        hn = Harness("listener.tcp.t = 127.0.0.1:1883\n"
                     "listener.tcp.o = 127.0.0.1:1884\n"
                     "listener.tcp.o.allow_anonymous_override = on\n"
                     "allow_anonymous = off\n")
        c = hn.client("o")
        c.connect("c1")
        self.assertEqual(c.take(), connack(0))
        self.assertFalse(c.closed)
        d = hn.client("t")
        d.connect("c2")
        self.assertEqual(d.take(), connack(5))
        self.assertTrue(d.closed)

    def test_version_not_allowed_311(self) -> None:
        """A 3.1.1 CONNECT on a listener whose allowed_protocol_versions is 3 is refused
        with CONNACK 1 (unacceptable protocol version) and closed, while a 3.1 CONNECT is
        accepted."""
        hn = Harness(BASE + "listener.tcp.t.allowed_protocol_versions = 3\n")
        c = hn.client()
        c.connect("c1")
        self.assertEqual(c.take(), connack(1))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})
        # MQTT 3.1 is allowed there.
        d = hn.client(level=3)
        d.connect("c2")
        self.assertEqual(d.take(), connack(0))

    def test_default_versions_are_vernemqs(self) -> None:
        """The default allowed_protocol_versions is VerneMQ 2.x's 3,4,5,131: a 5.0
        CONNECT is accepted on a listener that does not set it."""
        hn = Harness()
        self.assertEqual(hn.config.listeners[0].allowed_protocol_versions,
                         frozenset({3, 4, 5, 131}))
        c = hn.client(level=5)
        c.connect("c5")
        data = c.take()
        self.assertEqual((data[0], data[2:4]), (0x20, b"\x00\x00"))  # CONNACK success
        self.assertFalse(c.closed)

    def test_version_not_allowed_5(self) -> None:
        """On a listener with allowed_protocol_versions = 3,4 a 5.0 CONNECT gets the
        3.x CONNACK 0x01 (unacceptable protocol version), then the close."""
        hn = Harness(BASE + "listener.tcp.t.allowed_protocol_versions = 3,4\n")
        self.assertEqual(hn.config.listeners[0].allowed_protocol_versions, frozenset({3, 4}))
        c = hn.client(level=5)
        c.connect("c5")
        self.assertEqual(c.take(), connack(1))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_unknown_protocol_level(self) -> None:
        """A CONNECT with protocol level 6 is answered with CONNACK 1 and the connection
        closed (3.1.1 s3.1.2.2)."""
        hn = Harness()
        c = hn.client()
        # CONNECT "MQTT" level 6, clean, keepalive 60, client id "x".
        c.send(bytes.fromhex("100d00044d5154540602003c000178"))
        self.assertEqual(c.take(), connack(1))
        self.assertTrue(c.closed)

    def test_unknown_protocol_name(self) -> None:
        """A CONNECT with an unknown protocol name ("MQTX") is answered with CONNACK 1 and
        the connection closed."""
        hn = Harness()
        c = hn.client()
        # CONNECT "MQTX" level 4.
        c.send(bytes.fromhex("100d00044d5154580402003c000178"))
        self.assertEqual(c.take(), connack(1))
        self.assertTrue(c.closed)

    def test_empty_client_id_311_clean_gets_an_id(self) -> None:
        """A 3.1.1 clean session CONNECT with an empty client id is accepted and the broker
        assigns a unique id (3.1.1 s3.1.3.1); two such clients get different sessions."""
        hn = Harness()
        c = hn.client()
        c.connect("", clean=True)
        self.assertEqual(c.take(), connack(0))
        self.assertFalse(c.closed)
        (key,) = hn.broker.sessions
        self.assertEqual(key[0], "")
        self.assertTrue(key[1])
        self.assertEqual(c.session.client_id, key[1])
        # A second anonymous client gets another id.
        d = hn.client()
        d.connect("", clean=True)
        self.assertEqual(d.take(), connack(0))
        self.assertEqual(len(hn.broker.sessions), 2)
        self.assertFalse(c.closed)

    def test_empty_client_id_311_persistent_refused(self) -> None:
        """A 3.1.1 persistent CONNECT (clean session 0) with an empty client id is refused
        with CONNACK 2 (identifier rejected) and closed."""
        hn = Harness()
        c = hn.client()
        c.connect("", clean=False)
        self.assertEqual(c.take(), connack(2))
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_empty_client_id_31_refused(self) -> None:
        """An MQTT 3.1 CONNECT with an empty client id is refused with CONNACK 2, even with
        clean session."""
        hn = Harness()
        c = hn.client(level=3)
        c.connect("", clean=True)
        self.assertEqual(c.take(), connack(2))
        self.assertTrue(c.closed)

    def test_client_id_too_long(self) -> None:
        """A client id longer than max_client_id_size is refused with CONNACK 2; one exactly
        that long is accepted."""
        hn = Harness(BASE + "max_client_id_size = 5\n")
        c = hn.client()
        c.connect("abcdef")
        self.assertEqual(c.take(), connack(2))
        self.assertTrue(c.closed)
        d = hn.client()
        d.connect("abcde")
        self.assertEqual(d.take(), connack(0))

    def test_client_id_size_counts_utf8_bytes(self) -> None:
        """max_client_id_size counts UTF-8 bytes, not characters."""
        hn = Harness(BASE + "max_client_id_size = 5\n")
        c = hn.client()
        c.connect("\u00e9\u00e9\u00e9")  # 3 characters, 6 bytes
        self.assertEqual(c.take(), connack(2))

    def test_second_connect_closes(self) -> None:
        """A second CONNECT on a connected connection is a protocol violation (3.1.1 s3.1):
        the connection is closed without an answer and its clean session removed."""
        hn = Harness()
        c = hn.connected("c1")
        c.connect("c1")
        self.assertEqual(c.take(), b"")
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_first_packet_not_connect_closes(self) -> None:
        """A connection whose first packet is not a CONNECT is closed without an answer."""
        hn = Harness()
        c = hn.client()
        c.send(Pingreq())
        self.assertEqual(c.take(), b"")
        self.assertTrue(c.closed)

    def test_first_packet_publish_closes(self) -> None:
        """A PUBLISH before CONNECT closes the connection and is not routed."""
        hn = Harness()
        s = hn.subscriber("s", ("#", 0))
        c = hn.client()
        c.publish("a", b"x")
        self.assertTrue(c.closed)
        self.assertEqual(s.take(), b"")

    def test_connect_timeout(self) -> None:
        """A connection that sends no CONNECT within mqtt_connect_timeout (milliseconds) is
        closed without an answer."""
        hn = Harness(BASE + "mqtt_connect_timeout = 2000\n")
        c = hn.client()
        hn.clock.advance(1.9)
        self.assertFalse(c.closed)
        hn.clock.advance(0.2)
        self.assertTrue(c.closed)
        self.assertEqual(c.take(), b"")

    def test_connect_timeout_cancelled_by_connect(self) -> None:
        """Once the CONNECT is accepted, the connect timeout no longer applies."""
        hn = Harness()
        c = hn.connected("c1")
        hn.clock.advance(100)
        self.assertFalse(c.closed)

    def test_connect_in_pieces(self) -> None:
        """A CONNECT arriving one byte at a time is answered with CONNACK 0 once complete."""
        hn = Harness()
        c = hn.client()
        data = encode(Connect("c1", 4, True, 0), 4)
        for i in range(len(data)):
            c.send(data[i:i + 1])
        self.assertEqual(c.take(), connack(0))

    def test_keepalive_timeout(self) -> None:
        """A client silent for one and a half keep alive periods is disconnected (3.1.1
        s3.1.2.10), not before, and its clean session removed."""
        hn = Harness()
        c = hn.connected("c1", keepalive=10)
        hn.clock.advance(14.9)
        self.assertFalse(c.closed)
        hn.clock.advance(0.2)
        self.assertTrue(c.closed)
        self.assertNotIn(("", "c1"), hn.broker.sessions)

    def test_pingreq_resets_keepalive(self) -> None:
        """Each PINGREQ is answered with PINGRESP and restarts the keep alive timer: the
        client is disconnected one and a half periods after its last packet."""
        hn = Harness()
        c = hn.connected("c1", keepalive=10)
        hn.clock.advance(10)
        c.send(Pingreq())
        self.assertEqual(c.take(), PINGRESP)
        hn.clock.advance(14.9)  # t = 24.9, 14.9 s after the PINGREQ
        self.assertFalse(c.closed)
        c.send(Pingreq())
        self.assertEqual(c.take(), PINGRESP)
        hn.clock.advance(14.9)
        self.assertFalse(c.closed)
        hn.clock.advance(0.2)
        self.assertTrue(c.closed)

    def test_keepalive_zero_never_times_out(self) -> None:
        """Keep alive 0 turns the keep alive timeout off."""
        hn = Harness()
        c = hn.connected("c1", keepalive=0)
        hn.clock.advance(100000)
        self.assertFalse(c.closed)

    def test_max_connection_lifetime(self) -> None:
        """A listener's max_connection_lifetime closes the connection after that many
        seconds even when the client is active."""
        hn = Harness(BASE + "listener.tcp.t.max_connection_lifetime = 30\n")
        c = hn.connected("c1", keepalive=10)
        for _ in range(5):
            hn.clock.advance(5.9)
            c.send(Pingreq())
        self.assertFalse(c.closed)  # t = 29.5
        hn.clock.advance(0.6)
        self.assertTrue(c.closed)

    def test_disconnect_closes(self) -> None:
        """DISCONNECT closes the connection and ends a clean session."""
        hn = Harness()
        c = hn.connected("c1")
        c.send(Disconnect())
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})


# ---------------------------------------------------------------------------
# Bad input hurts only the sender

class RobustnessTests(BrokerTestCase):

    def _bystanders(self, hn: Harness) -> tuple[Client, Client]:
        s = hn.subscriber("s", ("t", 1))
        p = hn.connected("p")
        return s, p

    def _still_working(self, s: Client, p: Client) -> None:
        p.publish("t", b"alive", qos=1, pid=42)
        self.assertEqual(p.take(), puback(42))
        self.assertEqual(s.packets()[-1].payload, b"alive")
        self.assertFalse(s.closed)
        self.assertFalse(p.closed)

    def test_garbage_before_connect(self) -> None:
        """Garbage instead of a CONNECT closes that connection only; other clients keep
        working."""
        hn = Harness()
        s, p = self._bystanders(hn)
        bad = hn.client()
        bad.send(b"\xff\xff\xff\xff\xff\xff")
        self.assertTrue(bad.closed)
        self._still_working(s, p)

    def test_malformed_after_connect(self) -> None:
        """Each kind of malformed or forbidden packet after CONNECT closes that connection
        only, while other clients keep publishing and receiving."""
        hn = Harness()
        s, p = self._bystanders(hn)
        for junk in (b"\x00\x00",                       # packet type 0
                     b"\x82\x02\x00\x01",               # SUBSCRIBE with no filter
                     b"\x32\x03\x00\x01a",              # QoS 1 PUBLISH without id
                     b"\x30\x04\x00\x02\xc3\x28",       # topic not UTF-8
                     b"\x36\x05\x00\x01a\x00\x01",      # QoS 3
                     b"\x40\x03\x00\x01\x00",           # 3.1.1 PUBACK of length 3
                     b"\xe0\x01\x00",                   # DISCONNECT with a body
                     b"\x30\xff\xff\xff\xff\x7f",       # remaining length > 4 bytes
                     b"\x20\x02\x00\x00",               # CONNACK from a client
                     b"\xf0\x00"):                      # AUTH in 3.1.1
            bad = hn.connected("bad")
            bad.send(junk)
            self.assertTrue(bad.closed, junk)
            self._still_working(s, p)

    def test_valid_packets_before_bad_bytes_are_handled(self) -> None:
        """Valid packets received before malformed bytes in the same chunk are handled
        (routed and acknowledged) before the connection is closed."""
        hn = Harness()
        s, p = self._bystanders(hn)
        bad = hn.connected("bad")
        bad.send(Publish("t", b"first", 1, packet_id=3), b"\x00\x00")
        self.assertEqual(bad.take(), puback(3))
        self.assertTrue(bad.closed)
        self.assertEqual(s.packets()[-1].payload, b"first")

    def test_oversize_packet(self) -> None:
        """A PUBLISH larger than max_message_size closes that connection without routing it;
        others keep working."""
        hn = Harness(BASE + "max_message_size = 100\n")
        s, p = self._bystanders(hn)
        big = hn.connected("big")
        big.publish("t", b"x" * 200)
        self.assertTrue(big.closed)
        self.assertEqual(s.take(), b"")
        self._still_working(s, p)

    def test_oversize_announced_closes_before_body(self) -> None:
        """A fixed header announcing a packet larger than max_message_size closes the
        connection before the body arrives."""
        hn = Harness(BASE + "max_message_size = 100\n")
        s, p = self._bystanders(hn)
        big = hn.connected("big")
        big.send(b"\x30\xff\xff\x03")  # announces 65535 bytes, sends none
        self.assertTrue(big.closed)
        self._still_working(s, p)

    def test_oversize_connect(self) -> None:
        """A CONNECT larger than max_message_size closes the connection and creates no
        session."""
        hn = Harness(BASE + "max_message_size = 100\n")
        c = hn.client()
        c.connect("c" * 200)
        self.assertTrue(c.closed)
        self.assertEqual(hn.broker.sessions, {})

    def test_data_after_close_ignored(self) -> None:
        """Bytes arriving after the broker closed a connection are ignored."""
        hn = Harness()
        s, p = self._bystanders(hn)
        bad = hn.connected("bad")
        bad.send(b"\x00\x00")
        bad.protocol.dataReceived(encode(Publish("t", b"late"), 4))
        self.assertEqual(s.take(), b"")


# ---------------------------------------------------------------------------
# Back-pressure and output batching

class FlowTests(BrokerTestCase):

    def test_pause_and_resume(self) -> None:
        """While the transport asks the broker to pause, deliveries wait in the session
        queue; on resume they are written in order and live delivery continues."""
        hn = Harness()
        s = hn.subscriber("s", ("t", 1))
        p = hn.connected("p")
        s.protocol.pauseProducing()
        p.publish("t", b"0")
        p.publish("t", b"1", qos=1, pid=1)
        p.publish("t", b"2")
        self.assertEqual(s.take(), b"")
        self.assertEqual(len(s.session.queue), 3)
        s.protocol.resumeProducing()
        self.assertEqual(s.take(), publish("t", b"0") + publish("t", b"1", qos=1, pid=1)
                         + publish("t", b"2"))
        self.assertEqual(len(s.session.queue), 0)
        p.publish("t", b"3")
        self.assertEqual(s.take(), publish("t", b"3"))

    def test_paused_queue_is_bounded(self) -> None:
        """The queue behind a paused transport is capped by max_online_messages: the oldest
        messages are kept and the rest dropped and counted."""
        hn = Harness(BASE + "max_online_messages = 5\n")
        s = hn.subscriber("s", ("t", 0))
        p = hn.connected("p")
        s.protocol.pauseProducing()
        p.send(*[Publish("t", b"%d" % i) for i in range(50)])
        self.assertEqual(len(s.session.queue), 5)
        self.assertEqual(s.session.dropped, 45)
        s.protocol.resumeProducing()
        self.assertEqual([pk.payload for pk in s.packets()], [b"%d" % i for i in range(5)])

    def test_one_write_per_connection_per_batch(self) -> None:
        """Fifty PUBLISHes in one chunk cause a single transport write per connection: one
        with all fifty PUBACKs for the publisher, one with the deliveries (up to the
        inflight window of 20) for each subscriber."""
        hn = Harness()
        subs = [hn.subscriber("s%d" % i, ("t/#", 1)) for i in range(3)]
        p = hn.connected("p")
        counts = {}
        for s in subs + [p]:
            real = s.transport.write

            def counting(data: bytes, real: Any = real, s: Client = s) -> None:
                counts[s] = counts.get(s, 0) + 1
                real(data)
            s.transport.write = counting  # type: ignore[method-assign]
        p.send(*[Publish("t/%d" % i, b"x", 1, packet_id=i + 1) for i in range(50)])
        for s in subs:
            self.assertEqual(counts[s], 1)
            self.assertEqual(len(s.packets()), 20)  # the inflight window
        self.assertEqual(counts[p], 1)
        self.assertEqual(p.take(), b"".join(puback(i + 1) for i in range(50)))


# ---------------------------------------------------------------------------
# connectionLost arriving later than loseConnection(), as with a real reactor

class DelayedCloseTests(BrokerTestCase):

    def test_messages_for_a_closing_persistent_session_are_kept(self) -> None:
        """Messages for a persistent session whose connection is closing but not yet closed
        are not written but kept, and delivered on reconnect."""
        hn = Harness()
        s = hn.subscriber("s", ("t", 1), clean=False, sync_close=False)
        s.send(b"\x00\x00")                     # protocol violation: closing
        self.assertTrue(s.transport.disconnecting)
        p = hn.connected("p")
        p.publish("t", b"during-close", qos=1, pid=1)
        self.assertEqual(s.take(), b"")           # nothing written after the close
        s.finish_close()
        p.publish("t", b"after-close", qos=1, pid=2)
        s2 = hn.client()
        s2.connect("s", clean=False)
        self.assertEqual(s2.take(), connack(0, True)
                         + publish("t", b"during-close", qos=1, pid=1, dup=True)
                         + publish("t", b"after-close", qos=1, pid=2))

    def test_will_once_when_closed_by_broker(self) -> None:
        """When the broker closes a connection (keep alive timeout) and the close completes
        later, the will is published exactly once."""
        hn = Harness()
        w = hn.subscriber("w", ("will", 0))
        c = hn.connected("c", keepalive=1, will=Will("will", b"bye"), sync_close=False)
        hn.clock.advance(2)
        self.assertTrue(c.transport.disconnecting)
        c.finish_close()
        self.assertEqual(w.take(), publish("will", b"bye"))
        hn.clock.advance(10)
        self.assertEqual(w.take(), b"")

    def test_takeover_while_first_is_closing(self) -> None:
        """A takeover while the first connection is still closing succeeds; the will is
        published when the first close completes, and the session stays with the new
        connection."""
        hn = Harness()
        w = hn.subscriber("w", ("will", 0))
        c1 = hn.connected("dup", will=Will("will", b"bye"), sync_close=False)
        c1.send(b"\x00\x00")
        c2 = hn.client()
        c2.connect("dup")
        self.assertEqual(c2.take(), connack(0))
        c1.finish_close()
        self.assertEqual(w.take(), publish("will", b"bye"))
        self.assertIs(hn.broker.sessions[("", "dup")].conn, c2.protocol)

    def test_takeover_closes_first_transport(self) -> None:
        """A takeover closes the first transport and unregisters the protocol as its
        producer; the late close leaves the session with the new connection."""
        hn = Harness()
        c1 = hn.connected("dup", sync_close=False)
        c2 = hn.client()
        c2.connect("dup")
        self.assertTrue(c1.transport.disconnecting)
        self.assertIsNone(c1.transport.producer)
        c1.finish_close()
        self.assertIs(hn.broker.sessions[("", "dup")].conn, c2.protocol)

    def test_peer_that_stops_reading_is_aborted(self) -> None:
        """A connection the broker closed but whose peer does not finish the close is
        aborted after a few seconds."""
        hn = Harness()
        c = hn.connected("c", sync_close=False)
        c.send(b"\x00\x00")
        self.assertTrue(c.transport.disconnecting)
        self.assertFalse(c.transport.disconnected)
        hn.clock.advance(5)
        self.assertTrue(c.transport.disconnected)  # abortConnection()

    def test_no_timer_left_after_close(self) -> None:
        """No delayed call is left on the clock after a client disconnects, whether the
        close completes at once or later."""
        hn = Harness()
        for sync_close in (True, False):
            c = hn.connected("c", keepalive=30, sync_close=sync_close)
            c.send(Disconnect())
            if not sync_close:
                c.finish_close()
            self.assertEqual(hn.clock.getDelayedCalls(), [])

    def test_no_timer_left_after_connect_timeout(self) -> None:
        """No delayed call is left on the clock after a connect timeout closes a connection."""
        hn = Harness()
        c = hn.client(sync_close=False)
        hn.clock.advance(5)
        self.assertTrue(c.closed)
        c.finish_close()
        self.assertEqual(hn.clock.getDelayedCalls(), [])


class FootprintTests(SynchronousTestCase):
    """An idle connection's attribute dict stays compact: CPython shares keys
    (and stores values inline) only up to 30 attributes per instance."""

    def test_connected_protocol_has_at_most_30_attributes(self) -> None:
        """A connected protocol instance has at most 30 attributes, so CPython keeps its
        attribute dict compact."""
        hn = Harness()
        c = hn.connected("small")
        self.assertLessEqual(len(vars(c.protocol)), 30, sorted(vars(c.protocol)))

    def test_closed_connection_is_freed_without_the_cycle_collector(self) -> None:
        """Once its stream has ended, a connection (the protocol and its MQTT
        rules) is freed by reference counting alone: nothing keeps a cycle
        between them, so the broker need not wait for a full run of the
        cyclic garbage collector to get the memory back."""
        hn = Harness()
        c = hn.connected("gone", keepalive=60)
        c.send(Publish("t", b"x", 1, packet_id=1))
        ref = weakref.ref(c.protocol)
        connection = c.protocol.connection
        gc.disable()
        self.addCleanup(gc.enable)
        c.lose()
        self.assertEqual(connection.state, CLOSED)
        connection.write(b"late")           # a stand-in takes what still comes
        connection.transport.pause_reading()
        self.assertFalse(hn.broker.dirty)
        # What Twisted's TCP transport drops when the socket closes.
        c.transport.unregisterProducer()
        c.transport.protocol = None
        del c, connection
        self.assertIsNone(ref())
