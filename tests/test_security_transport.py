"""Security hardening (#14) over real sockets: each attack of the review's
probes replayed against a broker on 127.0.0.1 and shown refused.

- a PROXY header from a peer outside ``proxy_protocol_trusted_sources``;
- a TLS 1.2 client offering only static-RSA or CBC suites;
- a permessage-deflate bomb before CONNECT over a real WebSocket;
- the shipped configuration moved to a network address while the demo user
  is still in its password file (both ways of starting the broker).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import zlib

import trustme
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.logger import formatEvent, globalLogPublisher

from tests.support import (
    CONNACK_OK, REPO, TIMEOUT, BrokerTestCase, connect_packet, with_timeout,
)
from tests.test_startup import _Programs
from tests.test_websocket import RawWebSocket
from tests.tls_clients import Refused, probe
from vmqtw.test.websocket_support import OP_BINARY, OP_CLOSE, OP_CONT, client_frame
from vmqtw.transport.websocket import PREAUTH_MAX_MESSAGE


def _peak_rss_kib() -> int | None:
    """This process's peak RSS (VmHWM) in KiB, or None where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class ProxyTrustedSourcesTests(BrokerTestCase):

    def setUp(self) -> None:
        self.lines: list[str] = []

        def observer(event: dict) -> None:
            self.lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.broker = self.start_broker(
            "allow_anonymous = on\n"
            "listener.tcp.edge = 127.0.0.1:0\n"
            "listener.tcp.edge.proxy_protocol = on\n"
            "listener.tcp.edge.proxy_protocol_trusted_sources = 10.0.0.0/8\n"
            "listener.tcp.local = 127.0.0.1:0\n"
            "listener.tcp.local.proxy_protocol = on\n"
            "listener.tcp.local.proxy_protocol_trusted_sources = 127.0.0.1\n")

    @inlineCallbacks
    def test_header_from_an_untrusted_peer_is_refused(self):
        """A client on 127.0.0.1 sending a PROXY header that claims another address to a
        listener trusting only 10.0.0.0/8 is disconnected without a CONNACK and no session,
        with exactly one log line; the same header to a listener trusting 127.0.0.1 is
        served with the claimed address."""
        header = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 1883\r\n"
        spoofer = yield self.raw_client(self.broker, "tcp.edge")
        spoofer.send(header + connect_packet("spoofer"))
        yield spoofer.when_closed()
        self.assertEqual(spoofer.received_total, 0)
        self.assertNotIn(("", "spoofer"), self.broker.broker.sessions)
        refused = [line for line in self.lines if "proxy_protocol_trusted_sources" in line]
        self.assertEqual(len(refused), 1, refused)
        self.assertIn("tcp.edge", refused[0])
        trusted = yield self.raw_client(self.broker, "tcp.local")
        trusted.send(header + connect_packet("via-proxy"))
        self.assertEqual((yield trusted.read(4)), CONNACK_OK)
        self.assertEqual(self.broker.broker.sessions[("", "via-proxy")].peer,
                         ("203.0.113.9", 40000))


class TLSWeakSuitesTests(BrokerTestCase):

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmqtw-sec-tls-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        ca = trustme.CA(key_type=trustme.KeyType.RSA)
        cert = ca.issue_cert("127.0.0.1", common_name="broker", key_type=trustme.KeyType.RSA)
        self.ca = os.path.join(self.dir, "ca.pem")
        ca.cert_pem.write_to_path(self.ca)
        cert.cert_chain_pems[0].write_to_path(os.path.join(self.dir, "server.pem"))
        cert.private_key_pem.write_to_path(os.path.join(self.dir, "server.key"))
        self.broker = self.start_broker(
            "allow_anonymous = on\n"
            "listener.ssl.default = 127.0.0.1:0\n"
            f"listener.ssl.certfile = {self.dir}/server.pem\n"
            f"listener.ssl.keyfile = {self.dir}/server.key\n")
        self.port = self.port_of(self.broker, "ssl.default")

    @inlineCallbacks
    def test_static_rsa_and_cbc_only_clients_refused(self):
        """With the default TLS settings and an RSA certificate, a TLS 1.2 client offering
        only static-RSA suites, or only CBC suites, fails the handshake; an ECDHE-GCM client
        and a default (TLS 1.3) client are served."""
        for offer in ("AES128-SHA:AES256-SHA:AES128-GCM-SHA256:AES256-GCM-SHA384",
                      "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA384"):
            with self.assertRaises(Refused):
                yield probe(self.port, self, ca=self.ca, versions="tlsv1.2", ciphers=offer)
        info = yield probe(self.port, self, ca=self.ca, versions="tlsv1.2",
                           ciphers="ECDHE-RSA-AES256-GCM-SHA384")
        self.assertEqual(info["cipher"], "ECDHE-RSA-AES256-GCM-SHA384")
        info = yield probe(self.port, self, ca=self.ca)
        self.assertEqual(info["version"], "TLSv1.3")


