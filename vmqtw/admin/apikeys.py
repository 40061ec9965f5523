"""VerneMQ's HTTP API keys, kept in a 0600 JSON file.

A key has a scope (``status``, ``mgmt``, ``metrics``, ``health``, ``api2``,
``httppub``) and an optional expiry (UTC).  ``vmq-admin api-key create``
prints a random 32-character ``[A-Za-z0-9]`` key; ``expires`` is given in
local time (``YYYY-MM-DDTHH:MM:SS``) and must lie in the future.  Once
``max_apikey_expiry_days`` is set, every key needs an expiry within that many
days.  The file is rewritten atomically on every change.
"""
from __future__ import annotations

import json
import os
import secrets
import string
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

SCOPES = ("status", "mgmt", "metrics", "health", "api2", "httppub")
DEFAULT_SCOPE = "mgmt"
_ALPHABET = string.ascii_letters + string.digits
FILENAME = "apikeys.json"


class ApiKeyError(Exception):
    """``str(e)`` is VerneMQ's error word (``key_already_exists``, ...)."""


@dataclass(frozen=True)
class ApiKey:
    key: str
    scope: str
    expires: float | None  # epoch seconds (UTC); None = never

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


def parse_expiry(text: str) -> float:
    """``YYYY-MM-DDTHH:MM:SS`` in local time -> epoch seconds."""
    try:
        local = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise ApiKeyError("invalid_expiry_date") from None
    return local.timestamp()  # a naive datetime is local time


def format_expiry(expires: float | None) -> str:
    if expires is None:
        return "never"
    return datetime.fromtimestamp(expires, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


class ApiKeys:
    """The keys of one broker, persisted at ``path`` (None: in memory only)."""

    def __init__(self, path: str | None, min_length: int = 0,
                 max_expiry_days: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.min_length = min_length
        self.max_expiry_days = max_expiry_days
        self.clock = clock
        self.keys: dict[tuple[str, str], ApiKey] = {}
        if path is not None and os.path.exists(path):
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        with open(self.path, encoding="utf-8") as f:
            data = json.load(f)
        for item in data.get("keys", []):
            key = ApiKey(str(item["key"]), str(item["scope"]), item.get("expires"))
            self.keys[(key.key, key.scope)] = key

    def _save(self) -> None:
        if self.path is None:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"keys": [{"key": k.key, "scope": k.scope, "expires": k.expires}
                                for k in self.keys.values()]}, f, indent=1)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def _check(self, scope: str, expires: float | None) -> None:
        if scope not in SCOPES:
            raise ApiKeyError("invalid_scope")
        now = self.clock()
        if expires is not None and expires <= now:
            raise ApiKeyError("invalid_expiry_date")
        if self.max_expiry_days is not None:
            if expires is None or expires > now + self.max_expiry_days * 86400:
                raise ApiKeyError("invalid_expiry_date")

    def create(self, scope: str = DEFAULT_SCOPE, expires: float | None = None) -> str:
        """A new random key."""
        self._check(scope, expires)
        length = max(32, self.min_length)
        key = "".join(secrets.choice(_ALPHABET) for _ in range(length))
        self.keys[(key, scope)] = ApiKey(key, scope, expires)
        self._save()
        return key

    def add(self, key: str, scope: str = DEFAULT_SCOPE, expires: float | None = None) -> None:
        """Add a given key."""
        if (key, scope) in self.keys:
            raise ApiKeyError("key_already_exists")
        if not key or len(key) < self.min_length:
            raise ApiKeyError("invalid_key_length")
        self._check(scope, expires)
        self.keys[(key, scope)] = ApiKey(key, scope, expires)
        self._save()

    def delete(self, key: str, scope: str = DEFAULT_SCOPE) -> None:
        if self.keys.pop((key, scope), None) is None:
            raise ApiKeyError("key_not_found")
        self._save()

    def show(self, scope: str | None = None) -> list[ApiKey]:
        """The keys of ``scope`` (None: all)."""
        return [k for k in self.keys.values() if scope is None or k.scope == scope]

    def valid(self, key: str, scope: str) -> bool:
        """May ``key`` be used for ``scope`` now?"""
        entry = self.keys.get((key, scope))
        return entry is not None and not entry.expired(self.clock())
