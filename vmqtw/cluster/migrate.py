"""Persistent sessions moving between cluster nodes: on takeover, and ``cluster leave``.

A CONNECT with clean session 0 (MQTT 5.0: clean start 0) on node B for a client id
that node A owns makes B send A a ``HANDOVER`` (a ``TAKEOVER`` asking for the session).
A closes its client's connection if it has one (5.0: DISCONNECT 0x8E), takes the
session out of its broker and sends it over the vmq link, in order:

- one ``SESSION_MSG`` per message: first the inflight ones (QoS 1/2 sent and not
  acknowledged, under their packet ids; a QoS 2 message whose PUBREC came is
  "PUBREL pending"), then the queued ones; topic, payload, QoS, retain flag, the
  forwarded MQTT 5 properties, what is left of the expiry interval and the
  subscription identifiers;
- one ``SESSION`` record that counts them and carries the rest: subscriptions (with
  their options and identifiers), the session expiry interval, the user name and
  listener, the incoming QoS 2 packet ids awaiting PUBREL.

B adopts the session (writing it through its store like any enqueue), answers
``SESSION_ACK``, and only then A forgets its copy (its store included). If B does not
acknowledge within ``remote_enqueue_timeout`` or reports a count mismatch, A puts the
session back, offline: nothing is lost, and the next CONNECT moves it again.

With ``coordinate_registrations = on`` (VerneMQ's default) B's CONNACK waits for the
session (then ``session present`` = 1) or for A's answer that it has none, at most
``remote_enqueue_timeout``; after that B answers as VerneMQ does with a dead owner:
a fresh session (``session present`` = 0, logged). With ``off`` B answers at once and
the moved session's subscriptions and messages join the client's session when they
arrive (the same happens when they arrive after the timeout).

``cluster leave`` pushes each offline persistent session to another node the same way,
unasked (:meth:`Migrator.push`).
"""
from __future__ import annotations

import struct
from typing import Any, Callable, Mapping, NamedTuple

from twisted.internet.defer import Deferred, succeed

from vmqtw.cluster.codec import (
    PUSH_REF, Handover, Record, SessionAck, SessionMsg, SessionState, TakeoverDone,
)
from vmqtw.codec.packets import PUBLISH, SubOptions
from vmqtw.codec.properties import decode_properties, encode_properties
from vmqtw.core import handover
from vmqtw.core.message import FORWARDED, Message
from vmqtw.core.session import Inflight, Session
from vmqtw.core.values import QUEUED, DeliveryState, SessionKey, WAIT_PUBCOMP
from vmqtw.logs import Logger

#: ``SESSION_ACK`` status values.
ADOPTED = 0
INCOMPLETE = 1  # fewer SESSION_MSG records arrived than the SESSION record counts

_HEAD = struct.Struct(">BdHH")     # flags, expiry interval, incoming QoS 2 ids, subs
_STR = struct.Struct(">H")
_SUB = struct.Struct(">BI")        # options byte, subscription identifier (0: none)
_NO_EXPIRY = 1
_HAS_USER = 2


# -- the session's state, without its messages --------------------------------------

def _put_str(parts: list[bytes], text: str) -> None:
    data = text.encode()
    parts.append(_STR.pack(len(data)))
    parts.append(data)


def encode_state(session: Session) -> bytes:
    """The ``SESSION`` record's state: expiry interval, user name, listener, the
    incoming QoS 2 packet ids and the subscriptions."""
    expiry = session.expiry_interval
    flags = (_NO_EXPIRY if expiry is None else 0) | \
        (_HAS_USER if session.username is not None else 0)
    pids = sorted(session.incoming_qos2)
    parts = [_HEAD.pack(flags, expiry or 0.0, len(pids), len(session.subscriptions))]
    parts.append(struct.pack(f">{len(pids)}H", *pids))
    _put_str(parts, session.username or "")
    _put_str(parts, session.listener or "")
    for topic_filter, o in session.subscriptions.items():
        _put_str(parts, topic_filter)
        options = o.qos | o.no_local << 2 | o.retain_as_published << 3 | \
            o.retain_handling << 4
        parts.append(_SUB.pack(options, session.sub_ids.get(topic_filter, 0)))
    return b"".join(parts)


class State(NamedTuple):
    """What :func:`decode_state` returns."""

    expiry_interval: float | None
    username: str | None
    listener: str | None
    incoming_qos2: list[int]
    #: filter -> (options, subscription identifier or 0)
    subscriptions: dict[str, tuple[SubOptions, int]]


