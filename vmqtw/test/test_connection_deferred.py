"""PUBLISH/SUBSCRIBE authorization answered later (a Deferred, as a webhook
does), through the connection on a fake transport: the client's later packets
wait in order, the verdict is applied as a synchronous one, the wait ends with
the connection."""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from vmqtw.auth.api import OK, IAuthOnPublish, IAuthOnSubscribe, error, ok
from vmqtw.codec import (
    Connect, Disconnect, Pingreq, Puback, Publish, Suback, SubOptions, Subscribe, Will, reasons,
)
from vmqtw.connection.state import CONNECTED
from vmqtw.test.connection_harness import (
    BASE, PINGRESP, Client, Rig, connack, puback, publish, pubrec, suback,
)


@implementer(IAuthOnPublish, IAuthOnSubscribe)
class LateAuthz:
    """Answers at once (OK), except for topics/filters starting with ``late``:
    those get a Deferred the test fires by hand (``pending``, in order)."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []
        self.cancelled: list[Deferred[Any]] = []
        self.asked: list[str] = []

    def _answer(self, name: str) -> Any:
        self.asked.append(name)
        if not name.startswith("late"):
            return OK
        d: Deferred[Any] = Deferred(self.cancelled.append)
        self.pending.append(d)
        return d

    def auth_on_publish(self, client: Any, topic: str, payload: bytes, qos: int,
                        retain: bool) -> Any:
        return self._answer(topic)

    def auth_on_subscribe(self, client: Any, topics: list[tuple[str, int]]) -> Any:
        return self._answer(topics[0][0])


def topics(client: Client) -> list[str]:
    """The topics of the PUBLISHes ``client`` received since the last take."""
    return [p.topic for p in client.packets() if isinstance(p, Publish)]


class DeferredPublishTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.plugin = LateAuthz()
        self.rig = Rig(BASE, [("late", self.plugin)])
        self.sub = self.rig.connected("sub")
        self.sub.send(Subscribe(1, [("#", SubOptions(1))]))
        self.assertEqual(self.sub.take(), suback(1, 1))

    def test_later_packets_wait_for_the_verdict(self) -> None:
        """PUBLISH A waits for its verdict, PUBLISH B (sent right after) waits
        behind it with reading paused; A's verdict routes A, then B, in order."""
        c = self.rig.connected("c")
        c.send(publish("late/a", b"A", 1, 1), publish("b", b"B", 1, 2))
        self.assertEqual(c.take(), b"")
        self.assertFalse(c.transport.reading)
        self.assertEqual(len(c.connection.held), 1)
        c.send(publish("c", b"C", 1, 3))  # already read when reading paused
        self.assertEqual(self.plugin.asked, ["#", "late/a"])  # B and C not asked yet
        self.assertEqual(topics(self.sub), [])
        self.plugin.pending[0].callback(OK)
        self.assertEqual(c.take(), puback(1) + puback(2) + puback(3))
        self.assertEqual(topics(self.sub), ["late/a", "b", "c"])
        self.assertTrue(c.transport.reading)
        self.assertEqual(c.connection.held, [])
        self.assertIsNone(c.connection.pending)

    def test_replay_stops_at_the_next_late_verdict(self) -> None:
        """A held PUBLISH whose verdict also comes later stops the replay again:
        what follows it waits for that second verdict."""
        c = self.rig.connected("c")
        c.send(publish("late/1", b"1", 1, 1), publish("late/2", b"2", 1, 2),
               publish("three", b"3", 1, 3))
        self.plugin.pending[0].callback(OK)
        self.assertEqual(c.take(), puback(1))
        self.assertFalse(c.transport.reading)
        self.assertEqual(len(c.connection.held), 1)
        self.plugin.pending[1].callback(OK)
        self.assertEqual(c.take(), puback(2) + puback(3))
        self.assertEqual(topics(self.sub), ["late/1", "late/2", "three"])
        self.assertTrue(c.transport.reading)

    def test_late_modifiers_apply(self) -> None:
        """A late ``ok`` with modifiers rewrites the message as a synchronous one would."""
        c = self.rig.connected("c")
        c.send(publish("late/a", b"A", 0))
        self.plugin.pending[0].callback(ok(topic="rewritten", payload=b"R"))
        (message,) = [p for p in self.sub.packets() if isinstance(p, Publish)]
        self.assertEqual((message.topic, message.payload), ("rewritten", b"R"))

    def test_late_denial_closes_a_311_client(self) -> None:
        """MQTT 3.1.1: a publish denied later closes the connection, as a
        synchronous denial does; the packets held behind it are never handled."""
        c = self.rig.connected("c")
        c.send(publish("late/a", b"A", 1, 1), publish("b", b"B", 1, 2))
        self.plugin.pending[0].callback(error("not_allowed"))
        self.assertTrue(c.closed)
        self.assertEqual(c.take(), b"")
        self.assertEqual(topics(self.sub), [])

    def test_late_denial_is_a_plain_puback_for_31(self) -> None:
        """MQTT 3.1 (by default): a publish denied later is acknowledged without
        being routed, and the next packet is handled."""
        c = self.rig.connected("c", level=3)
        c.take()
        c.send(publish("late/a", b"A", 1, 1), publish("b", b"B", 1, 2))
        self.plugin.pending[0].callback(error("not_allowed"))
        self.assertEqual(c.take(), puback(1) + puback(2))
        self.assertEqual(topics(self.sub), ["b"])

    def test_late_denial_5_is_puback_0x87(self) -> None:
        """MQTT 5.0: a QoS 1 publish denied later gets PUBACK 0x87 (QoS 2: PUBREC
        0x87); the connection goes on with the held packets."""
        c = self.rig.connected("c", level=5)
        c.send(Publish("late/a", b"A", 1, packet_id=1), Publish("late/b", b"B", 2, packet_id=2),
               Pingreq())
        self.plugin.pending[0].callback(error("not_allowed"))
        self.plugin.pending[1].callback(error("not_allowed"))
        acks = c.packets()
        self.assertEqual([(p.type, p.packet_id, p.reason_code) for p in acks[:2]],
                         [(Puback.type, 1, reasons.NOT_AUTHORIZED),
                          (Puback.type + 1, 2, reasons.NOT_AUTHORIZED)])
        self.assertEqual(acks[2].type, Pingreq.type + 1)  # PINGRESP
        self.assertEqual(c.connection.state, CONNECTED)
        self.assertEqual(topics(self.sub), [])

    def test_qos2_is_recorded_once_the_verdict_is_in(self) -> None:
        """A QoS 2 PUBLISH resent while its verdict is pending is answered as a
        duplicate once the first one was accepted (routed once)."""
        c = self.rig.connected("c")
        c.send(publish("late/a", b"A", 2, 7), publish("late/a", b"A", 2, 7))
        self.plugin.pending[0].callback(OK)
        self.assertEqual(c.take(), pubrec(7) + pubrec(7))
        self.assertEqual(topics(self.sub), ["late/a"])
        self.assertEqual(len(self.plugin.pending), 1)

    def test_held_qos1_publishes_count_toward_receive_maximum(self) -> None:
        """MQTT 5.0: unacknowledged QoS>0 PUBLISHes waiting behind a verdict count
        toward the receive maximum; one more than it is DISCONNECT 0x93."""
        rig = Rig(BASE + "receive_max_broker = 2\n", [("late", self.plugin)])
        ok_client = rig.connected("ok", level=5)
        ok_client.send(Publish("late/a", b"A", 1, packet_id=1), Publish("b", b"B", 1, packet_id=2),
                       Publish("q0", b"0", 0))
        self.assertFalse(ok_client.closed)
        c = rig.connected("c", level=5)
        c.send(Publish("late/a", b"A", 1, packet_id=1), Publish("b", b"B", 1, packet_id=2),
               Publish("c", b"C", 1, packet_id=3))
        self.assertTrue(c.closed)
        (packet,) = c.packets()
        self.assertIsInstance(packet, Disconnect)
        self.assertEqual(packet.reason_code, reasons.RECEIVE_MAXIMUM_EXCEEDED)
        self.assertEqual(self.plugin.cancelled, [])  # the fake transport reports no loss yet
        c.lose()
        self.assertEqual(self.plugin.cancelled, [self.plugin.pending[1]])

    def test_bytes_while_waiting_are_keepalive_activity(self) -> None:
        """Packets read while a verdict is pending keep the client alive even
        though they are only handled later."""
        c = self.rig.connected("c", keepalive=10)
        c.send(publish("late/a", b"A", 0))
        self.rig.clock.advance(14)
        c.send(Pingreq())
        self.rig.clock.advance(2)  # 16 s after CONNECT, 2 s after the PINGREQ
        self.assertFalse(c.closed)
        self.plugin.pending[0].callback(OK)
        self.assertEqual(c.take(), PINGRESP)

    def test_no_keepalive_timeout_while_reading_is_paused(self) -> None:
        """While a verdict is pending the broker does not read, so the client's
        silence is not held against it; the keep alive counts again afterwards."""
        c = self.rig.connected("c", keepalive=2)
        c.send(publish("late/a", b"A", 0))
        for _ in range(10):
            self.rig.clock.advance(1)
        self.assertFalse(c.closed)
        self.plugin.pending[0].callback(OK)
        for _ in range(4):  # silent for more than 1.5 x 2 s after the verdict
            self.rig.clock.advance(1)
        self.assertTrue(c.closed)


    def test_rate_limit_then_late_verdict_keeps_reading_paused(self) -> None:
        """A PUBLISH held by max_message_rate whose verdict, once the window ends,
        comes later: reading stays paused until that verdict, then resumes."""
        rig = Rig(BASE + "max_message_rate = 1\n", [("late", self.plugin)])
        c = rig.connected("c")
        c.send(publish("a", b"A", 1, 1), publish("late/b", b"B", 1, 2))
        self.assertEqual(c.take(), puback(1))
        self.assertFalse(c.transport.reading)
        rig.clock.advance(1)  # the rate window ends: late/b is asked about
        self.assertEqual(self.plugin.asked[-1], "late/b")
        self.assertFalse(c.transport.reading)
        self.plugin.pending[0].callback(OK)
        self.assertEqual(c.take(), puback(2))
        self.assertTrue(c.transport.reading)

    def test_late_verdict_then_rate_limit_keeps_reading_paused(self) -> None:
        """A late verdict whose replay runs into max_message_rate: reading stays
        paused (the rate limit holds input) until the rate window ends."""
        rig = Rig(BASE + "max_message_rate = 1\n", [("late", self.plugin)])
        c = rig.connected("c")
        c.send(publish("late/a", b"A", 1, 1), publish("b", b"B", 1, 2))
        self.plugin.pending[0].callback(OK)
        self.assertEqual(c.take(), puback(1))
        self.assertFalse(c.transport.reading)
        rig.clock.advance(1)
        self.assertEqual(c.take(), puback(2))
        self.assertTrue(c.transport.reading)


class DeferredSubscribeTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.plugin = LateAuthz()
        self.rig = Rig(BASE, [("late", self.plugin)])

    def test_late_grant_subscribes_then_replays(self) -> None:
        """A SUBSCRIBE granted later gets its SUBACK, then the held packets run
        (a PUBLISH to the new subscription reaches the client itself)."""
        c = self.rig.connected("c")
        c.send(Subscribe(1, [("late/#", SubOptions(1))]), publish("late/x", b"X", 0))
        self.assertEqual(c.take(), b"")
        self.plugin.pending[0].callback(OK)
        self.plugin.pending[1].callback(OK)
        packets = c.packets()
        self.assertEqual(packets[0].reason_codes, [1])
        self.assertEqual([p.topic for p in packets[1:]], ["late/x"])

    def test_late_denial_311_is_0x80(self) -> None:
        """MQTT 3.1.1: a SUBSCRIBE denied later is SUBACK 0x80, nothing subscribed."""
        c = self.rig.connected("c")
        c.send(Subscribe(1, [("late/#", SubOptions(1)), ("other", SubOptions(0))]))
        self.plugin.pending[0].callback(error("not_allowed"))
        self.assertEqual(c.take(), suback(1, 0x80, 0x80))
        self.assertEqual(c.session.subscriptions, {})

    def test_late_denial_5_is_0x87(self) -> None:
        """MQTT 5.0: a SUBSCRIBE denied later is SUBACK 0x87 for each filter."""
        c = self.rig.connected("c", level=5)
        c.send(Subscribe(1, [("late/#", SubOptions(1))]))
        self.plugin.pending[0].callback(error("not_allowed"))
        (ack,) = c.packets()
        self.assertIsInstance(ack, Suback)
        self.assertEqual(ack.reason_codes, [reasons.NOT_AUTHORIZED])


class DeferredEndTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.plugin = LateAuthz()
        self.rig = Rig(BASE, [("late", self.plugin)])
        self.sub = self.rig.connected("sub")
        self.sub.send(Subscribe(1, [("#", SubOptions(0))]))
        self.sub.take()

    def test_connection_lost_cancels_the_wait(self) -> None:
        """The stream ends while a verdict is pending: the plugin's Deferred is
        cancelled (aborting e.g. its HTTP request) and nothing is written or routed."""
        c = self.rig.connected("c")
        c.send(publish("late/a", b"A", 1, 1), publish("b", b"B", 1, 2))
        c.lose()
        self.assertEqual(self.plugin.cancelled, self.plugin.pending)
        self.assertIsNone(c.connection.pending)
        self.assertEqual((c.transport.buffer, c.take()), ([], b""))
        self.assertEqual(topics(self.sub), [])

    def test_verdict_after_close_is_dropped(self) -> None:
        """A verdict that arrives after the connection closed (its session taken
        over) is dropped: no acknowledgement, no routing, reading stays as it was."""
        c = self.rig.connected("c")
        c.send(publish("late/a", b"A", 1, 1))
        self.rig.connected("c")  # takes the session over
        self.assertTrue(c.closed)
        pauses = c.transport.read_pauses
        self.plugin.pending[0].callback(OK)
        self.assertEqual((c.transport.buffer, c.take()), ([], b""))
        self.assertEqual(topics(self.sub), [])
        self.assertEqual(c.transport.read_pauses, pauses)
        self.assertFalse(c.transport.reading)

    def test_verdict_already_given_does_not_pause(self) -> None:
        """A plugin answering with an already fired Deferred is applied at once,
        without pausing reading; the packets after it are handled in the same batch."""
        self.plugin._answer = lambda name: defer.succeed(OK)  # type: ignore[method-assign]
        c = self.rig.connected("c")
        c.send(publish("a", b"A", 1, 1), publish("b", b"B", 1, 2))
        self.assertEqual(c.take(), puback(1) + puback(2))
        self.assertEqual(c.transport.read_pauses, 0)
        self.assertEqual(topics(self.sub), ["a", "b"])


class DeferredWillTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.plugin = LateAuthz()
        self.rig = Rig(BASE, [("late", self.plugin)])

    def test_will_verdict_later_holds_the_connect(self) -> None:
        """The will's auth_on_publish answered later: no CONNACK and reading
        paused until it is in; then CONNACK and the packets sent meanwhile."""
        c = self.rig.client()
        c.send(Connect("c", 4, will=Will("late/will", b"bye")), Pingreq())
        self.assertEqual(c.take(), b"")
        self.assertFalse(c.transport.reading)
        self.plugin.pending[0].callback(OK)
        self.assertEqual(c.take(), connack(0) + PINGRESP)
        self.assertTrue(c.transport.reading)
        self.assertEqual(c.connection.state, CONNECTED)

    def test_will_denied_later_refuses_the_connect(self) -> None:
        """A will denied later refuses the CONNECT (CONNACK 5), as a synchronous
        denial does; nothing held is handled."""
        c = self.rig.client()
        c.send(Connect("c", 4, will=Will("late/will", b"bye")), publish("t", b"x", 0))
        self.plugin.pending[0].callback(error("not_allowed"))
        self.assertEqual(c.take(), connack(5))
        self.assertTrue(c.closed)
        self.assertEqual(self.plugin.asked, ["late/will"])

    def test_connection_lost_while_the_will_waits(self) -> None:
        """The stream ends while the will is being authorized: the wait is
        cancelled and no session is opened."""
        c = self.rig.client()
        c.send(Connect("c", 4, will=Will("late/will", b"bye")))
        c.lose()
        self.assertEqual(self.plugin.cancelled, self.plugin.pending)
        self.assertEqual(c.take(), b"")
        self.assertEqual(self.rig.broker.sessions, {})


class SynchronousPathTests(SynchronousTestCase):

    def test_synchronous_plugin_never_makes_a_deferred(self) -> None:
        """With a plugin answering at once, PUBLISH (QoS 0/1/2, 3.1.1 and 5.0),
        SUBSCRIBE and a will create no Deferred and never pause reading."""
        rig = Rig(BASE, [("sync", LateAuthz())])
        made: list[Any] = []
        original = Deferred.__init__

        def counting(self: Any, *args: Any, **kw: Any) -> None:
            made.append(self)
            original(self, *args, **kw)

        clients = [rig.connected("c4"), rig.connected("c5", level=5)]
        self.patch(Deferred, "__init__", counting)
        for c in clients:
            c.send(Subscribe(1, [("t/#", SubOptions(2))]))
            for qos in (0, 1, 2):
                c.send(Publish("t/x", b"x", qos, packet_id=qos or None))
        self.assertEqual(made, [])
        without_will = rig.client()
        without_will.send(Connect("n", 4))
        baseline = len(made)  # auth_on_register's own (allow_anonymous: defer.succeed)
        with_will = rig.client()
        with_will.send(Connect("w", 4, will=Will("w", b"bye")))
        self.assertEqual(with_will.take(), connack(0))
        self.assertEqual(len(made), 2 * baseline)  # the will's check adds none
        self.assertEqual([c.transport.read_pauses for c in clients + [with_will]], [0, 0, 0])
