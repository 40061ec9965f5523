"""PUBLISH, the QoS 1/2 flows and SUBSCRIBE of ``vmqtw.connection`` through a
fake transport: what is acknowledged, when, and through which write."""
from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from vmqtw.auth.api import NEXT, OK, IAuthOnPublish, IAuthOnSubscribe, error, ok
from vmqtw.codec import (
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    SubOptions,
    Subscribe,
    Unsubscribe,
)
from vmqtw.test.connection_harness import (
    BASE,
    Rig,
    puback,
    pubcomp,
    publish,
    pubrec,
    pubrel,
    suback,
)


class InboundQoSTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.rig = Rig()
        self.sub = self.rig.connected("sub")
        self.sub.send(Subscribe(1, [("t", SubOptions(0))]))
        self.sub.take()
        self.pub = self.rig.connected("pub")

    def test_qos0_routes_without_acknowledgement(self) -> None:
        """A QoS 0 PUBLISH reaches the subscriber; the publisher gets nothing."""
        self.pub.send(Publish("t", b"zero", 0))
        self.assertEqual(self.pub.take(), b"")
        self.assertEqual(self.sub.take(), publish("t", b"zero"))

    def test_qos1_puback_is_a_durable_write(self) -> None:
        """A QoS 1 PUBLISH is routed and acknowledged with PUBACK through
        ``write_durable`` (so it waits for the store where the store must)."""
        self.pub.send(Publish("t", b"one", 1, packet_id=7))
        self.assertEqual(self.pub.take(), puback(7))
        self.assertEqual(self.pub.transport.durable_writes, [puback(7)])
        self.assertEqual(self.sub.take(), publish("t", b"one"))

    def test_qos2_exactly_once(self) -> None:
        """QoS 2: PUBREC (durable), a resent PUBLISH is acknowledged again but
        not routed again, PUBREL gets PUBCOMP (durable) and frees the id."""
        pub = self.pub
        pub.send(Publish("t", b"two", 2, packet_id=9))
        self.assertEqual(pub.take(), pubrec(9))
        self.assertEqual(pub.session.incoming_qos2, {9})
        pub.send(Publish("t", b"two", 2, dup=True, packet_id=9))
        self.assertEqual(pub.take(), pubrec(9))
        self.assertEqual(self.sub.take(), publish("t", b"two"))
        pub.send(Pubrel(9))
        self.assertEqual(pub.take(), pubcomp(9))
        self.assertEqual(pub.session.incoming_qos2, set())
        self.assertEqual(pub.transport.durable_writes, [pubrec(9), pubcomp(9)])

    def test_pubrel_for_an_unknown_id(self) -> None:
        """A 3.1.1 PUBREL for an id never received is still completed."""
        self.pub.send(Pubrel(4))
        self.assertEqual(self.pub.take(), pubcomp(4))

    def test_invalid_topic_closes(self) -> None:
        """A PUBLISH to a topic with a wildcard closes the publisher only."""
        self.pub.send(Publish("a/+", b"x", 0))
        self.assertTrue(self.pub.closed)
        self.assertFalse(self.sub.closed)
        self.assertEqual(self.sub.take(), b"")


class OutboundQoSTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.rig = Rig()
        self.pub = self.rig.connected("pub")

    def subscriber(self, qos: int) -> Any:
        sub = self.rig.connected(f"sub{qos}")
        sub.send(Subscribe(1, [("t", SubOptions(qos))]))
        self.assertEqual(sub.take(), suback(1, qos))
        return sub

    def test_qos1_delivery(self) -> None:
        """A QoS 1 delivery stays inflight until the subscriber's PUBACK."""
        sub = self.subscriber(1)
        self.pub.send(Publish("t", b"m", 1, packet_id=1))
        self.assertEqual(sub.take(), publish("t", b"m", 1, pid=1))
        self.assertEqual(list(sub.session.inflight), [1])
        sub.send(Puback(1))
        self.assertEqual(sub.session.inflight, {})

    def test_qos2_delivery(self) -> None:
        """A QoS 2 delivery: PUBREC is answered with PUBREL (durable), PUBCOMP
        ends the flow."""
        sub = self.subscriber(2)
        self.pub.send(Publish("t", b"m", 2, packet_id=1))
        self.assertEqual(sub.take(), publish("t", b"m", 2, pid=1))
        sub.send(Pubrec(1))
        self.assertEqual(sub.take(), pubrel(1))
        self.assertIn(pubrel(1), sub.transport.durable_writes)
        sub.send(Pubcomp(1))
        self.assertEqual(sub.session.inflight, {})

    def test_paused_transport_queues(self) -> None:
        """While the transport's write buffer is full deliveries queue in the
        session; ``output_resumed`` sends them."""
        sub = self.subscriber(0)
        sub.transport.paused = True
        self.pub.send(Publish("t", b"a", 0), Publish("t", b"b", 0))
        self.assertEqual(sub.take(), b"")
        self.assertEqual(len(sub.session.queue), 2)
        sub.transport.paused = False
        sub.connection.output_resumed()
        self.assertEqual(sub.take(), publish("t", b"a") + publish("t", b"b"))

    def test_acknowledgement_before_connect(self) -> None:
        """A PUBACK before CONNECT is a protocol violation."""
        c = self.rig.client()
        c.send(Puback(1))
        self.assertTrue(c.closed)


@implementer(IAuthOnPublish, IAuthOnSubscribe)
class Guard:
    """Allows publish and subscribe under ``ok/``, rewrites ``old/`` to ``new/``."""

    def auth_on_publish(self, client: Any, topic: str, payload: bytes, qos: int,
                        retain: bool) -> Any:
        if topic.startswith("old/"):
            return ok(topic="new/" + topic[4:])
        return OK if topic.startswith("ok/") else error("not_allowed")

    def auth_on_subscribe(self, client: Any, topics: list[tuple[str, int]]) -> Any:
        if all(f.startswith(("ok/", "new/")) for f, _ in topics):
            return OK
        return NEXT


class AuthorizationTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.rig = Rig(BASE, [("guard", Guard())])

    def test_denied_subscribe(self) -> None:
        """A SUBSCRIBE the plugins refuse gets the 3.1.1 failure code 0x80."""
        c = self.rig.connected("c")
        c.send(Subscribe(1, [("secret", SubOptions(1))]))
        self.assertEqual(c.take(), suback(1, 0x80))
        self.assertEqual(c.session.subscriptions, {})

    def test_denied_publish_closes_311(self) -> None:
        """An unauthorized 3.1.1 PUBLISH closes the connection, routes nothing."""
        sub = self.rig.connected("s")
        sub.send(Subscribe(1, [("ok/#", SubOptions(0))]))
        sub.take()
        c = self.rig.connected("c")
        c.send(Publish("no", b"x", 1, packet_id=1))
        self.assertTrue(c.closed)
        self.assertEqual(c.take(), b"")

    def test_publish_modifier_rewrites_the_topic(self) -> None:
        """auth_on_publish's ok(topic=...) routes the message to the new topic."""
        sub = self.rig.connected("s")
        sub.send(Subscribe(1, [("new/#", SubOptions(0))]))
        sub.take()
        c = self.rig.connected("c")
        c.send(Publish("old/x", b"moved", 0))
        self.assertEqual(sub.take(), publish("new/x", b"moved"))

    def test_unsubscribe(self) -> None:
        """UNSUBSCRIBE removes the subscription and is acknowledged."""
        c = self.rig.connected("c")
        c.send(Subscribe(1, [("ok/a", SubOptions(0))]))
        c.take()
        c.send(Unsubscribe(2, ["ok/a"]))
        self.assertEqual(c.take(), b"\xb0\x02\x00\x02")
        self.assertEqual(c.session.subscriptions, {})
