"""The broker with a durable store: what sessions record, acknowledgements held
until the store is durable (in order, one barrier per input batch), restoring
sessions at startup, and the service's store lifecycle."""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from vmqtw.codec import Disconnect, Puback, Pubcomp, Pubrec, Pubrel
from vmqtw.codec.packets import SubOptions
from vmqtw.config import load
from vmqtw.core.message import Message
from vmqtw.core.session import WAIT_PUBACK, WAIT_PUBCOMP, WAIT_PUBREC
from vmqtw.service import BrokerService, StartupError, make_service
from vmqtw.store import SQLiteStore
from vmqtw.store.memory import MemoryStore
from vmqtw.store.records import QUEUED, StoredDelivery, StoredSession
from vmqtw.test.harness import BASE, BrokerTestCase, Harness
from vmqtw.test.wire import connack, puback, pubcomp, publish, pubrec, pubrel


class GatedStore(MemoryStore):
    """A MemoryStore that logs what it is told and whose durability the test
    controls: every record makes it unsynced until ``commit()``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        self.dirty = False
        self.waiters: list[Deferred[None]] = []

    def _record(self, *call: Any) -> None:
        self.calls.append(call)
        self.dirty = True

    def retained_set(self, mountpoint: str, topic: str, message: Message | None) -> None:
        super().retained_set(mountpoint, topic, message)
        self._record("retained_set", topic)

    def session_updated(self, session: Any) -> None:
        self._record("session_updated", session.client_id)

    def session_deleted(self, key: Any) -> None:
        self._record("session_deleted", key[1])

    def message_queued(self, key: Any, message: Message, qos: int, retain: bool = False,
                       sub_ids: tuple[int, ...] = ()) -> None:
        self._record("queued", key[1], message.payload, qos, retain, sub_ids)

    def message_dequeued(self, key: Any, message: Message) -> None:
        self._record("dequeued", key[1], message.payload)

    def message_sent(self, key: Any, message: Message, qos: int, retain: bool, packet_id: int,
                     sub_ids: tuple[int, ...] = (), queued: bool = False) -> None:
        self._record("sent", key[1], message.payload, qos, packet_id, queued)

    def message_released(self, key: Any, packet_id: int) -> None:
        self._record("released", key[1], packet_id)

    def message_acked(self, key: Any, packet_id: int) -> None:
        self._record("acked", key[1], packet_id)

    def qos2_received(self, key: Any, packet_id: int) -> None:
        self._record("qos2_received", key[1], packet_id)

    def qos2_released(self, key: Any, packet_id: int) -> None:
        self._record("qos2_released", key[1], packet_id)

    def unsynced(self) -> bool:
        return self.dirty

    def durable(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiters.append(d)
        return d

    def commit(self, n: int | None = None) -> None:
        """Fire the oldest ``n`` (default: all) durable() Deferreds."""
        waiters = self.waiters[:n] if n is not None else self.waiters
        self.waiters = self.waiters[len(waiters):]
        if not self.waiters:
            self.dirty = False
        for d in waiters:
            d.callback(None)

    def take_calls(self, *names: str) -> list[tuple[Any, ...]]:
        calls, self.calls = self.calls, []
        return [c for c in calls if not names or c[0] in names]


def harness(extra: str = "") -> tuple[Harness, GatedStore]:
    store = GatedStore()
    return Harness(BASE + extra, store=store), store


class RecordingTests(BrokerTestCase):
    """What a persistent session tells the store (and a clean one does not)."""

    def test_delivery_to_an_online_persistent_session(self) -> None:
        """Each message sent to an online persistent session is recorded as sent (with its
        QoS and packet id) before it goes out; PUBACK and PUBCOMP record it as acked,
        PUBREC as released."""
        hn, store = harness()
        s = hn.subscriber("s", ("t", 2), clean=False)
        p = hn.connected("p")
        store.take_calls()
        p.publish("t", b"one", qos=1, pid=1)
        p.publish("t", b"two", qos=2, pid=2)
        self.assertEqual(store.take_calls("sent", "queued"),
                         [("sent", "s", b"one", 1, 1, False), ("sent", "s", b"two", 2, 2, False)])
        store.commit()
        s.take()
        s.send(Puback(1), Pubrec(2))
        self.assertEqual(store.take_calls(), [("acked", "s", 1), ("released", "s", 2)])
        s.send(Pubcomp(2))
        self.assertEqual(store.take_calls(), [("acked", "s", 2)])

    def test_offline_queue_then_drain(self) -> None:
        """Messages for an offline persistent session are recorded as queued (QoS 0 is never
        queued); on reconnect each one taken off the queue is recorded as sent from the
        queue, the next one only once the window frees."""
        hn, store = harness("max_inflight_messages = 1\n")
        s = hn.subscriber("s", ("t", 1), clean=False)
        s.send(Disconnect())
        p = hn.connected("p")
        store.take_calls()
        p.publish("t", b"a", qos=1, pid=1)
        p.publish("t", b"b", qos=1, pid=2)
        p.publish("t", b"c", qos=0)  # QoS 0 is never queued offline
        self.assertEqual(store.take_calls("queued", "sent"),
                         [("queued", "s", b"a", 1, False, ()), ("queued", "s", b"b", 1, False, ())])
        store.commit()
        s2 = hn.client()
        s2.connect("s", clean=False)
        # Taken off the queue and sent: the queued entry becomes the inflight one.
        self.assertEqual(store.take_calls("dequeued", "sent"), [("sent", "s", b"a", 1, 1, True)])
        s2.send(Puback(1))
        self.assertEqual(store.take_calls("acked", "dequeued", "sent"),
                         [("acked", "s", 1), ("sent", "s", b"b", 1, 2, True)])

    def test_incoming_qos2_ids_of_a_persistent_publisher(self) -> None:
        """The packet id of an incoming QoS 2 PUBLISH from a persistent session is recorded
        before PUBREC goes out, and recorded as released at PUBREL."""
        hn, store = harness()
        p = hn.connected("p", clean=False)
        store.take_calls()
        p.publish("nobody", b"x", qos=2, pid=7)
        self.assertEqual(store.take_calls("qos2_received"), [("qos2_received", "p", 7)])
        store.commit()
        self.assertEqual(p.take(), pubrec(7))
        p.send(Pubrel(7))
        self.assertEqual(store.take_calls(), [("qos2_released", "p", 7)])

    def test_clean_sessions_record_nothing(self) -> None:
        """Clean sessions record nothing in the store, and their QoS 2 acknowledgements go
        out at once."""
        hn, store = harness()
        s = hn.subscriber("s", ("t", 2))
        p = hn.connected("p")
        p.publish("t", b"x", qos=2, pid=1)
        s.send(Pubrec(1))
        s.send(Pubcomp(1))
        p.send(Pubrel(1))
        self.assertEqual(store.take_calls(), [])
        self.assertEqual(p.take(), pubrec(1) + pubcomp(1))

    def test_retained_set_is_recorded(self) -> None:
        """A retained PUBLISH is recorded in the store, and its PUBACK waits until the store
        is durable."""
        hn, store = harness()
        p = hn.connected("p")
        p.publish("r", b"keep", qos=1, retain=True, pid=1)
        self.assertEqual(store.take_calls(), [("retained_set", "r")])
        self.assertEqual(p.take(), b"")  # the PUBACK waits for the store
        store.commit()
        self.assertEqual(p.take(), puback(1))


class HeldAcknowledgementTests(BrokerTestCase):

    def test_memory_store_acknowledges_at_once(self) -> None:
        """With the memory store, a QoS 1 PUBLISH to a persistent session is acknowledged at
        once."""
        hn = Harness()
        hn.subscriber("s", ("t", 1), clean=False)
        p = hn.connected("p")
        p.publish("t", b"x", qos=1, pid=1)
        self.assertEqual(p.take(), puback(1))

    def test_not_held_when_nothing_was_recorded(self) -> None:
        """When a PUBLISH recorded nothing (its only subscriber is a clean session), the
        PUBACK goes out at once without waiting for the store."""
        hn, store = harness()
        hn.subscriber("s", ("t", 1))  # a clean session: nothing to record
        p = hn.connected("p")
        p.publish("t", b"x", qos=1, pid=1)
        self.assertEqual(p.take(), puback(1))
        self.assertEqual(store.waiters, [])

    def test_one_barrier_per_input_batch_and_release_together(self) -> None:
        """Ten PUBLISHes received in one chunk wait on a single durable() barrier, and their
        PUBACKs are released together, in order, when it fires."""
        hn, store = harness()
        hn.subscriber("s", ("t", 1), clean=False)
        store.commit()
        p = hn.connected("p")
        from vmqtw.codec.packets import Publish
        p.send(*[Publish("t", b"%d" % i, 1, False, False, i) for i in range(1, 11)])
        self.assertEqual(p.take(), b"")
        self.assertEqual(len(store.waiters), 1, "one durable() for the whole batch")
        store.commit()
        self.assertEqual(p.take(), b"".join(puback(i) for i in range(1, 11)))

    def test_each_batch_waits_for_its_own_barrier(self) -> None:
        """PUBLISHes received in separate chunks each wait on their own durable() barrier
        and are acknowledged as each barrier fires."""
        hn, store = harness()
        hn.subscriber("s", ("t", 1), clean=False)
        store.commit()
        p = hn.connected("p")
        p.publish("t", b"1", qos=1, pid=1)
        p.publish("t", b"2", qos=1, pid=2)
        self.assertEqual(len(store.waiters), 2)
        store.commit(1)
        self.assertEqual(p.take(), puback(1))
        store.commit(1)
        self.assertEqual(p.take(), puback(2))

    def test_later_output_stays_behind_held_acks(self) -> None:
        """While an acknowledgement is held for the store, everything written to that
        connection afterwards (a delivered message, a PUBCOMP) waits behind it, in order;
        once released, output flows directly again."""
        hn, store = harness()
        hn.subscriber("s", ("t", 1), clean=False)
        store.commit()
        p = hn.subscriber("p", ("echo", 0))
        p.publish("t", b"1", qos=1, pid=1)       # held
        q = hn.connected("q")
        q.publish("echo", b"after", qos=0)      # delivered to p: must follow the PUBACK
        p.send(Pubrel(99))                      # answered (PUBCOMP): after both
        self.assertEqual(p.take(), b"")
        store.commit()
        self.assertEqual(p.take(), puback(1) + publish("echo", b"after") + pubcomp(99))
        q.publish("echo", b"now", qos=0)
        self.assertEqual(p.take(), publish("echo", b"now"))

    def test_qos2_handshake_is_held_both_ways(self) -> None:
        """In a QoS 2 flow between persistent sessions, the publisher's PUBREC and PUBCOMP
        and the subscriber's PUBLISH and PUBREL each wait until the store is durable."""
        hn, store = harness()
        s = hn.subscriber("s", ("t", 2), clean=False)
        store.commit()
        p = hn.connected("p", clean=False)
        store.commit()
        p.publish("t", b"x", qos=2, pid=5)
        self.assertEqual((p.take(), s.take()), (b"", b""))  # PUBREC and the PUBLISH wait
        store.commit()
        self.assertEqual((p.take(), s.take()), (pubrec(5), publish("t", b"x", qos=2, pid=1)))
        s.send(Pubrec(1))
        p.send(Pubrel(5))
        self.assertEqual((p.take(), s.take()), (b"", b""))  # PUBCOMP and PUBREL wait
        store.commit()
        self.assertEqual((p.take(), s.take()), (pubcomp(5), pubrel(1)))

    def test_store_failure_closes_without_acknowledging(self) -> None:
        """If the store fails to make a write durable, the held PUBACK is never sent and the
        publisher's connection is closed."""
        hn, store = harness()
        hn.subscriber("s", ("t", 1), clean=False)
        store.commit()
        p = hn.connected("p")
        p.publish("t", b"x", qos=1, pid=1)
        (d,) = store.waiters
        from vmqtw.store import StoreError
        d.errback(StoreError("/x/vmqtw.db: writing to the store failed: disk full"))
        self.assertEqual(p.take(), b"")
        self.assertTrue(p.closed)

    def test_closing_drops_held_output(self) -> None:
        """Output held for the store is dropped when the client disconnects before the store
        is durable."""
        hn, store = harness()
        hn.subscriber("s", ("t", 1), clean=False)
        store.commit()
        p = hn.connected("p")
        p.publish("t", b"x", qos=1, pid=1)
        p.send(Disconnect())
        self.assertTrue(p.closed)
        store.commit()
        self.assertEqual(p.take(), b"")


