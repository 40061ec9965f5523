"""Certificates for the TLS tests, generated with trustme and cryptography
(no openssl subprocess), once per test process, in a temporary directory.

    root CA ──┬── intermediate CA ──┬── server "broker" (127.0.0.1, localhost)
              │                     ├── server "broker", renewed (another serial)
              │                     └── client bob
              ├── client alice
              ├── client mallory (revoked in crl.pem)
              └── client "expired" (validity ended yesterday)
    other CA ──── client stranger
    self-signed client "selfie"

``server.pem`` holds the server leaf *and* the intermediate, so a client that
trusts only the root can verify it only if the broker sends the whole chain.
Client files ``NAME.pem`` hold the leaf (and for bob the intermediate too),
``NAME.key`` the key.
"""
from __future__ import annotations

import atexit
import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: mosquitto_pub --psk takes hex; VerneMQ's PSK file holds the raw text.
PSK_TEXT = "s3cret-key"
PSK_HEX = PSK_TEXT.encode().hex()


@dataclass
class Certs:
    dir: str
    root: trustme.CA
    intermediate: trustme.CA
    other: trustme.CA
    serials: dict[str, int]

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    # frequently used files
    @property
    def ca(self) -> str:
        """The root CA only (what clients and the broker trust)."""
        return self.path("ca.pem")

    @property
    def server(self) -> str:
        return self.path("server.pem")

    @property
    def server_key(self) -> str:
        return self.path("server.key")

    def client(self, name: str) -> tuple[str, str]:
        return self.path(f"{name}.pem"), self.path(f"{name}.key")

    def copy(self, dest_dir: str, *names: str) -> None:
        for name in names:
            shutil.copy(self.path(name), os.path.join(dest_dir, name))


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _key_of(ca: trustme.CA):
    return serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)


def _cert_of(ca: trustme.CA) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.cert_pem.bytes())


def crl_pem(ca: trustme.CA, revoked: list[int], *, next_update_days: int = 7,
            number: int = 1) -> bytes:
    """A CRL signed by ``ca`` revoking the given serial numbers."""
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(_cert_of(ca).subject)
               .last_update(now - datetime.timedelta(minutes=5))
               .next_update(now + datetime.timedelta(days=next_update_days))
               .add_extension(x509.CRLNumber(number), critical=False))
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(now - datetime.timedelta(minutes=5)).build())
    crl = builder.sign(_key_of(ca), hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def self_signed(cn: str) -> tuple[bytes, bytes, int]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    serial = x509.random_serial_number()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            serial)


def _serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


_CERTS: Certs | None = None


def certs() -> Certs:
    """The shared set of certificates (created on first use)."""
    global _CERTS
    if _CERTS is not None:
        return _CERTS
    d = tempfile.mkdtemp(prefix="vmqtw-certs-")
    atexit.register(shutil.rmtree, d, True)
    root = trustme.CA()
    inter = root.create_child_ca()
    other = trustme.CA()
    serials: dict[str, int] = {}

    root.cert_pem.write_to_path(os.path.join(d, "ca.pem"))
    inter.cert_pem.write_to_path(os.path.join(d, "intermediate.pem"))
    other.cert_pem.write_to_path(os.path.join(d, "other-ca.pem"))
    _write(os.path.join(d, "ca+intermediate.pem"), root.cert_pem.bytes() + inter.cert_pem.bytes())

    def leaf(name: str, ca: trustme.CA, cn: str, *identities: str, **kw) -> None:
        cert = ca.issue_cert(*(identities or (f"{cn}.example",)), common_name=cn, **kw)
        pems = [b.bytes() for b in cert.cert_chain_pems]
        # leaf + intermediates, without the root (trustme's chain never has it)
        _write(os.path.join(d, f"{name}.pem"), b"".join(pems))
        cert.private_key_pem.write_to_path(os.path.join(d, f"{name}.key"))
        serials[name] = _serial(pems[0])

    leaf("server", inter, "broker", "127.0.0.1", "localhost")
    leaf("server-renewed", inter, "broker", "127.0.0.1", "localhost")
    leaf("server-leaf-only", inter, "broker", "127.0.0.1", "localhost")
    with open(os.path.join(d, "server-leaf-only.pem"), "rb") as f:
        only_leaf = f.read().split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    _write(os.path.join(d, "server-leaf-only.pem"), only_leaf)
    leaf("alice", root, "alice")
    leaf("mallory", root, "mallory")
    leaf("bob", inter, "bob")
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf("expired", root, "expired", not_before=now - datetime.timedelta(days=30),
         not_after=now - datetime.timedelta(days=1))
    leaf("stranger", other, "stranger")
    cert, key, serial = self_signed("selfie")
    _write(os.path.join(d, "selfie.pem"), cert)
    _write(os.path.join(d, "selfie.key"), key)
    serials["selfie"] = serial
    _write(os.path.join(d, "ca+selfie.pem"), root.cert_pem.bytes() + cert)

    _write(os.path.join(d, "crl.pem"), crl_pem(root, [serials["mallory"]]))
    _write(os.path.join(d, "crl-alice.pem"),
           crl_pem(root, [serials["mallory"], serials["alice"]], number=2))
    _write(os.path.join(d, "crl-empty.pem"), crl_pem(root, []))

    # an encrypted copy of the server key
    key_obj = serialization.load_pem_private_key(
        open(os.path.join(d, "server.key"), "rb").read(), password=None)
    _write(os.path.join(d, "server-encrypted.key"), key_obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"letmein")))

    _write(os.path.join(d, "psk.txt"), (
        "# vmqtw allows comment lines in the PSK file\n"
        "\n"
        f"client1:{PSK_TEXT}\n"
        "   # an indented comment\n"
        "other:abc:with:colons\n").encode())
    _CERTS = Certs(d, root, inter, other, serials)
    return _CERTS
