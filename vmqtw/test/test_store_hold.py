"""The SQLite store's held records: a QoS 1 message sent to a client that
acknowledges quickly is not written at once (``SQLiteWriter.hold``); acknowledged
before it is written, its record is cancelled and what waited for it is released
without a commit.  Whatever happens, an acknowledgement the broker gave (a
``durable()`` that fired) means the message is either delivered or committed."""
from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from types import SimpleNamespace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from vmqtw.core.message import Message
from vmqtw.store import FILENAME, SQLiteStore
from vmqtw.store.records import WAIT_PUBACK, SessionKey

KEY = SessionKey("", "c1")
KEY2 = SessionKey("", "c2")


def turn() -> Deferred[None]:
    """One reactor turn (callLater(0) calls run, thread results arrive)."""
    return deferLater(reactor, 0, lambda: None)


class HoldTestCase(TestCase):

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmqtw-hold-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def open(self, hold: float = 30.0, sync: str = "group") -> SQLiteStore:
        """A loaded store; by default records are held far longer than a test
        runs, so nothing held is written unless something else forces it."""
        store = SQLiteStore(self.dir, reactor, sync, clock=lambda: 1000.0)
        store.hold = hold
        self.addCleanup(store.close)
        store.load(1000.0)
        return store

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """What is committed (what a process killed now would find)."""
        conn = sqlite3.connect(os.path.join(self.dir, FILENAME))
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    @inlineCallbacks
    def settle(self, store: SQLiteStore) -> Any:
        """Let every commit that has started finish."""
        for _ in range(1000):
            if store._committing is None:
                return
            yield turn()
        self.fail("the writer did not finish")


