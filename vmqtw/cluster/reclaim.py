"""After a healed netsplit: one connection per client id again, decided by epoch.

During a split, with ``allow_register_during_netsplit = on``, two nodes may each accept
a client with the same id: a node cut off from the metadata cannot claim the id (its
claim fails), and a node that claims it cannot send the ``TAKEOVER`` to a peer it does
not see (a peer that expired is not linked any more). When the node is ready again,
:meth:`Reclaimer.reconcile` asks the registry, for every client connected here, who
owns its id:

- another node, with an epoch larger than this node's claim (or this node has no claim:
  it failed during the split): this node's connection is the stale one; it is closed
  as a takeover (MQTT 5.0: DISCONNECT 0x8E "session taken over", the will as for any
  takeover) and the session dropped here, without waiting for the client's next CONNECT;
- this node, or nobody (the engine lost the id), or another node with an *older*
  epoch than ours (the engine lost our claim): the id is claimed again, which sends
  the usual ``TAKEOVER`` to a previous owner elsewhere.

The lookups run in batches of :attr:`Reclaimer.batch` concurrent engine requests, so a
node with many clients does not flood the engine at the moment it heals.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed

from vmqtw.cluster.metadata import MetadataUnavailable
from vmqtw.logs import Logger


class Reclaimer:
    """Resolves duplicate client ids after a split (see the module docstring).

    :param broker: the local broker (its connected sessions are checked).
    :param metadata: an ``IMetadata`` provider (``owner``).
    :param registry: the node's :class:`~vmqtw.cluster.registry.ClientRegistry` (its
        ``epochs`` and its claim).
    """

    log = Logger()

    #: Owner lookups in flight at once.
    batch = 500

    def __init__(self, broker: Any, metadata: Any, registry: Any) -> None:
        self.broker = broker
        self.metadata = metadata
        self.registry = registry
        self.node_name: str = metadata.node_name
        #: Connections closed because another node owns their client id.
        self.closed = 0
        #: Client ids claimed again.
        self.reclaimed = 0
        self._running: Deferred[None] | None = None

    def reconcile(self) -> Deferred[None]:
        """Check every client connected here against the registry (one pass at a time:
        a call during a pass returns that pass)."""
        if self._running is not None:
            return self._running
        sessions = [s for s in self.broker.sessions.values() if s.conn is not None]
        if not sessions:
            return succeed(None)
        self.log.info("cluster: checking the owners of {n} client ids after the split",
                      n=len(sessions))
        d = self._running = self._pass(sessions, 0)

        def done(result: Any) -> Any:
            self._running = None
            return result
        return d.addBoth(done)

    def _pass(self, sessions: list[Any], start: int) -> Deferred[None]:
        chunk = sessions[start:start + self.batch]
        if not chunk:
            return succeed(None)
        waits = [self._check(session) for session in chunk]
        d: Deferred[Any] = DeferredList(waits, consumeErrors=True)
        return d.addCallback(lambda _: self._pass(sessions, start + self.batch))

    def _check(self, session: Any) -> Deferred[None]:
        key = session.key
        mine = self.registry.epochs.get(key)

        def answered(owner: tuple[str, int] | None) -> None:
            if self.broker.sessions.get(key) is not session or session.conn is None:
                return  # gone or reconnected meanwhile: that CONNECT claimed again
            if self.registry.epochs.get(key) != mine:
                return  # claimed again meanwhile
            if owner is not None and owner[0] != self.node_name and \
                    (mine is None or mine < owner[1]):
                self._close(session, owner[0])
            elif owner is None or owner[0] != self.node_name or mine is None:
                self.reclaimed += 1
                self.registry._claim(session)

        def failed(f: Any) -> None:
            if f.check(MetadataUnavailable):
                self.log.warn("cluster: cannot check the owner of client id {client_id!r}: "
                              "{reason}", client_id=key.client_id, reason=f.getErrorMessage())
            else:
                self.log.failure("cluster: checking the owner of client id {client_id!r} "
                                 "failed", f, client_id=key.client_id)
        return self.metadata.owner(key.mountpoint, key.client_id).addCallbacks(answered,
                                                                               failed)

    def _close(self, session: Any, owner: str) -> None:
        self.closed += 1
        broker = self.broker
        conn = session.conn
        session.detach()
        conn.session_taken_over()
        self.registry.subs.release(session.key)  # the owner keeps the stored copy
        broker.discard_session(session, "gone")
        broker.flush()
        self.registry.epochs.pop(session.key, None)
        self.log.info("cluster: client {client_id!r} is owned by node {owner} since the "
                      "split; connection here closed", client_id=session.key.client_id,
                      owner=owner)
