"""
Tests for ``vmqtw.config``: the VerneMQ-style configuration parser.
"""

from __future__ import annotations

import operator
import os

from twisted.trial.unittest import SynchronousTestCase

from vmqtw import config
from vmqtw.config import (
    Address,
    BrokerConfig,
    ConfigError,
    ListenerConfig,
    describe_listeners,
    load,
    parse,
)


def conf(*lines: str) -> str:
    return "\n".join(lines) + "\n"


class ErrorMixin:
    def assertConfigError(
        self, text: str, expected: str, filename: str = "broker.conf"
    ) -> ConfigError:
        """parse(text) raises a ConfigError whose str() is exactly expected."""
        err = self.assertRaises(ConfigError, parse, text, filename)  # type: ignore[attr-defined]
        self.assertEqual(str(err), expected)  # type: ignore[attr-defined]
        return err


def one(cfg: BrokerConfig, kind: str = "tcp", name: str = "default") -> ListenerConfig:
    found = [lc for lc in cfg.listeners + cfg.unserved_listeners
             if lc.kind == kind and lc.name == name]
    assert len(found) == 1, found
    return found[0]


class FormatTests(ErrorMixin, SynchronousTestCase):
    def test_empty(self) -> None:
        """An empty file is a valid configuration with no listeners and every default."""
        cfg = parse("", "e.conf")
        self.assertEqual(cfg.path, "e.conf")
        self.assertEqual(cfg.listeners, ())
        self.assertEqual(cfg, BrokerConfig(path="e.conf", listeners=()))

    def test_comments_blank_lines_whitespace(self) -> None:
        """
        Comment lines (``#``, indented too), blank and whitespace-only lines are skipped, and
        blanks around keys, ``=`` and values are ignored.
        """
        cfg = parse(conf(
            "# a comment",
            "",
            "   # indented comment = not a key",
            "\t",
            "  allow_anonymous   =   on  ",
            "max_client_id_size=50",
        ))
        self.assertTrue(cfg.allow_anonymous)
        self.assertEqual(cfg.max_client_id_size, 50)

    def test_value_with_equals(self) -> None:
        """The line is split on the first '='."""
        cfg = parse(conf(
            "plugins.vmq_passwd = on",
            "vmq_passwd.password_file = /etc/a=b==c",
        ))
        self.assertEqual(
            cfg.plugin_settings["vmq_passwd"]["password_file"], "/etc/a=b==c"
        )

    def test_no_inline_comments(self) -> None:
        """A '#' after a value is part of the value."""
        cfg = parse(conf("nodename = vmq@host # main node"))
        self.assertEqual(cfg.extra["nodename"], "vmq@host # main node")
        self.assertConfigError(
            conf("max_client_id_size = 50 # chars"),
            "broker.conf:1: max_client_id_size: expected an integer, "
            "got '50 # chars'",
        )

    def test_crlf_line_endings(self) -> None:
        """CRLF line endings are accepted."""
        cfg = parse("allow_anonymous = on\r\nretry_interval = 7\r\n")
        self.assertTrue(cfg.allow_anonymous)
        self.assertEqual(cfg.retry_interval, 7)

    def test_later_key_wins(self) -> None:
        """When a key is set twice the later line wins and is the one its source points at."""
        cfg = parse(conf("retry_interval = 5", "retry_interval = 9"), "b.conf")
        self.assertEqual(cfg.retry_interval, 9)
        self.assertEqual(cfg.source("retry_interval"), ("b.conf", 2))

    def test_later_listener_declaration_wins(self) -> None:
        """A listener declared twice is one listener with the later address and source line."""
        cfg = parse(conf(
            "listener.tcp.default = 127.0.0.1:1883",
            "listener.tcp.default = 127.0.0.1:1884",
        ))
        self.assertEqual(len(cfg.listeners), 1)
        self.assertEqual(one(cfg).address, Address("127.0.0.1", 1884))
        self.assertEqual(one(cfg).source, ("<config>", 2))

    def test_overridden_bad_value_still_reported(self) -> None:
        """
        An invalid value is reported at its line even when a later line sets the key again.
        """
        self.assertConfigError(
            conf("retry_interval = soon", "retry_interval = 5"),
            "broker.conf:1: retry_interval: expected an integer, got 'soon'",
        )

    def test_line_without_equals(self) -> None:
        """A line without ``=`` is an error at ``FILE:LINE`` asking for ``key = value``."""
        self.assertConfigError(
            conf("# ok", "allow_anonymous on"),
            "broker.conf:2: allow_anonymous on: expected 'key = value'",
        )

    def test_line_without_key(self) -> None:
        """A line with nothing before ``=`` is an error asking for ``key = value``."""
        self.assertConfigError(
            conf(" = on"), "broker.conf:1: = on: expected 'key = value'"
        )

    def test_unknown_key(self) -> None:
        """
        An unknown key is an error ``FILE:LINE: key: unknown configuration key``, with file,
        line, key and message also available as attributes.
        """
        err = self.assertConfigError(
            conf("allow_anonymous = on", "", "some.key = 1"),
            "broker.conf:3: some.key: unknown configuration key",
        )
        self.assertEqual(
            (err.file, err.line, err.key, err.message),
            ("broker.conf", 3, "some.key", "unknown configuration key"),
        )

    def test_first_error_by_line(self) -> None:
        """With several errors, every one is reported, in line order, and the error's
        own fields are the earliest one's."""
        err = self.assertConfigError(
            conf(
                "listener.tcp.foo = nonsense",
                "listener.tcp.a = 127.0.0.1:1883",
                "bogus = 1",
                "listener.tcp.b = 127.0.0.1:1883",
                "listener.tcp.bar.max_connections = 5",
            ),
            "broker.conf:1: listener.tcp.foo: expected IP:PORT (e.g. "
            "127.0.0.1:1883 or :::1883) or local:/path.sock:0, got 'nonsense'\n"
            "broker.conf:3: bogus: unknown configuration key\n"
            "broker.conf:4: listener.tcp.b: address 127.0.0.1:1883 is already used by "
            "listener.tcp.a (broker.conf:2)",
        )
        self.assertEqual((err.line, err.key), (1, "listener.tcp.foo"))
        self.assertEqual([e.line for e in err.errors], [1, 3, 4])  # type: ignore[attr-defined]
        self.assertConfigError(
            conf(
                "listener.tcp.bar.max_connections = 5",
                "listener.tcp.a = 127.0.0.1:1883",
                "bogus = 1",
            ),
            "broker.conf:3: bogus: unknown configuration key",
        )
        self.assertConfigError(
            conf(
                "listener.tcp.a = 127.0.0.1:1883",
                "listener.tcp.b = 127.0.0.1:1883",
                "bogus = 1",
            ),
            "broker.conf:2: listener.tcp.b: address 127.0.0.1:1883 is already "
            "used by listener.tcp.a (broker.conf:1)\n"
            "broker.conf:3: bogus: unknown configuration key",
        )

    def test_options_before_bad_declaration_not_blamed(self) -> None:
        """
        A declaration with a bad address still counts as declared, so the
        error is the address, not 'not declared'.
        """
        self.assertConfigError(
            conf(
                "listener.tcp.foo.max_connections = 5",
                "listener.tcp.foo = nonsense",
            ),
            "broker.conf:2: listener.tcp.foo: expected IP:PORT (e.g. "
            "127.0.0.1:1883 or :::1883) or local:/path.sock:0, got 'nonsense'",
        )


