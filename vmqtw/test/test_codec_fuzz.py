"""Hypothesis tests: arbitrary bytes give packets or a CodecError, never another
exception; every valid packet survives encode -> decode in 3.1, 3.1.1 and 5.0."""
from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import (
    AUTH, CONNACK, CONNECT, DISCONNECT, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL,
    SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE,
    Auth, CodecError, Connack, Connect, Decoder, Disconnect, Packet, Pingreq, Pingresp,
    Puback, Pubcomp, Publish, Pubrec, Pubrel, SubOptions, Suback, Subscribe, Unsuback,
    Unsubscribe, Will, encode, encode_publish,
)
from vmqtw.codec.properties import ALLOWED, WILL
from vmqtw.test.wire import CONNECTS, varint

SETTINGS = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
# Tests that build structured packets cost more per example.
STRUCTURED = settings(SETTINGS, max_examples=150)

LEVELS = st.sampled_from([3, 4, 5])

# ---------------------------------------------------------------------------
# Strategies for valid packets.

text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
binary = st.binary(max_size=24)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
flag = st.integers(0, 1)
packet_id = st.integers(1, 0xFFFF)
qos = st.integers(0, 2)
# A will topic is a topic name: non-empty, no wildcard (MQTT-4.7.3-1, 4.7.1-1).
topic_name = st.text(st.characters(codec="utf-8", exclude_characters="\x00+#"),
                     min_size=1, max_size=12)
# An UNSUBSCRIBE filter is a valid topic filter (MQTT-4.7.1-2/-3, 4.7.3-1).
topic_filter = topic_name | st.sampled_from(["#", "+", "a/+/b", "a/#", "+/+/#", "/+"])

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "payload_format_indicator": flag,
    "message_expiry_interval": u32,
    "content_type": text,
    "response_topic": text,
    "correlation_data": binary,
    "session_expiry_interval": u32,
    "assigned_client_identifier": text,
    "server_keep_alive": u16,
    "authentication_method": text,
    "authentication_data": binary,
    "request_problem_information": flag,
    "will_delay_interval": u32,
    "request_response_information": flag,
    "response_information": text,
    "server_reference": text,
    "reason_string": text,
    "receive_maximum": st.integers(1, 0xFFFF),
    "topic_alias_maximum": u16,
    "topic_alias": st.integers(1, 0xFFFF),
    "maximum_qos": flag,
    "retain_available": flag,
    "user_property": st.lists(st.tuples(text, text), min_size=1, max_size=3),
    "maximum_packet_size": st.integers(1, 0xFFFFFFFF),
    "wildcard_subscription_available": flag,
    "subscription_identifier_available": flag,
    "shared_subscription_available": flag,
}


def props(ptype: int, level: int) -> st.SearchStrategy[dict[str, Any]]:
    if level != 5:
        return st.just({})
    optional = {name: VALUES[name] for name in sorted(ALLOWED[ptype])
                if name != "subscription_identifier"}
    if ptype in (PUBLISH, SUBSCRIBE):
        optional["subscription_identifier"] = st.lists(
            st.integers(1, 268435455), min_size=1, max_size=3 if ptype == PUBLISH else 1)
    return st.fixed_dictionaries({}, optional=optional)  # type: ignore[arg-type]


def reason(level: int) -> st.SearchStrategy[int]:
    return u8 if level == 5 else st.just(0)


@st.composite
def connects(draw: Any, level: int) -> Connect:
    username = draw(st.none() | text)
    if level == 5 or username is not None:
        password = draw(st.none() | binary)
    else:
        password = None
    will = draw(st.none() | st.builds(Will, topic_name, binary, qos, st.booleans(),
                                      props(WILL, level)))
    return Connect(draw(text), level, draw(st.booleans()), draw(u16), will, username,
                   password, draw(props(CONNECT, level)))


@st.composite
def publishes(draw: Any, level: int) -> Publish:
    q = draw(qos)
    return Publish(draw(text), draw(binary), q, draw(st.booleans()),
                   draw(st.booleans()) if q else False,
                   draw(packet_id) if q else None, draw(props(PUBLISH, level)))


