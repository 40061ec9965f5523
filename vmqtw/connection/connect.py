"""CONNECT: checks, authentication (auth_on_register), the CONNACK and the session."""
from __future__ import annotations

import binascii
import os
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from vmqtw.auth.api import OK, Error, Ok, RegisterRequest
from vmqtw.auth.chain import CHAIN_EXHAUSTED, Authorizer
from vmqtw.auth.modifiers import REGISTER as REGISTER_MODIFIERS
from vmqtw.auth.modifiers import ModifierError
from vmqtw.auth.modifiers import check as check_modifiers
from vmqtw.codec import reasons
from vmqtw.codec.encoder import encode
from vmqtw.codec.packets import BRIDGE, MQTT5, MQTT31, Connack, Connect
from vmqtw.config.schema import REGISTRY as LISTENER_OPTIONS
from vmqtw.connection import auth as enhanced_auth
from vmqtw.connection import reauth
from vmqtw.connection.state import (
    AUTHENTICATING, AWAIT_CONNECT, CLOSED, CONNECTED, MAX_PACKET, NEVER_EXPIRES, ClientView,
    is_utf8, valid_topic_name,
)
from vmqtw.core.message import Message
from vmqtw.core.mqtt5 import Outbound
from vmqtw.core.topics import TopicError, validate_topic_name

if TYPE_CHECKING:  # pragma: no cover
    from vmqtw.connection.connection import Connection


def handle_connect(conn: Connection, packet: Connect) -> None:
    """CONNECT: check it, then authenticate (enhanced auth first when it names a method)."""
    if conn.state != AWAIT_CONNECT:
        conn.protocol_violation("second CONNECT")
        return
    conn.stop_timer("connect")
    level = packet.protocol_level
    conn.protocol_level = level
    listener = conn.listener
    if level not in listener.allowed_protocol_versions:
        # Answer as a server that does not speak this version: the 3.x
        # CONNACK 0x01, also to a 5.0 client (which reads it as 0x84).
        conn.protocol_level = 4
        conn.client = ClientView(packet.client_id, listener.mountpoint, packet.username,
                                 conn.peer, conn.listener_name)  # for the log line
        allowed = ",".join(str(v) for v in sorted(listener.allowed_protocol_versions))
        conn.refuse(reasons.UNSUPPORTED_PROTOCOL_VERSION,
                    f"protocol level {level} not allowed on this listener (allowed: "
                    f"{allowed}; to change: {listener.key}.allowed_protocol_versions)")
        return
    if level & BRIDGE:  # 131/132: a bridge speaking 3.1/3.1.1 (see the decoder)
        level &= ~BRIDGE
        conn.protocol_level = level
    preauth = conn.transport.preauth_username()
    if preauth is not None:  # TLS/PSK/PROXY/XFF identity; auth still runs
        packet.username = preauth
    config = conn.broker.config
    client_id = packet.client_id
    mountpoint = listener.mountpoint
    conn.client = ClientView(client_id, mountpoint, packet.username, conn.peer,
                             conn.listener_name)
    if not client_id:
        if level == MQTT31 or (not packet.clean_start and level < MQTT5):
            conn.refuse(reasons.CLIENT_IDENTIFIER_NOT_VALID,
                        "empty client id needs MQTT 3.1.1 and clean session")
            return
        client_id = "vmqtw-" + binascii.hexlify(os.urandom(10)).decode()
        conn.client.client_id = client_id
        if level == MQTT5:
            conn.connack5["assigned_client_identifier"] = client_id
    elif len(client_id.encode("utf-8")) > config.max_client_id_size:
        conn.refuse(reasons.CLIENT_IDENTIFIER_NOT_VALID, "client id too long")
        return
    will = packet.will
    if will is not None:
        try:
            validate_topic_name(will.topic, config.topic_max_depth)
        except TopicError as e:
            conn.refuse(reasons.TOPIC_NAME_INVALID, f"invalid will topic: {e}")
            return
        conn.will = Message(will.topic, will.payload, will.qos, will.retain, will.properties)
    conn.keepalive = packet.keepalive
    if level == MQTT5 and not connect5(conn, packet):
        return
    conn.state = AUTHENTICATING
    if conn.auth_method is None and type(conn.authorizer) is Authorizer and \
            nothing_to_verify(conn, packet.username, preauth):
        # The common anonymous CONNECT: accepted without a request, a chain
        # run or a Deferred (a plain Authorizer answers OK at once; one behind
        # a wrapper, e.g. the cluster's netsplit gate, is still asked).
        try:
            registered(OK, conn, packet)
        except Exception:
            register_failed(Failure(), conn)
        return
    request = RegisterRequest(
        peer=conn.peer, mountpoint=mountpoint, client_id=client_id,
        username=packet.username, password=packet.password,
        clean_start=packet.clean_start, protocol_level=level,
        properties=packet.properties, listener=conn.listener_name,
        listener_address=str(listener.address), listener_kind=listener.kind)
    forward = listener.options.get("forward_connection_opts")
    if forward is not None and LISTENER_OPTIONS["forward_connection_opts"].check(forward):
        # VerneMQ's auth_on_register/6 Opts: the listener (always in our
        # request) and the client certificate.
        request.client_cert = conn.transport.client_certificate()
    if conn.auth_method is not None:
        conn.auth_connect = (request, packet)
        enhanced_auth.auth_step(conn, packet.properties.get("authentication_data"))
        return
    register(conn, request, packet)


