"""A TCP port forwarder on 127.0.0.1 that a test can cut and restore: a netsplit.

``PausableProxy(port).start()`` listens on a free loopback port and forwards every
connection to ``127.0.0.1:port`` (Twisted's port forwarder, with flow control).
``pause()`` aborts every forwarded connection (both ends see a reset, as when a network
path dies) and closes new connections at once until ``resume()``. It runs in the test's
reactor: call ``pause``/``resume`` from the test body, not from a worker thread.
"""
from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.protocols.portforward import ProxyFactory, ProxyServer


class _Server(ProxyServer):
    noisy = False
    factory: _Factory  # type: ignore[assignment]

    def connectionMade(self) -> None:
        if self.factory.paused:
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.factory.live.add(self)
        self.factory.accepted += 1
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.live.discard(self)
        super().connectionLost(reason)


class _Factory(ProxyFactory):
    protocol = _Server
    noisy = False

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.paused = False
        self.live: set[_Server] = set()
        self.accepted = 0


class PausableProxy:
    """Forwards 127.0.0.1:``port`` (the *target*) from :attr:`port` (see the module)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.factory = _Factory(target_host, target_port)
        self._listening: Any = None

    def start(self) -> int:
        """Listen; returns the proxy's port."""
        self._listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        return self.port

    @property
    def port(self) -> int:
        return int(self._listening.getHost().port)

    @property
    def accepted(self) -> int:
        """Connections forwarded so far."""
        return self.factory.accepted

    def pause(self) -> None:
        """Cut: abort every forwarded connection; refuse new ones until resume()."""
        self.factory.paused = True
        for server in list(self.factory.live):
            peer = server.peer
            server.transport.abortConnection()  # type: ignore[attr-defined]
            if peer is not None:
                peer.transport.abortConnection()  # type: ignore[union-attr]

    def resume(self) -> None:
        """Heal: forward new connections again."""
        self.factory.paused = False

    def stop(self) -> Deferred[Any]:
        self.pause()
        return maybeDeferred(self._listening.stopListening)
