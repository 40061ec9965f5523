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


class IAuthOnRegister(Interface):
    def auth_on_register(request: RegisterRequest) -> Any:
        """Decide a CONNECT: a Result, or a Deferred firing with one."""


class IAuthOnPublish(Interface):
    def auth_on_publish(client: IClient, topic: str, payload: bytes, qos: int,
                        retain: bool) -> Result:
        """Decide a PUBLISH (also the will message at CONNECT).  Synchronous."""


class IAuthOnSubscribe(Interface):
    def auth_on_subscribe(client: IClient, topics: list[tuple[str, int]]) -> Result:
        """Decide a SUBSCRIBE.  ``ok(topics=[(filter, qos_or_128), ...])`` rewrites
        or denies single entries.  Synchronous."""
