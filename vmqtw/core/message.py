"""The immutable application message shared by every recipient."""
from __future__ import annotations

from typing import Any

from vmqtw.codec.encoder import encode_publish


class Message:
    """One published message.

    A single instance is shared by all subscribers it is routed to, so it must
    never be mutated after routing starts.  ``encoded_qos0`` caches the wire
    form per (protocol generation, retain flag) so a fan-out to many QoS 0
    subscribers encodes once.
    """

    __slots__ = ("topic", "payload", "qos", "retain", "properties", "_cache")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                 properties: dict[str, Any] | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties or {}
        self._cache: dict[tuple[bool, bool], bytes] | None = None

    def encoded_qos0(self, protocol_level: int, retain: bool) -> bytes:
        key = (protocol_level >= 5, retain)
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        else:
            data = cache.get(key)
            if data is not None:
                return data
        data = encode_publish(self.topic, self.payload, 0, retain, False, None,
                              self.properties, protocol_level)
        cache[key] = data
        return data

    def encoded(self, protocol_level: int, qos: int, retain: bool, packet_id: int | None,
                dup: bool = False) -> bytes:
        if qos == 0:
            return self.encoded_qos0(protocol_level, retain)
        return encode_publish(self.topic, self.payload, qos, retain, dup, packet_id,
                              self.properties, protocol_level)

    def __repr__(self) -> str:
        return (f"Message(topic={self.topic!r}, qos={self.qos}, retain={self.retain}, "
                f"payload={len(self.payload)} bytes)")
