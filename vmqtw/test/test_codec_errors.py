"""Malformed input: each case asserts the exact CodecError subclass and that
``err.packets`` holds the packets decoded before the bad one in that feed."""
from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import (
    CodecError, Connect, Decoder, MalformedPacket, PacketTooLarge, Pingreq,
    ProtocolError, Publish, UnsupportedProtocolVersion, reasons,
)
from vmqtw.test.wire import CONNECTS, h
from vmqtw.test.wire import fixed as pkt
from vmqtw.test.wire import utf8 as s

M = MalformedPacket
P = ProtocolError
PINGREQ = h("c0 00")


def connect(level: int = 4, flags: int = 0x02, tail: bytes = s(b"abc"),
            name: bytes = b"MQTT", b0: int = 0x10) -> bytes:
    """A CONNECT with a given flags byte and everything after keepalive 60."""
    return pkt(b0, s(name) + bytes((level, flags)) + h("003c") + tail)


class BadInputCase(SynchronousTestCase):
    def feed_fails(self, decoder: Decoder, data: bytes, exc: type,
                   before: list[Any]) -> CodecError:
        try:
            got = decoder.feed(data)
        except CodecError as e:
            self.assertIs(type(e), exc, repr(e))
            self.assertEqual(e.packets, before)  # type: ignore[attr-defined]
            return e
        self.fail(f"no {exc.__name__}; decoded {got!r}")

    def fails(self, levels: tuple[int, ...], bad: bytes, exc: type,
              check_length: bool = True) -> None:
        """After a CONNECT at each level and a PINGREQ, ``bad`` raises ``exc``,
        whether fed whole or byte by byte, and after a caller-set level."""
        if check_length:
            rl, shift, i = 0, 0, 1
            while True:
                b = bad[i]
                rl |= (b & 0x7F) << shift
                i += 1
                if b < 128:
                    break
                shift += 7
            self.assertEqual(len(bad), i + rl, f"bad remaining length in {bad.hex()}")
        for level in levels:
            cdata, cpacket = CONNECTS[level]
            self.feed_fails(Decoder(), cdata + PINGREQ + bad, exc, [cpacket, Pingreq()])
            self.feed_fails(Decoder(protocol_level=level), PINGREQ + bad + PINGREQ, exc,
                            [Pingreq()])
            d = Decoder(protocol_level=level)
            try:
                for i in range(len(bad)):
                    self.assertEqual(d.feed(bad[i:i + 1]), [])
            except CodecError as e:
                self.assertIs(type(e), exc, repr(e))
                self.assertEqual(e.packets, [])  # type: ignore[attr-defined]
            else:
                self.fail(f"no {exc.__name__} when fed byte by byte")

    def connect_fails(self, bad: bytes, exc: type) -> CodecError:
        """``bad`` (a CONNECT) raises ``exc`` as a first packet and after a PINGREQ."""
        self.feed_fails(Decoder(protocol_level=4), PINGREQ + bad, exc, [Pingreq()])
        return self.feed_fails(Decoder(), bad, exc, [])


