"""Per-client session state: subscriptions, the outgoing queue and inflight window.

A session outlives its connection when it is persistent (MQTT 3.x clean
session = 0, MQTT 5.0 session expiry interval > 0).  The connection is anything
providing ``IClientConnection``; the session never touches sockets, only
``conn.write(bytes)``.  An MQTT 5.0 connection also has an ``out5`` attribute
(a ``vmqtw.core.mqtt5.Outbound``) that encodes PUBLISHes for that client.

Everything else a session uses (the clock, the store, where to report a
dropped message, how to flush output after a timer, its limits) comes in one
``SessionEnv`` given at construction; a session knows nothing of the broker.

Queue items are ``(message, qos, retain)`` tuples, with a fourth element, the
subscription identifiers, only when there are some.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Union

from zope.interface import Attribute, Interface

from vmqtw.codec.encoder import encode
from vmqtw.codec.packets import Pubrel, SubOptions
from vmqtw.core.message import Message
from vmqtw.metrics import DELIVER_CALLS, DELIVER_HELD, DELIVER_SENT5, INTERNAL_SLOTS
# The delivery states and the key are shared with the stores (re-exported here).
from vmqtw.core.values import (  # noqa: F401
    QUEUED, WAIT_PUBACK, WAIT_PUBCOMP, WAIT_PUBREC, DeliveryState, SessionKey,
)

if TYPE_CHECKING:  # pragma: no cover
    from vmqtw.core.broker import Broker
    from vmqtw.core.interfaces import IStore


class IClientConnection(Interface):
    """What the core needs from a live client connection."""

    protocol_level = Attribute("3, 4 or 5")
    paused = Attribute("True while the transport's write buffer is full")

    def write(data: bytes) -> None:
        """Queue bytes for the client; sent at the broker's next flush."""

    def session_taken_over() -> None:
        """Close this connection: another connection took over its session."""


class Inflight:
    """One sent QoS 1/2 PUBLISH waiting for the client (``state`` says for what)."""

    __slots__ = ("message", "qos", "retain", "state", "sent_at", "sub_ids")

    def __init__(self, message: Message, qos: int, retain: bool, state: DeliveryState,
                 sent_at: float, sub_ids: tuple[int, ...] = ()) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.state = state
        self.sent_at = sent_at
        self.sub_ids = sub_ids


NO_IDS: tuple[int, ...] = ()
#: The ``incoming_qos2`` of a session that awaits no PUBREL (shared, never mutated).
NO_PIDS: frozenset[int] = frozenset()


