"""Codec vectors: bytes written by hand (independently of our encoder) for every
packet type in MQTT 3.1, 3.1.1 and 5.0, decoded whole, byte by byte, in random
chunks and concatenated, and re-encoded where the vector is the canonical form.

Spec references: "3.1.1 s3.1" is OASIS MQTT 3.1.1 section 3.1, "5.0 s3.3" is
OASIS MQTT 5.0 section 3.3.  MQTT 3.1 is the IBM "MQIsdp" protocol (level 3).
"""
from __future__ import annotations

import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vmqtw import codec
from vmqtw.codec import (
    Auth, Connack, Decoder, Disconnect, Pingreq, Pingresp, Puback, Pubcomp, Publish,
    Pubrec, Pubrel, SubOptions, Suback, Subscribe, Unsuback, Unsubscribe, encode,
    encode_publish,
)
from vmqtw.codec.properties import (
    ALLOWED, PROPERTIES, PROPERTY_NAMES, WILL, decode_properties, encode_properties,
)
from vmqtw.test.wire import (
    CONNECT_5, CONNECT_5_P, CONNECT_5_PW, CONNECT_5_PW_P, CONNECT_31, CONNECT_31_P,
    CONNECT_311, CONNECT_311_B, CONNECT_311_B_P, CONNECT_311_P, CONNECTS, h,
)


# ---------------------------------------------------------------------------
# Vectors other than CONNECT (those live in wire.py): (name, protocol level, bytes,
# packet, canonical?) where canonical means encode(packet, level) must give exactly
# these bytes.

V: list[tuple[str, int, bytes, Any, bool]] = []


def vec(name: str, level: int, data: bytes, packet: Any, canonical: bool = True) -> None:
    V.append((name, level, data, packet, canonical))


# 3.1.1 s3.2: CONNACK, session present; 3.1 reserves that byte ("not used").
vec("connack-sp", 4, h("20 02 01 00"), Connack(0, True))
vec("connack-31", 3, h("20 02 00 00"), Connack(0, False))
for _lvl in (3, 4):
    # 3.1.1 s3.2: CONNACK refused 5.
    vec("connack-5", _lvl, h("20 02 00 05"), Connack(5, False))
    # 3.1.1 s3.3: PUBLISH QoS 0 "a/b" "hello".
    vec("publish-q0", _lvl, h("30 0a 0003") + b"a/b" + b"hello", Publish("a/b", b"hello"))
    # QoS 1 + dup + retain: 0x30|8|2|1.
    vec("publish-q1-dup-retain", _lvl, h("3b 06 0001") + b"t" + h("000a") + b"x",
        Publish("t", b"x", 1, True, True, 10))
    # QoS 2, packet id 65535, empty payload.
    vec("publish-q2", _lvl, h("34 05 0001") + b"t" + h("ffff"),
        Publish("t", b"", 2, False, False, 65535))
    # Remaining length 203 = 0xcb 0x01 (3.1.1 s2.2.3).
    vec("publish-varint", _lvl, h("30 cb01 0001") + b"t" + b"z" * 200,
        Publish("t", b"z" * 200))
    # UTF-8 topic "ä/€".
    vec("publish-utf8", _lvl, h("30 08 0006 c3a4 2f e282ac"), Publish("\u00e4/\u20ac"))
    # 3.1.1 s3.4-3.7: acknowledgements, PUBREL has flags 0b0010.
    vec("puback", _lvl, h("40 02 0001"), Puback(1))
    vec("pubrec", _lvl, h("50 02 1234"), Pubrec(0x1234))
    vec("pubrel", _lvl, h("62 02 0005"), Pubrel(5))
    vec("pubcomp", _lvl, h("70 02 fffe"), Pubcomp(0xFFFE))
    # 3.1.1 s3.8: SUBSCRIBE with three filters, requested QoS 1, 2, 0.
    vec("subscribe", _lvl,
        h("82 12 000a") + h("0003") + b"a/b" + h("01") + h("0001") + b"#" + h("02")
        + h("0003") + b"+/c" + h("00"),
        Subscribe(10, [("a/b", SubOptions(1)), ("#", SubOptions(2)), ("+/c", SubOptions(0))]))
    # 3.1.1 s3.9: SUBACK return codes 1, 2, 0x80.
    vec("suback", _lvl, h("90 05 000a 01 02 80"), Suback(10, [1, 2, 0x80]))
    # 3.1.1 s3.10 / s3.11.
    vec("unsubscribe", _lvl, h("a2 0a 000c 0003") + b"a/b" + h("0001") + b"#",
        Unsubscribe(12, ["a/b", "#"]))
    vec("unsuback", _lvl, h("b0 02 000c"), Unsuback(12))
    # 3.1.1 s3.12-3.14.
    vec("pingreq", _lvl, h("c0 00"), Pingreq())
    vec("pingresp", _lvl, h("d0 00"), Pingresp())
    vec("disconnect", _lvl, h("e0 00"), Disconnect())

