"""``listener.ssl.NAME`` listeners with real clients: mosquitto_pub/sub (system
OpenSSL 3.0), paho-mqtt (Python's ssl) and an in-reactor pyOpenSSL probe
(cryptography's OpenSSL) for exact versions, ciphers, curves and PSK.

Certificates come from tests/certs.py (trustme + cryptography, no openssl).
"""
from __future__ import annotations

import os
import re
import shutil
import ssl
import sys
import tempfile
import time

from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher

from tests.certs import PSK_HEX, PSK_TEXT, certs
from tests.support import (
    CONNACK_OK, REPO, BrokerTestCase, SubscriptionWatcher,
    connect_packet, in_thread, quiet_period, run_process,
)
from tests.tls_clients import PUB, SUB, Refused, mosquitto, probe, tls_connect, client_context
from vmqtw.transport.identity import preauth_username

PROCESS_TIMEOUT = 30.0


def ssl_listener(name: str, **options: str) -> str:
    """Config lines for listener.ssl.NAME on port 0 with the broker's
    certificate (certfile holds leaf + intermediate), plus ``options``."""
    c = certs()
    opts = {"certfile": c.server, "keyfile": c.server_key, **options}
    lines = [f"listener.ssl.{name} = 127.0.0.1:0"]
    lines += [f"listener.ssl.{name}.{k} = {v}" for k, v in opts.items() if v is not None]
    return "\n".join(lines) + "\n"


def mtls(name: str, **options: str) -> str:
    return ssl_listener(name, **{"cafile": certs().ca, "require_certificate": "on", **options})


def client_args(name: str | None) -> list[str]:
    """mosquitto arguments: trust the root CA and present NAME's certificate."""
    c = certs()
    args = ["--cafile", c.ca]
    if name is not None:
        cert, key = c.client(name)
        args += ["--cert", cert, "--key", key]
    return args


def pub_args(*extra: str, topic: str = "t/x", message: str = "m") -> list[str]:
    """A QoS 1 publish: exit status 0 only after the broker's PUBACK."""
    return ["-t", topic, "-m", message, "-q", "1", "-i", "pub", *extra]


def mqtt_protocols(service, listener: str) -> list:
    """The MQTT protocols of a listener's open connections (below each: the TLS
    transport, then the connection-limit wrapper)."""
    out = []
    for wrapper in service.listeners[listener].limiter.protocols:
        tls_proto = wrapper.wrappedProtocol
        out.append(tls_proto.wrappedProtocol)
    return out


class _TLSCase(BrokerTestCase):
    timeout = 60

    def capture_tls_log(self) -> list[str]:
        """Messages the TLS layer logs from now on, formatted."""
        lines: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_namespace") == "vmqtw.tls":
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return lines

    def port(self, listener: str) -> int:
        return self.port_of(self.broker, listener)

    @inlineCallbacks
    def pub(self, listener: str, *args: str, expect_ok: bool = True, topic: str = "t/x",
            message: str = "m"):
        out, err, code = yield mosquitto(PUB, self.port(listener),
                                         pub_args(*args, topic=topic, message=message))
        if expect_ok:
            self.assertEqual(code, 0, f"mosquitto_pub on {listener} {args}: {err!r}")
        else:
            self.assertNotEqual(code, 0, f"mosquitto_pub on {listener} {args} was served")
        return out, err, code

    @inlineCallbacks
    def refused_probe(self, listener: str, **kw):
        try:
            info = yield probe(self.port(listener), self, **kw)
        except Refused as e:
            return e
        self.fail(f"{listener}: {kw} was accepted: {info}")


# ---------------------------------------------------------------------------
# Server TLS
# ---------------------------------------------------------------------------

