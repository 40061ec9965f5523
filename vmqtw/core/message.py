"""The immutable application message shared by every recipient."""
from __future__ import annotations

import struct
from typing import Any

from vmqtw.codec.encoder import encode_publish
from vmqtw.codec.packets import PUBLISH
from vmqtw.codec.properties import encode_properties, encode_varint

#: The PUBLISH properties forwarded unchanged to MQTT 5.0 subscribers.  The
#: others are per hop (topic alias), per recipient (subscription identifiers)
#: or recomputed when sent (message expiry interval).
FORWARDED = ("payload_format_indicator", "content_type", "response_topic",
             "correlation_data", "user_property")

_pack_H = struct.Struct(">H").pack
#: The ``Message._cache`` key of the one cached variant with subscription identifiers.
_LAST_IDS = "sub_ids"


def sub_id_bytes(sub_ids: tuple[int, ...]) -> bytes:
    """Encoded Subscription Identifier properties (no length prefix)."""
    return b"".join(b"\x0b" + encode_varint(i) for i in sub_ids)


def _forwarded_property_bytes(properties: dict[str, Any]) -> bytes:
    """The encoded FORWARDED properties of ``properties``, without the length prefix."""
    kept = {k: properties[k] for k in FORWARDED if k in properties}
    if not kept:
        return b""
    data = encode_properties(kept, PUBLISH)
    i = 0
    while data[i] & 0x80:  # skip the Variable Byte Integer length
        i += 1
    return data[i + 1:]


class Message:
    """One published message.

    A single instance is shared by all subscribers it is routed to, so it must
    never be mutated after routing starts.  ``encoded_qos0`` caches the 3.x
    wire form per retain flag so a fan-out to many QoS 0 subscribers encodes
    once; ``encoded5_qos0_cached`` does the same for 5.0 per retain flag,
    plus the last variant with subscription identifiers (those vary per
    recipient: a cache keyed by them would grow with every identifier a client
    picks), and the forwarded properties are encoded once.  So the cache holds
    at most five entries, whatever the number of recipients.

    ``expires_at`` is the clock time (``clock.seconds()``) at which an MQTT 5.0
    message expiry interval runs out, or None.
    """

    __slots__ = ("topic", "payload", "qos", "retain", "properties", "expires_at", "_cache",
                 "_props5")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                 properties: dict[str, Any] | None = None,
                 expires_at: float | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties or {}
        self.expires_at = expires_at
        # bytes per variant; the _LAST_IDS entry is (retain, sub_ids, bytes)
        self._cache: dict[Any, Any] | None = None
        self._props5: bytes | None = None

    def start_expiry(self, now: float) -> None:
        """Start the message expiry interval (if any) at ``now``: call once, before routing."""
        interval = self.properties.get("message_expiry_interval")
        if interval is not None:
            self.expires_at = now + interval

    def remaining_expiry(self, now: float) -> int:
        """Whole seconds left of the expiry interval (0 when it has run out)."""
        left = self.expires_at - now  # type: ignore[operator]
        if left <= 0:
            return 0
        whole = int(left)
        return whole if whole == left else whole + 1

    def encoded_qos0(self, protocol_level: int, retain: bool) -> bytes:
        if protocol_level >= 5:
            return self.encoded5(0, retain, None, False, self._expiry_as_received())
        cache = self._cache  # 3.x entries are keyed by the retain flag alone
        if cache is None:
            cache = self._cache = {}
        else:
            data = cache.get(retain)
            if data is not None:
                return data
        data = encode_publish(self.topic, self.payload, 0, retain, False, None,
                              None, protocol_level)
        cache[retain] = data
        return data

    def encoded(self, protocol_level: int, qos: int, retain: bool, packet_id: int | None,
                dup: bool = False) -> bytes:
        if qos == 0:
            return self.encoded_qos0(protocol_level, retain)
        if protocol_level >= 5:
            return self.encoded5(qos, retain, packet_id, dup, self._expiry_as_received())
        return encode_publish(self.topic, self.payload, qos, retain, dup, packet_id,
                              None, protocol_level)

    # -- MQTT 5.0 ------------------------------------------------------------------

    def _expiry_as_received(self) -> bytes:
        interval = self.properties.get("message_expiry_interval")
        return b"" if interval is None else struct.pack(">BI", 0x02, interval)

    def encoded5_qos0_cached(self, retain: bool, sub_ids: tuple[int, ...]) -> bytes:
        """A QoS 0 5.0 PUBLISH with no per-connection parts (alias, expiry), cached.

        The variants without subscription identifiers are kept per retain
        flag; of those with identifiers (the client's choice, so unbounded)
        only the last one is kept: a fan-out to subscribers that share their
        identifiers encodes once, and the cache never grows past three entries."""
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        if not sub_ids:
            key: Any = (True, retain)
            data = cache.get(key)
            if data is None:
                data = cache[key] = self.encoded5(0, retain, None, False)
            return data
        last = cache.get(_LAST_IDS)
        if last is not None and last[0] == retain and last[1] == sub_ids:
            return last[2]
        data = self.encoded5(0, retain, None, False, sub_id_bytes(sub_ids))
        cache[_LAST_IDS] = (retain, sub_ids, data)
        return data

    def encoded5(self, qos: int, retain: bool, packet_id: int | None, dup: bool,
                 extra: bytes = b"", topic: str | None = None) -> bytes:
        """An MQTT 5.0 PUBLISH: the forwarded properties plus ``extra`` (encoded
        per-recipient properties).  ``topic`` replaces the topic name (``""``
        when a topic alias stands for it)."""
        props = self._props5
        if props is None:
            props = self._props5 = _forwarded_property_bytes(self.properties)
        if extra:
            props += extra
        tb = (self.topic if topic is None else topic).encode("utf-8")
        parts = [_pack_H(len(tb)), tb]
        if qos:
            parts.append(_pack_H(packet_id))
        parts.append(encode_varint(len(props)))
        parts.append(props)
        var = b"".join(parts)
        rl = len(var) + len(self.payload)
        b0 = 0x30 | (qos << 1) | (8 if dup else 0) | (1 if retain else 0)
        return b"".join((bytes((b0,)), encode_varint(rl), var, self.payload))

    def __repr__(self) -> str:
        return (f"Message(topic={self.topic!r}, qos={self.qos}, retain={self.retain}, "
                f"payload={len(self.payload)} bytes)")
