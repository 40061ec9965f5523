"""A real haproxy for the PROXY protocol integration tests.

haproxy runs in the foreground (``-db``) with a generated configuration.  Its
frontend does not bind a port of its own: the test binds and listens on
127.0.0.1:0 and hands the listening socket to haproxy as file descriptor 3
(``bind fd@3``).  So there is no race on a port number picked in advance and
no readiness wait: clients that connect before haproxy runs wait in the
socket's backlog.  (A unix-socket frontend would also avoid the race, but
then haproxy sends no client address - v1 ``UNKNOWN``, v2 ``AF_UNIX`` - and
the tests could not check that the broker sees the client's real address.)
Our copy of the socket is closed once haproxy has it, so if haproxy dies,
clients are refused at once instead of hanging.

haproxy's stderr (its alerts and one ``option tcplog`` line per connection)
is kept and added to the message of a failing test by ``HAProxy.guard``.
"""
from __future__ import annotations

import os
import shutil
import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest

from tests.support import missing

#: Seconds haproxy gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0


def haproxy_path() -> str:
    """The haproxy executable; when it is not installed the test is skipped,
    or fails under CI (see ``tests.support.missing``)."""
    path = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)),
        None)
    if path is None:
        missing("haproxy is not installed (Debian: apt-get install -y haproxy; "
                ".ci/run installs it): PROXY protocol tests behind haproxy skipped")
    return path


class _HAProxyProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.ended: Deferred = Deferred()
        self.exit: Any = None

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessTerminated) and reason.value.signal is not None:
            self.exit = f"signal {reason.value.signal}"
        elif reason.check(ProcessDone, ProcessTerminated):
            self.exit = f"exit code {reason.value.exitCode}"
        else:
            self.exit = str(reason.value)
        self.ended.callback(self.exit)


class HAProxy:
    """One haproxy process in ``mode tcp``: frontend on 127.0.0.1:``port``,
    one backend server (the broker) at 127.0.0.1:``backend_port`` (or
    ``server_address``).

    ``bind_options`` go on the frontend's bind line (e.g. ``ssl crt ...``),
    ``server_options`` on the server line (``send-proxy``, ``send-proxy-v2``,
    ``send-proxy-v2-ssl-cn``, ``check ...``), ``frontend_lines`` and
    ``backend_lines`` are extra configuration lines.
    """

    def __init__(self, directory: str, backend_port: int, server_options: str,
                 bind_options: str = "", frontend_lines: str = "",
                 backend_lines: str = "", server_address: str | None = None) -> None:
        self.executable = haproxy_path()
        self.directory = directory
        self.backend_port = backend_port
        self.server_options = server_options
        self.bind_options = bind_options
        self.frontend_lines = frontend_lines
        self.backend_lines = backend_lines
        #: where haproxy connects; default 127.0.0.1:backend_port (``unix@PATH`` works too)
        self.server_address = server_address or f"127.0.0.1:{backend_port}"
        self.port = 0
        self.config_text = ""
        self.process: _HAProxyProcess | None = None
        self.transport: Any = None
        self._stopping: Deferred | None = None

    def config(self) -> str:
        return f"""\
global
    maxconn 64
    log stderr format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend fe
    bind fd@3 {self.bind_options}
{self.frontend_lines}
    default_backend be

backend be
{self.backend_lines}
    server broker {self.server_address} {self.server_options}
"""

    def start(self) -> int:
        """Start haproxy; returns the frontend port (already accepting into
        its backlog, so clients may connect at once)."""
        os.makedirs(self.directory, exist_ok=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            sock.listen(64)
            self.port = sock.getsockname()[1]
            self.config_text = self.config()
            path = os.path.join(self.directory, "haproxy.cfg")
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.config_text)
            self.process = _HAProxyProcess()
            self.transport = reactor.spawnProcess(
                self.process, self.executable, [self.executable, "-db", "-f", path],
                env=dict(os.environ), path=self.directory,
                childFDs={0: "w", 1: "r", 2: "r", 3: sock.fileno()})
            self.transport.closeStdin()
        finally:
            sock.close()  # haproxy holds its own copy
        return self.port

    def stderr(self) -> str:
        if self.process is None:
            return "(haproxy was not started)"
        text = bytes(self.process.err).decode("utf-8", "replace")
        state = f"haproxy {self.process.exit}" if self.process.exit else "haproxy running"
        return f"{state}; stderr:\n{text or '(empty)'}"

    def guard(self, d: Deferred) -> Deferred:
        """``d``, with haproxy's state, stderr and configuration added to a failure."""
        def explain(f: Failure) -> Failure:
            if f.check(SkipTest):
                return f
            raise AssertionError(f"{f.getErrorMessage()}\n--- {self.stderr()}\n"
                                 f"--- haproxy.cfg:\n{self.config_text}") from f.value
        return d.addErrback(explain)

    def stop(self) -> Deferred:
        """SIGTERM; fires when haproxy has exited (SIGKILL after STOP_TIMEOUT)."""
        if self._stopping is not None:
            return self._stopping
        proc = self.process
        if proc is None or proc.exit is not None:
            self._stopping = defer.succeed(None)
            return self._stopping

        def kill() -> None:
            try:
                self.transport.signalProcess("KILL")
            except Exception:
                pass

        call = reactor.callLater(STOP_TIMEOUT, kill)
        try:
            self.transport.signalProcess("TERM")
        except Exception:
            pass

        def done(result: Any) -> None:
            if call.active():
                call.cancel()

        self._stopping = proc.ended.addCallback(done)
        return self._stopping