class ListenerInheritanceTests(ErrorMixin, SynchronousTestCase):
    def test_builtin_defaults(self) -> None:
        """
        A bare tcp listener gets VerneMQ's defaults (10000 connections, 10 acceptors, no
        mountpoint, no lifetime limit, MQTT 3.1 and 3.1.1, no anonymous override, no PROXY
        protocol, CN as username when PROXY is on); default options are sourced at line 0 and
        tcp listeners carry no TLS options.
        """
        lc = one(parse(conf("listener.tcp.default = 127.0.0.1:1883"), "b.conf"))
        self.assertEqual(lc.kind, "tcp")
        self.assertEqual(lc.name, "default")
        self.assertEqual(lc.key, "listener.tcp.default")
        self.assertEqual(lc.max_connections, 10000)
        self.assertEqual(lc.nr_of_acceptors, 10)
        self.assertEqual(lc.mountpoint, "")
        self.assertEqual(lc.max_connection_lifetime, 0)
        self.assertEqual(lc.allowed_protocol_versions, frozenset({3, 4, 5, 131}))
        self.assertFalse(lc.allow_anonymous_override)
        self.assertFalse(lc.proxy_protocol)
        self.assertTrue(lc.proxy_protocol_use_cn_as_username)
        self.assertEqual(lc.source, ("b.conf", 1))
        self.assertEqual(lc.options["max_connections"], "10000")
        self.assertEqual(lc.options["mountpoint"], "off")
        self.assertEqual(lc.option_source("max_connections"), ("b.conf", 0))
        # TLS options do not exist on tcp listeners
        self.assertNotIn("certfile", lc.options)

    def test_root_only(self) -> None:
        """
        ``listener.OPTION`` settings reach every listener kind that has the option, with the
        root line as their source.
        """
        cfg = parse(conf(
            "listener.max_connections = 500",
            "listener.nr_of_acceptors = 3",
            "listener.mountpoint = root/",
            "listener.max_connection_lifetime = 3600",
            "listener.tcp.default = 127.0.0.1:1883",
            "listener.ws.default = 127.0.0.1:8080",
        ), "b.conf")
        for kind in ("tcp", "ws"):
            lc = one(cfg, kind)
            self.assertEqual(lc.max_connections, 500)
            self.assertEqual(lc.nr_of_acceptors, 3)
            self.assertEqual(lc.mountpoint, "root/")  # kept as written, as in VerneMQ
            self.assertEqual(lc.max_connection_lifetime, 3600)
            self.assertEqual(lc.option_source("max_connections"), ("b.conf", 1))
            self.assertEqual(lc.option_source("mountpoint"), ("b.conf", 3))

    def test_protocol_overrides_root(self) -> None:
        """``listener.KIND.OPTION`` overrides the root value for that kind only."""
        cfg = parse(conf(
            "listener.max_connections = 500",
            "listener.tcp.max_connections = 20",
            "listener.tcp.default = 127.0.0.1:1883",
            "listener.ssl.default = 127.0.0.1:8883",
        ), "b.conf")
        self.assertEqual(one(cfg, "tcp").max_connections, 20)
        self.assertEqual(one(cfg, "tcp").option_source("max_connections"), ("b.conf", 2))
        self.assertEqual(one(cfg, "ssl").max_connections, 500)

    def test_named_overrides_protocol(self) -> None:
        """
        ``listener.KIND.NAME.OPTION`` overrides the protocol and root values for that listener
        only.
        """
        cfg = parse(conf(
            "listener.max_connections = 500",
            "listener.tcp.max_connections = 20",
            "listener.tcp.default = 127.0.0.1:1883",
            "listener.tcp.default.max_connections = 7",
            "listener.tcp.other = 127.0.0.1:1884",
        ), "b.conf")
        self.assertEqual(one(cfg, "tcp", "default").max_connections, 7)
        self.assertEqual(
            one(cfg, "tcp", "default").option_source("max_connections"), ("b.conf", 4)
        )
        self.assertEqual(one(cfg, "tcp", "other").max_connections, 20)

    def test_named_before_declaration(self) -> None:
        """Options may come before the declaration in the file."""
        cfg = parse(conf(
            "listener.tcp.default.max_connections = 7",
            "listener.tcp.default = 127.0.0.1:1883",
        ))
        self.assertEqual(one(cfg).max_connections, 7)

    def test_minus_one_inherits(self) -> None:
        """
        ``-1`` at protocol or listener level means "inherit": the value and source come from
        the next level up.
        """
        cfg = parse(conf(
            "listener.max_connections = 500",
            "listener.tcp.max_connections = -1",
            "listener.tcp.nr_of_acceptors = 4",
            "listener.tcp.default = 127.0.0.1:1883",
            "listener.tcp.default.nr_of_acceptors = -1",
            "listener.tcp.default.max_connections = -1",
        ), "b.conf")
        lc = one(cfg)
        self.assertEqual(lc.max_connections, 500)
        self.assertEqual(lc.option_source("max_connections"), ("b.conf", 1))
        self.assertEqual(lc.nr_of_acceptors, 4)
        self.assertEqual(lc.options["max_connections"], "500")

    def test_minus_one_everywhere_is_builtin_default(self) -> None:
        """``-1`` at every level gives the built-in default."""
        cfg = parse(conf(
            "listener.max_connections = -1",
            "listener.tcp.max_connections = -1",
            "listener.tcp.default = 127.0.0.1:1883",
            "listener.tcp.default.max_connections = -1",
        ))
        self.assertEqual(one(cfg).max_connections, 10000)

    def test_infinity(self) -> None:
        """
        ``max_connections = infinity`` means no limit (``None``) and ``infinity`` is kept as
        written for other options; other kinds keep their own values.
        """
        cfg = parse(conf(
            "listener.tcp.max_connections = infinity",
            "listener.tcp.default = 127.0.0.1:1883",
            "listener.ssl.default = 127.0.0.1:8883",
            "listener.ssl.default.tls_handshake_timeout = infinity",
        ))
        self.assertIsNone(one(cfg, "tcp").max_connections)
        self.assertEqual(one(cfg, "tcp").options["max_connections"], "infinity")
        self.assertEqual(one(cfg, "ssl").max_connections, 10000)
        self.assertEqual(one(cfg, "ssl").options["tls_handshake_timeout"], "infinity")

    def test_named_infinity_overrides_protocol(self) -> None:
        """A listener's ``infinity`` overrides a protocol-level limit."""
        cfg = parse(conf(
            "listener.tcp.max_connections = 5",
            "listener.tcp.default = 127.0.0.1:1883",
            "listener.tcp.default.max_connections = infinity",
        ))
        self.assertIsNone(one(cfg).max_connections)

    def test_mountpoint(self) -> None:
        """
        A mountpoint is inherited from the root through the protocol to the listener; ``off``
        means none, the value is kept as written (VerneMQ strips nothing: ``site/b//`` and
        ``site/b`` are two namespaces), and an empty value inherits as in VerneMQ.
        """
        cfg = parse(conf(
            "listener.mountpoint = root",
            "listener.tcp.mountpoint = proto/",
            "listener.tcp.a = 127.0.0.1:1",
            "listener.tcp.a.mountpoint = off",
            "listener.tcp.b = 127.0.0.1:2",
            "listener.tcp.b.mountpoint = site/b//",
            "listener.tcp.c = 127.0.0.1:3",
            "listener.ssl.d = 127.0.0.1:4",
            "listener.tcp.e = 127.0.0.1:5",
            "listener.tcp.e.mountpoint =",
        ))
        self.assertEqual(one(cfg, "tcp", "a").mountpoint, "")
        self.assertEqual(one(cfg, "tcp", "a").options["mountpoint"], "off")
        self.assertEqual(one(cfg, "tcp", "b").mountpoint, "site/b//")
        self.assertEqual(one(cfg, "tcp", "c").mountpoint, "proto/")
        self.assertEqual(one(cfg, "ssl", "d").mountpoint, "root")
        # an empty value inherits, as in VerneMQ
        self.assertEqual(one(cfg, "tcp", "e").mountpoint, "proto/")

    def test_mountpoint_wildcards(self) -> None:
        """A mountpoint containing ``+`` or ``#`` is refused."""
        self.assertConfigError(
            conf("listener.mountpoint = a/+"),
            "broker.conf:1: listener.mountpoint: a mountpoint cannot contain "
            "'+' or '#', got 'a/+'",
        )

    def test_nr_of_acceptors_kind_default_beats_root(self) -> None:
        """
        For vmq/vmqs/http/https the protocol-level schema default (10) is used
        when listener.<kind>.nr_of_acceptors is not set, so the root value does
        not reach them (VerneMQ's vmq_schema:extract/4).
        """
        cfg = parse(conf(
            "listener.nr_of_acceptors = 20",
            "listener.tcp.default = 127.0.0.1:1883",
            "listener.vmq.clustering = 0.0.0.0:44053",
            "listener.http.default = 127.0.0.1:8888",
            "listener.http.nr_of_acceptors = -1",
        ))
        self.assertEqual(one(cfg, "tcp").nr_of_acceptors, 20)
        self.assertEqual(one(cfg, "vmq", "clustering").nr_of_acceptors, 10)
        # an explicit -1 at protocol level inherits the root value
        self.assertEqual(one(cfg, "http").nr_of_acceptors, 20)

    def test_root_options_only_reach_kinds_that_have_them(self) -> None:
        """
        Root options reach only listener kinds that have them: vmq (cluster) listeners get a
        mountpoint but no connection lifetime, and http listeners neither a mountpoint nor
        MQTT protocol versions.
        """
        cfg = parse(conf(
            "listener.max_connection_lifetime = 60",
            "listener.mountpoint = m",
            "listener.tcp.default = 127.0.0.1:1883",
            "listener.vmq.default = 127.0.0.1:44053",
            "listener.http.default = 127.0.0.1:8888",
        ))
        self.assertEqual(one(cfg, "tcp").max_connection_lifetime, 60)
        self.assertEqual(one(cfg, "vmq").max_connection_lifetime, 0)
        self.assertNotIn("max_connection_lifetime", one(cfg, "vmq").options)
        self.assertEqual(one(cfg, "vmq").mountpoint, "m")
        self.assertEqual(one(cfg, "http").mountpoint, "")
        self.assertNotIn("mountpoint", one(cfg, "http").options)
        self.assertEqual(one(cfg, "http").allowed_protocol_versions, frozenset())

    def test_protocol_and_named_only_options(self) -> None:
        """
        Options that exist only at protocol and listener level (``allowed_protocol_versions``,
        ``allow_anonymous_override``, ``proxy_protocol``,
        ``proxy_protocol_use_cn_as_username``) inherit from the protocol level and can be
        overridden per listener; ``allowed_protocol_versions`` accepts a bracketed list and 131
        (an MQTT 3.1 bridge).
        """
        cfg = parse(conf(
            "listener.tcp.allowed_protocol_versions = 3,4,5",
            "listener.tcp.proxy_protocol = on",
            "listener.tcp.a = 127.0.0.1:1",
            "listener.tcp.a.allowed_protocol_versions = [5, 131]",
            "listener.tcp.a.allow_anonymous_override = on",
            "listener.tcp.a.proxy_protocol_use_cn_as_username = off",
            "listener.tcp.b = 127.0.0.1:2",
        ))
        a, b = one(cfg, "tcp", "a"), one(cfg, "tcp", "b")
        self.assertEqual(a.allowed_protocol_versions, frozenset({5, 131}))
        self.assertEqual(b.allowed_protocol_versions, frozenset({3, 4, 5}))
        self.assertTrue(a.allow_anonymous_override)
        self.assertFalse(b.allow_anonymous_override)
        self.assertTrue(a.proxy_protocol)
        self.assertTrue(b.proxy_protocol)
        self.assertFalse(a.proxy_protocol_use_cn_as_username)
        self.assertTrue(b.proxy_protocol_use_cn_as_username)

    def test_bool_spellings(self) -> None:
        """``true`` and ``false`` are accepted as well as ``on`` and ``off``."""
        cfg = parse(conf(
            "listener.tcp.a = 127.0.0.1:1",
            "listener.tcp.a.proxy_protocol = true",
            "listener.tcp.b = 127.0.0.1:2",
            "listener.tcp.b.proxy_protocol = false",
        ))
        self.assertTrue(one(cfg, "tcp", "a").proxy_protocol)
        self.assertFalse(one(cfg, "tcp", "b").proxy_protocol)

    def test_tls_options_resolved_raw(self) -> None:
        """
        TLS options are resolved through the same inheritance with their source line, get
        VerneMQ's defaults (PSK separator ``:``, 5000 ms handshake timeout, ``tlsv1.2``), and
        reach wss listeners as well, without PSK options there.
        """
        cfg = parse(conf(
            "listener.ssl.cafile = /etc/ca.pem",
            "listener.ssl.certfile = /etc/proto.pem",
            "listener.ssl.default = 127.0.0.1:8883",
            "listener.ssl.default.certfile = /etc/named.pem",
            "listener.ssl.default.keyfile = /etc/key.pem",
            "listener.ssl.default.tls_version = tlsv1.2,tlsv1.3",
            "listener.ssl.default.depth = 3",
            "listener.ssl.default.require_certificate = on",
            "listener.ssl.pskfile = /etc/vmq.psk",
            "listener.wss.default = 127.0.0.1:8884",
        ), "b.conf")
        ssl = one(cfg, "ssl")
        self.assertEqual(ssl.options["cafile"], "/etc/ca.pem")
        self.assertEqual(ssl.option_source("cafile"), ("b.conf", 1))
        self.assertEqual(ssl.options["certfile"], "/etc/named.pem")
        self.assertEqual(ssl.option_source("certfile"), ("b.conf", 4))
        self.assertEqual(ssl.options["keyfile"], "/etc/key.pem")
        self.assertEqual(ssl.options["tls_version"], "tlsv1.2,tlsv1.3")
        self.assertEqual(ssl.options["depth"], "3")
        self.assertEqual(ssl.options["require_certificate"], "on")
        self.assertEqual(ssl.options["pskfile"], "/etc/vmq.psk")
        self.assertEqual(ssl.options["pskfile_separator"], ":")
        self.assertEqual(ssl.options["tls_handshake_timeout"], "5000")
        wss = one(cfg, "wss")
        self.assertEqual(wss.options["certfile"], "")  # default, nothing inherited
        self.assertEqual(wss.options["tls_version"], "tlsv1.2")
        self.assertEqual(wss.options["websocket_path"], "/mqtt")
        self.assertNotIn("pskfile", wss.options)

    def test_empty_string_option_inherits(self) -> None:
        """An empty value for a string option inherits from the level above, as in VerneMQ."""
        cfg = parse(conf(
            "listener.ssl.certfile = /etc/proto.pem",
            "listener.ssl.default = 127.0.0.1:8883",
            "listener.ssl.default.certfile =",
        ))
        self.assertEqual(one(cfg, "ssl").options["certfile"], "/etc/proto.pem")

    def test_auth_plugins(self) -> None:
        """
        A listener's ``auth_plugins`` and ``authz_plugins`` are kept as written and split as
        lists, with or without brackets.
        """
        cfg = parse(conf(
            "plugins.vmq_passwd = on",
            "plugins.vmq_acl = on",
            "listener.tcp.default = 127.0.0.1:1883",
            "listener.tcp.default.auth_plugins = [vmq_passwd, vmq_acl]",
            "listener.tcp.default.authz_plugins = vmq_acl",
        ))
        lc = one(cfg)
        self.assertEqual(lc.options["auth_plugins"], "[vmq_passwd, vmq_acl]")
        self.assertEqual(
            config.split_list(lc.options["auth_plugins"]), ("vmq_passwd", "vmq_acl")
        )
        self.assertEqual(config.split_list(lc.options["authz_plugins"]), ("vmq_acl",))

    def test_auth_plugins_errors(self) -> None:
        """
        A listener chain that names a plugin twice, names a plugin that is not on, or is empty
        is refused at its line.
        """
        self.assertConfigError(
            conf(
                "plugins.vmq_passwd = on",
                "listener.tcp.default = 127.0.0.1:1883",
                "listener.tcp.default.auth_plugins = [vmq_passwd, vmq_passwd]",
            ),
            "broker.conf:3: listener.tcp.default.auth_plugins: plugin "
            "'vmq_passwd' is listed twice",
        )
        self.assertConfigError(
            conf(
                "plugins.vmq_passwd = off",
                "listener.tcp.default = 127.0.0.1:1883",
                "listener.tcp.default.auth_plugins = vmq_passwd",
            ),
            "broker.conf:3: listener.tcp.default.auth_plugins: plugin "
            "'vmq_passwd' is not enabled (set plugins.vmq_passwd = on)",
        )
        self.assertConfigError(
            conf(
                "listener.tcp.default = 127.0.0.1:1883",
                "listener.tcp.default.authz_plugins = []",
            ),
            "broker.conf:2: listener.tcp.default.authz_plugins: expected a list "
            "of plugin names like [a, b], got '[]'",
        )

    def test_listener_named_like_option_is_an_option(self) -> None:
        """
        ``listener.tcp.max_connections`` is always an option, never a listener named
        ``max_connections``: given an address it is an invalid integer.
        """
        cfg = parse(conf("listener.tcp.max_connections = 5"))
        self.assertEqual(cfg.listeners, ())
        self.assertConfigError(
            conf("listener.tcp.max_connections = 127.0.0.1:1883"),
            "broker.conf:1: listener.tcp.max_connections: expected an integer, "
            "-1 or infinity, got '127.0.0.1:1883'",
        )

    def test_listener_order_is_file_order(self) -> None:
        """Listeners are kept in the order they are declared in the file."""
        cfg = parse(conf(
            "listener.ws.z = 127.0.0.1:3",
            "listener.tcp.b = 127.0.0.1:1",
            "listener.tcp.a = 127.0.0.1:2",
        ))
        self.assertEqual(
            [(lc.kind, lc.name) for lc in cfg.listeners],
            [("ws", "z"), ("tcp", "b"), ("tcp", "a")],
        )

    def test_listener_config_hashable(self) -> None:
        """A listener's configuration is hashable, so it can key a set or dict."""
        lc = one(parse(conf("listener.tcp.default = 127.0.0.1:1883")))
        self.assertEqual(len({lc, lc}), 1)