def decode_state(data: bytes) -> State:
    """The inverse of :func:`encode_state` (``ValueError`` / ``struct.error`` when
    malformed)."""
    flags, expiry, npids, nsubs = _HEAD.unpack_from(data)
    p = _HEAD.size
    pids = list(struct.unpack_from(f">{npids}H", data, p))
    p += 2 * npids

    def text() -> str:
        nonlocal p
        (n,) = _STR.unpack_from(data, p)
        p += 2 + n
        if p > len(data):
            raise ValueError("truncated session state")
        return data[p - n:p].decode()

    username = text()
    listener = text()
    subs: dict[str, tuple[SubOptions, int]] = {}
    for _ in range(nsubs):
        topic_filter = text()
        options, sub_id = _SUB.unpack_from(data, p)
        p += _SUB.size
        subs[topic_filter] = (SubOptions(options & 3, bool(options & 4), bool(options & 8),
                                         options >> 4 & 3), sub_id)
    return State(None if flags & _NO_EXPIRY else expiry,
                 username if flags & _HAS_USER else None, listener or None, pids, subs)


# -- messages --------------------------------------------------------------------------

def message_record(ref: int, message: Message, qos: int, retain: bool,
                   sub_ids: tuple[int, ...], now: float, packet_id: int = 0,
                   state: int = QUEUED) -> SessionMsg:
    """The ``SESSION_MSG`` of one queued or inflight message."""
    props = message.properties
    kept: dict[str, Any] = {k: props[k] for k in FORWARDED if k in props}
    if message.expires_at is not None:
        kept["message_expiry_interval"] = message.remaining_expiry(now)
    if sub_ids:
        kept["subscription_identifier"] = list(sub_ids)
    encoded = encode_properties(kept, PUBLISH) if kept else b""
    return SessionMsg(ref, message.topic, message.payload, qos, retain, encoded, packet_id,
                      int(state))


def from_message_record(record: SessionMsg, now: float) -> tuple[Message, tuple[int, ...]]:
    """The message a ``SESSION_MSG`` carries (its expiry restarted at ``now``) and its
    subscription identifiers."""
    props: dict[str, Any] = {}
    if record.properties:
        props, _ = decode_properties(record.properties, 0, PUBLISH)
    sub_ids = tuple(props.pop("subscription_identifier", ()))
    message = Message(record.topic, record.payload, record.qos, record.retain, props)
    message.start_expiry(now)
    return message, sub_ids


def export_records(session: Session, ref: int, epoch: int, now: float) -> list[Record]:
    """Everything that moves with ``session``: its inflight messages, then its
    queue (QoS 1/2 only; expired messages stay behind), then the ``SESSION`` record."""
    records: list[Record] = []
    for pid, entry in session.inflight.items():
        message = entry.message
        if entry.state != WAIT_PUBCOMP and message.expires_at is not None and \
                now >= message.expires_at:
            continue
        records.append(message_record(ref, message, entry.qos, entry.retain, entry.sub_ids,
                                      now, pid, entry.state))
    for item in session.queue:
        message, qos, retain = item[0], item[1], item[2]
        if not qos or (message.expires_at is not None and now >= message.expires_at):
            continue
        records.append(message_record(ref, message, qos, retain,
                                      item[3] if len(item) > 3 else (), now))
    records.append(SessionState(ref, session.mountpoint, session.client_id, epoch,
                                len(records), encode_state(session)))
    return records


# -- the protocol ------------------------------------------------------------------------

class _Wanted(NamedTuple):
    key: SessionKey
    peer: str
    epoch: int
    done: Deferred[bool]
    call: Any


class _Sent(NamedTuple):
    session: Session
    messages: int
    done: Deferred[int | None] | None
    call: Any


