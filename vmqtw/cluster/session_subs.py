"""Persistent sessions' subscriptions kept in the metadata, so that a client whose node
died resumes its subscriptions on another node.

The node that holds a persistent session (clean session 0, or MQTT 5.0 session expiry
> 0) *owns* its copy in the metadata: ``(mountpoint, client id) -> {filter: subinfo}``
(:meth:`~vmqtw.cluster.metadata.IMetadata.store_subscriptions`). Only the owner writes
it, in order, once per reactor turn and per client id (several SUBSCRIBEs in one turn
make one write):

- a session that opens here (``register``: a CONNECT, a session moved here, one put
  back) replaces the copy with its own subscriptions;
- a clean session whose client id another node owned before deletes the copy (a clean
  start ends the previous session, wherever it was; :meth:`SessionSubscriptions.claimed`,
  told by the registry once the claim answered): a client that reconnects to the same
  node, or a new client id, costs no write;
- SUBSCRIBE / UNSUBSCRIBE of an owned session write the difference (the broker tells
  the router, :meth:`ClusterRouter.subscriptions_changed`); the SUBACK does not wait;
- a session that ends here (expiry, a clean start on this node, ``session
  disconnect --cleanup``) deletes the copy;
- a session that leaves for another node (takeover, ``cluster leave``) is
  :meth:`released <SessionSubscriptions.release>`: the copy stays, the new owner
  rewrites it when the session opens there.

A write that fails (engine unreachable) is logged and retried: at the next change of
that session, when the node re-announces itself to the engine (after a Redis restart
every owned session is written again), and by :meth:`SessionSubscriptions.retry`,
which the node calls on its readiness checks.

The other direction, :meth:`SessionSubscriptions.restore`: a CONNECT with clean session
0 whose previous owner is dead reads the copy and the session resumes with it (see
:mod:`vmqtw.cluster.registry`). The queue was on the dead node: it is lost, as in
VerneMQ.
"""
from __future__ import annotations

import struct
from typing import Any

from twisted.internet.defer import Deferred

from vmqtw.cluster.metadata import MetadataUnavailable
from vmqtw.codec.packets import SubOptions
from vmqtw.core import handover
from vmqtw.core.session import Session
from vmqtw.core.values import SessionKey
from vmqtw.logs import Logger

_SUBINFO = struct.Struct(">BI")  # options byte, subscription identifier (0: none)


def encode_subinfo(options: SubOptions, sub_id: int = 0) -> bytes:
    """One subscription's value in the metadata: its options and identifier."""
    byte = options.qos | options.no_local << 2 | options.retain_as_published << 3 | \
        options.retain_handling << 4
    return _SUBINFO.pack(byte, sub_id)


def decode_subinfo(data: bytes) -> tuple[SubOptions, int]:
    """The inverse of :func:`encode_subinfo` (``struct.error`` when malformed)."""
    byte, sub_id = _SUBINFO.unpack(data)
    return SubOptions(byte & 3, bool(byte & 4), bool(byte & 8), byte >> 4 & 3), sub_id


def session_subinfo(session: Session) -> dict[str, bytes]:
    """``{filter: subinfo}`` of ``session``'s subscriptions."""
    ids = session.sub_ids
    return {f: encode_subinfo(o, ids.get(f, 0)) for f, o in session.subscriptions.items()}


def kept(session: Session) -> bool:
    """Whether ``session`` outlives its connection (its subscriptions are kept)."""
    return session.persistent and session.expiry_interval != 0


