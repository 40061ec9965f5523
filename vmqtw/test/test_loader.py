"""The plugin loader (vmqtw.auth.loader): broker.conf -> plugin objects -> chains."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer, providedBy
from zope.interface.verify import verifyObject

from vmqtw.auth import api
from vmqtw.auth.acl import AclPlugin
from vmqtw.auth.chain import Authorizer
from vmqtw.auth.loader import (
    HOOK_INTERFACES, chain_order, describe, listener_authorizer, load_plugins,
)
from vmqtw.auth.passwd import PasswdPlugin, hash_password
from vmqtw.config import ConfigError, PluginConfig, load, parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
EXAMPLES = os.path.join(REPO, "plugins")

LISTENER = "listener.tcp.default = 127.0.0.1:1883\n"

#: A plugin module that records what the loader handed to make_plugin.
RECORDING_PLUGIN = """\
from zope.interface import implementer
from vmqtw.auth.api import NEXT, IAuthOnRegister

@implementer(IAuthOnRegister)
class Plugin:
    def __init__(self, settings, context):
        self.settings = settings
        self.context = context

    def auth_on_register(self, request):
        return NEXT

def make_plugin(settings, context):
    return Plugin(dict(settings), context)
"""


def unique(prefix: str = "tp") -> str:
    """A module name no other test uses (plugins are registered in sys.modules)."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def pc(name: str, priority: int | None = None, enabled: bool = True) -> PluginConfig:
    return PluginConfig(name, enabled, priority, None, ("broker.conf", 1))


class ChainOrderTests(SynchronousTestCase):

    def test_priority_then_name(self) -> None:
        """
        As in VerneMQ, plugins with a ``priority`` come first, lowest number first (negative
        allowed, equal priorities by name), followed by the plugins without one in name order.
        """
        plugins = [pc("zeta"), pc("alpha"), pc("late", 50), pc("early", 1), pc("neg", -5),
                   pc("same_b", 10), pc("same_a", 10), pc("mid")]
        self.assertEqual([p.name for p in chain_order(plugins)],
                         ["neg", "early", "same_a", "same_b", "late", "alpha", "mid", "zeta"])

    def test_priority_zero_comes_before_no_priority(self) -> None:
        """A plugin with ``priority = 0`` runs before a plugin without a priority."""
        self.assertEqual([p.name for p in chain_order([pc("a"), pc("b", 0)])], ["b", "a"])

    def test_disabled_left_out(self) -> None:
        """Plugins that are not ``on`` are left out of the chain, whatever their priority."""
        plugins = [pc("on_1"), pc("off_1", enabled=False), pc("off_2", 1, enabled=False)]
        self.assertEqual([p.name for p in chain_order(plugins)], ["on_1"])

    def test_empty(self) -> None:
        """No plugins give an empty chain."""
        self.assertEqual(chain_order([]), [])

    def test_order_of_the_file_does_not_matter(self) -> None:
        """
        The order of ``plugins.NAME`` lines in broker.conf does not affect the chain order.
        """
        config = parse(LISTENER + "plugins.b = on\nplugins.c = on\nplugins.c.priority = 2\n"
                       "plugins.a = on\n")
        self.assertEqual([p.name for p in chain_order(config.plugins.values())],
                         ["c", "a", "b"])


