"""TLS clients for the tests.

- ``probe(port, ...)``: an in-reactor pyOpenSSL client (cryptography's OpenSSL)
  with exact control over versions, ciphers, curves, client certificate and
  PSK.  It completes the handshake, sends CONNECT and reads CONNACK, and
  reports the negotiated version, cipher and the server's certificate chain.
  A refusal (handshake failure, or the broker closing before CONNACK, which is
  how a TLS 1.3 server refuses a client certificate) raises ``Refused``.
- ``mosquitto(...)``: mosquitto_pub / mosquitto_sub (system OpenSSL) runs.
"""
from __future__ import annotations

import shutil
from typing import Any, Sequence

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from zope.interface import implementer

from tests.support import CONNACK_OK, TIMEOUT, RawClient, connect_packet, run_process, with_timeout

PUB = shutil.which("mosquitto_pub")
SUB = shutil.which("mosquitto_sub")

_binding = Binding()
_ffi, _lib = _binding.ffi, _binding.lib

VERSIONS = {
    "tlsv1": SSL.TLS1_VERSION, "tlsv1.1": SSL.TLS1_1_VERSION,
    "tlsv1.2": SSL.TLS1_2_VERSION, "tlsv1.3": SSL.TLS1_3_VERSION,
}


class Refused(Exception):
    """The broker refused the TLS connection (or closed it before CONNACK)."""


def client_context(*, ca: str | None = None, cert: str | None = None, key: str | None = None,
                   versions: tuple[str, str] | str | None = None, ciphers: str | None = None,
                   tls13: str | None = None, groups: str | None = None,
                   psk: tuple[str, bytes] | None = None,
                   psk_hints: list[bytes] | None = None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    if versions is not None:
        lo, hi = (versions, versions) if isinstance(versions, str) else versions
        ctx.set_min_proto_version(VERSIONS[lo])
        ctx.set_max_proto_version(VERSIONS[hi])
        if lo in ("tlsv1", "tlsv1.1") and ciphers is None:
            ciphers = "DEFAULT:@SECLEVEL=0"
    if ciphers is not None:
        ctx.set_cipher_list(ciphers.encode())
    if tls13 is not None:
        ctx.set_tls13_ciphersuites(tls13.encode())
    if groups is not None:
        assert _lib.SSL_CTX_set1_curves_list(ctx._context, groups.encode()) == 1
    if ca is not None:
        ctx.load_verify_locations(ca.encode())
        ctx.set_verify(SSL.VERIFY_PEER, lambda *a: bool(a[-1]))
    if cert is not None:
        ctx.use_certificate_chain_file(cert.encode())
        ctx.use_privatekey_file((key or cert).encode())
    if psk is not None:
        identity, secret = psk

        def cb(ssl: Any, hint: Any, ident_out: Any, max_ident: int, psk_out: Any,
               max_psk: int) -> int:
            if psk_hints is not None:
                psk_hints.append(_ffi.string(hint) if hint != _ffi.NULL else b"")
            raw = identity.encode()
            _ffi.memmove(ident_out, raw + b"\0", len(raw) + 1)
            _ffi.memmove(psk_out, secret, len(secret))
            return len(secret)

        callback = _ffi.callback("unsigned int(SSL *, const char *, char *, unsigned int, "
                                 "unsigned char *, unsigned int)", cb, onerror=lambda *e: 0)
        ctx._test_psk_cb = callback  # type: ignore[attr-defined]
        _lib.SSL_CTX_set_psk_client_callback(ctx._context, callback)
    return ctx


@implementer(IOpenSSLClientConnectionCreator)
class _Creator:
    def __init__(self, ctx: SSL.Context) -> None:
        self.ctx = ctx

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self.ctx, None)
        conn.set_tlsext_host_name(b"localhost")
        return conn


@implementer(IHandshakeListener)
class TLSRawClient(RawClient):
    """A RawClient over TLS that records the handshake."""

    def __init__(self) -> None:
        super().__init__()
        self.handshake: Deferred = Deferred()
        self.lost_reason: Any = None

    def handshakeCompleted(self) -> None:
        conn = self.transport.getHandle()
        chain = conn.get_peer_cert_chain() or []
        self.info = {
            "version": conn.get_protocol_version_name(),
            "cipher": conn.get_cipher_name(),
            "serials": [c.to_cryptography().serial_number for c in chain],
        }
        if not self.handshake.called:
            self.handshake.callback(self.info)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost_reason = reason
        if not self.handshake.called:
            self.handshake.errback(Refused(f"handshake failed: {reason.value!r}"))
        super().connectionLost(reason)


@inlineCallbacks
def tls_connect(port: int, ctx: SSL.Context, testcase: Any = None):
    """A TLSRawClient with its handshake done (raises Refused if it fails)."""
    endpoint = wrapClientTLS(_Creator(ctx), TCP4ClientEndpoint(reactor, "127.0.0.1", port,
                                                               timeout=TIMEOUT))
    client = TLSRawClient()
    yield with_timeout(connectProtocol(endpoint, client), what="TCP connect")
    if testcase is not None:
        testcase.addCleanup(client.close)
    yield with_timeout(client.handshake, what="the TLS handshake")
    return client


@inlineCallbacks
def probe(port: int, testcase: Any = None, client_id: str = "probe", **ctx_kw: Any):
    """Handshake, CONNECT, CONNACK; returns the handshake info.  Raises Refused
    when the handshake fails or the connection closes before CONNACK."""
    client = yield tls_connect(port, client_context(**ctx_kw), testcase)
    client.send(connect_packet(client_id))
    try:
        connack = yield client.read(4, what="CONNACK")
    except ConnectionError as e:
        raise Refused(f"closed before CONNACK: {client.lost_reason!r}") from e
    if connack != CONNACK_OK:
        raise Refused(f"CONNACK {connack!r}")
    yield client.close()
    return client.info


def mosquitto(program: str | None, port: int, args: Sequence[str],
              timeout: float = TIMEOUT) -> Deferred:
    """Run mosquitto_pub/sub against 127.0.0.1:port; fires (out, err, code)."""
    assert program is not None
    return run_process(program, ["-h", "127.0.0.1", "-p", str(port), *args], timeout=timeout)
