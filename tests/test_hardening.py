"""Security hardening (#14), part B, against a real broker on real sockets:
pre-authentication packet size, claimed user names, reloads reaching live
clients."""
from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from tests.support import TIMEOUT, BrokerTestCase, read_packet, stop_broker
from vmqtw.auth.passwd import hash_password
from vmqtw.config import load
from vmqtw.service import BrokerService
from vmqtw.test.wire import connect_packet, fixed, props, utf8, varint

PLUGINS = """\
listener.tcp.default = 127.0.0.1:0
listener.tcp.default.allowed_protocol_versions = 3,4,5
plugins.vmq_passwd = on
plugins.vmq_acl = on
vmq_passwd.password_file = vmq.passwd
vmq_passwd.password_reload_interval = 0
vmq_acl.acl_file = vmq.acl
vmq_acl.acl_reload_interval = 0
"""


class HardeningTests(BrokerTestCase):

    def start_with_files(self, anonymous: bool, users: dict[str, bytes],
                         acl: str) -> BrokerService:
        """A broker with vmq_passwd (``users``) and vmq_acl (``acl``) from files;
        the files are in the configuration's directory (relative paths)."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.passwd_path = os.path.join(directory, "vmq.passwd")
        self.write_users(users)
        with open(os.path.join(directory, "vmq.acl"), "w") as f:
            f.write(acl)
        path = os.path.join(directory, "broker.conf")
        with open(path, "w") as f:
            f.write(f"allow_anonymous = {'on' if anonymous else 'off'}\n" + PLUGINS)
        service = BrokerService(load(path), reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(stop_broker, service)
        return service

    def write_users(self, users: dict[str, bytes]) -> None:
        """(Re)write the password file."""
        with open(self.passwd_path, "w") as f:
            f.writelines(f"{u}:{hash_password(p)}\n" for u, p in users.items())

    @inlineCallbacks
    def test_huge_connect_closed_without_buffering(self):
        """The issue's probe: a CONNECT claiming 200 MB (three of them held 650 MiB
        until the connect timeout).  The broker closes the connection as soon as
        the fixed header is read, whatever the client goes on sending."""
        service = self.start_broker()
        client = yield self.raw_client(service)
        remaining = 200_000_000
        client.send(b"\x10" + varint(remaining) + b"\x00\x04MQTT\x04\x02\x00\x3c")
        client.send(b"x" * 65536)  # the start of the body: never buffered
        yield client.when_closed(timeout=TIMEOUT)
        self.assertEqual(client.buffer, b"")  # no CONNACK for 3.1.1: just closed

    @inlineCallbacks
    def test_huge_connect_5_told_packet_too_large(self):
        """A 5.0 client claiming a 200 MB CONNECT gets CONNACK 0x95, then the close."""
        service = self.start_broker("allow_anonymous = on\nlistener.tcp.default = 127.0.0.1:0\n"
                                    "listener.tcp.default.allowed_protocol_versions = 3,4,5\n")
        client = yield self.raw_client(service)
        client.send(b"\x10" + varint(200_000_000) + b"\x00\x04MQTT\x05\x02\x00\x3c\x00")
        yield client.when_closed(timeout=TIMEOUT)
        self.assertEqual(client.buffer, b"\x20\x03\x00\x95\x00")

    @inlineCallbacks
    def test_claimed_admin_refused_with_anonymous_on(self):
        """The issue's probe: ``allow_anonymous = on``, ``username=admin`` and a
        wrong password: CONNACK 4 (it was 0, with admin's ``#``)."""
        service = self.start_with_files(True, {"admin": b"right"}, "user admin\ntopic #\n")
        client = yield self.raw_client(service)
        client.send(connect_packet("c", 4, username="admin", password=b"wrong"))
        self.assertEqual((yield client.read(4)), b"\x20\x02\x00\x04")
        yield client.when_closed()
        anonymous = yield self.raw_client(service)
        anonymous.send(connect_packet("anon", 4))
        self.assertEqual((yield anonymous.read(4)), b"\x20\x02\x00\x00")

    @inlineCallbacks
    def test_removed_user_disconnected_on_reload(self):
        """A user removed from the password file is disconnected by a reload
        (SIGHUP); a 5.0 client is told 0x87 (not authorized)."""
        service = self.start_with_files(False, {"bob": b"pw", "carol": b"pw"},
                                        "user bob\ntopic bob/#\n")
        bob = yield self.raw_client(service)
        bob.send(connect_packet("bob5", 5, username="bob", password=b"pw"))
        first, _body = yield read_packet(bob, "CONNACK")
        self.assertEqual(first, 0x20)
        # SUBSCRIBE (5.0 s3.8): packet id 1, no properties, "bob/#" at QoS 0
        bob.send(fixed(0x82, b"\x00\x01" + props() + utf8("bob/#") + b"\x00"))
        first, _body = yield read_packet(bob, "SUBACK")
        self.assertEqual(first, 0x90)
        self.write_users({"carol": b"pw"})
        service.reload()
        first, body = yield read_packet(bob, "DISCONNECT")
        self.assertEqual((first, body[:1]), (0xE0, b"\x87"))
        yield bob.when_closed()
