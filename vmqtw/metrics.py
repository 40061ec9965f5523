"""VerneMQ's metrics: names, types and labels, counted for almost nothing.

Counters live in one plain list, ``Metrics.values``; every labelled series
(``mqtt_publish_received{mqtt_version="4"}``) owns one slot.  The hot path
resolves its slots once (at wiring time or at CONNECT, see ``version_slots``)
and then only does ``values[slot] += 1``: no locks, no objects, no calls.

Even that is too much for what happens once per delivered message (an
increment is ~5% of a fanned-out QoS 0 delivery in CPython), so two counters
are completed at scrape time (``current()``) instead:

- ``mqtt_publish_sent``: a PUBLISH that ``Session.deliver_routed`` writes at
  once to an MQTT 3.x client is not counted where it is written.  Its callers
  count its calls (``DELIVER_CALLS``): ``Broker.publish`` adds the number of
  sessions a message went to once per message, ``Session.deliver`` (for every
  other caller) one per call.  ``deliver_routed`` counts the calls that did
  not end in such a write: nothing written yet (offline, queued, dropped:
  ``DELIVER_HELD``) or written to a 5.0 client (``DELIVER_SENT5``).  Version 4
  gets calls - held - sent5 on top of its slot (PUBLISHes sent from the
  queue, resent...), version 5 gets ``DELIVER_SENT5``.
- ``bytes_sent``: each connection adds what it flushes to its own
  ``bytes_out``; ``connection_opened`` / ``connection_closed`` keep the set of
  live connections, whose counts a scrape adds and whose count is folded into
  the slot when it closes (the sum never goes backwards).

These three internal slots come first in ``values`` and are never exported.

Everything else is read when somebody looks (a Prometheus scrape, ``vmq-admin
metrics show``, the ``$SYS`` publisher): gauges from the ``Broker`` (sessions,
subscriptions, retained messages), counters that the core keeps itself
(``Broker.dropped``) and process figures.

The Prometheus side (``MetricsCollector``, ``exposition()``: VerneMQ's text
format) is in ``vmqtw.metrics_export``; both can be imported from here too.
"""
from __future__ import annotations

import os
import resource
import sys
import time
from typing import Any, Callable, Iterator

from vmqtw.codec import reasons as rc
# The exposition lives in its own module; importing it from here still works.
from vmqtw.metrics_export import MetricsCollector, exposition  # noqa: F401

#: VerneMQ 2.x's ``prometheus_namespace`` default.
DEFAULT_NAMESPACE = "vernemq_"
#: VerneMQ's default ``nodename``.
DEFAULT_NODE = "VerneMQ@127.0.0.1"

Labels = tuple[tuple[str, str], ...]

# -- the catalogue -----------------------------------------------------------------

#: Counters without labels.
PLAIN_COUNTERS: dict[str, str] = {
    "socket_open": "The number of times an MQTT socket has been opened.",
    "socket_close": "The number of times an MQTT socket has been closed.",
    "socket_close_timeout": "The number of times VerneMQ closed an MQTT socket due to no "
                            "CONNECT frame has been received on time.",
    "socket_error": "The total number of socket errors that have occurred.",
    "bytes_received": "The total number of bytes received.",
    "bytes_sent": "The total number of bytes sent.",
    "queue_setup": "The number of times a MQTT queue process has been started.",
    "queue_initialized_from_storage": "The number of times a MQTT queue process has been "
                                      "initialized from offline storage.",
    "queue_teardown": "The number of times a MQTT queue process has been terminated.",
    "queue_message_drop": "The number of messages dropped due to full queues.",
    "queue_message_expired": "The number of messages which expired before delivery.",
    "queue_message_unhandled": "The number of unhandled messages when connecting with "
                               "clean session=true.",
    "queue_message_in": "The number of PUBLISH packets received by MQTT queue processes.",
    "queue_message_out": "The number of PUBLISH packets sent from MQTT queue processes.",
    "client_expired": "Not in use (deprecated)",
    "cluster_bytes_received": "The number of bytes received from other cluster nodes.",
    "cluster_bytes_sent": "The number of bytes send to other cluster nodes.",
    "cluster_bytes_dropped": "The number of bytes dropped while sending data to other "
                             "cluster nodes.",
    "router_matches_local": "The number of matched local subscriptions.",
    "router_matches_remote": "The number of matched remote subscriptions.",
    "netsplit_detected": "The number of detected netsplits.",
    "netsplit_resolved": "The number of resolved netsplits.",
}

