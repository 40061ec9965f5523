"""``ClusterNode``: the service that makes a broker one node of a cluster.

It is started by :mod:`vmqtw.service` when the configuration names a metadata engine
(``metadata_plugin = redis``) and:

- listens on every ``listener.vmq.NAME`` / ``listener.vmqs.NAME`` (TLS, with the
  listener's SSL options) for the links that peers open to this node;
- joins the membership through the metadata (announcing this node's vmq address),
  and starts again with backoff while the engine cannot be reached;
- keeps one outgoing :class:`~vmqtw.cluster.link.PeerLink` per live member;
- wires a :class:`~vmqtw.cluster.router.ClusterRouter` into the broker, which announces
  the local subscriptions as routes, follows the other nodes' routes and forwards
  publishes to them, and a :class:`~vmqtw.cluster.registry.ClientRegistry` (one
  connection per client id in the cluster);
- gates CONNECT, PUBLISH, SUBSCRIBE and UNSUBSCRIBE while the node does not see the
  whole cluster (:mod:`vmqtw.cluster.netsplit`), and once it sees it again resolves the
  client ids that two nodes accepted during the split (:mod:`vmqtw.cluster.reclaim`).

The address peers use is the bound address of the first vmq listener; when it is a
wildcard (``0.0.0.0:44053``) the host part of ``nodename`` (``VerneMQ@HOST``) is used.
With a ``vmqs`` listener first, the address is announced as ``tls:HOST:PORT`` and peers
connect with TLS (:mod:`vmqtw.cluster.tls`).
"""
from __future__ import annotations

import random
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.task import LoopingCall

from vmqtw.cluster.leave import LeaveReport, leave
from vmqtw.cluster.link import LinkServerFactory, PeerLink
from vmqtw.cluster.metadata import Member, MetadataUnavailable
from vmqtw.cluster.monitor import ClusterMonitor
from vmqtw.cluster.netsplit import NetsplitGate
from vmqtw.cluster.reclaim import Reclaimer
from vmqtw.cluster.registry import ClientRegistry, RegistrationGate
from vmqtw.cluster.router import ClusterRouter
from vmqtw.cluster.tls import TLS_PREFIX, OptionError, client_creator, split_address
from vmqtw.cluster.wiring import ClusterConfigError, cluster_listeners
from vmqtw.config import BrokerConfig, ClusterConfig
from vmqtw.logs import Logger
from vmqtw.transport.endpoints import listener_endpoint
from vmqtw.transport.errors import LayerError

def make_metadata(cluster: ClusterConfig, reactor: Any) -> Any:
    """The ``IMetadata`` provider the configuration asks for (Redis)."""
    from vmqtw.cluster.redis_metadata import RedisMetadata
    options: dict[str, Any] = dict(
        cluster_name=cluster.name, heartbeat_interval=cluster.heartbeat_interval,
        node_timeout=cluster.node_timeout, reactor=reactor)
    if cluster.redis_sentinels:
        # The URL still gives the database and password; host and port come from the
        # Sentinels.
        options.update(sentinels=cluster.redis_sentinels,
                       master_name=cluster.redis_master_name)
    return RedisMetadata.from_url(cluster.redis_url, cluster.nodename, **options)