# 5.0 s3.2: CONNACK with every CONNACK property.
vec("connack-props", 5,
    h("20 44 01 00 41")
    + h("11 00000078")                          # session expiry 120
    + h("12 0003") + b"gen"                     # assigned client identifier
    + h("13 003c")                              # server keep alive 60
    + h("21 000a")                              # receive maximum 10
    + h("22 0005")                              # topic alias maximum 5
    + h("24 01")                                # maximum qos 1
    + h("25 00")                                # retain available 0
    + h("27 00001000")                          # maximum packet size 4096
    + h("28 01")                                # wildcard subscription available
    + h("29 00")                                # subscription identifiers available
    + h("2a 01")                                # shared subscription available
    + h("1a 0002") + b"ri"                      # response information
    + h("1c 0002") + b"sr"                      # server reference
    + h("1f 0002") + b"ok"                      # reason string
    + h("15 0001") + b"m"                       # authentication method
    + h("16 0001 ff")                           # authentication data
    + h("26 0001") + b"a" + h("0001") + b"b",   # user property
    Connack(0, True, {
        "session_expiry_interval": 120, "assigned_client_identifier": "gen",
        "server_keep_alive": 60, "receive_maximum": 10, "topic_alias_maximum": 5,
        "maximum_qos": 1, "retain_available": 0, "maximum_packet_size": 4096,
        "wildcard_subscription_available": 1, "subscription_identifier_available": 0,
        "shared_subscription_available": 1, "response_information": "ri",
        "server_reference": "sr", "reason_string": "ok",
        "authentication_method": "m", "authentication_data": b"\xff",
        "user_property": [("a", "b")]}))
vec("connack-min", 5, h("20 03 00 00 00"), Connack(0))
vec("connack-refused", 5, h("20 03 00 87 00"), Connack(0x87))
# 5.0 s3.3: PUBLISH QoS 1 with properties, repeated user properties and three
# subscription identifiers (1, 128 = 80 01, 268435455 = ff ff ff 7f).
vec("publish-props", 5,
    h("32 3c 0003") + b"a/b" + h("0001")
    + h("30")                                   # property length 48
    + h("01 01")                                # payload format indicator 1
    + h("02 0000000a")                          # message expiry 10
    + h("23 0002")                              # topic alias 2
    + h("08 0001") + b"r"                       # response topic
    + h("09 0002 abcd")                         # correlation data
    + h("26 0001") + b"x" + h("0001") + b"y"    # user property x=y
    + h("26 0001") + b"x" + h("0001") + b"z"    # user property x=z
    + h("0b 01 0b 8001 0b ffffff7f")            # subscription identifiers
    + h("03 0002") + b"ct"                      # content type
    + b"data",
    Publish("a/b", b"data", 1, False, False, 1, {
        "payload_format_indicator": 1, "message_expiry_interval": 10,
        "topic_alias": 2, "response_topic": "r", "correlation_data": b"\xab\xcd",
        "user_property": [("x", "y"), ("x", "z")],
        "subscription_identifier": [1, 128, 268435455], "content_type": "ct"}))
vec("publish-q0", 5, h("30 07 0001") + b"t" + h("00") + b"abc", Publish("t", b"abc"))
# Empty topic with a topic alias (5.0 s3.3.2.3.4).
vec("publish-alias", 5, h("30 07 0000 03 230005") + b"p",
    Publish("", b"p", properties={"topic_alias": 5}))
vec("publish-q2-dup", 5, h("3c 06 0001") + b"t" + h("0007 00"),
    Publish("t", b"", 2, False, True, 7))
# 5.0 s3.4.2.1: remaining length 2 means reason 0 and no properties.
vec("puback", 5, h("40 02 0001"), Puback(1))
# Remaining length 3: reason code, no properties (not our canonical form).
vec("puback-short", 5, h("40 03 0001 10"), Puback(1, 0x10), False)
vec("puback-reason", 5, h("40 04 0001 10 00"), Puback(1, 0x10))
vec("pubrec-props", 5,
    h("50 12 0002 80 0e") + h("1f 0004") + b"fail" + h("26 0001") + b"a" + h("0001") + b"b",
    Pubrec(2, 0x80, {"reason_string": "fail", "user_property": [("a", "b")]}))
