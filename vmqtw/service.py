"""Build the service tree from a configuration.

    BrokerService (the broker, store and authorizer; closes clients on stop)
      ListenerService per configured listener: a StreamServerEndpointService
      on the listener's endpoint (listens in privilegedStartService); MQTT
      listeners serve MQTT, http/https ones VerneMQ's HTTP modules
      AdminChannelService: the vmq-admin socket (``vmqtw.admin.channel``)
      SysTree: the $SYS publisher, when ``systree_enabled`` (the default)

The operations stack (metrics, API keys, admin commands, listener control)
is ``BrokerService.ops`` (``vmqtw.admin.ops.Operations``); the metrics
registry is made first and given to the broker, whose packet path counts in it.

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
import time
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults
from vmqtw.admin.ops import Operations
from vmqtw.auth.hooks import Notifier
from vmqtw.cluster.wiring import ClusterConfigError, cluster_node
from vmqtw.auth.loader import (
    AUTHN_INTERFACES, AUTHZ_INTERFACES, denied_requests, listener_authorizer, load_plugins,
    provides_any,
)
from vmqtw import logs
from vmqtw.codec import reasons
from vmqtw.config import BrokerConfig, ConfigError, ListenerConfig
from vmqtw.config.schema import HTTP_KINDS
from vmqtw.connection.reauth import watch_reloads
from vmqtw.core.broker import Broker
from vmqtw.core.interfaces import IStore
from vmqtw.logs import Logger
from vmqtw.metrics import Metrics, metrics_settings
from vmqtw.startup_checks import find_open_doors
from vmqtw.store import StoreError, open_store
from vmqtw.store.memory import MemoryStore
from vmqtw.store.progress import RestoreProgress
from vmqtw.transport.endpoints import endpoint_chain, listener_endpoint
from vmqtw.transport.errors import LayerError
from vmqtw.transport.layers import protocol_layers
from vmqtw.transport.limits import LimitedConnections, LimitedServerEndpoint, close_port_now
from vmqtw.transport.protocol import MQTTFactory


class StartupError(Exception):
    """A problem found while starting (e.g. a port in use); the message names file:line."""


class ListenerService(StreamServerEndpointService):
    """One configured listener: its endpoint (``vmqtw.transport.endpoints``)
    listening with its protocol factory (WebSocket, MQTT).

    Listening happens in ``privilegedStartService`` and is synchronous: a
    listener that cannot listen raises ``StartupError`` naming its config line.
    """

    log = Logger()

    def __init__(self, listener: ListenerConfig, factory: Any, reactor: Any) -> None:
        self.listener = listener
        self.reactor = reactor
        try:
            # an HTTP listener's factory is its twisted.web Site
            inner = [factory] if listener.kind in HTTP_KINDS else \
                protocol_layers(listener, factory, reactor)
            endpoint = listener_endpoint(listener, reactor)
        except LayerError as e:
            raise StartupError(str(e)) from e
        super().__init__(endpoint, inner[0])
        self.setName(f"{listener.kind}.{listener.name}")
        #: Counts this listener's connections and enforces max_connections.
        self.limiter: LimitedConnections = next(
            e.limiter for e in endpoint_chain(endpoint) if isinstance(e, LimitedServerEndpoint))
        #: The factory chain, outermost first (PROXY, TLS, WebSocket, MQTT); the
        #: PROXY and TLS factories exist once the endpoint has listened.
        self.layers: list[Any] = inner
        #: The listening port (None when not listening).
        self.port: Any = None

    def bind(self) -> None:
        """Listen now (once); StartupError naming the config line on failure."""
        if self._waitingForPort is not None:
            return
        self._raiseSynchronously = True
        try:
            super().privilegedStartService()
        except Exception as e:
            self._waitingForPort = None
            file, line = self.listener.source
            reason = getattr(e, "socketError", None) or e
            raise StartupError(f"{file}:{line}: listener.{self.name}: cannot listen on "
                               f"{self.listener.address}: {reason}") from e
        waiting: Any = self._waitingForPort
        waiting.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        self.port = port
        self.layers = self._factory_chain()
        self.log.info("listener {listener} on {address} (mountpoint {mountpoint!r}, "
                      "max_connections {max_connections})", listener=self.name,
                      address=self.bound_address(),
                      mountpoint=self.listener.mountpoint,
                      max_connections=self.listener.max_connections or "infinity")
        return port

    def _factory_chain(self) -> list[Any]:
        layers: list[Any] = []
        factory = self.limiter.wrappedFactory
        while factory is not None and len(layers) < 16:
            layers.append(factory)
            factory = getattr(factory, "wrappedFactory", None)
        return layers

    def privilegedStartService(self) -> None:
        self.bind()

    def stopService(self) -> Any:
        if self._waitingForPort is None:
            Service.stopService(self)
            return None
        self.port = None
        d = super().stopService()
        self._waitingForPort = None
        return d

    def close_now(self) -> None:
        """Close the listening socket synchronously (unlinking a unix socket
        file), for a startup that failed."""
        port, self.port = self.port, None
        self._waitingForPort = None
        if port is not None:
            close_port_now(port)

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
        node, namespace = metrics_settings(config.extra)
        #: VerneMQ's metrics, counted by the broker and its connections.
        self.metrics = Metrics(node, namespace)
        self.broker = Broker(config, reactor, store if store is not None else MemoryStore(),
                             log=Logger(namespace="vmqtw.broker"), metrics=self.metrics)
        self.metrics.watch_sessions(self.broker)
        self._log_observers: list[Any] = []
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
            # ACL/password file reloads reach existing sessions (#14).
            watch_reloads(self.broker, {f"{lc.kind}.{lc.name}": self.authorizers[lc.key]
                                        for lc in config.listeners}, self.plugins)
        except ConfigError as e:
            raise StartupError(str(e)) from e
        self.listeners: dict[str, ListenerService] = {}
        try:
            self.cluster = cluster_node(config, self.broker, reactor)
        except ClusterConfigError as e:
            raise StartupError(str(e)) from e
        if self.cluster is not None:  # the netsplit flags
            self.authorizers = self.cluster.gate(self.authorizers)
        for listener in config.listeners:
            if listener.kind in HTTP_KINDS:
                continue  # below: their sites need the operations stack
            factory = MQTTFactory(self.broker, self.authorizers[listener.key], listener,
                                  reactor, self.notifier)
            svc = ListenerService(listener, factory, reactor)
            svc.setServiceParent(self)
            self.listeners[f"{listener.kind}.{listener.name}"] = svc
        if self.cluster is not None:
            self.cluster.setServiceParent(self)
        #: The operations stack: metrics, API keys, vmq-admin, listener control.
        self.ops = Operations(self)
        for listener in config.listeners:
            if listener.kind in HTTP_KINDS:
                self._add_http_listener(listener)
        self.admin_channel = self.ops.admin_channel()
        if self.admin_channel is not None:
            self.admin_channel.setServiceParent(self)
        self.systree = self.ops.systree()
        self.systree.setServiceParent(self)

    def _add_http_listener(self, listener: ListenerConfig) -> None:
        """An ``http``/``https`` listener serving VerneMQ's HTTP modules."""
        try:
            site = self.ops.http_site(listener.options, self.authorizers.get(listener.key))
        except ValueError as e:
            file, line = listener.source
            raise StartupError(f"{file}:{line}: {listener.key}: {e}") from e
        svc = ListenerService(listener, site, self.reactor)
        svc.setServiceParent(self)
        self.listeners[f"{listener.kind}.{listener.name}"] = svc

    #: Seconds between two progress lines while a large store is restored.
    restore_progress_interval = 2.0

    def restore(self) -> None:
        """Load the durable store (if the broker has one) into the broker: once,
        before the listeners are bound; a long restore logs progress lines
        (``vmqtw.store.progress``) and every restore one summary line."""
        if self._restored:
            return
        self._restored = True
        store = self.broker.store
        load = getattr(store, "load", None)
        if load is None:
            return
        path = getattr(store, "path", "?")
        progress = RestoreProgress(path, self.restore_progress_interval)
        try:
            loaded = load(self.reactor.seconds(), progress=progress)
        except StoreError as e:
            raise StartupError(str(e)) from e
        sessions = self.broker.restore(progress.over(
            loaded.sessions, len(loaded.sessions), "sessions", verb="restored"))
        self.metrics.inc("queue_initialized_from_storage", sessions)
        self.log.info("store {path}: restored {sessions} sessions, {queued} queued or "
                      "inflight messages, {retained} retained messages; purged {expired} "
                      "expired sessions and {expired_messages} expired messages "
                      "({seconds:.1f} s)",
                      path=path, sessions=sessions,
                      queued=sum(len(s.deliveries) for s in loaded.sessions),
                      retained=len(loaded.retained), expired=loaded.expired_sessions,
                      expired_messages=loaded.expired_messages, seconds=progress.elapsed())

    def privilegedStartService(self) -> None:
        if not self._log_observers:
            self._log_observers = logs.install(self.config.log,
                                               node=self.config.cluster.nodename)
        for warning in self.config.warnings:
            self.log.warn("{config_warning}", config_warning=str(warning))
        self.restore()
        bound: list[ListenerService] = []
        try:
            for svc in self.listeners.values():
                svc.bind()
                bound.append(svc)
            if self.cluster is not None:
                self.cluster.bind()
        except (StartupError, ClusterConfigError) as e:
            for svc in bound:
                svc.close_now()
            if isinstance(e, ClusterConfigError):
                raise StartupError(str(e)) from e
            raise
        try:
            self._warn_about_open_doors()
        except StartupError:
            for svc in bound:
                svc.close_now()
            raise
        super().privilegedStartService()

    def _warn_about_open_doors(self) -> None:
        """Log what is left open; StartupError for what must not be (the demo
        user reachable from the network; see ``vmqtw.startup_checks``)."""
        found = find_open_doors(self.config, list(self.listeners.values()), self.plugins,
                                self.authorizers)
        if found.errors:
            raise StartupError("\n".join(found.errors))
        for text in found.loud:
            self.log.critical("{text}", text=text)
        for text in found.warnings:
            self.log.warn("{text}", text=text)
        config = self.config
        if not config.allow_anonymous and not provides_any(self.plugins, AUTHN_INTERFACES) \
                and not any(l.allow_anonymous_override for l in config.listeners):
            self.log.warn("allow_anonymous is off and no authentication plugin is enabled: "
                          "every CONNECT will be refused")
        if not provides_any(self.plugins, AUTHZ_INTERFACES):
            self.log.warn("no authorization plugin is enabled: no ACL is in force, every "
                          "client may publish and subscribe to every topic")
        for text in denied_requests(config, self.plugins):
            self.log.warn("{text}", text=text)
        for name, _plugin in self.plugins:
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
        """SIGHUP: plugins re-read their files now; one line says when it is
        done, how long it took and how many reloads failed (each failure is
        logged above it)."""
        self.log.info("SIGHUP: reloading plugin files and TLS material")
        started = time.monotonic()
        layers = failed = plugins = 0
        for svc in self.listeners.values():
            for layer in svc.layers:
                reload = getattr(layer, "reload", None)
                if callable(reload):
                    layers += 1
                    try:
                        if reload() is False:  # logged by the layer, old material kept
                            failed += 1
                    except Exception:
                        failed += 1
                        self.log.failure("listener {listener} failed to reload",
                                         listener=svc.name)
        for name, plugin in self.plugins:
            reload = getattr(plugin, "reload", None)
            if callable(reload):
                plugins += 1
                try:
                    reload()
                except Exception:
                    failed += 1
                    self.log.failure("plugin {plugin} failed to reload", plugin=name)
        self.log.info("SIGHUP: reload done in {seconds:.2f} s: {layers} TLS listener(s) and "
                      "{plugins} plugin(s) asked to reload, {failed} failed",
                      seconds=time.monotonic() - started, layers=layers, plugins=plugins,
                      failed=failed)

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

        def stop_logging(result: Any) -> Any:
            observers, self._log_observers = self._log_observers, []
            logs.uninstall(observers)
            return result

        return gatherResults(waits, consumeErrors=True).addBoth(close_store).addBoth(
            stop_logging)

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

