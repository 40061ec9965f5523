"""The standard library's TLS engine (``vmqtw.transport.tls_stdlib``): which
listeners get it, and that it serves them through the same TLS protocol layer
(handshakes run against a pyOpenSSL client over ``StringTransport``)."""
from __future__ import annotations

import ssl
import trustme
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.test.test_tls import Recorder, client_ctx, files, listener, server_conf
from vmqtw.transport import tls
from vmqtw.transport.identity import preauth_username
from vmqtw.transport.tls_stdlib import StdlibConnection

_PEER = IPv4Address("TCP", "127.0.0.1", 5555)


def mtls_conf(extra: str = "") -> str:
    return server_conf(f"listener.ssl.s.cafile = {files().p('ca.pem')}\n"
                       "listener.ssl.s.require_certificate = on\n" + extra)


def crl_conf(fail_closed: bool) -> str:
    return mtls_conf(f"listener.ssl.s.crlfile = {files().p('crl.pem')}\n"
                     + ("listener.ssl.s.crl_fail_closed = on\n" if fail_closed else ""))


def other_ca_client() -> str:
    """A client certificate from a CA the listeners do not trust: its name."""
    f = files()
    cert = trustme.CA().issue_cert("stranger.example", common_name="stranger")
    cert.cert_chain_pems[0].write_to_path(f.p("stranger.pem"))
    cert.private_key_pem.write_to_path(f.p("stranger.key"))
    return "stranger"


class Pair:
    """A listener's TLS protocol on a StringTransport and a pyOpenSSL client,
    pumped by hand."""

    def __init__(self, conf: str, client: SSL.Context, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.listener = listener(conf)
        self.factory = tls.tls_factory(self.listener, Factory.forProtocol(Recorder), self.clock)
        self.proto = self.factory.buildProtocol(_PEER)
        self.transport = StringTransport(peerAddress=_PEER)
        self.proto.makeConnection(self.transport)
        self.client = SSL.Connection(client, None)
        self.client.set_connect_state()
        self.client_data = b""
        self.client_error: SSL.Error | None = None

    @property
    def app(self) -> Recorder:
        return self.proto.wrappedProtocol

    def pump(self, rounds: int = 20) -> None:
        """Move bytes both ways until nothing moves (at most ``rounds`` times)."""
        for _ in range(rounds):
            moved = False
            if self.client_error is None:
                try:
                    self.client.do_handshake()
                    while True:
                        self.client_data += self.client.recv(65536)
                except (SSL.WantReadError, SSL.ZeroReturnError):
                    pass
                except SSL.Error as e:
                    self.client_error = e
            try:
                out = self.client.bio_read(1 << 20)
            except SSL.WantReadError:
                out = b""
            if out and not self.transport.disconnecting:
                moved = True
                self.proto.dataReceived(out)
            self.clock.advance(0)  # the end-of-turn flush
            back = self.transport.value()
            self.transport.clear()
            if back:
                moved = True
                self.client.bio_write(back)
            if not moved:
                return

    def client_send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.client.send(view[:16384]):]


