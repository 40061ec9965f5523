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
"""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory


class _PinnedAccepts:
    """Mixin for listening ports: accept at most ``accept_batch`` per wake-up,
    and never more than the factory has ``room()`` for."""

    accept_batch = 10
    factory: Any

    @property
    def numberAccepts(self) -> int:  # type: ignore[override]
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
    pass


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

    def buildProtocol(self, addr: Any) -> Protocol | None:
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

