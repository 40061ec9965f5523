"""The durable store with real broker processes and real clients.

Each test runs ``python -m vmqtw -c FILE`` (or ``twistd -n vmqtw``) with a
configuration that has no storage keys, so the store is the default one in
``data/`` next to the file; the broker is stopped (SIGTERM) or killed
(SIGKILL) and started again on the same file.  Brokers listen on port 0 and
the test reads the port from the log line ``listener tcp.default on
127.0.0.1:PORT``.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks

from tests.support import (
    REPO, TIMEOUT, TWISTD, BrokerTestCase, MQTTv5, MQTTv311, Paho, RunningProcess, in_thread,
    payloads, run_process,
)

PYTHON_M_VMQTW = [sys.executable, "-m", "vmqtw"]
PROCESS_TIMEOUT = 30.0
LISTENING = rb"listener tcp\.default on 127\.0\.0\.1:(\d+)"


class Paho5(Paho):
    """An MQTT 5.0 paho client that resumes its session (clean start off) and
    asks for a Session Expiry Interval."""

    def __init__(self, port: int, client_id: str, expiry: int) -> None:
        super().__init__(port, client_id, MQTTv5)
        self.expiry = expiry

    def connect(self, expect_success: bool = True) -> tuple[int, bool]:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.expiry
        return super().connect(expect_success, clean_start=False, properties=props)


class DurableStoreTests(BrokerTestCase):
    timeout = 180

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmqtw-durable-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.config = os.path.join(self.dir, "broker.conf")
        with open(self.config, "w", encoding="utf-8") as f:
            f.write("allow_anonymous = on\nlistener.tcp.default = 127.0.0.1:0\n"
                    "listener.tcp.default.allowed_protocol_versions = 3,4,5\n")
        self.store_file = os.path.join(self.dir, "data", "vmqtw.db")

    @inlineCallbacks
    def start(self, twistd: bool = False):
        """Start a broker on the config; fires with (process, port)."""
        if twistd:
            argv = [TWISTD[0], *TWISTD[1:], "-n", "--pidfile=", "vmqtw", "-c", self.config]
        else:
            argv = [*PYTHON_M_VMQTW, "-c", self.config]
        proc = RunningProcess(argv[0], argv[1:], cwd=self.dir if twistd else REPO)
        self.addCleanup(self._kill, proc)
        m = yield proc.wait_for_output(LISTENING, timeout=PROCESS_TIMEOUT)
        return proc, int(m.group(1))

    @staticmethod
    def _kill(proc: RunningProcess) -> Any:
        if proc.result is None and not proc.proto.ended.called:
            return proc.stop()
        return None

    @inlineCallbacks
    def stop(self, proc: RunningProcess):
        """SIGTERM; the broker must exit cleanly, without errors."""
        out, err, code = yield proc.stop(timeout=PROCESS_TIMEOUT)
        self.assertIn(code, (0, -15), f"{out!r} {err!r}")
        self.assertEqual(err, b"")
        self.assertNotIn(b"Traceback", out)
        return out

    @inlineCallbacks
    def kill(self, proc: RunningProcess):
        """SIGKILL: no chance to flush or close anything."""
        proc.transport.signalProcess("KILL")
        out, err, code = yield proc.proto.ended
        self.assertEqual(code, -9)

    def client(self, port: int, client_id: str, clean: bool = True, **kw: Any) -> Paho:
        return self.paho(port, client_id, MQTTv311, clean_session=clean, **kw)

    # -- tests --------------------------------------------------------------------------

    @inlineCallbacks
    def test_retained_and_persistent_subscriptions_survive_a_restart(self):
        """After a clean stop (twistd) and a restart (python -m vmqtw) on the same store, a
        persistent session is restored with its subscriptions and their QoS (session
        present, new messages delivered) and retained messages survive, a cleared one
        staying cleared."""
        proc, port = yield self.start(twistd=True)
        sub = self.client(port, "keeper", clean=False)
        pub = self.client(port, "pub1")

        def before():
            sub.connect()
            sub.subscribe("news/#", 2)
            sub.subscribe("alerts", 1)
            sub.disconnect()
            pub.connect()
            pub.publish("status/door", b"open", 1, retain=True)
            pub.publish("status/gone", b"x", 1, retain=True)
            pub.publish("status/gone", b"", 1, retain=True)  # cleared
            pub.disconnect()

        yield in_thread(before)
        yield self.stop(proc)
        self.assertTrue(os.path.isfile(self.store_file))
        proc, port = yield self.start()  # python -m vmqtw on the same store
        sub = self.client(port, "keeper", clean=False)
        pub = self.client(port, "pub2")
        reader = self.client(port, "reader")

        def after():
            present = sub.connect()[1]
            pub.connect()
            pub.publish("news/today", b"hello", 2)
            pub.publish("alerts", b"fire", 1)
            got = [(m.topic, m.payload, m.qos) for m in sub.get_many(2)]
            reader.connect()
            reader.subscribe("status/#", 1)
            retained = reader.get()
            return present, got, (retained.topic, retained.payload, retained.retain)

        present, got, retained = yield in_thread(after)
        self.assertTrue(present, "the session was not restored")
        # Both arrive; their relative order is not the broker's to keep here:
        # paho hands a QoS 2 message to the app only at PUBREL, so the QoS 1
        # one published after it may overtake it (MQTT orders per QoS level).
        self.assertEqual(sorted(got), [("alerts", b"fire", 1), ("news/today", b"hello", 2)])
        self.assertEqual(retained, ("status/door", b"open", 1))
        yield in_thread(reader.close)
        yield in_thread(sub.close)
        yield in_thread(pub.close)
        yield self.stop(proc)

    @inlineCallbacks
    def test_offline_subscriber_gets_every_message_in_order_exactly_once(self):
        """Messages queued for an offline persistent session before a restart, and published
        after it, are all delivered exactly once and in order per QoS level; the restart
        logs the restored sessions and queued messages."""
        proc, port = yield self.start()
        sub = self.client(port, "offline", clean=False)
        pub = self.client(port, "pub-a", clean=False)  # its QoS 2 ids are kept too
        first = [(f"q/{i}", b"before-%d" % i, 1 + i % 2) for i in range(30)]

        def subscribe_and_publish():
            sub.connect()
            sub.subscribe("q/#", 2)
            sub.disconnect()
            pub.connect()
            for topic, payload, qos in first:
                pub.publish(topic, payload, qos)
            pub.disconnect()

        yield in_thread(subscribe_and_publish)
        yield self.stop(proc)
        proc, port = yield self.start()
        self.assertRegex(proc.proto.out.decode(), r"restored 2 sessions, 30 queued")
        pub = self.client(port, "pub-a", clean=False)
        sub = self.client(port, "offline", clean=False)
        second = [(f"q/{i}", b"after-%d" % i, 2 - i % 2) for i in range(30)]

        def publish_then_read():
            pub.connect()
            for topic, payload, qos in second:
                pub.publish(topic, payload, qos)
            pub.publish("q/end", b"marker", 2)  # QoS 2: handed over after all the others
            present = sub.connect()[1]
            got = []
            while True:  # everything up to the marker; duplicates would show up here
                m = sub.get()
                got.append((m.topic, m.payload, m.qos))
                if m.payload == b"marker":
                    return present, got

        present, got = yield in_thread(publish_then_read)
        self.maxDiff = None
        self.assertTrue(present)
        expected = first + second + [("q/end", b"marker", 2)]
        # Exactly once each...
        self.assertEqual(sorted(got), sorted(expected))
        # ...and in order.  The broker sends them in order; paho hands a QoS 2
        # message to the application at PUBREL (one more round trip), so the
        # two QoS levels are compared each on its own.
        for qos in (1, 2):
            self.assertEqual([m for m in got if m[2] == qos], [m for m in expected if m[2] == qos])
        yield in_thread(sub.close)
        yield in_thread(pub.close)
        yield self.stop(proc)

    @inlineCallbacks
    def test_acknowledged_messages_survive_sigkill(self):
        """Every QoS 1 message the broker has acknowledged (PUBACK) is on disk: after
        SIGKILL right after the last PUBACK and a restart, the offline subscriber gets all
        2000, in order."""
        n = 2000  # enough that commits take a while: the last ones are not on disk
        with open(self.config, "a", encoding="utf-8") as f:  # when acknowledged too early
            # and, as in VerneMQ, keep the whole backlog when the subscriber comes back
            # (without it only max_online_messages of it would move online)
            f.write("max_offline_messages = -1\noverride_max_online_messages = on\n")
        proc, port = yield self.start()
        sub = self.client(port, "durable-sub", clean=False)
        yield in_thread(lambda: (sub.connect(), sub.subscribe("k/#", 1), sub.disconnect()))
        pub = self.client(port, "killer-pub")

        def publish_all():
            pub.connect()
            infos = [pub.client.publish(f"k/{i}", b"%d;" % i + bytes(4000), 1) for i in range(n)]
            for info in infos:  # every PUBACK received
                info.wait_for_publish(TIMEOUT)
                if not info.is_published():
                    raise AssertionError("a PUBACK did not come")

        yield in_thread(publish_all)
        yield self.kill(proc)  # right after the last PUBACK
        yield in_thread(pub.close)
        proc, port = yield self.start()
        sub = self.client(port, "durable-sub", clean=False)

        def read_all():
            present = sub.connect()[1]
            return present, payloads(sub.get_many(n))

        present, got = yield in_thread(read_all)
        self.assertTrue(present)
        self.assertEqual(got, [b"%d;" % i + bytes(4000) for i in range(n)])
        yield in_thread(sub.close)
        yield self.stop(proc)

    @inlineCallbacks
    def test_acknowledged_messages_survive_sigkill_with_an_online_subscriber(self):
        """With the persistent subscriber online and acknowledging, most records are
        cancelled before they are written (the PUBACK to the publisher then follows
        the subscriber's).  SIGKILL right after the last PUBACK to the publisher and a
        restart: every message was either received before the kill or is delivered
        after it (QoS 1: duplicates allowed, nothing lost)."""
        n = 2000
        proc, port = yield self.start()
        sub = self.client(port, "online-sub", clean=False)
        yield in_thread(lambda: (sub.connect(), sub.subscribe("k/#", 1)))
        pub = self.client(port, "killer-pub")

        def publish_all():
            pub.connect()
            infos = [pub.client.publish(f"k/{i}", b"%d" % i, 1) for i in range(n)]
            for info in infos:  # every PUBACK received
                info.wait_for_publish(TIMEOUT)
                if not info.is_published():
                    raise AssertionError("a PUBACK did not come")

        yield in_thread(publish_all)
        yield self.kill(proc)  # right after the last PUBACK
        yield in_thread(sub.wait_disconnected)  # paho's thread is done: all it got is queued
        yield in_thread(pub.close)
        before = set()
        while not sub.messages.empty():
            before.add(sub.messages.get_nowait().payload)
        proc, port = yield self.start()
        sub = self.client(port, "online-sub", clean=False)
        pub = self.client(port, "marker-pub")

        def read_rest():
            present = sub.connect()[1]
            pub.connect()
            pub.publish("k/end", b"end", 1)  # after whatever the store sends again
            got = []
            for _ in range(n + 1):
                m = sub.get()
                if m.payload == b"end":
                    return present, got
                got.append(m.payload)
            raise AssertionError("no end marker")

        present, after = yield in_thread(read_rest)
        self.assertTrue(present)
        self.assertEqual(before | set(after), {b"%d" % i for i in range(n)})
        yield in_thread(sub.close)
        yield in_thread(pub.close)
        yield self.stop(proc)

    @inlineCallbacks
    def test_session_expiry_across_a_restart(self):
        """Session expiry counts across a restart: a session whose expiry ran out while the
        broker was down is purged at startup (and logged), a long one is restored, and one
        with time left expires while the broker runs."""
        proc, port = yield self.start()
        short = Paho5(port, "short", expiry=1)
        later = Paho5(port, "later", expiry=4)
        long = Paho5(port, "long", expiry=3600)
        for c in (short, later, long):
            self.addCleanup(lambda c=c: in_thread(c.close))

        def sessions():
            for c in (short, later, long):
                c.connect()
                c.subscribe("exp/#", 1)
                c.disconnect()

        yield in_thread(sessions)
        yield self.stop(proc)
        # No broker runs, so there is no event to wait for: the passage of time
        # is what the test is about ("short" has 1 s and runs out while down).
        yield task.deferLater(reactor, 1.5, lambda: None)
        proc, port = yield self.start()
        self.assertIn(b"purged 1 expired sessions", bytes(proc.proto.out))
        for c in (short, later, long):
            c.port = port

        def present(c: Paho5) -> bool:
            flag = c.connect()[1]
            c.disconnect()
            return flag

        self.assertFalse((yield in_thread(present, short)))
        self.assertTrue((yield in_thread(present, long)))
        # "later" had 4 s: what is left of them runs out while the broker is up,
        # which the broker logs when its expiry timer fires.
        yield proc.wait_for_output(rb"session 'later' \(mountpoint ''\) expired",
                                   timeout=PROCESS_TIMEOUT)
        self.assertFalse((yield in_thread(present, later)))
        yield self.stop(proc)

    @inlineCallbacks
    def test_corrupt_store_refused_with_a_clear_error(self):
        """A store file that is not an SQLite database stops both python -m vmqtw and twistd
        with exit status 1 and one error line naming the file, no traceback, no listener,
        and the file left untouched."""
        os.makedirs(os.path.dirname(self.store_file))
        garbage = b"definitely not an SQLite database\n" * 200
        with open(self.store_file, "wb") as f:
            f.write(garbage)
        for argv in ([*PYTHON_M_VMQTW[1:], "-c", self.config],
                     [*TWISTD[1:], "-n", "--pidfile=", "vmqtw", "-c", self.config]):
            out, err, code = yield run_process(sys.executable, argv, timeout=PROCESS_TIMEOUT,
                                               cwd=self.dir)
            self.assertEqual(code, 1, f"{out!r} {err!r}")
            lines = err.decode().strip().splitlines()
            self.assertEqual(len(lines), 1, err)
            self.assertIn(self.store_file, lines[0])
            self.assertIn("not a database", lines[0])
            self.assertNotIn(b"Traceback", out + err)
            self.assertNotIn(b"listener tcp.default on", out)
            with open(self.store_file, "rb") as f:
                self.assertEqual(f.read(), garbage, "the store file was modified")

    @inlineCallbacks
    def test_truncated_store_refused(self):
        """A store file truncated to half its size stops the broker with exit status 1 and
        an error naming the file as malformed, and the file is not modified."""
        proc, port = yield self.start()
        pub = self.client(port, "filler")

        def fill():
            pub.connect()
            for i in range(200):
                pub.publish(f"fill/{i}", b"x" * 500, 1, retain=True)
            pub.disconnect()

        yield in_thread(fill)
        yield self.stop(proc)
        size = os.path.getsize(self.store_file)
        with open(self.store_file, "r+b") as f:
            f.truncate(size // 2)
        out, err, code = yield run_process(
            sys.executable, [*PYTHON_M_VMQTW[1:], "-c", self.config], timeout=PROCESS_TIMEOUT,
            cwd=REPO)
        self.assertEqual(code, 1, f"{out!r} {err!r}")
        self.assertIn(self.store_file.encode(), err)
        self.assertIn(b"malformed", err)
        self.assertEqual(os.path.getsize(self.store_file), size // 2)