class ServerTLSTests(_TLSCase):

    def setUp(self):
        c = certs()
        self.broker = self.start_broker(
            "allow_anonymous = on\n" + ssl_listener("default")
            + ssl_listener("leafonly", certfile=c.path("server-leaf-only.pem"),
                           keyfile=c.path("server-leaf-only.key")))

    @inlineCallbacks
    def test_round_trip_paho_and_mosquitto(self):
        """A paho subscriber and a mosquitto_pub publisher, both over TLS trusting the root
        CA, exchange a QoS 1 message through an ssl listener."""
        c = certs()
        port = self.port("ssl.default")
        sub = self.paho(port, "sub")
        sub.client.tls_set(ca_certs=c.ca)

        def subscribe():
            sub.connect()
            return sub.subscribe("t/#", 1)

        self.assertEqual((yield in_thread(subscribe)), [1])
        yield self.pub("ssl.default", *client_args(None), message="over-tls")
        msg = yield in_thread(sub.get)
        self.assertEqual((msg.topic, msg.payload), ("t/x", b"over-tls"))

    @inlineCallbacks
    def test_whole_certificate_chain_is_sent(self):
        """The broker sends its whole certificate chain (leaf and intermediate from
        certfile), so a client trusting only the root verifies it, over TLS 1.3 by default;
        with a leaf-only certfile such a client fails and one that also trusts the
        intermediate succeeds."""
        # Clients trust only the root; the broker's leaf is issued by the
        # intermediate, which must come from the broker (certfile).
        info = yield probe(self.port("ssl.default"), self, ca=certs().ca)
        self.assertEqual(info["serials"][0], certs().serials["server"])
        self.assertEqual(len(info["serials"]), 2)
        self.assertEqual(info["version"], "TLSv1.3")  # the default tls_version: 1.2 and 1.3
        # A certfile with the leaf alone cannot be verified by such a client.
        yield self.pub("ssl.leafonly", *client_args(None), expect_ok=False)
        yield self.pub("ssl.leafonly", "--cafile", certs().path("ca+intermediate.pem"))


# ---------------------------------------------------------------------------
# Mutual TLS
# ---------------------------------------------------------------------------

