"""Malformed input: each case asserts the exact CodecError subclass and that
``err.packets`` holds the packets decoded before the bad one in that feed."""
from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import (
    CodecError, Connect, Decoder, MalformedPacket, PacketTooLarge, Pingreq,
    ProtocolError, Publish, UnsupportedProtocolVersion, reasons,
)
from vmqtw.test.test_codec import CONNECTS, h

M = MalformedPacket
P = ProtocolError
PINGREQ = h("c0 00")


def pkt(b0: int, body: bytes) -> bytes:
    """A fixed header (built here, not by our encoder) followed by ``body``."""
    n = len(body)
    rl = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        rl.append(b | 0x80 if n else b)
        if not n:
            break
    return bytes((b0,)) + bytes(rl) + body


def s(text: bytes) -> bytes:
    """A length-prefixed string from raw bytes."""
    return len(text).to_bytes(2, "big") + text


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
        self.fails((3, 4, 5), h("00 00"), M)
        self.feed_fails(Decoder(), h("00 00"), M, [])

    def test_non_publish_flags(self) -> None:
        """3.1.1 s2.2.2: reserved flags must be 0, or 0b0010 for PUBREL/(UN)SUBSCRIBE."""
        for b0 in (0x21, 0x28, 0x41, 0x48, 0x52, 0x60, 0x63, 0x7f, 0x80, 0x83, 0x92,
                   0xa0, 0xa3, 0xb2, 0xc1, 0xd8, 0xe2):
            self.fails((4, 5), pkt(b0, h("0001")), M)

    def test_auth_flags(self) -> None:
        self.fails((5,), h("f1 00"), M)

    def test_connect_flags(self) -> None:
        self.connect_fails(connect(b0=0x12), M)

    def test_remaining_length_over_four_bytes(self) -> None:
        self.fails((4, 5), h("30 ff ff ff ff 01"), M, check_length=False)

    def test_first_packet_not_connect(self) -> None:
        for data in (PINGREQ, h("30 03 0001") + b"t", h("20 02 00 00")):
            self.feed_fails(Decoder(), data + PINGREQ, P, [])

    def test_first_packet_not_connect_on_first_byte(self) -> None:
        """Detected from the first two bytes, without waiting for the body."""
        self.feed_fails(Decoder(), h("30 7f"), P, [])

    def test_second_connect(self) -> None:
        cdata, cpacket = CONNECTS[4]
        self.feed_fails(Decoder(), cdata + PINGREQ + cdata, P, [cpacket, Pingreq()])

    def test_dead_after_error(self) -> None:
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
        d = Decoder(max_packet_size=1000, protocol_level=5)
        for b in h("30 80 80"):
            self.assertEqual(d.feed(bytes((b,))), [])
        self.feed_fails(d, h("01"), PacketTooLarge, [])

    def test_one_over(self) -> None:
        pub = h("30 0a 0003") + b"a/b" + b"hello"  # 12 bytes
        self.feed_fails(Decoder(max_packet_size=11, protocol_level=4), PINGREQ + pub,
                        PacketTooLarge, [Pingreq()])

    def test_connect_too_large(self) -> None:
        self.feed_fails(Decoder(max_packet_size=10), CONNECTS[4][0], PacketTooLarge, [])

    def test_default_maximum_waits(self) -> None:
        """The largest legal packet is not refused by default: the decoder waits."""
        self.assertEqual(Decoder(protocol_level=4).feed(h("30 ff ff ff 7f")), [])


