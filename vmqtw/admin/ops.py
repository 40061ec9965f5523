"""The operations stack of one broker service, built in one place.

``Operations(service)`` takes a running broker service (anything with
``broker``, ``config``, ``listeners`` - a dict of listener services -,
``plugins`` and ``reactor``) and builds the metrics registry, the API keys,
the listener controller and the admin command set; it makes the admin
channel and ``$SYS`` services and the resource tree of an HTTP listener.

Settings come from the configuration's raw keys (``config.extra``):
``nodename``, ``prometheus_namespace``, ``admin_socket``, ``api_keys_file``,
``min_apikey_length``, ``max_apikey_expiry_days``, ``systree_*`` and
``persistent_store.directory`` (the admin socket and the key file live in the
store's directory unless given).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, Mapping

from vmqtw.admin.apikeys import FILENAME as KEYS_FILENAME
from vmqtw.admin.apikeys import ApiKeys
from vmqtw.admin.channel import SOCKET_NAME, AdminChannelService
from vmqtw.admin.commands import Admin
from vmqtw.admin.listeners import ServiceListeners, view
from vmqtw.admin.systree import SysTree
from vmqtw.metrics import Metrics, metrics_settings


def state_directory(config: Any) -> str:
    """The store's directory (``persistent_store.directory``, default ``data``
    next to the configuration file)."""
    base = os.path.dirname(os.path.abspath(config.path))
    return os.path.normpath(os.path.join(
        base, config.extra.get("persistent_store.directory", "data")))


def _path(config: Any, key: str, default_name: str) -> str:
    value = config.extra.get(key)
    base = os.path.dirname(os.path.abspath(config.path))
    if value:
        return os.path.normpath(os.path.join(base, value))
    return os.path.join(state_directory(config), default_name)


def listener_builder(service: Any) -> Callable[[str, str, int, dict[str, Any]], Any]:
    """``vmq-admin listener start`` for a new address: the listener is declared
    as if its lines were added to the configuration file (so it inherits the
    file's ``listener.*`` settings and its options are checked by the same
    parser), then built like the configured ones and added to the service: an
    MQTT listener (tcp, ssl, ws, wss) with its MQTT factory, an ``http`` or
    ``https`` one with the same ``twisted.web`` site a configured HTTP
    listener gets (``Operations.http_site``: its ``http_modules``, auth modes
    and request limits).  Runtime listeners are not persisted, as in VerneMQ."""
    counter = [0]

    def build(kind: str, host: str, port: int, options: dict[str, Any]) -> Any:
        from vmqtw.auth.loader import listener_authorizer
        from vmqtw.config import parse
        from vmqtw.config.schema import HTTP_KINDS
        from vmqtw.service import ListenerService
        from vmqtw.transport.protocol import MQTTFactory
        if kind not in ("tcp", "ssl", "ws", "wss", *HTTP_KINDS):
            raise ValueError("not_supported")
        counter[0] += 1
        name = f"runtime{counter[0]}"
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"listener.{kind}.{name} = {address}"]
        lines += [f"listener.{kind}.{name}.{k} = {'on' if v is None else v}"
                  for k, v in options.items()]
        with open(service.config.path, encoding="utf-8") as f:
            text = f.read()
        config = parse(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n",
                       service.config.path)
        (listener,) = [x for x in config.listeners if x.kind == kind and x.name == name]
        authorizer = listener_authorizer(service.config, listener, service.plugins)
        factory: Any
        if kind in HTTP_KINDS:  # ValueError naming the key for a bad http option
            factory = service.ops.http_site(listener.options, authorizer)
        else:
            factory = MQTTFactory(service.broker, authorizer, listener, service.reactor,
                                  service.notifier)
        svc = ListenerService(listener, factory, service.reactor)
        try:
            svc.setServiceParent(service)  # binds at once when the service is running
        except BaseException:
            if svc.parent is not None:
                svc.disownServiceParent()
            raise
        return svc

    return build


class Operations:
    def __init__(self, service: Any, clock: Callable[[], float] | None = None,
                 builder: Callable[..., Any] | None = None) -> None:
        self.service = service
        config = service.config
        extra: Mapping[str, str] = config.extra
        node, namespace = metrics_settings(extra)
        metrics = getattr(service, "metrics", None)
        if metrics is None:  # a service without its own registry
            metrics = Metrics(node, namespace, broker=service.broker)
            # sessions restored from the store before we were built
            metrics.inc("queue_initialized_from_storage", len(service.broker.sessions))
        self.metrics: Metrics = metrics
        self.metrics.watch_sessions(service.broker)
        max_days = extra.get("max_apikey_expiry_days")
        keys_path = _path(config, "api_keys_file", KEYS_FILENAME)
        self.apikeys = ApiKeys(keys_path, int(extra.get("min_apikey_length", 0)),
                               int(max_days) if max_days else None)
        self.listeners = ServiceListeners(
            service.listeners, builder if builder is not None else listener_builder(service))
        self.admin = Admin(service.broker, self.metrics, self.listeners, self.apikeys,
                           getattr(service, "plugins", ()), node,
                           clock=clock if clock is not None else time.time)
        self.admin.cluster = getattr(service, "cluster", None)
        # ``vmq-admin trace client``: connections report the packets of the
        # sessions in ``traced`` (an empty set while nothing is traced).
        service.broker.tracer = self.admin.tracer
        service.broker.traced = self.admin.tracer.watching
        #: The admin socket's path; None with ``admin_socket = off``.
        self.socket_path: str | None = None if extra.get("admin_socket") == "off" else \
            _path(config, "admin_socket", SOCKET_NAME)

    def listeners_view(self) -> list[dict[str, Any]]:
        return view(self.listeners)

    def admin_channel(self) -> AdminChannelService | None:
        """The admin channel's service (None with ``admin_socket = off``)."""
        if self.socket_path is None:
            return None
        return AdminChannelService(self.admin, self.socket_path, self.service.reactor)

    def systree(self) -> SysTree:
        return SysTree.from_settings(self.service.broker, self.metrics, self.service.reactor,
                                     self.service.config.extra)

    def http_root(self, modules: Iterable[str] | None = None,
                  auth_modes: Mapping[str, str] | None = None, authorizer: Any = None,
                  pub_settings: Any = None) -> Any:
        """The resource tree of an HTTP listener (``vmqtw.http.site.build_root``)."""
        from vmqtw.http.site import DEFAULT_MODULES, build_root
        return build_root(self.admin, self.metrics, self.listeners_view, self.apikeys,
                          DEFAULT_MODULES if modules is None else modules, auth_modes,
                          authorizer, pub_settings)

    def http_site(self, options: Mapping[str, str], authorizer: Any = None) -> Any:
        """The ``twisted.web`` Site of one HTTP listener, from its raw options
        (``http_modules``, ``http_module.M.auth.mode``, request limits) and the
        file's global keys; ``authorizer`` is the listener's, for vmq_http_pub.
        A bad value raises ValueError naming the key."""
        from vmqtw.http.settings import http_settings
        from vmqtw.http.site import make_site
        config = self.service.config
        global_keys = dict(config.extra)
        plugin_settings = getattr(config, "plugin_settings", {})
        for key, value in plugin_settings.get("vmq_http_pub", {}).items():
            global_keys[f"vmq_http_pub.{key}"] = value
        settings = http_settings(global_keys, options)
        root = self.http_root(settings.modules, settings.auth_modes, authorizer, settings.pub)
        return make_site(root, settings.max_request_line_length,
                         settings.max_header_value_length, self.service.reactor)
