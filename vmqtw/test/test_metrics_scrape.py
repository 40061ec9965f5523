"""The counters completed at scrape time (``vmqtw.metrics``): ``mqtt_publish_sent``
derived from what ``Session.deliver`` did not count, ``bytes_sent`` summed
over the live connections and folded in when one closes.  The oracle is what
the clients actually received."""
from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import PUBLISH, Connect, Puback, Publish, Subscribe, SubOptions, Unsubscribe
from vmqtw.core.message import Message
from vmqtw.core.values import SessionKey
from vmqtw.metrics import BYTES_SENT, Metrics
from vmqtw.test.connection_harness import BASE, Client, Rig
from vmqtw.test.harness import Harness


class _Conn:
    """A connection as the metrics see it: it counts its own ``bytes_out``."""

    def __init__(self) -> None:
        self.bytes_out = 0


class LiveConnectionTests(SynchronousTestCase):

    def test_live_connections_summed_at_scrape(self) -> None:
        """bytes_sent is the counter slot plus what every live connection has
        counted itself so far."""
        m = Metrics()
        a, b = _Conn(), _Conn()
        m.connection_opened(a)
        m.connection_opened(b)
        m.inc("bytes_sent", 5)
        a.bytes_out, b.bytes_out = 10, 20
        self.assertEqual(m.value("bytes_sent"), 35)
        self.assertEqual(m.aggregated()["bytes_sent"], ("counter", 35))

    def test_close_between_scrapes_never_goes_backwards(self) -> None:
        """A connection closing between two scrapes moves its count into the
        slot: the value stays, and later traffic of the others adds to it."""
        m = Metrics()
        a, b = _Conn(), _Conn()
        m.connection_opened(a)
        m.connection_opened(b)
        a.bytes_out, b.bytes_out = 100, 7
        first = m.value("bytes_sent")
        m.connection_closed(a)
        self.assertEqual(m.value("bytes_sent"), first)
        m.connection_closed(a)  # reported twice: folded once
        self.assertEqual(m.value("bytes_sent"), first)
        b.bytes_out += 3
        self.assertEqual(m.value("bytes_sent"), first + 3)
        m.connection_closed(b)
        self.assertEqual(m.value("bytes_sent"), first + 3)
        self.assertEqual(m.values[BYTES_SENT], first + 3)
        self.assertEqual(m.connections, set())

    def test_reset_with_live_connections(self) -> None:
        """``reset()`` zeroes bytes_sent although live connections keep their
        own counts; what they send afterwards, and their close, count from zero."""
        m = Metrics()
        a = _Conn()
        m.connection_opened(a)
        a.bytes_out = 50
        m.reset()
        self.assertEqual(m.value("bytes_sent"), 0)
        a.bytes_out += 4
        self.assertEqual(m.value("bytes_sent"), 4)
        m.connection_closed(a)
        self.assertEqual(m.value("bytes_sent"), 4)

    def test_protocol_bytes_sent_are_the_bytes_written(self) -> None:
        """Through the real adapter, bytes_sent is exactly what the transports
        were given, before and after the connections close."""
        hn = Harness()
        m = hn.broker.metrics
        sub = hn.connected("sub")
        sub.subscribe(1, ("t", 0))
        pub = hn.connected("pub")
        pub.publish("t", b"payload")
        written = sum(len(c.transport.value()) for c in (sub, pub))
        self.assertGreater(written, 0)
        before = m.value("bytes_sent")
        self.assertGreaterEqual(before, written)
        sent_before_close = sum(len(c.transport.value()) for c in (sub, pub))
        sub.lose()
        pub.lose()
        self.assertEqual(m.value("bytes_sent"), before)
        self.assertEqual(sent_before_close, written)
        self.assertEqual(len(m.connections), 0)


def received(client: Client) -> int:
    """The PUBLISH packets ``client`` received since the last look."""
    return sum(1 for p in client.packets() if p.type == PUBLISH)


