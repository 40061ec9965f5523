"""
VerneMQ 2.x's stock vernemq.conf (the fixture vmqtw/test/data/vernemq.conf:
loopback addresses, port 0) starts vmqtw unchanged and serves its tcp
listener, with VerneMQ's own meaning: vmq_passwd and vmq_acl on, anonymous
clients refused; its http listener answers VerneMQ's health check.
"""

from __future__ import annotations

import os
import shutil

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.web.client import Agent, readBody

from tests.support import CONNACK_OK, BrokerTestCase, connect_packet, stop_broker
from vmqtw.auth import loader
from vmqtw.auth.passwd import hash_password
from vmqtw.config import load
from vmqtw.service import BrokerService

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "vmqtw", "test", "data")


class StockConfigTests(BrokerTestCase):

    @inlineCallbacks
    def test_stock_vernemq_conf_serves(self):
        """The stock file (copied with its etc/ next to it, a user added to its empty
        password file) starts the broker: the tcp listener answers, an anonymous CONNECT
        is refused with CONNACK 5 (allow_anonymous = off, as VerneMQ) and the user in
        vmq.passwd is let in (CONNACK 0); the http listener serves /health."""
        root = os.path.abspath(self.mktemp())
        shutil.copytree(DATA, root)
        with open(os.path.join(root, "etc", "vmq.passwd"), "a", encoding="utf-8") as f:
            f.write(f"alice:{hash_password(b'secret')}\n")
        config = load(os.path.join(root, "vernemq.conf"))
        plugins = loader.load_plugins(config, reactor)
        service = BrokerService(config, reactor, plugins=plugins)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(stop_broker, service)
        self.assertEqual(sorted(service.listeners), ["http.default", "tcp.default"])
        http_port = service.listeners["http.default"].port.getHost().port
        response = yield Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{http_port}/health".encode())
        body = yield readBody(response)
        self.assertEqual((response.code, body), (200, b'{"status": "OK"}'))

        anonymous = yield self.raw_client(service)
        anonymous.send(connect_packet("anon"))
        connack = yield anonymous.read(4, what="CONNACK")
        self.assertEqual(connack, b"\x20\x02\x00\x05")

        alice = yield self.raw_client(service)
        alice.send(connect_packet("alice-1", username="alice", password=b"secret"))
        connack = yield alice.read(4, what="CONNACK")
        self.assertEqual(connack, CONNACK_OK)
