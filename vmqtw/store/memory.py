"""The in-memory store: retained messages in a topic tree, no session state.

``MemoryStore`` provides ``vmqtw.core.interfaces.IStore`` for a broker that
keeps nothing across restarts (``persistent_store.enabled = off``, and the
default of a ``Broker`` built without a store).  Retained messages live in a
``vmqtw.core.retained.RetainedTree`` (answered by
``vmqtw.store.retained.RetainedMixin``); the session notifications are no-ops,
as the live ``Session`` objects are the state.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from vmqtw.core.interfaces import IStore
from vmqtw.core.message import Message
from vmqtw.core.retained import RetainedTree
from vmqtw.core.values import SessionKey
from vmqtw.store.retained import RetainedMixin

if TYPE_CHECKING:  # pragma: no cover
    from vmqtw.core.session import Session

__all__ = ["MemoryStore"]


@implementer(IStore)
class MemoryStore(RetainedMixin):
    """Retained messages in a topic tree per mountpoint; nothing else is kept."""

    def __init__(self) -> None:
        self._retained = RetainedTree()

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
