"""``IMetadata`` on Redis, with txredisapi (a Twisted-native client: no threads, no
asyncio reactor).

Two connections per node: one for commands and scripts (pipelined), one that only
blocks in ``XREAD`` on the two change logs (routes and retained messages). Every
command has a deadline (``op_timeout``); a Redis that is down or silent turns into
:class:`~vmqtw.cluster.metadata.MetadataUnavailable`, never a hang. The key layout and the
scripts are in :mod:`vmqtw.cluster.redis_scripts`.

Recovery rules:

- A heartbeat that finds this node's record missing (Redis restarted without its
  data, or another node reaped us while we were slow) or that follows a failed one
  re-announces the node and *all* its routes (one ``ANNOUNCE`` script).
- A member is dropped from the local view only once its last known expiry has passed
  (Redis clock) or it left explicitly, so a Redis restart does not make live nodes
  flap while they re-register.
- When the change-log connection fails, or the log was trimmed past what this node
  had read, the views are reloaded from a snapshot.
"""
from __future__ import annotations

import os
from typing import Any, Generator, Sequence
from urllib.parse import unquote, urlparse

import txredisapi
from twisted.internet import defer
from twisted.internet.defer import (
    CancelledError, Deferred, DeferredList, fail, inlineCallbacks, succeed,
)
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure
from zope.interface import implementer

from vmqtw.cluster import redis_scripts as lua
from vmqtw.cluster.metadata import Claim, IMetadata, Member, MetadataUnavailable, RouteChange
from vmqtw.cluster.views import LocalViews
from vmqtw.logs import Logger

_UNAVAILABLE_REPLIES = ("LOADING", "READONLY", "MASTERDOWN", "BUSY", "TRYAGAIN")


def _lp(text: str) -> bytes:
    """A length-prefixed key part: ``<len>:<text>`` (UTF-8 bytes)."""
    raw = text.encode()
    return str(len(raw)).encode() + b":" + raw


class _SentinelMasterProtocol(txredisapi.SentinelRedisProtocol):
    """txredisapi's master check compares ``ROLE``'s reply with a ``str``, which never
    matches on a connection that returns bytes (``charset=None``, as we need for
    payloads): every master would be refused. Same check, on bytes or str."""

    def connectionMade(self) -> Any:
        def check_role(role: list[Any]) -> Any:
            name = role[0].decode() if isinstance(role[0], bytes) else role[0]
            if self.factory.is_master and name != "master":
                self.transport.loseConnection()
                return succeed(None)
            return txredisapi.RedisProtocol.connectionMade(self)

        if self.password is not None:
            self.auth(self.password, self.username)
        return self.role().addCallback(check_role)


class _SentinelMasterFactory(txredisapi.SentinelConnectionFactory):
    protocol = _SentinelMasterProtocol


