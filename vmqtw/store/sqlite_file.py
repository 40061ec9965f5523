"""The SQLite store's file: its schema, opening, checking, creating and loading.

``SQLiteFile`` is the base of ``vmqtw.store.sqlite.SQLiteStore``: the lock
file, the connection, the checks that refuse a file which is not a complete
vmqtw store, the creation of a new one, and ``load()`` at startup (which also
builds the in-memory index, ``_Ref``/``_Sess``, of what the database holds).
The state it uses is set up by ``SQLiteStore.__init__``.

Safety of the file
------------------
A new store is created under a temporary name and renamed into place once its
schema is committed, so an existing ``vmqtw.db`` is always a complete store:
one that cannot be read (not a database, truncated, malformed, another
application's file, a newer schema) stops startup with ``StoreCorrupt`` naming
the file; it is never replaced.  A lock file keeps a second broker away from
the same directory.
"""
from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections import deque
from typing import Any, Callable, Iterable

from vmqtw.codec.packets import SubOptions
from vmqtw.core.message import Message
from vmqtw.core.retained import RetainedTree
from vmqtw.core.values import QUEUED, DeliveryState, SessionKey
from vmqtw.store.progress import RestoreProgress
from vmqtw.store.records import (
    Loaded, StoredDelivery, StoredSession, decode_properties, decode_sub_ids,
)

FILENAME = "vmqtw.db"
LOCKNAME = "vmqtw.db.lock"
SCHEMA_VERSION = "1"
APPLICATION = "vmqtw"
SYNC_MODES = ("group", "always", "none")

