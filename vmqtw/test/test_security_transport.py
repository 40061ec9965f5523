"""Security hardening of the transport layers (#14), in memory: PROXY trusted
sources, ``use_identity_as_username`` needing a certificate, the TLS default
suites, ``crl_fail_closed``, the C CRC32C, and the WebSocket pre-login limit."""
from __future__ import annotations

import datetime
import os
import shutil
import tempfile
import zlib
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.config import ConfigError, ProxyConfig, parse
from vmqtw.test.test_tls import client_ctx, connect, files, listener, server_conf
from vmqtw.test.test_websocket import Conn
from vmqtw.test.websocket_support import OP_BINARY, OP_CLOSE, client_frame
from vmqtw.transport import tls
from vmqtw.transport.errors import LayerError
from vmqtw.transport.proxy import parser as proxy_parser
from vmqtw.transport.proxy.endpoint import ProxyServerParser
from vmqtw.transport.proxy.wrapper import ProxyProtocolFactory
from vmqtw.transport.websocket import PREAUTH_MAX_MESSAGE


# ---------------------------------------------------------------------------
# PROXY protocol: trusted sources
# ---------------------------------------------------------------------------

class _Inner(Factory):
    def __init__(self) -> None:
        self.built: list[Protocol] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        p = Protocol()
        self.built.append(p)
        return p


class ProxyTrustTests(SynchronousTestCase):

    def proxy_factory(self, trusted: tuple[str, ...]) -> tuple[ProxyProtocolFactory, list[str]]:
        lines: list[str] = []
        factory = ProxyProtocolFactory(_Inner(), Clock(), name="tcp.edge",
                                       trusted=ProxyConfig(enabled=True,
                                                           trusted_sources=trusted))
        factory.log = Logger(observer=lambda e: lines.append(formatEvent(e)))
        return factory, lines

    def connect(self, factory: ProxyProtocolFactory, peer: Any) -> Any:
        wrapper = factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        wrapper.makeConnection(transport)
        wrapper.dataReceived(b"PROXY TCP4 198.51.100.1 192.0.2.1 4000 1883\r\n")
        return wrapper, transport

    def test_trusts_addresses_and_networks(self) -> None:
        """``ProxyConfig.trusts`` matches IPs and CIDRs (IPv4-mapped IPv6 too), refuses
        others, trusts unix-socket peers, and trusts everyone without sources."""
        cfg = ProxyConfig(enabled=True,
                          trusted_sources=("127.0.0.1", "10.0.0.0/8", "2001:db8::/32"))
        for host, ok in (("127.0.0.1", True), ("10.20.30.40", True), ("::ffff:10.1.2.3", True),
                         ("2001:db8::7", True), ("127.0.0.2", False), ("192.0.2.1", False),
                         ("not-an-ip", False), (None, True)):
            self.assertEqual(cfg.trusts(host), ok, host)
        self.assertTrue(ProxyConfig(enabled=True).trusts("192.0.2.1"))

    def test_option_parsed_and_bad_value_names_the_line(self) -> None:
        """``proxy_protocol_trusted_sources`` takes a comma-separated list (normalised);
        a value that is not an IP or CIDR is a config error naming FILE:LINE."""
        lc = parse("listener.tcp.l = 127.0.0.1:0\nlistener.tcp.l.proxy_protocol = on\n"
                   "listener.tcp.l.proxy_protocol_trusted_sources = 127.0.0.1, 10.1.0.0/16\n",
                   "t.conf").listeners[0]
        self.assertEqual(lc.proxy.trusted_sources, ("127.0.0.1/32", "10.1.0.0/16"))
        self.assertTrue(lc.proxy.use_cn_as_username)
        with self.assertRaises(ConfigError) as e:
            parse("listener.tcp.l = 127.0.0.1:0\n"
                  "listener.tcp.l.proxy_protocol_trusted_sources = 10.0.0.0/33\n", "t.conf")
        self.assertIn("t.conf:2:", str(e.exception))

    def test_untrusted_peer_closed_with_one_log_line(self) -> None:
        """A connection from a peer outside the trusted sources is aborted at once, its
        header never parsed nor the inner protocol built, with one log line."""
        factory, lines = self.proxy_factory(("10.0.0.0/8",))
        wrapper, transport = self.connect(factory, IPv4Address("TCP", "192.0.2.66", 5000))
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(wrapper.proxy_info)
        self.assertEqual(factory.wrappedFactory.built, [])
        self.assertEqual((factory.refused, factory.untrusted), (1, 1))
        self.assertEqual(len(lines), 1)
        self.assertIn("192.0.2.66", lines[0])
        self.assertIn("proxy_protocol_trusted_sources", lines[0])

    def test_trusted_peer_served(self) -> None:
        """A peer inside the trusted sources (and a unix-socket peer) gets its header
        parsed and the inner protocol built with the client address."""
        factory, lines = self.proxy_factory(("10.0.0.0/8",))
        wrapper, transport = self.connect(factory, IPv4Address("TCP", "10.9.8.7", 5000))
        self.assertFalse(transport.disconnecting)
        self.assertEqual(wrapper.getPeer().host, "198.51.100.1")
        self.assertEqual(len(factory.wrappedFactory.built), 1)
        wrapper, transport = self.connect(factory, UNIXAddress(b"/run/x.sock"))
        self.assertFalse(transport.disconnecting)
        self.assertEqual(lines, [])

    def test_endpoint_description_takes_trusted(self) -> None:
        """``proxy:...:trusted=NETS`` gives the endpoint its trusted sources; a bad
        network is refused."""
        endpoint = ProxyServerParser().parseStreamServer(
            MemoryReactor(), "tcp", "0", interface="127.0.0.1", trusted="10.0.0.0/8,127.0.0.1")
        self.assertEqual(endpoint.trusted.trusted_sources, ("10.0.0.0/8", "127.0.0.1"))
        self.assertRaises(ValueError, ProxyServerParser().parseStreamServer,
                          MemoryReactor(), "tcp", "0", trusted="10.0.0.0/99")


