"""Netsplits: VerneMQ's ``allow_{register,publish,subscribe,unsubscribe}_during_netsplit``
flags.

A node is *ready* while the metadata engine answers its heartbeats and it has an
established, handshaken link to every other live member. While it is not ready, and
the flag of an operation is off (VerneMQ's default), the operation is refused:

- CONNECT: CONNACK "server unavailable" (3.1.1: 0x03, 5.0: 0x88); a node that is
  still starting first lets the CONNECT wait for its join (``settle``, at most
  :attr:`~vmqtw.cluster.node.ClusterNode.connect_grace`);
- PUBLISH: dropped (5.0 QoS 1/2: PUBACK/PUBREC 0x80; 3.x: no acknowledgement);
- SUBSCRIBE: SUBACK failure (3.1.1: 0x80, 5.0: 0x80);
- UNSUBSCRIBE: the subscriptions stay; 5.0: UNSUBACK 0x80 for every filter, 3.x: no
  UNSUBACK (3.x has no failure code; VerneMQ sends none either, the client retries).

Each refusal counts in VerneMQ's ``mqtt_publish_error`` / ``mqtt_subscribe_error`` /
``mqtt_unsubscribe_error`` (the connection code does, seeing the ``netsplit`` reason).

The gate wraps each listener's :class:`~vmqtw.auth.chain.Authorizer`, so it runs
before the plugins' hooks and costs one readiness check per operation while ready.
UNSUBSCRIBE has no authorizer hook: the connection code asks
:meth:`NetsplitGate.unsubscribe_refused` (found on the listener's authorizer).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer

from vmqtw.auth.api import Error
from vmqtw.config import ClusterConfig

#: The ``Error`` reason the connection code maps to the netsplit answers above.
NETSPLIT = "netsplit"
_REFUSED = Error(NETSPLIT)


def _hook(inner: Any, name: str) -> Callable[..., Any]:
    """``inner``'s method ``name``, or one that looks it up when called (an inner
    authorizer without it fails then, as before)."""
    method = getattr(inner, name, None)
    if method is not None:
        return method
    return lambda *args: getattr(inner, name)(*args)


class NetsplitGate:
    """An authorizer that refuses what the flags forbid while ``ready()`` is false,
    and otherwise asks the wrapped ``inner`` authorizer (every other attribute is
    the inner one's).

    :param settle: for CONNECT: returns a ``Deferred[bool]`` to wait for readiness
        (a node that is starting), or None to refuse at once.
    """

    def __init__(self, inner: Any, ready: Callable[[], bool], flags: ClusterConfig,
                 settle: Optional[Callable[[], Optional[defer.Deferred[bool]]]] = None
                 ) -> None:
        self.inner = inner
        self.ready = ready
        self.settle = settle
        self.allow_register = flags.allow_register_during_netsplit
        self.allow_publish = flags.allow_publish_during_netsplit
        self.allow_subscribe = flags.allow_subscribe_during_netsplit
        self.allow_unsubscribe = flags.allow_unsubscribe_during_netsplit
        self.refused = 0
        # The inner hooks, looked up once (a wrapped gate answers them through its
        # own __getattr__): PUBLISH comes through here for every message.
        self._publish = _hook(inner, "publish")
        self._publish_m5 = _hook(inner, "publish_m5")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _closed(self, allowed: bool) -> bool:
        if allowed or self.ready():
            return False
        self.refused += 1
        return True

    def register(self, request: Any, anonymous_override: bool = False) -> Any:
        if self.allow_register or self.ready():
            return self.inner.register(request, anonymous_override)
        settling = self.settle() if self.settle is not None else None
        if settling is None:
            self.refused += 1
            return defer.succeed(_REFUSED)

        def settled(ready: bool) -> Any:
            if ready:
                return self.inner.register(request, anonymous_override)
            self.refused += 1
            return _REFUSED
        return settling.addCallback(settled)

    def publish(self, client: Any, topic: str, payload: bytes, qos: int, retain: bool,
                deferrable: bool = False) -> Any:
        # (_closed inlined: this runs for every PUBLISH)
        if self.allow_publish or self.ready():
            return self._publish(client, topic, payload, qos, retain, deferrable)
        self.refused += 1
        return _REFUSED

    def publish_m5(self, client: Any, topic: str, payload: bytes, qos: int, retain: bool,
                   properties: dict[str, Any], deferrable: bool = False) -> Any:
        if self.allow_publish or self.ready():
            return self._publish_m5(client, topic, payload, qos, retain, properties,
                                    deferrable)
        self.refused += 1
        return _REFUSED

    def subscribe(self, client: Any, topics: list[tuple[str, int]],
                  deferrable: bool = False) -> Any:
        if self._closed(self.allow_subscribe):
            return _REFUSED
        return self.inner.subscribe(client, topics, deferrable)

    def subscribe_m5(self, client: Any, topics: list[tuple[str, int]],
                     properties: dict[str, Any], deferrable: bool = False) -> Any:
        if self._closed(self.allow_subscribe):
            return _REFUSED
        return self.inner.subscribe_m5(client, topics, properties, deferrable)

    def unsubscribe_refused(self) -> bool:
        """Whether an UNSUBSCRIBE must fail now (not ready, the flag off)."""
        return self._closed(self.allow_unsubscribe)
