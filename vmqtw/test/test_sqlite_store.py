"""The SQLite store on its own: round trips, ordering, group commit, the
durability barrier, purging on load, refusing damaged files, closing."""
from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
from types import SimpleNamespace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from vmqtw.codec.packets import SubOptions
from vmqtw.config import ConfigError, parse
from vmqtw.core.message import Message
from vmqtw.core.interfaces import IStore
from vmqtw.store import (
    FILENAME, SQLiteStore, StoreCorrupt, StoreError, StoreLocked, open_store, store_settings,
)
from vmqtw.store.memory import MemoryStore
from vmqtw.store.records import QUEUED, WAIT_PUBACK, WAIT_PUBCOMP, WAIT_PUBREC

KEY = ("", "c1")
KEY2 = ("", "c2")


def fake_session(key: tuple[str, str] = KEY, subscriptions: dict[str, SubOptions] | None = None,
                 sub_ids: dict[str, int] | None = None, online: bool = False,
                 expiry: float | None = None, username: str | None = "u") -> Any:
    """What the store reads from a ``Session``."""
    return SimpleNamespace(key=key, mountpoint=key[0], client_id=key[1],
                           subscriptions=dict(subscriptions or {}), sub_ids=dict(sub_ids or {}),
                           conn=object() if online else None, expiry_interval=expiry,
                           username=username)


class StoreTestCase(TestCase):
    """Each test gets a directory; stores opened with ``open`` are closed at the end."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmqtw-store-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.now = 1000.0

    def open(self, sync: str = "group", load: bool = True) -> SQLiteStore:
        store = SQLiteStore(self.dir, reactor, sync, clock=lambda: self.now)
        self.addCleanup(store.close)
        if load:
            self.loaded = store.load(self.now)
        return store

    def reopen(self, store: SQLiteStore, now: float | None = None) -> Any:
        """Close ``store`` and return what a new store loads from the same file."""
        store.close()
        again = SQLiteStore(self.dir, reactor, clock=lambda: self.now)
        self.addCleanup(again.close)
        return again, again.load(self.now if now is None else now)

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Query the file through a separate connection (what is committed)."""
        conn = sqlite3.connect(os.path.join(self.dir, FILENAME))
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()