def connect5(conn: Connection, packet: Connect) -> bool:
    """Take in a 5.0 CONNECT's properties (and its will's); False after
    refusing a CONNECT that breaks a rule."""
    props = packet.properties
    config = conn.broker.config
    conn.problem_info = props.get("request_problem_information", 1) == 1
    conn.session_expiry = props.get("session_expiry_interval", 0)
    method = props.get("authentication_method")
    if method is None and "authentication_data" in props:
        conn.refuse(reasons.PROTOCOL_ERROR, "authentication data without a method")
        return False
    conn.auth_method = method
    conn.transport.out5 = Outbound(
        receive_maximum=min(props.get("receive_maximum", 65535), config.receive_max_client),
        maximum_packet_size=props.get("maximum_packet_size", 0),
        # VerneMQ: topic_alias_max_broker caps the aliases the broker sends.
        alias_max=min(props.get("topic_alias_maximum", 0), config.topic_alias_max_broker))
    cap = config.max_keep_alive
    if cap and (packet.keepalive == 0 or packet.keepalive > cap):
        conn.keepalive = cap
        conn.connack5["server_keep_alive"] = cap
    will = packet.will
    if will is not None:
        wprops = will.properties
        if wprops.get("payload_format_indicator") == 1 and not is_utf8(will.payload):
            conn.refuse(reasons.PAYLOAD_FORMAT_INVALID, "will payload is not UTF-8")
            return False
        response_topic = wprops.get("response_topic")
        if response_topic is not None and not valid_topic_name(response_topic):
            conn.refuse(reasons.PROTOCOL_ERROR, "invalid will response topic")
            return False
        delay = wprops.get("will_delay_interval", 0)
        if config.max_last_will_delay is not None:
            delay = min(delay, config.max_last_will_delay)
        conn.will_delay = delay
    return True


def register(conn: Connection, request: RegisterRequest, packet: Connect) -> None:
    """Ask the auth_on_register chain; a late answer pauses reading meanwhile.

    With anonymous access allowed (``allow_anonymous``, or the listener's
    ``allow_anonymous_override``) a CONNECT without a user name is accepted
    without asking; one WITH a user name is still verified (as mosquitto
    does), see ``anonymous_verdict``."""
    authorizer = conn.authorizer
    anonymous = authorizer.allow_anonymous or conn.listener.allow_anonymous_override
    if anonymous and nothing_to_verify(conn, request.username,
                                       conn.transport.preauth_username()):
        d = authorizer.register(request, True)
    elif anonymous:
        d = authorizer.verify(request)
        d.addCallback(anonymous_verdict, conn, request, packet)
    else:
        d = authorizer.register(request, False)
    if not d.called:
        # A plugin answers later: stop reading until it does (packets
        # already read are held).  Synchronous answers skip the two
        # epoll updates this costs.
        conn.transport.pause_reading()
        d.addBoth(resume_reading, conn)
    d.addCallback(registered, conn, packet)
    d.addErrback(register_failed, conn)


def nothing_to_verify(conn: Connection, username: str | None, preauth: str | None) -> bool:
    """Whether a CONNECT is accepted without asking the register chain:
    anonymous access is allowed (``allow_anonymous``, or the listener's
    ``allow_anonymous_override``) and there is nothing to verify: no user
    name, no plugin that could verify one, or the name comes from the
    transport (certificate, PSK identity)."""
    authorizer = conn.authorizer
    return (authorizer.allow_anonymous or conn.listener.allow_anonymous_override) and \
        (username is None or not authorizer.has_register or preauth is not None)


