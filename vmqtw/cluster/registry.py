"""The client-id registry across nodes: one connection per client id in the cluster.

Every CONNECT that opens a session on this node claims the client id in the metadata
(:meth:`~vmqtw.cluster.metadata.IMetadata.claim`, one engine round trip, not waited
for by the CONNACK: VerneMQ's ``coordinate_registrations = off`` behaviour). The claim
returns the previous owner and a new epoch; when the previous owner is another node,
this node sends it a ``TAKEOVER`` record over the vmq link. That node closes its
client's connection (MQTT 5.0: DISCONNECT 0x8E "session taken over", the will as for a
local takeover), drops the session, and answers ``TAKEOVER_DONE``.

Fencing: a node ignores a takeover whose epoch is not larger than the epoch of its own
claim for that client id (the client reconnected here after the other node's claim).

Not done yet: a persistent session's queued messages do not move with it; the new
node starts the session fresh (as VerneMQ does when the previous owner is dead).
"""
from __future__ import annotations

from typing import Any, Mapping

from vmqtw.cluster.codec import Record, Takeover, TakeoverDone
from vmqtw.cluster.metadata import Claim, MetadataUnavailable
from vmqtw.core.values import SessionKey
from vmqtw.logs import Logger

#: TAKEOVER_DONE status values.
DONE = 0
STALE = 1


class ClientRegistry:
    """Claims client ids for this node's sessions and honours other nodes' takeovers.

    :param broker: the local broker (this registry observes its sessions).
    :param metadata: an ``IMetadata`` provider.
    :param links: peer node name -> outgoing link (``send(record)``).
    """

    log = Logger()

    def __init__(self, broker: Any, metadata: Any, links: Mapping[str, Any]) -> None:
        self.broker = broker
        self.metadata = metadata
        self.node_name: str = metadata.node_name
        self.links = links
        #: Session key -> the epoch of this node's claim for it.
        self.epochs: dict[SessionKey, int] = {}
        self._ref = 0
        self.takeovers_sent = 0
        self.takeovers_done = 0
        self.claim_errors = 0

    def attach(self) -> None:
        """Start observing the broker's sessions."""
        self.broker.session_observers.append(self.session_event)

    # -- this node's sessions ---------------------------------------------------

    def session_event(self, event: str, session: Any) -> None:
        """Broker session observer: claim on register / wakeup, forget on the end."""
        if event in ("register", "wakeup"):
            if session.conn is not None:
                self._claim(session)
        elif event in ("gone", "expired"):
            self.epochs.pop(session.key, None)

    def _claim(self, session: Any) -> None:
        key = session.key
        d = self.metadata.claim(key.mountpoint, key.client_id)

        def claimed(claim: Claim) -> None:
            if self.broker.sessions.get(key) is not session:
                return  # gone meanwhile (or taken over by a later CONNECT here)
            self.epochs[key] = claim.epoch
            previous = claim.previous
            if previous is None or previous == self.node_name:
                return
            link = self.links.get(previous)
            if link is None:
                # A dead or unknown node: nothing to take over (its session is lost).
                return
            self._ref += 1
            self.takeovers_sent += 1
            link.send(Takeover(self._ref, key.mountpoint, key.client_id, claim.epoch))

        def failed(f: Any) -> None:
            self.claim_errors += 1
            if f.check(MetadataUnavailable):
                self.log.warn("cluster: cannot claim client id {client_id!r}: {reason}",
                              client_id=key.client_id, reason=f.getErrorMessage())
            else:
                self.log.failure("cluster: claiming client id {client_id!r} failed", f,
                                 client_id=key.client_id)
        d.addCallbacks(claimed, failed)

    # -- other nodes' requests -------------------------------------------------------

    def control(self, peer: str, record: Record) -> None:
        """A control record from ``peer`` (takeover or its answer)."""
        if type(record) is Takeover:
            self._takeover(peer, record)
        elif type(record) is TakeoverDone:
            self.takeovers_done += 1
            self.log.debug("cluster: node {peer} gave up client {client_id!r} (status "
                           "{status})", peer=peer, client_id=record.client_id,
                           status=record.status)

    def _takeover(self, peer: str, record: Takeover) -> None:
        key = SessionKey(record.mountpoint, record.client_id)
        mine = self.epochs.get(key)
        status = DONE
        if mine is not None and mine >= record.epoch:
            status = STALE  # our claim is the newer one: the client is ours
        else:
            broker = self.broker
            session = broker.sessions.get(key)
            if session is not None:
                conn = session.conn
                if conn is not None:
                    session.detach()
                    conn.session_taken_over()
                broker.discard_session(session, "gone")
                broker.flush()
                self.log.info("cluster: client {client_id!r} connected to node {peer}; "
                              "session here closed", client_id=record.client_id, peer=peer)
            self.epochs.pop(key, None)
        link = self.links.get(peer)
        if link is not None:
            link.send(TakeoverDone(record.ref, record.mountpoint, record.client_id,
                                   record.epoch, status))