vec("pubrel", 5, h("62 04 0003 92 00"), Pubrel(3, 0x92))
vec("pubcomp", 5, h("70 02 0004"), Pubcomp(4))
# 5.0 s3.8: SUBSCRIBE with a subscription identifier and full options:
# 0x2d = retain handling 2 | retain as published | no local | QoS 1; 0x12 = rh 1, QoS 2.
vec("subscribe", 5,
    h("82 1f 000b 09 0b05") + h("26 0001") + b"k" + h("0001") + b"v"
    + h("0003") + b"a/b" + h("2d") + h("000a") + b"$share/g/t" + h("12"),
    Subscribe(11, [("a/b", SubOptions(1, True, True, 2)),
                   ("$share/g/t", SubOptions(2, False, False, 1))],
              {"subscription_identifier": [5], "user_property": [("k", "v")]}))
vec("suback", 5, h("90 0c 000b 05 1f0002") + b"no" + h("01 02 a2 87"),
    Suback(11, [1, 2, 0xA2, 0x87], {"reason_string": "no"}))
vec("unsubscribe", 5, h("a2 0d 000d 07 260001") + b"k" + h("0001") + b"v" + h("0001") + b"x",
    Unsubscribe(13, ["x"], {"user_property": [("k", "v")]}))
vec("unsuback", 5, h("b0 05 000d 00 00 11"), Unsuback(13, [0, 0x11]))
vec("unsuback-props", 5, h("b0 08 000e 04 1f0001") + b"r" + h("8f"),
    Unsuback(14, [0x8F], {"reason_string": "r"}))
vec("pingreq", 5, h("c0 00"), Pingreq())
vec("pingresp", 5, h("d0 00"), Pingresp())
# 5.0 s3.14.2.1: remaining length 0 means reason 0; 1 means no properties.
vec("disconnect", 5, h("e0 00"), Disconnect())
vec("disconnect-short", 5, h("e0 01 04"), Disconnect(4), False)
vec("disconnect-reason", 5, h("e0 02 04 00"), Disconnect(4))
vec("disconnect-props", 5,
    h("e0 14 8e 12 11 00000000 1f0003") + b"bye" + h("1c0004") + b"host",
    Disconnect(0x8E, {"session_expiry_interval": 0, "reason_string": "bye",
                      "server_reference": "host"}))
# 5.0 s3.15: AUTH.
vec("auth", 5, h("f0 00"), Auth())
vec("auth-short", 5, h("f0 01 19"), Auth(0x19), False)
vec("auth-props", 5,
    h("f0 15 18 13 150005") + b"SCRAM" + h("160003 010203 1f0002") + b"go",
    Auth(0x18, {"authentication_method": "SCRAM", "authentication_data": b"\x01\x02\x03",
                "reason_string": "go"}))
vec("auth-reason", 5, h("f0 02 19 00"), Auth(0x19))


def varint(n: int) -> int:
    """Count bytes of a hand-written remaining length (for the consistency check)."""
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def chunked(data: bytes, rng: random.Random, max_chunk: int = 7) -> list[bytes]:
    out = []
    i = 0
    while i < len(data):
        k = rng.randint(1, max_chunk)
        out.append(data[i:i + k])
        i += k
    return out


class VectorConsistencyTests(SynchronousTestCase):
    """The hand-written vectors are self-consistent, checked without the decoder."""

    def test_remaining_lengths(self) -> None:
        """In every hand-written vector, CONNECT included, the remaining length of the fixed
        header equals the number of bytes that follow it (checked without the decoder)."""
        for name, _, data, _, _ in V + [("connect", 0, c, None, True) for c in
                                        (CONNECT_31, CONNECT_311, CONNECT_311_B,
                                         CONNECT_5, CONNECT_5_PW)]:
            rl = 0
            shift = 0
            i = 1
            while True:
                b = data[i]
                rl |= (b & 0x7F) << shift
                i += 1
                if b < 128:
                    break
                shift += 7
            self.assertEqual(len(data), i + rl, name)