SCHEMA = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE retained (
    mountpoint TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    properties TEXT,
    expires_at REAL,
    PRIMARY KEY (mountpoint, topic)
) WITHOUT ROWID;
CREATE TABLE sessions (
    mountpoint TEXT NOT NULL,
    client_id TEXT NOT NULL,
    expiry_interval REAL,
    disconnected_at REAL,
    username TEXT,
    PRIMARY KEY (mountpoint, client_id)
) WITHOUT ROWID;
CREATE TABLE subscriptions (
    mountpoint TEXT NOT NULL,
    client_id TEXT NOT NULL,
    topic_filter TEXT NOT NULL,
    qos INTEGER NOT NULL,
    no_local INTEGER NOT NULL,
    retain_as_published INTEGER NOT NULL,
    retain_handling INTEGER NOT NULL,
    subscription_id INTEGER,
    PRIMARY KEY (mountpoint, client_id, topic_filter)
) WITHOUT ROWID;
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    properties TEXT,
    expires_at REAL
);
CREATE TABLE deliveries (
    seq INTEGER PRIMARY KEY,
    mountpoint TEXT NOT NULL,
    client_id TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    sub_ids TEXT,
    state INTEGER NOT NULL,
    packet_id INTEGER
);
CREATE INDEX deliveries_by_session ON deliveries (mountpoint, client_id, seq);
CREATE TABLE incoming_qos2 (
    mountpoint TEXT NOT NULL,
    client_id TEXT NOT NULL,
    packet_id INTEGER NOT NULL,
    PRIMARY KEY (mountpoint, client_id, packet_id)
) WITHOUT ROWID;
"""

TABLES = ("meta", "retained", "sessions", "subscriptions", "messages", "deliveries",
          "incoming_qos2")
_PER_SESSION = ("subscriptions", "deliveries", "incoming_qos2", "sessions")


class StoreError(Exception):
    """The store cannot be used; the message names the file."""


class StoreCorrupt(StoreError):
    """The store file exists but is not a readable vmqtw store."""


class StoreLocked(StoreError):
    """Another process is using the store."""



# -- in-memory index of what the database holds (or will once pending is written) ----

class _Ref:
    """One row of ``messages``: the message and how many deliveries point at it."""

    __slots__ = ("row", "message", "refs", "new")

    def __init__(self, row: int, message: Message, new: bool) -> None:
        self.row = row
        self.message = message
        self.refs = 0
        self.new = new  # not yet handed to the writer


class _Sess:
    """The recorded deliveries of one session."""

    __slots__ = ("queued", "inflight", "entries", "qos2", "probe", "probe_at", "rtt")

    def __init__(self) -> None:
        #: id(message) -> seqs of its queued entries, oldest first.
        self.queued: dict[int, deque[int]] = {}
        #: packet id -> seq of the inflight entry.
        self.inflight: dict[int, int] = {}
        #: seq -> id(message), for every entry.
        self.entries: dict[int, int] = {}
        #: incoming QoS 2 packet ids written (or handed to the writer).
        self.qos2: set[int] = set()
        #: The seq of the QoS 1 message sent at ``probe_at`` whose PUBACK is
        #: timed (one at a time; 0 = none), and the client's smoothed time to
        #: acknowledge (seconds): it decides whether records may wait for the
        #: acknowledgement (``SQLiteWriter.hold``).
        self.probe = 0
        self.probe_at = 0.0
        self.rtt = 0.0


class SQLiteFile:
    """Opening, checking, creating and loading the store file (a base of
    ``SQLiteStore``, whose ``__init__`` sets the attributes below)."""

    directory: str
    path: str
    sync: str
    clock: Callable[[], float]
    _retained: RetainedTree
    _refs: dict[int, _Ref]
    _index: dict[SessionKey, _Sess]
    _subs_db: dict[SessionKey, dict[str, tuple[Any, ...]]]
    _next_seq: int
    _next_msg: int
    _dirty: bool
    _committing: object | None
    _loaded: bool
    _lock_fd: int
    _conn: sqlite3.Connection | None

    # -- opening --------------------------------------------------------------------------

    def _lock(self) -> int:
        try:
            # Private (#14): payloads are stored in clear.  An existing
            # directory keeps its mode (startup warns when it is loose).
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(self.directory, LOCKNAME), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot use the store directory "
                             f"{self.directory}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise StoreLocked(f"{self.path}: the store is in use by another process") from e
        return fd

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def _connection(self) -> sqlite3.Connection:
        """The working connection (opened on first use)."""
        conn = self._conn
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=" +
                             ("FULL" if self.sync == "always" else "NORMAL"))
            except sqlite3.Error as e:
                raise StoreError(f"{self.path}: cannot open the store: {e}") from e
            self._conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        """Create or check the file; a connection to it."""
        path = self.path
        if not os.path.exists(path):
            self._create()
        elif not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(f"{path}: cannot read and write the store file "
                             "(check its owner and permissions)")
        elif os.path.getsize(path) == 0:
            raise StoreCorrupt(f"{path}: the store file is empty (truncated?); it is not "
                               "replaced: move it away to start with an empty store")
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot open the store: {e}") from e
        try:
            self._check(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _check(self, conn: sqlite3.Connection) -> None:
        path = self.path
        hint = "; it is not replaced: move it away to start with an empty store"
        try:  # read-only checks first: a file that fails them is left untouched
            rows = conn.execute("PRAGMA quick_check").fetchall()
            if rows != [("ok",)]:
                problems = "; ".join(r[0] for r in rows[:3])
                raise StoreCorrupt(f"{path}: the store is damaged ({problems}){hint}")
            names = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not set(TABLES) <= names:
                raise StoreCorrupt(f"{path}: not a vmqtw store (missing tables: "
                                   f"{', '.join(sorted(set(TABLES) - names))}){hint}")
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            raise StoreCorrupt(f"{path}: cannot read the store: {e}{hint}") from e
        if meta.get("application") != APPLICATION:
            raise StoreCorrupt(f"{path}: not a vmqtw store{hint}")
        if meta.get("schema") != SCHEMA_VERSION:
            raise StoreCorrupt(f"{path}: store schema version {meta.get('schema')!r} is not "
                               f"the supported version {SCHEMA_VERSION}{hint}")
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path}: cannot switch the store to WAL mode: {e}") from e
        if mode.lower() != "wal":
            raise StoreError(f"{path}: cannot switch the store to WAL mode (got {mode!r})")

    def _create(self) -> None:
        """A new, empty store, made under a temporary name and renamed into place."""
        tmp = self.path + ".new"
        for name in (tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal"):
            if os.path.exists(name):
                os.remove(name)
        try:
            # Made 0600 before SQLite opens it: SQLite gives the -wal and -shm
            # files the database file's mode (#14: payloads are in clear).
            os.close(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN")
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.executemany("INSERT INTO meta VALUES (?, ?)",
                                 [("application", APPLICATION), ("schema", SCHEMA_VERSION),
                                  ("created", repr(time.time()))])
                conn.execute("COMMIT")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"{self.path}: cannot create the store: {e}") from e

    # -- loading at startup -----------------------------------------------------------------

    def load(self, now: float | None = None,
             progress: RestoreProgress | None = None) -> Loaded:
        """Everything to restore, after purging expired sessions and messages.

        Sessions that were online when the broker stopped without a clean
        shutdown count as disconnected ``now``.  Call before any write.
        ``progress`` reports how far the reading has got while it takes long.
        """
        if self._loaded:
            raise RuntimeError("load() may be called once")
        if self._dirty or self._committing is not None:
            raise RuntimeError("load() must come before any write")
        self._loaded = True
        if now is None:
            now = self.clock()
        conn = self._connection()
        result = Loaded()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:  # one transaction: a store found inconsistent is left as it was
                self._purge(conn, now, result)
                self._read(conn, result, progress)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as e:
            raise StoreCorrupt(f"{self.path}: cannot read the store: {e}; it is not replaced: "
                               "move it away to start with an empty store") from e
        except (KeyError, ValueError, TypeError) as e:  # rows that do not fit together
            raise StoreCorrupt(f"{self.path}: the store is inconsistent ({type(e).__name__}: "
                               f"{e}); it is not replaced: move it away to start with an "
                               "empty store") from e
        return result

    @staticmethod
    def _purge(conn: sqlite3.Connection, now: float, result: Loaded) -> None:
        expired = conn.execute(
            "SELECT mountpoint, client_id FROM sessions WHERE expiry_interval IS NOT NULL "
            "AND disconnected_at IS NOT NULL AND disconnected_at + expiry_interval <= ?",
            (now,)).fetchall()
        for table in _PER_SESSION:
            conn.executemany(f"DELETE FROM {table} WHERE mountpoint = ? AND client_id = ?",
                             expired)
        result.expired_sessions = len(expired)
        conn.execute("UPDATE sessions SET disconnected_at = ? WHERE disconnected_at IS NULL",
                     (now,))
        for table in ("subscriptions", "deliveries", "incoming_qos2"):
            conn.execute(f"DELETE FROM {table} WHERE NOT EXISTS (SELECT 1 FROM sessions s "
                         f"WHERE s.mountpoint = {table}.mountpoint AND "
                         f"s.client_id = {table}.client_id)")
        n = conn.execute(
            "DELETE FROM deliveries WHERE state = ? AND message_id IN (SELECT id FROM messages "
            "WHERE expires_at IS NOT NULL AND expires_at <= ?)", (QUEUED, now)).rowcount
        n += conn.execute("DELETE FROM retained WHERE expires_at IS NOT NULL AND "
                          "expires_at <= ?", (now,)).rowcount
        result.expired_messages = n
        conn.execute("DELETE FROM messages WHERE id NOT IN "
                     "(SELECT message_id FROM deliveries)")

    @staticmethod
    def _rows(conn: sqlite3.Connection, progress: RestoreProgress | None, table: str,
              what: str, query: str) -> Iterable[Any]:
        """The rows of ``query`` on ``table``, counted by ``progress`` if any."""
        if progress is None:
            return conn.execute(query)
        total = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        return progress.over(conn.execute(query), total, what)

    def _read(self, conn: sqlite3.Connection, result: Loaded,
              progress: RestoreProgress | None = None) -> None:
        for mp, topic, payload, qos, props, expires_at in self._rows(
                conn, progress, "retained", "retained messages",
                "SELECT mountpoint, topic, payload, qos, properties, expires_at FROM retained"):
            msg = Message(topic, bytes(payload), qos, True, decode_properties(props), expires_at)
            result.retained.append((mp, topic, msg))
            self._retained.set(mp, topic, msg)
        messages: dict[int, Message] = {}
        for row, topic, payload, qos, retain, props, expires_at in self._rows(
                conn, progress, "messages", "stored messages",
                "SELECT id, topic, payload, qos, retain, properties, expires_at FROM messages"):
            messages[row] = Message(topic, bytes(payload), qos, bool(retain),
                                    decode_properties(props), expires_at)
            self._next_msg = max(self._next_msg, row + 1)
        sessions: dict[SessionKey, StoredSession] = {}
        for mp, cid, expiry, disconnected_at, username in self._rows(
                conn, progress, "sessions", "sessions",
                "SELECT mountpoint, client_id, expiry_interval, disconnected_at, username "
                "FROM sessions ORDER BY mountpoint, client_id"):
            s = StoredSession(mp, cid, expiry, disconnected_at, username)
            sessions[s.key] = s
            self._index[s.key] = _Sess()
            self._subs_db[s.key] = {}
        for mp, cid, tf, qos, nl, rap, rh, sid in self._rows(
                conn, progress, "subscriptions", "subscriptions",
                "SELECT mountpoint, client_id, topic_filter, qos, no_local, "
                "retain_as_published, retain_handling, subscription_id FROM subscriptions"):
            s = sessions[SessionKey(mp, cid)]
            s.subscriptions[tf] = SubOptions(qos, bool(nl), bool(rap), rh)
            if sid:
                s.sub_ids[tf] = sid
            self._subs_db[s.key][tf] = (qos, nl, rap, rh, sid)
        refs = self._refs
        for seq, mp, cid, mid, qos, retain, sub_ids, state, pid in self._rows(
                conn, progress, "deliveries", "queued or inflight messages",
                "SELECT seq, mountpoint, client_id, message_id, qos, retain, sub_ids, state, "
                "packet_id FROM deliveries ORDER BY seq"):
            key = SessionKey(mp, cid)
            message = messages[mid]
            state = DeliveryState(state)  # ValueError (inconsistent) when unknown
            sessions[key].deliveries.append(StoredDelivery(
                message, qos, bool(retain), state, pid, decode_sub_ids(sub_ids)))
            ref = refs.get(id(message))
            if ref is None:
                ref = refs[id(message)] = _Ref(mid, message, new=False)
            ref.refs += 1
            sess = self._index[key]
            sess.entries[seq] = id(message)
            if state == QUEUED:
                sess.queued.setdefault(id(message), deque()).append(seq)
            else:
                sess.inflight[pid] = seq
            self._next_seq = max(self._next_seq, seq + 1)
        for s in sessions.values():  # inflight (in send order) before the queue
            s.deliveries.sort(key=lambda d: d.state == QUEUED)
        for mp, cid, pid in conn.execute(
                "SELECT mountpoint, client_id, packet_id FROM incoming_qos2"):
            key = SessionKey(mp, cid)
            sessions[key].incoming_qos2.add(pid)
            self._index[key].qos2.add(pid)
        result.sessions = list(sessions.values())
