"""Routing and session lifecycle.

The broker owns the session registry (keyed by (mountpoint, client id)), one
topic tree per mountpoint and the store.  It never touches a socket: sessions
write to their connection objects, which buffer until ``flush()``.
"""
from __future__ import annotations

import random
from collections import deque
from typing import Any, Callable

from vmqtw.codec.packets import SubOptions
from vmqtw.config import BrokerConfig
from vmqtw.core.message import Message
from vmqtw.core.retained_delivery import RetainedSender
from vmqtw.core.session import Inflight, Session, SessionEnv
from vmqtw.core.interfaces import IStore
from vmqtw.core.topics import TopicTree, parse_shared
from vmqtw.core.values import QUEUED, WAIT_PUBCOMP, SessionKey
from vmqtw.metrics import DELIVER_CALLS, ROUTER_MATCHES_LOCAL, Metrics


class Subscription:
    """A tree value for a normal subscription.  ``sub_ids`` holds its MQTT 5.0
    subscription identifier (a 1-tuple) or is empty."""

    __slots__ = ("session", "options", "sub_ids")

    def __init__(self, session: Session, options: SubOptions, sub_id: int | None = None) -> None:
        self.session = session
        self.options = options
        self.sub_ids: tuple[int, ...] = (sub_id,) if sub_id else ()


#: ``shared_subscription_policy`` values.  VerneMQ (``vmq_shared_subscriptions``)
#: picks a RANDOM member, online members first; the policies differ in which
#: cluster nodes' members are candidates:
#:
#: - ``prefer_local``: members on this node, else on any node;
#: - ``local_only``: members on this node only;
#: - ``random``: members on any node;
#: - ``prefer_online_before_local``: online members on any node first, then
#:   local offline ones.
#:
#: On one node every member is local and the four policies pick the same
#: way: at random among the online members, else among the offline members
#: of persistent sessions (their queue takes the message).  Across cluster
#: nodes, ``vmqtw.cluster.shared`` decides first which node delivers.
SHARED_SUBSCRIPTION_POLICIES: tuple[str, ...] = (
    "prefer_local", "local_only", "random", "prefer_online_before_local",
)


class SharedGroup:
    """A tree value for ``$share/GROUP/filter``: the members share the messages."""

    __slots__ = ("name", "members")

    #: Where the random choice comes from (tests replace it).
    rng: random.Random = random.Random()

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict[SessionKey, Subscription] = {}

    def pick(self, policy: str) -> Subscription | None:
        """One member for a message, as VerneMQ picks it under ``policy``
        (see ``SHARED_SUBSCRIPTION_POLICIES``: on one node, a random online
        member, else a random offline member of a persistent session)."""
        if policy not in SHARED_SUBSCRIPTION_POLICIES:
            raise ValueError(f"unknown shared_subscription_policy {policy!r}")
        members = list(self.members.values())
        if not members:
            return None
        online = [m for m in members if m.session.conn is not None]
        pool = online or [m for m in members if m.session.persistent]
        if not pool:
            return None
        return self.rng.choice(pool)


class _NullLog:
    """Used when no logger is given; core imports nothing from Twisted."""

    def _ignore(self, *args: Any, **kwargs: Any) -> None:
        pass

    debug = info = warn = error = failure = _ignore


