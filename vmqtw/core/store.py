"""The storage seam: retained messages and persistent-session state.

Routing code talks to an ``IStore`` only.  ``MemoryStore`` keeps retained
messages in memory and treats the session notifications as no-ops (the live
``Session`` objects are the state); a durable store (``vmqtw.store``)
implements the same interface and records those notifications so it can
restore them after a restart.  Sessions notify the store only while they are
persistent.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

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

    def message_queued(key: SessionKey, message: Message, qos: int, retain: bool = False,
                       sub_ids: tuple[int, ...] = ()) -> None:
        """A QoS 1/2 message was queued for the session ``key`` (to be sent with
        ``qos``, the ``retain`` flag and the MQTT 5.0 subscription identifiers)."""

    def message_dequeued(key: SessionKey, message: Message) -> None:
        """The oldest queued copy of ``message`` left the queue (sent or dropped)."""

    def message_sent(key: SessionKey, message: Message, qos: int, retain: bool,
                     packet_id: int, sub_ids: tuple[int, ...] = (),
                     queued: bool = False) -> None:
        """A QoS 1/2 PUBLISH was sent; it waits for PUBACK (QoS 1) or PUBREC (QoS 2).
        With ``queued`` it is the oldest queued copy of ``message``, now sent."""

    def message_released(key: SessionKey, packet_id: int) -> None:
        """PUBREC received for the outgoing ``packet_id``: PUBREL sent, PUBCOMP awaited."""

    def message_acked(key: SessionKey, packet_id: int) -> None:
        """The outgoing ``packet_id`` is done (PUBACK, PUBCOMP, failed PUBREC) or dropped."""

    def qos2_received(key: SessionKey, packet_id: int) -> None:
        """An incoming QoS 2 PUBLISH ``packet_id`` was routed; its PUBREL is awaited."""

    def qos2_released(key: SessionKey, packet_id: int) -> None:
        """PUBREL received for the incoming QoS 2 ``packet_id``."""

    def unsynced() -> bool:
        """True when something recorded so far is not durable yet, so output that
        depends on it (PUBACK, PUBREC, ...) must wait for ``durable()``."""

    def durable() -> Any:
        """A Deferred that fires once everything recorded before the call is
        durable (at once when nothing is pending)."""

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

    def message_queued(self, key: SessionKey, message: Message, qos: int, retain: bool = False,
                       sub_ids: tuple[int, ...] = ()) -> None:
        pass

    def message_dequeued(self, key: SessionKey, message: Message) -> None:
        pass

    def message_sent(self, key: SessionKey, message: Message, qos: int, retain: bool,
                     packet_id: int, sub_ids: tuple[int, ...] = (),
                     queued: bool = False) -> None:
        pass

    def message_released(self, key: SessionKey, packet_id: int) -> None:
        pass

    def message_acked(self, key: SessionKey, packet_id: int) -> None:
        pass

    def qos2_received(self, key: SessionKey, packet_id: int) -> None:
        pass

    def qos2_released(self, key: SessionKey, packet_id: int) -> None:
        pass

    def unsynced(self) -> bool:
        return False  # nothing is ever written: acknowledgements never wait

    def durable(self) -> Any:
        from twisted.internet.defer import succeed  # core imports no Twisted at import time
        return succeed(None)

    def close(self) -> None:
        pass
