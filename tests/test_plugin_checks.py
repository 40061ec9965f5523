"""Plugins fail loudly (issue #13, item 5), against real processes and clients.

- A plugin whose hook does not match its interface stops ``--check`` (exit 2)
  and startup (exit 1) with one line naming the ``plugins.NAME`` line, the
  interface, the method and where it is defined.
- A chain that would deny every SUBSCRIBE (or PUBLISH) of some clients is a
  warning: on stdout from ``--check``, in the log at startup; and real
  clients are indeed denied exactly where it says.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from tests.support import (
    REPO, TIMEOUT, TWISTD, BrokerTestCase, MQTTv311, MQTTv5, in_thread, run_process,
    stop_broker,
)
from vmqtw.auth.passwd import hash_password
from vmqtw.config import load
from vmqtw.service import BrokerService

# Python start-up plus importing Twisted can be slow on a loaded machine.
PROCESS_TIMEOUT = 30.0
EXAMPLES = os.path.join(REPO, "plugins")

#: A plugin whose auth_on_publish forgot ``qos`` and ``retain``.
WRONG_SIGNATURE = """\
from zope.interface import implementer
from vmqtw.auth.api import OK, IAuthOnPublish, IAuthOnSubscribe

@implementer(IAuthOnPublish, IAuthOnSubscribe)
class Plugin:
    def auth_on_publish(self, client, topic, payload):
        return OK

    def auth_on_subscribe(self, client, topics):
        return OK

def make_plugin(settings, context):
    return Plugin()
"""

#: A plugin that authorizes PUBLISH only: every SUBSCRIBE is denied.
PUBLISH_ONLY = """\
from zope.interface import implementer
from vmqtw.auth.api import OK, IAuthOnPublish

@implementer(IAuthOnPublish)
class Plugin:
    def auth_on_publish(self, client, topic, payload, qos, retain):
        return OK

def make_plugin(settings, context):
    return Plugin()
"""

#: A plugin with the plain authorization hooks: 5.0 clients are asked them too.
PLAIN_HOOKS = """\
from zope.interface import implementer
from vmqtw.auth.api import OK, IAuthOnPublish, IAuthOnSubscribe

@implementer(IAuthOnPublish, IAuthOnSubscribe)
class Plugin:
    def auth_on_publish(self, client, topic, payload, qos, retain):
        return OK

    def auth_on_subscribe(self, client, topics):
        return OK

def make_plugin(settings, context):
    return Plugin()
"""

#: A plugin with MQTT 5.0 authorization hooks only: 3.x clients are denied.
ONLY_M5 = """\
from zope.interface import implementer
from vmqtw.auth.api import OK, IAuthOnPublishM5, IAuthOnSubscribeM5

@implementer(IAuthOnPublishM5, IAuthOnSubscribeM5)
class Plugin:
    def auth_on_publish_m5(self, client, topic, payload, qos, retain, properties):
        return OK

    def auth_on_subscribe_m5(self, client, topics, properties):
        return OK

def make_plugin(settings, context):
    return Plugin()
