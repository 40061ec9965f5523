"""One MQTT connection's rules, without I/O.

A ``Connection`` is fed bytes (``data_received``) and told when the stream
ends (``connection_lost``); it answers through its ``IConnectionTransport``
(``write``, ``write_durable``, ``close_connection``, ``pause_reading``...) and
runs its timers on an injected clock (anything with ``seconds()`` and
``callLater()``).  Each inbound packet type has a handler function in its own
module (``connect``, ``auth``, ``publish``, ``subscribe``, ``control``); this
module holds what they share: the state, the held-packet queue, the timers
and the one place where a violation or a refusal becomes CONNACK/DISCONNECT
and a close.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from vmqtw.auth.chain import Authorizer
from vmqtw.auth.hooks import Notifier
from vmqtw.codec import reasons
from vmqtw.codec.decoder import Decoder
from vmqtw.codec.encoder import encode
from vmqtw.codec.errors import CodecError, PacketTooLarge, UnsupportedProtocolVersion
from vmqtw.codec.packets import (
    AUTH, CONNECT, DISCONNECT, MQTT5, PINGREQ, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL,
    SUBSCRIBE, UNSUBSCRIBE, Connack, Disconnect,
)
from vmqtw.config import ListenerConfig
from vmqtw.connection import auth, connect, control, publish, subscribe
from vmqtw.connection.state import (
    AUTHENTICATING, AWAIT_AUTH, AWAIT_CONNECT, CLOSED, CONNECTED, MAX_PACKET, ClientView,
)
from vmqtw.connection.timers import deadlines_for, wheel_for
from vmqtw.connection.transport import IConnectionTransport
from vmqtw.core.broker import Broker
from vmqtw.core.message import Message
from vmqtw.core.session import Session
from vmqtw.logs import Logger, info_enabled
from vmqtw.metrics import (
    BYTES_RECEIVED, SOCKET_CLOSE, SOCKET_CLOSE_TIMEOUT, SOCKET_OPEN, VersionSlots,
)

Handler = Callable[["Connection", Any], None]

# One handler per inbound packet type (mosquitto's handle_*.c, as functions).
HANDLERS: list[Handler] = [control.handle_unexpected] * 16
HANDLERS[CONNECT] = connect.handle_connect
HANDLERS[PUBLISH] = publish.handle_publish
HANDLERS[PUBACK] = publish.handle_puback
HANDLERS[PUBREC] = publish.handle_pubrec
HANDLERS[PUBREL] = publish.handle_pubrel
HANDLERS[PUBCOMP] = publish.handle_pubcomp
HANDLERS[SUBSCRIBE] = subscribe.handle_subscribe
HANDLERS[UNSUBSCRIBE] = subscribe.handle_unsubscribe
HANDLERS[PINGREQ] = control.handle_pingreq
HANDLERS[DISCONNECT] = control.handle_disconnect
HANDLERS[AUTH] = auth.handle_auth

#: The disconnect line's reason for a close the broker asks for with a reason
#: code and no other explanation (``vmq-admin session disconnect``, shutdown).
CLOSE_REASONS: dict[int, str] = {
    reasons.SERVER_SHUTTING_DOWN: "server shutdown",
    reasons.ADMINISTRATIVE_ACTION: "disconnected by an administrator",
    reasons.SESSION_TAKEN_OVER: "session taken over",
    reasons.KEEP_ALIVE_TIMEOUT: "keep alive timeout",
    reasons.MAXIMUM_CONNECT_TIME: "max_connection_lifetime reached",
    reasons.IMPLEMENTATION_SPECIFIC_ERROR: "internal error",
    reasons.NOT_AUTHORIZED: "not authorized",
}


class Connection:
    """The MQTT rules of one client connection (3.1, 3.1.1 and 5.0)."""

    log = Logger()

    __slots__ = (
        "transport", "write", "write_durable", "broker", "authorizer", "notifier", "listener",
        "listener_name", "clock", "decoder", "state", "protocol_level", "session", "client",
        "will", "clean_disconnect", "peer", "last_activity", "keepalive", "held", "timers",
        "head", "problem_info", "session_expiry", "will_delay", "aliases_in", "auth_method",
        "connack5", "auth_data", "reauth", "auth_connect", "pending", "held_inflight",
        "max_message_rate", "rate_count", "rate_window_end",
        "counters", "slots", "received", "traced", "online", "close_reason",
        "valid_topic", "valid_depth",
    )

    def __init__(self, transport: IConnectionTransport, broker: Broker, authorizer: Authorizer,
                 listener: ListenerConfig, clock: Any, notifier: Notifier | None = None,
                 max_packet_size: int | None = None) -> None:
        self.transport = transport
        # Bound once: the per-message path writes without a lookup through transport.
        self.write: Callable[[bytes], None] = transport.write
        self.write_durable: Callable[[bytes], None] = transport.write_durable
        self.broker = broker
        self.authorizer = authorizer
        self.notifier = notifier if notifier is not None else Notifier([])
        self.listener = listener
        self.listener_name = f"{listener.kind}.{listener.name}"
        self.clock = clock
        if max_packet_size is None:
            size = broker.config.max_message_size
            max_packet_size = size if size > 0 else MAX_PACKET
        # Until CONNECT (and AUTH) succeed, a small limit: a client that has not
        # logged in cannot make the broker buffer a big packet.
        self.decoder = Decoder(max_packet_size=max_packet_size,
                               preauth_max_packet_size=broker.config.max_preauth_packet_size)
        self.state = AWAIT_CONNECT
        self.protocol_level = 4
        self.session: Session | None = None
        self.client: ClientView | None = None
        self.will: Message | None = None
        self.clean_disconnect = False
        self.peer: tuple[str, int] = ("", 0)
        self.last_activity = 0.0
        self.keepalive = 0
        # Packets (and a decoding error) read while a plugin decides about CONNECT,
        # or about a PUBLISH/SUBSCRIBE (``pending``).
        self.held: list[Any] = []
        self.pending: Deferred[Any] | None = None  # a publish/subscribe verdict to come
        self.held_inflight = 0  # QoS>0 PUBLISHes of a 5.0 client waiting (receive maximum)
        self.timers: dict[str, Any] = {}
        self.head = b""  # first bytes of the stream: is a broken CONNECT a 5.0 one?
        # -- MQTT 5.0 (see connect.connect5) --
        self.problem_info = True               # reason strings on acknowledgements
        self.session_expiry = 0                # Session Expiry Interval from CONNECT
        self.will_delay = 0
        self.aliases_in: dict[int, str] = {}   # the client's topic aliases
        self.auth_method: str | None = None    # enhanced authentication method
        self.connack5: dict[str, Any] = {}     # assigned client id, server keep alive
        self.auth_data: bytes | None = None    # enhanced authentication data for the CONNACK
        self.reauth = 0                        # REAUTH_* state
        self.auth_connect: Any = None          # (RegisterRequest, Connect) during AUTH steps
        # -- max_message_rate (see publish.over_rate) --
        self.max_message_rate = publish.message_rate_limit(broker.config)
        self.rate_count = 0
        self.rate_window_end = 0.0
        #: The last PUBLISH topic that passed validation, and the depth limit it
        #: passed under (see ``publish.handle_publish``).
        self.valid_topic: str | None = None
        self.valid_depth = 0
        # -- metrics: the counter values and this connection's slots (vmqtw.metrics) --
        self.counters: list[int] = broker.counters
        #: The slots of the connection's MQTT version (3.x until a 5.0 CONNECT).
        self.slots: VersionSlots = broker.metrics.version_slots(4)
        #: Packet type -> its ``*_received`` slot (None: ask ``slots.received_slot``);
        #: all None until CONNECT says the version.
        self.received: list[int | None] = [None] * 16
        #: The session keys ``vmq-admin trace client`` watches (shared, usually empty).
        self.traced: Any = broker.traced
        # -- the connect/disconnect log lines (see ``log_disconnect``) --
        #: True once the CONNECT was accepted (its line logged).
        self.online = False
        #: Why the connection ends, for the disconnect line (None: the socket closed).
        self.close_reason: str | None = None

    # -- what the transport tells us ------------------------------------------------------

    def connection_made(self) -> None:
        """The stream is open: start waiting for CONNECT."""
        self.peer = self.transport.peer
        self.counters[SOCKET_OPEN] += 1
        self.last_activity = self.clock.seconds()
        self.start_timer("connect", self.broker.config.mqtt_connect_timeout / 1000.0,
                         self.connect_timeout)

    def data_received(self, data: bytes) -> None:
        """Decode and handle ``data``; then write the output it caused."""
        if self.state == CLOSED:
            return
        counters = self.counters
        counters[BYTES_RECEIVED] += len(data)
        self.last_activity = self.clock.seconds()
        if self.state == AWAIT_CONNECT and len(self.head) < 16:
            self.head += data[:16]
        self.decode(data)
        if self.state == AUTHENTICATING:
            # The decoder stops after a CONNECT until authentication succeeds;
            # while a plugin decides, what follows is decoded (with the
            # pre-authentication limit) and held.
            self.decode(b"")
        self.broker.flush()

    def decode(self, data: bytes) -> None:
        """Decode ``data`` and handle (or hold) the packets."""
        error: CodecError | None = None
        try:
            packets = self.decoder.feed(data)
        except CodecError as e:
            error = e
            packets = getattr(e, "packets", [])
        handlers = HANDLERS
        traced = self.traced
        counters = self.counters
        for packet in packets:
            if self.state == CLOSED:
                break
            ptype = packet.type
            slot = self.received[ptype]
            if slot is None:
                slot = self.count_version(packet)
            counters[slot] += 1
            # Held while a plugin decides (about CONNECT, or a PUBLISH/SUBSCRIBE:
            # ``pending``), or behind a packet held by the message rate limit
            # (reading is paused meanwhile).
            if self.state == AUTHENTICATING or self.held or self.pending is not None:
                self.hold(packet)
                continue
            handlers[ptype](self, packet)
            if traced:
                self.trace("RECV", packet)
        if error is not None and self.state != CLOSED:
            if self.state == AUTHENTICATING or self.held or self.pending is not None:
                self.held.append(error)
            else:
                self.codec_error(error)

    def trace(self, direction: str, packet: Any) -> None:
        """Report ``packet`` to ``vmq-admin trace client`` if its client is traced."""
        client = self.client
        if client is not None and (client.mountpoint, client.client_id) in self.traced:
            self.broker.tracer.packet((client.mountpoint, client.client_id), direction,
                                      packet)

    def count_version(self, packet: Any) -> int:
        """The ``*_received`` slot of ``packet`` when the table has none; a
        CONNECT sets the connection's slots to its MQTT version."""
        if packet.type == CONNECT and self.state == AWAIT_CONNECT:
            self.slots = self.broker.metrics.version_slots(packet.protocol_level)
            self.received = self.slots.received
        return self.slots.received_slot(packet)

    def count_sent(self, name: str, code: int = 0) -> None:
        """Count one packet sent: ``name`` is its counter (``mqtt_puback_sent``),
        ``code`` its reason code (5.0) or CONNACK return code."""
        self.counters[self.slots.reason(name, code)] += 1

    def replay_held(self) -> None:
        """Handle the packets that arrived while a plugin was deciding (about
        CONNECT, or a PUBLISH/SUBSCRIBE) or while the message rate limit paused
        reading, in order; whatever comes while a plugin decides again (or is
        over the rate again) stays held."""
        held, self.held = self.held, []
        self.held_inflight = 0
        for item in held:
            if self.state == CLOSED:
                break
            if self.state == AUTHENTICATING or self.held or self.pending is not None:
                if isinstance(item, CodecError):
                    self.held.append(item)
                else:
                    self.hold(item)
                continue
            if isinstance(item, CodecError):
                self.codec_error(item)
            else:
                HANDLERS[item.type](self, item)

    def hold(self, packet: Any) -> None:
        """Keep ``packet`` for ``replay_held``.  While a verdict is pending, a 5.0
        client's QoS>0 PUBLISH is unacknowledged: it counts toward the receive
        maximum (MQTT 5.0 s4.9), and one too many is a violation."""
        self.held.append(packet)
        if self.pending is not None and packet.type == PUBLISH and packet.qos and \
                self.protocol_level == MQTT5 and self.session is not None and \
                packet.packet_id not in self.session.incoming_qos2:
            self.held_inflight += 1
            if len(self.session.incoming_qos2) + self.held_inflight > \
                    self.broker.config.receive_max_broker:
                self.protocol_violation("receive maximum exceeded",
                                        reasons.RECEIVE_MAXIMUM_EXCEEDED)

    def await_verdict(self, d: Deferred[Any], inflight: int,
                      apply: Callable[..., None], *args: Any) -> None:
        """A plugin answers a PUBLISH/SUBSCRIBE later: hold what the client sends
        meanwhile and stop reading; when ``d`` fires, ``apply(self, verdict,
        *args)`` (the synchronous path's code), replay the held packets and read
        again.  ``inflight`` is 1 for a 5.0 QoS>0 PUBLISH (receive maximum).
        ``connection_lost`` cancels ``d``; a verdict after the close is dropped."""
        self.pending = d
        self.held_inflight = inflight
        later = False

        def answered(verdict: Any) -> None:
            if self.pending is not d:  # the connection ended meanwhile
                return
            self.pending = None
            if self.state == CLOSED:
                return
            apply(self, verdict, *args)
            if later:
                self.replay_held()
                if self.state != CLOSED and self.pending is None and not self.held:
                    self.transport.resume_reading()  # unless something holds input again
                self.broker.flush()

        d.addCallback(answered)
        d.addErrback(self.verdict_failed)
        if self.pending is d:  # not answered at once: wait
            later = True
            self.transport.pause_reading()

    def verdict_failed(self, failure: Failure) -> None:
        """Applying a late verdict raised (a bug): log it and close, rather than
        leave the client unread forever."""
        self.log.failure("client {client_id!r}: applying an authorization verdict failed",
                         failure, client_id=self.client_id)
        self.closing_because("internal error")
        self.close(reasons.IMPLEMENTATION_SPECIFIC_ERROR)
        self.broker.flush()

    def decode_rest(self) -> None:
        """Decode and handle what arrived after the CONNECT: the decoder holds
        it back until the client is authenticated (see ``Decoder.authenticated``)."""
        if self.state == CONNECTED and self.decoder.buffered:
            self.data_received(b"")

    def connection_lost(self) -> None:
        """The stream ended (any reason): publish the will unless the client said
        goodbye, and detach from the session."""
        previous = self.state
        self.state = CLOSED
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()  # aborts the plugin's request (e.g. the webhook's HTTP call)
        self.counters[SOCKET_CLOSE] += 1
        for call in self.timers.values():
            if call.active():
                call.cancel()
        self.timers.clear()
        session = self.session
        self.session = None
        if session is not None and session.conn is self.transport:
            if self.will is not None and not self.clean_disconnect:
                self.publish_will(session)
            self.broker.connection_closed(session)
            self.broker.flush()
        if self.online:
            self.log_disconnect(previous)

    def log_disconnect(self, previous: int) -> None:
        """The one info line of an accepted client going away, with why
        (``close_reason``; the socket closed if nothing else said why)."""
        self.online = False
        if not info_enabled():  # log_level = warn: skip building the event
            return
        client = self.client
        reason = self.close_reason
        if reason is None:
            reason = "socket closed" if previous == CONNECTED else "closed by the broker"
        self.log.info("client {client_id!r} (user {username!r}) from {peer} on {listener} "
                      "disconnected: {reason}", client_id=self.client_id,
                      username=client.username if client is not None else None,
                      peer=self.peer_str(), listener=self.listener_name, reason=reason)

    def log_connect(self, present: bool, clean: bool) -> None:
        """The one info line of an accepted CONNECT (never the password)."""
        self.online = True
        if not info_enabled():  # log_level = warn: skip building the event
            return
        client = self.client
        self.log.info("client {client_id!r} (user {username!r}) connected from {peer} on "
                      "{listener}: MQTT level {protocol_level}, {clean_name} {clean}, "
                      "keep alive {keepalive} s, session present {present}",
                      client_id=self.client_id,
                      username=client.username if client is not None else None,
                      peer=self.peer_str(), listener=self.listener_name,
                      protocol_level=self.protocol_level,
                      clean_name="clean start" if self.protocol_level == MQTT5
                      else "clean session", clean=clean, keepalive=self.keepalive,
                      present=present)

    def closing_because(self, reason: str) -> None:
        """Say why the connection ends (the first reason given stands)."""
        if self.close_reason is None:
            self.close_reason = reason

    def output_resumed(self) -> None:
        """The transport takes output again: send what the session queued meanwhile."""
        session = self.session
        if session is not None and session.queue:
            session.drain()
            self.broker.flush()

    def session_taken_over(self) -> None:
        """Another connection claimed our session: publish the will, close."""
        session = self.session
        self.session = None
        if session is not None and self.will is not None and \
                not self.broker.config.suppress_lwt_on_session_takeover:
            self.publish_will(session)
        self.will = None
        self.closing_because("session taken over")
        self.log.debug("client {client_id!r} from {peer}: session taken over",
                      client_id=session.client_id if session else "", peer=self.peer_str())
        self.close(reasons.SESSION_TAKEN_OVER)

    def store_failed(self, why: str) -> None:
        """The store could not write what acknowledgements waited for: they are
        never sent (the client sends its messages again)."""
        if self.state == CLOSED:
            return
        self.log.error("closing {peer} (client {client_id!r}): {reason}", peer=self.peer_str(),
                       client_id=self.client_id, reason=why)
        self.closing_because(f"store failure: {why}")
        self.close(reasons.IMPLEMENTATION_SPECIFIC_ERROR)

    def publish_will(self, session: Session) -> None:
        """Hand the will to the broker (at most once)."""
        will = self.will
        self.will = None
        if will is not None:
            self.broker.will(session, will, self.will_delay)

    # -- the one way out: refusal, violation, close ------------------------------------

    def codec_error(self, error: CodecError) -> None:
        """A packet that cannot be decoded: refuse the CONNECT or close."""
        if isinstance(error, PacketTooLarge):  # over max_message_size (or before login)
            slots = self.slots
            if self.state == AWAIT_CONNECT:  # the CONNECT itself: its version if readable
                slots = self.broker.metrics.version_slots(self.connect_level() or 4)
            self.counters[slots.mqtt_invalid_msg_size_error] += 1  # type: ignore[attr-defined]
        if isinstance(error, UnsupportedProtocolVersion):
            self.log.info("refusing {peer}: {reason}", peer=self.peer_str(), reason=str(error))
            code = reasons.CONNACK_UNACCEPTABLE_PROTOCOL
            level = 4
            if error.protocol_level == MQTT5:
                code, level = reasons.UNSUPPORTED_PROTOCOL_VERSION, MQTT5
            self.write(encode(Connack(code), level))
            self.count_connack(code, level)
            self.close()
            return
        if self.state == AWAIT_CONNECT and self.connect_level() == MQTT5 and \
                MQTT5 in self.listener.allowed_protocol_versions:
            # A broken 5.0 CONNECT: say why in the CONNACK before closing.
            self.protocol_level = MQTT5
            self.refuse(error.reason_code, str(error))
            return
        self.protocol_violation(str(error), error.reason_code)

    def connect_level(self) -> int | None:
        """The protocol level of the CONNECT at the start of the stream, if readable."""
        head = self.head
        if len(head) < 2 or head[0] != 0x10:
            return None
        i = 1
        while i < 5 and i < len(head) and head[i] & 0x80:
            i += 1
        name = head[i + 1:i + 7]
        if name != b"\x00\x04MQTT" or len(head) <= i + 7:
            return None
        return head[i + 7]

    def refuse(self, reason_v5: int, why: str) -> None:
        """Refuse the CONNECT: a CONNACK with the reason (as the client's level
        spells it), then close."""
        client = self.client
        self.log.info("refusing CONNECT from {peer} (client {client_id!r}, username "
                      "{username!r}): {reason}", peer=self.peer_str(), reason=why,
                      client_id=self.client_id,
                      username=client.username if client is not None else None)
        code = reasons.connack_code(reason_v5, self.protocol_level)
        self.write(encode(Connack(code), self.protocol_level))
        self.count_connack(code, self.protocol_level)
        self.close()

    def count_connack(self, code: int, level: int) -> None:
        """Count a CONNACK with ``code`` sent at MQTT ``level``."""
        self.counters[self.broker.metrics.version_slots(level).connack(code)] += 1

    def protocol_violation(self, why: str, reason_code: int = reasons.PROTOCOL_ERROR) -> None:
        """Close this connection (and only this one) for breaking the protocol."""
        self.log.info("closing {peer} (client {client_id!r}): {reason}",
                      peer=self.peer_str(), reason=why, client_id=self.client_id)
        self.closing_because(f"protocol violation: {why}")
        self.close(reason_code)

    def close(self, reason_code: int | None = None) -> None:
        """Close gracefully, with a DISCONNECT carrying ``reason_code`` to a
        connected 5.0 client.  Output still waiting for the store is dropped:
        the client sends its unacknowledged messages again."""
        if self.state == CLOSED:
            return
        if reason_code is not None and self.close_reason is None:
            self.close_reason = CLOSE_REASONS.get(reason_code, f"reason code 0x{reason_code:02X}")
        final = b""
        if reason_code is not None and self.protocol_level == MQTT5 and self.state == CONNECTED:
            final = encode(Disconnect(reason_code), MQTT5)
            self.count_sent("mqtt_disconnect_sent", reason_code)
        self.state = CLOSED
        self.transport.close_connection(final)

    # -- timers -------------------------------------------------------------------------------

    def start_timer(self, name: str, delay: float, f: Callable[[], None]) -> None:
        """(Re)start the timer ``name``; all timers stop when the connection ends.
        The keep alive timer goes on the clock's shared ``timers.TimerWheel`` (no
        ``DelayedCall`` per idle client; up to ``timers.GRANULARITY`` s late),
        the CONNECT timeout on its ``timers.DeadlineQueue`` (exact)."""
        self.stop_timer(name)
        if name == "keepalive":
            self.timers[name] = wheel_for(self.clock).call_later(delay, f)
        elif name == "connect":
            # Every connection starts one with the same delay and nearly all
            # are cancelled at once: a shared queue, as exact as callLater.
            self.timers[name] = deadlines_for(self.clock).call_later(delay, f)
        else:
            self.timers[name] = self.clock.callLater(delay, f)

    def stop_timer(self, name: str) -> None:
        """Cancel the timer ``name`` if it is running."""
        call = self.timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def connect_timeout(self) -> None:
        """No CONNECT (or no AUTH answer) in time: close."""
        self.timers.pop("connect", None)
        if self.state == AWAIT_CONNECT or self.state == AWAIT_AUTH:
            self.counters[SOCKET_CLOSE_TIMEOUT] += 1
            self.log.info("closing {peer}: no {packet} within {timeout} ms", peer=self.peer_str(),
                          packet="CONNECT" if self.state == AWAIT_CONNECT else "AUTH",
                          timeout=self.broker.config.mqtt_connect_timeout)
            self.close()

    def keepalive_check(self) -> None:
        """Close a client silent for 1.5 x its keep alive; otherwise check again later."""
        limit = self.keepalive * 1.5
        idle = self.clock.seconds() - self.last_activity
        if self.pending is not None:  # we stopped reading (a verdict): its bytes wait unread
            idle = 0.0
        if idle >= limit:
            self.timers.pop("keepalive", None)
            self.counters[self.slots.client_keepalive_expired] += 1  # type: ignore[attr-defined]
            self.closing_because("keep alive timeout")
            self.log.debug("closing {peer} (client {client_id!r}): keep alive timeout",
                          peer=self.peer_str(), client_id=self.client_id)
            self.close(reasons.KEEP_ALIVE_TIMEOUT)
            return
        self.timers["keepalive"] = wheel_for(self.clock).call_later(limit - idle,
                                                                    self.keepalive_check)

    def lifetime_expired(self) -> None:
        """max_connection_lifetime reached: disconnect (0xA0 for 5.0)."""
        self.timers.pop("lifetime", None)
        self.closing_because("max_connection_lifetime reached")
        self.log.debug("closing {peer} (client {client_id!r}): max_connection_lifetime reached",
                      peer=self.peer_str(), client_id=self.client_id)
        self.close(reasons.MAXIMUM_CONNECT_TIME)

    # -- for log lines ------------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        """The client id for log lines ("" before CONNECT)."""
        return self.client.client_id if self.client is not None else ""

    def peer_str(self) -> str:
        """``host:port`` of the peer for log lines."""
        host, port = self.peer
        return f"{host}:{port}" if host else "?"