class CancellationTests(HoldTestCase):

    @inlineCallbacks
    def test_acknowledged_before_written_is_never_written(self) -> None:
        """A QoS 1 delivery acknowledged while its record is held costs no
        write at all, and the barrier taken after it is released without a
        commit: the message was delivered."""
        store = self.open()
        m = Message("t", b"p", 1)
        store.message_sent(KEY, m, 1, False, 1)
        self.assertTrue(store.unsynced())
        d = store.durable()
        self.assertNoResult(d)
        store.message_acked(KEY, 1)
        self.assertFalse(store.unsynced())
        yield d
        self.assertEqual(store.transactions, 0)
        store.close()
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(0,)])
        self.assertEqual(self.rows("SELECT count(*) FROM messages"), [(0,)])

    @inlineCallbacks
    def test_crash_right_after_a_cancellation(self) -> None:
        """Of two messages whose acknowledgements wait on one barrier, the one
        the client acknowledged is cancelled; the other is written.  When the
        barrier fires, what a crash would leave on disk is exactly the message
        not yet delivered: each is either delivered or stored."""
        store = self.open(hold=0.05)
        a, b = Message("t", b"a", 1), Message("t", b"b", 1)
        store.message_sent(KEY, a, 1, False, 1)
        store.message_sent(KEY, b, 1, False, 2)
        d = store.durable()
        store.message_acked(KEY, 1)  # a delivered; b not yet
        self.assertNoResult(d)
        yield d
        # No close(): read what is committed right now, as after SIGKILL.
        self.assertEqual(self.rows("SELECT payload FROM messages"), [(b"b",)])
        self.assertEqual(self.rows("SELECT state, packet_id FROM deliveries"),
                         [(int(WAIT_PUBACK), 2)])

    @inlineCallbacks
    def test_only_waiters_whose_records_are_all_gone_are_released(self) -> None:
        """A barrier waits for every record made before it: the first is
        released when its message is acknowledged, the second still waits
        for the message recorded between the two."""
        store = self.open()
        store.message_sent(KEY, Message("t", b"1", 1), 1, False, 1)
        first = store.durable()
        store.message_sent(KEY, Message("t", b"2", 1), 1, False, 2)
        second = store.durable()
        store.message_acked(KEY, 1)
        yield first
        self.assertNoResult(second)
        store.message_acked(KEY, 2)
        yield second
        self.assertEqual(store.transactions, 0)

    @inlineCallbacks
    def test_acknowledgements_out_of_order(self) -> None:
        """Acknowledging a later message first releases nothing; the earlier
        one then releases the barrier taken after both."""
        store = self.open()
        store.message_sent(KEY, Message("t", b"1", 1), 1, False, 1)
        store.message_sent(KEY, Message("t", b"2", 1), 1, False, 2)
        d = store.durable()
        store.message_acked(KEY, 2)
        yield turn()
        self.assertNoResult(d)
        store.message_acked(KEY, 1)
        yield d
        self.assertEqual(store.transactions, 0)

    @inlineCallbacks
    def test_other_changes_are_not_cancelled_by_an_acknowledgement(self) -> None:
        """A barrier taken after another kind of change (here a retained
        message) waits for its commit even when the deliveries before it are
        acknowledged; a barrier taken before that change is released."""
        store = self.open()
        store.message_sent(KEY, Message("t", b"1", 1), 1, False, 1)
        before = store.durable()
        store.retained_set("", "r", Message("r", b"v", 0, True))
        after = store.durable()
        store.message_acked(KEY, 1)
        yield before
        yield after
        self.assertEqual(self.rows("SELECT payload FROM retained"), [(b"v",)])
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(0,)])

    @inlineCallbacks
    def test_released_while_an_older_batch_commits(self) -> None:
        """A barrier whose held records are all cancelled still waits for the
        batch being committed, which holds what was recorded before it."""
        store = self.open()
        store.message_queued(KEY2, Message("q", b"queued", 1), 1)  # written at once
        for _ in range(100):  # until the queued record is handed to the writer
            if not store.unsynced():
                break
            yield turn()
        committing = store._committing  # None if the commit was quick
        store.message_sent(KEY, Message("t", b"1", 1), 1, False, 1)
        d = store.durable()
        store.message_acked(KEY, 1)
        if committing is not None and not committing.done:
            self.assertIn(d, committing.waiters)
        yield d
        self.assertEqual(store.transactions, 1)
        self.assertEqual(self.rows("SELECT payload FROM messages"), [(b"queued",)])
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(1,)])

    @inlineCallbacks
    def test_shared_message_cancelled_per_recipient(self) -> None:
        """A message sent to two sessions is cancelled only when both have
        acknowledged it; until then its row and the other delivery stay pending."""
        store = self.open()
        m = Message("t", b"shared", 1)
        store.message_sent(KEY, m, 1, False, 1)
        store.message_sent(KEY2, m, 1, False, 1)
        d = store.durable()
        store.message_acked(KEY, 1)
        yield turn()
        self.assertNoResult(d)
        self.assertTrue(store.unsynced())
        store.message_acked(KEY2, 1)
        yield d
        self.assertEqual(store.transactions, 0)


