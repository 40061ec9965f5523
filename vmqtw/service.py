"""Build the service tree from a configuration.

    BrokerService (the broker, store and authorizer; closes clients on stop)
      ListenerService per configured listener (binds in privilegedStartService)

A durable store (``make_service`` opens the one the config asks for) is
restored into the broker in ``privilegedStartService``, before any listener is
bound; on stop, the service waits for the store to catch up (so held
acknowledgements go out), closes the connections, and closes the store last.

Every listener is bound before the reactor runs; if any bind fails, the ones
already bound are closed and startup stops with a message naming the config
line of the listener.
"""
from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from vmqtw.auth.hooks import Notifier
from vmqtw.auth.loader import (
    AUTHN_INTERFACES, AUTHZ_INTERFACES, listener_authorizer, load_plugins, provides_any,
)
from vmqtw import logs
from vmqtw.codec import reasons
from vmqtw.config import BrokerConfig, ConfigError, ListenerConfig
from vmqtw.core.broker import Broker
from vmqtw.core.interfaces import IStore
from vmqtw.store import StoreError, open_store
from vmqtw.store.memory import MemoryStore
from vmqtw.transport.layers import LayerError, build_layers
from vmqtw.transport.limits import LimitedConnections, LimitedTCPPort, LimitedUNIXPort
from vmqtw.transport.protocol import MQTTFactory

#: listen() backlog, as ranch's default (the kernel caps it at net.core.somaxconn).
BACKLOG = 1024
#: Sockets accepted per readiness event for each of nr_of_acceptors: VerneMQ's
#: acceptors each accept in a loop concurrently; on one reactor thread the
#: closest equivalent is a larger accept batch (Twisted's own starts at 100).
ACCEPTS_PER_ACCEPTOR = 10


class StartupError(Exception):
    """A problem found while starting (e.g. a port in use); the message names file:line."""


