"""PINGREQ, DISCONNECT, and packets a client must never send."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmqtw.codec import reasons
from vmqtw.codec.encoder import encode
from vmqtw.codec.packets import MQTT5, Disconnect, Pingresp
from vmqtw.connection.state import CONNECTED, NEVER_EXPIRES

if TYPE_CHECKING:  # pragma: no cover
    from vmqtw.connection.connection import Connection


def handle_pingreq(conn: Connection, packet: Any) -> None:
    """PINGREQ: PINGRESP (the read itself already reset the keep alive)."""
    if conn.state != CONNECTED:
        conn.protocol_violation("PINGREQ before CONNECT")
        return
    conn.write(encode(Pingresp(), conn.protocol_level))
    conn.counters[conn.slots.mqtt_pingresp_sent] += 1  # type: ignore[attr-defined]


def handle_disconnect(conn: Connection, packet: Disconnect) -> None:
    """The client says goodbye: no will (unless a 5.0 client asks for it)."""
    if conn.protocol_level == MQTT5 and conn.state == CONNECTED:
        expiry = packet.properties.get("session_expiry_interval")
        if expiry is not None and not change_session_expiry(conn, expiry):
            return
    if conn.protocol_level < MQTT5 or packet.reason_code != reasons.DISCONNECT_WITH_WILL:
        conn.clean_disconnect = True
        conn.will = None
    conn.closing_because(f"client DISCONNECT (0x{packet.reason_code:02X})"
                         if conn.protocol_level == MQTT5 else "client DISCONNECT")
    conn.close()


def change_session_expiry(conn: Connection, expiry: int) -> bool:
    """A 5.0 DISCONNECT's Session Expiry Interval; False (connection closed with
    0x82, will published) when CONNECT said 0 and this is not 0."""
    if conn.session_expiry == 0 and expiry != 0:
        conn.protocol_violation("session expiry set on DISCONNECT after 0 in CONNECT")
        return False
    session = conn.session
    if session is not None:
        interval = None if expiry == NEVER_EXPIRES else expiry
        cap = conn.broker.config.persistent_client_expiration  # as at CONNECT
        if cap is not None and (interval is None or interval > cap):
            interval = cap
        session.expiry_interval = interval
    return True


def handle_unexpected(conn: Connection, packet: Any) -> None:
    """A packet only a server sends (CONNACK, SUBACK...): a violation."""
    conn.protocol_violation(f"unexpected {type(packet).__name__} from a client")