class EngineChoiceTests(SynchronousTestCase):
    """Every listener the standard library can serve exactly gets it; PSK and
    VerneMQ's lenient CRL rule stay on pyOpenSSL."""

    def engine(self, conf: str) -> str:
        return tls.ServerTLSOptions(listener(conf)).engine

    def test_engines(self) -> None:
        """Plain TLS, mTLS, tls_version/ciphers/eccs and a CRL with crl_fail_closed get
        the stdlib engine; PSK and a CRL without crl_fail_closed get pyOpenSSL."""
        f = files()
        self.assertEqual(self.engine(server_conf()), "stdlib")
        self.assertEqual(self.engine(mtls_conf("listener.ssl.s.use_identity_as_username = on\n")),
                         "stdlib")
        self.assertEqual(self.engine(server_conf(
            "listener.ssl.s.tls_version = tlsv1.2\n"
            "listener.ssl.s.ciphers = ECDHE-RSA-AES128-GCM-SHA256\n"
            "listener.ssl.s.eccs = prime256v1\n")), "stdlib")
        self.assertEqual(self.engine(crl_conf(fail_closed=True)), "stdlib")
        self.assertEqual(self.engine(crl_conf(fail_closed=False)), "pyopenssl")
        psk = (f"listener.ssl.pskfile = {f.p('psk.txt')}\nlistener.ssl.p = 127.0.0.1:0\n"
               "listener.ssl.p.psk_support = on\n")
        self.assertEqual(self.engine(psk), "pyopenssl")

    def test_unchecked_interpreter_gets_pyopenssl(self) -> None:
        """On an interpreter whose ``_ssl`` object layout was not checked every listener
        gets pyOpenSSL, with the reason (the engine reads CPython's private fields)."""
        from vmqtw.transport import tls_stdlib
        self.patch(tls_stdlib, "CHECKED_LAYOUTS", ())
        self.assertEqual(self.engine(server_conf()), "pyopenssl")
        self.assertIn("is not checked", tls_stdlib.stdlib_refusal(
            tls.ServerTLSOptions(listener(server_conf())).settings) or "")

    def test_choice_is_logged_at_debug(self) -> None:
        """The engine chosen, and why pyOpenSSL when it is, is logged at debug."""
        from vmqtw import logs
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        logs.set_level("debug")
        self.addCleanup(logs.set_level, "info")
        tls.ServerTLSOptions(listener(crl_conf(fail_closed=False)))
        tls.ServerTLSOptions(listener(server_conf()))
        from twisted.logger import formatEvent
        lines = [formatEvent(e) for e in events if e.get("log_namespace") == "vmqtw.tls"]
        self.assertTrue(any("TLS engine pyopenssl (crlfile without crl_fail_closed" in line
                            for line in lines), lines)
        self.assertTrue(any(line.endswith("TLS engine stdlib") for line in lines), lines)

    def test_connections_come_from_the_chosen_engine(self) -> None:
        """A stdlib listener hands out ``StdlibConnection`` objects, a pyOpenSSL one
        ``SSL.Connection`` objects."""
        self.assertIsInstance(tls.ServerTLSOptions(listener(server_conf()))
                              .serverConnectionForTLS(None), StdlibConnection)
        self.assertIsInstance(tls.ServerTLSOptions(listener(crl_conf(False)))
                              .serverConnectionForTLS(None), SSL.Connection)