class ListenerErrorTests(ErrorMixin, SynchronousTestCase):
    def test_bad_int_value(self) -> None:
        """A non-integer ``max_connections`` is refused with the accepted forms."""
        self.assertConfigError(
            conf(
                "listener.tcp.default = 127.0.0.1:1883",
                "listener.tcp.default.max_connections = lots",
            ),
            "broker.conf:2: listener.tcp.default.max_connections: expected an "
            "integer, -1 or infinity, got 'lots'",
        )

    def test_int_out_of_range(self) -> None:
        """
        Integer options are checked against their range: ``max_connections`` at least 0,
        ``nr_of_acceptors`` at least 1, ``active_n`` 1 to 32767, each besides ``-1``.
        """
        self.assertConfigError(
            conf("listener.max_connections = -5"),
            "broker.conf:1: listener.max_connections: expected an integer >= 0, "
            "-1 or infinity, got '-5'",
        )
        self.assertConfigError(
            conf("listener.nr_of_acceptors = 0"),
            "broker.conf:1: listener.nr_of_acceptors: expected an integer >= 1 "
            "or -1, got '0'",
        )
        self.assertConfigError(
            conf("listener.tcp.active_n = 40000"),
            "broker.conf:1: listener.tcp.active_n: expected an integer between 1 "
            "and 32767 or -1, got '40000'",
        )

    def test_infinity_not_allowed(self) -> None:
        """
        ``infinity`` is refused for options without that meaning, such as ``nr_of_acceptors``.
        """
        self.assertConfigError(
            conf("listener.nr_of_acceptors = infinity"),
            "broker.conf:1: listener.nr_of_acceptors: expected an integer or -1, "
            "got 'infinity'",
        )

    def test_empty_int(self) -> None:
        """An empty integer option at protocol level is refused."""
        self.assertConfigError(
            conf("listener.tcp.max_connections ="),
            "broker.conf:1: listener.tcp.max_connections: expected an integer, "
            "-1 or infinity, got ''",
        )

    def test_bad_bool(self) -> None:
        """
        A boolean option accepts only ``on``/``off`` (or ``true``/``false``); ``yes`` is
        refused.
        """
        self.assertConfigError(
            conf(
                "listener.tcp.default = 127.0.0.1:1883",
                "listener.tcp.default.proxy_protocol = yes",
            ),
            "broker.conf:2: listener.tcp.default.proxy_protocol: expected on or "
            "off, got 'yes'",
        )

    def test_bad_protocol_versions(self) -> None:
        """``allowed_protocol_versions`` accepts only 3, 4, 5, 131 and 132."""
        self.assertConfigError(
            conf("listener.tcp.allowed_protocol_versions = 3,4,6"),
            "broker.conf:1: listener.tcp.allowed_protocol_versions: expected a "
            "comma-separated list of protocol versions from 3, 4, 5, 131, 132, "
            "got '3,4,6'",
        )

    def test_bad_tls_version(self) -> None:
        """``tls_version`` accepts only ``tlsv1`` to ``tlsv1.3``."""
        self.assertConfigError(
            conf("listener.ssl.tls_version = sslv3"),
            "broker.conf:1: listener.ssl.tls_version: expected a comma-separated "
            "list from tlsv1, tlsv1.1, tlsv1.2, tlsv1.3, got 'sslv3'",
        )

    def test_root_level_not_allowed(self) -> None:
        """
        Only ``max_connections``, ``nr_of_acceptors``, ``mountpoint`` and
        ``max_connection_lifetime`` may be set at the root level; a known option there gets a
        hint to set it per kind, an unknown one is an unknown key.
        """
        self.assertConfigError(
            conf("listener.proxy_protocol = on"),
            "broker.conf:1: listener.proxy_protocol: unknown configuration key "
            "(only max_connections, nr_of_acceptors, mountpoint, "
            "max_connection_lifetime can be set at the root level; use "
            "listener.<kind>.proxy_protocol)",
        )
        self.assertConfigError(
            conf("listener.frobnicate = on"),
            "broker.conf:1: listener.frobnicate: unknown configuration key",
        )

    def test_option_on_wrong_kind(self) -> None:
        """
        An option set on a listener kind that does not have it (TLS options on tcp, PROXY on
        ssl, connection lifetime on http) is refused, listing the kinds that do.
        """
        self.assertConfigError(
            conf("listener.tcp.certfile = /x.pem"),
            "broker.conf:1: listener.tcp.certfile: certfile is not an option of "
            "tcp listeners (only of: ssl, wss, vmqs, https)",
        )
        self.assertConfigError(
            conf(
                "listener.ssl.default = 127.0.0.1:8883",
                "listener.ssl.default.proxy_protocol = on",
            ),
            "broker.conf:2: listener.ssl.default.proxy_protocol: proxy_protocol "
            "is not an option of ssl listeners (only of: tcp, ws, http)",
        )
        self.assertConfigError(
            conf("listener.http.max_connection_lifetime = 5"),
            "broker.conf:1: listener.http.max_connection_lifetime: "
            "max_connection_lifetime is not an option of http listeners "
            "(only of: tcp, ssl, ws, wss)",
        )

    def test_named_only_option_at_protocol_level(self) -> None:
        """
        An option that exists only per listener, such as ``allow_anonymous_override``, is
        refused at protocol level with the form to use.
        """
        self.assertConfigError(
            conf("listener.tcp.allow_anonymous_override = on"),
            "broker.conf:1: listener.tcp.allow_anonymous_override: "
            "allow_anonymous_override can only be set on a named listener "
            "(listener.tcp.NAME.allow_anonymous_override)",
        )

    def test_protocol_only_option_at_named_level(self) -> None:
        """
        An option that exists only per protocol, such as ``pskfile``, is refused on a named
        listener with the form to use.
        """
        self.assertConfigError(
            conf(
                "listener.ssl.default = 127.0.0.1:8883",
                "listener.ssl.default.pskfile = /etc/vmq.psk",
            ),
            "broker.conf:2: listener.ssl.default.pskfile: pskfile can only be set "
            "for the whole protocol (listener.ssl.pskfile)",
        )

    def test_buffer_sizes_levels_per_kind(self) -> None:
        """
        ``buffer_sizes`` may be set per protocol for tcp, but only per listener for vmq
        (cluster) listeners.
        """
        cfg = parse(conf(
            "listener.tcp.buffer_sizes = 1,2,3",
            "listener.vmq.c = 0.0.0.0:44053",
            "listener.vmq.c.buffer_sizes = 4,5,6",
            "listener.tcp.default = 127.0.0.1:1883",
        ))
        self.assertEqual(one(cfg, "tcp").options["buffer_sizes"], "1,2,3")
        self.assertEqual(one(cfg, "vmq", "c").options["buffer_sizes"], "4,5,6")
        self.assertConfigError(
            conf("listener.vmq.buffer_sizes = 1,2,3"),
            "broker.conf:1: listener.vmq.buffer_sizes: buffer_sizes can only be "
            "set on a named listener (listener.vmq.NAME.buffer_sizes)",
        )

    def test_unknown_listener_option(self) -> None:
        """An unknown option on a named listener is an unknown configuration key."""
        self.assertConfigError(
            conf(
                "listener.tcp.default = 127.0.0.1:1883",
                "listener.tcp.default.colour = blue",
            ),
            "broker.conf:2: listener.tcp.default.colour: unknown configuration key",
        )

    def test_unknown_kind(self) -> None:
        """A listener kind other than VerneMQ's is an unknown configuration key."""
        self.assertConfigError(
            conf("listener.quic.default = 127.0.0.1:1883"),
            "broker.conf:1: listener.quic.default: unknown configuration key",
        )

    def test_too_many_parts(self) -> None:
        """A listener key with too many dotted parts is an unknown configuration key."""
        self.assertConfigError(
            conf("listener.tcp.a.b.max_connections = 1"),
            "broker.conf:1: listener.tcp.a.b.max_connections: unknown "
            "configuration key",
        )

    def test_undeclared_named_listener(self) -> None:
        """An option for a listener that is never declared is ignored, as VerneMQ does,
        with a warning at the option's line; a bad value there is still an error."""
        cfg = parse(conf(
            "listener.tcp.default = 127.0.0.1:1883",
            "listener.tcp.foo.max_connections = 5",
        ), "broker.conf")
        self.assertIn("broker.conf:2: listener.tcp.foo.max_connections: listener.tcp.foo "
                      "is not declared: this option is ignored",
                      [str(w) for w in cfg.warnings])
        self.assertEqual([lc.name for lc in cfg.listeners], ["default"])
        self.assertConfigError(
            conf("listener.tcp.foo.max_connections = lots"),
            "broker.conf:1: listener.tcp.foo.max_connections: expected an integer, -1 or "
            "infinity, got 'lots'",
        )

    def test_declared_under_another_kind(self) -> None:
        """An option naming a listener declared under another kind counts as undeclared
        (a warning, the option is ignored)."""
        cfg = parse(conf(
            "listener.tcp.foo = 127.0.0.1:1883",
            "listener.ssl.foo.certfile = /x.pem",
        ), "broker.conf")
        self.assertIn("broker.conf:2: listener.ssl.foo.certfile: listener.ssl.foo is not "
                      "declared: this option is ignored", [str(w) for w in cfg.warnings])

    def test_invalid_listener_name(self) -> None:
        """Listener names may contain only letters, digits, ``_`` and ``-``."""
        self.assertConfigError(
            conf("listener.tcp.my*name = 127.0.0.1:1883"),
            "broker.conf:1: listener.tcp.my*name: invalid listener name 'my*name' "
            "(use letters, digits, '_' and '-')",
        )