class RoundTripTests(StoreTestCase):

    def test_provides_istore(self) -> None:
        """``SQLiteStore`` fully implements ``IStore``."""
        self.assertTrue(verifyObject(IStore, self.open()))

    def test_new_store_is_empty_and_created(self) -> None:
        """
        Opening an empty directory creates the database file (renamed into place, no ``.new``
        file left) and loads no retained messages and no sessions.
        """
        self.open()
        self.assertEqual((self.loaded.retained, self.loaded.sessions), ([], []))
        self.assertTrue(os.path.isfile(os.path.join(self.dir, FILENAME)))
        self.assertFalse(os.path.exists(os.path.join(self.dir, FILENAME + ".new")))

    def test_retained_messages(self) -> None:
        """
        Retained messages survive a restart per mountpoint with payload, QoS, expiry and
        MQTT 5.0 properties intact; a cleared retained message is gone, and matching and
        counting work before the restart too.
        """
        store = self.open()
        props = {"content_type": "text/plain", "correlation_data": b"\x00\xff",
                 "user_property": [("a", "1"), ("a", "2")], "message_expiry_interval": 60}
        store.retained_set("", "a/b", Message("a/b", b"one", 1, True, props, expires_at=5000.0))
        store.retained_set("", "a/c", Message("a/c", b"two", 0, True))
        store.retained_set("tenant/", "a/b", Message("a/b", b"three", 2, True))
        store.retained_set("", "a/c", None)
        store.retained_set("", "gone", Message("gone", b"x", 0, True))
        store.retained_set("", "gone", None)
        self.assertEqual(store.retained_count(), 2)
        self.assertEqual([m.payload for m in store.retained_match("", "a/+")], [b"one"])
        _, loaded = self.reopen(store)
        got = {(mp, topic): m for mp, topic, m in loaded.retained}
        self.assertEqual(sorted(got), [("", "a/b"), ("tenant/", "a/b")])
        m = got[("", "a/b")]
        self.assertEqual((m.topic, m.payload, m.qos, m.retain, m.expires_at),
                         ("a/b", b"one", 1, True, 5000.0))
        self.assertEqual(m.properties, props)
        self.assertEqual(got[("tenant/", "a/b")].payload, b"three")

    def test_retained_available_for_matching_after_load(self) -> None:
        """Retained messages loaded from the file can be matched and counted right away."""
        store = self.open()
        store.retained_set("", "x/y", Message("x/y", b"v", 1, True))
        again, _ = self.reopen(store)
        self.assertEqual([m.payload for m in again.retained_match("", "x/#")], [b"v"])
        self.assertEqual(again.retained_count(), 1)

    def test_session_with_mqtt5_subscription_options(self) -> None:
        """
        A session survives a restart with its expiry interval, username, subscriptions
        (MQTT 5.0 options and shared subscriptions included) and subscription identifiers;
        an offline session keeps the time it was recorded as its disconnect time.
        """
        store = self.open()
        subs = {"a/#": SubOptions(2, True, True, 2), "$share/g/b": SubOptions(1),
                "c": SubOptions(0, False, False, 1)}
        session = fake_session(subscriptions=subs, sub_ids={"a/#": 42}, expiry=3600,
                               username="alice")
        store.session_updated(session)
        store.session_updated(fake_session(KEY2, expiry=None, username=None))
        _, loaded = self.reopen(store)
        by_key = {s.key: s for s in loaded.sessions}
        s = by_key[KEY]
        self.assertEqual((s.expiry_interval, s.username, s.disconnected_at),
                         (3600, "alice", 1000.0))
        self.assertEqual(s.subscriptions, subs)
        self.assertEqual(s.sub_ids, {"a/#": 42})
        self.assertEqual(by_key[KEY2].expiry_interval, None)
        self.assertEqual(by_key[KEY2].subscriptions, {})

    @inlineCallbacks
    def test_subscription_changes_are_written_as_differences(self) -> None:
        """
        When a session's subscriptions change, removed filters are deleted and changed or new
        ones written, leaving exactly the current subscriptions in the file.
        """
        store = self.open()
        session = fake_session(subscriptions={"a": SubOptions(1), "b": SubOptions(1)})
        store.session_updated(session)
        yield store.durable()
        del session.subscriptions["a"]
        session.subscriptions["b"] = SubOptions(2)
        session.subscriptions["c"] = SubOptions(0)
        store.session_updated(session)
        yield store.durable()
        self.assertEqual(self.rows("SELECT topic_filter, qos FROM subscriptions ORDER BY 1"),
                         [("b", 2), ("c", 0)])

    def test_deliveries_in_every_state(self) -> None:
        """
        Outgoing deliveries survive a restart in their state (waiting for PUBACK, PUBREC or
        PUBCOMP, or still queued), with packet id, retain flag and subscription identifiers, in
        order; received QoS 2 packet ids awaiting PUBREL survive too.
        """
        store = self.open()
        store.session_updated(fake_session())
        m1, m2, m3, m4 = (Message("t", b"m%d" % i, 2) for i in range(1, 5))
        store.message_sent(KEY, m1, 1, False, 1)            # waiting for PUBACK
        store.message_sent(KEY, m2, 2, True, 2, (3, 9))     # waiting for PUBREC
        store.message_sent(KEY, m3, 2, False, 3)
        store.message_released(KEY, 3)                      # PUBREL sent
        store.message_queued(KEY, m4, 2, True, (5,))        # never sent
        store.qos2_received(KEY, 77)
        store.qos2_received(KEY, 78)
        _, loaded = self.reopen(store)
        (s,) = loaded.sessions
        got = [(d.message.payload, d.qos, d.retain, d.state, d.packet_id, d.sub_ids)
               for d in s.deliveries]
        self.assertEqual(got, [
            (b"m1", 1, False, WAIT_PUBACK, 1, ()),
            (b"m2", 2, True, WAIT_PUBREC, 2, (3, 9)),
            (b"m3", 2, False, WAIT_PUBCOMP, 3, ()),
            (b"m4", 2, True, QUEUED, None, (5,)),
        ])
        self.assertEqual(s.incoming_qos2, {77, 78})

    def test_acknowledged_and_released_are_forgotten(self) -> None:
        """
        PUBACK, PUBCOMP, a dequeued message and a released incoming QoS 2 id remove their
        records, and a message no delivery refers to is deleted from the file.
        """
        store = self.open()
        store.session_updated(fake_session())
        m1, m2, m3 = (Message("t", b"m%d" % i, 2) for i in range(1, 4))
        store.message_sent(KEY, m1, 1, False, 1)
        store.message_sent(KEY, m2, 2, False, 2)
        store.message_queued(KEY, m3, 1)
        store.qos2_received(KEY, 5)
        store2, loaded = self.reopen(store)
        self.assertEqual(len(loaded.sessions[0].deliveries), 3)
        store2.message_acked(KEY, 1)
        store2.message_released(KEY, 2)
        store2.message_acked(KEY, 2)
        (d,) = [d for s in loaded.sessions for d in s.deliveries if d.state == QUEUED]
        store2.message_dequeued(KEY, d.message)
        store2.qos2_released(KEY, 5)
        _, loaded = self.reopen(store2)
        self.assertEqual(loaded.sessions[0].deliveries, [])
        self.assertEqual(loaded.sessions[0].incoming_qos2, set())
        self.assertEqual(self.rows("SELECT count(*) FROM messages"), [(0,)])

    def test_shared_message_stored_once(self) -> None:
        """
        A message queued for many sessions is stored once, and after a restart every session's
        delivery refers to one shared ``Message`` object.
        """
        store = self.open()
        big = Message("fan/out", b"p" * 10000, 1)
        keys = [("", f"s{i}") for i in range(50)]
        for key in keys:
            store.session_updated(fake_session(key))
            store.message_queued(key, big, 1)
        _, loaded = self.reopen(store)
        self.assertEqual(self.rows("SELECT count(*) FROM messages"), [(1,)])
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(50,)])
        restored = {id(s.deliveries[0].message) for s in loaded.sessions}
        self.assertEqual(len(restored), 1, "one Message object shared by every session")
        self.assertEqual(loaded.sessions[0].deliveries[0].message.payload, b"p" * 10000)

    @inlineCallbacks
    def test_shared_message_deleted_with_its_last_delivery(self) -> None:
        """
        A message shared by several deliveries stays in the file until its last delivery is
        gone.
        """
        store = self.open()
        m = Message("t", b"x", 1)
        for key in (KEY, KEY2):
            store.session_updated(fake_session(key))
            store.message_queued(key, m, 1)
        yield store.durable()
        store.message_dequeued(KEY, m)
        yield store.durable()
        self.assertEqual(self.rows("SELECT count(*) FROM messages"), [(1,)])
        store.message_dequeued(KEY2, m)
        yield store.durable()
        self.assertEqual(self.rows("SELECT count(*) FROM messages"), [(0,)])
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(0,)])

    def test_session_deleted_takes_everything_with_it(self) -> None:
        """
        Deleting a session removes its subscriptions, deliveries and incoming QoS 2 ids, and
        the messages only it referred to; another session's copy of a shared message stays.
        """
        store = self.open()
        shared = Message("t", b"shared", 1)
        for key in (KEY, KEY2):
            store.session_updated(fake_session(key, {"t": SubOptions(1)}))
            store.message_queued(key, shared, 1)
        store.message_sent(KEY, Message("t", b"own", 1), 1, False, 4)
        store.qos2_received(KEY, 9)
        store2, _ = self.reopen(store)
        store2.session_deleted(KEY)
        _, loaded = self.reopen(store2)
        self.assertEqual([s.key for s in loaded.sessions], [KEY2])
        self.assertEqual([d.message.payload for d in loaded.sessions[0].deliveries], [b"shared"])
        self.assertEqual(self.rows("SELECT count(*) FROM messages"), [(1,)])
        for table in ("subscriptions", "deliveries", "incoming_qos2"):
            self.assertEqual(self.rows(f"SELECT count(*) FROM {table} WHERE client_id = 'c1'"),
                             [(0,)], table)

    def test_session_deleted_and_recreated_in_one_batch(self) -> None:
        """
        A session deleted and created again before the next commit comes back with only the new
        subscriptions and deliveries; nothing of the old one survives.
        """
        store = self.open()
        store.session_updated(fake_session(subscriptions={"old": SubOptions(1)}))
        store.message_queued(KEY, Message("old", b"1", 1), 1)
        store.qos2_received(KEY, 3)
        store2, _ = self.reopen(store)
        store2.message_queued(KEY, Message("old", b"2", 1), 1)
        store2.session_deleted(KEY)
        store2.session_updated(fake_session(subscriptions={"new": SubOptions(2)}))
        store2.message_queued(KEY, Message("new", b"3", 1), 1)
        _, loaded = self.reopen(store2)
        (s,) = loaded.sessions
        self.assertEqual(s.subscriptions, {"new": SubOptions(2)})
        self.assertEqual([d.message.payload for d in s.deliveries], [b"3"])
        self.assertEqual(s.incoming_qos2, set())

    def test_online_session_counts_as_disconnected_at_first_load(self) -> None:
        """
        A session still marked online (the broker stopped without marking it disconnected)
        counts as disconnected at the first load after the stop, so its expiry runs from then,
        and that time is kept by later loads.
        """
        store = self.open()
        store.session_updated(fake_session(online=True, expiry=100))
        store.close()
        self.now = 5000.0
        again = self.open()
        (s,) = self.loaded.sessions
        self.assertEqual(s.disconnected_at, 5000.0)
        self.assertEqual(s.remaining_expiry(5040.0), 60.0)
        again.close()
        self.now = 5050.0
        self.open()
        self.assertEqual(self.loaded.sessions[0].disconnected_at, 5000.0)

    def test_sessions_disconnected_at_shutdown(self) -> None:
        """
        ``sessions_disconnected`` at shutdown records the shutdown time as the disconnect time
        of the online sessions.
        """
        store = self.open()
        store.session_updated(fake_session(online=True, expiry=100))
        self.now = 1234.0
        store.sessions_disconnected()
        _, loaded = self.reopen(store, now=1300.0)
        self.assertEqual(loaded.sessions[0].disconnected_at, 1234.0)


