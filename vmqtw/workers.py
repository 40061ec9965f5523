"""``vmqtw -c FILE --workers N`` (or ``workers = N`` in FILE): all cores of one machine,
one cluster node per core.

The supervisor (the process started by the command) starts N worker processes, each
``python -m vmqtw.workers -c FILE --index I`` (I = 1..N), and restarts one that dies
(with a backoff, logged). Each worker is a cluster node of its own:

- its ``nodename`` is derived from the configured one: ``VerneMQ@10.0.0.1`` becomes
  ``VerneMQ-1@10.0.0.1``, ``VerneMQ-2@10.0.0.1``...;
- a ``listener.vmq``/``vmqs`` with a fixed port ``P`` listens on ``P + I - 1`` (port 0
  stays 0: the node announces the port it got);
- its plain TCP MQTT listeners (``IP:PORT``) bind with ``SO_REUSEPORT``, so all the
  workers share each port and the kernel spreads new connections over them.

Workers need the metadata engine (``metadata_plugin = redis``) like any cluster: a
client on one worker reaches subscribers on the others over the vmq links. On SIGTERM
or SIGINT the supervisor stops the workers (SIGTERM, then SIGKILL after
:data:`STOP_TIMEOUT` seconds) and exits.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import sys
from types import MappingProxyType
from typing import Any, Sequence

from twisted.internet import fdesc, protocol
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import (
    IListeningPort, IProtocolFactory, IReadDescriptor, IStreamServerEndpoint,
)
from zope.interface import implementer

from vmqtw.config import BrokerConfig
from vmqtw.config.settings import WORKERS_NEED_CLUSTER
from vmqtw.logs import Logger

#: Seconds a worker has to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0
#: A worker that ran this long before dying is restarted at once (else: backoff).
STABLE_AFTER = 10.0
#: The longest wait before restarting a worker that keeps dying.
MAX_RESTART_DELAY = 30.0


class WorkersError(Exception):
    """The configuration cannot run with workers."""


def worker_nodename(nodename: str, index: int) -> str:
    """``name@host`` -> ``name-INDEX@host``."""
    name, at, host = nodename.partition("@")
    return f"{name}-{index}{at}{host}"


def worker_config(config: BrokerConfig, index: int) -> BrokerConfig:
    """``config`` as worker ``index`` runs it: its own node name and vmq ports."""
    if not config.cluster.enabled:
        raise WorkersError(f"{config.path}: {WORKERS_NEED_CLUSTER}")
    nodename = worker_nodename(config.cluster.nodename, index)
    cluster = dataclasses.replace(config.cluster, nodename=nodename)
    unserved = []
    for listener in config.unserved_listeners:
        address = listener.address
        if listener.kind in ("vmq", "vmqs") and address.endpoint is None \
                and address.path is None and address.port:
            address = dataclasses.replace(address, port=address.port + index - 1)
            listener = dataclasses.replace(listener, address=address)
        unserved.append(listener)
    # The raw keys too: the metrics' node label, $SYS topics and vmq-admin read it there.
    extra = MappingProxyType({**config.extra, "nodename": nodename})
    return dataclasses.replace(config, cluster=cluster, unserved_listeners=tuple(unserved),
                               extra=extra)


def configured_workers(config: BrokerConfig, requested: int | None) -> int | None:
    """How many workers ``vmqtw`` starts: ``--workers`` (``requested``) wins over the
    file's ``workers = N``; None for a single broker process."""
    if requested is not None:
        return requested
    return config.cluster.workers or None


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """TCP on ``host:port`` with ``SO_REUSEPORT``: several processes listen on the port
    and the kernel spreads the connections (each process has its own accept queue)."""

    def __init__(self, reactor: Any, host: str, port: int, backlog: int) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.backlog = backlog

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        from twisted.internet.defer import fail
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host or ("::" if family == socket.AF_INET6 else ""), self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            port = self.reactor.adoptStreamPort(sock.fileno(), family, factory)
        except Exception:
            return fail()
        finally:
            sock.close()  # the reactor holds its own duplicate
        return succeed(port)


def reuse_port_endpoint(listener: Any, reactor: Any, backlog: int) -> Any:
    """A :class:`ReusePortEndpoint` for an MQTT listener on ``IP:PORT``, else None (vmq
    listeners, unix sockets, endpoint descriptions keep their own endpoint)."""
    address = listener.address
    if listener.kind in ("vmq", "vmqs") or address.endpoint is not None \
            or address.path is not None:
        return None
    return ReusePortEndpoint(reactor, address.host or "", address.port, backlog)


# -- a worker -------------------------------------------------------------------------

