"""The TLS layer as an endpoint wrapper, built from our context builder.

``TLSServerEndpoint(listener, endpoint, reactor)`` listens on ``endpoint``
with every connection's factory wrapped in ``TLSListenerFactory`` (the
listener's ``ServerTLSOptions``: certificates, CA, CRL, PSK file, versions,
ciphers; handshake timeout; CRL refresh; ``reload()`` on SIGHUP).
"""
from __future__ import annotations

from typing import Any

from vmqtw.config import ListenerConfig
from vmqtw.transport.tls import TLSListenerFactory, creator_for, tls_factory
from vmqtw.transport.wrapping import WrappingServerEndpoint

__all__ = ["TLSServerEndpoint", "tls_endpoint"]


class TLSServerEndpoint(WrappingServerEndpoint):
    """``wrapped`` with TLS from our connection creator on every connection.

    The creator (certificates, keys, CRL, PSK file) is built at once, so a bad
    file fails when the listener is built, not when it listens.
    """

    def __init__(self, listener: ListenerConfig, wrapped: Any, reactor: Any) -> None:
        self.listener = listener
        self.reactor = reactor
        self.creator = creator_for(listener)
        super().__init__(wrapped, self._tls_factory)

    def _tls_factory(self, inner: Any) -> TLSListenerFactory:
        return tls_factory(self.listener, inner, self.reactor, self.creator)


def tls_endpoint(listener: ListenerConfig, wrapped: Any, reactor: Any) -> TLSServerEndpoint:
    """The TLS endpoint wrapper of ``listener`` around ``wrapped``; LayerError
    (naming the config line) for a bad option or file."""
    return TLSServerEndpoint(listener, wrapped, reactor)
