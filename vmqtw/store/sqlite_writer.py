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
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from vmqtw.core.message import Message
from vmqtw.core.values import SessionKey
from vmqtw.logs import Logger
from vmqtw.store.records import encode_properties
from vmqtw.store.sqlite_file import _PER_SESSION, SQLiteFile, StoreError, _Ref



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
    _p_waiters: deque[tuple[int, Deferred[None]]]
    _p_pin: int | None
    _p_urgent: bool
    _p_lo: int
    _p_stamps: deque[tuple[int, float]]
    _released: list[Deferred[None]]
    _release_call: Any
    _seconds: Callable[[], float]
    _scheduled: Any
    _scheduled_held: bool
    _committing: _Batch | None
    _batches: int
    _failed: Failure | None
    _closed: bool
    _queue: queue.SimpleQueue[Any]
    _thread: threading.Thread | None

    #: Seconds a record of a QoS 1 message sent to a connected client may wait
    #: before it is handed to the writer (0 = no wait).  Such a message is
    #: usually acknowledged within a network round trip; its record is then
    #: cancelled before it is written (no insert, no delete), and the waiters
    #: that depended only on it are released at once.  A record that lives
    #: longer is written, and what waits for it waits ``hold`` longer.
    hold: float = 0.01

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
            # Inserts recorded before now that are still pending, or another
            # pending change made before now: wait for the pending batch (or
            # until those inserts are cancelled, see ``_release``).
            mark = self._next_seq
            pin = self._p_pin
            if (pin is not None and mark >= pin) or (self._p_ins and self._p_lo < mark):
                self._p_waiters.append((mark, d))
                return d
        if self._committing is not None:
            self._committing.waiters.append(d)
        else:
            d.callback(None)
        return d

    def unsynced(self) -> bool:
        """True when something recorded is not handed to the writer yet (so
        output that depends on it must wait for ``durable()``); never with
        ``sync = none``.  Records cancelled before they were written (a
        delivery acknowledged meanwhile) do not count."""
        return (self._p_urgent or bool(self._p_ins)) and self.sync != "none" and \
            not self._closed

    def pending(self) -> bool:
        """True while something recorded is not committed yet."""
        return self._dirty or self._committing is not None

    # -- batching -----------------------------------------------------------------------------

    def _changed(self) -> None:
        """A pending change other than a delivery insert: it is written as
        soon as the writer is free, and waiters from now on wait for it."""
        if self._p_pin is not None:
            return
        self._p_pin = self._next_seq
        self._urgent()

    def _urgent(self) -> None:
        """Something pending may not wait for ``hold``: commit when the writer is free."""
        self._p_urgent = True
        self._dirty = True
        if self._committing is not None or self._closed:
            return  # _committed starts the next batch
        call = self._scheduled
        if call is None:
            self._scheduled = self.reactor.callLater(0, self._start_commit)
            self._scheduled_held = False
        elif self._scheduled_held:
            call.reset(0)
            self._scheduled_held = False

    def _advance(self) -> None:
        """The oldest pending insert is gone: find the next one, and release
        the waiters that depended only on cancelled inserts."""
        p_ins = self._p_ins
        if p_ins:
            lo = self._p_lo
            while lo not in p_ins:  # ends: every pending seq is >= _p_lo
                lo += 1
        else:
            lo = self._next_seq
        self._p_lo = lo
        waiters = self._p_waiters
        if waiters and waiters[0][0] <= lo:
            self._release(lo)

    def _release(self, lo: int) -> None:
        """Waiters whose pending inserts were all cancelled (every seq below
        their mark is gone) and that came before any other pending change now
        wait only for the batch being committed, or for nothing."""
        waiters = self._p_waiters
        pin = self._p_pin
        released = []
        while waiters:
            mark = waiters[0][0]
            if mark > lo or (pin is not None and mark >= pin):
                break
            released.append(waiters.popleft()[1])
        if not released:
            return
        if self._committing is not None:
            self._committing.waiters.extend(released)
            return
        # Fired on the next reactor turn, not from inside the acknowledgement
        # that cancelled the insert (another connection's input).
        self._released.extend(released)
        if self._release_call is None:
            self._release_call = self.reactor.callLater(0, self._fire_released)

    def _fire_released(self) -> None:
        self._release_call = None
        released, self._released = self._released, []
        for d in released:
            d.callback(None)

    def _hold_left(self) -> float | None:
        """Seconds until the oldest pending (held) insert is ``hold`` old, or
        None when every pending insert was cancelled."""
        if not self._p_ins:
            return None
        lo = self._p_lo
        stamps = self._p_stamps
        while len(stamps) > 1 and stamps[1][0] <= lo:
            stamps.popleft()
        now = self._seconds()
        first, stamped = stamps[0]
        if stamped > now:  # the clock was set back: count from now
            stamps.clear()
            stamps.append((first, now))
            stamped = now
        return stamped + self.hold - now

    def _start_commit(self) -> None:
        call = self._scheduled
        if call is not None:
            if call.active():
                call.cancel()
            self._scheduled = None
        if self._committing is not None or not self._dirty or self._closed:
            return
        if not self._p_urgent:
            left = self._hold_left()
            if left is None:  # everything pending was cancelled: nothing to write
                self._dirty = False
                self._p_stamps.clear()
                self._advance()
                return
            if left > 0:
                self._scheduled = self.reactor.callLater(left, self._start_commit)
                self._scheduled_held = True
                return
        if self._thread is None:
            try:
                self._connection()
            except StoreError:
                self._dirty = False
                self._failed = Failure()
                self.log.failure("cannot write to the store {path}", self._failed,
                                 path=self.path)
                waiters, self._p_waiters = self._p_waiters, deque()
                for _, d in waiters:
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
        # Held records (``_sent_held``) hold their message, not yet a reference
        # to its row: take it now that they are written.
        refs = self._refs
        for rec in self._p_ins.values():
            message = rec[3]
            if message.__class__ is int:
                continue
            mkey = id(message)
            ref = refs.get(mkey)
            if ref is None:
                msg_row = self._next_msg
                self._next_msg = msg_row + 1
                ref = refs[mkey] = _Ref(msg_row, message, new=True)
                self._p_msgs[msg_row] = message
            ref.refs += 1
            rec[3] = ref.row
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
        b.waiters = [d for _, d in self._p_waiters]
        self._p_sessions = {}
        self._p_msgs = {}
        self._p_ins = {}
        self._p_state = {}
        self._p_del = set()
        self._p_retained = {}
        self._p_qos2 = {}
        self._p_disconnect_all = None
        self._p_waiters = deque()
        self._p_pin = None
        self._p_urgent = False
        self._p_lo = self._next_seq
        self._p_stamps.clear()
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
                waiters, self._p_waiters = self._p_waiters, deque()
                for _, d in waiters:
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
        if self._release_call is not None:
            if self._release_call.active():
                self._release_call.cancel()
            self._fire_released()
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
