"""MQTT packets as bytes, written by hand from the specification.

This is the one byte builder shared by the unit tests (``vmqtw/test``) and the
integration tests (``tests/``).  It imports nothing from ``vmqtw.codec``'s
encoder on purpose: a test that builds the bytes it expects with the code
under test would check nothing.  Every builder follows the OASIS text
directly ("3.1.1 s3.3" is MQTT 3.1.1 section 3.3, "5.0 s2.2.2" is MQTT 5.0
section 2.2.2).

Broker -> client packets (``connack``, ``publish``, ``suback``... and their
5.0 forms ``connack5``, ``publish5``...) are what the tests expect to read;
client -> broker packets (``connect_packet``, ``publish_packet``,
``subscribe_packet``) are what raw clients send.  ``parse_publish`` reads a
PUBLISH back without the decoder.  ``CONNECTS`` holds hand-written CONNECT
vectors (MQTT 3.1, 3.1.1 and 5.0) with the packets they decode to.
``test_wire`` checks these builders against our decoder.
"""
from __future__ import annotations

import struct
from typing import Iterable

from vmqtw.codec import Connect, Will  # packet values only, never the encoder


# ---------------------------------------------------------------------------
# Primitives (3.1.1 s1.5, 5.0 s1.5)

def h(s: str) -> bytes:
    """Bytes from hex with optional spaces: ``h("10 0f 0004")``."""
    return bytes.fromhex(s)


def varint(n: int) -> bytes:
    """A Variable Byte Integer (3.1.1 s2.2.3 remaining length, 5.0 s1.5.5)."""
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


vbi = varint


def utf8(text: str | bytes) -> bytes:
    """A length-prefixed string or binary data (3.1.1 s1.5.3, 5.0 s1.5.4/1.5.6)."""
    b = text.encode() if isinstance(text, str) else text
    return len(b).to_bytes(2, "big") + b


_s = utf8


def packet_id_bytes(pid: int) -> bytes:
    """A two-byte packet identifier (3.1.1 s2.3.1)."""
    return bytes((pid >> 8, pid & 0xFF))


def fixed(b0: int, body: bytes) -> bytes:
    """A whole packet: first byte, remaining length, ``body``."""
    return bytes((b0,)) + varint(len(body)) + body


def _publish_b0(qos: int, retain: bool, dup: bool) -> int:
    return 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)


# ---------------------------------------------------------------------------
# MQTT 3.1 / 3.1.1: broker -> client (3.1.1 section 3)

def connack(rc: int, session_present: bool = False) -> bytes:
    """CONNACK (3.1.1 s3.2): session present flag and return code."""
    return bytes((0x20, 0x02, 1 if session_present else 0, rc))


def puback(pid: int) -> bytes:
    return b"\x40\x02" + packet_id_bytes(pid)


def pubrec(pid: int) -> bytes:
    return b"\x50\x02" + packet_id_bytes(pid)


def pubrel(pid: int) -> bytes:
    """PUBREL: fixed header flags 0b0010 (3.1.1 s3.6.1)."""
    return b"\x62\x02" + packet_id_bytes(pid)


def pubcomp(pid: int) -> bytes:
    return b"\x70\x02" + packet_id_bytes(pid)


def suback(pid: int, *codes: int) -> bytes:
    """SUBACK (3.1.1 s3.9) with one return code per filter."""
    return bytes((0x90, 2 + len(codes))) + packet_id_bytes(pid) + bytes(codes)


def unsuback(pid: int) -> bytes:
    return b"\xb0\x02" + packet_id_bytes(pid)


PINGRESP = b"\xd0\x00"
CONNACK_OK = b"\x20\x02\x00\x00"


def ack(kind: int, pid: int) -> bytes:
    """A two-byte-body acknowledgement whose first byte is ``kind``."""
    return bytes((kind, 2)) + packet_id_bytes(pid)


PUBACK, PUBREC, PUBREL, PUBCOMP = 0x40, 0x50, 0x62, 0x70


def publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False,
            dup: bool = False, pid: int | None = None) -> bytes:
    """PUBLISH (3.1.1 s3.3): the packet id is present only when ``qos`` > 0."""
    pid_field = packet_id_bytes(pid) if qos else b""  # type: ignore[arg-type]
    return fixed(_publish_b0(qos, retain, dup), utf8(topic) + pid_field + payload)


# ---------------------------------------------------------------------------
# MQTT 3.1 / 3.1.1 / 5.0: client -> broker

def connect_packet(client_id: str, level: int = 4, clean: bool = True,
                   keepalive: int = 60, *, username: str | None = None,
                   password: str | bytes | None = None,
                   properties: Iterable[bytes] = ()) -> bytes:
    """CONNECT for MQTT 3.1 (level 3), 3.1.1 (4) or 5.0 (5), without a will
    (3.1.1 s3.1): the user name and password flags follow the arguments, and a
    5.0 CONNECT carries the ``properties`` items (``p_*``), none by default."""
    name = b"MQIsdp" if level == 3 else b"MQTT"
    flags = ((0x02 if clean else 0x00) | (0x80 if username is not None else 0)
             | (0x40 if password is not None else 0))
    variable = utf8(name) + bytes((level, flags)) + keepalive.to_bytes(2, "big")
    if level == 5:
        variable += props(*properties)
    payload = utf8(client_id)
    if username is not None:
        payload += utf8(username)
    if password is not None:
        payload += utf8(password)
    return fixed(0x10, variable + payload)


def publish_packet(topic: str, payload: bytes, qos: int = 0, packet_id: int = 1,
                   retain: bool = False) -> bytes:
    """A 3.1.1 PUBLISH as a client sends it (packet id 1 unless told)."""
    return publish(topic, payload, qos, retain, pid=packet_id)


def subscribe_packet(topic_filter: str, qos: int = 0, packet_id: int = 1) -> bytes:
    """SUBSCRIBE (3.1.1 s3.8, flags 0b0010) with one filter."""
    body = packet_id.to_bytes(2, "big") + utf8(topic_filter) + bytes((qos,))
    return fixed(0x82, body)


DISCONNECT = b"\xe0\x00"


def parse_publish(first: int, body: bytes) -> tuple[str, bytes, int, bool, bool, int | None]:
    """(topic, payload, qos, retain, dup, packet id) of a 3.1.1 PUBLISH."""
    assert first >> 4 == 3, f"not a PUBLISH: {first:#x}"
    qos = (first >> 1) & 3
    n = int.from_bytes(body[:2], "big")
    topic = body[2:2 + n].decode()
    rest = body[2 + n:]
    pid = None
    if qos:
        pid, rest = int.from_bytes(rest[:2], "big"), rest[2:]
    return topic, rest, qos, bool(first & 1), bool(first & 8), pid


# ---------------------------------------------------------------------------
# MQTT 5.0 properties (5.0 s2.2.2): one property each, identifier + value

def props(*items: bytes) -> bytes:
    """A property block: its length as a Variable Byte Integer, then ``items``."""
    body = b"".join(items)
    return vbi(len(body)) + body


def p_format(v: int) -> bytes: return bytes((0x01, v))
def p_expiry(v: int) -> bytes: return b"\x02" + struct.pack(">I", v)
def p_content_type(s: str) -> bytes: return b"\x03" + _s(s)
def p_response_topic(s: str) -> bytes: return b"\x08" + _s(s)
def p_correlation(b: bytes) -> bytes: return b"\x09" + _s(b)
def p_sub_id(n: int) -> bytes: return b"\x0b" + vbi(n)
def p_assigned_id(s: str) -> bytes: return b"\x12" + _s(s)
def p_server_keep_alive(n: int) -> bytes: return b"\x13" + struct.pack(">H", n)
def p_auth_method(s: str) -> bytes: return b"\x15" + _s(s)
def p_auth_data(b: bytes) -> bytes: return b"\x16" + _s(b)
def p_reason(s: str) -> bytes: return b"\x1f" + _s(s)
def p_receive_max(n: int) -> bytes: return b"\x21" + struct.pack(">H", n)
def p_alias_max(n: int) -> bytes: return b"\x22" + struct.pack(">H", n)
def p_alias(n: int) -> bytes: return b"\x23" + struct.pack(">H", n)
def p_user(k: str, v: str) -> bytes: return b"\x26" + _s(k) + _s(v)
def p_max_packet(n: int) -> bytes: return b"\x27" + struct.pack(">I", n)


