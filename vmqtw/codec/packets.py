"""MQTT control packets as plain slotted objects.

These classes are the contract between the codec and everything above it.  They
carry no behaviour beyond construction and equality (for tests).  Field meanings
follow the MQTT 3.1.1 / 5.0 specifications.

Properties (MQTT 5.0 only) are a ``dict`` mapping the property's snake_case name
(see ``vmqtw.codec.properties.PROPERTY_NAMES``) to its value, except
``user_property`` which is a ``list`` of ``(key, value)`` string pairs in wire
order and ``subscription_identifier`` which is a ``list`` of ints (a PUBLISH may
carry several).  An empty dict means "no properties".  For MQTT 3.x packets the
properties dict is always empty and never encoded.
"""
from __future__ import annotations

from typing import Any

# Packet type numbers (the high nibble of the first byte).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

# Protocol levels.
MQTT31 = 3
MQTT311 = 4
MQTT5 = 5
BRIDGE = 0x80  # the bridge bit of levels 131/132 (mosquitto's ``try_private``)

Properties = dict[str, Any]


def _all_slots(cls: type) -> tuple[str, ...]:
    """Every slot of ``cls`` and its bases (a subclass's own ``__slots__`` may be ``()``)."""
    fields: list[str] = []
    for klass in reversed(cls.__mro__):
        for s in klass.__dict__.get("__slots__", ()):
            if s not in fields:
                fields.append(s)
    return tuple(fields)


class Packet:
    __slots__ = ()
    type: int = 0
    _fields: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._fields = _all_slots(cls)

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        fields = getattr(type(self), "_fields", None) or self.__slots__
        return all(getattr(self, s) == getattr(other, s) for s in fields)

    def __repr__(self) -> str:
        fields = getattr(type(self), "_fields", None) or self.__slots__
        shown = ", ".join(f"{s}={getattr(self, s)!r}" for s in fields)
        return f"{type(self).__name__}({shown})"

    __hash__ = None  # type: ignore[assignment]