class AddressTests(ErrorMixin, SynchronousTestCase):
    def address(self, value: str, kind: str = "tcp") -> Address:
        cfg = parse(conf(f"listener.{kind}.x = {value}"))
        return one(cfg, kind, "x").address

    def test_ipv4(self) -> None:
        """``IP:PORT`` gives an IPv4 address with that port and no path, printed as written."""
        a = self.address("127.0.0.1:1883")
        self.assertEqual(a, Address("127.0.0.1", 1883))
        self.assertIsNone(a.path)
        self.assertEqual(str(a), "127.0.0.1:1883")
        self.assertEqual(self.address("0.0.0.0:1883"), Address("0.0.0.0", 1883))

    def test_ipv6_any(self) -> None:
        """
        ``:::1883`` (VerneMQ's form, no brackets) is the IPv6 any address, printed as
        ``[::]:1883``.
        """
        a = self.address(":::1883")
        self.assertEqual(a, Address("::", 1883))
        self.assertEqual(str(a), "[::]:1883")

    def test_ipv6_loopback(self) -> None:
        """
        ``::1:1883`` is the IPv6 loopback address on port 1883: the port is after the last
        colon.
        """
        a = self.address("::1:1883")
        self.assertEqual(a, Address("::1", 1883))
        self.assertEqual(str(a), "[::1]:1883")

    def test_ipv6_normalised(self) -> None:
        """IPv6 addresses are normalised to their compressed form."""
        self.assertEqual(
            self.address("2001:db8:0:0::1:8883"), Address("2001:db8::1", 8883)
        )

    def test_port_zero(self) -> None:
        """Port 0 (any free port) is accepted."""
        self.assertEqual(self.address("127.0.0.1:0"), Address("127.0.0.1", 0))

    def test_unix_socket(self) -> None:
        """``local:PATH:0`` is a Unix socket address, printed as ``local:PATH``."""
        a = self.address("local:/var/run/app.sock:0")
        self.assertEqual(a, Address(None, 0, "/var/run/app.sock"))
        self.assertEqual(str(a), "local:/var/run/app.sock")

    def test_unix_socket_needs_port_zero(self) -> None:
        """A Unix socket address must end in ``:0``."""
        self.assertConfigError(
            conf("listener.tcp.x = local:/tmp/a.sock:1883"),
            "broker.conf:1: listener.tcp.x: a unix socket address must end in "
            "':0', got 'local:/tmp/a.sock:1883'",
        )

    def test_unix_socket_tcp_only(self) -> None:
        """Unix socket addresses are refused on listeners other than tcp."""
        self.assertConfigError(
            conf("listener.ws.x = local:/tmp/a.sock:0"),
            "broker.conf:1: listener.ws.x: unix socket addresses (local:...) are "
            "only supported for tcp listeners",
        )

    def test_hostname_rejected(self) -> None:
        """Host names are refused: a listener address must be an IP address."""
        self.assertConfigError(
            conf("listener.tcp.x = localhost:1883"),
            "broker.conf:1: listener.tcp.x: 'localhost' is not an IP address; "
            "expected IP:PORT (e.g. 127.0.0.1:1883 or :::1883) or "
            "local:/path.sock:0",
        )

    def test_brackets_rejected(self) -> None:
        """Bracketed IPv6 addresses are refused with the unbracketed form to use."""
        self.assertConfigError(
            conf("listener.tcp.x = [::1]:1883"),
            "broker.conf:1: listener.tcp.x: IPv6 addresses are written without "
            "brackets (e.g. ::1:1883), got '[::1]:1883'",
        )

    def test_bad_port(self) -> None:
        """Ports above 65535, named, negative or empty are refused."""
        for value in ("127.0.0.1:65536", "127.0.0.1:http", "127.0.0.1:-1", "127.0.0.1:"):
            self.assertConfigError(
                conf(f"listener.tcp.x = {value}"),
                f"broker.conf:1: listener.tcp.x: port must be an integer between "
                f"0 and 65535, got {value!r}",
            )

    def test_no_port(self) -> None:
        """An address without a port is refused with the accepted forms."""
        self.assertConfigError(
            conf("listener.tcp.x = 127.0.0.1"),
            "broker.conf:1: listener.tcp.x: expected IP:PORT (e.g. 127.0.0.1:1883 "
            "or :::1883) or local:/path.sock:0, got '127.0.0.1'",
        )

    def test_empty(self) -> None:
        """An empty listener address is refused with the accepted forms."""
        self.assertConfigError(
            conf("listener.tcp.x ="),
            "broker.conf:1: listener.tcp.x: empty address; expected IP:PORT (e.g. "
            "127.0.0.1:1883 or :::1883) or local:/path.sock:0",
        )

    def test_duplicate_address(self) -> None:
        """
        Two listeners on the same address are refused at the second, naming the first and its
        line, whatever their kinds.
        """
        self.assertConfigError(
            conf(
                "listener.tcp.a = 127.0.0.1:1883",
                "# another",
                "listener.ws.b = 127.0.0.1:1883",
            ),
            "broker.conf:3: listener.ws.b: address 127.0.0.1:1883 is already used "
            "by listener.tcp.a (broker.conf:1)",
        )

    def test_duplicate_ipv6_address(self) -> None:
        """
        IPv6 addresses are compared normalised, so two spellings of ``[::]:1883`` collide.
        """
        self.assertConfigError(
            conf("listener.tcp.a = :::1883", "listener.tcp.b = 0:0::0:1883"),
            "broker.conf:2: listener.tcp.b: address [::]:1883 is already used by "
            "listener.tcp.a (broker.conf:1)",
        )

    def test_duplicate_unix_path(self) -> None:
        """Two listeners on the same Unix socket path are refused."""
        self.assertConfigError(
            conf(
                "listener.tcp.a = local:/tmp/a.sock:0",
                "listener.tcp.b = local:/tmp/a.sock:0",
            ),
            "broker.conf:2: listener.tcp.b: address local:/tmp/a.sock is already "
            "used by listener.tcp.a (broker.conf:1)",
        )

    def test_port_zero_may_repeat(self) -> None:
        """
        Port 0 may repeat on the same address, and the same port on different addresses is
        fine.
        """
        cfg = parse(conf(
            "listener.tcp.a = 127.0.0.1:0",
            "listener.tcp.b = 127.0.0.1:0",
            "listener.ws.c = 127.0.0.1:0",
            "listener.tcp.d = 127.0.0.1:1883",
            "listener.tcp.e = ::1:1883",
        ))
        self.assertEqual(len(cfg.listeners), 5)


