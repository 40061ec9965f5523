"""Cross-node routing: the object a clustered :class:`~vmqtw.core.broker.Broker` calls.

The broker has one seam, ``Broker.remote``. When set, it calls:

- ``subscribed(mountpoint, filter)`` / ``unsubscribed(mountpoint, filter)`` whenever a
  local session's subscription enters or leaves its topic tree. The router counts them
  per (mountpoint, filter) and announces a route to the metadata on the first one and
  withdraws it with the last one (routes are *collapsed per filter*, as in VerneMQ);
- ``subscriptions_changed(session, filter)`` after a persistent session subscribed to
  or unsubscribed from ``filter``: passed on to :attr:`ClusterRouter.session_subs`,
  which keeps them in the metadata (:mod:`vmqtw.cluster.session_subs`);
- ``publish(message, mountpoint)`` for every message published on this node (not for
  the ones that came from a peer). The router sends the message once to each live node
  that has a matching route, and records retained messages in the metadata. For the
  shared groups with members on other nodes it picks the delivering node
  (:mod:`vmqtw.cluster.shared`), sends an ``ENQ`` there, and tells the broker which
  local groups to skip.

Messages from peers reach :meth:`ClusterRouter.deliver`, which publishes them with
``from_remote=True``: they are matched against the local (non-shared) subscribers
only, never forwarded again; a group ``ENQ`` goes to one local member of that group.

Nothing here touches a socket: the links are looked up through ``links`` (peer name ->
anything with ``send(record)``), which :class:`~vmqtw.cluster.node.ClusterNode` keeps. A
link that also has ``send_encoded(bytes)`` (:class:`~vmqtw.cluster.link.PeerLink`) gets a
publish encoded once, straight from the message (:func:`link_bytes`).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from vmqtw.cluster.codec import Enq, EnqAck, Msg, Record, decode_batch, encode_msg, encode_record
from vmqtw.cluster.metadata import MetadataUnavailable, RetainedChange, RouteChange
from vmqtw.cluster.shared import (
    DELIVERED, NO_MEMBER, PendingPicks, Pick, SharedRoutes, enq_for_group, group_key,
    group_of,
)
from vmqtw.codec.packets import PUBLISH
from vmqtw.codec.properties import decode_properties, encode_properties
from vmqtw.core.message import FORWARDED, Message
from vmqtw.core.topics import TopicTree, parse_shared
from vmqtw.logs import Logger

#: The PUBLISH properties carried over the link: the forwarded ones and the expiry
#: interval (as what is left of it when the message leaves this node).
_LINK_PROPERTIES = FORWARDED

_SEP = "\x00"  # never in a topic filter (MQTT forbids U+0000)


def route_key(mountpoint: str, topic_filter: str) -> str:
    """The route of ``topic_filter`` in ``mountpoint`` as stored in the metadata: the
    filter itself in the default mountpoint, else ``mountpoint NUL filter``."""
    return f"{mountpoint}{_SEP}{topic_filter}" if mountpoint else topic_filter


def split_route(route: str) -> tuple[str, str]:
    """``(mountpoint, filter)`` of a route made by :func:`route_key`."""
    mountpoint, sep, topic_filter = route.partition(_SEP)
    return (mountpoint, topic_filter) if sep else ("", route)


def to_record(message: Message, mountpoint: str, now: float) -> Msg:
    """The link record of ``message``: its forwarded MQTT 5 properties and, if it
    expires, the seconds it has left."""
    props = message.properties
    kept = {k: props[k] for k in _LINK_PROPERTIES if k in props}
    if message.expires_at is not None:
        kept["message_expiry_interval"] = message.remaining_expiry(now)
    encoded = encode_properties(kept, PUBLISH) if kept else b""
    return Msg(mountpoint, message.topic, message.payload, message.qos, message.retain,
               encoded)


def link_bytes(message: Message, mountpoint: str, now: float) -> bytes:
    """The encoded ``MSG`` record of ``message`` (as ``encode_record(to_record(...))``),
    without the intermediate record for a message with no properties."""
    if not message.properties and message.expires_at is None:
        return encode_msg(mountpoint, message.topic, message.payload, message.qos,
                          message.retain)
    return encode_record(to_record(message, mountpoint, now))


def from_record(record: Msg, now: float) -> Message:
    """The :class:`Message` a link record carries, its expiry started at ``now``."""
    if not record.properties:  # no expiry interval either: nothing to start
        return Message(record.topic, record.payload, record.qos, record.retain)
    props, _ = decode_properties(record.properties, 0, PUBLISH)
    message = Message(record.topic, record.payload, record.qos, record.retain, props)
    message.start_expiry(now)
    return message


class ClusterRouter:
    """Routes between this node's broker and its peers.

    :param broker: the local :class:`~vmqtw.core.broker.Broker` (this router becomes
        its ``remote``).
    :param metadata: an :class:`~vmqtw.cluster.metadata.IMetadata` provider.
    :param links: peer node name -> its outgoing link (``send(record)``); read on
        every forwarded publish.
    """

    log = Logger()

    def __init__(self, broker: Any, metadata: Any, links: Mapping[str, Any]) -> None:
        self.broker = broker
        self.metadata = metadata
        self.node_name: str = metadata.node_name
        self.links = links
        #: (mountpoint, filter) -> local subscriptions holding it.
        self.local: dict[tuple[str, str], int] = {}
        #: mountpoint -> the other nodes' filters (tree key and value: the node name).
        self.remote: dict[str, TopicTree[str, str]] = {}
        #: The other nodes' shared groups (:mod:`vmqtw.cluster.shared`).
        self.shared = SharedRoutes(self.node_name)
        #: Called with ``(peer, record)`` for the records that are not messages
        #: (takeover control; :class:`~vmqtw.cluster.registry.ClientRegistry`).
        self.control: Callable[[str, Record], None] | None = None
        #: Keeps persistent sessions' subscriptions in the metadata
        #: (:class:`~vmqtw.cluster.session_subs.SessionSubscriptions`), or None.
        self.session_subs: Any = None
        self.forwarded = 0
        self.received = 0
        self.route_errors = 0
        #: Shared-group picks that found no member here any more (it just left).
        self.shared_lost = 0
        #: Publishes that went to at least one other node (VerneMQ's
        #: ``router_matches_remote``): one per publish, however many nodes matched.
        self.matches_remote = 0
        #: This node's picks for other nodes, waiting for their ``ENQ_ACK``.
        self.picks = PendingPicks(broker.clock, broker.config.cluster.remote_enqueue_timeout,
                                  self._repick)
        #: Picks made again (refused or unanswered), and given up (nowhere left).
        self.shared_repicked = 0
        self.shared_dropped = 0
        metadata.watch_routes(self.routes_changed)
        metadata.watch_retained(self.retained_changed)

    def attach(self) -> None:
        """Become the broker's ``remote`` and announce what is already subscribed (a
        store restored before the cluster started)."""
        broker = self.broker
        for session in list(broker.sessions.values()):
            for topic_filter in session.subscriptions:
                self.subscribed(session.mountpoint, topic_filter)
        broker.remote = self

    # -- local subscriptions -> routes ------------------------------------------

    def subscribed(self, mountpoint: str, topic_filter: str) -> None:
        """A local subscription to ``topic_filter`` entered the topic tree."""
        key = (mountpoint, topic_filter)
        count = self.local.get(key, 0)
        self.local[key] = count + 1
        if count == 0:
            self._route_op(self.metadata.add_route, route_key(mountpoint, topic_filter))

    def unsubscribed(self, mountpoint: str, topic_filter: str) -> None:
        """A local subscription to ``topic_filter`` left the topic tree."""
        key = (mountpoint, topic_filter)
        count = self.local.get(key, 0)
        if count <= 1:
            self.local.pop(key, None)
            if count == 1:
                self._route_op(self.metadata.remove_route,
                               route_key(mountpoint, topic_filter))
        else:
            self.local[key] = count - 1

    def subscriptions_changed(self, session: Any, topic_filter: str) -> None:
        """A persistent session subscribed to or unsubscribed from ``topic_filter``."""
        if self.session_subs is not None:
            self.session_subs.changed(session, topic_filter)

    def _route_op(self, op: Callable[[str], Any], route: str) -> None:
        def failed(f: Any) -> None:
            # The metadata keeps this node's own routes and announces all of them
            # once the engine answers again: nothing is lost.
            self.route_errors += 1
            if not f.check(MetadataUnavailable):
                self.log.failure("cluster: route update for {route!r} failed", f,
                                 route=route)
        op(route).addErrback(failed)

    # -- routes of other nodes -----------------------------------------------------

    def routes_changed(self, changes: list[RouteChange]) -> None:
        """The metadata's route view changed (watcher)."""
        for change in changes:
            if change.node == self.node_name:
                continue
            mountpoint, topic_filter = split_route(change.filter)
            group, inner = parse_shared(topic_filter)
            if group is not None:
                self.shared.changed(change.node, mountpoint, group, inner, change.added)
                continue
            tree = self.remote.get(mountpoint)
            if change.added:
                if tree is None:
                    tree = self.remote[mountpoint] = TopicTree()
                tree.add(topic_filter, change.node, change.node)
            elif tree is not None:
                tree.remove(topic_filter, change.node)
                if not len(tree):
                    del self.remote[mountpoint]

    def nodes_for(self, mountpoint: str, topic: str) -> set[str]:
        """The other nodes with a route matching ``topic`` in ``mountpoint``."""
        tree = self.remote.get(mountpoint)
        if tree is None:
            return set()
        return {node for _f, node, _v in tree.match(topic)}

    # -- publishing ------------------------------------------------------------------

    def publish(self, message: Message, mountpoint: str,
                retain: bool = True) -> set[tuple[str, Any]] | None:
        """A message published on this node: once to each node with a matching route;
        a retained one is also recorded in the metadata (unless ``retain`` is false:
        the local retained quotas refused it).

        Returns the local shared groups (``(inner filter, tree key)``) whose pick went
        to another node (the broker then skips them), or None."""
        if message.retain and retain:
            self._retain(message, mountpoint)
        record: Msg | None = None
        tree = self.remote.get(mountpoint)
        if tree is not None:
            matches: Any = tree.match(message.topic)  # (cached by the tree per topic)
            if len(matches) == 1:
                # One node's route (the usual case), on a PeerLink: no loop, no dedup.
                send_encoded = getattr(self.links.get(matches[0][1]), "send_encoded", None)
                if send_encoded is not None:
                    if message.properties or message.expires_at is not None:
                        send_encoded(link_bytes(message, mountpoint,
                                                self.broker.clock.seconds()))
                    else:  # (link_bytes inlined)
                        send_encoded(encode_msg(mountpoint, message.topic, message.payload,
                                                message.qos, message.retain))
                    self.forwarded += 1
                    self.matches_remote += 1
                    matches = None  # sent
            if matches:
                nodes: Any = dict.fromkeys(node for _f, node, _v in matches)
                data: bytes | None = None
                sent = 0
                links = self.links
                for node in nodes:
                    link = links.get(node)
                    if link is None:
                        continue
                    send_encoded = getattr(link, "send_encoded", None)
                    if send_encoded is not None:
                        if data is None:  # encoded once for every node (link_bytes inlined)
                            if not message.properties and message.expires_at is None:
                                data = encode_msg(mountpoint, message.topic, message.payload,
                                                  message.qos, message.retain)
                            else:
                                data = link_bytes(message, mountpoint,
                                                  self.broker.clock.seconds())
                        send_encoded(data)
                    else:
                        if record is None:
                            record = to_record(message, mountpoint,
                                               self.broker.clock.seconds())
                        link.send(record)
                    sent += 1
                if sent:
                    self.forwarded += sent
                    self.matches_remote += 1
        if not self.shared.trees:  # (not the __bool__ call: this runs per publish)
            return None
        policy = self.broker.config.shared_subscription_policy
        if policy == "local_only":
            return None
        groups = self.shared.remote_groups(mountpoint, message.topic)
        if not groups:
            return None
        taken: set[tuple[str, Any]] = set()
        counted = record is not None
        local_tree = self.broker.trees.get(mountpoint)
        for (inner, group), nodes in groups.items():
            nodes = [n for n in nodes if n in self.links]
            key = group_key(group)
            local = local_tree.get(inner, key) if local_tree is not None else None
            picked = self.shared.pick(policy, local, nodes)
            if picked is None:
                continue
            if record is None:
                record = to_record(message, mountpoint, self.broker.clock.seconds())
            ref = self.picks.add(picked, record, group, inner)
            self.links[picked].send(enq_for_group(record, group, inner, ref))
            self.shared.picked_remote += 1
            taken.add((inner, key))
        if taken and not counted:
            self.matches_remote += 1
        return taken or None

    def deliver(self, peer: str, records: list[Record]) -> None:
        """Records from ``peer``'s link: publish each message to the local subscribers."""
        broker = self.broker
        publish = broker.publish
        now = broker.clock.seconds()
        for record in records:
            if type(record) is Msg:
                self.received += 1
                if record.properties:
                    message = from_record(record, now)
                else:  # (from_record without properties, inlined: once per message)
                    message = Message(record.topic, record.payload, record.qos,
                                      record.retain)
                publish(message, record.mountpoint, None, True)  # from_remote
            elif type(record) is Enq and (target := group_of(record)) is not None:
                self.received += 1
                message = from_record(Msg(record.mountpoint, record.topic, record.payload,
                                          record.qos, record.retain, record.properties), now)
                delivered = broker.deliver_shared(message, record.mountpoint, *target)
                if not delivered:
                    self.shared_lost += 1
                if record.ref:
                    link = self.links.get(peer)
                    if link is not None:
                        link.send(EnqAck(record.ref, DELIVERED if delivered else NO_MEMBER))
            elif type(record) is EnqAck:
                pick = self.picks.acked(record.ref)
                if pick is not None and record.status != DELIVERED:
                    self._repick(pick)
            elif self.control is not None:
                self.control(peer, record)
            else:
                self.log.debug("cluster: ignoring {kind} record from {peer}",
                               kind=type(record).__name__, peer=peer)
        broker.flush()

    def _repick(self, pick: Pick) -> None:
        """A pick that ``pick.node`` refused or left unanswered: pick once more among
        the remaining candidates (the other nodes with members, this node's members),
        or drop it and count it."""
        broker = self.broker
        record = pick.record
        mountpoint = record.mountpoint
        if not pick.retried:
            nodes = [n for n in self.shared.remote_groups(mountpoint, record.topic).get(
                (pick.inner, pick.group), []) if n != pick.node and n in self.links]
            tree = broker.trees.get(mountpoint)
            local = tree.get(pick.inner, group_key(pick.group)) if tree is not None else None
            picked = self.shared.pick(broker.config.shared_subscription_policy, local, nodes)
            if picked is not None:
                self.shared_repicked += 1
                ref = self.picks.add(picked, record, pick.group, pick.inner, retried=True)
                self.links[picked].send(enq_for_group(record, pick.group, pick.inner, ref))
                return
            if local is not None:
                message = from_record(record, broker.clock.seconds())
                if broker.deliver_shared(message, mountpoint, pick.group, pick.inner):
                    self.shared_repicked += 1
                    broker.flush()
                    return
        self.shared_dropped += 1
        self.log.debug("cluster: message on {topic!r} for shared group {group!r} dropped: "
                       "no member left to take it", topic=record.topic, group=pick.group)

    # -- retained messages -----------------------------------------------------------

    def _retain(self, message: Message, mountpoint: str) -> None:
        meta = self.metadata
        if message.payload:
            data = encode_record(to_record(message, mountpoint, self.broker.clock.seconds()))
            d = meta.set_retained(mountpoint, message.topic, data)
        else:
            d = meta.delete_retained(mountpoint, message.topic)

        def failed(f: Any) -> None:
            self.log.warn("cluster: retained message on {topic!r} not shared with the "
                          "other nodes: {reason}", topic=message.topic,
                          reason=f.getErrorMessage())
        d.addErrback(failed)

    def retained_changed(self, changes: list[RetainedChange]) -> None:
        """The metadata's retained copy changed (watcher): keep the local store equal."""
        store = self.broker.store
        now = self.broker.clock.seconds()
        for change in changes:
            message = None
            if change.message is not None:
                try:
                    records = decode_batch(change.message)
                    record = records[0]
                    assert type(record) is Msg
                except Exception:
                    self.log.warn("cluster: undecodable retained message for {topic!r}",
                                  topic=change.topic)
                    continue
                message = from_record(record, now)
            store.retained_set(change.mountpoint, change.topic, message)

    def load_retained(self) -> None:
        """Copy the metadata's whole retained view into the local store."""
        self.retained_changed([RetainedChange(mp, topic, msg)
                               for (mp, topic), msg in self.metadata.retained().items()])
