"""The MQTT rules of one connection (``vmqtw.connection``) through a fake transport:
CONNECT and its refusals, the held-packet queue, timers and protocol violations."""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from vmqtw.auth.api import OK, IAuthOnRegister, IOnAuth, error, ok
from vmqtw.codec import (
    Auth,
    Connect,
    Disconnect,
    Pingreq,
    Publish,
    SubOptions,
    Subscribe,
    Will,
    encode,
)
from vmqtw.connection import (
    AUTHENTICATING,
    CLOSED,
    CONNECTED,
    Connection,
    IConnectionTransport,
)
from vmqtw.test.connection_harness import (
    BASE,
    PINGRESP,
    FakeTransport,
    LateRegister,
    Rig,
    connack,
    disconnect5,
    publish,
    suback,
)

NO_ANONYMOUS = BASE.replace("allow_anonymous = on", "allow_anonymous = off")


class FakeTransportTests(SynchronousTestCase):

    def test_fake_provides_the_interface(self) -> None:
        """The test double provides every method and attribute of
        ``IConnectionTransport``, so these tests exercise the real contract."""
        rig = Rig()
        self.assertTrue(verifyObject(IConnectionTransport, FakeTransport(rig.broker)))


class ConnectTests(SynchronousTestCase):

    def test_accepted(self) -> None:
        """A valid CONNECT gets CONNACK 0, opens a session attached to the
        transport and tells the transport the protocol level for deliveries."""
        rig = Rig()
        c = rig.client()
        c.send(Connect("c1", 4))
        self.assertEqual(c.take(), connack(0))
        self.assertEqual(c.connection.state, CONNECTED)
        session = rig.broker.sessions[("", "c1")]
        self.assertIs(session.conn, c.transport)
        self.assertIs(c.connection.session, session)
        self.assertEqual(c.transport.protocol_level, 4)
        self.assertEqual(session.peer, ("192.0.2.7", 50000))

    def test_level_not_allowed_on_the_listener(self) -> None:
        """A protocol level the listener does not allow is refused with the 3.x
        CONNACK 0x01 and the connection closes without a session."""
        rig = Rig(BASE.replace("3,4,5", "4"))
        c = rig.client(level=3)
        c.send(Connect("c1", 3))
        self.assertEqual(c.take(), connack(1))
        self.assertTrue(c.closed)
        self.assertEqual(rig.broker.sessions, {})

    def test_empty_client_id_on_31(self) -> None:
        """MQTT 3.1 cannot use an empty client id: CONNACK 0x02, closed."""
        rig = Rig()
        c = rig.client(level=3)
        c.send(Connect("", 3))
        self.assertEqual(c.take(), connack(2))
        self.assertTrue(c.closed)

    def test_preauth_identity_becomes_the_username(self) -> None:
        """The identity a lower layer established replaces the CONNECT's username."""
        rig = Rig()
        c = rig.client(preauth="cn-alice")
        c.send(Connect("c1", 4, username="mallory"))
        self.assertEqual(c.take(), connack(0))
        self.assertEqual(rig.broker.sessions[("", "c1")].username, "cn-alice")

    def test_second_connect_is_a_violation(self) -> None:
        """A second CONNECT on the same connection closes it."""
        rig = Rig()
        c = rig.connected("c1")
        c.send(Connect("c1", 4))
        self.assertTrue(c.closed)
        self.assertEqual(c.connection.state, CLOSED)

    def test_refused_credentials(self) -> None:
        """auth_on_register's error("invalid_credentials") is CONNACK 0x04 (3.1.1)."""
        late = LateRegister()
        rig = Rig(NO_ANONYMOUS, [("late", late)])
        c = rig.client()
        c.send(Connect("c1", 4, username="u", password=b"bad"))
        late.pending[0].callback(error("invalid_credentials"))
        self.assertEqual(c.take(), connack(4))
        self.assertTrue(c.closed)


class HeldQueueTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.late = LateRegister()
        self.rig = Rig(NO_ANONYMOUS, [("late", self.late)])

    def test_packets_wait_for_a_late_register_answer(self) -> None:
        """Packets sent right after CONNECT wait (reading paused) while the
        plugin decides; once it accepts they are handled in order, after CONNACK."""
        c = self.rig.client()
        c.send(Connect("c1", 4), Subscribe(1, [("t", SubOptions(0))]), Pingreq())
        self.assertEqual(c.connection.state, AUTHENTICATING)
        self.assertFalse(c.transport.reading)
        self.assertEqual(c.take(), b"")
        self.assertEqual(len(c.connection.held), 2)
        self.late.pending[0].callback(OK)
        self.assertTrue(c.transport.reading)
        self.assertEqual(c.take(), connack(0) + suback(1, 0) + PINGRESP)
        self.assertEqual(c.connection.held, [])

    def test_later_chunks_are_held_too(self) -> None:
        """Input that arrives in later reads while the plugin decides joins the
        same queue, and is replayed behind the earlier packets."""
        c = self.rig.client()
        c.send(Connect("c1", 4), Subscribe(1, [("t", SubOptions(0))]))
        c.send(Publish("t", b"held", 0))
        self.late.pending[0].callback(OK)
        self.assertEqual(c.take(), connack(0) + suback(1, 0) + publish("t", b"held"))

    def test_held_decoding_error_closes_after_connack(self) -> None:
        """A malformed packet read while the plugin decides is reported in its
        place: the CONNACK goes out, then the connection closes."""
        c = self.rig.client()
        c.send(Connect("c1", 4), b"\x00\x00")  # packet type 0 is reserved
        self.assertFalse(c.closed)
        self.late.pending[0].callback(OK)
        self.assertEqual(c.take(), connack(0))
        self.assertTrue(c.closed)

    def test_refusal_drops_held_packets(self) -> None:
        """When the plugin refuses, held packets are never handled: nothing is
        published and only the CONNACK is sent."""
        c = self.rig.client()
        c.send(Connect("c1", 4), Publish("t", b"x", 0))
        self.late.pending[0].callback(error("not_authorized"))
        self.assertEqual(c.take(), connack(5))
        self.assertTrue(c.closed)
        self.assertEqual(self.rig.broker.sessions, {})

    def test_client_gone_before_the_answer(self) -> None:
        """A client that goes away while the plugin decides gets no session
        when the answer comes."""
        c = self.rig.client()
        c.send(Connect("c1", 4))
        c.lose()
        self.late.pending[0].callback(OK)
        self.assertEqual(self.rig.broker.sessions, {})
        self.assertEqual(c.take(), b"")

    def test_plugin_failure_refuses(self) -> None:
        """An exception from the plugin is logged and refuses the CONNECT
        (CONNACK 0x05): a broken plugin never lets a client in."""
        c = self.rig.client()
        c.send(Connect("c1", 4))
        self.late.pending[0].errback(RuntimeError("database down"))
        self.assertEqual(c.take(), connack(5))
        self.assertTrue(c.closed)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class TimerTests(SynchronousTestCase):

    def test_connect_timeout(self) -> None:
        """No CONNECT within mqtt_connect_timeout: the connection closes."""
        rig = Rig(BASE + "mqtt_connect_timeout = 2000\n")
        c = rig.client()
        rig.clock.advance(1.9)
        self.assertFalse(c.closed)
        rig.clock.advance(0.2)
        self.assertTrue(c.closed)

    def test_keepalive_timeout(self) -> None:
        """A client silent for 1.5 x its keep alive is disconnected; any input
        in between restarts the count."""
        rig = Rig()
        c = rig.connected("c1", keepalive=10)
        rig.clock.advance(14)
        c.send(Pingreq())
        self.assertEqual(c.take(), PINGRESP)
        rig.clock.advance(14)
        self.assertFalse(c.closed)
        rig.clock.advance(1.1)
        self.assertTrue(c.closed)

    def test_keepalive_timeout_5(self) -> None:
        """A 5.0 client that misses its keep alive gets DISCONNECT 0x8D first."""
        rig = Rig()
        c = rig.connected("c1", level=5, keepalive=2)
        rig.clock.advance(3)
        self.assertEqual(c.take(), disconnect5(0x8D))
        self.assertTrue(c.closed)

    def test_timers_stop_with_the_connection(self) -> None:
        """Once the stream ends no timer of the connection is left on the clock."""
        rig = Rig(BASE + "listener.tcp.t.max_connection_lifetime = 60\n")
        c = rig.connected("c1", keepalive=10)
        self.assertEqual(len(rig.clock.getDelayedCalls()), 2)
        c.lose()
        self.assertEqual(rig.clock.getDelayedCalls(), [])


