"""Per-client session state: subscriptions, the outgoing queue and inflight window.

A session outlives its connection when it is persistent (MQTT 3.x clean
session = 0).  The connection is anything providing ``IClientConnection``;
the session never touches sockets, only ``conn.write(bytes)``.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from zope.interface import Attribute, Interface

from vmqtw.codec.encoder import encode
from vmqtw.codec.packets import Pubrel, SubOptions
from vmqtw.core.message import Message

if TYPE_CHECKING:  # pragma: no cover
    from vmqtw.core.broker import Broker

SessionKey = tuple[str, str]

# Outgoing inflight states.
WAIT_PUBACK = 1     # QoS 1 PUBLISH sent
WAIT_PUBREC = 2     # QoS 2 PUBLISH sent
WAIT_PUBCOMP = 3    # QoS 2 PUBREL sent


class IClientConnection(Interface):
    """What the core needs from a live client connection."""

    protocol_level = Attribute("3, 4 or 5")
    paused = Attribute("True while the transport's write buffer is full")

    def write(data: bytes) -> None:
        """Queue bytes for the client; sent at the broker's next flush."""

    def session_taken_over() -> None:
        """Close this connection: another connection took over its session."""


class Inflight:
    __slots__ = ("message", "qos", "retain", "state", "sent_at")

    def __init__(self, message: Message, qos: int, retain: bool, state: int, sent_at: float) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.state = state
        self.sent_at = sent_at


