"""Durable storage for the broker (see ``vmqtw.store.sqlite``).

``store_settings(config)`` is what the ``persistent_store.*`` keys say, as
``BrokerConfig.store`` holds them (typed and checked by ``vmqtw.config``):

- ``persistent_store.enabled = on|off`` (default on; off = in-memory store,
  nothing survives a restart);
- ``persistent_store.directory`` (default ``data`` next to the configuration
  file; a relative path is relative to the configuration file's directory);
- ``persistent_store.sync = group|always|none`` (default group).

``open_store(config, reactor)`` returns the ``IStore`` they describe.
"""
from __future__ import annotations

from typing import Any

from vmqtw.config import BrokerConfig, StoreConfig
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
DEFAULT_DIRECTORY = StoreConfig.directory


#: The store settings: ``enabled``, ``directory`` (absolute) and ``sync``.
StoreSettings = StoreConfig


def store_settings(config: BrokerConfig) -> StoreSettings:
    """The store settings of a ``BrokerConfig``: its typed ``store``."""
    return config.store


def open_store(config: BrokerConfig, reactor: Any) -> Any:
    """The store ``config`` asks for: a ``SQLiteStore`` (not loaded yet) or,
    with ``persistent_store.enabled = off``, a ``MemoryStore``."""
    settings = store_settings(config)
    if not settings.enabled:
        from vmqtw.store.memory import MemoryStore
        return MemoryStore()
    return SQLiteStore(settings.directory, reactor, settings.sync, clock=reactor.seconds)
