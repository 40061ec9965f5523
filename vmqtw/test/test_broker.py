"""The Broker with plain objects: fake connections, a Clock, no protocol."""
from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import SubOptions
from vmqtw.config import parse
from vmqtw.core.broker import SHARED_SUBSCRIPTION_POLICIES, Broker, SharedGroup
from vmqtw.core.message import Message
from vmqtw.core.session import Session
from vmqtw.test.harness import BASE, FakeConnection
from vmqtw.test.wire import publish


class ScriptedChoice:
    """A stand-in for ``random.Random``: ``choice`` returns the scripted index of
    each pool (bounded by its size) and records the pool sizes."""

    def __init__(self, picks: list[int]) -> None:
        self.picks = list(picks)
        self.pool_sizes: list[int] = []

    def choice(self, pool: list[Any]) -> Any:
        self.pool_sizes.append(len(pool))
        return pool[self.picks.pop(0) % len(pool)]


class RecordingLog:
    """Stands in for a twisted.logger.Logger."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def _record(self, level: str) -> Any:
        def emit(fmt: str = "", *args: Any, **kw: Any) -> None:
            self.events.append((level, fmt, kw))
        return emit

    def __getattr__(self, name: str) -> Any:
        if name in ("debug", "info", "warn", "error", "failure", "critical"):
            return self._record(name)
        raise AttributeError(name)


class BrokerTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.make()

    def make(self, extra: str = "") -> None:
        self.clock = Clock()
        self.log = RecordingLog()
        self.broker = Broker(parse(BASE + extra), self.clock, log=self.log)
        self.events: list[tuple[str, tuple[str, str]]] = []
        self.broker.session_observers.append(lambda e, s: self.events.append((e, s.key)))

    def online(self, client_id: str, clean: bool = True, mountpoint: str = "",
               level: int = 4) -> tuple[Session, FakeConnection]:
        conn = FakeConnection(level)
        expiry = 0 if clean else None
        session, _present = self.broker.open_session((mountpoint, client_id), clean, expiry,
                                                     conn)
        self.broker.session_resumed(session)
        return session, conn

    def sub(self, session: Session, topic_filter: str, qos: int = 0, **kw: Any) -> bool:
        return self.broker.subscribe(session, topic_filter, SubOptions(qos, **kw))

    # -- sessions

    def test_open_new_and_resume(self) -> None:
        """A persistent session survives its connection closing: opening the same key again
        returns the same session with session present set, and observers see register,
        offline, wakeup."""
        s, conn = self.online("a", clean=False)
        self.assertEqual(self.events, [("register", ("", "a"))])
        self.broker.connection_closed(s)
        self.assertIsNone(s.conn)
        conn2 = FakeConnection()
        s2, present = self.broker.open_session(("", "a"), False, None, conn2)
        self.assertIs(s2, s)
        self.assertTrue(present)
        self.assertEqual([e for e, _k in self.events], ["register", "offline", "wakeup"])

    def test_takeover_tells_old_connection(self) -> None:
        """Opening a session whose key is still connected tells the old connection it was
        taken over and moves the session to the new connection, session present set."""
        s, conn = self.online("a", clean=False)
        conn2 = FakeConnection()
        s2, present = self.broker.open_session(("", "a"), False, None, conn2)
        self.assertTrue(conn.taken_over)
        self.assertIs(s2, s)
        self.assertTrue(present)
        self.assertIs(s.conn, conn2)

    def test_clean_session_discarded_on_close(self) -> None:
        """A clean session is discarded with its subscriptions when its connection closes,
        and observers see gone."""
        s, _conn = self.online("a")
        self.sub(s, "t")
        self.broker.connection_closed(s)
        self.assertEqual(self.broker.sessions, {})
        self.assertEqual(self.broker.trees, {})
        self.assertEqual(self.events[-1], ("gone", ("", "a")))

    def test_expiry(self) -> None:
        """An offline persistent session expires exactly when its expiry interval has
        passed: it is kept one second before, then removed with its subscriptions and
        observers see expired."""
        self.make("persistent_client_expiration = 1d\n")
        s, _conn = self.online("a", clean=False)
        s.expiry_interval = 86400  # what the protocol passes for a persistent session
        self.sub(s, "t", 1)
        self.broker.connection_closed(s)
        self.clock.advance(86399)
        self.assertIn(("", "a"), self.broker.sessions)
        self.clock.advance(1)
        self.assertNotIn(("", "a"), self.broker.sessions)
        self.assertEqual(self.broker.trees, {})
        self.assertEqual(self.events[-1], ("expired", ("", "a")))

    def test_close_of_replaced_session_ignored(self) -> None:
        """When a clean session was replaced by a new one with the same key, the old
        connection closing does not remove the new session."""
        s, _conn = self.online("a")
        s2, _conn2 = self.online("a")
        self.assertIsNot(s, s2)
        self.broker.connection_closed(s)
        self.assertIs(self.broker.sessions[("", "a")], s2)

    def test_failing_observer_is_logged(self) -> None:
        """A session observer that raises is logged as a failure and the other observers
        still get the event."""
        def bad(event: str, session: Session) -> None:
            raise RuntimeError("observer bug")
        self.broker.session_observers.insert(0, bad)
        s, _conn = self.online("a")
        self.assertEqual(self.events, [("register", ("", "a"))])
        self.assertEqual([lvl for lvl, _f, _k in self.log.events], ["failure"])

    # -- routing

    def test_overlapping_once_at_highest_qos(self) -> None:
        """A session with several subscriptions matching one topic gets the message once, at
        the highest QoS granted among them (capped by the message's QoS), counted as one
        delivery."""
        s, conn = self.online("a")
        self.sub(s, "a/+", 1)
        self.sub(s, "a/#", 2)
        self.sub(s, "#", 0)
        n = self.broker.publish(Message("a/b", b"x", 2), "")
        self.assertEqual(n, 1)
        self.assertEqual(conn.written, [publish("a/b", b"x", qos=2, pid=1)])

    def test_publish_counts(self) -> None:
        """publish returns the number of sessions the message was delivered to, only within
        the publisher's mountpoint."""
        a, _ = self.online("a")
        b, _ = self.online("b")
        self.sub(a, "t")
        self.sub(b, "+")
        self.assertEqual(self.broker.publish(Message("t", b""), ""), 2)
        self.assertEqual(self.broker.publish(Message("u", b""), ""), 1)
        self.assertEqual(self.broker.publish(Message("x/y", b""), ""), 0)
        self.assertEqual(self.broker.publish(Message("t", b""), "other"), 0)

    def test_no_local(self) -> None:
        """With the 5.0 no local option, a session's own messages are not delivered back to
        it; messages from others are."""
        s, conn = self.online("a", level=5)
        self.sub(s, "t", 0, no_local=True)
        self.broker.publish(Message("t", b"x"), "", sender=s)
        self.assertEqual(conn.written, [])
        self.broker.publish(Message("t", b"y"), "", sender=None)
        self.assertEqual(len(conn.written), 1)

    def test_retain_as_published(self) -> None:
        """With the 5.0 retain as published option, a live message keeps its retain flag
        when delivered."""
        s, conn = self.online("a")
        self.sub(s, "t", 0, retain_as_published=True)
        self.broker.publish(Message("t", b"x", retain=True), "")
        self.assertEqual(conn.written, [publish("t", b"x", retain=True)])

    def test_dollar_topics(self) -> None:
        """Topics starting with "$" do not match filters starting with a wildcard ("#",
        "+/b"), only a filter naming the "$" level ("$SYS/+")."""
        s, conn = self.online("a")
        self.sub(s, "#")
        self.sub(s, "+/b")
        self.assertEqual(self.broker.publish(Message("$SYS/b", b""), ""), 0)
        self.sub(s, "$SYS/+")
        self.assertEqual(self.broker.publish(Message("$SYS/b", b""), ""), 1)

    def test_mountpoints_isolated(self) -> None:
        """The same client id on two mountpoints makes two sessions, and a message published
        in one mountpoint reaches only subscribers of that mountpoint."""
        a, ca = self.online("same", mountpoint="m1")
        b, cb = self.online("same", mountpoint="m2")
        self.assertIsNot(a, b)
        self.sub(a, "#")
        self.sub(b, "#")
        self.broker.publish(Message("t", b"1"), "m1")
        self.assertEqual(len(ca.written), 1)
        self.assertEqual(len(cb.written), 0)

    def test_unsubscribe(self) -> None:
        """subscribe reports whether a filter is new (a second subscribe only changes the
        QoS), unsubscribe whether it existed; after the last unsubscribe the tree is
        removed and nothing is delivered."""
        s, conn = self.online("a")
        self.assertTrue(self.sub(s, "a/#"))
        self.assertFalse(self.sub(s, "a/#", 1))
        self.assertTrue(self.broker.unsubscribe(s, "a/#"))
        self.assertFalse(self.broker.unsubscribe(s, "a/#"))
        self.assertEqual(self.broker.trees, {})
        self.assertEqual(self.broker.publish(Message("a/b", b""), ""), 0)

    # -- shared subscriptions

    def test_shared_default_policy_picks_at_random(self) -> None:
        """Under the default policy (prefer_local) each message to a shared subscription goes
        to ONE member chosen at random, as VerneMQ's vmq_shared_subscriptions shuffles the
        local members (not in turn): the choice is the random source's."""
        members = [self.online(f"m{i}") for i in range(3)]
        for s, _c in members:
            self.sub(s, "$share/g/t", 1)
        script = ScriptedChoice([2, 2, 0, 2, 1])
        self.patch(SharedGroup, "rng", script)
        for i in range(5):
            self.assertEqual(self.broker.publish(Message("t", b"%d" % i), ""), 1)
        self.assertEqual([len(c.written) for _s, c in members], [1, 1, 3])
        self.assertEqual(script.pool_sizes, [3] * 5)

    def test_shared_policies_on_one_node(self) -> None:
        """On one node every member is local, so all four VerneMQ policies pick a random
        ONLINE member, and an offline member of a persistent session only when no member
        is online; an unknown policy is refused."""
        for policy in SHARED_SUBSCRIPTION_POLICIES:
            self.make(f"shared_subscription_policy = {policy}\n")
            on, on_conn = self.online("on")
            off, off_conn = self.online("off", clean=False)
            for s in (on, off):
                self.sub(s, "$share/g/t", 1)
            self.broker.connection_closed(off)
            script = ScriptedChoice([0, 0])
            self.patch(SharedGroup, "rng", script)
            self.assertEqual(self.broker.publish(Message("t", b"1", qos=1), ""), 1)
            self.assertEqual(len(on_conn.written), 1, policy)
            self.broker.connection_closed(on)  # clean: gone; only the offline one is left
            self.assertEqual(self.broker.publish(Message("t", b"2", qos=1), ""), 1)
            self.assertEqual(len(off.queue), 1, policy)
            self.assertEqual(script.pool_sizes, [1, 1], policy)
        group = SharedGroup("g")
        self.assertRaises(ValueError, group.pick, "round_robin")

    def test_shared_random_policy(self) -> None:
        """With shared_subscription_policy = random, every message to a shared subscription
        is delivered to exactly one member."""
        self.make("shared_subscription_policy = random\n")
        members = [self.online(f"m{i}") for i in range(3)]
        for s, _c in members:
            self.sub(s, "$share/g/t")
        for i in range(60):
            self.broker.publish(Message("t", b"%d" % i), "")
        self.assertEqual(sum(len(c.written) for _s, c in members), 60)

    def test_shared_prefers_online_then_offline_persistent(self) -> None:
        """A shared subscription delivers to online members first; only when no member is
        online is the message queued for one offline persistent member."""
        a, ca = self.online("a", clean=False)
        b, cb = self.online("b", clean=False)
        self.sub(a, "$share/g/t", 1)
        self.sub(b, "$share/g/t", 1)
        self.broker.connection_closed(a)
        for i in range(4):
            self.broker.publish(Message("t", b"%d" % i, 1), "")
        self.assertEqual(len(cb.written), 4)
        self.assertEqual(len(a.queue), 0)
        self.broker.connection_closed(b)
        self.broker.publish(Message("t", b"q", 1), "")
        self.assertEqual(len(a.queue) + len(b.queue), 1)

    def test_shared_and_normal_subscription_of_one_session(self) -> None:
        """A session with a normal and a shared subscription on the same topic gets the
        message through both (two deliveries)."""
        s, conn = self.online("a")
        self.sub(s, "t")
        self.sub(s, "$share/g/t")
        self.assertEqual(self.broker.publish(Message("t", b""), ""), 2)

    def test_shared_group_key_does_not_collide_with_a_client(self) -> None:
        """A client whose id is a group name, on a listener mounted at '$share'."""
        client, cc = self.online("g", mountpoint="$share")
        member, cm = self.online("m", mountpoint="$share")
        self.sub(client, "t")
        self.sub(member, "$share/g/t")
        self.assertEqual(self.broker.publish(Message("t", b"x"), "$share"), 2)
        self.assertEqual(len(cc.written), 1)
        self.assertEqual(len(cm.written), 1)
        self.broker.unsubscribe(member, "$share/g/t")
        self.assertEqual(self.broker.publish(Message("t", b"y"), "$share"), 1)
        self.assertEqual(len(cc.written), 2)

    # -- retained

    def test_retained_on_subscribe(self) -> None:
        """A new subscription gets the retained messages matching its filter, with the
        retain flag, at the lower of the message's and the subscription's QoS."""
        self.broker.publish(Message("r/a", b"1", 1, True), "")
        self.broker.publish(Message("r/b", b"2", 0, True), "")
        self.broker.publish(Message("other", b"3", 0, True), "")
        s, conn = self.online("a")
        self.sub(s, "r/+", 1)
        self.assertEqual(sorted(conn.written), sorted([
            publish("r/a", b"1", qos=1, retain=True, pid=1),
            publish("r/b", b"2", retain=True)]))

    def test_retained_handling(self) -> None:
        """5.0 retain handling: 2 sends no retained messages on subscribe, 1 sends them only
        when the subscription is new, not when it is repeated."""
        self.broker.publish(Message("r", b"1", 0, True), "")
        s, conn = self.online("a", level=5)
        self.sub(s, "r", 0, retain_handling=2)
        self.assertEqual(conn.written, [])
        self.sub(s, "x", 0, retain_handling=1)
        self.broker.unsubscribe(s, "r")
        self.sub(s, "r", 0, retain_handling=1)
        self.assertEqual(len(conn.written), 1)
        self.sub(s, "r", 0, retain_handling=1)  # not new: nothing
        self.assertEqual(len(conn.written), 1)

    def test_retained_cleared(self) -> None:
        """A retained message with an empty payload clears the retained message on that
        topic."""
        self.broker.publish(Message("r", b"1", 0, True), "")
        self.assertEqual(self.broker.store.retained_count(), 1)
        self.broker.publish(Message("r", b"", 0, True), "")
        self.assertEqual(self.broker.store.retained_count(), 0)

    # -- batching and drops

    def test_flush_reaches_connections_dirtied_during_flush(self) -> None:
        """Broker.flush also flushes connections that become dirty while it runs, and leaves
        the dirty list empty."""
        flushed: list[str] = []
        broker = self.broker

        class Conn:
            def __init__(self, name: str, then: Any = None) -> None:
                self.name = name
                self.then = then

            def flush(self) -> None:
                flushed.append(self.name)
                if self.then is not None:
                    broker.dirty.append(self.then)
        broker.dirty.append(Conn("a", Conn("b")))
        broker.flush()
        self.assertEqual(flushed, ["a", "b"])
        self.assertEqual(broker.dirty, [])

    def test_drops_logged_once_per_session(self) -> None:
        """Messages dropped for a full offline queue are counted on the broker and the
        session, but the warning is logged only once per session."""
        self.make("max_offline_messages = 0\n")
        s, _conn = self.online("a", clean=False)
        self.sub(s, "t", 1)
        self.broker.connection_closed(s)
        for _ in range(10):
            self.broker.publish(Message("t", b"", 1), "")
        self.assertEqual(self.broker.dropped, 10)
        self.assertEqual(s.dropped, 10)
        self.assertEqual([lvl for lvl, _f, _k in self.log.events if lvl == "warn"], ["warn"])


class RetainedTreeRoutingTests(SynchronousTestCase):
    """A SUBSCRIBE finds retained messages through the store's topic tree."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = Broker(parse(BASE), self.clock)

    def online(self, client_id: str, mountpoint: str = "") -> tuple[Session, FakeConnection]:
        conn = FakeConnection()
        session, _ = self.broker.open_session((mountpoint, client_id), True, 0, conn)
        self.broker.session_resumed(session)
        return session, conn

    def retain(self, topic: str, payload: bytes, mountpoint: str = "", **kw: Any) -> None:
        self.broker.publish(Message(topic, payload, 0, True, **kw), mountpoint)

    def test_dollar_topics_need_an_explicit_first_level(self) -> None:
        """Retained ``$SYS`` messages reach ``$SYS/#`` subscribers, never ``#``
        or ``+/...`` ones (MQTT-4.7.2-1)."""
        self.retain("$SYS/uptime", b"1")
        self.retain("sys/uptime", b"2")
        s, conn = self.online("a")
        self.broker.subscribe(s, "#", SubOptions(0))
        self.broker.subscribe(s, "+/uptime", SubOptions(0))
        self.assertEqual(conn.written, [publish("sys/uptime", b"2", retain=True)] * 2)
        del conn.written[:]
        self.broker.subscribe(s, "$SYS/#", SubOptions(0))
        self.assertEqual(conn.written, [publish("$SYS/uptime", b"1", retain=True)])

    def test_mountpoints_do_not_share_retained_messages(self) -> None:
        """A subscriber sees only the retained messages of its own mountpoint."""
        self.retain("t/x", b"m1", "m1")
        self.retain("t/x", b"top")
        s1, c1 = self.online("a", "m1")
        s0, c0 = self.online("b")
        self.broker.subscribe(s1, "t/#", SubOptions(0))
        self.broker.subscribe(s0, "#", SubOptions(0))
        self.assertEqual(c1.written, [publish("t/x", b"m1", retain=True)])
        self.assertEqual(c0.written, [publish("t/x", b"top", retain=True)])

    def test_expired_retained_message_is_forgotten_on_lookup(self) -> None:
        """An MQTT 5.0 retained message whose expiry interval ran out is not
        sent to a new subscriber and leaves the store."""
        message = Message("e/x", b"old", 0, True, {"message_expiry_interval": 10})
        message.start_expiry(self.clock.seconds())
        self.broker.publish(message, "")
        self.retain("e/y", b"fresh")
        self.clock.advance(11)
        s, conn = self.online("a")
        self.broker.subscribe(s, "e/+", SubOptions(0))
        self.assertEqual(conn.written, [publish("e/y", b"fresh", retain=True)])
        self.assertEqual(self.broker.store.retained_count(), 1)
        self.assertEqual([m.payload for m in self.broker.store.retained_match("", "e/#")],
                         [b"fresh"])
