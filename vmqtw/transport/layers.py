"""From a listener's kind and options to its chain of protocol factories.

    bytes -> [PROXY] -> [TLS] -> [WebSocket] -> MQTTProtocol

The PROXY and TLS layers are endpoint wrappers (``vmqtw.transport.endpoints``
builds them); the WebSocket layer is a factory around the MQTT factory.  Each
layer lives in its own module and exposes ``<layer>_factory(listener, inner,
reactor) -> factory``.  Layers that hold reloadable state (TLS contexts, PSK
files) expose ``reload()``; the service calls it on SIGHUP.
"""
from __future__ import annotations

from typing import Any

from vmqtw.config import ListenerConfig
from vmqtw.transport import proxy, tls, websocket
from vmqtw.transport.errors import LayerError

__all__ = ["KINDS", "LayerError", "check_kind", "protocol_layers", "build_layers"]

#: The listener kinds served.
KINDS = ("tcp", "ssl", "ws", "wss")


def check_kind(listener: ListenerConfig) -> None:
    """LayerError unless the listener's kind is served."""
    if listener.kind not in KINDS:
        file, line = listener.source
        raise LayerError(f"{file}:{line}: {listener.key}: '{listener.kind}' listeners are "
                         f"not supported yet")


def protocol_layers(listener: ListenerConfig, inner: Any, reactor: Any) -> list[Any]:
    """The factories above the byte stream (WebSocket), outermost first, ending
    with ``inner``: what a listener's endpoint listens with."""
    layers = [inner]
    if listener.kind in ("ws", "wss"):
        layers.insert(0, websocket.websocket_factory(listener, layers[0], reactor))
    check_kind(listener)
    return layers


def build_layers(listener: ListenerConfig, inner: Any, reactor: Any) -> list[Any]:
    """Every factory of ``listener``, outermost first, ending with ``inner``:
    the same chain the listener's endpoint builds when it listens."""
    layers = protocol_layers(listener, inner, reactor)
    if listener.kind in ("ssl", "wss"):
        layers.insert(0, tls.tls_factory(listener, layers[0], reactor))
    if listener.proxy.enabled:
        layers.insert(0, proxy.proxy_factory(listener, layers[0], reactor))
    return layers