#: Counters with ``mqtt_version`` "4" and "5".
BOTH_VERSIONS: dict[str, str] = {
    "mqtt_connect_received": "The number of CONNECT packets received.",
    "mqtt_publish_received": "The number of PUBLISH packets received.",
    "mqtt_subscribe_received": "The number of SUBSCRIBE packets received.",
    "mqtt_unsubscribe_received": "The number of UNSUBSCRIBE packets received.",
    "mqtt_pingreq_received": "The number of PINGREQ packets received.",
    "mqtt_publish_sent": "The number of PUBLISH packets sent.",
    "mqtt_suback_sent": "The number of SUBACK packets sent.",
    "mqtt_unsuback_sent": "The number of UNSUBACK packets sent.",
    "mqtt_pingresp_sent": "The number of PINGRESP packets sent.",
    "mqtt_publish_auth_error": "The number of unauthorized publish attempts.",
    "mqtt_subscribe_auth_error": "The number of unauthorized subscription attempts.",
    "mqtt_invalid_msg_size_error": "The number of packages exceeding the maximum allowed size.",
    "mqtt_puback_invalid_error": "The number of unexpected PUBACK messages received.",
    "mqtt_pubcomp_invalid_error": "The number of unexpected PUBCOMP messages received.",
    "mqtt_publish_error": "The number of times a PUBLISH operation failed due to a netsplit.",
    "mqtt_subscribe_error": "The number of times a SUBSCRIBE operation failed due to a "
                            "netsplit.",
    "mqtt_unsubscribe_error": "The number of times an UNSUBSCRIBE operation failed due to a "
                              "netsplit.",
    "client_keepalive_expired": "The number of clients which failed to communicate within "
                                "the keepalive time period.",
}

#: Counters with ``mqtt_version`` "4" only.
V4_ONLY: dict[str, str] = {
    "mqtt_puback_received": "The number of PUBACK packets received.",
    "mqtt_pubrec_received": "The number of PUBREC packets received.",
    "mqtt_pubrel_received": "The number of PUBREL packets received.",
    "mqtt_pubcomp_received": "The number of PUBCOMP packets received.",
    "mqtt_disconnect_received": "The number of DISCONNECT packets received.",
    "mqtt_puback_sent": "The number of PUBACK packets sent.",
    "mqtt_pubrec_sent": "The number of PUBREC packets sent.",
    "mqtt_pubrel_sent": "The number of PUBREL packets sent.",
    "mqtt_pubcomp_sent": "The number of PUBCOMP packets sent.",
    "mqtt_pubrec_invalid_error": "The number of unexpected PUBREC messages received.",
    "mqtt_connack_accepted_sent": "The number of times a connection has been accepted.",
    "mqtt_connack_unacceptable_protocol_sent": "The number of times the broker is not able "
                                               "to support the requested protocol.",
    "mqtt_connack_identifier_rejected_sent": "The number of times a client was rejected due "
                                             "to a unacceptable identifier.",
    "mqtt_connack_server_unavailable_sent": "The number of times a client was rejected due "
                                            "the the broker being unavailable.",
    "mqtt_connack_bad_credentials_sent": "The number of times a client sent bad credentials.",
    "mqtt_connack_not_authorized_sent": "The number of times a client was rejected due to "
                                        "insufficient authorization.",
}

