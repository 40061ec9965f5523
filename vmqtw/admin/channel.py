"""The local admin channel: a unix socket that only the operator can use.

The broker process listens on a unix socket created with mode 0600 (by
default ``vmq-admin.sock`` in the store's directory).  Each request is one
JSON line ``{"argv": [...]}``; each answer one JSON line ``{"code": N,
"output": "..."}``.  Commands are short synchronous calls on the reactor
thread; a connection may send several requests.  A request line longer than
``MAX_LINE`` or that is not JSON gets an error answer and the connection is
closed; nothing a client sends can stop the broker.
"""
from __future__ import annotations

import json
import os
import socket
import stat
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver

from vmqtw.admin.commands import Admin
from vmqtw.logs import Logger

MAX_LINE = 65536
SOCKET_NAME = "vmq-admin.sock"


class AdminProtocol(LineOnlyReceiver):
    """One console.  While a streaming command (a trace) runs, its lines go
    out as ``{"stream": "..."}``; the final answer comes when it ends."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    trace: Any = None
    streaming = False

    def write(self, text: str) -> None:
        """A line from a streaming command."""
        if self.transport is not None and self.streaming:
            self._answer({"stream": text})

    def end(self, code: int = 0) -> None:
        """The streaming command is over: final answer (exit ``code``), close."""
        if self.streaming:
            self.streaming = False
            self.trace = None
            self._answer({"code": code, "output": ""})
            self._close()

    def connectionLost(self, reason: Any = None) -> None:
        trace, self.trace = self.trace, None
        if trace is not None:
            self.factory.admin.tracer.stop(trace)
        self.streaming = False

    def lineReceived(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            argv = request["argv"]
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise ValueError("argv must be a list of strings")
        except (ValueError, KeyError, TypeError) as e:
            self._answer({"code": 1, "output": f"bad request: {e}\n"})
            self._close()
            return
        if self.streaming:
            return  # a console that is tracing sends nothing else
        fmt = "json" if "--format=json" in argv else "human"
        try:
            reply = self.factory.admin.run(argv, console=self)
            if reply.streaming:
                self.streaming = True
                self._answer({"stream": reply.render(fmt).rstrip("\n")})
                return
            answer = {"code": reply.code, "output": reply.render(fmt)}
        except Exception:  # a bug in a command must not reach the reactor
            self.factory.log.failure("admin command {argv!r} failed", argv=argv)
            answer = {"code": 1, "output": "internal error, see the broker's log\n"}
        self._answer(answer)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._answer({"code": 1, "output": "bad request: line too long\n"})
        self._close()

    def _answer(self, answer: dict[str, Any]) -> None:
        if self.transport is not None:
            self.transport.write(json.dumps(answer).encode() + b"\n")

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


class AdminFactory(Factory):
    protocol = AdminProtocol
    log = Logger(namespace="vmqtw.admin")

    def __init__(self, admin: Admin) -> None:
        self.admin = admin


def remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a broker that is gone; refuse to take
    over a socket a running broker still answers on, or a file that is not a
    socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another broker")


class AdminChannelService(Service):
    """Serves ``admin`` on the unix socket ``path`` (mode 0600)."""

    log = Logger(namespace="vmqtw.admin")

    def __init__(self, admin: Admin, path: str, reactor: Any = None) -> None:
        self.admin = admin
        self.path = path
        self.reactor = reactor
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            remove_stale_socket(self.path)
            old = os.umask(0o177)  # no window in which the socket is open to others
            try:
                self.port = reactor.listenUNIX(self.path, AdminFactory(self.admin),
                                               mode=0o600)
            finally:
                os.umask(old)
        except Exception as e:  # the broker runs on without its admin channel
            self.log.error("admin channel not available at {path}: {reason} (vmq-admin "
                           "cannot reach this broker; set admin_socket to another path)",
                           path=self.path, reason=getattr(e, "socketError", None) or e)
            return
        self.log.info("admin channel on {path}", path=self.path)

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


class ChannelError(Exception):
    """The broker could not be reached or answered nonsense."""


def request(path: str, argv: list[str], timeout: float = 30.0,
            on_stream: Callable[[str], None] | None = None) -> tuple[int, str]:
    """Send one command over the admin socket: (exit code, output).  Blocking;
    used by the ``vmq-admin`` script.  Lines of a streaming command (a trace)
    go to ``on_stream`` as they come, with no time limit."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    buffer = b""
    try:
        try:
            sock.connect(path)
            sock.sendall(json.dumps({"argv": argv}).encode() + b"\n")
            while True:
                while b"\n" not in buffer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ChannelError(f"the broker at {path} closed the channel")
                    buffer += chunk
                line, buffer = buffer.split(b"\n", 1)
                answer = _decode(path, line)
                if "stream" in answer:
                    sock.settimeout(None)
                    if on_stream is not None:
                        on_stream(str(answer["stream"]))
                    continue
                return int(answer["code"]), str(answer["output"])
        except OSError as e:
            raise ChannelError(f"cannot reach the broker at {path}: {e}") from e
    finally:
        sock.close()


def _decode(path: str, line: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(line)
        if not isinstance(answer, dict) or not ("stream" in answer or (
                "code" in answer and "output" in answer)):
            raise ValueError(line)
        return answer
    except ValueError as e:
        raise ChannelError(f"bad answer from the broker at {path}: {line[:200]!r}") from e