class ListenerService(Service):
    """One configured listener: a listening port and its factory chain."""

    log = Logger()

    def __init__(self, listener: ListenerConfig, factory: Any, reactor: Any) -> None:
        self.listener = listener
        self.name = f"{listener.kind}.{listener.name}"
        self.reactor = reactor
        try:
            #: The factory chain, outermost first (PROXY, TLS, WebSocket, MQTT).
            self.layers = build_layers(listener, factory, reactor)
        except LayerError as e:
            raise StartupError(str(e)) from e
        self.limiter = LimitedConnections(self.layers[0], listener.max_connections)
        self.port: Any = None

    def bind(self) -> None:
        listener = self.listener
        addr = listener.address
        batch = max(1, listener.nr_of_acceptors) * ACCEPTS_PER_ACCEPTOR
        try:
            if addr.path is not None:
                port: Any = LimitedUNIXPort(addr.path, self.limiter, BACKLOG,
                                            reactor=self.reactor)
            else:
                port = LimitedTCPPort(addr.port, self.limiter, BACKLOG, addr.host or "",
                                      self.reactor)
            port.accept_batch = batch
            port.startListening()
        except (CannotListenError, OSError) as e:
            file, line = listener.source
            raise StartupError(f"{file}:{line}: listener.{self.name}: cannot listen on "
                               f"{addr}: {getattr(e, 'socketError', e)}") from e
        self.port = port
        self.limiter.port = port
        self.log.info("listener {listener} on {address} (mountpoint {mountpoint!r}, "
                      "max_connections {max_connections})", listener=self.name,
                      address=self.bound_address(),
                      mountpoint=listener.mountpoint,
                      max_connections=listener.max_connections or "infinity")

    def privilegedStartService(self) -> None:
        if self.port is None:
            self.bind()
        super().privilegedStartService()

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None

    def close_now(self) -> None:
        """Close the listening socket synchronously (unlinking a unix socket file).

        Used when startup fails: the reactor may never run, so the usual
        ``stopListening`` (which closes one reactor turn later) would leave the
        socket - and a unix socket's file - behind.
        """
        port, self.port = self.port, None
        if port is None:
            return
        port.stopReading()
        if getattr(port, "connected", False):
            port.connectionLost(Failure(ConnectionDone("startup failed")))

    def close_connections(self) -> None:
        """Close every connection of this listener, CONNECTed or not."""
        for wrapper in list(self.limiter.protocols):
            inner = getattr(wrapper, "wrappedProtocol", None)
            close = getattr(inner, "close", None)
            if close is not None:
                close(reasons.SERVER_SHUTTING_DOWN)
            elif wrapper.transport is not None:
                wrapper.transport.loseConnection()

    def connections_closed(self, timeout: float) -> Deferred[None]:
        """Fires when this listener has no connections left; connections still
        open after ``timeout`` seconds are aborted."""
        d = self.limiter.when(lambda n: n == 0)
        if d.called:
            return d.addCallback(lambda _: None)

        def abort() -> None:
            for wrapper in list(self.limiter.protocols):
                if wrapper.transport is not None:
                    wrapper.transport.abortConnection()

        call = self.reactor.callLater(timeout, abort)

        def done(_: Any) -> None:
            if call.active():
                call.cancel()

        return d.addCallback(done)

    def address(self) -> tuple[str, int]:
        """(host, port) actually bound; for a unix socket ("local:PATH", 0)."""
        host = self.port.getHost()
        name = getattr(host, "name", None)
        if name is not None:
            return "local:" + (name.decode() if isinstance(name, bytes) else str(name)), 0
        return host.host, host.port

    def bound_address(self) -> str:
        """The bound address as text: 127.0.0.1:1883, [::1]:1883 or local:/path."""
        host, port = self.address()
        if host.startswith("local:"):
            return host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class BrokerService(MultiService):
    """The broker plus its listeners."""

    log = Logger()

    def __init__(self, config: BrokerConfig, reactor: Any, store: IStore | None = None,
                 plugins: list[tuple[str, Any]] | None = None,
                 handle_sighup: bool = False) -> None:
        """``plugins`` defaults to the plugins enabled in ``config``; problems
        loading them are StartupErrors naming the file and line."""
        super().__init__()
        logs.set_level(config.log_level)
        self.config = config
        self.reactor = reactor
        self.handle_sighup = handle_sighup
        self.broker = Broker(config, reactor, store if store is not None else MemoryStore(),
                             log=Logger(namespace="vmqtw.broker"))
        self._restored = False
        try:
            self.plugins = load_plugins(config, reactor) if plugins is None else plugins
            self.notifier = Notifier(self.plugins)
            self.broker.session_observers.append(self.notifier.session_event)
            if self.notifier.deliver or self.notifier.offline_message:
                self.broker.deliver_hook = self.notifier.on_deliver
                self.broker.offline_hook = self.notifier.on_offline_message
            self.authorizers = {l.key: listener_authorizer(config, l, self.plugins)
                                for l in config.listeners}
        except ConfigError as e:
            raise StartupError(str(e)) from e
        self.listeners: dict[str, ListenerService] = {}
        for listener in config.listeners:
            factory = MQTTFactory(self.broker, self.authorizers[listener.key], listener,
                                  reactor, self.notifier)
            svc = ListenerService(listener, factory, reactor)
            svc.setServiceParent(self)
            self.listeners[svc.name] = svc

    def restore(self) -> None:
        """Load the durable store (if the broker has one) into the broker: once,
        before the listeners are bound."""
        if self._restored:
            return
        self._restored = True
        store = self.broker.store
        load = getattr(store, "load", None)
        if load is None:
            return
        try:
            loaded = load(self.reactor.seconds())
        except StoreError as e:
            raise StartupError(str(e)) from e
        sessions = self.broker.restore(loaded.sessions)
        self.log.info("store {path}: restored {sessions} sessions, {queued} queued or "
                      "inflight messages, {retained} retained messages; purged {expired} "
                      "expired sessions and {expired_messages} expired messages",
                      path=getattr(store, "path", "?"), sessions=sessions,
                      queued=sum(len(s.deliveries) for s in loaded.sessions),
                      retained=len(loaded.retained), expired=loaded.expired_sessions,
                      expired_messages=loaded.expired_messages)

    def privilegedStartService(self) -> None:
        self.restore()
        bound: list[ListenerService] = []
        try:
            for svc in self.listeners.values():
                svc.bind()
                bound.append(svc)
        except StartupError:
            for svc in bound:
                svc.close_now()
            raise
        self._warn_about_open_doors()
        super().privilegedStartService()

    def _warn_about_open_doors(self) -> None:
        config = self.config
        if not config.allow_anonymous and not provides_any(self.plugins, AUTHN_INTERFACES) \
                and not any(l.allow_anonymous_override for l in config.listeners):
            self.log.warn("allow_anonymous is off and no authentication plugin is enabled: "
                          "every CONNECT will be refused")
        if not provides_any(self.plugins, AUTHZ_INTERFACES):
            self.log.warn("no authorization plugin is enabled: no ACL is in force, every "
                          "client may publish and subscribe to every topic")
        for name, plugin in self.plugins:
            self.log.info("plugin {plugin} enabled", plugin=name)

    def startService(self) -> None:
        super().startService()
        for _, plugin in self.plugins:
            start = getattr(plugin, "start", None)
            if callable(start):
                start()
        if self.handle_sighup and hasattr(signal, "SIGHUP"):
            self._previous_sighup = signal.signal(
                signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))

    def reload(self) -> None:
        """SIGHUP: plugins re-read their files now."""
        self.log.info("SIGHUP: reloading plugin files and TLS material")
        for svc in self.listeners.values():
            for layer in svc.layers:
                reload = getattr(layer, "reload", None)
                if callable(reload):
                    try:
                        reload()
                    except Exception:
                        self.log.failure("listener {listener} failed to reload",
                                         listener=svc.name)
        for name, plugin in self.plugins:
            reload = getattr(plugin, "reload", None)
            if callable(reload):
                try:
                    reload()
                except Exception:
                    self.log.failure("plugin {plugin} failed to reload", plugin=name)

    #: Seconds to wait on stop for clients to read what is left and close.
    close_timeout = 3.0

    def stopService(self) -> Any:
        """Stop accepting, let the store catch up (acknowledgements waiting for it
        go out), close every connection, close the store, and fire when all of
        that is done (so twistd's shutdown waits for DISCONNECTs to be written
        and the store to be flushed)."""
        d = super().stopService()  # listeners stop accepting first
        for _, plugin in self.plugins:
            stop = getattr(plugin, "stop", None)
            if callable(stop):
                stop()
        if self.handle_sighup and hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, getattr(self, "_previous_sighup", signal.SIG_DFL))
        caught_up = self.broker.store.durable()
        if caught_up.called:
            caught_up.addErrback(lambda _: None)
            return self._disconnect_and_close(d)
        result: Deferred[None] = Deferred()

        def go_on(_: Any) -> None:
            self._disconnect_and_close(d).chainDeferred(result)

        caught_up.addBoth(go_on)
        return result

    def _disconnect_and_close(self, listeners_stopped: Any) -> Deferred[None]:
        self.disconnect_all()
        # No session expiry or will-delay timers outlive the service; pending
        # delayed wills are published now.
        self.broker.stop()
        waits = [listeners_stopped] if listeners_stopped is not None else []
        waits += [svc.connections_closed(self.close_timeout) for svc in self.listeners.values()]

        def close_store(_: Any) -> None:
            # Last: connections that close record their sessions as offline, and
            # wills published as they go are queued for persistent sessions.
            store = self.broker.store
            sessions_disconnected = getattr(store, "sessions_disconnected", None)
            if sessions_disconnected is not None:
                sessions_disconnected()
            try:
                store.close()
            except Exception:
                self.log.failure("closing the store failed")

        return gatherResults(waits, consumeErrors=True).addBoth(close_store)

    def disconnect_all(self) -> None:
        """Close every client connection (DISCONNECT 0x8B for 5.0 clients),
        including connections that have not sent CONNECT yet."""
        for session in list(self.broker.sessions.values()):
            conn = session.conn
            if conn is not None:
                conn.close(reasons.SERVER_SHUTTING_DOWN)
        for svc in self.listeners.values():
            svc.close_connections()
        self.broker.flush()


def make_service(config: BrokerConfig, reactor: Any = None) -> BrokerService:
    """The broker as the daemon runs it: with the store the config asks for
    (durable by default, see ``vmqtw.store``).  A store that cannot be used is
    a StartupError naming its file."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor
        reactor = default_reactor
    try:
        store = open_store(config, reactor)
    except StoreError as e:
        raise StartupError(str(e)) from e
    try:
        return BrokerService(config, reactor, store=store, handle_sighup=True)
    except BaseException:
        store.close()
        raise