#: MQTT 3.x CONNACK return codes -> VerneMQ's ``return_code`` label.
V4_RETURN_CODES: dict[int, str] = {
    rc.CONNACK_ACCEPTED: "success",
    rc.CONNACK_UNACCEPTABLE_PROTOCOL: "unsupported_protocol_version",
    rc.CONNACK_IDENTIFIER_REJECTED: "client_identifier_not_valid",
    rc.CONNACK_SERVER_UNAVAILABLE: "server_unavailable",
    rc.CONNACK_BAD_CREDENTIALS: "bad_username_or_password",
    rc.CONNACK_NOT_AUTHORIZED: "not_authorized",
}

#: MQTT 5.0 reason codes -> VerneMQ's ``reason_code`` label.
REASON_NAMES: dict[int, str] = {
    0x00: "success", 0x04: "disconnect_with_will_msg", 0x10: "no_matching_subscribers",
    0x18: "continue_authentication", 0x19: "reauthenticate",
    0x80: "unspecified_error", 0x81: "malformed_packet", 0x82: "protocol_error",
    0x83: "impl_specific_error", 0x84: "unsupported_protocol_version",
    0x85: "client_identifier_not_valid", 0x86: "bad_username_or_password",
    0x87: "not_authorized", 0x88: "server_unavailable", 0x89: "server_busy", 0x8A: "banned",
    0x8B: "server_shutting_down", 0x8C: "bad_authentication_method",
    0x8D: "keep_alive_timeout", 0x8E: "session_taken_over", 0x8F: "topic_filter_invalid",
    0x90: "topic_name_invalid", 0x91: "packet_id_in_use", 0x92: "packet_id_not_found",
    0x93: "receive_max_exceeded", 0x94: "topic_alias_invalid", 0x95: "packet_too_large",
    0x96: "message_rate_too_high", 0x97: "quota_exceeded", 0x98: "administrative_action",
    0x99: "payload_format_invalid", 0x9A: "retain_not_supported", 0x9B: "qos_not_supported",
    0x9C: "use_another_server", 0x9D: "server_moved", 0x9E: "shared_subs_not_supported",
    0x9F: "connection_rate_exceeded", 0xA0: "max_connect_time",
    0xA1: "subscription_ids_not_supported", 0xA2: "wildcard_subs_not_supported",
}

_DISCONNECT_RECEIVED = (
    "normal_disconnect", "disconnect_with_will_msg", "unspecified_error", "malformed_packet",
    "protocol_error", "impl_specific_error", "topic_name_invalid", "receive_max_exceeded",
    "topic_alias_invalid", "packet_too_large", "message_rate_too_high", "quota_exceeded",
    "administrative_action", "payload_format_invalid")
_PUBACK = ("success", "no_matching_subscribers", "unspecified_error", "impl_specific_error",
           "not_authorized", "topic_name_invalid", "packet_id_in_use", "quota_exceeded",
           "payload_format_invalid")
_PUBREL = ("success", "packet_id_not_found")
_AUTH = ("success", "continue_authentication", "reauthenticate")

