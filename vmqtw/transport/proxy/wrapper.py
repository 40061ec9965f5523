"""The PROXY layer on Twisted: a wrapping protocol and factory.

``ProxyProtocolFactory`` is the outermost layer of a listener
(``bytes -> PROXY -> [TLS] -> [WebSocket] -> MQTT``).  Its wrapper builds and
connects the inner protocol only once the header has been parsed, so the
inner ``connectionMade`` already sees the real client address in
``getPeer()``; bytes that followed the header are passed on.  A connection
without a valid header within ``HEADER_TIMEOUT`` seconds, or whose first bytes
are not a PROXY header (e.g. a client that bypasses the proxy and sends
CONNECT), is aborted with one log line: a listener with ``proxy_protocol = on``
never serves a connection without the header.

With trusted sources (``proxy_protocol_trusted_sources``), a connection whose
socket peer is not in them is aborted as soon as it is accepted, with one log
line, before any byte is read: only the proxies may claim a client address
(and a TLS client CN).  A unix-socket peer is always trusted.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.protocol import Protocol, connectionDone
from vmqtw.logs import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from vmqtw.config.settings import ProxyConfig
from vmqtw.transport.proxy.parser import (
    HEADER_TIMEOUT, V2_MAX_LENGTH, ProxyHeaderError, ProxyHeaderParser, ProxyInfo,
)

__all__ = ["ProxyProtocolWrapper", "ProxyProtocolFactory", "proxy_factory"]


def _addr_text(addr: Any) -> str:
    host = getattr(addr, "host", None)
    if host is None:
        name = getattr(addr, "name", None)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return f"local:{name or ''}"
    return f"[{host}]:{addr.port}" if ":" in host else f"{host}:{addr.port}"


class ProxyProtocolWrapper(ProtocolWrapper):
    """Reads the PROXY header, then acts as the transport of the inner protocol.

    The inner protocol is built (``wrappedFactory.buildProtocol`` with the real
    client address) and connected only after the header is parsed.  Until
    then ``wrappedProtocol`` is None and every byte goes to the parser.
    """

    #: The parsed header (None until it is complete).
    proxy_info: ProxyInfo | None = None
    wrappedProtocol: Any = None

    def __init__(self, factory: "ProxyProtocolFactory") -> None:
        self.factory = factory
        self.wrappedProtocol = None
        self._parser: ProxyHeaderParser | None = ProxyHeaderParser(factory.max_v2_length)
        self._timer: Any = None
        self._failed = False

    def logPrefix(self) -> str:
        inner = self.wrappedProtocol
        if inner is None:
            return "ProxyProtocol"
        prefix = getattr(inner, "logPrefix", None)
        return f"{prefix() if callable(prefix) else inner.__class__.__name__} (PROXY)"

    # -- connection setup -------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        # Not ProtocolWrapper.makeConnection: that connects the inner protocol
        # at once, before the header (and so the real peer) is known.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if not self.factory.trusts(self.transport):
            self.factory.untrusted += 1
            self._fail("peer is not in proxy_protocol_trusted_sources")
            return
        timeout = self.factory.timeout
        if timeout is not None and timeout > 0:
            self._timer = self.factory.clock.callLater(timeout, self._timed_out)

    def connectionMade(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        inner = self.wrappedProtocol
        if inner is not None:
            inner.dataReceived(data)
            return
        parser = self._parser
        if parser is None or self._failed:
            return  # closing: drop whatever else arrives
        try:
            info = parser.feed(data)
        except ProxyHeaderError as e:
            self._fail(str(e), e)
            return
        if info is None:
            return
        self._parser = None
        self._cancel_timer()
        self._header_complete(info, parser.leftover)

    def _header_complete(self, info: ProxyInfo, leftover: bytes) -> None:
        self.proxy_info = info
        self.factory.header_parsed(self, info)
        inner = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if inner is None:
            self.factory.refused += 1
            self.factory.log.info("PROXY protocol: {peer} ({info}) refused by the "
                                  "inner factory", peer=self._socket_peer(),
                                  info=info.describe())
            self.loseConnection()
            return
        self.wrappedProtocol = inner
        inner.makeConnection(self)
        if leftover and self.wrappedProtocol is not None and not self.disconnecting:
            self.wrappedProtocol.dataReceived(leftover)

    # -- failures -------------------------------------------------------------

    def _socket_peer(self) -> str:
        try:
            assert self.transport is not None  # set by makeConnection, never cleared
            return _addr_text(self.transport.getPeer())
        except Exception:
            return "?"

    def _fail(self, reason: str, error: Exception | None = None) -> None:
        """Log one line and abort the connection."""
        if self._failed:
            return
        self._failed = True
        self._parser = None
        self._cancel_timer()
        self.factory.refused += 1
        self.factory.log.warn(
            "PROXY protocol: closing connection from {peer} on {listener}: {reason}",
            peer=self._socket_peer(), listener=self.factory.name, reason=reason)
        transport = self.transport
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if callable(abort):
            abort()
        else:
            transport.loseConnection()

    def _timed_out(self) -> None:
        self._timer = None
        if self.wrappedProtocol is None and not self._failed:
            got = self._parser.buffered if self._parser is not None else 0
            self._fail(f"no complete PROXY header within {self.factory.timeout:g} s "
                       f"({got} bytes received)")

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- addresses ------------------------------------------------------------

    def getPeer(self) -> Any:
        info = self.proxy_info
        if info is not None and info.source is not None:
            return info.source
        assert self.transport is not None  # set by makeConnection, never cleared
        return self.transport.getPeer()

    def getHost(self) -> Any:
        info = self.proxy_info
        if info is not None and info.destination is not None:
            return info.destination
        assert self.transport is not None  # set by makeConnection, never cleared
        return self.transport.getHost()

    # -- teardown -------------------------------------------------------------

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        self._parser = None
        self.factory.unregisterProtocol(self)
        inner, self.wrappedProtocol = self.wrappedProtocol, None
        if inner is not None:
            inner.connectionLost(reason)


class ProxyProtocolFactory(WrappingFactory):
    """Wraps the inner factory of a ``proxy_protocol = on`` listener."""

    protocol = ProxyProtocolWrapper
    log = Logger(namespace="vmqtw.transport.proxy")
    noisy = False  # no "Starting factory" lines: the listener logs its start

    def __init__(self, wrappedFactory: Any, clock: Any = None, *,
                 timeout: float | None = HEADER_TIMEOUT,
                 max_v2_length: int = V2_MAX_LENGTH, name: str = "",
                 trusted: ProxyConfig | None = None) -> None:
        """``trusted``: the settings whose ``trusts(host)`` says which socket
        peers may send a header (None: any peer)."""
        super().__init__(wrappedFactory)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.timeout = timeout
        self.max_v2_length = max_v2_length
        self.name = name or "listener"
        #: Headers accepted, by (version, command).
        self.accepted: Counter[tuple[int, str]] = Counter()
        #: Connections closed for a missing/bad header (or refused by the inner factory).
        self.refused = 0
        #: The trusted-source check (None: every peer may send a header).
        self.trusted = trusted if trusted is not None and trusted.trusted_sources else None
        #: Of ``refused``: connections from a peer outside the trusted sources.
        self.untrusted = 0

    def trusts(self, transport: Any) -> bool:
        """Whether the socket peer of ``transport`` may send a PROXY header."""
        if self.trusted is None:
            return True
        try:
            peer = transport.getPeer()
        except Exception:
            return False
        host = getattr(peer, "host", None)
        if host is None and hasattr(peer, "name"):
            return True  # unix socket: the file's permissions decide
        return self.trusted.trusts(host or "")

    def buildProtocol(self, addr: Any) -> ProxyProtocolWrapper:
        # The inner protocol is built later, with the address from the header.
        return self.protocol(self)

    def header_parsed(self, wrapper: ProxyProtocolWrapper, info: ProxyInfo) -> None:
        """Called for every valid header, before the inner protocol exists."""
        self.accepted[(info.version, info.command)] += 1


def proxy_factory(listener: Any, inner: Any, reactor: Any) -> ProxyProtocolFactory:
    """The PROXY layer of ``listener`` (see ``vmqtw.transport.layers``)."""
    return ProxyProtocolFactory(inner, reactor, timeout=listener.proxy.header_timeout,
                                name=f"{listener.kind}.{listener.name}",
                                trusted=listener.proxy)