"""


class _PluginDir(BrokerTestCase):
    """A directory holding broker.conf and plugins/NAME.py."""

    timeout = 120

    def setUp(self) -> None:
        # short: the path shows up in every message
        self.dir = tempfile.mkdtemp(prefix="vmqtw-pl-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self._modules: list[str] = []

    def tearDown(self) -> None:
        for name in self._modules:
            sys.modules.pop(name, None)

    def file(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def plugin(self, source: str) -> tuple[str, str]:
        """Write a plugin module; returns its (unique) name and its path."""
        name = f"pl_{uuid.uuid4().hex[:8]}"
        self._modules.append(name)
        return name, self.file(f"plugins/{name}.py", source)

    def config(self, text: str) -> str:
        return self.file("broker.conf", textwrap.dedent(text))


class CheckTests(_PluginDir):
    """``--check`` with ``python -m vmqtw`` and ``twistd vmqtw``."""

    def runners(self) -> Any:
        def module(config: str, *extra: str) -> Any:
            return run_process(sys.executable, ["-m", "vmqtw", "-c", config, *extra],
                               timeout=PROCESS_TIMEOUT, cwd=self.dir)

        def twistd(config: str, *extra: str) -> Any:
            return run_process(TWISTD[0], [*TWISTD[1:], "-n", "--pidfile=", "vmqtw", "-c",
                                           config, *extra],
                               timeout=PROCESS_TIMEOUT, cwd=self.dir)

        return (("python -m vmqtw", module), ("twistd", twistd))

    @inlineCallbacks
    def test_wrong_signature_exits_2(self):
        """
        A hook whose signature does not match its interface makes ``--check`` exit 2 with
        one ``configuration error`` line naming FILE:LINE of ``plugins.NAME``, the interface
        method and the module's FILE:LINE of the hook; nothing on stdout says OK.
        """
        name, module = self.plugin(WRONG_SIGNATURE)
        config = self.config(f"""\
            allow_anonymous = on
            listener.tcp.default = 127.0.0.1:0
            plugins.{name} = on
            plugins.{name}.path = plugins
            """)
        for runner, run in self.runners():
            out, err, code = yield run(config, "--check")
            text = err.decode()
            self.assertEqual(code, 2, f"{runner}: {out!r} {err!r}")
            self.assertEqual(len(text.splitlines()), 1, text)
            self.assertTrue(text.startswith(
                f"vmqtw: configuration error: {config}:3: plugins.{name}: "), text)
            self.assertIn("IAuthOnPublish.auth_on_publish(client, topic, payload, qos, "
                          f"retain): auth_on_publish(client, topic, payload) ({module}:6) "
                          "accepts fewer arguments than the broker passes", text)
            self.assertNotIn("Traceback", text)
            self.assertNotIn(b"OK", out)

    @inlineCallbacks
    def test_publish_only_plugin_warns_on_stdout(self):
        """
        A chain with ``auth_on_publish`` only passes ``--check`` (exit 0, stderr empty) with
        a warning on stdout naming the listener's FILE:LINE, SUBSCRIBE and the fix.
        """
        name, _ = self.plugin(PUBLISH_ONLY)
        config = self.config(f"""\
            allow_anonymous = on
            listener.tcp.default = 127.0.0.1:0
            plugins.{name} = on
            plugins.{name}.path = plugins
            """)
        for runner, run in self.runners():
            out, err, code = yield run(config, "--check")
            self.assertEqual((code, err), (0, b""), f"{runner}: {out!r}")
            # (other warnings, e.g. about the configuration file, may come too)
            warnings = [line for line in out.decode().splitlines()
                        if line.startswith("vmqtw: warning: ") and "will be denied" in line]
            self.assertEqual(warnings, [
                f"vmqtw: warning: {config}:2: listener.tcp.default: every SUBSCRIBE from any "
                f"client will be denied: none of the plugins enabled ({name}) implements "
                "auth_on_subscribe (IAuthOnSubscribe) or auth_on_subscribe_m5 "
                "(IAuthOnSubscribeM5). To fix it, enable vmq_acl (plugins.vmq_acl = on) or a "
                "plugin implementing IAuthOnSubscribe"], runner)
            self.assertIn(f"{config}: OK", out.decode())

    @inlineCallbacks
    def test_builtins_and_example_pass_clean(self):
        """
        ``vmq_passwd``, ``vmq_acl``, ``vmq_webhooks`` and the shipped ``tenant_auth``
        example together pass ``--check`` with exit 0, no stderr and no denial warning.
        """
        if not os.path.isfile(os.path.join(EXAMPLES, "tenant_auth.py")):
            raise self.skipTest("the example plugins/ directory is not next to this vmqtw")
        self.file("vmq.passwd", f"alice:{hash_password(b'secret')}\n")
        self.file("vmq.acl", "user alice\ntopic a/#\n")
        self.file("tenants.json", '{"bob": {"password": "pw", "tenant": "b"}}')
        config = self.config(f"""\
            listener.tcp.default = 127.0.0.1:0
            plugins.vmq_passwd = on
            plugins.vmq_acl = on
            plugins.vmq_webhooks = on
            vmq_webhooks.pub.hook = on_publish
            vmq_webhooks.pub.endpoint = http://127.0.0.1:9/on_publish
            plugins.tenant_auth = on
            plugins.tenant_auth.path = {EXAMPLES}
            plugins.tenant_auth.priority = 1
            tenant_auth.users_file = tenants.json
            """)
        out, err, code = yield self.runners()[0][1](config, "--check")
        self.assertEqual((code, err), (0, b""), out)
        text = out.decode()
        self.assertNotIn("will be denied", text)
        self.assertEqual([line.split(":")[0] for line in text.splitlines()
                          if line.startswith("plugin ")],
                         ["plugin tenant_auth", "plugin vmq_acl", "plugin vmq_passwd",
                          "plugin vmq_webhooks"])

    @inlineCallbacks
    def test_wrong_signature_stops_startup(self):
        """
        Without ``--check`` the same plugin stops startup: exit 1, one line on stderr naming
        the plugin's line and the method, no traceback, no listener bound.
        """
        name, _ = self.plugin(WRONG_SIGNATURE)
        sock = os.path.join(self.dir, "never.sock")
        config = self.config(f"""\
            allow_anonymous = on
            listener.tcp.default = local:{sock}:0
            plugins.{name} = on
            plugins.{name}.path = plugins
            """)
        for runner, run in self.runners():
            out, err, code = yield run(config)
            text = err.decode()
            self.assertEqual(code, 1, f"{runner}: {out!r} {err!r}")
            self.assertEqual(len(text.strip().splitlines()), 1, text)
            self.assertIn(f"{config}:3: plugins.{name}: ", text)
            self.assertIn("IAuthOnPublish.auth_on_publish(", text)
            self.assertNotIn(b"Traceback", out + err)
            self.assertFalse(os.path.exists(sock), f"{runner} bound before failing")


class RunningBrokerTests(_PluginDir):
    """The warnings at startup tell the truth about what real clients get."""

    def start(self, config: str) -> tuple[BrokerService, list[str]]:
        """Start a broker in this process; returns it and its warning texts."""
        service = BrokerService(load(config), reactor)
        events: list[dict[str, Any]] = []
        service.log = Logger(observer=events.append)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(stop_broker, service)
        warnings = [e["text"] for e in events
                    if e["log_level"].name == "warn" and "text" in e]
        return service, warnings

    @inlineCallbacks
    def test_publish_only_plugin_denies_every_subscribe(self):
        """
        With a publish-only plugin the startup log warns that every SUBSCRIBE will be
        denied, and it is: 3.1.1 gets SUBACK 0x80 and 5.0 gets 0x87, while PUBLISH works.
        """
        name, _ = self.plugin(PUBLISH_ONLY)
        service, warnings = self.start(self.config(f"""\
            allow_anonymous = on
            listener.tcp.default = 127.0.0.1:0
            plugins.{name} = on
            plugins.{name}.path = plugins
            """))
        denied = [w for w in warnings if "will be denied" in w]
        self.assertEqual(len(denied), 1, warnings)
        self.assertIn("listener.tcp.default: every SUBSCRIBE from any client", denied[0])
        port = self.port_of(service)
        for protocol, code in ((MQTTv311, 0x80), (MQTTv5, 0x87)):
            client = self.paho(port, f"c{protocol}", protocol)
            yield in_thread(client.connect)
            granted = yield in_thread(client.subscribe, "t/1", 1)
            self.assertEqual(granted, [code], protocol)
            yield in_thread(client.publish, "t/1", b"allowed", 1)

    @inlineCallbacks
    def test_m5_only_plugin_denies_3x_clients_only(self):
        """
        With ``_m5`` hooks only, the warning names the 3.x protocol versions, and indeed a
        3.1.1 SUBSCRIBE is denied while a 5.0 client subscribes and receives.
        """
        name, _ = self.plugin(ONLY_M5)
        service, warnings = self.start(self.config(f"""\
            allow_anonymous = on
            listener.tcp.default = 127.0.0.1:0
            listener.tcp.default.allowed_protocol_versions = 4,5
            plugins.{name} = on
            plugins.{name}.path = plugins
            """))
        denied = [w for w in warnings if "will be denied" in w]
        self.assertEqual([w.split(" will be denied")[0].split(": ", 1)[1] for w in denied], [
            "listener.tcp.default: every PUBLISH from MQTT 3.x clients (protocol versions 4)",
            "listener.tcp.default: every SUBSCRIBE from MQTT 3.x clients (protocol versions "
            "4)"])
        port = self.port_of(service)
        old = self.paho(port, "old", MQTTv311)
        yield in_thread(old.connect)
        self.assertEqual((yield in_thread(old.subscribe, "t/1", 1)), [0x80])
        new = self.paho(port, "new", MQTTv5)
        yield in_thread(new.connect)
        self.assertEqual((yield in_thread(new.subscribe, "t/1", 1)), [1])
        yield in_thread(new.publish, "t/1", b"five", 1)
        message = yield in_thread(new.get, TIMEOUT)
        self.assertEqual(message.payload, b"five")

    @inlineCallbacks
    def test_no_warning_where_nothing_is_denied(self):
        """
        A chain with plain hooks serves 5.0 clients through the fallback: no denial warning,
        and a 5.0 client subscribes.
        """
        name, _ = self.plugin(PLAIN_HOOKS)
        service, warnings = self.start(self.config(f"""\
            allow_anonymous = on
            listener.tcp.default = 127.0.0.1:0
            plugins.{name} = on
            plugins.{name}.path = plugins
            """))
        self.assertEqual([w for w in warnings if "will be denied" in w], [])
        client = self.paho(self.port_of(service), "five", MQTTv5)
        yield in_thread(client.connect)
        self.assertEqual((yield in_thread(client.subscribe, "t/1", 1)), [1])
