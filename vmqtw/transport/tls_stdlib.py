"""The standard library's TLS engine: ``ssl.SSLContext`` on the system OpenSSL.

Why a second engine.  pyOpenSSL runs on the OpenSSL that ``cryptography``
bundles (4.0 here), whose ``SSL_new`` alone takes 15.9 KiB per connection
against 8.3 KiB with the system's OpenSSL 3.0 that Python's ``ssl`` module
and mosquitto use; in process, after a TLS 1.3 handshake and a CONNECT, 24.3
KiB per connection through pyOpenSSL against 16.8 KiB through ``ssl``.
Measured with ``bench/run.py`` (issue 18, third round in bench/RESULTS.md):
28.3 -> 20.7 KiB per idle TLS client (mosquitto: 15.0), the broker's CPU per
handshake unchanged within the noise (the crypto dominates it).

So a listener gets this engine whenever it can serve the listener's options
exactly (``stdlib_refusal`` says why not, None: it can), and pyOpenSSL
otherwise:

- PSK (``psk_support``): Python 3.11's ``ssl`` has no PSK callback: pyOpenSSL;
- ``crlfile`` without ``crl_fail_closed``: VerneMQ's rule (a client whose
  issuer has no current CRL in the file is not refused for that) needs the
  verify callback: pyOpenSSL.  With ``crl_fail_closed = on`` OpenSSL's own
  verdict is the rule: the CRLs go into the context's store with
  ``VERIFY_CRL_CHECK_CHAIN`` (= ``CRL_CHECK | CRL_CHECK_ALL``, as pyOpenSSL's
  context does); while the CRL file cannot be read, the context trusts no CA,
  so every client certificate is refused at the handshake;
- a file the ``ssl`` module cannot load as the checks in ``tls_files``
  accepted it (e.g. a cafile that also holds CRLs, a crlfile that also holds
  certificates) or an option it refuses: pyOpenSSL.

The one check that needs a callback and stays on this engine: a self-signed
client leaf is refused even when it is trusted (only a CA's own certificate
can be both).  ``TLSServerProtocol`` checks it when the handshake completes and
closes the connection before any MQTT byte is read.

What ``ssl.SSLContext`` has no setter for (the TLS 1.3 suites, the curves,
the verify depth, the CA names sent in the certificate request, the session
id context) is set on its ``SSL_CTX`` through ``ctypes`` on the same libssl.

``StdlibConnection`` gives an ``ssl`` object over two ``MemoryBIO`` the
methods of ``OpenSSL.SSL.Connection`` that Twisted's ``TLSMemoryBIOProtocol``
and our ``TLSServerProtocol`` call, and raises pyOpenSSL's exceptions, so the
TLS protocol layer is the same for both engines.
"""
from __future__ import annotations

import ctypes
import ssl
import sys
from typing import Any

from OpenSSL import SSL, crypto

from vmqtw.logs import Logger
from vmqtw.transport.tls_files import Material, OptionError, TLSSettings

__all__ = ["StdlibConnection", "build_stdlib_context", "stdlib_refusal"]

log = Logger(namespace="vmqtw.tls")

_VERSIONS = {
    "tlsv1": (ssl.TLSVersion.TLSv1, ssl.OP_NO_TLSv1),
    "tlsv1.1": (ssl.TLSVersion.TLSv1_1, ssl.OP_NO_TLSv1_1),
    "tlsv1.2": (ssl.TLSVersion.TLSv1_2, ssl.OP_NO_TLSv1_2),
    "tlsv1.3": (ssl.TLSVersion.TLSv1_3, ssl.OP_NO_TLSv1_3),
}


# --------------------------------------------------------------------------
# The SSL_CTX under an ssl.SSLContext
# --------------------------------------------------------------------------

