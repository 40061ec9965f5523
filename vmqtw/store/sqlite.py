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

Held records
------------
Most QoS 1 messages to a persistent session go to a connected client that
acknowledges within a round trip.  Such a record (``message_sent``, QoS 1, for
a session whose measured time to acknowledge is under half of ``hold``) is not
handed to the writer at once: the commit waits until the oldest pending record
is ``hold`` old (or for a record that may not wait: a queued message, QoS 2,
a session change...).  A record acknowledged meanwhile is cancelled: never
written, and a ``durable()`` waiter that depended only on cancelled records
(and on the batch being committed, if any) fires without a commit: the
message it waited for was delivered.  So what ``durable()`` promises becomes:
everything recorded before the call is committed, or no longer needed because
its message was delivered and acknowledged.

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

The file (schema, checks, loading) is handled by ``vmqtw.store.sqlite_file``,
the batches and the writer thread by ``vmqtw.store.sqlite_writer``; this
module is the ``IStore`` facade and keeps exporting their public names.
"""
from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from vmqtw.core.message import Message
from vmqtw.core.interfaces import IStore
from vmqtw.core.retained import RetainedTree
from vmqtw.core.values import QUEUED, WAIT_PUBACK, WAIT_PUBCOMP, WAIT_PUBREC, SessionKey
from vmqtw.logs import Logger
from vmqtw.store.records import Loaded, StoredDelivery, StoredSession, encode_sub_ids
from vmqtw.store.retained import RetainedMixin
from vmqtw.store.sqlite_file import (
    APPLICATION, FILENAME, LOCKNAME, SCHEMA, SCHEMA_VERSION, SYNC_MODES, TABLES, StoreCorrupt,
    StoreError, StoreLocked, _Ref, _Sess,
)
from vmqtw.store.sqlite_writer import SQLiteWriter, _Batch

__all__ = [
    "APPLICATION", "FILENAME", "LOCKNAME", "SCHEMA", "SCHEMA_VERSION", "SYNC_MODES", "TABLES",
    "Loaded", "SQLiteStore", "StoreCorrupt", "StoreError", "StoreLocked", "StoredDelivery",
    "StoredSession",
]


@implementer(IStore)
class SQLiteStore(RetainedMixin, SQLiteWriter):
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
        self._seconds: Callable[[], float] = getattr(reactor, "seconds", time.monotonic)
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
        #: durable() waiters of the pending batch: (mark, Deferred), oldest first;
        #: a waiter depends on the pending inserts with a seq below its mark.
        self._p_waiters: deque[tuple[int, Deferred[None]]] = deque()
        #: ``_next_seq`` at the first pending change that is not a cancellable
        #: insert (waiters from then on wait for the commit); None = none yet.
        self._p_pin: int | None = None
        #: The pending batch has something that may not wait (see ``hold``).
        self._p_urgent = False
        #: The oldest pending insert's seq (or ``_next_seq`` when none).
        self._p_lo = 0
        #: (first seq, clock time) marks of held inserts, oldest first.
        self._p_stamps: deque[tuple[int, float]] = deque()
        self._released: list[Deferred[None]] = []
        self._release_call: Any = None
        self._dirty = False
        # writer
        self._scheduled: Any = None
        self._scheduled_held = False  # _scheduled waits for ``hold``
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

    # -- IStore: retained messages --------------------------------------------------------

    def retained_set(self, mountpoint: str, topic: str, message: Message | None) -> None:
        """Set it in the tree (``RetainedMixin`` answers the other retained_*
        calls from it) and record it for the next batch."""
        self._retained.set(mountpoint, topic, message)
        self._p_retained[(mountpoint, topic)] = message
        self._changed()

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
                row = p_ins.pop(seq, None)
                if row is None:
                    p_state.pop(seq, None)
                    p_del.discard(seq)  # the purge deletes them
                elif row[3].__class__ is not int:  # held: it took no message reference
                    continue
                self._unref(mkey)
        if self._p_qos2:
            mp, cid = key
            for k in [k for k in self._p_qos2 if k[0] == mp and k[1] == cid]:
                del self._p_qos2[k]
        self._p_sessions[key] = [True, None, None]
        self._changed()
        self._advance()

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
        if qos == 1 and not queued and sess.rtt < self.hold / 2:
            self._sent_held(sess, key, message, retain, sub_ids, packet_id)
            return
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
                    if self._p_pin is None:
                        self._changed()
                inflight[packet_id] = seq
                return
        seq = self._add_entry(sess, key, message, qos, retain, sub_ids, state, packet_id)
        if qos == 1 and not sess.probe:  # time this one's PUBACK (see _sent_held)
            sess.probe = seq
            sess.probe_at = self._seconds()
        inflight[packet_id] = seq

    def _sent_held(self, sess: _Sess, key: SessionKey, message: Message, retain: bool,
                   sub_ids: tuple[int, ...], packet_id: int) -> None:
        """``message_sent`` for a QoS 1 message to a client that acknowledges
        within half of ``hold`` on average: the record may wait (its PUBACK
        usually comes first, and the record is then never written).  QoS 2 and
        queued messages are not held: a QoS 2 PUBLISH waits for its record, and
        a queue may wait for long.

        Like ``_add_entry``, inlined (this runs once per message), except that
        the record holds the message itself where the others hold its row id:
        the reference to a ``messages`` row is taken only if the record is
        handed to the writer (``_handoff``), so a record cancelled before that
        costs no ``_Ref`` and no pending message row."""
        seq = self._next_seq
        self._next_seq = seq + 1
        p_ins = self._p_ins
        stamps = self._p_stamps
        if not p_ins:
            self._p_lo = seq
            stamps.clear()
        p_ins[seq] = [seq, key[0], key[1], message, 1, 1 if retain else 0,
                      encode_sub_ids(sub_ids) if sub_ids else None, WAIT_PUBACK, packet_id]
        sess.entries[seq] = id(message)
        sess.inflight[packet_id] = seq
        now = self._seconds()
        if not stamps or now - stamps[-1][1] >= self.hold / 4:
            stamps.append((seq, now))
        if not sess.probe:  # time this one's PUBACK
            sess.probe = seq
            sess.probe_at = now
        if not self._dirty:
            self._dirty = True
            if self._committing is None and self._scheduled is None and not self._closed:
                self._scheduled = self.reactor.callLater(self.hold, self._start_commit)
                self._scheduled_held = True

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
        """Record a delivery that may not wait (see ``_sent_held`` for one that may)."""
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
        p_ins = self._p_ins
        if not p_ins:
            self._p_lo = seq
            self._p_stamps.clear()
        p_ins[seq] = [seq, key[0], key[1], ref.row, qos, 1 if retain else 0,
                      encode_sub_ids(sub_ids) if sub_ids else None, state, packet_id]
        sess.entries[seq] = mkey
        if not self._p_urgent:
            self._urgent()
        return seq

    def _remove_entry(self, sess: _Sess, seq: int) -> None:
        mkey = sess.entries.pop(seq)
        if seq == sess.probe:
            sess.probe = 0
            # (capped: a client that was away a while is fast again soon)
            sample = min(max(self._seconds() - sess.probe_at, 0.0), 8 * self.hold)
            sess.rtt += (sample - sess.rtt) / 4
        row = self._p_ins.pop(seq, None)
        if row is None:  # written (or handed to the writer): delete it
            self._p_state.pop(seq, None)
            self._p_del.add(seq)
            self._changed()
        else:  # cancelled, never written
            if seq == self._p_lo:  # the oldest pending insert
                self._advance()
            if row[3].__class__ is not int:  # held: it took no message reference
                return
        ref = self._refs[mkey]  # _unref, inlined
        ref.refs -= 1
        if ref.refs:
            return
        del self._refs[mkey]
        if ref.new:
            self._p_msgs.pop(ref.row, None)
        else:
            self._p_msgs[ref.row] = None
            self._changed()

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

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path} sync={self.sync}>"
