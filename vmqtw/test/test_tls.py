"""Unit tests for the TLS layer: option checks with FILE:LINE errors, the PSK
file, the context (versions, chain, verification) driven by in-memory
handshakes, CRL refresh and the handshake timeout on a fake clock, reload."""
from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import tempfile
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.bindings.openssl.binding import Binding
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.config import ConfigError, parse
from vmqtw.transport import tls
from vmqtw.transport.identity import preauth_username
from vmqtw.transport.layers import LayerError, build_layers

_ffi, _lib = Binding().ffi, Binding().lib


# ---------------------------------------------------------------------------
# Material
# ---------------------------------------------------------------------------

class Files:
    """A CA, an intermediate, a server cert (leaf + intermediate in one file),
    client certs and a CRL, written to a temporary directory."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmqtw-tls-unit-")
        self.root = trustme.CA()
        self.inter = self.root.create_child_ca()
        self.serials: dict[str, int] = {}
        self.root.cert_pem.write_to_path(self.p("ca.pem"))
        server = self.inter.issue_cert("127.0.0.1", common_name="broker")
        self.write("server.pem", b"".join(b.bytes() for b in server.cert_chain_pems))
        server.private_key_pem.write_to_path(self.p("server.key"))
        self.serials["server"] = self.serial("server.pem")
        other = trustme.CA().issue_cert("127.0.0.1", common_name="other")
        other.private_key_pem.write_to_path(self.p("other.key"))
        for name in ("alice", "mallory"):
            cert = self.root.issue_cert(f"{name}.example", common_name=name)
            cert.cert_chain_pems[0].write_to_path(self.p(f"{name}.pem"))
            cert.private_key_pem.write_to_path(self.p(f"{name}.key"))
            self.serials[name] = self.serial(f"{name}.pem")
        self.write("crl.pem", self.crl([self.serials["mallory"]]))
        self.write("psk.txt", b"# comment\n\nid1:key-one\nid2:k:two\n")

    def p(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def write(self, name: str, data: bytes) -> str:
        with open(self.p(name), "wb") as f:
            f.write(data)
        return self.p(name)

    def serial(self, name: str) -> int:
        with open(self.p(name), "rb") as f:
            return x509.load_pem_x509_certificate(f.read()).serial_number

    def crl(self, revoked: list[int]) -> bytes:
        key = serialization.load_pem_private_key(self.root.private_key_pem.bytes(), None)
        issuer = x509.load_pem_x509_certificate(self.root.cert_pem.bytes()).subject
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (x509.CertificateRevocationListBuilder().issuer_name(issuer)
             .last_update(now - datetime.timedelta(minutes=1))
             .next_update(now + datetime.timedelta(days=1)))
        for serial in revoked:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                          .revocation_date(now).build())
        return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


_FILES: Files | None = None


def files() -> Files:
    global _FILES
    if _FILES is None:
        _FILES = Files()
        import atexit
        atexit.register(shutil.rmtree, _FILES.dir, True)
    return _FILES


def listener(lines: str, filename: str = "b.conf", index: int = 0) -> Any:
    return parse(lines, filename).listeners[index]


def server_conf(extra: str = "", name: str = "s") -> str:
    f = files()
    return (f"listener.ssl.{name} = 127.0.0.1:0\n"
            f"listener.ssl.{name}.certfile = {f.p('server.pem')}\n"
            f"listener.ssl.{name}.keyfile = {f.p('server.key')}\n" + extra)


# ---------------------------------------------------------------------------
# In-memory handshakes
# ---------------------------------------------------------------------------

def client_ctx(*, versions: tuple[int, int] | None = None, cert: str | None = None,
               psk: tuple[bytes, bytes] | None = None, ca: bool = True,
               ciphers: str | None = None) -> SSL.Context:
    f = files()
    ctx = SSL.Context(SSL.TLS_METHOD)
    if versions:
        ctx.set_min_proto_version(versions[0])
        ctx.set_max_proto_version(versions[1])
        if versions[0] < SSL.TLS1_2_VERSION:
            ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    if ciphers:
        ctx.set_cipher_list(ciphers.encode())
    if ca:
        ctx.load_verify_locations(f.p("ca.pem").encode())
        ctx.set_verify(SSL.VERIFY_PEER, lambda *a: bool(a[-1]))
    if cert:
        ctx.use_certificate_file(f.p(f"{cert}.pem").encode())
        ctx.use_privatekey_file(f.p(f"{cert}.key").encode())
    if psk:
        identity, key = psk

        def cb(ssl: Any, hint: Any, ident: Any, max_ident: int, out: Any, max_psk: int) -> int:
            _ffi.memmove(ident, identity + b"\0", len(identity) + 1)
            _ffi.memmove(out, key, len(key))
            return len(key)

        ctx._cb = _ffi.callback("unsigned int(SSL *, const char *, char *, unsigned int, "
                                "unsigned char *, unsigned int)", cb)
        _lib.SSL_CTX_set_psk_client_callback(ctx._context, ctx._cb)
    return ctx


def handshake(server: SSL.Connection, client_context: SSL.Context) -> SSL.Connection:
    """Run a handshake (plus one application byte each way, so that a TLS 1.3
    server's verdict on the client certificate reaches the client); returns the
    client Connection or raises SSL.Error."""
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    server.set_accept_state()
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, conn, peer in (("c", client, server), ("s", server, client)):
            if not done[name]:
                try:
                    conn.do_handshake()
                    done[name] = True
                except SSL.WantReadError:
                    pass
            try:
                data = conn.bio_read(65536)
            except SSL.WantReadError:
                data = b""
            if data:
                peer.bio_write(data)
        if done["c"] and done["s"]:
            break
    client.send(b"x")
    server.bio_write(client.bio_read(65536))
    assert server.recv(10) == b"x"
    try:
        server.send(b"y")
        client.bio_write(server.bio_read(65536))
    except SSL.WantReadError:
        pass
    assert client.recv(10) == b"y"
    return client


def connect(creator: tls.ServerTLSOptions, ctx: SSL.Context) -> SSL.Connection:
    return handshake(creator.serverConnectionForTLS(None), ctx)


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------

class StartupErrorTests(SynchronousTestCase):
    """Bad options and files are LayerErrors naming FILE:LINE and the option."""

    def assertLayerError(self, text: str, expected_start: str, contains: str = "") -> str:
        with self.assertRaises(LayerError) as cm:
            tls.tls_factory(listener(text), Factory.forProtocol(Protocol), Clock())
        message = str(cm.exception)
        self.assertTrue(message.startswith(expected_start), message)
        self.assertIn(contains, message)
        return message

    def test_missing_certfile(self) -> None:
        """
        An unreadable ``certfile`` fails listener startup with ``FILE:LINE: option: cannot read
        PATH`` and the operating system's reason.
        """
        self.assertLayerError(
            "listener.ssl.s = 127.0.0.1:0\nlistener.ssl.s.certfile = /no/such.pem\n"
            f"listener.ssl.s.keyfile = {files().p('server.key')}\n",
            "b.conf:2: listener.ssl.s.certfile: cannot read /no/such.pem", "No such file")

    def test_certfile_without_certificate(self) -> None:
        """
        A ``certfile`` that holds no PEM certificate fails startup at the ``certfile`` line.
        """
        bad = files().write("garbage.pem", b"hello\n")
        self.assertLayerError(
            f"listener.ssl.s = 127.0.0.1:0\nlistener.ssl.s.certfile = {bad}\n",
            "b.conf:2: listener.ssl.s.certfile: ", "holds no PEM certificate")

    def test_no_certfile_and_no_psk(self) -> None:
        """
        An ssl listener with neither a ``certfile`` nor PSK support fails startup, pointing at
        the listener's line and saying it needs a certfile.
        """
        self.assertLayerError("allow_anonymous = on\nlistener.ssl.s = 127.0.0.1:0\n",
                              "b.conf:2: listener.ssl.s.certfile: ", "needs a certfile")

    def test_key_not_matching_the_certificate(self) -> None:
        """
        A ``keyfile`` whose key does not belong to the certificate fails startup at the
        ``keyfile`` line.
        """
        text = server_conf().replace(files().p("server.key"), files().p("other.key"))
        self.assertLayerError(text, "b.conf:3: listener.ssl.s.keyfile: ", "does not match")

    def test_encrypted_key(self) -> None:
        """
        An encrypted private key fails startup at the ``keyfile`` line without ``keypasswd``
        and at the ``keypasswd`` line with a wrong one; the right ``keypasswd`` loads it.
        """
        f = files()
        key = serialization.load_pem_private_key(open(f.p("server.key"), "rb").read(), None)
        enc = f.write("enc.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw")))
        base = server_conf().replace(f.p("server.key"), enc)
        self.assertLayerError(base, "b.conf:3: listener.ssl.s.keyfile: ",
                              "encrypted and keypasswd is not set")
        self.assertLayerError(base + "listener.ssl.s.keypasswd = nope\n",
                              "b.conf:4: listener.ssl.s.keypasswd: ", "wrong keypasswd")
        tls.tls_factory(listener(base + "listener.ssl.s.keypasswd = pw\n"), Factory(), Clock())

    def test_key_in_certfile_when_keyfile_is_empty(self) -> None:
        """
        Without a ``keyfile`` the private key is read from the ``certfile``, which may hold
        both.
        """
        f = files()
        both = f.write("both.pem", open(f.p("server.pem"), "rb").read()
                       + open(f.p("server.key"), "rb").read())
        tls.tls_factory(listener(f"listener.ssl.s = 127.0.0.1:0\n"
                                 f"listener.ssl.s.certfile = {both}\n"), Factory(), Clock())

    def test_unknown_cipher(self) -> None:
        """
        A cipher name OpenSSL does not know fails startup at the ``ciphers`` line naming it,
        for TLS 1.2 cipher lists and TLS 1.3 cipher suites alike.
        """
        self.assertLayerError(server_conf("listener.ssl.s.ciphers = "
                                          "ECDHE-ECDSA-AES128-GCM-SHA256:NO-SUCH-CIPHER\n"),
                              "b.conf:4: listener.ssl.s.ciphers: ",
                              "unknown cipher 'NO-SUCH-CIPHER'")
        self.assertLayerError(server_conf("listener.ssl.s.tls_version = tlsv1.3\n"
                                          "listener.ssl.s.ciphers = TLS_NO_SUCH\n"),
                              "b.conf:5: listener.ssl.s.ciphers: ", "TLS_NO_SUCH")

    def test_negated_cipher_names_are_not_checked(self) -> None:
        """
        Cipher-list entries starting with ``!`` (exclusions) are not checked for existence, so
        an OpenSSL-style list such as ``HIGH:!aNULL:!MD5`` is accepted.
        """
        tls.tls_factory(listener(server_conf("listener.ssl.s.ciphers = HIGH:!aNULL:!MD5:"
                                             "!RC4-SHA\n")), Factory(), Clock())

    def test_unknown_curve(self) -> None:
        """
        An unknown curve name in ``eccs`` fails startup at the ``eccs`` line naming the curve.
        """
        self.assertLayerError(server_conf("listener.ssl.s.eccs = [secp384r1, nocurve]\n"),
                              "b.conf:4: listener.ssl.s.eccs: ", "unknown curve 'nocurve'")

    def test_unknown_tls_version(self) -> None:
        """
        An unknown ``tls_version`` is refused with ``FILE:LINE`` by the config parser, and
        again by the TLS layer for options that bypassed the parser.
        """
        # The config parser already refuses it with the line...
        with self.assertRaises(ConfigError) as cm:
            listener(server_conf("listener.ssl.s.tls_version = tlsv1.2,tlsv9\n"))
        self.assertIn("b.conf:4: listener.ssl.s.tls_version", str(cm.exception))
        # ...and so does the TLS layer, for options that did not go through it.
        lst = listener(server_conf("listener.ssl.s.tls_version = tlsv1.2\n"))
        lst = dataclasses.replace(lst, options={**lst.options, "tls_version": "sslv3"})
        with self.assertRaises(LayerError) as cm2:
            tls.tls_factory(lst, Factory(), Clock())
        self.assertIn("b.conf:4: listener.ssl.s.tls_version: unknown TLS version 'sslv3'",
                      str(cm2.exception))

    def test_psk_without_pskfile(self) -> None:
        """
        ``psk_support = on`` without a ``pskfile`` fails startup at the ``psk_support`` line.
        """
        self.assertLayerError("listener.ssl.p = 127.0.0.1:0\nlistener.ssl.p.psk_support = on\n",
                              "b.conf:2: listener.ssl.p.psk_support: ", "pskfile is not set")

    def test_missing_and_bad_pskfile(self) -> None:
        """
        An unreadable ``pskfile`` fails startup at the line that set it, and a line without the
        separator in the PSK file is reported as ``PSKFILE:LINE``.
        """
        self.assertLayerError("listener.ssl.pskfile = /no/psk\nlistener.ssl.p = 127.0.0.1:0\n"
                              "listener.ssl.p.psk_support = on\n",
                              "b.conf:1: listener.ssl.p.pskfile: cannot read /no/psk")
        bad = files().write("bad.psk", b"ok:1\n\nnoseparator\n")
        self.assertLayerError(f"listener.ssl.pskfile = {bad}\nlistener.ssl.p = 127.0.0.1:0\n"
                              "listener.ssl.p.psk_support = on\n",
                              "b.conf:1: listener.ssl.p.pskfile: ",
                              f"{bad}:3: no ':' separator")

    def test_protocol_level_option_points_at_its_line(self) -> None:
        """
        An option inherited from the protocol level (``listener.ssl.certfile``) is reported at
        the line where it was written, under the listener's own option name.
        """
        self.assertLayerError("allow_anonymous = on\nlistener.ssl.certfile = /nope.pem\n"
                              "listener.ssl.s = 127.0.0.1:0\n",
                              "b.conf:2: listener.ssl.s.certfile: cannot read /nope.pem")

    def test_require_certificate_without_cafile(self) -> None:
        """
        ``require_certificate = on`` without a ``cafile`` fails startup at the
        ``require_certificate`` line.
        """
        self.assertLayerError(server_conf("listener.ssl.s.require_certificate = on\n"),
                              "b.conf:4: listener.ssl.s.require_certificate: ",
                              "cafile is not set")

    def test_bad_crlfile(self) -> None:
        """A ``crlfile`` that holds no PEM CRL fails startup at the ``crlfile`` line."""
        bad = files().write("bad-crl.pem", b"not a crl")
        self.assertLayerError(server_conf(f"listener.ssl.s.cafile = {files().p('ca.pem')}\n"
                                          f"listener.ssl.s.crlfile = {bad}\n"),
                              "b.conf:5: listener.ssl.s.crlfile: ", "holds no PEM CRL")

    def test_build_layers_uses_this_module(self) -> None:
        """
        For an ssl listener the layer stack starts with this module's TLS listener factory and
        ends with the MQTT factory.
        """
        inner = Factory.forProtocol(Protocol)
        layers = build_layers(listener(server_conf()), inner, Clock())
        self.assertIsInstance(layers[0], tls.TLSListenerFactory)
        self.assertIs(layers[-1], inner)


class PSKFileTests(SynchronousTestCase):

    def test_vernemq_format_plus_comments(self) -> None:
        """
        The PSK file holds ``IDENTITY:KEY`` lines as VerneMQ's; the key is everything after the
        first separator, comments and blank lines are skipped, CRLF is tolerated, and a
        repeated identity takes the later key.
        """
        path = files().write("t.psk", b"# a comment\n\n  \nid1:raw text key\r\nid2:a:b:c\n"
                                      b"   # indented comment\nid1:later wins\n")
        self.assertEqual(tls.read_psk_file(path), {b"id1": b"later wins", b"id2": b"a:b:c"})

    def test_other_separator(self) -> None:
        """A configured separator other than ``:`` splits identity and key."""
        path = files().write("t2.psk", b"id1;k:1\n")
        self.assertEqual(tls.read_psk_file(path, ";"), {b"id1": b"k:1"})

    def test_errors_name_the_line(self) -> None:
        """An empty identity or an empty key is an error naming ``PATH:LINE``."""
        path = files().write("t3.psk", b"id1:k\n:nokey-identity\n")
        with self.assertRaises(tls.OptionError) as cm:
            tls.read_psk_file(path)
        self.assertIn(f"{path}:2: empty identity", str(cm.exception))
        path = files().write("t4.psk", b"id1:\n")
        with self.assertRaises(tls.OptionError) as cm:
            tls.read_psk_file(path)
        self.assertIn(f"{path}:1: empty key", str(cm.exception))


class ContextTests(SynchronousTestCase):

    def creator(self, extra: str = "", text: str | None = None) -> tls.ServerTLSOptions:
        return tls.ServerTLSOptions(listener(text if text is not None else server_conf(extra)))

    def test_sends_the_full_chain_and_release_buffers(self) -> None:
        """
        The server sends its certificate together with the intermediate from the ``certfile``,
        and the context releases idle buffers (``SSL_MODE_RELEASE_BUFFERS``) to save memory per
        connection.
        """
        creator = self.creator()
        self.assertTrue(creator.context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS)
        client = connect(creator, client_ctx())
        chain = client.get_peer_cert_chain()
        self.assertEqual(len(chain), 2)  # leaf + intermediate
        self.assertEqual(chain[0].to_cryptography().serial_number, files().serials["server"])

    def test_versions_are_pinned(self) -> None:
        """
        ``tls_version`` lists the exact protocol versions accepted: with ``tlsv1.1,tlsv1.3``
        TLS 1.1 and TLS 1.3 clients connect, while TLS 1.0 and TLS 1.2 clients (the version
        in between included) fail the handshake.
        """
        creator = self.creator("listener.ssl.s.tls_version = tlsv1.1,tlsv1.3\n")
        for version, ok in ((SSL.TLS1_VERSION, False), (SSL.TLS1_1_VERSION, True),
                            (SSL.TLS1_2_VERSION, False), (SSL.TLS1_3_VERSION, True)):
            ctx = client_ctx(versions=(version, version))
            if ok:
                connect(creator, ctx)
            else:
                self.assertRaises(SSL.Error, connect, creator, ctx)

    def test_default_is_tls12_and_tls13(self) -> None:
        """Without ``tls_version`` the listener speaks TLS 1.2 and 1.3 (#14; VerneMQ: 1.2
        only) and negotiates 1.3; TLS 1.1 is refused."""
        creator = self.creator()
        client = connect(creator, client_ctx())
        self.assertEqual(client.get_protocol_version_name(), "TLSv1.3")
        v12 = SSL.TLS1_2_VERSION
        client = connect(creator, client_ctx(versions=(v12, v12)))
        self.assertEqual(client.get_protocol_version_name(), "TLSv1.2")
        v11 = SSL.TLS1_1_VERSION
        self.assertRaises(SSL.Error, connect, creator, client_ctx(versions=(v11, v11)))

    def test_client_certificates_and_crl(self) -> None:
        """
        With ``require_certificate`` and a ``cafile``, a client certificate from the CA is
        accepted, one revoked in the ``crlfile`` is refused, and a client without a certificate
        is refused.
        """
        f = files()
        creator = self.creator(f"listener.ssl.s.cafile = {f.p('ca.pem')}\n"
                               "listener.ssl.s.require_certificate = on\n"
                               f"listener.ssl.s.crlfile = {f.p('crl.pem')}\n")
        connect(creator, client_ctx(cert="alice"))
        self.assertRaises(SSL.Error, connect, creator, client_ctx(cert="mallory"))
        self.assertRaises(SSL.Error, connect, creator, client_ctx())

    def test_psk_identity_is_captured(self) -> None:
        """
        A TLS-PSK handshake with a known identity and key succeeds and the identity is recorded
        for the connection; a wrong key or an unknown identity fails the handshake.
        """
        f = files()
        creator = self.creator(text=f"listener.ssl.pskfile = {f.p('psk.txt')}\n"
                                    "listener.ssl.p = 127.0.0.1:0\n"
                                    "listener.ssl.p.psk_support = on\n")
        server = creator.serverConnectionForTLS(None)
        handshake(server, client_ctx(psk=(b"id2", b"k:two"), ca=False))
        self.assertEqual(tls.PSK_IDENTITIES.get(server), "id2")
        self.assertRaises(SSL.Error, connect, creator,
                          client_ctx(psk=(b"id2", b"wrong"), ca=False))
        self.assertRaises(SSL.Error, connect, creator,
                          client_ctx(psk=(b"nobody", b"k:two"), ca=False))


class ReloadTests(SynchronousTestCase):

    def setUp(self) -> None:
        f = files()
        self.dir = tempfile.mkdtemp(prefix="vmqtw-tls-reload-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        for name in ("server.pem", "server.key", "crl.pem", "psk.txt"):
            shutil.copy(f.p(name), os.path.join(self.dir, name))
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def test_reload_new_certificate_and_bad_file(self) -> None:
        """
        Reload (as on SIGHUP) switches new connections to a renewed certificate; a reload with
        a key that does not match keeps the previous context serving and logs one failure
        naming the file and the reason.
        """
        f = files()
        factory = tls.tls_factory(listener(
            f"listener.ssl.s = 127.0.0.1:0\nlistener.ssl.s.certfile = {self.path('server.pem')}\n"
            f"listener.ssl.s.keyfile = {self.path('server.key')}\n"), Factory(), Clock())
        old = factory.creator.context
        renewed = f.inter.issue_cert("127.0.0.1", common_name="broker")
        with open(self.path("server.pem"), "wb") as fh:
            fh.write(b"".join(b.bytes() for b in renewed.cert_chain_pems))
        renewed.private_key_pem.write_to_path(self.path("server.key"))
        self.assertTrue(factory.reload())
        client = connect(factory.creator, client_ctx())
        new_serial = client.get_peer_certificate().to_cryptography().serial_number
        self.assertNotEqual(new_serial, f.serials["server"])
        self.assertIsNot(factory.creator.context, old)

        # A key that does not match: the previous context stays, and the log says why.
        shutil.copy(f.p("other.key"), self.path("server.key"))
        current = factory.creator.context
        self.assertFalse(factory.reload())
        self.assertIs(factory.creator.context, current)
        client = connect(factory.creator, client_ctx())
        self.assertEqual(client.get_peer_certificate().to_cryptography().serial_number,
                         new_serial)
        failures = [e for e in self.events if "TLS reload failed" in e.get("log_format", "")]
        self.assertEqual(len(failures), 1)
        self.assertIn(self.path("server.key"), failures[0]["reason"])
        self.assertIn("does not match", failures[0]["reason"])

    def test_reload_picks_up_the_psk_file(self) -> None:
        """
        Reload re-reads the PSK file: an identity added to it can connect afterwards, and the
        existing ones still can.
        """
        factory = tls.tls_factory(listener(
            f"listener.ssl.pskfile = {self.path('psk.txt')}\nlistener.ssl.p = 127.0.0.1:0\n"
            "listener.ssl.p.psk_support = on\n"), Factory(), Clock())
        new = client_ctx(psk=(b"newid", b"newkey"), ca=False)
        self.assertRaises(SSL.Error, connect, factory.creator, new)
        with open(self.path("psk.txt"), "ab") as fh:
            fh.write(b"newid:newkey\n")
        self.assertTrue(factory.reload())
        connect(factory.creator, new)
        connect(factory.creator, client_ctx(psk=(b"id1", b"key-one"), ca=False))

    def test_crl_refresh_on_a_clock(self) -> None:
        """
        The CRL file is checked every refresh interval: an unchanged file keeps the context, a
        changed one takes effect at the next tick (not before), a broken one keeps the last
        good CRL, and stopping the factory cancels the timer.
        """
        f = files()
        clock = Clock()
        lst = listener(server_conf(f"listener.ssl.s.cafile = {f.p('ca.pem')}\n"
                                   "listener.ssl.s.require_certificate = on\n"
                                   f"listener.ssl.s.crlfile = {self.path('crl.pem')}\n"))
        factory = tls.TLSListenerFactory(tls.ServerTLSOptions(lst), Factory(), clock, 60.0)
        factory.doStart()
        connect(factory.creator, client_ctx(cert="alice"))
        clock.advance(60)  # unchanged file: same context
        self.assertEqual(factory.creator.generation, 0)
        with open(self.path("crl.pem"), "wb") as fh:
            fh.write(f.crl([f.serials["mallory"], f.serials["alice"]]))
        clock.advance(59)
        connect(factory.creator, client_ctx(cert="alice"))
        clock.advance(1)
        self.assertEqual(factory.creator.generation, 1)
        self.assertRaises(SSL.Error, connect, factory.creator, client_ctx(cert="alice"))
        # a broken CRL file keeps the last good CRL
        with open(self.path("crl.pem"), "wb") as fh:
            fh.write(b"broken")
        clock.advance(60)
        self.assertEqual(factory.creator.generation, 1)
        self.assertRaises(SSL.Error, connect, factory.creator, client_ctx(cert="alice"))
        factory.doStop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_crl_interval_comes_from_the_broker_config(self) -> None:
        """
        The CRL refresh interval is the broker's ``crl_refresh_interval`` in milliseconds; 0
        turns the refresh off.
        """
        f = files()
        config = parse("crl_refresh_interval = 2500\n" + server_conf(
            f"listener.ssl.s.cafile = {f.p('ca.pem')}\n"
            f"listener.ssl.s.crlfile = {f.p('crl.pem')}\n"), "b.conf")

        class Inner(Factory):
            broker = type("B", (), {"config": config})()

        factory = tls.tls_factory(config.listeners[0], Inner(), Clock())
        self.assertEqual(factory.crl_refresh_interval, 2.5)
        none = parse("crl_refresh_interval = 0\n" + server_conf(), "b.conf")
        Inner.broker.config = none
        self.assertIsNone(tls.tls_factory(none.listeners[0], Inner(), Clock())
                          .crl_refresh_interval)


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class HandshakeTimeoutTests(SynchronousTestCase):

    def factory(self, ms: str, extra: str = "") -> tuple[tls.TLSListenerFactory, Clock]:
        clock = Clock()
        lst = listener(server_conf(f"listener.ssl.s.tls_handshake_timeout = {ms}\n" + extra))
        return tls.tls_factory(lst, Factory.forProtocol(Recorder), clock), clock

    def connection(self, factory: tls.TLSListenerFactory) -> tuple[Any, StringTransport]:
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
        proto.makeConnection(transport)
        return proto, transport

    def test_silent_client_is_dropped(self) -> None:
        """
        A client that sends nothing is disconnected exactly when ``tls_handshake_timeout`` (in
        milliseconds) runs out, the timeout is counted, and no timer is left once the
        connection is lost.
        """
        factory, clock = self.factory("250")
        proto, transport = self.connection(factory)
        clock.advance(0.249)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.001)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(factory.handshake_timeouts, 1)
        proto.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_finished_handshake_cancels_the_timer(self) -> None:
        """
        A completed handshake cancels the handshake timer, so the connection is not dropped
        later.
        """
        factory, clock = self.factory("250")
        proto, transport = self.connection(factory)
        client = SSL.Connection(client_ctx(), None)
        client.set_connect_state()
        for _ in range(10):
            try:
                client.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                out = client.bio_read(65536)
            except SSL.WantReadError:
                out = b""
            if out:
                proto.dataReceived(out)
            back = transport.value()
            transport.clear()
            if back:
                client.bio_write(back)
            if proto._handshakeDone and not back:
                break
        self.assertTrue(proto._handshakeDone)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10)
        self.assertFalse(transport.disconnecting)

    def test_infinity_and_zero_mean_no_timer(self) -> None:
        """``tls_handshake_timeout = infinity`` or ``0`` sets no handshake timer."""
        for value in ("infinity", "0"):
            factory, clock = self.factory(value)
            self.assertIsNone(factory.handshake_timeout)
            self.connection(factory)
            self.assertEqual(clock.getDelayedCalls(), [])


class IdentityTests(SynchronousTestCase):
    """psk_identity and getPeerCertificate() on TLSServerProtocol are what
    identity.preauth_username finds."""

    def test_psk_identity_attribute(self) -> None:
        """
        After a TLS-PSK handshake the TLS protocol exposes ``psk_identity`` (``None`` before),
        and with ``use_identity_as_username = on`` it becomes the pre-auth username.
        """
        f = files()
        lst = listener(f"listener.ssl.pskfile = {f.p('psk.txt')}\nlistener.ssl.p = 127.0.0.1:0\n"
                       "listener.ssl.p.psk_support = on\n"
                       "listener.ssl.p.use_identity_as_username = on\n")
        factory = tls.tls_factory(lst, Factory.forProtocol(Recorder), Clock())
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = StringTransport()
        proto.makeConnection(transport)
        self.assertIsNone(proto.psk_identity)
        client = SSL.Connection(client_ctx(psk=(b"id1", b"key-one"), ca=False), None)
        client.set_connect_state()
        for _ in range(10):
            try:
                client.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                proto.dataReceived(client.bio_read(65536))
            except SSL.WantReadError:
                pass
            back = transport.value()
            transport.clear()
            if back:
                client.bio_write(back)
        self.assertEqual(proto.psk_identity, "id1")
        self.assertEqual(preauth_username(proto.wrappedProtocol.transport, lst), "id1")
        proto.connectionLost(None)


class ConnectionHelperTests(SynchronousTestCase):
    """The per-connection helpers of ``vmqtw.transport.tls_io``."""

    def test_renewed_bios_keep_unread_bytes(self) -> None:
        """``_renew_bios`` gives a connection two new memory BIOs and moves the
        bytes still unread in the old ones over, in order."""
        from vmqtw.transport.tls_io import _lib, _renew_bios
        conn = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        old_in, old_out = conn._into_ssl, conn._from_ssl
        conn.bio_write(b"inbound bytes")
        _lib.BIO_write(conn._from_ssl, b"outbound" * 1000, 8000)
        _renew_bios(conn)
        self.assertNotEqual((conn._into_ssl, conn._from_ssl), (old_in, old_out))
        self.assertEqual(conn.bio_read(100000), b"outbound" * 1000)
        buf = tls_io_buffer(64)
        n = _lib.BIO_read(conn._into_ssl, buf, 64)
        self.assertEqual(tls_io_bytes(buf, n), b"inbound bytes")

    def test_turn_flusher_flushes_each_connection_once_per_turn(self) -> None:
        """``_TurnFlusher`` schedules one call per reactor turn for all the
        connections written to, and flushes them in the order they came."""
        from vmqtw.transport.tls_io import _TurnFlusher
        clock = Clock()
        flusher = _TurnFlusher(clock)
        flushed: list[str] = []

        class P:
            def __init__(self, name: str) -> None:
                self.name = name

            def _flush_pending(self) -> None:
                flushed.append(self.name)

        flusher.add(P("a"))
        flusher.add(P("b"))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0)
        self.assertEqual(flushed, ["a", "b"])
        self.assertEqual(clock.getDelayedCalls(), [])


def tls_io_buffer(n: int) -> Any:
    from vmqtw.transport.tls_io import _ffi
    return _ffi.new("char[]", n)


def tls_io_bytes(buf: Any, n: int) -> bytes:
    from vmqtw.transport.tls_io import _ffi
    return bytes(_ffi.buffer(buf, n))