class SessionSubscriptions:
    """Writes this node's persistent sessions' subscriptions to the metadata and reads
    them back for a session whose node died (see the module docstring).

    :param broker: the local broker.
    :param metadata: an ``IMetadata`` provider.
    """

    log = Logger()

    def __init__(self, broker: Any, metadata: Any) -> None:
        self.broker = broker
        self.metadata = metadata
        #: Sessions whose copy this node writes.
        self.owned: dict[SessionKey, Session] = {}
        #: What the next flush writes, per client id: the filters that changed, or
        #: None to replace the whole copy (or delete it, for a session not owned).
        self.pending: dict[SessionKey, set[str] | None] = {}
        #: Client ids whose last write failed (rewritten whole by :meth:`retry`).
        self.failed: set[SessionKey] = set()
        self._flush_call: Any = None
        self.writes = 0
        self.errors = 0
        self.restored = 0
        watch = getattr(metadata, "watch_announce", None)
        if watch is not None:
            watch(self.resync)

    def attach(self) -> None:
        """Start observing the broker's sessions."""
        self.broker.session_observers.append(self.session_event)

    # -- what changes ------------------------------------------------------------

    def session_event(self, event: str, session: Any) -> None:
        """Broker session observer."""
        key = session.key
        if event == "register":
            if kept(session):
                self._own(session)
            elif key in self.owned:
                self._drop(key)
        elif event == "wakeup":
            if self.owned.get(key) is not session:
                self._own(session)
        elif event in ("gone", "expired"):
            if self.owned.get(key) is session:
                self._drop(key)

    def changed(self, session: Session, topic_filter: str | None = None) -> None:
        """A persistent ``session`` subscribed to or unsubscribed from
        ``topic_filter`` (None: maybe several filters)."""
        key = session.key
        if self.broker.sessions.get(key) is not session:
            return
        if self.owned.get(key) is not session:
            self._own(session)
            return
        if topic_filter is None:
            self._whole(key)
            return
        if key not in self.pending:
            self.pending[key] = {topic_filter}
            self._schedule()
        else:
            filters = self.pending[key]
            if filters is not None:
                filters.add(topic_filter)

    def claimed(self, session: Session, previous: str | None) -> None:
        """The CONNECT that opened ``session`` claimed its client id, which
        ``previous`` owned before: a clean session there deletes the stored copy
        (written by ``previous`` or by a node that died)."""
        if previous is None or previous == self.metadata.node_name or kept(session):
            return
        if session.key not in self.owned:
            self._whole(session.key)

    def release(self, key: SessionKey) -> None:
        """The session ``key`` leaves for another node: stop writing its copy, and do
        not delete it (the new owner rewrites it)."""
        self.owned.pop(key, None)
        self.pending.pop(key, None)
        self.failed.discard(key)

    def resync(self) -> None:
        """The engine may have lost everything (it was restarted, or this node was
        declared dead): write every kept session's subscriptions again."""
        for session in self.broker.sessions.values():
            if kept(session):
                self._own(session)
        self._retry_failed()

    def retry(self) -> None:
        """Write again what failed, if the engine answers now."""
        if self.failed and self.metadata.reachable:
            self._retry_failed()

    def _retry_failed(self) -> None:
        failed, self.failed = self.failed, set()
        for key in failed:
            self._whole(key)

    def _own(self, session: Session) -> None:
        """Write ``session``'s copy from now on, whole at first."""
        self.owned[session.key] = session
        self._whole(session.key)

    def _drop(self, key: SessionKey) -> None:
        """The session ended here: delete its copy."""
        self.owned.pop(key, None)
        self._whole(key)

    def _whole(self, key: SessionKey) -> None:
        self.pending[key] = None
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_call is None and self.pending:
            self._flush_call = self.broker.clock.callLater(0, self.flush)

    # -- writing -------------------------------------------------------------------

    def flush(self) -> None:
        """Write what changed since the last flush (one pipelined batch of engine
        commands; nothing waits for them)."""
        self._flush_call = None
        pending, self.pending = self.pending, {}
        meta = self.metadata
        for key, filters in pending.items():
            session = self.owned.get(key)
            mp, cid = key.mountpoint, key.client_id
            if session is None:
                self._write(key, None, meta.delete_session(mp, cid))
                continue
            subs = session.subscriptions
            ids = session.sub_ids
            if filters is None:
                self._write(key, session, meta.delete_session(mp, cid))
                if subs:
                    self._write(key, session, meta.store_subscriptions(
                        mp, cid, session_subinfo(session)))
                continue
            gone = [f for f in filters if f not in subs]
            if gone:
                self._write(key, session, meta.remove_subscriptions(mp, cid, gone))
            now = {f: encode_subinfo(subs[f], ids.get(f, 0)) for f in filters if f in subs}
            if now:
                self._write(key, session, meta.store_subscriptions(mp, cid, now))

    def _write(self, key: SessionKey, session: Session | None, d: Deferred[Any]) -> None:
        self.writes += 1

        def failed(f: Any) -> None:
            self.errors += 1
            if session is not None and self.owned.get(key) is not session:
                return  # released or ended meanwhile: not this node's to fix
            if not self.failed:
                reason = f.getErrorMessage() if f.check(MetadataUnavailable) \
                    else repr(f.value)
                self.log.warn("cluster: cannot store the subscriptions of client "
                              "{client_id!r}: {reason}; retrying",
                              client_id=key.client_id, reason=reason)
            self.failed.add(key)
        d.addErrback(failed)

    # -- reading (a dead owner's session) -----------------------------------------

    def restore(self, key: SessionKey) -> Deferred[bool]:
        """Read the stored subscriptions of ``key`` and make them this node's session:
        a new offline session (which the CONNECT resumes: session present), or, if a
        session for ``key`` opened here meanwhile, subscriptions added to it. Fires
        with whether there were any; fails with ``MetadataUnavailable``."""
        d = self.metadata.subscriptions(key.mountpoint, key.client_id)
        return d.addCallback(self._restored, key)

    def _restored(self, stored: dict[str, bytes], key: SessionKey) -> bool:
        subs: dict[str, tuple[SubOptions, int]] = {}
        for topic_filter, info in stored.items():
            try:
                subs[topic_filter] = decode_subinfo(info)
            except struct.error:
                self.log.warn("cluster: undecodable stored subscription {filter!r} of "
                              "client {client_id!r}; skipped", filter=topic_filter,
                              client_id=key.client_id)
        if not subs:
            return False
        broker = self.broker
        existing = broker.sessions.get(key)
        if existing is not None:
            if not kept(existing):
                return False  # a clean session opened meanwhile: it wins
            for topic_filter, (options, sub_id) in subs.items():
                if topic_filter not in existing.subscriptions:
                    if sub_id:
                        existing.sub_ids[topic_filter] = sub_id
                    handover.add_subscription(broker, existing, topic_filter, options)
            self.changed(existing)
        else:
            # The CONNECT that resumes it sets its expiry; until then, the broker's.
            session = Session(broker.session_env, key, True,
                              broker.config.persistent_client_expiration)
            for topic_filter, (options, sub_id) in subs.items():
                session.subscriptions[topic_filter] = options
                if sub_id:
                    session.sub_ids[topic_filter] = sub_id
            handover.adopt(broker, session)  # "register": owned, written again
        self.restored += 1
        broker.flush()
        return True