class WebSocketDeflateBombTests(BrokerTestCase):

    @inlineCallbacks
    def test_deflate_bomb_before_connect_is_refused(self):
        """A WebSocket client that negotiated permessage-deflate sends, before CONNECT, one
        message of 4 frames (under 100 kB each on the wire) inflating to 256 MiB: the broker
        fails the connection with 1009, and (where Linux lets us measure) its peak memory
        grows by far less than the bomb; a normal client is served afterwards."""
        broker = self.start_broker("allow_anonymous = on\nlistener.ws.default = 127.0.0.1:0\n"
                                   "listener.ws.websocket_compression = on\n")
        port = self.port_of(broker, "ws.default")
        deflater = zlib.compressobj(wbits=-15)
        bomb = (deflater.compress(bytes(256 * 1024 * 1024))
                + deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]
        quarter = len(bomb) // 4 + 1
        chunks = [bomb[i:i + quarter] for i in range(0, len(bomb), quarter)]
        self.assertTrue(all(len(c) < PREAUTH_MAX_MESSAGE for c in chunks))
        measured = _reset_peak_rss()
        before = _peak_rss_kib()

        client = RawWebSocket()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=TIMEOUT)
        yield with_timeout(connectProtocol(endpoint, client), what="TCP connect")
        self.addCleanup(client.close)
        status, headers, _ = yield client.upgrade(headers=(
            ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),))
        self.assertEqual(status, 101)
        self.assertIn("permessage-deflate", headers.get("sec-websocket-extensions", ""))
        for i, chunk in enumerate(chunks):
            client.send(client_frame(OP_BINARY if i == 0 else OP_CONT, chunk,
                                     fin=i == len(chunks) - 1, rsv=4 if i == 0 else 0))
        yield client.when_closed()
        codes = [int.from_bytes(p[:2], "big") for op, p in client.control if op == OP_CLOSE]
        self.assertEqual(codes, [1009])
        self.assertEqual(client.mqtt, b"")
        if measured and before is not None:
            grown = (_peak_rss_kib() or 0) - before
            self.assertLess(grown, 64 * 1024, f"peak RSS grew by {grown} KiB")
        # Others are still served.
        good = RawWebSocket()
        yield with_timeout(connectProtocol(endpoint, good), what="TCP connect")
        self.addCleanup(good.close)
        status, _, _ = yield good.upgrade()
        self.assertEqual(status, 101)
        good.frame(OP_BINARY, connect_packet("after-bomb"))
        self.assertEqual((yield good.read_mqtt(4)), CONNACK_OK)


class ShippedDemoUserTests(_Programs):

    @inlineCallbacks
    def test_demo_user_on_a_network_address_refuses_to_start(self):
        """etc/broker.conf with its listener moved to 0.0.0.0 while vmq.passwd still holds
        the demo user: twistd and python -m vmqtw exit 1 with one line naming the
        listener's FILE:LINE and the password file's line, and no traceback."""
        with open(os.path.join(REPO, "etc", "broker.conf"), encoding="utf-8") as f:
            text = f.read()
        text, n = re.subn(r"(?m)^listener\.tcp\.default\s*=\s*127\.0\.0\.1:1883\s*$",
                          "listener.tcp.default = 0.0.0.0:0", text)
        self.assertEqual(n, 1)
        directory = self.tmpdir()
        for name in ("vmq.passwd", "vmq.acl"):
            shutil.copy(os.path.join(REPO, "etc", name), directory)
        path = os.path.join(directory, "broker.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + f"persistent_store.directory = {directory}/data\n")
        line = text.split("\n").index("listener.tcp.default = 0.0.0.0:0") + 1
        for name, run in self.runners():
            out, err, code = yield run(path)
            self.assertEqual(code, 1, f"{name}: {out!r} {err!r}")
            lines = err.decode().strip().splitlines()
            self.assertEqual(len(lines), 1, f"{name}: {err!r}")
            self.assertIn(f"{path}:{line}: listener.tcp.default: refusing to start", lines[0])
            self.assertIn(os.path.join(directory, "vmq.passwd") + ":", lines[0])
            self.assertNoTraceback(out, err)