class OrderTests(StoreTestCase):

    def test_queue_order_survives(self) -> None:
        """
        Queued deliveries come back in the order they were queued, a message queued twice
        included.
        """
        store = self.open()
        store.session_updated(fake_session())
        messages = [Message("t", str(i).encode(), 1) for i in range(300)]
        for i, m in enumerate(messages):
            store.message_queued(KEY, m, 1 + i % 2)
        store.message_queued(KEY, messages[0], 1)  # the same message queued twice
        _, loaded = self.reopen(store)
        got = [d.message.payload for d in loaded.sessions[0].deliveries]
        self.assertEqual(got, [str(i).encode() for i in range(300)] + [b"0"])

    @inlineCallbacks
    def test_drain_keeps_inflight_in_send_order_and_queue_behind(self) -> None:
        """
        Queued messages moved into the in-flight window keep their send order and packet ids,
        an acknowledged one is gone, and the rest of the queue follows them.
        """
        store = self.open()
        store.session_updated(fake_session())
        messages = [Message("t", str(i).encode(), 1) for i in range(10)]
        for m in messages:
            store.message_queued(KEY, m, 1)
        yield store.durable()
        for pid, m in enumerate(messages[:4], start=1):  # drain four into the window
            store.message_sent(KEY, m, 1, False, pid, queued=True)
        store.message_acked(KEY, 2)
        _, loaded = self.reopen(store)
        got = [(d.message.payload, d.state, d.packet_id) for d in loaded.sessions[0].deliveries]
        self.assertEqual(got, [(b"0", WAIT_PUBACK, 1), (b"2", WAIT_PUBACK, 3),
                               (b"3", WAIT_PUBACK, 4)] +
                         [(str(i).encode(), QUEUED, None) for i in range(4, 10)])

    @inlineCallbacks
    def test_queued_entry_becomes_the_inflight_one(self) -> None:
        """
        Sending a queued message turns its delivery record into the in-flight one (one row,
        retain flag and subscription identifiers kept), whether or not the queued record was
        already written.
        """
        store = self.open()
        store.session_updated(fake_session())
        written, pending = Message("t", b"written", 2), Message("t", b"pending", 2)
        store.message_queued(KEY, written, 2, True, (4,))
        yield store.durable()
        store.message_queued(KEY, pending, 2)
        store.message_sent(KEY, written, 2, True, 7, (4,), queued=True)   # an UPDATE
        store.message_sent(KEY, pending, 2, False, 8, queued=True)        # still an INSERT
        store.message_released(KEY, 7)
        yield store.durable()
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(2,)])
        _, loaded = self.reopen(store)
        got = [(d.message.payload, d.state, d.packet_id, d.retain, d.sub_ids)
               for d in loaded.sessions[0].deliveries]
        self.assertEqual(got, [(b"written", WAIT_PUBCOMP, 7, True, (4,)),
                               (b"pending", WAIT_PUBREC, 8, False, ())])

    def test_duplicate_queued_copies_leave_oldest_first(self) -> None:
        """When the same message is queued twice, dequeuing it removes the older copy."""
        store = self.open()
        store.session_updated(fake_session())
        m = Message("t", b"dup", 1)
        store.message_queued(KEY, m, 1)
        store.message_queued(KEY, Message("t", b"between", 1), 1)
        store.message_queued(KEY, m, 2)
        store.message_dequeued(KEY, m)
        _, loaded = self.reopen(store)
        got = [(d.message.payload, d.qos) for d in loaded.sessions[0].deliveries]
        self.assertEqual(got, [(b"between", 1), (b"dup", 2)])


