"""MQTT 3.1 / 3.1.1 / 5.0 packet encoder.

``encode(packet, protocol_level)`` handles every packet type in both directions;
``encode_publish(...)`` is the broker's hot path and builds a PUBLISH straight
from its fields.  A CONNECT is always encoded per its own ``protocol_level``.
"""
from __future__ import annotations

import struct
from typing import Any, Callable

from vmqtw.codec.packets import (
    AUTH, CONNACK, CONNECT, DISCONNECT, MQTT5, MQTT31, PINGREQ, PINGRESP, PUBACK, PUBCOMP,
    PUBLISH, PUBREC, PUBREL, SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE, Packet,
)
from vmqtw.codec.properties import (
    WILL, encode_binary, encode_properties, encode_string, encode_varint,
)

__all__ = ["encode", "encode_ack", "encode_publish", "encode_varint", "encode_string",
           "encode_binary"]

_pack_BBH = struct.Struct(">BBH").pack
_pack_H = struct.Struct(">H").pack
_NO_PROPS = b"\x00"


def _fixed(b0: int, body: bytes) -> bytes:
    n = len(body)
    if n < 128:
        return bytes((b0, n)) + body
    return bytes((b0,)) + encode_varint(n) + body


def encode_publish(topic: str, payload: bytes, qos: int, retain: bool, dup: bool,
                   packet_id: int | None, properties: dict[str, Any] | None,
                   protocol_level: int) -> bytes:
    """Encode a PUBLISH (spec 3.3) from its fields."""
    tb = topic.encode("utf-8")
    tl = len(tb)
    if tl > 65535:
        raise ValueError("topic longer than 65535 bytes")
    if qos:
        var = _pack_H(tl) + tb + _pack_H(packet_id)
    else:
        var = _pack_H(tl) + tb
    if protocol_level == MQTT5:
        var += encode_properties(properties, PUBLISH) if properties else _NO_PROPS
    rl = len(var) + len(payload)
    b0 = 0x30 | (qos << 1) | (8 if dup else 0) | (1 if retain else 0)
    if rl < 128:
        return b"".join((bytes((b0, rl)), var, payload))
    return b"".join((bytes((b0,)), encode_varint(rl), var, payload))


def _props(p: Any, ptype: int, level: int) -> bytes:
    return encode_properties(p.properties, ptype) if level == MQTT5 else b""


def _enc_connect(p: Any, level: int) -> bytes:
    level = p.protocol_level
    flags = 0x02 if p.clean_start else 0
    will = p.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if p.username is not None:
        flags |= 0x80
    if p.password is not None:
        flags |= 0x40
    parts = [encode_string(p.protocol_name), bytes((level, flags)), _pack_H(p.keepalive)]
    if level == MQTT5:
        parts.append(encode_properties(p.properties, CONNECT))
    parts.append(encode_string(p.client_id))
    if will is not None:
        if level == MQTT5:
            parts.append(encode_properties(will.properties, WILL))
        parts.append(encode_string(will.topic))
        parts.append(encode_binary(will.payload))
    if p.username is not None:
        parts.append(encode_string(p.username))
    if p.password is not None:
        parts.append(encode_binary(p.password))
    return _fixed(0x10, b"".join(parts))


def _enc_connack(p: Any, level: int) -> bytes:
    # MQTT 3.1 reserves the first byte ("not used"): Session Present is 3.1.1+.
    present = 1 if p.session_present and level != MQTT31 else 0
    body = bytes((present, p.reason_code))
    return _fixed(0x20, body + _props(p, CONNACK, level))


def _enc_publish(p: Any, level: int) -> bytes:
    return encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id,
                          p.properties, level)


def _enc_ack(p: Any, level: int) -> bytes:
    b0 = (p.type << 4) | (2 if p.type == PUBREL else 0)
    if level != MQTT5 or (not p.reason_code and not p.properties):
        return _pack_BBH(b0, 2, p.packet_id)
    return _fixed(b0, _pack_H(p.packet_id) + bytes((p.reason_code,))
                  + encode_properties(p.properties, p.type))


def encode_ack(ptype: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP with reason code 0 and no properties:
    the same four bytes at every protocol level (a 5.0 peer reads the omitted
    reason code as 0, spec 3.4.2.1).  The QoS 1 hot path's acknowledgement,
    without a packet object."""
    return _pack_BBH((ptype << 4) | (2 if ptype == PUBREL else 0), 2, packet_id)


def _enc_subscribe(p: Any, level: int) -> bytes:
    parts = [_pack_H(p.packet_id), _props(p, SUBSCRIBE, level)]
    for topic, o in p.topics:
        parts.append(encode_string(topic))
        if level == MQTT5:
            parts.append(bytes((o.qos | (4 if o.no_local else 0)
                                | (8 if o.retain_as_published else 0)
                                | (o.retain_handling << 4),)))
        else:
            parts.append(bytes((o.qos,)))
    return _fixed(0x82, b"".join(parts))


def _enc_suback(p: Any, level: int) -> bytes:
    return _fixed(0x90, _pack_H(p.packet_id) + _props(p, SUBACK, level)
                  + bytes(p.reason_codes))


def _enc_unsubscribe(p: Any, level: int) -> bytes:
    parts = [_pack_H(p.packet_id), _props(p, UNSUBSCRIBE, level)]
    parts.extend(encode_string(t) for t in p.topics)
    return _fixed(0xA2, b"".join(parts))


def _enc_unsuback(p: Any, level: int) -> bytes:
    if level != MQTT5:
        return _pack_BBH(0xB0, 2, p.packet_id)
    return _fixed(0xB0, _pack_H(p.packet_id) + encode_properties(p.properties, UNSUBACK)
                  + bytes(p.reason_codes))


def _enc_pingreq(p: Any, level: int) -> bytes:
    return b"\xc0\x00"


def _enc_pingresp(p: Any, level: int) -> bytes:
    return b"\xd0\x00"


def _enc_disconnect(p: Any, level: int) -> bytes:
    if level != MQTT5 or (not p.reason_code and not p.properties):
        return b"\xe0\x00"
    return _fixed(0xE0, bytes((p.reason_code,)) + encode_properties(p.properties, DISCONNECT))


def _enc_auth(p: Any, level: int) -> bytes:
    if level != MQTT5:
        raise ValueError("AUTH is MQTT 5.0 only")
    if not p.reason_code and not p.properties:
        return b"\xf0\x00"
    return _fixed(0xF0, bytes((p.reason_code,)) + encode_properties(p.properties, AUTH))


_ENCODERS: dict[int, Callable[[Any, int], bytes]] = {
    CONNECT: _enc_connect, CONNACK: _enc_connack, PUBLISH: _enc_publish,
    PUBACK: _enc_ack, PUBREC: _enc_ack, PUBREL: _enc_ack, PUBCOMP: _enc_ack,
    SUBSCRIBE: _enc_subscribe, SUBACK: _enc_suback, UNSUBSCRIBE: _enc_unsubscribe,
    UNSUBACK: _enc_unsuback, PINGREQ: _enc_pingreq, PINGRESP: _enc_pingresp,
    DISCONNECT: _enc_disconnect, AUTH: _enc_auth,
}


def encode(packet: Packet, protocol_level: int) -> bytes:
    """Encode any packet for a peer speaking ``protocol_level`` (3, 4 or 5)."""
    return _ENCODERS[packet.type](packet, protocol_level)
