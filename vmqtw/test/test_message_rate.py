"""``max_message_rate``: VerneMQ's per-client limit of PUBLISHes per second (0 = off).

Over the limit VerneMQ throttles the client: it stops reading from its socket until
the rate is back under the limit; the client is neither refused nor disconnected.
Driven through a fake transport and a ``Clock``."""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import Pingreq, Publish, SubOptions, Subscribe
from vmqtw.connection.publish import message_rate_limit
from vmqtw.test.connection_harness import BASE, PINGRESP, Client, Rig, puback, publish, suback

RATE2 = BASE + "max_message_rate = 2\n"


def subscriber(rig: Rig) -> Client:
    s = rig.connected("sub")
    s.send(Subscribe(1, [("t/#", SubOptions(0))]))
    assert s.take() == suback(1, 0)
    return s


def pubs(*numbers: int) -> list[Publish]:
    return [Publish(f"t/{i}", b"%d" % i) for i in numbers]


def received(*numbers: int) -> bytes:
    return b"".join(publish(f"t/{i}", b"%d" % i) for i in numbers)


class MessageRateTests(SynchronousTestCase):

    def test_setting_is_read(self) -> None:
        """The limit comes from ``max_message_rate``; 0 (the default) means none."""
        self.assertEqual(message_rate_limit(Rig(RATE2).config), 2)
        self.assertEqual(message_rate_limit(Rig().config), 0)

    def test_over_the_rate_reading_pauses_until_the_second_ends(self) -> None:
        """With ``max_message_rate = 2`` five PUBLISHes read at once are routed two per
        second: the third pauses reading and waits (with everything after it) until
        the one-second window ends; then reading resumes and the next two go, and so
        on.  The client stays connected throughout."""
        rig = Rig(RATE2)
        s = subscriber(rig)
        p = rig.connected("pub")
        p.send(*pubs(1, 2, 3, 4, 5))
        self.assertEqual(s.take(), received(1, 2))
        self.assertFalse(p.transport.reading)
        rig.clock.advance(0.5)
        self.assertEqual(s.take(), b"")
        rig.clock.advance(0.5)
        self.assertEqual(s.take(), received(3, 4))
        self.assertFalse(p.transport.reading)
        rig.clock.advance(1.0)
        self.assertEqual(s.take(), received(5))
        self.assertTrue(p.transport.reading)
        self.assertFalse(p.closed)
        self.assertEqual(p.transport.read_pauses, 2)

    def test_held_packets_keep_their_order(self) -> None:
        """Packets read after a held PUBLISH wait behind it: a PINGREQ is answered
        and QoS 1 PUBLISHes acknowledged in the order the client sent them."""
        rig = Rig(RATE2)
        p = rig.connected("pub")
        p.send(Publish("a", b"1", 1, packet_id=1), Publish("a", b"2", 1, packet_id=2),
               Publish("a", b"3", 1, packet_id=3), Pingreq())
        self.assertEqual(p.take(), puback(1) + puback(2))
        p.send(Publish("a", b"4", 1, packet_id=4))  # read before the pause took effect
        self.assertEqual(p.take(), b"")
        rig.clock.advance(1.0)
        self.assertEqual(p.take(), puback(3) + PINGRESP + puback(4))

    def test_under_the_rate_nothing_pauses(self) -> None:
        """Two PUBLISHes per second with ``max_message_rate = 2`` never pause
        reading, second after second."""
        rig = Rig(RATE2)
        s = subscriber(rig)
        p = rig.connected("pub")
        for second in range(3):
            p.send(*pubs(2 * second, 2 * second + 1))
            self.assertEqual(s.take(), received(2 * second, 2 * second + 1))
            rig.clock.advance(1.0)
        self.assertEqual(p.transport.read_pauses, 0)

    def test_no_limit_by_default(self) -> None:
        """Without ``max_message_rate`` a burst of 200 PUBLISHes is routed at once."""
        rig = Rig()
        s = subscriber(rig)
        p = rig.connected("pub")
        p.send(*pubs(*range(200)))
        self.assertEqual(s.take(), received(*range(200)))
        self.assertEqual(p.transport.read_pauses, 0)

    def test_closing_while_throttled_cancels_the_timer(self) -> None:
        """A client that goes away while throttled leaves no timer behind and its
        held PUBLISHes are not routed."""
        rig = Rig(RATE2)
        s = subscriber(rig)
        p = rig.connected("pub")
        p.send(*pubs(1, 2, 3))
        self.assertEqual(s.take(), received(1, 2))
        p.lose()
        self.assertEqual(rig.clock.getDelayedCalls(), [])
        rig.clock.advance(2.0)
        self.assertEqual(s.take(), b"")

    def test_mqtt5_client_is_throttled_not_disconnected(self) -> None:
        """A 5.0 client over the rate is throttled like a 3.x one: no DISCONNECT 0x96,
        its QoS 1 PUBLISHes are acknowledged once reading resumes."""
        rig = Rig(RATE2)
        p = rig.connected("pub5", level=5)
        p.take()
        p.send(*(Publish("a", b"x", 1, packet_id=i) for i in (1, 2, 3)))
        first = p.packets()
        self.assertEqual([(x.type, x.packet_id) for x in first], [(4, 1), (4, 2)])
        self.assertFalse(p.closed)
        rig.clock.advance(1.0)
        self.assertEqual([(x.type, x.packet_id) for x in p.packets()], [(4, 3)])


class RegisterModifierTests(SynchronousTestCase):

    def test_auth_on_register_sets_the_rate(self) -> None:
        """auth_on_register's ``max_message_rate`` modifier (VerneMQ's) sets the client's
        limit, here where the configuration sets none."""
        from zope.interface import implementer

        from vmqtw.auth.api import IAuthOnRegister, ok

        @implementer(IAuthOnRegister)
        class Limit:
            def auth_on_register(self, request: object) -> object:
                return ok(max_message_rate=1)

        rig = Rig(BASE.replace("allow_anonymous = on", "allow_anonymous = off"),
                  [("limit", Limit())])
        s = subscriber_anonymous(rig)
        p = rig.connected("pub", username="u", password=b"p")
        p.send(*pubs(1, 2))
        self.assertEqual(s.take(), received(1))
        self.assertFalse(p.transport.reading)
        rig.clock.advance(1.0)
        self.assertEqual(s.take(), received(2))


def subscriber_anonymous(rig: Rig) -> Client:
    """A subscriber on ``t/#`` (registered through the same plugins)."""
    s = rig.connected("sub", username="u", password=b"p")
    s.send(Subscribe(1, [("t/#", SubOptions(0))]))
    assert s.take() == suback(1, 0)
    return s
