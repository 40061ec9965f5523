"""A persistent session leaving this broker for another cluster node, or arriving.

:mod:`vmqtw.cluster.migrate` moves sessions between nodes (a takeover by a CONNECT on
another node, ``cluster leave``); these functions are what it needs from the core.  A
session that leaves is *taken out* (no longer routed to, timers stopped) but stays in
the store until the other node holds it: then it is *forgotten*; if the move fails it
is *put back*.  A session that arrives is *adopted*: written through the store as if
its messages had been queued and sent here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from vmqtw.codec.packets import SubOptions
from vmqtw.core.values import WAIT_PUBCOMP

if TYPE_CHECKING:  # pragma: no cover
    from vmqtw.core.broker import Broker
    from vmqtw.core.session import Session


def take_out(broker: Broker, session: Session) -> None:
    """Remove ``session`` from the registry and the topic trees and stop its timers,
    the store untouched (``forget`` or ``put_back`` follows)."""
    for topic_filter in list(session.subscriptions):
        broker._tree_remove(session, topic_filter)
    session.cancel_expiry()
    if broker.sessions.get(session.key) is session:
        del broker.sessions[session.key]
    broker._notify("gone", session)


def put_back(broker: Broker, session: Session) -> bool:
    """Undo :func:`take_out` (the move failed): ``session`` is here again, offline.
    False when a new session took its key meanwhile (that one wins)."""
    if session.key in broker.sessions:
        return False
    broker.sessions[session.key] = session
    for topic_filter, options in session.subscriptions.items():
        broker._tree_add(session, topic_filter, options)
    session.schedule_expiry(broker._expire)
    broker._notify("register", session)
    return True


def forget(broker: Broker, session: Session) -> None:
    """The other node holds ``session`` (taken out): forget it in the store too,
    unless a new session here took its key meanwhile."""
    if session.key not in broker.sessions:
        broker.store.session_deleted(session.key)


def adopt(broker: Broker, session: Session) -> None:
    """Enter a persistent ``session`` that moved here, built offline by the caller
    (``subscriptions``, ``sub_ids``, ``inflight``, ``queue``, ``incoming_qos2``),
    in the registry and the topic trees, and write it through the store.  No
    session may hold its key."""
    key = session.key
    assert key not in broker.sessions, key
    broker.sessions[key] = session
    for topic_filter, options in session.subscriptions.items():
        broker._tree_add(session, topic_filter, options)
    store = broker.store
    store.session_updated(session)
    for pid, entry in session.inflight.items():
        store.message_sent(key, entry.message, entry.qos, entry.retain, pid, entry.sub_ids)
        if entry.state == WAIT_PUBCOMP:
            store.message_released(key, pid)
    session.inflight_bytes = sum(len(e.message.payload) for e in session.inflight.values())
    if session.inflight:
        session._next_pid = max(session.inflight) % 65535 + 1
    for item in session.queue:
        store.message_queued(key, item[0], item[1], item[2], item[3] if len(item) > 3 else ())
    for pid in session.incoming_qos2:
        store.qos2_received(key, pid)
    session.schedule_expiry(broker._expire)
    broker._notify("register", session)


def add_subscription(broker: Broker, session: Session, topic_filter: str,
                     options: SubOptions) -> None:
    """Add a subscription to ``session`` without sending retained messages (a moved
    session's subscription joining a session that exists here already)."""
    broker._tree_add(session, topic_filter, options)
    session.subscriptions[topic_filter] = options
    if session.persistent:
        broker.store.session_updated(session)