class SessionEnv:
    """What a ``Session`` needs from its surroundings, given at construction.

    - ``clock``: ``seconds()`` and ``callLater()`` (a reactor, or a
      ``twisted.internet.task.Clock`` in tests);
    - ``store``: the ``IStore`` told about a persistent session's QoS 1/2 flows;
    - ``dropped(session, message, reason)``: called for each message the
      session drops (offline QoS 0, a full queue, expiry, too large);
    - ``flush()``: writes buffered output, called after a timer resent messages;
    - the limits: ``max_inflight`` (0 = unlimited), ``max_online`` and
      ``max_offline`` (-1 = unlimited), ``retry_interval`` (seconds, MQTT 3.x
      only), ``upgrade_qos`` and ``max_inflight_bytes`` (payload bytes of the
      QoS 1/2 messages sent and not acknowledged yet, 0 = unlimited; one
      message is always let through); a session copies them when it is created;
    - the queue discipline, VerneMQ's ``queue_type`` (``lifo``: the newest
      queued message is delivered first, and a full queue drops its OLDEST
      message to make room; ``fifo``, the default: oldest first, a full queue
      drops the NEW message) and ``override_max_online_messages`` (off: when a
      session comes back online, the offline messages beyond
      ``max_online_messages`` are dropped, as VerneMQ moves them into a
      bounded online queue; on: all of them are kept).

    One is shared by the sessions of a broker: the broker keeps ``clock`` and
    ``store`` up to date when its own are replaced.
    """

    __slots__ = ("clock", "store", "dropped", "flush", "max_inflight", "max_online",
                 "max_offline", "retry_interval", "upgrade_qos", "lifo", "override_online",
                 "max_inflight_bytes", "counters", "publish_sent", "mark_dirty")

    def __init__(self, clock: Any, store: "IStore",
                 dropped: Callable[["Session", Message, str], None],
                 flush: Callable[[], None], *, max_inflight: int = 20,
                 max_online: int = 1000, max_offline: int = 1000,
                 retry_interval: float = 20, upgrade_qos: bool = False,
                 lifo: bool = False, override_online: bool = False,
                 max_inflight_bytes: int = 0) -> None:
        self.clock = clock
        self.store = store
        self.dropped = dropped
        self.flush = flush
        self.max_inflight = max_inflight
        self.max_online = max_online
        self.max_offline = max_offline
        self.retry_interval = retry_interval
        self.upgrade_qos = upgrade_qos
        self.lifo = lifo
        self.override_online = override_online
        self.max_inflight_bytes = max_inflight_bytes
        #: The metrics' counter values and the ``mqtt_publish_sent`` slots of
        #: MQTT 3.x and 5.0 (the broker sets them; -1 is a spare slot).
        self.counters: list[int] = [0] * (INTERNAL_SLOTS + 1)
        self.publish_sent: tuple[int, int] = (-1, -1)
        #: ``mark_dirty(session)`` puts a session on the broker's list of objects
        #: flushed at the end of the input batch (``Broker.flush`` calls its
        #: ``flush()``); None (a standalone env): acknowledgements drain at once.
        self.mark_dirty: Callable[[Any], None] | None = None

    @classmethod
    def from_config(cls, config: Any, clock: Any, store: "IStore",
                    dropped: Callable[["Session", Message, str], None],
                    flush: Callable[[], None]) -> "SessionEnv":
        """The limits of a ``BrokerConfig`` with the given collaborators."""
        return cls(clock, store, dropped, flush,
                   max_inflight=config.max_inflight_messages,
                   max_online=config.max_online_messages,
                   max_offline=config.max_offline_messages,
                   retry_interval=config.retry_interval,
                   upgrade_qos=config.upgrade_outgoing_qos,
                   lifo=getattr(config, "queue_type", "fifo") == "lifo",
                   override_online=getattr(config, "override_max_online_messages", False),
                   max_inflight_bytes=config.max_inflight_bytes)


