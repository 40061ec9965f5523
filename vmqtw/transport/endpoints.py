"""From a listener's configuration to its Twisted server endpoint.

A listener address is either VerneMQ's form or a Twisted endpoint description:

=================================  ==============================================
``127.0.0.1:1883``, ``::1:1883``   TCP on that IP address and port
``local:/run/vmqtw.sock:0``        a unix socket (tcp listeners only)
``tcp:1883:interface=\\:\\:1``      Twisted's ``tcp:`` (also ``tcp6:``)
``unix:/run/vmqtw.sock``           Twisted's ``unix:``
``systemd:domain=INET:index=0``    a socket inherited from systemd (``index=`` or
                                   ``name=``, as Twisted's ``systemd:``)
``proxy:tcp:1883``                 any of the above behind the PROXY protocol
                                   (``proxy_protocol = on``)
=================================  ==============================================

``listener_endpoint`` is the one function from a ``ListenerConfig`` to its
endpoint; the endpoint is a chain of wrappers, outermost (last applied) first::

    TLSServerEndpoint        (ssl, wss, vmqs)    vmqtw.transport.tls_endpoint
      ProxyServerEndpoint    (proxy_protocol)    vmqtw.transport.proxy
        LimitedServerEndpoint (max_connections,  vmqtw.transport.limits
                               nr_of_acceptors)
          the address's endpoint (tcp, unix, systemd)

so a connection's bytes go PROXY -> TLS -> the factory given to ``listen``
(WebSocket -> MQTT).  Descriptions are checked when the configuration is read
(``vmqtw.config.descriptions``) but only turned into endpoints when the listener
listens, so ``--check`` and the tests do not need an inherited socket.
"""
from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Iterator

from twisted.internet import endpoints
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from zope.interface import implementer

from vmqtw.transport import activation
from vmqtw.config.descriptions import (
    PREFIXES, check_description, is_description, split_description,
)
from vmqtw.transport.limits import BACKLOG, LimitedServerEndpoint, accept_batch
from vmqtw.transport.proxy import ProxyServerEndpoint
from vmqtw.transport.tls_endpoint import tls_endpoint

if TYPE_CHECKING:
    from vmqtw.config import Address, ListenerConfig

__all__ = [
    "PREFIXES", "is_description", "check_description", "address_endpoint",
    "listener_endpoint", "endpoint_chain", "SystemdEndpoint",
]


# --------------------------------------------------------------------------
# Resolving an address
# --------------------------------------------------------------------------

@implementer(IStreamServerEndpoint)
class SystemdEndpoint:
    """A socket inherited from systemd, looked up when listening (so that a
    listener can be built, e.g. for ``--check``, outside socket activation)."""

    def __init__(self, reactor: Any, domain: str, index: int | None = None,
                 name: str | None = None) -> None:
        self.reactor = reactor
        self.family = getattr(socket, f"AF_{domain}")
        self.index = index
        self.name = name
        self._endpoint: Any = None

    def resolve(self) -> endpoints.AdoptedStreamServerEndpoint:
        """Twisted's endpoint for the inherited socket; ValueError if there is none."""
        if self._endpoint is None:
            fds, names = activation.inherited()
            if not fds:
                raise ValueError("no socket inherited from systemd (LISTEN_PID/LISTEN_FDS "
                                 "are not set for this process: start it through a "
                                 ".socket unit or systemd-socket-activate)")
            if self.name is not None:
                if self.name not in names:
                    raise ValueError(f"systemd passed no socket named {self.name!r} "
                                     f"(names: {':'.join(names) or 'none'})")
                fd = fds[names.index(self.name)]
            else:
                assert self.index is not None
                if self.index >= len(fds):
                    raise ValueError(f"systemd passed {len(fds)} socket(s), there is no "
                                     f"index {self.index}")
                fd = fds[self.index]
            self._endpoint = endpoints.AdoptedStreamServerEndpoint(self.reactor, fd,
                                                                   self.family)
        return self._endpoint

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        try:
            endpoint = self.resolve()
        except ValueError:
            return fail()
        return maybeDeferred(endpoint.listen, protocolFactory)


def description_endpoint(reactor: Any, description: str) -> Any:
    """The endpoint of a (checked) ``tcp:``, ``tcp6:``, ``unix:`` or
    ``systemd:`` description; ``backlog`` defaults to ``BACKLOG``."""
    args, kwargs = split_description(description)
    if args[0] == "systemd":
        return SystemdEndpoint(reactor, kwargs["domain"],
                               int(kwargs["index"]) if "index" in kwargs else None,
                               kwargs.get("name"))
    if "backlog" not in kwargs:
        description += f":backlog={BACKLOG}"
    return endpoints.serverFromString(reactor, description)


def address_endpoint(reactor: Any, address: Address) -> Any:
    """The endpoint of a listener address, without limits or wrappers."""
    description = getattr(address, "endpoint", None)
    if description is not None:
        if description.startswith("proxy:"):
            description = description[len("proxy:"):]
        return description_endpoint(reactor, description)
    if address.path is not None:
        return endpoints.UNIXServerEndpoint(reactor, address.path, BACKLOG)
    return endpoints.TCP4ServerEndpoint(reactor, address.port, BACKLOG, address.host or "")


#: Set in a ``vmqtw --workers`` worker: MQTT listeners on ``IP:PORT`` bind with
#: ``SO_REUSEPORT`` (``vmqtw.workers``), shared by every worker.
reuse_port = False


def listener_endpoint(listener: ListenerConfig, reactor: Any) -> IStreamServerEndpoint:
    """The endpoint of ``listener``: its address, ``max_connections`` and the
    accept batch, then the PROXY and TLS wrappers it needs.  A bad TLS option
    or file raises ``LayerError`` naming the config line."""
    base = None
    if reuse_port:
        from vmqtw.workers import reuse_port_endpoint
        base = reuse_port_endpoint(listener, reactor, BACKLOG)
    endpoint: Any = LimitedServerEndpoint(
        base or address_endpoint(reactor, listener.address), listener.max_connections,
        accept_batch(listener.nr_of_acceptors), reactor)
    name = f"{listener.kind}.{listener.name}"
    if listener.proxy.enabled:
        endpoint = ProxyServerEndpoint(endpoint, reactor, name=name,
                                     timeout=listener.proxy.header_timeout,
                                     trusted=listener.proxy)
    if listener.kind in ("ssl", "wss", "vmqs", "https"):
        endpoint = tls_endpoint(listener, endpoint, reactor)
    return endpoint


def endpoint_chain(endpoint: Any) -> Iterator[Any]:
    """``endpoint`` and the endpoints it wraps, outermost first."""
    hops = 0
    while endpoint is not None and hops < 16:
        yield endpoint
        endpoint = getattr(endpoint, "wrapped", None)
        hops += 1
