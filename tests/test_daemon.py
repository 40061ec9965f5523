"""Daemon mode as an operator runs it: ``twistd --pidfile=P --logfile=L
[--uid=U --gid=G] vmqtw -c FILE`` (no ``-n``).

twistd forks, the parent returns once the child has bound its listeners; the
child writes the pid file, serves MQTT, logs to the log file, rotates it on
SIGUSR1, and on SIGTERM shuts down and removes the pid file.  With
``--uid/--gid`` (the tests run as root) it binds its listeners - a privileged
port too - and opens the store and the log as root, then drops to that user;
what it creates later (the admin socket) and what it deletes (the pid file,
rotated logs) needs directories that user owns, as docs/operations.md says.

The daemon is not our child (it is double-forked), so its log file, pid file
and /proc entry are watched by polling, each wait bounded in time.
"""
from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any, Callable

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest

from tests.certs import certs
from tests.support import (
    CONNACK_OK, REPO, TIMEOUT, TWISTD, BrokerTestCase, connect_packet, publish_packet,
    run_process,
)

PROCESS_TIMEOUT = 30.0
POLL_STEP = 0.05


def process_state(pid: int) -> str | None:
    """The State letter of /proc/PID/status; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1]
    except FileNotFoundError:
        return None
    return None


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    return process_state(pid) not in (None, "Z", "X")


def proc_ids(pid: int) -> dict[str, list[int]]:
    """The Uid and Gid lines of /proc/PID/status (real, effective, saved, fs)."""
    ids = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Uid", "Gid"):
                ids[key] = [int(x) for x in rest.split()]
    return ids


def read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def free_privileged_port() -> int:
    """A port below 1024 that 127.0.0.1 can bind now (we are root)."""
    for port in range(990, 900, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SkipTest("no free port below 1024")


class DaemonTestCase(BrokerTestCase):
    timeout = 120

    def setUp(self) -> None:
        # Short: the admin socket's path must fit in 108 bytes.
        self.dir = tempfile.mkdtemp(prefix="vmqtw-daemon-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.pids: list[int] = []
        self.addCleanup(self._kill_leftovers)

    def _kill_leftovers(self) -> None:
        for pid in self.pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    def config(self, store: str, extra: str = "") -> str:
        path = os.path.join(self.dir, "broker.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write("allow_anonymous = on\nplugins.vmq_passwd = off\nplugins.vmq_acl = off\n"
                    "listener.tcp.default = 127.0.0.1:0\n"
                    f"persistent_store.directory = {store}\n" + extra)
        return path

    @inlineCallbacks
    def poll(self, check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
        """Fires with ``check()``'s first true value; fails after ``timeout``."""
        for _ in range(int(timeout / POLL_STEP)):
            value = check()
            if value:
                return value
            yield task.deferLater(reactor, POLL_STEP, lambda: None)
        self.fail(f"timed out after {timeout}s waiting for {what}")

    @inlineCallbacks
    def start_daemon(self, config: str, pidfile: str, logfile: str, *extra: str) -> Any:
        """Run twistd without ``-n``; fires with (pid, port of tcp.default)
        once the parent has returned 0 and the log names the port."""
        before = len(read(logfile))
        out, err, code = yield run_process(
            TWISTD[0], [*TWISTD[1:], f"--pidfile={pidfile}", f"--logfile={logfile}", *extra,
                        "vmqtw", "-c", config], timeout=PROCESS_TIMEOUT, cwd=self.dir)
        self.assertEqual((out, err, code), (b"", b"", 0), read(logfile)[-2000:])
        pid = int(read(pidfile))
        self.pids.append(pid)
        self.assertTrue(alive(pid), f"daemon {pid} is not running")
        match = yield self.poll(lambda: re.search(
            r"listener tcp\.default on 127\.0\.0\.1:(\d+)", read(logfile)[before:]),
            "the listening line in the log file")
        return pid, int(match[1])

    @inlineCallbacks
    def mqtt_connect(self, port: int, client_id: str, clean: bool = True) -> Any:
        client = yield self.raw_client(host="127.0.0.1", port=port)
        client.send(connect_packet(client_id, clean=clean))
        connack = yield client.read(4, what="CONNACK")
        self.assertEqual(connack, CONNACK_OK)
        return client

    @inlineCallbacks
    def stop_daemon(self, pid: int, pidfile: str, logfile: str) -> Any:
        """SIGTERM; waits until the process is gone and the pid file removed."""
        os.kill(pid, signal.SIGTERM)
        yield self.poll(lambda: not alive(pid), f"daemon {pid} to exit after SIGTERM")
        yield self.poll(lambda: not os.path.exists(pidfile), "the pid file to be removed")
        self.assertIn("Server Shut Down.", read(logfile))

    def vmq_admin(self, config: str, *args: str) -> Any:
        return run_process(sys.executable, ["-m", "vmqtw.admin.cli", "-c", config, *args],
                           timeout=PROCESS_TIMEOUT, cwd=REPO)


