"""The TLS layer of ``listener.ssl.NAME`` (and ``wss``) listeners.

    bytes -> [PROXY] -> TLS (this module) -> [WebSocket] -> MQTTProtocol

One connection creator of our own (``ServerTLSOptions``) builds a pyOpenSSL
``SSL.Context`` from the listener's typed TLS settings (``ListenerConfig.tls``,
read by ``vmqtw.config``), whose options are as VerneMQ documents them (the
connections themselves come from the standard library's ``ssl`` on the system
OpenSSL wherever ``vmqtw.transport.tls_stdlib`` can serve the options exactly:
~7.5 KiB less per idle connection; from that pyOpenSSL
context for PSK and the lenient CRL rule -- see that module):

- ``certfile`` (the whole chain in it is sent: leaf first, then intermediates;
  VerneMQ sends only the leaf, #865), ``keyfile`` (if empty, the key is looked
  for in ``certfile``), ``keypasswd``;
- ``cafile``, ``require_certificate`` (verify the peer and fail without a
  certificate), ``use_identity_as_username`` (implies ``require_certificate``
  -- security, #14: VerneMQ only turns peer verification on, so a client
  without a certificate fell back to its CONNECT user name; here it is refused
  at the handshake, and a connection that still ends up with neither a
  certificate nor a PSK identity is closed), ``depth`` (OpenSSL's verify
  depth: the number of intermediate CAs allowed), a self-signed client leaf
  is refused even if it is trusted;
- ``crlfile`` (PEM, one or more CRLs), checked for the whole chain.  As in
  VerneMQ, the file is a list of revoked certificates: a chain whose issuer has
  no CRL in the file, or a CRL past its next-update date, is not refused for
  that.  The file is re-read every ``crl_refresh_interval`` ms (the global key;
  0 = never).  ``crl_fail_closed = on`` (our option, #14) refuses instead: a
  client certificate whose issuer has no CRL, or whose CRL is expired or not
  yet valid, and every client certificate while the CRL file cannot be read
  at a refresh or reload (until it can);
- ``tls_version``: a list; the listener speaks exactly those versions (minimum
  and maximum pinned, ``OP_NO_*`` for a gap); TLS 1.0/1.1 need ``@SECLEVEL=0``
  with OpenSSL 3+, which is added to the cipher string for them;
- ``ciphers``: OpenSSL names separated by ``:``; names of TLS 1.3 suites
  (``TLS_AES_128_GCM_SHA256``...) go to the TLS 1.3 list, the others to the
  TLS <= 1.2 list.  A list without TLS 1.3 names leaves OpenSSL's TLS 1.3
  suites (all forward-secret AEAD); without TLS <= 1.2 names,
  ``DEFAULT_CIPHERS``: forward-secret AEAD suites only (ECDHE with AES-GCM or
  ChaCha20-Poly1305; no static RSA, no CBC -- #14; VerneMQ's default list has
  both), plus ``DEFAULT_PSK_CIPHERS`` when PSK is on -- unless ``tls_version``
  lists TLS 1.0 or 1.1 (no AEAD suite there): then OpenSSL's default list;
- ``tls_version`` defaults to TLS 1.2 and 1.3 (VerneMQ: 1.2 only); a listener
  that sets ``tls_version`` or ``ciphers`` gets exactly what it set;
- ``eccs``: the curves/groups offered (``SSL_CTX_set1_curves_list``);
- ``psk_support`` + ``pskfile`` + ``pskfile_separator`` + ``psk_identity_hint``:
  TLS-PSK through cryptography's bindings.  The PSK file has VerneMQ's format
  (``identity<sep>key``, split at the first separator, the key is the raw text,
  blank lines skipped) plus ``#`` comment lines.  A PSK listener needs no
  certificate.  Beyond VerneMQ: the identity is available as ``psk_identity``
  on the TLS transport (``use_identity_as_username`` makes it the username),
  and the PSK file is re-read by a reload;
- ``tls_handshake_timeout`` (ms; ``infinity`` or 0: none): a client that has
  not finished the handshake by then is dropped.

``reload()`` (SIGHUP) rebuilds the context from the files: new connections use
the new one, established connections keep theirs.  A bad file keeps the old
context and the reason is logged.  Bad options or files at startup raise
``LayerError("FILE:LINE: listener.ssl.NAME.OPTION: reason")``.
"""
from __future__ import annotations

