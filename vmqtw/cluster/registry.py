"""The client-id registry across nodes: one connection per client id in the cluster.

Every CONNECT that opens a session on this node claims the client id in the metadata
(:meth:`~vmqtw.cluster.metadata.IMetadata.claim`, one engine round trip). The claim
returns the previous owner and a new epoch; when the previous owner is another node,
this node sends it a ``TAKEOVER`` record over the vmq link. That node closes its
client's connection (MQTT 5.0: DISCONNECT 0x8E "session taken over", the will as for a
local takeover), drops the session, and answers ``TAKEOVER_DONE``.

A CONNECT with clean session 0 / clean start 0 claims earlier, right after
authentication (:class:`RegistrationGate`), and sends a ``HANDOVER`` instead: the
previous owner moves the persistent session here (:mod:`vmqtw.cluster.migrate`). With
``coordinate_registrations = on`` (the default) the CONNACK waits for it, at most
``remote_enqueue_timeout``; with ``off`` it does not wait for the claim either.

When the previous owner is dead (not a live member), or is this node but the session
is not here (the node restarted), the session's subscriptions are read from the
metadata (:mod:`vmqtw.cluster.session_subs`): the session resumes with them (CONNACK
``session present`` = 1, routes announced at once), its queue is lost with the dead
node. If the metadata does not answer that read, the CONNECT is refused ("server
unavailable") under ``allow_register_during_netsplit = off``, and starts fresh (logged)
under ``on`` or with ``coordinate_registrations = off`` (the CONNACK does not wait).

Fencing: a node ignores a takeover whose epoch is not larger than the epoch of its own
claim for that client id (the client reconnected here after the other node's claim).
"""
from __future__ import annotations

from typing import Any, Mapping

from twisted.internet.defer import Deferred

from vmqtw.auth.api import Error, Ok
from vmqtw.auth.chain import CHAIN_EXHAUSTED
from vmqtw.cluster.codec import (
    Handover, Record, SessionAck, SessionMsg, SessionState, Takeover, TakeoverDone,
)
from vmqtw.cluster.metadata import Claim, MetadataUnavailable
from vmqtw.cluster.migrate import Migrator
from vmqtw.cluster.netsplit import NETSPLIT
from vmqtw.cluster.session_subs import SessionSubscriptions
from vmqtw.core.values import SessionKey
from vmqtw.logs import Logger

#: TAKEOVER_DONE status values.
DONE = 0
STALE = 1