class DecodeVectorTests(SynchronousTestCase):
    """Every vector decodes to its packet however the bytes are cut."""

    def check(self, level: int | None, data: bytes, expected: list[Any]) -> None:
        # Whole.
        self.assertEqual(Decoder(protocol_level=level).feed(data), expected)
        # Byte by byte.
        d = Decoder(protocol_level=level)
        got: list[Any] = []
        for i in range(len(data)):
            got.extend(d.feed(data[i:i + 1]))
        self.assertEqual(got, expected)
        # Random chunks, several seeds and chunk sizes.
        for seed in range(5):
            rng = random.Random(seed)
            for max_chunk in (3, 17, 200):
                d = Decoder(protocol_level=level)
                got = []
                for c in chunked(data, rng, max_chunk):
                    got.extend(d.feed(c))
                self.assertEqual(got, expected)

    def test_connect_vectors(self) -> None:
        """Each CONNECT vector (MQTT 3.1, 3.1.1 and 5.0) decodes to its packet whole, byte by
        byte and in random chunks, and sets the decoder's protocol level to the level the
        CONNECT announces."""
        for data, packet in ((CONNECT_31, CONNECT_31_P), (CONNECT_311, CONNECT_311_P),
                             (CONNECT_311_B, CONNECT_311_B_P), (CONNECT_5, CONNECT_5_P),
                             (CONNECT_5_PW, CONNECT_5_PW_P)):
            self.check(None, data, [packet])
            d = Decoder()
            d.feed(data)
            self.assertEqual(d.protocol_level, packet.protocol_level)

    def test_vectors(self) -> None:
        """Every non-CONNECT vector decodes to its packet at its protocol level, whole, byte by
        byte and in random chunks."""
        for name, level, data, packet, _ in V:
            try:
                self.check(level, data, [packet])
            except Exception:
                self.fail(f"vector {name} level {level}")

    def test_concatenated(self) -> None:
        """A CONNECT then every other vector of that level, in one buffer."""
        for level, (cdata, cpacket) in CONNECTS.items():
            vs = [(d, p) for _, lvl, d, p, _ in V if lvl == level]
            stream = cdata + b"".join(d for d, _ in vs) * 3
            expected = [cpacket] + [p for _, p in vs] * 3
            self.check(None, stream, expected)

    def test_many_publishes_one_feed(self) -> None:
        """A thousand PUBLISH packets and the start of another in one feed give exactly the
        thousand complete packets; the partial one waits for more bytes."""
        pub = h("32 0a 0003") + b"a/b" + h("0001") + b"xyz"
        out = Decoder(protocol_level=4).feed(pub * 1000 + pub[:5])
        self.assertEqual(len(out), 1000)
        self.assertEqual(out[-1], Publish("a/b", b"xyz", 1, packet_id=1))

    def test_payload_is_bytes(self) -> None:
        """A PUBLISH fed as a bytearray or a memoryview has a payload of type bytes, not a view
        into the caller's buffer."""
        d = Decoder(protocol_level=4)
        [p] = d.feed(bytearray(h("30 0a 0003") + b"a/b" + b"hello"))
        self.assertIs(type(p.payload), bytes)
        [p] = d.feed(memoryview(h("30 0a 0003") + b"a/b" + b"hello"))
        self.assertIs(type(p.payload), bytes)

    def test_large_packet_in_pieces(self) -> None:
        """A 1 MB PUBLISH in 1 KiB pieces, then a PINGREQ."""
        payload = bytes(range(256)) * 4096
        data = h("30 83 80 40 0001") + b"t" + payload + h("c0 00")
        d = Decoder(protocol_level=4)
        got: list[Any] = []
        for i in range(0, len(data), 1024):
            got.extend(d.feed(data[i:i + 1024]))
        self.assertEqual(len(got), 2)
        self.assertTrue(got[0] == Publish("t", payload), "payload mismatch")
        self.assertEqual(got[1], Pingreq())

    def test_empty_feed(self) -> None:
        """Feeding no bytes yields nothing, and a two-byte PINGREQ split in two feeds is
        decoded once its second byte arrives."""
        d = Decoder(protocol_level=4)
        self.assertEqual(d.feed(b""), [])
        self.assertEqual(d.feed(b"\xc0"), [])
        self.assertEqual(d.feed(b""), [])
        self.assertEqual(d.feed(b"\x00"), [Pingreq()])

    def test_level_switches_mid_buffer(self) -> None:
        """Packets after the CONNECT in the same feed use the CONNECT's level."""
        stream = CONNECT_5 + h("40 03 0001 10") + h("30 07 0001") + b"t" + h("00") + b"abc"
        self.assertEqual(Decoder().feed(stream),
                         [CONNECT_5_P, Puback(1, 0x10), Publish("t", b"abc")])

    def test_max_packet_size_boundary(self) -> None:
        """A packet exactly as large as max_packet_size (fixed header included) is accepted."""
        pub = h("30 0a 0003") + b"a/b" + b"hello"  # 12 bytes in all
        self.assertEqual(len(Decoder(max_packet_size=12, protocol_level=4).feed(pub)), 1)

    def test_caller_changes_max_packet_size(self) -> None:
        """Lowering max_packet_size on a running decoder applies to the next packet: a fixed
        header announcing a larger packet raises PacketTooLarge."""
        d = Decoder(protocol_level=4)
        d.feed(h("c0 00"))
        d.max_packet_size = 11
        self.assertRaises(codec.PacketTooLarge, d.feed, h("30 0a"))


