"""MQTT over a byte stream.

``MQTTProtocol`` is a plain ``Protocol``: it never knows whether TLS, PROXY or
WebSocket layers sit under it.  After CONNECT everything is synchronous:
decode -> authorize -> route -> enqueue -> encode; output is buffered per
connection and written once per input batch by ``Broker.flush``.
"""
from __future__ import annotations

import os
import binascii
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vmqtw.auth.api import Error, Ok, RegisterRequest
from vmqtw.auth.chain import Authorizer
from vmqtw.auth.hooks import Notifier
from vmqtw.auth.modifiers import REGISTER as REGISTER_MODIFIERS
from vmqtw.auth.modifiers import ModifierError
from vmqtw.auth.modifiers import check as check_modifiers
from vmqtw.codec import reasons
from vmqtw.codec.decoder import Decoder
from vmqtw.codec.encoder import encode
from vmqtw.codec.errors import CodecError, UnsupportedProtocolVersion
from vmqtw.codec.packets import (
    AUTH, CONNECT, DISCONNECT, MQTT31, MQTT5, PINGREQ, PUBACK, PUBCOMP, PUBLISH, PUBREC,
    PUBREL, SUBSCRIBE, UNSUBSCRIBE, Connack, Connect, Disconnect, Pingresp, Puback, Pubcomp,
    Publish, Pubrec, Pubrel, Suback, Subscribe, Unsuback, Unsubscribe,
)
from vmqtw.config import ListenerConfig
from vmqtw.core.broker import Broker
from vmqtw.core.message import Message
from vmqtw.core.session import IClientConnection, Session
from vmqtw.core.topics import TopicError, parse_shared, validate_topic_filter, validate_topic_name
from vmqtw.transport.identity import peer_of

# Connection states.
AWAIT_CONNECT = 0
AUTHENTICATING = 1
CONNECTED = 2
CLOSED = 3

