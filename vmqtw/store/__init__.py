"""Durable storage for the broker (see ``vmqtw.store.sqlite``).

``store_settings(config)`` reads the ``persistent_store.*`` keys:

- ``persistent_store.enabled = on|off`` (default on; off = in-memory store,
  nothing survives a restart);
- ``persistent_store.directory`` (default ``data`` next to the configuration
  file; a relative path is relative to the configuration file's directory);
- ``persistent_store.sync = group|always|none`` (default group).

``open_store(config, reactor)`` returns the ``IStore`` they describe.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from vmqtw.store.records import Loaded, StoredDelivery, StoredSession
from vmqtw.store.sqlite import (
    FILENAME, SYNC_MODES, SQLiteStore, StoreCorrupt, StoreError, StoreLocked,
)

__all__ = [
    "DEFAULT_DIRECTORY", "FILENAME", "SYNC_MODES", "Loaded", "SQLiteStore", "StoreCorrupt",
    "StoreError", "StoreLocked", "StoreSettings", "StoredDelivery", "StoredSession",
    "open_store", "store_settings",
]

#: The store's directory when ``persistent_store.directory`` is not set,
#: relative to the directory of the configuration file.
DEFAULT_DIRECTORY = "data"


@dataclass(frozen=True)
class StoreSettings:
    enabled: bool
    directory: str
    sync: str


def store_settings(config: Any) -> StoreSettings:
    """The store settings of a ``BrokerConfig`` (raw strings in ``config.extra``)."""
    extra = config.extra
    enabled = extra.get("persistent_store.enabled", "on") in ("on", "true")
    base = os.path.dirname(os.path.abspath(config.path))
    directory = os.path.join(base, extra.get("persistent_store.directory", DEFAULT_DIRECTORY))
    sync = extra.get("persistent_store.sync", "group")
    if sync not in SYNC_MODES:
        file, line = config.source("persistent_store.sync")
        where = f"{file}:{line}" if line else file
        raise StoreError(f"{where}: persistent_store.sync: expected one of "
                         f"{', '.join(SYNC_MODES)}, got {sync!r}")
    return StoreSettings(enabled, os.path.normpath(directory), sync)


def open_store(config: Any, reactor: Any) -> Any:
    """The store ``config`` asks for: a ``SQLiteStore`` (not loaded yet) or,
    with ``persistent_store.enabled = off``, a ``MemoryStore``."""
    settings = store_settings(config)
    if not settings.enabled:
        from vmqtw.store.memory import MemoryStore
        return MemoryStore()
    return SQLiteStore(settings.directory, reactor, settings.sync, clock=reactor.seconds)
