"""The PROXY layer as an endpoint wrapper, and the ``proxy:`` description.

``ProxyServerEndpoint(endpoint)`` listens on ``endpoint`` with every
connection's factory wrapped in ``ProxyProtocolFactory``.  The endpoint-string
parser ``ProxyServerParser`` (registered in ``twisted/plugins/vmqtw_plugin.py``
under the prefix ``proxy``) makes it usable from any Twisted application::

    serverFromString(reactor, "proxy:tcp:1883:interface=127.0.0.1")

is a tcp listener whose clients must start with a PROXY v1 or v2 header (as a
vmqtw listener with ``proxy_protocol = on``).  Unlike Twisted's ``haproxy:``,
a header split across reads is accepted, TLVs (TLS client CN...) are parsed,
and a connection that sends no header in time is closed.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import (
    IProtocolFactory, IStreamServerEndpoint, IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

from vmqtw.config.settings import ProxyConfig
from vmqtw.transport.proxy.parser import HEADER_TIMEOUT
from vmqtw.transport.proxy.wrapper import ProxyProtocolFactory
from vmqtw.transport.wrapping import WrappingServerEndpoint

__all__ = ["ProxyServerEndpoint", "ProxyServerParser"]


class ProxyServerEndpoint(WrappingServerEndpoint):
    """``wrapped``, with a PROXY header expected first on every connection."""

    def __init__(self, wrapped: IStreamServerEndpoint, clock: Any = None, *,
                 timeout: float | None = HEADER_TIMEOUT, name: str = "",
                 trusted: tuple[str, ...] | ProxyConfig = ()) -> None:
        """``trusted``: the IP addresses/networks allowed to send a header (or
        a listener's ``ProxyConfig``); empty: any peer."""
        self.clock = clock
        self.timeout = timeout
        self.name = name
        if not isinstance(trusted, ProxyConfig):
            trusted = ProxyConfig(enabled=True, trusted_sources=tuple(trusted))
        self.trusted = trusted
        super().__init__(wrapped, self._proxy_factory)

    def _proxy_factory(self, inner: IProtocolFactory) -> IProtocolFactory:
        return ProxyProtocolFactory(inner, self.clock, timeout=self.timeout, name=self.name,
                                    trusted=self.trusted)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ProxyServerParser:
    """``proxy:<any server description>[:timeout=SECONDS][:trusted=NETS]``.

    ``timeout`` (seconds, default 10; ``0`` = none) is how long a client has
    to send its header.  ``trusted`` lists the peers allowed to send one
    (IPs or CIDRs separated by ``,``; escape an IPv6 ``:`` as ``\\:``); others
    are closed at once.  Twisted passes every ``key=value`` of the whole
    description to this parser: ``timeout`` and ``trusted`` are kept here
    (wherever they are written) and the rest goes to the wrapped description.
    """

    prefix = "proxy"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> ProxyServerEndpoint:
        from twisted.internet.endpoints import quoteStringArgument, serverFromString
        raw_timeout = kwargs.pop("timeout", None)
        raw_trusted = str(kwargs.pop("trusted", "") or "")
        trusted = tuple(t.strip() for t in raw_trusted.split(",") if t.strip())
        timeout: float | None = HEADER_TIMEOUT
        if raw_timeout is not None:
            timeout = float(raw_timeout) or None
        if not args:
            raise ValueError("proxy: needs an endpoint to wrap, e.g. proxy:tcp:1883")
        description = ":".join(quoteStringArgument(str(a)) for a in args)
        if kwargs:
            description += ":" + ":".join(f"{quoteStringArgument(str(k))}="
                                          f"{quoteStringArgument(str(v))}"
                                          for k, v in kwargs.items())
        inner = serverFromString(reactor, description)
        try:
            settings = ProxyConfig(enabled=True, trusted_sources=trusted)
        except ValueError as e:
            raise ValueError(f"proxy: trusted={raw_trusted}: {e}") from None
        return ProxyServerEndpoint(inner, reactor, timeout=timeout, name=description,
                                   trusted=settings)
