"""vmq_diversity's ACLs: the ``publish_acl`` / ``subscribe_acl`` JSON arrays
of a ``vmq_auth_acl`` row (or Redis value), matched as VerneMQ's
auth_commons.lua does, and the per-node cache that holds them from CONNECT
to disconnect so publish/subscribe authorization stays synchronous.

An entry is ``{"pattern": FILTER, ...}``.  ``%u``, ``%c`` and ``%m`` in the
pattern stand for the user, client id and mountpoint, **only as whole
levels** (``a/%u/b``, not ``a/x%u``).  Publish entries take ``max_qos`` (2),
``max_payload_size`` (268435456), ``allowed_retain`` (true) and ``modifiers``
(an object: ``topic``, ``payload``, ``qos``, ``retain``, ``mountpoint``;
``properties`` for MQTT 5.0).  Subscribe entries take ``max_qos`` (2) and
``modifiers`` (``[["new/topic", qos], ...]``).  The first entry that matches
wins; no match denies.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vmqtw.auth.api import OK, Error, Ok, Result

__all__ = ["AclEntry", "ClientAcl", "AclCache", "parse_acl", "NOT_AUTHORIZED"]

NOT_AUTHORIZED = "not_authorized"
DEFAULT_MAX_PAYLOAD = 268435456


@dataclass(frozen=True)
class AclEntry:
    pattern: tuple[str, ...]
    max_qos: int = 2
    max_payload_size: int = DEFAULT_MAX_PAYLOAD
    allowed_retain: bool = True
    modifiers: Any = None


def parse_acl(raw: Any, warn: Any = None) -> tuple[AclEntry, ...]:
    """The entries of one ACL column (JSON text, an already decoded list, or
    None).  Entries without a pattern are skipped (and reported via ``warn``)."""
    if raw is None or raw == "":
        return ()
    if isinstance(raw, (bytes, str)):
        try:
            raw = json.loads(raw)
        except ValueError:
            if warn:
                warn(f"ACL is not JSON: {str(raw)[:60]!r}")
            return ()
    if not isinstance(raw, list):
        if warn:
            warn(f"ACL is not a JSON array: {raw!r}")
        return ()
    out = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("pattern"), str):
            if warn:
                warn(f"ACL entry without a pattern skipped: {item!r}")
            continue

        retain = item.get("allowed_retain", True)
        out.append(AclEntry(
            pattern=tuple(item["pattern"].split("/")), max_qos=_number(item, "max_qos", 2),
            max_payload_size=_number(item, "max_payload_size", DEFAULT_MAX_PAYLOAD),
            allowed_retain=retain if isinstance(retain, bool) else True,
            modifiers=item.get("modifiers")))
    return tuple(out)


def _number(item: dict[str, Any], key: str, default: int) -> int:
    """``item[key]`` when it is a whole number (not a JSON boolean), else ``default``."""
    value = item.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _substitute(pattern: tuple[str, ...], user: str, client_id: str,
                mountpoint: str) -> list[str]:
    subst = {"%u": user, "%c": client_id, "%m": mountpoint}
    return [subst.get(level, level) for level in pattern]


def _publish_match(pattern: list[str], topic: list[str]) -> bool:
    """MQTT matching of a topic name against a pattern with + and #."""
    for i, level in enumerate(pattern):
        if level == "#":
            return True
        if i >= len(topic):
            return False
        if level != "+" and level != topic[i]:
            return False
    return len(pattern) == len(topic)


def _subscribe_match(pattern: list[str], filter_levels: list[str]) -> bool:
    """Level by level; a pattern ``+`` also accepts a literal ``+`` or ``#``
    level (so the filter ``a/#`` is allowed by the pattern ``a/+``)."""
    for i, level in enumerate(pattern):
        if level == "#":
            return True
        if i >= len(filter_levels):
            return False
        if level == "+":
            if filter_levels[i] == "#":
                return True
            continue
        if level != filter_levels[i]:
            return False
    return len(pattern) == len(filter_levels)