class ConnectTests(BadInputCase):
    def test_reserved_flag(self) -> None:
        self.connect_fails(connect(flags=0x03), M)

    def test_will_qos_without_will_flag(self) -> None:
        self.connect_fails(connect(flags=0x0a), M)
        self.connect_fails(connect(level=5, flags=0x12, tail=h("00") + s(b"abc")), M)

    def test_will_retain_without_will_flag(self) -> None:
        self.connect_fails(connect(flags=0x22), M)

    def test_will_qos_3(self) -> None:
        self.connect_fails(connect(flags=0x1e, tail=s(b"abc") + s(b"w") + s(b"m")), M)

    def test_password_without_username_3x(self) -> None:
        self.connect_fails(connect(flags=0x42, tail=s(b"abc") + s(b"pw")), M)
        self.connect_fails(connect(level=3, name=b"MQIsdp", flags=0x42,
                                   tail=s(b"abc") + s(b"pw")), M)

    def test_password_without_username_5(self) -> None:
        [c] = Decoder().feed(connect(level=5, flags=0x42, tail=h("00") + s(b"abc") + s(b"pw")))
        self.assertEqual(c, Connect("abc", 5, keepalive=60, password=b"pw"))

    def test_client_id_bad_utf8(self) -> None:
        self.connect_fails(connect(tail=s(b"\xc3\x28")), M)

    def test_client_id_nul(self) -> None:
        self.connect_fails(connect(tail=s(b"a\x00")), M)

    def test_username_bad_utf8(self) -> None:
        self.connect_fails(connect(flags=0x82, tail=s(b"abc") + s(b"\xff\xfe")), M)

    def test_username_nul(self) -> None:
        self.connect_fails(connect(flags=0x82, tail=s(b"abc") + s(b"\x00")), M)

    def test_will_topic_surrogate(self) -> None:
        """UTF-16 surrogates encoded in UTF-8 are invalid (5.0 s1.5.4)."""
        self.connect_fails(connect(flags=0x06, tail=s(b"abc") + s(b"\xed\xa0\x80") + s(b"")), M)

    def test_will_topic_nul(self) -> None:
        self.connect_fails(connect(flags=0x06, tail=s(b"abc") + s(b"\x00") + s(b"")), M)

    def test_trailing_bytes(self) -> None:
        self.connect_fails(connect(tail=s(b"abc") + b"\x00"), M)

    def test_truncated(self) -> None:
        self.connect_fails(pkt(0x10, s(b"MQTT") + h("04 02")), M)
        self.connect_fails(pkt(0x10, s(b"MQTT")), M)
        self.connect_fails(pkt(0x10, h("0004") + b"MQ"), M)
        self.connect_fails(pkt(0x10, b""), M)

    def test_client_id_overrun(self) -> None:
        self.connect_fails(connect(tail=h("0009") + b"abc"), M)

    def test_missing_password(self) -> None:
        self.connect_fails(connect(flags=0xc2, tail=s(b"abc") + s(b"u")), M)

    def test_unsupported_versions(self) -> None:
        for name, level in ((b"MQTT", 3), (b"MQIsdp", 4), (b"MQTT", 6), (b"MQIsdp", 5),
                            (b"MQTT", 0x84), (b"HTTP", 4), (b"\xff\xfe", 4), (b"", 5)):
            err = self.connect_fails(connect(level=level, name=name),
                                     UnsupportedProtocolVersion)
            self.assertEqual(err.protocol_level, level)  # type: ignore[attr-defined]
            self.assertEqual(err.reason_code, reasons.UNSUPPORTED_PROTOCOL_VERSION)

    def test_5_property_not_allowed(self) -> None:
        self.connect_fails(connect(level=5, tail=h("03 23 0001") + s(b"abc")), M)

    def test_5_will_property_not_allowed(self) -> None:
        self.connect_fails(connect(level=5, flags=0x06, tail=h("00") + s(b"abc")
                                   + h("05 11 00000001") + s(b"w") + s(b"m")), M)

    def test_5_duplicate_property(self) -> None:
        self.connect_fails(connect(level=5, tail=h("0a 11 00000001 11 00000002") + s(b"c")), P)

    def test_5_unknown_property(self) -> None:
        self.connect_fails(connect(level=5, tail=h("02 04 00") + s(b"c")), M)

    def test_5_zero_receive_maximum(self) -> None:
        self.connect_fails(connect(level=5, tail=h("03 21 0000") + s(b"c")), P)

    def test_5_bad_request_problem_information(self) -> None:
        self.connect_fails(connect(level=5, tail=h("02 17 02") + s(b"c")), P)

    def test_5_property_length_overrun(self) -> None:
        self.connect_fails(connect(level=5, tail=h("09 11 00000001")), M)

    def test_5_missing_property_length(self) -> None:
        self.connect_fails(connect(level=5, tail=b""), M)


