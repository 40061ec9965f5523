"""MQTT 5.0 properties (spec section 2.2.2): the table, decoding and encoding.

Every property has an identifier, a snake_case name (``PROPERTY_NAMES``), a wire
type and the set of packets that may carry it.  The Will of a CONNECT has its own
property set; use the pseudo packet type ``WILL`` for it.

Decoded properties are a ``dict`` name -> value, in wire order, with two
exceptions: ``user_property`` is a ``list`` of ``(key, value)`` tuples in wire
order and ``subscription_identifier`` is a ``list`` of ints (several allowed in
PUBLISH only, at most one in SUBSCRIBE).
"""
from __future__ import annotations

import struct
from typing import Any

from vmqtw.codec import reasons
from vmqtw.codec.errors import MalformedPacket, ProtocolError
from vmqtw.codec.packets import (
    AUTH, CONNACK, CONNECT, DISCONNECT, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL,
    SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE,
)

#: Pseudo packet type for the Will properties of a CONNECT.
WILL = 16

# Wire types (spec 1.5).
BYTE = "byte"
TWO_BYTE_INT = "two_byte_int"
FOUR_BYTE_INT = "four_byte_int"
VARINT = "varint"
UTF8 = "utf8"
BINARY = "binary"
UTF8_PAIR = "utf8_pair"

_ACKS = (PUBACK, PUBREC, PUBREL, PUBCOMP)
_ALL = (CONNECT, CONNACK, PUBLISH, WILL, *_ACKS, SUBSCRIBE, SUBACK, UNSUBSCRIBE,
        UNSUBACK, DISCONNECT, AUTH)

# (identifier, name, wire type, packet types that may carry it) - spec table 2-4.
PROPERTIES: tuple[tuple[int, str, str, tuple[int, ...]], ...] = (
    (0x01, "payload_format_indicator", BYTE, (PUBLISH, WILL)),
    (0x02, "message_expiry_interval", FOUR_BYTE_INT, (PUBLISH, WILL)),
    (0x03, "content_type", UTF8, (PUBLISH, WILL)),
    (0x08, "response_topic", UTF8, (PUBLISH, WILL)),
    (0x09, "correlation_data", BINARY, (PUBLISH, WILL)),
    (0x0B, "subscription_identifier", VARINT, (PUBLISH, SUBSCRIBE)),
    (0x11, "session_expiry_interval", FOUR_BYTE_INT, (CONNECT, CONNACK, DISCONNECT)),
    (0x12, "assigned_client_identifier", UTF8, (CONNACK,)),
    (0x13, "server_keep_alive", TWO_BYTE_INT, (CONNACK,)),
    (0x15, "authentication_method", UTF8, (CONNECT, CONNACK, AUTH)),
    (0x16, "authentication_data", BINARY, (CONNECT, CONNACK, AUTH)),
    (0x17, "request_problem_information", BYTE, (CONNECT,)),
    (0x18, "will_delay_interval", FOUR_BYTE_INT, (WILL,)),
    (0x19, "request_response_information", BYTE, (CONNECT,)),
    (0x1A, "response_information", UTF8, (CONNACK,)),
    (0x1C, "server_reference", UTF8, (CONNACK, DISCONNECT)),
    (0x1F, "reason_string", UTF8,
     (CONNACK, *_ACKS, SUBACK, UNSUBACK, DISCONNECT, AUTH)),
    (0x21, "receive_maximum", TWO_BYTE_INT, (CONNECT, CONNACK)),
    (0x22, "topic_alias_maximum", TWO_BYTE_INT, (CONNECT, CONNACK)),
    (0x23, "topic_alias", TWO_BYTE_INT, (PUBLISH,)),
    (0x24, "maximum_qos", BYTE, (CONNACK,)),
    (0x25, "retain_available", BYTE, (CONNACK,)),
    (0x26, "user_property", UTF8_PAIR, _ALL),
    (0x27, "maximum_packet_size", FOUR_BYTE_INT, (CONNECT, CONNACK)),
    (0x28, "wildcard_subscription_available", BYTE, (CONNACK,)),
    (0x29, "subscription_identifier_available", BYTE, (CONNACK,)),
    (0x2A, "shared_subscription_available", BYTE, (CONNACK,)),
)

