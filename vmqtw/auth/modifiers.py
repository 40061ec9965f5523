"""Checking the modifiers that ``ok(**modifiers)`` carries back from a hook.

A plugin's modifiers are validated before they touch a session or a message: an
unknown name or a value of the wrong type is the plugin's error (logged with
its name, and the request is refused), never a broken session.
"""
from __future__ import annotations

from typing import Any, Callable

from vmqtw.codec.errors import CodecError
from vmqtw.codec.packets import PUBLISH as PUBLISH_TYPE
from vmqtw.codec.properties import ALLOWED, decode_properties, encode_properties
from vmqtw.core.topics import TopicError, parse_shared, validate_topic_filter, validate_topic_name


class ModifierError(ValueError):
    """A modifier has an unknown name or a bad value."""


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ModifierError(f"expected a string, got {v!r}")
    return v


def _mountpoint(v: Any) -> str:
    """A mountpoint as written (a trailing ``/`` is kept, as the listener's
    ``mountpoint`` option keeps it)."""
    v = _str(v)
    if "+" in v or "#" in v:
        raise ModifierError(f"a mountpoint cannot contain '+' or '#': {v!r}")
    return v


def _client_id(v: Any) -> str:
    v = _str(v)
    if not v:
        raise ModifierError("client_id cannot be empty")
    return v


def _opt_str(v: Any) -> str | None:
    return None if v is None else _str(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ModifierError(f"expected True or False, got {v!r}")
    return v


def _int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            upper = f" and <= {hi}" if hi is not None else ""
            raise ModifierError(f"expected an integer >= {lo}{upper}, got {v!r}")
        return v
    return check


def _payload(v: Any) -> bytes:
    if isinstance(v, str):
        return v.encode("utf-8")
    if not isinstance(v, (bytes, bytearray)):
        raise ModifierError(f"expected bytes, got {type(v).__name__}")
    return bytes(v)


def _topic(v: Any) -> str:
    v = _str(v)
    try:
        validate_topic_name(v)
    except TopicError as e:
        raise ModifierError(f"invalid topic {v!r}: {e}") from None
    return v


REGISTER: dict[str, Callable[[Any], Any]] = {
    "mountpoint": _mountpoint,
    "client_id": _client_id,
    "username": _opt_str,
    "clean_session": _bool,
    "clean_start": _bool,
    "max_message_size": _int(0),
    "max_inflight_messages": _int(0, 65535),
    "max_online_messages": _int(-1),
    "max_offline_messages": _int(-1),
    "max_connection_lifetime": _int(0),
    "max_message_rate": _int(0),
    "retry_interval": _int(0),
    "upgrade_qos": _bool,
}

#: MQTT 5.0 PUBLISH properties a plugin may set; topic aliases are per
#: connection and subscription identifiers are added per recipient by the broker.
FORWARDED_PROPERTIES = ALLOWED[PUBLISH_TYPE] - {"topic_alias", "subscription_identifier"}


def _publish_properties(v: Any) -> dict[str, Any]:
    """A dict of PUBLISH properties, checked by encoding and decoding it."""
    if not isinstance(v, dict):
        raise ModifierError(f"expected a dict of MQTT 5.0 properties, got {v!r}")
    bad = sorted(set(v) - FORWARDED_PROPERTIES)
    if bad:
        raise ModifierError(f"not allowed on a forwarded PUBLISH: {', '.join(bad)}")
    try:
        props, _ = decode_properties(encode_properties(v, PUBLISH_TYPE), 0, PUBLISH_TYPE)
    except (CodecError, ValueError, TypeError, AttributeError, OverflowError) as e:
        raise ModifierError(f"invalid properties: {e}") from None
    return props


PUBLISH: dict[str, Callable[[Any], Any]] = {
    "properties": _publish_properties,
    "topic": _topic,
    "payload": _payload,
    "qos": _int(0, 2),
    "retain": _bool,
    "mountpoint": _mountpoint,
}

DELIVER: dict[str, Callable[[Any], Any]] = {
    "topic": _topic,
    "payload": _payload,
}


def check(table: dict[str, Callable[[Any], Any]], modifiers: dict[str, Any],
          hook: str) -> dict[str, Any]:
    """The validated modifiers; raises ModifierError naming the bad one."""
    out = {}
    for name, value in modifiers.items():
        checker = table.get(name)
        if checker is None:
            known = ", ".join(sorted(table))
            raise ModifierError(f"{hook}: unknown modifier {name!r} (known: {known})")
        try:
            out[name] = checker(value)
        except ModifierError as e:
            raise ModifierError(f"{hook}: modifier {name}: {e}") from None
    return out


def check_subscribe(modifiers: dict[str, Any], requested: list[tuple[str, int]]
                    ) -> list[tuple[str, int]]:
    """``ok(topics=[(filter, qos), ...])``: one entry per requested filter, in
    order; a QoS of 128 (or any value outside 0..2) denies that entry.  An
    entry may be a tuple or a two-item list; a rewritten filter must be a
    valid topic filter (``$share/GROUP/FILTER`` included)."""
    unknown = set(modifiers) - {"topics"}
    if unknown:
        raise ModifierError(f"auth_on_subscribe: unknown modifier(s) {sorted(unknown)}")
    topics = modifiers.get("topics")
    if topics is None:
        return requested
    if not isinstance(topics, list) or len(topics) != len(requested):
        raise ModifierError("auth_on_subscribe: topics must be a list with one "
                            "(filter, qos) entry per requested filter")
    out = []
    for entry in topics:
        if (not isinstance(entry, (tuple, list)) or len(entry) != 2
                or not isinstance(entry[0], str)
                or isinstance(entry[1], bool) or not isinstance(entry[1], int)):
            raise ModifierError(f"auth_on_subscribe: bad topics entry {entry!r}")
        f, q = entry
        try:
            _group, inner = parse_shared(f)
            validate_topic_filter(inner)
        except TopicError as e:
            raise ModifierError(f"auth_on_subscribe: invalid topic filter {f!r}: {e}") from None
        out.append((f, q if 0 <= q <= 2 else 0x80))
    return out