class WhatIsHeldTests(HoldTestCase):

    @inlineCallbacks
    def test_held_record_is_written_when_not_acknowledged(self) -> None:
        """A held record whose message is not acknowledged is written once it
        is ``hold`` old; the barrier fires after that commit, with the row on disk."""
        store = self.open(hold=0.01)
        store.message_sent(KEY, Message("t", b"slow", 1), 1, False, 7)
        d = store.durable()
        seen = []
        d.addCallback(lambda _: seen.append(self.rows("SELECT packet_id FROM deliveries")))
        yield d
        self.assertEqual(seen, [[(7,)]])
        self.assertEqual(store.transactions, 1)

    @inlineCallbacks
    def test_acknowledged_after_written_is_deleted(self) -> None:
        """A held record that was written is deleted by a later commit when
        its acknowledgement comes."""
        store = self.open(hold=0.01)
        store.message_sent(KEY, Message("t", b"late", 1), 1, False, 7)
        yield store.durable()
        store.message_acked(KEY, 7)
        yield store.durable()
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(0,)])
        self.assertEqual(self.rows("SELECT count(*) FROM messages"), [(0,)])

    @inlineCallbacks
    def test_queued_records_and_qos2_are_not_held(self) -> None:
        """A queued message (its client may be offline for long) and a QoS 2
        send (its PUBLISH waits for the record) are committed at once."""
        store = self.open()
        store.message_queued(KEY, Message("t", b"q", 1), 1)
        yield store.durable()
        store.message_sent(KEY2, Message("t", b"two", 2), 2, False, 3)
        yield store.durable()
        self.assertEqual(sorted(self.rows("SELECT payload FROM messages")),
                         [(b"q",), (b"two",)])

    @inlineCallbacks
    def test_an_urgent_change_takes_held_records_along(self) -> None:
        """A change that may not wait starts the commit at once, and held
        records pending at that moment are written with it."""
        store = self.open()
        store.message_sent(KEY, Message("t", b"held", 1), 1, False, 1)
        store.session_deleted(KEY2)
        yield store.durable()
        self.assertEqual(self.rows("SELECT payload FROM messages"), [(b"held",)])

    @inlineCallbacks
    def test_slow_client_records_are_not_held(self) -> None:
        """Records for a client that takes longer than half of ``hold`` to
        acknowledge (measured on one message at a time) are written at once:
        holding them would only delay the publishers' acknowledgements."""
        store = self.open(hold=0.002)
        store.message_sent(KEY, Message("t", b"1", 1), 1, False, 1)
        self.assertFalse(store._p_urgent)
        yield deferLater(reactor, 0.02, lambda: None)  # the client is slow
        store.message_acked(KEY, 1)
        yield self.settle(store)
        store.message_sent(KEY, Message("t", b"2", 1), 1, False, 2)
        self.assertTrue(store._p_urgent)
        # A client of its own is still held.
        store.message_sent(KEY2, Message("t", b"3", 1), 1, False, 1)
        self.assertEqual(store._index[KEY2].rtt, 0.0)

    @inlineCallbacks
    def test_hold_zero_writes_at_once(self) -> None:
        """With ``hold = 0`` nothing waits: a record is handed to the writer on
        the next reactor turn (the behaviour before records were held)."""
        store = self.open(hold=0)
        store.message_sent(KEY, Message("t", b"now", 1), 1, False, 1)
        self.assertTrue(store._p_urgent)
        d = store.durable()
        yield turn()
        self.assertFalse(store.unsynced())  # handed to the writer
        yield d
        self.assertEqual(self.rows("SELECT payload FROM messages"), [(b"now",)])
        store.message_acked(KEY, 1)
        yield store.durable()
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(0,)])

    @inlineCallbacks
    def test_clock_set_back_does_not_hold_records_longer(self) -> None:
        """When the clock is set back while a record is held, the record is
        held for ``hold`` from then, not until the clock catches up."""
        store = self.open(hold=0.01)
        offset = [0.0]
        store._seconds = lambda: time.time() - offset[0]
        store.message_sent(KEY, Message("t", b"held", 1), 1, False, 5)
        offset[0] = 3600.0
        yield store.durable()
        self.assertEqual(self.rows("SELECT packet_id FROM deliveries"), [(5,)])

    def test_close_writes_held_records(self) -> None:
        """Closing writes held records too (a clean shutdown keeps everything)."""
        store = self.open()
        store.message_sent(KEY, Message("t", b"held", 1), 1, False, 5)
        store.close()
        self.assertEqual(self.rows("SELECT packet_id FROM deliveries"), [(5,)])

    @inlineCallbacks
    def test_sync_none_also_cancels(self) -> None:
        """With ``sync = none`` barriers never wait, and a held record that is
        acknowledged in time is not written either."""
        store = self.open(sync="none")
        store.message_sent(KEY, Message("t", b"x", 1), 1, False, 1)
        yield store.durable()
        store.message_acked(KEY, 1)
        store.close()
        self.assertEqual(store.transactions, 0)
        self.assertEqual(self.rows("SELECT count(*) FROM messages"), [(0,)])


