"""The SQLite store's writer: pending batches, group commit, the writer thread.

``SQLiteWriter`` is the base of ``vmqtw.store.sqlite.SQLiteStore`` that turns
the changes the ``IStore`` calls record (the pending ``_p_*`` state) into one
``_Batch`` per transaction, hands it to a single writer thread, releases the
``durable()`` waiters when it is committed, and writes the last batch on
``close()``.  See ``vmqtw.store.sqlite`` for how writes flow and the sync
modes.  The state it uses is set up by ``SQLiteStore.__init__``.
"""
from __future__ import annotations

import queue
import sqlite3
import threading
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from vmqtw.core.message import Message
from vmqtw.core.values import SessionKey
from vmqtw.logs import Logger
from vmqtw.store.records import encode_properties
from vmqtw.store.sqlite_file import _PER_SESSION, SQLiteFile, StoreError



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


class SQLiteWriter(SQLiteFile):
    """Batching and the writer thread (a base of ``SQLiteStore``, whose
    ``__init__`` sets the attributes below)."""

    log: Logger
    reactor: Any
    transactions: int
    _p_sessions: dict[SessionKey, list[Any]]
    _p_msgs: dict[int, Message | None]
    _p_ins: dict[int, list[Any]]
    _p_state: dict[int, tuple[int, int]]
    _p_del: set[int]
    _p_retained: dict[tuple[str, str], Message | None]
    _p_qos2: dict[tuple[str, str, int], bool]
    _p_disconnect_all: float | None
    _p_waiters: list[Deferred[None]]
    _scheduled: Any
    _committing: _Batch | None
    _batches: int
    _failed: Failure | None
    _closed: bool
    _queue: queue.SimpleQueue[Any]
    _thread: threading.Thread | None


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
