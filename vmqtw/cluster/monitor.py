"""What one node knows about the state of its cluster, for operators.

:class:`ClusterMonitor` belongs to a :class:`~vmqtw.cluster.node.ClusterNode` and gives:

- the member table of ``vmq-admin cluster show`` (VerneMQ's ``Node`` / ``Running``):
  every live member from the metadata, running while this node has an established
  link to it; a member that expired (crashed, killed, cut off for longer than
  ``cluster.node_timeout``) stays listed as not running until it comes back or is
  removed with ``cluster leave node=NAME``; a member that left on purpose is gone;
- VerneMQ's netsplit counters: ``netsplit_detected`` counts each time an established
  link to a live member is lost, ``netsplit_resolved`` each time such a member is
  reached again or leaves the membership (expired or left), so detected - resolved is
  the number of splits not resolved yet;
- the cluster metrics, read at scrape time from the objects that count them (never a
  shared counter on the message path): ``cluster_bytes_sent`` / ``_dropped`` summed
  over the outgoing links (including links already closed), ``cluster_bytes_received``
  from the vmq listener, ``router_matches_remote`` from the router;
- the cluster part of ``/health`` (:meth:`health_problem`) and ``/status.json``'s
  ``mystatus``.
"""
from __future__ import annotations

from typing import Any, Callable, Generator

from twisted.internet.defer import Deferred, inlineCallbacks

from vmqtw.logs import Logger

#: VerneMQ's ``/health`` reasons.
NOT_JOINED = "Node has not joined cluster"
UNKNOWN_STATUS = "Unknown cluster status"
NODE_OFFLINE = "At least one node is offline"


class ClusterMonitor:
    """The operator's view of ``node`` (see the module docstring)."""

    log = Logger()

    def __init__(self, node: Any) -> None:
        self.node = node
        self.netsplits_detected = 0
        self.netsplits_resolved = 0
        #: Live members whose established link was lost (a netsplit, unresolved).
        self.split: set[str] = set()
        #: Members that expired without leaving (listed as not running).
        self.down: set[str] = set()
        #: This node left the cluster (``vmq-admin cluster leave``) and has not joined
        #: again.
        self.left = False
        #: The MQTT listeners (by name) ``cluster leave`` stopped; ``cluster join``
        #: resumes them.
        self.resume_listeners: list[str] = []
        self._links: list[tuple[str, Any]] = []
        self._closed_sent = 0
        self._closed_dropped = 0
        node.metadata.watch_members(self.members_changed)

    # -- events ----------------------------------------------------------------

    def link_created(self, name: str, link: Any) -> None:
        """``node`` made a new outgoing link to member ``name``."""
        self._links.append((name, link))
        link.state_observer = lambda up: self.link_state(name, link, up)

    def link_state(self, name: str, link: Any, up: bool) -> None:
        """The link to ``name`` completed its handshake (``up``) or lost it."""
        if self.node.links.get(name) is not link:
            return  # a link being replaced or closed: not a netsplit
        if up:
            if name in self.split:
                self.split.discard(name)
                self.netsplits_resolved += 1
                self.log.info("cluster: node {node} reachable again; netsplit resolved",
                              node=name)
        elif name not in self.split and name in self.node.metadata.members():
            self.split.add(name)
            self.netsplits_detected += 1
            self.log.warn("cluster: netsplit detected: node {node} is a member but its "
                          "link was lost", node=name)

    def members_changed(self, up: dict[str, Any], down: set[str]) -> None:
        """The member view changed (metadata watcher, after the node's own)."""
        departed: set[str] = getattr(self.node.metadata, "departed", set())
        for name in down:
            if name in self.split:
                self.split.discard(name)
                self.netsplits_resolved += 1
            if name in departed:
                self.down.discard(name)
            elif name != self.node.cluster.nodename:
                self.down.add(name)
        self.down.difference_update(up)

    # -- the member table -------------------------------------------------------------

    def rows(self) -> list[tuple[str, bool]]:
        """``(node name, running)`` for every member this node knows, sorted by name."""
        node = self.node
        me = node.cluster.nodename
        if self.left:
            return [(me, False)]
        meta = node.metadata
        running = {me: bool(node.joined and meta.reachable)}
        for name in meta.members():
            if name != me:
                link = node.links.get(name)
                running[name] = link is not None and bool(link.connected)
        for name in self.down:
            running.setdefault(name, False)
        return sorted(running.items())

    def forget(self, name: str) -> bool:
        """Drop an expired member from the table (``cluster leave node=NAME`` for a node
        that is gone); False if ``name`` is not such a member."""
        if name not in self.down:
            return False
        self.down.discard(name)
        return True

    # -- /health and /status.json -------------------------------------------------------

    def health_problem(self) -> str | None:
        """VerneMQ's ``/health`` reason when this node is not joined or not ready (a
        member it cannot reach: it refuses what the netsplit flags forbid), else None."""
        node = self.node
        if self.left or not node.joined:
            return NOT_JOINED
        if not node.metadata.reachable:
            return UNKNOWN_STATUS
        if not node.is_ready():
            return NODE_OFFLINE
        return None

    def full_cluster_problem(self) -> str | None:
        """``/health/listeners_full_cluster``: a member is not running (expired ones
        included), or this node is not joined."""
        problem = self.health_problem()
        if problem is not None:
            return problem
        if not all(running for _, running in self.rows()):
            return NODE_OFFLINE
        return None

    # -- metrics ------------------------------------------------------------------

    def _fold_closed(self) -> None:
        """Move the counts of links the node no longer uses into the totals."""
        live = {id(link) for link in self.node.links.values()}
        kept = []
        for name, link in self._links:
            if id(link) in live:
                kept.append((name, link))
            else:
                self._closed_sent += link.bytes_sent
                self._closed_dropped += link.bytes_dropped
        self._links = kept

    def bytes_sent(self) -> int:
        self._fold_closed()
        return self._closed_sent + sum(link.bytes_sent for _, link in self._links)

    def bytes_dropped(self) -> int:
        self._fold_closed()
        return self._closed_dropped + sum(link.bytes_dropped for _, link in self._links)

    def bytes_received(self) -> int:
        return int(self.node.server.bytes_received)

    def matches_remote(self) -> int:
        return int(self.node.router.matches_remote)

    def readers(self) -> dict[str, Callable[[], int]]:
        """VerneMQ's cluster counters -> their scrape-time readers."""
        return {
            "cluster_bytes_sent": self.bytes_sent,
            "cluster_bytes_received": self.bytes_received,
            "cluster_bytes_dropped": self.bytes_dropped,
            "router_matches_remote": self.matches_remote,
            "netsplit_detected": lambda: self.netsplits_detected,
            "netsplit_resolved": lambda: self.netsplits_resolved,
        }

    def register(self, metrics: Any) -> None:
        """Make ``metrics`` (a :class:`vmqtw.metrics.Metrics`) read the cluster counters
        from this node at scrape time."""
        if metrics is None:
            return
        for name, read in self.readers().items():
            doc = metrics.describe(name)[1]
            metrics.register_counter(name, doc, read)

    # -- joining again ------------------------------------------------------------

    @inlineCallbacks
    def rejoin(self) -> Generator[Deferred[Any], Any, None]:
        """Make this node a member again after it left: a fresh start of its metadata
        session (announces the node and its routes, heartbeats, follows the logs)."""
        node = self.node
        meta = node.metadata
        yield meta.stop()
        yield meta.start()
        self.left = False
        node.joined = True
        node.router.load_retained()
        self.log.info("cluster node {node} joined again; members: {members}",
                      node=node.cluster.nodename, members=sorted(meta.members()))