class ClientAcl:
    """The ACLs of one authenticated client (one row)."""

    __slots__ = ("user", "client_id", "mountpoint", "publish", "subscribe")

    def __init__(self, user: str, client_id: str, mountpoint: str,
                 publish: tuple[AclEntry, ...], subscribe: tuple[AclEntry, ...]) -> None:
        self.user = user
        self.client_id = client_id
        self.mountpoint = mountpoint
        self.publish = publish
        self.subscribe = subscribe

    def _pattern(self, entry: AclEntry) -> list[str]:
        return _substitute(entry.pattern, self.user, self.client_id, self.mountpoint)

    def check_publish(self, topic: str, payload_size: int, qos: int, retain: bool,
                      warn: Any = None) -> Result:
        levels = topic.split("/")
        for entry in self.publish:
            if qos > entry.max_qos or payload_size > entry.max_payload_size or \
                    (retain and not entry.allowed_retain):
                continue
            if _publish_match(self._pattern(entry), levels):
                return _publish_modifiers(entry.modifiers, warn)
        return Error(NOT_AUTHORIZED)

    def check_subscribe(self, topics: list[tuple[str, int]], warn: Any = None) -> Result:
        """Every requested filter must match an entry, or the whole SUBSCRIBE is denied."""
        rewritten: list[tuple[str, int]] = []
        changed = False
        for topic_filter, qos in topics:
            levels = topic_filter.split("/")
            for entry in self.subscribe:
                if qos <= entry.max_qos and _subscribe_match(self._pattern(entry), levels):
                    new = _subscribe_modifier(entry.modifiers, warn)
                    if new is not None:
                        rewritten.append(new)
                        changed = True
                    else:
                        rewritten.append((topic_filter, qos))
                    break
            else:
                return Error(NOT_AUTHORIZED)
        return Ok({"topics": rewritten}) if changed else OK


_PUBLISH_MODIFIERS = {"topic": str, "payload": str, "qos": int, "retain": bool,
                      "mountpoint": str}


def _publish_modifiers(mods: Any, warn: Any) -> Result:
    """An entry's publish modifiers as ours; invalid ones are logged and dropped."""
    if not mods:
        return OK
    if not isinstance(mods, dict):
        if warn:
            warn(f"publish modifiers must be an object, dropped: {mods!r}")
        return OK
    out: dict[str, Any] = {}
    for key, value in mods.items():
        kind = _PUBLISH_MODIFIERS.get(key)
        if kind is None or not isinstance(value, kind) or \
                (kind is int and isinstance(value, bool)):
            if warn:
                warn(f"publish modifier {key}={value!r} is not valid, dropped")
            continue
        out[key] = value.encode("utf-8") if key == "payload" and isinstance(value, str) else value
    return Ok(out) if out else OK


def _subscribe_modifier(mods: Any, warn: Any) -> tuple[str, int] | None:
    """``[["new/topic", qos], ...]``: the replacement of one requested filter."""
    if not mods:
        return None
    if isinstance(mods, list) and mods and isinstance(mods[0], list) and len(mods[0]) == 2 \
            and isinstance(mods[0][0], str) and isinstance(mods[0][1], int):
        if len(mods) > 1 and warn:
            warn("subscribe modifiers with more than one topic: only the first is used")
        return (mods[0][0], mods[0][1])
    if warn:
        warn(f"subscribe modifiers must be [[topic, qos], ...], dropped: {mods!r}")
    return None


class AclCache:
    """ACLs by (mountpoint, client_id), as vmq_diversity_cache: a list per key,
    lookups take the newest, a disconnect drops the oldest."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], list[ClientAcl]] = {}

    def add(self, mountpoint: str, client_id: str, acl: ClientAcl) -> None:
        self.entries.setdefault((mountpoint, client_id), []).append(acl)

    def get(self, mountpoint: str, client_id: str) -> ClientAcl | None:
        found = self.entries.get((mountpoint, client_id))
        return found[-1] if found else None

    def drop_oldest(self, mountpoint: str, client_id: str) -> None:
        key = (mountpoint, client_id)
        found = self.entries.get(key)
        if found:
            found.pop(0)
            if not found:
                del self.entries[key]