class FixedHeaderTests(BadInputCase):
    def test_packet_type_zero(self) -> None:
        """Packet type 0 is reserved: it raises MalformedPacket at every level, also as the
        very first packet of a connection."""
        self.fails((3, 4, 5), h("00 00"), M)
        self.feed_fails(Decoder(), h("00 00"), M, [])

    def test_non_publish_flags(self) -> None:
        """3.1.1 s2.2.2: reserved flags must be 0, or 0b0010 for PUBREL/(UN)SUBSCRIBE."""
        for b0 in (0x21, 0x28, 0x41, 0x48, 0x52, 0x60, 0x63, 0x7f, 0x80, 0x83, 0x92,
                   0xa0, 0xa3, 0xb2, 0xc1, 0xd8, 0xe2):
            self.fails((4, 5), pkt(b0, h("0001")), M)

    def test_auth_flags(self) -> None:
        """An MQTT 5.0 AUTH whose reserved fixed header flags are not 0 raises
        MalformedPacket."""
        self.fails((5,), h("f1 00"), M)

    def test_connect_flags(self) -> None:
        """A CONNECT whose reserved fixed header flags are not 0 raises MalformedPacket, as a
        first packet and later in a stream."""
        self.connect_fails(connect(b0=0x12), M)

    def test_remaining_length_over_four_bytes(self) -> None:
        """A remaining length that goes on to a fifth byte raises MalformedPacket (3.1.1
        s2.2.3: at most four bytes)."""
        self.fails((4, 5), h("30 ff ff ff ff 01"), M, check_length=False)

    def test_first_packet_not_connect(self) -> None:
        """A connection whose first packet is not a CONNECT (a PINGREQ, a PUBLISH, a CONNACK)
        raises ProtocolError with no packet decoded (3.1.1 s3.1)."""
        for data in (PINGREQ, h("30 03 0001") + b"t", h("20 02 00 00")):
            self.feed_fails(Decoder(), data + PINGREQ, P, [])

    def test_first_packet_not_connect_on_first_byte(self) -> None:
        """Detected from the first two bytes, without waiting for the body."""
        self.feed_fails(Decoder(), h("30 7f"), P, [])

    def test_second_connect(self) -> None:
        """A second CONNECT on the same connection raises ProtocolError (3.1.1 s3.1); the error
        carries the CONNECT and PINGREQ decoded before it."""
        cdata, cpacket = CONNECTS[4]
        self.feed_fails(Decoder(), cdata + PINGREQ + cdata, P, [cpacket, Pingreq()])

    def test_dead_after_error(self) -> None:
        """After a codec error the decoder refuses all further input, even a valid PINGREQ,
        with a CodecError carrying no packets."""
        d = Decoder(protocol_level=4)
        self.assertRaises(MalformedPacket, d.feed, h("00 00"))
        err = self.assertRaises(CodecError, d.feed, PINGREQ)
        self.assertEqual(err.packets, [])


class PacketTooLargeTests(BadInputCase):
    def test_header_alone(self) -> None:
        """The 5-byte fixed header of a 256 MB PUBLISH is enough to refuse it."""
        cdata, cpacket = CONNECTS[4]
        d = Decoder(max_packet_size=1 << 20)
        err = self.feed_fails(d, cdata + PINGREQ + h("30 ff ff ff 7f"), PacketTooLarge,
                              [cpacket, Pingreq()])
        self.assertEqual(err.reason_code, reasons.PACKET_TOO_LARGE)

    def test_header_byte_by_byte(self) -> None:
        """Fed one byte at a time, the decoder raises PacketTooLarge as soon as the remaining
        length bytes exceed max_packet_size, without waiting for the body."""
        d = Decoder(max_packet_size=1000, protocol_level=5)
        for b in h("30 80 80"):
            self.assertEqual(d.feed(bytes((b,))), [])
        self.feed_fails(d, h("01"), PacketTooLarge, [])

    def test_one_over(self) -> None:
        """A packet one byte larger than max_packet_size (fixed header included) raises
        PacketTooLarge, carrying the PINGREQ decoded before it."""
        pub = h("30 0a 0003") + b"a/b" + b"hello"  # 12 bytes
        self.feed_fails(Decoder(max_packet_size=11, protocol_level=4), PINGREQ + pub,
                        PacketTooLarge, [Pingreq()])

    def test_connect_too_large(self) -> None:
        """max_packet_size also applies to the first packet, the CONNECT."""
        self.feed_fails(Decoder(max_packet_size=10), CONNECTS[4][0], PacketTooLarge, [])

    def test_default_maximum_waits(self) -> None:
        """The largest legal packet is not refused by default: the decoder waits."""
        self.assertEqual(Decoder(protocol_level=4).feed(h("30 ff ff ff 7f")), [])