def sub_options(level: int) -> st.SearchStrategy[SubOptions]:
    if level == 5:
        return st.builds(SubOptions, qos, st.booleans(), st.booleans(), qos)
    return st.builds(SubOptions, qos)


def packets(level: int) -> st.SearchStrategy[Packet]:
    """Every packet type but CONNECT, valid at ``level``."""
    acks = [st.builds(cls, packet_id, reason(level), props(t, level))
            for cls, t in ((Puback, PUBACK), (Pubrec, PUBREC), (Pubrel, PUBREL),
                           (Pubcomp, PUBCOMP))]
    choices = [
        # 3.1 reserves the session-present byte: the encoder always sends 0.
        st.builds(Connack, u8, st.booleans() if level != 3 else st.just(False),
                  props(CONNACK, level)),
        publishes(level),
        *acks,
        st.builds(Subscribe, packet_id,
                  st.lists(st.tuples(text, sub_options(level)), min_size=1, max_size=4),
                  props(SUBSCRIBE, level)),
        st.builds(Suback, packet_id, st.lists(u8, max_size=4), props(SUBACK, level)),
        st.builds(Unsubscribe, packet_id, st.lists(topic_filter, min_size=1, max_size=4),
                  props(UNSUBSCRIBE, level)),
        st.builds(Unsuback, packet_id,
                  st.lists(u8, max_size=4) if level == 5 else st.just([]),
                  props(UNSUBACK, level)),
        st.builds(Pingreq),
        st.builds(Pingresp),
        st.builds(Disconnect, reason(level), props(DISCONNECT, level)),
    ]
    if level == 5:
        choices.append(st.builds(Auth, u8, props(AUTH, level)))
    return st.one_of(choices)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def header(b0: int, n: int) -> bytes:
    """A fixed header built by hand (not by the encoder under test)."""
    return bytes((b0,)) + varint(n)


def strip_header(data: bytes) -> bytes:
    i = 1
    while data[i] & 0x80:
        i += 1
    return data[i + 1:]


class RoundTripTests(SynchronousTestCase):
    def check_stream(self, level: int, connect: Connect, pkts: list[Packet],
                     cuts: list[int]) -> None:
        stream = encode(connect, level) + b"".join(encode(p, level) for p in pkts)
        d = Decoder()
        got: list[Packet] = []
        for chunk in split(stream, cuts):
            got.extend(d.feed(chunk))
        self.assertEqual(got, [connect] + pkts)
        self.assertEqual(d.protocol_level, level)

    @STRUCTURED
    @given(st.data())
    def test_stream_round_trip(self, data: Any) -> None:
        """CONNECT + packets, encoded, cut anywhere, decode to the same packets."""
        level = data.draw(LEVELS)
        self.check_stream(level, data.draw(connects(level)),
                          data.draw(st.lists(packets(level), max_size=6)),
                          data.draw(st.lists(st.integers(0, 10000), max_size=6)))

    @STRUCTURED
    @given(st.data())
    def test_single_round_trip(self, data: Any) -> None:
        """Any valid packet other than CONNECT, at MQTT 3.1, 3.1.1 or 5.0, decodes back to the
        same packet after encoding."""
        level = data.draw(LEVELS)
        p = data.draw(packets(level))
        self.assertEqual(Decoder(protocol_level=level).feed(encode(p, level)), [p])

    @STRUCTURED
    @given(st.data())
    def test_encode_publish_matches_encode(self, data: Any) -> None:
        """The PUBLISH fast path encode_publish gives exactly the bytes of encode() for any
        PUBLISH."""
        level = data.draw(LEVELS)
        p = data.draw(publishes(level))
        self.assertEqual(encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup,
                                        p.packet_id, p.properties, level),
                         encode(p, level))

    @SETTINGS
    @given(LEVELS, st.binary(min_size=100, max_size=40000), st.sampled_from([0, 1, 2]))
    def test_large_payloads(self, level: int, payload: bytes, q: int) -> None:
        """Multi-byte remaining lengths."""
        p = Publish("a/b", payload, q, packet_id=7 if q else None)
        self.assertEqual(Decoder(protocol_level=level).feed(encode(p, level)), [p])