def worker_main(argv: Sequence[str] | None = None) -> None:
    """``python -m vmqtw.workers -c FILE --index I``: one worker (started by the
    supervisor)."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from vmqtw import config as configmod
    from vmqtw.service import StartupError, make_service
    from vmqtw.tap import startup_failed
    from vmqtw.transport import endpoints

    parser = argparse.ArgumentParser(prog="vmqtw.workers")
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        config = worker_config(configmod.load(args.config), args.index)
    except (configmod.ConfigError, WorkersError) as e:
        sys.stderr.write(f"vmqtw: configuration error: {e}\n")
        raise SystemExit(2) from None
    endpoints.reuse_port = True
    reactor.addReader(_ParentWatch(reactor))
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)],
                                     redirectStandardIO=False)
    try:
        service: Any = make_service(config)
        service.privilegedStartService()
    except StartupError as e:
        startup_failed(e)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


@implementer(IReadDescriptor)
class _ParentWatch:
    """The worker's stdin, a pipe from the supervisor: at its end (the supervisor died,
    even by SIGKILL) the worker stops instead of living on as an orphan."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        fdesc.setNonBlocking(0)

    def fileno(self) -> int:
        return 0

    def doRead(self) -> Any:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return None
        except OSError:
            return CONNECTION_DONE
        return None if data else CONNECTION_DONE

    def connectionLost(self, reason: Any) -> None:
        Logger().warn("workers: the supervisor is gone; stopping")
        if self.reactor.running:
            self.reactor.stop()

    def logPrefix(self) -> str:
        return "supervisor"


# -- the supervisor ---------------------------------------------------------------------

class _Worker(protocol.ProcessProtocol):
    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        self.supervisor.ended(self, reason)


class Supervisor:
    """Starts ``count`` workers for the configuration file ``path`` and restarts the
    ones that die (:func:`supervise` runs it)."""

    log = Logger()

    def __init__(self, path: str, config: BrokerConfig, count: int, reactor: Any,
                 python: str = sys.executable) -> None:
        self.path = path
        self.config = config
        self.count = count
        self.reactor = reactor
        self.python = python
        self.workers: dict[int, _Worker] = {}
        self.started_at: dict[int, float] = {}
        self.failures: dict[int, int] = {}
        self.restarts = 0
        self.stopping = False
        self._calls: dict[int, Any] = {}

    def start(self) -> None:
        for index in range(1, self.count + 1):
            self.spawn(index)

    def spawn(self, index: int) -> None:
        self._calls.pop(index, None)
        if self.stopping:
            return
        worker = _Worker(self, index)
        args = [self.python, "-m", "vmqtw.workers", "-c", self.path, "--index", str(index)]
        self.reactor.spawnProcess(worker, self.python, args, env=os.environ.copy(),
                                  childFDs={0: "w", 1: 1, 2: 2})
        self.workers[index] = worker
        self.started_at[index] = self.reactor.seconds()
        self.log.info("workers: worker {index} (node {node}) started, pid {pid}",
                      index=index, pid=getattr(worker.transport, "pid", None),
                      node=worker_nodename(self.config.cluster.nodename, index))

    def ended(self, worker: _Worker, reason: Any) -> None:
        index = worker.index
        if self.workers.get(index) is worker:
            del self.workers[index]
        if self.stopping:
            return
        ran = self.reactor.seconds() - self.started_at.get(index, 0.0)
        failures = 0 if ran >= STABLE_AFTER else self.failures.get(index, 0) + 1
        self.failures[index] = failures
        delay = 0.0 if not failures else min(MAX_RESTART_DELAY, 0.5 * 2 ** (failures - 1))
        self.restarts += 1
        self.log.warn("workers: worker {index} exited ({reason}) after {ran:.1f}s; "
                      "restarting in {delay:.1f}s", index=index, ran=ran, delay=delay,
                      reason=reason.getErrorMessage())
        self._calls[index] = self.reactor.callLater(delay, self.spawn, index)

    def stop(self) -> Deferred[Any]:
        """SIGTERM every worker; SIGKILL the ones still there after STOP_TIMEOUT."""
        self.stopping = True
        for call in self._calls.values():
            if call.active():
                call.cancel()
        self._calls.clear()
        waits = []
        for worker in list(self.workers.values()):
            waits.append(worker.ended)
            _signal(worker, "TERM")
            kill = self.reactor.callLater(STOP_TIMEOUT, _signal, worker, "KILL")
            worker.ended.addCallback(_cancel, kill)
        return DeferredList(waits, consumeErrors=True)


def _cancel(result: None, call: Any) -> None:
    if call.active():
        call.cancel()


def _signal(worker: _Worker, name: str) -> None:
    try:
        worker.transport.signalProcess(name)  # type: ignore[union-attr]
    except Exception:  # already gone
        pass


def supervise(path: str, config: BrokerConfig, count: int) -> None:
    """Run the supervisor of ``count`` workers until SIGTERM/SIGINT (``vmqtw --workers``)."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    try:
        worker_config(config, 1)
    except WorkersError as e:
        sys.stderr.write(f"vmqtw: configuration error: {e}\n")
        raise SystemExit(2) from None
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)],
                                     redirectStandardIO=False)
    supervisor = Supervisor(os.path.abspath(path), config, count, reactor)
    reactor.callWhenRunning(supervisor.start)
    reactor.addSystemEventTrigger("before", "shutdown", supervisor.stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    reactor.run()


if __name__ == "__main__":
    worker_main()
