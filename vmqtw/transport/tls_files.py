"""What a TLS listener's settings and files hold: the file-reading half of
``vmqtw.transport.tls``.

``read_settings`` checks a listener's typed TLS settings (``ListenerConfig.tls``)
for what a TLS listener needs and against what OpenSSL knows;
``load_material`` reads the files they name (``certfile``, ``keyfile``,
``cafile``, ``crlfile``, ``pskfile``) into a ``Material``.  Both raise
``OptionError`` naming the option; ``vmqtw.transport.tls`` turns that into a
``LayerError`` located at the config line, and builds the SSL context from the
``Material``.  Every public name here is re-exported by ``vmqtw.transport.tls``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.bindings.openssl.binding import Binding
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from vmqtw.config import ListenerConfig, SettingError, TLSConfig

__all__ = [
    "OptionError", "TLSSettings", "Material", "read_settings", "read_psk_file",
    "load_material",
]

_lib = Binding().lib

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)


class OptionError(Exception):
    """A problem with one TLS option or the file it names."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


# --------------------------------------------------------------------------
# Settings: the listener's typed TLS settings, checked against OpenSSL
# --------------------------------------------------------------------------

#: The TLS settings of a listener: ``ListenerConfig.tls``.
TLSSettings = TLSConfig


def read_settings(listener: ListenerConfig) -> TLSSettings:
    """The TLS settings of ``listener``, checked for what a TLS listener needs
    and against what OpenSSL knows; raises OptionError."""
    try:
        settings = listener.tls
    except SettingError as e:
        raise OptionError(e.option, e.message) from None
    if settings is None:
        raise OptionError("certfile", f"a {listener.kind} listener has no TLS settings")
    if settings.psk and not settings.pskfile:
        raise OptionError("psk_support", "psk_support is on but listener.ssl.pskfile is not "
                          "set")
    if not settings.certfile and not settings.psk:
        raise OptionError("certfile", f"a {listener.kind} listener needs a certfile (or "
                          f"psk_support = on for a PSK-only listener)")
    if settings.keyfile and not settings.certfile:
        raise OptionError("keyfile", "keyfile is set but certfile is not")
    if settings.require_certificate and not settings.cafile:
        raise OptionError("require_certificate", "require_certificate is on but cafile is "
                          "not set: no client certificate could be verified")
    if settings.use_identity_as_username and not settings.cafile and not settings.psk:
        raise OptionError("use_identity_as_username", "use_identity_as_username is on (it "
                          "requires a client certificate) but cafile is not set: no "
                          "client certificate could be verified")
    _check_ciphers(settings)
    _check_curves(settings.eccs)
    return settings


def _check_ciphers(settings: TLSSettings) -> None:
    """Name the first cipher OpenSSL does not know (OpenSSL itself silently
    skips unknown names as long as one name matches)."""
    for item in settings.ciphers:
        if item[0] in "!-+@":  # removing/moving/@STRENGTH/@SECLEVEL: harmless
            continue
        try:
            SSL.Context(SSL.TLS_METHOD).set_cipher_list(item.encode())
        except SSL.Error:
            raise OptionError("ciphers", f"unknown cipher {item!r}") from None
    for item in settings.tls13_suites:
        try:
            SSL.Context(SSL.TLS_METHOD).set_tls13_ciphersuites(item.encode())
        except SSL.Error:
            raise OptionError("ciphers", f"unknown TLS 1.3 cipher suite {item!r}") from None
    if settings.tls13_suites and "tlsv1.3" not in settings.versions and not settings.ciphers:
        raise OptionError("ciphers", "only TLS 1.3 suites are given but tls_version does not "
                          "include tlsv1.3")
    if settings.ciphers and settings.versions == ("tlsv1.3",) and not settings.tls13_suites:
        raise OptionError("ciphers", "tls_version is tlsv1.3 only, but no TLS 1.3 suite "
                          "(TLS_...) is given")


def _check_curves(eccs: tuple[str, ...]) -> None:
    for name in eccs:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ok = _lib.SSL_CTX_set1_curves_list(ctx._context, name.encode())
        _lib.ERR_clear_error()
        if ok != 1:
            raise OptionError("eccs", f"unknown curve {name!r}")


# --------------------------------------------------------------------------
# Material: what the files hold
# --------------------------------------------------------------------------