class PublishSentTests(SynchronousTestCase):
    """mqtt_publish_sent by version equals the PUBLISHes the clients received,
    whichever path wrote them."""

    def setUp(self) -> None:
        self.rig = Rig(BASE + "max_inflight_messages = 1\nretry_interval = 5\n")
        self.metrics = self.rig.broker.metrics
        self.got = {"4": 0, "5": 0}
        self.clients: list[tuple[str, Client]] = []

    def client(self, client_id: str, level: int, *filters: Any, **kw: Any) -> Client:
        c = self.rig.connected(client_id, level, **kw)
        if filters:
            c.send(Subscribe(1, list(filters)))
        self.clients.append(("5" if level == 5 else "4", c))
        return c

    def check(self) -> None:
        """Every client's PUBLISHes so far, against the counters."""
        for version, c in self.clients:
            self.got[version] += received(c)
        m = self.metrics
        self.assertEqual(m.value("mqtt_publish_sent", mqtt_version="4"), self.got["4"])
        self.assertEqual(m.value("mqtt_publish_sent", mqtt_version="5"), self.got["5"])
        self.assertEqual(m.aggregated()["queue_message_out"],
                         ("counter", self.got["4"] + self.got["5"]))

    def test_fan_out_by_version(self) -> None:
        """QoS 0 and 1 to 3.1, 3.1.1 and 5.0 subscribers, overlapping
        subscriptions, a shared group and a no local subscription."""
        self.client("v3", 3, ("t/#", SubOptions(1)))
        self.client("v4", 4, ("t/#", SubOptions(0)), ("t/+", SubOptions(1)))
        self.client("v5", 5, ("t/#", SubOptions(1)))
        self.client("s1", 4, ("$share/g/t/#", SubOptions(0)))
        self.client("s2", 5, ("$share/g/t/#", SubOptions(0)))
        pub = self.client("pub", 5, ("t/#", SubOptions(0, no_local=True)))
        self.check()
        pub.send(Publish("t/a", b"0", 0))
        pub.send(Publish("t/a", b"1", 1, packet_id=1))
        self.check()
        self.assertGreater(self.got["4"], 0)
        self.assertGreater(self.got["5"], 0)

    def test_single_match_and_no_local(self) -> None:
        """A topic with one matching subscription, and one whose only match is
        the publisher's own no local subscription (nothing sent)."""
        self.client("v4", 4, ("one", SubOptions(0)))
        pub = self.client("pub", 5, ("mine", SubOptions(0, no_local=True)))
        pub.send(Publish("one", b"x", 0), Publish("mine", b"x", 0))
        self.check()
        self.assertEqual(self.got, {"4": 1, "5": 0})

    def test_queued_drained_and_resent(self) -> None:
        """Over the inflight window messages wait in the queue and are sent
        as the ones before are acknowledged; a 3.x resend after retry_interval is a
        PUBLISH sent again."""
        sub = self.client("sub", 4, ("q", SubOptions(1)))
        sub5 = self.client("sub5", 5, ("q", SubOptions(1)))
        pub = self.client("pub", 4)
        pub.send(*(Publish("q", b"%d" % i, 1, packet_id=i) for i in (1, 2, 3)))
        self.check()
        self.assertEqual(self.got, {"4": 1, "5": 1})
        self.rig.clock.advance(6)  # the 3.x subscriber gets its PUBLISH again
        self.check()
        self.assertEqual(self.got["4"], 2)
        for pid in (1, 2):
            sub.send(Puback(pid))
            sub5.send(Puback(pid))
        self.check()
        self.assertEqual(self.got, {"4": 4, "5": 3})

    def test_offline_queue_and_qos0_drop(self) -> None:
        """Messages for an offline persistent session are sent when it comes
        back; QoS 0 ones for it are dropped, never counted as sent."""
        away = self.client("away", 4, ("o", SubOptions(1)), clean=False)
        self.check()
        away.lose()
        self.clients.clear()
        pub = self.client("pub", 5)
        pub.send(Publish("o", b"q1", 1, packet_id=1), Publish("o", b"q0", 0))
        self.check()
        self.assertEqual(self.got, {"4": 0, "5": 0})
        back = self.rig.client(4)
        back.send(Connect("away", 4, False, 0))
        self.clients.append(("4", back))
        self.check()
        self.assertEqual(self.got["4"], 1)

    def test_retained_on_subscribe(self) -> None:
        """Retained messages sent on SUBSCRIBE count as PUBLISH sent."""
        pub = self.client("pub", 4)
        pub.send(Publish("r/1", b"a", 0, retain=True), Publish("r/2", b"b", 1, retain=True,
                                                                packet_id=1))
        self.client("late4", 4, ("r/#", SubOptions(1)))
        self.client("late5", 5, ("r/#", SubOptions(0)))
        self.rig.broker.flush()
        self.check()
        self.assertEqual(self.got, {"4": 2, "5": 2})

    def test_direct_deliver_calls(self) -> None:
        """Code that hands a message to a session itself (not through
        Broker.publish, e.g. a session moved from another node) is counted too,
        whatever the outcome."""
        v4 = self.client("v4", 4)
        v5 = self.client("v5", 5)
        away = self.client("away", 4, clean=False)
        away.lose()
        self.clients.pop()
        message = Message("d", b"x", 1)
        for client in (v4, v5):
            client.session.deliver(message, 0, False)
            client.session.deliver(message, 1, False)
        self.rig.broker.sessions[SessionKey("", "away")].deliver(message, 1, False)
        self.rig.broker.flush()
        self.check()
        self.assertEqual(self.got, {"4": 2, "5": 2})

    def test_too_large_for_a_5_0_client(self) -> None:
        """A PUBLISH larger than a 5.0 client's maximum packet size is dropped,
        not counted as sent."""
        self.client("small", 5, ("big", SubOptions(0)), ("big", SubOptions(1)),
                    properties={"maximum_packet_size": 30})
        self.client("v4", 4, ("big", SubOptions(1)))
        pub = self.client("pub", 4)
        pub.send(Publish("big", b"x" * 100, 0), Publish("big", b"y" * 100, 1, packet_id=1))
        pub.send(Unsubscribe(2, ["nothing"]))
        self.check()
        self.assertEqual(self.got, {"4": 2, "5": 0})
