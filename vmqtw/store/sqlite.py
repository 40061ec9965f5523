"""The durable store: SQLite (standard library) in WAL mode, written by one thread.

How writes flow
---------------
The broker calls the store on the reactor thread, once per event (a message
queued for a persistent session, sent, acknowledged; a session created,
changed or deleted; a retained message set or cleared).  Those calls never
touch the database: they update a *pending batch* in memory, where later
calls cancel earlier ones (a message queued and acknowledged before the batch
is written costs no disk write at all; a session changed ten times is written
once).  A single writer thread commits batches: when it is idle, a commit is
scheduled for the end of the current reactor turn; while it is committing,
new calls pile up in the next batch, and everything pending when a commit
starts goes into one transaction (group commit).

``durable()`` returns a Deferred that fires once everything recorded before
the call is committed.  The broker holds PUBACK/PUBREC to a publisher until
then, one ``durable()`` per input batch, not per message.

Sync modes (``persistent_store.sync``)
--------------------------------------
- ``group`` (default): batches, ``synchronous=NORMAL``.  In WAL mode a
  committed transaction is in the operating system's page cache when COMMIT
  returns, so it survives the broker process being killed (SIGKILL, a crash);
  it may be lost if the machine loses power or the kernel crashes before the
  next checkpoint.
- ``always``: batches, ``synchronous=FULL``: every commit fsyncs the WAL, so an
  acknowledged message also survives a power loss.  Costs one fsync per batch.
- ``none``: writes are still batched in the background, but ``durable()``
  fires at once: acknowledgements never wait for the disk; a crash loses what
  was not yet committed (a clean shutdown still writes everything).

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
import queue
import sqlite3
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from vmqtw.codec.packets import SubOptions
from vmqtw.core.message import Message
from vmqtw.core.interfaces import IStore
from vmqtw.core.retained import RetainedTree
from vmqtw.core.values import (
    QUEUED, WAIT_PUBACK, WAIT_PUBCOMP, WAIT_PUBREC, DeliveryState, SessionKey,
)
from vmqtw.logs import Logger
from vmqtw.store.records import (
    Loaded, StoredDelivery, StoredSession, decode_properties, decode_sub_ids,
    encode_properties, encode_sub_ids,
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

    __slots__ = ("queued", "inflight", "entries", "qos2")

    def __init__(self) -> None:
        #: id(message) -> seqs of its queued entries, oldest first.
        self.queued: dict[int, deque[int]] = {}
        #: packet id -> seq of the inflight entry.
        self.inflight: dict[int, int] = {}
        #: seq -> id(message), for every entry.
        self.entries: dict[int, int] = {}
        #: incoming QoS 2 packet ids written (or handed to the writer).
        self.qos2: set[int] = set()


class _Batch:
    """One transaction's worth of changes, built on the reactor thread."""

    __slots__ = ("number", "purge", "sessions", "sub_rows", "sub_deletes", "msg_rows",
                 "entry_rows", "entry_states", "entry_deletes", "msg_deletes",
                 "retained_rows", "retained_deletes", "qos2_rows", "qos2_deletes",
                 "disconnect_all", "waiters", "done", "error")

    def __init__(self, number: int) -> None:
        self.number = number
        self.purge: list[SessionKey] = []
        self.sessions: list[tuple[Any, ...]] = []
        self.sub_rows: list[tuple[Any, ...]] = []
        self.sub_deletes: list[tuple[str, str, str]] = []
        self.msg_rows: list[tuple[Any, ...]] = []
        self.entry_rows: list[list[Any]] = []
        self.entry_states: list[tuple[int, int, int]] = []
        self.entry_deletes: list[tuple[int]] = []
        self.msg_deletes: list[tuple[int]] = []
        self.retained_rows: list[tuple[Any, ...]] = []
        self.retained_deletes: list[tuple[str, str]] = []
        self.qos2_rows: list[tuple[str, str, int]] = []
        self.qos2_deletes: list[tuple[str, str, int]] = []
        self.disconnect_all: float | None = None
        self.waiters: list[Deferred[None]] = []
        self.done = False
        self.error: Failure | None = None

    def empty(self) -> bool:
        return not (self.purge or self.sessions or self.sub_rows or self.sub_deletes or
                    self.msg_rows or self.entry_rows or self.entry_states or
                    self.entry_deletes or self.msg_deletes or self.retained_rows or
                    self.retained_deletes or self.qos2_rows or self.qos2_deletes or
                    self.disconnect_all is not None)


