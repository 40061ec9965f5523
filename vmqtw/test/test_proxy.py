"""The PROXY protocol layer: byte-level v1/v2 vectors and the wrapping factory.

Every header is built by hand below from the spec (haproxy's
doc/proxy-protocol.txt), independently of vmqtw.transport.proxy, and fed
whole, one byte at a time and in random chunks.  The wrapper is driven with
StringTransport and a Clock; TLS under PROXY with iosim's in-memory pump.
"""
from __future__ import annotations

import random
import socket
from typing import Any

import trustme
from twisted.internet import ssl
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.auth.chain import Authorizer, Chain
from vmqtw.config import parse
from vmqtw.core.broker import Broker
from vmqtw.transport import proxy
from vmqtw.transport.identity import peer_of, preauth_username, transports
from vmqtw.transport.proxy import (
    MalformedProxyHeader, NotAProxyHeader, ProxyHeaderError, ProxyHeaderParser,
    ProxyHeaderTooLong, ProxyProtocolFactory, UnsupportedProxyHeader, parse_header,
)

# ---------------------------------------------------------------------------
# Headers built by hand
# ---------------------------------------------------------------------------

SIG = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
CONNECT = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c"  # client id "c"


def v2(command: int = 1, fam: int = 0x11, block: bytes = b"", version: int = 2,
       length: int | None = None) -> bytes:
    n = len(block) if length is None else length
    return SIG + bytes([(version << 4) | command, fam]) + n.to_bytes(2, "big") + block


def inet4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + sport.to_bytes(2, "big") + \
        dport.to_bytes(2, "big")


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + \
        sport.to_bytes(2, "big") + dport.to_bytes(2, "big")


