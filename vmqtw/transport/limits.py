"""``max_connections`` and ``nr_of_acceptors`` on Twisted listening ports.

VerneMQ (ranch) stops accepting at ``max_connections``: further clients wait in
the kernel's listen backlog and are served as soon as a slot frees.  We do the
same by pausing the listening port (``stopReading``) at the cap and resuming it
when a connection closes.

``nr_of_acceptors`` has no direct equivalent on a single-threaded reactor; we
map it to the number of sockets accepted per readiness event (Twisted's
``numberAccepts``, normally up to 100+).  A port never accepts more sockets in
one readiness event than the listener has room for, so a burst of clients
beyond the cap stays queued in the kernel's backlog instead of being accepted
and closed; as a last resort, a connection accepted past the cap is refused
(closed), so the cap is never exceeded.

``LimitedServerEndpoint`` puts both on any stream server endpoint: for
Twisted's TCP, UNIX and adopted (``systemd:``) endpoints it builds the
listening port itself, as the pinned-accept subclass; any other endpoint
listens as usual and gets the cap (pause + refuse) without the pinned batch.

This is the one module that relies on Twisted internals (``tcp.Port`` and
``unix.Port`` attributes, the private fields of Twisted's server endpoints);
``vmqtw.test.test_endpoints`` fails loudly if an upgrade removes them.
"""
from __future__ import annotations

import socket
from typing import Any, Callable

from twisted.internet import defer, endpoints, tcp, unix
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from vmqtw.logs import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

#: listen() backlog, as ranch's default (the kernel caps it at net.core.somaxconn).
BACKLOG = 1024
#: Sockets accepted per readiness event for each of nr_of_acceptors: VerneMQ's
#: acceptors each accept in a loop concurrently; on one reactor thread the
#: closest equivalent is a larger accept batch (Twisted's own starts at 100).
ACCEPTS_PER_ACCEPTOR = 10


def accept_batch(nr_of_acceptors: int) -> int:
    """Sockets a listener accepts per readiness event for ``nr_of_acceptors``."""
    return max(1, nr_of_acceptors) * ACCEPTS_PER_ACCEPTOR


class _PinnedAccepts:
    """Mixin for listening ports: accept at most ``accept_batch`` per wake-up,
    and never more than the factory has ``room()`` for."""

    accept_batch = 10
    factory: Any

    @property
    def numberAccepts(self) -> int:
        batch = self.accept_batch
        room = getattr(self.factory, "room", None)
        free = room() if room is not None else None
        if free is not None and free < batch:
            # Clients beyond the room stay in the kernel's backlog.  (doRead
            # never runs Twisted's accept loop with no room at all.)
            return max(0, free)
        return batch

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:  # Twisted grows it; we keep ours
        pass

    def doRead(self) -> None:
        room = getattr(self.factory, "room", None)
        if room is not None and room() == 0:
            # No room (e.g. max_connections = 0): accepting nothing would leave
            # the socket readable and the reactor calling us in a busy loop.
            # Stop reading; the factory resumes us when a connection closes.
            self.factory.pause()
            self.stopReading()  # type: ignore[attr-defined]
            return
        super().doRead()  # type: ignore[misc]


class LimitedTCPPort(_PinnedAccepts, tcp.Port):
    pass


class LimitedUNIXPort(_PinnedAccepts, unix.Port):
    #: An inherited socket (systemd socket activation): its file belongs to
    #: whoever made it and stays when the port closes.
    inherited = False

    def connectionLost(self, reason: Failure) -> None:
        if self.inherited:
            tcp.Port.connectionLost(self, reason)  # not unix.Port's: no unlink
            return
        super().connectionLost(reason)