class GroupCommitTests(StoreTestCase):

    def block_writer(self, store: SQLiteStore) -> threading.Event:
        """Make the writer wait, inside its next commit, until the event is set.

        ``store.writer_started`` is a Deferred that fires on the reactor thread
        once the writer is inside that commit."""
        release = threading.Event()
        started: Deferred[None] = Deferred()
        original = store._write

        def write(batch: Any) -> None:
            if not started.called:
                reactor.callFromThread(started.callback, None)  # type: ignore[attr-defined]
            release.wait(10)
            original(batch)

        store._write = write  # type: ignore[method-assign]
        self.addCleanup(release.set)
        store.writer_started = started.addTimeout(10, reactor)  # type: ignore[attr-defined]
        return release

    @inlineCallbacks
    def test_many_calls_in_one_turn_are_one_transaction(self) -> None:
        """Everything recorded in one reactor turn is written in a single transaction."""
        store = self.open()
        store.session_updated(fake_session())
        for i in range(2000):
            store.message_queued(KEY, Message("t", b"%d" % i, 1), 1)
        store.retained_set("", "r", Message("r", b"v", 1, True))
        yield store.durable()
        self.assertEqual(store.transactions, 1)
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(2000,)])

    @inlineCallbacks
    def test_calls_during_a_commit_share_the_next_one(self) -> None:
        """
        Records made while a commit is in progress wait for it and are then written together in
        one more transaction (group commit), and none of their ``durable()`` calls fires early.
        """
        store = self.open()
        release = self.block_writer(store)
        store.session_updated(fake_session())
        first = store.durable()
        yield store.writer_started  # type: ignore[attr-defined]
        waiters = []
        for i in range(500):  # while the first commit is stuck
            store.message_queued(KEY, Message("t", b"%d" % i, 1), 1)
            waiters.append(store.durable())
        self.assertFalse(first.called)
        self.assertFalse(any(d.called for d in waiters))
        release.set()
        yield first
        for d in waiters:
            yield d
        self.assertEqual(store.transactions, 2)
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(500,)])

    @inlineCallbacks
    def test_queued_and_acknowledged_in_one_batch_costs_no_write(self) -> None:
        """
        A delivery sent and acknowledged, or a QoS 2 id received and released, before the batch
        is written cancels out and costs no transaction at all.
        """
        store = self.open()
        store.session_updated(fake_session())
        yield store.durable()
        before = store.transactions
        for pid in range(1, 101):
            m = Message("t", b"x", 1)
            store.message_sent(KEY, m, 1, False, pid)
            store.message_acked(KEY, pid)
            store.qos2_received(KEY, pid)
            store.qos2_released(KEY, pid)
        yield store.durable()
        self.assertEqual(store.transactions, before, "nothing left to write")
        self.assertEqual(self.rows("SELECT count(*) FROM messages"), [(0,)])


