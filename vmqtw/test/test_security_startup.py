"""Security hardening at startup and in the auth files (#14): the demo user,
``#`` for everyone, plain-text listeners on the network, file modes, and
password hashing off the reactor thread."""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from vmqtw.auth.acl import parse_acl
from vmqtw.auth.api import OK, Error, RegisterRequest
from vmqtw.auth.context import PluginContext
from vmqtw.auth.passwd import (
    MAX_PBKDF2_ITERATIONS, HashVerifier, PasswdPlugin, PasswordHash, hash_password,
    hash_password_pbkdf2, parse_hash,
)
from vmqtw.config import load
from vmqtw.service import BrokerService, StartupError
from vmqtw.startup_checks import is_loopback
from vmqtw.store.sqlite import SQLiteStore

#: The shipped sample files (etc/ in the repository; the package carries the same
#: files in vmqtw/data, which is what an installed package can read).
ETC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


def request(username: str, password: bytes) -> RegisterRequest:
    return RegisterRequest(("127.0.0.1", 1), "", "c", username, password, True, 4)


# ---------------------------------------------------------------------------
# The auth files' helpers
# ---------------------------------------------------------------------------

class DemoAndAclHelperTests(SynchronousTestCase):

    def test_shipped_demo_user_found(self) -> None:
        """The shipped password file's demo user is found (with its line); a demo user
        with another password, and other users, are not."""
        plugin = PasswdPlugin(os.path.join(ETC, "vmq.passwd"), 0, PluginContext(None, ETC))
        [(user, line)] = plugin.demo_users()
        self.assertEqual(user, "demo")
        with open(os.path.join(ETC, "vmq.passwd")) as f:
            self.assertTrue(f.read().split("\n")[line - 1].startswith("demo:$6$"))
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "p")
        with open(path, "w") as f:
            f.write(f"demo:{hash_password(b'secret')}\nbob:{hash_password(b'demo')}\n"
                    f"x:{hash_password_pbkdf2(b'demo')}\n")
        self.assertEqual(PasswdPlugin(path, 0, PluginContext(None, d)).demo_users(), [])
        with open(path, "a") as f:
            f.write(f"demo:{hash_password_pbkdf2(b'demo')}\n")
        self.assertEqual(PasswdPlugin(path, 0, PluginContext(None, d)).demo_users(),
                         [("demo", 4)])

    def test_acl_lines_granting_everything_to_everyone(self) -> None:
        """``topic #`` before the first user line and ``pattern #`` are listed with their
        lines; ``topic #`` inside a user block and narrower filters are not."""
        table = parse_acl(b"topic #\ntopic read a/#\nuser alice\ntopic #\n"
                          b"pattern read #\npattern x/%u/#\n")
        self.assertEqual(table.open_to_all, [(1, "topic #"), (5, "pattern read #")])

    def test_iteration_cap(self) -> None:
        """A ``$7$`` hash above the iteration cap (210,000) is refused when read."""
        self.assertEqual(MAX_PBKDF2_ITERATIONS, 210_000)
        ok = hash_password_pbkdf2(b"pw", iterations=MAX_PBKDF2_ITERATIONS)
        self.assertEqual(parse_hash(ok).iterations, MAX_PBKDF2_ITERATIONS)
        too_many = ok.replace(f"$7${MAX_PBKDF2_ITERATIONS}$", f"$7${MAX_PBKDF2_ITERATIONS + 1}$")
        self.assertRaises(ValueError, parse_hash, too_many)

    def test_loopback_addresses(self) -> None:
        """Loopback IPs (v4, v6, v4-mapped) and unix sockets count as loopback;
        wildcard and other addresses do not."""
        for host, ok in (("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
                         ("::ffff:127.0.0.1", True), ("local:/run/x.sock", True),
                         ("0.0.0.0", False), ("::", False), ("192.0.2.1", False)):
            self.assertEqual(is_loopback(host), ok, host)


# ---------------------------------------------------------------------------
# Password checks off the reactor thread
# ---------------------------------------------------------------------------

class _Pool:
    """A thread pool stand-in that runs nothing until told."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callInThreadWithCallback(self, on_result: Any, f: Any, *a: Any, **kw: Any) -> None:
        self.calls.append((on_result, f, a, kw))

    def run_one(self) -> None:
        on_result, f, a, kw = self.calls.pop(0)
        on_result(True, f(*a, **kw))


class _Reactor:
    def __init__(self) -> None:
        self.pool = _Pool()

    def getThreadPool(self) -> _Pool:
        return self.pool

    def callFromThread(self, f: Any, *a: Any, **kw: Any) -> None:
        f(*a, **kw)


class HashVerifierTests(SynchronousTestCase):

    def test_in_flight_and_waiting_bounds(self) -> None:
        """At most ``in_flight`` checks run at once; the next ones wait their turn and
        run as others finish; beyond ``waiting`` queued checks, ``verify`` refuses."""
        r = _Reactor()
        verifier = HashVerifier(r, in_flight=1, waiting=1)
        entry = parse_hash(hash_password_pbkdf2(b"pw", iterations=2000))
        first = verifier.verify(entry, b"pw")
        second = verifier.verify(entry, b"nope")
        self.assertIsNone(verifier.verify(entry, b"pw"))
        self.assertEqual((len(r.pool.calls), verifier.refused), (1, 1))
        assert first is not None and second is not None
        r.pool.run_one()
        self.assertTrue(self.successResultOf(first))
        self.assertEqual(len(r.pool.calls), 1)  # the waiting one started
        r.pool.run_one()
        self.assertFalse(self.successResultOf(second))

    def test_plugin_refuses_when_too_many_wait(self) -> None:
        """The plugin answers a Deferred for a slow hash, and ``error`` (not OK) when the
        queue is full; fast ``$6$`` hashes are still checked inline."""
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "p")
        with open(path, "w") as f:
            f.write(f"slow:{hash_password_pbkdf2(b'pw', iterations=5000)}\n"
                    f"fast:{hash_password(b'pw')}\n")
        r = _Reactor()
        plugin = PasswdPlugin(path, 0, PluginContext(r, d))  # type: ignore[arg-type]
        assert plugin.verifier is not None
        plugin.verifier = HashVerifier(r, in_flight=1, waiting=0)
        pending = plugin.auth_on_register(request("slow", b"pw"))
        refused = plugin.auth_on_register(request("slow", b"pw"))
        self.assertIsInstance(refused, Error)
        self.assertIs(plugin.auth_on_register(request("fast", b"pw")), OK)
        r.pool.run_one()
        self.assertIs(self.successResultOf(pending), OK)


class ThreadedCheckTests(TestCase):

    @inlineCallbacks
    def test_slow_hash_checked_in_a_thread(self) -> None:
        """With a real reactor a ``$7$`` hash above the inline limit is verified in a
        worker thread (never the reactor's), and wrong passwords still get
        ``invalid_credentials``."""
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "p")
        with open(path, "w") as f:
            f.write(f"alice:{hash_password_pbkdf2(b'pw', iterations=20000)}\n")
        plugin = PasswdPlugin(path, 0, PluginContext(reactor, d))
        threads: list[int] = []

        class Recording(PasswordHash):
            def verify(self, password: bytes) -> bool:
                threads.append(threading.get_ident())
                return super().verify(password)

        e = plugin._users["alice"]
        plugin._users["alice"] = Recording(e.salt, e.digest, e.iterations)
        self.assertIs((yield plugin.auth_on_register(request("alice", b"pw"))), OK)
        wrong = yield plugin.auth_on_register(request("alice", b"bad"))
        self.assertEqual(wrong.reason, "invalid_credentials")
        self.assertEqual(len(threads), 2)
        self.assertNotIn(threading.get_ident(), threads)


# ---------------------------------------------------------------------------
# Startup: the demo user, warnings, modes
# ---------------------------------------------------------------------------

class StartupTests(TestCase):

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmqtw-sec-start-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        for name in ("vmq.passwd", "vmq.acl"):
            shutil.copy(os.path.join(ETC, name), os.path.join(self.dir, name))
        self.events: list[Any] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def start(self, listeners: str, extra: str = "") -> BrokerService:
        path = os.path.join(self.dir, "broker.conf")
        with open(path, "w") as f:
            f.write(listeners + "plugins.vmq_passwd = on\nplugins.vmq_acl = on\n"
                    "persistent_store.enabled = off\n" + extra)
        service = BrokerService(load(path), reactor)
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        return service

    def logged(self, level: LogLevel) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") == level]

    def test_demo_user_on_a_network_listener_refuses_to_start(self) -> None:
        """The shipped demo user with a listener on 0.0.0.0 (or behind a PROXY listener on
        loopback): startup fails naming the listener's FILE:LINE and the password file's
        line, and no port stays open."""
        conf = os.path.join(self.dir, "broker.conf")
        for listeners, line in (("listener.tcp.default = 127.0.0.1:0\n"
                                 "listener.tcp.net = 0.0.0.0:0\n", 2),
                                ("listener.tcp.edge = 127.0.0.1:0\n"
                                 "listener.tcp.edge.proxy_protocol = on\n", 1)):
            with self.assertRaises(StartupError) as e:
                self.start(listeners)
            message = str(e.exception)
            self.assertTrue(message.startswith(f"{conf}:{line}: listener.tcp."), message)
            with open(os.path.join(ETC, "vmq.passwd")) as f:
                demo_line = [n for n, text in enumerate(f, 1) if text.startswith("demo:")][0]
            self.assertIn(os.path.join(self.dir, "vmq.passwd") + f":{demo_line}", message)
            self.assertIn("demo", message)

    def test_demo_user_on_loopback_starts_with_a_loud_warning(self) -> None:
        """On loopback only the demo user is allowed (the README's first command works),
        with a critical-level log line; ``topic #`` for everyone is warned about with
        its line."""
        self.start("listener.tcp.default = 127.0.0.1:0\n")
        critical = self.logged(LogLevel.critical)
        self.assertEqual(len(critical), 1)
        self.assertIn("DEMO CREDENTIALS", critical[0])
        warnings = "\n".join(self.logged(LogLevel.warn))
        with open(os.path.join(ETC, "vmq.acl")) as f:
            acl_line = [n for n, text in enumerate(f, 1) if text.strip() == "topic #"][0]
        self.assertIn(os.path.join(self.dir, "vmq.acl") + f":{acl_line}: 'topic #' grants "
                      "every topic", warnings)

    def test_plain_text_network_listener_and_loose_modes_warned(self) -> None:
        """Without the demo user a listener on 0.0.0.0 without TLS starts with a warning
        naming its line, and a password file readable by others (0644) and an ACL file
        writable by others (0666) are warned about; 0600 files are not."""
        passwd = os.path.join(self.dir, "vmq.passwd")
        with open(passwd, "w") as f:
            f.write(f"alice:{hash_password(b'secret')}\n")
        acl = os.path.join(self.dir, "vmq.acl")
        os.chmod(passwd, 0o644)
        os.chmod(acl, 0o666)
        self.start("listener.tcp.net = 0.0.0.0:0\n")
        warnings = "\n".join(self.logged(LogLevel.warn))
        self.assertIn("broker.conf:1: listener.tcp.net listens on 0.0.0.0:", warnings)
        self.assertIn("without TLS", warnings)
        self.assertIn(f"{passwd}: password file has mode 0644", warnings)
        self.assertIn(f"{acl}: ACL file has mode 0666", warnings)
        self.assertEqual(self.logged(LogLevel.critical), [])
        self.events.clear()
        os.chmod(passwd, 0o600)
        os.chmod(acl, 0o644)
        self.start("listener.tcp.net2 = 127.0.0.1:0\n")
        warnings = "\n".join(self.logged(LogLevel.warn))
        self.assertNotIn("has mode", warnings)


class StoreModeTests(SynchronousTestCase):

    def test_new_store_is_private(self) -> None:
        """A new store directory is 0700 and its files (database, WAL, lock) 0600."""
        base = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, base, True)
        directory = os.path.join(base, "data")
        store = SQLiteStore(directory, reactor)
        try:
            store.load(1000.0)
        finally:
            store.close()
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        names = os.listdir(directory)
        self.assertIn("vmqtw.db", names)
        for name in names:
            mode = stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode)
            self.assertEqual(mode, 0o600, name)
