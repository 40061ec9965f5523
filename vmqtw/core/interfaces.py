"""The seams between the core and what it is plugged into.

``IStore`` is what routing and sessions need from a store of retained
messages and persistent-session state.  Implementations live in
``vmqtw.store``: ``MemoryStore`` (nothing survives a restart) and
``SQLiteStore`` (durable).  Sessions notify the store only while they are
persistent.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Interface

from vmqtw.core.message import Message
from vmqtw.core.values import SessionKey

if TYPE_CHECKING:  # pragma: no cover
    from vmqtw.core.session import Session

__all__ = ["IStore"]


class IStore(Interface):
    """Where retained messages and persistent sessions live."""

    def retained_set(mountpoint: str, topic: str, message: Message | None) -> None:
        """Store ``message`` as the retained message of ``topic`` (None clears it)."""

    def retained_match(mountpoint: str, topic_filter: str) -> list[Message]:
        """Every retained message of ``mountpoint`` whose topic matches ``topic_filter``."""

    def retained_count() -> int:
        """How many retained messages are stored, over all mountpoints.

        A store may also offer ``retained_tree()``, its
        ``vmqtw.core.retained.RetainedTree`` (read-only): the broker then walks
        it in slices for new subscriptions and checks the retained byte quota
        (see ``vmqtw.core.retained_delivery``)."""

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
        durable, or no longer needed (a delivery its client acknowledged before
        it was written); at once when nothing is pending."""

    def close() -> None:
        """Flush and release resources at shutdown."""
