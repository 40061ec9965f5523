"""A session's queue drains once per input batch, not once per acknowledgement
(issue 18), and an idle session keeps no per-session set for incoming QoS 2."""
from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.config import parse
from vmqtw.core.broker import Broker
from vmqtw.core.message import Message
from vmqtw.core.session import NO_PIDS, Session, SessionEnv
from vmqtw.core.values import SessionKey
from vmqtw.store.memory import MemoryStore
from vmqtw.test.harness import BASE, FakeConnection


class WindowConnection(FakeConnection):
    """A ``FakeConnection`` that records the session's inflight count at each write."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.inflight_seen: list[int] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        self.inflight_seen.append(len(self.session.inflight))


def payloads(conn: FakeConnection) -> list[bytes]:
    """The 5-byte payloads (``m0000`` ...) of the PUBLISHes written to ``conn``."""
    return [data[-5:] for data in conn.written]


class DrainPerBatchTests(SynchronousTestCase):

    def make(self, window: int = 100) -> tuple[Broker, Session, WindowConnection]:
        broker = Broker(parse(BASE + f"max_inflight_messages = {window}\n"
                              "max_online_messages = 5000\n"), Clock())
        session = Session(broker, SessionKey("", "c"), False, None)
        broker.sessions[session.key] = session
        conn = WindowConnection(session)
        session.attach(conn)
        return broker, session, conn

    def test_thousand_queued_acked_in_batches(self) -> None:
        """1,000 QoS 1 messages behind a window of 100, every inflight one
        acknowledged in one input batch after another: all arrive once, in
        order, and the inflight count never goes above the window."""
        broker, s, conn = self.make(100)
        for i in range(1000):
            s.deliver(Message("t", b"m%04d" % i, 1), 1, False)
        self.assertEqual(len(s.inflight), 100)
        self.assertEqual(len(s.queue), 900)
        for _batch in range(20):  # 10 batches are enough
            if not s.inflight:
                break
            for pid in list(s.inflight):
                self.assertTrue(s.puback(pid))
            broker.flush()
        self.assertEqual(payloads(conn), [b"m%04d" % i for i in range(1000)])
        self.assertEqual(len(s.queue), 0)
        self.assertEqual(s.inflight, {})
        self.assertLessEqual(max(conn.inflight_seen), 100)

    def test_acks_do_not_drain_until_the_batch_ends(self) -> None:
        """Acknowledgements free room but send nothing by themselves; the
        session is put on the broker's dirty list once, however many
        acknowledgements the batch holds, and ``flush`` fills the window."""
        broker, s, conn = self.make(10)
        for i in range(30):
            s.deliver(Message("t", b"m%04d" % i, 1), 1, False)
        self.assertEqual(len(conn.written), 10)
        for pid in range(1, 6):
            self.assertTrue(s.puback(pid))
        self.assertEqual(len(conn.written), 10)
        self.assertEqual(broker.dirty.count(s), 1)
        self.assertTrue(s.drain_pending)
        broker.flush()
        self.assertFalse(s.drain_pending)
        self.assertEqual(len(conn.written), 15)
        self.assertEqual(len(s.inflight), 10)
        self.assertEqual(payloads(conn), [b"m%04d" % i for i in range(15)])

    def test_new_message_in_the_same_batch_keeps_its_place(self) -> None:
        """A message delivered after an acknowledgement but before the batch
        ends goes behind the queued ones, though the window has room."""
        broker, s, conn = self.make(2)
        for i in range(4):
            s.deliver(Message("t", b"m%04d" % i, 1), 1, False)
        self.assertTrue(s.puback(1))
        s.deliver(Message("t", b"m0004", 1), 1, False)
        broker.flush()
        for _batch in range(10):
            if not s.inflight:
                break
            for pid in list(s.inflight):
                s.puback(pid)
            broker.flush()
        self.assertEqual(payloads(conn), [b"m%04d" % i for i in range(5)])

    def test_ack_with_an_empty_queue_marks_nothing(self) -> None:
        """With nothing queued an acknowledgement just frees its slot: the
        session is not put on the dirty list."""
        broker, s, _conn = self.make(10)
        s.deliver(Message("t", b"m0000", 1), 1, False)
        self.assertTrue(s.puback(1))
        self.assertNotIn(s, broker.dirty)
        self.assertFalse(s.drain_pending)

    def test_detached_before_the_batch_ends(self) -> None:
        """A session that loses its connection before the deferred drain keeps
        its queue (a persistent one); the next connection gets it in order."""
        broker = Broker(parse(BASE + "max_inflight_messages = 2\n"), Clock())
        s = Session(broker, SessionKey("", "c"), True, None)
        broker.sessions[s.key] = s
        conn = FakeConnection()
        s.attach(conn)
        for i in range(4):
            s.deliver(Message("t", b"m%04d" % i, 1), 1, False)
        self.assertTrue(s.puback(1))
        s.detach()
        broker.flush()
        self.assertEqual(len(conn.written), 2)
        conn2 = FakeConnection()
        s.attach(conn2)
        self.assertEqual(payloads(conn2), [b"m0001", b"m0002"])

    def test_standalone_env_drains_at_once(self) -> None:
        """A ``SessionEnv`` without a broker's dirty list (``mark_dirty`` None)
        drains on each acknowledgement, as before."""
        env = SessionEnv(Clock(), MemoryStore(), lambda *_a: None, lambda: None,
                         max_inflight=1)
        s = Session(env, SessionKey("", "c"), False, None)
        conn = FakeConnection()
        s.attach(conn)
        s.deliver(Message("t", b"m0000", 1), 1, False)
        s.deliver(Message("t", b"m0001", 1), 1, False)
        self.assertTrue(s.puback(1))
        self.assertEqual(payloads(conn), [b"m0000", b"m0001"])


class IncomingQos2Tests(SynchronousTestCase):

    def test_lazy_set(self) -> None:
        """A new session shares the empty ``NO_PIDS``; the first incoming QoS 2
        message gives it a set of its own, and the last PUBREL gives the shared
        empty one back."""
        broker = Broker(parse(BASE), Clock())
        s = Session(broker, SessionKey("", "c"), False, None)
        t = Session(broker, SessionKey("", "d"), False, None)
        self.assertIs(s.incoming_qos2, NO_PIDS)
        s.qos2_received(7)
        s.qos2_received(8)
        self.assertEqual(s.incoming_qos2, {7, 8})
        self.assertIs(t.incoming_qos2, NO_PIDS)
        self.assertTrue(s.qos2_released(7))
        self.assertEqual(s.incoming_qos2, {8})
        self.assertFalse(s.qos2_released(7))
        self.assertTrue(s.qos2_released(8))
        self.assertIs(s.incoming_qos2, NO_PIDS)
        self.assertFalse(s.qos2_released(8))