class DurableTests(StoreTestCase):

    @inlineCallbacks
    def test_fires_after_the_commit(self) -> None:
        """
        ``durable()`` fires only once the records made before it are committed and readable
        from another connection.
        """
        store = self.open()
        store.session_updated(fake_session())
        store.message_queued(KEY, Message("t", b"durable", 1), 1)
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(0,)])
        d = store.durable()
        self.assertFalse(d.called)
        seen = []
        d.addCallback(lambda _: seen.append(self.rows("SELECT count(*) FROM deliveries")))
        yield d
        self.assertEqual(seen, [[(1,)]])

    @inlineCallbacks
    def test_unsynced_until_handed_to_the_writer(self) -> None:
        """
        ``unsynced()`` is true from a record until its batch is handed to the writer, so
        acknowledgements that depend on it wait; with ``sync = none`` it is never true.
        """
        store = self.open()
        self.assertFalse(store.unsynced())
        store.session_updated(fake_session())
        self.assertTrue(store.unsynced())  # acknowledgements must wait
        yield store.durable()
        self.assertFalse(store.unsynced())
        none = SQLiteStore(tempfile.mkdtemp(dir=self.dir), reactor, "none")
        self.addCleanup(none.close)
        none.load()
        none.session_updated(fake_session())
        self.assertFalse(none.unsynced(), "sync = none never holds acknowledgements")

    def test_nothing_pending_fires_at_once(self) -> None:
        """With nothing pending ``durable()`` has already fired and ``pending()`` is false."""
        store = self.open()
        self.assertTrue(store.durable().called)
        self.assertFalse(store.pending())

    @inlineCallbacks
    def test_earlier_caller_does_not_wait_for_later_records(self) -> None:
        """
        A ``durable()`` fires when its own commit is done; records made after it go into a
        later commit that only later callers wait for.
        """
        store = self.open()
        release = GroupCommitTests.block_writer(self, store)  # type: ignore[arg-type]
        store.session_updated(fake_session())
        first = store.durable()
        yield store.writer_started  # type: ignore[attr-defined]
        store.message_queued(KEY, Message("t", b"later", 1), 1)
        second = store.durable()
        release.set()
        yield first
        self.assertEqual(self.rows("SELECT count(*) FROM sessions"), [(1,)])
        yield second
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(1,)])

    @inlineCallbacks
    def test_sync_none_never_waits_but_still_writes(self) -> None:
        """
        With ``sync = none`` ``durable()`` fires at once, and the records are still written in
        the background.
        """
        store = self.open(sync="none")
        idle = _idle(store)
        store.session_updated(fake_session())
        store.message_queued(KEY, Message("t", b"x", 1), 1)
        self.assertTrue(store.durable().called)
        yield idle
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(1,)])

    @inlineCallbacks
    def test_sync_always_uses_full_synchronous(self) -> None:
        """
        ``sync = always`` runs SQLite with ``synchronous=FULL`` (an fsync per commit); the
        default ``group`` uses ``synchronous=NORMAL`` in WAL mode.
        """
        store = self.open(sync="always")
        self.assertEqual(store._conn.execute("PRAGMA synchronous").fetchone(), (2,))
        store.session_updated(fake_session())
        yield store.durable()
        self.assertEqual(self.rows("SELECT count(*) FROM sessions"), [(1,)])
        group = SQLiteStore(tempfile.mkdtemp(dir=self.dir), reactor)
        self.addCleanup(group.close)
        group.load()
        self.assertEqual(group._conn.execute("PRAGMA synchronous").fetchone(), (1,))
        self.assertEqual(group._conn.execute("PRAGMA journal_mode").fetchone(), ("wal",))

    @inlineCallbacks
    def test_failed_commit_fails_the_waiters(self) -> None:
        """
        A failed commit fails its ``durable()`` waiters with a ``StoreError`` naming the file
        and the cause, and every later ``durable()`` fails at once.
        """
        store = self.open()

        def broken(batch: Any) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        store._write = broken  # type: ignore[method-assign]
        store.session_updated(fake_session())
        d = store.durable()
        yield self.assertFailure(d, StoreError)
        self.assertIn(os.path.join(self.dir, FILENAME), str(store._failed.value))
        self.assertIn("disk I/O error", str(store._failed.value))
        later = store.durable()
        self.assertTrue(later.called)
        yield self.assertFailure(later, StoreError)
        self.flushLoggedErrors(sqlite3.OperationalError)

    def test_bad_sync_mode(self) -> None:
        """An unknown sync mode is refused."""
        self.assertRaises(ValueError, SQLiteStore, self.dir, reactor, "sometimes")