#: identifier -> name
PROPERTY_NAMES: dict[int, str] = {pid: name for pid, name, _, _ in PROPERTIES}
#: name -> identifier
PROPERTY_IDS: dict[str, int] = {name: pid for pid, name, _, _ in PROPERTIES}
#: name -> wire type
PROPERTY_TYPES: dict[str, str] = {name: kind for _, name, kind, _ in PROPERTIES}
#: packet type (or WILL) -> frozenset of allowed property names
ALLOWED: dict[int, frozenset[str]] = {
    ptype: frozenset(name for _, name, _, types in PROPERTIES if ptype in types)
    for ptype in _ALL
}

# Properties whose value must be 0 or 1, and those for which 0 is a Protocol Error.
_BOOLEAN = frozenset((
    "payload_format_indicator", "request_problem_information",
    "request_response_information", "maximum_qos", "retain_available",
    "wildcard_subscription_available", "subscription_identifier_available",
    "shared_subscription_available",
))
_NONZERO = frozenset(("receive_maximum", "maximum_packet_size",
                      "subscription_identifier", "topic_alias"))

# identifier -> (name, kind code, allowed packet types); kind codes are small ints
# so the decoder's dispatch is a couple of int comparisons.
_K_BYTE, _K_TWO, _K_FOUR, _K_VARINT, _K_UTF8, _K_BINARY, _K_PAIR = range(7)
_KIND_CODES = {BYTE: _K_BYTE, TWO_BYTE_INT: _K_TWO, FOUR_BYTE_INT: _K_FOUR,
               VARINT: _K_VARINT, UTF8: _K_UTF8, BINARY: _K_BINARY,
               UTF8_PAIR: _K_PAIR}
_BY_ID: list[tuple[str, int, frozenset[int]] | None] = [None] * 256
for _pid, _name, _kind, _types in PROPERTIES:
    _BY_ID[_pid] = (_name, _KIND_CODES[_kind], frozenset(_types))
del _pid, _name, _kind, _types

_unpack_H = struct.Struct(">H").unpack_from
_unpack_I = struct.Struct(">I").unpack_from


# ---------------------------------------------------------------------------
# Primitives shared with the encoder and decoder.