# Retain, wildcard, subscription identifier and shared subscription available.
AVAILABLE = (b"\x25\x01", b"\x28\x01", b"\x29\x01", b"\x2a\x01")


# ---------------------------------------------------------------------------
# MQTT 5.0: broker -> client (5.0 section 3)

def connack5(rc: int = 0, session_present: bool = False, *items: bytes) -> bytes:
    """CONNACK (5.0 s3.2): flags, reason code, properties ``items``."""
    return fixed(0x20, bytes((1 if session_present else 0, rc)) + props(*items))


#: The broker's default ``max_message_size``, announced as Maximum Packet Size.
DEFAULT_MAX_PACKET = 1048576


def connack_ok(session_present: bool = False, *before: bytes, receive_max: int = 65535,
               limits: Iterable[bytes] = (), after: Iterable[bytes] = ()) -> bytes:
    """The CONNACK of a successful 5.0 CONNECT: ``before`` (assigned client id,
    server keep alive), receive maximum, ``limits`` (topic alias maximum, maximum
    packet size: the default one unless given), the availability flags, ``after``
    (authentication)."""
    limits = list(limits)
    if not any(item[:1] == b"\x27" for item in limits):
        limits.append(p_max_packet(DEFAULT_MAX_PACKET))
    return connack5(0, session_present, *before, p_receive_max(receive_max), *limits,
                    *AVAILABLE, *after)


def publish5(topic: str, payload: bytes, *items: bytes, qos: int = 0, retain: bool = False,
             dup: bool = False, pid: int | None = None) -> bytes:
    """PUBLISH (5.0 s3.3) with properties ``items``."""
    pid_field = pid.to_bytes(2, "big") if qos else b""  # type: ignore[union-attr]
    return fixed(_publish_b0(qos, retain, dup), _s(topic) + pid_field + props(*items) + payload)


def _ack5(b0: int, pid: int, rc: int, items: tuple[bytes, ...]) -> bytes:
    # 5.0 s3.4.2.1: reason code 0 without properties may be left out.
    if rc == 0 and not items:
        return bytes((b0, 2)) + pid.to_bytes(2, "big")
    return fixed(b0, pid.to_bytes(2, "big") + bytes((rc,)) + props(*items))


def puback5(pid: int, rc: int = 0, *items: bytes) -> bytes:
    return _ack5(0x40, pid, rc, items)


def pubrec5(pid: int, rc: int = 0, *items: bytes) -> bytes:
    return _ack5(0x50, pid, rc, items)


def pubrel5(pid: int, rc: int = 0) -> bytes:
    return _ack5(0x62, pid, rc, ())


def pubcomp5(pid: int, rc: int = 0) -> bytes:
    return _ack5(0x70, pid, rc, ())


def suback5(pid: int, *codes: int) -> bytes:
    """SUBACK (5.0 s3.9) with empty properties and one reason code per filter."""
    return fixed(0x90, pid.to_bytes(2, "big") + b"\x00" + bytes(codes))


def unsuback5(pid: int, *codes: int) -> bytes:
    """UNSUBACK (5.0 s3.11) with empty properties and one reason code per filter."""
    return fixed(0xB0, pid.to_bytes(2, "big") + b"\x00" + bytes(codes))


def disconnect5(rc: int) -> bytes:
    """DISCONNECT (5.0 s3.14) with a reason code and empty properties."""
    return bytes((0xE0, 2, rc, 0))


def auth5(rc: int, *items: bytes) -> bytes:
    """AUTH (5.0 s3.15) with a reason code and properties ``items``."""
    return fixed(0xF0, bytes((rc,)) + props(*items))


# ---------------------------------------------------------------------------
# CONNECT vectors: (bytes, the packet they decode to), shared by the codec tests.
# Decoded by a Decoder with protocol_level None.

