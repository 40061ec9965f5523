"""The operations stack under the ``BrokerService``: http listeners serving
VerneMQ's HTTP modules, the admin channel, the $SYS publisher, the config
warnings and the ``log.*`` observers (a ``MemoryReactorClock``, nothing bound)."""
from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from vmqtw import logs
from vmqtw.admin.systree import SysTree
from vmqtw.config import ConfigError, parse
from vmqtw.service import BrokerService, StartupError

BASE = "allow_anonymous = on\nlistener.tcp.default = 127.0.0.1:0\n"


class WiringTestCase(SynchronousTestCase):

    def service(self, text: str) -> BrokerService:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "broker.conf")
        config = parse(text, path)
        return BrokerService(config, MemoryReactorClock())

    def started(self, text: str) -> BrokerService:
        svc = self.service(text)
        svc.privilegedStartService()
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc


class HttpListenerTests(WiringTestCase):

    def test_http_listener_serves_the_modules(self) -> None:
        """listener.http.NAME is a listener of the service like the MQTT ones, whose
        factory is a twisted.web Site with the modules its http_modules names; the
        admin commands see it (listener show: type http)."""
        svc = self.started(BASE + "listener.http.api = 127.0.0.1:0\n"
                                  "listener.http.api.http_modules = vmq_health_http, "
                                  "vmq_metrics_http\n")
        self.assertEqual(sorted(svc.listeners), ["http.api", "tcp.default"])
        site = svc.listeners["http.api"].layers[0]
        self.assertIsInstance(site, Site)
        self.assertEqual(sorted(site.resource.children), [b"health", b"metrics"])
        reply = svc.ops.admin.run(["listener", "show", "--format=json"])
        types = sorted(row["type"] for row in json.loads(reply.render("json"))["table"])
        self.assertEqual(types, ["http", "mqtt"])

    def test_bad_http_settings_name_the_listener(self) -> None:
        """An http listener whose settings cannot be used (an unknown module) stops
        startup with an error naming the file, line and listener."""
        e = self.assertRaises(StartupError, self.service,
                              BASE + "listener.http.api = 127.0.0.1:0\n"
                                     "listener.http.api.http_modules = vmq_nonsense\n")
        self.assertIn("broker.conf:3: listener.http.api: http_modules: unknown http "
                      "module(s) vmq_nonsense", str(e))

    def test_per_listener_module_auth_mode(self) -> None:
        """listener.http.NAME.http_module.M.auth.mode is a known key, checked (apikey or
        noauth), and reaches the listener's settings."""
        config = parse(BASE + "listener.http.api = 127.0.0.1:0\n"
                              "listener.http.api.http_module.vmq_metrics_http.auth.mode = "
                              "apikey\n")
        (api,) = [lc for lc in config.listeners if lc.kind == "http"]
        self.assertEqual(api.options["http_module.vmq_metrics_http.auth.mode"], "apikey")
        e = self.assertRaises(ConfigError, parse, BASE + "listener.http.api = 127.0.0.1:0\n"
                              "listener.http.api.http_module.vmq_metrics_http.auth.mode = x\n")
        self.assertIn("expected one of apikey, noauth", str(e))


    def test_vmq_http_pub_settings(self) -> None:
        """plugins.vmq_http_pub = on with its vmq_http_pub.* settings (VerneMQ's way)
        starts without loading an auth plugin, and a listener serving vmq_http_pub
        publishes with those settings."""
        svc = self.started(BASE + "plugins.vmq_http_pub = on\n"
                                  "vmq_http_pub.mqtt_auth.mode = predefined\n"
                                  "vmq_http_pub.mqtt_auth.user = web\n"
                                  "listener.http.pub = 127.0.0.1:0\n"
                                  "listener.http.pub.http_modules = vmq_http_pub\n")
        self.assertNotIn("vmq_http_pub", [name for name, _ in svc.plugins])
        root = svc.listeners["http.pub"].layers[0].resource
        guard = root.children[b"restmqtt"].children[b"api"].children[b"v1"].children[
            b"publish"]
        publish = getattr(guard, "wrapped", guard)
        self.assertEqual((publish.settings.mode, publish.settings.user), ("predefined", "web"))


class ServicesTests(WiringTestCase):

    def test_admin_channel_and_systree_are_children(self) -> None:
        """The admin channel and the $SYS publisher are services of the broker service;
        $SYS is on by default with VerneMQ's 20 s interval."""
        svc = self.started(BASE)
        self.assertIs(svc.admin_channel.parent, svc)
        self.assertIsInstance(svc.systree, SysTree)
        self.assertIs(svc.systree.parent, svc)
        self.assertTrue(svc.systree.enabled)
        self.assertEqual(svc.systree.interval_ms, 20000)

    def test_switched_off(self) -> None:
        """admin_socket = off serves no admin channel; systree_enabled = off publishes
        nothing under $SYS."""
        svc = self.started(BASE + "admin_socket = off\nsystree_enabled = off\n")
        self.assertIsNone(svc.admin_channel)
        self.assertFalse(svc.systree.enabled)
        svc.reactor.advance(60)
        self.assertEqual(svc.metrics.values[svc.metrics.slot("router_matches_local")], 0)

    def test_metrics_shared_by_broker_and_http(self) -> None:
        """One registry: the broker counts in it and the operations stack reads it."""
        svc = self.service(BASE)
        self.assertIs(svc.broker.metrics, svc.metrics)
        self.assertIs(svc.ops.metrics, svc.metrics)


class LoggingTests(WiringTestCase):

    def test_config_warnings_logged_at_startup(self) -> None:
        """Every config warning is logged once at startup as FILE:LINE: key: message."""
        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        svc = self.started(BASE + "plugins.vmq_passwd = off\nplugins.vmq_acl = off\n"
                                  "graphite_enabled = on\n")
        (warning,) = svc.config.warnings
        lines = [e["config_warning"] for e in seen if "config_warning" in e]
        self.assertEqual(lines, [str(warning)])
        self.assertTrue(lines[0].endswith("broker.conf:5: graphite_enabled: Graphite "
                                          "metrics reporting is not implemented yet in "
                                          "vmqtw"), lines[0])

    def test_log_file_installed_at_start(self) -> None:
        """log.console = file: from its start, the service writes its log (and any
        other vmqtw logger's) to log.console.file."""
        directory = os.path.abspath(self.mktemp())
        path = os.path.join(directory, "console.log")
        svc = self.started(BASE + f"log.console = file\nlog.console.file = {path}\n")
        self.addCleanup(logs.uninstall, svc._log_observers)
        logs.Logger(namespace="vmqtw.test").info("while running")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.assertIn("while running", text)
        self.assertIn("listener tcp.default on 127.0.0.1:", text)
