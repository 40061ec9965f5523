"""From a listener's kind and options to its chain of protocol factories.

    bytes -> [PROXY] -> [TLS] -> [WebSocket] -> MQTTProtocol

Each layer lives in its own module and exposes one function
``<layer>_factory(listener, inner, reactor) -> factory``.  A layer whose module
is not there yet makes that listener kind unsupported (a startup error naming
the config line).  Layers that hold reloadable state (TLS contexts, PSK files)
expose ``reload()``; the service calls it on SIGHUP.
"""
from __future__ import annotations

import importlib
from typing import Any

from vmqtw.config import ListenerConfig


class LayerError(Exception):
    """A listener cannot be built (unsupported kind, bad TLS file...); the
    message names the config file, line and key."""


def _layer(module: str, function: str, listener: ListenerConfig, what: str) -> Any:
    try:
        mod = importlib.import_module(f"vmqtw.transport.{module}")
    except ImportError as e:
        if e.name != f"vmqtw.transport.{module}":
            raise
        file, line = listener.source
        raise LayerError(f"{file}:{line}: {listener.key}: {what} is not supported yet") from None
    return getattr(mod, function)


def build_layers(listener: ListenerConfig, inner: Any, reactor: Any) -> list[Any]:
    """The factories of ``listener``, outermost first, ending with ``inner``."""
    layers = [inner]
    kind = listener.kind
    if kind in ("ws", "wss"):
        layers.insert(0, _layer("websocket", "websocket_factory", listener,
                                "MQTT over WebSocket")(listener, layers[0], reactor))
    if kind in ("ssl", "wss"):
        layers.insert(0, _layer("tls", "tls_factory", listener, "TLS")(listener, layers[0],
                                                                        reactor))
    if kind not in ("tcp", "ssl", "ws", "wss"):
        file, line = listener.source
        raise LayerError(f"{file}:{line}: {listener.key}: '{kind}' listeners are not "
                         f"supported yet")
    if listener.proxy_protocol:
        layers.insert(0, _layer("proxy", "proxy_factory", listener, "the PROXY protocol")(
            listener, layers[0], reactor))
    return layers