def anonymous_verdict(result: Any, conn: Connection, request: RegisterRequest,
                      packet: Connect) -> Any:
    """The register chain's answer for a user name claimed where anonymous
    access is allowed: a plugin's OK or refusal (a wrong password: CONNACK 4 /
    0x86) stands; a name no plugin knows is dropped, and the client is
    connected as anonymous, so it gets none of that user's ACL rights."""
    if isinstance(result, Error) and result.reason == CHAIN_EXHAUSTED:
        conn.log.info("client {client_id!r} from {peer}: user name {username!r} is not known "
                      "to any authentication plugin; connected as anonymous",
                      client_id=request.client_id, peer=conn.peer_str(),
                      username=request.username)
        packet.username = None
        if conn.client is not None:
            conn.client.username = None
        return OK
    return result


def resume_reading(result: Any, conn: Connection) -> Any:
    """Read again once the plugin answered (unless the connection ended meanwhile)."""
    if conn.state != CLOSED:
        conn.transport.resume_reading()
    return result


def register_failed(failure: Failure, conn: Connection) -> None:
    """auth_on_register raised: refuse with "server unavailable"."""
    conn.log.failure("authentication failed unexpectedly", failure)
    if conn.state == AUTHENTICATING:
        conn.state = AWAIT_CONNECT
        conn.refuse(reasons.SERVER_UNAVAILABLE, "authentication error")
        conn.broker.flush()


def registered(result: Any, conn: Connection, packet: Connect) -> None:
    """auth_on_register answered: refuse, or open the session and replay held packets."""
    if conn.state != AUTHENTICATING:  # the client went away meanwhile
        return
    conn.state = AWAIT_CONNECT
    if isinstance(result, Error):
        # A wrong password and a user name no plugin knows get the same answer,
        # so that user names cannot be enumerated.
        code = (reasons.BAD_USER_NAME_OR_PASSWORD if result.reason == "invalid_credentials"
                or (result.reason == CHAIN_EXHAUSTED and packet.username is not None)
                else reasons.SERVER_UNAVAILABLE if result.reason == "netsplit"  # cluster
                else reasons.NOT_AUTHORIZED)
        conn.refuse(code, f"authentication: {result.reason}")
        conn.broker.flush()
        return
    assert isinstance(result, Ok)
    client = conn.client
    assert client is not None
    overrides: dict[str, Any] = {}
    if result.modifiers:
        try:
            overrides = apply_register_modifiers(conn, result.modifiers, packet, client)
        except ModifierError as e:
            conn.log.error("client {client_id!r}: {reason}", client_id=client.client_id,
                           reason=str(e))
            conn.refuse(reasons.NOT_AUTHORIZED, "invalid modifiers from auth_on_register")
            conn.broker.flush()
            return
    will = conn.will
    verdict: Any = None
    if will is not None:
        # A plugin may answer later (a webhook): held like a PUBLISH's verdict.
        if conn.protocol_level == MQTT5:
            verdict = conn.authorizer.publish_m5(client, will.topic, will.payload, will.qos,
                                                 will.retain, will.properties, deferrable=True)
        else:
            verdict = conn.authorizer.publish(client, will.topic, will.payload, will.qos,
                                              will.retain, deferrable=True)
        if type(verdict) is Deferred:
            conn.await_verdict(verdict, 0, will_authorized, packet, client, overrides)
            return
    will_authorized(conn, verdict, packet, client, overrides)


def will_authorized(conn: Connection, verdict: Any, packet: Connect, client: ClientView,
                    overrides: dict[str, Any]) -> None:
    """The will's verdict (None without a will): refuse, or accept the CONNECT."""
    if isinstance(verdict, Error):
        conn.refuse(reasons.NOT_AUTHORIZED, "will message not authorized")
        conn.broker.flush()
        return
    connected(conn, packet, client)
    if overrides:
        apply_session_overrides(conn, overrides)
    conn.notifier.on_register(conn.session)
    conn.replay_held()
    conn.decode_rest()
    conn.broker.flush()


def apply_register_modifiers(conn: Connection, modifiers: dict[str, Any], packet: Connect,
                             client: ClientView) -> dict[str, Any]:
    """Apply identity modifiers; return the session limits to set after registering."""
    mods = check_modifiers(REGISTER_MODIFIERS, modifiers, "auth_on_register")
    if "max_message_size" in mods:  # before CONNACK, which announces it (5.0)
        conn.decoder.max_packet_size = mods.pop("max_message_size") or MAX_PACKET
    client.mountpoint = mods.pop("mountpoint", client.mountpoint)
    client.client_id = mods.pop("client_id", client.client_id)
    if "username" in mods:
        client.username = mods.pop("username")
    clean = mods.pop("clean_start", mods.pop("clean_session", None))
    if clean is not None:
        packet.clean_start = clean
    return mods


