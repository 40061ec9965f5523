"""Bridge clients: protocol levels 131/132 (3.1/3.1.1 with the bridge bit 0x80, sent by
a mosquitto bridge with ``try_private true``), as VerneMQ and mosquitto serve them:
accepted when the listener's ``allowed_protocol_versions`` lists them, spoken as
3.1/3.1.1, and the bridge's own subscriptions are no-local and retain-as-published so
that its messages never come back to it (no loops) and keep their retain flag."""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import Connect, Publish, SubOptions, Subscribe, encode
from vmqtw.codec.decoder import Decoder
from vmqtw.test.connection_harness import BASE, Rig, connack, publish, suback

BRIDGES = BASE.replace("3,4,5", "3,4,5,131,132")


def retained(topic: str, payload: bytes) -> bytes:
    """A 3.x QoS 0 PUBLISH with the retain flag."""
    data = publish(topic, payload)
    return bytes((data[0] | 0x01,)) + data[1:]


class BridgeDecodingTests(SynchronousTestCase):

    def test_bridge_levels_decode(self) -> None:
        """CONNECT at level 131 ("MQIsdp") and 132 ("MQTT") decodes with the level as
        sent; a level with the bridge bit but the wrong name does not."""
        for level, name in ((131, "MQIsdp"), (132, "MQTT")):
            (packet,) = Decoder().feed(encode(Connect("b", level), level))
            self.assertEqual((packet.protocol_level, packet.protocol_name), (level, name))
        from vmqtw.codec.errors import UnsupportedProtocolVersion
        bad = encode(Connect("b", 133, protocol_name="MQTT"), 133)
        self.assertRaises(UnsupportedProtocolVersion, Decoder().feed, bad)

    def test_bridge_subscriptions_are_no_local_and_retain_as_published(self) -> None:
        """After a bridge's CONNECT, its 3.x SUBSCRIBE options read as no-local and
        retain-as-published (a shared subscription stays plain: no-local is not
        allowed there); a plain 3.1.1 client's do not."""
        sub = Subscribe(1, [("a/#", SubOptions(1)), ("$share/g/b", SubOptions(0))])
        d = Decoder()
        _connect, packet = d.feed(encode(Connect("b", 132), 132) + encode(sub, 4))
        self.assertEqual([(o.qos, o.no_local, o.retain_as_published) for _t, o in packet.topics],
                         [(1, True, True), (0, False, False)])
        d = Decoder()
        _connect, packet = d.feed(encode(Connect("c", 4), 4) + encode(sub, 4))
        self.assertEqual([(o.no_local, o.retain_as_published) for _t, o in packet.topics],
                         [(False, False), (False, False)])


class BridgeConnectionTests(SynchronousTestCase):

    def test_accepted_when_allowed(self) -> None:
        """A level 132 CONNECT on a listener that allows 132 gets the 3.1.1 CONNACK 0
        and a session spoken as 3.1.1; 131 likewise as 3.1."""
        rig = Rig(BRIDGES)
        for level, base in ((132, 4), (131, 3)):
            c = rig.client(level=level)
            c.send(Connect(f"bridge{level}", level))
            self.assertEqual(c.take(), connack(0))
            self.assertFalse(c.closed)
            self.assertEqual(c.transport.protocol_level, base)
            self.assertEqual(c.connection.protocol_level, base)

    def test_refused_when_not_allowed(self) -> None:
        """Without 132 in ``allowed_protocol_versions`` a bridge gets CONNACK 0x01
        (mosquitto then retries without the bridge bit) and no session."""
        rig = Rig(BASE)
        c = rig.client(level=132)
        c.send(Connect("bridge", 132))
        self.assertEqual(c.take(), connack(1))
        self.assertTrue(c.closed)
        self.assertEqual(rig.broker.sessions, {})

    def test_no_loops_and_retain_as_published(self) -> None:
        """A bridge subscribed to ``#`` gets other clients' messages with their retain
        flag, but never the messages it published itself; a plain 3.1.1 client
        subscribed to ``#`` gets its own messages back, with the retain flag cleared."""
        rig = Rig(BRIDGES)
        bridge = rig.connected("bridge", level=132)
        bridge.send(Subscribe(1, [("#", SubOptions(0))]))
        self.assertEqual(bridge.take(), suback(1, 0))
        plain = rig.connected("plain")
        plain.send(Subscribe(1, [("#", SubOptions(0))]))
        self.assertEqual(plain.take(), suback(1, 0))

        bridge.send(Publish("from/bridge", b"1", retain=True))
        self.assertEqual(bridge.take(), b"")
        self.assertEqual(plain.take(), publish("from/bridge", b"1"))

        plain.send(Publish("from/plain", b"2", retain=True))
        self.assertEqual(bridge.take(), retained("from/plain", b"2"))
        self.assertEqual(plain.take(), publish("from/plain", b"2"))
