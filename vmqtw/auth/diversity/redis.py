"""Redis lookups as VerneMQ's redis.lua: ``GET`` of the compact JSON key
``["mountpoint","client_id","username"]``, then the same with client_id
``"*"``; the value is ``{"passhash", "publish_acl", "subscribe_acl"}`` and the
password is checked with bcrypt (in a thread: bcrypt is slow on purpose).

The client is a small RESP2 implementation on Twisted: ``pool_size``
connections opened on demand (with AUTH and SELECT), commands pipelined on
each, a broken connection failing its pending commands and reopened next time.
"""
from __future__ import annotations

import json
from collections import deque
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from vmqtw.auth.diversity.settings import DatabaseSettings
from vmqtw.auth.diversity.sql import BackendDown, Row, check_bcrypt

__all__ = ["RedisBackend", "RedisProtocol", "RedisError", "redis_key"]


class RedisError(Exception):
    """An error reply (``-ERR ...``)."""


def redis_key(mountpoint: str, client_id: str, username: str) -> str:
    return json.dumps([mountpoint, client_id, username], separators=(",", ":"))


def _command(*args: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode("utf-8") if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisProtocol(Protocol):
    """Pipelined RESP2 commands; replies fire the Deferreds in order."""

    def __init__(self) -> None:
        self.buffer = b""
        self.pending: deque[defer.Deferred[Any]] = deque()
        self.connected_ = True

    def execute(self, *args: str | bytes) -> "defer.Deferred[Any]":
        d: defer.Deferred[Any] = defer.Deferred()
        if not self.connected_:
            d.errback(ConnectionError("redis connection closed"))
            return d
        self.pending.append(d)
        self.transport.write(_command(*args))  # type: ignore[union-attr]
        return d

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while self.pending:
            parsed = _parse(self.buffer, 0)
            if parsed is None:
                return
            value, end = parsed
            self.buffer = self.buffer[end:]
            d = self.pending.popleft()
            if isinstance(value, RedisError):
                d.errback(value)
            else:
                d.callback(value)

    def connectionLost(self, reason: Any = None) -> None:
        self.connected_ = False
        pending, self.pending = self.pending, deque()
        for d in pending:
            d.errback(ConnectionError("redis connection lost"))


def _parse(buf: bytes, pos: int) -> tuple[Any, int] | None:
    """One RESP2 value from ``buf[pos:]``: (value, end) or None if incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line = buf[pos:pos + 1], buf[pos + 1:end]
    after = end + 2
    if kind == b"+":
        return line.decode(), after
    if kind == b"-":
        return RedisError(line.decode("utf-8", "replace")), after
    if kind == b":":
        return int(line), after
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, after
        if len(buf) < after + n + 2:
            return None
        return buf[after:after + n], after + n + 2
    if kind == b"*":
        n = int(line)
        items = []
        for _ in range(max(n, 0)):
            parsed = _parse(buf, after)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return (items if n >= 0 else None), after
    raise RedisError(f"bad reply type {kind!r}")


class RedisBackend:
    """A pool of Redis connections and VerneMQ's key layout."""

    def __init__(self, settings: DatabaseSettings, reactor: Any) -> None:
        self.settings = settings
        self.name = settings.kind
        self.reactor = reactor
        self.connections: list[RedisProtocol | None] = [None] * settings.pool_size
        self.waiting: list[list[defer.Deferred[RedisProtocol]]] = \
            [[] for _ in range(settings.pool_size)]
        self._next = 0

    def _connection(self) -> "defer.Deferred[RedisProtocol]":
        index = self._next
        self._next = (self._next + 1) % len(self.connections)
        conn = self.connections[index]
        if conn is not None and conn.connected_:
            return defer.succeed(conn)
        d: defer.Deferred[RedisProtocol] = defer.Deferred()
        waiting = self.waiting[index]
        waiting.append(d)
        if len(waiting) == 1:
            self._open(index)
        return d

    @defer.inlineCallbacks
    def _open(self, index: int):
        """Connect (AUTH, SELECT) and fire everybody waiting for slot ``index``."""
        s = self.settings
        try:
            endpoint = TCP4ClientEndpoint(self.reactor, s.host, s.port, timeout=5)
            proto = yield connectProtocol(endpoint, RedisProtocol())
            if s.password:
                yield proto.execute("AUTH", *([s.user] if s.user else []), s.password)
            if s.database not in ("", "0"):
                yield proto.execute("SELECT", s.database)
        except Exception:
            failure = Failure()
            waiting, self.waiting[index] = self.waiting[index], []
            for d in waiting:
                d.errback(failure)
            return
        self.connections[index] = proto
        waiting, self.waiting[index] = self.waiting[index], []
        for d in waiting:
            d.callback(proto)

    @defer.inlineCallbacks
    def lookup(self, mountpoint: str, client_id: str, username: str,
               password: bytes):
        """As SQLBackend.lookup.  A command lost with an old connection (the
        server may have restarted since) is tried once more on a new one."""
        for attempt in (1, 2):
            conn = None
            try:
                conn = yield self._connection()
                specific = yield conn.execute("GET", redis_key(mountpoint, client_id, username))
                default = None
                if specific is None:
                    default = yield conn.execute("GET", redis_key(mountpoint, "*", username))
                break
            except ConnectionError as e:
                if conn is not None and conn.transport is not None:
                    conn.transport.loseConnection()
                    conn.connected_ = False
                if attempt == 2 or conn is None:
                    raise BackendDown(f"{type(e).__name__}: {e}"[:300]) from e
            except Exception as e:
                raise BackendDown(f"{type(e).__name__}: {e}"[:300]) from e
        for raw in (specific, default):
            if raw is None:
                continue
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(doc, dict):
                continue
            ok = yield threads.deferToThread(check_bcrypt, password, doc.get("passhash"))
            if ok:
                row: Row = (doc.get("publish_acl"), doc.get("subscribe_acl"))
                return row
            return None
        return None

    def close(self) -> None:
        for conn in self.connections:
            if conn is not None and conn.connected_:
                conn.transport.loseConnection()  # type: ignore[union-attr]
        self.connections = [None] * len(self.connections)
