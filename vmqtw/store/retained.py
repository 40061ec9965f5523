"""The retained-message half of ``IStore``, shared by the stores.

Both ``MemoryStore`` and ``SQLiteStore`` keep their retained messages in a
``vmqtw.core.retained.RetainedTree`` (the SQLite store also writes them to the
``retained`` table); ``RetainedMixin`` answers the ``retained_*`` calls from
that tree.  A store sets ``self._retained`` in its ``__init__`` and overrides
``retained_set`` when a change has to be recorded anywhere else.
"""
from __future__ import annotations

from typing import Iterable

from vmqtw.core.message import Message
from vmqtw.core.retained import RetainedTree

__all__ = ["RetainedMixin"]


class RetainedMixin:
    """``retained_set/match/count/items`` and ``retained_tree`` on ``self._retained``."""

    _retained: RetainedTree

    def retained_set(self, mountpoint: str, topic: str, message: Message | None) -> None:
        self._retained.set(mountpoint, topic, message)

    def retained_match(self, mountpoint: str, topic_filter: str) -> list[Message]:
        return self._retained.match(mountpoint, topic_filter)

    def retained_count(self) -> int:
        return len(self._retained)

    def retained_tree(self) -> RetainedTree:
        """The tree itself, read-only: the broker walks it in slices and checks
        the retained quotas against it."""
        return self._retained

    def retained_items(self) -> Iterable[tuple[str, str, Message]]:
        """Every retained (mountpoint, topic, message)."""
        return self._retained.items()
