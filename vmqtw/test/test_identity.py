"""The identity helper: peer addresses and the pre-auth username from lower layers."""
from __future__ import annotations

import trustme
from OpenSSL import crypto
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.config import parse
from vmqtw.transport.identity import certificate_cn, peer_of, preauth_username, transports


class Layer:
    """A transport in a chain: wrappers expose the next one as ``.transport``."""

    def __init__(self, below: object = None, **attrs: object) -> None:
        self.transport = below
        self.__dict__.update(attrs)


def listener(extra: str = "", kind: str = "ssl") -> object:
    text = f"listener.{kind}.l = 127.0.0.1:0\n{extra}"
    if kind == "ssl":
        text += "listener.ssl.certfile = x\nlistener.ssl.keyfile = y\n"
    return parse(text, "t.conf").listeners[0]


def cert_with_cn(cn: str) -> crypto.X509:
    ca = trustme.CA()
    pem = ca.issue_cert("client.example", common_name=cn).cert_chain_pems[0].bytes()
    return crypto.load_certificate(crypto.FILETYPE_PEM, pem)


class ChainTests(SynchronousTestCase):
    def test_walks_every_layer(self) -> None:
        """
        ``transports`` yields the outermost transport first, then each wrapped ``.transport``
        down to the bottom of the chain.
        """
        bottom = Layer()
        middle = Layer(bottom)
        top = Layer(middle)
        self.assertEqual(list(transports(top)), [top, middle, bottom])

    def test_a_cycle_does_not_hang(self) -> None:
        """
        A transport chain that loops back on itself is walked at most 16 layers deep instead of
        forever.
        """
        a = Layer()
        a.transport = a
        self.assertEqual(len(list(transports(a))), 16)

    def test_peer_of_tcp_and_unix(self) -> None:
        """
        ``peer_of`` reports a TCP peer as ``(host, port)`` and a Unix socket peer as
        ``("local:PATH", 0)``, VerneMQ's ``local:`` address form.
        """
        tcp = Layer(getPeer=lambda: IPv4Address("TCP", "10.1.2.3", 4567))
        self.assertEqual(peer_of(tcp), ("10.1.2.3", 4567))
        unix = Layer(getPeer=lambda: UNIXAddress(b"/tmp/s.sock"))
        self.assertEqual(peer_of(unix), ("local:/tmp/s.sock", 0))

    def test_peer_of_a_broken_transport(self) -> None:
        """
        A transport whose ``getPeer()`` raises yields the empty peer ``("", 0)`` rather than an
        error.
        """
        def boom() -> None:
            raise OSError("gone")
        self.assertEqual(peer_of(Layer(getPeer=boom)), ("", 0))


class PreauthTests(SynchronousTestCase):
    def test_certificate_cn(self) -> None:
        """
        ``certificate_cn`` returns the CommonName of a client certificate, and ``None`` when
        there is no certificate.
        """
        self.assertEqual(certificate_cn(cert_with_cn("alice")), "alice")
        self.assertIsNone(certificate_cn(None))

    def test_off_by_default(self) -> None:
        """
        Without ``use_identity_as_username`` a TLS client certificate's CN does not replace the
        CONNECT username.
        """
        chain = Layer(getPeerCertificate=lambda: cert_with_cn("alice"))
        self.assertIsNone(preauth_username(chain, listener()))

    def test_certificate_cn_with_use_identity_as_username(self) -> None:
        """
        With ``use_identity_as_username = on`` the CN of the client certificate, found on a TLS
        layer below the top transport, becomes the username (VerneMQ's behaviour for ssl
        listeners).
        """
        tls = Layer(Layer(), getPeerCertificate=lambda: cert_with_cn("alice"))
        top = Layer(tls)
        l = listener("listener.ssl.l.use_identity_as_username = on\n")
        self.assertEqual(preauth_username(top, l), "alice")

    def test_no_certificate_keeps_the_connect_username(self) -> None:
        """
        With ``use_identity_as_username = on`` but no client certificate, no pre-auth username
        is set, so the username from CONNECT is kept.
        """
        tls = Layer(getPeerCertificate=lambda: None)
        l = listener("listener.ssl.l.use_identity_as_username = on\n")
        self.assertIsNone(preauth_username(tls, l))

    def test_psk_identity(self) -> None:
        """
        With ``use_identity_as_username = on`` a TLS-PSK identity on the TLS layer becomes the
        username.
        """
        tls = Layer(psk_identity="device-7", getPeerCertificate=lambda: None)
        l = listener("listener.ssl.l.use_identity_as_username = on\n")
        self.assertEqual(preauth_username(tls, l), "device-7")

    def test_proxy_cn_needs_proxy_protocol_on(self) -> None:
        """
        A PROXY v2 header's TLS client CN becomes the username only when the listener has
        ``proxy_protocol = on``; ``proxy_protocol_use_cn_as_username`` is on by default when
        trusted sources are set (off without them) and turning it off keeps the CONNECT
        username.
        """
        info = Layer(ssl_cn="bob")
        chain = Layer(Layer(proxy_info=info))
        self.assertIsNone(preauth_username(chain, listener(kind="tcp")))
        untrusted = listener("listener.tcp.l.proxy_protocol = on\n", kind="tcp")
        self.assertIsNone(preauth_username(chain, untrusted))
        on = listener("listener.tcp.l.proxy_protocol = on\n"
                      "listener.tcp.l.proxy_protocol_trusted_sources = 10.0.0.0/8\n", kind="tcp")
        self.assertEqual(preauth_username(chain, on), "bob")
        off = listener("listener.tcp.l.proxy_protocol = on\n"
                       "listener.tcp.l.proxy_protocol_use_cn_as_username = off\n", kind="tcp")
        self.assertIsNone(preauth_username(chain, off))

    def test_proxy_without_cn_falls_back(self) -> None:
        """A PROXY header without a TLS CN leaves the username from CONNECT in place."""
        chain = Layer(proxy_info=Layer(ssl_cn=None))
        on = listener("listener.tcp.l.proxy_protocol = on\n", kind="tcp")
        self.assertIsNone(preauth_username(chain, on))


class XffTests(SynchronousTestCase):
    def test_websocket_cn_header(self) -> None:
        """
        On a ws listener, the CN header passed on by a TLS-terminating HTTP proxy (``xff_cn``
        on the WebSocket layer) becomes the username.
        """
        ws = Layer(Layer(), xff_cn="carol")
        self.assertEqual(preauth_username(Layer(ws), listener(kind="ws")), "carol")

    def test_no_header_cn(self) -> None:
        """A WebSocket layer without a CN header gives no pre-auth username."""
        ws = Layer(Layer(), xff_cn=None)
        self.assertIsNone(preauth_username(Layer(ws), listener(kind="ws")))