class LimitedConnections(WrappingFactory):
    """Counts connections of one listener and pauses its port at the cap."""

    log = Logger()
    protocol = ProtocolWrapper
    noisy = False

    def __init__(self, wrapped: Any, max_connections: int | None) -> None:
        super().__init__(wrapped)
        self.max_connections = max_connections
        self.port: Any = None
        self.paused = False
        self.high_water = 0  # the most connections open at once
        self.refused = 0     # connections accepted past the cap and closed
        self._waiters: list[tuple[Callable[[int], bool], Deferred[int]]] = []

    @property
    def count(self) -> int:
        return len(self.protocols)

    def room(self) -> int | None:
        """How many more connections may be accepted now (None: no cap)."""
        cap = self.max_connections
        if cap is None:
            return None
        return max(0, cap - len(self.protocols))

    # IProtocolFactory lets buildProtocol refuse with None; WrappingFactory's annotation does not.
    def buildProtocol(self, addr: Any) -> ProtocolWrapper | None:  # type: ignore[override]
        cap = self.max_connections
        if cap is not None and len(self.protocols) >= cap:
            self.refused += 1
            return None
        return super().buildProtocol(addr)

    def registerProtocol(self, p: Any) -> None:
        # Called by the wrapper's makeConnection, right after buildProtocol:
        # only now does the new connection count.
        super().registerProtocol(p)
        n = len(self.protocols)
        if n > self.high_water:
            self.high_water = n
        cap = self.max_connections
        if cap is not None and n >= cap:
            self._pause()
        self._notify()

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        cap = self.max_connections
        if self.paused and (cap is None or len(self.protocols) < cap):
            self._resume()
        self._notify()

    def when(self, predicate: Callable[[int], bool]) -> Deferred[int]:
        """A Deferred that fires with the connection count once ``predicate(count)``
        is true (at once if it already is).  For tests and orderly shutdown."""
        d: Deferred[int] = Deferred()
        n = len(self.protocols)
        if predicate(n):
            d.callback(n)
        else:
            self._waiters.append((predicate, d))
        return d

    def _notify(self) -> None:
        if not self._waiters:
            return
        n = len(self.protocols)
        ready = [(p, d) for p, d in self._waiters if p(n)]
        if ready:
            self._waiters = [w for w in self._waiters if w not in ready]
            for _, d in ready:
                if not d.called:
                    d.callback(n)

    def pause(self) -> None:
        """Stop accepting until a connection closes."""
        self._pause()

    def _pause(self) -> None:
        if self.port is not None and not self.paused:
            self.paused = True
            self.port.stopReading()
            self.log.info("listener at max_connections ({cap}); not accepting",
                          cap=self.max_connections)

    def _resume(self) -> None:
        self.paused = False
        port = self.port
        # Not on a port that is closed or closing (stopListening stops reading
        # at once but closes the socket one reactor turn later).
        if port is not None and getattr(port, "connected", True) and \
                not getattr(port, "disconnecting", False):
            port.startReading()



# --------------------------------------------------------------------------
# The endpoint
# --------------------------------------------------------------------------

def _port_for(endpoint: Any, factory: Any, reactor: Any) -> Any | None:
    """A not yet listening pinned-accept port for one of Twisted's own server
    endpoints, or None for any other endpoint.  (Reads their private fields.)"""
    if isinstance(endpoint, endpoints._TCPServerEndpoint):
        return LimitedTCPPort(endpoint._port, factory, endpoint._backlog,
                              endpoint._interface, endpoint._reactor)
    if isinstance(endpoint, endpoints.UNIXServerEndpoint):
        return LimitedUNIXPort(endpoint._address, factory, endpoint._backlog,
                               endpoint._mode, endpoint._reactor, endpoint._wantPID)
    if isinstance(endpoint, endpoints.AdoptedStreamServerEndpoint):
        if endpoint._used:
            raise RuntimeError("the inherited socket was already used by another listener")
        endpoint._used = True
        fd = endpoint.fileno
        endpoint._setNonBlocking(fd)
        if endpoint.addressFamily == socket.AF_UNIX:
            port: Any = LimitedUNIXPort._fromListeningDescriptor(endpoint.reactor, fd,
                                                                  factory)
            port.inherited = True
        else:
            port = LimitedTCPPort._fromListeningDescriptor(endpoint.reactor, fd,
                                                           endpoint.addressFamily, factory)
        endpoint._close(fd)  # type: ignore[misc, call-arg]  # the port holds a duplicate
        return port
    return None


@implementer(IStreamServerEndpoint)
class LimitedServerEndpoint:
    """``max_connections`` and the accept batch around another server endpoint.

    ``limiter`` (a ``LimitedConnections``) exists from the start, so its
    counters can be read before and after the endpoint listens.  ``listen``
    makes it the outermost factory around the one it is given.  ``endpoint``
    may also be an object with a ``resolve()`` method returning the real
    endpoint (resolved only when listening, e.g. an inherited ``systemd:``
    socket).
    """

    def __init__(self, endpoint: Any, max_connections: int | None = None,
                 accept_batch: int = ACCEPTS_PER_ACCEPTOR, reactor: Any = None) -> None:
        self.wrapped = endpoint
        self.accept_batch = accept_batch
        self.reactor = reactor
        self.limiter = LimitedConnections(None, max_connections)

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return defer.maybeDeferred(self._listen, protocolFactory)

    def _listen(self, factory: IProtocolFactory) -> Any:
        limiter = self.limiter
        limiter.wrappedFactory = factory
        endpoint = self.wrapped
        resolve = getattr(endpoint, "resolve", None)
        if callable(resolve):
            endpoint = resolve()
        port = _port_for(endpoint, limiter, self.reactor)
        if port is None:
            # Someone else's endpoint: the cap still holds (pause + refuse).
            return endpoint.listen(limiter).addCallback(self._listening)
        port.accept_batch = self.accept_batch
        port.startListening()
        return self._listening(port)

    def _listening(self, port: Any) -> Any:
        self.limiter.port = port
        return port


def close_port_now(port: Any) -> None:
    """Close a listening port synchronously (unlinking a unix socket file).

    For a startup that failed: the reactor may never run, so the usual
    ``stopListening`` (which closes one reactor turn later) would leave the
    socket - and a unix socket's file - behind.
    """
    port.stopReading()
    if getattr(port, "connected", False):
        port.connectionLost(Failure(ConnectionDone("startup failed")))