class DaemonModeTests(DaemonTestCase):

    @inlineCallbacks
    def test_pidfile_logfile_serve_and_sigterm(self) -> None:
        """The parent exits 0 with no output; the pid file names a live process
        serving MQTT on the port its log file names; connects and disconnects
        are logged there; SIGHUP reloads and says when it is done; SIGTERM makes it
        exit and remove its pid file."""
        pidfile = os.path.join(self.dir, "vmqtw.pid")
        logfile = os.path.join(self.dir, "vmqtw.log")
        config = self.config(os.path.join(self.dir, "store"))
        pid, port = yield self.start_daemon(config, pidfile, logfile)
        self.assertNotEqual(pid, os.getpid())
        client = yield self.mqtt_connect(port, "daemon-client")
        yield self.poll(lambda: "client 'daemon-client' (user None) connected from 127.0.0.1"
                        in read(logfile), "the connect line in the log file")
        out, err, code = yield self.vmq_admin(config, "session", "show", "--format=json")
        self.assertEqual(code, 0, err)
        self.assertIn("daemon-client", out.decode())
        # kill -HUP $(cat PIDFILE) (systemctl reload): one line when it is done.
        os.kill(pid, signal.SIGHUP)
        yield self.poll(lambda: re.search(
            r"SIGHUP: reload done in \d+\.\d\d s: 0 TLS listener\(s\) and 0 plugin\(s\) "
            r"asked to reload, 0 failed", read(logfile)), "the reload line in the log file")
        self.assertTrue(alive(pid))
        yield self.stop_daemon(pid, pidfile, logfile)
        yield client.when_closed()
        log = read(logfile)
        self.assertIn("client 'daemon-client'", log[log.index("Received SIGTERM"):])
        self.assertNotIn("Traceback", log)


    @inlineCallbacks
    def test_child_killed_while_starting(self) -> None:
        """A daemon child that dies without a word while starting (SIGKILL, as
        the OOM killer would) makes the parent exit 1 with one line naming the
        log file, not twistd's ``An error has occurred: b''``."""
        plugins = os.path.join(self.dir, "plugins")
        os.mkdir(plugins)
        with open(os.path.join(plugins, "killed_at_start.py"), "w", encoding="utf-8") as f:
            f.write(KILLED_AT_START)
        config = self.config(os.path.join(self.dir, "store"),
                             "plugins.killed_at_start = on\n"
                             "plugins.killed_at_start.path = plugins\n")
        logfile = os.path.join(self.dir, "vmqtw.log")
        out, err, code = yield run_process(
            TWISTD[0], [*TWISTD[1:], f"--pidfile={os.path.join(self.dir, 'vmqtw.pid')}",
                        f"--logfile={logfile}", "vmqtw", "-c", config],
            timeout=PROCESS_TIMEOUT, cwd=self.dir)
        self.assertEqual((out, code), (b"", 1), err)
        self.assertEqual(err.decode(), "vmqtw: the daemon exited while starting, without a "
                                       f"reason (see {logfile})\n")
        self.assertIn("plugin killed_at_start enabled", read(logfile))


#: A plugin whose start() (called as the broker starts) kills its process.
KILLED_AT_START = """\
import os
import signal

from zope.interface import implementer

from vmqtw.auth.api import IOnRegister


@implementer(IOnRegister)
class KilledAtStart:
    def on_register(self, client):
        pass

    def start(self):
        os.kill(os.getpid(), signal.SIGKILL)


def make_plugin(settings, context):
    return KilledAtStart()
"""


