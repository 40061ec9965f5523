"""Incremental, sans-IO MQTT 3.1 / 3.1.1 / 5.0 packet decoder.

``Decoder.feed(data)`` buffers partial input and returns every complete packet.
PUBLISH packets are decoded by walking offsets over one ``bytes`` buffer (other,
small, packets from a slice of their own); only the
leftover of an incomplete packet is kept between calls (and a large packet that
arrives in many pieces is collected in a list and joined once, when complete).
"""
from __future__ import annotations

from typing import Any

from vmqtw.codec.errors import (
    CodecError, MalformedPacket, PacketTooLarge, ProtocolError,
    UnsupportedProtocolVersion,
)
from vmqtw.codec.packets import (
    AUTH, CONNACK, CONNECT, DISCONNECT, MQTT5, PINGREQ, PINGRESP, PUBACK, PUBCOMP,
    PUBLISH, PUBREC, PUBREL, SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE,
    Auth, Connack, Connect, Disconnect, Packet, Pingreq, Pingresp, Puback, Pubcomp,
    Publish, Pubrec, Pubrel, SubOptions, Suback, Subscribe, Unsuback, Unsubscribe, Will,
)
from vmqtw.codec.properties import (
    WILL, decode_binary, decode_properties, decode_string,
)

DEFAULT_MAX_PACKET_SIZE = 268435460  # 1 + 4 + 268,435,455

# 131 and 132 are 3.1 and 3.1.1 with the bridge bit (0x80) that a mosquitto
# bridge with ``try_private true`` sets; the decoder keeps the level as sent
# (every ``level == MQTT5`` test treats them as 3.x) and reads a bridge's
# SUBSCRIBE as no-local + retain-as-published, as mosquitto and VerneMQ do.
_VALID_PROTOCOLS = frozenset(((b"MQIsdp", 3), (b"MQTT", 4), (b"MQTT", 5),
                              (b"MQIsdp", 0x80 | 3), (b"MQTT", 0x80 | 4)))

# Required low nibble of the fixed header for every non-PUBLISH type (spec 2.1.3).
_FLAGS = (None, 0, 0, None, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)


def _packet_id(buf: bytes, p: int, end: int) -> int:
    if p + 2 > end:
        raise MalformedPacket("truncated packet identifier")
    pid = (buf[p] << 8) | buf[p + 1]
    if not pid:
        raise MalformedPacket("packet identifier 0")
    return pid


def _check_filter(topic_filter: str) -> None:
    """A topic filter is at least one character long (MQTT-4.7.3-1); ``#`` is a
    whole last level, ``+`` a whole level (3.1.1 MQTT-4.7.1-2/-3, 5.0
    MQTT-4.7.1-1/-2).  Else the packet is malformed."""
    if not topic_filter:
        raise MalformedPacket("empty topic filter")
    if "+" in topic_filter or "#" in topic_filter:
        levels = topic_filter.split("/")
        last = len(levels) - 1
        for i, level in enumerate(levels):
            if ("#" in level and (level != "#" or i != last)) or \
                    ("+" in level and level != "+"):
                raise MalformedPacket(f"invalid topic filter {topic_filter[:64]!r}")


def _decode_connect(buf: bytes, p: int, end: int) -> Connect:
    if p + 2 > end:
        raise MalformedPacket("truncated CONNECT")
    q = p + 2 + ((buf[p] << 8) | buf[p + 1])
    if q >= end:
        raise MalformedPacket("truncated CONNECT")
    name = buf[p + 2:q]
    level = buf[q]
    if (name, level) not in _VALID_PROTOCOLS:
        raise UnsupportedProtocolVersion(
            f"unsupported protocol {name[:16]!r} level {level}", protocol_level=level)
    if q + 4 > end:
        raise MalformedPacket("truncated CONNECT")
    cf = buf[q + 1]
    if cf & 0x01:
        raise MalformedPacket("CONNECT reserved flag set")
    will_flag = cf & 0x04
    will_qos = (cf >> 3) & 3
    will_retain = bool(cf & 0x20)
    if not will_flag and (will_qos or will_retain):
        raise MalformedPacket("will QoS/retain set without will flag")
    if will_qos == 3:
        raise MalformedPacket("will QoS 3")
    has_password = cf & 0x40
    has_username = cf & 0x80
    if has_password and not has_username and level != MQTT5:
        raise MalformedPacket("password flag without username flag")
    keepalive = (buf[q + 2] << 8) | buf[q + 3]
    q += 4
    if level == MQTT5:
        props, q = decode_properties(buf, q, CONNECT, end)
    else:
        props = {}
    client_id, q = decode_string(buf, q, end)
    will = None
    if will_flag:
        if level == MQTT5:
            wprops, q = decode_properties(buf, q, WILL, end)
        else:
            wprops = {}
        wtopic, q = decode_string(buf, q, end)
        # A topic name is at least one character (MQTT-4.7.3-1) and holds no
        # wildcard (3.1.1 MQTT-4.7.1-1, 5.0 MQTT-4.7.0-1): else the CONNECT is
        # malformed (3.x: closed without CONNACK, MQTT-3.1.4-1; 5.0: 0x81).
        if not wtopic or "+" in wtopic or "#" in wtopic:
            raise MalformedPacket("invalid will topic")
        wpayload, q = decode_binary(buf, q, end)
        will = Will(wtopic, wpayload, will_qos, will_retain, wprops)
    username = password = None
    if has_username:
        username, q = decode_string(buf, q, end)
    if has_password:
        password, q = decode_binary(buf, q, end)
    if q != end:
        raise MalformedPacket("trailing bytes in CONNECT")
    return Connect(client_id, level, bool(cf & 0x02), keepalive, will, username,
                   password, props, name.decode("ascii"))