#: MQTT 5.0 counters with a ``reason_code`` label: name -> (description, reason names).
V5_REASONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mqtt_connack_sent": ("The number of CONNACK packets sent.", (
        "success", "unspecified_error", "malformed_packet", "protocol_error",
        "impl_specific_error", "unsupported_protocol_version", "client_identifier_not_valid",
        "bad_username_or_password", "not_authorized", "server_unavailable", "server_busy",
        "banned", "bad_authentication_method", "topic_name_invalid", "packet_too_large",
        "quota_exceeded", "payload_format_invalid", "retain_not_supported",
        "qos_not_supported", "use_another_server", "server_moved",
        "connection_rate_exceeded")),
    "mqtt_disconnect_received": ("The number of DISCONNECT packets received.",
                                 _DISCONNECT_RECEIVED),
    "mqtt_disconnect_sent": ("The number of DISCONNECT packets sent.", tuple(
        r for r in _DISCONNECT_RECEIVED if r != "disconnect_with_will_msg") + (
        "not_authorized", "server_busy", "server_shutting_down", "keep_alive_timeout",
        "session_taken_over", "topic_filter_invalid", "retain_not_supported",
        "qos_not_supported", "use_another_server", "server_moved", "shared_subs_not_supported",
        "connection_rate_exceeded", "max_connect_time", "subscription_ids_not_supported",
        "wildcard_subs_not_supported")),
    "mqtt_puback_sent": ("The number of PUBACK packets sent.", _PUBACK),
    "mqtt_puback_received": ("The number of PUBACK packets received.", _PUBACK),
    "mqtt_pubrec_sent": ("The number of PUBREC packets sent.", _PUBACK),
    "mqtt_pubrec_received": ("The number of PUBREC packets received.", _PUBACK),
    "mqtt_pubrel_sent": ("The number of PUBREL packets sent.", _PUBREL),
    "mqtt_pubrel_received": ("The number of PUBREL packets received.", _PUBREL),
    "mqtt_pubcomp_sent": ("The number of PUBCOMP packets sent.", _PUBREL),
    "mqtt_pubcomp_received": ("The number of PUBCOMP packets received.", _PUBREL),
    "mqtt_auth_sent": ("The number of AUTH packets sent.", _AUTH),
    "mqtt_auth_received": ("The number of AUTH packets received.", _AUTH),
}

#: Counters that are the sum of others, computed when read, so that the hot
#: path counts fewer things: every matched subscription enters a session's
#: queue, and every PUBLISH sent leaves one.  Code should not count these
#: itself (what it adds to their own slot is added to the sum).
DERIVED: dict[str, tuple[str, ...]] = {
    "queue_message_in": ("router_matches_local",),
    "queue_message_out": ("mqtt_publish_sent",),
}

#: Gauges read from the broker at scrape time.
GAUGES: dict[str, str] = {
    "router_subscriptions": "The number of subscriptions in the routing table.",
    "retain_messages": "The number of currently stored retained messages.",
    "retain_memory": "The number of bytes used for storing retained messages.",
    "queue_processes": "The number of MQTT queue processes.",
    "active_mqtt_connections": "The number of open MQTT connections.",
    "active_mqttws_connections": "The number of open WebSocket connections.",
    "total_active_connections": "The total number of open MQTT and WebSocket connections.",
    "system_process_count": "The number of threads of the broker process.",
}

#: Process figures: name -> (type, description).
PROCESS: dict[str, tuple[str, str]] = {
    "system_runtime": ("counter", "The sum of the CPU time (user and system) used by the "
                                  "broker process, in milliseconds."),
    "system_wallclock": ("counter", "The number of milliseconds passed since the broker "
                                    "started."),
    "vm_memory_total": ("gauge", "The resident memory of the broker process, in bytes."),
    "system_utilization": ("gauge", "The CPU time the broker process used since the previous "
                                    "read, in percent of the time passed on all usable CPUs."),
}


#: Internal slots (never exported, first in every registry): calls of
#: ``Session.deliver`` (counted by its callers), those calls that wrote
#: nothing yet, and those that wrote to a 5.0 client; see the module's doc.
DELIVER_CALLS = 0
DELIVER_HELD = 1
DELIVER_SENT5 = 2
INTERNAL_SLOTS = 3

#: The slots of the counters without labels: they come next in every
#: registry, in ``PLAIN_COUNTERS`` order, so code may use these constants.
PLAIN_SLOT: dict[str, int] = {name: INTERNAL_SLOTS + i
                              for i, name in enumerate(PLAIN_COUNTERS)}
