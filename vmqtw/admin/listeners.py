"""Listener control for ``vmq-admin listener ...`` and the health checks.

``IListenerController`` is what the admin commands need from the service;
``ServiceListeners`` implements it over the service's listener objects.  A
listener is named by ``address`` and ``port`` as in VerneMQ.

- stop: suspend (no new connections, the existing ones stay), or with
  ``kill`` stop and close every connection of the listener;
- restart: resume a suspended or stopped listener;
- delete: stop (closing its connections) and forget it;
- start: resume a known listener, or create one through the service's
  ``builder`` (runtime listeners are not persisted).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from zope.interface import Interface, implementer

#: listener kind -> VerneMQ's ``type`` column.
TYPES = {"tcp": "mqtt", "ssl": "mqtts", "ws": "mqttws", "wss": "mqttwss",
         "http": "http", "https": "https", "vmq": "vmq", "vmqs": "vmqs"}
MQTT_KINDS = ("tcp", "ssl", "ws", "wss")


def _reason(e: BaseException) -> str:
    """The first line of an error, for VerneMQ's one-line answers."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class ListenerError(Exception):
    """``str(e)`` is the reason: ``can't <verb> listener due to '<reason>'``."""


class IListenerController(Interface):

    def rows() -> list[dict[str, Any]]:
        """One dict per listener: ``kind``, ``type``, ``status`` (running,
        suspended, stopped), ``address``, ``port`` (int), ``mountpoint``,
        ``max_conns``, ``active_conns``, ``all_conns`` and the option mapping
        ``options`` (TLS and MQTT columns)."""

    def start(address: str, port: int, options: dict[str, Any]) -> None:
        """Resume or create the listener; ListenerError when impossible."""

    def stop(address: str, port: int, kill: bool) -> None:
        """Suspend, or with ``kill`` stop it and close its connections."""

    def restart(address: str, port: int) -> None:
        """Resume a suspended or stopped listener."""

    def delete(address: str, port: int) -> None:
        """Stop the listener and forget it."""


def view(controller: IListenerController) -> list[dict[str, Any]]:
    """The listeners as ``/status.json`` and ``/health`` see them."""
    return [{"type": r["type"], "status": r["status"], "ip": r["address"], "port": r["port"],
             "mountpoint": r["mountpoint"], "max_conns": r["max_conns"]}
            for r in controller.rows()]


@implementer(IListenerController)
class ServiceListeners:
    """The controller over the service's listeners.

    Each listener object has ``listener`` (its config: ``kind``, ``address``
    with ``host``/``port``, ``mountpoint``, ``max_connections``, ``options``),
    ``port`` (the listening port or None), ``limiter.protocols`` (the open
    connections), ``bind()`` and ``close_connections()``.  ``builder(kind,
    host, port, options)`` makes a new unbound listener object for ``start``.
    """

    def __init__(self, services: dict[str, Any],
                 builder: Callable[[str, str, int, dict[str, Any]], Any] | None = None) -> None:
        self.services = services
        self.builder = builder
        self.suspended: set[str] = set()
        #: The bound address of a listener stopped or suspended by us (a port
        #: 0 listener keeps being known by the port it had).
        self._address_of: dict[str, tuple[str, int]] = {}

    def _find(self, address: str, port: int, verb: str) -> tuple[str, Any]:
        for name, svc in self.services.items():
            host, bound = self._address(svc)
            if host == address and bound == port:
                return name, svc
        for name, (host, bound) in self._address_of.items():
            if host == address and bound == port and name in self.services:
                return name, self.services[name]
        raise ListenerError(f"can't {verb} listener due to 'not_found'")

    def _address(self, svc: Any) -> tuple[str, int]:
        for name, known in self.services.items():
            if known is svc and svc.port is None and name in self._address_of:
                return self._address_of[name]
        addr = svc.listener.address
        if svc.port is not None:
            host = svc.port.getHost()
            if hasattr(host, "port"):
                return host.host, host.port
        if addr.path is not None:
            return "local:" + addr.path, 0
        return addr.host or "0.0.0.0", addr.port

    def _status(self, name: str, svc: Any) -> str:
        if name in self.suspended:
            return "suspended"
        return "stopped" if svc.port is None else "running"

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for name, svc in self.services.items():
            cfg = svc.listener
            host, port = self._address(svc)
            conns = len(getattr(svc.limiter, "protocols", ()))
            out.append({
                "name": name, "kind": cfg.kind, "type": TYPES.get(cfg.kind, cfg.kind),
                "status": self._status(name, svc), "address": host, "port": port,
                "mountpoint": cfg.mountpoint,
                "max_conns": cfg.max_connections if cfg.max_connections else "infinity",
                "active_conns": conns, "all_conns": conns,
                "options": dict(cfg.options),
                "allowed_protocol_versions": ",".join(
                    str(v) for v in sorted(getattr(cfg, "allowed_protocol_versions", ()))),
                "allow_anonymous_override": getattr(cfg, "allow_anonymous_override", False),
            })
        return out

    def stop(self, address: str, port: int, kill: bool) -> None:
        name, svc = self._find(address, port, "stop")
        self._address_of[name] = (address, port)
        port_, svc.port = svc.port, None
        if port_ is not None:
            port_.stopListening()  # closes the listening socket, not the connections
        if kill:
            svc.close_connections()
            self.suspended.discard(name)
        elif port_ is not None:
            self.suspended.add(name)

    @staticmethod
    def _close(svc: Any) -> None:
        port, svc.port = svc.port, None
        if port is not None:
            port.stopListening()
        svc.close_connections()

    def restart(self, address: str, port: int) -> None:
        name, svc = self._find(address, port, "restart")
        if svc.port is None:
            cfg = svc.listener
            if cfg.address.path is None and cfg.address.port == 0:
                # a listener bound to port 0 comes back on the port it had
                svc.listener = replace(cfg, address=replace(cfg.address, port=port))
            try:
                svc.bind()
            except Exception as e:
                raise ListenerError(f"can't restart listener due to '{_reason(e)}'") from e
        self.suspended.discard(name)

    def start(self, address: str, port: int, options: dict[str, Any]) -> None:
        try:
            self._find(address, port, "start")
        except ListenerError:
            pass
        else:
            self.restart(address, port)
            return
        kind = options.pop("kind", "tcp")
        if self.builder is None:
            raise ListenerError("can't start listener due to 'not_supported'")
        svc = None
        try:
            svc = self.builder(kind, address, port, options)
            if svc.port is None:  # the builder may have started it already
                svc.bind()
        except Exception as e:
            if svc is not None:
                self._forget(svc)
            raise ListenerError(f"can't start listener due to '{_reason(e)}'") from e
        self.services[getattr(svc, "name", None) or f"{kind}.{address}:{port}"] = svc

    @staticmethod
    def _forget(svc: Any) -> None:
        if getattr(svc, "parent", None) is not None:
            svc.disownServiceParent()

    def delete(self, address: str, port: int) -> None:
        name, svc = self._find(address, port, "delete")
        self._close(svc)
        self.suspended.discard(name)
        self._address_of.pop(name, None)
        del self.services[name]
        self._forget(svc)