def unix(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\x00") + dst.ljust(108, b"\x00")


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def ssl_tlv(client: int, verify: int, *subs: bytes) -> bytes:
    return tlv(0x20, bytes([client]) + verify.to_bytes(4, "big") + b"".join(subs))


def crc32c_bitwise(data: bytes) -> int:
    """CRC32c bit by bit (RFC 4960 appendix B), no table: an independent check."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def with_crc(command: int, fam: int, addresses: bytes, other_tlvs: bytes = b"") -> bytes:
    """A v2 header whose CRC32C TLV (last) holds the right checksum."""
    zeroed = v2(command, fam, addresses + other_tlvs + tlv(0x03, b"\x00" * 4))
    return zeroed[:-4] + crc32c_bitwise(zeroed).to_bytes(4, "big")


V1_TCP4 = b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 1883\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8:0:0:0:0:0:2 51234 8883\r\n"
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
# The spec's worst case: exactly 107 bytes.
V1_UNKNOWN_LONGEST = (b"PROXY UNKNOWN " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 +
                      b"ffff 65535 65535\r\n")
SSL_ALICE = ssl_tlv(0x07, 0, tlv(0x21, b"TLSv1.3"), tlv(0x22, b"alice"),
                    tlv(0x23, b"TLS_AES_256_GCM_SHA384"), tlv(0x24, b"ECDSA-SHA256"),
                    tlv(0x25, b"EC256"))
V2_TCP4 = v2(1, 0x11, inet4("198.51.100.22", "203.0.113.7", 35646, 1883))
V2_TCP4_SSL = v2(1, 0x11, inet4("198.51.100.22", "203.0.113.7", 35646, 1883) + SSL_ALICE)


# ---------------------------------------------------------------------------
# Feeding helpers
# ---------------------------------------------------------------------------

MODES = ["whole", "bytes"] + [f"random{seed}" for seed in range(6)]


def chunks(data: bytes, mode: str) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytes":
        return [data[i:i + 1] for i in range(len(data))]
    rng = random.Random(int(mode[len("random"):]))
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, 11)
        out.append(data[i:i + n])
        i += n
    return out


def feed(data: bytes, mode: str, **kwargs: Any) -> tuple[Any, bytes]:
    """(info or None, bytes after the header) after feeding ``data`` in chunks."""
    parser = ProxyHeaderParser(**kwargs)
    info, rest = None, b""
    for chunk in chunks(data, mode):
        if info is None:
            info = parser.feed(chunk)
            if info is not None:
                rest = parser.leftover
        else:
            rest += chunk
    return info, rest


class ParserCase(SynchronousTestCase):

    def parses(self, data: bytes, tail: bytes = CONNECT, **kwargs: Any) -> Any:
        """Parse ``data + tail`` in every feeding mode; all must agree and
        leave exactly ``tail``.  Returns the ProxyInfo."""
        results = []
        for mode in MODES:
            info, rest = feed(data + tail, mode, **kwargs)
            self.assertIsNotNone(info, f"{mode}: header not complete")
            self.assertEqual(rest, tail, mode)
            self.assertEqual(info.length, len(data), mode)
            results.append(info)
        for info in results[1:]:
            self.assertEqual(info, results[0])
        return results[0]

    def refused(self, data: bytes, error: type[ProxyHeaderError], words: str = "",
                at: int | None = None, **kwargs: Any) -> ProxyHeaderError:
        """Every feeding mode raises ``error`` (whose message contains
        ``words``); with ``at``, feeding byte by byte raises on byte ``at``
        (0-based) and not before."""
        caught = None
        for mode in MODES:
            with self.assertRaises(error, msg=mode) as cm:
                feed(data, mode, **kwargs)
            self.assertIn(words, str(cm.exception), mode)
            caught = cm.exception
        if at is not None:
            parser = ProxyHeaderParser(**kwargs)
            for i in range(at):
                self.assertIsNone(parser.feed(data[i:i + 1]), f"byte {i}")
            self.assertRaises(error, parser.feed, data[at:at + 1])
        assert caught is not None
        return caught

    def incomplete(self, data: bytes) -> None:
        """``data`` is a valid beginning: every mode wants more bytes."""
        for mode in MODES:
            info, _ = feed(data, mode)
            self.assertIsNone(info, mode)


# ---------------------------------------------------------------------------
# v1
# ---------------------------------------------------------------------------

class V1Tests(ParserCase):

    def test_tcp4(self) -> None:
        """
        A v1 ``TCP4`` line gives the client's source and the destination as TCP IPv4 addresses,
        no TLVs and no TLS information, however the bytes are split, and leaves the MQTT bytes
        after it untouched.
        """
        info = self.parses(V1_TCP4)
        self.assertEqual(info.version, 1)
        self.assertEqual(info.command, "PROXY")
        self.assertEqual((info.family, info.transport), ("AF_INET", "STREAM"))
        self.assertEqual(info.source, IPv4Address("TCP", "198.51.100.22", 35646))
        self.assertEqual(info.destination, IPv4Address("TCP", "203.0.113.7", 1883))
        self.assertEqual(dict(info.tlvs), {})
        self.assertIsNone(info.ssl)
        self.assertIsNone(info.ssl_cn)

    def test_tcp6_addresses_are_normalised(self) -> None:
        """A v1 ``TCP6`` line gives IPv6 addresses in their normal compressed form."""
        info = self.parses(V1_TCP6)
        self.assertEqual(info.family, "AF_INET6")
        self.assertEqual(info.source, IPv6Address("TCP", "2001:db8::1", 51234))
        self.assertEqual(info.destination, IPv6Address("TCP", "2001:db8::2", 8883))

    def test_extreme_values(self) -> None:
        """
        The lowest and highest IPv4 addresses and ports (0.0.0.0:0, 255.255.255.255:65535) are
        accepted.
        """
        info = self.parses(b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n")
        self.assertEqual(info.source, IPv4Address("TCP", "0.0.0.0", 0))
        self.assertEqual(info.destination, IPv4Address("TCP", "255.255.255.255", 65535))

    def test_unknown_short_and_long(self) -> None:
        """
        A v1 ``UNKNOWN`` line, with or without the optional rest (up to the spec's 107-byte
        maximum), is accepted without addresses, so the socket's own addresses apply.
        """
        for header in (V1_UNKNOWN, b"PROXY UNKNOWN 1.2.3.4 garbage here\r\n",
                       V1_UNKNOWN_LONGEST):
            info = self.parses(header)
            self.assertEqual((info.version, info.command), (1, "PROXY"))
            self.assertIsNone(info.source)
            self.assertIsNone(info.destination)
        self.assertEqual(len(V1_UNKNOWN_LONGEST), 107)

    def test_header_alone_and_with_nothing_after(self) -> None:
        """
        A v1 header followed by nothing is complete, while any prefix of it, up to a line
        ending in CR only, waits for more bytes.
        """
        self.parses(V1_TCP4, tail=b"")
        self.incomplete(V1_TCP4[:-1])
        self.incomplete(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r")
        self.incomplete(b"P")

    def test_no_crlf_within_107_bytes(self) -> None:
        """
        A v1 line without CRLF in its first 107 bytes (the spec's maximum) is refused as too
        long on its 107th byte, not before.
        """
        self.refused(V1_UNKNOWN_LONGEST[:-2] + b"f\r\n", ProxyHeaderTooLong, "107", at=106)
        self.refused(b"PROXY TCP4 " + b"1" * 200, ProxyHeaderTooLong, at=106)

    def test_line_endings(self) -> None:
        """
        A v1 line ending in LF without CR, or with a CR not followed by LF, is malformed,
        detected as soon as the byte after the CR arrives.
        """
        self.refused(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", MalformedProxyHeader, "LF without CR")
        self.refused(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n", MalformedProxyHeader,
                     "CR without LF")
        # detected as soon as the byte after the CR arrives
        self.refused(b"PROXY UNKNOWN\rX", MalformedProxyHeader, at=14)

    def test_not_proxy(self) -> None:
        """
        Data that does not start with ``PROXY `` exactly (an MQTT CONNECT, an HTTP request, a
        misspelt or lower-case keyword, a missing space) is "not a PROXY protocol header",
        refused at the first byte that differs.
        """
        self.refused(CONNECT, NotAProxyHeader, "not a PROXY protocol header", at=0)
        self.refused(b"PROXX TCP4 1.2.3.4 5.6.7.8 1 2\r\n", NotAProxyHeader, at=4)
        self.refused(b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", NotAProxyHeader, at=0)
        self.refused(b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n", NotAProxyHeader, at=5)
        self.refused(b"GET /mqtt HTTP/1.1\r\n", NotAProxyHeader, at=0)

    def test_unknown_protocols(self) -> None:
        """
        A v1 protocol other than ``TCP4``, ``TCP6`` or ``UNKNOWN`` (case-sensitive) is refused
        as unsupported.
        """
        for proto in (b"TCP5", b"UDP4", b"tcp4", b"", b"UNKNOWNX"):
            self.refused(b"PROXY " + proto + b" 1.2.3.4 5.6.7.8 1 2\r\n",
                         UnsupportedProxyHeader)

    def test_bad_addresses(self) -> None:
        """
        Invalid IPv4 addresses (out of range, leading zeros, too few parts, names, empty), an
        IPv6 address on ``TCP4``, and invalid IPv6 addresses (IPv4 on ``TCP6``, scope ids,
        repeated ``::``) are refused as malformed addresses.
        """
        for src, dst in [(b"256.1.1.1", b"5.6.7.8"),
                         (b"01.2.3.4", b"5.6.7.8"),        # leading zero
                         (b"1.2.3", b"5.6.7.8"),
                         (b"1.2.3.4", b"::1"),             # IPv6 on TCP4
                         (b"localhost", b"5.6.7.8"),
                         (b"1.2.3.4", b"")]:
            self.refused(b"PROXY TCP4 " + src + b" " + dst + b" 1 2\r\n",
                         MalformedProxyHeader, "address")
        for src in (b"1.2.3.4", b"fe80::1%eth0", b"2001:db8::1::2", b"2001:db8:::1"):
            self.refused(b"PROXY TCP6 " + src + b" ::1 1 2\r\n", MalformedProxyHeader, "address")

    def test_bad_ports(self) -> None:
        """
        Ports out of range, with leading zeros or signs, with letters or with extra spaces are
        refused.
        """
        for port in (b"65536", b"01", b"-1", b"+1", b"1a", b"999999", b" 1"):
            self.refused(b"PROXY TCP4 1.2.3.4 5.6.7.8 " + port + b" 2\r\n",
                         MalformedProxyHeader)

    def test_field_count_and_spacing(self) -> None:
        """
        A v1 line with too few or too many fields, or with doubled or trailing spaces, is
        malformed.
        """
        for line in (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                     b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
                     b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
                     b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
                     b"PROXY TCP4\r\n"):
            self.refused(line, MalformedProxyHeader)

    def test_non_ascii(self) -> None:
        """Non-ASCII bytes or NUL in a v1 line make it malformed."""
        self.refused(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n", MalformedProxyHeader, "ASCII")
        self.refused(b"PROXY TCP4 1.2.3.4\x005.6.7.8 1 2\r\n", MalformedProxyHeader)


# ---------------------------------------------------------------------------
# v2
# ---------------------------------------------------------------------------

class V2Tests(ParserCase):

    def test_tcp4(self) -> None:
        """
        A v2 ``PROXY`` header with family ``TCP over IPv4`` gives the client's source and the
        destination address and port, and no TLVs.
        """
        info = self.parses(V2_TCP4)
        self.assertEqual((info.version, info.command), (2, "PROXY"))
        self.assertEqual((info.family, info.transport), ("AF_INET", "STREAM"))
        self.assertEqual(info.source, IPv4Address("TCP", "198.51.100.22", 35646))
        self.assertEqual(info.destination, IPv4Address("TCP", "203.0.113.7", 1883))
        self.assertEqual(dict(info.tlvs), {})
        self.assertIsNone(info.ssl_cn)

    def test_tcp6(self) -> None:
        """
        A v2 header with ``TCP over IPv6`` gives IPv6 addresses, IPv4-mapped ones included.
        """
        info = self.parses(v2(1, 0x21, inet6("2001:db8::1", "::ffff:10.0.0.1", 1, 65535)))
        self.assertEqual((info.family, info.transport), ("AF_INET6", "STREAM"))
        self.assertEqual(info.source, IPv6Address("TCP", "2001:db8::1", 1))
        self.assertEqual(info.destination, IPv6Address("TCP", "::ffff:10.0.0.1", 65535))

    def test_udp(self) -> None:
        """A v2 header with a datagram transport gives UDP addresses, for IPv4 and IPv6."""
        info = self.parses(v2(1, 0x12, inet4("10.0.0.1", "10.0.0.2", 5, 6)))
        self.assertEqual(info.transport, "DGRAM")
        self.assertEqual(info.source, IPv4Address("UDP", "10.0.0.1", 5))
        info = self.parses(v2(1, 0x22, inet6("::1", "::2", 5, 6)))
        self.assertEqual(info.source, IPv6Address("UDP", "::1", 5))

    def test_unix(self) -> None:
        """
        A v2 header with ``AF_UNIX`` gives Unix socket paths with the NUL padding removed,
        abstract names (leading NUL) included.
        """
        info = self.parses(v2(1, 0x31, unix(b"/run/client.sock", b"/run/broker.sock")))
        self.assertEqual(info.family, "AF_UNIX")
        self.assertEqual(info.source, UNIXAddress("/run/client.sock"))
        self.assertEqual(info.destination, UNIXAddress("/run/broker.sock"))
        info = self.parses(v2(1, 0x32, unix(b"\x00abstract", b"")))
        self.assertEqual(info.source, UNIXAddress("\x00abstract"))

    def test_local_uses_the_connection_addresses(self) -> None:
        """
        A v2 ``LOCAL`` header (haproxy's health checks) carries no addresses, whatever its
        family, and its whole address and TLV block is skipped; the socket's own addresses
        apply.
        """
        # haproxy's health checks: LOCAL, AF_UNSPEC, no block
        info = self.parses(v2(0, 0x00))
        self.assertEqual((info.version, info.command), (2, "LOCAL"))
        self.assertIsNone(info.source)
        self.assertIsNone(info.destination)
        self.assertEqual(info.length, 16)
        # a LOCAL with addresses (and an odd family) still skips the whole block
        block = inet4("1.1.1.1", "2.2.2.2", 1, 2) + SSL_ALICE
        info = self.parses(v2(0, 0x11, block))
        self.assertEqual(info.command, "LOCAL")
        self.assertIsNone(info.source)
        self.assertIsNone(info.ssl_cn)
        self.assertEqual(info.length, 16 + len(block))
        self.assertEqual(self.parses(v2(0, 0xFF, b"junk")).command, "LOCAL")

    def test_proxy_with_unspec_family_falls_back(self) -> None:
        """
        A v2 ``PROXY`` header with family ``AF_UNSPEC`` is accepted without addresses, its
        block ignored.
        """
        info = self.parses(v2(1, 0x00, b"whatever"))
        self.assertEqual((info.command, info.family), ("PROXY", "AF_UNSPEC"))
        self.assertIsNone(info.source)

    def test_tlvs(self) -> None:
        """
        v2 TLVs are exposed: ALPN, authority and unique id get their own attributes (the first
        ALPN wins), other and custom types are kept by type, and there is no TLS information
        without an SSL TLV.
        """
        block = (inet4("10.1.1.1", "10.2.2.2", 1234, 1883) + tlv(0x01, b"mqtt") +
                 tlv(0x02, b"broker.example.com") + tlv(0x04, b"") +
                 tlv(0x05, b"\x01" * 128) + tlv(0x30, b"ns1") + tlv(0xE0, b"custom") +
                 tlv(0x01, b"second-alpn-ignored"))
        info = self.parses(v2(1, 0x11, block))
        self.assertEqual(info.alpn, b"mqtt")
        self.assertEqual(info.authority, "broker.example.com")
        self.assertEqual(info.unique_id, b"\x01" * 128)
        self.assertEqual(info.tlvs[0x04], b"")
        self.assertEqual(info.tlvs[0x30], b"ns1")
        self.assertEqual(info.tlvs[0xE0], b"custom")
        self.assertIsNone(info.ssl)

    def test_ssl_tlv_with_verified_certificate(self) -> None:
        """
        An SSL TLV gives the client flags, the verify result, and the TLS version, CN, cipher,
        signature and key algorithms from its sub-TLVs; with a verified client certificate its
        CN is the proxy's CN.
        """
        info = self.parses(V2_TCP4_SSL)
        ssl_info = info.ssl
        self.assertEqual((ssl_info.client, ssl_info.verify), (7, 0))
        self.assertEqual(ssl_info.version, "TLSv1.3")
        self.assertEqual(ssl_info.cn, "alice")
        self.assertEqual(ssl_info.cipher, "TLS_AES_256_GCM_SHA384")
        self.assertEqual(ssl_info.sig_alg, "ECDSA-SHA256")
        self.assertEqual(ssl_info.key_alg, "EC256")
        self.assertEqual(info.ssl_cn, "alice")
        self.assertEqual(info.tlvs[0x20], SSL_ALICE[3:])

    def test_ssl_cn_only_when_client_ssl_certificate_and_verified(self) -> None:
        """
        The CN from an SSL TLV counts as the client's identity only when the client used TLS
        (``PP2_CLIENT_SSL``), presented a certificate on the connection or the session, and the
        proxy verified it (verify = 0).
        """
        addrs = inet4("10.1.1.1", "10.2.2.2", 1, 2)
        cn = tlv(0x22, "José".encode())
        cases = [
            (0x01 | 0x02, 0, "José"),    # SSL + cert on this connection
            (0x01 | 0x04, 0, "José"),    # SSL + cert on the session
            (0x01 | 0x02, 1, None),      # verify != 0
            (0x01 | 0x02, 0x10000, None),
            (0x01, 0, None),             # no certificate flag
            (0x02 | 0x04, 0, None),      # no PP2_CLIENT_SSL
            (0x00, 0, None),
        ]
        for client, verify, expected in cases:
            info = self.parses(v2(1, 0x11, addrs + ssl_tlv(client, verify, cn)))
            self.assertEqual(info.ssl.cn, "José")
            self.assertEqual(info.ssl_cn, expected, (client, verify))

    def test_ssl_without_cn_or_with_bad_cn(self) -> None:
        """
        An SSL TLV without a CN sub-TLV, with an empty CN or a CN that is not UTF-8, or without
        any sub-TLVs gives no CN.
        """
        addrs = inet4("10.1.1.1", "10.2.2.2", 1, 2)
        info = self.parses(v2(1, 0x11, addrs + ssl_tlv(0x07, 0, tlv(0x21, b"TLSv1.2"))))
        self.assertEqual(info.ssl.version, "TLSv1.2")
        self.assertIsNone(info.ssl_cn)
        for bad in (b"", b"\xff\xfe"):  # empty, not UTF-8
            info = self.parses(v2(1, 0x11, addrs + ssl_tlv(0x07, 0, tlv(0x22, bad))))
            self.assertIsNone(info.ssl_cn)
        info = self.parses(v2(1, 0x11, addrs + ssl_tlv(0x05, 0)))  # no sub-TLVs at all
        self.assertEqual((info.ssl.client, info.ssl.cn), (5, None))

    def test_crc32c(self) -> None:
        """
        A CRC32C TLV is checked against the whole header (RFC 4960 CRC32c); a header with a
        wrong checksum, changed content, or a CRC TLV of the wrong size is refused.
        """
        self.assertEqual(proxy.crc32c(b"123456789"), 0xE3069283)
        self.assertEqual(crc32c_bitwise(b"123456789"), 0xE3069283)
        header = with_crc(1, 0x11, inet4("10.1.1.1", "10.2.2.2", 1, 2), SSL_ALICE)
        self.assertEqual(self.parses(header).ssl_cn, "alice")
        broken = header[:-1] + bytes([header[-1] ^ 1])
        self.refused(broken, MalformedProxyHeader, "CRC32C")
        tampered = header.replace(b"alice", b"alicf")
        self.refused(tampered, MalformedProxyHeader, "CRC32C")
        self.refused(v2(1, 0x11, inet4("1.1.1.1", "2.2.2.2", 1, 2) + tlv(0x03, b"\0\0\0")),
                     MalformedProxyHeader, "CRC32C")

    def test_bad_signature(self) -> None:
        """
        A change in any byte of the 12-byte v2 signature is "not a PROXY header", refused on
        that byte.
        """
        for i in range(1, 12):
            bad = bytearray(V2_TCP4)
            bad[i] ^= 0x40
            self.refused(bytes(bad), NotAProxyHeader, at=i)
        self.refused(b"\r\n\r\n\x01", NotAProxyHeader, at=4)

    def test_bad_version(self) -> None:
        """
        A v2 signature followed by a version other than 2 is refused as unsupported once the
        16-byte fixed header is in.
        """
        for version in (0, 1, 3, 15):
            self.refused(v2(1, 0x11, inet4("1.1.1.1", "2.2.2.2", 1, 2), version=version),
                         UnsupportedProxyHeader, "version", at=15)

    def test_bad_command(self) -> None:
        """
        A v2 command other than ``LOCAL`` (0) or ``PROXY`` (1) is refused as unsupported once
        the 16-byte fixed header is in.
        """
        for command in (2, 3, 15):
            self.refused(v2(command, 0x11, inet4("1.1.1.1", "2.2.2.2", 1, 2)),
                         UnsupportedProxyHeader, "command", at=15)

    def test_bad_family_or_transport(self) -> None:
        """
        An unknown address family or transport protocol in a v2 ``PROXY`` header is refused as
        unsupported.
        """
        for fam in (0x41, 0x13, 0x10, 0x01, 0x33, 0xFF):
            self.refused(v2(1, fam, inet6("::1", "::2", 1, 2)), UnsupportedProxyHeader, "family")

    def test_address_block_too_short(self) -> None:
        """
        A v2 block shorter than its family's addresses (12 bytes for IPv4, 36 for IPv6, 216 for
        Unix) is malformed.
        """
        self.refused(v2(1, 0x11, b"\x01" * 11), MalformedProxyHeader, "12 address bytes")
        self.refused(v2(1, 0x21, b"\x01" * 35), MalformedProxyHeader, "36 address bytes")
        self.refused(v2(1, 0x31, b"\x01" * 215), MalformedProxyHeader, "216 address bytes")

    def test_truncated_tlvs(self) -> None:
        """
        TLVs cut short, longer than the block, an SSL TLV shorter than its fixed part, and an
        SSL sub-TLV running past its TLV are malformed.
        """
        addrs = inet4("1.1.1.1", "2.2.2.2", 1, 2)
        self.refused(v2(1, 0x11, addrs + b"\x01\x00"), MalformedProxyHeader, "truncated")
        self.refused(v2(1, 0x11, addrs + b"\x01\x00\x05abc"), MalformedProxyHeader, "longer")
        self.refused(v2(1, 0x11, addrs + tlv(0x20, b"\x07\x00\x00\x00")), MalformedProxyHeader,
                     "SSL TLV shorter")
        self.refused(v2(1, 0x11, addrs + ssl_tlv(7, 0, b"\x22\x00\x09alice")),
                     MalformedProxyHeader, "SSL sub TLV")

    def test_truncated_header_waits_for_more(self) -> None:
        """
        Any prefix of a valid v2 header, even inside the signature or the TLVs, waits for more
        bytes.
        """
        for n in (1, 5, 12, 13, 15, 16, len(V2_TCP4_SSL) - 1):
            self.incomplete(V2_TCP4_SSL[:n])

    def test_length_over_the_cap(self) -> None:
        """
        A v2 length above the cap is refused as soon as the length field is in, without waiting
        for the body; a header of exactly the cap is accepted, and the cap can be lowered.
        """
        # refused as soon as the length field is in, without waiting for the body
        self.refused(v2(1, 0x11, length=65535), ProxyHeaderTooLong, "65535", at=15)
        self.refused(v2(1, 0x11, length=proxy.V2_MAX_LENGTH + 1), ProxyHeaderTooLong, at=15)
        big = v2(1, 0x11, inet4("1.1.1.1", "2.2.2.2", 1, 2) +
                 tlv(0x04, b"\0" * (proxy.V2_MAX_LENGTH - 15)))
        self.assertEqual(len(big), 16 + proxy.V2_MAX_LENGTH)
        self.assertEqual(self.parses(big).source.host, "1.1.1.1")
        self.refused(V2_TCP4_SSL, ProxyHeaderTooLong, at=15, max_v2_length=40)

    def test_parse_header_function(self) -> None:
        """
        ``parse_header`` returns ``None`` for incomplete input and otherwise the header and its
        length, with a one-line description; all parse errors are ``ProxyHeaderError``.
        """
        self.assertIsNone(parse_header(b""))
        self.assertIsNone(parse_header(V2_TCP4[:20]))
        info, n = parse_header(V2_TCP4 + b"rest")
        self.assertEqual(n, len(V2_TCP4))
        self.assertEqual(info.describe(), "v2 PROXY 198.51.100.22:35646 -> 203.0.113.7:1883")
        self.assertIsInstance(NotAProxyHeader("x"), ProxyHeaderError)

    def test_parser_is_done_after_the_header(self) -> None:
        """
        Once the header is parsed, feeding the parser more bytes is an error: what follows
        belongs to the inner protocol.
        """
        parser = ProxyHeaderParser()
        self.assertIsNotNone(parser.feed(V1_TCP4))
        self.assertRaises(ValueError, parser.feed, b"more")


# ---------------------------------------------------------------------------
# The wrapper
# ---------------------------------------------------------------------------

HAPROXY = IPv4Address("TCP", "192.0.2.10", 40000)   # the socket peer: the proxy
LISTENER = IPv4Address("TCP", "192.0.2.1", 1883)


class Inner(Protocol):
    def __init__(self) -> None:
        self.made_peer: Any = None
        self.made_host: Any = None
        self.data = b""
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.made_peer = self.transport.getPeer()
        self.made_host = self.transport.getHost()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


class InnerFactory(Factory):
    def __init__(self, refuse: bool = False) -> None:
        self.built: list[Inner] = []
        self.addrs: list[Any] = []
        self.refuse = refuse

    def buildProtocol(self, addr: Any) -> Inner | None:  # type: ignore[override]
        self.addrs.append(addr)
        if self.refuse:
            return None
        p = Inner()
        p.factory = self
        self.built.append(p)
        return p


class WrapperTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        self.inner = InnerFactory()
        self.events: list[dict[str, Any]] = []
        self.factory = ProxyProtocolFactory(self.inner, self.clock, name="tcp.test")
        self.factory.log = Logger(namespace="test", observer=self.events.append)

    def connect(self) -> tuple[Any, StringTransport]:
        transport = StringTransport(hostAddress=LISTENER, peerAddress=HAPROXY)
        wrapper = self.factory.buildProtocol(HAPROXY)
        wrapper.makeConnection(transport)
        return wrapper, transport

    def log_lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def assertRefused(self, transport: StringTransport, *words: str) -> None:
        self.assertTrue(transport.disconnected, "the connection was not aborted")
        self.assertEqual(self.inner.built, [])
        lines = self.log_lines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("192.0.2.10:40000", lines[0])
        self.assertIn("tcp.test", lines[0])
        for word in words:
            self.assertIn(word, lines[0])
        self.assertEqual(self.factory.refused, 1)

    def test_inner_connected_only_after_the_header_with_the_real_peer(self) -> None:
        """
        The inner protocol is built and connected only when the header is complete, and from
        then on the client's address from the header is its peer (in ``buildProtocol``,
        ``connectionMade``, ``getPeer`` and ``peer_of``) and the destination its host;
        acceptance is counted by version and command, and nothing is logged.
        """
        wrapper, transport = self.connect()
        self.assertEqual(self.inner.built, [])
        self.assertIsNone(wrapper.proxy_info)
        for b in V1_TCP4:
            self.assertEqual(self.inner.built, [])
            wrapper.dataReceived(bytes([b]))
        (inner,) = self.inner.built
        real = IPv4Address("TCP", "198.51.100.22", 35646)
        self.assertEqual(self.inner.addrs, [real])      # buildProtocol saw it too
        self.assertEqual(inner.made_peer, real)
        self.assertEqual(inner.made_host, IPv4Address("TCP", "203.0.113.7", 1883))
        self.assertIs(inner.transport, wrapper)
        self.assertEqual(wrapper.getPeer(), real)
        self.assertEqual(peer_of(inner.transport), ("198.51.100.22", 35646))
        self.assertEqual(wrapper.proxy_info.version, 1)
        self.assertEqual(self.factory.accepted[(1, "PROXY")], 1)
        self.assertEqual(self.log_lines(), [])

    def test_leftover_bytes_are_delivered(self) -> None:
        """
        Bytes after the header in the same segment reach the inner protocol, and later data
        follows.
        """
        wrapper, transport = self.connect()
        wrapper.dataReceived(V2_TCP4_SSL + CONNECT[:5])
        (inner,) = self.inner.built
        self.assertEqual(inner.data, CONNECT[:5])
        wrapper.dataReceived(CONNECT[5:])
        self.assertEqual(inner.data, CONNECT)
        self.assertEqual(wrapper.proxy_info.ssl_cn, "alice")

    def test_writes_and_producer_calls_reach_the_socket(self) -> None:
        """
        Writes, producer registration, pause and ``loseConnection`` from the inner protocol go
        to the socket transport.
        """
        wrapper, transport = self.connect()
        wrapper.dataReceived(V1_TCP4)
        (inner,) = self.inner.built
        inner.transport.write(b"\x20\x02\x00\x00")
        inner.transport.writeSequence([b"a", b"b"])
        self.assertEqual(transport.value(), b"\x20\x02\x00\x00ab")
        inner.transport.registerProducer(inner, True)
        self.assertIs(transport.producer, inner)
        inner.transport.pauseProducing()  # delegated by __getattr__
        self.assertEqual(transport.producerState, "paused")
        inner.transport.loseConnection()
        self.assertTrue(transport.disconnecting)

    def test_local_and_unknown_keep_the_socket_addresses(self) -> None:
        """
        For ``LOCAL``, v1 ``UNKNOWN`` and ``AF_UNSPEC`` headers the inner protocol sees the
        socket's peer and host addresses, and gets the data that follows.
        """
        for header in (v2(0, 0x00), V1_UNKNOWN, v2(1, 0x00)):
            self.inner.built.clear()
            wrapper, transport = self.connect()
            wrapper.dataReceived(header + CONNECT)
            (inner,) = self.inner.built
            self.assertEqual(inner.made_peer, HAPROXY)
            self.assertEqual(inner.made_host, LISTENER)
            self.assertEqual(inner.data, CONNECT)
        self.assertEqual(self.factory.accepted[(2, "LOCAL")], 1)
        self.assertEqual(self.factory.accepted[(2, "PROXY")], 1)

    def test_client_without_header_is_refused(self) -> None:
        """
        A connection that does not start with a PROXY header is aborted without any answer,
        with one log line naming the listener, the peer and the first bytes; later data is
        ignored and no inner protocol is built.
        """
        wrapper, transport = self.connect()
        wrapper.dataReceived(CONNECT)
        self.assertRefused(transport, "not a PROXY protocol header", r"b'\x10")
        wrapper.dataReceived(b"more bytes are ignored")
        self.assertEqual(self.inner.built, [])
        self.assertEqual(transport.value(), b"")  # nothing was ever answered

    def test_malformed_header_is_refused(self) -> None:
        """A malformed header aborts the connection, logged once with the reason."""
        wrapper, transport = self.connect()
        wrapper.dataReceived(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n" + CONNECT)
        self.assertRefused(transport, "bad port")

    def test_oversize_header_is_refused(self) -> None:
        """
        A v2 header announcing more than the cap aborts the connection, logged with the length.
        """
        wrapper, transport = self.connect()
        wrapper.dataReceived(v2(1, 0x11, length=60000))
        self.assertRefused(transport, "60000")

    def test_header_timeout(self) -> None:
        """
        A header not complete within the timeout aborts the connection exactly then, logged
        with the bytes received, and the timer and connection record are gone after the
        connection is lost.
        """
        wrapper, transport = self.connect()
        wrapper.dataReceived(V2_TCP4[:20])
        self.clock.advance(proxy.HEADER_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.1)
        self.assertRefused(transport, "no complete PROXY header within 10 s", "20 bytes")
        wrapper.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.factory.protocols, {})

    def test_silent_client_times_out(self) -> None:
        """
        The header timeout is 10 seconds, as in VerneMQ (Ranch); a client that sends nothing is
        dropped then.
        """
        self.assertEqual(proxy.HEADER_TIMEOUT, 10.0)  # as VerneMQ/Ranch
        wrapper, transport = self.connect()
        self.clock.advance(10)
        self.assertRefused(transport, "0 bytes")

    def test_no_timeout_once_the_header_is_in(self) -> None:
        """
        A header completed within the timeout, however slowly, cancels the timer, and the
        connection stays open afterwards.
        """
        wrapper, transport = self.connect()
        for b in V2_TCP4:  # slowly (28 bytes), but within the timeout
            self.clock.advance(0.3)
            wrapper.dataReceived(bytes([b]))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.assertFalse(transport.disconnected)
        self.assertEqual(len(self.inner.built), 1)

    def test_timeout_can_be_turned_off(self) -> None:
        """With ``timeout=None`` no header timer is scheduled."""
        factory = ProxyProtocolFactory(self.inner, self.clock, timeout=None)
        wrapper = factory.buildProtocol(HAPROXY)
        wrapper.makeConnection(StringTransport(peerAddress=HAPROXY))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_lost_before_the_header(self) -> None:
        """
        A connection lost before the header is complete cancels the timer, forgets the
        connection, builds no inner protocol and logs nothing (a proxy closing early is not an
        error).
        """
        wrapper, transport = self.connect()
        self.assertEqual(len(self.factory.protocols), 1)
        wrapper.dataReceived(V1_TCP4[:10])
        wrapper.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.factory.protocols, {})
        self.assertEqual(self.inner.built, [])
        self.assertEqual(self.log_lines(), [])  # a proxy closing early is not an error

    def test_connection_lost_after_the_header(self) -> None:
        """
        A connection lost after the header is passed to the inner protocol with the same
        reason, and the wrapper lets go of it.
        """
        wrapper, transport = self.connect()
        wrapper.dataReceived(V1_TCP4)
        (inner,) = self.inner.built
        reason = Failure(ConnectionDone())
        wrapper.connectionLost(reason)
        self.assertIs(inner.lost, reason)
        self.assertEqual(self.factory.protocols, {})
        self.assertIsNone(wrapper.wrappedProtocol)

    def test_inner_factory_refusing(self) -> None:
        """
        When the inner factory refuses the connection (``buildProtocol`` returns ``None``)
        after the header, the connection is closed, counted as refused and logged once.
        """
        factory = ProxyProtocolFactory(InnerFactory(refuse=True), self.clock, name="x")
        factory.log = Logger(namespace="test", observer=self.events.append)
        wrapper = factory.buildProtocol(HAPROXY)
        transport = StringTransport(peerAddress=HAPROXY)
        wrapper.makeConnection(transport)
        wrapper.dataReceived(V1_TCP4 + CONNECT)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(factory.refused, 1)
        self.assertEqual(len(self.events), 1)

    def test_proxy_factory_for_a_listener(self) -> None:
        """
        ``proxy_factory`` wraps a listener's factory with the listener's name, the 10 second
        timeout and the given clock.
        """
        listener = parse("listener.tcp.edge = 127.0.0.1:0\n"
                         "listener.tcp.edge.proxy_protocol = on\n").listeners[0]
        factory = proxy.proxy_factory(listener, self.inner, self.clock)
        self.assertIsInstance(factory, ProxyProtocolFactory)
        self.assertIs(factory.wrappedFactory, self.inner)
        self.assertEqual((factory.name, factory.timeout), ("tcp.edge", 10.0))
        self.assertIs(factory.clock, self.clock)


# ---------------------------------------------------------------------------
# Identity through the chain
# ---------------------------------------------------------------------------

def tcp_listener(extra: str = "", trusted: str = "127.0.0.1") -> Any:
    """A PROXY listener; with ``trusted`` sources (so CN-as-username is on by default)."""
    lines = "listener.tcp.edge = 127.0.0.1:0\nlistener.tcp.edge.proxy_protocol = on\n"
    if trusted:
        lines += f"listener.tcp.edge.proxy_protocol_trusted_sources = {trusted}\n"
    return parse(lines + extra).listeners[0]


class IdentityTests(SynchronousTestCase):

    def inner_after(self, header: bytes) -> Inner:
        inner = InnerFactory()
        factory = ProxyProtocolFactory(inner, Clock())
        wrapper = factory.buildProtocol(HAPROXY)
        wrapper.makeConnection(StringTransport(peerAddress=HAPROXY))
        wrapper.dataReceived(header)
        return inner.built[0]

    def test_cn_becomes_the_preauth_username(self) -> None:
        """
        A verified TLS client CN from the PROXY header becomes the username on a
        ``proxy_protocol = on`` listener with trusted sources, since
        ``proxy_protocol_use_cn_as_username`` is then on by default.
        """
        inner = self.inner_after(V2_TCP4_SSL)
        # default with trusted sources: proxy_protocol_use_cn_as_username = on
        self.assertEqual(preauth_username(inner.transport, tcp_listener()), "alice")

    def test_cn_ignored_by_default_without_trusted_sources(self) -> None:
        """
        Without ``proxy_protocol_trusted_sources`` (any peer may send a header),
        ``proxy_protocol_use_cn_as_username`` defaults to off: a header's CN is not
        the username unless the option is set explicitly.
        """
        inner = self.inner_after(V2_TCP4_SSL)
        self.assertIsNone(preauth_username(inner.transport, tcp_listener(trusted="")))
        explicit = tcp_listener("listener.tcp.edge.proxy_protocol_use_cn_as_username = on\n",
                                trusted="")
        self.assertEqual(preauth_username(inner.transport, explicit), "alice")

    def test_cn_ignored_when_the_option_is_off(self) -> None:
        """
        With ``proxy_protocol_use_cn_as_username = off`` the PROXY header's CN is not used as
        the username.
        """
        inner = self.inner_after(V2_TCP4_SSL)
        listener = tcp_listener("listener.tcp.edge.proxy_protocol_use_cn_as_username = off\n")
        self.assertIsNone(preauth_username(inner.transport, listener))

    def test_unverified_certificate_is_no_username(self) -> None:
        """
        A CN whose certificate the proxy did not verify is parsed but never used as the
        username.
        """
        header = v2(1, 0x11, inet4("1.1.1.1", "2.2.2.2", 1, 2) +
                    ssl_tlv(0x07, 21, tlv(0x22, b"mallory")))
        inner = self.inner_after(header)
        self.assertEqual(inner.transport.proxy_info.ssl.cn, "mallory")
        self.assertIsNone(preauth_username(inner.transport, tcp_listener()))

    def test_no_ssl_tlv_keeps_the_connect_username(self) -> None:
        """
        v1 headers, v2 headers without an SSL TLV and ``LOCAL`` headers give no pre-auth
        username.
        """
        for header in (V1_TCP4, V2_TCP4, v2(0, 0)):
            inner = self.inner_after(header)
            self.assertIsNone(preauth_username(inner.transport, tcp_listener()))

    def test_through_a_layer_above_the_wrapper(self) -> None:
        """A ProtocolWrapper-style layer above (TLS, WebSocket) delegates
        getPeer() and exposes ``.transport``: the peer and CN are found."""
        from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
        inner = InnerFactory()
        factory = ProxyProtocolFactory(WrappingFactory(inner), Clock())
        wrapper = factory.buildProtocol(HAPROXY)
        wrapper.makeConnection(StringTransport(peerAddress=HAPROXY))
        wrapper.dataReceived(V2_TCP4_SSL)
        (top,) = inner.built
        self.assertIsInstance(top.transport, ProtocolWrapper)
        self.assertEqual(top.made_peer, IPv4Address("TCP", "198.51.100.22", 35646))
        self.assertIn(wrapper, list(transports(top.transport)))
        self.assertEqual(preauth_username(top.transport, tcp_listener()), "alice")


class MQTTBehindProxyTests(SynchronousTestCase):
    """The real MQTT protocol behind the wrapper: the peer it records is the
    client's, and a CONNECT in the same segment as the header is answered."""

    def test_connect_after_header(self) -> None:
        """
        A CONNECT in the same segment as a PROXY header is answered with CONNACK, and the
        MQTT connection and its session record the client's address from the header, not the
        proxy's.
        """
        config = parse("allow_anonymous = on\nlistener.tcp.edge = 127.0.0.1:0\n"
                       "listener.tcp.edge.proxy_protocol = on\n")
        clock = Clock()
        broker = Broker(config, clock)
        from vmqtw.transport.protocol import MQTTFactory
        mqtt = MQTTFactory(broker, Authorizer(Chain([]), True), config.listeners[0], clock)
        factory = ProxyProtocolFactory(mqtt, clock)
        wrapper = factory.buildProtocol(HAPROXY)
        transport = StringTransport(peerAddress=HAPROXY, hostAddress=LISTENER)
        wrapper.makeConnection(transport)
        wrapper.dataReceived(V1_TCP6 + CONNECT)
        broker.flush()
        self.assertEqual(transport.value()[:4], b"\x20\x02\x00\x00")
        protocol = wrapper.wrappedProtocol
        self.assertEqual(protocol.peer, ("2001:db8::1", 51234))
        session = broker.sessions[("", "c")]
        self.assertEqual(session.peer, ("2001:db8::1", 51234))
        wrapper.connectionLost(Failure(ConnectionDone()))
        broker.flush()
        for call in clock.getDelayedCalls():
            call.cancel()


# ---------------------------------------------------------------------------
# PROXY outside TLS: bytes -> PROXY -> TLS -> application
# ---------------------------------------------------------------------------

class HeaderThenInner(Protocol):
    """Client side: writes a PROXY header, then runs ``inner`` (TLS) on the connection."""

    def __init__(self, header: bytes, inner: Any) -> None:
        self.header = header
        self.inner = inner

    def makeConnection(self, transport: Any) -> None:
        transport.write(self.header)
        self.inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.inner.connectionLost(reason)


class Greeter(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def connectionMade(self) -> None:
        self.transport.write(b"hello")

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class TLSUnderProxyTests(SynchronousTestCase):

    def test_proxy_then_tls(self) -> None:
        """
        With PROXY outside TLS, application data flows through both layers, the application
        sees the client's address from the header, and both identities are found down the
        chain: the proxy's CN for a tcp listener with ``proxy_protocol`` and the broker-
        verified client certificate's CN for an ssl listener with ``use_identity_as_username``.
        """
        ca = trustme.CA()
        server_cert = ca.issue_cert("broker.example")
        client_cert = ca.issue_cert(common_name="bob")
        trust = ssl.Certificate.loadPEM(ca.cert_pem.bytes())
        server_opts = ssl.CertificateOptions(
            privateKey=ssl.PrivateCertificate.loadPEM(
                server_cert.private_key_and_cert_chain_pem.bytes()).privateKey.original,
            certificate=ssl.Certificate.loadPEM(server_cert.cert_chain_pems[0].bytes()).original,
            verify=True, caCerts=[trust.original], requireCertificate=True)
        client_opts = ssl.optionsForClientTLS(
            "broker.example", trustRoot=trust,
            clientCertificate=ssl.PrivateCertificate.loadPEM(
                client_cert.private_key_and_cert_chain_pem.bytes()))

        servers: list[Inner] = []

        class ServerFactory(Factory):
            def buildProtocol(self, addr: Any) -> Inner:
                p = Inner()
                servers.append(p)
                return p

        clock = Clock()
        tls_server = TLSMemoryBIOFactory(server_opts, False, ServerFactory(), clock)
        proxy_factory = ProxyProtocolFactory(tls_server, clock)
        server_proto = proxy_factory.buildProtocol(HAPROXY)
        greeter = Greeter()
        client_tls = TLSMemoryBIOFactory(client_opts, True, Factory.forProtocol(lambda: greeter),
                                         clock)
        client_proto = HeaderThenInner(V2_TCP4_SSL, client_tls.buildProtocol(LISTENER))
        pump = iosim.connect(
            server_proto, iosim.FakeTransport(server_proto, True, LISTENER, HAPROXY),
            client_proto, iosim.FakeTransport(client_proto, False, HAPROXY, LISTENER),
            greet=False, clock=clock)
        for _ in range(20):  # each pump also advances the clock (TLS write buffering)
            pump.pump()
        (app,) = servers
        self.assertEqual(app.data, b"hello")
        real = IPv4Address("TCP", "198.51.100.22", 35646)
        self.assertEqual(app.made_peer, real)                # through the TLS layer
        self.assertEqual(peer_of(app.transport), ("198.51.100.22", 35646))
        # Both identities are found down the chain: the proxy's CN and the
        # certificate the broker's own TLS layer verified.
        listener = tcp_listener()
        self.assertEqual(preauth_username(app.transport, listener), "alice")
        ssl_listener = parse("listener.ssl.s = 127.0.0.1:0\nlistener.ssl.s.certfile = x\n"
                             "listener.ssl.s.keyfile = y\n"
                             "listener.ssl.s.use_identity_as_username = on\n").listeners[0]
        self.assertEqual(preauth_username(app.transport, ssl_listener), "bob")
        self.assertEqual(clock.getDelayedCalls(), [])