class EncodeVectorTests(SynchronousTestCase):
    def test_connect_vectors(self) -> None:
        """Encoding each CONNECT packet at its own protocol level gives exactly the
        hand-written vector bytes."""
        for data, packet in ((CONNECT_31, CONNECT_31_P), (CONNECT_311, CONNECT_311_P),
                             (CONNECT_311_B, CONNECT_311_B_P), (CONNECT_5, CONNECT_5_P),
                             (CONNECT_5_PW, CONNECT_5_PW_P)):
            self.assertEqual(encode(packet, packet.protocol_level).hex(), data.hex())

    def test_vectors(self) -> None:
        """Encoding each canonical vector's packet gives exactly its bytes; a non-canonical
        vector's packet encodes to bytes that decode back to the same packet."""
        for name, level, data, packet, canonical in V:
            if canonical:
                self.assertEqual(encode(packet, level).hex(), data.hex(), name)
            else:
                self.assertEqual(Decoder(protocol_level=level).feed(encode(packet, level)),
                                 [packet], name)

    def test_encode_publish(self) -> None:
        """The PUBLISH fast path encode_publish gives exactly the hand-written bytes of every
        PUBLISH vector at its level."""
        for name, level, data, packet, _ in V:
            if isinstance(packet, Publish):
                got = encode_publish(packet.topic, packet.payload, packet.qos, packet.retain,
                                     packet.dup, packet.packet_id, packet.properties, level)
                self.assertEqual(got.hex(), data.hex(), name)

    def test_encode_publish_large(self) -> None:
        """Remaining length 2,097,152 + 5 needs a four-byte varint."""
        payload = b"\x00" * 2097152
        got = encode_publish("t", payload, 0, False, False, None, None, 4)
        self.assertEqual(got[:8], h("30 83 80 80 01 0001") + b"t")
        self.assertEqual(len(got), 5 + 3 + len(payload))

    def test_3x_drops_5_only_fields(self) -> None:
        """3.x encodings ignore properties and 5.0-only reason codes."""
        props = {"reason_string": "x"}
        self.assertEqual(encode(Connack(5, False, props), 4), h("20 02 00 05"))
        self.assertEqual(encode(Puback(1, 0x10, props), 4), h("40 02 0001"))
        self.assertEqual(encode(Pubrel(1, 0x92), 3), h("62 02 0001"))
        self.assertEqual(encode(Unsuback(5, [0x11], props), 4), h("b0 02 0005"))
        self.assertEqual(encode(Disconnect(4, props), 4), h("e0 00"))
        self.assertEqual(encode(Suback(5, [0, 1, 2, 0x80], props), 4), h("90 06 0005 00010280"))
        self.assertEqual(
            encode(Publish("t", b"", 0, properties={"message_expiry_interval": 1}), 4),
            h("30 03 0001") + b"t")
        self.assertEqual(
            encode(Subscribe(1, [("t", SubOptions(1, True, True, 2))]), 4),
            h("82 06 0001 0001") + b"t" + h("01"))

    def test_5_short_forms(self) -> None:
        """A 5.0 PUBREC, DISCONNECT and AUTH with reason code 0 and no properties are encoded
        in their short form, without reason code or property length (5.0 s3.5.2.1,
        s3.14.2.1, s3.15.2.1)."""
        self.assertEqual(encode(Pubrec(9), 5), h("50 02 0009"))
        self.assertEqual(encode(Disconnect(), 5), h("e0 00"))
        self.assertEqual(encode(Auth(), 5), h("f0 00"))

    def test_encode_varint_and_string(self) -> None:
        """Variable byte integers are encoded as in the table of 5.0 s1.5.5 up to 268,435,455
        and refused beyond it or below 0; strings are UTF-8 with a two-byte length (a 4-byte
        character counts 4) and refused above 65,535 bytes."""
        # 5.0 s1.5.5 table 1-1.
        for n, data in ((0, "00"), (127, "7f"), (128, "8001"), (16383, "ff7f"),
                        (16384, "808001"), (2097151, "ffff7f"), (2097152, "80808001"),
                        (268435455, "ffffff7f")):
            self.assertEqual(codec.encode_varint(n), h(data))
        self.assertRaises(ValueError, codec.encode_varint, 268435456)
        self.assertRaises(ValueError, codec.encode_varint, -1)
        self.assertEqual(codec.encode_string("A\U0002a6d4"), h("0005 41 f0aa9b94"))
        self.assertRaises(ValueError, codec.encode_string, "x" * 65536)

    def test_unknown_or_misplaced_property_on_encode(self) -> None:
        """Encoding a 5.0 packet refuses (ValueError) a property name that does not exist and
        one that is not allowed on that packet type (will delay interval on PUBLISH)."""
        self.assertRaises(ValueError, encode, Publish("t", properties={"nope": 1}), 5)
        self.assertRaises(ValueError, encode,
                          Publish("t", properties={"will_delay_interval": 1}), 5)


