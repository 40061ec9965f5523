"""Identity learned by lower layers (PROXY header, TLS), found by walking the
transport chain from the MQTT protocol downwards."""
from __future__ import annotations

from typing import Any, Iterator


def transports(transport: Any) -> Iterator[Any]:
    """The transport and every transport beneath it (wrappers expose ``.transport``)."""
    seen = 0
    while transport is not None and seen < 16:
        yield transport
        transport = getattr(transport, "transport", None)
        seen += 1


def peer_of(transport: Any) -> tuple[str, int]:
    """(host, port) of the client as the outermost layer that knows it reports it.

    A PROXY-protocol layer overrides ``getPeer()`` with the real client address,
    so the first transport in the chain wins.
    """
    try:
        addr = transport.getPeer()
    except Exception:
        return ("", 0)
    host = getattr(addr, "host", None)
    if host is None:  # unix sockets
        name = getattr(addr, "name", None)
        return ("local:" + (name.decode() if isinstance(name, bytes) else str(name or "")), 0)
    return (host, getattr(addr, "port", 0))