@dataclass
class Material:
    """The parsed contents of the listener's files."""

    chain: list[x509.Certificate] = field(default_factory=list)  # leaf first
    key: Any = None  # a cryptography private key
    ca: list[x509.Certificate] = field(default_factory=list)
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)
    crl_data: bytes | None = None
    psk: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def leaf(self) -> x509.Certificate | None:
        return self.chain[0] if self.chain else None


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise OptionError(option, f"cannot read {path}: {e.strerror or e}") from None


def _pem_blocks(data: bytes, kinds: tuple[bytes, ...]) -> list[bytes]:
    return [m.group(0) for m in _PEM_BLOCK.finditer(data) if m.group(1) in kinds]


def _load_certificates(option: str, path: str) -> list[x509.Certificate]:
    data = _read(option, path)
    blocks = _pem_blocks(data, (b"CERTIFICATE", b"TRUSTED CERTIFICATE"))
    if not blocks:
        raise OptionError(option, f"{path} holds no PEM certificate")
    certs = []
    for block in blocks:
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError as e:
            raise OptionError(option, f"{path}: bad certificate: {e}") from None
    return certs


def _load_key(settings: TLSSettings) -> Any:
    option = "keyfile" if settings.keyfile else "certfile"
    path = settings.keyfile or settings.certfile
    data = _read(option, path)
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(data)
              if m.group(1).endswith(b"PRIVATE KEY")]
    if not blocks:
        raise OptionError(option, f"{path} holds no PEM private key")
    password = settings.keypasswd.encode() if settings.keypasswd else None
    try:
        key = serialization.load_pem_private_key(blocks[0], password=password)
    except TypeError:
        if password is None:
            raise OptionError(option, f"the private key in {path} is encrypted and keypasswd "
                              f"is not set") from None
        # a password was given for an unencrypted key: accept it as VerneMQ does
        key = serialization.load_pem_private_key(blocks[0], password=None)
    except ValueError as e:
        if password is not None:
            raise OptionError("keypasswd", f"cannot decrypt the private key in {path}: wrong "
                              f"keypasswd?") from None
        raise OptionError(option, f"{path}: bad private key: {e}") from None
    return key


def _load_crls(path: str) -> tuple[list[x509.CertificateRevocationList], bytes]:
    data = _read("crlfile", path)
    blocks = _pem_blocks(data, (b"X509 CRL",))
    if not blocks:
        raise OptionError("crlfile", f"{path} holds no PEM CRL")
    crls = []
    for block in blocks:
        try:
            crls.append(x509.load_pem_x509_crl(block))
        except ValueError as e:
            raise OptionError("crlfile", f"{path}: bad CRL: {e}") from None
    return crls, data


def read_psk_file(path: str, separator: str = ":") -> dict[bytes, bytes]:
    """identity -> key from a VerneMQ PSK file.

    One ``identity<sep>key`` per line, split at the first separator; the key is
    the raw text (not hex).  Blank lines are skipped, and (beyond VerneMQ)
    lines starting with ``#``.  A line without the separator, or with an empty
    identity or key, is an error naming the line.
    """
    data = _read("pskfile", path)
    table: dict[bytes, bytes] = {}
    sep = separator.encode()
    for number, line in enumerate(data.split(b"\n"), 1):
        line = line.rstrip(b"\r")
        stripped = line.strip()
        if not stripped or stripped.startswith(b"#"):
            continue
        identity, found, key = line.partition(sep)
        if not found:
            raise OptionError("pskfile", f"{path}:{number}: no {separator!r} separator "
                              f"between identity and key")
        if not identity or not key:
            raise OptionError("pskfile", f"{path}:{number}: empty "
                              f"{'identity' if not identity else 'key'}")
        table[identity] = key
    return table


def load_material(settings: TLSSettings) -> Material:
    """Read every file the settings name; raises OptionError."""
    m = Material()
    if settings.certfile:
        m.chain = _load_certificates("certfile", settings.certfile)
        m.key = _load_key(settings)
    if settings.cafile:
        m.ca = _load_certificates("cafile", settings.cafile)
    if settings.crlfile:
        m.crls, m.crl_data = _load_crls(settings.crlfile)
    if settings.psk:
        m.psk = read_psk_file(settings.pskfile, settings.psk_separator)
    return m