class LoadPurgeTests(StoreTestCase):

    def test_expired_sessions_are_purged(self) -> None:
        """
        At load, sessions whose expiry interval ran out since they disconnected are deleted
        with their subscriptions, deliveries, incoming QoS 2 ids and unshared messages, and
        counted; sessions without expiry or not yet expired stay.
        """
        store = self.open()
        shared = Message("t", b"s", 1)
        for cid, expiry in (("short", 10), ("long", 1000), ("never", None)):
            key = ("", cid)
            store.session_updated(fake_session(key, {"t": SubOptions(1)}, expiry=expiry))
            store.message_queued(key, shared, 1)
            store.message_queued(key, Message("t", cid.encode(), 1), 1)
            store.qos2_received(key, 1)
        _, loaded = self.reopen(store, now=1011.0)  # disconnected at 1000
        self.assertEqual(sorted(s.client_id for s in loaded.sessions), ["long", "never"])
        self.assertEqual(loaded.expired_sessions, 1)
        for table in ("subscriptions", "deliveries", "incoming_qos2", "sessions"):
            self.assertEqual(
                self.rows(f"SELECT count(*) FROM {table} WHERE client_id = 'short'"), [(0,)])
        self.assertEqual(sorted(p for (p,) in self.rows("SELECT payload FROM messages")),
                         [b"long", b"never", b"s"])

    def test_session_not_yet_expired_is_kept(self) -> None:
        """A session loaded before its expiry runs out is kept with the remaining time."""
        store = self.open()
        store.session_updated(fake_session(expiry=10))
        _, loaded = self.reopen(store, now=1009.0)
        self.assertEqual(len(loaded.sessions), 1)
        self.assertEqual(loaded.sessions[0].remaining_expiry(1009.0), 1.0)

    def test_expired_messages_are_purged_from_queues_not_from_inflight(self) -> None:
        """
        At load, queued messages and retained messages whose expiry has passed are dropped and
        counted, while a message already in flight is kept for redelivery.
        """
        store = self.open()
        store.session_updated(fake_session())
        old = Message("t", b"old", 1, expires_at=1050.0)
        fresh = Message("t", b"fresh", 1, expires_at=2000.0)
        store.message_queued(KEY, old, 1)
        store.message_queued(KEY, fresh, 1)
        store.message_queued(KEY, Message("t", b"forever", 1), 1)
        store.message_sent(KEY, Message("t", b"sent", 1, expires_at=1050.0), 1, False, 1)
        store.retained_set("", "r1", Message("r1", b"x", 0, True, expires_at=1050.0))
        store.retained_set("", "r2", Message("r2", b"y", 0, True, expires_at=2000.0))
        _, loaded = self.reopen(store, now=1100.0)
        self.assertEqual([d.message.payload for d in loaded.sessions[0].deliveries],
                         [b"sent", b"fresh", b"forever"])
        self.assertEqual([topic for _, topic, _ in loaded.retained], ["r2"])
        self.assertEqual(loaded.expired_messages, 2)
        self.assertNotIn((b"old",), self.rows("SELECT payload FROM messages"))

    def test_load_twice_or_after_writes_is_an_error(self) -> None:
        """``load`` may run only once and before anything is recorded."""
        store = self.open()
        self.assertRaises(RuntimeError, store.load)
        fresh = SQLiteStore(tempfile.mkdtemp(dir=self.dir), reactor)
        self.addCleanup(fresh.close)
        fresh.retained_set("", "t", None)
        self.assertRaises(RuntimeError, fresh.load)