class MutualTLSTests(_TLSCase):

    def setUp(self):
        c = certs()
        self.broker = self.start_broker(
            "allow_anonymous = on\ncrl_refresh_interval = 30000\n"
            + mtls("mtls", crlfile=c.path("crl.pem"))
            + mtls("mtls13", crlfile=c.path("crl.pem"), tls_version="tlsv1.3")
            + mtls("depth0", depth="0")
            + mtls("selfie", cafile=c.path("ca+selfie.pem"))
            + ssl_listener("cn", cafile=c.ca, use_identity_as_username="on"))

    @inlineCallbacks
    def test_alice_accepted_by_mosquitto_and_paho(self):
        """With require_certificate on, a client certificate issued by the trusted CA is
        accepted over TLS 1.2 and 1.3, by mosquitto_pub and by paho."""
        c = certs()
        yield self.pub("ssl.mtls", *client_args("alice"))
        yield self.pub("ssl.mtls13", *client_args("alice"), "--tls-version", "tlsv1.3")
        cert, key = c.client("alice")
        client = self.paho(self.port("ssl.mtls"), "paho-alice")
        client.client.tls_set(ca_certs=c.ca, certfile=cert, keyfile=key)
        rc = yield in_thread(client.connect)
        self.assertEqual(rc[0], 0)

    @inlineCallbacks
    def test_refused_during_the_handshake(self):
        """With require_certificate on, clients without a certificate or with a self-signed,
        expired, revoked (CRL) or unknown-issuer one are refused during the TLS handshake
        (1.2 and 1.3) before any MQTT session, and the broker logs the reason per
        listener."""
        log = self.capture_tls_log()
        for listener in ("ssl.mtls", "ssl.mtls13"):
            extra = ["--tls-version", "tlsv1.3"] if listener == "ssl.mtls13" else []
            for who in (None, "selfie", "expired", "mallory", "stranger"):
                yield self.pub(listener, *client_args(who), *extra, expect_ok=False)
        # Not one of them got as far as MQTT...
        self.assertEqual(self.broker.broker.sessions, {})
        # ...and the broker logged why (with TLS 1.3 mosquitto only sees the
        # connection drop: the server checks the certificate after its Finished).
        for listener in ("ssl.mtls", "ssl.mtls13"):
            mine = "\n".join(line for line in log if f"listener {listener}:" in line)
            for reason in ("did not return a certificate", "self-signed",
                           "certificate has expired", "certificate revoked",
                           "unable to get local issuer certificate"):
                self.assertIn(reason, mine, f"{listener}: {mine}")
        # The probe sees the same: no CONNACK for mallory, in TLS 1.2 and 1.3.
        c = certs()
        cert, key = c.client("mallory")
        for listener in ("ssl.mtls", "ssl.mtls13"):
            yield self.refused_probe(listener, ca=c.ca, cert=cert, key=key)

    @inlineCallbacks
    def test_paho_without_certificate_refused(self):
        """A paho client presenting no certificate to a require_certificate listener cannot
        connect."""
        client = self.paho(self.port("ssl.mtls"), "paho-anon")
        client.client.tls_set(ca_certs=certs().ca)

        def attempt():
            try:
                client.connect()
            except (ssl.SSLError, OSError, AssertionError) as e:
                return e
            return None

        error = yield in_thread(attempt)
        self.assertIsNotNone(error, "paho without a certificate was served")

    @inlineCallbacks
    def test_depth(self):
        """depth = 0 refuses a client certificate issued through an intermediate and accepts
        one issued by the root; the default depth accepts it, and a CRL file with no CRL for
        the intermediate does not refuse it (VerneMQ semantics)."""
        # bob: root -> intermediate -> bob, one intermediate.
        yield self.pub("ssl.depth0", *client_args("bob"), expect_ok=False)
        yield self.pub("ssl.depth0", *client_args("alice"))
        # depth 1 (the default) accepts him, and the CRL file having no CRL
        # for the intermediate does not refuse him (VerneMQ's semantics).
        yield self.pub("ssl.mtls", *client_args("bob"))

    def test_crl_is_re_read_every_crl_refresh_interval(self):
        """crl_refresh_interval (global, in milliseconds) sets how often a listener with a
        crlfile re-reads it (30 s here, a running loop); a listener without a crlfile has no
        such loop."""
        factory = self.broker.listeners["ssl.mtls"].layers[0]
        self.assertEqual(factory.crl_refresh_interval, 30.0)  # the global key, in seconds
        self.assertTrue(factory._crl_loop.running)  # stopped with the listener
        self.assertIsNone(self.broker.listeners["ssl.depth0"].layers[0]._crl_loop)  # no crlfile

    @inlineCallbacks
    def test_self_signed_leaf_refused_even_when_trusted(self):
        """A self-signed client certificate is refused even when the cafile trusts it, with
        a log line naming it; a properly issued one is accepted on the same listener."""
        log = self.capture_tls_log()
        # ca+selfie.pem trusts the self-signed certificate itself.
        yield self.pub("ssl.selfie", *client_args("selfie"), expect_ok=False)
        yield self.pub("ssl.selfie", *client_args("alice"))
        self.assertIn("self-signed client certificate (depth 0, CN 'selfie')", "\n".join(log))

    @inlineCallbacks
    def test_certificate_cn_is_the_preauth_username(self):
        """With use_identity_as_username on, a client certificate's CN becomes the pre-auth
        user name and the session's user name; a client without a certificate is refused
        at the handshake (#14: the option implies require_certificate, so nobody falls
        back to a CONNECT user name)."""
        c = certs()
        listener = self.broker.listeners["ssl.cn"].listener
        cert, key = c.client("alice")
        client = yield tls_connect(self.port("ssl.cn"),
                                   client_context(ca=c.ca, cert=cert, key=key), self)
        client.send(connect_packet("with-cert"))
        self.assertEqual((yield client.read(4)), CONNACK_OK)
        # No certificate: refused, whatever user name the CONNECT would claim.
        yield self.refused_probe("ssl.cn", ca=c.ca)
        names = {}
        for proto in mqtt_protocols(self.broker, "ssl.cn"):
            names[proto.client.client_id] = preauth_username(proto.transport, listener)
        self.assertEqual(names, {"with-cert": "alice"})
        # ... and it replaced the (absent) CONNECT username for auth and the session.
        sessions = self.broker.broker.sessions
        self.assertEqual(sessions[("", "with-cert")].username, "alice")
        self.assertNotIn(("", "no-cert"), sessions)


# ---------------------------------------------------------------------------
# TLS versions, ciphers, curves
# ---------------------------------------------------------------------------

