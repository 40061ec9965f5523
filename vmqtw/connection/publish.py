"""PUBLISH and the QoS 1/2 acknowledgements, in both directions.

The per-message path: check the topic, authorize (synchronously), route
through the broker, acknowledge once the store is durable.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmqtw.auth.api import Error, Ok
from vmqtw.auth.modifiers import PUBLISH as PUBLISH_MODIFIERS
from vmqtw.auth.modifiers import ModifierError
from vmqtw.auth.modifiers import check as check_modifiers
from vmqtw.codec import reasons
from vmqtw.codec.encoder import encode
from vmqtw.codec.packets import (
    MQTT5, MQTT31, Puback, Pubcomp, Publish, Pubrec, Pubrel,
)
from vmqtw.connection.state import CONNECTED, is_utf8, valid_topic_name
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
    level = conn.protocol_level
    if level == MQTT5:
        topic = inbound_topic5(conn, packet, session)
        if topic is None:
            return
    else:
        topic = packet.topic
    try:
        validate_topic_name(topic, conn.broker.config.topic_max_depth)
    except TopicError as e:
        conn.protocol_violation(f"invalid topic {topic!r}: {e}", reasons.TOPIC_NAME_INVALID)
        return
    qos = packet.qos
    if qos == 2 and packet.packet_id in session.incoming_qos2:
        conn.write(encode(Pubrec(packet.packet_id), level))
        conn.count_sent("mqtt_pubrec_sent")
        return
    if level == MQTT5:
        result = inbound_message5(conn, packet, topic, session)
        if result is None:
            return
        message, verdict = result
    else:
        verdict = conn.authorizer.publish(session, topic, packet.payload, qos, packet.retain)
        if verdict.__class__ is Error:
            unauthorized_publish(conn, packet, verdict)
            return
        message = Message(topic, packet.payload, qos, packet.retain)
    mountpoint = session.mountpoint
    if verdict.__class__ is Ok and verdict.modifiers:
        modified = modified_message(conn, verdict.modifiers, message)
        if modified is None:
            unauthorized_publish(conn, packet, Error("invalid_modifiers"))
            return
        message, mountpoint = modified[0], modified[1] or mountpoint
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
            conn.write_durable(encode(Puback(packet.packet_id, code), level))  # type: ignore[arg-type]
            conn.count_sent("mqtt_puback_sent", code)
        else:
            session.qos2_received(packet.packet_id)  # type: ignore[arg-type]
            conn.write_durable(encode(Pubrec(packet.packet_id, code), level))  # type: ignore[arg-type]
            conn.count_sent("mqtt_pubrec_sent", code)


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
        if alias > config.topic_alias_max_broker:
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


def inbound_message5(conn: Connection, packet: Publish, topic: str,
                     session: Session) -> tuple[Message, Any] | None:
    """Check the payload format and authorize; the Message to route and the
    authorization verdict, or None when the PUBLISH was refused
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
    verdict = conn.authorizer.publish_m5(session, topic, packet.payload, packet.qos,
                                         packet.retain, props)
    if verdict.__class__ is Error:
        unauthorized_publish(conn, packet, verdict)
        return None
    message = Message(topic, packet.payload, packet.qos, packet.retain, props)
    if "message_expiry_interval" in props:
        message.start_expiry(conn.broker.clock.seconds())
    return message, verdict


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
