"""Small value types shared by the core and the stores.

``SessionKey`` names a session and ``DeliveryState`` says where one QoS 1/2
delivery to it stands.  The live ``Session`` keeps its inflight window in these
states and a durable store records the same values, so a session restored
after a restart continues each flow where it stopped.

This module imports nothing beyond the standard library.
"""
from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

__all__ = [
    "QUEUED", "WAIT_PUBACK", "WAIT_PUBCOMP", "WAIT_PUBREC", "DeliveryState", "SessionKey",
]


class SessionKey(NamedTuple):
    """The identity of a session: a client id is unique within its mountpoint.

    A plain ``(mountpoint, client_id)`` tuple compares and hashes equal, so
    either finds a session in a dict keyed by ``SessionKey``.
    """

    mountpoint: str
    client_id: str


class DeliveryState(IntEnum):
    """Where a QoS 1/2 message for one session stands.

    The values are stored on disk by ``vmqtw.store.sqlite``: never renumber.
    """

    #: Waiting in the session's queue, never sent.
    QUEUED = 0
    #: QoS 1 PUBLISH sent, PUBACK awaited.
    WAIT_PUBACK = 1
    #: QoS 2 PUBLISH sent, PUBREC awaited.
    WAIT_PUBREC = 2
    #: QoS 2 PUBREC received and PUBREL sent, PUBCOMP awaited.
    WAIT_PUBCOMP = 3


# Module-level names for the hot paths: a global is cheaper to read than an
# enum class attribute, and the members compare equal to the stored integers.
QUEUED = DeliveryState.QUEUED
WAIT_PUBACK = DeliveryState.WAIT_PUBACK
WAIT_PUBREC = DeliveryState.WAIT_PUBREC
WAIT_PUBCOMP = DeliveryState.WAIT_PUBCOMP