class DamagedFileTests(StoreTestCase):

    def make_store_file(self) -> str:
        store = self.open()
        store.session_updated(fake_session())
        for i in range(400):
            store.message_queued(KEY, Message("t", os.urandom(200), 1), 1)
            store.retained_set("", f"r/{i}", Message(f"r/{i}", os.urandom(100), 0, True))
        store.close()
        path = os.path.join(self.dir, FILENAME)
        self.assertFalse(os.path.exists(path + "-wal") and os.path.getsize(path + "-wal"))
        return path

    def assertRefused(self, path: str, exc: type = StoreCorrupt) -> StoreError:
        with open(path, "rb") as f:
            before = f.read()
        e = self.assertRaises(exc, SQLiteStore, self.dir, reactor)
        self.assertIn(path, str(e))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before, "the damaged file was modified")
        return e

    def test_garbage_bytes(self) -> None:
        """
        A file that is not an SQLite database refuses startup with ``StoreCorrupt`` naming the
        file and saying it is not replaced, and the file is left untouched.
        """
        os.makedirs(self.dir, exist_ok=True)
        path = os.path.join(self.dir, FILENAME)
        with open(path, "wb") as f:
            f.write(b"this is not SQLite\n" + bytes(range(256)) * 20)
        e = self.assertRefused(path)
        self.assertIn("not a database", str(e))
        self.assertIn("not replaced", str(e))

    def test_truncated_database(self) -> None:
        """A database cut in half is refused as malformed and left untouched."""
        path = self.make_store_file()
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        e = self.assertRefused(path)
        self.assertIn("malformed", str(e))

    def test_truncated_to_a_page_boundary(self) -> None:
        """A database truncated at a page boundary is refused and left untouched."""
        path = self.make_store_file()
        with open(path, "r+b") as f:
            f.truncate(4096 * 3)
        self.assertRefused(path)

    def test_empty_file(self) -> None:
        """An empty store file is refused as empty rather than treated as a new store."""
        path = os.path.join(self.dir, FILENAME)
        open(path, "wb").close()
        e = self.assertRefused(path)
        self.assertIn("empty", str(e))

    def test_another_applications_database(self) -> None:
        """An SQLite database without the store's tables is refused as "not a vmqtw store"."""
        path = os.path.join(self.dir, FILENAME)
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.commit()
        conn.close()
        e = self.assertRefused(path)
        self.assertIn("not a vmqtw store", str(e))

    def test_newer_schema(self) -> None:
        """
        A store with a newer schema version than this broker knows is refused, naming the
        version.
        """
        path = self.make_store_file()
        conn = sqlite3.connect(path)
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
        conn.commit()
        conn.close()
        e = self.assertRefused(path)
        self.assertIn("'99'", str(e))

    def test_a_good_file_still_opens_after_a_refusal(self) -> None:
        """
        A refusal does not hold on to the directory: once the good file is restored, it
        opens with all its deliveries.
        """
        path = self.make_store_file()
        with open(path, "rb") as f:
            good = f.read()
        with open(path, "r+b") as f:
            f.truncate(len(good) // 3)
        self.assertRefused(path)
        with open(path, "wb") as f:
            f.write(good)
        self.open()
        self.assertEqual(len(self.loaded.sessions[0].deliveries), 400)

    def test_inconsistent_rows(self) -> None:
        """
        Rows that refer to missing records make ``load`` fail with ``StoreCorrupt``
        ("inconsistent", naming the file) before anything is purged or changed.
        """
        store = self.open()
        store.session_updated(fake_session())
        store.message_queued(KEY, Message("t", b"x", 1), 1)
        store.close()
        conn = sqlite3.connect(os.path.join(self.dir, FILENAME))
        conn.execute("UPDATE deliveries SET message_id = 999")  # points at nothing
        conn.commit()
        conn.close()
        fresh = SQLiteStore(self.dir, reactor)
        self.addCleanup(fresh.close)
        e = self.assertRaises(StoreCorrupt, fresh.load)
        self.assertIn("inconsistent", str(e))
        self.assertIn(os.path.join(self.dir, FILENAME), str(e))
        # Nothing was purged or changed on the way.
        self.assertEqual(self.rows("SELECT count(*) FROM messages"), [(1,)])

    def test_directory_that_cannot_be_created(self) -> None:
        """
        A store directory that cannot be created is a ``StoreError`` naming the database path.
        """
        blocker = os.path.join(self.dir, "file")
        open(blocker, "w").close()
        e = self.assertRaises(StoreError, SQLiteStore, os.path.join(blocker, "sub"), reactor)
        self.assertIn(os.path.join(blocker, "sub", FILENAME), str(e))


class LifecycleTests(StoreTestCase):

    def test_close_writes_what_is_pending(self) -> None:
        """
        ``close`` commits everything pending, fires the ``durable()`` waiters, stops the writer
        thread and checkpoints the WAL into the database file.
        """
        store = self.open()
        store.session_updated(fake_session())
        for i in range(100):
            store.message_queued(KEY, Message("t", b"%d" % i, 1), 1)
        store.retained_set("", "r", Message("r", b"v", 0, True))
        d = store.durable()
        store.close()
        self.assertTrue(d.called)
        self.assertFalse(store._thread is not None and store._thread.is_alive())
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(100,)])
        self.assertEqual(self.rows("SELECT count(*) FROM retained"), [(1,)])
        self.assertFalse(os.path.exists(os.path.join(self.dir, FILENAME + "-wal")) and
                         os.path.getsize(os.path.join(self.dir, FILENAME + "-wal")))

    def test_close_before_any_commit_writes_on_the_calling_thread(self) -> None:
        """
        When the writer thread never started, ``close`` writes the pending records itself.
        """
        store = self.open()
        store.retained_set("", "r", Message("r", b"v", 0, True))
        self.assertIsNone(store._thread)  # the writer starts with the first commit
        store.close()
        self.assertEqual(self.rows("SELECT payload FROM retained"), [(b"v",)])

    @inlineCallbacks
    def test_close_during_a_commit(self) -> None:
        """
        ``close`` during a commit waits for it, then writes the records made since, and fires
        every waiter.
        """
        store = self.open()
        release = GroupCommitTests.block_writer(self, store)  # type: ignore[arg-type]
        store.session_updated(fake_session())
        first = store.durable()
        yield store.writer_started  # type: ignore[attr-defined]
        store.message_queued(KEY, Message("t", b"x", 1), 1)
        second = store.durable()
        # close() blocks the reactor thread: release the writer from inside
        # close(), at the moment it starts waiting for the writer thread.
        thread = store._thread
        assert thread is not None
        join = thread.join

        def release_then_join(timeout: float | None = None) -> None:
            release.set()
            join(timeout)

        thread.join = release_then_join  # type: ignore[method-assign]
        store.close()
        self.assertTrue(first.called and second.called)
        self.assertEqual(self.rows("SELECT count(*) FROM deliveries"), [(1,)])

    def test_close_twice(self) -> None:
        """Closing twice is harmless, and ``durable()`` after close fires at once."""
        store = self.open()
        store.close()
        store.close()
        self.assertTrue(store.durable().called)

    def test_second_store_on_the_same_directory_is_refused(self) -> None:
        """
        A second store on a directory in use is refused with ``StoreLocked`` naming the file;
        after the first one closes the directory can be opened again.
        """
        store = self.open()
        e = self.assertRaises(StoreLocked, SQLiteStore, self.dir, reactor)
        self.assertIn(os.path.join(self.dir, FILENAME), str(e))
        store.close()
        self.open()


