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

    def restart_named(name: str) -> None:
        """Resume the suspended or stopped listener called ``name``."""

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
    with ``host``/``port``/``path``, ``mountpoint``, ``max_connections``,
    ``options``), ``port`` (the listening port, None before it listens),
    ``limiter`` (its ``LimitedConnections``: ``protocols`` and the ``port`` it
    pauses at ``max_connections``), ``bind()`` and ``close_connections()``.
    ``builder(kind, host, port, options)`` makes a new listener for ``start``.

    Stopping a listener stops accepting on its listening socket (it stays
    bound, so it comes back on the same address and port - a port-0 listener
    too - and pending connections wait in the kernel's backlog; VerneMQ closes
    the socket, so new connections are refused there).  ``delete`` closes it.
    """

    def __init__(self, services: dict[str, Any],
                 builder: Callable[[str, str, int, dict[str, Any]], Any] | None = None) -> None:
        self.services = services
        self.builder = builder
        #: listener name -> "suspended" or "stopped" (absent: running)
        self.state: dict[str, str] = {}

    def _find(self, address: str, port: int, verb: str) -> tuple[str, Any]:
        for name, svc in self.services.items():
            if self._address(svc) == (address, port):
                return name, svc
        raise ListenerError(f"can't {verb} listener due to 'not_found'")

    @staticmethod
    def _address(svc: Any) -> tuple[str, int]:
        if svc.port is not None:
            host = svc.port.getHost()
            if hasattr(host, "port"):
                return host.host, host.port
        addr = svc.listener.address
        if addr.path is not None:
            return "local:" + addr.path, 0
        return addr.host or "0.0.0.0", addr.port

    def _status(self, name: str, svc: Any) -> str:
        if svc.port is None:
            return "stopped"
        return self.state.get(name, "running")

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

    @staticmethod
    def _pause(svc: Any) -> None:
        """Stop accepting; the connection limiter may not resume it meanwhile."""
        port, limiter = svc.port, svc.limiter
        if port is None:
            return
        if getattr(limiter, "port", None) is port:
            limiter.port = None
        port.stopReading()

    @staticmethod
    def _resume(svc: Any) -> None:
        port, limiter = svc.port, svc.limiter
        if port is None:
            return
        if hasattr(limiter, "port"):
            limiter.port = port
        if not getattr(limiter, "paused", False):  # else: it resumes below the cap
            port.startReading()

    def stop(self, address: str, port: int, kill: bool) -> None:
        name, svc = self._find(address, port, "stop")
        self._pause(svc)
        if kill:
            svc.close_connections()
        self.state[name] = "stopped" if kill else "suspended"

    def restart(self, address: str, port: int) -> None:
        self.restart_named(*self._find(address, port, "restart"))

    def restart_named(self, name: str, svc: Any = None) -> None:
        """Resume the listener called ``name`` (a stopped one binds its configured
        address again: a port-0 listener gets a new port)."""
        if svc is None:
            svc = self.services.get(name)
            if svc is None:
                raise ListenerError("can't restart listener due to 'not_found'")
        if svc.port is None:
            try:
                svc.bind()
            except Exception as e:
                raise ListenerError(f"can't restart listener due to '{_reason(e)}'") from e
        elif name in self.state:
            self._resume(svc)
        self.state.pop(name, None)

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
        """Take a listener out of the service tree, which stops it (closing
        its listening socket)."""
        if getattr(svc, "parent", None) is not None:
            svc.disownServiceParent()
        elif svc.port is not None:
            port, svc.port = svc.port, None
            port.stopListening()

    def delete(self, address: str, port: int) -> None:
        name, svc = self._find(address, port, "delete")
        svc.close_connections()
        del self.services[name]
        self.state.pop(name, None)
        self._forget(svc)
