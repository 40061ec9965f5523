"""The local views every ``IMetadata`` implementation keeps, and their watchers.

An engine feeds these views (snapshots, change logs, heartbeats); the core reads them
synchronously and hears about changes through the ``watch_*`` callbacks. Keeping this in
one base class gives every engine the same rules:

- a member is down when its last known expiry (engine clock) has passed or it left; a
  member that is merely missing from the engine's list stays until its expiry;
- a node that goes down loses its routes in the view;
- watchers get only real changes, as lists, and an exception in one is logged, never
  propagated into the engine's code.
"""
from __future__ import annotations

from typing import Any, Callable

from vmqtw.cluster.metadata import (
    Member, MembersCallback, RetainedCallback, RetainedChange, RouteChange, RoutesCallback,
)
from vmqtw.logs import Logger


class LocalViews:
    """Members, routes and retained messages as this node knows them."""

    log = Logger()

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self._members: dict[str, Member] = {}
        self._routes: dict[str, set[str]] = {}
        self._retained: dict[tuple[str, str], bytes] = {}
        self._member_watchers: list[MembersCallback] = []
        self._route_watchers: list[RoutesCallback] = []
        self._retained_watchers: list[RetainedCallback] = []
        self._announce_watchers: list[Callable[[], None]] = []
        #: Nodes that left on purpose (``cluster leave``), until they are members again:
        #: watchers tell a departure from an expiry with it.
        self.departed: set[str] = set()

    def _notify(self, watchers: list[Any], *args: Any) -> None:
        for callback in list(watchers):
            try:
                callback(*args)
            except Exception:
                self.log.failure("cluster metadata watcher {callback!r} failed",
                                 callback=callback)

    def watch_announce(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` each time this node has (re-)announced itself to the
        engine: at the start, and after the engine lost it (a restart, or the node was
        declared dead): what the node keeps in the engine must then be written again."""
        self._announce_watchers.append(callback)

    def _announced(self) -> None:
        self._notify(self._announce_watchers)

    # -- members --------------------------------------------------------------

    def members(self) -> dict[str, Member]:
        return dict(self._members)

    def watch_members(self, callback: MembersCallback) -> None:
        self._member_watchers.append(callback)

    def _update_members(self, fresh: dict[str, Member], now_ms: int) -> None:
        """Merge the engine's list of live members, as of engine time ``now_ms``."""
        old = self._members
        merged = dict(fresh)
        for name, m in old.items():
            # Missing from the engine but not expired yet (engine restarted): keep it.
            if name not in merged and m.expires_ms >= now_ms:
                merged[name] = m
        self._members = merged
        up = {n: m for n, m in merged.items() if n not in old or old[n].address != m.address}
        self.departed.difference_update(up)
        down = set(old) - set(merged)
        if down:
            changes: list[RouteChange] = []
            for name in sorted(down):
                changes += self._replace_routes(name, set())
            self._emit_routes(changes)
        if up or down:
            self.log.info("cluster members: up {up}, down {down}", up=sorted(up),
                          down=sorted(down))
            self._notify(self._member_watchers, up, down)

    def _member_left(self, node: str) -> list[RouteChange]:
        """``node`` left the cluster: drop it now. Returns its route removals (not
        emitted yet, so the caller can batch them)."""
        changes = self._replace_routes(node, set())
        self.departed.add(node)
        if self._members.pop(node, None) is not None and node != self.node_name:
            self._notify(self._member_watchers, {}, {node})
        return changes

    # -- routes ---------------------------------------------------------------

    def routes(self) -> dict[str, frozenset[str]]:
        return {node: frozenset(fs) for node, fs in self._routes.items() if fs}

    def watch_routes(self, callback: RoutesCallback) -> None:
        self._route_watchers.append(callback)

    def _route_view_add(self, node: str, topic_filter: str) -> list[RouteChange]:
        current = self._routes.setdefault(node, set())
        if topic_filter in current:
            return []
        current.add(topic_filter)
        return [RouteChange(node, topic_filter, True)]

    def _route_view_del(self, node: str, topic_filter: str) -> list[RouteChange]:
        current = self._routes.get(node, set())
        if topic_filter not in current:
            return []
        current.discard(topic_filter)
        if not current:
            self._routes.pop(node, None)
        return [RouteChange(node, topic_filter, False)]

    def _replace_routes(self, node: str, filters: set[str]) -> list[RouteChange]:
        old = self._routes.get(node, set())
        changes = [RouteChange(node, f, False) for f in sorted(old - filters)]
        changes += [RouteChange(node, f, True) for f in sorted(filters - old)]
        if filters:
            self._routes[node] = set(filters)
        else:
            self._routes.pop(node, None)
        return changes

    def _emit_routes(self, changes: list[RouteChange]) -> None:
        if changes:
            self._notify(self._route_watchers, changes)

    # -- retained -------------------------------------------------------------

    def retained(self) -> dict[tuple[str, str], bytes]:
        return dict(self._retained)

    def watch_retained(self, callback: RetainedCallback) -> None:
        self._retained_watchers.append(callback)

    def _replace_retained(self, fresh: dict[tuple[str, str], bytes]) -> None:
        changes = [RetainedChange(mp, t, None) for (mp, t) in self._retained
                   if (mp, t) not in fresh]
        changes += [RetainedChange(mp, t, m) for (mp, t), m in fresh.items()
                    if self._retained.get((mp, t)) != m]
        self._retained = dict(fresh)
        if changes:
            self._notify(self._retained_watchers, changes)

    def _apply_retained(self, updates: list[tuple[tuple[str, str], bytes | None]]) -> None:
        changes: list[RetainedChange] = []
        for key, message in updates:
            if message is not None:
                self._retained[key] = message
                changes.append(RetainedChange(key[0], key[1], message))
            elif self._retained.pop(key, None) is not None:
                changes.append(RetainedChange(key[0], key[1], None))
        if changes:
            self._notify(self._retained_watchers, changes)