class RestoreTests(BrokerTestCase):

    def stored(self, **kw: Any) -> StoredSession:
        defaults: dict[str, Any] = dict(mountpoint="", client_id="s", expiry_interval=None,
                                        disconnected_at=0.0)
        defaults.update(kw)
        return StoredSession(**defaults)

    def test_restored_session_resends_inflight_then_queue(self) -> None:
        """A session restored from the store resends its deliveries on reconnect: PUBLISHes
        awaiting PUBACK or PUBREC with DUP and their packet ids, PUBREL for those
        awaiting PUBCOMP, then the queued message with a new id; its subscription routes
        again and its incoming QoS 2 ids are known."""
        hn = Harness()
        m = [Message("t", b"m%d" % i, 2) for i in range(4)]
        stored = self.stored(subscriptions={"t": SubOptions(2)}, deliveries=[
            StoredDelivery(m[0], 1, False, WAIT_PUBACK, 3),
            StoredDelivery(m[1], 2, False, WAIT_PUBREC, 4),
            StoredDelivery(m[2], 2, False, WAIT_PUBCOMP, 5),
            StoredDelivery(m[3], 2, True, QUEUED, None),
        ], incoming_qos2={9})
        self.assertEqual(hn.broker.restore([stored]), 1)
        s = hn.client()
        s.connect("s", clean=False)
        self.assertEqual(s.take(), connack(0, True)
                         + publish("t", b"m0", qos=1, pid=3, dup=True)
                         + publish("t", b"m1", qos=2, pid=4, dup=True)
                         + pubrel(5)
                         + publish("t", b"m3", qos=2, retain=True, pid=6))
        # The subscription is back in the tree.
        p = hn.connected("p")
        p.publish("t", b"live", qos=1, pid=1)
        self.assertEqual(s.take(), publish("t", b"live", qos=1, pid=7))
        # The incoming QoS 2 id is known: a resent PUBLISH is not routed again.
        s.send(Pubrel(9))
        self.assertEqual(s.take(), pubcomp(9))

    def test_restored_session_expires_after_the_rest_of_its_interval(self) -> None:
        """A restored offline session expires after what was left of its expiry interval
        when the broker stopped, counted from its disconnect time."""
        hn = Harness()
        hn.clock.advance(1000)
        hn.broker.restore([self.stored(expiry_interval=100, disconnected_at=940.0)])
        hn.clock.advance(39)
        self.assertIn(("", "s"), hn.broker.sessions)
        hn.clock.advance(1)
        self.assertNotIn(("", "s"), hn.broker.sessions)

    def test_restored_shared_and_mqtt5_subscriptions(self) -> None:
        """Restored shared and MQTT 5.0 subscriptions (options and subscription identifiers)
        route again: messages for the offline session are queued with their subscription
        identifiers."""
        hn = Harness()
        hn.broker.restore([self.stored(
            subscriptions={"$share/g/t": SubOptions(1), "a/#": SubOptions(1, True, True, 2)},
            sub_ids={"a/#": 5})])
        session = hn.broker.sessions[("", "s")]
        self.assertEqual(hn.broker.publish(Message("t", b"x", 1), ""), 1)
        self.assertEqual(hn.broker.publish(Message("a/b", b"y", 1), ""), 1)
        self.assertEqual([item[0].payload for item in session.queue], [b"x", b"y"])
        self.assertEqual(session.queue[1][3], (5,))