class ClusterNode(Service):
    """This broker as a cluster node (see the module docstring).

    :param metadata: an ``IMetadata`` provider; built from the configuration if None.
    """

    log = Logger()

    #: Seconds between attempts to join while the engine is unreachable (at most).
    max_retry_delay = 5.0

    #: Seconds a member still counts as reachable while this node's first connection to
    #: it is being set up (no attempt failed yet), and a CONNECT to a starting node waits
    #: for the node to join before "server unavailable".
    connect_grace = 2.0

    #: Seconds between readiness checks (a split is noticed and healed by them).
    readiness_interval = 0.5

    #: Seconds the netsplit gate reuses a positive readiness answer (it asks on every
    #: PUBLISH; a split is noticed by the gate at most this late).
    ready_ttl = 0.05

    def __init__(self, config: BrokerConfig, broker: Any, reactor: Any,
                 metadata: Any = None) -> None:
        self.config = config
        self.cluster = config.cluster
        self.broker = broker
        self.reactor = reactor
        self.listeners = cluster_listeners(config)
        if not self.listeners:
            raise ClusterConfigError(
                f"{config.path}: metadata_plugin = {self.cluster.metadata_plugin} needs a "
                f"listener.vmq.NAME (or listener.vmqs.NAME) for the links between nodes")
        self.metadata = metadata if metadata is not None else make_metadata(self.cluster,
                                                                            reactor)
        self.links: dict[str, PeerLink] = {}
        self.router = ClusterRouter(broker, self.metadata, self.links)
        self.registry = ClientRegistry(broker, self.metadata, self.links)
        self.router.control = self.registry.control
        self.reclaimer = Reclaimer(broker, self.metadata, self.registry)
        self.server = LinkServerFactory(
            self.cluster.nodename, self.cluster.cookie, self.router.deliver,
            max_frame_size=self.cluster.incoming_buffer_size,
            handshake_timeout=self.cluster.handshake_timeout, reactor=reactor)
        self.ports: list[Any] = []
        tls_listener = next((l for l in self.listeners if l.kind == "vmqs"), None)
        try:
            self.tls_creator = client_creator(tls_listener)
        except OptionError as e:
            assert tls_listener is not None
            file, line = tls_listener.option_source(e.option)
            if not line:
                file, line = tls_listener.source
            raise ClusterConfigError(f"{file}:{line}: {tls_listener.key}.{e.option}: "
                                     f"{e.message}") from e
        self.metadata.watch_members(self.members_changed)
        self.joined = False
        self._join_call: Any = None
        self._joining: Deferred[Any] | None = None
        self._attempts = 0
        #: Member table, netsplit counters, cluster metrics, health (:mod:`.monitor`).
        self.monitor = ClusterMonitor(self)
        self.monitor.register(getattr(broker, "metrics", None))
        #: Peer name -> when its link was created (the connect grace counts from it).
        self._linked_at: dict[str, float] = {}
        self._started_at: float | None = None
        self._settling: list[Deferred[bool]] = []
        self._settle_call: Any = None
        self.split = False
        self._claim_errors_seen = 0
        self._ready_until = 0.0
        self._readiness = LoopingCall(self._check_readiness)
        self._readiness.clock = reactor
        self.setName("cluster")

    # -- listening --------------------------------------------------------------

    def bind(self) -> None:
        """Listen on every vmq listener now; :class:`ClusterConfigError` naming the
        config line if one cannot listen."""
        if self.ports:
            return
        for listener in self.listeners:
            file, line = listener.source
            try:
                endpoint = listener_endpoint(listener, self.reactor)
            except LayerError as e:
                raise ClusterConfigError(str(e)) from e
            failure: list[Any] = []
            d = endpoint.listen(self.server)
            d.addCallbacks(self.ports.append, failure.append)
            if failure:
                self.close_now()
                reason = getattr(failure[0].value, "socketError", None) or failure[0].value
                raise ClusterConfigError(f"{file}:{line}: {listener.key}: cannot listen on "
                                         f"{listener.address}: {reason}")
            if not d.called:  # an endpoint that listens later: not ours
                raise ClusterConfigError(f"{file}:{line}: {listener.key}: did not listen")
        self.log.info("cluster node {node}: vmq link on {address}", node=self.cluster.nodename,
                      address=self.address)

    def close_now(self) -> None:
        """Stop listening (a startup that failed)."""
        ports, self.ports = self.ports, []
        for port in ports:
            port.stopListening()

    @property
    def address(self) -> str:
        """``host:port`` peers use to reach this node's first vmq listener."""
        if not self.ports:
            return ""
        host = self.ports[0].getHost()
        ip = host.host
        if ip in ("0.0.0.0", "::", ""):
            ip = self.cluster.host or "127.0.0.1"
        prefix = TLS_PREFIX if self.listeners[0].kind == "vmqs" else ""
        return prefix + (f"[{ip}]:{host.port}" if ":" in ip else f"{ip}:{host.port}")

    # -- lifecycle -----------------------------------------------------------------

    def privilegedStartService(self) -> None:
        self.bind()
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self.metadata.address = self.address
        self.router.attach()
        self.registry.attach()
        self._started_at = self.reactor.seconds()
        self._join()
        interval = min(self.readiness_interval, self.cluster.heartbeat_interval)
        self._readiness.start(interval, now=False)

    def _join(self) -> None:
        self._join_call = None
        if not self.running:
            return
        self._attempts += 1
        d = self._joining = self.metadata.start()

        def joined(_: Any) -> None:
            self._joining = None
            self.joined = True
            self._attempts = 0
            self.router.load_retained()
            self.log.info("cluster node {node} joined; members: {members}",
                          node=self.cluster.nodename, members=sorted(self.metadata.members()))

        def failed(f: Any) -> None:
            self._joining = None
            if not self.running:
                return
            delay = min(self.max_retry_delay, 0.5 * 2 ** min(self._attempts, 4))
            delay += random.uniform(0, 0.1)
            reason = f.getErrorMessage() if f.check(MetadataUnavailable) else repr(f.value)
            self.log.warn("cluster node {node}: cannot join yet ({reason}); retrying in "
                          "{delay:.1f}s", node=self.cluster.nodename, reason=reason,
                          delay=delay)
            self._join_call = self.reactor.callLater(delay, self._join)
        d.addCallbacks(joined, failed)

    def leave(self, target: str | None = None) -> Deferred[LeaveReport]:
        """Leave the cluster on purpose (``vmq-admin cluster leave``): stop accepting
        MQTT clients, disconnect them, move the persistent sessions to ``target`` (or
        to the live members in turn), then leave the membership. Fires with a
        :class:`~vmqtw.cluster.leave.LeaveReport`; see :mod:`vmqtw.cluster.leave`."""
        return leave(self, target)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.router.picks.cancel()
        if self._join_call is not None and self._join_call.active():
            self._join_call.cancel()
        self._join_call = None
        if self._readiness.running:
            self._readiness.stop()
        self._settled(False)
        waits: list[Deferred[Any]] = [link.stop() for link in self.links.values()]
        self.links.clear()
        for port in self.ports:
            waits.append(maybeDeferred(port.stopListening))
        self.ports = []
        for proto in list(self.server.protocols):
            proto.transport.abortConnection()
        waits.append(self.metadata.stop())
        self.joined = False
        return DeferredList(waits, consumeErrors=True)

    # -- netsplits -------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Whether this node sees the whole cluster: joined, the engine answers, and a
        handshaken link to every other live member is up -- or, for a member that just
        appeared, its first link is still being set up (no attempt failed) and was
        created less than :attr:`connect_grace` seconds ago: a fresh node in a healthy
        cluster, and the nodes it joins, serve at once."""
        meta = self.metadata
        if not self.joined or not meta.reachable:
            return False
        me = self.cluster.nodename
        links = self.links
        for name in meta.members():
            if name != me:
                link = links.get(name)
                if link is None or not link.connected:
                    if link is None or not self._connecting(name, link):
                        return False
        return True

    def _connecting(self, name: str, link: PeerLink) -> bool:
        since = self._linked_at.get(name)
        return (since is not None and link.failed_attempts == 0
                and self.reactor.seconds() - since < self.connect_grace)

    def gate(self, authorizers: dict[str, Any]) -> dict[str, Any]:
        """The listeners' authorizers behind the netsplit flags (:mod:`.netsplit`)."""
        return {key: NetsplitGate(RegistrationGate(a, self.registry), self.ready_now,
                                  self.cluster, settle=self.settle)
                for key, a in authorizers.items()}

    def _forget_ready(self) -> None:
        self._ready_until = 0.0

    def ready_now(self) -> bool:
        """:meth:`is_ready` for the gate: a positive answer is reused for
        :attr:`ready_ttl` seconds, or until the member view or a link changes."""
        now = self.reactor.seconds()
        if now < self._ready_until:
            return True
        if self.is_ready():
            self._ready_until = now + self.ready_ttl
            return True
        return False

    def settle(self) -> Deferred[bool] | None:
        """While the node is starting (less than :attr:`connect_grace` seconds since it
        started, not ready yet): a Deferred firing True once it is ready, False at the
        end of the grace; None once the node has had its chance (refuse at once)."""
        started = self._started_at
        if started is None or self.reactor.seconds() - started >= self.connect_grace:
            return None
        d: Deferred[bool] = Deferred()
        self._settling.append(d)
        if self._settle_call is None:
            self._settle_call = self.reactor.callLater(0.02, self._poll_settling)
        return d

    def _poll_settling(self) -> None:
        self._settle_call = None
        if self.is_ready():
            self._settled(True)
        elif self._started_at is None or \
                self.reactor.seconds() - self._started_at >= self.connect_grace:
            self._settled(False)
        elif self._settling:
            self._settle_call = self.reactor.callLater(0.02, self._poll_settling)

    def _settled(self, ready: bool) -> None:
        if self._settle_call is not None and self._settle_call.active():
            self._settle_call.cancel()
        self._settle_call = None
        waiting, self._settling = self._settling, []
        for d in waiting:
            d.callback(ready)

    def _check_readiness(self) -> None:
        """Periodic: notice a split (not ready after having been ready) and its end;
        at the end, resolve the client ids accepted on both sides. A claim that failed
        since the last check (an engine blip shorter than the check) counts as well."""
        if not self.joined:
            return
        if not self.is_ready():
            if not self.split:
                self.split = True
                self.log.warn("cluster node {node}: netsplit: not every member is "
                              "reachable", node=self.cluster.nodename)
            return
        self.registry.subs.retry()
        errors = self.registry.claim_errors
        if self.split:
            self.split = False
            self.log.info("cluster node {node}: netsplit resolved; every member reachable",
                          node=self.cluster.nodename)
        elif errors == self._claim_errors_seen:
            return
        self._claim_errors_seen = errors
        self.reclaimer.reconcile()

    # -- members -> links ----------------------------------------------------------

    def members_changed(self, up: dict[str, Member], down: set[str]) -> None:
        """The member view changed (metadata watcher): one link per live peer."""
        me = self.cluster.nodename
        self._ready_until = 0.0
        for name in down:
            link = self.links.pop(name, None)
            self._linked_at.pop(name, None)
            if link is not None:
                link.stop()
                self.registry.migrator.link_lost(name)
                self.log.info("cluster: node {node} is down; link closed", node=name)
        for name, member in up.items():
            if name == me or not member.address or not self.running:
                continue
            old = self.links.pop(name, None)
            if old is not None:
                old.stop()
            link = self.links[name] = self._link(member)
            link.on_change = self._forget_ready
            self._linked_at[name] = self.reactor.seconds()

    def _link(self, member: Member) -> PeerLink:
        tls, host, port = split_address(member.address)
        c = self.cluster
        endpoint: Any = HostnameEndpoint(self.reactor, host, port, timeout=c.handshake_timeout)
        if tls:
            endpoint = wrapClientTLS(self.tls_creator(host), endpoint)
        link = PeerLink(c.nodename, member.name, endpoint, c.cookie, reactor=self.reactor,
                        buffer_size=c.outgoing_buffer_size,
                        flush_threshold=c.flush_threshold,
                        max_frame_size=c.incoming_buffer_size,
                        handshake_timeout=c.handshake_timeout)
        self.monitor.link_created(member.name, link)
        link.start()
        return link
