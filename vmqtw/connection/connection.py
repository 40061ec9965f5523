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

from vmqtw.auth.chain import Authorizer
from vmqtw.auth.hooks import Notifier
from vmqtw.codec import reasons
from vmqtw.codec.decoder import Decoder
from vmqtw.codec.encoder import encode
from vmqtw.codec.errors import CodecError, UnsupportedProtocolVersion
from vmqtw.codec.packets import (
    AUTH, CONNECT, DISCONNECT, MQTT5, PINGREQ, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL,
    SUBSCRIBE, UNSUBSCRIBE, Connack, Disconnect,
)
from vmqtw.config import ListenerConfig
from vmqtw.connection import auth, connect, control, publish, subscribe
from vmqtw.connection.state import (
    AUTHENTICATING, AWAIT_AUTH, AWAIT_CONNECT, CLOSED, CONNECTED, MAX_PACKET, ClientView,
)
from vmqtw.connection.timers import wheel_for
from vmqtw.connection.transport import IConnectionTransport
from vmqtw.core.broker import Broker
from vmqtw.core.message import Message
from vmqtw.core.session import Session
from vmqtw.logs import Logger

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


class Connection:
    """The MQTT rules of one client connection (3.1, 3.1.1 and 5.0)."""

    log = Logger()

    __slots__ = (
        "transport", "write", "write_durable", "broker", "authorizer", "notifier", "listener",
        "listener_name", "clock", "decoder", "state", "protocol_level", "session", "client",
        "will", "clean_disconnect", "peer", "last_activity", "keepalive", "held", "timers",
        "head", "problem_info", "session_expiry", "will_delay", "aliases_in", "auth_method",
        "connack5", "auth_data", "reauth", "auth_connect",
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
        self.decoder = Decoder(max_packet_size=max_packet_size)
        self.state = AWAIT_CONNECT
        self.protocol_level = 4
        self.session: Session | None = None
        self.client: ClientView | None = None
        self.will: Message | None = None
        self.clean_disconnect = False
        self.peer: tuple[str, int] = ("", 0)
        self.last_activity = 0.0
        self.keepalive = 0
        # Packets (and a decoding error) read while a plugin decides about CONNECT.
        self.held: list[Any] = []
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

    # -- what the transport tells us ------------------------------------------------------

    def connection_made(self) -> None:
        """The stream is open: start waiting for CONNECT."""
        self.peer = self.transport.peer
        self.last_activity = self.clock.seconds()
        self.start_timer("connect", self.broker.config.mqtt_connect_timeout / 1000.0,
                         self.connect_timeout)

    def data_received(self, data: bytes) -> None:
        """Decode and handle ``data``; then write the output it caused."""
        if self.state == CLOSED:
            return
        self.last_activity = self.clock.seconds()
        if self.state == AWAIT_CONNECT and len(self.head) < 16:
            self.head += data[:16]
        error: CodecError | None = None
        try:
            packets = self.decoder.feed(data)
        except CodecError as e:
            error = e
            packets = getattr(e, "packets", [])
        handlers = HANDLERS
        for packet in packets:
            if self.state == AUTHENTICATING:
                self.held.append(packet)
                continue
            if self.state == CLOSED:
                break
            handlers[packet.type](self, packet)
        if error is not None and self.state != CLOSED:
            if self.state == AUTHENTICATING:
                self.held.append(error)
            else:
                self.codec_error(error)
        self.broker.flush()

    def replay_held(self) -> None:
        """Handle the packets that arrived while a plugin was deciding about
        CONNECT, in order; whatever comes while it decides again stays held."""
        held, self.held = self.held, []
        for item in held:
            if self.state == CLOSED:
                break
            if self.state == AUTHENTICATING:
                self.held.append(item)
                continue
            if isinstance(item, CodecError):
                self.codec_error(item)
            else:
                HANDLERS[item.type](self, item)

    def connection_lost(self) -> None:
        """The stream ended (any reason): publish the will unless the client said
        goodbye, and detach from the session."""
        previous = self.state
        self.state = CLOSED
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
        if previous == CONNECTED:
            self.log.debug("client {client_id!r} from {peer} disconnected",
                           client_id=self.client_id, peer=self.peer_str())

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
        self.log.info("client {client_id!r} from {peer}: session taken over",
                      client_id=session.client_id if session else "", peer=self.peer_str())
        self.close(reasons.SESSION_TAKEN_OVER)

    def store_failed(self, why: str) -> None:
        """The store could not write what acknowledgements waited for: they are
        never sent (the client sends its messages again)."""
        if self.state == CLOSED:
            return
        self.log.error("closing {peer} (client {client_id!r}): {reason}", peer=self.peer_str(),
                       client_id=self.client_id, reason=why)
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
        if isinstance(error, UnsupportedProtocolVersion):
            self.log.info("refusing {peer}: {reason}", peer=self.peer_str(), reason=str(error))
            code = reasons.CONNACK_UNACCEPTABLE_PROTOCOL
            level = 4
            if error.protocol_level == MQTT5:
                code, level = reasons.UNSUPPORTED_PROTOCOL_VERSION, MQTT5
            self.write(encode(Connack(code), level))
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
        self.log.info("refusing CONNECT from {peer} (client {client_id!r}): {reason}",
                      peer=self.peer_str(), reason=why, client_id=self.client_id)
        code = reasons.connack_code(reason_v5, self.protocol_level)
        self.write(encode(Connack(code), self.protocol_level))
        self.close()

    def protocol_violation(self, why: str, reason_code: int = reasons.PROTOCOL_ERROR) -> None:
        """Close this connection (and only this one) for breaking the protocol."""
        self.log.info("closing {peer} (client {client_id!r}): {reason}",
                      peer=self.peer_str(), reason=why, client_id=self.client_id)
        self.close(reason_code)

    def close(self, reason_code: int | None = None) -> None:
        """Close gracefully, with a DISCONNECT carrying ``reason_code`` to a
        connected 5.0 client.  Output still waiting for the store is dropped:
        the client sends its unacknowledged messages again."""
        if self.state == CLOSED:
            return
        final = b""
        if reason_code is not None and self.protocol_level == MQTT5 and self.state == CONNECTED:
            final = encode(Disconnect(reason_code), MQTT5)
        self.state = CLOSED
        self.transport.close_connection(final)

    # -- timers -------------------------------------------------------------------------------

    def start_timer(self, name: str, delay: float, f: Callable[[], None]) -> None:
        """(Re)start the timer ``name``; all timers stop when the connection ends.
        The keep alive timer goes on the clock's shared ``timers.TimerWheel`` (no
        ``DelayedCall`` per idle client; up to ``timers.GRANULARITY`` s late)."""
        self.stop_timer(name)
        if name == "keepalive":
            self.timers[name] = wheel_for(self.clock).call_later(delay, f)
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
            self.log.info("closing {peer}: no {packet} within {timeout} ms", peer=self.peer_str(),
                          packet="CONNECT" if self.state == AWAIT_CONNECT else "AUTH",
                          timeout=self.broker.config.mqtt_connect_timeout)
            self.close()

    def keepalive_check(self) -> None:
        """Close a client silent for 1.5 x its keep alive; otherwise check again later."""
        limit = self.keepalive * 1.5
        idle = self.clock.seconds() - self.last_activity
        if idle >= limit:
            self.timers.pop("keepalive", None)
            self.log.info("closing {peer} (client {client_id!r}): keep alive timeout",
                          peer=self.peer_str(), client_id=self.client_id)
            self.close(reasons.KEEP_ALIVE_TIMEOUT)
            return
        self.timers["keepalive"] = wheel_for(self.clock).call_later(limit - idle,
                                                                    self.keepalive_check)

    def lifetime_expired(self) -> None:
        """max_connection_lifetime reached: disconnect (0xA0 for 5.0)."""
        self.timers.pop("lifetime", None)
        self.log.info("closing {peer} (client {client_id!r}): max_connection_lifetime reached",
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