class LoaderTestCase(SynchronousTestCase):

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.clock = Clock()
        self.config_path = os.path.join(self.dir, "broker.conf")
        self._modules: list[str] = []

    def tearDown(self) -> None:
        for name in self._modules:
            sys.modules.pop(name, None)

    def write(self, relpath: str, text: str) -> str:
        path = os.path.join(self.dir, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def module(self, source: str, directory: str = "plugins", name: str | None = None) -> str:
        """Write a plugin module into DIR/directory; returns its (unique) name."""
        name = name or unique()
        self._modules.append(name)
        self.write(os.path.join(directory, name + ".py"), textwrap.dedent(source))
        return name

    def config(self, text: str) -> Any:
        self.write("broker.conf", LISTENER + text)
        return load(self.config_path)

    def load(self, text: str) -> list[tuple[str, Any]]:
        return load_plugins(self.config(text), self.clock)

    def assertConfigError(self, text: str, name: str, *fragments: str) -> ConfigError:
        """Loading fails with FILE:LINE: plugins.NAME: ... naming the plugins.NAME line."""
        config = self.config(text)
        with self.assertRaises(ConfigError) as cm:
            load_plugins(config, self.clock)
        e = cm.exception
        lines = (LISTENER + text).splitlines()
        line = lines.index(next(l for l in lines if l.startswith(f"plugins.{name} ="))) + 1
        self.assertTrue(str(e).startswith(f"{self.config_path}:{line}: plugins.{name}: "),
                        str(e))
        for fragment in fragments:
            self.assertIn(fragment, str(e))
        return e


class BuiltinTests(LoaderTestCase):

    def builtins(self) -> list[tuple[str, Any]]:
        self.write("users.passwd", f"alice:{hash_password(b'pw')}\n")
        self.write("rules.acl", "topic #\n")
        return self.load("plugins.vmq_passwd = on\nplugins.vmq_acl = on\n"
                         "vmq_passwd.password_file = users.passwd\n"
                         "vmq_acl.acl_file = rules.acl\n"
                         "vmq_acl.acl_reload_interval = 0\n")

    def test_loads_both_in_name_order(self) -> None:
        """
        ``vmq_passwd`` and ``vmq_acl`` load as built-ins in name order; their files resolve
        against the configuration file's directory, their settings apply, and they get the
        broker's reactor.
        """
        plugins = self.builtins()
        self.assertEqual([n for n, _ in plugins], ["vmq_acl", "vmq_passwd"])
        passwd, acl = plugins[1][1], plugins[0][1]
        self.assertIsInstance(passwd, PasswdPlugin)
        self.assertIsInstance(acl, AclPlugin)
        # relative files resolve against the config file's directory
        self.assertEqual(passwd.path, os.path.join(self.dir, "users.passwd"))
        self.assertEqual(passwd.users, frozenset({"alice"}))
        self.assertEqual(acl.interval, 0)
        self.assertIs(passwd.reactor, self.clock)

    def test_verify_builtin_plugins(self) -> None:
        """
        Each built-in fully implements the hook interfaces it declares: ``vmq_passwd``
        ``auth_on_register``, ``vmq_acl`` ``auth_on_publish`` and ``auth_on_subscribe``.
        """
        for name, plugin in self.builtins():
            ifaces = [i for i in providedBy(plugin) if i in HOOK_INTERFACES]
            self.assertTrue(ifaces, name)
            for iface in ifaces:
                self.assertTrue(verifyObject(iface, plugin), (name, iface))
        passwd = dict(self.builtins())["vmq_passwd"]
        self.assertTrue(api.IAuthOnRegister.providedBy(passwd))
        acl = dict(self.builtins())["vmq_acl"]
        self.assertTrue(api.IAuthOnPublish.providedBy(acl))
        self.assertTrue(api.IAuthOnSubscribe.providedBy(acl))

    def test_disabled_builtin_not_loaded(self) -> None:
        """Built-ins set to ``off`` are not loaded."""
        self.assertEqual(self.load("plugins.vmq_passwd = off\nplugins.vmq_acl = off\n"), [])

    def test_nothing_enabled(self) -> None:
        """Without any ``plugins.NAME = on`` no plugin is loaded."""
        self.assertEqual(self.load(""), [])

    def test_builtin_settings_error_names_the_plugin_line(self) -> None:
        """
        A built-in's refusal at start (here a missing password file) becomes a configuration
        error at the ``plugins.vmq_passwd`` line, with the plugin's own reason.
        """
        # vmq_passwd's own ValueError (the file is missing) becomes the ConfigError message
        self.assertConfigError("plugins.vmq_passwd = on\n"
                               "vmq_passwd.password_file = nowhere.passwd\n",
                               "vmq_passwd", "nowhere.passwd", "not found")

    def test_unknown_builtin_setting(self) -> None:
        """
        A misspelt built-in setting is a configuration error at the plugin's line naming the
        setting.
        """
        self.write("vmq.passwd", "")
        self.assertConfigError("plugins.vmq_passwd = on\nvmq_passwd.pasword_file = x\n",
                               "vmq_passwd", "unknown setting vmq_passwd.pasword_file")

    def test_describe(self) -> None:
        """
        ``describe`` lists one ``plugin NAME: INTERFACES`` line per loaded plugin, in chain
        order.
        """
        text = describe(self.builtins())
        self.assertEqual(text.splitlines(), [
            "plugin vmq_acl: IAuthOnPublish, IAuthOnSubscribe",
            "plugin vmq_passwd: IAuthOnRegister",
        ])


class PathPluginTests(LoaderTestCase):

    def test_absolute_path(self) -> None:
        """
        A plugin module is loaded from an absolute ``plugins.NAME.path`` and gets empty
        settings when none are written.
        """
        name = self.module(RECORDING_PLUGIN)
        ((got, plugin),) = self.load(f"plugins.{name} = on\n"
                                     f"plugins.{name}.path = {self.dir}/plugins\n")
        self.assertEqual(got, name)
        self.assertEqual(plugin.settings, {})

    def test_relative_path_and_settings(self) -> None:
        """The path is relative to the config file's directory; NAME.key settings
        arrive without the prefix; the context has the reactor, the config
        directory and a logger named after the plugin."""
        name = self.module(RECORDING_PLUGIN)
        ((_, plugin),) = self.load(f"plugins.{name} = on\nplugins.{name}.path = plugins\n"
                                   f"{name}.users = a:b:c, d:e:f\n"
                                   f"{name}.nested.key = x = y\n")
        self.assertEqual(plugin.settings, {"users": "a:b:c, d:e:f", "nested.key": "x = y"})
        self.assertIs(plugin.context.reactor, self.clock)
        self.assertEqual(plugin.context.config_dir, self.dir)
        self.assertEqual(plugin.context.log.namespace, f"vmqtw.plugin.{name}")

    def test_module_is_registered_under_its_name(self) -> None:
        """A path plugin's module is registered in ``sys.modules`` under the plugin's name."""
        name = self.module(RECORDING_PLUGIN)
        ((_, plugin),) = self.load(f"plugins.{name} = on\nplugins.{name}.path = plugins\n")
        self.assertIs(type(plugin), sys.modules[name].Plugin)

    def test_package_plugin(self) -> None:
        """A plugin may be a package directory whose ``__init__`` provides ``make_plugin``."""
        name = unique()
        self._modules.append(name)
        self.write(f"plugins/{name}/__init__.py", "from .impl import make_plugin\n")
        self.write(f"plugins/{name}/impl.py", RECORDING_PLUGIN)
        self._modules.append(f"{name}.impl")
        ((_, plugin),) = self.load(f"plugins.{name} = on\nplugins.{name}.path = plugins\n")
        self.assertTrue(api.IAuthOnRegister.providedBy(plugin))

    def test_loading_again_replaces_an_earlier_load(self) -> None:
        """A second broker (or a test) may load the same plugin name from elsewhere."""
        name = self.module(RECORDING_PLUGIN)
        self.load(f"plugins.{name} = on\nplugins.{name}.path = plugins\n")
        first = sys.modules[name]
        self.module(RECORDING_PLUGIN, directory="other", name=name)
        self.load(f"plugins.{name} = on\nplugins.{name}.path = other\n")
        self.assertIsNot(sys.modules[name], first)
        self.assertEqual(sys.modules[name].__file__, os.path.join(self.dir, "other", name + ".py"))

    def test_priority_orders_path_plugins_and_builtins(self) -> None:
        """Priorities order path plugins and built-ins together in one chain."""
        first, second = self.module(RECORDING_PLUGIN), self.module(RECORDING_PLUGIN)
        self.write("vmq.passwd", "")
        plugins = self.load(f"plugins.{first} = on\nplugins.{first}.path = plugins\n"
                            f"plugins.{second} = on\nplugins.{second}.path = plugins\n"
                            f"plugins.{second}.priority = 1\n"
                            "plugins.vmq_passwd = on\nplugins.vmq_passwd.priority = 2\n")
        self.assertEqual([n for n, _ in plugins], [second, "vmq_passwd", first])

    def test_importable_module_without_path(self) -> None:
        """Without ``plugins.NAME.path`` the plugin is imported by name from ``sys.path``."""
        name = self.module(RECORDING_PLUGIN, directory="site")
        sys.path.insert(0, os.path.join(self.dir, "site"))
        self.addCleanup(sys.path.remove, os.path.join(self.dir, "site"))
        ((got, _),) = self.load(f"plugins.{name} = on\n")
        self.assertEqual(got, name)


class LoadErrorTests(LoaderTestCase):

    def test_unknown_plugin(self) -> None:
        """
        A plugin name that is neither built-in, nor in a path, nor importable is an "unknown
        plugin" error at its ``plugins.NAME`` line.
        """
        self.assertConfigError("plugins.no_such_plugin_zz = on\n", "no_such_plugin_zz",
                               "unknown plugin")

    def test_path_does_not_exist(self) -> None:
        """
        A ``plugins.NAME.path`` directory that does not exist is an error naming the resolved
        directory.
        """
        self.assertConfigError("plugins.p = on\nplugins.p.path = missing\n", "p",
                               os.path.join(self.dir, "missing"), "does not exist")

    def test_no_module_in_path(self) -> None:
        """
        A path directory without ``NAME.py`` or ``NAME/`` is an error saying the module is
        missing.
        """
        os.makedirs(os.path.join(self.dir, "empty"))
        self.assertConfigError("plugins.p = on\nplugins.p.path = empty\n", "p",
                               "no module 'p'")

    def test_missing_make_plugin(self) -> None:
        """A module without ``make_plugin`` is an error that says what the loader needs."""
        name = self.module("X = 1\n")
        self.assertConfigError(f"plugins.{name} = on\nplugins.{name}.path = plugins\n", name,
                               "has no make_plugin(settings, context)")

    def test_make_plugin_not_callable(self) -> None:
        """A ``make_plugin`` that is not callable is refused like a missing one."""
        name = self.module("make_plugin = 'nope'\n")
        self.assertConfigError(f"plugins.{name} = on\nplugins.{name}.path = plugins\n", name,
                               "has no make_plugin")

    def test_make_plugin_raising_value_error(self) -> None:
        """A ValueError is the plugin's message about its settings, shown as is."""
        name = self.module("""\
            def make_plugin(settings, context):
                raise ValueError("tenant_auth.users_file is not set")
            """)
        e = self.assertConfigError(f"plugins.{name} = on\nplugins.{name}.path = plugins\n",
                                   name)
        self.assertTrue(str(e).endswith(": tenant_auth.users_file is not set"), str(e))

    def test_make_plugin_raising_something_else(self) -> None:
        """
        An unexpected exception from ``make_plugin`` is reported as "make_plugin failed" with
        the exception type, at the plugin's line.
        """
        name = self.module("""\
            def make_plugin(settings, context):
                raise KeyError("boom")
            """)
        self.assertConfigError(f"plugins.{name} = on\nplugins.{name}.path = plugins\n", name,
                               "make_plugin failed: KeyError")

    def test_no_hook_interface(self) -> None:
        """
        A plugin object that declares no hook interface is refused with a hint to use
        ``@implementer``, even when it has hook-named methods.
        """
        name = self.module("""\
            class Plugin:
                def auth_on_register(self, request):  # no @implementer
                    return None

            def make_plugin(settings, context):
                return Plugin()
            """)
        self.assertConfigError(f"plugins.{name} = on\nplugins.{name}.path = plugins\n", name,
                               "provides no hook interface", "@implementer")

    def test_module_failing_at_import(self) -> None:
        """
        A syntax error, an exception or a missing dependency while importing a path plugin is
        an error naming the exception type, and leaves no half-imported module in
        ``sys.modules``.
        """
        for source, kind in (("def broken(:\n", "SyntaxError"),
                             ("raise RuntimeError('no config')\n", "RuntimeError"),
                             ("import no_such_dependency_zz\n", "ModuleNotFoundError")):
            name = self.module(source)
            self.assertConfigError(f"plugins.{name} = on\nplugins.{name}.path = plugins\n",
                                   name, "importing", f"failed: {kind}")
            self.assertNotIn(name, sys.modules)

    def test_importable_module_with_a_broken_import(self) -> None:
        """Not "unknown plugin": the module exists, one of its imports does not."""
        name = self.module("import no_such_dependency_zz\n", directory="site")
        sys.path.insert(0, os.path.join(self.dir, "site"))
        self.addCleanup(sys.path.remove, os.path.join(self.dir, "site"))
        e = self.assertConfigError(f"plugins.{name} = on\n", name,
                                   f"importing {name} failed", "no_such_dependency_zz")
        self.assertNotIn("unknown plugin", str(e))

    def test_importable_module_raising(self) -> None:
        """
        An importable plugin module that raises at import is reported with the exception type.
        """
        name = self.module("1 / 0\n", directory="site")
        sys.path.insert(0, os.path.join(self.dir, "site"))
        self.addCleanup(sys.path.remove, os.path.join(self.dir, "site"))
        self.assertConfigError(f"plugins.{name} = on\n", name,
                               f"importing {name} failed: ZeroDivisionError")

    def test_plugin_cannot_replace_an_imported_module(self) -> None:
        """A plugin called json (or vmqtw) must not replace the real module."""
        real = sys.modules["json"]
        self.write("plugins/json.py", RECORDING_PLUGIN)
        self.assertConfigError("plugins.json = on\nplugins.json.path = plugins\n", "json",
                               "a module named 'json' is already imported")
        self.assertIs(sys.modules["json"], real)
        self.assertEqual(json.dumps([1]), "[1]")

    def test_failed_reload_restores_the_earlier_module(self) -> None:
        """
        When loading a plugin again from another path fails, the earlier module stays
        registered.
        """
        name = self.module(RECORDING_PLUGIN)
        self.load(f"plugins.{name} = on\nplugins.{name}.path = plugins\n")
        first = sys.modules[name]
        self.module("raise RuntimeError('broken')\n", directory="other", name=name)
        self.assertConfigError(f"plugins.{name} = on\nplugins.{name}.path = other\n", name,
                               "RuntimeError")
        self.assertIs(sys.modules[name], first)

    def test_first_failing_plugin_is_reported(self) -> None:
        """
        When one plugin of several fails, loading stops with the error of that plugin's line.
        """
        good = self.module(RECORDING_PLUGIN)
        self.assertConfigError(f"plugins.{good} = on\nplugins.{good}.path = plugins\n"
                               "plugins.zz_missing = on\n", "zz_missing", "unknown plugin")


@implementer(api.IAuthOnRegister, api.IAuthOnPublish, api.IAuthOnSubscribe)
class Dummy:
    def __init__(self, name: str) -> None:
        self.name = name

    def auth_on_register(self, request: Any) -> Any:
        return api.NEXT

    def auth_on_publish(self, *args: Any) -> Any:
        return api.NEXT

    def auth_on_subscribe(self, *args: Any) -> Any:
        return api.NEXT


class ListenerAuthorizerTests(SynchronousTestCase):

    CONFIG = ("listener.tcp.default = 127.0.0.1:1883\n"
              "listener.tcp.tenants = 127.0.0.1:1884\n"
              "listener.tcp.tenants.auth_plugins = [c, a]\n"
              "listener.tcp.tenants.authz_plugins = b, c\n"
              "listener.tcp.authn_only = 127.0.0.1:1885\n"
              "listener.tcp.authn_only.auth_plugins = b\n"
              "plugins.a = on\nplugins.b = on\nplugins.c = on\n")

    def setUp(self) -> None:
        self.config = parse(self.CONFIG)
        self.plugins = [(n, Dummy(n)) for n in ("a", "b", "c")]
        self.listeners = {l.name: l for l in self.config.listeners}

    def names(self, chain: Any) -> list[str]:
        return [n for n, _ in chain.plugins]

    def authorizer(self, listener: str) -> Authorizer:
        return listener_authorizer(self.config, self.listeners[listener], self.plugins)

    def test_listed_plugins_in_the_written_order(self) -> None:
        """
        A listener's ``auth_plugins`` and ``authz_plugins`` build its own chains from the
        loaded plugin objects, in the order written rather than by priority.
        """
        auth = self.authorizer("tenants")
        self.assertEqual(self.names(auth.chain), ["c", "a"])
        self.assertEqual(self.names(auth.authz_chain), ["b", "c"])
        self.assertIs(auth.chain.plugins[0][1], self.plugins[2][1])

    def test_default_is_the_global_chain(self) -> None:
        """
        A listener without ``auth_plugins``/``authz_plugins`` uses the global chain for both.
        """
        auth = self.authorizer("default")
        self.assertEqual(self.names(auth.chain), ["a", "b", "c"])
        self.assertEqual(self.names(auth.authz_chain), ["a", "b", "c"])

    def test_only_auth_plugins_set(self) -> None:
        """Setting only ``auth_plugins`` leaves authorization on the global chain."""
        auth = self.authorizer("authn_only")
        self.assertEqual(self.names(auth.chain), ["b"])
        self.assertEqual(self.names(auth.authz_chain), ["a", "b", "c"])

    def test_allow_anonymous_passed_on(self) -> None:
        """
        The broker's ``allow_anonymous`` (off by default) is passed on to each listener's
        authorizer.
        """
        self.assertFalse(self.authorizer("default").allow_anonymous)
        config = parse(self.CONFIG + "allow_anonymous = on\n")
        auth = listener_authorizer(config, config.listeners[0], self.plugins)
        self.assertTrue(auth.allow_anonymous)

    def test_listed_plugin_not_loaded(self) -> None:
        """The parser already refuses disabled names; plugins handed in directly are
        checked again, naming the listener option's line."""
        with self.assertRaises(ConfigError) as cm:
            listener_authorizer(self.config, self.listeners["tenants"], self.plugins[:2])
        self.assertEqual(str(cm.exception),
                         "<config>:3: listener.tcp.tenants.auth_plugins: "
                         "plugin(s) c not enabled")

    def test_chain_without_a_plugin_for_its_hooks(self) -> None:
        """auth_plugins naming only ACL plugins would refuse every CONNECT;
        authz_plugins naming only login plugins would allow every PUBLISH."""
        @implementer(api.IAuthOnRegister)
        class Login:
            def auth_on_register(self, request: Any) -> Any:
                return api.NEXT

        @implementer(api.IAuthOnPublish)
        class Acl:
            def auth_on_publish(self, *args: Any) -> Any:
                return api.NEXT

        config = parse("listener.tcp.a = 127.0.0.1:1883\n"
                       "listener.tcp.a.auth_plugins = acl\n"
                       "listener.tcp.b = 127.0.0.1:1884\n"
                       "listener.tcp.b.authz_plugins = login\n"
                       "listener.tcp.c = 127.0.0.1:1885\n"
                       "listener.tcp.c.auth_plugins = acl, login\n"
                       "listener.tcp.c.authz_plugins = login, acl\n"
                       "plugins.login = on\nplugins.acl = on\n")
        plugins = [("acl", Acl()), ("login", Login())]
        a, b, c = config.listeners
        with self.assertRaises(ConfigError) as cm:
            listener_authorizer(config, a, plugins)
        self.assertEqual(str(cm.exception), "<config>:2: listener.tcp.a.auth_plugins: none of "
                                            "acl implements auth_on_register or on_auth")
        with self.assertRaises(ConfigError) as cm:
            listener_authorizer(config, b, plugins)
        self.assertEqual(str(cm.exception),
                         "<config>:4: listener.tcp.b.authz_plugins: none of login implements "
                         "auth_on_publish or auth_on_subscribe")
        auth = listener_authorizer(config, c, plugins)  # one suitable plugin is enough
        self.assertEqual(self.names(auth.chain), ["acl", "login"])

    def test_parser_refuses_disabled_plugin_in_a_chain(self) -> None:
        """
        The config parser refuses a listener chain naming a plugin that is not on, at the
        listener option's line.
        """
        with self.assertRaises(ConfigError) as cm:
            parse(self.CONFIG.replace("plugins.c = on", "plugins.c = off"))
        self.assertIn("<config>:3: listener.tcp.tenants.auth_plugins: plugin 'c' is not "
                      "enabled", str(cm.exception))


class SettingsWithoutPluginTests(SynchronousTestCase):
    """The parser's warnings (``BrokerConfig.warnings``) about settings of plugins
    that are off (``loader.settings_without_plugin`` did this before)."""

    @staticmethod
    def without_effect(config: Any) -> dict[str, str]:
        return {w.key: w.message for w in config.warnings if "is not on" in w.message}

    def test_builtin_settings_while_off(self) -> None:
        """
        Each setting of a built-in plugin that is off warns that it has no effect, naming
        the plugin that is not on.
        """
        config = parse(LISTENER + "plugins.vmq_passwd = off\nvmq_passwd.password_file = x\n"
                       "vmq_passwd.password_reload_interval = 5\n"
                       "plugins.vmq_acl = off\nvmq_acl.acl_file = y\n")
        got = self.without_effect(config)
        self.assertEqual(sorted(got), ["vmq_acl.acl_file", "vmq_passwd.password_file",
                                       "vmq_passwd.password_reload_interval"])
        self.assertIn("plugins.vmq_passwd is not on", got["vmq_passwd.password_file"])
        self.assertIn("plugins.vmq_acl is not on", got["vmq_acl.acl_file"])

    def test_no_warning_when_on_or_unset(self) -> None:
        """No warning when a built-in with settings is on, or when no settings are written."""
        self.assertEqual(self.without_effect(parse(LISTENER)), {})
        config = parse(LISTENER + "plugins.vmq_passwd = on\nvmq_passwd.password_file = x\n")
        self.assertEqual(self.without_effect(config), {})

    def test_other_plugins_warn_too(self) -> None:
        """Settings of a disabled plugin of our own also warn, through the same rule."""
        config = parse(LISTENER + "plugins.mine = off\nmine.key = 1\n")
        self.assertIn("plugins.mine is not on", self.without_effect(config)["mine.key"])


class CheckCommandTests(LoaderTestCase):
    """``python -m vmqtw -c FILE --check`` loads the plugins (no twistd involved)."""

    def run_check(self) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"]
                                    if env.get("PYTHONPATH") else "")
        return subprocess.run([sys.executable, "-m", "vmqtw", "-c", self.config_path,
                               "--check"], capture_output=True, text=True, timeout=60,
                              env=env, cwd=self.dir)

    def test_plugin_lines_and_warning(self) -> None:
        """
        ``--check`` loads the plugins, prints ``FILE: OK`` and one ``plugin NAME: INTERFACES``
        line per plugin in chain order, exits 0, and warns on stdout (stderr stays empty)
        about built-in settings without their plugin, naming the file and line.
        """
        self.write("vmq.passwd", f"alice:{hash_password(b'pw')}\n")
        name = self.module(RECORDING_PLUGIN)
        self.config(f"plugins.vmq_passwd = on\nplugins.{name} = on\n"
                    f"plugins.{name}.path = plugins\nplugins.{name}.priority = 1\n"
                    "vmq_acl.acl_file = rules.acl\n")
        result = self.run_check()
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertIn(f"{self.config_path}: OK", lines)
        plugin_lines = [line for line in lines if line.startswith("plugin ")]
        self.assertEqual(plugin_lines, [f"plugin {name}: IAuthOnRegister",
                                        "plugin vmq_passwd: IAuthOnRegister"])
        self.assertEqual(result.stderr, "")
        self.assertIn(f"vmqtw: warning: {self.config_path}:6: vmq_acl.acl_file: "
                      "plugins.vmq_acl is not on: this setting has no effect", lines)

    def test_plugin_error_exits_2_with_file_and_line(self) -> None:
        """
        A plugin that fails to load makes ``--check`` exit 2 with a single ``configuration
        error: FILE:LINE: plugins.NAME:`` line and no traceback.
        """
        self.config("plugins.vmq_passwd = on\nvmq_passwd.password_file = missing.passwd\n")
        result = self.run_check()
        self.assertEqual(result.returncode, 2)
        self.assertTrue(result.stderr.startswith(
            f"vmqtw: configuration error: {self.config_path}:2: plugins.vmq_passwd: "),
            result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)


    def test_listener_chain_error(self) -> None:
        """--check builds the per-listener chains too, as startup does."""
        self.write("vmq.passwd", "")
        self.config("listener.tcp.default.authz_plugins = vmq_passwd\n"
                    "plugins.vmq_passwd = on\n")
        result = self.run_check()
        self.assertEqual(result.returncode, 2, result.stdout)
        self.assertEqual(result.stderr,
                         f"vmqtw: configuration error: {self.config_path}:2: "
                         "listener.tcp.default.authz_plugins: none of vmq_passwd implements "
                         "auth_on_publish or auth_on_subscribe\n")


