"""The storage seam: retained messages and persistent-session state.

Routing code talks to an ``IStore`` only.  ``MemoryStore`` keeps retained
messages in memory and treats the session notifications as no-ops (the live
``Session`` objects are the state); a durable store implements the same
interface and records those notifications so it can restore them after a
restart.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from zope.interface import Interface, implementer

from vmqtw.core.message import Message

if TYPE_CHECKING:  # pragma: no cover
    from vmqtw.core.session import Session

SessionKey = tuple[str, str]  # (mountpoint, client id)


class IStore(Interface):
    """Where retained messages and persistent sessions live."""

    def retained_set(mountpoint: str, topic: str, message: Message | None) -> None:
        """Store ``message`` as the retained message of ``topic`` (None clears it)."""

    def retained_match(mountpoint: str, topic_filter: str) -> list[Message]:
        """Every retained message of ``mountpoint`` whose topic matches ``topic_filter``."""

    def retained_count() -> int:
        """How many retained messages are stored, over all mountpoints."""

    def session_updated(session: "Session") -> None:
        """A persistent session was created or its subscriptions/settings changed."""

    def session_deleted(key: SessionKey) -> None:
        """A session ended for good (clean disconnect or expiry)."""

    def message_queued(key: SessionKey, message: Message, qos: int) -> None:
        """A QoS 1/2 message was queued for the session ``key``."""

    def message_dequeued(key: SessionKey, message: Message) -> None:
        """A queued message left the queue (sent, acknowledged or dropped)."""

    def close() -> None:
        """Flush and release resources at shutdown."""


def filter_matches(topic_filter: str, topic: str) -> bool:
    """True if MQTT ``topic_filter`` matches ``topic`` (wildcards and ``$`` rules)."""
    f = topic_filter.split("/")
    t = topic.split("/")
    if t[0].startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


@implementer(IStore)
class MemoryStore:
    """Retained messages in dicts keyed by mountpoint, then topic."""

    def __init__(self) -> None:
        self._retained: dict[str, dict[str, Message]] = {}

    def retained_set(self, mountpoint: str, topic: str, message: Message | None) -> None:
        if message is None:
            table = self._retained.get(mountpoint)
            if table is not None:
                table.pop(topic, None)
                if not table:
                    del self._retained[mountpoint]
            return
        self._retained.setdefault(mountpoint, {})[topic] = message

    def retained_match(self, mountpoint: str, topic_filter: str) -> list[Message]:
        table = self._retained.get(mountpoint)
        if not table:
            return []
        if "+" not in topic_filter and "#" not in topic_filter:
            msg = table.get(topic_filter)
            return [msg] if msg is not None else []
        return [m for t, m in table.items() if filter_matches(topic_filter, t)]

    def retained_count(self) -> int:
        return sum(len(t) for t in self._retained.values())

    def retained_items(self) -> Iterable[tuple[str, str, Message]]:
        for mp, table in self._retained.items():
            for topic, msg in table.items():
                yield mp, topic, msg

    def session_updated(self, session: "Session") -> None:
        pass

    def session_deleted(self, key: SessionKey) -> None:
        pass

    def message_queued(self, key: SessionKey, message: Message, qos: int) -> None:
        pass

    def message_dequeued(self, key: SessionKey, message: Message) -> None:
        pass

    def close(self) -> None:
        pass