class ServiceStoreTests(TestCase):
    """BrokerService and make_service with the SQLite store (in this process)."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmqtw-svc-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def config(self, text: str = "") -> Any:
        path = os.path.join(self.dir, "broker.conf")
        with open(path, "w") as f:
            f.write("allow_anonymous = on\nlistener.tcp.default = 127.0.0.1:0\n" + text)
        return load(path)

    def test_direct_construction_keeps_the_memory_store(self) -> None:
        """A BrokerService built directly uses the memory store."""
        service = BrokerService(self.config(), reactor)
        self.assertIsInstance(service.broker.store, MemoryStore)

    def test_make_service_is_durable_by_default(self) -> None:
        """make_service uses the SQLite store by default, at data/vmqtw.db next to the
        configuration file."""
        service = make_service(self.config(), reactor)
        self.addCleanup(service.broker.store.close)
        self.assertIsInstance(service.broker.store, SQLiteStore)
        self.assertEqual(service.broker.store.path, os.path.join(self.dir, "data", "vmqtw.db"))

    def test_make_service_store_off(self) -> None:
        """With persistent_store.enabled = off, make_service uses the memory store."""
        service = make_service(self.config("persistent_store.enabled = off\n"), reactor)
        self.assertIsInstance(service.broker.store, MemoryStore)

    def test_corrupt_store_is_a_startup_error(self) -> None:
        """A store file that is not a database makes make_service fail with a StartupError
        naming the file."""
        os.makedirs(os.path.join(self.dir, "data"))
        path = os.path.join(self.dir, "data", "vmqtw.db")
        with open(path, "wb") as f:
            f.write(b"garbage" * 1000)
        e = self.assertRaises(StartupError, make_service, self.config(), reactor)
        self.assertIn(path, str(e))

    @inlineCallbacks
    def test_restart_in_process(self) -> None:
        """Stopping a service and starting a new one on the same configuration restores the
        persistent sessions with their subscriptions and queued messages, and the retained
        messages."""
        config = self.config()
        first = make_service(config, reactor)
        first.privilegedStartService()
        first.startService()
        broker = first.broker
        session, _ = broker.open_session(("", "s"), False, None, None)
        session.conn = None
        broker.subscribe(session, "t/#", SubOptions(2))
        broker.connection_closed(session)
        broker.publish(Message("t/1", b"queued", 2), "")
        broker.publish(Message("r/1", b"kept", 1, True), "")
        yield first.stopService()
        second = make_service(config, reactor)
        second.privilegedStartService()  # restores before binding
        second.startService()
        self.addCleanup(second.stopService)
        session = second.broker.sessions[("", "s")]
        self.assertEqual(session.subscriptions, {"t/#": SubOptions(2)})
        self.assertEqual([(i[0].payload, i[1]) for i in session.queue], [(b"queued", 2)])
        self.assertEqual([m.payload for m in second.broker.store.retained_match("", "r/#")],
                         [b"kept"])