ALL_VERSIONS = ("tlsv1", "tlsv1.1", "tlsv1.2", "tlsv1.3")


class VersionTests(_TLSCase):

    def setUp(self):
        self.broker = self.start_broker(
            "allow_anonymous = on\n"
            + "".join(ssl_listener(v.replace(".", "_"), tls_version=v) for v in ALL_VERSIONS)
            + ssl_listener("gap", tls_version="tlsv1.1,tlsv1.3")
            + ssl_listener("modern", tls_version="tlsv1.2,tlsv1.3")
            + ssl_listener("default"))

    @inlineCallbacks
    def test_each_version_allowed_and_refused(self):
        """tls_version lists the TLS versions a listener accepts: each listener negotiates
        exactly its listed versions and refuses the others (default TLS 1.2 and 1.3), and a client
        offering every version gets the listener's highest."""
        c = certs()
        cases = {v.replace(".", "_"): (v,) for v in ALL_VERSIONS}
        cases.update(gap=("tlsv1.1", "tlsv1.3"), modern=("tlsv1.2", "tlsv1.3"),
                     default=("tlsv1.2", "tlsv1.3"))
        names = {"tlsv1": "TLSv1", "tlsv1.1": "TLSv1.1", "tlsv1.2": "TLSv1.2",
                 "tlsv1.3": "TLSv1.3"}
        for listener, allowed in cases.items():
            for client_version in ALL_VERSIONS:
                where = f"ssl.{listener}"
                if client_version in allowed:
                    info = yield probe(self.port(where), self, ca=c.ca, versions=client_version)
                    self.assertEqual(info["version"], names[client_version], where)
                else:
                    yield self.refused_probe(where, ca=c.ca, versions=client_version)
            # A client allowing every version gets the listener's highest.
            info = yield probe(self.port(f"ssl.{listener}"), self, ca=c.ca,
                               versions=("tlsv1", "tlsv1.3"))
            self.assertEqual(info["version"], names[allowed[-1]], listener)

    @inlineCallbacks
    def test_mosquitto_versions(self):
        """mosquitto clients reach listeners by TLS version: 1.2 on a 1.2 listener, 1.3 on
        1.3 and 1.2+1.3 listeners, 1.1 where listed (with the client at security level 0),
        and 1.3-only is refused by a 1.2 listener."""
        # mosquitto's --tls-version is a minimum; tlsv1.3 means 1.3 only.
        yield self.pub("ssl.tlsv1_2", *client_args(None), "--tls-version", "tlsv1.2")
        yield self.pub("ssl.tlsv1_2", *client_args(None), "--tls-version", "tlsv1.3",
                       expect_ok=False)
        yield self.pub("ssl.tlsv1_3", *client_args(None), "--tls-version", "tlsv1.3")
        yield self.pub("ssl.modern", *client_args(None), "--tls-version", "tlsv1.3")
        # TLS 1.1 needs security level 0 on the client side too (OpenSSL 3).
        yield self.pub("ssl.tlsv1_1", *client_args(None), "--tls-version", "tlsv1.1",
                       "--ciphers", "DEFAULT:@SECLEVEL=0")
        yield self.pub("ssl.gap", *client_args(None), "--tls-version", "tlsv1.1",
                       "--ciphers", "DEFAULT:@SECLEVEL=0")

    @inlineCallbacks
    def test_paho_capped_at_tls12_refused_by_a_tls13_listener(self):
        """A paho client whose SSL context caps at TLS 1.2 is refused by a TLS 1.3-only
        listener and connects to a 1.2 one."""
        c = certs()

        def attempt(listener):
            ctx = ssl.create_default_context(cafile=c.ca)
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            client = self.paho(self.port(listener), f"paho-{listener}")
            client.client.tls_set_context(ctx)
            try:
                return client.connect()[0]
            except (ssl.SSLError, OSError, AssertionError) as e:
                return e

        self.assertIsInstance((yield in_thread(attempt, "ssl.tlsv1_3")), Exception)
        self.assertEqual((yield in_thread(attempt, "ssl.tlsv1_2")), 0)


