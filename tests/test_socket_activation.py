"""Socket activation: the broker started by ``systemd-socket-activate`` serves
clients on the socket it inherits (a ``systemd:`` listener address).

``systemd-socket-activate`` binds the socket, waits for the first client, and
then execs the broker with ``LISTEN_PID``/``LISTEN_FDS`` set, just as systemd
does for a ``.socket`` unit with ``Accept=no``.  It needs a concrete port: one
is picked by binding 127.0.0.1:0 and closing that socket again.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.support import (
    CONNACK_OK, TWISTD, BrokerTestCase, MQTTv311, child_env, connect_packet, in_thread,
    with_timeout,
)

ACTIVATE = shutil.which("systemd-socket-activate")
#: Python start-up plus importing Twisted can be slow on a loaded machine.
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Watched(ProcessProtocol):
    """Collects stdout and stderr; fires Deferreds when a pattern shows up."""

    def __init__(self) -> None:
        self.out = {1: bytearray(), 2: bytearray()}
        self.waiters: list[tuple[int, re.Pattern[bytes], Deferred]] = []
        self.ended: Deferred = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.out.setdefault(fd, bytearray()).extend(data)
        for item in list(self.waiters):
            m = item[1].search(bytes(self.out[item[0]]))
            if item[0] == fd and m is not None:
                self.waiters.remove(item)
                item[2].callback(m)

    def wait_for(self, fd: int, pattern: bytes, what: str) -> Deferred:
        d: Deferred = Deferred()
        self.waiters.append((fd, re.compile(pattern), d))
        self.childDataReceived(fd, b"")
        return with_timeout(d, START_TIMEOUT, what)

    def processEnded(self, reason: Failure) -> None:
        code = reason.value.exitCode if reason.check(ProcessDone, ProcessTerminated) else None
        for _, pattern, d in self.waiters:
            d.errback(AssertionError(
                f"the process exited ({code}) before printing {pattern.pattern!r}:\n"
                f"stdout: {bytes(self.out[1])!r}\nstderr: {bytes(self.out[2])!r}"))
        self.waiters = []
        self.ended.callback(code)


class SocketActivationTests(BrokerTestCase):
    """The broker serves on a socket handed over by systemd's protocol."""

    timeout = 120

    if ACTIVATE is None:
        skip = "systemd-socket-activate is not installed (Debian package 'systemd')"

    def activate(self, port: int, broker: list[str], *options: str) -> _Watched:
        """Run ``broker`` under systemd-socket-activate on 127.0.0.1:``port``;
        stopped (SIGTERM, then SIGKILL) when the test ends."""
        assert ACTIVATE is not None
        env = child_env()
        args = [ACTIVATE, "-l", f"127.0.0.1:{port}", *options,
                f"--setenv=PYTHONPATH={env['PYTHONPATH']}", *broker]
        proto = _Watched()
        workdir = self.mktemp()
        os.makedirs(workdir)
        transport = reactor.spawnProcess(proto, ACTIVATE, args, env=env, path=workdir)

        def stop() -> Deferred:
            if proto.ended.called:
                return proto.ended
            transport.signalProcess("TERM")
            kill = reactor.callLater(START_TIMEOUT, transport.signalProcess, "KILL")

            def ended(result: Any) -> Any:
                if kill.active():
                    kill.cancel()
                return result

            return proto.ended.addBoth(ended)

        self.addCleanup(stop)
        self.stop = stop
        return proto

    @inlineCallbacks
    def serve_one_client(self, proto: _Watched, port: int, listener: str) -> Any:
        """The first client starts the broker, gets CONNACK, and the broker's
        log names the inherited socket as its listener's address."""
        yield proto.wait_for(2, rb"Listening on 127\.0\.0\.1:%d" % port,
                             "systemd-socket-activate to listen")
        client = yield self.raw_client(host="127.0.0.1", port=port)
        client.send(connect_packet("activated"))
        connack = yield client.read(4, timeout=START_TIMEOUT, what="CONNACK from the "
                                    "socket-activated broker")
        self.assertEqual(connack, CONNACK_OK)
        yield proto.wait_for(
            1, rb"listener %s on 127\.0\.0\.1:%d" % (re.escape(listener.encode()), port),
            "the broker's listener line")
        paho = self.paho(port, "activated-paho", MQTTv311)

        def round_trip() -> bytes:
            paho.connect()
            paho.subscribe("activation", 1)
            paho.publish("activation", b"inherited", 1)
            return paho.get().payload

        self.assertEqual((yield in_thread(round_trip)), b"inherited")
        yield in_thread(paho.disconnect)
        yield client.close()
        code = yield self.stop()
        self.assertIn(code, (0, -15, None), bytes(proto.out[1] + proto.out[2]))
        self.assertNotIn(b"Traceback", bytes(proto.out[1] + proto.out[2]))

    @inlineCallbacks
    def test_python_m_vmqtw_with_index(self):
        """python -m vmqtw with listener.tcp.default = systemd:domain=INET:index=0
        (no descriptor names, as systemd-socket-activate sends by default)."""
        port = free_port()
        config = self.write_config("allow_anonymous = on\n"
                                   "listener.tcp.default = systemd:domain=INET:index=0\n")
        proto = self.activate(port, [sys.executable, "-m", "vmqtw", "-c", config])
        yield self.serve_one_client(proto, port, "tcp.default")

    @inlineCallbacks
    def test_twistd_with_name(self):
        """twistd -n vmqtw with a named socket (FileDescriptorName=mqtt in a
        .socket unit; --fdname here): systemd:domain=INET:name=mqtt."""
        port = free_port()
        config = self.write_config("allow_anonymous = on\n"
                                   "listener.tcp.sd = systemd:domain=INET:name=mqtt\n")
        twistd = [*TWISTD, "-n", "--pidfile=", "vmqtw", "-c", config]
        proto = self.activate(port, twistd, "--fdname=mqtt")
        yield self.serve_one_client(proto, port, "tcp.sd")



class ShippedUnitsTests(SynchronousTestCase):
    """etc/systemd/vmqtw.socket and vmqtw.service agree with the broker."""

    def test_units_name_the_same_socket_as_the_config_they_show(self):
        """The broker.conf lines the units document parse, and the listener
        names the socket unit's FileDescriptorName and address family."""
        from vmqtw.config import parse
        here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "etc", "systemd")
        with open(os.path.join(here, "vmqtw.socket"), encoding="utf-8") as f:
            socket_unit = f.read()
        with open(os.path.join(here, "vmqtw.service"), encoding="utf-8") as f:
            service_unit = f.read()
        lines = re.findall(r"(?m)^#\s+((?:listener|persistent_store)\.\S+ = \S+)$",
                           service_unit)
        self.assertEqual(len(lines), 2, service_unit)
        config = parse("\n".join(lines) + "\n", "vmqtw.service")
        description = str(config.listeners[0].address)
        name = re.search(r"(?m)^FileDescriptorName=(\S+)$", socket_unit)
        listen = re.search(r"(?m)^ListenStream=(\S+)$", socket_unit)
        assert name is not None and listen is not None
        self.assertEqual(description, f"systemd:domain=INET:name={name.group(1)}")
        self.assertRegex(listen.group(1), r"^\d+\.\d+\.\d+\.\d+:\d+$")  # an INET address
        self.assertIn(description, socket_unit)
        self.assertIn("Service=vmqtw.service", socket_unit)
        self.assertIn("Requires=vmqtw.socket", service_unit)
