"""``cluster leave``: a node leaves the cluster on purpose, handing its sessions on.

:meth:`vmqtw.cluster.node.ClusterNode.leave` (what ``vmq-admin cluster leave`` calls)
runs :func:`leave`:

1. the node's MQTT listeners stop accepting (its HTTP listeners stay: ``/health`` and
   the metrics keep answering);
2. its online clients are disconnected (MQTT 5.0: DISCONNECT 0x8B "server shutting
   down", as when the broker stops; their wills are published as on any such close);
   the node waits for their connections to end, at most ``close_timeout`` seconds;
3. every persistent session (now offline) moves to ``target``, or to the other live
   members in turn: its subscriptions and its queued and inflight messages travel over
   the vmq link as on a takeover (:mod:`vmqtw.cluster.migrate`) and the receiving node
   claims the client id; the other sessions end;
4. the node leaves the membership: its member record and routes are removed at once
   (``leave`` in the route log), so the others drop its routes without waiting for
   ``cluster.node_timeout``.

A session the receiving node did not confirm within ``remote_enqueue_timeout`` stays
on the leaving node and is named in :attr:`LeaveReport.errors` (it is lost when the
node stops).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, maybeDeferred

from vmqtw.codec import reasons
from vmqtw.config.schema import HTTP_KINDS
from vmqtw.logs import Logger

if TYPE_CHECKING:  # pragma: no cover
    from vmqtw.cluster.node import ClusterNode

log = Logger()

#: Seconds the leaving node waits for its clients' connections to end.
close_timeout = 3.0


@dataclass
class LeaveReport:
    """What :meth:`~vmqtw.cluster.node.ClusterNode.leave` did."""

    #: Persistent sessions now held by another node.
    sessions_moved: int = 0
    #: Their queued and inflight messages.
    messages_moved: int = 0
    #: What went wrong (a session not moved, an unknown target...), one line each.
    errors: list[str] = field(default_factory=list)
    #: Whether the node left the membership (False: nothing was done, see ``errors``).
    left: bool = False


def _targets(node: ClusterNode, target: str | None) -> list[str] | str:
    """The nodes to move sessions to, or the reason there are none."""
    me = node.cluster.nodename
    if target is not None:
        if target == me:
            return f"target {target!r} is this node"
        if target not in node.metadata.members() or target not in node.links:
            return f"target {target!r} is not a live member of the cluster"
        return [target]
    peers = sorted(n for n in node.metadata.members() if n != me and n in node.links)
    return peers or "no other live member to move the sessions to"


def _stop_accepting(node: ClusterNode) -> list[Deferred[Any]]:
    parent = node.parent
    waits: list[Deferred[Any]] = []
    for svc in list(getattr(parent, "listeners", {}).values()):
        if svc.listener.kind not in HTTP_KINDS and svc.running:
            waits.append(maybeDeferred(svc.stopService))
    return waits


def _disconnect(node: ClusterNode) -> Deferred[None]:
    """Close every client connection; fires when their sessions are offline (or gone),
    at most ``close_timeout`` seconds later."""
    broker = node.broker
    online = {key for key, s in broker.sessions.items() if s.conn is not None}
    done: Deferred[None] = Deferred()
    if not online:
        done.callback(None)
        return done

    def observe(event: str, session: Any) -> None:
        if event in ("offline", "gone", "expired"):
            online.discard(session.key)
            if not online:
                finish()

    def finish() -> None:
        if observe in broker.session_observers:
            broker.session_observers.remove(observe)
        if call.active():
            call.cancel()
        for key in list(online):  # connections that did not end in time
            session = broker.sessions.get(key)
            if session is not None and session.conn is not None:
                broker.connection_closed(session)
        if not done.called:
            done.callback(None)

    broker.session_observers.append(observe)
    call = broker.clock.callLater(close_timeout, finish)
    for key in list(online):
        session = broker.sessions.get(key)
        if session is not None and session.conn is not None:
            session.conn.close(reasons.SERVER_SHUTTING_DOWN)
    broker.flush()
    return done


@inlineCallbacks
def leave(node: ClusterNode, target: str | None = None) -> Any:
    """The steps of the module docstring; returns (through the Deferred) a
    :class:`LeaveReport`."""
    report = LeaveReport()
    targets = _targets(node, target)
    if isinstance(targets, str):
        report.errors.append(targets)
        return report
    broker = node.broker
    migrator = node.registry.migrator
    name = node.cluster.nodename
    log.info("cluster node {node} leaving; sessions move to {targets}", node=name,
             targets=", ".join(targets))
    yield gatherResults(_stop_accepting(node), consumeErrors=True).addErrback(lambda _: None)
    yield _disconnect(node)
    moves: list[Deferred[Any]] = []
    moving: list[Any] = []
    turn = 0
    for session in list(broker.sessions.values()):
        if session.conn is not None:
            continue  # a connection that slipped in: left alone
        if not session.persistent:
            broker.discard_session(session, "gone")
            continue
        peer = targets[turn % len(targets)]
        turn += 1
        moving.append((session, peer))
        moves.append(migrator.push(peer, session))
    results = yield gatherResults(moves, consumeErrors=True) if moves else []
    for (session, peer), count in zip(moving, results, strict=True):
        if count is None:
            report.errors.append(f"session of client {session.client_id!r} "
                                 f"(mountpoint {session.mountpoint!r}) not confirmed by "
                                 f"node {peer}; kept here")
        else:
            report.sessions_moved += 1
            report.messages_moved += count
    broker.flush()
    try:
        yield maybeDeferred(node.metadata.leave)
    except Exception as e:
        report.errors.append(f"leaving the membership failed: {e}")
        return report
    report.left = True
    node.joined = False
    for link in list(node.links.values()):
        link.stop()
    node.links.clear()
    log.info("cluster node {node} left the cluster: {sessions} sessions and {messages} "
             "messages moved, {errors} errors", node=name, sessions=report.sessions_moved,
             messages=report.messages_moved, errors=len(report.errors))
    return report