class PublishTests(BadInputCase):
    def test_qos_3(self) -> None:
        self.fails((3, 4, 5), h("36 06 0001 74 0001 00"), M)

    def test_qos0_dup(self) -> None:
        self.fails((3, 4, 5), h("38 04 0001 74 00"), M)

    def test_topic_overrun(self) -> None:
        self.fails((4, 5), h("30 03 0005 74"), M)

    def test_truncated_topic_length(self) -> None:
        self.fails((4, 5), h("30 01 00"), M)

    def test_missing_packet_id(self) -> None:
        self.fails((4, 5), h("32 03 0001 74"), M)

    def test_packet_id_zero(self) -> None:
        self.fails((4, 5), h("32 06 0001 74 0000 00"), M)
        self.fails((4, 5), h("34 06 0001 74 0000 00"), M)

    def test_topic_bad_utf8(self) -> None:
        for raw in (b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xff", b"a\x80"):
            self.fails((3, 4, 5), pkt(0x30, s(raw) + b"\x00"), M)

    def test_topic_nul(self) -> None:
        self.fails((4, 5), pkt(0x30, s(b"a\x00b") + b"\x00"), M)

    def test_empty_topic_decoded(self) -> None:
        """The broker, not the codec, rejects an empty 3.x topic."""
        self.assertEqual(Decoder(protocol_level=4).feed(h("30 02 0000")), [Publish("")])

    def test_5_missing_property_length(self) -> None:
        self.fails((5,), h("30 03 0001 74"), M)

    def test_5_property_length_overrun(self) -> None:
        self.fails((5,), h("30 04 0001 74 05"), M)

    def test_5_property_varint_too_long(self) -> None:
        self.fails((5,), h("30 08 0001 74 ff ff ff ff 01"), M)

    def test_5_duplicate_property(self) -> None:
        self.fails((5,), h("30 0e 0001 74 0a 02 00000001 02 00000002"), P)

    def test_5_property_not_allowed(self) -> None:
        self.fails((5,), h("30 09 0001 74 05 18 00000001"), M)
        self.fails((5,), h("30 09 0001 74 05 11 00000001"), M)

    def test_5_unknown_property(self) -> None:
        self.fails((5,), h("30 06 0001 74 02 00 00"), M)
        self.fails((5,), h("30 06 0001 74 02 ff 00"), M)

    def test_5_property_bad_utf8(self) -> None:
        self.fails((5,), h("30 09 0001 74 05 03 0002 c328"), M)

    def test_5_user_property_nul(self) -> None:
        self.fails((5,), h("30 0b 0001 74 07 26 0001 00 0001 61"), M)

    def test_5_truncated_property_value(self) -> None:
        self.fails((5,), h("30 07 0001 74 03 02 0000"), M)
        self.fails((5,), h("30 07 0001 74 03 09 0005"), M)

    def test_5_zero_topic_alias(self) -> None:
        self.fails((5,), h("30 07 0001 74 03 23 0000"), P)

    def test_5_zero_subscription_identifier(self) -> None:
        self.fails((5,), h("30 06 0001 74 02 0b 00"), P)

    def test_5_bad_payload_format_indicator(self) -> None:
        self.fails((5,), h("30 06 0001 74 02 01 02"), P)


class AckTests(BadInputCase):
    def test_packet_id_zero(self) -> None:
        for b0 in (0x40, 0x50, 0x62, 0x70):
            self.fails((3, 4, 5), pkt(b0, h("0000")), M)

    def test_3x_length_not_2(self) -> None:
        for b0 in (0x40, 0x50, 0x62, 0x70):
            self.fails((3, 4), pkt(b0, h("0001 00")), M)
            self.fails((4,), pkt(b0, h("0001 00 00")), M)

    def test_too_short(self) -> None:
        for b0 in (0x40, 0x50, 0x62, 0x70):
            self.fails((4, 5), pkt(b0, h("01")), M)
            self.fails((4, 5), pkt(b0, b""), M)

    def test_5_trailing_bytes(self) -> None:
        self.fails((5,), h("40 05 0001 00 00 ff"), M)

    def test_5_property_not_allowed(self) -> None:
        self.fails((5,), h("40 07 0001 00 03 23 0001"), M)

    def test_5_duplicate_reason_string(self) -> None:
        self.fails((5,), h("50 0c 0001 80 08 1f 0001 61 1f 0001 62"), P)


class SubscribeTests(BadInputCase):
    def test_no_topics(self) -> None:
        self.fails((3, 4), h("82 02 0001"), P)
        self.fails((5,), h("82 03 0001 00"), P)

    def test_packet_id_zero(self) -> None:
        self.fails((4,), h("82 06 0000 0001 74 00"), M)
        self.fails((5,), h("82 07 0000 00 0001 74 00"), M)

    def test_missing_options(self) -> None:
        self.fails((4,), h("82 05 0001 0001 74"), M)
        self.fails((5,), h("82 06 0001 00 0001 74"), M)

    def test_3x_reserved_bits(self) -> None:
        for o in (0x04, 0x08, 0x10, 0x80):
            self.fails((3, 4), h("82 06 0001 0001 74") + bytes((o,)), M)

    def test_qos_3(self) -> None:
        self.fails((4,), h("82 06 0001 0001 74 03"), M)
        self.fails((5,), h("82 07 0001 00 0001 74 03"), M)

    def test_5_reserved_bits(self) -> None:
        for o in (0x40, 0x80):
            self.fails((5,), h("82 07 0001 00 0001 74") + bytes((o,)), M)

    def test_5_retain_handling_3(self) -> None:
        self.fails((5,), h("82 07 0001 00 0001 74 30"), M)

    def test_filter_bad_utf8(self) -> None:
        self.fails((4,), h("82 07 0001 0002 c328 00"), M)

    def test_filter_nul(self) -> None:
        self.fails((4,), h("82 06 0001 0001 00 00"), M)

    def test_filter_overrun(self) -> None:
        self.fails((4,), h("82 06 0001 0009 74 00"), M)

    def test_5_two_subscription_identifiers(self) -> None:
        self.fails((5,), h("82 0b 0001 04 0b01 0b02 0001 74 00"), P)

    def test_5_property_not_allowed(self) -> None:
        self.fails((5,), h("82 0a 0001 03 230001 0001 74 00"), M)


class UnsubscribeTests(BadInputCase):
    def test_no_topics(self) -> None:
        self.fails((4,), h("a2 02 0001"), P)
        self.fails((5,), h("a2 03 0001 00"), P)

    def test_packet_id_zero(self) -> None:
        self.fails((4,), h("a2 05 0000 0001 74"), M)

    def test_filter_bad_utf8(self) -> None:
        self.fails((4, 5), h("a2 05 0001 0001 ff"), M)

    def test_filter_nul(self) -> None:
        self.fails((4,), h("a2 05 0001 0001 00"), M)

    def test_filter_overrun(self) -> None:
        self.fails((4,), h("a2 05 0001 0002 74"), M)


class ServerPacketTests(BadInputCase):
    def test_connack_3x_length(self) -> None:
        self.fails((3, 4), h("20 03 00 00 00"), M)
        self.fails((4,), h("20 01 00"), M)

    def test_connack_reserved_flags(self) -> None:
        self.fails((4,), h("20 02 02 00"), M)
        self.fails((5,), h("20 03 80 00 00"), M)

    def test_connack_5_missing_properties(self) -> None:
        self.fails((5,), h("20 02 00 00"), M)

    def test_connack_5_trailing(self) -> None:
        self.fails((5,), h("20 04 00 00 00 00"), M)

    def test_suback_packet_id_zero(self) -> None:
        self.fails((4,), h("90 03 0000 00"), M)

    def test_unsuback_3x_length(self) -> None:
        self.fails((3, 4), h("b0 03 0001 00"), M)

    def test_unsuback_packet_id_zero(self) -> None:
        self.fails((4,), h("b0 02 0000"), M)
        self.fails((5,), h("b0 04 0000 00 00"), M)


class EmptyPacketTests(BadInputCase):
    def test_pingreq_with_body(self) -> None:
        self.fails((3, 4, 5), h("c0 01 00"), M)

    def test_pingresp_with_body(self) -> None:
        self.fails((3, 4, 5), h("d0 01 00"), M)

    def test_disconnect_3x_with_body(self) -> None:
        self.fails((3, 4), h("e0 01 00"), M)

    def test_disconnect_5_trailing(self) -> None:
        self.fails((5,), h("e0 03 00 00 ff"), M)

    def test_disconnect_5_property_not_allowed(self) -> None:
        self.fails((5,), h("e0 05 00 03 230001"), M)

    def test_auth_3x(self) -> None:
        self.fails((3, 4), h("f0 00"), M)

    def test_auth_5_trailing(self) -> None:
        self.fails((5,), h("f0 03 18 00 00"), M)

    def test_auth_5_property_not_allowed(self) -> None:
        self.fails((5,), h("f0 07 18 05 11 00000001"), M)