from typing import Any

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from vmqtw.logs import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from vmqtw.config import TLS_VERSIONS, ListenerConfig
from vmqtw.transport._twisted_private import send_if_idle, socket_under
from vmqtw.transport.tls_io import PENDING_MAX, _provide_like, _renew_bios, _TurnFlusher
from vmqtw.transport.tls_stdlib import StdlibConnection, build_stdlib_context, stdlib_refusal
from vmqtw.transport.identity import certificate_cn, peer_of
from vmqtw.transport.errors import LayerError
# The handshake callbacks live in tls_callbacks, PSK_IDENTITIES stays importable from here.
from vmqtw.transport.tls_callbacks import (
    PSK_IDENTITIES, _make_psk_callback, _self_signed, _Verifier,
)
# The file-reading half lives in tls_files; its names stay importable from here.
from vmqtw.transport.tls_files import (
    Material, OptionError, TLSSettings, _load_crls, load_material, read_psk_file,
    read_settings,
)

__all__ = [
    "PSK_IDENTITIES", "OptionError", "TLSSettings", "ServerTLSOptions", "TLSServerProtocol",
    "TLSListenerFactory", "tls_factory", "read_settings", "read_psk_file", "load_material",
    "build_context",
]

_lib = Binding().lib

log = Logger(namespace="vmqtw.tls")

#: The PSK suites VerneMQ adds to its built-in list when PSK is on.
PSK_CIPHERS = ("PSK-AES256-GCM-SHA384", "PSK-AES256-CBC-SHA", "PSK-AES128-GCM-SHA256",
               "PSK-AES128-CBC-SHA")

#: The TLS <= 1.2 suites of a listener that does not set ``ciphers``: forward
#: secret (ECDHE) and AEAD (GCM, ChaCha20-Poly1305) only, as Mozilla's
#: "intermediate" profile.  TLS 1.3's suites all are.
DEFAULT_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
                   "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
                   "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305")
#: Added to ``DEFAULT_CIPHERS`` on a PSK listener: the ECDHE-PSK AEAD suite,
#: then VerneMQ's two AEAD PSK suites (its CBC ones are left out).  Plain PSK
#: suites have no forward secrecy: set ``ciphers`` to leave them out.
DEFAULT_PSK_CIPHERS = ("ECDHE-PSK-CHACHA20-POLY1305", "PSK-AES256-GCM-SHA384",
                       "PSK-AES128-GCM-SHA256")

_VERSIONS = {
    "tlsv1": (SSL.TLS1_VERSION, SSL.OP_NO_TLSv1),
    "tlsv1.1": (SSL.TLS1_1_VERSION, SSL.OP_NO_TLSv1_1),
    "tlsv1.2": (SSL.TLS1_2_VERSION, SSL.OP_NO_TLSv1_2),
    "tlsv1.3": (SSL.TLS1_3_VERSION, SSL.OP_NO_TLSv1_3),
}
_VERSION_ORDER = TLS_VERSIONS


# --------------------------------------------------------------------------
# The context
# --------------------------------------------------------------------------