def encode_varint(value: int) -> bytes:
    """Encode a Variable Byte Integer (spec 1.5.5), 0 .. 268,435,455."""
    if value < 128:
        if value < 0:
            raise ValueError(f"varint out of range: {value}")
        return bytes((value,))
    if value > 268435455:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode a Variable Byte Integer at ``pos`` that must end by ``end``."""
    value = 0
    shift = 0
    for i in range(pos, min(pos + 4, end)):
        b = buf[i]
        value |= (b & 0x7F) << shift
        if b < 128:
            return value, i + 1
        shift += 7
    if end - pos >= 4:
        raise MalformedPacket("variable byte integer longer than 4 bytes")
    raise MalformedPacket("truncated variable byte integer")


def encode_string(s: str) -> bytes:
    """A UTF-8 Encoded String: two-byte length then the bytes (spec 1.5.4)."""
    b = s.encode("utf-8")
    n = len(b)
    if n > 65535:
        raise ValueError("string longer than 65535 bytes")
    return n.to_bytes(2, "big") + b


def encode_binary(b: bytes) -> bytes:
    """Binary Data: two-byte length then the bytes (spec 1.5.6)."""
    n = len(b)
    if n > 65535:
        raise ValueError("binary data longer than 65535 bytes")
    return n.to_bytes(2, "big") + bytes(b)


def decode_string(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    """Decode a UTF-8 Encoded String at ``pos``; MalformedPacket if invalid."""
    if pos + 2 > end:
        raise MalformedPacket("truncated string length")
    e = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if e > end:
        raise MalformedPacket("string overruns the packet")
    try:
        s = buf[pos + 2:e].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("invalid UTF-8 in string") from None
    if "\x00" in s:
        raise MalformedPacket("U+0000 in string")
    return s, e


def decode_binary(buf: bytes, pos: int, end: int) -> tuple[bytes, int]:
    """Decode Binary Data at ``pos``."""
    if pos + 2 > end:
        raise MalformedPacket("truncated binary length")
    e = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if e > end:
        raise MalformedPacket("binary data overruns the packet")
    return bytes(buf[pos + 2:e]), e


# ---------------------------------------------------------------------------
# Properties.

def decode_properties(buf: bytes, pos: int, packet_type: int,
                      end: int | None = None) -> tuple[dict[str, Any], int]:
    """Decode a property length and the properties at ``buf[pos:]``.

    ``end`` bounds the packet (defaults to ``len(buf)``).  Returns the dict and
    the position after the properties.
    """
    if end is None:
        end = len(buf)
    if pos >= end:
        raise MalformedPacket("missing property length")
    length = buf[pos]
    if length < 128:
        pos += 1
        if not length:
            return {}, pos
    else:
        length, pos = decode_varint(buf, pos, end)
    pend = pos + length
    if pend > end:
        raise MalformedPacket("properties overrun the packet")
    props: dict[str, Any] = {}
    by_id = _BY_ID
    value: Any  # str, int or bytes, by the property's kind
    while pos < pend:
        pid = buf[pos]
        pos += 1
        entry = by_id[pid]
        if entry is None:
            raise MalformedPacket(f"unknown property identifier 0x{pid:02x}")
        name, kind, types = entry
        if packet_type not in types:
            # 5.0 section 2.2.2.2: an identifier not valid for its packet type
            # makes a Malformed Packet (0x81), not a Protocol Error.
            raise MalformedPacket(f"property {name} not allowed in this packet")
        if kind == _K_UTF8:
            value, pos = decode_string(buf, pos, pend)
        elif kind == _K_BYTE:
            if pos >= pend:
                raise MalformedPacket(f"truncated property {name}")
            value = buf[pos]
            pos += 1
        elif kind == _K_FOUR:
            if pos + 4 > pend:
                raise MalformedPacket(f"truncated property {name}")
            value = _unpack_I(buf, pos)[0]
            pos += 4
        elif kind == _K_TWO:
            if pos + 2 > pend:
                raise MalformedPacket(f"truncated property {name}")
            value = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
        elif kind == _K_PAIR:
            k, pos = decode_string(buf, pos, pend)
            v, pos = decode_string(buf, pos, pend)
            up = props.get("user_property")
            if up is None:
                props["user_property"] = [(k, v)]
            else:
                up.append((k, v))
            continue
        elif kind == _K_BINARY:
            value, pos = decode_binary(buf, pos, pend)
        else:  # _K_VARINT: only subscription_identifier
            value, pos = decode_varint(buf, pos, pend)
            if value == 0:
                raise ProtocolError("subscription identifier 0")
            ids = props.get(name)
            if ids is None:
                props[name] = [value]
            elif packet_type == PUBLISH:
                ids.append(value)
            else:
                raise ProtocolError(f"duplicate property {name}")
            continue
        if name in props:
            raise ProtocolError(f"duplicate property {name}")
        if name in _BOOLEAN:
            if value > 1:
                raise ProtocolError(f"property {name} must be 0 or 1")
        elif name in _NONZERO and value == 0:
            if name == "topic_alias":  # MQTT 5.0 3.3.2.3.4: Topic Alias invalid
                raise ProtocolError("topic alias 0", reasons.TOPIC_ALIAS_INVALID)
            raise ProtocolError(f"property {name} must not be 0")
        props[name] = value
    return props, pend


def _encode_one(pid: int, kind: int, value: Any) -> bytes:
    if kind == _K_BYTE:
        return bytes((pid, value))
    if kind == _K_TWO:
        return struct.pack(">BH", pid, value)
    if kind == _K_FOUR:
        return struct.pack(">BI", pid, value)
    if kind == _K_UTF8:
        return bytes((pid,)) + encode_string(value)
    if kind == _K_BINARY:
        return bytes((pid,)) + encode_binary(value)
    if kind == _K_VARINT:
        return bytes((pid,)) + encode_varint(value)
    k, v = value
    return bytes((pid,)) + encode_string(k) + encode_string(v)


def encode_properties(props: dict[str, Any] | None, packet_type: int) -> bytes:
    """Encode ``props`` (property length included) for ``packet_type`` (or WILL).

    Raises ValueError for an unknown name or one not allowed on that packet.
    """
    if not props:
        return b"\x00"
    parts = []
    for name, value in props.items():
        pid = PROPERTY_IDS.get(name)
        if pid is None:
            raise ValueError(f"unknown property {name!r}")
        entry = _BY_ID[pid]
        assert entry is not None
        _, kind, types = entry
        if packet_type not in types:
            raise ValueError(f"property {name!r} not allowed on packet type {packet_type}")
        if kind == _K_PAIR:
            for pair in value:
                parts.append(_encode_one(pid, kind, pair))
        elif kind == _K_VARINT and not isinstance(value, int):
            for v in value:
                parts.append(_encode_one(pid, kind, v))
        else:
            parts.append(_encode_one(pid, kind, value))
    body = b"".join(parts)
    return encode_varint(len(body)) + body
