"""
Issue #13, the configuration side: VerneMQ's stock ``vernemq.conf`` is read
unchanged, every key either means what it means in VerneMQ or is accepted
with one warning saying why it has no effect, every problem of a file is
reported in one run, and every relative path is taken against the
configuration file's directory.
"""

from __future__ import annotations

import collections
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.config import ConfigError, ConfigErrors, compat, describe_warnings, load, parse

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
STOCK = os.path.join(DATA, "vernemq.conf")


def active_keys(path: str) -> list[str]:
    """The keys of the non-comment lines of a file."""
    with open(path, encoding="utf-8") as f:
        return [line.split("=", 1)[0].strip() for line in f
                if line.strip() and not line.lstrip().startswith("#")]


class StockFileTests(SynchronousTestCase):
    """VerneMQ 2.x's stock vernemq.conf (loopback addresses) as a vmqtw config."""

    def setUp(self) -> None:
        self.config = load(STOCK)

    def test_stock_file_parses(self) -> None:
        """The stock file loads without a single error: the tcp and http listeners are
        served, the vmq (cluster) listener is kept aside as not served yet, and
        VerneMQ's own plugins vmq_passwd and vmq_acl are on with their files under
        ./etc, taken against the file's directory."""
        cfg = self.config
        self.assertEqual([lc.key for lc in cfg.listeners],
                         ["listener.tcp.default", "listener.http.default"])
        self.assertEqual([lc.key for lc in cfg.unserved_listeners],
                         ["listener.vmq.clustering"])
        self.assertEqual(cfg.listeners[0].allowed_protocol_versions, {3, 4, 5})
        enabled = [name for name, pc in cfg.plugins.items() if pc.enabled]
        self.assertEqual(enabled, ["vmq_passwd", "vmq_acl"])
        self.assertEqual(cfg.shared_subscription_policy, "prefer_local")
        self.assertEqual(cfg.log.console, "file")
        self.assertEqual(cfg.log.console_file, os.path.join(DATA, "log", "console.log"))

    def test_every_key_is_honoured_or_warned_once(self) -> None:
        """Each key of the stock file either has its VerneMQ meaning (no warning) or gets
        exactly ONE warning naming it, its line and why it has no effect; the keys that
        must warn (cluster, Erlang, LevelDB, Graphite, a disabled plugin's settings,
        the cluster listener) all do; $SYS and the http listener are honoured."""
        warned = collections.Counter(w.key for w in self.config.warnings)
        self.assertEqual([k for k, n in warned.items() if n > 1], [])
        keys = set(active_keys(STOCK))
        self.assertLessEqual(set(warned), keys)
        must_warn = {
            "accept_eula", "allow_register_during_netsplit", "coordinate_registrations",
            "nodename", "distributed_cookie", "metadata_plugin",
            "graphite_enabled", "erlang.async_threads", "leveldb.maximum_memory.percent",
            "vmq_bcrypt.mechanism", "vmq_diversity.script_dir", "listener.vmq.clustering",
        }
        self.assertLessEqual(must_warn, set(warned))
        honoured = {"allow_anonymous", "max_online_messages", "listener.tcp.default",
                    "plugins.vmq_passwd", "vmq_acl.acl_file", "log.console.level",
                    "shared_subscription_policy", "override_max_online_messages",
                    "systree_enabled", "listener.http.default"}
        self.assertEqual(honoured & set(warned), set())
        for w in self.config.warnings:
            self.assertTrue(str(w).startswith(f"{STOCK}:{w.line}: {w.key}: "), str(w))
            self.assertGreater(w.line, 0, str(w))

    def test_check_equivalent(self) -> None:
        """What --check does passes on the stock file: the enabled plugins load (their
        files resolved next to it) and the broker service builds every listener layer,
        without binding anything; the warnings print one per line."""
        from vmqtw.auth import loader
        from vmqtw.service import BrokerService
        plugins = loader.load_plugins(self.config, Clock())
        self.assertEqual([name for name, _ in plugins], ["vmq_acl", "vmq_passwd"])
        BrokerService(self.config, Clock(), plugins=plugins)
        lines = describe_warnings(self.config).splitlines()
        self.assertEqual(len(lines), len(self.config.warnings))
        self.assertTrue(all(line.startswith("vmqtw: warning: ") for line in lines))