class SettingsTests(SynchronousTestCase):

    def config(self, text: str = "") -> Any:
        directory = tempfile.mkdtemp(prefix="vmqtw-conf-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "broker.conf")
        with open(path, "w") as f:
            f.write("listener.tcp.default = 127.0.0.1:0\n" + text)
        return parse("listener.tcp.default = 127.0.0.1:0\n" + text, path)

    def test_defaults_next_to_the_config_file(self) -> None:
        """
        By default the store is on, ``sync`` is ``group`` and the files live in ``data/`` next
        to the configuration file.
        """
        config = self.config()
        s = store_settings(config)
        self.assertEqual((s.enabled, s.sync), (True, "group"))
        self.assertEqual(s.directory, os.path.join(os.path.dirname(config.path), "data"))

    def test_keys(self) -> None:
        """
        ``persistent_store.directory`` is resolved against the configuration file's directory
        unless absolute, and ``persistent_store.sync`` selects the mode.
        """
        config = self.config("persistent_store.directory = state/db\n"
                             "persistent_store.sync = always\n")
        s = store_settings(config)
        self.assertEqual(s.directory, os.path.join(os.path.dirname(config.path), "state", "db"))
        self.assertEqual(s.sync, "always")
        absolute = self.config("persistent_store.directory = /var/lib/vmqtw\n")
        self.assertEqual(store_settings(absolute).directory, "/var/lib/vmqtw")

    def test_disabled_is_a_memory_store(self) -> None:
        """``persistent_store.enabled = off`` gives an in-memory store."""
        config = self.config("persistent_store.enabled = off\n")
        self.assertFalse(store_settings(config).enabled)
        self.assertIsInstance(open_store(config, reactor), MemoryStore)

    def test_bad_sync_names_the_line(self) -> None:
        """
        An unknown ``persistent_store.sync`` or a non-boolean ``persistent_store.enabled`` is a
        configuration error at its ``FILE:LINE``.
        """
        e = self.assertRaises(ConfigError, self.config, "persistent_store.sync = sometimes\n")
        self.assertIn(":2: persistent_store.sync: expected one of group, always, none", str(e))
        e = self.assertRaises(ConfigError, self.config, "persistent_store.enabled = maybe\n")
        self.assertIn(":2: persistent_store.enabled", str(e))


def _idle(store: SQLiteStore) -> Deferred[None]:
    """A Deferred that fires on the reactor thread when a commit of ``store``
    completes and nothing is pending any more (bounded by a 10 s timeout)."""
    done: Deferred[None] = Deferred()
    committed = store._committed

    def notify(batch: Any) -> None:
        committed(batch)
        if not done.called and not store.pending():
            done.callback(None)

    store._committed = notify  # type: ignore[method-assign]
    return done.addTimeout(10, reactor)


class DeliveryStateTests(StoreTestCase):
    """The stored state of a delivery comes back as the shared ``DeliveryState``."""

    def test_loaded_states_are_enum_members(self) -> None:
        """Every loaded delivery's state is a ``DeliveryState`` member, so the
        restored session compares it with the same names the live one uses."""
        from vmqtw.core.values import DeliveryState

        store = self.open()
        store.session_updated(fake_session())
        store.message_sent(KEY, Message("t", b"1", 1), 1, False, 1)
        store.message_sent(KEY, Message("t", b"2", 2), 2, False, 2)
        store.message_queued(KEY, Message("t", b"3", 1), 1)
        _, loaded = self.reopen(store)
        states = [d.state for d in loaded.sessions[0].deliveries]
        self.assertEqual(states, [WAIT_PUBACK, WAIT_PUBREC, QUEUED])
        for state in states:
            self.assertIsInstance(state, DeliveryState)

    def test_unknown_state_is_refused_as_inconsistent(self) -> None:
        """A delivery row with a state number no version ever wrote stops the
        load with ``StoreCorrupt`` instead of restoring a flow nobody can finish."""
        store = self.open()
        store.session_updated(fake_session())
        store.message_queued(KEY, Message("t", b"x", 1), 1)
        store.close()
        conn = sqlite3.connect(os.path.join(self.dir, FILENAME))
        conn.execute("UPDATE deliveries SET state = 9")
        conn.commit()
        conn.close()
        fresh = SQLiteStore(self.dir, reactor)
        self.addCleanup(fresh.close)
        e = self.assertRaises(StoreCorrupt, fresh.load)
        self.assertIn("inconsistent", str(e))