def build_context(settings: TLSSettings, material: Material, name: str) -> SSL.Context:
    """A new server Context for ``settings`` and ``material``; raises OptionError."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_options(SSL.OP_NO_SSLv2 | SSL.OP_NO_SSLv3 | SSL.OP_NO_COMPRESSION
                    | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION
                    | SSL.OP_SINGLE_ECDH_USE | SSL.OP_SINGLE_DH_USE)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_session_id(settings.session_id)

    # -- versions: exactly the listed ones --
    versions = settings.versions
    ctx.set_min_proto_version(_VERSIONS[versions[0]][0])
    ctx.set_max_proto_version(_VERSIONS[versions[-1]][0])
    lo, hi = _VERSION_ORDER.index(versions[0]), _VERSION_ORDER.index(versions[-1])
    for v in _VERSION_ORDER[lo:hi + 1]:
        if v not in versions:
            ctx.set_options(_VERSIONS[v][1])

    # -- ciphers --
    items = list(settings.ciphers)
    old_versions = "tlsv1" in versions or "tlsv1.1" in versions
    if not items and old_versions:
        # tls_version asks for TLS 1.0/1.1, which have no AEAD suite: the
        # listener gets what it asked for, with OpenSSL's list (as before #14).
        items = ["DEFAULT"]
        if settings.psk:
            items += PSK_CIPHERS
    elif not items:
        items = list(DEFAULT_CIPHERS)
        if settings.psk:
            items += DEFAULT_PSK_CIPHERS
    if old_versions and not any(i.startswith("@SECLEVEL") for i in items):
        items.append("@SECLEVEL=0")
    try:
        ctx.set_cipher_list(":".join(items).encode())
    except SSL.Error as e:
        raise OptionError("ciphers", f"no usable cipher in {':'.join(items)!r}: {e}") from None
    if settings.tls13_suites:
        try:
            ctx.set_tls13_ciphersuites(":".join(settings.tls13_suites).encode())
        except SSL.Error as e:
            raise OptionError("ciphers", f"bad TLS 1.3 suites: {e}") from None

    # -- curves --
    if settings.eccs:
        if _lib.SSL_CTX_set1_curves_list(ctx._context, ":".join(settings.eccs).encode()) != 1:
            _lib.ERR_clear_error()
            raise OptionError("eccs", f"unknown curve in {', '.join(settings.eccs)}")

    # -- our certificate: the whole chain in certfile is sent --
    if material.chain:
        ctx.use_certificate(material.chain[0])
        for extra in material.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        assert material.key is not None
        try:
            ctx.use_privatekey(material.key)
            ctx.check_privatekey()
        except SSL.Error:
            raise OptionError("keyfile" if settings.keyfile else "certfile",
                              f"the private key in {settings.keyfile or settings.certfile} "
                              f"does not match the certificate in {settings.certfile}") from None

    # -- client certificates --
    if material.ca:
        store = ctx.get_cert_store()
        assert store is not None
        for ca in material.ca:
            try:
                store.add_cert(crypto.X509.from_cryptography(ca))
            except crypto.Error:
                pass  # the same CA twice
        try:
            ctx.load_client_ca(settings.cafile.encode())  # CA names sent in the request
        except SSL.Error:
            pass
    if material.crls:
        store = ctx.get_cert_store()
        assert store is not None
        for crl in material.crls:
            store.add_crl(crl)
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL)
    verifier = _Verifier(name, bool(material.crls), settings.crl_fail_closed)
    ctx._vmqtw_verifier = verifier  # type: ignore[attr-defined]
    if settings.verify_peer:
        mode = SSL.VERIFY_PEER
        if settings.certificate_required:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode, verifier)
        ctx.set_verify_depth(settings.depth)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)

    # -- PSK --
    if settings.psk:
        callback = _make_psk_callback(material.psk, name)
        # The callback must live as long as the context (and every connection
        # made from it, which keeps the context alive).
        ctx._vmqtw_psk_callback = callback  # type: ignore[attr-defined]
        _lib.SSL_CTX_set_psk_server_callback(ctx._context, callback)
        if settings.psk_identity_hint:
            if _lib.SSL_CTX_use_psk_identity_hint(
                    ctx._context, settings.psk_identity_hint.encode()) != 1:
                _lib.ERR_clear_error()
                raise OptionError("psk_identity_hint", "OpenSSL refused the identity hint "
                                  f"{settings.psk_identity_hint!r} (too long?)")
    return ctx


# --------------------------------------------------------------------------
# The connection creator
# --------------------------------------------------------------------------

@implementer(IOpenSSLServerConnectionCreator)
class ServerTLSOptions:
    """Builds the listener's Context and hands out connections from it."""

    def __init__(self, listener: ListenerConfig, settings: TLSSettings | None = None) -> None:
        self.listener = listener
        self.name = f"{listener.kind}.{listener.name}"
        self.settings = settings if settings is not None else read_settings(listener)
        self.material = load_material(self.settings)
        self.context = build_context(self.settings, self.material, self.name)
        #: Why the standard library's engine cannot serve this listener (None:
        #: it does; see ``vmqtw.transport.tls_stdlib``).
        self.stdlib_refusal = stdlib_refusal(self.settings)
        #: The ``ssl.SSLContext`` new connections are made from, or None:
        #: pyOpenSSL's ``context`` (always built: it checks the options).
        self.stdlib_context = self._stdlib_context(self.material)
        #: How many times the context was replaced (reload or CRL refresh).
        self.generation = 0
        log.debug("listener {listener}: TLS engine {engine}{why}", listener=self.name,
                  engine=self.engine, why="" if self.stdlib_refusal is None
                  else f" ({self.stdlib_refusal})")

    @property
    def engine(self) -> str:
        """``"stdlib"`` (Python's ssl, the system OpenSSL) or ``"pyopenssl"``."""
        return "pyopenssl" if self.stdlib_context is None else "stdlib"

    def _stdlib_context(self, material: Material, crl_broken: bool = False) -> Any:
        if self.stdlib_refusal is not None:
            return None
        try:
            return build_stdlib_context(self.settings, material, crl_broken)
        except OptionError as e:
            self.stdlib_refusal = f"ssl refused {e.option}: {e.message}"
            return None

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        stdlib = self.stdlib_context
        if stdlib is not None:
            return StdlibConnection(stdlib)
        return SSL.Connection(self.context, None)

    def _describe(self, e: OptionError) -> str:
        return f"{self.listener.key}.{e.option}: {e.message}"

    def reload(self) -> bool:
        """Rebuild the context from the files.  On a bad file, keep the old
        context, log why, and return False."""
        try:
            material = load_material(self.settings)
            context = build_context(self.settings, material, self.name)
            stdlib = self._stdlib_context(material)
        except OptionError as e:
            log.error("listener {listener}: TLS reload failed, keeping the previous "
                      "certificates, keys, CRL and PSK file: {reason}", listener=self.name,
                      reason=self._describe(e))
            if e.option == "crlfile":
                self._crl_unusable(e)
            return False
        self.material, self.context, self.stdlib_context = material, context, stdlib
        self.generation += 1
        log.info("listener {listener}: TLS certificates, keys, CRL and PSK file reloaded",
                 listener=self.name)
        return True

    def _crl_unusable(self, e: OptionError) -> None:
        """With crl_fail_closed: refuse every client certificate until the CRL
        file can be read again."""
        verifier = getattr(self.context, "_vmqtw_verifier", None)
        if not self.settings.crl_fail_closed or verifier is None:
            return
        if verifier.broken is None:
            log.error("listener {listener}: crl_fail_closed is on: refusing every client "
                      "certificate until the CRL file can be read", listener=self.name)
        verifier.broken = e.message
        if self.stdlib_context is not None:  # trust no CA until the file is back
            self.stdlib_context = self._stdlib_context(self.material, crl_broken=True) \
                or self.stdlib_context

    def refresh_crl(self) -> bool:
        """Re-read the CRL file; a changed file gives a new context.  True if
        the context was replaced."""
        if not self.settings.crlfile:
            return False
        try:
            crls, data = _load_crls(self.settings.crlfile)
            verifier = getattr(self.context, "_vmqtw_verifier", None)
            if data == self.material.crl_data and getattr(verifier, "broken", None) is None:
                return False
            material = Material(chain=self.material.chain, key=self.material.key,
                                ca=self.material.ca, crls=crls, crl_data=data,
                                psk=self.material.psk)
            context = build_context(self.settings, material, self.name)
            stdlib = self._stdlib_context(material)
        except OptionError as e:
            log.error("listener {listener}: CRL refresh failed, keeping the previous CRL: "
                      "{reason}", listener=self.name, reason=self._describe(e))
            self._crl_unusable(e)
            return False
        self.material, self.context, self.stdlib_context = material, context, stdlib
        self.generation += 1
        log.info("listener {listener}: CRL {path} re-read", listener=self.name,
                 path=self.settings.crlfile)
        return True