# ---------------------------------------------------------------------------
# TLS: identity needs a certificate, default suites, crl_fail_closed
# ---------------------------------------------------------------------------

class _RSAFiles:
    """An RSA server certificate (static-RSA suites need one to be possible)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmqtw-sec-rsa-")
        ca = trustme.CA(key_type=trustme.KeyType.RSA)
        cert = ca.issue_cert("127.0.0.1", common_name="broker", key_type=trustme.KeyType.RSA)
        cert.cert_chain_pems[0].write_to_path(self.p("server.pem"))
        cert.private_key_pem.write_to_path(self.p("server.key"))

    def p(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def conf(self, extra: str = "") -> str:
        return (f"listener.ssl.s = 127.0.0.1:0\nlistener.ssl.s.certfile = {self.p('server.pem')}\n"
                f"listener.ssl.s.keyfile = {self.p('server.key')}\n" + extra)


def _tls12_client(ciphers: str) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(ciphers.encode())
    return ctx


class TLSDefaultsTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.rsa = _RSAFiles()
        self.addCleanup(shutil.rmtree, self.rsa.dir, True)

    def creator(self, extra: str = "") -> tls.ServerTLSOptions:
        return tls.ServerTLSOptions(listener(self.rsa.conf(extra)))

    def test_static_rsa_and_cbc_offers_refused(self) -> None:
        """By default a client offering only static-RSA suites (CBC or GCM) or only CBC
        suites (even with ECDHE) fails the handshake; an ECDHE AEAD offer is served."""
        creator = self.creator()
        for offer in ("AES128-SHA:AES256-SHA:AES128-SHA256:AES128-GCM-SHA256:AES256-GCM-SHA384",
                      "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:ECDHE-RSA-AES128-SHA256"):
            self.assertRaises(SSL.Error, connect, creator, _tls12_client(offer))
        client = connect(creator, _tls12_client("ECDHE-RSA-AES128-GCM-SHA256"))
        self.assertEqual(client.get_cipher_name(), "ECDHE-RSA-AES128-GCM-SHA256")

    def test_explicit_ciphers_are_kept(self) -> None:
        """A listener that sets ``ciphers`` gets exactly them (a static-RSA CBC suite is
        served if listed) and, without a TLS 1.3 suite in them, VerneMQ's TLS 1.2 only."""
        creator = self.creator("listener.ssl.s.ciphers = AES128-SHA\n")
        self.assertEqual(creator.settings.versions, ("tlsv1.2",))
        client = connect(creator, _tls12_client("AES128-SHA"))
        self.assertEqual(client.get_cipher_name(), "AES128-SHA")

    def test_old_versions_keep_openssl_defaults(self) -> None:
        """``tls_version`` listing TLS 1.1 (no AEAD suite exists there) keeps OpenSSL's
        default list, so the version asked for still works."""
        creator = self.creator("listener.ssl.s.tls_version = tlsv1.1,tlsv1.2\n")
        v11 = SSL.TLS1_1_VERSION
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(v11)
        ctx.set_max_proto_version(v11)
        ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        self.assertEqual(connect(creator, ctx).get_protocol_version_name(), "TLSv1.1")