class GlobalKeyTests(ErrorMixin, SynchronousTestCase):
    def test_defaults(self) -> None:
        """
        Without settings the broker uses VerneMQ's defaults (no anonymous clients, 100-byte
        client ids, 20 in flight, 1000 online and offline messages, 20 s retry, 5000 ms CONNECT
        timeout, no session expiry, ``prefer_local`` sharing, fifo queues, no will-delay cap,
        log level info), with no plugins or extra keys; defaults are sourced at line 0.
        """
        cfg = parse("")
        self.assertFalse(cfg.allow_anonymous)
        self.assertEqual(cfg.max_client_id_size, 100)
        self.assertEqual(cfg.max_inflight_messages, 20)
        self.assertEqual(cfg.max_online_messages, 1000)
        self.assertEqual(cfg.max_offline_messages, 1000)
        self.assertEqual(cfg.retry_interval, 20)
        self.assertEqual(cfg.mqtt_connect_timeout, 5000)
        self.assertIsNone(cfg.persistent_client_expiration)
        self.assertEqual(cfg.shared_subscription_policy, "prefer_local")
        self.assertEqual(cfg.queue_type, "fifo")
        self.assertIsNone(cfg.max_last_will_delay)
        self.assertEqual(cfg.log_level, "info")
        self.assertEqual(dict(cfg.plugins), {})
        self.assertEqual(dict(cfg.extra), {})
        self.assertEqual(cfg.source("allow_anonymous"), ("<config>", 0))

    def test_typed_globals(self) -> None:
        """
        Every typed global key is parsed to its type (booleans, integers with ``-1`` for "no
        limit", enumerations, a duration for ``max_last_will_delay``), with the source line
        kept and nothing left over in ``extra``.
        """
        cfg = parse(conf(
            "allow_anonymous = on",
            "max_client_id_size = 23",
            "max_message_size = 1024",
            "max_inflight_messages = 0",
            "max_online_messages = -1",
            "max_offline_messages = -1",
            "retry_interval = 3",
            "mqtt_connect_timeout = 1000",
            "topic_max_depth = 5",
            "upgrade_outgoing_qos = on",
            "max_subscriptions_per_client = 8",
            "disconnect_on_unauthorized_publish_v3 = on",
            "suppress_lwt_on_session_takeover = true",
            "shared_subscription_policy = random",
            "queue_type = lifo",
            "receive_max_client = 10",
            "receive_max_broker = 11",
            "topic_alias_max_client = 12",
            "topic_alias_max_broker = 13",
            "max_last_will_delay = 1h",
            "max_ws_frame_size = 1000",
            "crl_refresh_interval = 0",
            "log_level = debug",
        ), "b.conf")
        self.assertEqual(
            (
                cfg.allow_anonymous, cfg.max_client_id_size, cfg.max_message_size,
                cfg.max_inflight_messages, cfg.max_online_messages,
                cfg.max_offline_messages, cfg.retry_interval,
                cfg.mqtt_connect_timeout, cfg.topic_max_depth,
                cfg.upgrade_outgoing_qos, cfg.max_subscriptions_per_client,
                cfg.disconnect_on_unauthorized_publish_v3,
                cfg.suppress_lwt_on_session_takeover,
                cfg.shared_subscription_policy, cfg.queue_type,
                cfg.receive_max_client, cfg.receive_max_broker,
                cfg.topic_alias_max_client, cfg.topic_alias_max_broker,
                cfg.max_last_will_delay, cfg.max_ws_frame_size,
                cfg.crl_refresh_interval, cfg.log_level,
            ),
            (
                True, 23, 1024, 0, -1, -1, 3, 1000, 5, True, 8, True, True,
                "random", "lifo", 10, 11, 12, 13, 3600, 1000, 0, "debug",
            ),
        )
        self.assertEqual(cfg.source("queue_type"), ("b.conf", 15))
        self.assertEqual(dict(cfg.extra), {})

    def test_max_last_will_delay(self) -> None:
        """
        ``max_last_will_delay`` is ``client`` (no cap), plain seconds (a vmqtw extension)
        or ONE count and unit as VerneMQ's ``vmq_schema:string_to_secs``: ``30s``, ``1h``,
        and ``2m`` is two MONTHS of 4 weeks (VerneMQ has no minute unit); compound
        durations and anything else are refused.
        """
        self.assertIsNone(parse("max_last_will_delay = client").max_last_will_delay)
        self.assertEqual(parse("max_last_will_delay = 90").max_last_will_delay, 90)
        self.assertEqual(parse("max_last_will_delay = 30s").max_last_will_delay, 30)
        self.assertEqual(parse("max_last_will_delay = 2m").max_last_will_delay,
                         2 * 28 * 24 * 3600)
        self.assertEqual(parse("max_last_will_delay = 1y").max_last_will_delay,
                         336 * 24 * 3600)
        for raw in ("soon", "1h30m"):
            self.assertConfigError(
                f"max_last_will_delay = {raw}",
                "broker.conf:1: max_last_will_delay: expected 'client', seconds, or an "
                "integer followed by s, h, d, w, m or y (second, hour, day, week, month = "
                f"4 weeks, year = 48 weeks; there is no minute unit), got {raw!r}",
            )

    def test_persistent_client_expiration_units(self) -> None:
        """
        ``persistent_client_expiration`` takes ``never`` or a count of seconds, hours, days,
        weeks,
        months or years, with VerneMQ's units (a month is 4 weeks, a year 48 weeks) and ``0``
        meaning never.
        """
        day = 24 * 3600
        cases = {
            "never": None,
            "1h": 3600,
            "2d": 2 * day,
            "1w": 7 * day,
            "1m": 28 * day,  # VerneMQ: a month is 4 weeks
            "1y": 336 * day,  # VerneMQ: a year is 12 * 4 weeks
            "0d": None,  # VerneMQ stores never as 0
            "90s": 90,  # VerneMQ 2.x's string_to_secs has seconds
        }
        for raw, expected in cases.items():
            cfg = parse(f"persistent_client_expiration = {raw}")
            self.assertEqual(cfg.persistent_client_expiration, expected, raw)

    def test_persistent_client_expiration_bad(self) -> None:
        """
        ``persistent_client_expiration`` refuses bare numbers, a unit without a count,
        compound durations, spaces and words other than ``never``.
        """
        for raw in ("3600", "h", "1 d", "1d12h", "forever"):
            self.assertConfigError(
                f"persistent_client_expiration = {raw}",
                "broker.conf:1: persistent_client_expiration: expected 'never' or "
                "an integer followed by s, h, d, w, m or y (second, hour, day, week, "
                "month = 4 weeks, year = 48 weeks; there is no minute unit), "
                f"got {raw!r}",
            )

    def test_bad_bool(self) -> None:
        """A global boolean accepts only ``on``/``off``; ``1`` is refused."""
        self.assertConfigError(
            conf("allow_anonymous = 1"),
            "broker.conf:1: allow_anonymous: expected on or off, got '1'",
        )

    def test_bad_int(self) -> None:
        """
        Global integers refuse exponents and underscores and are checked against their range
        (``-1`` at least for message limits, 1 to 65535 for receive maximums).
        """
        self.assertConfigError(
            conf("max_inflight_messages = 1e3"),
            "broker.conf:1: max_inflight_messages: expected an integer, got '1e3'",
        )
        self.assertConfigError(
            conf("max_online_messages = -2"),
            "broker.conf:1: max_online_messages: expected an integer >= -1, "
            "got '-2'",
        )
        self.assertConfigError(
            conf("receive_max_client = 0"),
            "broker.conf:1: receive_max_client: expected an integer between 1 "
            "and 65535, got '0'",
        )
        self.assertConfigError(
            conf("max_client_id_size = 1_000"),
            "broker.conf:1: max_client_id_size: expected an integer, got '1_000'",
        )

    def test_bad_enum(self) -> None:
        """
        Enumerated keys (``queue_type``, ``log_level``) refuse values outside their list,
        naming the allowed ones.
        """
        self.assertConfigError(
            conf("queue_type = stack"),
            "broker.conf:1: queue_type: expected one of fifo, lifo, got 'stack'",
        )
        self.assertConfigError(
            conf("log_level = verbose"),
            "broker.conf:1: log_level: expected one of debug, info, warn, error, "
            "got 'verbose'",
        )

    def test_extra_keys(self) -> None:
        """
        VerneMQ keys without a typed field here (cluster, ``$SYS``, logging,
        ``persistent_store``) are accepted and kept as written in ``extra``.
        """
        cfg = parse(conf(
            "allow_register_during_netsplit = on",
            "coordinate_registrations = off",
            "systree_enabled = on",
            "systree_interval = 20000",
            "nodename = VerneMQ@127.0.0.1",
            "distributed_cookie = vmq",
            "log.console = file",
            "log.console.level = info",
            "log.console.file = /var/log/vmq.log",
            "persistent_store.directory = /var/lib/vmqtw",
            "persistent_store.enabled = on",
            "persistent_store.sync = group",
        ))
        self.assertEqual(cfg.extra["allow_register_during_netsplit"], "on")
        self.assertEqual(cfg.extra["systree_interval"], "20000")
        self.assertEqual(cfg.extra["log.console.file"], "/var/log/vmq.log")
        self.assertEqual(cfg.extra["persistent_store.directory"], "/var/lib/vmqtw")
        self.assertEqual(cfg.extra["persistent_store.enabled"], "on")
        self.assertEqual(cfg.extra["persistent_store.sync"], "group")
        self.assertEqual(len(cfg.extra), 12)

    def test_extra_keys_validated(self) -> None:
        """
        Known extra keys are still checked: ``persistent_store.enabled`` must be on or off and
        ``systree_interval`` an integer.
        """
        self.assertConfigError(
            conf("persistent_store.enabled = maybe"),
            "broker.conf:1: persistent_store.enabled: expected on or off, got 'maybe'",
        )
        self.assertConfigError(
            conf("systree_interval = often"),
            "broker.conf:1: systree_interval: expected an integer, got 'often'",
        )

    def test_config_is_frozen(self) -> None:
        """The parsed configuration cannot be changed: fields and ``extra`` are read-only."""
        cfg = parse("allow_anonymous = on")
        self.assertRaises(AttributeError, setattr, cfg, "allow_anonymous", False)
        self.assertRaises(TypeError, operator.setitem, cfg.extra, "x", "y")