class MessageRowTests(HoldTestCase):
    """A held record takes its reference to a ``messages`` row only when it is
    written; the rows and references still add up in every mix."""

    def reload(self, store: SQLiteStore) -> Any:
        """Close ``store``; what a new store loads from the file."""
        store.close()
        again = SQLiteStore(self.dir, reactor, clock=lambda: 1000.0)
        self.addCleanup(again.close)
        return again.load(1000.0)

    def deliveries(self, loaded: Any) -> dict[str, list[tuple[bytes, int | None]]]:
        return {s.client_id: [(d.message.payload, d.packet_id) for d in s.deliveries]
                for s in loaded.sessions}

    def test_held_and_urgent_copies_share_one_row(self) -> None:
        """A message held for one session and queued (written at once) for
        another is stored once; both deliveries come back after a restart."""
        store = self.open()
        store.session_updated(_session(KEY))
        store.session_updated(_session(KEY2))
        m = Message("t", b"both", 1)
        store.message_sent(KEY, m, 1, False, 4)
        store.message_queued(KEY2, m, 1)
        loaded = self.reload(store)
        self.assertEqual(self.rows("SELECT count(*) FROM messages"), [(1,)])
        self.assertEqual(self.deliveries(loaded), {"c1": [(b"both", 4)], "c2": [(b"both", None)]})

    def test_other_copy_acknowledged_first(self) -> None:
        """The written copy of a shared message is deleted, the held copy is
        written later with a row of its own: one row, one delivery at the end."""
        store = self.open()
        store.session_updated(_session(KEY))
        store.session_updated(_session(KEY2))
        m = Message("t", b"shared", 1)
        store.message_queued(KEY2, m, 1)
        store.message_sent(KEY, m, 1, False, 9)
        store.message_dequeued(KEY2, m)  # the queued copy goes first
        loaded = self.reload(store)
        self.assertEqual(self.rows("SELECT count(*) FROM messages"), [(1,)])
        self.assertEqual(self.deliveries(loaded), {"c1": [(b"shared", 9)], "c2": []})

    @inlineCallbacks
    def test_committed_row_released_while_a_copy_is_held(self) -> None:
        """A message whose row is on disk loses its last written delivery while
        a copy of it is held: the held copy is written with the message, so
        the restart still finds it."""
        store = self.open()
        store.session_updated(_session(KEY))
        store.session_updated(_session(KEY2))
        m = Message("t", b"again", 1)
        store.message_queued(KEY2, m, 1)
        yield store.durable()
        store.message_sent(KEY, m, 1, False, 2)
        store.message_dequeued(KEY2, m)
        loaded = self.reload(store)
        self.assertEqual(self.rows("SELECT payload FROM messages"), [(b"again",)])
        self.assertEqual(self.deliveries(loaded), {"c1": [(b"again", 2)], "c2": []})

    def test_session_deleted_with_a_held_record(self) -> None:
        """Deleting a session with a held record leaves no reference behind:
        the message's other copy, once acknowledged, takes its row along."""
        store = self.open()
        store.session_updated(_session(KEY2))
        m = Message("t", b"gone", 1)
        store.message_sent(KEY, m, 1, False, 1)
        store.message_queued(KEY2, m, 1)
        store.session_deleted(KEY)
        store.message_dequeued(KEY2, m)
        self.assertEqual(store._refs, {})
        self.reload(store)
        self.assertEqual(self.rows("SELECT count(*) FROM messages"), [(0,)])
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(0,)])


def _session(key: SessionKey) -> Any:
    """What the store reads from a ``Session``."""
    return SimpleNamespace(key=key, subscriptions={}, sub_ids={}, conn=None,
                           expiry_interval=None, username=None)
