"""
Tests for the typed settings of ``vmqtw.config``: ``ListenerConfig.tls``,
``.websocket``, ``.proxy``, ``BrokerConfig.store``, the ``--check`` TLS
description, and the layering of the package's modules.
"""

from __future__ import annotations

import ast
import dataclasses
import os

from twisted.trial.unittest import SynchronousTestCase

from vmqtw.config import (
    BrokerConfig,
    ListenerConfig,
    ProxyConfig,
    SettingError,
    StoreConfig,
    TLSConfig,
    WebSocketConfig,
    describe_listeners,
    describe_tls,
    parse,
)


def conf(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def listener(text: str, kind: str, name: str = "l") -> ListenerConfig:
    found = [lc for lc in parse(text, "b.conf").listeners
             if lc.kind == kind and lc.name == name]
    assert len(found) == 1, found
    return found[0]


class TLSConfigTests(SynchronousTestCase):

    def test_options_become_typed_settings(self) -> None:
        """Every TLS option of an ssl listener is in ``listener.tls`` as a typed
        value: lists as tuples, on/off as bools, milliseconds as seconds."""
        tls = listener(conf(
            "listener.ssl.l = 127.0.0.1:8883",
            "listener.ssl.l.certfile = /etc/server.pem",
            "listener.ssl.l.keyfile = /etc/server.key",
            "listener.ssl.l.keypasswd = secret",
            "listener.ssl.l.cafile = /etc/ca.pem",
            "listener.ssl.l.crlfile = /etc/crl.pem",
            "listener.ssl.l.ciphers = ECDHE-RSA-AES128-GCM-SHA256:TLS_AES_128_GCM_SHA256",
            "listener.ssl.l.eccs = [secp384r1, prime256v1]",
            "listener.ssl.l.tls_version = tlsv1.3,tlsv1.2",
            "listener.ssl.l.depth = 3",
            "listener.ssl.l.require_certificate = on",
            "listener.ssl.l.use_identity_as_username = true",
            "listener.ssl.l.tls_handshake_timeout = 2500",
            "listener.ssl.l.psk_support = on",
            "listener.ssl.pskfile = /etc/vmq.psk",
            "listener.ssl.pskfile_separator = ;",
            "listener.ssl.l.psk_identity_hint = hint",
        ), "ssl").tls
        assert tls is not None
        self.assertEqual(
            (tls.certfile, tls.keyfile, tls.keypasswd, tls.cafile, tls.crlfile),
            ("/etc/server.pem", "/etc/server.key", "secret", "/etc/ca.pem", "/etc/crl.pem"),
        )
        self.assertEqual(tls.ciphers, ("ECDHE-RSA-AES128-GCM-SHA256",))
        self.assertEqual(tls.tls13_suites, ("TLS_AES_128_GCM_SHA256",))
        self.assertEqual(tls.eccs, ("secp384r1", "prime256v1"))
        self.assertEqual(tls.versions, ("tlsv1.2", "tlsv1.3"))
        self.assertEqual(tls.depth, 3)
        self.assertIs(tls.require_certificate, True)
        self.assertIs(tls.use_identity_as_username, True)
        self.assertTrue(tls.verify_peer)
        self.assertEqual(tls.handshake_timeout, 2.5)
        self.assertEqual((tls.psk, tls.pskfile, tls.psk_separator, tls.psk_identity_hint),
                         (True, "/etc/vmq.psk", ";", "hint"))

    def test_defaults(self) -> None:
        """A listener that sets no TLS option gets VerneMQ's defaults."""
        tls = listener("listener.ssl.l = 127.0.0.1:8883\n", "ssl").tls
        assert tls is not None
        self.assertEqual(dataclasses.replace(tls, session_id=b"x"),
                         dataclasses.replace(TLSConfig(), session_id=b"x"))

    def test_protocol_level_values_are_inherited(self) -> None:
        """A protocol-level value reaches the named listener's typed settings."""
        tls = listener(conf(
            "listener.ssl.certfile = /etc/proto.pem",
            "listener.ssl.require_certificate = on",
            "listener.ssl.l = 127.0.0.1:8883",
        ), "ssl").tls
        assert tls is not None
        self.assertEqual((tls.certfile, tls.require_certificate), ("/etc/proto.pem", True))

    def test_no_handshake_timeout(self) -> None:
        """``infinity`` and 0 both mean no handshake timeout (None)."""
        for value in ("infinity", "0"):
            tls = listener(f"listener.ssl.l = 127.0.0.1:0\n"
                           f"listener.ssl.l.tls_handshake_timeout = {value}\n", "ssl").tls
            assert tls is not None
            self.assertIsNone(tls.handshake_timeout, value)

    def test_only_tls_kinds_have_tls_settings(self) -> None:
        """ssl and wss listeners have ``tls``; tcp and ws listeners have None."""
        cfg = parse(conf(
            "listener.tcp.a = 127.0.0.1:1",
            "listener.ws.b = 127.0.0.1:2",
            "listener.ssl.c = 127.0.0.1:3",
            "listener.wss.d = 127.0.0.1:4",
        ))
        self.assertEqual([lc.tls is not None for lc in cfg.listeners],
                         [False, False, True, True])

    def test_session_id_is_per_listener(self) -> None:
        """Each listener gets its own TLS session-cache context."""
        cfg = parse("listener.ssl.a = 127.0.0.1:1\nlistener.ssl.b = 127.0.0.1:2\n")
        a, b = (lc.tls for lc in cfg.listeners)
        assert a is not None and b is not None
        self.assertNotEqual(a.session_id, b.session_id)

    def test_replaced_options_are_read_again(self) -> None:
        """A listener made with ``dataclasses.replace(options=...)`` gets settings
        from its new options, and a bad value there names its option."""
        lc = listener("listener.ssl.l = 127.0.0.1:0\n", "ssl")
        other = dataclasses.replace(lc, options={**lc.options, "depth": "4"})
        assert other.tls is not None
        self.assertEqual(other.tls.depth, 4)
        bad = dataclasses.replace(lc, options={**lc.options, "depth": "deep"})
        err = self.assertRaises(SettingError, getattr, bad, "tls")
        self.assertEqual(err.option, "depth")
        self.assertIn("'deep'", err.message)


class TLSInvariantTests(SynchronousTestCase):
    """A TLSConfig built in code is checked like one read from a file."""

    def test_versions_are_sorted_oldest_first(self) -> None:
        """``versions`` is kept oldest first, whatever order it is given in."""
        self.assertEqual(TLSConfig(versions=("tlsv1.3", "tlsv1")).versions,
                         ("tlsv1", "tlsv1.3"))

    def test_unknown_or_missing_version(self) -> None:
        """An unknown TLS version, or none at all, is a SettingError on tls_version."""
        err = self.assertRaises(SettingError, TLSConfig, versions=("sslv3",))
        self.assertEqual(err.option, "tls_version")
        self.assertIn("unknown TLS version 'sslv3'", err.message)
        err = self.assertRaises(SettingError, TLSConfig, versions=())
        self.assertEqual((err.option, err.message), ("tls_version", "no TLS version given"))

    def test_bad_numbers_and_separator(self) -> None:
        """A negative depth or timeout, or a separator that is not one character,
        names its option."""
        for kwargs, option in (({"depth": -1}, "depth"),
                               ({"handshake_timeout": -1.0}, "tls_handshake_timeout"),
                               ({"psk_separator": "::"}, "pskfile_separator")):
            err = self.assertRaises(SettingError, TLSConfig, **kwargs)
            self.assertEqual(err.option, option)


class WebSocketConfigTests(SynchronousTestCase):

    def test_defaults(self) -> None:
        """A ws listener that sets nothing gets the default WebSocket settings."""
        self.assertEqual(listener("listener.ws.l = 127.0.0.1:0\n", "ws").websocket,
                         WebSocketConfig())

    def test_options_become_typed_settings(self) -> None:
        """The WebSocket and X-Forwarded-For options of a ws listener are typed."""
        ws = listener(conf(
            "listener.ws.l = 127.0.0.1:0",
            "listener.ws.websocket_path = /ws",
            "listener.ws.l.websocket_compression = true",
            "listener.ws.l.max_request_line_length = 100",
            "listener.ws.l.max_header_value_length = 200",
            "listener.ws.proxy_xff_support = on",
            "listener.ws.proxy_xff_trusted_intermediate = 10.0.0.1;::1",
            "listener.ws.l.proxy_xff_use_cn_as_username = on",
            "listener.ws.l.proxy_xff_cn_header = X-CN",
        ), "ws").websocket
        self.assertEqual(ws, WebSocketConfig(
            path="/ws", compression=True, max_request_line_length=100,
            max_header_value_length=200, xff_support=True,
            xff_trusted_intermediate=("10.0.0.1", "::1"), xff_use_cn_as_username=True,
            xff_cn_header="X-CN"))

    def test_only_websocket_kinds(self) -> None:
        """ws and wss listeners have ``websocket``; tcp and ssl listeners have None;
        wss listeners have no X-Forwarded-For support."""
        cfg = parse(conf(
            "listener.tcp.a = 127.0.0.1:1",
            "listener.ssl.b = 127.0.0.1:2",
            "listener.wss.c = 127.0.0.1:3",
        ))
        a, b, c = cfg.listeners
        self.assertIsNone(a.websocket)
        self.assertIsNone(b.websocket)
        assert c.websocket is not None
        self.assertFalse(c.websocket.xff_support)


class ProxyConfigTests(SynchronousTestCase):

    def test_proxy_settings(self) -> None:
        """``listener.proxy`` holds proxy_protocol, its CN option (on by default)
        and the header timeout (10 s, as VerneMQ)."""
        lc = listener("listener.tcp.l = 127.0.0.1:0\nlistener.tcp.l.proxy_protocol = on\n",
                      "tcp")
        self.assertEqual(lc.proxy, ProxyConfig(enabled=True, use_cn_as_username=True,
                                               header_timeout=10.0))
        ssl = listener("listener.ssl.l = 127.0.0.1:0\n", "ssl")
        self.assertEqual(ssl.proxy, ProxyConfig(enabled=False, use_cn_as_username=False))


class StoreConfigTests(SynchronousTestCase):

    def test_defaults_next_to_the_config_file(self) -> None:
        """Without persistent_store keys the store is on, in ``data`` next to the
        configuration file, with group sync."""
        path = os.path.join("/etc", "vmqtw", "broker.conf")
        self.assertEqual(parse("", path).store,
                         StoreConfig(enabled=True, directory="/etc/vmqtw/data", sync="group"))
        self.assertEqual(BrokerConfig(path=path, listeners=()).store, parse("", path).store)

    def test_keys(self) -> None:
        """The persistent_store keys are typed; a relative directory is relative to
        the configuration file, an absolute one stays."""
        store = parse(conf(
            "persistent_store.enabled = false",
            "persistent_store.directory = state/../db",
            "persistent_store.sync = always",
        ), "/srv/b.conf").store
        self.assertEqual(store, StoreConfig(enabled=False, directory="/srv/db", sync="always"))
        absolute = parse("persistent_store.directory = /var/lib/vmqtw\n", "/srv/b.conf")
        self.assertEqual(absolute.store.directory, "/var/lib/vmqtw")

    def test_bad_sync_mode_in_code(self) -> None:
        """A StoreConfig built in code with an unknown sync mode is a SettingError."""
        err = self.assertRaises(SettingError, StoreConfig, sync="sometimes")
        self.assertEqual(err.option, "persistent_store.sync")


class DescribeTLSTests(SynchronousTestCase):

    def config(self, *lines: str) -> BrokerConfig:
        return parse(conf("listener.tcp.t = 127.0.0.1:1883", "listener.ssl.s = 127.0.0.1:8883",
                          *lines), "b.conf")

    def block(self, text: str) -> dict[str, str]:
        """The ``name  value`` lines of the one TLS block in ``text``."""
        _, _, block = text.partition("\n\nTLS listener.ssl.s (b.conf:2):\n")
        self.assertTrue(block, text)
        return dict(line.strip().split("  ", 1) for line in block.splitlines())

    def test_check_prints_the_tls_settings(self) -> None:
        """--check prints, after the listener table, the files, versions, ciphers,
        verify mode and CRL of every TLS listener."""
        text = describe_listeners(self.config(
            "listener.ssl.s.certfile = /etc/server.pem",
            "listener.ssl.s.cafile = /etc/ca.pem",
            "listener.ssl.s.crlfile = /etc/crl.pem",
            "listener.ssl.s.tls_version = tlsv1.2,tlsv1.3",
            "listener.ssl.s.ciphers = ECDHE-RSA-AES128-GCM-SHA256:TLS_AES_128_GCM_SHA256",
            "listener.ssl.s.require_certificate = on",
            "listener.ssl.s.depth = 2",
            "crl_refresh_interval = 30000",
        ))
        self.assertTrue(text.startswith("KIND  NAME"), text)
        self.assertEqual({k: v.strip() for k, v in self.block(text).items()}, {
            "versions": "tlsv1.2, tlsv1.3",
            "certfile": "/etc/server.pem",
            "keyfile": "- (the key is in certfile)",
            "cafile": "/etc/ca.pem",
            "crlfile": "/etc/crl.pem (re-read every 30 s)",
            "ciphers": "ECDHE-RSA-AES128-GCM-SHA256",
            "tls1.3 suites": "TLS_AES_128_GCM_SHA256",
            "eccs": "OpenSSL default",
            "verify": "client certificate required (depth 2)",
            "identity": "off",
            "psk": "off",
            "handshake": "timeout 5000 ms",
        })

    def test_verify_modes_and_psk(self) -> None:
        """The verify line tells apart no verification, verification when a
        certificate is sent, and a required certificate; PSK shows file and hint."""
        block = self.block(describe_listeners(self.config()))
        self.assertEqual(block["verify"].strip(), "off (no client certificate asked for)")
        block = self.block(describe_listeners(self.config(
            "listener.ssl.s.use_identity_as_username = on",
            "listener.ssl.s.psk_support = on",
            "listener.ssl.pskfile = /etc/psk",
        )))
        self.assertEqual(block["verify"].strip(), "client certificate verified when sent "
                                                   "(depth 1)")
        self.assertEqual(block["psk"].strip(), "on (file /etc/psk, hint 'VMQ_PSK')")

    def test_keypasswd_is_never_printed(self) -> None:
        """The key password does not appear in the description, only that it is set."""
        cfg = self.config("listener.ssl.s.certfile = /etc/s.pem",
                          "listener.ssl.s.keyfile = /etc/s.key",
                          "listener.ssl.s.keypasswd = hunter2")
        text = describe_listeners(cfg)
        self.assertNotIn("hunter2", text)
        self.assertEqual(self.block(text)["keyfile"].strip(), "/etc/s.key (keypasswd set)")
        self.assertEqual(describe_tls(cfg.listeners[1]),
                         text.partition("\n\n")[2])

    def test_no_tls_block_without_tls_listeners(self) -> None:
        """A configuration without TLS listeners prints only the table."""
        text = describe_listeners(parse("listener.tcp.t = 127.0.0.1:1883\n", "b.conf"))
        self.assertEqual(len(text.splitlines()), 2)


class OnOffTests(SynchronousTestCase):

    def test_one_spelling_everywhere(self) -> None:
        """``true``/``false`` mean on/off in TLS, WebSocket, PROXY and store keys
        alike (they all go through the one boolean parser)."""
        cfg = parse(conf(
            "listener.ssl.s = 127.0.0.1:1",
            "listener.ssl.s.require_certificate = true",
            "listener.ws.w = 127.0.0.1:2",
            "listener.ws.w.websocket_compression = true",
            "listener.ws.w.proxy_protocol = true",
            "persistent_store.enabled = false",
        ))
        s, w = cfg.listeners
        assert s.tls is not None and w.websocket is not None
        self.assertTrue(s.tls.require_certificate)
        self.assertTrue(w.websocket.compression)
        self.assertTrue(w.proxy.enabled)
        self.assertFalse(cfg.store.enabled)

    def test_values_module_is_the_only_reader_of_on(self) -> None:
        """No module of the broker other than ``vmqtw.config.values`` compares a
        value with the text ``"true"``."""
        import vmqtw
        root = os.path.dirname(vmqtw.__file__)
        offenders = []
        for directory, _, files in os.walk(root):
            if os.path.basename(directory) == "test":
                continue
            for name in files:
                path = os.path.join(directory, name)
                if not name.endswith(".py") or path.endswith(os.path.join("config", "values.py")):
                    continue
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                if any(isinstance(node, ast.Constant) and node.value == "true"
                       for node in ast.walk(tree)):
                    offenders.append(os.path.relpath(path, root))
        self.assertEqual(offenders, [])


class LayeringTests(SynchronousTestCase):

    ORDER = ("descriptions", "values", "schema", "compat", "settings", "model", "build",
             "parser", "describe")

    def test_modules_import_down_only(self) -> None:
        """Each module of ``vmqtw.config`` imports only modules listed before it in
        descriptions -> values -> schema -> compat -> settings -> model -> build -> parser
        -> describe."""
        import vmqtw.config as package
        root = os.path.dirname(package.__file__)
        for index, module in enumerate(self.ORDER):
            with open(os.path.join(root, module + ".py"), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                for name in names:
                    if name.startswith("vmqtw.config."):
                        used = name.split(".")[2]
                        self.assertIn(used, self.ORDER[:index], f"{module} imports {name}")
                    else:
                        self.assertFalse(name.startswith("vmqtw.") and
                                         not name.startswith("vmqtw.config"),
                                         f"{module} imports {name}")
