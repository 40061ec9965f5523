"""MQTT over a byte stream.

``MQTTProtocol`` is a plain ``Protocol``: it never knows whether TLS, PROXY or
WebSocket layers sit under it.  After CONNECT everything is synchronous:
decode -> authorize -> route -> enqueue -> encode; output is buffered per
connection and written once per input batch by ``Broker.flush``.
"""
from __future__ import annotations

import os
import binascii
from collections import deque
from typing import Any

from twisted.internet import tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from vmqtw.auth.api import AuthRequest, Error, Ok, RegisterRequest
from vmqtw.auth.chain import Authorizer
from vmqtw.auth.hooks import Notifier
from vmqtw.auth.modifiers import REGISTER as REGISTER_MODIFIERS
from vmqtw.auth.modifiers import PUBLISH as PUBLISH_MODIFIERS
from vmqtw.auth.modifiers import ModifierError, check_subscribe
from vmqtw.auth.modifiers import check as check_modifiers
from vmqtw.codec import reasons
from vmqtw.logs import Logger
from vmqtw.codec.decoder import Decoder
from vmqtw.codec.encoder import encode
from vmqtw.codec.errors import CodecError, UnsupportedProtocolVersion
from vmqtw.codec.packets import (
    AUTH, CONNECT, DISCONNECT, MQTT31, MQTT5, PINGREQ, PUBACK, PUBCOMP, PUBLISH, PUBREC,
    PUBREL, SUBSCRIBE, UNSUBSCRIBE, Auth, Connack, Connect, Disconnect, Pingresp, Puback,
    Pubcomp, Publish, Pubrec, Pubrel, Suback, SubOptions, Subscribe, Unsuback, Unsubscribe,
)
from vmqtw.config import ListenerConfig
from vmqtw.core.broker import Broker
from vmqtw.core.message import Message
from vmqtw.core.mqtt5 import Outbound
from vmqtw.core.session import IClientConnection, Session
from vmqtw.core.topics import TopicError, parse_shared, validate_topic_filter, validate_topic_name
from vmqtw.transport.identity import peer_of, preauth_username, transports

# Connection states.
AWAIT_CONNECT = 0
AUTHENTICATING = 1
CONNECTED = 2
CLOSED = 3
AWAIT_AUTH = 4      # MQTT 5.0 enhanced authentication: waiting for the client's AUTH

MAX_PACKET = 268435455 + 5

# MQTT 5.0 re-authentication steps (MQTTProtocol.reauth).
REAUTH_PENDING = 1  # a plugin is deciding
REAUTH_AWAIT = 2    # waiting for the client's next AUTH

NEVER_EXPIRES = 0xFFFFFFFF


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _valid_topic_name(topic: str) -> bool:
    try:
        validate_topic_name(topic, 0xFFFF)
    except TopicError:
        return False
    return True


class ClientView:
    """What auth hooks see of a client before its session exists."""

    __slots__ = ("client_id", "mountpoint", "username", "peer", "listener")

    def __init__(self, client_id: str, mountpoint: str, username: str | None,
                 peer: tuple[str, int], listener: str) -> None:
        self.client_id = client_id
        self.mountpoint = mountpoint
        self.username = username
        self.peer = peer
        self.listener = listener