class ViolationTests(SynchronousTestCase):

    def test_publish_before_connect(self) -> None:
        """A PUBLISH before CONNECT closes the connection with nothing sent."""
        rig = Rig()
        c = rig.client()
        c.send(Publish("t", b"x", 0))
        self.assertTrue(c.closed)
        self.assertEqual(c.take(), b"")

    def test_violation_after_connack_5(self) -> None:
        """A connected 5.0 client that breaks a rule (a topic alias above the
        broker's maximum) gets a DISCONNECT with the reason (0x94), then the
        close; later input is ignored."""
        rig = Rig()
        c = rig.connected("c1", level=5)
        c.send(Publish("", b"x", 0, properties={"topic_alias": 3}), Pingreq())
        self.assertEqual(c.take(), disconnect5(0x94))
        self.assertTrue(c.closed)
        c.send(Pingreq())
        self.assertEqual(c.take(), b"")

    def test_broken_5_connect_says_why(self) -> None:
        """A 5.0 CONNECT that cannot be decoded is answered with a 5.0 CONNACK
        carrying the reason (0x81 malformed), not a bare close."""
        rig = Rig()
        c = rig.client(level=5)
        data = bytearray(encode(Connect("c1", 5), 5))
        data[9] |= 0x01  # the reserved flag of the connect flags byte
        c.send(bytes(data))
        self.assertEqual(c.take()[:4], b"\x20\x03\x00\x81")
        self.assertTrue(c.closed)

    def test_takeover_closes_the_old_connection(self) -> None:
        """A second connection with the same client id takes the session over:
        the first one is closed and its will is published."""
        rig = Rig()
        watcher = rig.connected("w")
        watcher.send(Subscribe(1, [("will/#", SubOptions(0))]))
        watcher.take()
        old = rig.connected("dup", will=Will("will/dup", b"gone"))
        new = rig.connected("dup")
        self.assertTrue(old.closed)
        self.assertFalse(new.closed)
        self.assertIs(rig.broker.sessions[("", "dup")].conn, new.transport)
        self.assertEqual(watcher.take(), publish("will/dup", b"gone"))

    def test_will_on_network_loss_not_on_disconnect(self) -> None:
        """The will goes out when the stream breaks, not after a DISCONNECT."""
        rig = Rig()
        watcher = rig.connected("w")
        watcher.send(Subscribe(1, [("will/#", SubOptions(0))]))
        watcher.take()
        polite = rig.connected("p", will=Will("will/p", b"p"))
        polite.send(Disconnect())
        polite.lose()
        rude = rig.connected("r", will=Will("will/r", b"r"))
        rude.lose()
        self.assertEqual(watcher.take(), publish("will/r", b"r"))

    def test_close_from_the_core(self) -> None:
        """``close(reason)`` (server shutdown) sends a 5.0 client the DISCONNECT
        reason, and a 3.1.1 client just sees the close."""
        rig = Rig()
        c5 = rig.connected("five", level=5)
        c4 = rig.connected("four")
        for c in (c5, c4):
            c.connection.close(0x8B)
        self.assertEqual(c5.take(), disconnect5(0x8B))
        self.assertEqual(c4.take(), b"")
        self.assertTrue(c4.closed and c5.closed)

    def test_connection_has_no_twisted_transport(self) -> None:
        """A ``Connection`` works with any ``IConnectionTransport``: it keeps
        only the one it was given."""
        rig = Rig()
        c = rig.client()
        self.assertIsInstance(c.connection, Connection)
        self.assertIs(c.connection.transport, c.transport)


@implementer(IOnAuth, IAuthOnRegister)
class Challenge:
    """Enhanced authentication "CHAL": the client must answer b"secret";
    answers come when the test fires them."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def on_auth(self, request: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d

    def auth_on_register(self, request: Any) -> Any:
        return OK


class EnhancedAuthTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.plugin = Challenge()
        self.rig = Rig(NO_ANONYMOUS, [("chal", self.plugin)])
        self.c = self.rig.client(level=5)

    def test_challenge_then_success(self) -> None:
        """CONNECT with a method: reading pauses while on_auth decides, the
        challenge goes out as AUTH 0x18, the client's AUTH answer leads to a
        CONNACK carrying the method and the plugin's final data."""
        c = self.c
        c.send(Connect("c1", 5, properties={"authentication_method": "CHAL"}))
        self.assertFalse(c.transport.reading)
        self.plugin.pending[0].callback(
            ok(continue_authentication=True, authentication_data=b"challenge"))
        self.assertTrue(c.transport.reading)
        (challenge,) = c.packets()
        self.assertEqual((challenge.reason_code, challenge.properties),
                         (0x18, {"authentication_method": "CHAL",
                                 "authentication_data": b"challenge"}))
        c.send(Auth(0x18, {"authentication_method": "CHAL", "authentication_data": b"secret"}))
        self.plugin.pending[1].callback(ok(authentication_data=b"welcome"))
        (connack5,) = c.packets()
        self.assertEqual(connack5.reason_code, 0)
        self.assertEqual(connack5.properties["authentication_data"], b"welcome")
        self.assertEqual(c.connection.state, CONNECTED)

    def test_packets_during_the_first_step_are_replayed(self) -> None:
        """A PINGREQ sent right behind the CONNECT waits while on_auth decides;
        it is handled after the challenge, and (not being AUTH) closes the
        connection as a packet before CONNECT."""
        c = self.c
        c.send(Connect("c1", 5, properties={"authentication_method": "CHAL"}), Pingreq())
        self.assertEqual(len(c.connection.held), 1)
        self.plugin.pending[0].callback(ok(continue_authentication=True))
        (challenge,) = c.packets()
        self.assertEqual(challenge.reason_code, 0x18)
        self.assertTrue(c.closed)

    def test_wrong_answer_refused(self) -> None:
        """on_auth's error on the client's answer refuses with CONNACK 0x87."""
        c = self.c
        c.send(Connect("c1", 5, properties={"authentication_method": "CHAL"}))
        self.plugin.pending[0].callback(ok(continue_authentication=True))
        c.take()
        c.send(Auth(0x18, {"authentication_method": "CHAL", "authentication_data": b"guess"}))
        self.plugin.pending[1].callback(error("not_authorized"))
        (refusal,) = c.packets()
        self.assertEqual(refusal.reason_code, 0x87)
        self.assertTrue(c.closed)