class CipherAndCurveTests(_TLSCase):

    def setUp(self):
        self.broker = self.start_broker(
            "allow_anonymous = on\n"
            + ssl_listener("c12", ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
            + ssl_listener("c13", tls_version="tlsv1.3", ciphers="TLS_CHACHA20_POLY1305_SHA256")
            + ssl_listener("ecc", tls_version="tlsv1.2,tlsv1.3", eccs="[secp384r1]"))

    @inlineCallbacks
    def test_ciphers_restrict_tls12(self):
        """A listener's ciphers restrict the TLS 1.2 suites: a client offering only another
        suite is refused, one offering the configured suite connects and negotiates it."""
        c = certs()
        yield self.pub("ssl.c12", *client_args(None), "--ciphers",
                       "ECDHE-ECDSA-AES256-GCM-SHA384", expect_ok=False)
        yield self.pub("ssl.c12", *client_args(None), "--ciphers",
                       "ECDHE-ECDSA-AES128-GCM-SHA256")
        info = yield probe(self.port("ssl.c12"), self, ca=c.ca)
        self.assertEqual(info["cipher"], "ECDHE-ECDSA-AES128-GCM-SHA256")

    @inlineCallbacks
    def test_tls13_suites(self):
        """On a TLS 1.3 listener ciphers selects the 1.3 suites: a client offering only
        another suite is refused, one offering the configured suite among others negotiates
        it."""
        c = certs()
        yield self.refused_probe("ssl.c13", ca=c.ca, tls13="TLS_AES_256_GCM_SHA384")
        info = yield probe(self.port("ssl.c13"), self, ca=c.ca,
                           tls13="TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256")
        self.assertEqual(info["cipher"], "TLS_CHACHA20_POLY1305_SHA256")

    @inlineCallbacks
    def test_curves(self):
        """eccs restricts the key-exchange groups: a client offering only P-256 is refused
        and one also offering secp384r1 is served, in TLS 1.2 and 1.3."""
        c = certs()
        for version in ("tlsv1.2", "tlsv1.3"):
            yield self.refused_probe("ssl.ecc", ca=c.ca, versions=version, groups="P-256")
            info = yield probe(self.port("ssl.ecc"), self, ca=c.ca, versions=version,
                               groups="secp384r1:P-256")
            self.assertEqual(info["version"], "TLSv1.2" if version == "tlsv1.2" else "TLSv1.3")


# ---------------------------------------------------------------------------
# TLS-PSK
# ---------------------------------------------------------------------------

class PSKTests(_TLSCase):

    def setUp(self):
        c = certs()
        self.broker = self.start_broker(
            "allow_anonymous = on\n"
            f"listener.ssl.pskfile = {c.path('psk.txt')}\n"
            # PSK-only listeners: no certificate at all
            "listener.ssl.psk = 127.0.0.1:0\n"
            "listener.ssl.psk.psk_support = on\n"
            "listener.ssl.psk.psk_identity_hint = HINT-1\n"
            "listener.ssl.psk13 = 127.0.0.1:0\n"
            "listener.ssl.psk13.psk_support = on\n"
            "listener.ssl.psk13.tls_version = tlsv1.2,tlsv1.3\n"
            "listener.ssl.pskid = 127.0.0.1:0\n"
            "listener.ssl.pskid.psk_support = on\n"
            "listener.ssl.pskid.use_identity_as_username = on\n"
            + ssl_listener("both", psk_support="on"))

    def psk(self, identity: str = "client1", hex_key: str = PSK_HEX) -> list[str]:
        return ["--psk", hex_key, "--psk-identity", identity]

    @inlineCallbacks
    def test_right_key_wrong_key_unknown_identity(self):
        """A PSK listener serves the right identity and key and refuses a wrong key or
        unknown identity; a pskfile line is split at its first separator (the key may
        contain colons) and holds the key as raw text."""
        yield self.pub("ssl.psk", *self.psk())
        yield self.pub("ssl.psk", *self.psk(hex_key="deadbeef"), expect_ok=False)
        yield self.pub("ssl.psk", *self.psk(identity="nobody"), expect_ok=False)
        # split at the first separator: the key of "other" is "abc:with:colons"
        yield self.pub("ssl.psk", *self.psk("other", b"abc:with:colons".hex()))
        yield self.pub("ssl.psk", *self.psk("other", b"abc".hex()), expect_ok=False)
        self.assertEqual(PSK_HEX, PSK_TEXT.encode().hex())  # raw text, not hex, in the file

    @inlineCallbacks
    def test_tls13_and_the_identity_hint(self):
        """PSK works over TLS 1.3 (a wrong key refused); over TLS 1.2 the client gets the
        configured identity hint, negotiates a PSK suite, and a PSK-only listener sends no
        certificate."""
        yield self.pub("ssl.psk13", *self.psk(), "--tls-version", "tlsv1.3")
        yield self.pub("ssl.psk13", *self.psk(hex_key="deadbeef"), "--tls-version", "tlsv1.3",
                       expect_ok=False)
        hints: list[bytes] = []
        info = yield probe(self.port("ssl.psk"), self, psk=("client1", PSK_TEXT.encode()),
                           psk_hints=hints, versions="tlsv1.2")
        self.assertEqual(hints[-1], b"HINT-1")  # (a TLS 1.3 ClientHello asks first, unhinted)
        self.assertIn("PSK", info["cipher"])
        self.assertEqual(info["serials"], [])  # no certificate on a PSK-only listener

    @inlineCallbacks
    def test_certificate_and_psk_on_one_listener(self):
        """A listener with a certificate and psk_support on serves both PSK clients and
        certificate-verifying clients."""
        yield self.pub("ssl.both", *self.psk())
        yield self.pub("ssl.both", *client_args(None))

    @inlineCallbacks
    def test_psk_identity_is_the_preauth_username(self):
        """With use_identity_as_username on, the PSK identity becomes the connection's
        pre-auth user name (not on a listener without it), and messages still flow over
        PSK."""
        port = self.port("ssl.pskid")
        watcher = SubscriptionWatcher(self.broker)
        received = mosquitto(SUB, port, ["-t", "psk/t", "-q", "1", "-C", "1", "-W", "10",
                                         "-i", "psk-sub", *self.psk()], timeout=15)
        yield watcher.wait("psk/t")
        listener = self.broker.listeners["ssl.pskid"].listener
        (proto,) = mqtt_protocols(self.broker, "ssl.pskid")
        self.assertEqual(proto.transport.psk_identity, "client1")
        self.assertEqual(preauth_username(proto.transport, listener), "client1")
        # Without use_identity_as_username the CONNECT username stays.
        other = self.broker.listeners["ssl.psk"].listener
        self.assertIsNone(preauth_username(proto.transport, other))
        yield self.pub("ssl.pskid", *self.psk("other", b"abc:with:colons".hex()),
                       topic="psk/t", message="psk-round-trip")
        out, err, code = yield received
        self.assertEqual((code, out), (0, b"psk-round-trip\n"), err)


# ---------------------------------------------------------------------------
# Handshake timeout, reload, TCP options
# ---------------------------------------------------------------------------

class HandshakeTimeoutTests(_TLSCase):

    @inlineCallbacks
    def test_silent_client_dropped_finished_client_kept(self):
        """A client that never completes its TLS handshake is closed after
        tls_handshake_timeout (300 ms, not sooner) and counted, while a client that finished
        its handshake earlier stays connected and is served."""
        self.broker = self.start_broker(
            "allow_anonymous = on\nmqtt_connect_timeout = 60000\n"
            + ssl_listener("slow", tls_handshake_timeout="300"))
        factory = self.broker.listeners["ssl.slow"].layers[0]
        done = yield tls_connect(self.port("ssl.slow"), client_context(ca=certs().ca), self)
        start = time.monotonic()
        silent = yield self.raw_client(self.broker, "ssl.slow")
        yield silent.when_closed(timeout=5.0, what="the handshake timeout")
        self.assertGreaterEqual(time.monotonic() - start, 0.25)
        self.assertEqual(factory.handshake_timeouts, 1)
        # The client that finished its handshake earlier is still served.
        yield quiet_period(0.1)
        self.assertFalse(done.is_closed)
        done.send(connect_packet("late"))
        self.assertEqual((yield done.read(4)), CONNACK_OK)


class ReloadTests(_TLSCase):

    def setUp(self):
        c = certs()
        self.dir = tempfile.mkdtemp(prefix="vmqtw-tls-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        c.copy(self.dir, "server.pem", "server.key", "crl.pem", "psk.txt")
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.broker = self.start_broker(
            "allow_anonymous = on\n"
            f"listener.ssl.pskfile = {self.path('psk.txt')}\n"
            + mtls("r", certfile=self.path("server.pem"), keyfile=self.path("server.key"),
                   crlfile=self.path("crl.pem"))
            + "listener.ssl.p = 127.0.0.1:0\nlistener.ssl.p.psk_support = on\n")

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    @inlineCallbacks
    def test_renewed_certificate_revocation_and_bad_file(self):
        """A reload applies a renewed server certificate and a new CRL to new connections (a
        revoked client is refused) while existing connections keep being served; a broken
        certfile keeps the previous context and logs which file failed."""
        c = certs()
        port = self.port("ssl.r")
        cert, key = c.client("alice")
        sub = self.paho(port, "alice-sub")
        sub.client.tls_set(ca_certs=c.ca, certfile=cert, keyfile=key)

        def subscribe():
            sub.connect()
            sub.subscribe("r/#", 1)

        yield in_thread(subscribe)
        old = yield probe(port, self, ca=c.ca, cert=cert, key=key)
        self.assertEqual(old["serials"][0], c.serials["server"])

        # 1. renewed server certificate
        shutil.copy(c.path("server-renewed.pem"), self.path("server.pem"))
        shutil.copy(c.path("server-renewed.key"), self.path("server.key"))
        self.broker.reload()
        new = yield probe(port, self, ca=c.ca, cert=cert, key=key)
        self.assertEqual(new["serials"][0], c.serials["server-renewed"])
        yield self.pub("ssl.r", *client_args("bob"), topic="r/1", message="after-renewal")
        msg = yield in_thread(sub.get)  # the subscriber from before is still served
        self.assertEqual(msg.payload, b"after-renewal")

        # 2. alice revoked: new alice connections refused, hers stays up
        shutil.copy(c.path("crl-alice.pem"), self.path("crl.pem"))
        self.broker.reload()
        yield self.pub("ssl.r", *client_args("alice"), expect_ok=False)
        yield self.pub("ssl.r", *client_args("bob"), topic="r/2", message="after-revocation")
        msg = yield in_thread(sub.get)
        self.assertEqual(msg.payload, b"after-revocation")

        # 3. a broken certfile: the previous context stays, the log says why
        with open(self.path("server.pem"), "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        self.broker.reload()
        failures = [e for e in self.events if "TLS reload failed" in e.get("log_format", "")]
        self.assertEqual(len(failures), 1, failures)
        self.assertIn(f"listener.ssl.r.certfile: {self.path('server.pem')}",
                      failures[0]["reason"])
        again = yield probe(port, self, ca=c.ca, cert=c.client("bob")[0], key=c.client("bob")[1])
        self.assertEqual(again["serials"][0], c.serials["server-renewed"])
        yield self.pub("ssl.r", *client_args("bob"), topic="r/3", message="still-served")
        msg = yield in_thread(sub.get)
        self.assertEqual(msg.payload, b"still-served")

    @inlineCallbacks
    def test_reload_picks_up_new_psk_identities(self):
        """A PSK identity added to the pskfile is accepted after a reload, and the existing
        identities still work."""
        args = ["--psk", b"fresh-key".hex(), "--psk-identity", "newcomer"]
        yield self.pub("ssl.p", *args, expect_ok=False)
        with open(self.path("psk.txt"), "a") as f:
            f.write("newcomer:fresh-key\n")
        self.broker.reload()
        yield self.pub("ssl.p", *args)
        yield self.pub("ssl.p", "--psk", PSK_HEX, "--psk-identity", "client1")


class ListenerOptionTests(_TLSCase):
    """Options every TCP listener has apply to ssl listeners too."""

    @inlineCallbacks
    def test_mountpoint(self):
        """An ssl listener's mountpoint applies: its publishes reach a subscriber on a tcp
        listener with the same mountpoint and not one without a mountpoint."""
        self.broker = self.start_broker(
            "allow_anonymous = on\n" + ssl_listener("m", mountpoint="site")
            + "listener.tcp.site = 127.0.0.1:0\nlistener.tcp.site.mountpoint = site\n"
            + "listener.tcp.plain = 127.0.0.1:0\n")
        in_site = self.paho(self.port("tcp.site"), "in-site")
        plain = self.paho(self.port("tcp.plain"), "plain")
        plain_pub = self.paho(self.port("tcp.plain"), "plain-pub")

        def subscribe():
            for client in (in_site, plain, plain_pub):
                client.connect()
            in_site.subscribe("#", 1)
            plain.subscribe("#", 1)

        yield in_thread(subscribe)
        yield self.pub("ssl.m", *client_args(None), topic="m/x", message="from-ssl")

        def check():
            got = in_site.get()
            plain_pub.publish("marker", b"marker", 1)
            return (got.topic, got.payload), plain.get().payload

        site_msg, plain_first = yield in_thread(check)
        self.assertEqual(site_msg, ("m/x", b"from-ssl"))
        self.assertEqual(plain_first, b"marker")  # the ssl message did not leak out

    @inlineCallbacks
    def test_allow_anonymous_override(self):
        """allow_anonymous_override = on lets anonymous clients in on that ssl listener
        only; the other ssl listener refuses them with a CONNACK, after the TLS handshake
        succeeded."""
        # allow_anonymous is off and there is no auth plugin: only the ssl
        # listener with the override serves anonymous clients.
        self.broker = self.start_broker(
            ssl_listener("open", allow_anonymous_override="on") + ssl_listener("closed"))
        yield self.pub("ssl.open", *client_args(None))
        _, err, _ = yield self.pub("ssl.closed", *client_args(None), expect_ok=False)
        self.assertNotIn(b"TLS", err)  # refused by MQTT (CONNACK), not by TLS

    @inlineCallbacks
    def test_max_connections(self):
        """max_connections = 1 on an ssl listener keeps a second client waiting (no
        handshake, no CONNACK) until the first disconnects, then serves it; at most one
        connection was open."""
        c = certs()
        self.broker = self.start_broker(
            "allow_anonymous = on\n" + ssl_listener("mc", max_connections="1"))
        port = self.port("ssl.mc")
        first = yield tls_connect(port, client_context(ca=c.ca), self)
        first.send(connect_packet("first"))
        self.assertEqual((yield first.read(4)), CONNACK_OK)
        second = probe(port, self, client_id="second", ca=c.ca)
        yield quiet_period(0.3)
        self.assertFalse(second.called, "a second TLS client was served over the cap")
        yield first.close()
        info = yield second
        self.assertEqual(info["version"], "TLSv1.3")
        self.assertEqual(self.broker.listeners["ssl.mc"].limiter.high_water, 1)


# ---------------------------------------------------------------------------
# Startup errors in a real process
# ---------------------------------------------------------------------------

class StartupTests(_TLSCase):
    timeout = 120

    @inlineCallbacks
    def test_bad_tls_option_stops_python_m_vmqtw(self):
        """An unknown curve in eccs stops python -m vmqtw with exit status 1 and one error
        line CONFIG:LINE: key: reason, no traceback, and before any listener is bound."""
        sockdir = tempfile.mkdtemp(prefix="vmqtw-")
        self.addCleanup(shutil.rmtree, sockdir, True)
        sock = os.path.join(sockdir, "first.sock")
        config = self.write_config(
            "allow_anonymous = on\n"
            f"listener.tcp.first = local:{sock}:0\n"
            + ssl_listener("bad", eccs="[secp384r1, nocurve]"))
        out, err, code = yield run_process(sys.executable, ["-m", "vmqtw", "-c", config],
                                           timeout=PROCESS_TIMEOUT, cwd=REPO)
        self.assertEqual(code, 1, (out, err))
        lines = err.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertRegex(lines[0], re.escape(f"{config}:6: listener.ssl.bad.eccs: "
                                             "unknown curve 'nocurve'"))
        self.assertNotIn(b"Traceback", out + err)
        self.assertFalse(os.path.exists(sock), "a listener was bound before the error")