class IdentityNeedsCertificateTests(SynchronousTestCase):

    def test_client_without_certificate_refused(self) -> None:
        """With ``use_identity_as_username`` (and ``require_certificate`` off) a client
        without a certificate fails the handshake; one with a certificate is served."""
        f = files()
        creator = tls.ServerTLSOptions(listener(server_conf(
            f"listener.ssl.s.cafile = {f.p('ca.pem')}\n"
            "listener.ssl.s.use_identity_as_username = on\n")))
        self.assertTrue(creator.settings.certificate_required)
        self.assertRaises(SSL.Error, connect, creator, client_ctx())
        connect(creator, client_ctx(cert="alice"))

    def test_without_cafile_is_a_startup_error(self) -> None:
        """``use_identity_as_username`` without a ``cafile`` (and without PSK) could never
        verify a certificate: a startup error naming the option's line."""
        with self.assertRaises(LayerError) as e:
            tls.creator_for(listener(server_conf("listener.ssl.s.use_identity_as_username = on\n"),
                                     "b.conf"))
        self.assertIn("b.conf:4: listener.ssl.s.use_identity_as_username", str(e.exception))


def _crl(ca: trustme.CA, next_update_days: float) -> bytes:
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes()).subject
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer)
               .last_update(now - datetime.timedelta(days=2))
               .next_update(now + datetime.timedelta(days=next_update_days)))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


class CrlFailClosedTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmqtw-sec-crl-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.crl = os.path.join(self.dir, "crl.pem")

    def creator(self, crl: bytes, fail_closed: bool) -> tls.ServerTLSOptions:
        with open(self.crl, "wb") as f:
            f.write(crl)
        f = files()
        return tls.ServerTLSOptions(listener(server_conf(
            f"listener.ssl.s.cafile = {f.p('ca.pem')}\n"
            "listener.ssl.s.require_certificate = on\n"
            f"listener.ssl.s.crlfile = {self.crl}\n"
            f"listener.ssl.s.crl_fail_closed = {'on' if fail_closed else 'off'}\n")))

    def test_expired_crl(self) -> None:
        """A CRL past its next update: accepted as VerneMQ does by default, refused with
        ``crl_fail_closed = on``."""
        expired = _crl(files().root, -1)
        connect(self.creator(expired, False), client_ctx(cert="alice"))
        self.assertRaises(SSL.Error, connect, self.creator(expired, True), client_ctx(cert="alice"))

    def test_no_crl_for_the_issuer(self) -> None:
        """A CRL file without a CRL for the client's issuer: accepted by default, refused
        with ``crl_fail_closed = on``."""
        unrelated = _crl(trustme.CA(), 1)
        connect(self.creator(unrelated, False), client_ctx(cert="alice"))
        self.assertRaises(SSL.Error, connect, self.creator(unrelated, True),
                          client_ctx(cert="alice"))

    def test_unreadable_crl_at_refresh(self) -> None:
        """With ``crl_fail_closed`` a CRL file that cannot be read at a refresh refuses
        every client certificate until it can be read again; without it the last good
        CRL stays in force."""
        good = _crl(files().root, 1)
        for fail_closed in (False, True):
            creator = self.creator(good, fail_closed)
            connect(creator, client_ctx(cert="alice"))
            os.remove(self.crl)
            self.assertFalse(creator.refresh_crl())
            if fail_closed:
                self.assertRaises(SSL.Error, connect, creator, client_ctx(cert="alice"))
            else:
                connect(creator, client_ctx(cert="alice"))
            with open(self.crl, "wb") as f:
                f.write(good)
            self.assertEqual(creator.refresh_crl(), fail_closed)
            connect(creator, client_ctx(cert="alice"))