class Will:
    """The will message carried by a CONNECT."""

    __slots__ = ("topic", "payload", "qos", "retain", "properties")

    def __init__(self, topic: str, payload: bytes, qos: int = 0,
                 retain: bool = False, properties: Properties | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties if properties is not None else {}

    __eq__ = Packet.__eq__
    __repr__ = Packet.__repr__
    __hash__ = None  # type: ignore[assignment]


class Connect(Packet):
    __slots__ = ("protocol_name", "protocol_level", "clean_start", "keepalive",
                 "client_id", "will", "username", "password", "properties")
    type = CONNECT

    def __init__(self, client_id: str = "", protocol_level: int = MQTT311,
                 clean_start: bool = True, keepalive: int = 60,
                 will: Will | None = None, username: str | None = None,
                 password: bytes | None = None, properties: Properties | None = None,
                 protocol_name: str | None = None) -> None:
        if protocol_name is None:
            protocol_name = "MQIsdp" if protocol_level & ~BRIDGE == MQTT31 else "MQTT"
        self.protocol_name = protocol_name
        self.protocol_level = protocol_level
        self.clean_start = clean_start
        self.keepalive = keepalive
        self.client_id = client_id
        self.will = will
        self.username = username
        self.password = password
        self.properties = properties if properties is not None else {}


class Connack(Packet):
    __slots__ = ("session_present", "reason_code", "properties")
    type = CONNACK

    def __init__(self, reason_code: int = 0, session_present: bool = False,
                 properties: Properties | None = None) -> None:
        self.session_present = session_present
        self.reason_code = reason_code
        self.properties = properties if properties is not None else {}


class Publish(Packet):
    """A PUBLISH.  ``packet_id`` is ``None`` for QoS 0.

    ``topic`` may be ``""`` for an MQTT 5.0 PUBLISH that uses a topic alias
    (``properties["topic_alias"]``); the protocol layer resolves it.
    """

    __slots__ = ("topic", "payload", "qos", "retain", "dup", "packet_id", "properties")
    type = PUBLISH

    def __init__(self, topic: str, payload: bytes = b"", qos: int = 0,
                 retain: bool = False, dup: bool = False, packet_id: int | None = None,
                 properties: Properties | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self.properties = properties if properties is not None else {}


class _Ack(Packet):
    """PUBACK, PUBREC, PUBREL, PUBCOMP: a packet id and (5.0) a reason code."""

    __slots__ = ("packet_id", "reason_code", "properties")

    def __init__(self, packet_id: int, reason_code: int = 0,
                 properties: Properties | None = None) -> None:
        self.packet_id = packet_id
        self.reason_code = reason_code
        self.properties = properties if properties is not None else {}


class Puback(_Ack):
    __slots__ = ()
    type = PUBACK


class Pubrec(_Ack):
    __slots__ = ()
    type = PUBREC


class Pubrel(_Ack):
    __slots__ = ()
    type = PUBREL


class Pubcomp(_Ack):
    __slots__ = ()
    type = PUBCOMP


class SubOptions:
    """Per-topic subscription options.  For MQTT 3.x only ``qos`` is meaningful."""

    __slots__ = ("qos", "no_local", "retain_as_published", "retain_handling")

    def __init__(self, qos: int = 0, no_local: bool = False,
                 retain_as_published: bool = False, retain_handling: int = 0) -> None:
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.retain_handling = retain_handling

    __eq__ = Packet.__eq__
    __repr__ = Packet.__repr__
    __hash__ = None  # type: ignore[assignment]


class Subscribe(Packet):
    """``topics`` is a list of ``(filter, SubOptions)`` in wire order."""

    __slots__ = ("packet_id", "topics", "properties")
    type = SUBSCRIBE

    def __init__(self, packet_id: int, topics: list[tuple[str, SubOptions]],
                 properties: Properties | None = None) -> None:
        self.packet_id = packet_id
        self.topics = topics
        self.properties = properties if properties is not None else {}


class Suback(Packet):
    __slots__ = ("packet_id", "reason_codes", "properties")
    type = SUBACK

    def __init__(self, packet_id: int, reason_codes: list[int],
                 properties: Properties | None = None) -> None:
        self.packet_id = packet_id
        self.reason_codes = reason_codes
        self.properties = properties if properties is not None else {}


class Unsubscribe(Packet):
    __slots__ = ("packet_id", "topics", "properties")
    type = UNSUBSCRIBE

    def __init__(self, packet_id: int, topics: list[str],
                 properties: Properties | None = None) -> None:
        self.packet_id = packet_id
        self.topics = topics
        self.properties = properties if properties is not None else {}


class Unsuback(Packet):
    """``reason_codes`` is ignored (and not encoded) for MQTT 3.x."""

    __slots__ = ("packet_id", "reason_codes", "properties")
    type = UNSUBACK

    def __init__(self, packet_id: int, reason_codes: list[int] | None = None,
                 properties: Properties | None = None) -> None:
        self.packet_id = packet_id
        self.reason_codes = reason_codes if reason_codes is not None else []
        self.properties = properties if properties is not None else {}


class Pingreq(Packet):
    __slots__ = ()
    type = PINGREQ


class Pingresp(Packet):
    __slots__ = ()
    type = PINGRESP


class Disconnect(Packet):
    __slots__ = ("reason_code", "properties")
    type = DISCONNECT

    def __init__(self, reason_code: int = 0, properties: Properties | None = None) -> None:
        self.reason_code = reason_code
        self.properties = properties if properties is not None else {}


class Auth(Packet):
    __slots__ = ("reason_code", "properties")
    type = AUTH

    def __init__(self, reason_code: int = 0, properties: Properties | None = None) -> None:
        self.reason_code = reason_code
        self.properties = properties if properties is not None else {}