class PluginTests(ErrorMixin, SynchronousTestCase):
    def test_plugins(self) -> None:
        """
        ``plugins.NAME = on|off`` declares plugins in file order, with an optional ``priority``
        and ``path`` and the source line of the declaration.
        """
        cfg = parse(conf(
            "plugins.vmq_acl = on",
            "plugins.vmq_passwd = on",
            "plugins.vmq_passwd.priority = 2",
            "plugins.my_auth = off",
            "plugins.my_auth.path = /opt/plugins/my_auth",
        ), "b.conf")
        self.assertEqual(list(cfg.plugins), ["vmq_acl", "vmq_passwd", "my_auth"])
        p = cfg.plugins["vmq_passwd"]
        self.assertEqual(
            (p.name, p.enabled, p.priority, p.path, p.source),
            ("vmq_passwd", True, 2, None, ("b.conf", 2)),
        )
        m = cfg.plugins["my_auth"]
        self.assertEqual(
            (m.enabled, m.priority, m.path), (False, None, "/opt/plugins/my_auth")
        )

    def test_plugin_bad_values(self) -> None:
        """
        A plugin switch other than on/off, or a non-integer priority, is refused at its line.
        """
        self.assertConfigError(
            conf("plugins.vmq_acl = enabled"),
            "broker.conf:1: plugins.vmq_acl: expected on or off, got 'enabled'",
        )
        self.assertConfigError(
            conf("plugins.vmq_acl = on", "plugins.vmq_acl.priority = high"),
            "broker.conf:2: plugins.vmq_acl.priority: expected an integer, got 'high'",
        )

    def test_plugin_unknown_subkey(self) -> None:
        """Keys under ``plugins.NAME.`` other than ``priority`` and ``path`` are unknown."""
        self.assertConfigError(
            conf("plugins.vmq_acl = on", "plugins.vmq_acl.colour = red"),
            "broker.conf:2: plugins.vmq_acl.colour: unknown configuration key",
        )

    def test_plugin_priority_without_plugin_line(self) -> None:
        """
        A plugin priority without a ``plugins.NAME`` line is refused with the line to add.
        """
        self.assertConfigError(
            conf("plugins.vmq_acl.priority = 1"),
            "broker.conf:1: plugins.vmq_acl.priority: set but plugins.vmq_acl is "
            "not set (add plugins.vmq_acl = on)",
        )

    def test_plugin_settings(self) -> None:
        """
        ``NAME.key = value`` lines are settings of plugin ``NAME``, passed without the prefix,
        and may come before ``plugins.NAME``; built-in plugins need no ``plugins.NAME`` line
        for their settings to be accepted.
        """
        cfg = parse(conf(
            # settings may come before the plugins.NAME line
            "my_hooks.endpoint.url = http://localhost/hook?a=b",
            "my_hooks.pool_timeout = 6000",
            "plugins.my_hooks = on",
            # built-in plugins need no plugins.NAME line
            "vmq_acl.acl_file = /etc/vmq.acl",
            "vmq_passwd.password_file = /etc/vmq.passwd",
        ))
        self.assertEqual(
            {k: dict(v) for k, v in cfg.plugin_settings.items()},
            {
                "my_hooks": {
                    "endpoint.url": "http://localhost/hook?a=b",
                    "pool_timeout": "6000",
                },
                "vmq_acl": {"acl_file": "/etc/vmq.acl"},
                "vmq_passwd": {"password_file": "/etc/vmq.passwd"},
            },
        )
        self.assertNotIn("vmq_acl", cfg.plugins)

    def test_settings_of_unknown_plugin(self) -> None:
        """Settings for a plugin that is neither declared nor built-in are unknown keys.
        (VerneMQ's own plugins, vmq_webhooks included, have known settings: see
        test_dropin_config.)"""
        self.assertConfigError(
            conf("my_hooks.pool_timeout = 6000"),
            "broker.conf:1: my_hooks.pool_timeout: unknown configuration key",
        )

    def test_builtin_plugins(self) -> None:
        """The built-in plugins are ``vmq_passwd`` and ``vmq_acl``."""
        self.assertEqual(config.BUILTIN_PLUGINS, {"vmq_passwd", "vmq_acl"})