SOCKET_OPEN = PLAIN_SLOT["socket_open"]
SOCKET_CLOSE = PLAIN_SLOT["socket_close"]
SOCKET_CLOSE_TIMEOUT = PLAIN_SLOT["socket_close_timeout"]
SOCKET_ERROR = PLAIN_SLOT["socket_error"]
BYTES_RECEIVED = PLAIN_SLOT["bytes_received"]
BYTES_SENT = PLAIN_SLOT["bytes_sent"]
ROUTER_MATCHES_LOCAL = PLAIN_SLOT["router_matches_local"]

#: Packet type (codec) -> the ``*_received`` counter of that packet.
RECEIVED_NAMES: dict[int, str] = {
    1: "mqtt_connect_received", 3: "mqtt_publish_received", 4: "mqtt_puback_received",
    5: "mqtt_pubrec_received", 6: "mqtt_pubrel_received", 7: "mqtt_pubcomp_received",
    8: "mqtt_subscribe_received", 10: "mqtt_unsubscribe_received",
    12: "mqtt_pingreq_received", 14: "mqtt_disconnect_received", 15: "mqtt_auth_received",
}


def _labels(**labels: str) -> Labels:
    return tuple(labels.items())


def _version_label(protocol_level: int) -> str:
    """VerneMQ's ``mqtt_version`` label: "4" covers MQTT 3.1 and 3.1.1."""
    return "5" if protocol_level >= 5 else "4"


class VersionSlots:
    """The counter slots of one protocol version, resolved once (at CONNECT).

    Every name of ``BOTH_VERSIONS`` (and, for MQTT 3.x, ``V4_ONLY``) is an
    attribute holding its slot: ``values[slots.mqtt_publish_received] += 1``.
    ``connack(code)``, ``reason(name, code)`` give the slot of a CONNACK return
    code (3.x) or of a 5.0 reason code; both return the spare slot
    (``metrics.spare``, never exported), never failing, for a code VerneMQ has
    no series for.
    """

    def __init__(self, metrics: "Metrics", protocol_level: int) -> None:
        self.version = _version_label(protocol_level)
        self._metrics = metrics
        for name in BOTH_VERSIONS:
            setattr(self, name, metrics.slot(name, mqtt_version=self.version))
        for name in V4_ONLY:
            setattr(self, name, metrics.slot(name, mqtt_version="4") if self.version == "4"
                    else metrics.spare)
        self._codes: dict[tuple[str, int], int] = {}
        if self.version == "4":
            for code, label in V4_RETURN_CODES.items():
                self._codes[("mqtt_connack_sent", code)] = metrics.slot(
                    "mqtt_connack_sent", mqtt_version="4", return_code=label)
        else:
            codes = {label: code for code, label in REASON_NAMES.items()}
            codes["normal_disconnect"] = 0
            for name, (_, names) in V5_REASONS.items():
                for label in names:
                    self._codes[(name, codes[label])] = metrics.slot(
                        name, mqtt_version="5", reason_code=label)

        #: Packet type -> the slot of its ``*_received`` counter; None where
        #: the slot depends on the packet (CONNECT: its level; 5.0 acks,
        #: DISCONNECT, AUTH: the reason code): see ``received_slot``.
        self.received: list[int | None] = [metrics.spare] * 16
        for ptype, name in RECEIVED_NAMES.items():
            if ptype == 1 or (self.version == "5" and name in V5_REASONS):
                self.received[ptype] = None
            else:
                self.received[ptype] = self.reason(name, 0)

    def received_slot(self, packet: Any) -> int:
        """The ``*_received`` slot of ``packet`` where ``received`` has None."""
        ptype = packet.type
        if ptype == 1:  # CONNECT: the version it asks for
            slots = self._metrics.version_slots(getattr(packet, "protocol_level", 4))
            return slots.mqtt_connect_received  # type: ignore[attr-defined]
        name = RECEIVED_NAMES.get(ptype)
        if name is None:
            return self._metrics.spare
        return self.reason(name, getattr(packet, "reason_code", 0))

    def connack(self, code: int) -> int:
        """The ``mqtt_connack_sent`` slot for a CONNACK with ``code``."""
        return self._codes.get(("mqtt_connack_sent", code), self._metrics.spare)

    def reason(self, name: str, code: int) -> int:
        """The slot of ``name`` (e.g. ``mqtt_disconnect_sent``) with a reason code;
        MQTT 3.x connections count in the name's ``mqtt_version="4"`` series."""
        slot = self._codes.get((name, code))
        if slot is not None:
            return slot
        if name in BOTH_VERSIONS or (self.version == "4" and name in V4_ONLY):
            return getattr(self, name)  # type: ignore[no-any-return,unused-ignore]
        return self._metrics.spare


