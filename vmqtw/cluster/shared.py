"""Shared subscription groups (``$share/GROUP/filter``) that span cluster nodes.

Every node announces a route ``$share/GROUP/filter`` (with its mountpoint) while it has
at least one local member of the group, like any other route. The node where a message
is *published* picks the one recipient of each matching group, following
``shared_subscription_policy`` (VerneMQ's ``vmq_shared_subscriptions``):

- ``prefer_local``: an online member on this node; else a node with members; else an
  offline member (persistent session) on this node;
- ``local_only``: members on this node only (nothing crosses nodes);
- ``random`` and ``prefer_online_before_local``: at random among the online members
  on this node and the other nodes with members; else an offline member on this node.

Routes are collapsed per node, so a remote node counts as one candidate (whatever its
number of members) and is assumed to have an online member; the node that receives the
pick chooses its member at random (online first). A remote pick travels as an ``ENQ``
record whose client id is :data:`GROUP_MARK` + the shared filter (MQTT forbids U+0000
in client ids, so it never names a real session). A message that came from a peer as a
plain ``MSG`` is never given to local group members: the publishing node did the pick.

The receiving node answers each pick with an ``ENQ_ACK`` (status :data:`DELIVERED`, or
:data:`NO_MEMBER` when its last member has just left). A pick answered ``NO_MEMBER``,
or not answered within ``remote_enqueue_timeout`` (VerneMQ's, default 5 s), is picked
again once among the remaining candidates (the other nodes with members, this node's
members); with none left it is dropped and counted (:class:`PendingPicks`).
"""
from __future__ import annotations

import random
from typing import Any, Callable, NamedTuple

from vmqtw.cluster.codec import Enq, Msg
from vmqtw.core.topics import TopicTree, parse_shared

#: Leading character of an ``ENQ`` client id that names a shared group.
GROUP_MARK = "\x00"


def group_key(group: str) -> tuple[None, str]:
    """The key of a shared group's value in the broker's topic tree."""
    return (None, group)


#: ``ENQ_ACK`` status of a shared-group pick.
DELIVERED = 0
NO_MEMBER = 1


def enq_for_group(record: Msg, group: str, inner: str, ref: int = 0) -> Enq:
    """The ``ENQ`` record that gives ``record`` to one member of ``$share/group/inner``
    (``ref`` != 0: answer with an ``ENQ_ACK``)."""
    return Enq(ref, record.mountpoint, f"{GROUP_MARK}$share/{group}/{inner}", record.topic,
               record.payload, record.qos, record.retain, record.properties)


def group_of(record: Enq) -> tuple[str, str] | None:
    """``(group, inner filter)`` when ``record`` is for a shared group, else None."""
    if not record.client_id.startswith(GROUP_MARK):
        return None
    group, inner = parse_shared(record.client_id[1:])
    return None if group is None else (group, inner)


class SharedRoutes:
    """The other nodes' shared-group routes and the per-message pick.

    :param node_name: this node (its own routes are ignored).
    """

    #: Where the random choice comes from (tests replace it).
    rng: random.Random = random.Random()

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        #: mountpoint -> inner filter tree; key ``(group, node)``, value the group name.
        self.trees: dict[str, TopicTree[tuple[str, str], str]] = {}
        self.picked_remote = 0

    def __bool__(self) -> bool:
        return bool(self.trees)

    def changed(self, node: str, mountpoint: str, group: str, inner: str,
                added: bool) -> None:
        """A node's route for ``$share/group/inner`` appeared or went."""
        tree = self.trees.get(mountpoint)
        if added:
            if tree is None:
                tree = self.trees[mountpoint] = TopicTree()
            tree.add(inner, (group, node), group)
        elif tree is not None:
            tree.remove(inner, (group, node))
            if not len(tree):
                del self.trees[mountpoint]

    def remote_groups(self, mountpoint: str, topic: str) -> dict[tuple[str, str], list[str]]:
        """``(inner filter, group) -> [nodes]`` for the other nodes' groups matching
        ``topic``."""
        tree = self.trees.get(mountpoint)
        if tree is None:
            return {}
        groups: dict[tuple[str, str], list[str]] = {}
        for inner, (group, node), _v in tree.match(topic):
            groups.setdefault((inner, group), []).append(node)
        return groups

    def pick(self, policy: str, local: Any, nodes: list[str]) -> str | None:
        """The node that delivers to the group: a name from ``nodes``, or None for this
        node (``local``: the broker's ``SharedGroup`` here, or None without members)."""
        if policy == "local_only" or not nodes:
            return None
        online = 0
        if local is not None:
            online = sum(1 for m in local.members.values() if m.session.conn is not None)
        if policy == "prefer_local":
            if online:
                return None
            return self.rng.choice(nodes)
        # random, prefer_online_before_local: online members anywhere (a remote node
        # is one candidate, taken to be online).
        n = self.rng.randrange(online + len(nodes))
        return None if n < online else nodes[n - online]


class Pick(NamedTuple):
    """A shared-group pick sent to another node and not acknowledged yet."""

    node: str
    record: Msg
    group: str
    inner: str
    #: When it is given up on (clock seconds).
    deadline: float
    #: Whether this is the second pick already (there is no third).
    retried: bool


class PendingPicks:
    """The picks sent to other nodes, waiting for their ``ENQ_ACK``.

    One timer, for the oldest pick: the picks are kept in the order they were sent,
    which is the order of their deadlines, so a timeout costs no timer per message.

    :param clock: ``seconds()`` and ``callLater()``.
    :param timeout: ``remote_enqueue_timeout`` in seconds.
    :param expired: called with each pick whose deadline passed.
    """

    def __init__(self, clock: Any, timeout: float, expired: Callable[[Pick], None]) -> None:
        self.clock = clock
        self.timeout = timeout
        self.expired = expired
        self.pending: dict[int, Pick] = {}
        self._ref = 0
        self._call: Any = None

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, node: str, record: Msg, group: str, inner: str,
            retried: bool = False) -> int:
        """Remember a pick sent to ``node``; returns the ref of its ``ENQ``."""
        self._ref += 1
        ref = self._ref
        self.pending[ref] = Pick(node, record, group, inner,
                                 self.clock.seconds() + self.timeout, retried)
        if self._call is None:
            self._call = self.clock.callLater(self.timeout, self._expire)
        return ref

    def acked(self, ref: int) -> Pick | None:
        """The pick ``ref`` was answered: forget it (None if unknown or expired)."""
        return self.pending.pop(ref, None)

    def _expire(self) -> None:
        self._call = None
        now = self.clock.seconds()
        pending = self.pending
        while pending:
            ref = next(iter(pending))
            pick = pending[ref]
            if pick.deadline > now:
                self._call = self.clock.callLater(pick.deadline - now, self._expire)
                return
            del pending[ref]
            self.expired(pick)

    def cancel(self) -> None:
        """Stop the timer (the node stops)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