class Session:
    """State of one (mountpoint, client id)."""

    __slots__ = (
        "env", "key", "mountpoint", "client_id", "username", "persistent",
        "expiry_interval", "subscriptions", "conn", "queue", "inflight",
        "incoming_qos2", "_next_pid", "max_inflight", "max_online", "max_offline",
        "retry_interval", "upgrade_qos", "expiry_call", "retry_call", "dropped",
        "peer", "listener", "sub_ids", "client_receive_max", "will", "will_call",
        "max_inflight_bytes", "inflight_bytes", "sent_slot", "counters", "drain_pending",
    )

    def __init__(self, env: Union[SessionEnv, "Broker"], key: SessionKey, persistent: bool,
                 expiry_interval: float | None) -> None:
        if not isinstance(env, SessionEnv):
            # Older callers pass the broker itself: use its environment.
            env = env.session_env
        self.env = env
        self.key = key
        self.mountpoint, self.client_id = key
        self.username: str | None = None
        self.persistent = persistent
        # Seconds the session survives without a connection; None = forever.
        self.expiry_interval = expiry_interval
        self.subscriptions: dict[str, SubOptions] = {}
        # MQTT 5.0 subscription identifier per topic filter (filters without one are absent).
        self.sub_ids: dict[str, int] = {}
        self.conn: Any = None
        # Messages waiting for a free inflight slot, a resumed transport or a reconnect:
        # (message, qos, retain[, sub_ids]) tuples.
        # (an empty tuple until first needed: an empty deque costs ~600 bytes,
        # and most sessions never queue; use queue_for_append() to add)
        self.queue: deque[tuple[Any, ...]] | tuple[()] = ()
        self.inflight: dict[int, Inflight] = {}
        # Packet ids of incoming QoS 2 messages awaiting PUBREL: an empty frozenset
        # until the first one (an empty set costs 216 bytes per idle session).
        # Typed as a set: readers only test membership and size, and the two
        # writers below replace the frozenset before changing anything.
        self.incoming_qos2: set[int] = NO_PIDS  # type: ignore[assignment]
        self._next_pid = 1
        # 0 means "unlimited", which is bounded by the 65535 packet identifiers.
        self.max_inflight = env.max_inflight or 65535
        # MQTT 5.0: the connected client's receive maximum (65535 for 3.x).
        self.client_receive_max = 65535
        self.max_online = env.max_online
        self.max_offline = env.max_offline
        self.retry_interval = env.retry_interval
        self.upgrade_qos = env.upgrade_qos
        self.max_inflight_bytes = env.max_inflight_bytes
        #: Payload bytes of the messages in ``inflight`` (see ``inflight_full``).
        self.inflight_bytes = 0
        self.expiry_call: Any = None
        self.retry_call: Any = None
        self.dropped = 0
        self.peer: tuple[str, int] | None = None
        self.listener: str | None = None
        # MQTT 5.0 delayed will: the message and the timer that publishes it.
        self.will: Message | None = None
        self.will_call: Any = None
        #: The ``mqtt_publish_sent`` slot of the connection's MQTT version (set on
        #: attach) in the metrics' counter values (``env.counters``, kept here to
        #: save a lookup per message sent).
        self.sent_slot = -1
        self.counters = env.counters
        #: The session is on the broker's dirty list: it drains in ``flush()``.
        self.drain_pending = False

    def queue_for_append(self) -> deque[tuple[Any, ...]]:
        """The queue, created on first use."""
        queue = self.queue
        if queue.__class__ is tuple:
            queue = self.queue = deque()
        return queue  # type: ignore[return-value]

    # -- delivery ---------------------------------------------------------------

    def deliver(self, message: Message, qos: int, retain: bool,
                sub_ids: tuple[int, ...] = NO_IDS) -> None:
        """Send ``message`` at ``qos`` now, or queue it, or drop it when over a limit.

        ``sub_ids`` are the MQTT 5.0 subscription identifiers of the matching
        subscriptions (ignored for 3.x connections)."""
        self.counters[DELIVER_CALLS] += 1
        self.deliver_routed(message, qos, retain, sub_ids)

    def deliver_routed(self, message: Message, qos: int, retain: bool,
                       sub_ids: tuple[int, ...] = NO_IDS) -> None:
        """``deliver``, for a caller that counts its calls itself in
        ``counters[DELIVER_CALLS]`` (``Broker.publish``: once per message).

        A PUBLISH written here at once to a 3.x client is not counted: the
        scrape derives it from the calls (see ``vmqtw.metrics``); every other
        outcome is counted here."""
        conn = self.conn
        if conn is None:
            self.counters[DELIVER_HELD] += 1
            if qos == 0 or not self.persistent:
                self._drop(message, "offline_qos0")
                return
            if not self._make_room(self.max_offline, message):
                return
            self._put((message, qos, retain, sub_ids) if sub_ids else (message, qos, retain))
            self.env.store.message_queued(self.key, message, qos, retain, sub_ids)
            return
        if self.queue or conn.paused:
            self.counters[DELIVER_HELD] += 1
            self._enqueue_online(message, qos, retain, sub_ids)
            return
        if qos == 0:
            level = conn.protocol_level
            if level < 5:
                conn.write(message.encoded_qos0(level, retain))
                return
            data = self._encode5(conn, message, 0, retain, None, False, sub_ids)
            if data is None:
                self.counters[DELIVER_HELD] += 1
                return
            conn.write(data)
            self.counters[DELIVER_SENT5] += 1
            return
        n = len(self.inflight)  # inflight_full(), inlined on the hot path
        if n >= self.max_inflight or n >= self.client_receive_max or (
                self.max_inflight_bytes and n and
                self.inflight_bytes + len(message.payload) > self.max_inflight_bytes):
            self.counters[DELIVER_HELD] += 1
            self._enqueue_online(message, qos, retain, sub_ids)
            return
        self._send_inflight(conn, message, qos, retain, sub_ids)

    def inflight_full(self, message: Message) -> bool:
        """Whether sending ``message`` now would exceed the inflight window
        (in messages, or in payload bytes with ``max_inflight_bytes``)."""
        n = len(self.inflight)
        if n >= self.max_inflight or n >= self.client_receive_max:
            return True
        limit = self.max_inflight_bytes
        return bool(limit and n and self.inflight_bytes + len(message.payload) > limit)

    def _enqueue_online(self, message: Message, qos: int, retain: bool,
                        sub_ids: tuple[int, ...] = NO_IDS) -> None:
        # With a deep publisher window nearly every message comes here: the
        # room check and _put() are inlined for the usual case (room left).
        queue = self.queue
        limit = self.max_online
        if 0 <= limit <= len(queue):
            if not self._make_room(limit, message):
                return
            queue = self.queue
        if queue.__class__ is tuple:
            queue = self.queue = deque()
        item = (message, qos, retain, sub_ids) if sub_ids else (message, qos, retain)
        if self.env.lifo:
            queue.appendleft(item)  # type: ignore[union-attr]
        else:
            queue.append(item)  # type: ignore[union-attr]
        if qos and self.persistent:
            self.env.store.message_queued(self.key, message, qos, retain, sub_ids)

    def _put(self, item: tuple[Any, ...]) -> None:
        """Queue ``item``: at the back (fifo), or at the front (lifo: the
        newest message is delivered first)."""
        queue = self.queue_for_append()
        if self.env.lifo:
            queue.appendleft(item)
        else:
            queue.append(item)

    def _make_room(self, limit: int, message: Message) -> bool:
        """Whether ``message`` may be queued under ``limit`` (-1 = none).  A
        full fifo queue drops ``message``; a full lifo queue drops its oldest
        message instead (VerneMQ's ``vmq_queue``)."""
        queue = self.queue
        if limit < 0 or len(queue) < limit:
            return True
        if not self.env.lifo or not queue or limit == 0:
            self._drop(message, "queue_full")
            return False
        while queue and len(queue) >= limit:
            self._drop_item(queue.pop())
        return True

    def _drop_item(self, item: tuple[Any, ...]) -> None:
        """Drop a queued ``(message, qos, retain[, sub_ids])``."""
        message, qos = item[0], item[1]
        if qos and self.persistent:
            self.env.store.message_dequeued(self.key, message)
        self._drop(message, "queue_full")

    def _trim_to_online_limit(self) -> None:
        """Back online without ``override_max_online_messages``: VerneMQ moves
        the offline messages into the online queue, which holds at most
        ``max_online_messages``; the rest are dropped (the newest for fifo,
        the oldest for lifo: the ones at the far end of the queue)."""
        queue = self.queue
        limit = self.max_online
        if self.env.override_online or limit < 0 or len(queue) <= limit:
            return
        while len(queue) > limit:
            self._drop_item(queue.pop())  # type: ignore[union-attr]

    def _drop(self, message: Message, reason: str) -> None:
        self.dropped += 1
        self.env.dropped(self, message, reason)

    def _encode5(self, conn: Any, message: Message, qos: int, retain: bool,
                 pid: int | None, dup: bool, sub_ids: tuple[int, ...]) -> bytes | None:
        """A PUBLISH for an MQTT 5.0 connection, or None (dropped) when it is
        larger than the client's maximum packet size."""
        out5 = getattr(conn, "out5", None)
        if out5 is None:
            return message.encoded(5, qos, retain, pid, dup)
        data = out5.publish(message, qos, retain, pid, dup, sub_ids, self.env.clock)
        if data is None:
            self._drop(message, "max_packet_size_exceeded")
        return data

    def _send_inflight(self, conn: Any, message: Message, qos: int, retain: bool,
                       sub_ids: tuple[int, ...] = NO_IDS, queued: bool = False) -> None:
        """Send a QoS 1/2 PUBLISH; ``queued``: it was just taken off the queue
        (otherwise ``deliver`` sends it, and it is counted as ``deliver`` says)."""
        pid = self._allocate_pid()
        level = conn.protocol_level
        data: bytes | None
        if level < 5:
            data = message.encoded(level, qos, retain, pid)
        else:
            data = self._encode5(conn, message, qos, retain, pid, False, sub_ids)
            if data is None:
                self._next_pid = pid  # not used after all
                if queued and self.persistent:
                    self.env.store.message_dequeued(self.key, message)
                if not queued:
                    self.counters[DELIVER_HELD] += 1
                return
        now = self.env.clock.seconds()
        self.inflight[pid] = Inflight(message, qos, retain,
                                      WAIT_PUBACK if qos == 1 else WAIT_PUBREC, now, sub_ids)
        self.inflight_bytes += len(message.payload)
        if self.persistent:
            store = self.env.store
            store.message_sent(self.key, message, qos, retain, pid, sub_ids, queued)
            if qos == 2 and store.unsynced():
                # Exactly once: the client must not see this packet id before the
                # store knows it was sent (a restart would send the message again
                # under another id).  Connections that hold output for the store
                # provide write_durable.
                getattr(conn, "write_durable", conn.write)(data)
                if queued or level >= 5:  # (not: 3.x from deliver, see its doc)
                    self.counters[self.sent_slot if queued else DELIVER_SENT5] += 1
                self._schedule_retry(level)
                return
        conn.write(data)
        if queued or level >= 5:  # (not: 3.x from deliver, see its doc)
            self.counters[self.sent_slot if queued else DELIVER_SENT5] += 1
        self._schedule_retry(level)

    def _schedule_retry(self, level: int) -> None:
        if self.retry_call is None and self.retry_interval > 0 and level < 5:
            self.retry_call = self.env.clock.callLater(self.retry_interval, self._retry)

    def _allocate_pid(self) -> int:
        pid = self._next_pid
        inflight = self.inflight
        while pid in inflight:
            pid = pid % 65535 + 1
        self._next_pid = pid % 65535 + 1
        return pid

    def drain(self) -> None:
        """Move queued messages to the client while the window and transport allow."""
        conn = self.conn
        queue = self.queue
        store = self.env.store
        now: float | None = None
        while queue and conn is not None and not conn.paused:
            item = queue[0]
            message, qos, retain = item[0], item[1], item[2]
            sub_ids = item[3] if len(item) > 3 else NO_IDS
            if message.expires_at is not None:
                if now is None:
                    now = self.env.clock.seconds()
                if now >= message.expires_at:  # MQTT 5.0 message expiry: never sent
                    queue.popleft()
                    if qos and self.persistent:
                        store.message_dequeued(self.key, message)
                    self._drop(message, "expired")
                    continue
            if qos:
                n = len(self.inflight)  # inflight_full(), inlined: once per message
                if n >= self.max_inflight or n >= self.client_receive_max or (
                        self.max_inflight_bytes and n and self.inflight_bytes +
                        len(message.payload) > self.max_inflight_bytes):
                    return
                queue.popleft()
                self._send_inflight(conn, message, qos, retain, sub_ids, True)
            else:
                queue.popleft()
                if conn.protocol_level < 5:
                    conn.write(message.encoded_qos0(conn.protocol_level, retain))
                else:
                    data = self._encode5(conn, message, 0, retain, None, False, sub_ids)
                    if data is None:
                        continue
                    conn.write(data)
                self.counters[self.sent_slot] += 1

    # -- acknowledgements from the client ----------------------------------------

    def flush(self) -> None:
        """The deferred drain: ``Broker.flush`` calls it once per input batch
        for a session whose acknowledgements freed inflight room."""
        self.drain_pending = False
        self.drain()

    def _done(self, pid: int) -> None:
        """The client finished the flow of ``pid``: free its slot; queued
        messages follow once per input batch (see ``flush``), not once per
        acknowledgement, which with a deep queue is most of the work."""
        self.inflight_bytes -= len(self.inflight.pop(pid).message.payload)
        if self.persistent:
            self.env.store.message_acked(self.key, pid)
        if not self.queue or self.drain_pending:
            return
        mark = self.env.mark_dirty
        if mark is None:
            self.drain()
            return
        self.drain_pending = True
        mark(self)

    def puback(self, pid: int) -> bool:
        entry = self.inflight.get(pid)
        if entry is None or entry.state != WAIT_PUBACK:
            return False
        self._done(pid)
        return True

    def pubrec(self, pid: int, failed: bool = False) -> bool:
        """A PUBREC; with ``failed`` (MQTT 5.0 reason code >= 0x80) the QoS 2
        flow ends here, without PUBREL."""
        entry = self.inflight.get(pid)
        if entry is None or entry.state == WAIT_PUBACK:
            return False
        if failed:
            if entry.state == WAIT_PUBREC:
                self._done(pid)
            return True
        if entry.state != WAIT_PUBCOMP and self.persistent:
            self.env.store.message_released(self.key, pid)
        entry.state = WAIT_PUBCOMP
        entry.sent_at = self.env.clock.seconds()
        return True

    def pubcomp(self, pid: int) -> bool:
        entry = self.inflight.get(pid)
        if entry is None or entry.state != WAIT_PUBCOMP:
            return False
        self._done(pid)
        return True

    # -- incoming QoS 2 ------------------------------------------------------------------

    def qos2_received(self, pid: int) -> None:
        """An incoming QoS 2 PUBLISH was routed: its PUBREL is awaited."""
        pids = self.incoming_qos2
        if pids.__class__ is frozenset:
            pids = self.incoming_qos2 = set()
        pids.add(pid)
        if self.persistent:
            self.env.store.qos2_received(self.key, pid)

    def qos2_released(self, pid: int) -> bool:
        """PUBREL for an incoming QoS 2 ``pid``; False when the id was unknown."""
        if pid not in self.incoming_qos2:
            return False
        pids = self.incoming_qos2
        pids.discard(pid)
        if not pids:
            self.incoming_qos2 = NO_PIDS  # type: ignore[assignment]
        if self.persistent:
            self.env.store.qos2_released(self.key, pid)
        return True

    # -- connection lifecycle ------------------------------------------------------

    def attach(self, conn: Any) -> None:
        """A (re)connected client: resend unacknowledged messages, then the queue."""
        self.cancel_expiry()
        self.cancel_will()
        self.conn = conn
        level = conn.protocol_level
        counters = self.counters
        self.sent_slot = sent = self.env.publish_sent[level >= 5]
        out5 = getattr(conn, "out5", None)
        self.client_receive_max = out5.receive_maximum if out5 is not None else 65535
        too_large = []
        write = conn.write
        if self.inflight and self.persistent and self.env.store.unsynced():
            # What the store has not written yet may not reach the client yet
            # (see _send_inflight).
            write = getattr(conn, "write_durable", write)
        for pid, entry in self.inflight.items():
            entry.sent_at = self.env.clock.seconds()
            if entry.state == WAIT_PUBCOMP:
                write(encode(Pubrel(pid), level))
            elif level < 5:
                write(entry.message.encoded(level, entry.qos, entry.retain, pid, dup=True))
                counters[sent] += 1
            else:
                data = self._encode5(conn, entry.message, entry.qos, entry.retain, pid, True,
                                     entry.sub_ids)
                if data is None:
                    too_large.append(pid)
                else:
                    write(data)
                    counters[sent] += 1
        for pid in too_large:
            self.inflight_bytes -= len(self.inflight.pop(pid).message.payload)
            if self.persistent:
                self.env.store.message_acked(self.key, pid)
        if self.inflight and self.retry_call is None and self.retry_interval > 0 and level < 5:
            self.retry_call = self.env.clock.callLater(self.retry_interval, self._retry)
        self._trim_to_online_limit()
        self.drain()

    def detach(self) -> None:
        self.conn = None
        if self.retry_call is not None:
            if self.retry_call.active():
                self.retry_call.cancel()
            self.retry_call = None
        # QoS 0 messages waiting in the online queue are not kept offline.
        if self.queue:
            kept = deque(item for item in self.queue if item[1] > 0) if self.persistent else ()
            self.queue = kept if kept else ()

    def _retry(self) -> None:
        """MQTT 3.x: resend messages unacknowledged for ``retry_interval`` seconds."""
        self.retry_call = None
        conn = self.conn
        if conn is None or not self.inflight:
            return
        now = self.env.clock.seconds()
        level = conn.protocol_level
        oldest = now
        for pid, entry in self.inflight.items():
            if now - entry.sent_at >= self.retry_interval:
                entry.sent_at = now
                if entry.state == WAIT_PUBCOMP:
                    conn.write(encode(Pubrel(pid), level))
                else:
                    conn.write(entry.message.encoded(level, entry.qos, entry.retain, pid, dup=True))
                    self.counters[self.sent_slot] += 1
            oldest = min(oldest, entry.sent_at)
        self.retry_call = self.env.clock.callLater(
            max(0.001, oldest + self.retry_interval - now), self._retry)
        self.env.flush()

    def schedule_expiry(self, expire: Callable[["Session"], None],
                        delay: float | None = None) -> None:
        """Call ``expire(self)`` after the expiry interval (or ``delay`` seconds,
        for a session restored from the store part way through its interval)."""
        self.cancel_expiry()
        if self.expiry_interval is not None:
            self.expiry_call = self.env.clock.callLater(
                self.expiry_interval if delay is None else delay, expire, self)

    def cancel_expiry(self) -> None:
        if self.expiry_call is not None:
            if self.expiry_call.active():
                self.expiry_call.cancel()
            self.expiry_call = None

    def cancel_will(self) -> None:
        """Forget a delayed will (the session was resumed in time)."""
        self.will = None
        if self.will_call is not None:
            if self.will_call.active():
                self.will_call.cancel()
            self.will_call = None

    def __repr__(self) -> str:
        return f"<Session {self.key!r} persistent={self.persistent} online={self.conn is not None}>"
