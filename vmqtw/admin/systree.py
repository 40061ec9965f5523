"""VerneMQ's ``$SYS`` tree: the metrics published every ``systree_interval``.

Each interval every metric of the aggregated view (labels summed away, no
namespace) is published to ``$SYS/<nodename>/`` followed by its name with
``_`` turned into ``/`` (``mqtt_publish_received`` ->
``$SYS/VerneMQ@127.0.0.1/mqtt/publish/received``), the decimal value as the
payload.  The messages go through ``Broker.publish`` like any other, so a
reader sees them only where its subscription (and so the ACL) lets it.

Keys: ``systree_enabled`` (on), ``systree_interval`` (20000 ms; unlike
VerneMQ, where 0 re-fires at once, 0 here means off), and VerneMQ's hidden
``systree_mountpoint`` (""), ``systree_qos`` (0), ``systree_retain`` (off).
"""
from __future__ import annotations

from typing import Any, Mapping

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from vmqtw.config import _bool as config_bool  # the one reader of on/off values
from vmqtw.core.message import Message
from vmqtw.logs import Logger
from vmqtw.metrics import Metrics

DEFAULT_INTERVAL_MS = 20000


def systree_topic(node: str, name: str) -> str:
    return f"$SYS/{node}/" + name.replace("_", "/")


class SysTree(Service):
    """Publishes ``metrics`` through ``broker`` while running and enabled."""

    log = Logger(namespace="vmqtw.systree")

    def __init__(self, broker: Any, metrics: Metrics, clock: Any, enabled: bool = True,
                 interval_ms: int = DEFAULT_INTERVAL_MS, mountpoint: str = "", qos: int = 0,
                 retain: bool = False) -> None:
        self.broker = broker
        self.metrics = metrics
        self.clock = clock
        self.enabled = enabled
        self.interval_ms = interval_ms
        self.mountpoint = mountpoint
        self.qos = qos
        self.retain = retain
        self._loop: LoopingCall | None = None

    @classmethod
    def from_settings(cls, broker: Any, metrics: Metrics, clock: Any,
                      extra: Mapping[str, str]) -> "SysTree":
        """Built from a config's raw keys (``BrokerConfig.extra``)."""
        return cls(broker, metrics, clock,
                   enabled=config_bool(extra.get("systree_enabled", "on")),
                   interval_ms=int(extra.get("systree_interval", DEFAULT_INTERVAL_MS)),
                   mountpoint=extra.get("systree_mountpoint", ""),
                   qos=int(extra.get("systree_qos", 0)),
                   retain=config_bool(extra.get("systree_retain", "off")))

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def stopService(self) -> Any:
        super().stopService()
        self._cancel()
        return None

    def configure(self, enabled: bool | None = None, interval_ms: int | None = None) -> None:
        """Change ``systree_enabled`` / ``systree_interval`` at runtime."""
        if enabled is not None:
            self.enabled = enabled
        if interval_ms is not None:
            self.interval_ms = interval_ms
        if self.running:
            self._cancel()
            self._schedule()

    def _schedule(self) -> None:
        if not self.enabled or self.interval_ms <= 0:
            return
        loop = self._loop = LoopingCall(self.publish)
        loop.clock = self.clock
        loop.start(self.interval_ms / 1000.0, now=False).addErrback(
            lambda f: self.log.failure("$SYS publisher stopped", f))

    def _cancel(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def publish(self) -> int:
        """Publish every metric once now; returns the number of messages."""
        node = self.metrics.node
        count = 0
        for name, (_typ, value) in self.metrics.aggregated().items():
            payload = str(int(value) if float(value).is_integer() else value).encode()
            message = Message(systree_topic(node, name), payload, self.qos, self.retain)
            self.broker.publish(message, self.mountpoint)
            count += 1
        self.broker.flush()
        return count
