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

from vmqtw.transport.proxy.parser import HEADER_TIMEOUT
from vmqtw.transport.proxy.wrapper import ProxyProtocolFactory
from vmqtw.transport.wrapping import WrappingServerEndpoint

__all__ = ["ProxyServerEndpoint", "ProxyServerParser"]


class ProxyServerEndpoint(WrappingServerEndpoint):
    """``wrapped``, with a PROXY header expected first on every connection."""

    def __init__(self, wrapped: IStreamServerEndpoint, clock: Any = None, *,
                 timeout: float | None = HEADER_TIMEOUT, name: str = "") -> None:
        self.clock = clock
        self.timeout = timeout
        self.name = name
        super().__init__(wrapped, self._proxy_factory)

    def _proxy_factory(self, inner: IProtocolFactory) -> IProtocolFactory:
        return ProxyProtocolFactory(inner, self.clock, timeout=self.timeout, name=self.name)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ProxyServerParser:
    """``proxy:<any server description>[:timeout=SECONDS]``.

    ``timeout`` (seconds, default 10; ``0`` = none) is how long a client has
    to send its header.  Twisted passes every ``key=value`` of the whole
    description to this parser: ``timeout`` is kept here (wherever it is
    written) and the rest goes to the wrapped description.
    """

    prefix = "proxy"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> ProxyServerEndpoint:
        from twisted.internet.endpoints import quoteStringArgument, serverFromString
        raw_timeout = kwargs.pop("timeout", None)
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
        return ProxyServerEndpoint(inner, reactor, timeout=timeout, name=description)