_STOP = object()


@implementer(IStore)
class SQLiteStore:
    """Retained messages, persistent sessions and their QoS 1/2 messages in SQLite.

    ``directory`` holds ``vmqtw.db`` (created if missing, with the directory).
    ``reactor`` needs ``callLater`` and ``callFromThread``; ``clock`` gives the
    wall-clock time recorded for disconnects (the broker's ``clock.seconds``).
    Opening checks the file and raises ``StoreCorrupt``/``StoreError``/
    ``StoreLocked``; call ``load()`` once, before any write.
    """

    log = Logger()

    def __init__(self, directory: str, reactor: Any, sync: str = "group",
                 clock: Callable[[], float] | None = None) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, FILENAME)
        self.reactor = reactor
        self.sync = sync
        self.clock = clock if clock is not None else time.time
        self._retained = RetainedTree()
        # index
        self._refs: dict[int, _Ref] = {}
        self._index: dict[SessionKey, _Sess] = {}
        self._subs_db: dict[SessionKey, dict[str, tuple[Any, ...]]] = {}
        self._next_seq = 1
        self._next_msg = 1
        # pending batch
        self._p_sessions: dict[SessionKey, list[Any]] = {}
        self._p_msgs: dict[int, Message | None] = {}
        self._p_ins: dict[int, list[Any]] = {}
        self._p_state: dict[int, tuple[int, int]] = {}  # seq -> (state, packet id)
        self._p_del: set[int] = set()
        self._p_retained: dict[tuple[str, str], Message | None] = {}
        self._p_qos2: dict[tuple[str, str, int], bool] = {}
        self._p_disconnect_all: float | None = None
        self._p_waiters: list[Deferred[None]] = []
        self._dirty = False
        # writer
        self._scheduled: Any = None
        self._committing: _Batch | None = None
        self._batches = 0
        self._failed: Failure | None = None
        self._closed = False
        self._loaded = False
        #: Transactions committed so far (tests and diagnostics).
        self.transactions = 0
        self._lock_fd = self._lock()
        try:
            self._open().close()
        except BaseException:
            self._unlock()
            raise
        # The working connection and the writer thread start on first use (load()
        # or the first commit), not here: twistd forks to daemonize after the
        # store is opened, and neither threads nor SQLite connections survive that.
        self._conn: sqlite3.Connection | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    # -- opening --------------------------------------------------------------------------

    def _lock(self) -> int:
        try:
            os.makedirs(self.directory, exist_ok=True)
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

    def load(self, now: float | None = None) -> Loaded:
        """Everything to restore, after purging expired sessions and messages.

        Sessions that were online when the broker stopped without a clean
        shutdown count as disconnected ``now``.  Call before any write.
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
                self._read(conn, result)
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

    def _read(self, conn: sqlite3.Connection, result: Loaded) -> None:
        for mp, topic, payload, qos, props, expires_at in conn.execute(
                "SELECT mountpoint, topic, payload, qos, properties, expires_at FROM retained"):
            msg = Message(topic, bytes(payload), qos, True, decode_properties(props), expires_at)
            result.retained.append((mp, topic, msg))
            self._retained.set(mp, topic, msg)
        messages: dict[int, Message] = {}
        for row, topic, payload, qos, retain, props, expires_at in conn.execute(
                "SELECT id, topic, payload, qos, retain, properties, expires_at FROM messages"):
            messages[row] = Message(topic, bytes(payload), qos, bool(retain),
                                    decode_properties(props), expires_at)
            self._next_msg = max(self._next_msg, row + 1)
        sessions: dict[SessionKey, StoredSession] = {}
        for mp, cid, expiry, disconnected_at, username in conn.execute(
                "SELECT mountpoint, client_id, expiry_interval, disconnected_at, username "
                "FROM sessions ORDER BY mountpoint, client_id"):
            s = StoredSession(mp, cid, expiry, disconnected_at, username)
            sessions[s.key] = s
            self._index[s.key] = _Sess()
            self._subs_db[s.key] = {}
        for mp, cid, tf, qos, nl, rap, rh, sid in conn.execute(
                "SELECT mountpoint, client_id, topic_filter, qos, no_local, "
                "retain_as_published, retain_handling, subscription_id FROM subscriptions"):
            s = sessions[SessionKey(mp, cid)]
            s.subscriptions[tf] = SubOptions(qos, bool(nl), bool(rap), rh)
            if sid:
                s.sub_ids[tf] = sid
            self._subs_db[s.key][tf] = (qos, nl, rap, rh, sid)
        refs = self._refs
        for seq, mp, cid, mid, qos, retain, sub_ids, state, pid in conn.execute(
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

    # -- IStore: retained messages --------------------------------------------------------

    def retained_set(self, mountpoint: str, topic: str, message: Message | None) -> None:
        self._retained.set(mountpoint, topic, message)
        self._p_retained[(mountpoint, topic)] = message
        self._changed()

    def retained_match(self, mountpoint: str, topic_filter: str) -> list[Message]:
        return self._retained.match(mountpoint, topic_filter)

    def retained_count(self) -> int:
        return len(self._retained)

    def retained_tree(self) -> RetainedTree:
        """The tree itself, read-only: the broker walks it in slices and checks
        the retained quotas against it."""
        return self._retained

    def retained_items(self) -> Iterable[tuple[str, str, Message]]:
        return self._retained.items()

    # -- IStore: sessions -----------------------------------------------------------------

    def session_updated(self, session: Any) -> None:
        """Record ``session``'s settings and subscriptions (read when the batch is
        handed to the writer, so many updates in one batch cost one write)."""
        key = session.key
        disconnected_at = None if session.conn is not None else self.clock()
        pending = self._p_sessions.get(key)
        if pending is None:
            self._p_sessions[key] = [False, session, disconnected_at]
        else:
            pending[1] = session
            pending[2] = disconnected_at
        if key not in self._index:
            self._index[key] = _Sess()
        self._changed()

    def session_deleted(self, key: SessionKey) -> None:
        sess = self._index.pop(key, None)
        if sess is not None:
            p_ins, p_state, p_del = self._p_ins, self._p_state, self._p_del
            for seq, mkey in sess.entries.items():
                if p_ins.pop(seq, None) is None:
                    p_state.pop(seq, None)
                    p_del.discard(seq)  # the purge deletes them
                self._unref(mkey)
        if self._p_qos2:
            mp, cid = key
            for k in [k for k in self._p_qos2 if k[0] == mp and k[1] == cid]:
                del self._p_qos2[k]
        self._p_sessions[key] = [True, None, None]
        self._changed()

    # -- IStore and more: deliveries ---------------------------------------------------------

    def message_queued(self, key: SessionKey, message: Message, qos: int,
                       retain: bool = False, sub_ids: tuple[int, ...] = ()) -> None:
        """``message`` was queued for ``key`` (QoS 1/2, not yet sent)."""
        sess = self._index.get(key)
        if sess is None:
            sess = self._index[key] = _Sess()
        seq = self._add_entry(sess, key, message, qos, retain, sub_ids, QUEUED, None)
        seqs = sess.queued.get(id(message))
        if seqs is None:
            sess.queued[id(message)] = deque((seq,))
        else:
            seqs.append(seq)

    def message_dequeued(self, key: SessionKey, message: Message) -> None:
        """The oldest queued copy of ``message`` left ``key``'s queue (sent or dropped)."""
        sess = self._index.get(key)
        if sess is None:
            return
        seqs = sess.queued.get(id(message))
        if not seqs:
            return
        seq = seqs.popleft()
        if not seqs:
            del sess.queued[id(message)]
        self._remove_entry(sess, seq)

    def message_sent(self, key: SessionKey, message: Message, qos: int, retain: bool,
                     packet_id: int, sub_ids: tuple[int, ...] = (),
                     queued: bool = False) -> None:
        """``message`` was sent to ``key`` with ``packet_id`` and waits for PUBACK
        (QoS 1) or PUBREC (QoS 2).  With ``queued`` it is the oldest queued copy
        of ``message``: that entry changes state (keeping its place in the order,
        which is the send order) instead of one entry going and another coming."""
        sess = self._index.get(key)
        if sess is None:
            sess = self._index[key] = _Sess()
        inflight = sess.inflight
        old = inflight.pop(packet_id, None)
        if old is not None:
            self._remove_entry(sess, old)
        state = WAIT_PUBACK if qos == 1 else WAIT_PUBREC
        if queued:
            mkey = id(message)
            seqs = sess.queued.get(mkey)
            if seqs:
                seq = seqs.popleft()
                if not seqs:
                    del sess.queued[mkey]
                row = self._p_ins.get(seq)
                if row is not None:  # not written yet: write it as sent
                    row[7] = state
                    row[8] = packet_id
                else:
                    self._p_state[seq] = (state, packet_id)
                    if not self._dirty:
                        self._changed()
                inflight[packet_id] = seq
                return
        inflight[packet_id] = self._add_entry(sess, key, message, qos, retain, sub_ids,
                                              state, packet_id)

    def message_released(self, key: SessionKey, packet_id: int) -> None:
        """PUBREC received for ``packet_id``: PUBREL sent, waiting for PUBCOMP."""
        sess = self._index.get(key)
        if sess is None:
            return
        seq = sess.inflight.get(packet_id)
        if seq is None:
            return
        row = self._p_ins.get(seq)
        if row is not None:
            row[7] = WAIT_PUBCOMP
        else:
            self._p_state[seq] = (WAIT_PUBCOMP, packet_id)
        self._changed()

    def message_acked(self, key: SessionKey, packet_id: int) -> None:
        """The inflight message ``packet_id`` of ``key`` is done (PUBACK, PUBCOMP,
        a failed PUBREC) or was dropped."""
        sess = self._index.get(key)
        if sess is None:
            return
        seq = sess.inflight.pop(packet_id, None)
        if seq is not None:
            self._remove_entry(sess, seq)

    def qos2_received(self, key: SessionKey, packet_id: int) -> None:
        """An incoming QoS 2 PUBLISH ``packet_id`` was routed; PUBREL to come."""
        self._p_qos2[(key[0], key[1], packet_id)] = True
        self._changed()

    def qos2_released(self, key: SessionKey, packet_id: int) -> None:
        """PUBREL for an incoming QoS 2 ``packet_id``."""
        k = (key[0], key[1], packet_id)
        sess = self._index.get(key)
        if sess is not None and packet_id in sess.qos2:
            self._p_qos2[k] = False
            self._changed()
        else:
            self._p_qos2.pop(k, None)

    def sessions_disconnected(self) -> None:
        """Every recorded session is offline from now (clean shutdown)."""
        self._p_disconnect_all = self.clock()
        self._changed()

    def _add_entry(self, sess: _Sess, key: SessionKey, message: Message, qos: int,
                   retain: bool, sub_ids: tuple[int, ...], state: int,
                   packet_id: int | None) -> int:
        mkey = id(message)
        ref = self._refs.get(mkey)
        if ref is None:
            row = self._next_msg
            self._next_msg = row + 1
            ref = self._refs[mkey] = _Ref(row, message, new=True)
            self._p_msgs[row] = message
        ref.refs += 1
        seq = self._next_seq
        self._next_seq = seq + 1
        self._p_ins[seq] = [seq, key[0], key[1], ref.row, qos, 1 if retain else 0,
                            encode_sub_ids(sub_ids) if sub_ids else None, state, packet_id]
        sess.entries[seq] = mkey
        if not self._dirty:
            self._changed()
        return seq

    def _remove_entry(self, sess: _Sess, seq: int) -> None:
        mkey = sess.entries.pop(seq)
        if self._p_ins.pop(seq, None) is None:
            self._p_state.pop(seq, None)
            self._p_del.add(seq)
            self._changed()
        self._unref(mkey)

    def _unref(self, mkey: int) -> None:
        ref = self._refs[mkey]
        ref.refs -= 1
        if ref.refs:
            return
        del self._refs[mkey]
        if ref.new:
            self._p_msgs.pop(ref.row, None)
        else:
            self._p_msgs[ref.row] = None
            self._changed()

    # -- the durability barrier ---------------------------------------------------------------

    def durable(self) -> Deferred[None]:
        """Fires when everything recorded before this call is committed (at once
        with ``sync = none``); fails with StoreError if a commit failed."""
        if self._failed is not None:
            return fail(self._failed)
        if self.sync == "none" or self._closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        if self._dirty:
            self._p_waiters.append(d)
        elif self._committing is not None:
            self._committing.waiters.append(d)
        else:
            d.callback(None)
        return d

    def unsynced(self) -> bool:
        """True when something recorded is not handed to the writer yet (so
        output that depends on it must wait for ``durable()``); never with
        ``sync = none``."""
        return self._dirty and self.sync != "none" and not self._closed

    def pending(self) -> bool:
        """True while something recorded is not committed yet."""
        return self._dirty or self._committing is not None

    # -- batching -----------------------------------------------------------------------------

    def _changed(self) -> None:
        if self._dirty:
            return
        self._dirty = True
        if self._committing is None and self._scheduled is None and not self._closed:
            self._scheduled = self.reactor.callLater(0, self._start_commit)

    def _start_commit(self) -> None:
        self._scheduled = None
        if self._committing is not None or not self._dirty or self._closed:
            return
        if self._thread is None:
            try:
                self._connection()
            except StoreError:
                self._dirty = False
                self._failed = Failure()
                self.log.failure("cannot write to the store {path}", self._failed,
                                 path=self.path)
                waiters, self._p_waiters = self._p_waiters, []
                for d in waiters:
                    d.errback(self._failed)
                return
            self._thread = threading.Thread(target=self._writer, name="vmqtw-store-writer",
                                            daemon=True)
            self._thread.start()
        batch = self._handoff()
        self._committing = batch
        self._queue.put(batch)

    def _handoff(self) -> _Batch:
        """Turn the pending changes into a batch (reactor thread) and start afresh."""
        self._batches += 1
        b = _Batch(self._batches)
        for key, (purge, session, disconnected_at) in self._p_sessions.items():
            if purge:
                b.purge.append(key)
                self._subs_db.pop(key, None)
            if session is None:
                continue
            mp, cid = key
            b.sessions.append((mp, cid, session.expiry_interval, disconnected_at,
                               session.username))
            sub_ids = session.sub_ids
            now = {f: (o.qos, 1 if o.no_local else 0, 1 if o.retain_as_published else 0,
                       o.retain_handling, sub_ids.get(f))
                   for f, o in session.subscriptions.items()}
            old = self._subs_db.get(key, {})
            for f, v in now.items():
                if old.get(f) != v:
                    b.sub_rows.append((mp, cid, f, *v))
            for f in old:
                if f not in now:
                    b.sub_deletes.append((mp, cid, f))
            self._subs_db[key] = now
        for row, message in self._p_msgs.items():
            if message is None:
                b.msg_deletes.append((row,))
                continue
            ref = self._refs.get(id(message))
            if ref is not None:
                ref.new = False
            b.msg_rows.append((row, message.topic, message.payload, message.qos,
                               1 if message.retain else 0,
                               encode_properties(message.properties), message.expires_at))
        b.entry_rows = list(self._p_ins.values())
        b.entry_states = [(state, pid, seq) for seq, (state, pid) in self._p_state.items()]
        b.entry_deletes = [(seq,) for seq in self._p_del]
        for (mp, topic), message in self._p_retained.items():
            if message is None:
                b.retained_deletes.append((mp, topic))
            else:
                b.retained_rows.append((mp, topic, message.payload, message.qos,
                                        encode_properties(message.properties),
                                        message.expires_at))
        index = self._index
        for (mp, cid, pid), add in self._p_qos2.items():
            sess = index.get(SessionKey(mp, cid))
            if add:
                b.qos2_rows.append((mp, cid, pid))
                if sess is not None:
                    sess.qos2.add(pid)
            else:
                b.qos2_deletes.append((mp, cid, pid))
                if sess is not None:
                    sess.qos2.discard(pid)
        b.disconnect_all = self._p_disconnect_all
        b.waiters = self._p_waiters
        self._p_sessions = {}
        self._p_msgs = {}
        self._p_ins = {}
        self._p_state = {}
        self._p_del = set()
        self._p_retained = {}
        self._p_qos2 = {}
        self._p_disconnect_all = None
        self._p_waiters = []
        self._dirty = False
        return b

    # -- the writer thread ----------------------------------------------------------------------

    def _writer(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is _STOP:
                return
            try:
                self._write(batch)
            except Exception:
                batch.error = Failure()
            try:
                self.reactor.callFromThread(self._committed, batch)
            except Exception:  # the reactor is gone: close() handles the batch
                pass

    def _write(self, b: _Batch) -> None:
        if b.empty():
            return
        c = self._conn
        assert c is not None
        c.execute("BEGIN")
        try:
            for table in _PER_SESSION:
                if b.purge:
                    c.executemany(f"DELETE FROM {table} WHERE mountpoint = ? AND client_id = ?",
                                  b.purge)
            if b.sessions:
                c.executemany("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?)",
                              b.sessions)
            if b.sub_deletes:
                c.executemany("DELETE FROM subscriptions WHERE mountpoint = ? AND "
                              "client_id = ? AND topic_filter = ?", b.sub_deletes)
            if b.sub_rows:
                c.executemany("INSERT OR REPLACE INTO subscriptions VALUES "
                              "(?, ?, ?, ?, ?, ?, ?, ?)", b.sub_rows)
            if b.msg_rows:
                c.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)", b.msg_rows)
            if b.entry_deletes:
                c.executemany("DELETE FROM deliveries WHERE seq = ?", b.entry_deletes)
            if b.entry_rows:
                c.executemany("INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              b.entry_rows)
            if b.entry_states:
                c.executemany("UPDATE deliveries SET state = ?, packet_id = ? WHERE seq = ?",
                              b.entry_states)
            if b.msg_deletes:
                c.executemany("DELETE FROM messages WHERE id = ?", b.msg_deletes)
            if b.retained_deletes:
                c.executemany("DELETE FROM retained WHERE mountpoint = ? AND topic = ?",
                              b.retained_deletes)
            if b.retained_rows:
                c.executemany("INSERT OR REPLACE INTO retained VALUES (?, ?, ?, ?, ?, ?)",
                              b.retained_rows)
            if b.qos2_deletes:
                c.executemany("DELETE FROM incoming_qos2 WHERE mountpoint = ? AND "
                              "client_id = ? AND packet_id = ?", b.qos2_deletes)
            if b.qos2_rows:
                c.executemany("INSERT OR REPLACE INTO incoming_qos2 VALUES (?, ?, ?)",
                              b.qos2_rows)
            if b.disconnect_all is not None:
                c.execute("UPDATE sessions SET disconnected_at = ? WHERE disconnected_at IS NULL",
                          (b.disconnect_all,))
            c.execute("COMMIT")
        except BaseException:
            try:
                c.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        self.transactions += 1

    def _committed(self, batch: _Batch) -> None:
        """Reactor thread: ``batch`` is on disk (or failed); release its waiters."""
        if batch.done:
            return
        error = batch.error
        batch.done = True
        if self._committing is batch:
            self._committing = None
        if error is not None and self._failed is None:
            self.log.failure("writing to the store {path} failed: acknowledgements that "
                             "wait for it fail from now on", error, path=self.path)
            self._failed = Failure(StoreError(
                f"{self.path}: writing to the store failed: {error.getErrorMessage()}"))
        for d in batch.waiters:
            if error is None:
                d.callback(None)
            else:
                d.errback(self._failed)
        if self._dirty and self._committing is None and not self._closed:
            if self._failed is not None:
                # Nothing more reaches the disk; fail the waiters now.
                waiters, self._p_waiters = self._p_waiters, []
                for d in waiters:
                    d.errback(self._failed)
                return
            self._start_commit()

    # -- shutdown -------------------------------------------------------------------------------

    def close(self) -> None:
        """Write everything pending, stop the writer and close the database.

        Blocks until the last batch is committed (it runs at shutdown)."""
        if self._closed:
            return
        self._closed = True
        if self._scheduled is not None:
            if self._scheduled.active():
                self._scheduled.cancel()
            self._scheduled = None
        batches = []
        if self._committing is not None:
            batches.append(self._committing)
        last = self._handoff() if self._dirty else None
        if self._thread is not None:
            if last is not None:
                batches.append(last)
                self._queue.put(last)
            self._queue.put(_STOP)
            self._thread.join()
        elif last is not None:  # nothing was ever committed: write it here
            batches.append(last)
            try:
                self._connection()
                self._write(last)
            except Exception:
                last.error = Failure()
        # The writer's callFromThread notifications may never run (the reactor
        # may be stopping): settle the batches here; _committed ignores repeats.
        for batch in batches:
            if not batch.done:
                self._committed(batch)
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._conn.close()
            self._conn = None
        self._unlock()

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path} sync={self.sync}>"
