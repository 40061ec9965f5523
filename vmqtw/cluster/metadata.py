"""What the nodes of a cluster share, behind one zope interface: :class:`IMetadata`.

The engine (Redis today, etcd later) is never on the per-publish path. Each node keeps
*local views* that the engine feeds through change streams and that the core reads
synchronously:

- **membership**: every node heartbeats; a node is *down* once its expiry, computed from
  the engine's clock (Redis ``TIME``), has passed. Local clocks are never compared.
- **routes**: topic filter -> node, each route *owned* by the node that has the
  subscribers. The owner announces a filter when its first local subscriber appears and
  withdraws it with the last one; it re-announces all of them whenever the engine has
  lost them (an engine restart, or the node was declared dead while it was only slow).
- **retained messages**: last writer wins per (mountpoint, topic); every node keeps a
  copy fed by the retained change stream.

And, read or written on demand (one engine round trip each):

- the **client-id registry**: (mountpoint, client id) -> (owning node, epoch); an atomic
  :meth:`IMetadata.claim` per CONNECT returns the previous owner and a strictly larger
  epoch, which fences a stale owner (:meth:`IMetadata.is_owner`, :meth:`IMetadata.release`);
- **persistent-session subscriptions**: (mountpoint, client id) -> {filter: subinfo},
  written by the node holding the session (:mod:`vmqtw.cluster.session_subs`).

Every method that talks to the engine returns a ``Deferred`` that fails with
:class:`MetadataUnavailable` when the engine does not answer in time: a dead engine gives
a clear error, never a hang.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from zope.interface import Attribute, Interface


class MetadataUnavailable(Exception):
    """The metadata engine could not be reached or did not answer in time."""


@dataclass(frozen=True, slots=True)
class Member:
    """A live cluster node as the engine reports it."""

    name: str
    #: ``host:port`` of the node's ``listener.vmq`` (what peers connect to).
    address: str
    #: When the node is declared dead unless it heartbeats again (engine clock, ms).
    expires_ms: int


@dataclass(frozen=True, slots=True)
class Claim:
    """The result of :meth:`IMetadata.claim`."""

    #: The node that owned the client id before, or ``None``.
    previous: str | None
    #: The new owner's epoch: larger than every epoch handed out before for this id.
    epoch: int


@dataclass(frozen=True, slots=True)
class RouteChange:
    """A change of the local route view: ``node`` now has (or no longer has) ``filter``."""

    node: str
    filter: str
    added: bool


@dataclass(frozen=True, slots=True)
class RetainedChange:
    """A change of the local retained copy; ``message`` is ``None`` for a deletion."""

    mountpoint: str
    topic: str
    message: bytes | None


MembersCallback = Callable[[dict[str, Member], set[str]], None]
RoutesCallback = Callable[[list[RouteChange]], None]
RetainedCallback = Callable[[list[RetainedChange]], None]


class IMetadata(Interface):
    """The cluster's shared state, as one node sees and changes it."""

    node_name = Attribute("This node's name (unique in the cluster).")
    reachable = Attribute("True while the engine answers this node's heartbeats.")

    # -- lifecycle ----------------------------------------------------------

    def start():
        """Connect, register this node, announce its routes and load the views.

        :returns: a ``Deferred`` that fires once the views are loaded, or fails with
            :class:`MetadataUnavailable`.
        """

    def stop():
        """Stop heartbeats and change streams and disconnect, *without* leaving: the
        other nodes see this node expire after the node timeout (a crash looks the
        same). :returns: a ``Deferred``."""

    def leave():
        """Remove this node's member record and routes at once (``cluster leave``)."""

    def watch_announce(callback):
        """Call ``callback()`` each time this node has (re-)announced itself to the
        engine: at the start, and after the engine lost the node (a restart, or it was
        declared dead while slow). What the node keeps in the engine besides its routes
        (persistent sessions' subscriptions) must then be written again."""

    # -- membership ---------------------------------------------------------

    def members():
        """The live members, this node included: ``{name: Member}`` (local view)."""

    def watch_members(callback):
        """Call ``callback(up, down)`` on every change of the member view: ``up`` maps
        names of nodes that joined (or changed address) to their :class:`Member`,
        ``down`` is the set of names that left or expired."""

    # -- routes -------------------------------------------------------------

    def add_route(topic_filter):
        """Announce that this node has subscribers for ``topic_filter`` (including
        ``$share/group/filter``). Idempotent. :returns: a ``Deferred``."""

    def remove_route(topic_filter):
        """Withdraw ``topic_filter`` for this node. Idempotent."""

    def routes():
        """The route view: ``{node: frozenset(filters)}`` for every node with routes."""

    def watch_routes(callback):
        """Call ``callback([RouteChange, ...])`` for every change of the route view."""

    # -- client-id registry -------------------------------------------------

    def claim(mountpoint, client_id):
        """Make this node the owner of the client id, atomically.

        :returns: a ``Deferred`` firing with a :class:`Claim`.
        """

    def owner(mountpoint, client_id):
        """:returns: a ``Deferred`` firing with ``(node, epoch)`` or ``None``."""

    def is_owner(mountpoint, client_id, epoch):
        """Whether this node still owns the client id with ``epoch`` (check it before
        delivering a will or honouring a takeover). :returns: ``Deferred[bool]``."""

    def release(mountpoint, client_id, epoch):
        """Give up ownership if this node still holds it with ``epoch``; a stale owner's
        release changes nothing. :returns: ``Deferred[bool]`` (released or not)."""

    # -- retained messages --------------------------------------------------

    def set_retained(mountpoint, topic, message):
        """Store the encoded retained ``message`` (bytes) for the topic."""

    def delete_retained(mountpoint, topic):
        """Delete the retained message of the topic."""

    def retained():
        """The local retained copy: ``{(mountpoint, topic): message}``."""

    def watch_retained(callback):
        """Call ``callback([RetainedChange, ...])`` for every change of the copy."""

    # -- persistent-session subscriptions -----------------------------------

    def store_subscriptions(mountpoint, client_id, subscriptions):
        """Add or replace ``{filter: subinfo bytes}`` for a persistent session."""

    def remove_subscriptions(mountpoint, client_id, filters):
        """Remove the given filters from a persistent session."""

    def subscriptions(mountpoint, client_id):
        """:returns: a ``Deferred`` firing with ``{filter: subinfo bytes}``."""

    def delete_session(mountpoint, client_id):
        """Forget a persistent session's subscriptions."""
