"""The vmq_diversity database-auth plugin.

auth_on_register looks the client up in each enabled database (in the order
postgres, mysql, mysql2, redis) and, when a row matches, keeps its ACLs in the
per-node cache under (mountpoint, client_id).  auth_on_publish(_m5) and
auth_on_subscribe(_m5) answer from that cache, synchronously: a cached client
gets ok/modifiers when an entry matches and a refusal otherwise; a client
without a cache entry (it authenticated some other way) is refused too, as in
VerneMQ.  The entry goes when the session goes (offline, gone, expired).

A database that cannot be asked refuses the login (CONNACK 5 / 0x87) with a
log line naming it and the reason; the next login asks it again.
"""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from vmqtw.auth import api
from vmqtw.auth.api import Error, Result
from vmqtw.auth.diversity.acl import NOT_AUTHORIZED, AclCache, ClientAcl, parse_acl
from vmqtw.auth.diversity.settings import DiversitySettings
from vmqtw.auth.diversity.sql import BackendDown

__all__ = ["DiversityPlugin", "INVALID_CREDENTIALS", "DATABASE_UNAVAILABLE"]

INVALID_CREDENTIALS = "invalid_credentials"
DATABASE_UNAVAILABLE = "database_unavailable"


def make_backend(db: Any, reactor: Any) -> Any:
    if db.kind == "auth_redis":
        from vmqtw.auth.diversity.redis import RedisBackend
        return RedisBackend(db, reactor)
    from vmqtw.auth.diversity.sql import SQLBackend
    return SQLBackend(db, reactor)


@implementer(api.IAuthOnRegister, api.IAuthOnPublish, api.IAuthOnPublishM5,
             api.IAuthOnSubscribe, api.IAuthOnSubscribeM5, api.IOnClientOffline,
             api.IOnClientGone, api.IOnSessionExpired)
class DiversityPlugin:

    def __init__(self, settings: DiversitySettings, context: Any,
                 backends: list[Any] | None = None) -> None:
        self.log = context.log
        self.backends = backends if backends is not None else \
            [make_backend(db, context.reactor) for db in settings.databases]
        self.cache = AclCache()

    def stop(self) -> None:
        for backend in self.backends:
            try:
                backend.close()
            except Exception:
                self.log.failure("closing {database} failed", database=backend.name)

    # -- CONNECT ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def auth_on_register(self, request: api.RegisterRequest):
        if request.username is None or request.password is None:
            return Error(INVALID_CREDENTIALS)
        mountpoint = request.mountpoint or ""
        for backend in self.backends:
            try:
                row = yield backend.lookup(mountpoint, request.client_id, request.username,
                                           request.password)
            except BackendDown as e:
                self.log.error("vmq_diversity {database}: database unavailable ({reason}); "
                               "login of {client_id!r} refused", database=backend.name,
                               reason=str(e), client_id=request.client_id)
                return Error(DATABASE_UNAVAILABLE)
            if row is None:
                continue
            self.cache.add(mountpoint, request.client_id, ClientAcl(
                request.username, request.client_id, mountpoint,
                parse_acl(row[0], self._warn), parse_acl(row[1], self._warn)))
            return api.OK
        return Error(INVALID_CREDENTIALS)

    def _warn(self, message: str) -> None:
        self.log.warn("vmq_diversity: {message}", message=message)

    # -- authorization (synchronous, from the cache) ------------------------------------

    def _acl(self, client: Any) -> ClientAcl | None:
        return self.cache.get(client.mountpoint or "", client.client_id)

    def auth_on_publish(self, client: Any, topic: str, payload: bytes, qos: int,
                        retain: bool) -> Result:
        acl = self._acl(client)
        if acl is None:
            return Error(NOT_AUTHORIZED)
        return acl.check_publish(topic, len(payload), qos, retain, self._warn)

    def auth_on_publish_m5(self, client: Any, topic: str, payload: bytes, qos: int,
                           retain: bool, properties: dict[str, Any]) -> Result:
        return self.auth_on_publish(client, topic, payload, qos, retain)

    def auth_on_subscribe(self, client: Any, topics: list[tuple[str, int]]) -> Result:
        acl = self._acl(client)
        if acl is None:
            return Error(NOT_AUTHORIZED)
        return acl.check_subscribe(topics, self._warn)

    def auth_on_subscribe_m5(self, client: Any, topics: list[tuple[str, int]],
                             properties: dict[str, Any]) -> Result:
        return self.auth_on_subscribe(client, topics)

    # -- sessions ending ----------------------------------------------------------------

    def on_client_offline(self, mountpoint: str, client_id: str) -> None:
        self.cache.drop_oldest(mountpoint or "", client_id)

    def on_client_gone(self, mountpoint: str, client_id: str) -> None:
        self.cache.drop_oldest(mountpoint or "", client_id)

    def on_session_expired(self, mountpoint: str, client_id: str) -> None:
        self.cache.drop_oldest(mountpoint or "", client_id)