class StdlibServesTests(SynchronousTestCase):
    """The stdlib engine behind ``TLSServerProtocol``."""

    def test_plain_tls_round_trip(self) -> None:
        """A TLS handshake completes, application bytes reach the wrapped protocol, its
        writes reach the client, and the connection runs on the system OpenSSL."""
        pair = Pair(server_conf(), client_ctx())
        self.assertIsInstance(pair.proto._tlsConnection, StdlibConnection)
        pair.pump()
        self.assertTrue(pair.proto._handshakeDone)
        pair.client_send(b"hello")
        pair.pump()
        self.assertEqual(pair.app.data, b"hello")
        pair.app.transport.write(b"world")
        pair.pump()
        self.assertEqual(pair.client_data, b"world")
        self.assertEqual(pair.client.get_protocol_version_name(), "TLSv1.3")
        self.assertIsNone(pair.proto.psk_identity)

    def test_large_payload_both_ways(self) -> None:
        """Application data of 200 KiB (many 16 KiB records) arrives whole and in order
        in both directions."""
        pair = Pair(server_conf(), client_ctx())
        pair.pump()
        up = bytes(range(256)) * 800
        pair.client_send(up)
        pair.pump(50)
        self.assertEqual(pair.app.data, up)
        down = bytes(reversed(up))
        pair.app.transport.write(down)
        pair.pump(50)
        self.assertEqual(pair.client_data, down)

    def test_mtls_identity_is_the_preauth_username(self) -> None:
        """With ``use_identity_as_username``, a client certificate from the trusted CA is
        accepted and its CN becomes the pre-auth username."""
        pair = Pair(mtls_conf("listener.ssl.s.use_identity_as_username = on\n"),
                    client_ctx(cert="alice"))
        pair.pump()
        self.assertTrue(pair.proto._handshakeDone)
        self.assertFalse(pair.transport.disconnecting)
        self.assertIsNone(pair.client_error)
        self.assertEqual(preauth_username(pair.app.transport, pair.listener), "alice")

    def test_client_without_certificate_refused(self) -> None:
        """``require_certificate``: a client without a certificate fails the handshake."""
        pair = Pair(mtls_conf(), client_ctx())
        pair.pump()
        self.assertTrue(pair.transport.disconnecting)
        self.assertEqual(pair.app.data, b"")

    def test_wrong_ca_refused(self) -> None:
        """A client certificate from an untrusted CA fails the handshake and the failure
        is logged with OpenSSL's reason."""
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        pair = Pair(mtls_conf(), client_ctx(cert=other_ca_client()))
        pair.pump()
        self.assertTrue(pair.transport.disconnecting)
        pair.proto.connectionLost(None)
        from twisted.logger import formatEvent
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("unable to get local issuer certificate", text)

    def test_revoked_client_refused_by_crl(self) -> None:
        """With ``crl_fail_closed``, a revoked client certificate fails the handshake and
        one that is not revoked is accepted."""
        pair = Pair(crl_conf(fail_closed=True), client_ctx(cert="mallory"))
        self.assertIsInstance(pair.proto._tlsConnection, StdlibConnection)
        pair.pump()
        self.assertTrue(pair.transport.disconnecting)
        good = Pair(crl_conf(fail_closed=True), client_ctx(cert="alice"))
        good.pump()
        self.assertTrue(good.proto._handshakeDone)
        self.assertFalse(good.transport.disconnecting)

    def test_unreadable_crl_refuses_every_client(self) -> None:
        """With ``crl_fail_closed``, a CRL file that cannot be read at a refresh refuses
        every client certificate until it can be read again."""
        f = files()
        path = f.write("crl-moving.pem", f.crl([f.serials["mallory"]]))
        conf = mtls_conf(f"listener.ssl.s.crlfile = {path}\nlistener.ssl.s.crl_fail_closed = on\n")
        pair = Pair(conf, client_ctx(cert="alice"))
        creator = pair.factory.creator
        import os
        os.rename(path, path + ".away")
        self.assertFalse(creator.refresh_crl())
        creator.reload()
        second = pair.factory.buildProtocol(_PEER)
        pair.proto, pair.transport = second, StringTransport(peerAddress=_PEER)
        second.makeConnection(pair.transport)
        pair.pump()
        self.assertTrue(pair.transport.disconnecting)
        os.rename(path + ".away", path)
        f.write("crl-moving.pem", f.crl([f.serials["mallory"]]))  # a changed file
        self.assertTrue(creator.refresh_crl())
        self.assertEqual(creator.engine, "stdlib")
        back = Pair(conf, client_ctx(cert="alice"))
        back.factory = pair.factory
        third = pair.factory.buildProtocol(_PEER)
        back.proto, back.transport = third, StringTransport(peerAddress=_PEER)
        third.makeConnection(back.transport)
        back.pump()
        self.assertTrue(third._handshakeDone)
        self.assertFalse(back.transport.disconnecting)

    def test_self_signed_leaf_refused(self) -> None:
        """A trusted self-signed client certificate is closed as soon as the handshake
        completes, before any application byte reaches the wrapped protocol."""
        f = files()
        ca = trustme.CA()
        ca.cert_pem.write_to_path(f.p("selfie.pem"))
        ca.private_key_pem.write_to_path(f.p("selfie.key"))
        with open(f.p("ca+selfie.pem"), "wb") as out:
            out.write(open(f.p("ca.pem"), "rb").read() + ca.cert_pem.bytes())
        conf = server_conf(f"listener.ssl.s.cafile = {f.p('ca+selfie.pem')}\n"
                           "listener.ssl.s.require_certificate = on\n")
        pair = Pair(conf, client_ctx(cert="selfie"))
        pair.pump()
        pair.client_send(b"CONNECT")
        pair.pump()
        self.assertTrue(pair.transport.disconnecting)
        self.assertEqual(pair.app.data, b"")

    def test_tls_version_limits(self) -> None:
        """A TLS 1.3-only listener refuses a TLS 1.2 client and a TLS 1.2-only listener a
        TLS 1.3 client; matching clients get the listed version."""
        only13 = server_conf("listener.ssl.s.tls_version = tlsv1.3\n")
        only12 = server_conf("listener.ssl.s.tls_version = tlsv1.2\n")
        v12, v13 = SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION
        for conf, versions, ok, name in ((only13, (v12, v12), False, ""),
                                         (only13, (v13, v13), True, "TLSv1.3"),
                                         (only12, (v13, v13), False, ""),
                                         (only12, (v12, v13), True, "TLSv1.2")):
            pair = Pair(conf, client_ctx(versions=versions))
            pair.pump()
            self.assertEqual(pair.proto._handshakeDone, ok, (conf, versions))
            if ok:
                self.assertEqual(pair.client.get_protocol_version_name(), name)
            else:
                self.assertIsNotNone(pair.client_error)

    def test_handshake_timeout(self) -> None:
        """A client that stops in mid-handshake is dropped when ``tls_handshake_timeout``
        runs out, and counted."""
        clock = Clock()
        pair = Pair(server_conf("listener.ssl.s.tls_handshake_timeout = 250\n"),
                    client_ctx(), clock)
        try:
            pair.client.do_handshake()
        except SSL.WantReadError:
            pass
        pair.proto.dataReceived(pair.client.bio_read(65536))  # the ClientHello only
        clock.advance(0.249)
        self.assertFalse(pair.transport.disconnecting)
        clock.advance(0.001)
        self.assertTrue(pair.transport.disconnecting)
        self.assertEqual(pair.factory.handshake_timeouts, 1)

    def test_client_closes_mid_handshake(self) -> None:
        """A client that sends its ClientHello and closes is cleaned up: no error logged,
        no timer left, the wrapped protocol never sees data."""
        clock = Clock()
        pair = Pair(server_conf("listener.ssl.s.tls_handshake_timeout = 250\n"),
                    client_ctx(), clock)
        try:
            pair.client.do_handshake()
        except SSL.WantReadError:
            pass
        pair.proto.dataReceived(pair.client.bio_read(65536))
        app = pair.app
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        pair.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(app.data, b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_clean_close_both_ways(self) -> None:
        """A client's close_notify ends the connection cleanly, and the server's
        ``loseConnection`` sends one the client reads as a clean end."""
        pair = Pair(server_conf(), client_ctx())
        pair.pump()
        pair.app.transport.loseConnection()
        pair.pump()
        self.assertEqual(pair.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN,
                         SSL.RECEIVED_SHUTDOWN)
        self.assertFalse(pair.transport.disconnecting)  # waits for the client's
        pair.client.shutdown()
        pair.pump()
        self.assertTrue(pair.transport.disconnecting)

    def test_client_close_notify(self) -> None:
        """A client's close_notify on an idle connection ends it: the server answers
        with its own and closes the transport (no loop on the end of the stream)."""
        pair = Pair(server_conf(), client_ctx())
        pair.pump()
        pair.client.shutdown()
        pair.pump()
        self.assertTrue(pair.transport.disconnecting)
        self.assertEqual(pair.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN,
                         SSL.RECEIVED_SHUTDOWN)

    def test_handle_as_pyopenssl_callers_expect(self) -> None:
        """``getHandle()`` is an ``SSL.Connection`` (autobahn checks it on wss), with no
        peer certificate before the handshake, and the client's Finished message
        (tls-unique) after it."""
        pair = Pair(mtls_conf(), client_ctx(cert="alice"))
        handle = pair.proto.getHandle()
        self.assertIsInstance(handle, SSL.Connection)
        self.assertIsNone(pair.proto.getPeerCertificate())
        self.assertIsNone(handle.get_peer_finished())
        pair.pump()
        self.assertEqual(handle.get_peer_finished(), pair.client.get_finished())
        self.assertEqual(pair.proto.getPeerCertificate().get_subject().CN, "alice")
        self.assertRaises(AttributeError, handle.get_cipher_list)  # no pyOpenSSL SSL behind

    def test_bios_renewed_after_the_handshake(self) -> None:
        """Once the handshake is through, the connection gets two new memory BIOs (the
        old ones kept the flights' buffers), and traffic goes on over the new ones."""
        pair = Pair(server_conf(), client_ctx())
        conn = pair.proto._tlsConnection
        first = (conn._in, conn._out)
        pair.pump()
        self.assertTrue(pair.proto._handshakeDone)
        self.assertIsNot(conn._in, first[0])
        self.assertIsNot(conn._out, first[1])
        pair.client_send(b"after")
        pair.pump()
        self.assertEqual(pair.app.data, b"after")

    def test_bio_renewal_keeps_unread_bytes(self) -> None:
        """``renew_bios`` moves bytes not yet read by OpenSSL (in) or by us (out) to the
        new BIOs, in order."""
        conn = tls.ServerTLSOptions(listener(server_conf())).serverConnectionForTLS(None)
        conn.bio_write(b"in-1")
        conn._out.write(b"out-1")
        conn.renew_bios()
        self.assertEqual(conn._in.read(), b"in-1")
        self.assertEqual(conn.bio_read(100), b"out-1")

    def test_system_openssl(self) -> None:
        """The stdlib engine's connections run on the ssl module's OpenSSL."""
        conn = tls.ServerTLSOptions(listener(server_conf())).serverConnectionForTLS(None)
        self.assertIsInstance(conn._obj, ssl._ssl._SSLSocket)  # type: ignore[attr-defined]