class ConnectTests(BadInputCase):
    def test_reserved_flag(self) -> None:
        """A CONNECT with the reserved bit 0 of its connect flags set raises MalformedPacket
        (3.1.1 s3.1.2.3)."""
        self.connect_fails(connect(flags=0x03), M)

    def test_will_qos_without_will_flag(self) -> None:
        """A CONNECT with a non-zero will QoS but no will flag raises MalformedPacket, at 3.1.1
        and 5.0 (3.1.1 s3.1.2.6)."""
        self.connect_fails(connect(flags=0x0a), M)
        self.connect_fails(connect(level=5, flags=0x12, tail=h("00") + s(b"abc")), M)

    def test_will_retain_without_will_flag(self) -> None:
        """A CONNECT with will retain set but no will flag raises MalformedPacket (3.1.1
        s3.1.2.7)."""
        self.connect_fails(connect(flags=0x22), M)

    def test_will_qos_3(self) -> None:
        """A CONNECT with will QoS 3 raises MalformedPacket."""
        self.connect_fails(connect(flags=0x1e, tail=s(b"abc") + s(b"w") + s(b"m")), M)

    def test_password_without_username_3x(self) -> None:
        """At MQTT 3.1.1 and 3.1 a password flag without the user name flag raises
        MalformedPacket (3.1.1 s3.1.2.9)."""
        self.connect_fails(connect(flags=0x42, tail=s(b"abc") + s(b"pw")), M)
        self.connect_fails(connect(level=3, name=b"MQIsdp", flags=0x42,
                                   tail=s(b"abc") + s(b"pw")), M)

    def test_password_without_username_5(self) -> None:
        """At MQTT 5.0 a password without a user name is allowed and decoded (5.0 s3.1.2.9)."""
        [c] = Decoder().feed(connect(level=5, flags=0x42, tail=h("00") + s(b"abc") + s(b"pw")))
        self.assertEqual(c, Connect("abc", 5, keepalive=60, password=b"pw"))

    def test_client_id_bad_utf8(self) -> None:
        """A client identifier that is not well-formed UTF-8 raises MalformedPacket."""
        self.connect_fails(connect(tail=s(b"\xc3\x28")), M)

    def test_client_id_nul(self) -> None:
        """A client identifier containing U+0000 raises MalformedPacket (3.1.1 s1.5.3)."""
        self.connect_fails(connect(tail=s(b"a\x00")), M)

    def test_username_bad_utf8(self) -> None:
        """A user name that is not well-formed UTF-8 raises MalformedPacket."""
        self.connect_fails(connect(flags=0x82, tail=s(b"abc") + s(b"\xff\xfe")), M)

    def test_username_nul(self) -> None:
        """A user name containing U+0000 raises MalformedPacket."""
        self.connect_fails(connect(flags=0x82, tail=s(b"abc") + s(b"\x00")), M)

    def test_will_topic_surrogate(self) -> None:
        """UTF-16 surrogates encoded in UTF-8 are invalid (5.0 s1.5.4)."""
        self.connect_fails(connect(flags=0x06, tail=s(b"abc") + s(b"\xed\xa0\x80") + s(b"")), M)

    def test_will_topic_nul(self) -> None:
        """A will topic containing U+0000 raises MalformedPacket."""
        self.connect_fails(connect(flags=0x06, tail=s(b"abc") + s(b"\x00") + s(b"")), M)

    def test_trailing_bytes(self) -> None:
        """Bytes left after the last field a CONNECT's flags announce raise MalformedPacket."""
        self.connect_fails(connect(tail=s(b"abc") + b"\x00"), M)

    def test_truncated(self) -> None:
        """A CONNECT whose body stops inside or right after the protocol name, or inside the
        flags, or is empty, raises MalformedPacket."""
        self.connect_fails(pkt(0x10, s(b"MQTT") + h("04 02")), M)
        self.connect_fails(pkt(0x10, s(b"MQTT")), M)
        self.connect_fails(pkt(0x10, h("0004") + b"MQ"), M)
        self.connect_fails(pkt(0x10, b""), M)

    def test_client_id_overrun(self) -> None:
        """A client identifier length longer than the bytes left in the packet raises
        MalformedPacket."""
        self.connect_fails(connect(tail=h("0009") + b"abc"), M)

    def test_missing_password(self) -> None:
        """A CONNECT whose flags announce a password that is not there raises
        MalformedPacket."""
        self.connect_fails(connect(flags=0xc2, tail=s(b"abc") + s(b"u")), M)

    def test_unsupported_versions(self) -> None:
        """A protocol name and level other than MQIsdp 3, MQTT 4, MQTT 5 and the bridge
        levels MQIsdp 131 and MQTT 132 (the bridge bit on 5 or with the wrong name, another
        name, an empty name) raises UnsupportedProtocolVersion carrying the level and reason
        code 0x84, so the broker can answer with the matching CONNACK."""
        for name, level in ((b"MQTT", 3), (b"MQIsdp", 4), (b"MQTT", 6), (b"MQIsdp", 5),
                            (b"MQTT", 0x85), (b"MQTT", 0x83), (b"MQIsdp", 0x84),
                            (b"HTTP", 4), (b"\xff\xfe", 4), (b"", 5)):
            err = self.connect_fails(connect(level=level, name=name),
                                     UnsupportedProtocolVersion)
            self.assertEqual(err.protocol_level, level)  # type: ignore[attr-defined]
            self.assertEqual(err.reason_code, reasons.UNSUPPORTED_PROTOCOL_VERSION)

    def test_5_property_not_allowed(self) -> None:
        """A 5.0 CONNECT carrying a property not allowed on CONNECT (topic alias) raises
        MalformedPacket (5.0 s2.2.2.2)."""
        self.connect_fails(connect(level=5, tail=h("03 23 0001") + s(b"abc")), M)

    def test_5_will_property_not_allowed(self) -> None:
        """A 5.0 will carrying a property not allowed in a will (session expiry interval)
        raises MalformedPacket (5.0 s2.2.2.2)."""
        self.connect_fails(connect(level=5, flags=0x06, tail=h("00") + s(b"abc")
                                   + h("05 11 00000001") + s(b"w") + s(b"m")), M)

    def test_5_duplicate_property(self) -> None:
        """A 5.0 CONNECT carrying session expiry interval twice raises ProtocolError (5.0
        s3.1.2.11.2)."""
        self.connect_fails(connect(level=5, tail=h("0a 11 00000001 11 00000002") + s(b"c")), P)

    def test_5_unknown_property(self) -> None:
        """A 5.0 property identifier that does not exist (0x04) raises MalformedPacket."""
        self.connect_fails(connect(level=5, tail=h("02 04 00") + s(b"c")), M)

    def test_5_zero_receive_maximum(self) -> None:
        """A 5.0 CONNECT with receive maximum 0 raises ProtocolError (5.0 s3.1.2.11.3)."""
        self.connect_fails(connect(level=5, tail=h("03 21 0000") + s(b"c")), P)

    def test_5_bad_request_problem_information(self) -> None:
        """A 5.0 CONNECT with request problem information other than 0 or 1 raises
        ProtocolError."""
        self.connect_fails(connect(level=5, tail=h("02 17 02") + s(b"c")), P)

    def test_5_property_length_overrun(self) -> None:
        """A 5.0 property length longer than the bytes left in the CONNECT raises
        MalformedPacket."""
        self.connect_fails(connect(level=5, tail=h("09 11 00000001")), M)

    def test_5_missing_property_length(self) -> None:
        """A 5.0 CONNECT that ends after the keep alive, without a property length, raises
        MalformedPacket."""
        self.connect_fails(connect(level=5, tail=b""), M)


