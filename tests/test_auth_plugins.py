"""Auth plugins with a real broker (port 0) and real clients (paho-mqtt, mosquitto_pub/sub,
and raw sockets where the exact CONNACK byte matters).

Covers vmq_passwd and vmq_acl, allow_anonymous / allow_anonymous_override,
per-listener chains, the example plugin in plugins/ (loaded from
``plugins.NAME.path``, moving clients into their tenant's mountpoint),
reloading, and plugins that fail or answer late.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.support import (
    REPO, BrokerTestCase, MQTTv31, MQTTv311, SubscriptionWatcher, connect_packet, in_thread,
    need_mosquitto_clients, run_process, stop_broker, when_session_event,
)
from vmqtw.auth.api import (
    NEXT, OK, Error, IAuthOnPublish, IAuthOnRegister, IAuthOnSubscribe, IOnClientGone,
    IOnClientOffline, IOnRegister, Ok, RegisterRequest,
)
from vmqtw.auth.context import PluginContext
from vmqtw.auth.passwd import hash_password
from vmqtw.config import load
from vmqtw.service import BrokerService, StartupError

PUB = shutil.which("mosquitto_pub")
SUB = shutil.which("mosquitto_sub")
EXAMPLES = os.path.join(REPO, "plugins")

#: paho reports a 3.1.1 CONNACK return code as the matching MQTT 5.0 reason code.
PAHO_BAD_USER_OR_PASSWORD = 134  # CONNACK 4
PAHO_NOT_AUTHORIZED = 135        # CONNACK 5

CONNACK_BAD_LOGIN = b"\x20\x02\x00\x04"
CONNACK_NOT_AUTHORIZED = b"\x20\x02\x00\x05"
CONNACK_OK = b"\x20\x02\x00\x00"


def login_packet(client_id: str, username: str | None = None, password: str | None = None,
                 level: int = 4, clean: bool = True, keepalive: int = 60) -> bytes:
    """CONNECT with optional user name and password, built byte by byte."""
    return connect_packet(client_id, level, clean, keepalive, username=username,
                          password=password)


class AuthTestCase(BrokerTestCase):
    """Brokers whose broker.conf lives in a directory of its own, next to the
    password, ACL and users files it names with relative paths."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
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

    def passwd(self, **users: str) -> str:
        return self.file("vmq.passwd", "".join(f"{u}:{hash_password(p.encode())}\n"
                                               for u, p in users.items()))

    def plugin_module(self, source: str) -> str:
        """Write a plugin module into DIR/plugins; returns its unique name."""
        name = f"test_plugin_{uuid.uuid4().hex[:8]}"
        self._modules.append(name)
        self.file(f"plugins/{name}.py", source)
        return name

    def start(self, text: str) -> BrokerService:
        path = self.file("broker.conf", text)
        service = BrokerService(load(path), reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(stop_broker, service)
        return service

    def user(self, service: BrokerService, client_id: str, username: str | None = None,
             password: str | None = None, protocol: int = MQTTv311,
             listener: str = "tcp.default") -> Any:
        client = self.paho(self.port_of(service, listener), client_id, protocol)
        if username is not None:
            client.client.username_pw_set(username, password)
        return client

    @inlineCallbacks
    def connack(self, service: BrokerService, client_id: str, username: str | None = None,
                password: str | None = None, level: int = 4, listener: str = "tcp.default"):
        """The CONNACK bytes for a raw CONNECT; a refused client is then closed."""
        client = yield self.raw_client(service, listener)
        client.send(login_packet(client_id, username, password, level))
        data = yield client.read(4, what="CONNACK")
        if data != CONNACK_OK:
            yield client.when_closed()
        return data

    def mosquitto(self, program: str, service: BrokerService, *args: str,
                  listener: str = "tcp.default", timeout: float = 15):
        return run_process(program, ["-h", "127.0.0.1", "-p",
                                     str(self.port_of(service, listener)), *args],
                           timeout=timeout)


def refused_then_closed(client: Any) -> int:
    """(in a worker thread) CONNECT, expect a refusal, wait for the close."""
    reason, _ = client.connect(expect_success=False)
    client.wait_disconnected()
    return reason


def denied_publish_disconnects(client: Any, topic: str) -> None:
    """(in a worker thread) a QoS 1 PUBLISH the broker answers by closing (3.1.1)."""
    client.client.publish(topic, b"must not be routed", 1)
    client.wait_disconnected()


PASSWD_CONFIG = """\
allow_anonymous = off
listener.tcp.default = 127.0.0.1:0
plugins.vmq_passwd = on
plugins.vmq_acl = on
vmq_passwd.password_file = vmq.passwd
vmq_passwd.password_reload_interval = 0
vmq_acl.acl_file = vmq.acl
"""


class PasswdTests(AuthTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.passwd(alice="secret-a", monitor="mon")
        self.file("vmq.acl", "topic #\n")
        self.broker = self.start(PASSWD_CONFIG)

    @inlineCallbacks
    def test_right_password(self):
        """With vmq_passwd, a user with the right password is accepted (CONNACK 0, no
        session present) and, allowed by the ACL, gets its own QoS 1 message back."""
        alice = self.user(self.broker, "alice-1", "alice", "secret-a")

        def scenario():
            result = alice.connect()
            alice.subscribe("a/t", 1)
            alice.publish("a/t", b"hello", 1)
            return result, alice.get().payload

        self.assertEqual((yield in_thread(scenario)), ((0, False), b"hello"))

    @inlineCallbacks
    def test_wrong_password_is_connack_4(self):
        """vmq_passwd refuses a known user with a wrong password with CONNACK 4 (bad user
        name or password), for MQTT 3.1 and 3.1.1 alike, and no session is left behind."""
        client = self.user(self.broker, "alice-1", "alice", "wrong")
        self.assertEqual((yield in_thread(refused_then_closed, client)),
                         PAHO_BAD_USER_OR_PASSWORD)
        for level in (3, 4):
            self.assertEqual((yield self.connack(self.broker, "raw", "alice", "x", level)),
                             CONNACK_BAD_LOGIN, level)
        self.assertEqual(self.broker.broker.sessions, {})

    @inlineCallbacks
    def test_unknown_user_is_connack_4(self):
        """vmq_passwd answers NEXT for a user not in its file; no other plugin
        says anything, so the chain is exhausted: the same CONNACK 4 as a wrong
        password (#14: user names cannot be enumerated)."""
        client = self.user(self.broker, "eve-1", "eve", "secret-a")
        self.assertEqual((yield in_thread(refused_then_closed, client)),
                         PAHO_BAD_USER_OR_PASSWORD)
        for level in (3, 4):
            self.assertEqual((yield self.connack(self.broker, "raw", "eve", "x", level)),
                             CONNACK_BAD_LOGIN, level)

    @inlineCallbacks
    def test_no_credentials_is_connack_5(self):
        """With allow_anonymous off, a CONNECT without credentials is refused with
        CONNACK 5 (not authorized): no plugin accepts it; with a user name but no
        password, with CONNACK 4, as an unknown user or a wrong password."""
        self.assertEqual((yield self.connack(self.broker, "anon")), CONNACK_NOT_AUTHORIZED)
        # a user name without a password: vmq_passwd has no opinion either
        self.assertEqual((yield self.connack(self.broker, "nopw", "alice")),
                         CONNACK_BAD_LOGIN)

    @inlineCallbacks
    def test_mosquitto_clients(self):
        """mosquitto_sub and mosquitto_pub log in with vmq_passwd users and exchange a
        message; mosquitto_pub exits with the CONNACK code: 4 for a wrong password and for an
        unknown user."""
        need_mosquitto_clients()
        watcher = SubscriptionWatcher(self.broker)
        received = self.mosquitto(SUB, self.broker, "-u", "monitor", "-P", "mon",
                                  "-t", "m/t", "-C", "1", "-W", "10")
        yield watcher.wait("m/t")
        out, err, code = yield self.mosquitto(PUB, self.broker, "-u", "alice", "-P",
                                              "secret-a", "-t", "m/t", "-m", "hi", "-q", "1")
        self.assertEqual((code, err), (0, b""))
        self.assertEqual((yield received), (b"hi\n", b"", 0))
        # mosquitto_pub exits with the CONNACK code
        out, err, code = yield self.mosquitto(PUB, self.broker, "-u", "alice", "-P", "nope",
                                              "-t", "m/t", "-m", "x")
        self.assertEqual(code, 4)
        self.assertIn(b"bad user name or password", err)
        out, err, code = yield self.mosquitto(PUB, self.broker, "-u", "eve", "-P", "x",
                                              "-t", "m/t", "-m", "x")
        self.assertEqual(code, 4)
        self.assertIn(b"bad user name or password", err)


class AnonymousTests(AuthTestCase):

    @inlineCallbacks
    def test_allow_anonymous_still_checks_a_claimed_user(self):
        """allow_anonymous = on lets clients without a user name in, and one whose
        name no plugin knows (as anonymous); a known user with a wrong password is
        refused (#14: VerneMQ let it in, with that user's ACL).  The ACL applies."""
        self.passwd(alice="secret-a")
        self.file("vmq.acl", "topic read public/#\n")
        broker = self.start(PASSWD_CONFIG.replace("allow_anonymous = off",
                                                  "allow_anonymous = on"))
        for args, expected in ((("alice", "wrong"), CONNACK_BAD_LOGIN),
                               (("eve", "x"), CONNACK_OK), ((None, None), CONNACK_OK)):
            self.assertEqual((yield self.connack(broker, "c", *args)), expected, args)
        client = self.user(broker, "anon")

        def scenario():
            client.connect()
            codes = client.subscribe("public/#"), client.subscribe("private/#")
            denied_publish_disconnects(client, "public/x")  # read-only
            return codes

        self.assertEqual((yield in_thread(scenario)), ([0], [128]))


OVERRIDE_CONFIG = """\
allow_anonymous = off
listener.tcp.default = 127.0.0.1:0
listener.tcp.open = 127.0.0.1:0
listener.tcp.open.allow_anonymous_override = on
plugins.vmq_passwd = on
plugins.vmq_acl = on
vmq_passwd.password_reload_interval = 0
vmq_acl.acl_reload_interval = 0
"""

OVERRIDE_ACL = """\
topic read public/#
user monitor
topic #
"""


class AnonymousOverrideTests(AuthTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.passwd(monitor="mon")
        self.file("vmq.acl", OVERRIDE_ACL)
        self.broker = self.start(OVERRIDE_CONFIG)

    @inlineCallbacks
    def test_anonymous_only_on_the_override_listener(self):
        """allow_anonymous_override = on lets anonymous clients in on that listener only
        (others get CONNACK 5); a claimed user name is still checked there (#14): a
        wrong password is refused with CONNACK 4 on both listeners."""
        self.assertEqual((yield self.connack(self.broker, "a1", listener="tcp.open")),
                         CONNACK_OK)
        self.assertEqual((yield self.connack(self.broker, "a2", listener="tcp.default")),
                         CONNACK_NOT_AUTHORIZED)
        # a claimed user name is verified even where anonymous clients are let in
        self.assertEqual((yield self.connack(self.broker, "a3", "monitor", "wrong",
                                             listener="tcp.open")), CONNACK_BAD_LOGIN)
        self.assertEqual((yield self.connack(self.broker, "a4", "monitor", "wrong",
                                             listener="tcp.default")), CONNACK_BAD_LOGIN)
        client = self.user(self.broker, "paho-anon", listener="tcp.default")
        self.assertEqual((yield in_thread(refused_then_closed, client)), PAHO_NOT_AUTHORIZED)

    @inlineCallbacks
    def test_acl_still_applies_on_the_override_listener(self):
        """An anonymous client let in by allow_anonymous_override is still bound by vmq_acl:
        its subscription to a topic outside the ACL gets 0x80, its publish to a read-only
        topic disconnects it, and nothing of it is routed."""
        anon = self.user(self.broker, "anon", listener="tcp.open")
        monitor = self.user(self.broker, "mon", "monitor", "mon")

        def scenario():
            monitor.connect()
            monitor.subscribe("#", 1)
            anon.connect()
            codes = anon.subscribe("public/#"), anon.subscribe("secret/#")
            denied_publish_disconnects(anon, "public/news")
            monitor.publish("marker", b"after", 1)
            return codes, monitor.get().payload

        self.assertEqual((yield in_thread(scenario)), (([0], [128]), b"after"))


ACL = """\
topic read public/#
user alice
topic alerts/#
user monitor
topic #
pattern devices/%u/#
pattern clients/%c/in
"""


class AclTests(AuthTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.passwd(alice="secret-a", monitor="mon")
        self.file("vmq.acl", ACL)
        self.broker = self.start(PASSWD_CONFIG)
        self.monitor = self.user(self.broker, "monitor-1", "monitor", "mon")

    def alice(self, client_id: str = "alice-1", protocol: int = MQTTv311) -> Any:
        return self.user(self.broker, client_id, "alice", "secret-a", protocol)

    def watch_all(self) -> None:
        """(in a worker thread) the monitor sees everything that is routed."""
        self.monitor.connect()
        self.assertEqual(self.monitor.subscribe("#", 1), [1])

    @inlineCallbacks
    def test_denied_publish_311_disconnects_and_routes_nothing(self):
        """An MQTT 3.1.1 client publishing where the ACL forbids is disconnected (3.1.1 has
        no negative PUBACK) and the message is not routed; its session is removed."""
        alice = self.alice()

        def scenario():
            self.watch_all()
            alice.connect()
            denied_publish_disconnects(alice, "secret/x")
            # the first thing the monitor receives is what was published after
            self.monitor.publish("marker", b"after", 1)
            return self.monitor.get().payload

        self.assertEqual((yield in_thread(scenario)), b"after")
        self.assertNotIn(("", "alice-1"), self.broker.broker.sessions)

    @inlineCallbacks
    def test_denied_publish_31_gets_a_fake_puback(self):
        """An MQTT 3.1 client publishing where the ACL forbids is acknowledged anyway and
        stays connected (VerneMQ's 3.1 behaviour), the denied messages are not routed, and
        its allowed publishes still are."""
        alice = self.alice("alice31", MQTTv31)

        def scenario():
            self.watch_all()
            alice.connect()
            alice.publish("secret/x", b"must not be routed", 1)  # acknowledged anyway
            alice.publish("secret/x", b"must not be routed", 0)
            alice.publish("alerts/a", b"allowed", 1)
            return self.monitor.get().payload, alice.disconnected.is_set()

        self.assertEqual((yield in_thread(scenario)), (b"allowed", False))

    @inlineCallbacks
    def test_denied_subscribe_is_0x80(self):
        """A SUBSCRIBE to a filter the ACL does not allow gets return code 0x80 in SUBACK,
        while allowed filters are granted at the requested QoS."""
        alice = self.alice()

        def scenario():
            alice.connect()
            return [alice.subscribe(f, 1) for f in ("secret/#", "public/#", "alerts/+", "#")]

        self.assertEqual((yield in_thread(scenario)), [[128], [1], [1], [128]])

    @inlineCallbacks
    def test_pattern_substitution_paho(self):
        """ACL patterns substitute %u with the user name and %c with the client id: a client
        may subscribe and publish under its own devices/USER and clients/CLIENTID topics,
        not another's (0x80, and a publish there disconnects it)."""
        alice = self.alice("dev-7")

        def scenario():
            self.watch_all()
            alice.connect()
            codes = [alice.subscribe(f) for f in ("clients/dev-7/in", "clients/dev-8/in",
                                                  "devices/alice/#", "devices/bob/#")]
            alice.publish("devices/alice/temp", b"21", 1)           # %u
            seen = self.monitor.get()
            self.monitor.publish("clients/dev-7/in", b"cmd", 1)     # %c
            got = [alice.get() for _ in range(2)]
            denied_publish_disconnects(alice, "devices/bob/temp")
            return codes, (seen.topic, seen.payload), sorted((m.topic, m.payload) for m in got)

        codes, seen, got = yield in_thread(scenario)
        self.assertEqual(codes, [[0], [128], [0], [128]])
        self.assertEqual(seen, ("devices/alice/temp", b"21"))
        self.assertEqual(got, [("clients/dev-7/in", b"cmd"), ("devices/alice/temp", b"21")])

    @inlineCallbacks
    def test_pattern_substitution_mosquitto(self):
        """With mosquitto clients, the %c and %u ACL patterns let a client read its own
        inbox and devices topics; subscribing to another client's inbox is denied and
        publishing to another user's devices gets mosquitto_pub disconnected."""
        need_mosquitto_clients()
        watcher = SubscriptionWatcher(self.broker)
        login = ("-u", "alice", "-P", "secret-a")
        received = self.mosquitto(SUB, self.broker, *login, "-i", "dev-1",
                                  "-t", "clients/dev-1/in", "-t", "devices/alice/#",
                                  "-C", "2", "-W", "10", "-F", "%t %p")
        yield watcher.wait("clients/dev-1/in")
        yield watcher.wait("devices/alice/#")
        out, err, code = yield self.mosquitto(PUB, self.broker, "-u", "monitor", "-P", "mon",
                                              "-t", "clients/dev-1/in", "-m", "cmd", "-q", "1")
        self.assertEqual((code, err), (0, b""))
        out, err, code = yield self.mosquitto(PUB, self.broker, *login, "-t",
                                              "devices/alice/temp", "-m", "21", "-q", "1")
        self.assertEqual((code, err), (0, b""))
        out, err, code = yield received
        self.assertEqual((code, err), (0, b""))
        self.assertEqual(sorted(out.decode().splitlines()),
                         ["clients/dev-1/in cmd", "devices/alice/temp 21"])
        # another client's inbox: denied
        out, err, code = yield self.mosquitto(SUB, self.broker, *login, "-i", "dev-1",
                                              "-t", "clients/dev-2/in", "-C", "1", "-W", "10")
        self.assertIn(b"All subscription requests were denied", err)
        # another user's devices: the 3.1.1 client is disconnected
        out, err, code = yield self.mosquitto(PUB, self.broker, *login, "-t",
                                              "devices/bob/temp", "-m", "x", "-q", "1")
        self.assertNotEqual(code, 0)


TENANTS = {
    "alice": {"password": "secret-a", "tenant": "tenant-a"},
    "carol": {"password": "secret-c", "tenant": "tenant-a"},
    "bob": {"password": "secret-b", "tenant": "tenant-b"},
    "admin": {"password": "root", "tenant": ""},
}


def example_module() -> Any:
    """plugins/tenant_auth.py, imported from its file as a user's test would."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("tenant_auth_under_test",
                                                  os.path.join(EXAMPLES, "tenant_auth.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Client:
    """What publish/subscribe hooks see of a client (vmqtw.auth.api.IClient)."""

    def __init__(self, username: str | None, client_id: str = "c1",
                 mountpoint: str = "") -> None:
        self.username = username
        self.client_id = client_id
        self.mountpoint = mountpoint
        self.peer = ("192.0.2.1", 50000)
        self.listener = "tcp.tenants"


class ExamplePluginUnitTests(SynchronousTestCase):
    """The example plugin's hooks called directly, as the guide shows."""

    def setUp(self) -> None:
        self.tenant_auth = example_module()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.users = os.path.join(self.dir, "tenants.json")
        with open(self.users, "w") as f:
            json.dump(TENANTS, f)
        self.events: list[dict[str, Any]] = []
        self.context = PluginContext(Clock(), self.dir, Logger(observer=self.events.append))
        self.plugin = self.make()

    def make(self, **settings: str) -> Any:
        return self.tenant_auth.make_plugin({"users_file": "tenants.json", **settings},
                                            self.context)

    def register(self, username: str | None, password: bytes | None, plugin: Any = None):
        request = RegisterRequest(("192.0.2.1", 50000), "", "c1", username, password, True, 4)
        return (plugin or self.plugin).auth_on_register(request)

    def test_interfaces(self) -> None:
        """The example tenant_auth plugin provides every hook interface it claims (register,
        publish, subscribe, on_register, offline and gone notifications)."""
        for iface in (IAuthOnRegister, IAuthOnPublish, IAuthOnSubscribe, IOnRegister,
                      IOnClientOffline, IOnClientGone):
            self.assertTrue(verifyObject(iface, self.plugin), iface)

    def test_register(self) -> None:
        """tenant_auth accepts a known user with its password, moving it to its tenant's
        mountpoint (plain OK for a user without a tenant), refuses a wrong, empty, missing
        or padded password as invalid_credentials, and answers NEXT for unknown or anonymous
        users."""
        result = self.register("alice", b"secret-a")
        self.assertIsInstance(result, Ok)
        self.assertEqual(result.modifiers, {"mountpoint": "tenant-a"})
        self.assertIs(self.register("admin", b"root"), OK)  # no tenant: listener's mountpoint
        for password in (b"secret-b", b"", None, b"secret-a "):
            result = self.register("alice", password)
            self.assertIsInstance(result, Error, password)
            self.assertEqual(result.reason, "invalid_credentials")
        self.assertIs(self.register("mallory", b"x"), NEXT)
        self.assertIs(self.register(None, None), NEXT)

    def test_publish_guard(self) -> None:
        """tenant_auth refuses publishes under the protected admin topic to everyone but the
        admin user, leaves other topics (even admin-like names) to the next plugin, and
        refuses an anonymous client."""
        pub = self.plugin.auth_on_publish
        alice, admin = Client("alice"), Client("admin")
        for topic in ("admin", "admin/reboot", "admin/a/b"):
            self.assertEqual(pub(alice, topic, b"", 0, False).reason, "not_authorized")
            self.assertIs(pub(admin, topic, b"", 0, False), NEXT)
        for topic in ("administrator/x", "news", "a/admin"):
            self.assertIs(pub(alice, topic, b"", 0, False), NEXT, topic)
        self.assertIsInstance(pub(Client(None), "admin/x", b"", 0, False), Error)

    def test_subscribe_guard(self) -> None:
        """tenant_auth refuses a SUBSCRIBE containing any filter that could match the admin
        topic (admin/#, #, +/x, +, shared forms) for non-admins, passes them on for the
        admin, and lets harmless filters through to the next plugin."""
        sub = self.plugin.auth_on_subscribe
        alice, admin = Client("alice"), Client("admin")
        for f in ("admin/#", "admin", "#", "+/x", "+", "$share/g/admin/x", "$share/g/#"):
            self.assertIsInstance(sub(alice, [("news", 0), (f, 1)]), Error, f)
            self.assertIs(sub(admin, [(f, 1)]), NEXT, f)
        self.assertIs(sub(alice, [("news/#", 0), ("a/+/b", 1), ("$share/g/news", 0)]), NEXT)

    def test_allow_other_topics(self) -> None:
        """With allow_other_topics on, tenant_auth grants ordinary topics itself (OK instead
        of NEXT) but still refuses the admin topic."""
        plugin = self.make(allow_other_topics="on")
        self.assertIs(plugin.auth_on_publish(Client("alice"), "news", b"", 0, False), OK)
        self.assertIs(plugin.auth_on_subscribe(Client("alice"), [("news", 0)]), OK)
        self.assertIsInstance(
            plugin.auth_on_publish(Client("alice"), "admin/x", b"", 0, False), Error)

    def test_protected_and_admin_settings(self) -> None:
        """The protected and admin_user settings move the guarded topic (ops) and the
        allowed user (root); the default admin topic is then unguarded."""
        plugin = self.make(protected="ops", admin_user="root")
        self.assertIsInstance(plugin.auth_on_publish(Client("admin"), "ops/x", b"", 0, False),
                              Error)
        self.assertIs(plugin.auth_on_publish(Client("root"), "ops/x", b"", 0, False), NEXT)
        self.assertIs(plugin.auth_on_publish(Client("alice"), "admin/x", b"", 0, False), NEXT)

    def test_bad_settings(self) -> None:
        """tenant_auth rejects bad settings with a clear ValueError: a non on/off switch, a
        protected topic that is not one level, an empty users_file, an unknown setting."""
        for settings, message in (
                ({"allow_other_topics": "maybe"}, "must be on or off"),
                ({"protected": "a/b"}, "one topic level"),
                ({"protected": "#"}, "one topic level"),
                ({"users_file": ""}, "users_file is not set"),
                ({"colour": "red"}, "unknown setting tenant_auth.colour")):
            with self.assertRaises(ValueError, msg=settings) as cm:
                self.make(**settings)
            self.assertIn(message, str(cm.exception))

    def test_bad_users_file(self) -> None:
        """tenant_auth rejects a users file that is not a JSON object, has a malformed user
        or a tenant with a wildcard, or is not JSON at all, with a ValueError naming the
        file."""
        for text, message in (("[]", "expected a JSON object"),
                              ('{"a": "pw"}', "user 'a'"),
                              ('{"a": {"password": 1}}', "user 'a'"),
                              ('{"a": {"password": "p", "tenant": "t/#"}}', "'+' or '#'"),
                              ("{", "not a JSON file")):
            with open(self.users, "w") as f:
                f.write(text)
            with self.assertRaises(ValueError, msg=text) as cm:
                self.make()
            self.assertIn(message, str(cm.exception))
            self.assertIn(self.users, str(cm.exception))

    def test_reload(self) -> None:
        """reload() reads the users file again (new users in, removed users out, a trailing
        / stripped from the tenant); a broken file keeps the previous users and logs why."""
        with open(self.users, "w") as f:
            json.dump({"dave": {"password": "pw", "tenant": "t-d/"}}, f)
        self.plugin.reload()
        self.assertEqual(self.register("dave", b"pw").modifiers, {"mountpoint": "t-d"})
        self.assertIs(self.register("alice", b"secret-a"), NEXT)
        with open(self.users, "w") as f:
            f.write("{broken")
        self.plugin.reload()
        self.assertIsInstance(self.register("dave", b"pw"), Ok)  # the old users stay
        self.assertIn("keeping the previous users", formatEvent(self.events[-1]))

    def test_online_notifications(self) -> None:
        """tenant_auth tracks online clients per tenant from on_register, on_client_gone and
        on_client_offline, ignoring unknown clients."""
        p = self.plugin
        p.on_register(Client("alice", "a1", "tenant-a"))
        p.on_register(Client("carol", "c1", "tenant-a"))
        p.on_register(Client("bob", "b1", "tenant-b"))
        self.assertEqual(p.online, {"tenant-a": {"a1", "c1"}, "tenant-b": {"b1"}})
        p.on_client_gone("tenant-a", "a1")
        p.on_client_offline("tenant-b", "b1")
        p.on_client_gone("tenant-x", "nobody")  # unknown: ignored
        self.assertEqual(p.online, {"tenant-a": {"c1"}})


class ExamplePluginTests(AuthTestCase):
    """plugins/tenant_auth.py, loaded from plugins.tenant_auth.path (relative to
    the configuration file's directory), next to vmq_passwd and vmq_acl."""

    def setUp(self) -> None:
        super().setUp()
        self.passwd(monitor="mon")
        self.file("vmq.acl", "topic #\n")
        self.file("tenants.json", json.dumps(TENANTS))
        self.relpath = os.path.relpath(EXAMPLES, self.dir)
        self.broker = self.start(f"""\
allow_anonymous = off
listener.tcp.default = 127.0.0.1:0
listener.tcp.default.auth_plugins = vmq_passwd
listener.tcp.tenants = 127.0.0.1:0
listener.tcp.tenants.auth_plugins = [tenant_auth]
plugins.vmq_passwd = on
plugins.vmq_acl = on
plugins.tenant_auth = on
plugins.tenant_auth.path = {self.relpath}
plugins.tenant_auth.priority = 10
tenant_auth.users_file = tenants.json
vmq_passwd.password_reload_interval = 0
vmq_acl.acl_reload_interval = 0
""")
        self.plugin = dict(self.broker.plugins)["tenant_auth"]

    def tenant(self, name: str, client_id: str | None = None, password: str | None = None):
        return self.user(self.broker, client_id or f"{name}-1", name,
                         password or TENANTS[name]["password"], listener="tcp.tenants")

    def test_loaded_from_the_relative_path(self):
        """plugins.tenant_auth.path is relative to the configuration file's directory: the
        plugin module is loaded from the repository's plugins/ file, ranked first by its
        priority, with its users read."""
        self.assertFalse(os.path.isabs(self.relpath))
        self.assertEqual([n for n, _ in self.broker.plugins],
                         ["tenant_auth", "vmq_acl", "vmq_passwd"])
        module = sys.modules[type(self.plugin).__module__]
        self.assertEqual(os.path.realpath(module.__file__),
                         os.path.realpath(os.path.join(EXAMPLES, "tenant_auth.py")))
        self.assertEqual(sorted(self.plugin.users), sorted(TENANTS))

    @inlineCallbacks
    def test_per_listener_auth_plugins(self):
        """listener.X.auth_plugins gives each listener its own register chain: tenant users
        log in only on the tenants listener and vmq_passwd users only on the default one
        (elsewhere they are unknown: CONNACK 4, as a wrong tenant password)."""
        b = self.broker
        self.assertEqual((yield self.connack(b, "a", "alice", "secret-a",
                                             listener="tcp.tenants")), CONNACK_OK)
        self.assertEqual((yield self.connack(b, "a", "alice", "nope", listener="tcp.tenants")),
                         CONNACK_BAD_LOGIN)
        # the default listener's chain is vmq_passwd only: alice is unknown there
        self.assertEqual((yield self.connack(b, "a", "alice", "secret-a")),
                         CONNACK_BAD_LOGIN)
        # and vmq_passwd's users are unknown on the tenants listener
        self.assertEqual((yield self.connack(b, "m", "monitor", "mon", listener="tcp.tenants")),
                         CONNACK_BAD_LOGIN)
        self.assertEqual((yield self.connack(b, "m", "monitor", "mon")), CONNACK_OK)
        client = self.tenant("alice", password="nope")
        self.assertEqual((yield in_thread(refused_then_closed, client)),
                         PAHO_BAD_USER_OR_PASSWORD)

    @inlineCallbacks
    def test_tenants_cannot_see_each_other(self):
        """ok(mountpoint=...) moves each user into the tenant's mountpoint."""
        alice, carol, bob = self.tenant("alice"), self.tenant("carol"), self.tenant("bob")

        def scenario():
            for c in (alice, carol, bob):
                c.connect()
            alice.subscribe("news", 1)
            bob.subscribe("news", 1)
            bob.publish("news", b"from tenant-b", 1)
            carol.publish("news", b"from tenant-a", 1)
            carol.publish("news", b"end-a", 1)
            bob.publish("news", b"end-b", 1)
            return ([(m.topic, m.payload) for m in alice.get_many(2)],
                    [(m.topic, m.payload) for m in bob.get_many(2)])

        got_a, got_b = yield in_thread(scenario)
        # each sees its own tenant only, without the mountpoint in the topic
        self.assertEqual(got_a, [("news", b"from tenant-a"), ("news", b"end-a")])
        self.assertEqual(got_b, [("news", b"from tenant-b"), ("news", b"end-b")])
        sessions = set(self.broker.broker.sessions)
        self.assertEqual(sessions, {("tenant-a", "alice-1"), ("tenant-a", "carol-1"),
                                    ("tenant-b", "bob-1")})
        # the plugin's on_register notification saw them in their mountpoints
        self.assertEqual(self.plugin.online, {"tenant-a": {"alice-1", "carol-1"},
                                              "tenant-b": {"bob-1"}})
        gone = when_session_event(self.broker, "bob-1", ["gone"])
        yield in_thread(bob.disconnect)
        yield gone
        self.assertEqual(self.plugin.online, {"tenant-a": {"alice-1", "carol-1"}})

    @inlineCallbacks
    def test_same_client_id_in_two_tenants(self):
        """Sessions are keyed by (mountpoint, client id): no takeover across tenants."""
        a = self.tenant("alice", "device")
        b = self.tenant("bob", "device")

        def scenario():
            a.connect()
            b.connect()
            a.subscribe("t", 0)
            a.publish("t", b"still here", 0)
            return a.get().payload, a.disconnected.is_set()

        self.assertEqual((yield in_thread(scenario)), (b"still here", False))

    @inlineCallbacks
    def test_admin_guard_composes_with_vmq_acl(self):
        """vmq_acl's "topic #" grants everything, but the guard runs first and
        its error ends the chain; the admin's requests pass on to vmq_acl."""
        alice, admin = self.tenant("alice"), self.tenant("admin")

        def scenario():
            alice.connect()
            admin.connect()
            codes = [alice.subscribe(f) for f in ("admin/#", "#", "+/x", "$share/g/admin/x",
                                                   "news/#")]
            codes.append(admin.subscribe("admin/#"))
            denied_publish_disconnects(alice, "admin/reboot")
            admin.publish("admin/reboot", b"ok", 0)
            return codes, admin.get().payload

        codes, payload = yield in_thread(scenario)
        self.assertEqual(codes, [[128], [128], [128], [128], [0], [0]])
        self.assertEqual(payload, b"ok")

    @inlineCallbacks
    def test_reload_users_file(self):
        """Reloading the broker reloads the plugin's users file: a user added to it can log
        in (into its tenant's mountpoint) afterwards, and a broken file keeps the users in
        force."""
        users = dict(TENANTS, dave={"password": "pw-d", "tenant": "tenant-d"})
        self.file("tenants.json", json.dumps(users))
        self.assertEqual((yield self.connack(self.broker, "d", "dave", "pw-d",
                                             listener="tcp.tenants")), CONNACK_BAD_LOGIN)
        self.broker.reload()
        self.assertEqual((yield self.connack(self.broker, "d", "dave", "pw-d",
                                             listener="tcp.tenants")), CONNACK_OK)
        self.assertIn(("tenant-d", "d"), self.broker.broker.sessions)
        # a broken file keeps the users in force
        self.file("tenants.json", "{not json")
        self.broker.reload()
        self.assertEqual(sorted(self.plugin.users), sorted(users))


class StartupTests(AuthTestCase):

    def test_listener_chain_without_an_acl_plugin_stops_startup(self):
        """authz_plugins = [vmq_passwd] would leave that listener without any ACL."""
        self.passwd(alice="pw")
        self.file("vmq.acl", "topic #\n")
        path = self.file("broker.conf", PASSWD_CONFIG +
                         "listener.tcp.default.authz_plugins = vmq_passwd\n")
        with self.assertRaises(StartupError) as cm:
            BrokerService(load(path), reactor)
        self.assertEqual(str(cm.exception),
                         f"{path}:8: listener.tcp.default.authz_plugins: none of vmq_passwd "
                         "implements auth_on_publish or auth_on_subscribe")

    def test_plugin_error_stops_startup(self):
        """A plugin that fails to start (vmq_passwd without its password file) stops the
        broker's startup with FILE:LINE of the plugin's key and the plugin's reason."""
        self.file("vmq.acl", "topic #\n")
        path = self.file("broker.conf", PASSWD_CONFIG)  # no vmq.passwd file
        with self.assertRaises(StartupError) as cm:
            BrokerService(load(path), reactor)
        self.assertTrue(str(cm.exception).startswith(f"{path}:3: plugins.vmq_passwd: "),
                        str(cm.exception))
        self.assertIn("vmq.passwd: password file not found", str(cm.exception))


class ReloadTests(AuthTestCase):

    @inlineCallbacks
    def test_new_password_works_after_reload(self):
        """After a reload (what SIGHUP does) vmq_passwd uses the new password file: new
        passwords and users work, old ones are refused; a broken file at reload keeps the
        last good table."""
        self.passwd(alice="old")
        self.file("vmq.acl", "topic #\n")
        broker = self.start(PASSWD_CONFIG)
        self.assertEqual((yield self.connack(broker, "a", "alice", "new")), CONNACK_BAD_LOGIN)
        self.passwd(alice="new", bob="pw-b")
        broker.reload()  # what SIGHUP does
        self.assertEqual((yield self.connack(broker, "a", "alice", "new")), CONNACK_OK)
        self.assertEqual((yield self.connack(broker, "a2", "alice", "old")), CONNACK_BAD_LOGIN)
        self.assertEqual((yield self.connack(broker, "b", "bob", "pw-b")), CONNACK_OK)
        # a broken file at reload time keeps the last good table
        self.file("vmq.passwd", "alice:not-a-hash\n")
        broker.reload()
        self.assertEqual((yield self.connack(broker, "a3", "alice", "new")), CONNACK_OK)

    @inlineCallbacks
    def test_acl_reload(self):
        """After a reload vmq_acl uses the new ACL file: a subscription refused before
        (0x80) is granted on the same connection."""
        self.passwd(alice="pw")
        self.file("vmq.acl", "topic read a/#\n")
        broker = self.start(PASSWD_CONFIG)
        alice = self.user(broker, "alice-1", "alice", "pw")
        self.assertEqual((yield in_thread(lambda: (alice.connect(), alice.subscribe("b/#"))[1])),
                         [128])
        self.file("vmq.acl", "topic read a/#\ntopic read b/#\n")
        broker.reload()
        self.assertEqual((yield in_thread(alice.subscribe, "b/#")), [0])


FAILING_PLUGIN = """\
from twisted.internet import defer
from zope.interface import implementer
from vmqtw.auth.api import NEXT, OK, IAuthOnRegister

#: Deferreds of the "slow" user's CONNECTs, for the test to fire.
PENDING = []

@implementer(IAuthOnRegister)
class Plugin:
    def auth_on_register(self, request):
        if request.username == "boom":
            raise ZeroDivisionError("plugin bug")
        if request.username == "bool":
            return True   # not a Result: an error
        if request.username == "slow":
            d = defer.Deferred()
            PENDING.append(d)
            return d
        return NEXT

def make_plugin(settings, context):
    return Plugin()
"""


class FailingPluginTests(AuthTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.passwd(alice="pw")
        self.file("vmq.acl", "topic #\n")
        self.name = self.plugin_module(FAILING_PLUGIN)
        self.broker = self.start(PASSWD_CONFIG + f"plugins.{self.name} = on\n"
                                 f"plugins.{self.name}.path = plugins\n"
                                 f"plugins.{self.name}.priority = 1\n")

    @inlineCallbacks
    def test_raising_plugin_refuses_and_the_broker_keeps_serving(self):
        """A plugin that raises, or returns something that is not a result, refuses that
        CONNECT with CONNACK 5 and its error is logged; the broker keeps serving, and a user
        it answers NEXT for is let in by vmq_passwd."""
        self.assertEqual((yield self.connack(self.broker, "x", "boom", "pw")),
                         CONNACK_NOT_AUTHORIZED)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual((yield self.connack(self.broker, "y", "bool", "pw")),
                         CONNACK_NOT_AUTHORIZED)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)  # PluginResultError
        # the plugin answers NEXT for alice: vmq_passwd lets her in
        alice = self.user(self.broker, "alice-1", "alice", "pw")

        def scenario():
            alice.connect()
            alice.subscribe("t", 1)
            alice.publish("t", b"fine", 1)
            return alice.get().payload

        self.assertEqual((yield in_thread(scenario)), b"fine")

    @inlineCallbacks
    def test_others_are_served_while_a_plugin_thinks(self):
        """While a plugin's answer to one CONNECT is pending (a Deferred), other clients
        connect and exchange messages; the waiting client gets its CONNACK only when the
        plugin answers."""
        pending = sys.modules[self.name].PENDING
        slow = yield self.raw_client(self.broker)
        slow.send(login_packet("slow-1", "slow", "pw"))
        connack = slow.read(4, what="CONNACK after the plugin answers")
        alice = self.user(self.broker, "alice-1", "alice", "pw")

        def scenario():
            alice.connect()
            alice.subscribe("t", 1)
            alice.publish("t", b"while waiting", 1)
            return alice.get().payload

        self.assertEqual((yield in_thread(scenario)), b"while waiting")
        self.assertEqual(len(pending), 1)
        self.assertFalse(connack.called)
        pending[0].callback(OK)
        self.assertEqual((yield connack), CONNACK_OK)
