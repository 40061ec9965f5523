"""What a ``Connection`` needs from the byte stream under it.

The MQTT rules in this package never touch sockets or Twisted transports: they
talk to one object providing ``IConnectionTransport``.  In the broker that is
``vmqtw.transport.protocol.MQTTProtocol`` (the Twisted adapter, which owns the
output buffer and the direct-socket fast path); in unit tests it is a plain
object that records what it was asked to do.

The transport is also the object the core writes deliveries to (a session's
``conn``): it provides ``vmqtw.core.session.IClientConnection`` too, and the
connection tells it the negotiated ``protocol_level`` and ``out5`` before it
opens a session, so the per-message delivery path reads plain attributes.
"""
from __future__ import annotations

from zope.interface import Attribute

from vmqtw.core.session import IClientConnection


class IConnectionTransport(IClientConnection):
    """The byte stream under one MQTT connection, seen from the MQTT rules."""

    peer = Attribute("The client's (host, port), as the lowest layer that knows it "
                     "(a PROXY header, or the socket) reports it; ('', 0) if unknown")
    out5 = Attribute("The MQTT 5.0 ``Outbound`` encoder of the client's limits, or None; "
                     "set by the connection")

    def write(data: bytes) -> None:
        """Queue ``data`` for the client; sent at the broker's next flush (after
        anything still waiting in ``write_durable``)."""

    def write_durable(data: bytes) -> None:
        """Queue ``data`` to be sent once everything the store has recorded so far
        is durable; later writes wait behind it, so the client sees output in order."""

    def flush() -> None:
        """Send what is queued now (``Broker.flush`` calls it once per input batch)."""

    def close_connection(final: bytes = b"") -> None:
        """Drop output still waiting for the store, send what is buffered and then
        ``final`` (a CONNACK or DISCONNECT, may be empty), and close gracefully;
        abort if the peer does not let us finish within a grace period."""

    def abort_connection() -> None:
        """Close at once, dropping unsent output."""

    def pause_reading() -> None:
        """Stop delivering input (a plugin is deciding about CONNECT)."""

    def resume_reading() -> None:
        """Deliver input again."""

    def client_certificate() -> bytes | None:
        """The client's TLS certificate (DER) if it presented one, else None (for
        ``forward_connection_opts``)."""

    def preauth_username() -> str | None:
        """The identity a lower layer established for this client (TLS certificate
        CN, PSK identity, PROXY TLV, X-Forwarded-For header) when the listener says
        to use it as the username, else None."""