class ErrorsTests(SynchronousTestCase):

    def test_unknown_keys_stay_errors_all_reported(self) -> None:
        """A key VerneMQ does not know is still an error, and every bad line of a file is
        reported in the same run (ConfigErrors), in line order."""
        err = self.assertRaises(ConfigErrors, parse,
                                "bogus = 1\nallow_anonymous = maybe\nerlang = 3\n"
                                "listener.tcp.a = 127.0.0.1:0\nqueue_type = stack\n", "b.conf")
        self.assertEqual([(e.line, e.key) for e in err.errors],
                         [(1, "bogus"), (2, "allow_anonymous"), (3, "erlang"),
                          (5, "queue_type")])
        self.assertEqual(len(str(err).splitlines()), 4)
        self.assertIsInstance(err, ConfigError)

    def test_no_effect_values_are_still_checked(self) -> None:
        """Keys accepted without effect still have their values checked where VerneMQ's
        schema has a type (a flag must be on or off)."""
        err = self.assertRaises(ConfigErrors, parse, "allow_publish_during_netsplit = 2\n",
                                "b.conf")
        self.assertEqual(str(err), "b.conf:1: allow_publish_during_netsplit: expected on "
                                   "or off, got '2'")


class WarningTests(SynchronousTestCase):

    def warnings(self, text: str) -> dict[str, str]:
        cfg = parse("plugins.vmq_passwd = off\nplugins.vmq_acl = off\n" + text, "b.conf")
        return {w.key: w.message for w in cfg.warnings}

    def test_accepted_but_not_implemented(self) -> None:
        """Keys whose VerneMQ effect vmqtw lacks warn with what is missing (socket buffer
        sizes, Erlang's active_n); keys vmqtw honours (the publish rate limit, connection
        options for plugins) and harmless defaults do not warn."""
        got = self.warnings(
            "listener.tcp.a = 127.0.0.1:0\nmax_message_rate = 10\n"
            "listener.tcp.forward_connection_opts = on\n"
            "listener.tcp.a.buffer_sizes = 1,2,3\nlistener.tcp.active_n = 5\n")
        self.assertNotIn("max_message_rate", got)
        self.assertNotIn("listener.tcp.forward_connection_opts", got)
        self.assertIn("socket buffer sizes", got["listener.tcp.a.buffer_sizes"])
        self.assertIn("Erlang", got["listener.tcp.active_n"])
        self.assertEqual(self.warnings("max_message_rate = 0\nsystree_enabled = off\n"
                                       "listener.tcp.forward_connection_opts = off\n"), {})

    def test_disabled_plugin_settings(self) -> None:
        """Every setting of a plugin that is off warns that it has no effect, also for
        VerneMQ's own plugins without a plugins.NAME line (off by default); another
        plugin's settings still need its plugins.NAME line."""
        got = self.warnings("plugins.vmq_webhooks = off\n"
                            "vmq_webhooks.h1.hook = auth_on_register\n"
                            "vmq_diversity.auth_redis.enabled = off\n")
        self.assertEqual(got["vmq_webhooks.h1.hook"],
                         "plugins.vmq_webhooks is not on: this setting has no effect")
        self.assertEqual(got["vmq_diversity.auth_redis.enabled"],
                         "plugins.vmq_diversity is not on: this setting has no effect")
        self.assertRaises(ConfigError, parse, "my_plugin.x = 1\n")

    def test_every_no_effect_key_is_in_the_readme(self) -> None:
        """The README's "Migrating from VerneMQ" section names every key (or family)
        that is accepted without effect."""
        readme = os.path.join(os.path.dirname(DATA), "..", "..", "README.md")
        if not os.path.exists(readme):
            raise self.skipTest("README.md is not installed with the package")
        with open(readme, encoding="utf-8") as f:
            text = f.read()
        section = text[text.index("## Migrating from VerneMQ"):]
        missing = [k for k in compat.all_keys() if f"`{k}`" not in section]
        self.assertEqual(missing, [])


class BuiltinPluginTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "broker.conf")

    def test_on_by_default_when_their_files_exist(self) -> None:
        """As in VerneMQ, vmq_passwd and vmq_acl are on without a plugins.NAME line: with
        vmq.passwd / vmq.acl next to the configuration file they are loaded."""
        for name in ("vmq.passwd", "vmq.acl"):
            open(os.path.join(self.dir, name), "w").close()
        cfg = parse("allow_anonymous = on\n", self.path)
        self.assertEqual({n: (pc.enabled, pc.source[1]) for n, pc in cfg.plugins.items()},
                         {"vmq_acl": (True, 0), "vmq_passwd": (True, 0)})
        self.assertEqual(cfg.warnings, ())

    def test_missing_default_file_warns_instead_of_bricking(self) -> None:
        """Without their file a default-on plugin is left out with a warning naming the
        resolved path (VerneMQ would start it with an empty table that refuses
        everything); plugins.NAME = off silences it."""
        cfg = parse("vmq_acl.acl_file = rules/acl\n", self.path)
        self.assertEqual(dict(cfg.plugins), {})
        messages = {w.key: (w.line, w.message) for w in cfg.warnings}
        line, message = messages["plugins.vmq_acl"]
        self.assertEqual(line, 1)
        self.assertIn(os.path.join(self.dir, "rules", "acl") + " does not exist", message)
        self.assertIn(os.path.join(self.dir, "vmq.passwd"), messages["plugins.vmq_passwd"][1])
        quiet = parse("plugins.vmq_acl = off\nplugins.vmq_passwd = off\n", self.path)
        self.assertEqual(quiet.warnings, ())