class Session:
    """State of one (mountpoint, client id)."""

    __slots__ = (
        "broker", "key", "mountpoint", "client_id", "username", "persistent",
        "expiry_interval", "subscriptions", "conn", "queue", "inflight",
        "incoming_qos2", "_next_pid", "max_inflight", "max_online", "max_offline",
        "retry_interval", "upgrade_qos", "expiry_call", "retry_call", "dropped",
        "peer", "listener",
    )

    def __init__(self, broker: "Broker", key: SessionKey, persistent: bool,
                 expiry_interval: float | None) -> None:
        cfg = broker.config
        self.broker = broker
        self.key = key
        self.mountpoint, self.client_id = key
        self.username: str | None = None
        self.persistent = persistent
        # Seconds the session survives without a connection; None = forever.
        self.expiry_interval = expiry_interval
        self.subscriptions: dict[str, SubOptions] = {}
        self.conn: Any = None
        # Messages waiting for a free inflight slot, a resumed transport or a reconnect:
        # (message, qos, retain) tuples.
        self.queue: deque[tuple[Message, int, bool]] = deque()
        self.inflight: dict[int, Inflight] = {}
        self.incoming_qos2: set[int] = set()
        self._next_pid = 1
        # 0 means "unlimited", which is bounded by the 65535 packet identifiers.
        self.max_inflight = cfg.max_inflight_messages or 65535
        self.max_online = cfg.max_online_messages
        self.max_offline = cfg.max_offline_messages
        self.retry_interval = cfg.retry_interval
        self.upgrade_qos = cfg.upgrade_outgoing_qos
        self.expiry_call: Any = None
        self.retry_call: Any = None
        self.dropped = 0
        self.peer: tuple[str, int] | None = None
        self.listener: str | None = None

    # -- delivery ---------------------------------------------------------------

    def deliver(self, message: Message, qos: int, retain: bool) -> None:
        """Send ``message`` at ``qos`` now, or queue it, or drop it when over a limit."""
        conn = self.conn
        if conn is None:
            if qos == 0 or not self.persistent:
                self._drop(message, "offline_qos0")
                return
            if 0 <= self.max_offline <= len(self.queue):
                self._drop(message, "queue_full")
                return
            self.queue.append((message, qos, retain))
            self.broker.store.message_queued(self.key, message, qos)
            return
        if self.queue or conn.paused:
            self._enqueue_online(message, qos, retain)
            return
        if qos == 0:
            conn.write(message.encoded_qos0(conn.protocol_level, retain))
            return
        if len(self.inflight) >= self.max_inflight:
            self._enqueue_online(message, qos, retain)
            return
        self._send_inflight(conn, message, qos, retain)

    def _enqueue_online(self, message: Message, qos: int, retain: bool) -> None:
        if 0 <= self.max_online <= len(self.queue):
            self._drop(message, "queue_full")
            return
        self.queue.append((message, qos, retain))
        if qos and self.persistent:
            self.broker.store.message_queued(self.key, message, qos)

    def _drop(self, message: Message, reason: str) -> None:
        self.dropped += 1
        self.broker.message_dropped(self, message, reason)

    def _send_inflight(self, conn: Any, message: Message, qos: int, retain: bool) -> None:
        pid = self._allocate_pid()
        now = self.broker.clock.seconds()
        self.inflight[pid] = Inflight(message, qos, retain,
                                      WAIT_PUBACK if qos == 1 else WAIT_PUBREC, now)
        conn.write(message.encoded(conn.protocol_level, qos, retain, pid))
        if self.retry_call is None and self.retry_interval > 0 and conn.protocol_level < 5:
            self.retry_call = self.broker.clock.callLater(self.retry_interval, self._retry)

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
        store = self.broker.store
        while queue and conn is not None and not conn.paused:
            message, qos, retain = queue[0]
            if qos:
                if len(self.inflight) >= self.max_inflight:
                    return
                queue.popleft()
                if self.persistent:
                    store.message_dequeued(self.key, message)
                self._send_inflight(conn, message, qos, retain)
            else:
                queue.popleft()
                conn.write(message.encoded_qos0(conn.protocol_level, retain))

    # -- acknowledgements from the client ----------------------------------------

    def puback(self, pid: int) -> bool:
        entry = self.inflight.get(pid)
        if entry is None or entry.state != WAIT_PUBACK:
            return False
        del self.inflight[pid]
        self.drain()
        return True

    def pubrec(self, pid: int) -> bool:
        entry = self.inflight.get(pid)
        if entry is None or entry.state == WAIT_PUBACK:
            return False
        entry.state = WAIT_PUBCOMP
        entry.sent_at = self.broker.clock.seconds()
        return True

    def pubcomp(self, pid: int) -> bool:
        entry = self.inflight.get(pid)
        if entry is None or entry.state != WAIT_PUBCOMP:
            return False
        del self.inflight[pid]
        self.drain()
        return True

    # -- connection lifecycle ------------------------------------------------------

    def attach(self, conn: Any) -> None:
        """A (re)connected client: resend unacknowledged messages, then the queue."""
        self.cancel_expiry()
        self.conn = conn
        level = conn.protocol_level
        for pid, entry in self.inflight.items():
            entry.sent_at = self.broker.clock.seconds()
            if entry.state == WAIT_PUBCOMP:
                conn.write(encode(Pubrel(pid), level))
            else:
                conn.write(entry.message.encoded(level, entry.qos, entry.retain, pid, dup=True))
        if self.inflight and self.retry_call is None and self.retry_interval > 0 and level < 5:
            self.retry_call = self.broker.clock.callLater(self.retry_interval, self._retry)
        self.drain()

    def detach(self) -> None:
        self.conn = None
        if self.retry_call is not None:
            if self.retry_call.active():
                self.retry_call.cancel()
            self.retry_call = None
        # QoS 0 messages waiting in the online queue are not kept offline.
        if self.queue:
            kept = deque(item for item in self.queue if item[1] > 0) if self.persistent else deque()
            self.queue = kept

    def _retry(self) -> None:
        """MQTT 3.x: resend messages unacknowledged for ``retry_interval`` seconds."""
        self.retry_call = None
        conn = self.conn
        if conn is None or not self.inflight:
            return
        now = self.broker.clock.seconds()
        level = conn.protocol_level
        oldest = now
        for pid, entry in self.inflight.items():
            if now - entry.sent_at >= self.retry_interval:
                entry.sent_at = now
                if entry.state == WAIT_PUBCOMP:
                    conn.write(encode(Pubrel(pid), level))
                else:
                    conn.write(entry.message.encoded(level, entry.qos, entry.retain, pid, dup=True))
            oldest = min(oldest, entry.sent_at)
        self.retry_call = self.broker.clock.callLater(
            max(0.001, oldest + self.retry_interval - now), self._retry)
        self.broker.flush()

    def schedule_expiry(self, expire: Callable[["Session"], None]) -> None:
        self.cancel_expiry()
        if self.expiry_interval is not None:
            self.expiry_call = self.broker.clock.callLater(self.expiry_interval, expire, self)

    def cancel_expiry(self) -> None:
        if self.expiry_call is not None:
            if self.expiry_call.active():
                self.expiry_call.cancel()
            self.expiry_call = None

    def __repr__(self) -> str:
        return f"<Session {self.key!r} persistent={self.persistent} online={self.conn is not None}>"