#: What :meth:`ClientRegistry._claim_early` fires with when the CONNECT must be refused.
_REFUSE = "refuse"


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
        #: ``coordinate_registrations``: the CONNACK waits for a moving session.
        self.coordinate: bool = broker.config.cluster.coordinate_registrations
        #: Client ids claimed by :meth:`registering` in this reactor turn: the session
        #: that opens for them is not claimed a second time.
        self.claimed_early: set[SessionKey] = set()
        #: Moves persistent sessions between this node and its peers.
        self.migrator = Migrator(broker, metadata, links, self.next_ref)
        #: Keeps this node's persistent sessions' subscriptions in the metadata.
        self.subs = SessionSubscriptions(broker, metadata)
        self.migrator.subs = self.subs
        self.allow_register: bool = broker.config.cluster.allow_register_during_netsplit

    def next_ref(self) -> int:
        """A new ref for a ``TAKEOVER`` or ``HANDOVER`` record."""
        self._ref += 1
        return self._ref

    def attach(self) -> None:
        """Start observing the broker's sessions."""
        self.broker.session_observers.append(self.session_event)
        self.subs.attach()
        remote = self.broker.remote
        if remote is not None and hasattr(remote, "session_subs"):
            remote.session_subs = self.subs

    # -- this node's sessions ---------------------------------------------------

    def session_event(self, event: str, session: Any) -> None:
        """Broker session observer: claim on register / wakeup, forget on the end."""
        if event in ("register", "wakeup"):
            if session.conn is not None and session.key not in self.claimed_early:
                self._claim(session)
        elif event in ("gone", "expired"):
            self.epochs.pop(session.key, None)

    def _claim(self, session: Any) -> None:
        key = session.key
        d = self.metadata.claim(key.mountpoint, key.client_id)

        def claimed(claim: Claim) -> None:
            previous = claim.previous
            self.subs.claimed(session, previous)
            if self.broker.sessions.get(key) is not session:
                return  # gone meanwhile (or taken over by a later CONNECT here)
            self.epochs[key] = claim.epoch
            if previous is None or previous == self.node_name:
                return
            link = self.links.get(previous)
            if link is None:
                # A dead or unknown node: nothing to take over (its session is lost).
                return
            self.takeovers_sent += 1
            link.send(Takeover(self.next_ref(), key.mountpoint, key.client_id, claim.epoch))

        def failed(f: Any) -> None:
            self.claim_errors += 1
            if f.check(MetadataUnavailable):
                self.log.warn("cluster: cannot claim client id {client_id!r}: {reason}",
                              client_id=key.client_id, reason=f.getErrorMessage())
            else:
                self.log.failure("cluster: claiming client id {client_id!r} failed", f,
                                 client_id=key.client_id)
        d.addCallbacks(claimed, failed)

    # -- a CONNECT with clean session 0 ----------------------------------------------

    def registering(self, result: Any, mountpoint: str, client_id: str) -> Any:
        """The authentication ``result`` of a CONNECT with clean session 0: once it
        is a success, claim the client id and have its previous owner hand the
        session over. Returns ``result``, or (``coordinate_registrations = on``) a
        Deferred firing with it once the session is here or will not come."""
        if not isinstance(result, Ok) and not (
                isinstance(result, Error) and result.reason == CHAIN_EXHAUSTED):
            return result  # refused: nothing moves
        key = SessionKey(mountpoint, client_id)
        d = self._claim_early(key)
        if not self.coordinate:
            self._mark(key)
            return result

        def arrived(outcome: Any) -> Any:
            self._mark(key)
            if outcome is _REFUSE:
                return Error(NETSPLIT)
            return result
        return d.addCallback(arrived)

    def _mark(self, key: SessionKey) -> None:
        # The session opens in this reactor turn (the CONNECT code runs on from the
        # callback) or not at all; a later CONNECT claims as usual.
        self.claimed_early.add(key)
        self.broker.clock.callLater(0, self.claimed_early.discard, key)

    def _claim_early(self, key: SessionKey) -> Deferred[Any]:
        d = self.metadata.claim(key.mountpoint, key.client_id)

        def claimed(claim: Claim) -> Any:
            self.epochs[key] = claim.epoch
            previous = claim.previous
            if previous is None:
                return False
            if previous == self.node_name:
                if key in self.broker.sessions:
                    return False
                return self._restore(key, previous)  # this node was restarted
            if previous not in self.links:
                return self._restore(key, previous)
            self.takeovers_sent += 1
            return self.migrator.request(previous, key, claim.epoch)

        def failed(f: Any) -> bool:
            self.claim_errors += 1
            self.log.warn("cluster: cannot claim client id {client_id!r}: {reason}",
                          client_id=key.client_id, reason=f.getErrorMessage())
            return False
        return d.addCallbacks(claimed, failed)

    def _restore(self, key: SessionKey, previous: str) -> Deferred[Any]:
        """The session of ``key`` was on ``previous``, which is dead (or is this node,
        restarted): resume it with the subscriptions stored in the metadata."""
        def restored(found: bool) -> bool:
            if found:
                self.log.info("cluster: client {client_id!r} was on node {peer}, which is "
                              "gone: its subscriptions are restored here, its queue is "
                              "lost", client_id=key.client_id, peer=previous)
            return found

        def failed(f: Any) -> Any:
            reason = f.getErrorMessage() if f.check(MetadataUnavailable) else repr(f.value)
            if self.coordinate and not self.allow_register:
                self.log.warn("cluster: cannot read the subscriptions of client "
                              "{client_id!r} (node {peer} is gone): {reason}; CONNECT "
                              "refused", client_id=key.client_id, peer=previous,
                              reason=reason)
                return _REFUSE
            self.log.warn("cluster: cannot read the subscriptions of client {client_id!r} "
                          "(node {peer} is gone): {reason}; its session starts fresh here",
                          client_id=key.client_id, peer=previous, reason=reason)
            return False
        return self.subs.restore(key).addCallbacks(restored, failed)

    # -- other nodes' requests -------------------------------------------------------

    def control(self, peer: str, record: Record) -> None:
        """A control record from ``peer`` (takeover, a moving session, answers)."""
        kind = type(record)
        if kind is SessionMsg:
            self.migrator.message(peer, record)  # type: ignore[arg-type]
        elif kind is SessionState:
            self.migrator.session(peer, record)  # type: ignore[arg-type]
        elif kind is SessionAck:
            self.migrator.acked(peer, record)  # type: ignore[arg-type]
        elif kind is Takeover or kind is Handover:
            self._takeover(peer, record)  # type: ignore[arg-type]
        elif kind is TakeoverDone:
            assert isinstance(record, TakeoverDone)
            self.takeovers_done += 1
            self.migrator.takeover_done(peer, record)
            self.log.debug("cluster: node {peer} gave up client {client_id!r} (status "
                           "{status})", peer=peer, client_id=record.client_id,
                           status=record.status)

    def _takeover(self, peer: str, record: Takeover | Handover) -> None:
        key = SessionKey(record.mountpoint, record.client_id)
        mine = self.epochs.get(key)
        status = DONE
        if mine is not None and mine >= record.epoch:
            status = STALE  # our claim is the newer one: the client is ours
        else:
            broker = self.broker
            session = broker.sessions.get(key)
            self.epochs.pop(key, None)
            self.subs.release(key)  # the other node owns the stored subscriptions now
            if session is not None and session.persistent and type(record) is Handover:
                self.migrator.hand_over(peer, record.ref, session, record.epoch)
                self.log.info("cluster: client {client_id!r} connected to node {peer}; "
                              "session moving there", client_id=record.client_id, peer=peer)
                return  # the SESSION record answers
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


#: The authorizer methods a :class:`RegistrationGate` hands straight to the inner one.
_PASSED_THROUGH = ("publish", "publish_m5", "subscribe", "subscribe_m5")


class RegistrationGate:
    """Wraps a listener's authorizer: a CONNECT with clean session 0 that the
    authorizer accepts is claimed and its session handed over before the CONNECT
    goes on (:meth:`ClientRegistry.registering`). Every other attribute is the
    inner authorizer's."""

    def __init__(self, inner: Any, registry: ClientRegistry) -> None:
        self.inner = inner
        self.registry = registry
        # The per-packet hooks are the inner ones, bound once: through __getattr__
        # each PUBLISH would first fail an attribute lookup (an AttributeError
        # raised and caught in C), a measurable share of a forwarded publish.
        for name in _PASSED_THROUGH:
            method = getattr(inner, name, None)
            if method is not None:
                setattr(self, name, method)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def register(self, request: Any, anonymous_override: bool = False) -> Any:
        d = self.inner.register(request, anonymous_override)
        if request.clean_start:
            return d
        return d.addCallback(self.registry.registering, request.mountpoint,
                             request.client_id)

    def verify(self, request: Any) -> Any:
        d = self.inner.verify(request)
        if request.clean_start:
            return d
        return d.addCallback(self.registry.registering, request.mountpoint,
                             request.client_id)