class FuzzTests(SynchronousTestCase):
    def survive(self, decoder: Decoder, chunks: list[bytes]) -> None:
        try:
            for chunk in chunks:
                for p in decoder.feed(chunk):
                    self.assertIsInstance(p, Packet)
        except CodecError as e:
            self.assertIsInstance(e.packets, list)  # type: ignore[attr-defined]

    @SETTINGS
    @given(st.sampled_from([None, 3, 4, 5]), st.binary(max_size=400))
    def test_arbitrary_bytes(self, level: int | None, data: bytes) -> None:
        """Arbitrary bytes fed to a decoder, with or without a known protocol level, give
        packets or a CodecError carrying the packets decoded before it, never another
        exception."""
        self.survive(Decoder(protocol_level=level), [data])

    @SETTINGS
    @given(LEVELS, st.binary(max_size=400), st.lists(st.integers(0, 1000), max_size=5))
    def test_connect_then_garbage(self, level: int, garbage: bytes, cuts: list[int]) -> None:
        """A valid CONNECT followed by arbitrary bytes, cut into chunks anywhere, gives packets
        or a CodecError, never another exception."""
        self.survive(Decoder(), split(CONNECTS[level][0] + garbage, cuts))

    @SETTINGS
    @given(LEVELS, st.lists(st.tuples(st.integers(2, 15), st.binary(max_size=40)),
                            max_size=8))
    def test_plausible_headers(self, level: int, bodies: list[tuple[int, bytes]]) -> None:
        """Garbage bodies behind valid fixed headers of every type but CONNECT."""
        stream = b"".join(header((t << 4) | (2 if t in (6, 8, 10) else 0), len(b)) + b
                          for t, b in bodies)
        self.survive(Decoder(protocol_level=level), [stream])

    @STRUCTURED
    @given(st.data())
    def test_every_truncation(self, data: Any) -> None:
        """A valid packet with its body cut at every length (fixed header
        adjusted), alone or followed by a PINGREQ: packets or a CodecError."""
        level = data.draw(LEVELS)
        p = data.draw(connects(level) | packets(level))
        encoded = encode(p, level)
        body = strip_header(encoded)
        for k in range(len(body)):
            cut = header(encoded[0], k) + body[:k]
            for stream in (cut, cut + b"\xc0\x00"):
                self.survive(Decoder(protocol_level=None if p.type == CONNECT else level),
                             [stream])

    @STRUCTURED
    @given(st.data())
    def test_padded_body(self, data: Any) -> None:
        """Extra bytes inside a valid packet: packets or a CodecError."""
        level = data.draw(LEVELS)
        p = data.draw(connects(level) | packets(level))
        encoded = encode(p, level)
        body = strip_header(encoded) + data.draw(st.binary(min_size=1, max_size=4))
        self.survive(Decoder(protocol_level=None if p.type == CONNECT else level),
                     [header(encoded[0], len(body)) + body])

    @STRUCTURED
    @given(st.data())
    def test_mutated_valid_stream(self, data: Any) -> None:
        """A valid stream with a few bytes replaced or nudged: packets or a CodecError."""
        level = data.draw(LEVELS)
        connect = data.draw(connects(level))
        pkts = data.draw(st.lists(packets(level), min_size=1, max_size=4))
        stream = bytearray(encode(connect, level) + b"".join(encode(p, level) for p in pkts))
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(stream) - 1))
            if data.draw(st.booleans()):
                stream[i] = data.draw(u8)
            else:  # nudge a byte, e.g. make a length field slightly wrong
                stream[i] = (stream[i] + data.draw(st.sampled_from([-3, -2, -1, 1, 2, 3]))) & 0xFF
        cuts = data.draw(st.lists(st.integers(0, 10000), max_size=4))
        self.survive(Decoder(), split(bytes(stream), cuts))