class ExamplePluginTests(LoaderTestCase):
    """plugins/tenant_auth.py, loaded the way broker.conf loads it."""

    # A real environmental condition, not a stale skip: plugins/ ships with the
    # source tree only (setup.cfg packages vmqtw and twisted.plugins), so these
    # tests run from a checkout and skip when trial imports an installed vmqtw.
    if not os.path.isfile(os.path.join(EXAMPLES, "tenant_auth.py")):
        skip = "the example plugins/ directory is not next to this vmqtw package"

    def example(self, extra: str = "") -> Any:
        self.write("tenants.json", json.dumps({
            "alice": {"password": "secret1", "tenant": "tenant-a"},
            "admin": {"password": "root", "tenant": ""},
        }))
        ((name, plugin),) = self.load("plugins.tenant_auth = on\n"
                                      f"plugins.tenant_auth.path = {EXAMPLES}\n"
                                      "tenant_auth.users_file = tenants.json\n" + extra)
        self.assertEqual(name, "tenant_auth")
        return plugin

    def test_verify_object(self) -> None:
        """
        The shipped ``tenant_auth`` example loads and fully implements its six hook interfaces.
        """
        plugin = self.example()
        ifaces = [i for i in providedBy(plugin) if i in HOOK_INTERFACES]
        self.assertEqual(sorted(i.__name__ for i in ifaces), [
            "IAuthOnPublish", "IAuthOnRegister", "IAuthOnSubscribe", "IOnClientGone",
            "IOnClientOffline", "IOnRegister"])
        for iface in ifaces:
            self.assertTrue(verifyObject(iface, plugin), iface)

    def test_settings_errors(self) -> None:
        """
        ``tenant_auth`` refuses start without ``users_file``, with an unknown setting, with an
        unreadable file and with a file that is not JSON, each at the plugin's line.
        """
        self.write("tenants.json", "{}")
        base = f"plugins.tenant_auth = on\nplugins.tenant_auth.path = {EXAMPLES}\n"
        self.assertConfigError(base, "tenant_auth", "tenant_auth.users_file is not set")
        self.assertConfigError(base + "tenant_auth.users_file = tenants.json\n"
                               "tenant_auth.colour = red\n", "tenant_auth",
                               "unknown setting tenant_auth.colour")
        self.assertConfigError(base + "tenant_auth.users_file = nope.json\n", "tenant_auth",
                               "nope.json", "cannot read")
        self.write("broken.json", "{")
        self.assertConfigError(base + "tenant_auth.users_file = broken.json\n", "tenant_auth",
                               "broken.json: not a JSON file")