class DropPrivilegesTests(DaemonTestCase):

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("needs root: --uid/--gid")
        try:
            self.uid = pwd.getpwnam("nobody").pw_uid
            self.gid = grp.getgrnam("nogroup").gr_gid
        except KeyError:
            raise SkipTest("no nobody/nogroup here") from None
        super().setUp()
        # The layout docs/operations.md asks for: the store's, the log's and
        # the pid file's directories owned by the daemon's user.  The pid
        # file and the log file are pre-created by root (twistd opens them
        # before dropping); the log file is given to the user so it can rotate.
        os.chmod(self.dir, 0o755)
        self.store, self.logs, self.run = (os.path.join(self.dir, d)
                                           for d in ("lib", "log", "run"))
        for d in (self.store, self.logs, self.run):
            os.mkdir(d, 0o750)
            os.chown(d, self.uid, self.gid)
        self.logfile = os.path.join(self.logs, "vmqtw.log")
        with open(self.logfile, "w"):
            pass
        os.chown(self.logfile, self.uid, self.gid)
        self.pidfile = os.path.join(self.run, "vmqtw.pid")

    @inlineCallbacks
    def test_uid_gid_privileged_port_store_log_rotation(self) -> None:
        """Started as root with ``--uid=nobody --gid=nogroup``: it binds a
        port below 1024 before dropping, then runs as nobody (real, effective
        and saved ids in /proc); it serves MQTT there, vmq-admin reaches its
        admin socket, the store it opened as root keeps working (a retained
        message survives a restart), SIGUSR1 rotates the log file, a SIGHUP
        cannot re-read a root-only TLS key (logged, the old one kept), and
        SIGTERM removes the pid file."""
        low = free_privileged_port()
        tls = certs()  # in a root-only (0700) directory: read as root at startup
        config = self.config(self.store, f"listener.tcp.low = 127.0.0.1:{low}\n"
                             "listener.ssl.default = 127.0.0.1:0\n"
                             f"listener.ssl.default.certfile = {tls.server}\n"
                             f"listener.ssl.default.keyfile = {tls.server_key}\n")
        owner = ("--uid=nobody", "--gid=nogroup")
        pid, _ = yield self.start_daemon(config, self.pidfile, self.logfile, *owner)
        ids = proc_ids(pid)
        self.assertEqual(ids["Uid"], [self.uid] * 4)
        self.assertEqual(ids["Gid"], [self.gid] * 4)
        log = read(self.logfile)
        self.assertIn(f"listener tcp.low on 127.0.0.1:{low}", log)
        self.assertLess(log.index(f"listener tcp.low on 127.0.0.1:{low}"),
                        log.index(f"set uid/gid {self.uid}/{self.gid}"))
        client = yield self.mqtt_connect(low, "low-port")
        client.send(publish_packet("kept/across/restart", b"retained", qos=1, retain=True))
        puback = yield client.read(4, what="PUBACK")
        self.assertEqual(puback, b"\x40\x02\x00\x01")
        out, err, code = yield self.vmq_admin(config, "retain", "show", "--format=json")
        self.assertEqual(code, 0, err)
        self.assertIn("kept/across/restart", out.decode())
        self.assertEqual(os.stat(os.path.join(self.store, "vmq-admin.sock")).st_uid, self.uid)
        # Log rotation (twistd's SIGUSR1): the file becomes vmqtw.log.1, a
        # new vmqtw.log (the daemon user's) gets what follows.
        os.kill(pid, signal.SIGUSR1)
        rotated = self.logfile + ".1"
        yield self.poll(lambda: os.path.exists(rotated), "the rotated log file")
        self.assertIn("connected from 127.0.0.1", read(rotated))
        yield self.mqtt_connect(low, "after-rotation")
        yield self.poll(lambda: "client 'after-rotation'" in read(self.logfile),
                        "the connect line in the new log file")
        self.assertEqual(os.stat(self.logfile).st_uid, self.uid)
        # SIGHUP as nobody: the root-only key cannot be read again; the old
        # material stays and the summary line counts the failure.
        os.kill(pid, signal.SIGHUP)
        done = yield self.poll(lambda: re.search(r"SIGHUP: reload done .* (\d+) failed",
                                                 read(self.logfile)), "the reload line")
        self.assertEqual(done[1], "1")
        self.assertIn("TLS reload failed, keeping the previous", read(self.logfile))
        self.assertTrue(alive(pid))
        yield self.stop_daemon(pid, self.pidfile, self.logfile)
        self.assertNotIn("No permission to delete pid file", read(self.logfile))
        # Again, on the same store: the retained message was written by the
        # daemon after it had dropped to nobody.
        pid, _ = yield self.start_daemon(config, self.pidfile, self.logfile, *owner)
        yield self.poll(lambda: "1 retained messages" in read(self.logfile),
                        "the restore line in the log file")
        yield self.stop_daemon(pid, self.pidfile, self.logfile)
        self.assertNotIn("Traceback", read(self.logfile) + read(rotated))


class StandaloneUnitTests(DaemonTestCase):
    """etc/systemd/vmqtw-standalone.service, the unit without socket activation."""

    def unit(self) -> str:
        with open(os.path.join(REPO, "etc", "systemd", "vmqtw-standalone.service"),
                  encoding="utf-8") as f:
            return f.read()

    def test_runs_the_broker_in_the_foreground_on_its_store(self) -> None:
        """The unit runs ``vmqtw -c`` in the foreground (no twistd daemon, no
        pid file), reloads with SIGHUP, keeps its state where the documented
        ``persistent_store.directory`` line says, and that line parses."""
        from vmqtw.config import parse
        unit = self.unit()
        self.assertRegex(unit, r"(?m)^ExecStart=\S+/vmqtw -c /etc/vmqtw/broker.conf$")
        self.assertRegex(unit, r"(?m)^Type=simple$")
        self.assertRegex(unit, r"(?m)^ExecReload=/bin/kill -HUP \$MAINPID$")
        self.assertRegex(unit, r"(?m)^StateDirectory=vmqtw$")
        (line,) = re.findall(r"(?m)^#\s+(persistent_store\.directory = \S+)$", unit)
        config = parse(line + "\n", "/etc/vmqtw/broker.conf")
        self.assertEqual(config.store.directory, "/var/lib/vmqtw")

    @inlineCallbacks
    def test_systemd_analyze_verify(self) -> None:
        """``systemd-analyze verify`` finds nothing wrong with the unit (its
        ExecStart pointed at a program that exists here)."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed")
        path = os.path.join(self.dir, "vmqtw.service")
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.unit().replace("/usr/local/bin/vmqtw",
                                        shutil.which("true") or "/bin/true"))
        out, err, code = yield run_process(analyze, ["verify", "--man=no", path],
                                           timeout=PROCESS_TIMEOUT, cwd=self.dir)
        self.assertEqual((code, out + err), (0, b""))
