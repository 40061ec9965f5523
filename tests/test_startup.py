"""Starting the broker as a program: ``twistd -n vmqtw`` and ``python -m vmqtw``.

These run real child processes.  A broker that must serve clients listens on
port 0 (or a unix socket) and the test reads the bound address from its log
line ``listener tcp.NAME on HOST:PORT``, so no free port has to be guessed.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile

from twisted.internet.defer import inlineCallbacks

from twisted.internet import reactor

from tests.support import (
    REPO, TIMEOUT, TWISTD, BrokerTestCase, MQTTv311, RunningProcess, in_thread,
    need_mosquitto_clients, run_process, stop_broker,
)
from vmqtw.config import load
from vmqtw.service import BrokerService

PUB = shutil.which("mosquitto_pub")
SUB = shutil.which("mosquitto_sub")
SHIPPED = os.path.join(REPO, "etc", "broker.conf")
PYTHON_M_VMQTW = [sys.executable, "-m", "vmqtw"]

# Python start-up plus importing Twisted can be slow on a loaded machine.
PROCESS_TIMEOUT = 30.0


def twistd_args(config: str, *extra: str) -> list[str]:
    return [*TWISTD[1:], "-n", "--pidfile=", "vmqtw", "-c", config, *extra]


class _Programs(BrokerTestCase):
    timeout = 120

    def tmpdir(self) -> str:
        """A short directory (unix socket paths are limited to 108 bytes)."""
        path = tempfile.mkdtemp(prefix="vmqtw-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def run_twistd(self, config: str, *extra: str):
        return run_process(TWISTD[0], twistd_args(config, *extra), timeout=PROCESS_TIMEOUT,
                           cwd=self.tmpdir())

    def run_module(self, config: str, *extra: str):
        return run_process(PYTHON_M_VMQTW[0], [*PYTHON_M_VMQTW[1:], "-c", config, *extra],
                           timeout=PROCESS_TIMEOUT, cwd=REPO)

    def runners(self):
        return (("twistd", self.run_twistd), ("python -m vmqtw", self.run_module))

    def assertNoTraceback(self, out: bytes, err: bytes) -> None:
        self.assertNotIn(b"Traceback", out + err, (out + err).decode(errors="replace"))


class CheckTests(_Programs):

    @inlineCallbacks
    def test_check_builds_tls_layers(self):
        """--check reads the TLS files too: a missing certfile is reported with
        its line, before anything would be bound."""
        config = self.write_config(
            "allow_anonymous = on\n"
            "listener.ssl.s = 127.0.0.1:0\n"
            "listener.ssl.certfile = /nonexistent/cert.pem\n"
            "listener.ssl.keyfile = /nonexistent/key.pem\n")
        for name, run in self.runners():
            out, err, code = yield run(config, "--check")
            self.assertEqual(code, 2, f"{name}: {out!r} {err!r}")
            self.assertIn(f"{config}:3: listener.ssl.s.certfile: ".encode(), err, name)
            self.assertNoTraceback(out, err)

    @inlineCallbacks
    def test_check_prints_listeners_and_binds_nothing(self):
        """--check (twistd and python -m vmqtw) exits 0 and prints OK and a table of
        listeners (kind, name, address, mountpoint, max_connections) with the FILE:LINE
        where each is declared, without binding anything."""
        tmp = self.tmpdir()
        sock = os.path.join(tmp, "check.sock")
        config = self.write_config(
            "allow_anonymous = on\n"
            "listener.tcp.default = 127.0.0.1:18830\n"
            "listener.tcp.default.mountpoint = tenant/\n"
            f"listener.tcp.local = local:{sock}:0\n"
            "listener.tcp.local.max_connections = 7\n")
        for name, run in self.runners():
            out, err, code = yield run(config, "--check")
            self.assertEqual((code, err), (0, b""), f"{name}: {out!r}")
            text = out.decode()
            self.assertIn(f"{config}: OK", text)
            lines = text.splitlines()
            default = next(line for line in lines if " default " in line).split()
            # the mountpoint as written: VerneMQ keeps "tenant/" and "tenant" apart
            self.assertEqual(default[:4], ["tcp", "default", "127.0.0.1:18830", "tenant/"])
            local = next(line for line in lines if " local " in line).split()
            self.assertEqual(local[:5], ["tcp", "local", f"local:{sock}", "-", "7"])
            self.assertIn(f"{config}:2", text)  # where the listener is declared
            self.assertFalse(os.path.exists(sock), f"{name} --check bound a socket")

    @inlineCallbacks
    def test_shipped_config_passes_check(self):
        """etc/broker.conf passes --check with both runners and declares the tcp default
        listener on 127.0.0.1:1883."""
        for name, run in self.runners():
            out, err, code = yield run(SHIPPED, "--check")
            self.assertEqual((code, err), (0, b""), f"{name}: {out!r}")
            self.assertIn(b"OK", out)
            self.assertRegex(out.decode(), r"(?m)^tcp\s+default\s+127\.0\.0\.1:1883\s")

    @inlineCallbacks
    def test_bad_config_line_exits_before_binding(self):
        """A bad value exits non-zero with one error line FILE:LINE: key: reason and no
        traceback, with and without --check, before any listener is bound."""
        tmp = self.tmpdir()
        sock = os.path.join(tmp, "never.sock")
        config = self.write_config(
            "allow_anonymous = on\n"
            f"listener.tcp.local = local:{sock}:0\n"
            "listener.tcp.local.max_connections = lots\n")
        for name, run in self.runners():
            for extra in ((), ("--check",)):
                out, err, code = yield run(config, *extra)
                self.assertNotEqual(code, 0, f"{name} {extra}")
                self.assertIn(f"{config}:3: listener.tcp.local.max_connections: ".encode(),
                              err, f"{name} {extra}")
                self.assertEqual(len(err.decode().strip().splitlines()), 1, err)
                self.assertNoTraceback(out, err)
                self.assertNotIn(b" on local:", out)  # no "listener ... on ..." log line
                self.assertFalse(os.path.exists(sock), f"{name} bound before failing")

    @inlineCallbacks
    def test_unknown_key_and_missing_file(self):
        """An unknown configuration key fails with FILE:LINE: key: unknown configuration
        key, and a missing file with FILE: cannot read configuration file, both without a
        traceback."""
        config = self.write_config("allow_anonymous = on\nlistener.tcp.default = 127.0.0.1:0\n"
                                   "no_such_key = 1\n")
        missing = os.path.join(self.tmpdir(), "missing.conf")
        for name, run in self.runners():
            out, err, code = yield run(config)
            self.assertNotEqual(code, 0)
            self.assertIn(f"{config}:3: no_such_key: unknown configuration key".encode(), err,
                          name)
            out, err, code = yield run(missing)
            self.assertNotEqual(code, 0)
            self.assertIn(f"{missing}: cannot read configuration file".encode(), err, name)
            self.assertNoTraceback(out, err)


class StartupErrorTests(_Programs):

    @inlineCallbacks
    def test_port_in_use_is_a_one_line_error(self):
        """A listener port already in use ends startup with exit status 1 and one line
        FILE:LINE: key: cannot listen on ADDRESS ... in use, no traceback, and the listener
        bound before it is closed with its socket file removed."""
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        tmp = self.tmpdir()
        sock = os.path.join(tmp, "first.sock")
        config = self.write_config(
            "allow_anonymous = on\n"
            f"listener.tcp.first = local:{sock}:0\n"
            f"listener.tcp.busy = 127.0.0.1:{port}\n")
        for name, run in self.runners():
            out, err, code = yield run(config)
            self.assertEqual(code, 1, f"{name}: {out!r} {err!r}")
            lines = err.decode().strip().splitlines()
            self.assertEqual(len(lines), 1, f"{name}: {err!r}")
            self.assertRegex(
                lines[0],
                re.escape(f"{config}:3: listener.tcp.busy: cannot listen on 127.0.0.1:{port}")
                + ".*in use")
            self.assertNoTraceback(out, err)
            # The listener bound before the failure was closed, file and all.
            self.assertFalse(os.path.exists(sock), f"{name} left {sock} behind")

    @inlineCallbacks
    def test_unserved_listener_kind_passes_check(self):
        """A listener of a kind vmqtw does not serve yet (VerneMQ's listener.vmq.clustering)
        no longer stops startup: --check exits 0 and still lists it with its FILE:LINE (the
        config carries a "not served yet" warning for it)."""
        config = self.write_config(
            "allow_anonymous = on\n"
            "listener.tcp.default = 127.0.0.1:0\n"
            "listener.vmq.clustering = 127.0.0.1:0\n")
        for name, run in self.runners():
            out, err, code = yield run(config, "--check")
            self.assertEqual(code, 0, f"{name}: {out!r} {err!r}")
            line = next(x for x in out.decode().splitlines() if " clustering " in x)
            self.assertEqual(line.split()[:3], ["vmq", "clustering", "127.0.0.1:0"])
            self.assertIn(f"{config}:3", line)
            self.assertNoTraceback(out, err)


class InProcessStartupErrorTests(BrokerTestCase):

    def test_failed_bind_closes_listeners_already_bound(self):
        """In process, a failed bind raises StartupError with FILE:LINE and the address; the
        service is not running, the listeners bound before it are closed (the unix socket
        file removed) and nothing is left listening in the reactor."""
        from twisted.internet import reactor

        from vmqtw.config import load
        from vmqtw.service import BrokerService, StartupError

        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        tmp = tempfile.mkdtemp(prefix="vmqtw-")
        self.addCleanup(shutil.rmtree, tmp, True)
        sock = os.path.join(tmp, "first.sock")
        config = self.write_config(
            "allow_anonymous = on\n"
            "listener.tcp.first = 127.0.0.1:0\n"
            f"listener.tcp.second = local:{sock}:0\n"
            f"listener.tcp.busy = 127.0.0.1:{port}\n")
        service = BrokerService(load(config), reactor)
        e = self.assertRaises(StartupError, service.privilegedStartService)
        self.assertTrue(str(e).startswith(
            f"{config}:4: listener.tcp.busy: cannot listen on 127.0.0.1:{port}: "), str(e))
        self.assertFalse(service.running)
        for name in ("tcp.first", "tcp.second"):
            self.assertIsNone(service.listeners[name].port, name)
        self.assertFalse(os.path.exists(sock))
        # Nothing is left listening in the reactor (trial would also notice).
        from twisted.internet.tcp import Port
        from twisted.internet.unix import Port as UNIXPort
        self.assertEqual([r for r in reactor.getReaders() if isinstance(r, (Port, UNIXPort))],
                         [])


class RunningBrokerTests(_Programs):

    def setUp(self) -> None:
        need_mosquitto_clients()

    def start(self, argv: list[str], cwd: str) -> RunningProcess:
        proc = RunningProcess(argv[0], argv[1:], cwd=cwd)
        self.addCleanup(proc.stop)
        return proc

    @inlineCallbacks
    def assert_serves(self, where: list[str]) -> None:
        """A retained QoS 1 message published with mosquitto_pub is read back
        with mosquitto_sub (no subscription race: the broker keeps it)."""
        out, err, code = yield run_process(
            PUB, [*where, "-t", "started", "-q", "1", "-r", "-m", "served"])
        self.assertEqual((code, err), (0, b""), out)
        out, err, code = yield run_process(
            SUB, [*where, "-t", "started", "-q", "1", "-C", "1", "-W", "10", "-v"])
        self.assertEqual((code, err, out), (0, b"", b"started served\n"))

    @inlineCallbacks
    def stop_cleanly(self, proc: RunningProcess, codes=(0,)) -> None:
        out, err, code = yield proc.stop()
        self.assertIn(code, codes, f"{out!r} {err!r}")
        self.assertNoTraceback(out, err)
        self.assertEqual(err, b"")

    @inlineCallbacks
    def test_twistd_serves_tcp(self):
        """twistd -n vmqtw serves mosquitto and paho clients on the port it logs, shuts down
        cleanly on SIGTERM (Server Shut Down, no error output) and writes no files with
        --pidfile= empty."""
        tmp = self.tmpdir()
        config = self.write_config("allow_anonymous = on\nlistener.tcp.default = 127.0.0.1:0\n")
        proc = self.start([TWISTD[0], *twistd_args(config)], cwd=tmp)
        m = yield proc.wait_for_output(rb"listener tcp\.default on 127\.0\.0\.1:(\d+)",
                                       timeout=PROCESS_TIMEOUT)
        port = m.group(1).decode()
        yield self.assert_serves(["-h", "127.0.0.1", "-p", port, "-V", "mqttv311"])
        # And a paho client.
        client = self.paho(int(port), "paho-twistd", MQTTv311)

        def paho_round_trip():
            client.connect()
            client.subscribe("started", 1)
            return client.get().payload

        self.assertEqual((yield in_thread(paho_round_trip)), b"served")
        yield in_thread(client.disconnect)
        # twistd re-raises the signal that stopped it once it has shut down.
        yield self.stop_cleanly(proc, codes=(0, -15))
        self.assertIn(b"Server Shut Down.", proc.proto.out)
        self.assertEqual(os.listdir(tmp), [], "twistd wrote files despite --pidfile=")

    @inlineCallbacks
    def test_python_m_vmqtw_serves_unix_socket(self):
        """python -m vmqtw serves MQTT 3.1 mosquitto clients on a unix socket listener,
        stops cleanly on SIGTERM and removes the socket file."""
        tmp = self.tmpdir()
        sock = os.path.join(tmp, "m.sock")
        config = self.write_config(f"allow_anonymous = on\nlistener.tcp.local = local:{sock}:0\n")
        proc = self.start(PYTHON_M_VMQTW + ["-c", config], cwd=REPO)
        yield proc.wait_for_output(re.escape(f"listener tcp.local on local:{sock}").encode(),
                                   timeout=PROCESS_TIMEOUT)
        yield self.assert_serves(["--unix", sock, "-V", "mqttv31"])
        yield self.stop_cleanly(proc)
        self.assertFalse(os.path.exists(sock), "the unix socket was not removed on shutdown")


class ShippedConfigTests(BrokerTestCase):

    @inlineCallbacks
    def test_shipped_config_serves_paho(self):
        """etc/broker.conf (with its vmq.passwd and vmq.acl, on port 0) refuses anonymous
        clients (CONNACK 5) and wrong passwords (CONNACK 4) and lets the demo user exchange
        a QoS 2 message."""
        with open(SHIPPED, encoding="utf-8") as f:
            text = f.read()
        text, n = re.subn(r"(?m)^(listener\.tcp\.default\s*=\s*127\.0\.0\.1):1883\s*$",
                          r"\1:0", text)
        self.assertEqual(n, 1, "etc/broker.conf no longer declares listener.tcp.default "
                               "= 127.0.0.1:1883")
        # The shipped config names vmq.passwd and vmq.acl next to itself.
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        for name in ("vmq.passwd", "vmq.acl"):
            shutil.copy(os.path.join(REPO, "etc", name), directory)
        path = os.path.join(directory, "broker.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        broker = BrokerService(load(path), reactor)
        broker.privilegedStartService()
        broker.startService()
        self.addCleanup(stop_broker, broker)
        port = self.port_of(broker)
        stranger = self.paho(port, "shipped-anonymous", MQTTv311)
        # paho reports CONNACK 5 / 4 of MQTT 3.1.1 as reason codes 135 / 134.
        self.assertEqual((yield in_thread(stranger.connect, False))[0], 135)
        wrong = self.paho(port, "shipped-wrong", MQTTv311, username="demo", password="nope")
        self.assertEqual((yield in_thread(wrong.connect, False))[0], 134)
        sub = self.paho(port, "shipped-sub", MQTTv311, username="demo", password="demo")
        pub = self.paho(port, "shipped-pub", MQTTv311, username="demo", password="demo")

        def scenario():
            sub.connect()
            sub.subscribe("shipped/#", 2)
            pub.connect()
            pub.publish("shipped/config", b"works", 2)
            msg = sub.get(TIMEOUT)
            return msg.topic, msg.payload, msg.qos

        self.assertEqual((yield in_thread(scenario)), ("shipped/config", b"works", 2))