def _decode_connack(buf: bytes, p: int, end: int, level: int) -> Connack:
    if end - p < 2:
        raise MalformedPacket("truncated CONNACK")
    flags = buf[p]
    if flags & 0xFE:
        raise MalformedPacket("CONNACK reserved flags set")
    if level == MQTT5:
        props, q = decode_properties(buf, p + 2, CONNACK, end)
        if q != end:
            raise MalformedPacket("trailing bytes in CONNACK")
    else:
        if end - p != 2:
            raise MalformedPacket("CONNACK length must be 2")
        props = {}
    return Connack(buf[p + 1], bool(flags), props)


_ACK_CLASSES: dict[int, Any] = {PUBACK: Puback, PUBREC: Pubrec, PUBREL: Pubrel,
                                PUBCOMP: Pubcomp}


def _decode_ack(ptype: int, buf: bytes, p: int, end: int, level: int) -> Packet:
    pid = _packet_id(buf, p, end)
    n = end - p
    cls = _ACK_CLASSES[ptype]
    if n == 2:
        return cls(pid)
    if level != MQTT5:
        raise MalformedPacket("MQTT 3.x acknowledgement length must be 2")
    if n == 3:
        return cls(pid, buf[p + 2])
    props, q = decode_properties(buf, p + 3, ptype, end)
    if q != end:
        raise MalformedPacket("trailing bytes in acknowledgement")
    return cls(pid, buf[p + 2], props)


def _decode_subscribe(buf: bytes, p: int, end: int, level: int) -> Subscribe:
    pid = _packet_id(buf, p, end)
    q = p + 2
    if level == MQTT5:
        props, q = decode_properties(buf, q, SUBSCRIBE, end)
    else:
        props = {}
    topics = []
    while q < end:
        topic, q = decode_string(buf, q, end)
        if q >= end:
            raise MalformedPacket("missing subscription options")
        o = buf[q]
        q += 1
        qos = o & 3
        if qos == 3:
            raise MalformedPacket("subscription QoS 3")
        if level == MQTT5:
            if o & 0xC0:
                raise MalformedPacket("subscription options reserved bits set")
            rh = (o >> 4) & 3
            if rh == 3:
                raise MalformedPacket("retain handling 3")
            opts = SubOptions(qos, bool(o & 4), bool(o & 8), rh)
        else:
            if o & 0xFC:
                raise MalformedPacket("requested QoS reserved bits set")
            if level & 0x80 and not topic.startswith("$share/"):
                # A bridge: never send its own messages back to it (no
                # loops), and keep their retain flag for the other broker.
                opts = SubOptions(qos, True, True)
            else:
                opts = SubOptions(qos)
        topics.append((topic, opts))
    if not topics:
        raise ProtocolError("SUBSCRIBE with no topic filters")
    return Subscribe(pid, topics, props)


def _decode_suback(buf: bytes, p: int, end: int, level: int) -> Suback:
    pid = _packet_id(buf, p, end)
    q = p + 2
    if level == MQTT5:
        props, q = decode_properties(buf, q, SUBACK, end)
    else:
        props = {}
    return Suback(pid, list(buf[q:end]), props)


def _decode_unsubscribe(buf: bytes, p: int, end: int, level: int) -> Unsubscribe:
    pid = _packet_id(buf, p, end)
    q = p + 2
    if level == MQTT5:
        props, q = decode_properties(buf, q, UNSUBSCRIBE, end)
    else:
        props = {}
    topics = []
    while q < end:
        topic, q = decode_string(buf, q, end)
        _check_filter(topic)  # SUBSCRIBE's are refused per filter, in its SUBACK
        topics.append(topic)
    if not topics:
        raise ProtocolError("UNSUBSCRIBE with no topic filters")
    return Unsubscribe(pid, topics, props)


