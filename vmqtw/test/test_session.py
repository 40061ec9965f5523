"""Sessions: persistence across connections (through the protocol), expiry,
retries, and the Session object on its own with a fake connection."""
from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from vmqtw.codec import Disconnect, Puback, Pubcomp, Pubrec
from vmqtw.config import parse
from vmqtw.core.broker import Broker
from vmqtw.core.message import Message
from vmqtw.core.session import IClientConnection, Session, SessionEnv
from vmqtw.core.values import SessionKey
from vmqtw.store.memory import MemoryStore
from vmqtw.test.harness import BASE, BrokerTestCase, FakeConnection, Harness
from vmqtw.test.wire import connack, publish, pubrel, suback


class PersistentSessionTests(BrokerTestCase):

    def test_offline_queue_and_session_present(self) -> None:
        """While a persistent session is offline, its QoS 1 and 2 messages are queued and
        QoS 0 ones are not; on reconnect the client gets CONNACK with session present,
        then the queued messages in order, and its subscription still works without a new
        SUBSCRIBE."""
        hn = Harness()
        s = hn.subscriber("s", ("t/#", 2), clean=False)
        s.send(Disconnect())
        self.assertTrue(s.closed)
        self.assertIn(("", "s"), hn.broker.sessions)
        p = hn.connected("p")
        p.publish("t/1", b"q1", qos=1, pid=1)
        p.publish("t/0", b"q0", qos=0)
        p.publish("t/2", b"q2", qos=2, pid=2)
        p.publish("t/3", b"q1b", qos=1, pid=3)
        self.assertEqual(len(hn.broker.sessions[("", "s")].queue), 3)
        s2 = hn.client()
        s2.connect("s", clean=False)
        self.assertEqual(s2.take(), connack(0, session_present=True)
                         + publish("t/1", b"q1", qos=1, pid=1)
                         + publish("t/2", b"q2", qos=2, pid=2)
                         + publish("t/3", b"q1b", qos=1, pid=3))
        # The subscription survived: new messages arrive without a SUBSCRIBE.
        p.publish("t/4", b"live", qos=1, pid=4)
        self.assertEqual(s2.take(), publish("t/4", b"live", qos=1, pid=4))

    def test_offline_qos0_dropped_and_counted(self) -> None:
        """A message delivered at QoS 0 (downgraded to the subscription's QoS) to an offline
        session is dropped and counted, not queued; nothing arrives on reconnect."""
        hn = Harness()
        s = hn.subscriber("s", ("t", 0), clean=False)
        s.lose()
        p = hn.connected("p")
        p.publish("t", b"x", qos=1, pid=1)   # downgraded to the subscription's QoS 0
        session = hn.broker.sessions[("", "s")]
        self.assertEqual(len(session.queue), 0)
        self.assertEqual(session.dropped, 1)
        s2 = hn.connected("s", clean=False, session_present=True)
        self.assertEqual(s2.take(), b"")

    def test_unacked_resent_with_dup(self) -> None:
        """On reconnect, unacknowledged QoS 1 and 2 PUBLISHes are resent with DUP set and
        the same packet ids, and a QoS 2 flow that had reached PUBREC resumes with PUBREL
        (3.1.1 s4.4); the flows then complete normally."""
        hn = Harness()
        s = hn.subscriber("s", ("t", 2), clean=False)
        p = hn.connected("p")
        p.publish("t", b"one", qos=1, pid=1)
        p.publish("t", b"two", qos=2, pid=2)
        p.publish("t", b"three", qos=2, pid=3)
        self.assertEqual(s.take(), publish("t", b"one", qos=1, pid=1)
                         + publish("t", b"two", qos=2, pid=2)
                         + publish("t", b"three", qos=2, pid=3))
        s.send(Pubrec(3))
        self.assertEqual(s.take(), pubrel(3))
        s.lose()
        s2 = hn.client()
        s2.connect("s", clean=False)
        self.assertEqual(s2.take(), connack(0, True)
                         + publish("t", b"one", qos=1, pid=1, dup=True)
                         + publish("t", b"two", qos=2, pid=2, dup=True)
                         + pubrel(3))
        s2.send(Puback(1), Pubrec(2), Pubcomp(3))
        self.assertEqual(s2.take(), pubrel(2))
        s2.send(Pubcomp(2))
        self.assertEqual(hn.broker.sessions[("", "s")].inflight, {})

    def test_inflight_then_queue_order_on_reconnect(self) -> None:
        """On reconnect, the in-flight messages are resent first (DUP set), and the messages
        queued behind the max_inflight_messages window follow as acknowledgements free
        the window."""
        hn = Harness(BASE + "max_inflight_messages = 2\n")
        s = hn.subscriber("s", ("t", 1), clean=False)
        p = hn.connected("p")
        for i in range(1, 4):
            p.publish("t", b"%d" % i, qos=1, pid=i)
        self.assertEqual(len(s.take()), 2 * len(publish("t", b"1", qos=1, pid=1)))
        s.lose()
        p.publish("t", b"4", qos=1, pid=4)
        s2 = hn.client()
        s2.connect("s", clean=False)
        self.assertEqual(s2.take(), connack(0, True)
                         + publish("t", b"1", qos=1, pid=1, dup=True)
                         + publish("t", b"2", qos=1, pid=2, dup=True))
        s2.send(Puback(1), Puback(2))
        self.assertEqual(s2.take(), publish("t", b"3", qos=1, pid=3)
                         + publish("t", b"4", qos=1, pid=4))

    def test_max_offline_messages(self) -> None:
        """max_offline_messages caps an offline session's queue: the first messages are
        kept, later ones dropped and counted, and the kept ones are delivered on
        reconnect."""
        hn = Harness(BASE + "max_offline_messages = 2\n")
        s = hn.subscriber("s", ("t", 1), clean=False)
        s.send(Disconnect())
        p = hn.connected("p")
        for i in range(5):
            p.publish("t", b"%d" % i, qos=1, pid=i + 1)
        session = hn.broker.sessions[("", "s")]
        self.assertEqual(len(session.queue), 2)
        self.assertEqual(session.dropped, 3)
        s2 = hn.client()
        s2.connect("s", clean=False)
        self.assertEqual(s2.take(), connack(0, True) + publish("t", b"0", qos=1, pid=1)
                         + publish("t", b"1", qos=1, pid=2))

    def test_persistent_client_expiration(self) -> None:
        """persistent_client_expiration removes an offline persistent session and its
        subscriptions once it has passed, so a later connect has no session present."""
        hn = Harness(BASE + "persistent_client_expiration = 1h\n")
        s = hn.subscriber("s", ("t", 1), clean=False)
        s.send(Disconnect())
        hn.clock.advance(3599)
        self.assertIn(("", "s"), hn.broker.sessions)
        hn.clock.advance(2)
        self.assertNotIn(("", "s"), hn.broker.sessions)
        self.assertEqual(hn.broker.trees, {})
        s2 = hn.client()
        s2.connect("s", clean=False)
        self.assertEqual(s2.take(), connack(0, session_present=False))

    def test_reconnect_cancels_expiry(self) -> None:
        """Reconnecting cancels the pending expiry of a persistent session, and the full
        expiration period starts again at the next disconnect."""
        hn = Harness(BASE + "persistent_client_expiration = 1h\n")
        s = hn.subscriber("s", ("t", 1), clean=False)
        s.lose()
        hn.clock.advance(3000)
        s2 = hn.connected("s", clean=False, session_present=True)
        hn.clock.advance(7200)
        self.assertIn(("", "s"), hn.broker.sessions)
        s2.lose()
        hn.clock.advance(3599)
        self.assertIn(("", "s"), hn.broker.sessions)
        hn.clock.advance(2)
        self.assertNotIn(("", "s"), hn.broker.sessions)

    def test_never_expires_by_default(self) -> None:
        """Without persistent_client_expiration an offline persistent session is kept
        indefinitely."""
        hn = Harness()
        s = hn.subscriber("s", ("t", 1), clean=False)
        s.lose()
        hn.clock.advance(10 ** 9)
        self.assertIn(("", "s"), hn.broker.sessions)

    def test_clean_reconnect_discards_state(self) -> None:
        """A clean session connect discards the previous persistent session, its queue and
        subscriptions (session present 0), and ends the session at disconnect, so a later
        persistent connect starts afresh."""
        hn = Harness()
        s = hn.subscriber("s", ("t", 1), clean=False)
        s.lose()
        p = hn.connected("p")
        p.publish("t", b"queued", qos=1, pid=1)
        s2 = hn.client()
        s2.connect("s", clean=True)
        self.assertEqual(s2.take(), connack(0, session_present=False))
        p.publish("t", b"after", qos=1, pid=2)
        self.assertEqual(s2.take(), b"")
        s2.send(Disconnect())
        self.assertNotIn(("", "s"), hn.broker.sessions)
        # And a persistent connect after that starts afresh too.
        s3 = hn.client()
        s3.connect("s", clean=False)
        self.assertEqual(s3.take(), connack(0, session_present=False))

    def test_clean_session_ends_with_connection(self) -> None:
        """A clean session and its subscriptions are removed when the connection breaks; a
        later persistent connect has no session present."""
        hn = Harness()
        s = hn.subscriber("s", ("t", 1), clean=True)
        s.lose()
        self.assertEqual(hn.broker.sessions, {})
        self.assertEqual(hn.broker.trees, {})
        s2 = hn.client()
        s2.connect("s", clean=False)
        self.assertEqual(s2.take(), connack(0, session_present=False))

    def test_takeover_of_clean_session_by_persistent_connect(self) -> None:
        """A clean session lasts as long as its connection: the connection that
        takes it over does not resume it (3.1.1 s3.1.2.4)."""
        hn = Harness()
        c1 = hn.subscriber("x", ("t", 1), clean=True)
        c2 = hn.client()
        c2.connect("x", clean=False)
        self.assertEqual(c2.take(), connack(0, session_present=False))
        self.assertTrue(c1.closed)
        session = hn.broker.sessions[("", "x")]
        self.assertEqual(session.subscriptions, {})
        self.assertTrue(session.persistent)
        p = hn.connected("p")
        p.publish("t", b"x", qos=1, pid=1)
        self.assertEqual(c2.take(), b"")

    def test_takeover_of_persistent_session(self) -> None:
        """A second connection with the same client id closes the first and resumes its
        persistent session: session present, the unacknowledged message resent with DUP,
        and new messages go only to the new connection."""
        hn = Harness()
        c1 = hn.subscriber("x", ("t", 1), clean=False)
        p = hn.connected("p")
        p.publish("t", b"unacked", qos=1, pid=1)
        self.assertEqual(c1.take(), publish("t", b"unacked", qos=1, pid=1))
        c2 = hn.client()
        c2.connect("x", clean=False)
        self.assertTrue(c1.closed)
        self.assertEqual(c2.take(), connack(0, True)
                         + publish("t", b"unacked", qos=1, pid=1, dup=True))
        p.publish("t", b"next", qos=1, pid=2)
        self.assertEqual(c2.take(), publish("t", b"next", qos=1, pid=2))
        self.assertEqual(c1.take(), b"")

    def test_retry_interval(self) -> None:
        """Unacknowledged PUBLISHes are resent with DUP after retry_interval seconds, and an
        unanswered PUBREL is resent too, until the flow completes; then nothing more is
        sent."""
        hn = Harness(BASE + "retry_interval = 10\n")
        s = hn.subscriber("s", ("t", 2))
        p = hn.connected("p")
        p.publish("t", b"a", qos=1, pid=1)
        p.publish("t", b"b", qos=2, pid=2)
        s.take()
        hn.clock.advance(9)
        self.assertEqual(s.take(), b"")
        hn.clock.advance(1)
        self.assertEqual(s.take(), publish("t", b"a", qos=1, pid=1, dup=True)
                         + publish("t", b"b", qos=2, pid=2, dup=True))
        s.send(Puback(1), Pubrec(2))
        self.assertEqual(s.take(), pubrel(2))
        hn.clock.advance(10)
        self.assertEqual(s.take(), pubrel(2))
        s.send(Pubcomp(2))
        hn.clock.advance(100)
        self.assertEqual(s.take(), b"")

    def test_incoming_qos2_survives_reconnect(self) -> None:
        """A QoS 2 message the broker received but whose PUBREL has not arrived is
        remembered across reconnects of a persistent session: the same packet id sent
        again with DUP gets PUBREC and is not delivered a second time."""
        hn = Harness()
        sub = hn.subscriber("sub", ("t", 0))
        p = hn.connected("p", clean=False)
        p.publish("t", b"once", qos=2, pid=7)
        self.assertEqual(sub.take(), publish("t", b"once"))
        p.lose()
        p2 = hn.connected("p", clean=False, session_present=True)
        p2.publish("t", b"once", qos=2, pid=7, dup=True)
        self.assertEqual(p2.take(), b"\x50\x02\x00\x07")
        self.assertEqual(sub.take(), b"")

    def test_subscribe_then_suback_then_queue(self) -> None:
        """A SUBSCRIBE on a persistent session is answered at once with a SUBACK granting
        the requested QoS."""
        hn = Harness()
        s = hn.connected("s", clean=False)
        s.subscribe(1, ("t", 1))
        self.assertEqual(s.take(), suback(1, 1))