# --------------------------------------------------------------------------
# Protocol and factory
# --------------------------------------------------------------------------

class TLSServerProtocol(TLSMemoryBIOProtocol):
    """Twisted's TLS transport, plus the handshake timeout and ``psk_identity``.

    Writes are collected until the end of the reactor turn, as Twisted's
    ``BufferingTLSTransport`` does, but per listener (``_TurnFlusher``) instead
    of an aggregator and a ``callLater`` per connection; the TLS records then
    go straight to the socket when nothing is buffered below (as ``write_now``
    does for plain TCP) instead of waiting another turn for EPOLLOUT, and so do
    the handshake flights.
    """

    factory: "TLSListenerFactory"
    _handshake_timer: Any = None
    #: The TCP connection right below (only pass-through wrappers between),
    #: whose socket may be written directly; None: write through the transport.
    _bottom: Any = None
    #: Application bytes written during this reactor turn (None: nothing).
    _pending: list[bytes] | None = None
    #: The handshake just finished: renew the memory BIOs once the current
    #: chunk is processed (see ``_renew_bios``).
    _bios_grown = False

    @property
    def psk_identity(self) -> str | None:
        """The PSK identity the client used, or None (not a PSK handshake)."""
        conn = getattr(self, "_tlsConnection", None)
        if conn is None or type(conn) is StdlibConnection:  # no PSK on that engine
            return None
        return PSK_IDENTITIES.get(conn)

    def makeConnection(self, transport: Any) -> None:
        timeout = self.factory.handshake_timeout
        if timeout is not None:
            self._handshake_timer = self.factory.clock.callLater(timeout, self._handshake_expired)
        # TLSMemoryBIOProtocol.makeConnection, minus its loop of
        # directlyProvides calls, one per interface of the transport (each
        # replaces the previous one, and ProtocolWrapper.makeConnection
        # replaces the last with providedBy(transport), which is what stays),
        # and with ProtocolWrapper.makeConnection's own call from a cache.
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        bottom, direct = socket_under(transport)
        if direct:
            self._bottom = bottom
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            # ProtocolWrapper.makeConnection
            _provide_like(self, transport)
            Protocol.makeConnection(self, transport)
            self.factory.registerProtocol(self)
            self.wrappedProtocol.makeConnection(self)
        self._checkHandshakeStatus()

    def write(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [data]
            self.factory.flusher.add(self)
            return
        pending.append(data)
        if len(pending) >= PENDING_MAX:
            self._flush_pending()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def _flush_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending:
            TLSMemoryBIOProtocol.write(self, b"".join(pending))

    def loseConnection(self) -> None:
        self._flush_pending()
        super().loseConnection()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self._bios_grown:
            self._release_bios()

    def _flushSendBIO(self) -> None:
        conn = self._tlsConnection
        try:
            data = conn.bio_read(2**15)
        except SSL.WantReadError:
            return  # nothing in the send BIO right now
        transport: Any = self.transport
        bottom = self._bottom
        if bottom is None:
            transport.write(data)
        else:
            send_if_idle(transport, bottom, data)

    def _release_bios(self) -> None:
        """Renew the memory BIOs once the handshake is over (see ``_renew_bios``)."""
        conn = self._tlsConnection
        if not self._handshakeDone or conn is None or self.disconnecting:
            return
        self._bios_grown = False
        if type(conn) is StdlibConnection:
            conn.renew_bios()
        else:
            _renew_bios(conn)

    def _checkHandshakeStatus(self) -> None:
        super()._checkHandshakeStatus()
        if self._handshakeDone:
            self._bios_grown = True  # the handshake flights: drop their buffers
            self._cancel_handshake_timer()
            if type(self._tlsConnection) is StdlibConnection and \
                    self.factory.creator.settings.verify_peer and self._self_signed_leaf():
                return
            if self.factory.identity_required and not self._has_identity():
                # use_identity_as_username: never fall back to the CONNECT
                # user name (OpenSSL already refuses a certificate-less
                # client; this also covers any handshake it let through).
                host, port = peer_of(self.transport) if self.transport is not None \
                    else ("", 0)
                log.info("listener {listener}: {peer} has neither a client certificate "
                         "nor a PSK identity (use_identity_as_username); closing",
                         listener=self.factory.name, peer=f"{host}:{port}")
                self.abortConnection()

    def _self_signed_leaf(self) -> bool:
        """The stdlib engine's check of a trusted self-signed client leaf
        (pyOpenSSL's verify callback refuses it during the handshake): close
        the connection before any application byte is read."""
        try:
            cert = self.getPeerCertificate()
        except Exception:
            return False
        if cert is None or not _self_signed(cert):
            return False
        host, port = peer_of(self.transport) if self.transport is not None else ("", 0)
        log.info("listener {listener}: client certificate refused ({peer}): self-signed "
                 "client certificate (depth 0, CN {cn!r})", listener=self.factory.name,
                 peer=f"{host}:{port}", cn=certificate_cn(cert))
        self.abortConnection()
        return True

    def _has_identity(self) -> bool:
        if self.psk_identity:
            return True
        try:
            return self.getPeerCertificate() is not None
        except Exception:
            return False

    def _cancel_handshake_timer(self) -> None:
        timer, self._handshake_timer = self._handshake_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self._handshakeDone or not self.connected:
            return
        self.factory.handshake_timeouts += 1
        host, port = peer_of(self.transport) if self.transport is not None else ("", 0)
        log.info("listener {listener}: TLS handshake with {peer} not finished after "
                 "{timeout} ms; closing", listener=self.factory.name, peer=f"{host}:{port}",
                 timeout=int((self.factory.handshake_timeout or 0) * 1000))
        self.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._pending = None
        self._cancel_handshake_timer()
        failure = self._reason or reason
        if not self._handshakeDone and failure is not None and \
                failure.check(SSL.Error) is not None:
            host, port = peer_of(self)
            # info, as the certificate refusals above: the log says why a
            # client could not connect (now that the log level applies here)
            log.info("listener {listener}: TLS handshake with {peer} failed: {error}",
                     listener=self.factory.name, peer=f"{host}:{port}",
                     error=str(failure.value))
        super().connectionLost(reason)


class TLSListenerFactory(TLSMemoryBIOFactory):
    """Wraps the listener's inner factory in TLS; ``reload()`` on SIGHUP."""

    protocol = TLSServerProtocol

    def __init__(self, creator: ServerTLSOptions, inner: Any, clock: Any,
                 crl_refresh_interval: float | None = None) -> None:
        super().__init__(creator, False, inner, clock)
        self.creator = creator
        self.name = creator.name
        self.clock = clock
        self.handshake_timeout = creator.settings.handshake_timeout
        #: use_identity_as_username: a connection without a certificate or
        #: PSK identity is closed after the handshake.
        self.identity_required = creator.settings.use_identity_as_username
        self.crl_refresh_interval = crl_refresh_interval  # seconds; None/0: never
        self.handshake_timeouts = 0
        self._crl_loop: LoopingCall | None = None
        #: This listener's connections written to during the current turn.
        self.flusher = _TurnFlusher(clock)

    def reload(self) -> bool:
        return self.creator.reload()

    def startFactory(self) -> None:
        super().startFactory()
        if self.creator.settings.crlfile and self.crl_refresh_interval:
            loop = LoopingCall(self.creator.refresh_crl)
            loop.clock = self.clock
            loop.start(self.crl_refresh_interval, now=False)
            self._crl_loop = loop

    def stopFactory(self) -> None:
        loop, self._crl_loop = self._crl_loop, None
        if loop is not None and loop.running:
            loop.stop()
        super().stopFactory()


def _crl_refresh_ms(listener: ListenerConfig, inner: Any) -> int:
    """crl_refresh_interval (ms): the listener's own option if it has one, else
    the global key from the BrokerConfig the inner factory chain carries."""
    raw = listener.options.get("crl_refresh_interval")
    if raw is not None:
        try:
            return int(raw)
        except ValueError:
            pass
    factory, hops = inner, 0
    while factory is not None and hops < 8:
        broker = getattr(factory, "broker", None)
        config = getattr(broker, "config", None)
        value = getattr(config, "crl_refresh_interval", None)
        if isinstance(value, int):
            return value
        factory = getattr(factory, "wrappedFactory", None) or getattr(factory, "factory", None)
        hops += 1
    return 60000


def creator_for(listener: ListenerConfig) -> ServerTLSOptions:
    """The listener's connection creator; LayerError naming the config line."""
    try:
        return ServerTLSOptions(listener)
    except OptionError as e:
        raise LayerError(_located(listener, e)) from None


def tls_factory(listener: ListenerConfig, inner: Any, reactor: Any,
                creator: ServerTLSOptions | None = None) -> TLSListenerFactory:
    """The TLS layer for ``listener`` around ``inner``; a bad option or file
    raises LayerError naming the config file and line of the option."""
    if creator is None:
        creator = creator_for(listener)
    ms = _crl_refresh_ms(listener, inner)
    return TLSListenerFactory(creator, inner, reactor, ms / 1000.0 if ms > 0 else None)


def _located(listener: ListenerConfig, e: OptionError) -> str:
    file, line = listener.option_source(e.option)
    if not line:  # a built-in default or an unset option: point at the listener
        file, line = listener.source
    return f"{file}:{line}: {listener.key}.{e.option}: {e.message}"