def _decode_unsuback(buf: bytes, p: int, end: int, level: int) -> Unsuback:
    pid = _packet_id(buf, p, end)
    if level != MQTT5:
        if end - p != 2:
            raise MalformedPacket("MQTT 3.x UNSUBACK length must be 2")
        return Unsuback(pid)
    props, q = decode_properties(buf, p + 2, UNSUBACK, end)
    return Unsuback(pid, list(buf[q:end]), props)


def _decode_reason_props(cls: Any, ptype: int, buf: bytes, p: int, end: int) -> Packet:
    """MQTT 5.0 DISCONNECT / AUTH: optional reason code, optional properties."""
    n = end - p
    if n == 0:
        return cls()
    if n == 1:
        return cls(buf[p])
    props, q = decode_properties(buf, p + 1, ptype, end)
    if q != end:
        raise MalformedPacket("trailing bytes")
    return cls(buf[p], props)


def _decode_other(b0: int, buf: bytes, p: int, end: int, level: int) -> Packet:
    """Decode any packet but CONNECT and PUBLISH (fixed-header flags checked)."""
    ptype = b0 >> 4
    if (b0 & 0x0F) != _FLAGS[ptype]:
        raise MalformedPacket(f"invalid fixed header flags for packet type {ptype}")
    if PUBACK <= ptype <= PUBCOMP:
        return _decode_ack(ptype, buf, p, end, level)
    if ptype == SUBSCRIBE:
        return _decode_subscribe(buf, p, end, level)
    if ptype == SUBACK:
        return _decode_suback(buf, p, end, level)
    if ptype == UNSUBSCRIBE:
        return _decode_unsubscribe(buf, p, end, level)
    if ptype == UNSUBACK:
        return _decode_unsuback(buf, p, end, level)
    if ptype == PINGREQ or ptype == PINGRESP:
        if end != p:
            raise MalformedPacket("PINGREQ/PINGRESP with a body")
        return Pingreq() if ptype == PINGREQ else Pingresp()
    if ptype == CONNACK:
        return _decode_connack(buf, p, end, level)
    if ptype == DISCONNECT:
        if level != MQTT5:
            if end != p:
                raise MalformedPacket("MQTT 3.x DISCONNECT with a body")
            return Disconnect()
        return _decode_reason_props(Disconnect, DISCONNECT, buf, p, end)
    if ptype == AUTH:
        if level != MQTT5:
            raise MalformedPacket("AUTH is MQTT 5.0 only")
        return _decode_reason_props(Auth, AUTH, buf, p, end)
    raise MalformedPacket(f"invalid packet type {ptype}")  # pragma: no cover