class RegistryTests(SynchronousTestCase):
    """The registry is the one table of listener options."""

    def test_root_options(self) -> None:
        """
        The options settable at the root level are exactly ``max_connections``,
        ``nr_of_acceptors``, ``mountpoint`` and ``max_connection_lifetime``.
        """
        self.assertEqual(
            set(config._ROOT_OPTIONS),
            {"max_connections", "nr_of_acceptors", "mountpoint",
             "max_connection_lifetime"},
        )

    def test_scopes_are_known_kinds(self) -> None:
        """
        Every registered listener option applies to at least one kind, and only to known kinds.
        """
        for name, opt in config.REGISTRY.items():
            self.assertTrue(opt.scope, name)
            self.assertLessEqual(set(opt.scope), set(config.LISTENER_KINDS), name)

    def test_defaults_validate(self) -> None:
        """Every registered default passes its own option's check."""
        for _name, opt in config.REGISTRY.items():
            if opt.default is not None:
                opt.check(opt.default)

    def test_extending_the_registry(self) -> None:
        """
        A new listener option is one registry entry: the parser then accepts it on the kinds
        and levels of its scope and resolves it like any other.
        """
        self.patch(config, "REGISTRY", {
            **config.REGISTRY,
            "frobnicate": config.ListenerOption(
                scope=config._scope(("tcp", "PN")), check=config._bool, default="off"
            ),
        })
        cfg = parse(conf(
            "listener.tcp.default = 127.0.0.1:1883",
            "listener.tcp.default.frobnicate = on",
        ))
        self.assertEqual(one(cfg).options["frobnicate"], "on")