@implementer(IClientConnection)
class MQTTProtocol(Protocol):
    log = Logger()

    # Enhanced-authentication state: class-level defaults, set on the few
    # instances that use it.  Keeping per-instance attributes (with Twisted's
    # `connected` and `transport`) at or under CPython's 30 shared keys keeps
    # each connection's __dict__ compact (~1.2 KiB less per idle connection).
    auth_data: bytes | None = None                          # for the CONNACK
    reauth = 0                                              # REAUTH_* state
    _auth_connect: tuple[RegisterRequest, Connect] | None = None

    def __init__(self, factory: "MQTTFactory") -> None:
        self.factory = factory
        self.broker = factory.broker
        self.clock = factory.clock
        self.decoder = Decoder(max_packet_size=factory.max_packet_size)
        self.state = AWAIT_CONNECT
        self.protocol_level = 4
        self.paused = False
        self.session: Session | None = None
        self.client: ClientView | None = None
        self.will: Message | None = None
        self.clean_disconnect = False
        self.peer: tuple[str, int] = ("", 0)
        self.last_activity = 0.0
        self.keepalive = 0
        self._out: list[bytes] = []
        self._socket: Any = None  # the TCP/unix connection at the bottom (see flush)
        self._direct = False      # nothing but pass-through wrappers above it
        # Output held until the store is durable (see write_durable): segments
        # [durable() requested, durable, chunks], oldest first.
        # (an empty tuple until first needed: an empty deque costs ~600 bytes)
        self._gates: deque[list[Any]] | tuple[()] = ()
        self._held: list[Any] = []
        self._timers: dict[str, Any] = {}
        self._head = b""  # first bytes of the stream: is a broken CONNECT a 5.0 one?
        # -- MQTT 5.0 (see _connect5) --
        self.out5: Outbound | None = None      # what the client lets us send it
        self.problem_info = True               # reason strings on acknowledgements
        self.session_expiry = 0                # Session Expiry Interval from CONNECT
        self.will_delay = 0
        self.aliases_in: dict[int, str] = {}   # the client's topic aliases
        self.auth_method: str | None = None    # enhanced authentication method
        self._connack5: dict[str, Any] = {}    # assigned client id, server keep alive

    # -- connection lifecycle -------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        self.peer = peer_of(transport)
        try:
            transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        except Exception:  # unix sockets and some wrappers have no Nagle to turn off
            pass
        transport.registerProducer(self, True)  # type: ignore[union-attr]
        layers = list(transports(transport))
        if isinstance(layers[-1], tcp.Connection):
            self._socket = layers[-1]
            # Only pass-through wrappers (the connection limiter) between us
            # and the socket: bytes we send may skip Twisted's buffer.
            self._direct = all(type(layer) is ProtocolWrapper for layer in layers[:-1])
        self.last_activity = self.clock.seconds()
        timeout = self.broker.config.mqtt_connect_timeout / 1000.0
        self._timers["connect"] = self.clock.callLater(timeout, self._connect_timeout)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        previous = self.state
        self.state = CLOSED
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        self._out = []
        self._gates = ()
        session = self.session
        self.session = None
        if session is not None and session.conn is self:
            if self.will is not None and not self.clean_disconnect:
                self._publish_will(session)
            self.broker.connection_closed(session)
            self.broker.flush()
        if previous == CONNECTED:
            self.log.debug("client {client_id!r} from {peer} disconnected",
                           client_id=self.client.client_id if self.client else "",
                           peer=self._peer_str())

    def _publish_will(self, session: Session) -> None:
        will = self.will
        self.will = None
        if will is not None:
            self.broker.will(session, will, self.will_delay)

    # -- IClientConnection ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        gates = self._gates
        if gates:  # behind output that waits for the store: keep the order
            gates[-1][2].append(data)
            return
        if not self._out:
            self.broker.dirty.append(self)
        self._out.append(data)

    def write_durable(self, data: bytes) -> None:
        """Write ``data`` once everything the store has recorded so far is
        durable (a PUBACK/PUBREC for a message recorded for a persistent
        session, ...).  Everything written after it waits too, so the client
        sees output in order.  The store is asked once per input batch (in
        ``flush``), not once per packet."""
        if not self.broker.store.unsynced():
            self.write(data)
            return
        gates = self._gates
        if not gates or gates[-1][0]:  # a new segment: durable() is asked at the next flush
            if gates.__class__ is tuple:
                gates = self._gates = deque()
            gates.append([False, False, []])  # type: ignore[union-attr]
            self.broker.dirty.append(self)
        gates[-1][2].append(data)

    def _gate_durable(self, _: Any, segment: list[Any]) -> None:
        """The store is durable up to ``segment``: release the segments that may go."""
        segment[1] = True
        gates = self._gates
        if not gates or not gates[0][1]:  # closed meanwhile, or an older one still waits
            return
        out = self._out
        while gates and gates[0][1]:
            out.extend(gates.popleft()[2])  # type: ignore[union-attr]
        if not self._flushing:
            self.flush()

    def _gate_failed(self, failure: Failure, segment: list[Any]) -> None:
        """The store could not write: the held acknowledgements are never sent;
        the client will send its messages again."""
        if self.state == CLOSED:
            return
        self._gates = ()
        self.log.error("closing {peer} (client {client_id!r}): {reason}", peer=self._peer_str(),
                       client_id=self.client.client_id if self.client else "",
                       reason=failure.getErrorMessage())
        self.close(reasons.IMPLEMENTATION_SPECIFIC_ERROR)

    _flushing = False

    def flush(self) -> None:
        gates = self._gates
        if gates and not gates[-1][0]:
            self._flushing = True
            try:
                for segment in gates:
                    if not segment[0]:
                        segment[0] = True
                        self.broker.store.durable().addCallbacks(
                            self._gate_durable, self._gate_failed,
                            callbackArgs=(segment,), errbackArgs=(segment,))
            finally:
                self._flushing = False
        out = self._out
        if out:
            self._out = []
            if self.transport is not None and self.state != CLOSED:
                data = out[0] if len(out) == 1 else b"".join(out)
                bottom = self._socket
                if bottom is None or self.paused or bottom.disconnecting:
                    self.transport.write(data)
                    return
                # Send now rather than on the reactor's next turn (Twisted's
                # write() only buffers and arms EPOLLOUT): that round trip and
                # its two epoll_ctl calls were most of a lightly loaded
                # broker's per-message latency.  Not while paused (the
                # transport would resume us from inside doWrite) or closing.
                if self._direct and not bottom._tempDataLen and \
                        bottom.offset == len(bottom.dataBuffer):
                    # Plain TCP with nothing buffered: straight to the socket,
                    # Twisted buffers only what the kernel does not take.
                    try:
                        sent = bottom.socket.send(data)
                    except OSError:  # EAGAIN, or an error doWrite will report
                        sent = 0
                    if sent == len(data):
                        return
                    self.transport.write(data[sent:])
                    return
                self.transport.write(data)
                bottom.doWrite()

    def session_taken_over(self) -> None:
        """Another connection claimed our session: publish the will, close."""
        session = self.session
        self.session = None
        if session is not None and self.will is not None and \
                not self.broker.config.suppress_lwt_on_session_takeover:
            self._publish_will(session)
        self.will = None
        self.log.info("client {client_id!r} from {peer}: session taken over",
                      client_id=session.client_id if session else "", peer=self._peer_str())
        self.close(reasons.SESSION_TAKEN_OVER)

    # -- IPushProducer: the transport tells us when its write buffer is full -----------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        session = self.session
        if session is not None and session.queue:
            session.drain()
            self.broker.flush()

    def stopProducing(self) -> None:
        self.paused = True

    # -- input -----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        self.last_activity = self.clock.seconds()
        if self.state == AWAIT_CONNECT and len(self._head) < 16:
            self._head += data[:16]
        error: CodecError | None = None
        try:
            packets = self.decoder.feed(data)
        except CodecError as e:
            error = e
            packets = getattr(e, "packets", [])
        handlers = self._handlers
        for packet in packets:
            if self.state == AUTHENTICATING:
                self._held.append(packet)
                continue
            if self.state == CLOSED:
                break
            handlers[packet.type](self, packet)
        if error is not None and self.state != CLOSED:
            if self.state == AUTHENTICATING:
                self._held.append(error)
            else:
                self._codec_error(error)
        self.broker.flush()

    def _codec_error(self, error: CodecError) -> None:
        if isinstance(error, UnsupportedProtocolVersion):
            self.log.info("refusing {peer}: {reason}", peer=self._peer_str(), reason=str(error))
            code = reasons.CONNACK_UNACCEPTABLE_PROTOCOL
            level = 4
            if error.protocol_level == MQTT5:
                code, level = reasons.UNSUPPORTED_PROTOCOL_VERSION, MQTT5
            self.write(encode(Connack(code), level))
            self.close()
            return
        if self.state == AWAIT_CONNECT and self._connect_level() == MQTT5 and \
                MQTT5 in self.factory.listener.allowed_protocol_versions:
            # A broken 5.0 CONNECT: say why in the CONNACK before closing.
            self.protocol_level = MQTT5
            self._refuse(error.reason_code, str(error))
            return
        self.protocol_violation(str(error), error.reason_code)

    def _connect_level(self) -> int | None:
        """The protocol level of the CONNECT at the start of the stream, if readable."""
        head = self._head
        if len(head) < 2 or head[0] != 0x10:
            return None
        i = 1
        while i < 5 and i < len(head) and head[i] & 0x80:
            i += 1
        name = head[i + 1:i + 7]
        if name != b"\x00\x04MQTT" or len(head) <= i + 7:
            return None
        return head[i + 7]

    def protocol_violation(self, why: str, reason_code: int = reasons.PROTOCOL_ERROR) -> None:
        """Close this connection (and only this one) for breaking the protocol."""
        self.log.info("closing {peer} (client {client_id!r}): {reason}",
                      peer=self._peer_str(), reason=why,
                      client_id=self.client.client_id if self.client else "")
        self.close(reason_code)

    def close(self, reason_code: int | None = None) -> None:
        """Send a DISCONNECT (5.0, after CONNACK) and close gracefully."""
        if self.state == CLOSED:
            return
        # Output still waiting for the store is dropped: the client sends its
        # unacknowledged messages again (the service lets the store catch up
        # before it closes connections at shutdown).
        self._gates = ()
        if reason_code is not None and self.protocol_level == MQTT5 and self.state == CONNECTED:
            self.write(encode(Disconnect(reason_code), MQTT5))
        self.flush()
        self.state = CLOSED
        transport = self.transport
        if transport is None:
            return
        try:
            transport.unregisterProducer()  # type: ignore[union-attr]
        except Exception:
            pass
        # A peer that stops reading must not keep the socket forever.  Scheduled
        # before loseConnection() (which may call connectionLost() at once) so
        # connectionLost() cancels it with the other timers.
        self._timers["abort"] = self.clock.callLater(5, self._abort_if_open, transport)
        transport.loseConnection()

    @staticmethod
    def _abort_if_open(transport: Any) -> None:
        if getattr(transport, "connected", False):
            transport.abortConnection()

    def _peer_str(self) -> str:
        host, port = self.peer
        return f"{host}:{port}" if host else "?"

    # -- timers ------------------------------------------------------------------------------

    def _connect_timeout(self) -> None:
        self._timers.pop("connect", None)
        if self.state == AWAIT_CONNECT or self.state == AWAIT_AUTH:
            self.log.info("closing {peer}: no {packet} within {timeout} ms", peer=self._peer_str(),
                          packet="CONNECT" if self.state == AWAIT_CONNECT else "AUTH",
                          timeout=self.broker.config.mqtt_connect_timeout)
            self.close()

    def _keepalive_check(self) -> None:
        limit = self.keepalive * 1.5
        idle = self.clock.seconds() - self.last_activity
        if idle >= limit:
            self._timers.pop("keepalive", None)
            self.log.info("closing {peer} (client {client_id!r}): keep alive timeout",
                          peer=self._peer_str(),
                          client_id=self.client.client_id if self.client else "")
            self.close(reasons.KEEP_ALIVE_TIMEOUT)
            return
        self._timers["keepalive"] = self.clock.callLater(limit - idle, self._keepalive_check)

    def _lifetime_expired(self) -> None:
        self._timers.pop("lifetime", None)
        self.log.info("closing {peer} (client {client_id!r}): max_connection_lifetime reached",
                      peer=self._peer_str(),
                      client_id=self.client.client_id if self.client else "")
        self.close(reasons.MAXIMUM_CONNECT_TIME)

    # -- CONNECT -------------------------------------------------------------------------------

    def _refuse(self, reason_v5: int, why: str) -> None:
        self.log.info("refusing CONNECT from {peer} (client {client_id!r}): {reason}",
                      peer=self._peer_str(), reason=why,
                      client_id=self.client.client_id if self.client else "")
        code = reasons.connack_code(reason_v5, self.protocol_level)
        self.write(encode(Connack(code), self.protocol_level))
        self.close()

    def handle_connect(self, packet: Connect) -> None:
        if self.state != AWAIT_CONNECT:
            self.protocol_violation("second CONNECT")
            return
        call = self._timers.pop("connect", None)
        if call is not None and call.active():
            call.cancel()
        level = packet.protocol_level
        self.protocol_level = level
        listener = self.factory.listener
        if level not in listener.allowed_protocol_versions:
            # Answer as a server that does not speak this version: the 3.x
            # CONNACK 0x01, also to a 5.0 client (which reads it as 0x84).
            self.protocol_level = 4
            self._refuse(reasons.UNSUPPORTED_PROTOCOL_VERSION,
                         f"protocol level {level} not allowed on this listener")
            return
        preauth = preauth_username(self.transport, listener)
        if preauth is not None:  # TLS/PSK/PROXY/XFF identity; auth still runs
            packet.username = preauth
        config = self.broker.config
        client_id = packet.client_id
        mountpoint = listener.mountpoint
        self.client = ClientView(client_id, mountpoint, packet.username, self.peer,
                                 self.factory.listener_name)
        if not client_id:
            if level == MQTT31 or (not packet.clean_start and level < MQTT5):
                self._refuse(reasons.CLIENT_IDENTIFIER_NOT_VALID,
                             "empty client id needs MQTT 3.1.1 and clean session")
                return
            client_id = "vmqtw-" + binascii.hexlify(os.urandom(10)).decode()
            self.client.client_id = client_id
            if level == MQTT5:
                self._connack5["assigned_client_identifier"] = client_id
        elif len(client_id.encode("utf-8")) > config.max_client_id_size:
            self._refuse(reasons.CLIENT_IDENTIFIER_NOT_VALID, "client id too long")
            return
        will = packet.will
        if will is not None:
            try:
                validate_topic_name(will.topic, config.topic_max_depth)
            except TopicError as e:
                self._refuse(reasons.TOPIC_NAME_INVALID, f"invalid will topic: {e}")
                return
            self.will = Message(will.topic, will.payload, will.qos, will.retain, will.properties)
        self.keepalive = packet.keepalive
        if level == MQTT5 and not self._connect5(packet):
            return
        self.state = AUTHENTICATING
        request = RegisterRequest(
            peer=self.peer, mountpoint=mountpoint, client_id=client_id,
            username=packet.username, password=packet.password,
            clean_start=packet.clean_start, protocol_level=level,
            properties=packet.properties, listener=self.factory.listener_name,
            listener_address=str(listener.address), listener_kind=listener.kind)
        if self.auth_method is not None:
            self._auth_connect = (request, packet)
            self._auth_step(packet.properties.get("authentication_data"))
            return
        self._register(request, packet)

    def _register(self, request: RegisterRequest, packet: Connect) -> None:
        listener = self.factory.listener
        d = self.factory.authorizer.register(request, listener.allow_anonymous_override)
        if not d.called:
            # A plugin answers later: stop reading until it does (packets
            # already read are held).  Synchronous answers skip the two
            # epoll updates this costs.
            self.transport.pauseProducing()  # type: ignore[union-attr]
            d.addBoth(self._resume_reading)
        d.addCallback(self._registered, packet)
        d.addErrback(self._register_failed)

    def _connect5(self, packet: Connect) -> bool:
        """Take in a 5.0 CONNECT's properties (and its will's); False after
        refusing a CONNECT that breaks a rule."""
        props = packet.properties
        config = self.broker.config
        self.problem_info = props.get("request_problem_information", 1) == 1
        self.session_expiry = props.get("session_expiry_interval", 0)
        method = props.get("authentication_method")
        if method is None and "authentication_data" in props:
            self._refuse(reasons.PROTOCOL_ERROR, "authentication data without a method")
            return False
        self.auth_method = method
        self.out5 = Outbound(
            receive_maximum=min(props.get("receive_maximum", 65535), config.receive_max_client),
            maximum_packet_size=props.get("maximum_packet_size", 0),
            alias_max=min(props.get("topic_alias_maximum", 0), config.topic_alias_max_client))
        cap = config.max_keep_alive
        if cap and (packet.keepalive == 0 or packet.keepalive > cap):
            self.keepalive = cap
            self._connack5["server_keep_alive"] = cap
        will = packet.will
        if will is not None:
            wprops = will.properties
            if wprops.get("payload_format_indicator") == 1 and not _is_utf8(will.payload):
                self._refuse(reasons.PAYLOAD_FORMAT_INVALID, "will payload is not UTF-8")
                return False
            response_topic = wprops.get("response_topic")
            if response_topic is not None and not _valid_topic_name(response_topic):
                self._refuse(reasons.PROTOCOL_ERROR, "invalid will response topic")
                return False
            delay = wprops.get("will_delay_interval", 0)
            if config.max_last_will_delay is not None:
                delay = min(delay, config.max_last_will_delay)
            self.will_delay = delay
        return True

    def _connack_properties(self, session: Session) -> dict[str, Any]:
        """The CONNACK properties of a successful 5.0 CONNECT: the broker's limits."""
        config = self.broker.config
        props: dict[str, Any] = {}
        if "assigned_client_identifier" in self._connack5:
            props["assigned_client_identifier"] = session.client_id
        if "server_keep_alive" in self._connack5:
            props["server_keep_alive"] = self._connack5["server_keep_alive"]
        props["receive_maximum"] = config.receive_max_broker
        if config.topic_alias_max_broker:
            props["topic_alias_maximum"] = config.topic_alias_max_broker
        if self.decoder.max_packet_size < MAX_PACKET:
            props["maximum_packet_size"] = self.decoder.max_packet_size
        props["retain_available"] = 1
        props["wildcard_subscription_available"] = 1
        props["subscription_identifier_available"] = 1
        props["shared_subscription_available"] = 1
        if self.auth_method is not None:
            props["authentication_method"] = self.auth_method
            if self.auth_data is not None:
                props["authentication_data"] = self.auth_data
        return props

    # -- MQTT 5.0 enhanced authentication ------------------------------------------------

    def _auth_step(self, data: bytes | None) -> None:
        """Ask the on_auth plugins about one step (CONNECT, or re-authentication)."""
        client = self.client
        assert client is not None and self.auth_method is not None
        connecting = self.state != CONNECTED
        if connecting:
            self.state = AUTHENTICATING
            self.transport.pauseProducing()  # type: ignore[union-attr]
        else:
            self.reauth = REAUTH_PENDING
        request = AuthRequest(self.peer, client.mountpoint, client.client_id, client.username,
                              self.auth_method, data, self.factory.listener_name,
                              reauthenticate=not connecting)
        d = self.factory.authorizer.on_auth(request)
        d.addCallback(self._auth_answer, connecting)
        d.addErrback(self._auth_error, connecting)

    def _auth_error(self, failure: Failure, connecting: bool) -> None:
        self.log.failure("enhanced authentication failed unexpectedly", failure)
        self._auth_answer(Error("plugin_error"), connecting)

    def _auth_answer(self, result: Any, connecting: bool) -> None:
        if self.state == CLOSED or (connecting and self.state != AUTHENTICATING):
            return  # the client went away meanwhile
        if connecting and (isinstance(result, Error) or
                           result.modifiers.get("continue_authentication")):
            self.state = AWAIT_CONNECT
            if self.transport is not None:
                self.transport.resumeProducing()  # type: ignore[union-attr]
        if isinstance(result, Error):
            bad_method = (not self.factory.authorizer.has_on_auth or result.reason in
                          ("bad_authentication_method", "plugin_chain_exhausted"))
            code = reasons.BAD_AUTHENTICATION_METHOD if bad_method else reasons.NOT_AUTHORIZED
            if connecting:
                self._refuse(code, f"enhanced authentication: {result.reason}")
            else:
                self.protocol_violation(f"re-authentication: {result.reason}", code)
            self.broker.flush()
            return
        assert isinstance(result, Ok)
        mods = result.modifiers
        data = mods.get("authentication_data")
        if data is not None and not isinstance(data, bytes):
            data = str(data).encode("utf-8")
        if mods.get("continue_authentication"):
            props: dict[str, Any] = {"authentication_method": self.auth_method}
            if data is not None:
                props["authentication_data"] = data
            self.write(encode(Auth(reasons.CONTINUE_AUTHENTICATION, props), MQTT5))
            if connecting:
                self.state = AWAIT_AUTH
                self._timers["connect"] = self.clock.callLater(
                    self.broker.config.mqtt_connect_timeout / 1000.0, self._connect_timeout)
                self._replay_held()
            else:
                self.reauth = REAUTH_AWAIT
            self.broker.flush()
            return
        if connecting:  # authenticated: on to auth_on_register (still AUTHENTICATING)
            self._resume_reading(None)  # _register pauses again if it must wait
            self.auth_data = data
            assert self._auth_connect is not None
            request, packet = self._auth_connect
            self._auth_connect = None
            self._register(request, packet)
            return
        self.reauth = 0
        props = {"authentication_method": self.auth_method}
        if data is not None:
            props["authentication_data"] = data
        self.write(encode(Auth(reasons.SUCCESS, props), MQTT5))
        self.broker.flush()

    def _replay_held(self) -> None:
        """Handle the packets that arrived while a plugin was deciding."""
        held, self._held = self._held, []
        handlers = self._handlers
        for item in held:
            if self.state == CLOSED:
                break
            if self.state == AUTHENTICATING:
                self._held.append(item)
                continue
            if isinstance(item, CodecError):
                self._codec_error(item)
            else:
                handlers[item.type](self, item)

    def _resume_reading(self, result: Any) -> Any:
        if self.state != CLOSED and self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[union-attr]
        return result

    def _register_failed(self, failure: Failure) -> None:
        self.log.failure("authentication failed unexpectedly", failure)
        if self.state == AUTHENTICATING:
            self.state = AWAIT_CONNECT
            self._refuse(reasons.SERVER_UNAVAILABLE, "authentication error")
            self.broker.flush()

    def _registered(self, result: Any, packet: Connect) -> None:
        if self.state != AUTHENTICATING:  # the client went away meanwhile
            return
        self.state = AWAIT_CONNECT
        if isinstance(result, Error):
            code = (reasons.BAD_USER_NAME_OR_PASSWORD if result.reason == "invalid_credentials"
                    else reasons.NOT_AUTHORIZED)
            self._refuse(code, f"authentication: {result.reason}")
            self.broker.flush()
            return
        assert isinstance(result, Ok)
        client = self.client
        assert client is not None
        overrides: dict[str, Any] = {}
        if result.modifiers:
            try:
                overrides = self._apply_register_modifiers(result.modifiers, packet, client)
            except ModifierError as e:
                self.log.error("client {client_id!r}: {reason}", client_id=client.client_id,
                               reason=str(e))
                self._refuse(reasons.NOT_AUTHORIZED, "invalid modifiers from auth_on_register")
                self.broker.flush()
                return
        will = self.will
        if will is not None:
            verdict = self._authorize_publish(client, will.topic, will.payload, will.qos,
                                              will.retain, will.properties)
            if isinstance(verdict, Error):
                self._refuse(reasons.NOT_AUTHORIZED, "will message not authorized")
                self.broker.flush()
                return
        self._connected(packet, client)
        if overrides:
            self._apply_session_overrides(overrides)
        self.factory.notifier.on_register(self.session)
        held, self._held = self._held, []
        handlers = self._handlers
        for item in held:
            if self.state == CLOSED:
                break
            if isinstance(item, CodecError):
                self._codec_error(item)
            else:
                handlers[item.type](self, item)
        self.broker.flush()

    def _apply_register_modifiers(self, modifiers: dict[str, Any], packet: Connect,
                                  client: ClientView) -> dict[str, Any]:
        """Apply identity modifiers; return the session limits to set after registering."""
        mods = check_modifiers(REGISTER_MODIFIERS, modifiers, "auth_on_register")
        if "max_message_size" in mods:  # before CONNACK, which announces it (5.0)
            self.decoder.max_packet_size = mods.pop("max_message_size") or MAX_PACKET
        client.mountpoint = mods.pop("mountpoint", client.mountpoint)
        client.client_id = mods.pop("client_id", client.client_id)
        if "username" in mods:
            client.username = mods.pop("username")
        clean = mods.pop("clean_start", mods.pop("clean_session", None))
        if clean is not None:
            packet.clean_start = clean
        return mods

    def _apply_session_overrides(self, mods: dict[str, Any]) -> None:
        session = self.session
        assert session is not None
        for name, attr in (("max_inflight_messages", "max_inflight"),
                           ("max_online_messages", "max_online"),
                           ("max_offline_messages", "max_offline"),
                           ("retry_interval", "retry_interval"),
                           ("upgrade_qos", "upgrade_qos")):
            if name in mods:
                setattr(session, attr, mods[name])
        if "max_connection_lifetime" in mods:
            call = self._timers.pop("lifetime", None)
            if call is not None and call.active():
                call.cancel()
            if mods["max_connection_lifetime"]:
                self._timers["lifetime"] = self.clock.callLater(mods["max_connection_lifetime"],
                                                                self._lifetime_expired)
        session.drain()

    def _connected(self, packet: Connect, client: ClientView) -> None:
        config = self.broker.config
        key = (client.mountpoint, client.client_id)
        expiry: float | None
        if self.protocol_level == MQTT5:
            # Session Expiry Interval: 0 = ends with the connection, 0xFFFFFFFF = never.
            expiry = None if self.session_expiry == NEVER_EXPIRES else self.session_expiry
        elif packet.clean_start:
            expiry = 0
        else:
            expiry = config.persistent_client_expiration
        session, present = self.broker.open_session(key, packet.clean_start, expiry, self)
        session.username = client.username
        session.peer = self.peer
        session.listener = client.listener
        self.session = session
        self.state = CONNECTED
        if self.protocol_level == MQTT5:
            self.write(encode(Connack(0, present, self._connack_properties(session)), MQTT5))
        else:
            self.write(encode(Connack(0, present), self.protocol_level))
        self.log.debug("client {client_id!r} connected from {peer} (session present: {present})",
                       client_id=client.client_id, peer=self._peer_str(), present=present)
        self.broker.session_resumed(session)
        if self.keepalive:
            self._timers["keepalive"] = self.clock.callLater(self.keepalive * 1.5,
                                                             self._keepalive_check)
        lifetime = self.factory.listener.max_connection_lifetime
        if lifetime:
            self._timers["lifetime"] = self.clock.callLater(lifetime, self._lifetime_expired)

    # -- PUBLISH and acknowledgements ------------------------------------------------------

    def handle_publish(self, packet: Publish) -> None:
        session = self.session
        if self.state != CONNECTED or session is None:
            self.protocol_violation("PUBLISH before CONNECT")
            return
        level = self.protocol_level
        if level == MQTT5:
            topic = self._inbound_topic5(packet, session)
            if topic is None:
                return
        else:
            topic = packet.topic
        try:
            validate_topic_name(topic, self.broker.config.topic_max_depth)
        except TopicError as e:
            self.protocol_violation(f"invalid topic {topic!r}: {e}", reasons.TOPIC_NAME_INVALID)
            return
        qos = packet.qos
        if qos == 2 and packet.packet_id in session.incoming_qos2:
            self.write(encode(Pubrec(packet.packet_id), level))
            return
        if level == MQTT5:
            result = self._inbound_message5(packet, topic, session)
            if result is None:
                return
            message, verdict = result
        else:
            verdict = self.factory.authorizer.publish(session, topic, packet.payload, qos,
                                                      packet.retain)
            if verdict.__class__ is Error:
                self._unauthorized_publish(packet, verdict)  # type: ignore[arg-type]
                return
            message = Message(topic, packet.payload, qos, packet.retain)
        mountpoint = session.mountpoint
        if verdict.__class__ is Ok and verdict.modifiers:  # type: ignore[union-attr]
            modified = self._modified_message(verdict.modifiers, message)  # type: ignore[union-attr]
            if modified is None:
                self._unauthorized_publish(packet, Error("invalid_modifiers"))
                return
            message, mountpoint = modified[0], modified[1] or mountpoint
        count = self.broker.publish(message, mountpoint, session)
        notifier = self.factory.notifier
        if notifier.publish:
            notifier.on_publish(session, message.topic, message.payload, message.qos,
                                message.retain)
        if qos:
            # MQTT 5.0: 0x10 "no matching subscribers" (still a success).
            code = reasons.NO_MATCHING_SUBSCRIBERS if level == MQTT5 and not count else 0
            # Held until the store has what this message left there (if anything).
            if qos == 1:
                self.write_durable(encode(Puback(packet.packet_id, code), level))  # type: ignore[arg-type]
            else:
                session.qos2_received(packet.packet_id)  # type: ignore[arg-type]
                self.write_durable(encode(Pubrec(packet.packet_id, code), level))  # type: ignore[arg-type]

    # -- MQTT 5.0 PUBLISH rules, one helper per step ---------------------------------------

    def _inbound_topic5(self, packet: Publish, session: Session) -> str | None:
        """The topic of a 5.0 PUBLISH (resolving a topic alias) after the checks
        that end the connection; None when it was closed."""
        props = packet.properties
        topic = packet.topic
        if "subscription_identifier" in props:
            self.protocol_violation("PUBLISH from a client with a subscription identifier")
            return None
        alias = props.get("topic_alias")
        if alias is not None:
            if alias > self.broker.config.topic_alias_max_broker:
                self.protocol_violation(f"topic alias {alias} above the maximum",
                                        reasons.TOPIC_ALIAS_INVALID)
                return None
            if topic:
                self.aliases_in[alias] = topic
            else:
                found = self.aliases_in.get(alias)
                if found is None:
                    self.protocol_violation(f"unknown topic alias {alias}")
                    return None
                topic = found
        elif not topic:
            self.protocol_violation("empty topic name without a topic alias")
            return None
        if packet.qos and packet.packet_id not in session.incoming_qos2 and \
                len(session.incoming_qos2) >= self.broker.config.receive_max_broker:
            self.protocol_violation("receive maximum exceeded", reasons.RECEIVE_MAXIMUM_EXCEEDED)
            return None
        response_topic = props.get("response_topic")
        if response_topic is not None and not _valid_topic_name(response_topic):
            self.protocol_violation(f"invalid response topic {response_topic!r}")
            return None
        return topic

    def _inbound_message5(self, packet: Publish, topic: str,
                          session: Session) -> tuple[Message, Any] | None:
        """Check the payload format and authorize; the Message to route and the
        authorization verdict, or None when the PUBLISH was refused
        (acknowledged with a reason, or closed)."""
        props = packet.properties
        if props.get("payload_format_indicator") == 1 and not _is_utf8(packet.payload):
            if packet.qos:
                self._refuse_publish5(packet, reasons.PAYLOAD_FORMAT_INVALID,
                                      "payload is not valid UTF-8")
            else:
                self.protocol_violation("payload is not valid UTF-8",
                                        reasons.PAYLOAD_FORMAT_INVALID)
            return None
        if "topic_alias" in props:  # per hop: never forwarded
            props = {k: v for k, v in props.items() if k != "topic_alias"}
        verdict = self.factory.authorizer.publish_m5(session, topic, packet.payload, packet.qos,
                                                     packet.retain, props)
        if verdict.__class__ is Error:
            self._unauthorized_publish(packet, verdict)  # type: ignore[arg-type]
            return None
        message = Message(topic, packet.payload, packet.qos, packet.retain, props)
        if "message_expiry_interval" in props:
            message.start_expiry(self.broker.clock.seconds())
        return message, verdict

    def _modified_message(self, modifiers: dict[str, Any],
                          message: Message) -> tuple[Message, str | None] | None:
        """Apply auth_on_publish modifiers (topic, payload, qos, retain,
        mountpoint); None when a modifier is invalid (logged)."""
        try:
            mods = check_modifiers(PUBLISH_MODIFIERS, modifiers, "auth_on_publish")
        except ModifierError as e:
            self.log.error("client {client_id!r}: {reason}",
                           client_id=self.client.client_id if self.client else "",
                           reason=str(e))
            return None
        if "properties" in mods:  # a new message expiry interval starts now
            new = Message(mods.get("topic", message.topic),
                          mods.get("payload", message.payload), mods.get("qos", message.qos),
                          mods.get("retain", message.retain), mods["properties"])
            new.start_expiry(self.broker.clock.seconds())
        else:
            new = Message(mods.get("topic", message.topic),
                          mods.get("payload", message.payload), mods.get("qos", message.qos),
                          mods.get("retain", message.retain), message.properties,
                          expires_at=message.expires_at)
        return new, mods.get("mountpoint")

    def _refuse_publish5(self, packet: Publish, code: int, why: str) -> None:
        """PUBACK/PUBREC with an error reason (and a reason string if the client wants them)."""
        props = {"reason_string": why} if self.problem_info else {}
        ack = Puback if packet.qos == 1 else Pubrec
        self.write(encode(ack(packet.packet_id, code, props), MQTT5))  # type: ignore[arg-type]

    def _authorize_publish(self, client: Any, topic: str, payload: bytes, qos: int,
                           retain: bool, properties: dict[str, Any]) -> Any:
        authorizer = self.factory.authorizer
        if self.protocol_level == MQTT5:
            return authorizer.publish_m5(client, topic, payload, qos, retain, properties)
        return authorizer.publish(client, topic, payload, qos, retain)

    def _unauthorized_publish(self, packet: Publish, verdict: Error) -> None:
        level = self.protocol_level
        config = self.broker.config
        self.log.info("client {client_id!r}: publish to {topic!r} not authorized ({reason})",
                      client_id=self.client.client_id if self.client else "",
                      topic=packet.topic, reason=verdict.reason)
        if level == MQTT5:
            if packet.qos:
                self._refuse_publish5(packet, reasons.NOT_AUTHORIZED, "not authorized")
            return
        if level == MQTT31 and not config.disconnect_on_unauthorized_publish_v3:
            if packet.qos == 1:
                self.write(encode(Puback(packet.packet_id), level))
            elif packet.qos == 2:
                self.write(encode(Pubrec(packet.packet_id), level))
            return
        self.close()

    def handle_puback(self, packet: Puback) -> None:
        if self.session is None:
            self.protocol_violation("PUBACK before CONNECT")
            return
        self.session.puback(packet.packet_id)

    def handle_pubrec(self, packet: Pubrec) -> None:
        session = self.session
        if session is None:
            self.protocol_violation("PUBREC before CONNECT")
            return
        if self.protocol_level == MQTT5 and packet.reason_code >= 0x80:
            session.pubrec(packet.packet_id, failed=True)  # the QoS 2 flow ends here
        elif session.pubrec(packet.packet_id):
            # Not before the store knows the PUBREC came (exactly once after a restart).
            self.write_durable(encode(Pubrel(packet.packet_id), self.protocol_level))
        elif self.protocol_level == MQTT5:
            self.write(encode(Pubrel(packet.packet_id, reasons.PACKET_IDENTIFIER_NOT_FOUND),
                              MQTT5))

    def handle_pubrel(self, packet: Pubrel) -> None:
        session = self.session
        if session is None:
            self.protocol_violation("PUBREL before CONNECT")
            return
        pid = packet.packet_id
        if session.qos2_released(pid):
            # Not before the store forgot the id: after a restart it would
            # swallow the client's next message that reuses it.
            self.write_durable(encode(Pubcomp(pid), self.protocol_level))
        elif self.protocol_level == MQTT5:
            self.write(encode(Pubcomp(pid, reasons.PACKET_IDENTIFIER_NOT_FOUND), MQTT5))
        else:
            self.write(encode(Pubcomp(pid), self.protocol_level))

    def handle_pubcomp(self, packet: Pubcomp) -> None:
        if self.session is None:
            self.protocol_violation("PUBCOMP before CONNECT")
            return
        self.session.pubcomp(packet.packet_id)

    # -- SUBSCRIBE / UNSUBSCRIBE ---------------------------------------------------------------

    def handle_subscribe(self, packet: Subscribe) -> None:
        session = self.session
        if self.state != CONNECTED or session is None:
            self.protocol_violation("SUBSCRIBE before CONNECT")
            return
        config = self.broker.config
        level = self.protocol_level
        failure = reasons.SUBACK_FAILURE
        codes: list[int] = []
        wanted: list[tuple[str, int]] = []
        wanted_at: list[int] = []  # index in packet.topics of each wanted entry
        for topic_filter, options in packet.topics:
            try:
                group, inner = parse_shared(topic_filter)
                if group is not None and options.no_local:
                    self.protocol_violation(f"no local on shared subscription {topic_filter!r}")
                    return
                validate_topic_filter(inner, config.topic_max_depth)
            except TopicError as e:
                if level == MQTT31:  # 3.1 has no failure return code
                    self.protocol_violation(f"invalid topic filter {topic_filter!r}: {e}")
                    return
                self.log.info("client {client_id!r}: invalid topic filter {filter!r}: {reason}",
                              client_id=session.client_id, filter=topic_filter, reason=str(e))
                codes.append(reasons.TOPIC_FILTER_INVALID if level == MQTT5 else failure)
                continue
            wanted_at.append(len(codes))
            codes.append(options.qos)
            wanted.append((topic_filter, options.qos))
        rewritten: dict[int, tuple[str, int]] = {}
        if wanted:
            if level == MQTT5:
                verdict = self.factory.authorizer.subscribe_m5(session, wanted, packet.properties)
            else:
                verdict = self.factory.authorizer.subscribe(session, wanted)
            if verdict.__class__ is Error:
                self.log.info("client {client_id!r}: subscribe to {filters} not authorized",
                              client_id=session.client_id, filters=[f for f, _ in wanted])
                denied = reasons.NOT_AUTHORIZED if level == MQTT5 else failure
                codes = [c if c >= 0x80 else denied for c in codes]
            elif verdict.__class__ is Ok and verdict.modifiers:  # type: ignore[union-attr]
                self._rewrite_subscriptions(verdict.modifiers, wanted, wanted_at,  # type: ignore[union-attr]
                                            codes, rewritten)
        limit = config.max_subscriptions_per_client
        accepted = []
        for i, (topic_filter, options) in enumerate(packet.topics):
            if codes[i] >= 0x80:
                continue
            if i in rewritten:
                topic_filter, qos = rewritten[i]
                options = SubOptions(qos, options.no_local, options.retain_as_published,
                                     options.retain_handling)
            if limit and topic_filter not in session.subscriptions and \
                    len(session.subscriptions) + len(accepted) >= limit:
                codes[i] = reasons.QUOTA_EXCEEDED if level == MQTT5 else failure
                continue
            accepted.append((topic_filter, options))
        self.write(encode(Suback(packet.packet_id, codes), level))
        sub_id = packet.properties.get("subscription_identifier")  # MQTT 5.0: [n] or absent
        for topic_filter, options in accepted:
            if sub_id:
                session.sub_ids[topic_filter] = sub_id[0]
            elif session.sub_ids:
                session.sub_ids.pop(topic_filter, None)
            self.broker.subscribe(session, topic_filter, options)
        notifier = self.factory.notifier
        if notifier.subscribe and accepted:
            notifier.on_subscribe(session, [(f, o.qos) for f, o in accepted])

    def _rewrite_subscriptions(self, modifiers: dict[str, Any], wanted: list[tuple[str, int]],
                               wanted_at: list[int], codes: list[int],
                               rewritten: dict[int, tuple[str, int]]) -> None:
        """auth_on_subscribe's ok(topics=[(filter, qos), ...]): one entry per
        requested filter; a QoS of 128 denies that entry.  Invalid modifiers
        deny the whole SUBSCRIBE (the plugin's error, logged)."""
        denied = reasons.NOT_AUTHORIZED if self.protocol_level == MQTT5 else \
            reasons.SUBACK_FAILURE
        try:
            entries = check_subscribe(modifiers, wanted)
        except ModifierError as e:
            self.log.error("client {client_id!r}: {reason}",
                           client_id=self.client.client_id if self.client else "",
                           reason=str(e))
            for i in wanted_at:
                codes[i] = denied
            return
        for i, (topic_filter, qos) in zip(wanted_at, entries):
            if qos >= 0x80:
                codes[i] = denied
            else:
                codes[i] = qos
                rewritten[i] = (topic_filter, qos)

    def handle_unsubscribe(self, packet: Unsubscribe) -> None:
        session = self.session
        if self.state != CONNECTED or session is None:
            self.protocol_violation("UNSUBSCRIBE before CONNECT")
            return
        topics = packet.topics
        notifier = self.factory.notifier
        if notifier.unsubscribe:
            topics = notifier.on_unsubscribe(session, topics)
        codes = []
        for topic_filter in topics:
            found = self.broker.unsubscribe(session, topic_filter)
            codes.append(reasons.SUCCESS if found else reasons.NO_SUBSCRIPTION_EXISTED)
        if len(codes) != len(packet.topics):  # a plugin rewrote the list
            codes = [reasons.SUCCESS] * len(packet.topics)
        self.write(encode(Unsuback(packet.packet_id, codes), self.protocol_level))

    # -- PINGREQ / DISCONNECT / AUTH ----------------------------------------------------------

    def handle_pingreq(self, packet: Any) -> None:
        if self.state != CONNECTED:
            self.protocol_violation("PINGREQ before CONNECT")
            return
        self.write(encode(Pingresp(), self.protocol_level))

    def handle_disconnect(self, packet: Disconnect) -> None:
        if self.protocol_level == MQTT5 and self.state == CONNECTED:
            expiry = packet.properties.get("session_expiry_interval")
            if expiry is not None and not self._change_session_expiry(expiry):
                return
        if self.protocol_level < MQTT5 or packet.reason_code != reasons.DISCONNECT_WITH_WILL:
            self.clean_disconnect = True
            self.will = None
        self.close()

    def _change_session_expiry(self, expiry: int) -> bool:
        """A 5.0 DISCONNECT's Session Expiry Interval; False (connection closed with
        0x82, will published) when CONNECT said 0 and this is not 0."""
        if self.session_expiry == 0 and expiry != 0:
            self.protocol_violation("session expiry set on DISCONNECT after 0 in CONNECT")
            return False
        session = self.session
        if session is not None:
            session.expiry_interval = None if expiry == NEVER_EXPIRES else expiry
        return True

    def handle_auth(self, packet: Auth) -> None:
        """MQTT 5.0 AUTH: the next step of enhanced authentication at CONNECT, or
        re-authentication of a connected client."""
        if self.auth_method is None:
            self.protocol_violation("AUTH without an authentication method")
            return
        if packet.properties.get("authentication_method") != self.auth_method:
            if self.state == AWAIT_AUTH:
                self._refuse(reasons.PROTOCOL_ERROR, "AUTH with another authentication method")
            else:
                self.protocol_violation("AUTH with another authentication method")
            return
        code = packet.reason_code
        data = packet.properties.get("authentication_data")
        if self.state == AWAIT_AUTH:
            if code != reasons.CONTINUE_AUTHENTICATION:
                self._refuse(reasons.PROTOCOL_ERROR, f"AUTH reason 0x{code:02x} during CONNECT")
                return
            call = self._timers.pop("connect", None)
            if call is not None and call.active():
                call.cancel()
            self._auth_step(data)
        elif self.state == CONNECTED and (
                (code == reasons.REAUTHENTICATE and self.reauth == 0) or
                (code == reasons.CONTINUE_AUTHENTICATION and self.reauth == REAUTH_AWAIT)):
            self._auth_step(data)
        else:
            self.protocol_violation(f"unexpected AUTH (reason 0x{code:02x})")

    def handle_unexpected(self, packet: Any) -> None:
        self.protocol_violation(f"unexpected {type(packet).__name__} from a client")

    _handlers: dict[int, Any] = {}