class PathTests(SynchronousTestCase):

    def test_tls_files_relative_to_the_config_file(self) -> None:
        """TLS and PSK file paths resolve against the configuration file's directory,
        like password, ACL, plugin and store paths (not against the working directory,
        which is / under systemd)."""
        cfg = parse("listener.ssl.a = 127.0.0.1:0\nlistener.ssl.certfile = certs/c.pem\n"
                    "listener.ssl.keyfile = /abs/k.pem\nlistener.ssl.cafile = ../ca.pem\n"
                    "listener.ssl.pskfile = vmq.psk\n", "/etc/vmqtw/broker.conf")
        tls = cfg.listeners[0].tls
        assert tls is not None
        self.assertEqual((tls.certfile, tls.keyfile, tls.cafile, tls.pskfile),
                         ("/etc/vmqtw/certs/c.pem", "/abs/k.pem", "/etc/ca.pem",
                          "/etc/vmqtw/vmq.psk"))
        self.assertEqual(cfg.store.directory, "/etc/vmqtw/data")
        self.assertEqual(cfg.resolve("x/../y"), "/etc/vmqtw/y")

    def test_tls_file_errors_name_the_resolved_path(self) -> None:
        """A missing certfile written relative is reported by the TLS layer with the path
        resolved against the configuration file's directory."""
        from vmqtw.transport import tls
        base = os.path.abspath(self.mktemp())
        cfg = parse("listener.ssl.a = 127.0.0.1:0\nlistener.ssl.certfile = c.pem\n",
                    os.path.join(base, "broker.conf"))
        settings = tls.read_settings(cfg.listeners[0])
        err = self.assertRaises(tls.OptionError, tls.load_material, settings)
        self.assertIn(f"cannot read {os.path.join(base, 'c.pem')}", str(err))

    def test_plugin_file_errors_name_the_resolved_path(self) -> None:
        """A missing password or ACL file is reported with its resolved, normalised path."""
        from vmqtw.auth import loader
        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "conf"))
        cfg = parse("plugins.vmq_passwd = on\nvmq_passwd.password_file = ../pw\n",
                    os.path.join(base, "conf", "b.conf"))
        err = self.assertRaises(ConfigError, loader.load_plugins, cfg, Clock())
        self.assertIn(os.path.join(base, "pw"), str(err))
        self.assertNotIn("..", str(err))


class SemanticsTests(SynchronousTestCase):

    def test_units_as_vernemq(self) -> None:
        """VerneMQ's vmq_schema:string_to_secs: ``1m`` is a month (4 weeks), ``y`` 48
        weeks, ``s`` seconds, for max_last_will_delay and persistent_client_expiration."""
        cfg = parse("max_last_will_delay = 1m\npersistent_client_expiration = 30s\n")
        self.assertEqual(cfg.max_last_will_delay, 28 * 24 * 3600)
        self.assertEqual(cfg.persistent_client_expiration, 30)
        self.assertEqual(parse("persistent_client_expiration = 2y\n")
                         .persistent_client_expiration, 2 * 336 * 24 * 3600)

    def test_mountpoints_as_written(self) -> None:
        """``site/`` and ``site`` are two mountpoints (two namespaces), as in VerneMQ."""
        cfg = parse("listener.tcp.a = 127.0.0.1:1\nlistener.tcp.a.mountpoint = site/\n"
                    "listener.tcp.b = 127.0.0.1:2\nlistener.tcp.b.mountpoint = site\n")
        self.assertEqual([lc.mountpoint for lc in cfg.listeners], ["site/", "site"])

    def test_topic_alias_directions(self) -> None:
        """topic_alias_max_client is the INBOUND limit (what the client may send, announced
        in CONNACK) and topic_alias_max_broker the OUTBOUND one, as in VerneMQ."""
        cfg = parse("topic_alias_max_client = 7\ntopic_alias_max_broker = 3\n")
        self.assertEqual((cfg.topic_alias_inbound_max, cfg.topic_alias_outbound_max), (7, 3))
