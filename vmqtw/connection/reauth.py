"""Authorization that holds after the fact: a new owner of a session, new ACL
rules, users removed from the password file.

Subscriptions are authorized when they are made, and deliveries are not
authorized again (the hot path pays no ACL lookup per message).  So whenever
what was authorized may no longer hold, everything stored is authorized
again, once:

- a session resumed by another user name (or through another listener) than
  the one that built it: each subscription goes through that listener's
  auth_on_subscribe chain for the NEW user, and each queued or inflight
  message is checked once against the topics the new user may read (what
  mosquitto 2.0 checks at delivery);
- a plugin says its rules changed (``vmq_acl`` after a reload): every
  session, online or offline, is authorized again the same way;
- a plugin says users were removed or their passwords changed
  (``vmq_passwd`` after a reload): their connections are closed (5.0
  DISCONNECT 0x87 "not authorized").

A plugin takes part by offering the lists ``rules_reloaded`` (callables
without arguments) and/or ``users_revoked`` (callables taking a set of user
names); ``watch_reloads`` adds the broker's observers to them.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from vmqtw.auth.api import Error, Ok
from vmqtw.auth.chain import Authorizer
from vmqtw.auth.modifiers import ModifierError, check_subscribe
from vmqtw.codec import reasons
from vmqtw.codec.packets import MQTT5, SubOptions
from vmqtw.core.broker import Broker
from vmqtw.core.session import Session
from vmqtw.logs import Logger

__all__ = ["reauthorize", "watch_reloads", "ReloadObserver"]

log = Logger(namespace="vmqtw.connection.reauth")


def _granted(verdict: Any, topic_filter: str, qos: int) -> bool:
    """Whether an auth_on_subscribe answer grants ``topic_filter`` (a rewrite
    to QoS 128, or invalid modifiers, denies it)."""
    if verdict.__class__ is Error:
        return False
    if verdict.__class__ is Ok and verdict.modifiers:
        try:
            ((_f, granted_qos),) = check_subscribe(verdict.modifiers, [(topic_filter, qos)])
        except ModifierError:
            return False
        return granted_qos < 0x80
    return True


def reauthorize(broker: Broker, authorizer: Authorizer, session: Session, why: str) -> None:
    """Drop ``session``'s subscriptions and queued/inflight messages that its
    owner (``session.username``) may not have now; log what went."""
    if not authorizer.authz_enabled:
        return  # no ACL in force: everything is allowed
    conn = session.conn
    level = getattr(conn, "protocol_level", 4) if conn is not None else 4

    def ask(topics: list[tuple[str, int]]) -> Any:
        if level == MQTT5:
            return authorizer.subscribe_m5(session, topics, {})
        return authorizer.subscribe(session, topics)

    def may_subscribe(topic_filter: str, options: SubOptions) -> bool:
        return _granted(ask([(topic_filter, options.qos)]), topic_filter, options.qos)

    def may_read(topic: str) -> bool:
        return _granted(ask([(topic, 0)]), topic, 0)

    denied, dropped = broker.reauthorize(session, may_subscribe, may_read)
    if denied or dropped:
        log.info("client {client_id!r} (user {username!r}): {why}: dropped the subscriptions "
                 "{filters} and {dropped} queued messages it may not read",
                 client_id=session.client_id, username=session.username, why=why,
                 filters=denied, dropped=dropped)
        if session.persistent:
            broker.store.session_updated(session)


class ReloadObserver:
    """Applies plugins' reloads to the broker's sessions.

    ``authorizers`` maps a listener's name (``kind.name``, what
    ``Session.listener`` holds) to its ``Authorizer``.  A session whose
    listener is not known (restored from the store) is left alone: it is
    authorized again when a client resumes it (its listener differs)."""

    def __init__(self, broker: Broker, authorizers: Mapping[str, Authorizer]) -> None:
        self.broker = broker
        self.authorizers = authorizers

    def rules_reloaded(self) -> None:
        """Authorize every subscription (and queued message) of every session again."""
        for session in list(self.broker.sessions.values()):
            authorizer = self.authorizers.get(session.listener or "")
            if authorizer is not None:
                reauthorize(self.broker, authorizer, session, "ACL reloaded")
        self.broker.flush()

    def users_revoked(self, users: Iterable[str]) -> None:
        """Close the connections of ``users`` (removed, or their password changed)."""
        revoked = frozenset(users)
        if not revoked:
            return
        for session in list(self.broker.sessions.values()):
            conn = session.conn
            if conn is not None and session.username in revoked:
                log.info("closing client {client_id!r}: user {username!r} was removed from "
                         "the password file or its password changed",
                         client_id=session.client_id, username=session.username)
                conn.close(reasons.NOT_AUTHORIZED)
        self.broker.flush()


def watch_reloads(broker: Broker, authorizers: Mapping[str, Authorizer],
                  plugins: Iterable[tuple[str, Any]]) -> ReloadObserver:
    """Subscribe the broker to its plugins' ``rules_reloaded`` and
    ``users_revoked`` lists (see the module docstring)."""
    observer = ReloadObserver(broker, authorizers)
    for _name, plugin in plugins:
        hooks: list[Callable[..., None]] | None = getattr(plugin, "rules_reloaded", None)
        if isinstance(hooks, list):
            hooks.append(observer.rules_reloaded)
        hooks = getattr(plugin, "users_revoked", None)
        if isinstance(hooks, list):
            hooks.append(observer.users_revoked)
    return observer