MQTTProtocol._handlers = {t: MQTTProtocol.handle_unexpected for t in range(16)}
MQTTProtocol._handlers.update({
    CONNECT: MQTTProtocol.handle_connect,
    PUBLISH: MQTTProtocol.handle_publish,
    PUBACK: MQTTProtocol.handle_puback,
    PUBREC: MQTTProtocol.handle_pubrec,
    PUBREL: MQTTProtocol.handle_pubrel,
    PUBCOMP: MQTTProtocol.handle_pubcomp,
    SUBSCRIBE: MQTTProtocol.handle_subscribe,
    UNSUBSCRIBE: MQTTProtocol.handle_unsubscribe,
    PINGREQ: MQTTProtocol.handle_pingreq,
    DISCONNECT: MQTTProtocol.handle_disconnect,
    AUTH: MQTTProtocol.handle_auth,
})


class MQTTFactory(Factory):
    """Builds MQTT protocols for one listener."""

    noisy = False  # the listener service logs the listener once, with its settings

    def __init__(self, broker: Broker, authorizer: Authorizer, listener: ListenerConfig,
                 clock: Any, notifier: Notifier | None = None) -> None:
        self.broker = broker
        self.authorizer = authorizer
        self.notifier = notifier if notifier is not None else Notifier([])
        self.listener = listener
        self.listener_name = f"{listener.kind}.{listener.name}"
        self.clock = clock
        size = broker.config.max_message_size
        self.max_packet_size = size if size > 0 else MAX_PACKET

    def buildProtocol(self, addr: Any) -> MQTTProtocol:
        return MQTTProtocol(self)
