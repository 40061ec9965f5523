"""Per-connection MQTT 5.0 state for the broker -> client direction.

``Outbound`` holds what a 5.0 client announced in its CONNECT (receive
maximum, maximum packet size, topic alias maximum) and turns a shared
``Message`` into the PUBLISH bytes for that client: subscription identifiers,
the remaining message expiry interval and a topic alias are the only parts
that differ per recipient, so everything else comes from the message's caches.
"""
from __future__ import annotations

import struct
from typing import Any

from vmqtw.core.message import Message, sub_id_bytes

_pack_alias = struct.Struct(">BH").pack
_pack_expiry = struct.Struct(">BI").pack


class Outbound:
    """What the broker may send to one MQTT 5.0 connection."""

    __slots__ = ("receive_maximum", "maximum_packet_size", "alias_max", "aliases")

    def __init__(self, receive_maximum: int = 65535, maximum_packet_size: int = 0,
                 alias_max: int = 0) -> None:
        #: QoS 1/2 PUBLISHes the client accepts unacknowledged.
        self.receive_maximum = receive_maximum
        #: Largest packet the client accepts; 0 = no limit beyond the protocol's.
        self.maximum_packet_size = maximum_packet_size
        #: Topic aliases the broker may use towards this client (0 = none).
        self.alias_max = alias_max
        #: topic -> alias, for this connection only.
        self.aliases: dict[str, int] = {}

    def publish(self, message: Message, qos: int, retain: bool, packet_id: int | None,
                dup: bool, sub_ids: tuple[int, ...], clock: Any) -> bytes | None:
        """The PUBLISH bytes, or None when they exceed the client's maximum packet size."""
        expires = message.expires_at
        if not self.alias_max and expires is None and qos == 0:
            data = message.encoded5_qos0_cached(retain, sub_ids)
            new_alias = False
        else:
            extra = sub_id_bytes(sub_ids) if sub_ids else b""
            if expires is not None:
                extra += _pack_expiry(0x02, message.remaining_expiry(clock.seconds()))
            topic = None
            new_alias = False
            if self.alias_max:
                aliases = self.aliases
                alias = aliases.get(message.topic)
                if alias is not None:
                    topic = ""  # the client knows the alias: send an empty topic name
                elif len(aliases) < self.alias_max:
                    alias = aliases[message.topic] = len(aliases) + 1
                    new_alias = True
                if alias is not None:
                    extra += _pack_alias(0x23, alias)
            data = message.encoded5(qos, retain, packet_id, dup, extra, topic)
        limit = self.maximum_packet_size
        if limit and len(data) > limit:
            if new_alias:  # the client never saw it: free it again
                del self.aliases[message.topic]
            return None
        return data