MAX_PACKET = 268435455 + 5


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
        self._held: list[Any] = []
        self._timers: dict[str, Any] = {}

    # -- connection lifecycle -------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        self.peer = peer_of(transport)
        try:
            transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        except Exception:  # unix sockets and some wrappers have no Nagle to turn off
            pass
        transport.registerProducer(self, True)  # type: ignore[union-attr]
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
            self.broker.publish(will, session.mountpoint, session)

    # -- IClientConnection ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self._out:
            self.broker.dirty.append(self)
        self._out.append(data)

    def flush(self) -> None:
        out = self._out
        if out:
            self._out = []
            if self.transport is not None and self.state != CLOSED:
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))

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
        self.protocol_violation(str(error), error.reason_code)

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
        if self.state == AWAIT_CONNECT:
            self.log.info("closing {peer}: no CONNECT within {timeout} ms", peer=self._peer_str(),
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
        self.state = AUTHENTICATING
        self.transport.pauseProducing()  # type: ignore[union-attr]
        request = RegisterRequest(
            peer=self.peer, mountpoint=mountpoint, client_id=client_id,
            username=packet.username, password=packet.password,
            clean_start=packet.clean_start, protocol_level=level,
            properties=packet.properties, listener=self.factory.listener_name,
            listener_address=str(listener.address), listener_kind=listener.kind)
        d = self.factory.authorizer.register(request, listener.allow_anonymous_override)
        d.addCallback(self._registered, packet)
        d.addErrback(self._register_failed)

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
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[union-attr]
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
            verdict = self.factory.authorizer.publish(client, will.topic, will.payload,
                                                      will.qos, will.retain)
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

    @staticmethod
    def _apply_register_modifiers(modifiers: dict[str, Any], packet: Connect,
                                  client: ClientView) -> dict[str, Any]:
        """Apply identity modifiers; return the session limits to set after registering."""
        mods = check_modifiers(REGISTER_MODIFIERS, modifiers, "auth_on_register")
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
        if "max_message_size" in mods:
            self.decoder.max_packet_size = mods["max_message_size"] or MAX_PACKET
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
        if packet.clean_start:
            expiry: float | None = 0
        else:
            expiry = config.persistent_client_expiration
        session, present = self.broker.open_session(key, packet.clean_start, expiry, self)
        session.username = client.username
        session.peer = self.peer
        session.listener = client.listener
        self.session = session
        self.state = CONNECTED
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
        topic = packet.topic
        try:
            validate_topic_name(topic, self.broker.config.topic_max_depth)
        except TopicError as e:
            self.protocol_violation(f"invalid topic {topic!r}: {e}", reasons.TOPIC_NAME_INVALID)
            return
        qos = packet.qos
        if qos == 2 and packet.packet_id in session.incoming_qos2:
            self.write(encode(Pubrec(packet.packet_id), self.protocol_level))
            return
        verdict = self.factory.authorizer.publish(session, topic, packet.payload, qos,
                                                  packet.retain)
        if verdict.__class__ is Error:
            self._unauthorized_publish(packet, verdict)  # type: ignore[arg-type]
            return
        self.broker.publish(Message(topic, packet.payload, qos, packet.retain, packet.properties),
                            session.mountpoint, session)
        if qos == 1:
            self.write(encode(Puback(packet.packet_id), self.protocol_level))
        elif qos == 2:
            session.incoming_qos2.add(packet.packet_id)  # type: ignore[arg-type]
            self.write(encode(Pubrec(packet.packet_id), self.protocol_level))

    def _unauthorized_publish(self, packet: Publish, verdict: Error) -> None:
        level = self.protocol_level
        config = self.broker.config
        self.log.info("client {client_id!r}: publish to {topic!r} not authorized ({reason})",
                      client_id=self.client.client_id if self.client else "",
                      topic=packet.topic, reason=verdict.reason)
        if level == MQTT5:
            if packet.qos == 1:
                self.write(encode(Puback(packet.packet_id, reasons.NOT_AUTHORIZED), level))
            elif packet.qos == 2:
                self.write(encode(Pubrec(packet.packet_id, reasons.NOT_AUTHORIZED), level))
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
        if session.pubrec(packet.packet_id):
            self.write(encode(Pubrel(packet.packet_id), self.protocol_level))
        elif self.protocol_level == MQTT5:
            self.write(encode(Pubrel(packet.packet_id, reasons.PACKET_IDENTIFIER_NOT_FOUND),
                              MQTT5))

    def handle_pubrel(self, packet: Pubrel) -> None:
        session = self.session
        if session is None:
            self.protocol_violation("PUBREL before CONNECT")
            return
        pid = packet.packet_id
        if pid in session.incoming_qos2:
            session.incoming_qos2.discard(pid)
            self.write(encode(Pubcomp(pid), self.protocol_level))
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
        for topic_filter, options in packet.topics:
            try:
                group, inner = parse_shared(topic_filter)
                validate_topic_filter(inner, config.topic_max_depth)
            except TopicError as e:
                if level == MQTT31:  # 3.1 has no failure return code
                    self.protocol_violation(f"invalid topic filter {topic_filter!r}: {e}")
                    return
                self.log.info("client {client_id!r}: invalid topic filter {filter!r}: {reason}",
                              client_id=session.client_id, filter=topic_filter, reason=str(e))
                codes.append(reasons.TOPIC_FILTER_INVALID if level == MQTT5 else failure)
                continue
            codes.append(options.qos)
            wanted.append((topic_filter, options.qos))
        if wanted:
            verdict = self.factory.authorizer.subscribe(session, wanted)
            if verdict.__class__ is Error:
                self.log.info("client {client_id!r}: subscribe to {filters} not authorized",
                              client_id=session.client_id, filters=[f for f, _ in wanted])
                denied = reasons.NOT_AUTHORIZED if level == MQTT5 else failure
                codes = [c if c >= 0x80 else denied for c in codes]
        limit = config.max_subscriptions_per_client
        accepted = []
        for i, (topic_filter, options) in enumerate(packet.topics):
            if codes[i] >= 0x80:
                continue
            if limit and topic_filter not in session.subscriptions and \
                    len(session.subscriptions) + len(accepted) >= limit:
                codes[i] = reasons.QUOTA_EXCEEDED if level == MQTT5 else failure
                continue
            accepted.append((topic_filter, options))
        self.write(encode(Suback(packet.packet_id, codes), level))
        for topic_filter, options in accepted:
            self.broker.subscribe(session, topic_filter, options)

    def handle_unsubscribe(self, packet: Unsubscribe) -> None:
        session = self.session
        if self.state != CONNECTED or session is None:
            self.protocol_violation("UNSUBSCRIBE before CONNECT")
            return
        codes = []
        for topic_filter in packet.topics:
            found = self.broker.unsubscribe(session, topic_filter)
            codes.append(reasons.SUCCESS if found else reasons.NO_SUBSCRIPTION_EXISTED)
        self.write(encode(Unsuback(packet.packet_id, codes), self.protocol_level))

    # -- PINGREQ / DISCONNECT / AUTH ----------------------------------------------------------

    def handle_pingreq(self, packet: Any) -> None:
        if self.state != CONNECTED:
            self.protocol_violation("PINGREQ before CONNECT")
            return
        self.write(encode(Pingresp(), self.protocol_level))

    def handle_disconnect(self, packet: Disconnect) -> None:
        if self.protocol_level < MQTT5 or packet.reason_code != reasons.DISCONNECT_WITH_WILL:
            self.clean_disconnect = True
            self.will = None
        self.close()

    def handle_auth(self, packet: Any) -> None:
        self.protocol_violation("AUTH without an authentication method")

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
