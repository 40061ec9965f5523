"""``IMetadata`` for nodes that live in one process: :class:`MemoryEngine` holds what Redis
would hold, and each :class:`MemoryMetadata` is one node's view of it.

It follows the same rules as :class:`~vmqtw.cluster.redis_metadata.RedisMetadata`
(heartbeats and expiry on the engine's clock, node-owned routes re-announced when the
engine lost them, epochs that only grow, changes reaching the other nodes later, never
inside the caller's call), so the core's cluster logic can be tested with a
``twisted.internet.task.Clock`` and no Redis. ``MemoryEngine.available`` and
:meth:`MemoryEngine.wipe` play an unreachable and a restarted engine.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from vmqtw.cluster.metadata import Claim, IMetadata, Member, MetadataUnavailable, RouteChange
from vmqtw.cluster.views import LocalViews

Key = tuple[str, str]


class MemoryEngine:
    """The shared state of an in-process cluster.

    :param clock: an ``IReactorTime``: heartbeats, expiry and change delivery use it.
    """

    def __init__(self, clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        #: Set to False to make every operation fail with MetadataUnavailable.
        self.available = True
        self.members: dict[str, Member] = {}
        self.routes: dict[str, set[str]] = {}
        self.owners: dict[Key, tuple[str, int]] = {}
        self.retained: dict[Key, bytes] = {}
        self.sessions: dict[Key, dict[str, bytes]] = {}
        self.nodes: set[MemoryMetadata] = set()

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def check(self) -> None:
        if not self.available:
            raise MetadataUnavailable("in-memory metadata engine unavailable")

    def wipe(self) -> None:
        """Lose everything, as a Redis restarted without persistence."""
        self.members.clear()
        self.routes.clear()
        self.owners.clear()
        self.retained.clear()
        self.sessions.clear()

    def publish(self, event: tuple[Any, ...]) -> None:
        """Deliver a change to every started node, after the current call."""
        for node in list(self.nodes):
            self.clock.callLater(0, node._event, event)


def _guard(fn: Any) -> Any:
    """Run ``fn`` now; its result or a MetadataUnavailable as a fired Deferred."""
    def wrapper(self: MemoryMetadata, *args: Any) -> Deferred[Any]:
        try:
            self.engine.check()
            return succeed(fn(self, *args))
        except MetadataUnavailable as e:
            return fail(e)
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@implementer(IMetadata)
class MemoryMetadata(LocalViews):
    """One node of a :class:`MemoryEngine` cluster."""

    def __init__(self, engine: MemoryEngine, node_name: str, *, address: str = "",
                 heartbeat_interval: float = 1.0, node_timeout: float = 5.0) -> None:
        super().__init__(node_name)
        self.engine = engine
        self.address = address
        self.heartbeat_interval = heartbeat_interval
        self.node_timeout = node_timeout
        self.reachable = False
        self._own_routes: set[str] = set()
        self._need_announce = False
        self._heartbeat: LoopingCall | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Deferred[None]:
        try:
            self.engine.check()
        except MetadataUnavailable as error:
            return fail(error)
        self._announce()
        self.engine.nodes.add(self)
        e = self.engine
        changes: list[RouteChange] = []
        for node in e.members:
            changes += self._replace_routes(node, set(e.routes.get(node, ())))
        self._emit_routes(changes)
        self._replace_retained(e.retained)
        self._beat()
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = e.clock
        self._heartbeat.start(self.heartbeat_interval, now=False)
        return succeed(None)

    def stop(self) -> Deferred[None]:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        self.engine.nodes.discard(self)
        self.reachable = False
        return succeed(None)

    @_guard
    def leave(self) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        self.engine.members.pop(self.node_name, None)
        self.engine.routes.pop(self.node_name, None)
        self.engine.publish(("leave", self.node_name))

    def _announce(self) -> None:
        e = self.engine
        e.members[self.node_name] = Member(self.node_name, self.address,
                                           e.now_ms() + int(self.node_timeout * 1000))
        e.routes[self.node_name] = set(self._own_routes)
        e.publish(("reset", self.node_name))
        self._need_announce = False
        self._announced()

    def _beat(self) -> None:
        e = self.engine
        if not e.available:
            self.reachable = False
            self._need_announce = True
            return
        if self.node_name not in e.members or self._need_announce:
            self._announce()
        now = e.now_ms()
        me = e.members[self.node_name]
        e.members[self.node_name] = Member(me.name, me.address,
                                           now + int(self.node_timeout * 1000))
        for name, m in list(e.members.items()):
            if m.expires_ms < now:
                del e.members[name]
                e.routes.pop(name, None)
                e.publish(("reset", name))
        self.reachable = True
        self._update_members(dict(e.members), now)

    def _event(self, event: tuple[Any, ...]) -> None:
        if self not in self.engine.nodes:
            return
        kind = event[0]
        if kind == "route":
            _, node, added, topic_filter = event
            self._emit_routes(self._route_view_add(node, topic_filter) if added
                              else self._route_view_del(node, topic_filter))
        elif kind == "reset":
            node = event[1]
            self._emit_routes(self._replace_routes(node, set(self.engine.routes.get(node, ()))))
        elif kind == "leave":
            self._emit_routes(self._member_left(event[1]))
        elif kind == "retained":
            self._apply_retained([(event[1], event[2])])

    # -- routes -------------------------------------------------------------

    def add_route(self, topic_filter: str) -> Deferred[None]:
        self._own_routes.add(topic_filter)
        return self._route(topic_filter, True)

    def remove_route(self, topic_filter: str) -> Deferred[None]:
        self._own_routes.discard(topic_filter)
        return self._route(topic_filter, False)

    def _route(self, topic_filter: str, added: bool) -> Deferred[None]:
        e = self.engine
        try:
            e.check()
        except MetadataUnavailable as error:
            self._need_announce = True
            return fail(error)
        current = e.routes.setdefault(self.node_name, set())
        if added != (topic_filter in current):
            (current.add if added else current.discard)(topic_filter)
            e.publish(("route", self.node_name, added, topic_filter))
        return succeed(None)

    # -- client-id registry -------------------------------------------------

    @_guard
    def claim(self, mountpoint: str, client_id: str) -> Claim:
        e = self.engine
        node, epoch = e.owners.get((mountpoint, client_id), ("", 0))
        new = max(epoch + 1, int(e.clock.seconds() * 1_000_000))
        e.owners[(mountpoint, client_id)] = (self.node_name, new)
        return Claim(node or None, new)

    @_guard
    def owner(self, mountpoint: str, client_id: str) -> tuple[str, int] | None:
        node, epoch = self.engine.owners.get((mountpoint, client_id), ("", 0))
        return (node, epoch) if node else None

    @_guard
    def is_owner(self, mountpoint: str, client_id: str, epoch: int) -> bool:
        return self.engine.owners.get((mountpoint, client_id)) == (self.node_name, epoch)

    @_guard
    def release(self, mountpoint: str, client_id: str, epoch: int) -> bool:
        key = (mountpoint, client_id)
        if self.engine.owners.get(key) != (self.node_name, epoch):
            return False
        self.engine.owners[key] = ("", epoch)
        return True

    # -- retained messages --------------------------------------------------

    @_guard
    def set_retained(self, mountpoint: str, topic: str, message: bytes) -> None:
        self.engine.retained[(mountpoint, topic)] = message
        self.engine.publish(("retained", (mountpoint, topic), message))

    @_guard
    def delete_retained(self, mountpoint: str, topic: str) -> None:
        if self.engine.retained.pop((mountpoint, topic), None) is not None:
            self.engine.publish(("retained", (mountpoint, topic), None))

    # -- persistent-session subscriptions -----------------------------------

    @_guard
    def store_subscriptions(self, mountpoint: str, client_id: str,
                            subscriptions: dict[str, bytes]) -> None:
        if subscriptions:
            self.engine.sessions.setdefault((mountpoint, client_id), {}).update(subscriptions)

    @_guard
    def remove_subscriptions(self, mountpoint: str, client_id: str,
                             filters: list[str]) -> None:
        subs = self.engine.sessions.get((mountpoint, client_id), {})
        for f in filters:
            subs.pop(f, None)
        if not subs:
            self.engine.sessions.pop((mountpoint, client_id), None)

    @_guard
    def subscriptions(self, mountpoint: str, client_id: str) -> dict[str, bytes]:
        return dict(self.engine.sessions.get((mountpoint, client_id), {}))

    @_guard
    def delete_session(self, mountpoint: str, client_id: str) -> None:
        self.engine.sessions.pop((mountpoint, client_id), None)
