"""The one place that relies on Twisted internals: writing straight to a TCP socket.

Twisted's ``write()`` only buffers and arms EPOLLOUT; the bytes leave on the
reactor's next turn.  That round trip (and its two ``epoll_ctl`` calls) was
most of a lightly loaded broker's per-message latency, so the MQTT adapter
sends at once when it may.  Doing that needs a ``tcp.Connection``'s private
buffer state (``_tempDataLen``, ``offset``, ``dataBuffer``) and ``doWrite``;
``vmqtw.test.test_twisted_private`` checks that they still mean what this
module assumes, so a Twisted upgrade that changes them fails loudly there.
"""
from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.protocols.policies import ProtocolWrapper

from vmqtw.transport.identity import transports

# What this module reads or calls on a tcp.Connection.
PRIVATE_ATTRIBUTES = ("_tempDataLen", "offset", "dataBuffer", "doWrite", "socket",
                      "disconnecting")


def socket_under(transport: Any) -> tuple[tcp.Connection | None, bool]:
    """The TCP/unix connection at the bottom of ``transport``'s layers (or None),
    and whether only pass-through wrappers (the connection limiter) sit above
    it, so bytes may skip Twisted's buffer altogether."""
    layers = list(transports(transport))
    bottom = layers[-1]
    if isinstance(bottom, tcp.Connection):
        return bottom, all(type(layer) is ProtocolWrapper for layer in layers[:-1])
    return None, False


def write_now(transport: Any, bottom: Any, direct: bool, data: bytes) -> None:
    """Write ``data`` through ``transport`` and get it onto ``bottom``'s socket now.

    Not for a paused producer (the transport would resume it from inside
    ``doWrite``); a closing connection goes through the normal buffer.
    """
    if bottom.disconnecting:
        transport.write(data)
        return
    if direct and not bottom._tempDataLen and bottom.offset == len(bottom.dataBuffer):
        # Plain TCP with nothing buffered: straight to the socket, Twisted
        # buffers only what the kernel does not take.
        _send(transport, bottom, data)
        return
    transport.write(data)
    bottom.doWrite()


def send_if_idle(transport: Any, bottom: Any, data: bytes) -> None:
    """Write ``data`` through ``transport``, straight to ``bottom``'s socket if
    nothing is buffered there (the rest, if the kernel takes less, is buffered
    as usual).  For a layer that sits on ``bottom`` with only pass-through
    wrappers between (``socket_under`` says so); never calls ``doWrite``, so a
    paused producer is never resumed from inside it.
    """
    if not bottom.connected or bottom.disconnecting or bottom._tempDataLen or \
            bottom.offset != len(bottom.dataBuffer):
        transport.write(data)
        return
    _send(transport, bottom, data)


def _send(transport: Any, bottom: Any, data: bytes) -> None:
    """``data`` to ``bottom``'s socket now; what the kernel does not take goes
    through ``transport`` (Twisted's buffer) as usual."""
    try:
        sent = bottom.socket.send(data)
    except OSError:  # EAGAIN, or an error doWrite will report
        sent = 0
    if sent != len(data):
        transport.write(data[sent:])
