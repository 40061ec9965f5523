"""MQTT 5.0 enhanced authentication (AUTH), at CONNECT and re-authentication."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from vmqtw.auth.api import AuthRequest, Error, Ok
from vmqtw.codec import reasons
from vmqtw.codec.encoder import encode
from vmqtw.codec.packets import MQTT5, Auth
from vmqtw.connection import connect
from vmqtw.connection.state import (
    AUTHENTICATING, AWAIT_AUTH, AWAIT_CONNECT, CLOSED, CONNECTED, REAUTH_AWAIT, REAUTH_PENDING,
)

if TYPE_CHECKING:  # pragma: no cover
    from vmqtw.connection.connection import Connection


def handle_auth(conn: Connection, packet: Auth) -> None:
    """The next step of enhanced authentication at CONNECT, or re-authentication
    of a connected client."""
    if conn.auth_method is None:
        conn.protocol_violation("AUTH without an authentication method")
        return
    if packet.properties.get("authentication_method") != conn.auth_method:
        if conn.state == AWAIT_AUTH:
            conn.refuse(reasons.PROTOCOL_ERROR, "AUTH with another authentication method")
        else:
            conn.protocol_violation("AUTH with another authentication method")
        return
    code = packet.reason_code
    data = packet.properties.get("authentication_data")
    if conn.state == AWAIT_AUTH:
        if code != reasons.CONTINUE_AUTHENTICATION:
            conn.refuse(reasons.PROTOCOL_ERROR, f"AUTH reason 0x{code:02x} during CONNECT")
            return
        conn.stop_timer("connect")
        auth_step(conn, data)
    elif conn.state == CONNECTED and (
            (code == reasons.REAUTHENTICATE and conn.reauth == 0) or
            (code == reasons.CONTINUE_AUTHENTICATION and conn.reauth == REAUTH_AWAIT)):
        auth_step(conn, data)
    else:
        conn.protocol_violation(f"unexpected AUTH (reason 0x{code:02x})")


def auth_step(conn: Connection, data: bytes | None) -> None:
    """Ask the on_auth plugins about one step (CONNECT, or re-authentication)."""
    client = conn.client
    assert client is not None and conn.auth_method is not None
    connecting = conn.state != CONNECTED
    if connecting:
        conn.state = AUTHENTICATING
        conn.transport.pause_reading()
    else:
        conn.reauth = REAUTH_PENDING
    request = AuthRequest(conn.peer, client.mountpoint, client.client_id, client.username,
                          conn.auth_method, data, conn.listener_name,
                          reauthenticate=not connecting)
    d = conn.authorizer.on_auth(request)
    d.addCallback(auth_answer, conn, connecting)
    d.addErrback(auth_error, conn, connecting)


def auth_error(failure: Failure, conn: Connection, connecting: bool) -> None:
    """on_auth raised: treat it as a refusal."""
    conn.log.failure("enhanced authentication failed unexpectedly", failure)
    auth_answer(Error("plugin_error"), conn, connecting)


def auth_answer(result: Any, conn: Connection, connecting: bool) -> None:
    """An on_auth answer: refuse, send the next AUTH, or go on to auth_on_register."""
    if conn.state == CLOSED or (connecting and conn.state != AUTHENTICATING):
        return  # the client went away meanwhile
    if connecting and (isinstance(result, Error) or
                       result.modifiers.get("continue_authentication")):
        conn.state = AWAIT_CONNECT
        conn.transport.resume_reading()
    if isinstance(result, Error):
        bad_method = (not conn.authorizer.has_on_auth or result.reason in
                      ("bad_authentication_method", "plugin_chain_exhausted"))
        code = reasons.BAD_AUTHENTICATION_METHOD if bad_method else reasons.NOT_AUTHORIZED
        if connecting:
            conn.refuse(code, f"enhanced authentication: {result.reason}")
        else:
            conn.protocol_violation(f"re-authentication: {result.reason}", code)
        conn.broker.flush()
        return
    assert isinstance(result, Ok)
    mods = result.modifiers
    data = mods.get("authentication_data")
    if data is not None and not isinstance(data, bytes):
        data = str(data).encode("utf-8")
    if mods.get("continue_authentication"):
        props: dict[str, Any] = {"authentication_method": conn.auth_method}
        if data is not None:
            props["authentication_data"] = data
        conn.write(encode(Auth(reasons.CONTINUE_AUTHENTICATION, props), MQTT5))
        conn.count_sent("mqtt_auth_sent", reasons.CONTINUE_AUTHENTICATION)
        if connecting:
            conn.state = AWAIT_AUTH
            conn.start_timer("connect", conn.broker.config.mqtt_connect_timeout / 1000.0,
                             conn.connect_timeout)
            conn.replay_held()
        else:
            conn.reauth = REAUTH_AWAIT
        conn.broker.flush()
        return
    if connecting:  # authenticated: on to auth_on_register (still AUTHENTICATING)
        conn.transport.resume_reading()  # register() pauses again if it must wait
        conn.auth_data = data
        assert conn.auth_connect is not None
        request, packet = conn.auth_connect
        conn.auth_connect = None
        connect.register(conn, request, packet)
        return
    conn.reauth = 0
    props = {"authentication_method": conn.auth_method}
    if data is not None:
        props["authentication_data"] = data
    conn.write(encode(Auth(reasons.SUCCESS, props), MQTT5))
    conn.count_sent("mqtt_auth_sent", reasons.SUCCESS)
    conn.broker.flush()