def apply_session_overrides(conn: Connection, mods: dict[str, Any]) -> None:
    """auth_on_register's session limits (inflight, queues, lifetime...)."""
    session = conn.session
    assert session is not None
    for name, attr in (("max_inflight_messages", "max_inflight"),
                       ("max_online_messages", "max_online"),
                       ("max_offline_messages", "max_offline"),
                       ("retry_interval", "retry_interval"),
                       ("upgrade_qos", "upgrade_qos")):
        if name in mods:
            setattr(session, attr, mods[name])
    if "max_message_rate" in mods:  # PUBLISHes per second, 0 = no limit
        conn.max_message_rate = mods["max_message_rate"]
    if "max_connection_lifetime" in mods:
        conn.stop_timer("lifetime")
        if mods["max_connection_lifetime"]:
            conn.start_timer("lifetime", mods["max_connection_lifetime"], conn.lifetime_expired)
    session.drain()


def connected(conn: Connection, packet: Connect, client: ClientView) -> None:
    """Open (or resume) the session, send CONNACK and start the connection's timers."""
    config = conn.broker.config
    key = (client.mountpoint, client.client_id)
    level = conn.protocol_level
    expiry: float | None
    if level == MQTT5:
        # Session Expiry Interval: 0 = ends with the connection, 0xFFFFFFFF = never.
        expiry = None if conn.session_expiry == NEVER_EXPIRES else conn.session_expiry
        cap = config.persistent_client_expiration  # None: never
        if cap is not None and (expiry is None or expiry > cap):
            # Capped as VerneMQ expires persistent sessions; the CONNACK says so
            # (MQTT-3.2.2.3.2: the client must use the server's value).
            expiry = cap
            conn.connack5["session_expiry_interval"] = cap
    elif packet.clean_start:
        expiry = 0
    else:
        expiry = config.persistent_client_expiration
    transport = conn.transport
    transport.protocol_level = level  # what the core encodes deliveries with
    session, present = conn.broker.open_session(key, packet.clean_start, expiry, transport)
    owner = (session.username, session.listener)
    session.username = client.username
    session.peer = conn.peer
    session.listener = client.listener
    if present and owner != (client.username, client.listener):
        # Another user (or listener) resumes this session: what the previous
        # owner was allowed is authorized again before anything is delivered.
        reauth.reauthorize(conn.broker, conn.authorizer, session, "session resumed by "
                           f"user {client.username!r} on {client.listener}")
    conn.session = session
    conn.state = CONNECTED
    conn.decoder.authenticated()
    if level == MQTT5:
        conn.write(encode(Connack(0, present, connack_properties(conn, session)), MQTT5))
    else:
        conn.write(encode(Connack(0, present), level))
    conn.count_connack(0, level)
    conn.log_connect(present, packet.clean_start)
    conn.broker.session_resumed(session)
    if conn.keepalive:
        conn.start_timer("keepalive", conn.keepalive * 1.5, conn.keepalive_check)
    lifetime = conn.listener.max_connection_lifetime
    if lifetime:
        conn.start_timer("lifetime", lifetime, conn.lifetime_expired)


def connack_properties(conn: Connection, session: Any) -> dict[str, Any]:
    """The CONNACK properties of a successful 5.0 CONNECT: the broker's limits."""
    config = conn.broker.config
    props: dict[str, Any] = {}
    if "assigned_client_identifier" in conn.connack5:
        props["assigned_client_identifier"] = session.client_id
    if "server_keep_alive" in conn.connack5:
        props["server_keep_alive"] = conn.connack5["server_keep_alive"]
    if "session_expiry_interval" in conn.connack5:
        props["session_expiry_interval"] = conn.connack5["session_expiry_interval"]
    props["receive_maximum"] = config.receive_max_broker
    if config.topic_alias_max_client:  # VerneMQ: the aliases a client may send us
        props["topic_alias_maximum"] = config.topic_alias_max_client
    if conn.decoder.max_packet_size < MAX_PACKET:
        props["maximum_packet_size"] = conn.decoder.max_packet_size
    props["retain_available"] = 1
    props["wildcard_subscription_available"] = 1
    props["subscription_identifier_available"] = 1
    props["shared_subscription_available"] = 1
    if conn.auth_method is not None:
        props["authentication_method"] = conn.auth_method
        if conn.auth_data is not None:
            props["authentication_data"] = conn.auth_data
    return props