# ---------------------------------------------------------------------------
# Session on its own

class SessionUnitTests(BrokerTestCase):

    def make(self, extra: str = "", persistent: bool = True) -> tuple[Broker, Session]:
        broker = Broker(parse(BASE + extra), Clock())
        session = Session(broker, ("", "c"), persistent, None)
        broker.sessions[session.key] = session
        return broker, session

    def test_fake_connection_provides_interface(self) -> None:
        """The test FakeConnection provides IClientConnection, so the unit tests drive the
        Session through its real interface."""
        self.assertTrue(verifyObject(IClientConnection, FakeConnection()))

    def test_deliver_when_online(self) -> None:
        """An online session writes delivered messages at once, giving QoS 1 messages a
        packet id; a PUBACK for that id is accepted once, and a second one is not."""
        _b, s = self.make()
        conn = FakeConnection()
        s.attach(conn)
        s.deliver(Message("t", b"x"), 0, False)
        s.deliver(Message("t", b"y", 1), 1, False)
        self.assertEqual(conn.written, [publish("t", b"x"), publish("t", b"y", qos=1, pid=1)])
        self.assertTrue(s.puback(1))
        self.assertFalse(s.puback(1))

    def test_detach_keeps_only_qos_above_0(self) -> None:
        """Messages waiting behind a paused connection stay queued when the session
        detaches, except QoS 0 ones."""
        _b, s = self.make()
        conn = FakeConnection()
        s.attach(conn)
        conn.paused = True
        s.deliver(Message("t", b"0"), 0, False)
        s.deliver(Message("t", b"1", 1), 1, False)
        s.detach()
        self.assertEqual([m.payload for m, _q, _r in s.queue], [b"1"])

    def test_unlimited_window_allocates_every_id(self) -> None:
        """max_inflight_messages = 0 is "unlimited", but there are only 65535
        packet ids: the 65536th message waits instead of looping forever."""
        b, s = self.make("max_inflight_messages = 0\n")
        conn = FakeConnection()
        s.attach(conn)
        msg = Message("t", b"", 1)
        for _ in range(65536):
            s.deliver(msg, 1, False)
        self.assertEqual(len(s.inflight), 65535)
        self.assertEqual(len(s.queue), 1)
        self.assertTrue(s.puback(300))
        b.flush()  # queued messages follow at the end of the input batch
        self.assertEqual(len(s.queue), 0)
        self.assertIn(300, s.inflight)

    def test_pubrec_for_qos1_rejected(self) -> None:
        """PUBREC or PUBCOMP for a QoS 1 message in flight is rejected; only PUBACK
        completes it."""
        _b, s = self.make()
        conn = FakeConnection()
        s.attach(conn)
        s.deliver(Message("t", b"y", 1), 1, False)
        self.assertFalse(s.pubrec(1))
        self.assertFalse(s.pubcomp(1))
        self.assertTrue(s.puback(1))

    def test_qos0_never_enters_the_offline_queue(self) -> None:
        """A QoS 0 message for an offline session is dropped and counted, not queued."""
        _b, s = self.make()
        s.deliver(Message("t", b"0"), 0, False)
        self.assertEqual(len(s.queue), 0)
        self.assertEqual(s.dropped, 1)

    def test_non_persistent_offline_drops(self) -> None:
        """An offline non-persistent session queues nothing, not even QoS 1."""
        _b, s = self.make(persistent=False)
        s.deliver(Message("t", b"1", 1), 1, False)
        self.assertEqual(len(s.queue), 0)

    def test_max_online_messages_unlimited(self) -> None:
        """max_online_messages = -1 lets the queue behind a paused connection grow without
        dropping anything."""
        _b, s = self.make("max_online_messages = -1\n")
        conn = FakeConnection()
        s.attach(conn)
        conn.paused = True
        for _ in range(5000):
            s.deliver(Message("t", b""), 0, False)
        self.assertEqual(len(s.queue), 5000)
        self.assertEqual(s.dropped, 0)

    def test_shared_message_object_not_mutated(self) -> None:
        """Delivering one Message object to a session at a lower QoS or without retain
        writes those values but does not change the shared object."""
        _b, s = self.make()
        conn = FakeConnection(level=3)
        s.attach(conn)
        msg = Message("t", b"x", 2, True)
        s.deliver(msg, 1, True)
        s.deliver(msg, 0, False)
        self.assertEqual((msg.topic, msg.payload, msg.qos, msg.retain), ("t", b"x", 2, True))
        self.assertEqual(conn.written, [publish("t", b"x", qos=1, retain=True, pid=1),
                                        publish("t", b"x")])



