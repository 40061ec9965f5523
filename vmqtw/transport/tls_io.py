"""Per-connection helpers of the TLS layer (``vmqtw.transport.tls``): what it
does differently from Twisted's TLS transport to save CPU per handshake and
message, and memory per idle connection.

- ``_provide_like``: ``ProtocolWrapper.makeConnection``'s ``directlyProvides``
  from a cache;
- ``_renew_bios``: fresh memory BIOs once the handshake is through, so an idle
  connection keeps no buffer the size of the handshake flights;
- ``_TurnFlusher``: one end-of-turn flush per listener for the output of all
  its connections.
"""
from __future__ import annotations

from typing import Any

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL
from zope.interface import directlyProvides, providedBy

_binding = Binding()
_ffi, _lib = _binding.ffi, _binding.lib

#: (protocol class, the transport's interface spec) -> the ``Provides`` spec
#: ``directlyProvides`` gives such a protocol: a handful, one per wrapping chain.
_PROVIDES: dict[tuple[type, Any], Any] = {}

#: Bytes moved per call when memory BIOs are renewed.
BIO_CHUNK = 4096

#: Application output collected in one reactor turn is encrypted at once
#: after this many writes (MQTT writes once per input batch).
PENDING_MAX = 64


def _provide_like(obj: Any, transport: Any) -> None:
    """``directlyProvides(obj, providedBy(transport))``, as ProtocolWrapper does
    for every connection, from a cache.

    zope keeps a ``Provides`` spec only while some object uses it, so with one
    connection at a time (a client reconnecting, ``openssl s_time``) every
    connection rebuilt it, and ``directlyProvides`` flattens the transport's
    interfaces on every call anyway: together ~1/4 of the broker's Python
    time per handshake.  The result is the same ``Provides`` object.
    """
    key = (type(obj), providedBy(transport))
    provides = _PROVIDES.get(key)
    if provides is None:
        directlyProvides(obj, key[1])
        if len(_PROVIDES) >= 64:
            _PROVIDES.clear()
        _PROVIDES[key] = obj.__provides__
    else:
        obj.__provides__ = provides


def _move_bio(src: Any, dst: Any) -> None:
    """Move every byte still in memory BIO ``src`` to memory BIO ``dst``."""
    buf = None
    while True:
        if buf is None:
            buf = _ffi.new("char[]", BIO_CHUNK)
        n = _lib.BIO_read(src, buf, BIO_CHUNK)
        if n <= 0:
            return
        _lib.BIO_write(dst, buf, n)


def _renew_bios(conn: SSL.Connection) -> None:
    """Give ``conn`` two new, empty memory BIOs, moving over any unread bytes.

    A memory BIO keeps the capacity of the largest chunk it ever held (the
    handshake flights, a large message) for as long as the connection lives:
    ~2.5 KiB per idle TLS connection after the handshake alone.  ``SSL_set_bio``
    frees the old pair (the SSL object owns its BIOs; pyOpenSSL never frees
    them itself and only reads ``_into_ssl``/``_from_ssl`` at each call).
    """
    old_in, old_out = conn._into_ssl, conn._from_ssl
    if old_in is None or old_out is None:  # a socket-based Connection
        return
    new_in = _lib.BIO_new(_lib.BIO_s_mem())
    new_out = _lib.BIO_new(_lib.BIO_s_mem())
    if new_in == _ffi.NULL or new_out == _ffi.NULL:  # out of memory: keep the old pair
        for bio in (new_in, new_out):
            if bio != _ffi.NULL:
                _lib.BIO_free(bio)
        return
    _move_bio(old_in, new_in)
    _move_bio(old_out, new_out)
    _lib.SSL_set_bio(conn._ssl, new_in, new_out)
    conn._into_ssl, conn._from_ssl = new_in, new_out


class _TurnFlusher:
    """The TLS connections of one listener that were written to during this
    reactor turn; their output is encrypted and sent at its end, once.

    Twisted's ``BufferingTLSTransport`` does the same with an aggregator object
    and a ``callLater(0)`` per connection; here one call serves the listener.
    Coalescing matters for fan-in: 50 publishers' reads in one turn are one TLS
    record and one send to their subscriber, not 50.
    """

    __slots__ = ("clock", "dirty", "call")

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.dirty: list[Any] = []
        self.call: Any = None

    def add(self, protocol: Any) -> None:
        self.dirty.append(protocol)
        if self.call is None:
            self.call = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        self.call = None
        dirty, self.dirty = self.dirty, []
        for protocol in dirty:
            protocol._flush_pending()
