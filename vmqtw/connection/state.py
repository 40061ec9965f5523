"""Connection states and the small values the MQTT rules share.

::

    AWAIT_CONNECT --CONNECT--> AUTHENTICATING --ok--> CONNECTED --DISCONNECT/close--> CLOSED
          ^                     |    ^   (held queue: packets read meanwhile wait)
          |   (5.0 AUTH method) v    | AUTH
          +----refused------ AWAIT_AUTH (enhanced authentication: the client's next AUTH)

A connected 5.0 client may re-authenticate: ``Connection.reauth`` goes
``0 -> REAUTH_PENDING -> (REAUTH_AWAIT -> REAUTH_PENDING)* -> 0`` while the
connection stays CONNECTED.
"""
from __future__ import annotations

from vmqtw.core.topics import TopicError, validate_topic_name

AWAIT_CONNECT = 0
AUTHENTICATING = 1  # a plugin is deciding about CONNECT: packets read meanwhile are held
CONNECTED = 2
CLOSED = 3
AWAIT_AUTH = 4      # MQTT 5.0 enhanced authentication: waiting for the client's AUTH

# MQTT 5.0 re-authentication steps (Connection.reauth).
REAUTH_PENDING = 1  # a plugin is deciding
REAUTH_AWAIT = 2    # waiting for the client's next AUTH

MAX_PACKET = 268435455 + 5
NEVER_EXPIRES = 0xFFFFFFFF


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def valid_topic_name(topic: str) -> bool:
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
