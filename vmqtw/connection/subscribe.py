"""SUBSCRIBE and UNSUBSCRIBE: filter checks, authorization and its modifiers, limits.

A plugin may answer a SUBSCRIBE's authorization later (a Deferred, e.g. a
webhook): the connection then holds the client's later packets until
``authorized_subscribe`` applied the verdict."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from vmqtw.auth.api import Error, Ok
from vmqtw.cluster.netsplit import NETSPLIT
from vmqtw.auth.modifiers import ModifierError, check_subscribe
from vmqtw.codec import reasons
from vmqtw.codec.encoder import encode
from vmqtw.codec.packets import MQTT5, MQTT31, Suback, SubOptions, Subscribe, Unsuback, Unsubscribe
from vmqtw.connection.state import CONNECTED
from vmqtw.core.topics import TopicError, parse_shared, validate_topic_filter

if TYPE_CHECKING:  # pragma: no cover
    from vmqtw.connection.connection import Connection
    from vmqtw.core.session import Session


def handle_subscribe(conn: Connection, packet: Subscribe) -> None:
    """SUBSCRIBE: validate each filter, authorize, apply limits, SUBACK, subscribe."""
    session = conn.session
    if conn.state != CONNECTED or session is None:
        conn.protocol_violation("SUBSCRIBE before CONNECT")
        return
    config = conn.broker.config
    level = conn.protocol_level
    failure = reasons.SUBACK_FAILURE
    codes: list[int] = []
    wanted: list[tuple[str, int]] = []
    wanted_at: list[int] = []  # index in packet.topics of each wanted entry
    for topic_filter, options in packet.topics:
        try:
            group, inner = parse_shared(topic_filter)
            if group is not None and options.no_local:
                conn.protocol_violation(f"no local on shared subscription {topic_filter!r}")
                return
            validate_topic_filter(inner, config.topic_max_depth)
        except TopicError as e:
            if level == MQTT31:  # 3.1 has no failure return code
                conn.protocol_violation(f"invalid topic filter {topic_filter!r}: {e}")
                return
            conn.log.info("client {client_id!r}: invalid topic filter {filter!r}: {reason}",
                          client_id=session.client_id, filter=topic_filter, reason=str(e))
            codes.append(reasons.TOPIC_FILTER_INVALID if level == MQTT5 else failure)
            continue
        wanted_at.append(len(codes))
        codes.append(options.qos)
        wanted.append((topic_filter, options.qos))
    verdict: Any = None
    if wanted:
        if level == MQTT5:
            verdict = conn.authorizer.subscribe_m5(session, wanted, packet.properties,
                                                   deferrable=True)
        else:
            verdict = conn.authorizer.subscribe(session, wanted, deferrable=True)
        if type(verdict) is Deferred:
            conn.await_verdict(verdict, 0, authorized_subscribe, packet, session, codes,
                               wanted, wanted_at)
            return
    authorized_subscribe(conn, verdict, packet, session, codes, wanted, wanted_at)


def authorized_subscribe(conn: Connection, verdict: Any, packet: Subscribe, session: Session,
                         codes: list[int], wanted: list[tuple[str, int]],
                         wanted_at: list[int]) -> None:
    """Apply auth_on_subscribe's verdict (given at once or later; None when no
    filter was valid): limits, SUBACK, subscriptions."""
    config = conn.broker.config
    level = conn.protocol_level
    rewritten: dict[int, tuple[str, int]] = {}
    if wanted:
        if verdict.__class__ is Error:
            if verdict.reason == NETSPLIT:  # the cluster is split (VerneMQ's counter)
                conn.counters[conn.slots.mqtt_subscribe_error] += 1  # type: ignore[attr-defined]
                conn.log.info("client {client_id!r}: subscribe to {filters} refused: "
                              "cluster not ready", client_id=session.client_id,
                              filters=[f for f, _ in wanted])
            else:
                conn.counters[conn.slots.mqtt_subscribe_auth_error] += 1  # type: ignore[attr-defined]
                conn.log.info("client {client_id!r}: subscribe to {filters} not authorized",
                              client_id=session.client_id, filters=[f for f, _ in wanted])
            denied = reasons.SUBACK_FAILURE if level != MQTT5 else (
                reasons.UNSPECIFIED_ERROR if verdict.reason == NETSPLIT
                else reasons.NOT_AUTHORIZED)
            codes = [c if c >= 0x80 else denied for c in codes]
        elif verdict.__class__ is Ok and verdict.modifiers:
            rewrite_subscriptions(conn, verdict.modifiers, wanted,
                                  wanted_at, codes, rewritten)
    limit = config.max_subscriptions_per_client
    accepted: list[tuple[str, SubOptions]] = []
    for i, (topic_filter, options) in enumerate(packet.topics):
        if codes[i] >= 0x80:
            continue
        if i in rewritten:
            topic_filter, qos = rewritten[i]
            options = SubOptions(qos, options.no_local, options.retain_as_published,
                                 options.retain_handling)
        if limit and topic_filter not in session.subscriptions and \
                len(session.subscriptions) + len(accepted) >= limit:
            codes[i] = reasons.QUOTA_EXCEEDED if level == MQTT5 else reasons.SUBACK_FAILURE
            continue
        accepted.append((topic_filter, options))
    conn.write(encode(Suback(packet.packet_id, codes), level))
    conn.counters[conn.slots.mqtt_suback_sent] += 1  # type: ignore[attr-defined]
    sub_id = packet.properties.get("subscription_identifier")  # MQTT 5.0: [n] or absent
    broker = conn.broker
    for topic_filter, options in accepted:
        if sub_id:
            session.sub_ids[topic_filter] = sub_id[0]
        elif session.sub_ids:
            session.sub_ids.pop(topic_filter, None)
        broker.subscribe(session, topic_filter, options)
    notifier = conn.notifier
    if notifier.subscribe and accepted:
        notifier.on_subscribe(session, [(f, o.qos) for f, o in accepted])


def rewrite_subscriptions(conn: Connection, modifiers: dict[str, Any],
                          wanted: list[tuple[str, int]], wanted_at: list[int], codes: list[int],
                          rewritten: dict[int, tuple[str, int]]) -> None:
    """auth_on_subscribe's ok(topics=[(filter, qos), ...]): one entry per
    requested filter; a QoS of 128 denies that entry.  Invalid modifiers
    deny the whole SUBSCRIBE (the plugin's error, logged)."""
    denied = reasons.NOT_AUTHORIZED if conn.protocol_level == MQTT5 else reasons.SUBACK_FAILURE
    try:
        entries = check_subscribe(modifiers, wanted)
    except ModifierError as e:
        conn.log.error("client {client_id!r}: {reason}", client_id=conn.client_id,
                       reason=str(e))
        for i in wanted_at:
            codes[i] = denied
        return
    for i, (topic_filter, qos) in zip(wanted_at, entries, strict=True):
        if qos >= 0x80:
            codes[i] = denied
        else:
            codes[i] = qos
            rewritten[i] = (topic_filter, qos)


def handle_unsubscribe(conn: Connection, packet: Unsubscribe) -> None:
    """UNSUBSCRIBE (plugins may rewrite the list), then UNSUBACK."""
    session = conn.session
    if conn.state != CONNECTED or session is None:
        conn.protocol_violation("UNSUBSCRIBE before CONNECT")
        return
    refused = getattr(conn.authorizer, "unsubscribe_refused", None)  # cluster nodes only
    if refused is not None and refused():
        netsplit_unsubscribe(conn, packet)
        return
    topics = packet.topics
    notifier = conn.notifier
    if notifier.unsubscribe:
        topics = notifier.on_unsubscribe(session, topics)
    codes = []
    for topic_filter in topics:
        found = conn.broker.unsubscribe(session, topic_filter)
        codes.append(reasons.SUCCESS if found else reasons.NO_SUBSCRIPTION_EXISTED)
    if len(codes) != len(packet.topics):  # a plugin rewrote the list
        codes = [reasons.SUCCESS] * len(packet.topics)
    conn.write(encode(Unsuback(packet.packet_id, codes), conn.protocol_level))
    conn.counters[conn.slots.mqtt_unsuback_sent] += 1  # type: ignore[attr-defined]


def netsplit_unsubscribe(conn: Connection, packet: Unsubscribe) -> None:
    """An UNSUBSCRIBE while the cluster is split (``allow_unsubscribe_during_netsplit``
    off): the subscriptions stay; MQTT 5.0 gets UNSUBACK 0x80 per filter, 3.x no
    UNSUBACK at all (it has no failure code; as VerneMQ, the client retries)."""
    conn.counters[conn.slots.mqtt_unsubscribe_error] += 1  # type: ignore[attr-defined]
    conn.log.info("client {client_id!r}: unsubscribe from {filters} refused: cluster not "
                  "ready", client_id=conn.client_id, filters=packet.topics)
    if conn.protocol_level == MQTT5:
        codes = [reasons.UNSPECIFIED_ERROR] * len(packet.topics)
        conn.write(encode(Unsuback(packet.packet_id, codes), MQTT5))
        conn.counters[conn.slots.mqtt_unsuback_sent] += 1  # type: ignore[attr-defined]