class Decoder:
    """Turn a byte stream into packets.  See the module docstring."""

    __slots__ = ("max_packet_size", "protocol_level", "preauth_max_packet_size", "_pending",
                 "_have", "_need", "_failed", "_connected")

    def __init__(self, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
                 protocol_level: int | None = None,
                 preauth_max_packet_size: int = 0) -> None:
        self.max_packet_size = max_packet_size
        self.protocol_level = protocol_level
        #: While not 0, the limit for every packet until ``authenticated()``:
        #: a bigger one is refused from its fixed header, before its body is
        #: buffered, and decoding stops after the CONNECT (what follows it is
        #: decoded with the full limit once the client is authenticated).
        self.preauth_max_packet_size = preauth_max_packet_size
        self._pending: list[bytes] = []   # buffered chunks of an incomplete packet
        self._have = 0                    # total length of _pending
        self._need = 0                    # bytes needed to complete it (0: unknown)
        self._failed: CodecError | None = None
        self._connected = False           # a CONNECT has been decoded

    def authenticated(self) -> None:
        """The client is authenticated: ``max_packet_size`` alone applies from
        now on.  Bytes left after the CONNECT are decoded by the next ``feed``
        (``feed(b"")`` decodes them without new input)."""
        self.preauth_max_packet_size = 0

    @property
    def buffered(self) -> bool:
        """Whether bytes of a packet not decoded yet (incomplete, or held back
        until ``authenticated()``) are waiting for the next ``feed``."""
        return bool(self._pending)

    def feed(self, data: bytes) -> list[Packet]:
        """Buffer ``data`` and return every complete packet, in order.

        On the first bad packet raise a CodecError whose ``packets`` attribute
        holds the packets decoded before it in this call; the decoder is then
        dead.
        """
        if self._failed is not None:
            err = CodecError(f"decoder failed earlier: {self._failed}",
                             self._failed.reason_code)
            err.packets = []  # type: ignore[attr-defined]
            raise err
        if type(data) is not bytes:
            data = bytes(data)
        if self._pending:
            self._pending.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            buf = b"".join(self._pending)
        elif not data:
            return []
        else:
            buf = data

        packets: list[Packet] = []
        append = packets.append
        n = len(buf)
        pos = 0
        need = 0
        level = self.protocol_level
        max_size = self.max_packet_size
        preauth = self.preauth_max_packet_size
        if preauth and preauth < max_size:
            max_size = preauth
        try:
            while n - pos >= 2:
                b0 = buf[pos]
                ptype = b0 >> 4
                if not ptype:
                    raise MalformedPacket("packet type 0")
                if level is None and ptype != CONNECT:
                    raise ProtocolError("first packet is not CONNECT")
                # Remaining length (spec 2.1.4): usually one byte.
                rl = buf[pos + 1]
                if rl < 128:
                    start = pos + 2
                else:
                    rl &= 0x7F
                    i = pos + 2
                    shift = 7
                    while True:
                        if i >= n:
                            rl = -1
                            break
                        b = buf[i]
                        rl |= (b & 0x7F) << shift
                        i += 1
                        if b < 128:
                            break
                        if i - pos == 5:
                            raise MalformedPacket("remaining length over 4 bytes")
                        shift += 7
                    if rl < 0:
                        break
                    start = i
                end = start + rl
                if end - pos > max_size:
                    raise PacketTooLarge(
                        f"packet of {end - pos} bytes exceeds maximum {max_size}"
                        + (" before authentication" if preauth else ""))
                if end > n:
                    need = end - pos
                    break

                if ptype == PUBLISH:
                    # Fast path (spec 3.3).
                    qos = (b0 >> 1) & 3
                    if start + 2 > end:
                        raise MalformedPacket("truncated PUBLISH topic")
                    p = start + 2 + ((buf[start] << 8) | buf[start + 1])
                    if p > end:
                        raise MalformedPacket("PUBLISH topic overruns the packet")
                    topic = buf[start + 2:p].decode("utf-8")
                    if "\x00" in topic:
                        raise MalformedPacket("U+0000 in topic")
                    if qos:
                        if qos == 3:
                            raise MalformedPacket("PUBLISH QoS 3")
                        if p + 2 > end:
                            raise MalformedPacket("truncated packet identifier")
                        pid = (buf[p] << 8) | buf[p + 1]
                        if not pid:
                            raise MalformedPacket("packet identifier 0")
                        p += 2
                    else:
                        if b0 & 0x08:
                            raise MalformedPacket("DUP set on a QoS 0 PUBLISH")
                        pid = None
                    if level == MQTT5:
                        if p < end and buf[p] == 0:
                            props: dict[str, Any] = {}
                            p += 1
                        else:
                            props, p = decode_properties(buf, p, PUBLISH, end)
                    else:
                        props = {}
                    append(Publish(topic, buf[p:end], qos, bool(b0 & 1),
                                   bool(b0 & 8), pid, props))
                elif b0 == 0x40 and rl == 2:
                    # Fast path: a PUBACK without reason code (one per QoS 1
                    # delivery), as _decode_ack would decode it.
                    pid = (buf[start] << 8) | buf[start + 1]
                    if not pid:
                        raise MalformedPacket("packet identifier 0")
                    append(Puback(pid))
                elif ptype == CONNECT:
                    if self._connected:
                        raise ProtocolError("second CONNECT")
                    if b0 & 0x0F:
                        raise MalformedPacket("invalid fixed header flags for CONNECT")
                    pkt = _decode_connect(buf[start:end], 0, rl)
                    self._connected = True
                    self.protocol_level = level = pkt.protocol_level
                    append(pkt)
                    if preauth:
                        # The rest waits for authentication (and its limit).
                        pos = end
                        break
                else:
                    # Control packets are small: decode each from its own slice so
                    # that no read can ever stray into the next packet.
                    append(_decode_other(b0, buf[start:end], 0, rl,
                                         level))  # type: ignore[arg-type]
                pos = end
        except UnicodeDecodeError:
            err = MalformedPacket("invalid UTF-8 in topic")
            self._fail(err, packets)
            raise err from None
        except CodecError as e:
            self._fail(e, packets)
            raise

        if pos == n:
            if self._pending:
                self._pending = []
                self._have = 0
                self._need = 0
        else:
            rest = buf[pos:] if pos else buf
            self._pending = [rest]
            self._have = n - pos
            self._need = need
        return packets

    def _fail(self, err: CodecError, packets: list[Packet]) -> None:
        err.packets = packets  # type: ignore[attr-defined]
        self._failed = err
        self._pending = []
