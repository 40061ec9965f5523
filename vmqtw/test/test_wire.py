"""The hand-written byte builder of ``vmqtw.test.wire`` checked against the spec
tables and against our decoder: two independent readings of the specification
that must agree, so a slip in either shows up here rather than as a puzzling
failure elsewhere."""
from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import (
    Auth, Connack, Connect, Decoder, Disconnect, Puback, Pubcomp, Publish, Pubrec, Pubrel,
    SubOptions, Suback, Subscribe, Unsuback,
)
from vmqtw.test import wire


def decode(data: bytes, level: int) -> list[Any]:
    return Decoder(protocol_level=level).feed(data)


class PrimitiveTests(SynchronousTestCase):

    def test_varint_table(self) -> None:
        """varint gives the encodings of the 5.0 s1.5.5 table at each length boundary."""
        for n, data in ((0, "00"), (127, "7f"), (128, "8001"), (16383, "ff7f"),
                        (16384, "808001"), (2097151, "ffff7f"), (2097152, "80808001"),
                        (268435455, "ffffff7f")):
            self.assertEqual(wire.varint(n), wire.h(data), n)

    def test_utf8_counts_bytes(self) -> None:
        """utf8 prefixes the UTF-8 byte length, not the character count, and passes
        binary data through."""
        self.assertEqual(wire.utf8("\u00e9"), wire.h("0002 c3a9"))
        self.assertEqual(wire.utf8(b"\x00\xff"), wire.h("0002 00ff"))


class Mqtt311BuilderTests(SynchronousTestCase):

    def test_broker_packets_decode(self) -> None:
        """The 3.1.1 broker-side builders decode to the packets they stand for."""
        cases = [
            (wire.connack(5, True), Connack(5, True)),
            (wire.puback(1), Puback(1)),
            (wire.pubrec(0x1234), Pubrec(0x1234)),
            (wire.pubrel(7), Pubrel(7)),
            (wire.pubcomp(65535), Pubcomp(65535)),
            (wire.suback(3, 0, 1, 2, 0x80), Suback(3, [0, 1, 2, 0x80])),
            (wire.unsuback(9), Unsuback(9)),
            (wire.publish("a/b", b"x" * 200, qos=2, retain=True, dup=True, pid=4),
             Publish("a/b", b"x" * 200, 2, True, True, 4)),
            (wire.PINGRESP + wire.DISCONNECT, None),
        ]
        for data, packet in cases:
            got = decode(data, 4)
            if packet is None:
                self.assertEqual([p.__class__.__name__ for p in got], ["Pingresp", "Disconnect"])
            else:
                self.assertEqual(got, [packet], data.hex())

    def test_client_packets_decode(self) -> None:
        """connect_packet, publish_packet and subscribe_packet decode to the CONNECT,
        PUBLISH and SUBSCRIBE a raw client means to send, at every protocol level."""
        for level in (3, 4, 5):
            (connect,) = Decoder().feed(wire.connect_packet("c1", level, clean=False,
                                                            keepalive=30))
            self.assertEqual(connect, Connect("c1", level, False, 30,
                                              protocol_name="MQIsdp" if level == 3 else "MQTT"))
        self.assertEqual(decode(wire.publish_packet("t", b"p", qos=1, packet_id=5, retain=True),
                                4),
                         [Publish("t", b"p", 1, True, False, 5)])
        self.assertEqual(decode(wire.subscribe_packet("a/#", 2, 8), 4),
                         [Subscribe(8, [("a/#", SubOptions(2))])])

    def test_connect_packet_with_login_and_properties(self) -> None:
        """connect_packet sets the user name and password flags and fields, and a 5.0
        CONNECT carries the given properties."""
        (connect,) = Decoder().feed(wire.connect_packet("c", 4, username="u", password="pw"))
        self.assertEqual(connect, Connect("c", 4, True, 60, None, "u", b"pw"))
        (connect,) = Decoder().feed(wire.connect_packet(
            "c", 5, password=b"pw", properties=[wire.p_receive_max(7)]))
        self.assertEqual(connect, Connect("c", 5, True, 60, None, None, b"pw",
                                          {"receive_maximum": 7}))

    def test_parse_publish_reads_publish(self) -> None:
        """parse_publish reads back topic, payload, QoS, retain, DUP and packet id."""
        data = wire.publish("t/x", b"body", qos=1, retain=True, dup=True, pid=3)
        self.assertEqual(wire.parse_publish(data[0], data[2:]),
                         ("t/x", b"body", 1, True, True, 3))


class Mqtt5BuilderTests(SynchronousTestCase):

    def test_broker_packets_decode(self) -> None:
        """The 5.0 broker-side builders, properties included, decode to the packets they
        stand for."""
        cases = [
            (wire.connack_ok(True, wire.p_assigned_id("id")),
             Connack(0, True, {"assigned_client_identifier": "id", "receive_maximum": 65535,
                               "maximum_packet_size": wire.DEFAULT_MAX_PACKET,
                               "retain_available": 1, "wildcard_subscription_available": 1,
                               "subscription_identifier_available": 1,
                               "shared_subscription_available": 1})),
            (wire.publish5("t", b"x", wire.p_expiry(5), wire.p_user("k", "v"),
                           wire.p_sub_id(300), qos=1, pid=2),
             Publish("t", b"x", 1, False, False, 2,
                     {"message_expiry_interval": 5, "user_property": [("k", "v")],
                      "subscription_identifier": [300]})),
            (wire.puback5(1), Puback(1)),
            (wire.puback5(1, 0x10), Puback(1, 0x10)),
            (wire.pubrec5(2, 0x99, wire.p_reason("bad")),
             Pubrec(2, 0x99, {"reason_string": "bad"})),
            (wire.pubrel5(3, 0x92), Pubrel(3, 0x92)),
            (wire.pubcomp5(4), Pubcomp(4)),
            (wire.suback5(5, 0, 0x8F), Suback(5, [0, 0x8F])),
            (wire.unsuback5(6, 0x11), Unsuback(6, [0x11])),
            (wire.disconnect5(0x8E), Disconnect(0x8E)),
            (wire.auth5(0x18, wire.p_auth_method("M"), wire.p_auth_data(b"d")),
             Auth(0x18, {"authentication_method": "M", "authentication_data": b"d"})),
        ]
        for data, packet in cases:
            self.assertEqual(decode(data, 5), [packet], data.hex())

    def test_connect_vectors_are_consistent(self) -> None:
        """Each shared CONNECT vector decodes to the packet it is paired with."""
        for level, (data, packet) in wire.CONNECTS.items():
            self.assertEqual(Decoder().feed(data), [packet], level)
