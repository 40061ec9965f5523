"""Live protocol traces: ``vmq-admin trace client client-id=X``.

The connection code reports every packet of a traced client with
``tracer.packet(key, "RECV"|"SEND", packet)``, guarded by the cheap test
``if tracer.watching and key in tracer.watching`` (an empty set when nothing
is traced, so untraced traffic pays one truth test).  Lines look like
VerneMQ's::

    2026-12-06T20:45:01.123 MQTT RECV: CID: "c1" PUBLISH(d0, q1, r0, m7, "a/b") with payload:
        "hello"

At most ``rate_max`` lines are written per ``rate_interval`` ms (VerneMQ's
defaults: 10 per 100 ms); what is over is counted and reported once the next
window opens.  Payloads are cut to ``trunc_payload`` bytes.  As in VerneMQ,
one trace runs at a time; ``trace stop_all`` ends it.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable

SessionKey = tuple[str, str]


def _flag(value: Any) -> int:
    return 1 if value else 0


def _payload(data: bytes, trunc: int) -> str:
    text = data[:trunc].decode("utf-8", "backslashreplace")
    more = f"... ({len(data)} bytes)" if len(data) > trunc else ""
    return f'    "{text}"{more}'


def describe(packet: Any, trunc: int = 200) -> str:
    """One packet as VerneMQ's tracer prints it."""
    name = type(packet).__name__.upper()
    if name == "CONNECT":
        return (f"CONNECT(c: {packet.client_id}, v: {packet.protocol_level}, "
                f"u: {packet.username if packet.username is not None else 'undefined'}, "
                f"p: {'********' if packet.password is not None else 'undefined'}, "
                f"cs: {_flag(packet.clean_start)}, ka: {packet.keepalive})")
    if name == "CONNACK":
        return f"CONNACK(sp: {_flag(packet.session_present)}, rc: {packet.reason_code})"
    if name == "PUBLISH":
        pid = packet.packet_id if packet.packet_id is not None else "undefined"
        return (f"PUBLISH(d{_flag(packet.dup)}, q{packet.qos}, r{_flag(packet.retain)}, "
                f"m{pid}, \"{packet.topic}\") with payload:\n"
                + _payload(packet.payload, trunc))
    if name in ("PUBACK", "PUBREC", "PUBREL", "PUBCOMP"):
        return f"{name}(m{packet.packet_id})"
    if name == "SUBSCRIBE":
        topics = "".join(f'\n    "{t}" q:{o.qos}' for t, o in packet.topics)
        return f"SUBSCRIBE(m{packet.packet_id}) with topics:{topics}"
    if name == "SUBACK":
        return f"SUBACK(m{packet.packet_id}, qos: {list(packet.reason_codes)})"
    if name == "UNSUBSCRIBE":
        topics = "".join(f'\n    "{t}"' for t in packet.topics)
        return f"UNSUBSCRIBE(m{packet.packet_id}) with topics:{topics}"
    if name == "UNSUBACK":
        return f"UNSUBACK(m{packet.packet_id})"
    if name in ("DISCONNECT", "AUTH"):
        return f"{name}(rc: {packet.reason_code})"
    return f"{name}()"


class Trace:
    """One running trace: where its lines go and its rate limit."""

    def __init__(self, key: SessionKey, sink: Callable[[str], None],
                 on_end: Callable[[], None], rate_max: int, rate_interval_ms: int,
                 trunc_payload: int, clock: Callable[[], float]) -> None:
        self.key = key
        self.sink = sink
        self.on_end = on_end
        self.rate_max = rate_max
        self.rate_interval = rate_interval_ms / 1000.0
        self.trunc = trunc_payload
        self.clock = clock
        self._window = 0.0
        self._count = 0
        self.dropped = 0

    def line(self, now: float, text: str) -> None:
        if now - self._window >= self.rate_interval:
            self._window = now
            self._count = 0
            if self.dropped:
                self.sink(f"*** rate limit: {self.dropped} trace lines dropped ***")
                self.dropped = 0
        if self._count >= self.rate_max:
            self.dropped += 1
            return
        self._count += 1
        self.sink(text)


class TraceError(Exception):
    pass


class Tracer:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.trace: Trace | None = None
        #: The session keys being traced (empty when no trace runs).  The set
        #: is changed in place, never replaced: connections hold it.
        self.watching: set[SessionKey] = set()

    def start(self, client_id: str, mountpoint: str, sink: Callable[[str], None],
              on_end: Callable[[], None], rate_max: int = 10, rate_interval_ms: int = 100,
              trunc_payload: int = 200) -> Trace:
        if self.trace is not None:
            raise TraceError("Another trace is already running. Stop it first with "
                             "`vmq-admin trace stop_all`.")
        trace = Trace((mountpoint, client_id), sink, on_end, rate_max, rate_interval_ms,
                      trunc_payload, self.clock)
        self.trace = trace
        self.watching.add(trace.key)
        return trace

    def stop(self, trace: Trace) -> None:
        """End ``trace`` (its console went away); nothing is written to it."""
        if self.trace is trace:
            self.trace = None
            self.watching.clear()

    def stop_all(self) -> int:
        """End every trace, telling its console; returns how many ran."""
        trace = self.trace
        if trace is None:
            return 0
        self.stop(trace)
        trace.sink("Trace stopped")
        trace.on_end()
        return 1

    def packet(self, key: SessionKey, direction: str, packet: Any) -> None:
        """A packet of ``key``'s connection was received (RECV) or sent (SEND)."""
        trace = self.trace
        if trace is None or trace.key != key:
            return
        now = self.clock()
        stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        trace.line(now, f'{stamp} MQTT {direction}: CID: "{key[1]}" '
                        + describe(packet, trace.trunc))