class Broker:
    """Session registry, routing, retained messages.

    ``clock`` provides ``seconds()`` and ``callLater()`` (a reactor, or a
    ``twisted.internet.task.Clock`` in tests); ``log`` is a
    ``twisted.logger.Logger`` or anything with the same methods.
    """

    def __init__(self, config: BrokerConfig, clock: Any, store: IStore | None = None,
                 log: Any = None, metrics: Any = None) -> None:
        self.log = log if log is not None else _NullLog()
        if metrics is None:
            metrics = Metrics()
        if metrics.broker is None:
            metrics.broker = self
        #: The ``vmqtw.metrics.Metrics`` registry; ``counters`` is its list of
        #: counter values, which the packet path increments by slot.
        self.metrics = metrics
        self.counters: list[int] = metrics.values
        #: ``vmq-admin trace client``: the tracer (with ``packet(key, direction,
        #: packet)``) and the set of session keys it watches (set by the admin stack).
        self.tracer: Any = None
        self.traced: Any = frozenset()
        self.config = config
        if store is None:
            # Imported here: the store package pulls in Twisted, the core does not.
            from vmqtw.store.memory import MemoryStore
            store = MemoryStore()
        #: What every session of this broker is given (see ``clock`` and ``store``).
        self.session_env = SessionEnv.from_config(config, clock, store, self._session_dropped,
                                                  self.flush)
        self.session_env.counters = metrics.values
        self.session_env.mark_dirty = self._mark_dirty
        self.session_env.publish_sent = (metrics.slot("mqtt_publish_sent", mqtt_version="4"),
                                         metrics.slot("mqtt_publish_sent", mqtt_version="5"))
        self.sessions: dict[SessionKey, Session] = {}
        self.trees: dict[str, TopicTree] = {}
        self.dirty: list[Any] = []
        #: Plugin hooks on the delivery path, None unless a plugin provides them
        #: (the service sets them): deliver_hook(session, message, qos, retain)
        #: returns the message to send (possibly rewritten) to an online
        #: session; offline_hook(session, message, qos, retain) is told about a
        #: QoS 1/2 message for an offline persistent session.  Both are only
        #: looked at when deliver_hook is set.
        self.deliver_hook: Callable[[Session, Message, int, bool], Message] | None = None
        self.offline_hook: Callable[[Session, Message, int, bool], None] | None = None
        self.dropped = 0
        #: The cluster seam (``vmqtw.cluster.router.ClusterRouter``), None on a single
        #: node: told when a filter enters or leaves the tree (``subscribed`` /
        #: ``unsubscribed``), when a persistent session's subscriptions change
        #: (``subscriptions_changed``) and given every message published here
        #: (``publish``).
        self.remote: Any = None
        self.stopping = False  # see stop()
        # Observers of session lifecycle events, e.g. for plugins: callables
        # taking (event_name, session).
        self.session_observers: list[Callable[[str, Session], None]] = []
        #: Retained messages for new subscriptions, in slices; the retained quotas.
        self.retained = RetainedSender(self)

    @property
    def clock(self) -> Any:
        """``seconds()`` and ``callLater()``; replacing it also replaces the
        sessions' clock."""
        return self.session_env.clock

    @clock.setter
    def clock(self, clock: Any) -> None:
        self.session_env.clock = clock

    @property
    def store(self) -> IStore:
        """The ``IStore``; replacing it also replaces the sessions' store."""
        return self.session_env.store

    @store.setter
    def store(self, store: IStore) -> None:
        self.session_env.store = store

    def _session_dropped(self, session: Session, message: Message, reason: str) -> None:
        # Looked up on each call, so that message_dropped can be wrapped at runtime.
        self.message_dropped(session, message, reason)

    # -- output batching ------------------------------------------------------------

    def _mark_dirty(self, obj: Any) -> None:
        """Have ``obj.flush()`` called in the next ``flush`` (a session whose
        acknowledgements freed inflight room drains its queue there)."""
        self.dirty.append(obj)

    def flush(self) -> None:
        """Write every connection's buffered output (once per input batch or timer)."""
        self.retained.budget = self.retained.steps  # see RetainedSender.new_batch
        dirty = self.dirty
        while dirty:
            self.dirty = []
            if self.traced:  # vmq-admin trace client: once per flush, not per connection
                for conn in dirty:
                    trace = getattr(conn, "trace_output", None)
                    if trace is not None:
                        trace()
            for conn in dirty:
                conn.flush()
            dirty = self.dirty

    # -- sessions ----------------------------------------------------------------------

    def open_session(self, key: tuple[str, str], clean: bool, expiry_interval: float | None,
                     conn: Any) -> tuple[Session, bool]:
        """Attach ``conn`` to the session ``key`` (a ``SessionKey`` or a plain
        (mountpoint, client id) tuple); returns (session, session_present).

        An existing connection on the same key is taken over (closed).  With
        ``clean`` the old state is discarded.
        """
        key = SessionKey(*key)  # callers may pass a plain (mountpoint, client id) tuple
        existing = self.sessions.get(key)
        if existing is not None and existing.conn is None:
            # MQTT-3.1.2-8: a new connection for the ClientID before the Will
            # Delay Interval elapsed drops a delayed will, whatever Clean Start.
            existing.cancel_will()
        if existing is not None and existing.conn is not None:
            old = existing.conn
            existing.detach()
            old.session_taken_over()
        persistent = not clean or expiry_interval is None or expiry_interval > 0
        # A clean session ends with its connection, so a takeover never resumes it.
        if existing is not None and (clean or not existing.persistent):
            self.discard_session(existing, "gone")
            existing = None
        if existing is not None:
            session = existing
            session.persistent = persistent
            session.expiry_interval = expiry_interval
            session.cancel_will()  # resumed in time: a delayed will is not sent
            present = True
        else:
            session = Session(self.session_env, key, persistent, expiry_interval)
            self.sessions[key] = session
            present = False
        session.conn = conn
        if session.persistent:
            self.store.session_updated(session)
        self._notify("wakeup" if present else "register", session)
        return session, present

    def session_resumed(self, session: Session) -> None:
        """Called after CONNACK was queued: resend inflight and queued messages."""
        session.attach(session.conn)

    def connection_closed(self, session: Session) -> None:
        """The session's connection is gone (any reason)."""
        if self.sessions.get(session.key) is not session:
            return
        session.detach()
        if session.persistent and session.expiry_interval != 0:
            self.store.session_updated(session)
            if not self.stopping:
                session.schedule_expiry(self._expire)
            self._notify("offline", session)
        else:
            self.discard_session(session, "gone")

    def restore(self, stored_sessions: Any) -> int:
        """Rebuild persistent sessions loaded from a durable store (at startup,
        before any client connects): subscriptions, inflight messages (resent
        with DUP when the client comes back), queues, incoming QoS 2 packet ids
        and the rest of each session's expiry interval.  Each item looks like
        ``vmqtw.store.StoredSession``.  Nothing is written back to the store.
        Returns the number of sessions restored."""
        now = self.clock.seconds()
        count = 0
        for stored in stored_sessions:
            key = SessionKey(stored.mountpoint, stored.client_id)
            session = Session(self.session_env, key, True, stored.expiry_interval)
            session.username = stored.username
            session.sub_ids.update(stored.sub_ids)
            self.sessions[key] = session
            for topic_filter, options in stored.subscriptions.items():
                self._tree_add(session, topic_filter, options)
                session.subscriptions[topic_filter] = options
            last_pid = 0
            for d in stored.deliveries:
                if d.state == QUEUED:
                    session.queue_for_append().append(
                        (d.message, d.qos, d.retain, d.sub_ids) if d.sub_ids
                        else (d.message, d.qos, d.retain))
                else:
                    session.inflight[d.packet_id] = Inflight(d.message, d.qos, d.retain,
                                                             d.state, now, d.sub_ids)
                    last_pid = d.packet_id
            if last_pid:
                session._next_pid = last_pid % 65535 + 1
            session.inflight_bytes = sum(len(e.message.payload) for e in session.inflight.values())
            if stored.incoming_qos2:
                session.incoming_qos2 = set(stored.incoming_qos2)
            session.schedule_expiry(self._expire, stored.remaining_expiry(now))
            count += 1
        return count

    # -- wills ---------------------------------------------------------------------------

    def will(self, session: Session, message: Message, delay: float = 0) -> None:
        """Publish the will ``message`` of ``session``'s connection, now or (MQTT 5.0
        Will Delay Interval) after ``delay`` seconds unless the session is resumed
        first; a delayed will is published at the latest when the session ends."""
        session.cancel_will()
        if delay > 0 and session.persistent and session.expiry_interval != 0 and \
                not self.stopping:
            session.will = message
            session.will_call = self.clock.callLater(delay, self._will_delay_over, session)
            return
        message.start_expiry(self.clock.seconds())
        self.publish(message, session.mountpoint, session)

    def _will_delay_over(self, session: Session) -> None:
        session.will_call = None
        self._publish_pending_will(session)
        self.flush()

    def _publish_pending_will(self, session: Session) -> None:
        message = session.will
        if message is not None:
            session.cancel_will()
            message.start_expiry(self.clock.seconds())
            self.publish(message, session.mountpoint, session)

    def stop(self) -> None:
        """The broker is stopping: no more session expiry timers (now or for
        connections that close later), and delayed wills are published now, as
        the sessions end with the process."""
        self.stopping = True
        for session in list(self.sessions.values()):
            session.cancel_expiry()
            self._publish_pending_will(session)
        self.flush()

    def _expire(self, session: Session) -> None:
        session.expiry_call = None
        if self.sessions.get(session.key) is session and session.conn is None:
            self.log.info("session {client_id!r} (mountpoint {mountpoint!r}) expired",
                          client_id=session.client_id, mountpoint=session.mountpoint)
            self.discard_session(session, "expired")
            self.flush()  # a delayed will may have been published

    def discard_session(self, session: Session, why: str) -> None:
        """Remove a session and all its subscriptions."""
        for topic_filter in list(session.subscriptions):
            self._tree_remove(session, topic_filter)
        session.subscriptions.clear()
        session.sub_ids.clear()
        session.queue = ()
        session.inflight.clear()
        session.inflight_bytes = 0
        session.cancel_expiry()
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]
        if session.persistent:
            self.store.session_deleted(session.key)
        self._publish_pending_will(session)  # the session ends: a delayed will goes now
        self._notify(why, session)

    def _notify(self, event: str, session: Session) -> None:
        for observer in self.session_observers:
            try:
                observer(event, session)
            except Exception:
                self.log.failure("session observer failed on {event}", event=event)

    # -- subscriptions -------------------------------------------------------------------

    def subscribe(self, session: Session, topic_filter: str, options: SubOptions) -> bool:
        """Add or replace a subscription; returns True if it is new.

        Retained messages are delivered here (not for shared subscriptions).
        The MQTT 5.0 subscription identifier, if any, is ``session.sub_ids[topic_filter]``.
        """
        group, inner = parse_shared(topic_filter)
        new, sub = self._tree_add(session, topic_filter, options)
        session.subscriptions[topic_filter] = options
        if session.persistent:
            self.store.session_updated(session)
            if self.remote is not None:
                self.remote.subscriptions_changed(session, topic_filter)
        if group is None:
            rh = options.retain_handling
            if rh == 0 or (rh == 1 and new):
                # In slices: a filter matching many retained messages does not
                # stall the other clients (see vmqtw.core.retained_delivery).
                self.retained.start(session, inner, sub, options)
        return new

    def _tree_add(self, session: Session, topic_filter: str,
                  options: SubOptions) -> tuple[bool, Subscription]:
        """Put a subscription in the topic tree: (is it new, the tree value)."""
        group, inner = parse_shared(topic_filter)
        mp = session.mountpoint
        tree = self.trees.get(mp)
        if tree is None:
            tree = self.trees[mp] = TopicTree()
        sub = Subscription(session, options, session.sub_ids.get(topic_filter))
        if group is None:
            new = tree.add(inner, session.key, sub)
        else:
            gkey = (None, group)  # never equal to a (mountpoint, client id) key
            shared = tree.get(inner, gkey)
            if shared is None:
                shared = SharedGroup(group)
                tree.add(inner, gkey, shared)
            new = session.key not in shared.members
            shared.members[session.key] = sub
        if new and self.remote is not None:
            self.remote.subscribed(mp, topic_filter)
        return new, sub

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        if topic_filter not in session.subscriptions:
            return False
        del session.subscriptions[topic_filter]
        session.sub_ids.pop(topic_filter, None)
        self._tree_remove(session, topic_filter)
        if session.persistent:
            self.store.session_updated(session)
            if self.remote is not None:
                self.remote.subscriptions_changed(session, topic_filter)
        return True

    def _tree_remove(self, session: Session, topic_filter: str) -> None:
        tree = self.trees.get(session.mountpoint)
        if tree is None:
            return
        group, inner = parse_shared(topic_filter)
        if group is None:
            current = tree.get(inner, session.key)
            if current is not None and current.session is session:
                tree.remove(inner, session.key)
                if self.remote is not None:
                    self.remote.unsubscribed(session.mountpoint, topic_filter)
        else:
            gkey = (None, group)  # never equal to a (mountpoint, client id) key
            shared = tree.get(inner, gkey)
            if shared is not None:
                member = shared.members.get(session.key)
                if member is not None and member.session is session:
                    del shared.members[session.key]
                    if self.remote is not None:
                        self.remote.unsubscribed(session.mountpoint, topic_filter)
                if not shared.members:
                    tree.remove(inner, gkey)
        if not len(tree):
            del self.trees[session.mountpoint]

    # -- re-authorization (a new owner, new ACL rules) -----------------------------------------

    def reauthorize(self, session: Session, may_subscribe: Callable[[str, SubOptions], bool],
                    may_read: Callable[[str], bool]) -> tuple[list[str], int]:
        """Keep only what ``session``'s owner may have, as the authorization
        hooks say now: the subscriptions ``may_subscribe(filter, options)``
        grants, and the queued and inflight messages whose topic
        ``may_read(topic)`` grants (asked once per topic).  For a session
        resumed by another user and after ACL/password reloads: deliveries
        then need no authorization lookup per message.

        Returns the dropped topic filters and the number of dropped messages."""
        denied = [f for f, options in list(session.subscriptions.items())
                  if not may_subscribe(f, options)]
        for topic_filter in denied:
            self.unsubscribe(session, topic_filter)
        if not session.queue and not session.inflight:
            return denied, 0
        verdicts: dict[str, bool] = {}

        def readable(topic: str) -> bool:
            verdict = verdicts.get(topic)
            if verdict is None:
                verdict = verdicts[topic] = may_read(topic)
            return verdict

        store = self.store
        dropped = 0
        if session.queue:
            kept: deque[tuple[Any, ...]] = deque()
            for item in session.queue:
                message = item[0]
                if readable(message.topic):
                    kept.append(item)
                    continue
                dropped += 1
                if item[1] and session.persistent:
                    store.message_dequeued(session.key, message)
            session.queue = kept if kept else ()
        for pid, entry in list(session.inflight.items()):
            # A QoS 2 flow past PUBREC has delivered its message already: let it end.
            if entry.state != WAIT_PUBCOMP and not readable(entry.message.topic):
                del session.inflight[pid]
                session.inflight_bytes -= len(entry.message.payload)
                dropped += 1
                if session.persistent:
                    store.message_acked(session.key, pid)
        return denied, dropped

    # -- routing ------------------------------------------------------------------------------

    def publish(self, message: Message, mountpoint: str, sender: Session | None = None,
                from_remote: bool = False) -> int:
        """Route ``message`` within ``mountpoint``; returns the number of local deliveries.

        A retained message over the retained quotas is routed but not retained
        (the connection refuses a 5.0 QoS 1/2 one before it gets here).
        ``from_remote``: it came from another cluster node, which stored it if
        retained and picked the shared groups' members; it goes to local
        (non-shared) subscribers only."""
        # Shared groups whose member another cluster node was picked in.
        taken: Any = None
        if not from_remote:
            retain = message.retain
            if retain:
                if self.retained.allowed(mountpoint, message):
                    self.store.retained_set(mountpoint, message.topic,
                                            message if message.payload else None)
                else:
                    retain = False
                    self.retained.refuse(mountpoint, message,
                                         sender.client_id if sender is not None else None)
            if self.remote is not None:
                taken = self.remote.publish(message, mountpoint, retain)
        tree = self.trees.get(mountpoint)
        if tree is None:
            return 0
        matches = tree.match(message.topic)
        if not matches:
            return 0
        if len(matches) == 1:
            inner, key, sub = matches[0]
            if sub.__class__ is SharedGroup:
                if from_remote or (taken and (inner, key) in taken):
                    return 0
                sub = sub.pick(self.config.shared_subscription_policy)
                if sub is None:
                    return 0
            counters = self.counters
            counters[ROUTER_MATCHES_LOCAL] += 1
            count = self._deliver(sub, message, sender, sub.sub_ids)
            counters[DELIVER_CALLS] += count  # (see Session.deliver_routed)
            return count
        first: dict[SessionKey, Subscription] = {}
        overlapping: dict[SessionKey, list[Subscription]] | None = None
        shared: list[SharedGroup] = []
        for inner, key, sub in matches:
            if sub.__class__ is SharedGroup:
                if not from_remote and not (taken and (inner, key) in taken):
                    shared.append(sub)
                continue
            prev = first.get(key)
            if prev is None:
                first[key] = sub
                continue
            # Several subscriptions of one session match (rare): see _deliver_once.
            if overlapping is None:
                overlapping = {}
            subs = overlapping.get(key)
            if subs is None:
                overlapping[key] = [prev, sub]
            else:
                subs.append(sub)
        count = 0
        if overlapping is None:
            for sub in first.values():
                count += self._deliver(sub, message, sender, sub.sub_ids)
        else:
            for key, sub in first.items():
                subs = overlapping.get(key)
                if subs is None:
                    count += self._deliver(sub, message, sender, sub.sub_ids)
                else:
                    count += self._deliver_once(subs, message, sender)
        for group in shared:
            member = group.pick(self.config.shared_subscription_policy)
            if member is not None:
                count += self._deliver(member, message, sender, member.sub_ids)
        counters = self.counters
        counters[ROUTER_MATCHES_LOCAL] += len(first) + len(shared)
        counters[DELIVER_CALLS] += count
        return count

    def deliver_shared(self, message: Message, mountpoint: str, group: str,
                       inner: str) -> int:
        """Give ``message`` to one local member of ``$share/group/inner`` (another
        cluster node picked this node for it); 0 if the group has no member here."""
        tree = self.trees.get(mountpoint)
        shared = tree.get(inner, (None, group)) if tree is not None else None
        if shared is None:
            return 0
        member = shared.pick(self.config.shared_subscription_policy)
        if member is None:
            return 0
        count = self._deliver(member, message, None, member.sub_ids)
        self.counters[DELIVER_CALLS] += count
        return count

    def _deliver_once(self, subs: list[Subscription], message: Message,
                      sender: Session | None) -> int:
        """Overlapping subscriptions of one session: one copy at the highest QoS,
        carrying the identifiers of every matching subscription (MQTT 5.0).  A
        no local subscription does not count for the session's own messages."""
        subs = [s for s in subs if not (s.options.no_local and s.session is sender)]
        if not subs:
            return 0
        best = subs[0]
        for sub in subs:
            if sub.options.qos > best.options.qos:
                best = sub
        sub_ids = tuple(sorted(i for sub in subs for i in sub.sub_ids))
        return self._deliver(best, message, sender, sub_ids)

    def _deliver(self, sub: Subscription, message: Message, sender: Session | None,
                 sub_ids: tuple[int, ...]) -> int:
        options = sub.options
        session = sub.session
        if options.no_local and session is sender:
            return 0
        if session.upgrade_qos:
            qos = options.qos
        else:
            qos = message.qos if message.qos < options.qos else options.qos
        retain = message.retain if options.retain_as_published else False
        if self.deliver_hook is not None:  # plugins' on_deliver / on_offline_message
            if session.conn is not None:
                message = self.deliver_hook(session, message, qos, retain)
            elif qos and session.persistent and self.offline_hook is not None:
                self.offline_hook(session, message, qos, retain)
        session.deliver_routed(message, qos, retain, sub_ids)  # (the callers count it)
        return 1

    def message_dropped(self, session: Session, message: Message, reason: str) -> None:
        self.dropped += 1
        if session.dropped == 1:
            self.log.warn("dropping messages for {client_id!r}: {reason}",
                          client_id=session.client_id, reason=reason)