class PublishTests(BadInputCase):
    def test_qos_3(self) -> None:
        """A PUBLISH with QoS 3 raises MalformedPacket at every level (3.1.1 s3.3.1.2)."""
        self.fails((3, 4, 5), h("36 06 0001 74 0001 00"), M)

    def test_qos0_dup(self) -> None:
        """A QoS 0 PUBLISH with the DUP flag set raises MalformedPacket at every level (3.1.1
        s3.3.1.1)."""
        self.fails((3, 4, 5), h("38 04 0001 74 00"), M)

    def test_topic_overrun(self) -> None:
        """A topic length longer than the bytes left in the PUBLISH raises MalformedPacket."""
        self.fails((4, 5), h("30 03 0005 74"), M)

    def test_truncated_topic_length(self) -> None:
        """A PUBLISH whose body holds only one byte of the topic length raises
        MalformedPacket."""
        self.fails((4, 5), h("30 01 00"), M)

    def test_missing_packet_id(self) -> None:
        """A QoS 1 PUBLISH that ends after its topic, without a packet identifier, raises
        MalformedPacket."""
        self.fails((4, 5), h("32 03 0001 74"), M)

    def test_packet_id_zero(self) -> None:
        """A QoS 1 or QoS 2 PUBLISH with packet identifier 0 raises MalformedPacket (3.1.1
        s2.3.1)."""
        self.fails((4, 5), h("32 06 0001 74 0000 00"), M)
        self.fails((4, 5), h("34 06 0001 74 0000 00"), M)

    def test_topic_bad_utf8(self) -> None:
        """A topic that is not well-formed UTF-8 (a bad continuation, an overlong encoding, an
        encoded surrogate, 0xFF, a stray continuation byte) raises MalformedPacket at every
        level."""
        for raw in (b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xff", b"a\x80"):
            self.fails((3, 4, 5), pkt(0x30, s(raw) + b"\x00"), M)

    def test_topic_nul(self) -> None:
        """A topic containing U+0000 raises MalformedPacket."""
        self.fails((4, 5), pkt(0x30, s(b"a\x00b") + b"\x00"), M)

    def test_empty_topic_decoded(self) -> None:
        """The broker, not the codec, rejects an empty 3.x topic."""
        self.assertEqual(Decoder(protocol_level=4).feed(h("30 02 0000")), [Publish("")])

    def test_5_missing_property_length(self) -> None:
        """A 5.0 PUBLISH that ends after its topic, without a property length, raises
        MalformedPacket."""
        self.fails((5,), h("30 03 0001 74"), M)

    def test_5_property_length_overrun(self) -> None:
        """A 5.0 PUBLISH property length longer than the bytes left raises MalformedPacket."""
        self.fails((5,), h("30 04 0001 74 05"), M)

    def test_5_property_varint_too_long(self) -> None:
        """A 5.0 property length encoded in more than four bytes raises MalformedPacket."""
        self.fails((5,), h("30 08 0001 74 ff ff ff ff 01"), M)

    def test_5_duplicate_property(self) -> None:
        """A 5.0 PUBLISH carrying message expiry interval twice raises ProtocolError."""
        self.fails((5,), h("30 0e 0001 74 0a 02 00000001 02 00000002"), P)

    def test_5_property_not_allowed(self) -> None:
        """A 5.0 PUBLISH carrying a property not allowed on PUBLISH (will delay interval,
        session expiry interval) raises MalformedPacket (5.0 s2.2.2.2)."""
        self.fails((5,), h("30 09 0001 74 05 18 00000001"), M)
        self.fails((5,), h("30 09 0001 74 05 11 00000001"), M)

    def test_5_unknown_property(self) -> None:
        """A 5.0 PUBLISH carrying an unknown property identifier (0x00, 0xFF) raises
        MalformedPacket."""
        self.fails((5,), h("30 06 0001 74 02 00 00"), M)
        self.fails((5,), h("30 06 0001 74 02 ff 00"), M)

    def test_5_property_bad_utf8(self) -> None:
        """A 5.0 string property (content type) that is not well-formed UTF-8 raises
        MalformedPacket."""
        self.fails((5,), h("30 09 0001 74 05 03 0002 c328"), M)

    def test_5_user_property_nul(self) -> None:
        """A 5.0 user property whose name contains U+0000 raises MalformedPacket."""
        self.fails((5,), h("30 0b 0001 74 07 26 0001 00 0001 61"), M)

    def test_5_truncated_property_value(self) -> None:
        """A 5.0 property value cut short by the property length (a four-byte integer with two
        bytes, binary data with its length only) raises MalformedPacket."""
        self.fails((5,), h("30 07 0001 74 03 02 0000"), M)
        self.fails((5,), h("30 07 0001 74 03 09 0005"), M)

    def test_5_zero_topic_alias(self) -> None:
        """A 5.0 PUBLISH with topic alias 0 raises ProtocolError (5.0 s3.3.2.3.4)."""
        self.fails((5,), h("30 07 0001 74 03 23 0000"), P)

    def test_5_zero_subscription_identifier(self) -> None:
        """A 5.0 PUBLISH with subscription identifier 0 raises ProtocolError (5.0
        s3.3.2.3.8)."""
        self.fails((5,), h("30 06 0001 74 02 0b 00"), P)

    def test_5_bad_payload_format_indicator(self) -> None:
        """A 5.0 PUBLISH with a payload format indicator other than 0 or 1 raises
        ProtocolError."""
        self.fails((5,), h("30 06 0001 74 02 01 02"), P)


class AckTests(BadInputCase):
    def test_packet_id_zero(self) -> None:
        """PUBACK, PUBREC, PUBREL and PUBCOMP with packet identifier 0 raise MalformedPacket at
        every level."""
        for b0 in (0x40, 0x50, 0x62, 0x70):
            self.fails((3, 4, 5), pkt(b0, h("0000")), M)

    def test_3x_length_not_2(self) -> None:
        """At MQTT 3.1 and 3.1.1, a PUBACK, PUBREC, PUBREL or PUBCOMP whose remaining length is
        not 2 raises MalformedPacket."""
        for b0 in (0x40, 0x50, 0x62, 0x70):
            self.fails((3, 4), pkt(b0, h("0001 00")), M)
            self.fails((4,), pkt(b0, h("0001 00 00")), M)

    def test_too_short(self) -> None:
        """A PUBACK, PUBREC, PUBREL or PUBCOMP with fewer than two bytes of packet identifier
        raises MalformedPacket at 3.1.1 and 5.0."""
        for b0 in (0x40, 0x50, 0x62, 0x70):
            self.fails((4, 5), pkt(b0, h("01")), M)
            self.fails((4, 5), pkt(b0, b""), M)

    def test_5_trailing_bytes(self) -> None:
        """A 5.0 PUBACK with bytes after its properties raises MalformedPacket."""
        self.fails((5,), h("40 05 0001 00 00 ff"), M)

    def test_5_property_not_allowed(self) -> None:
        """A 5.0 PUBACK carrying a property not allowed on it (topic alias) raises
        MalformedPacket (5.0 s2.2.2.2)."""
        self.fails((5,), h("40 07 0001 00 03 23 0001"), M)

    def test_5_duplicate_reason_string(self) -> None:
        """A 5.0 PUBREC carrying reason string twice raises ProtocolError."""
        self.fails((5,), h("50 0c 0001 80 08 1f 0001 61 1f 0001 62"), P)


class SubscribeTests(BadInputCase):
    def test_no_topics(self) -> None:
        """A SUBSCRIBE without any topic filter raises ProtocolError at every level (3.1.1
        s3.8.3)."""
        self.fails((3, 4), h("82 02 0001"), P)
        self.fails((5,), h("82 03 0001 00"), P)

    def test_packet_id_zero(self) -> None:
        """A SUBSCRIBE with packet identifier 0 raises MalformedPacket."""
        self.fails((4,), h("82 06 0000 0001 74 00"), M)
        self.fails((5,), h("82 07 0000 00 0001 74 00"), M)

    def test_missing_options(self) -> None:
        """A SUBSCRIBE filter without its requested QoS / options byte raises
        MalformedPacket."""
        self.fails((4,), h("82 05 0001 0001 74"), M)
        self.fails((5,), h("82 06 0001 00 0001 74"), M)

    def test_3x_reserved_bits(self) -> None:
        """At MQTT 3.1 and 3.1.1, a requested QoS byte with any of its upper six bits set
        raises MalformedPacket (3.1.1 s3.8.3.1)."""
        for o in (0x04, 0x08, 0x10, 0x80):
            self.fails((3, 4), h("82 06 0001 0001 74") + bytes((o,)), M)

    def test_qos_3(self) -> None:
        """A SUBSCRIBE requesting QoS 3 raises MalformedPacket at 3.1.1 and 5.0."""
        self.fails((4,), h("82 06 0001 0001 74 03"), M)
        self.fails((5,), h("82 07 0001 00 0001 74 03"), M)

    def test_5_reserved_bits(self) -> None:
        """A 5.0 subscription options byte with reserved bit 6 or 7 set raises
        MalformedPacket."""
        for o in (0x40, 0x80):
            self.fails((5,), h("82 07 0001 00 0001 74") + bytes((o,)), M)

    def test_5_retain_handling_3(self) -> None:
        """A 5.0 subscription with retain handling 3 raises MalformedPacket."""
        self.fails((5,), h("82 07 0001 00 0001 74 30"), M)

    def test_filter_bad_utf8(self) -> None:
        """A topic filter that is not well-formed UTF-8 raises MalformedPacket."""
        self.fails((4,), h("82 07 0001 0002 c328 00"), M)

    def test_filter_nul(self) -> None:
        """A topic filter containing U+0000 raises MalformedPacket."""
        self.fails((4,), h("82 06 0001 0001 00 00"), M)

    def test_filter_overrun(self) -> None:
        """A topic filter length longer than the bytes left in the SUBSCRIBE raises
        MalformedPacket."""
        self.fails((4,), h("82 06 0001 0009 74 00"), M)

    def test_5_two_subscription_identifiers(self) -> None:
        """A 5.0 SUBSCRIBE carrying two subscription identifiers raises ProtocolError."""
        self.fails((5,), h("82 0b 0001 04 0b01 0b02 0001 74 00"), P)

    def test_5_property_not_allowed(self) -> None:
        """A 5.0 SUBSCRIBE carrying a property not allowed on it (topic alias) raises
        MalformedPacket (5.0 s2.2.2.2)."""
        self.fails((5,), h("82 0a 0001 03 230001 0001 74 00"), M)


class UnsubscribeTests(BadInputCase):
    def test_no_topics(self) -> None:
        """An UNSUBSCRIBE without any topic filter raises ProtocolError at 3.1.1 and 5.0 (3.1.1
        s3.10.3)."""
        self.fails((4,), h("a2 02 0001"), P)
        self.fails((5,), h("a2 03 0001 00"), P)

    def test_packet_id_zero(self) -> None:
        """An UNSUBSCRIBE with packet identifier 0 raises MalformedPacket."""
        self.fails((4,), h("a2 05 0000 0001 74"), M)

    def test_filter_bad_utf8(self) -> None:
        """An UNSUBSCRIBE topic filter that is not well-formed UTF-8 raises MalformedPacket at
        3.1.1 and 5.0."""
        self.fails((4, 5), h("a2 05 0001 0001 ff"), M)

    def test_filter_nul(self) -> None:
        """An UNSUBSCRIBE topic filter containing U+0000 raises MalformedPacket."""
        self.fails((4,), h("a2 05 0001 0001 00"), M)

    def test_filter_overrun(self) -> None:
        """An UNSUBSCRIBE topic filter length longer than the bytes left raises
        MalformedPacket."""
        self.fails((4,), h("a2 05 0001 0002 74"), M)


class ServerPacketTests(BadInputCase):
    def test_connack_3x_length(self) -> None:
        """At MQTT 3.1 and 3.1.1 a CONNACK whose remaining length is not 2 raises
        MalformedPacket."""
        self.fails((3, 4), h("20 03 00 00 00"), M)
        self.fails((4,), h("20 01 00"), M)

    def test_connack_reserved_flags(self) -> None:
        """A CONNACK with any reserved bit of its acknowledge flags set raises MalformedPacket
        at 3.1.1 and 5.0."""
        self.fails((4,), h("20 02 02 00"), M)
        self.fails((5,), h("20 03 80 00 00"), M)

    def test_connack_5_missing_properties(self) -> None:
        """A 5.0 CONNACK without a property length raises MalformedPacket."""
        self.fails((5,), h("20 02 00 00"), M)

    def test_connack_5_trailing(self) -> None:
        """A 5.0 CONNACK with bytes after its properties raises MalformedPacket."""
        self.fails((5,), h("20 04 00 00 00 00"), M)

    def test_suback_packet_id_zero(self) -> None:
        """A SUBACK with packet identifier 0 raises MalformedPacket."""
        self.fails((4,), h("90 03 0000 00"), M)

    def test_unsuback_3x_length(self) -> None:
        """At MQTT 3.1 and 3.1.1 an UNSUBACK whose remaining length is not 2 raises
        MalformedPacket."""
        self.fails((3, 4), h("b0 03 0001 00"), M)

    def test_unsuback_packet_id_zero(self) -> None:
        """An UNSUBACK with packet identifier 0 raises MalformedPacket at 3.1.1 and 5.0."""
        self.fails((4,), h("b0 02 0000"), M)
        self.fails((5,), h("b0 04 0000 00 00"), M)


class EmptyPacketTests(BadInputCase):
    def test_pingreq_with_body(self) -> None:
        """A PINGREQ with a body raises MalformedPacket at every level."""
        self.fails((3, 4, 5), h("c0 01 00"), M)

    def test_pingresp_with_body(self) -> None:
        """A PINGRESP with a body raises MalformedPacket at every level."""
        self.fails((3, 4, 5), h("d0 01 00"), M)

    def test_disconnect_3x_with_body(self) -> None:
        """At MQTT 3.1 and 3.1.1 a DISCONNECT with a body raises MalformedPacket."""
        self.fails((3, 4), h("e0 01 00"), M)

    def test_disconnect_5_trailing(self) -> None:
        """A 5.0 DISCONNECT with bytes after its properties raises MalformedPacket."""
        self.fails((5,), h("e0 03 00 00 ff"), M)

    def test_disconnect_5_property_not_allowed(self) -> None:
        """A 5.0 DISCONNECT carrying a property not allowed on it (topic alias) raises
        MalformedPacket (5.0 s2.2.2.2)."""
        self.fails((5,), h("e0 05 00 03 230001"), M)

    def test_auth_3x(self) -> None:
        """Packet type 15 (AUTH) is reserved at MQTT 3.1 and 3.1.1 and raises
        MalformedPacket."""
        self.fails((3, 4), h("f0 00"), M)

    def test_auth_5_trailing(self) -> None:
        """A 5.0 AUTH with bytes after its properties raises MalformedPacket."""
        self.fails((5,), h("f0 03 18 00 00"), M)

    def test_auth_5_property_not_allowed(self) -> None:
        """A 5.0 AUTH carrying a property not allowed on it (session expiry interval) raises
        MalformedPacket (5.0 s2.2.2.2)."""
        self.fails((5,), h("f0 07 18 05 11 00000001"), M)
