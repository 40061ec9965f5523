"""What a durable store gives back at startup, and the compact encodings it uses.

``Loaded`` holds everything needed to rebuild the broker's state before the
listeners accept: retained messages and persistent sessions, each with its
subscriptions (MQTT 5.0 options and identifiers included), its QoS 1/2
deliveries in order (queued, sent and waiting for PUBACK/PUBREC, or waiting for
PUBCOMP after PUBREL) and the packet ids of incoming QoS 2 PUBLISHes still
waiting for their PUBREL.  A message delivered to many sessions is one
``Message`` object shared by all their ``StoredDelivery`` entries, as it was
before the restart.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from vmqtw.codec.packets import SubOptions
from vmqtw.core.message import Message
# The key and the delivery states are the core's own (re-exported here).
from vmqtw.core.values import (  # noqa: F401
    QUEUED, WAIT_PUBACK, WAIT_PUBCOMP, WAIT_PUBREC, DeliveryState, SessionKey,
)


@dataclass
class StoredDelivery:
    """One QoS 1/2 message for one session."""

    message: Message
    qos: int
    retain: bool
    state: DeliveryState = QUEUED
    packet_id: int | None = None
    sub_ids: tuple[int, ...] = ()


@dataclass
class StoredSession:
    """A persistent session as it was last recorded."""

    mountpoint: str
    client_id: str
    #: Seconds the session survives without a connection; None = forever.
    expiry_interval: float | None
    #: Clock time of the disconnect (sessions that were online when the process
    #: died count as disconnected at the first startup that finds them).
    disconnected_at: float
    username: str | None = None
    subscriptions: dict[str, SubOptions] = field(default_factory=dict)
    #: MQTT 5.0 subscription identifier per topic filter (absent = none).
    sub_ids: dict[str, int] = field(default_factory=dict)
    #: Inflight deliveries in the order they were sent, then the queue in order.
    deliveries: list[StoredDelivery] = field(default_factory=list)
    incoming_qos2: set[int] = field(default_factory=set)

    @property
    def key(self) -> SessionKey:
        return SessionKey(self.mountpoint, self.client_id)

    def remaining_expiry(self, now: float) -> float | None:
        """Seconds left before the session expires (None = never)."""
        if self.expiry_interval is None:
            return None
        return max(0.0, self.disconnected_at + self.expiry_interval - now)


@dataclass
class Loaded:
    """The result of ``load()``."""

    retained: list[tuple[str, str, Message]] = field(default_factory=list)
    sessions: list[StoredSession] = field(default_factory=list)
    #: What load() purged: expired sessions and expired messages.
    expired_sessions: int = 0
    expired_messages: int = 0


# -- properties ------------------------------------------------------------------------
#
# MQTT 5.0 properties of a stored message (including will properties, which
# are not all PUBLISH properties) as JSON: binary values become {"$b": base64},
# user properties a list of pairs.  None when there are none (the common case).

def encode_properties(props: dict[str, Any]) -> str | None:
    if not props:
        return None
    return json.dumps(props, default=_json_default, separators=(",", ":"))


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"cannot store a property value of type {type(value).__name__}")


def _json_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$b" in obj:
        return base64.b64decode(obj["$b"])
    return obj


def decode_properties(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    props = json.loads(text, object_hook=_json_hook)
    up = props.get("user_property")
    if up is not None:
        props["user_property"] = [tuple(pair) for pair in up]
    return props


def encode_sub_ids(sub_ids: tuple[int, ...]) -> str | None:
    return ",".join(map(str, sub_ids)) if sub_ids else None


def decode_sub_ids(text: str | None) -> tuple[int, ...]:
    return tuple(int(i) for i in text.split(",")) if text else ()