# ---------------------------------------------------------------------------
# What a session is given: SessionEnv, no broker


class RecordingStore(MemoryStore):
    """A MemoryStore that records the delivery notifications it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def message_queued(self, key, message, qos, retain=False, sub_ids=()):  # type: ignore[no-untyped-def]
        self.calls.append(("queued", key, message.payload, qos))

    def message_sent(self, key, message, qos, retain, packet_id, sub_ids=(),  # type: ignore[no-untyped-def]
                     queued=False):
        self.calls.append(("sent", key, message.payload, packet_id))

    def message_acked(self, key, packet_id):  # type: ignore[no-untyped-def]
        self.calls.append(("acked", key, packet_id))


class SessionEnvTests(SynchronousTestCase):
    """A ``Session`` works from the ``SessionEnv`` it is given, without a broker."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = RecordingStore()
        self.drops: list[tuple[str, bytes, str]] = []
        self.flushes = 0
        self.env = SessionEnv(self.clock, self.store, self.dropped, self.flush,
                              max_inflight=2, max_online=3, max_offline=1,
                              retry_interval=5, upgrade_qos=True)

    def dropped(self, session: Session, message: Message, reason: str) -> None:
        self.drops.append((session.client_id, message.payload, reason))

    def flush(self) -> None:
        self.flushes += 1

    def test_limits_come_from_the_env(self) -> None:
        """The session copies its limits from the env when it is created."""
        s = Session(self.env, SessionKey("", "c"), True, None)
        self.assertEqual((s.max_inflight, s.max_online, s.max_offline, s.retry_interval,
                          s.upgrade_qos), (2, 3, 1, 5, True))
        self.assertIs(s.env, self.env)
        unlimited = SessionEnv(self.clock, self.store, self.dropped, self.flush,
                               max_inflight=0)
        self.assertEqual(Session(unlimited, SessionKey("", "u"), True, None).max_inflight,
                         65535)

    def test_drops_are_reported_to_the_env(self) -> None:
        """An offline QoS 0 message and one over ``max_offline`` go to the env's
        ``dropped`` callable; the queued one is recorded in the env's store."""
        s = Session(self.env, SessionKey("", "c"), True, None)
        s.deliver(Message("t", b"q0"), 0, False)
        s.deliver(Message("t", b"kept", 1), 1, False)
        s.deliver(Message("t", b"over", 1), 1, False)
        self.assertEqual(self.drops, [("c", b"q0", "offline_qos0"), ("c", b"over", "queue_full")])
        self.assertEqual(s.dropped, 2)
        self.assertEqual(self.store.calls, [("queued", ("", "c"), b"kept", 1)])

    def test_store_and_clock_from_the_env(self) -> None:
        """Sending and acknowledging a QoS 1 message is recorded in the env's
        store, and the resend timer runs on the env's clock, then flushes."""
        s = Session(self.env, SessionKey("", "c"), True, None)
        conn = FakeConnection()
        s.attach(conn)
        s.deliver(Message("t", b"m", 1), 1, False)
        self.assertEqual(self.store.calls, [("sent", ("", "c"), b"m", 1)])
        self.clock.advance(5)
        self.assertEqual(conn.written, [publish("t", b"m", qos=1, pid=1),
                                        publish("t", b"m", qos=1, pid=1, dup=True)])
        self.assertEqual(self.flushes, 1)
        self.assertTrue(s.puback(1))
        self.assertEqual(self.store.calls[-1], ("acked", ("", "c"), 1))

    def test_a_broker_still_works_as_the_first_argument(self) -> None:
        """``Session(broker, ...)`` (the old signature) uses the broker's env."""
        broker = Broker(parse(BASE), Clock())
        s = Session(broker, SessionKey("", "c"), True, None)
        self.assertIs(s.env, broker.session_env)

    def test_broker_gives_its_sessions_one_env(self) -> None:
        """The broker's sessions share its env, which holds its clock, store and
        configured limits."""
        clock = Clock()
        broker = Broker(parse(BASE + "max_online_messages = 7\n"), clock)
        a, _ = broker.open_session(("", "a"), True, 0, FakeConnection())
        b, _ = broker.open_session(("", "b"), True, 0, FakeConnection())
        self.assertIs(a.env, broker.session_env)
        self.assertIs(b.env, broker.session_env)
        self.assertIs(broker.session_env.clock, clock)
        self.assertIs(broker.session_env.store, broker.store)
        self.assertEqual(a.max_online, 7)

    def test_replacing_the_brokers_clock_or_store_reaches_sessions(self) -> None:
        """Assigning ``broker.clock`` or ``broker.store`` changes what existing
        sessions use too (tests shift time by replacing the clock)."""
        broker = Broker(parse(BASE), Clock())
        s, _ = broker.open_session(("", "s"), False, None, FakeConnection())
        clock, store = Clock(), RecordingStore()
        broker.clock = clock
        broker.store = store
        self.assertIs(broker.clock, clock)
        self.assertIs(broker.store, store)
        self.assertIs(s.env.clock, clock)
        s.deliver(Message("t", b"m", 1), 1, False)
        self.assertEqual(store.calls, [("sent", ("", "s"), b"m", 1)])

    def test_brokers_message_dropped_can_be_wrapped_later(self) -> None:
        """A session's drops reach ``broker.message_dropped`` as it is when the
        drop happens, so it can be wrapped after the session exists."""
        broker = Broker(parse(BASE), Clock())
        s, _ = broker.open_session(("", "s"), False, None, None)
        seen = []
        original = broker.message_dropped

        def wrapped(session: Session, message: Message, reason: str) -> None:
            seen.append(reason)
            original(session, message, reason)

        broker.message_dropped = wrapped  # type: ignore[method-assign]
        s.detach()
        s.deliver(Message("t", b"x"), 0, False)
        self.assertEqual(seen, ["offline_qos0"])
        self.assertEqual(broker.dropped, 1)