class Metrics:
    """The registry of one node.

    ``values`` is the list of counter values: the internal slots, one slot
    per labelled series, then a spare slot that is never exported.  Read a
    series with ``value()`` (or ``current()``): two counters are completed at
    scrape time (see the module's doc).  ``broker`` (set by the service) is
    read at scrape time for the gauges.
    """

    #: What a live connection counts itself (attribute, slot), added at
    #: scrape time and folded into the slot when it closes.
    PER_CONNECTION: tuple[tuple[str, int], ...] = (("bytes_out", BYTES_SENT),)

    def __init__(self, node: str = DEFAULT_NODE, namespace: str = DEFAULT_NAMESPACE,
                 broker: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.namespace = namespace
        self.broker = broker
        self._clock = clock
        self.started = clock()
        usage = resource.getrusage(resource.RUSAGE_SELF)  # for system_utilization:
        self._cpu_mark = (self.started, usage.ru_utime + usage.ru_stime)
        self.descriptions: dict[str, tuple[str, str]] = {}   # name -> (type, help)
        self.series: list[tuple[str, Labels]] = []
        self._index: dict[tuple[str, Labels], int] = {}
        for name, doc in PLAIN_COUNTERS.items():
            self._add(name, doc, ())
        for name, doc in BOTH_VERSIONS.items():
            self._add(name, doc, _labels(mqtt_version="4"))
            self._add(name, doc, _labels(mqtt_version="5"))
        for name, doc in V4_ONLY.items():
            self._add(name, doc, _labels(mqtt_version="4"))
        for label in V4_RETURN_CODES.values():
            self._add("mqtt_connack_sent", V5_REASONS["mqtt_connack_sent"][0],
                      _labels(mqtt_version="4", return_code=label))
        for name, (doc, names) in V5_REASONS.items():
            for label in names:
                self._add(name, doc, _labels(mqtt_version="5", reason_code=label))
        assert all(self._index[(n, ())] == i for n, i in PLAIN_SLOT.items())
        self.values: list[int] = [0] * (INTERNAL_SLOTS + len(self.series) + 1)
        self.spare = INTERNAL_SLOTS + len(self.series)
        #: The live connections (``connection_opened``) and, per slot, what
        #: they had counted at the last ``reset()``.
        self.connections: set[Any] = set()
        self._live_offsets: dict[int, int] = {}
        self._watched: list[Any] = []
        #: Counters kept elsewhere, read at scrape time: name -> callable.  What
        #: ``reset()`` zeroes is remembered as an offset.
        self.sources: dict[str, Callable[[], int]] = {}
        self._offsets: dict[str, int] = {}
        self._versions = {4: VersionSlots(self, 4), 5: VersionSlots(self, 5)}
        self._versions[3] = self._versions[4]
        self.sources["queue_message_drop"] = self._broker_dropped
        self._publish_sent = (self.slot("mqtt_publish_sent", mqtt_version="4"),
                              self.slot("mqtt_publish_sent", mqtt_version="5"))

    def register_counter(self, name: str, doc: str, read: Callable[[], int]) -> None:
        """A counter kept elsewhere (a plugin, ``vmq_http_pub``), read at scrape
        time, like VerneMQ's ``vmq_metrics_mfa``.  Registering a name again adds
        the new reader (e.g. one per HTTP listener)."""
        if (name, ()) not in self._index:
            self.descriptions.setdefault(name, ("counter", doc))
            self._index[(name, ())] = len(self.values)
            self.series.append((name, ()))
            self.values.append(0)
        previous = self.sources.get(name)
        self.sources[name] = read if previous is None else (lambda: previous() + read())

    def _add(self, name: str, doc: str, labels: Labels) -> None:
        self.descriptions.setdefault(name, ("counter", doc))
        self._index[(name, labels)] = INTERNAL_SLOTS + len(self.series)
        self.series.append((name, labels))

    # -- for the code that counts ------------------------------------------------

    def slot(self, name: str, **labels: str) -> int:
        """The slot of one series (a KeyError names an unknown series)."""
        return self._index[(name, tuple(labels.items()))]

    def version_slots(self, protocol_level: int) -> VersionSlots:
        """The slots of MQTT ``protocol_level`` (3, 4 or 5), shared by every connection."""
        return self._versions[5 if protocol_level >= 5 else 4]

    def watch_sessions(self, broker: Any) -> None:
        """Count ``queue_setup`` and ``queue_teardown`` from the broker's session
        events (a session is VerneMQ's queue), off the packet path.  Watching
        the same broker again does nothing."""
        if any(b is broker for b in self._watched):
            return
        self._watched.append(broker)
        values = self.values
        setup, teardown = self.slot("queue_setup"), self.slot("queue_teardown")

        def observe(event: str, session: Any) -> None:
            if event == "register":
                values[setup] += 1
            elif event in ("gone", "expired"):
                values[teardown] += 1

        broker.session_observers.append(observe)

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        """Add to a counter by name (for code off the hot path)."""
        self.values[self.slot(name, **labels)] += amount

    def connection_opened(self, conn: Any) -> None:
        """``conn`` counts ``PER_CONNECTION`` figures itself from now on."""
        self.connections.add(conn)

    def connection_closed(self, conn: Any) -> None:
        """``conn`` is gone: fold its own counts into the counters (once)."""
        if conn in self.connections:
            self.connections.discard(conn)
            values = self.values
            for attr, slot in self.PER_CONNECTION:
                values[slot] += getattr(conn, attr)

    # -- for the readers -----------------------------------------------------------

    def _broker_dropped(self) -> int:
        return getattr(self.broker, "dropped", 0)

    def reset(self) -> None:
        """``vmq-admin metrics reset``: every counter back to zero."""
        values = self.values
        for i in range(len(values)):
            values[i] = 0
        for name, source in self.sources.items():
            self._offsets[name] = source()
        for attr, slot in self.PER_CONNECTION:
            self._live_offsets[slot] = sum(getattr(c, attr) for c in self.connections)

    def current(self) -> list[int]:
        """A copy of ``values`` with what is counted elsewhere added: the
        PUBLISHes ``Session.deliver`` wrote without counting them and the
        live connections' own counts (see the module's doc)."""
        values = list(self.values)
        sent4, sent5 = self._publish_sent
        sent5_now = values[DELIVER_SENT5]
        values[sent4] += values[DELIVER_CALLS] - values[DELIVER_HELD] - sent5_now
        values[sent5] += sent5_now
        connections = self.connections
        for attr, slot in self.PER_CONNECTION:
            values[slot] += sum(getattr(c, attr) for c in connections) - \
                self._live_offsets.get(slot, 0)
        return values

    def value(self, name: str, **labels: str) -> int:
        """The current value of one counter series (without the sources of
        ``register_counter``)."""
        return self.current()[self.slot(name, **labels)]

    def samples(self) -> Iterator[tuple[str, str, Labels, float]]:
        """Every series: (type, name, labels, value), names without namespace,
        series of one name together, counters first."""
        values = self.current()
        extra = {name: source() - self._offsets.get(name, 0)
                 for name, source in self.sources.items()}
        for name, parts in DERIVED.items():
            extra[name] = extra.get(name, 0) + sum(
                values[self._index[key]] for key in self.series if key[0] in parts)
        index = self._index
        for name, labels in self.series:  # (the spare slot is in no series)
            value = values[index[(name, labels)]]
            if name in extra and not labels:
                value += extra[name]
            yield "counter", name, labels, value
        for name, reading in self.gauges().items():
            yield GAUGE_TYPE.get(name, "gauge"), name, (), reading

    def gauges(self) -> dict[str, float]:
        """The figures read at scrape time: broker gauges and process figures."""
        out: dict[str, float] = dict.fromkeys(GAUGES, 0)
        broker = self.broker
        if broker is not None:
            online = ws = 0
            for session in broker.sessions.values():
                if session.conn is not None:
                    online += 1
                    if (session.listener or "").split(".", 1)[0] in ("ws", "wss"):
                        ws += 1
            out["active_mqtt_connections"] = online - ws
            out["active_mqttws_connections"] = ws
            out["total_active_connections"] = online
            out["queue_processes"] = len(broker.sessions)
            out["router_subscriptions"] = sum(len(t) for t in broker.trees.values())
            count, size = retained_figures(broker.store)
            out["retain_messages"] = count
            out["retain_memory"] = size
        out["system_process_count"] = _threads()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["system_runtime"] = int((usage.ru_utime + usage.ru_stime) * 1000)
        out["system_wallclock"] = int((self._clock() - self.started) * 1000)
        out["vm_memory_total"] = _rss(usage)
        now, cpu = self._clock(), usage.ru_utime + usage.ru_stime
        (then, cpu_then), self._cpu_mark = self._cpu_mark, (now, cpu)
        out["system_utilization"] = _utilization(cpu - cpu_then, now - then)
        return out

    def describe(self, name: str) -> tuple[str, str]:
        """(type, description) of a metric name without namespace."""
        if name in self.descriptions:
            return self.descriptions[name]
        if name in GAUGES:
            return "gauge", GAUGES[name]
        return PROCESS.get(name, ("gauge", name))

    def aggregated(self) -> dict[str, tuple[str, float]]:
        """name -> (type, value) summed over labels, as ``$SYS`` and ``metrics show``."""
        out: dict[str, tuple[str, float]] = {}
        for typ, name, _, value in self.samples():
            prev = out.get(name)
            out[name] = (typ, value + (prev[1] if prev else 0))
        return out


GAUGE_TYPE = {name: typ for name, (typ, _) in PROCESS.items()}


def retained_figures(store: Any) -> tuple[int, int]:
    """(count, bytes of topics and payloads) of the retained messages of ``store``."""
    items = getattr(store, "retained_items", None)
    if items is None:
        return store.retained_count(), 0
    count = size = 0
    for _mp, topic, message in items():
        count += 1
        size += len(topic) + len(message.payload)
    return count, size


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading
        return threading.active_count()


def _utilization(cpu: float, wall: float) -> int:
    """CPU seconds over ``wall`` seconds on every CPU this process may use, in
    percent (0..100): VerneMQ's average scheduler utilization, one per core."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    if wall <= 0:
        return 0
    return max(0, min(100, round(100 * cpu / (wall * cpus))))


def _rss(usage: Any) -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        # ru_maxrss: kilobytes on Linux, bytes on macOS (a peak, the best we have)
        return usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def metrics_settings(extra: Any) -> tuple[str, str]:
    """(nodename, prometheus_namespace) from a config's raw keys (``extra``)."""
    return (extra.get("nodename", DEFAULT_NODE),
            extra.get("prometheus_namespace", DEFAULT_NAMESPACE))