class Migrator:
    """Both ends of a session's move for one node (see the module docstring).

    :param broker: the local broker.
    :param metadata: an ``IMetadata`` provider (a pushed session's client id is
        claimed by the node that receives it).
    :param links: peer node name -> outgoing link (``send(record)``).
    :param next_ref: allocates the refs of ``HANDOVER`` records (shared with the
        registry's ``TAKEOVER`` refs, as both are answered by ``TAKEOVER_DONE``).
    """

    log = Logger()

    def __init__(self, broker: Any, metadata: Any, links: Mapping[str, Any],
                 next_ref: Callable[[], int]) -> None:
        self.broker = broker
        self.metadata = metadata
        self.links = links
        self.next_ref = next_ref
        cluster = broker.config.cluster
        #: ``remote_enqueue_timeout``: how long B waits for a session and A for the ack.
        self.timeout: float = cluster.remote_enqueue_timeout
        #: Handovers this node asked for: ref -> what waits for the answer.
        self.wanted: dict[int, _Wanted] = {}
        #: ``SESSION_MSG`` records received before their ``SESSION``: (peer, ref) -> them.
        self.arriving: dict[tuple[str, int], list[SessionMsg]] = {}
        #: Sessions sent, waiting for ``SESSION_ACK``: (peer, ref) -> the session.
        self.sent: dict[tuple[str, int], _Sent] = {}
        self._push = 0
        self.sessions_in = self.sessions_out = 0
        self.messages_in = self.messages_out = 0
        self.moves_failed = 0
        self.handover_timeouts = 0
        #: The registry's :class:`~vmqtw.cluster.session_subs.SessionSubscriptions`:
        #: a session that leaves stops being written by this node.
        self.subs: Any = None

    # -- the new owner (B) ---------------------------------------------------------

    def request(self, peer: str, key: SessionKey, epoch: int) -> Deferred[bool]:
        """Ask ``peer`` for the session ``key`` (claimed here with ``epoch``); fires
        with True once it is here, False when ``peer`` had none or did not answer
        within the timeout (the client then gets a fresh session)."""
        link = self.links.get(peer)
        if link is None:
            return succeed(False)
        ref = self.next_ref()
        done: Deferred[bool] = Deferred()
        call = self.broker.clock.callLater(self.timeout, self._gave_up, ref)
        self.wanted[ref] = _Wanted(key, peer, epoch, done, call)
        link.send(Handover(ref, key.mountpoint, key.client_id, epoch))
        return done

    def _gave_up(self, ref: int) -> None:
        wanted = self.wanted.pop(ref, None)
        if wanted is None:
            return
        self.handover_timeouts += 1
        self.log.warn("cluster: node {peer} did not hand over the session of client "
                      "{client_id!r} within {timeout}s; it starts fresh here",
                      peer=wanted.peer, client_id=wanted.key.client_id, timeout=self.timeout)
        wanted.done.callback(False)

    def takeover_done(self, peer: str, record: TakeoverDone) -> bool:
        """A ``TAKEOVER_DONE``: the answer to a handover when ``peer`` had no
        persistent session (or the claim was stale). False if it answers no handover."""
        wanted = self.wanted.get(record.ref)
        if wanted is None or wanted.peer != peer or wanted.epoch != record.epoch:
            return False
        del self.wanted[record.ref]
        wanted.call.cancel()
        wanted.done.callback(False)
        return True

    def message(self, peer: str, record: SessionMsg) -> None:
        """One ``SESSION_MSG``: kept until its ``SESSION`` arrives."""
        self.arriving.setdefault((peer, record.ref), []).append(record)

    def session(self, peer: str, record: SessionState) -> None:
        """A ``SESSION`` record: the moved session is complete, adopt it and answer."""
        messages = self.arriving.pop((peer, record.ref), [])
        key = SessionKey(record.mountpoint, record.client_id)
        status = ADOPTED
        if len(messages) != record.messages:
            # Records were lost on the way (the link's buffer overflowed): the
            # sender keeps its copy, the next CONNECT asks again.
            status = INCOMPLETE
            self.moves_failed += 1
            self.log.warn("cluster: session of client {client_id!r} from node {peer} "
                          "arrived incomplete ({got} of {count} messages); left there",
                          client_id=record.client_id, peer=peer, got=len(messages),
                          count=record.messages)
        else:
            try:
                state = decode_state(record.state)
            except (ValueError, struct.error, UnicodeDecodeError):
                status = INCOMPLETE
                self.log.warn("cluster: undecodable session of client {client_id!r} "
                              "from node {peer}", client_id=record.client_id, peer=peer)
            else:
                self._take(key, state, messages)
                self.sessions_in += 1
                self.messages_in += len(messages)
                if record.ref & PUSH_REF:
                    self._claim_pushed(key)
        link = self.links.get(peer)
        if link is not None:
            link.send(SessionAck(record.ref, status))
        wanted = self.wanted.get(record.ref)
        if not record.ref & PUSH_REF and wanted is not None and wanted.peer == peer:
            del self.wanted[record.ref]
            wanted.call.cancel()
            wanted.done.callback(status == ADOPTED)
        self.broker.flush()

    def _take(self, key: SessionKey, state: State, messages: list[SessionMsg]) -> None:
        broker = self.broker
        now = broker.clock.seconds()
        existing = broker.sessions.get(key)
        if existing is not None:
            self._merge(existing, state, messages, now)
            return
        session = Session(broker.session_env, key, True, state.expiry_interval)
        session.username = state.username
        session.listener = state.listener
        for topic_filter, (options, sub_id) in state.subscriptions.items():
            session.subscriptions[topic_filter] = options
            if sub_id:
                session.sub_ids[topic_filter] = sub_id
        if state.incoming_qos2:
            session.incoming_qos2 = set(state.incoming_qos2)
        for record in messages:
            message, sub_ids = from_message_record(record, now)
            if record.state == QUEUED:
                session.queue_for_append().append(
                    (message, record.qos, record.retain, sub_ids) if sub_ids
                    else (message, record.qos, record.retain))
            else:
                session.inflight[record.packet_id] = Inflight(
                    message, record.qos, record.retain, DeliveryState(record.state), now,
                    sub_ids)
        handover.adopt(broker, session)

    def _merge(self, session: Session, state: State, messages: list[SessionMsg],
               now: float) -> None:
        """The session arrived after a session for the client id began here (the
        CONNACK did not wait, or waited too long): its subscriptions join, its
        messages are delivered as new ones (a QoS 2 message past PUBREC was delivered
        already and is dropped)."""
        broker = self.broker
        for topic_filter, (options, sub_id) in state.subscriptions.items():
            if topic_filter not in session.subscriptions:
                if sub_id:
                    session.sub_ids[topic_filter] = sub_id
                handover.add_subscription(broker, session, topic_filter, options)
        for record in messages:
            if record.state == WAIT_PUBCOMP:
                continue
            message, sub_ids = from_message_record(record, now)
            session.deliver(message, record.qos, record.retain, sub_ids)
        if self.subs is not None:
            self.subs.changed(session)

    def _claim_pushed(self, key: SessionKey) -> None:
        """A session pushed here by a leaving node: this node owns its client id now
        (nothing to take over: the sender has let it go)."""
        def failed(f: Any) -> None:
            self.log.warn("cluster: cannot claim client id {client_id!r} of a moved "
                          "session: {reason}", client_id=key.client_id,
                          reason=f.getErrorMessage())
        self.metadata.claim(key.mountpoint, key.client_id).addErrback(failed)

    # -- the previous owner (A) ------------------------------------------------------

    def hand_over(self, peer: str, ref: int, session: Session, epoch: int) -> None:
        """Answer ``peer``'s ``HANDOVER`` for the persistent ``session``: close its
        client (session taken over), take it out and send it."""
        conn = session.conn
        if conn is not None:
            session.detach()
            conn.session_taken_over()
        session.cancel_will()  # its client is back (on the other node)
        self._send(peer, ref, session, epoch, None)

    def push(self, peer: str, session: Session) -> Deferred[int | None]:
        """Move the offline ``session`` to ``peer`` unasked (``cluster leave``); fires
        with the number of its messages once ``peer`` holds it, None if it was put
        back here."""
        self._push += 1
        done: Deferred[int | None] = Deferred()
        self._send(peer, PUSH_REF | self._push, session, 0, done)
        return done

    def _send(self, peer: str, ref: int, session: Session, epoch: int,
              done: Deferred[int | None] | None) -> None:
        broker = self.broker
        link = self.links.get(peer)
        if link is None:
            if done is not None:
                done.callback(None)
            return
        if self.subs is not None:
            self.subs.release(session.key)
        handover.take_out(broker, session)
        records = export_records(session, ref, epoch, broker.clock.seconds())
        for record in records:
            link.send(record)
        call = broker.clock.callLater(self.timeout, self._not_acked, peer, ref)
        self.sent[(peer, ref)] = _Sent(session, len(records) - 1, done, call)
        broker.flush()

    def _not_acked(self, peer: str, ref: int) -> None:
        sent = self.sent.pop((peer, ref), None)
        if sent is not None:
            self.log.warn("cluster: node {peer} did not confirm the session of client "
                          "{client_id!r} within {timeout}s; kept here", peer=peer,
                          client_id=sent.session.client_id, timeout=self.timeout)
            self._failed(sent)

    def _failed(self, sent: _Sent) -> None:
        self.moves_failed += 1
        handover.put_back(self.broker, sent.session)
        if sent.done is not None:
            sent.done.callback(None)

    def acked(self, peer: str, record: SessionAck) -> None:
        """``SESSION_ACK``: forget the session sent (or put it back if refused)."""
        sent = self.sent.pop((peer, record.ref), None)
        if sent is None:
            return
        sent.call.cancel()
        if record.status != ADOPTED:
            self._failed(sent)
            return
        handover.forget(self.broker, sent.session)
        self.sessions_out += 1
        self.messages_out += sent.messages
        self.log.info("cluster: session of client {client_id!r} moved to node {peer} "
                      "({count} messages)", client_id=sent.session.client_id, peer=peer,
                      count=sent.messages)
        if sent.done is not None:
            sent.done.callback(sent.messages)

    def link_lost(self, peer: str) -> None:
        """``peer`` is down: what was sent to it comes back, what was asked of it
        starts fresh."""
        for (name, ref) in [k for k in self.sent if k[0] == peer]:
            sent = self.sent.pop((name, ref))
            sent.call.cancel()
            self._failed(sent)
        for ref in [r for r, w in self.wanted.items() if w.peer == peer]:
            wanted = self.wanted.pop(ref)
            wanted.call.cancel()
            wanted.done.callback(False)
        for k in [k for k in self.arriving if k[0] == peer]:
            del self.arriving[k]
