"""PUBLISH and the QoS 1/2 acknowledgements, in both directions.

The per-message path: check the topic, authorize, route through the broker,
acknowledge once the store is durable.  A plugin may answer the authorization
later (a Deferred, e.g. a webhook): the connection then holds the client's
later packets until ``authorized_publish`` applied the verdict.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from vmqtw.auth.api import Error, Ok
from vmqtw.auth.modifiers import PUBLISH as PUBLISH_MODIFIERS
from vmqtw.auth.modifiers import ModifierError
from vmqtw.auth.modifiers import check as check_modifiers
from vmqtw.codec import reasons
from vmqtw.codec.encoder import encode, encode_ack
from vmqtw.codec.packets import (
    MQTT5, MQTT31, PUBACK, Puback, Pubcomp, Publish, Pubrec, Pubrel,
)
from vmqtw.connection.state import CLOSED, CONNECTED, is_utf8, valid_topic_name
from vmqtw.core.message import Message
from vmqtw.core.session import Session
from vmqtw.core.topics import TopicError, validate_topic_name

if TYPE_CHECKING:  # pragma: no cover
    from vmqtw.connection.connection import Connection


def handle_publish(conn: Connection, packet: Publish) -> None:
    """PUBLISH: topic checks, authorization and modifiers, routing, acknowledgement."""
    session = conn.session
    if conn.state != CONNECTED or session is None:
        conn.protocol_violation("PUBLISH before CONNECT")
        return
    if conn.max_message_rate and over_rate(conn, packet):
        return
    level = conn.protocol_level
    if level == MQTT5:
        topic = inbound_topic5(conn, packet, session)
        if topic is None:
            return
    else:
        topic = packet.topic
    depth = conn.broker.config.topic_max_depth
    if topic != conn.valid_topic or depth != conn.valid_depth:
        # A client usually publishes to the same topic again and again: the
        # last topic that passed (under this depth limit) is not checked again.
        try:
            validate_topic_name(topic, depth)
        except TopicError as e:
            conn.protocol_violation(f"invalid topic {topic!r}: {e}", reasons.TOPIC_NAME_INVALID)
            return
        conn.valid_topic = topic
        conn.valid_depth = depth
    qos = packet.qos
    if qos == 2 and packet.packet_id in session.incoming_qos2:
        conn.write(encode(Pubrec(packet.packet_id), level))
        conn.count_sent("mqtt_pubrec_sent")
        return
    if level == MQTT5:
        props = inbound_properties5(conn, packet)
        if props is None:
            return
        verdict = conn.authorizer.publish_m5(session, topic, packet.payload, qos,
                                             packet.retain, props, True)  # deferrable
    else:
        props = None
        verdict = conn.authorizer.publish(session, topic, packet.payload, qos, packet.retain,
                                          True)  # deferrable (positional: the hot path)
    if type(verdict) is Deferred:
        conn.await_verdict(verdict, 1 if qos and level == MQTT5 else 0,
                           authorized_publish, packet, topic, props, session)
        return
    authorized_publish(conn, verdict, packet, topic, props, session)


def authorized_publish(conn: Connection, verdict: Any, packet: Publish, topic: str,
                       props: dict[str, Any] | None, session: Session) -> None:
    """Apply auth_on_publish's verdict (given at once or later): refuse, or
    route the message (with its modifiers) and acknowledge it."""
    if verdict.__class__ is Error:
        unauthorized_publish(conn, packet, verdict)
        return
    qos = packet.qos
    level = conn.protocol_level
    message = Message(topic, packet.payload, qos, packet.retain, props)
    if props is not None and "message_expiry_interval" in props:
        message.start_expiry(conn.broker.clock.seconds())
    mountpoint = session.mountpoint
    if verdict.__class__ is Ok and verdict.modifiers:
        modified = modified_message(conn, verdict.modifiers, message)
        if modified is None:
            unauthorized_publish(conn, packet, Error("invalid_modifiers"))
            return
        message, mountpoint = modified[0], modified[1] or mountpoint
    if message.retain and level == MQTT5 and qos and \
            not conn.broker.retained.allowed(mountpoint, message):
        conn.broker.retained.refuse(mountpoint, message, session.client_id)
        refuse_publish5(conn, packet, reasons.QUOTA_EXCEEDED, "retained message quota exceeded")
        return
    count = conn.broker.publish(message, mountpoint, session)
    notifier = conn.notifier
    if notifier.publish:
        notifier.on_publish(session, message.topic, message.payload, message.qos,
                            message.retain)
    if qos:
        # MQTT 5.0: 0x10 "no matching subscribers" (still a success).
        code = reasons.NO_MATCHING_SUBSCRIBERS if level == MQTT5 and not count else 0
        # Held until the store has what this message left there (if anything).
        if qos == 1:
            conn.write_durable(encode_ack(PUBACK, packet.packet_id) if not code  # type: ignore[arg-type]
                               else encode(Puback(packet.packet_id, code), level))  # type: ignore[arg-type]
            conn.count_sent("mqtt_puback_sent", code)
        else:
            session.qos2_received(packet.packet_id)  # type: ignore[arg-type]
            conn.write_durable(encode(Pubrec(packet.packet_id, code), level))  # type: ignore[arg-type]
            conn.count_sent("mqtt_pubrec_sent", code)


# -- max_message_rate: VerneMQ's per-client publish rate limit ----------------------------

def message_rate_limit(config: Any) -> int:
    """``max_message_rate`` (PUBLISHes per second and client; 0 = no limit)."""
    return int(config.max_message_rate)


def over_rate(conn: Connection, packet: Publish) -> bool:
    """Count a PUBLISH against ``max_message_rate``; True when it is over the limit.

    PUBLISHes are counted per one-second window, timed by the clock reading the
    connection already took for the input batch (``last_activity``): no clock
    call per message.  Over the limit, VerneMQ stops reading from the socket
    until the rate is back under it; so do we: the PUBLISH (and everything read
    after it) is held, reading pauses, and at the end of the window reading
    resumes and the held packets are handled (counting against the new window).
    No DISCONNECT 0x96 "message rate too high": the client is slowed down, not
    dropped, as in VerneMQ.
    """
    now = conn.last_activity
    if now >= conn.rate_window_end:
        conn.rate_window_end = now + 1.0
        conn.rate_count = 1
        return False
    conn.rate_count += 1
    if conn.rate_count <= conn.max_message_rate:
        return False
    conn.held.append(packet)
    conn.transport.pause_reading()
    delay = max(0.0, conn.rate_window_end - conn.clock.seconds())
    conn.log.debug("client {client_id!r}: over max_message_rate ({rate}/s), reading paused "
                   "for {delay:.3f}s", client_id=conn.client_id, rate=conn.max_message_rate,
                   delay=delay)
    conn.start_timer("throttle", delay, lambda: throttle_ended(conn))
    return True


def throttle_ended(conn: Connection) -> None:
    """The rate window ended: a new one starts, reading resumes, held packets run."""
    conn.timers.pop("throttle", None)
    if conn.state == CLOSED:
        return
    conn.rate_window_end = conn.clock.seconds() + 1.0
    conn.rate_count = 0
    conn.transport.resume_reading()
    conn.replay_held()
    conn.broker.flush()


# -- MQTT 5.0 PUBLISH rules, one helper per step -------------------------------------------

def inbound_topic5(conn: Connection, packet: Publish, session: Session) -> str | None:
    """The topic of a 5.0 PUBLISH (resolving a topic alias) after the checks
    that end the connection; None when it was closed."""
    props = packet.properties
    topic = packet.topic
    if "subscription_identifier" in props:
        conn.protocol_violation("PUBLISH from a client with a subscription identifier")
        return None
    config = conn.broker.config
    alias = props.get("topic_alias")
    if alias is not None:
        if alias > config.topic_alias_max_client:  # announced in our CONNACK
            conn.protocol_violation(f"topic alias {alias} above the maximum",
                                    reasons.TOPIC_ALIAS_INVALID)
            return None
        if topic:
            conn.aliases_in[alias] = topic
        else:
            found = conn.aliases_in.get(alias)
            if found is None:
                conn.protocol_violation(f"unknown topic alias {alias}")
                return None
            topic = found
    elif not topic:
        conn.protocol_violation("empty topic name without a topic alias")
        return None
    if packet.qos and packet.packet_id not in session.incoming_qos2 and \
            len(session.incoming_qos2) >= config.receive_max_broker:
        conn.protocol_violation("receive maximum exceeded", reasons.RECEIVE_MAXIMUM_EXCEEDED)
        return None
    response_topic = props.get("response_topic")
    if response_topic is not None and not valid_topic_name(response_topic):
        conn.protocol_violation(f"invalid response topic {response_topic!r}")
        return None
    return topic


def inbound_properties5(conn: Connection, packet: Publish) -> dict[str, Any] | None:
    """Check the payload format; the properties the message carries on (the
    topic alias is per hop), or None when the PUBLISH was refused
    (acknowledged with a reason, or closed)."""
    props = packet.properties
    if props.get("payload_format_indicator") == 1 and not is_utf8(packet.payload):
        if packet.qos:
            refuse_publish5(conn, packet, reasons.PAYLOAD_FORMAT_INVALID,
                            "payload is not valid UTF-8")
        else:
            conn.protocol_violation("payload is not valid UTF-8", reasons.PAYLOAD_FORMAT_INVALID)
        return None
    if "topic_alias" in props:  # per hop: never forwarded
        props = {k: v for k, v in props.items() if k != "topic_alias"}
    return props


def modified_message(conn: Connection, modifiers: dict[str, Any],
                     message: Message) -> tuple[Message, str | None] | None:
    """Apply auth_on_publish modifiers (topic, payload, qos, retain,
    mountpoint); None when a modifier is invalid (logged)."""
    try:
        mods = check_modifiers(PUBLISH_MODIFIERS, modifiers, "auth_on_publish")
    except ModifierError as e:
        conn.log.error("client {client_id!r}: {reason}", client_id=conn.client_id,
                       reason=str(e))
        return None
    if "properties" in mods:  # a new message expiry interval starts now
        new = Message(mods.get("topic", message.topic),
                      mods.get("payload", message.payload), mods.get("qos", message.qos),
                      mods.get("retain", message.retain), mods["properties"])
        new.start_expiry(conn.broker.clock.seconds())
    else:
        new = Message(mods.get("topic", message.topic),
                      mods.get("payload", message.payload), mods.get("qos", message.qos),
                      mods.get("retain", message.retain), message.properties,
                      expires_at=message.expires_at)
    return new, mods.get("mountpoint")


def refuse_publish5(conn: Connection, packet: Publish, code: int, why: str) -> None:
    """PUBACK/PUBREC with an error reason (and a reason string if the client wants them)."""
    props = {"reason_string": why} if conn.problem_info else {}
    ack = Puback if packet.qos == 1 else Pubrec
    conn.write(encode(ack(packet.packet_id, code, props), MQTT5))  # type: ignore[arg-type]
    conn.count_sent("mqtt_puback_sent" if packet.qos == 1 else "mqtt_pubrec_sent", code)


def unauthorized_publish(conn: Connection, packet: Publish, verdict: Error) -> None:
    """A PUBLISH the plugins refused: an error acknowledgement (5.0), a plain
    one (3.1 unless configured otherwise), or the connection closes."""
    level = conn.protocol_level
    if verdict.reason == "netsplit":  # the cluster is split: drop, keep the connection
        conn.counters[conn.slots.mqtt_publish_error] += 1  # type: ignore[attr-defined]
        conn.log.info("client {client_id!r}: publish to {topic!r} dropped: cluster not ready",
                      client_id=conn.client_id, topic=packet.topic)
        if level == MQTT5 and packet.qos:
            refuse_publish5(conn, packet, reasons.UNSPECIFIED_ERROR, "cluster not ready")
        return
    conn.counters[conn.slots.mqtt_publish_auth_error] += 1  # type: ignore[attr-defined]
    conn.log.info("client {client_id!r}: publish to {topic!r} not authorized ({reason})",
                  client_id=conn.client_id, topic=packet.topic, reason=verdict.reason)
    if level == MQTT5:
        if packet.qos:
            refuse_publish5(conn, packet, reasons.NOT_AUTHORIZED, "not authorized")
        return
    if level == MQTT31 and not conn.broker.config.disconnect_on_unauthorized_publish_v3:
        if packet.qos == 1:
            conn.write(encode(Puback(packet.packet_id), level))  # type: ignore[arg-type]
            conn.count_sent("mqtt_puback_sent")
        elif packet.qos == 2:
            conn.write(encode(Pubrec(packet.packet_id), level))  # type: ignore[arg-type]
            conn.count_sent("mqtt_pubrec_sent")
        return
    conn.closing_because("not authorized")
    conn.close()


# -- acknowledgements of what we sent, and the client's PUBREL -------------------------------

def handle_puback(conn: Connection, packet: Puback) -> None:
    """The client acknowledged a QoS 1 delivery."""
    if conn.session is None:
        conn.protocol_violation("PUBACK before CONNECT")
        return
    if not conn.session.puback(packet.packet_id):
        conn.counters[conn.slots.mqtt_puback_invalid_error] += 1  # type: ignore[attr-defined]


def handle_pubrec(conn: Connection, packet: Pubrec) -> None:
    """The client received a QoS 2 delivery: release it with PUBREL."""
    session = conn.session
    if session is None:
        conn.protocol_violation("PUBREC before CONNECT")
        return
    level = conn.protocol_level
    if level == MQTT5 and packet.reason_code >= 0x80:
        session.pubrec(packet.packet_id, failed=True)  # the QoS 2 flow ends here
    elif session.pubrec(packet.packet_id):
        # Not before the store knows the PUBREC came (exactly once after a restart).
        conn.write_durable(encode(Pubrel(packet.packet_id), level))
        conn.count_sent("mqtt_pubrel_sent")
    elif level == MQTT5:
        conn.write(encode(Pubrel(packet.packet_id, reasons.PACKET_IDENTIFIER_NOT_FOUND), MQTT5))
        conn.count_sent("mqtt_pubrel_sent", reasons.PACKET_IDENTIFIER_NOT_FOUND)
    else:
        conn.count_sent("mqtt_pubrec_invalid_error")


def handle_pubrel(conn: Connection, packet: Pubrel) -> None:
    """The client releases its QoS 2 message: PUBCOMP, and the id may be reused."""
    session = conn.session
    if session is None:
        conn.protocol_violation("PUBREL before CONNECT")
        return
    pid = packet.packet_id
    level = conn.protocol_level
    if session.qos2_released(pid):
        # Not before the store forgot the id: after a restart it would
        # swallow the client's next message that reuses it.
        conn.write_durable(encode(Pubcomp(pid), level))
        conn.count_sent("mqtt_pubcomp_sent")
    elif level == MQTT5:
        conn.write(encode(Pubcomp(pid, reasons.PACKET_IDENTIFIER_NOT_FOUND), MQTT5))
        conn.count_sent("mqtt_pubcomp_sent", reasons.PACKET_IDENTIFIER_NOT_FOUND)
    else:
        conn.write(encode(Pubcomp(pid), level))
        conn.count_sent("mqtt_pubcomp_sent")


def handle_pubcomp(conn: Connection, packet: Pubcomp) -> None:
    """The client completed a QoS 2 delivery."""
    if conn.session is None:
        conn.protocol_violation("PUBCOMP before CONNECT")
        return
    if not conn.session.pubcomp(packet.packet_id):
        conn.counters[conn.slots.mqtt_pubcomp_invalid_error] += 1  # type: ignore[attr-defined]