@implementer(IMetadata)
class RedisMetadata(LocalViews):
    """One node's connection to the cluster's Redis.

    :param address: ``host:port`` of this node's ``listener.vmq`` (published to peers).
    :param cluster_name: key prefix, so several clusters can share one Redis.
    :param heartbeat_interval: ``cluster.heartbeat_interval`` in seconds.
    :param node_timeout: ``cluster.node_timeout``: a node that has not heartbeat for
        this long is dead.
    :param op_timeout: deadline of every Redis command (seconds).
    :param sentinels: ``metadata.redis.sentinels``: ``(host, port)`` of Redis Sentinels;
        when given, ``host``/``port`` are ignored and the node always talks to the
        current master of ``master_name`` (``metadata.redis.master_name``), following a
        failover (the Sentinels themselves are reached without a password).
    """

    log = Logger()

    def __init__(self, node_name: str, *, address: str = "", host: str = "127.0.0.1",
                 port: int = 6379, dbid: int | None = None, password: str | None = None,
                 cluster_name: str = "vmqtw", heartbeat_interval: float = 1.0,
                 node_timeout: float = 5.0, op_timeout: float = 5.0,
                 reconnect_max_delay: float = 2.0, rlog_maxlen: int = 100_000,
                 retlog_maxlen: int = 10_000, block_ms: int = 1000,
                 batch: int = 1000, sentinels: Sequence[tuple[str, int]] = (),
                 master_name: str = "vmqtw", reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor
            reactor = _reactor
        super().__init__(node_name)
        self.address = address
        self.host, self.port, self.dbid, self.password = host, port, dbid, password
        self.sentinels = list(sentinels)
        self.master_name = master_name
        self.heartbeat_interval = heartbeat_interval
        self.node_timeout = node_timeout
        self.op_timeout = op_timeout
        self.reconnect_max_delay = reconnect_max_delay
        self.rlog_maxlen, self.retlog_maxlen = rlog_maxlen, retlog_maxlen
        self.block_ms, self.batch = block_ms, batch
        self.reactor = reactor
        p = "{" + cluster_name + "}"
        self.prefix = p
        self.k_members = f"{p}:members"
        self.k_node = f"{p}:node:{node_name}"
        self.k_routes = f"{p}:routes:{node_name}"
        self.k_rlog = f"{p}:rlog"
        self.k_retain = f"{p}:retain"
        self.k_retlog = f"{p}:retlog"
        self.incarnation = os.urandom(8).hex()
        self.reachable = False
        self._lost = False
        self._running = False
        self._cmd: Any = None
        self._blk: Any = None
        self._sentinel: Any = None
        self._heartbeat: LoopingCall | None = None
        self._beating = False
        self._need_announce = False
        self._follow_done: Deferred[None] | None = None
        self._sleep: Deferred[None] | None = None
        self._pending: set[Deferred[Any]] = set()
        self._own_routes: set[str] = set()
        self._rlog_id = b"0-0"
        self._retlog_id = b"0-0"

    @classmethod
    def from_url(cls, url: str, node_name: str, **kwargs: Any) -> RedisMetadata:
        """Build from ``metadata.redis.url`` (``redis://[:password@]host[:port][/db]``)."""
        u = urlparse(url)
        if u.scheme != "redis":
            raise ValueError(f"unsupported Redis URL scheme {u.scheme!r} (use redis://)")
        db = u.path.strip("/")
        return cls(node_name, host=u.hostname or "127.0.0.1", port=u.port or 6379,
                   dbid=int(db) if db else None,
                   password=unquote(u.password) if u.password else None, **kwargs)

    # -- plumbing -------------------------------------------------------------

    def _connect(self) -> Any:
        """A connection handler (lazy: commands wait while it (re)connects)."""
        if self.sentinels:
            if self._sentinel is None:
                self._sentinel = txredisapi.Sentinel(list(self.sentinels))
                self._sentinel.discovery_timeout = self.op_timeout
            # Asks the Sentinels for the current master before every connection
            # attempt and refuses a server whose role is not master.
            return self._sentinel.master_for(
                self.master_name, factory_class=_SentinelMasterFactory, dbid=self.dbid,
                charset=None, password=self.password, replyTimeout=self.op_timeout,
                convertNumbers=False)
        factory = txredisapi.RedisFactory(
            f"{self.host}:{self.port}", self.dbid, 1, isLazy=True, charset=None,
            password=self.password, replyTimeout=self.op_timeout, convertNumbers=False)
        factory.initialDelay = 0.1
        factory.maxDelay = self.reconnect_max_delay
        factory.startConnecting(HostnameEndpoint(self.reactor, self.host, self.port,
                                                 timeout=self.op_timeout))
        return factory.handler

    @property
    def server(self) -> str:
        """Which Redis this node uses, for messages."""
        if self.sentinels:
            return f"master {self.master_name!r} of Sentinels " + ",".join(
                f"{h}:{p}" for h, p in self.sentinels)
        return f"Redis at {self.host}:{self.port}"

    def _op(self, d: Deferred[Any], timeout: float | None = None) -> Deferred[Any]:
        """Give ``d`` a deadline and turn engine trouble into MetadataUnavailable."""
        limit = self.op_timeout if timeout is None else timeout
        d.addTimeout(limit, self.reactor)
        self._pending.add(d)

        def settled(result: Any) -> Any:
            self._pending.discard(d)
            return result
        d.addBoth(settled)

        def unavailable(f: Failure) -> Failure:
            if f.check(txredisapi.ResponseError) and not str(f.value).startswith(
                    _UNAVAILABLE_REPLIES):
                return f
            if f.check(MetadataUnavailable):
                return f
            reason = (f"no answer within {limit:g}s"
                      if f.check(defer.TimeoutError, CancelledError, txredisapi.TimeoutError)
                      else f.getErrorMessage())
            raise MetadataUnavailable(f"{self.server} unavailable: {reason}")
        return d.addErrback(unavailable)

    def _cmd_call(self, *args: Any) -> Deferred[Any]:
        if self._cmd is None:
            return fail(MetadataUnavailable("metadata not started"))
        return self._op(self._cmd.execute_command(*args))

    def _eval(self, script: str, keys: list[Any], args: list[Any]) -> Deferred[Any]:
        if self._cmd is None:
            return fail(MetadataUnavailable("metadata not started"))
        return self._op(self._cmd.eval(script, keys, args))

    # -- lifecycle ----------------------------------------------------------

    @inlineCallbacks
    def start(self) -> Generator[Deferred[Any], Any, None]:
        self._running = True
        self._cmd = self._connect()
        self._blk = self._connect()
        try:
            yield self._announce()
            yield self._beat()
            yield self._load_routes()
            yield self._load_retained()
        except BaseException:
            self._running = False
            yield self._disconnect()
            raise
        self._heartbeat = LoopingCall(self._tick)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(self.heartbeat_interval, now=False)
        self._follow_done = self._follow()
        self.log.info("cluster metadata: node {node} joined cluster {prefix} on {server}",
                      node=self.node_name, prefix=self.prefix, server=self.server)

    @inlineCallbacks
    def stop(self) -> Generator[Deferred[Any], Any, None]:
        self._running = False
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        if self._sleep is not None:
            self._sleep.cancel()
        yield self._disconnect()
        if self._follow_done is not None:
            yield self._follow_done
            self._follow_done = None

    def _disconnect(self) -> Deferred[Any]:
        handlers = [h for h in (self._cmd, self._blk, self._sentinel) if h is not None]
        self._cmd = self._blk = self._sentinel = None
        # Commands still waiting for a connection would otherwise wait for their
        # deadline; they fail now with MetadataUnavailable.
        for d in list(self._pending):
            d.cancel()
        self.reachable = False
        return DeferredList([h.disconnect() for h in handlers], consumeErrors=True)

    def leave(self) -> Deferred[Any]:
        # No more heartbeats: one would find the record gone and register us again.
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        return self._eval(lua.LEAVE, [self.k_members, self.k_node, self.k_routes, self.k_rlog],
                          [self.node_name, self.rlog_maxlen])

    # -- membership ---------------------------------------------------------

    def _announce(self) -> Deferred[Any]:
        self._need_announce = False
        d = self._eval(lua.ANNOUNCE,
                       [self.k_members, self.k_node, self.k_routes, self.k_rlog],
                       [self.node_name, int(self.node_timeout * 1000), self.address,
                        self.incarnation, self.rlog_maxlen, *sorted(self._own_routes)])

        def announced(result: Any) -> Any:
            self._announced()
            return result

        def failed(f: Failure) -> Failure:
            self._need_announce = True
            return f
        return d.addCallbacks(announced, failed)

    @inlineCallbacks
    def _beat(self) -> Generator[Deferred[Any], Any, None]:
        try:
            now, known, flat = yield self._eval(
                lua.HEARTBEAT, [self.k_members, self.k_node, self.k_rlog],
                [self.node_name, int(self.node_timeout * 1000), self.prefix, self.rlog_maxlen])
        except MetadataUnavailable as e:
            if not self._lost and self._running:
                self.log.warn("cluster metadata: heartbeat failed: {reason}", reason=str(e))
            self._lost = True
            self.reachable = False
            self._need_announce = True
            raise
        if self._lost:
            self.log.info("cluster metadata: Redis reachable again")
            self._lost = False
        if not int(known) or self._need_announce:
            if not int(known):
                self.log.info("cluster metadata: node {node} unknown to Redis; "
                              "re-announcing {n} routes", node=self.node_name,
                              n=len(self._own_routes))
            yield self._announce()
        self.reachable = True
        fresh = {}
        for i in range(0, len(flat), 3):
            name = flat[i].decode()
            fresh[name] = Member(name, flat[i + 2].decode(), int(flat[i + 1]))
        self._update_members(fresh, int(now))

    def _tick(self) -> None:
        if self._beating or not self._running:
            return
        self._beating = True

        def failed(f: Failure) -> None:
            if not f.check(MetadataUnavailable):
                self.log.failure("cluster metadata: heartbeat failed", f)

        def done(result: Any) -> None:
            self._beating = False
        self._beat().addErrback(failed).addBoth(done)

    # -- routes -------------------------------------------------------------

    def add_route(self, topic_filter: str) -> Deferred[Any]:
        self._own_routes.add(topic_filter)
        return self._route_op(lua.ROUTE_ADD, topic_filter)

    def remove_route(self, topic_filter: str) -> Deferred[Any]:
        self._own_routes.discard(topic_filter)
        return self._route_op(lua.ROUTE_DEL, topic_filter)

    def _route_op(self, script: str, topic_filter: str) -> Deferred[Any]:
        d = self._eval(script, [self.k_routes, self.k_rlog],
                       [self.node_name, topic_filter, self.rlog_maxlen])

        def failed(f: Failure) -> Failure:
            # Redis does not have our current routes: announce them all once it is back.
            self._need_announce = True
            return f
        return d.addCallback(lambda _: None).addErrback(failed)

    @inlineCallbacks
    def _load_routes(self) -> Generator[Deferred[Any], Any, None]:
        reply = yield self._eval(lua.SNAPSHOT, [self.k_members, self.k_rlog], [self.prefix])
        self._rlog_id = reply[0]
        changes: list[RouteChange] = []
        for i in range(1, len(reply), 2):
            node = reply[i].decode()
            changes += self._replace_routes(node, {f.decode() for f in reply[i + 1]})
        self._emit_routes(changes)

    @inlineCallbacks
    def _apply_rlog(self, entries: list[Any]) -> Generator[Deferred[Any], Any, None]:
        changes: list[RouteChange] = []
        for entry_id, flat in entries:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            node = fields.get(b"node", b"").decode()
            op = fields.get(b"op", b"")
            topic_filter = fields.get(b"filter", b"").decode()
            if op == b"add":
                changes += self._route_view_add(node, topic_filter)
            elif op == b"del":
                changes += self._route_view_del(node, topic_filter)
            elif op == b"reset":
                keys = yield self._cmd_call("HKEYS", f"{self.prefix}:routes:{node}")
                changes += self._replace_routes(node, {k.decode() for k in keys})
            elif op == b"leave":
                changes += self._member_left(node)
            self._rlog_id = entry_id
        self._emit_routes(changes)

    # -- the change-log follower ----------------------------------------------

    @inlineCallbacks
    def _follow(self) -> Generator[Deferred[Any], Any, None]:
        failures = 0
        reload = False
        while self._running:
            try:
                if reload:
                    yield self._load_routes()
                    yield self._load_retained()
                    reload = False
                reply = yield self._op(
                    self._blk.execute_command(
                        "XREAD", "COUNT", self.batch, "BLOCK", self.block_ms, "STREAMS",
                        self.k_rlog, self.k_retlog, self._rlog_id, self._retlog_id,
                        apply_timeout=False),
                    timeout=self.block_ms / 1000 + self.op_timeout)
                for key, entries in reply or []:
                    before = self._rlog_id if key == self.k_rlog.encode() else self._retlog_id
                    if key == self.k_rlog.encode():
                        yield self._apply_rlog(entries)
                    else:
                        self._apply_retlog(entries)
                    if len(entries) >= self.batch and (yield self._trimmed(key, before)):
                        reload = True
                failures = 0
            except Exception as e:
                if not self._running:
                    break
                failures += 1
                reload = True
                if failures == 1:
                    self.log.warn("cluster metadata: change log unavailable ({reason}); "
                                  "will reload", reason=str(e))
                self._sleep = deferLater(self.reactor,
                                         min(0.05 * 2 ** failures, self.reconnect_max_delay),
                                         lambda: None)
                try:
                    yield self._sleep
                except Exception:
                    break
                finally:
                    self._sleep = None

    @inlineCallbacks
    def _trimmed(self, key: bytes, before: bytes) -> Generator[Deferred[Any], Any, bool]:
        """Whether the log may have lost entries after ``before`` (trimmed by MAXLEN).

        Trimming removes the oldest entries first, so while ``before`` (the last entry
        read) is still in the log nothing after it was lost. Once it is gone this node
        is about ``maxlen`` entries behind, and a reload is the right move anyway.
        """
        if before == b"0-0":
            info = yield self._cmd_call("XINFO", "STREAM", key)
            fields = dict(zip(info[::2], info[1::2], strict=True))
            return int(fields.get(b"entries-added", 0)) > int(fields.get(b"length", 0))
        found = yield self._cmd_call("XRANGE", key, before, before, "COUNT", 1)
        return not found

    # -- client-id registry -------------------------------------------------

    def _owner_key(self, mountpoint: str, client_id: str) -> bytes:
        return (self.prefix.encode() + b":owner:" + _lp(mountpoint) + b":"
                + client_id.encode())

    def claim(self, mountpoint: str, client_id: str) -> Deferred[Claim]:
        d = self._eval(lua.CLAIM, [self._owner_key(mountpoint, client_id)], [self.node_name])
        return d.addCallback(lambda r: Claim(r[0].decode() or None, int(r[1])))

    def owner(self, mountpoint: str, client_id: str) -> Deferred[tuple[str, int] | None]:
        d = self._cmd_call("HMGET", self._owner_key(mountpoint, client_id), "node", "epoch")

        def parse(r: list[Any]) -> tuple[str, int] | None:
            if not r[0]:
                return None
            return r[0].decode(), int(r[1])
        return d.addCallback(parse)

    def is_owner(self, mountpoint: str, client_id: str, epoch: int) -> Deferred[bool]:
        return self.owner(mountpoint, client_id).addCallback(
            lambda o: o == (self.node_name, epoch))

    def release(self, mountpoint: str, client_id: str, epoch: int) -> Deferred[bool]:
        d = self._eval(lua.RELEASE, [self._owner_key(mountpoint, client_id)],
                       [self.node_name, str(epoch)])
        return d.addCallback(lambda r: int(r) == 1)

    # -- retained messages --------------------------------------------------

    def set_retained(self, mountpoint: str, topic: str, message: bytes) -> Deferred[Any]:
        field = _lp(mountpoint) + b":" + topic.encode()
        return self._eval(lua.RETAIN, [self.k_retain, self.k_retlog],
                          [field, message, self.retlog_maxlen]).addCallback(lambda _: None)

    def delete_retained(self, mountpoint: str, topic: str) -> Deferred[Any]:
        field = _lp(mountpoint) + b":" + topic.encode()
        return self._eval(lua.RETAIN, [self.k_retain, self.k_retlog],
                          [field, self.retlog_maxlen]).addCallback(lambda _: None)

    @staticmethod
    def _split_field(field: bytes) -> tuple[str, str]:
        n, _, rest = field.partition(b":")
        size = int(n)
        return rest[:size].decode(), rest[size + 1:].decode()

    @inlineCallbacks
    def _load_retained(self) -> Generator[Deferred[Any], Any, None]:
        reply = yield self._eval(lua.RETAINED_SNAPSHOT, [self.k_retain, self.k_retlog], [])
        self._retlog_id = reply[0]
        self._replace_retained({self._split_field(reply[i]): reply[i + 1]
                                for i in range(1, len(reply), 2)})

    def _apply_retlog(self, entries: list[Any]) -> None:
        updates: list[tuple[tuple[str, str], bytes | None]] = []
        for entry_id, flat in entries:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            key = self._split_field(fields.get(b"key", b"0:"))
            updates.append((key, fields.get(b"msg", b"") if fields.get(b"op") == b"set"
                            else None))
            self._retlog_id = entry_id
        self._apply_retained(updates)

    # -- persistent-session subscriptions -----------------------------------

    def _session_key(self, mountpoint: str, client_id: str) -> bytes:
        return self.prefix.encode() + b":sess:" + _lp(mountpoint) + b":" + client_id.encode()

    def store_subscriptions(self, mountpoint: str, client_id: str,
                            subscriptions: dict[str, bytes]) -> Deferred[Any]:
        if not subscriptions:
            return succeed(None)
        args: list[Any] = []
        for topic_filter, info in subscriptions.items():
            args += [topic_filter, info]
        return self._cmd_call("HSET", self._session_key(mountpoint, client_id),
                              *args).addCallback(lambda _: None)

    def remove_subscriptions(self, mountpoint: str, client_id: str,
                             filters: list[str]) -> Deferred[Any]:
        if not filters:
            return succeed(None)
        return self._cmd_call("HDEL", self._session_key(mountpoint, client_id),
                              *filters).addCallback(lambda _: None)

    def subscriptions(self, mountpoint: str, client_id: str) -> Deferred[dict[str, bytes]]:
        d = self._cmd_call("HGETALL", self._session_key(mountpoint, client_id))
        return d.addCallback(lambda r: {r[i].decode(): r[i + 1] for i in range(0, len(r), 2)})

    def delete_session(self, mountpoint: str, client_id: str) -> Deferred[Any]:
        return self._cmd_call("DEL", self._session_key(mountpoint, client_id)).addCallback(
            lambda _: None)