# 3.1.1 s3.1: minimal CONNECT, clean session, keepalive 60, client id "abc".
CONNECT_311 = (h("10 0f 0004") + b"MQTT" + h("04 02 003c 0003") + b"abc")
CONNECT_311_P = Connect("abc", 4, True, 60)

# MQTT 3.1 (MQIsdp): flags 0xee = username|password|will retain|will qos 1|will|clean.
CONNECT_31 = (h("10 20 0006") + b"MQIsdp" + h("03 ee 000a")
              + h("0002") + b"c1"          # client id
              + h("0003") + b"w/t"         # will topic
              + h("0002") + b"hi"          # will message
              + h("0001") + b"u"           # username
              + h("0002") + b"pw")         # password
CONNECT_31_P = Connect("c1", 3, True, 10, Will("w/t", b"hi", 1, True), "u", b"pw",
                       protocol_name="MQIsdp")

# 3.1.1: flags 0x94 = username|will qos 2|will, not clean, keepalive 0, empty id,
# empty will payload.
CONNECT_311_B = (h("10 17 0004") + b"MQTT" + h("04 94 0000")
                 + h("0000")                  # client id ""
                 + h("0001") + b"t"           # will topic
                 + h("0000")                  # will payload b""
                 + h("0004") + b"user")
CONNECT_311_B_P = Connect("", 4, False, 0, Will("t", b"", 2, False), "user", None)

# 5.0 s3.1: flags 0xc6 = username|password|will|clean start, keepalive 30.
CONNECT_5 = (h("10 7c 0004") + b"MQTT" + h("05 c6 001e")
             + h("33")                                   # property length 51
             + h("11 00000e10")                          # session expiry 3600
             + h("21 0014")                              # receive maximum 20
             + h("27 00010000")                          # maximum packet size 65536
             + h("22 000a")                              # topic alias maximum 10
             + h("17 00")                                # request problem info 0
             + h("26 0001") + b"k" + h("0001") + b"1"    # user property k=1
             + h("26 0001") + b"k" + h("0001") + b"2"    # user property k=2
             + h("26 0001") + b"a" + h("0000")           # user property a=""
             + h("15 0005") + b"SCRAM"                   # authentication method
             + h("16 0002 0102")                         # authentication data
             + h("0004") + b"cid5"                       # client id
             + h("27")                                   # will property length 39
             + h("18 00000005")                          # will delay interval 5
             + h("01 01")                                # payload format indicator
             + h("02 0000003c")                          # message expiry 60
             + h("03 0004") + b"text"                    # content type
             + h("08 0004") + b"resp"                    # response topic
             + h("09 0003 010203")                       # correlation data
             + h("26 0001") + b"w" + h("0001") + b"x"    # user property
             + h("0003") + b"w/5"                        # will topic
             + h("0003") + b"bye"                        # will payload
             + h("0002") + b"u5"                         # username
             + h("0000"))                                # password b""
CONNECT_5_P = Connect(
    "cid5", 5, True, 30,
    Will("w/5", b"bye", 0, False, {
        "will_delay_interval": 5, "payload_format_indicator": 1,
        "message_expiry_interval": 60, "content_type": "text",
        "response_topic": "resp", "correlation_data": b"\x01\x02\x03",
        "user_property": [("w", "x")]}),
    "u5", b"",
    {"session_expiry_interval": 3600, "receive_maximum": 20,
     "maximum_packet_size": 65536, "topic_alias_maximum": 10,
     "request_problem_information": 0,
     "user_property": [("k", "1"), ("k", "2"), ("a", "")],
     "authentication_method": "SCRAM", "authentication_data": b"\x01\x02"})

# 5.0 s3.1.2.9: a 5.0 client may send a password without a user name.
CONNECT_5_PW = (h("10 15 0004") + b"MQTT" + h("05 42 0000 00")
                + h("0003") + b"abc" + h("0003") + b"pwd")
CONNECT_5_PW_P = Connect("abc", 5, True, 0, None, None, b"pwd")

CONNECTS = {3: (CONNECT_31, CONNECT_31_P), 4: (CONNECT_311, CONNECT_311_P),
            5: (CONNECT_5, CONNECT_5_P)}