class DescribeTests(SynchronousTestCase):
    def test_describe(self) -> None:
        """
        ``describe_listeners`` prints one aligned row per listener (kind, name, address,
        mountpoint, connection limit, acceptors, versions, lifetime, anonymous override, PROXY,
        source), with ``-`` or ``off`` where an option does not apply or is unset.
        """
        cfg = parse(conf(
            "listener.tcp.default = 127.0.0.1:1883",
            "listener.tcp.default.mountpoint = site",
            "listener.tcp.default.allowed_protocol_versions = 3,4,5",
            "listener.tcp.default.max_connection_lifetime = 60",
            "listener.tcp.default.allow_anonymous_override = on",
            "listener.tcp.default.proxy_protocol = on",
            "listener.ws.v6 = ::1:8080",
            "listener.ws.v6.max_connections = infinity",
            "listener.http.metrics = 127.0.0.1:8888",
            "listener.ws.v6.allowed_protocol_versions = 3,4",
        ), "b.conf")
        self.assertEqual(
            describe_listeners(cfg).splitlines(),
            [
                "KIND  NAME     ADDRESS         MOUNTPOINT  MAX_CONN  ACCEPTORS  "
                "VERSIONS  LIFETIME  ANON_OVERRIDE  PROXY  SOURCE",
                "tcp   default  127.0.0.1:1883  site        10000     10         "
                "3,4,5     60s       on             on     b.conf:1",
                "ws    v6       [::1]:8080      -           infinity  10         "
                "3,4       off       off            off    b.conf:7",
                "http  metrics  127.0.0.1:8888  -           10000     10         "
                "-         off       off            off    b.conf:9",
            ],
        )

    def test_describe_unix(self) -> None:
        """Unix socket listeners are described by their ``local:`` path."""
        cfg = parse(conf("listener.tcp.sock = local:/run/vmq.sock:0"))
        self.assertIn("local:/run/vmq.sock", describe_listeners(cfg))

    def test_describe_none(self) -> None:
        """Without listeners the description says so, naming the file."""
        self.assertEqual(
            describe_listeners(parse("", "b.conf")), "b.conf: no listeners configured"
        )


class LoadTests(ErrorMixin, SynchronousTestCase):
    def test_load(self) -> None:
        """``load`` reads a file and records it as the path and source of every setting."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(conf("allow_anonymous = on", "listener.tcp.default = 127.0.0.1:0"))
        cfg = load(path)
        self.assertEqual(cfg.path, path)
        self.assertTrue(cfg.allow_anonymous)
        self.assertEqual(one(cfg).source, (path, 2))
        self.assertEqual(cfg.source("allow_anonymous"), (path, 1))

    def test_load_error_names_file(self) -> None:
        """Errors in a loaded file name that file and line."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(conf("bogus = 1"))
        err = self.assertRaises(ConfigError, load, path)
        self.assertEqual(str(err), f"{path}:1: bogus: unknown configuration key")

    def test_missing_file(self) -> None:
        """A missing configuration file is an error naming the file, line 0, and the reason."""
        path = self.mktemp()
        err = self.assertRaises(ConfigError, load, path)
        self.assertEqual(err.file, path)
        self.assertEqual(err.line, 0)
        self.assertEqual(
            str(err), f"{path}: cannot read configuration file: No such file or directory"
        )

    def test_directory(self) -> None:
        """A directory given as configuration file is an error naming it."""
        path = self.mktemp()
        os.mkdir(path)
        err = self.assertRaises(ConfigError, load, path)
        self.assertTrue(str(err).startswith(f"{path}: cannot read configuration file: "))

    def test_not_utf8(self) -> None:
        """A configuration file that is not UTF-8 is refused, naming the file."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"nodename = \xff\xfe\n")
        err = self.assertRaises(ConfigError, load, path)
        self.assertTrue(str(err).startswith(f"{path}: cannot read configuration file: not UTF-8"))


class ConfigErrorTests(SynchronousTestCase):
    def test_str(self) -> None:
        """
        A ``ConfigError`` prints as ``FILE:LINE: KEY: MESSAGE``, or ``FILE: MESSAGE`` without
        line, and keeps each part as an attribute.
        """
        self.assertEqual(
            str(ConfigError("a.conf", 3, "k", "bad")), "a.conf:3: k: bad"
        )
        self.assertEqual(str(ConfigError("a.conf", 0, "", "gone")), "a.conf: gone")
        e = ConfigError("a.conf", 3, "k", "bad")
        self.assertEqual((e.file, e.line, e.key, e.message), ("a.conf", 3, "k", "bad"))
