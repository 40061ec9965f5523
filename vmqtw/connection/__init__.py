"""The MQTT rules of one client connection, without I/O (see ``connection``)."""
from vmqtw.connection.connection import HANDLERS, Connection
from vmqtw.connection.state import (
    AUTHENTICATING, AWAIT_AUTH, AWAIT_CONNECT, CLOSED, CONNECTED, MAX_PACKET, ClientView,
)
from vmqtw.connection.transport import IConnectionTransport

__all__ = [
    "AUTHENTICATING", "AWAIT_AUTH", "AWAIT_CONNECT", "CLOSED", "CONNECTED", "HANDLERS",
    "MAX_PACKET", "ClientView", "Connection", "IConnectionTransport",
]