def _libssl() -> Any:
    # dlsym on _ssl's handle also finds the symbols of the libssl it links.
    lib = ctypes.CDLL(ssl._ssl.__file__)  # type: ignore[attr-defined]
    vp, cp, ci, cl = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_long
    for name, res, args in (
            ("SSL_CTX_set_ciphersuites", ci, [vp, cp]),
            ("SSL_CTX_ctrl", cl, [vp, ci, cl, vp]),
            ("SSL_CTX_set_verify_depth", None, [vp, ci]),
            ("SSL_CTX_set_session_id_context", ci, [vp, cp, ctypes.c_uint]),
            ("SSL_load_client_CA_file", vp, [cp]),
            ("SSL_CTX_set_client_CA_list", None, [vp, vp]),
            ("SSL_get_rbio", vp, [vp]),
            ("SSL_get_wbio", vp, [vp]),
            ("SSL_set_bio", None, [vp, vp, vp]),
            ("BIO_up_ref", ci, [vp]),
            ("ERR_clear_error", None, [])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


#: The interpreters whose ``_ssl`` object layouts :func:`_field` relies on were checked
#: (``PySSLContext.ctx`` and ``PySSLMemoryBIO.bio`` right after the object header,
#: ``PySSLSocket.ssl`` one pointer later): CPython 3.11, the version vmqtw runs on.
#: Anywhere else the stdlib engine is not used (every listener gets pyOpenSSL).
CHECKED_LAYOUTS: tuple[tuple[int, int], ...] = ((3, 11),)


def _layout_refusal() -> str | None:
    if sys.implementation.name != "cpython" or sys.version_info[:2] not in CHECKED_LAYOUTS:
        return (f"the _ssl object layout of {sys.implementation.name} "
                f"{sys.version_info[0]}.{sys.version_info[1]} is not checked")
    return None


_lib: Any = None
_lib_error = "libssl under Python's ssl not loaded"
if _layout_refusal() is None:
    try:
        _lib = _libssl()
    except (OSError, AttributeError) as e:  # a libssl without one of the symbols
        _lib_error = f"libssl under Python's ssl lacks a symbol ({e})"
_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list / set1_curves_list


def _field(obj: Any, offset: int = 0) -> int:
    """A pointer field of a CPython ``_ssl`` object, ``offset`` bytes after the
    object header (``PySSLContext.ctx``: 0, ``PySSLMemoryBIO.bio``: 0,
    ``PySSLSocket.ssl``: 8, after its ``Socket`` weak reference)."""
    return ctypes.c_void_p.from_address(id(obj) + object.__basicsize__ + offset).value or 0


def _ssl_ctx(ctx: ssl.SSLContext) -> int:
    """The ``SSL_CTX *`` of ``ctx``: the first field after the object header
    of CPython's ``PySSLContext``."""
    ptr = _field(ctx)
    if not ptr:
        raise RuntimeError("no SSL_CTX under the ssl.SSLContext")
    return ptr


# --------------------------------------------------------------------------
# The choice
# --------------------------------------------------------------------------

def _has_block(path: str, kind: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return b"-----BEGIN " + kind in f.read()
    except OSError:
        return False


def stdlib_refusal(settings: TLSSettings) -> str | None:
    """Why the stdlib engine cannot serve ``settings`` exactly; None if it can."""
    layout = _layout_refusal()
    if layout is not None:
        return layout
    if _lib is None:
        return _lib_error
    if settings.psk:
        return "PSK (no PSK callback in Python 3.11's ssl)"
    if settings.crlfile and not settings.crl_fail_closed:
        return "crlfile without crl_fail_closed (missing CRLs are tolerated: verify callback)"
    if settings.crlfile and _has_block(settings.crlfile, b"CERTIFICATE"):
        return "crlfile holds certificates"
    if settings.cafile and _has_block(settings.cafile, b"X509 CRL"):
        return "cafile holds CRLs"
    return None


# --------------------------------------------------------------------------
# The context
# --------------------------------------------------------------------------

def _ciphers(settings: TLSSettings) -> str:
    # Same list as vmqtw.transport.tls.build_context (PSK never comes here).
    from vmqtw.transport.tls import DEFAULT_CIPHERS
    items = list(settings.ciphers)
    old_versions = "tlsv1" in settings.versions or "tlsv1.1" in settings.versions
    if not items:
        items = ["DEFAULT"] if old_versions else list(DEFAULT_CIPHERS)
    if old_versions and not any(i.startswith("@SECLEVEL") for i in items):
        items.append("@SECLEVEL=0")
    return ":".join(items)


def build_stdlib_context(settings: TLSSettings, material: Material,
                         crl_broken: bool = False) -> ssl.SSLContext:
    """A server ``ssl.SSLContext`` for ``settings``; raises OptionError for an
    option the ``ssl`` module refuses (the caller falls back to pyOpenSSL).

    ``crl_broken``: crl_fail_closed and the CRL file cannot be read: trust no
    CA, so every client certificate is refused.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                    | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE | ssl.OP_SINGLE_DH_USE)
    raw = _ssl_ctx(ctx)
    sid = settings.session_id
    _lib.SSL_CTX_set_session_id_context(raw, sid, len(sid))

    # -- versions: exactly the listed ones --
    versions = settings.versions
    order = list(_VERSIONS)
    try:
        ctx.minimum_version = _VERSIONS[versions[0]][0]
        ctx.maximum_version = _VERSIONS[versions[-1]][0]
    except ValueError as e:
        raise OptionError("tls_version", str(e)) from None
    for v in order[order.index(versions[0]):order.index(versions[-1]) + 1]:
        if v not in versions:
            ctx.options |= _VERSIONS[v][1]

    # -- ciphers --
    try:
        ctx.set_ciphers(_ciphers(settings))
    except ssl.SSLError as e:
        raise OptionError("ciphers", f"no usable cipher: {e}") from None
    if settings.tls13_suites:
        if _lib.SSL_CTX_set_ciphersuites(raw, ":".join(settings.tls13_suites).encode()) != 1:
            _lib.ERR_clear_error()
            raise OptionError("ciphers", "bad TLS 1.3 suites")

    # -- curves --
    if settings.eccs:
        if _lib.SSL_CTX_ctrl(raw, _SSL_CTRL_SET_GROUPS_LIST, 0,
                             ctypes.c_char_p(":".join(settings.eccs).encode())) != 1:
            _lib.ERR_clear_error()
            raise OptionError("eccs", f"unknown curve in {', '.join(settings.eccs)}")

    # -- our certificate: the whole chain in certfile is sent --
    if material.chain:
        try:
            ctx.load_cert_chain(settings.certfile, settings.keyfile or None,
                                password=settings.keypasswd or None)
        except (ssl.SSLError, OSError) as e:
            raise OptionError("certfile", f"ssl cannot load the certificate/key: {e}") from None

    # -- client certificates --
    if material.ca and not crl_broken:
        try:
            ctx.load_verify_locations(cafile=settings.cafile)
            if material.crls:
                ctx.load_verify_locations(cafile=settings.crlfile)
        except (ssl.SSLError, OSError) as e:
            raise OptionError("cafile", f"ssl cannot load the CA or CRL file: {e}") from None
    if material.crls:
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    if settings.cafile:
        names = _lib.SSL_load_client_CA_file(settings.cafile.encode())
        if names:
            _lib.SSL_CTX_set_client_CA_list(raw, names)  # the context owns the list
        _lib.ERR_clear_error()
    if settings.verify_peer:
        ctx.verify_mode = ssl.CERT_REQUIRED if settings.certificate_required \
            else ssl.CERT_OPTIONAL
        _lib.SSL_CTX_set_verify_depth(raw, settings.depth)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --------------------------------------------------------------------------
# The connection
# --------------------------------------------------------------------------

def _error(e: ssl.SSLError) -> SSL.Error:
    """pyOpenSSL's exception for ``e`` (its args: OpenSSL's error queue), so
    Twisted's EOF test and our handshake log read it as theirs."""
    if isinstance(e, ssl.SSLEOFError):
        return SSL.Error([("SSL routines", "", "unexpected eof while reading")])
    if isinstance(e, ssl.SSLCertVerificationError):
        reason = f"certificate verify failed: {e.verify_message}"
    else:
        reason = str(e.reason or e.strerror or e).lower().replace("_", " ")
    return SSL.Error([(str(e.library or "SSL routines"), "", reason)])


class StdlibConnection(SSL.Connection):
    """What ``TLSMemoryBIOProtocol`` needs of ``OpenSSL.SSL.Connection``, on an
    ``ssl`` object over two memory BIOs.

    A subclass that never runs ``SSL.Connection.__init__`` (no pyOpenSSL
    ``SSL`` object is made): code that checks ``getHandle()`` with
    ``isinstance(..., SSL.Connection)`` (autobahn's ``tls-unique`` channel id
    on wss listeners) accepts it.  Calling any other pyOpenSSL method raises
    AttributeError (there is no ``_ssl``).
    """

    __slots__ = ("_obj", "_in", "_out", "_app_data")
    #: Read by ``SSL.Connection.__getattr__``: there is no socket behind.
    _socket = None

    def __init__(self, context: ssl.SSLContext) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        # The C object under ssl.SSLObject (one Python object less per connection).
        self._obj = context._wrap_bio(self._in, self._out, server_side=True,  # type: ignore
                                      server_hostname=None)
        self._app_data: Any = None

    def renew_bios(self) -> None:
        """Two new, empty memory BIOs under the SSL object, any unread bytes
        moved over (as ``tls_io._renew_bios`` for pyOpenSSL): a memory BIO
        keeps the capacity of the largest chunk it held, ~2.5 KiB per idle
        connection after the handshake flights.  The SSL object holds its own
        reference to each BIO (``_wrap_bio`` takes one), so ``SSL_set_bio``
        gives it references to the new pair and drops those to the old one,
        which the old ``MemoryBIO`` objects free.  Nothing is done unless the
        pointers read back as the SSL object's current BIOs."""
        ssl_ptr = _field(self._obj, 8)
        old_in, old_out = self._in, self._out
        if not ssl_ptr or _lib.SSL_get_rbio(ssl_ptr) != _field(old_in) \
                or _lib.SSL_get_wbio(ssl_ptr) != _field(old_out):
            return
        new_in, new_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        if old_in.pending:
            new_in.write(old_in.read())
        if old_out.pending:
            new_out.write(old_out.read())
        rbio, wbio = _field(new_in), _field(new_out)
        _lib.BIO_up_ref(rbio)
        _lib.BIO_up_ref(wbio)
        _lib.SSL_set_bio(ssl_ptr, rbio, wbio)
        self._in, self._out = new_in, new_out

    def set_accept_state(self) -> None:
        """Nothing to do: the object was made server-side."""

    def set_app_data(self, data: Any) -> None:
        self._app_data = data

    def get_app_data(self) -> Any:
        return self._app_data

    def do_handshake(self) -> None:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            raise SSL.WantReadError() from None
        except ssl.SSLError as e:
            raise _error(e) from None

    def bio_write(self, buf: bytes | bytearray | memoryview) -> int:
        return self._in.write(buf)

    def bio_read(self, bufsiz: int) -> bytes:
        data = self._out.read(bufsiz)
        if not data:
            raise SSL.WantReadError()
        return data

    def bio_shutdown(self) -> None:
        self._in.write_eof()

    def recv(self, bufsiz: int, flags: int | None = None) -> bytes:
        try:
            data = self._obj.read(bufsiz)
        except ssl.SSLWantReadError:
            raise SSL.WantReadError() from None
        except ssl.SSLZeroReturnError:
            raise SSL.ZeroReturnError() from None
        except ssl.SSLError as e:
            raise _error(e) from None
        if not data:
            # ssl returns b"" (pyOpenSSL raises) once the peer's close_notify
            # has been read.
            raise SSL.ZeroReturnError()
        return data

    def send(self, buf: bytes | bytearray | memoryview, flags: int = 0) -> int:
        try:
            return self._obj.write(buf)
        except ssl.SSLWantReadError:
            raise SSL.WantReadError() from None
        except ssl.SSLError as e:
            raise _error(e) from None

    def shutdown(self) -> bool:
        """Send close_notify; True once the peer's has been received too."""
        try:
            self._obj.shutdown()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as e:
            raise _error(e) from None
        return True

    def get_peer_certificate(self, *, as_cryptography: bool = False) -> Any:
        try:
            der = self._obj.getpeercert(True)
        except ValueError:  # the handshake is not done yet: pyOpenSSL says None
            return None
        if not der:
            return None
        if as_cryptography:
            from cryptography import x509
            return x509.load_der_x509_certificate(der)
        return crypto.load_certificate(crypto.FILETYPE_ASN1, der)

    def get_alpn_proto_negotiated(self) -> bytes:
        name = self._obj.selected_alpn_protocol()
        return name.encode() if name else b""

    def get_peer_finished(self) -> bytes | None:
        """The client's Finished message (tls-unique of a server's full handshake)."""
        return self._obj.get_channel_binding("tls-unique")

    def get_finished(self) -> bytes | None:
        """Not available through ``ssl`` on the server side: None (as before the
        handshake)."""
        return None

    def get_protocol_version_name(self) -> str:
        return self._obj.version() or "Unknown"

    def get_cipher_name(self) -> str | None:
        cipher = self._obj.cipher()
        return cipher[0] if cipher else None
