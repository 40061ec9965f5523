"""The vmq-passwd command as users run it, then a broker using the file it wrote.

Uses the installed ``vmq-passwd`` console script when it is on PATH (``pip
install .`` puts it there), else ``python -m vmqtw.auth.passwd_cli`` from this
checkout.
"""
from __future__ import annotations

import os
import shutil
import stat
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from tests.support import (
    BrokerTestCase, SubscriptionWatcher, need_mosquitto_clients, run_process, stop_broker,
)
from vmqtw.config import load
from vmqtw.service import BrokerService

PUB = shutil.which("mosquitto_pub")
SUB = shutil.which("mosquitto_sub")
SCRIPT = shutil.which("vmq-passwd")
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "vmqtw.auth.passwd_cli"]


class PasswdCommandTests(BrokerTestCase):

    def setUp(self) -> None:
        need_mosquitto_clients()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.passwd = os.path.join(self.dir, "vmq.passwd")

    def vmq_passwd(self, *args: str, password: str | None = None):
        """Run the command; the password goes to stdin (--password-stdin)."""
        stdin = None if password is None else (password + "\n").encode("utf-8")
        return run_process(COMMAND[0], [*COMMAND[1:], *args], stdin=stdin, timeout=30,
                           cwd=self.dir)

    def start(self) -> BrokerService:
        path = os.path.join(self.dir, "broker.conf")
        with open(path, "w") as f:
            f.write("allow_anonymous = off\n"
                    "listener.tcp.default = 127.0.0.1:0\n"
                    "plugins.vmq_passwd = on\n"
                    "vmq_passwd.password_file = vmq.passwd\n"
                    "vmq_passwd.password_reload_interval = 0\n")
        service = BrokerService(load(path), reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(stop_broker, service)
        return service

    def mosquitto_pub(self, service: BrokerService, user: str, password: str, topic: str):
        port = str(self.port_of(service))
        return run_process(PUB, ["-h", "127.0.0.1", "-p", port, "-u", user, "-P", password,
                                 "-t", topic, "-m", "hello", "-q", "1"])

    @inlineCallbacks
    def test_created_file_lets_mosquitto_pub_in(self):
        """vmq-passwd -c creates a mode 0600 file of SHA-512 crypt hashes (no clear text, a
        colon allowed in the password) and adds users to it; the broker lets those users in,
        refuses a wrong password (CONNACK 4), and after -D and a reload the removed user is
        unknown (CONNACK 4 as well: an unknown user and a wrong password look the same)."""
        out, err, code = yield self.vmq_passwd("-c", "--password-stdin", self.passwd, "alice",
                                               password="s3cret: with colon")
        self.assertEqual((code, err), (0, b""), out)
        self.assertEqual(stat.S_IMODE(os.stat(self.passwd).st_mode), 0o600)
        with open(self.passwd) as f:
            line = f.read()
        self.assertTrue(line.startswith("alice:$6$"), line)
        self.assertNotIn("s3cret", line)
        # a second user, added to the existing file
        out, err, code = yield self.vmq_passwd("--password-stdin", self.passwd, "bob",
                                               password="pw-b")
        self.assertEqual((code, err), (0, b""))

        service = self.start()
        watcher = SubscriptionWatcher(service)
        received = run_process(SUB, ["-h", "127.0.0.1", "-p", str(self.port_of(service)),
                                     "-u", "bob", "-P", "pw-b", "-t", "cmd/t", "-C", "1",
                                     "-W", "10"], timeout=15)
        yield watcher.wait("cmd/t")
        out, err, code = yield self.mosquitto_pub(service, "alice", "s3cret: with colon",
                                                  "cmd/t")
        self.assertEqual((code, err), (0, b""))
        self.assertEqual((yield received), (b"hello\n", b"", 0))

        out, err, code = yield self.mosquitto_pub(service, "alice", "s3cret", "cmd/t")
        self.assertEqual(code, 4, err)  # CONNACK 4: bad user name or password

        # -D removes bob; after a reload (SIGHUP) he is unknown: CONNACK 4
        out, err, code = yield self.vmq_passwd("-D", self.passwd, "bob")
        self.assertEqual((code, err), (0, b""))
        service.reload()
        out, err, code = yield self.mosquitto_pub(service, "bob", "pw-b", "cmd/t")
        self.assertEqual(code, 4, err)

    @inlineCallbacks
    def test_create_refuses_an_existing_file(self):
        """vmq-passwd -c refuses to overwrite an existing file (exit 1, already exists), and
        the first password stays valid for the broker."""
        out, err, code = yield self.vmq_passwd("-c", "--password-stdin", self.passwd, "alice",
                                               password="one")
        self.assertEqual(code, 0, err)
        out, err, code = yield self.vmq_passwd("-c", "--password-stdin", self.passwd, "alice",
                                               password="two")
        self.assertEqual(code, 1)
        self.assertIn(b"already exists", err)
        service = self.start()
        out, err, code = yield self.mosquitto_pub(service, "alice", "one", "t")
        self.assertEqual((code, err), (0, b""))

    @inlineCallbacks
    def test_hash_plain_file(self):
        """-U turns a plain user:password file into hashes the broker accepts."""
        with open(self.passwd, "w") as f:
            f.write("# plain\nalice:pa:ss\n")
        out, err, code = yield self.vmq_passwd("-U", self.passwd)
        self.assertEqual((code, err), (0, b""))
        service = self.start()
        out, err, code = yield self.mosquitto_pub(service, "alice", "pa:ss", "t")
        self.assertEqual((code, err), (0, b""))