class PropertyTableTests(SynchronousTestCase):
    def test_names(self) -> None:
        """The property table names all 27 MQTT 5.0 properties once each, by their identifier
        (0x26 user property, 0x0B subscription identifier)."""
        self.assertEqual(len(PROPERTY_NAMES), 27)
        self.assertEqual(PROPERTY_NAMES[0x26], "user_property")
        self.assertEqual(PROPERTY_NAMES[0x0B], "subscription_identifier")
        self.assertEqual(len({name for _, name, _, _ in PROPERTIES}), 27)

    def test_allowed(self) -> None:
        """The table of allowed properties follows 5.0 s2.2.2.2: will delay interval only in a
        will, topic alias on PUBLISH, user property on every packet type."""
        self.assertIn("will_delay_interval", ALLOWED[WILL])
        self.assertNotIn("will_delay_interval", ALLOWED[codec.PUBLISH])
        self.assertIn("topic_alias", ALLOWED[codec.PUBLISH])
        for ptype in ALLOWED:
            self.assertIn("user_property", ALLOWED[ptype])

    def test_direct_use(self) -> None:
        """encode_properties writes a length-prefixed property block (an empty one is a single
        zero byte, a subscription identifier a variable byte integer) and decode_properties
        reads one back from an offset, returning the properties and the offset after the
        block."""
        data = encode_properties({"user_property": [("a", "b")], "topic_alias": 3},
                                 codec.PUBLISH)
        self.assertEqual(data, h("0a 26 0001 61 0001 62 23 0003"))
        self.assertEqual(decode_properties(b"\xff" + data + b"\xee", 1, codec.PUBLISH),
                         ({"user_property": [("a", "b")], "topic_alias": 3}, 12))
        self.assertEqual(encode_properties({}, codec.PUBLISH), b"\x00")
        self.assertEqual(encode_properties({"subscription_identifier": 7}, codec.PUBLISH),
                         h("02 0b 07"))


class EncodeAckTests(SynchronousTestCase):

    def test_encode_ack_matches_the_packet_encoder(self) -> None:
        """``encode_ack`` (the hot path's acknowledgement without a packet object)
        gives the bytes ``encode`` gives for a PUBACK, PUBREC, PUBREL or PUBCOMP
        with reason code 0 and no properties, at MQTT 3.1, 3.1.1 and 5.0."""
        from vmqtw.codec.encoder import encode_ack
        from vmqtw.codec.packets import PUBACK, PUBCOMP, PUBREC, PUBREL
        kinds = ((PUBACK, codec.Puback), (PUBREC, codec.Pubrec), (PUBREL, codec.Pubrel),
                 (PUBCOMP, codec.Pubcomp))
        for level in (3, 4, 5):
            for ptype, cls in kinds:
                for pid in (1, 0x1234, 65535):
                    self.assertEqual(encode_ack(ptype, pid), codec.encode(cls(pid), level))
        self.assertEqual(encode_ack(PUBACK, 0x0102), b"\x40\x02\x01\x02")
        self.assertEqual(encode_ack(PUBREL, 0x0102), b"\x62\x02\x01\x02")
