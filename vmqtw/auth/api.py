"""The authentication/authorization plugin API.

A plugin is any object that provides one or more of the hook interfaces
below (declare it with ``@implementer``).  Every hook returns an explicit
result: ``OK`` / ``ok(**modifiers)`` grants, ``NEXT`` passes to the next
plugin in the chain, ``error(reason)`` rejects.  ``True``, ``False`` and
``None`` are not results: a plugin that returns them is treated as failing.
"""
from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface


class Result:
    __slots__ = ()


class Ok(Result):
    """Grant, optionally with modifiers (a dict, e.g. ``{"topic": "new/topic"}``)."""

    __slots__ = ("modifiers",)

    def __init__(self, modifiers: dict[str, Any] | None = None) -> None:
        self.modifiers = modifiers or {}

    def __repr__(self) -> str:
        return f"Ok({self.modifiers!r})" if self.modifiers else "OK"


class Next(Result):
    """No opinion: ask the next plugin."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEXT"


class Error(Result):
    """Reject.  ``reason`` is a short word: ``invalid_credentials`` maps to
    CONNACK 0x04 / 0x86 (bad user name or password); anything else to 0x05 / 0x87."""

    __slots__ = ("reason",)

    def __init__(self, reason: str = "not_authorized") -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Error({self.reason!r})"


OK = Ok()
NEXT = Next()


def ok(**modifiers: Any) -> Ok:
    return Ok(modifiers)


def error(reason: str = "not_authorized") -> Error:
    return Error(reason)


class IClient(Interface):
    """What hooks see of a connected client (a read-only view)."""

    client_id = Attribute("client identifier (str)")
    mountpoint = Attribute("mountpoint of the client's listener ('' for none)")
    username = Attribute("user name after any rewriting, or None")
    peer = Attribute("(host, port) of the client")
    listener = Attribute("name of the listener, e.g. 'tcp.default'")


class RegisterRequest:
    """Arguments of auth_on_register: everything known about a CONNECT."""

    __slots__ = ("peer", "mountpoint", "client_id", "username", "password", "clean_start",
                 "protocol_level", "properties", "listener", "listener_address",
                 "listener_kind", "client_cert")

    def __init__(self, peer: tuple[str, int], mountpoint: str, client_id: str,
                 username: str | None, password: bytes | None, clean_start: bool,
                 protocol_level: int, properties: dict[str, Any] | None = None,
                 listener: str = "", listener_address: str = "", listener_kind: str = "tcp",
                 client_cert: bytes | None = None) -> None:
        self.peer = peer
        self.mountpoint = mountpoint
        self.client_id = client_id
        self.username = username
        self.password = password
        self.clean_start = clean_start
        self.protocol_level = protocol_level
        self.properties = properties or {}
        self.listener = listener
        self.listener_address = listener_address
        self.listener_kind = listener_kind
        self.client_cert = client_cert

    def __repr__(self) -> str:  # never shows the password
        return (f"RegisterRequest(peer={self.peer!r}, mountpoint={self.mountpoint!r}, "
                f"client_id={self.client_id!r}, username={self.username!r})")


class AuthRequest:
    """Arguments of on_auth (MQTT 5.0 enhanced authentication): one AUTH step."""

    __slots__ = ("peer", "mountpoint", "client_id", "username", "method", "data",
                 "listener", "reauthenticate")

    def __init__(self, peer: tuple[str, int], mountpoint: str, client_id: str,
                 username: str | None, method: str, data: bytes | None,
                 listener: str = "", reauthenticate: bool = False) -> None:
        self.peer = peer
        self.mountpoint = mountpoint
        self.client_id = client_id
        self.username = username
        self.method = method
        self.data = data
        self.listener = listener
        self.reauthenticate = reauthenticate

    def __repr__(self) -> str:
        return (f"AuthRequest(client_id={self.client_id!r}, method={self.method!r}, "
                f"data={len(self.data or b'')} bytes)")


# -- conditional hooks (a chain: first non-NEXT answer wins) --------------------------

class IAuthOnRegister(Interface):
    def auth_on_register(request: RegisterRequest) -> Any:
        """Decide a CONNECT: a Result, or a Deferred firing with one.

        ``ok(**modifiers)`` may change the session: ``mountpoint``,
        ``client_id``, ``username``, ``clean_session``, ``max_message_size``,
        ``max_inflight_messages``, ``max_online_messages``,
        ``max_offline_messages``, ``max_connection_lifetime``,
        ``retry_interval``, ``upgrade_qos``.  MQTT 5.0 clients' CONNECT
        properties are in ``request.properties``."""


class IAuthOnPublish(Interface):
    def auth_on_publish(client: IClient, topic: str, payload: bytes, qos: int,
                        retain: bool) -> Result:
        """Decide a PUBLISH (also the will message at CONNECT).

        ``ok(topic=..., payload=..., qos=..., retain=..., mountpoint=...)``
        rewrites the message.  Answer synchronously where you can (prefetch at
        CONNECT): a Deferred is accepted by the chain (``Authorizer.publish(...,
        deferrable=True)``), but callers that cannot wait refuse it (fail closed)."""


class IAuthOnPublishM5(Interface):
    def auth_on_publish_m5(client: IClient, topic: str, payload: bytes, qos: int,
                           retain: bool, properties: dict[str, Any]) -> Result:
        """As auth_on_publish, for MQTT 5.0 clients, with the PUBLISH properties.
        A plugin providing this is asked instead of auth_on_publish for 5.0 clients;
        ``ok(properties=...)`` may also replace the properties."""


class IAuthOnSubscribe(Interface):
    def auth_on_subscribe(client: IClient, topics: list[tuple[str, int]]) -> Result:
        """Decide a SUBSCRIBE.  ``ok(topics=[(filter, qos_or_128), ...])`` rewrites
        or denies single entries (a QoS of 128 denies that entry).  A Deferred
        answer is treated as for auth_on_publish."""


class IAuthOnSubscribeM5(Interface):
    def auth_on_subscribe_m5(client: IClient, topics: list[tuple[str, int]],
                             properties: dict[str, Any]) -> Result:
        """As auth_on_subscribe, for MQTT 5.0 clients, with the SUBSCRIBE properties."""


class IOnAuth(Interface):
    def on_auth(request: AuthRequest) -> Any:
        """One step of MQTT 5.0 enhanced authentication (a Result or a Deferred).

        ``ok()`` ends it successfully; ``ok(continue_authentication=True,
        authentication_data=b"...")`` sends an AUTH packet (reason 0x18) with
        that data and waits for the client's next AUTH; ``error(reason)``
        refuses (CONNACK 0x87, or 0x8C for ``bad_authentication_method``)."""


class IOnUnsubscribe(Interface):
    def on_unsubscribe(client: IClient, topics: list[str]) -> Result:
        """``ok(topics=[...])`` replaces the filters to unsubscribe; NEXT/OK keep them."""


class IOnDeliver(Interface):
    def on_deliver(client: IClient, topic: str, payload: bytes, qos: int,
                   retain: bool) -> Result:
        """Called per outgoing message (hot path: keep it cheap).
        ``ok(topic=..., payload=...)`` rewrites it; the message is delivered in any case."""


# -- notifications (every plugin is called; return values ignored) --------------------

class IOnRegister(Interface):
    def on_register(client: IClient) -> None:
        """A client connected and its session is registered (before CONNACK)."""


class IOnPublish(Interface):
    def on_publish(client: IClient, topic: str, payload: bytes, qos: int,
                   retain: bool) -> None:
        """A PUBLISH was authorized and routed."""


class IOnSubscribe(Interface):
    def on_subscribe(client: IClient, topics: list[tuple[str, int]]) -> None:
        """A SUBSCRIBE was authorized (granted QoS per filter)."""


class IOnOfflineMessage(Interface):
    def on_offline_message(mountpoint: str, client_id: str, qos: int, topic: str,
                           payload: bytes, retain: bool) -> None:
        """A message was queued for an offline session."""


class IOnClientWakeup(Interface):
    def on_client_wakeup(mountpoint: str, client_id: str) -> None:
        """A persistent session got a connection again."""


class IOnClientOffline(Interface):
    def on_client_offline(mountpoint: str, client_id: str) -> None:
        """A persistent session lost its connection."""


class IOnClientGone(Interface):
    def on_client_gone(mountpoint: str, client_id: str) -> None:
        """A non-persistent session ended."""


class IOnSessionExpired(Interface):
    def on_session_expired(mountpoint: str, client_id: str) -> None:
        """A persistent session expired."""