# ---------------------------------------------------------------------------
# CRC32C
# ---------------------------------------------------------------------------

#: RFC 3720 B.4 test vectors, plus the classic check value.
CRC32C_VECTORS = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),
    (b"", 0),
]


class Crc32cTests(SynchronousTestCase):

    def test_python_fallback_vectors(self) -> None:
        """The pure-Python CRC32C gives the RFC 3720 values."""
        for data, crc in CRC32C_VECTORS:
            self.assertEqual(proxy_parser.crc32c_python(data), crc, data)

    def test_c_implementation_vectors_and_use(self) -> None:
        """The C CRC32C (the ``crc32c`` package) gives the same values and is the one the
        PROXY parser uses."""
        if proxy_parser.crc32c_c is None:
            raise self.skipTest("the crc32c package is not installed")
        for data, crc in CRC32C_VECTORS:
            self.assertEqual(proxy_parser.crc32c_c(data), crc, data)
        self.assertIs(proxy_parser.crc32c, proxy_parser.crc32c_c)
        blob = os.urandom(70000)
        self.assertEqual(proxy_parser.crc32c_c(blob), proxy_parser.crc32c_python(blob))


# ---------------------------------------------------------------------------
# WebSocket: bounded before login
# ---------------------------------------------------------------------------

OFFER = (("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),)
CONNACK_OK = b"\x20\x02\x00\x00"


def deflated(data: bytes) -> bytes:
    deflater = zlib.compressobj(wbits=-15)
    return (deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]


class WebSocketPreauthTests(SynchronousTestCase):

    def closed_with(self, c: Conn) -> int | None:
        for opcode, _fin, payload in c.frames():
            if opcode == OP_CLOSE:
                return int.from_bytes(payload[:2], "big")
        return None

    def test_deflate_bomb_before_login_refused(self) -> None:
        """A 64 MiB deflate bomb (64 KiB on the wire) before CONNACK is failed with 1009
        and MQTT never receives more than the pre-login limit (100 kB)."""
        c = Conn("listener.ws.websocket_compression = on\n")
        mqtt = c.open(headers=OFFER)
        bomb = deflated(bytes(64 * 1024 * 1024))
        self.assertLess(len(bomb), 100 * 1024)
        c.send(client_frame(OP_BINARY, bomb, rsv=4))
        self.assertEqual(self.closed_with(c), 1009)
        self.assertLessEqual(len(mqtt.data), PREAUTH_MAX_MESSAGE)

    def test_big_plain_frame_before_login_refused(self) -> None:
        """An uncompressed frame over 100 kB before CONNACK is failed with 1009 from its
        header alone."""
        c = Conn()
        mqtt = c.open()
        c.send(client_frame(OP_BINARY, b"\x10" * (PREAUTH_MAX_MESSAGE + 1)))
        self.assertEqual(self.closed_with(c), 1009)
        self.assertEqual(mqtt.data, b"")

    def test_limits_lifted_after_a_successful_connack(self) -> None:
        """A refused CONNACK keeps the pre-login limit; after CONNACK 0 a message inflating
        to 1 MiB reaches MQTT whole (max_ws_frame_size applies again)."""
        c = Conn("listener.ws.websocket_compression = on\n")
        mqtt = c.open(headers=OFFER)
        proto = c.proto
        mqtt.transport.write(b"\x20\x02\x00\x05")
        self.assertTrue(proto.preauth)
        mqtt.transport.write(CONNACK_OK)
        self.assertFalse(proto.preauth)
        self.assertEqual(proto.maxMessagePayloadSize, 268435456)
        c.send(client_frame(OP_BINARY, deflated(b"\x30" * (1024 * 1024)), rsv=4))
        self.assertEqual(len(mqtt.data), 1024 * 1024)
