"""
VerneMQ's queue settings in the core: ``queue_type`` (fifo / lifo) and
``override_max_online_messages``, each against VerneMQ's documented behaviour
(``vmq_server.schema``: "queue_type enables to change the default queue
delivery behaviour from 'fifo' to 'lifo'"; "Allows a session that changes
from offline to online to override the maximum online message count
(max_online_messages). All offline messages will be added to the online
queue.").
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import SubOptions
from vmqtw.config import parse
from vmqtw.core.broker import Broker
from vmqtw.core.message import Message
from vmqtw.core.session import Session
from vmqtw.test.harness import BASE, FakeConnection


class QueueTests(SynchronousTestCase):
    """A persistent subscriber goes offline, messages queue, it comes back."""

    def make(self, extra: str) -> None:
        self.broker = Broker(parse(BASE + extra), Clock())
        self.dropped: list[bytes] = []
        original = self.broker.message_dropped

        def dropped(session: Session, message: Message, reason: str) -> None:
            self.dropped.append(message.payload)
            original(session, message, reason)

        self.broker.message_dropped = dropped  # type: ignore[method-assign]

    def offline_subscriber(self) -> Session:
        conn = FakeConnection(4)
        session, _ = self.broker.open_session(("", "sub"), False, None, conn)
        self.broker.session_resumed(session)
        self.broker.subscribe(session, "t", SubOptions(1))
        self.broker.connection_closed(session)
        return session

    def reconnect(self, session: Session) -> list[bytes]:
        """Payloads sent (inflight, in order) when ``session`` comes back."""
        conn = FakeConnection(4)
        session, _ = self.broker.open_session(("", "sub"), False, None, conn)
        self.broker.session_resumed(session)
        self.assertEqual(len(conn.written), len(session.inflight))
        return [entry.message.payload for entry in session.inflight.values()]

    def publish(self, *payloads: bytes) -> None:
        for payload in payloads:
            self.broker.publish(Message("t", payload, qos=1), "")

    def test_fifo_delivers_oldest_first_and_drops_new(self) -> None:
        """queue_type = fifo (VerneMQ's default): queued messages are delivered oldest
        first, and a full queue drops the NEW message."""
        self.make("max_offline_messages = 2\n")
        session = self.offline_subscriber()
        self.publish(b"1", b"2", b"3")
        self.assertEqual(self.dropped, [b"3"])
        self.assertEqual(self.reconnect(session), [b"1", b"2"])

    def test_lifo_delivers_newest_first_and_drops_oldest(self) -> None:
        """queue_type = lifo: the newest queued message is delivered first, and a full
        queue makes room by dropping its OLDEST message."""
        self.make("max_offline_messages = 2\nqueue_type = lifo\n")
        session = self.offline_subscriber()
        self.publish(b"1", b"2", b"3")
        self.assertEqual(self.dropped, [b"1"])
        self.assertEqual(self.reconnect(session), [b"3", b"2"])

    def test_back_online_trims_to_max_online_messages(self) -> None:
        """override_max_online_messages = off (VerneMQ's default): a session coming back
        online keeps at most max_online_messages of its offline messages (fifo: the
        newest beyond the limit are dropped), on top of max_inflight_messages."""
        self.make("max_offline_messages = 10\nmax_online_messages = 2\n"
                  "max_inflight_messages = 1\n")
        session = self.offline_subscriber()
        self.publish(b"1", b"2", b"3", b"4")
        delivered = self.reconnect(session)
        self.assertEqual(self.dropped, [b"4", b"3"])
        self.assertEqual(delivered, [b"1"])  # one inflight, one still queued
        self.assertEqual([item[0].payload for item in session.queue], [b"2"])

    def test_override_keeps_every_offline_message(self) -> None:
        """override_max_online_messages = on: every offline message moves online,
        whatever max_online_messages says."""
        self.make("max_offline_messages = 10\nmax_online_messages = 2\n"
                  "max_inflight_messages = 1\noverride_max_online_messages = on\n")
        session = self.offline_subscriber()
        self.publish(b"1", b"2", b"3", b"4")
        self.reconnect(session)
        self.assertEqual(self.dropped, [])
        self.assertEqual([item[0].payload for item in session.queue], [b"2", b"3", b"4"])
