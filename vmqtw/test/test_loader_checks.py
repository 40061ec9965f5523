"""What the plugin loader checks beyond importing: interfaces and chains.

- Every interface a loaded plugin declares is verified (``vmqtw.auth.verify``):
  a hook with the wrong signature is a configuration error at the
  ``plugins.NAME`` line, naming the interface, the method and where it is
  defined.
- A listener whose authorization chain would deny every PUBLISH or every
  SUBSCRIBE of some protocol version gets a warning
  (``vmqtw.auth.loader.denied_requests``).
"""
from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Attribute, Interface, implementer

from vmqtw.auth import api
from vmqtw.auth.loader import denied_requests
from vmqtw.auth.passwd import hash_password
from vmqtw.auth.verify import interface_problems
from vmqtw.config import parse
from vmqtw.test.test_loader import EXAMPLES, LoaderTestCase


def line_of(path: str, text: str) -> int:
    """The 1-based line of ``path`` that contains ``text``."""
    with open(path, encoding="utf-8") as f:
        return next(n for n, line in enumerate(f, 1) if text in line)


class VerifyOnLoadTests(LoaderTestCase):
    """``load_plugins`` refuses a plugin that does not implement what it declares."""

    def refused(self, source: str, *fragments: str) -> tuple[str, str]:
        """Load a plugin module made of ``source``; the error names the plugins.NAME line
        and every fragment (``{file}`` stands for the module's path).  Returns the error
        text and the module's path."""
        name = self.module(source)
        path = os.path.join(self.dir, "plugins", name + ".py")
        e = self.assertConfigError(f"plugins.{name} = on\nplugins.{name}.path = plugins\n",
                                   name, "does not implement the interfaces it declares",
                                   *(f.replace("{file}", path) for f in fragments))
        return str(e), path

    def test_too_few_arguments(self) -> None:
        """
        A hook that takes fewer arguments than the broker passes is refused at load time,
        naming the interface, the method as declared, the implementation's signature and its
        FILE:LINE.
        """
        text, path = self.refused("""\
            from zope.interface import implementer
            from vmqtw.auth.api import OK, IAuthOnPublish

            @implementer(IAuthOnPublish)
            class Plugin:
                def auth_on_publish(self, client, topic, payload):
                    return OK

            def make_plugin(settings, context):
                return Plugin()
            """, "IAuthOnPublish.auth_on_publish(client, topic, payload, qos, retain): "
                 "auth_on_publish(client, topic, payload) ({file}:",
                 "accepts fewer arguments than the broker passes")
        self.assertIn(f"{path}:{line_of(path, 'def auth_on_publish')})", text)

    def test_too_many_arguments(self) -> None:
        """A hook that requires more arguments than the broker passes is refused."""
        self.refused("""\
            from zope.interface import implementer
            from vmqtw.auth.api import OK, IAuthOnSubscribe

            @implementer(IAuthOnSubscribe)
            class Plugin:
                def auth_on_subscribe(self, client, topics, properties):
                    return OK

            def make_plugin(settings, context):
                return Plugin()
            """, "IAuthOnSubscribe.auth_on_subscribe(client, topics): "
                 "auth_on_subscribe(client, topics, properties)",
                 "requires more arguments than the broker passes")

    def test_missing_method(self) -> None:
        """A declared interface whose method the plugin lacks is refused, naming it."""
        self.refused("""\
            from zope.interface import implementer
            from vmqtw.auth.api import OK, IAuthOnPublish, IAuthOnSubscribe

            @implementer(IAuthOnPublish, IAuthOnSubscribe)
            class Plugin:
                def auth_on_publish(self, client, topic, payload, qos, retain):
                    return OK

            def make_plugin(settings, context):
                return Plugin()
            """, "IAuthOnSubscribe.auth_on_subscribe(client, topics): the plugin has no "
                 "method auth_on_subscribe")

    def test_not_a_method(self) -> None:
        """A hook name bound to something that is not callable is refused."""
        self.refused("""\
            from zope.interface import implementer
            from vmqtw.auth.api import IOnDeliver

            @implementer(IOnDeliver)
            class Plugin:
                on_deliver = None

            def make_plugin(settings, context):
                return Plugin()
            """, "IOnDeliver.on_deliver(client, topic, payload, qos, retain): the plugin's "
                 "on_deliver is None, not a method")

    def test_self_missing(self) -> None:
        """A method written without ``self`` is refused with a hint."""
        self.refused("""\
            from zope.interface import implementer
            from vmqtw.auth.api import NEXT, IAuthOnRegister

            @implementer(IAuthOnRegister)
            class Plugin:
                def auth_on_register(request):
                    return NEXT

            def make_plugin(settings, context):
                return Plugin()
            """, "IAuthOnRegister.auth_on_register(request): auth_on_register() ({file}:",
                 "accepts fewer arguments than the broker passes (is 'self' missing?)")

    def test_required_keyword_only_argument(self) -> None:
        """
        A hook with a required keyword-only argument passes ``verifyObject`` but cannot be
        called with the broker's positional arguments: it is refused too.
        """
        self.refused("""\
            from zope.interface import implementer
            from vmqtw.auth.api import NEXT, IAuthOnRegister

            @implementer(IAuthOnRegister)
            class Plugin:
                def auth_on_register(self, request, *, strict):
                    return NEXT

            def make_plugin(settings, context):
                return Plugin()
            """, "auth_on_register(request, *, strict) ({file}:",
                 "cannot be called with the broker's arguments")

    def test_every_problem_in_one_error(self) -> None:
        """
        Every problem of a plugin is reported in one single-line error (``; ``-separated),
        across its interfaces.
        """
        text, _ = self.refused("""\
            from zope.interface import implementer
            from vmqtw.auth.api import OK, IAuthOnPublish, IAuthOnSubscribe, IOnRegister

            @implementer(IAuthOnPublish, IAuthOnSubscribe, IOnRegister)
            class Plugin:
                def auth_on_publish(self, client, topic):
                    return OK

                def on_register(self, client):
                    pass

            def make_plugin(settings, context):
                return Plugin()
            """, "IAuthOnPublish.auth_on_publish(", "IAuthOnSubscribe.auth_on_subscribe(")
        self.assertEqual(len(text.splitlines()), 1, text)
        self.assertNotIn("IOnRegister", text)

    def test_interfaces_provided_by_the_instance(self) -> None:
        """Interfaces a plugin adds to itself (``alsoProvides``) are verified as well."""
        self.refused("""\
            from zope.interface import alsoProvides
            from vmqtw.auth.api import OK, IAuthOnPublish, IAuthOnSubscribe

            class Plugin:
                def __init__(self):
                    alsoProvides(self, IAuthOnPublish, IAuthOnSubscribe)

                def auth_on_publish(self, client, topic, payload, qos, retain):
                    return OK

            def make_plugin(settings, context):
                return Plugin()
            """, "IAuthOnSubscribe.auth_on_subscribe(client, topics): the plugin has no "
                 "method auth_on_subscribe")

    def test_flexible_signatures_load(self) -> None:
        """
        Hooks that accept the broker's arguments in any other way load: defaults, extra
        optional arguments, ``*args``, a static method, a ``functools.partial`` and a
        decorated method.
        """
        name = self.module("""\
            import functools
            from zope.interface import implementer
            from vmqtw.auth import api

            def logged(f):
                @functools.wraps(f)
                def wrapper(*args, **kwargs):
                    return f(*args, **kwargs)
                return wrapper

            def deliver(plugin, client, topic, payload, qos, retain):
                return api.NEXT

            @implementer(api.IAuthOnRegister, api.IAuthOnPublish, api.IAuthOnSubscribe,
                         api.IOnDeliver, api.IOnClientGone)
            class Plugin:
                def __init__(self):
                    self.on_deliver = functools.partial(deliver, self)

                @logged
                def auth_on_register(self, request):
                    return api.NEXT

                def auth_on_publish(self, client, topic, payload, qos=0, retain=False,
                                    extra=None):
                    return api.NEXT

                def auth_on_subscribe(self, *args):
                    return api.NEXT

                @staticmethod
                def on_client_gone(mountpoint, client_id):
                    pass

            def make_plugin(settings, context):
                return Plugin()
            """)
        ((loaded, plugin),) = self.load(f"plugins.{name} = on\nplugins.{name}.path = plugins\n")
        self.assertEqual(loaded, name)
        self.assertEqual(interface_problems(plugin), [])


    def test_attribute_raising_when_read(self) -> None:
        """
        A hook that raises when it is looked up (a property) is a configuration error at the
        plugin's line, not a traceback.
        """
        name = self.module("""\
            from zope.interface import implementer
            from vmqtw.auth.api import IAuthOnRegister

            @implementer(IAuthOnRegister)
            class Plugin:
                @property
                def auth_on_register(self):
                    raise RuntimeError("not ready")

            def make_plugin(settings, context):
                return Plugin()
            """)
        self.assertConfigError(f"plugins.{name} = on\nplugins.{name}.path = plugins\n",
                               name, "against its interfaces failed: RuntimeError: not ready")

class BuiltinsLoadCleanTests(LoaderTestCase):
    """The built-in plugins and the shipped example pass the loader's checks."""

    def test_builtins(self) -> None:
        """
        ``vmq_passwd``, ``vmq_acl``, ``vmq_webhooks`` (an endpoint for every hook, so it
        provides every interface) and ``vmq_diversity`` load, and have no interface problem.
        """
        from vmqtw.auth.webhooks.plugin import _INTERFACES as WEBHOOKS
        self.write("users.passwd", f"alice:{hash_password(b'pw')}\n")
        self.write("rules.acl", "user alice\ntopic a/#\n")
        hooks = "".join(f"vmq_webhooks.w{n}.hook = {hook}\n"
                        f"vmq_webhooks.w{n}.endpoint = http://127.0.0.1:9/{hook}\n"
                        for n, hook in enumerate(WEBHOOKS))
        plugins = self.load("plugins.vmq_passwd = on\nplugins.vmq_acl = on\n"
                            "plugins.vmq_webhooks = on\nplugins.vmq_diversity = on\n"
                            "vmq_passwd.password_file = users.passwd\n"
                            "vmq_acl.acl_file = rules.acl\n"
                            "vmq_diversity.auth_redis.enabled = on\n" + hooks)
        self.assertEqual(sorted(n for n, _ in plugins),
                         ["vmq_acl", "vmq_diversity", "vmq_passwd", "vmq_webhooks"])
        for name, plugin in plugins:
            self.assertEqual(interface_problems(plugin), [], name)
        webhooks = dict(plugins)["vmq_webhooks"]
        for iface in set(WEBHOOKS.values()):
            self.assertTrue(iface.providedBy(webhooks), iface)

    def test_example_plugin(self) -> None:
        """The shipped ``plugins/tenant_auth.py`` example has no interface problem."""
        if not os.path.isfile(os.path.join(EXAMPLES, "tenant_auth.py")):
            raise self.skipTest("the example plugins/ directory is not next to this vmqtw")
        self.write("tenants.json", '{"alice": {"password": "pw", "tenant": "a"}}')
        ((_, plugin),) = self.load("plugins.tenant_auth = on\n"
                                   f"plugins.tenant_auth.path = {EXAMPLES}\n"
                                   "tenant_auth.users_file = tenants.json\n")
        self.assertEqual(interface_problems(plugin), [])


class IThing(Interface):
    colour = Attribute("a colour")

    def paint(surface: Any) -> None:
        """Paint it."""


class InterfaceProblemsTests(SynchronousTestCase):
    """``interface_problems`` on objects directly."""

    def test_other_interfaces_named_with_their_module(self) -> None:
        """
        An interface outside ``vmqtw.auth.api`` is named with its module, and a missing
        attribute is reported as such.
        """
        @implementer(IThing)
        class Thing:
            def paint(self, surface: Any) -> None:
                pass

        self.assertEqual(interface_problems(Thing()), [
            f"{__name__}.IThing.colour: the plugin has no attribute colour"])

    def test_clean_object(self) -> None:
        """An object implementing what it declares has no problem."""
        @implementer(IThing)
        class Thing:
            colour = "red"

            def paint(self, surface: Any) -> None:
                pass

        self.assertEqual(interface_problems(Thing()), [])


# -- chains that deny everything ------------------------------------------------------

@implementer(api.IAuthOnPublish)
class PublishOnly:
    def auth_on_publish(self, client: Any, topic: str, payload: bytes, qos: int,
                        retain: bool) -> Any:
        return api.OK


@implementer(api.IAuthOnSubscribe)
class SubscribeOnly:
    def auth_on_subscribe(self, client: Any, topics: Any) -> Any:
        return api.OK


@implementer(api.IAuthOnPublishM5, api.IAuthOnSubscribeM5)
class OnlyM5:
    def auth_on_publish_m5(self, client: Any, topic: str, payload: bytes, qos: int,
                           retain: bool, properties: Any) -> Any:
        return api.OK

    def auth_on_subscribe_m5(self, client: Any, topics: Any, properties: Any) -> Any:
        return api.OK


@implementer(api.IAuthOnRegister)
class LoginOnly:
    def auth_on_register(self, request: Any) -> Any:
        return api.OK


class DeniedRequestsTests(SynchronousTestCase):
    """``denied_requests`` follows the Authorizer's rules (``vmqtw.auth.chain``)."""

    def warnings(self, text: str, **plugins: Any) -> list[str]:
        lines = "".join(f"plugins.{name} = on\n" for name in plugins)
        config = parse(text + lines)
        return denied_requests(config, list(plugins.items()))

    def test_publish_only_plugin_leaves_subscribe_denied(self) -> None:
        """
        With only an ``auth_on_publish`` plugin every SUBSCRIBE is denied: one warning per
        listener, at its FILE:LINE, naming the hook and the fix.
        """
        warnings = self.warnings("listener.tcp.default = 127.0.0.1:1883\n"
                                 "listener.ws.web = 127.0.0.1:8080\n", pub=PublishOnly())
        self.assertEqual(warnings, [
            f"<config>:{line}: listener.{key}: every SUBSCRIBE from any client will be "
            "denied: none of the plugins enabled (pub) implements auth_on_subscribe "
            "(IAuthOnSubscribe) or auth_on_subscribe_m5 (IAuthOnSubscribeM5). To fix it, "
            "enable vmq_acl (plugins.vmq_acl = on) or a plugin implementing IAuthOnSubscribe"
            for line, key in ((1, "tcp.default"), (2, "ws.web"))])

    def test_subscribe_only_plugin_leaves_publish_denied(self) -> None:
        """With only an ``auth_on_subscribe`` plugin every PUBLISH is denied."""
        (warning,) = self.warnings("listener.tcp.default = 127.0.0.1:1883\n",
                                   sub=SubscribeOnly())
        self.assertIn("every PUBLISH from any client will be denied", warning)
        self.assertIn("implementing IAuthOnPublish", warning)

    def test_both_hooks_from_two_plugins(self) -> None:
        """Publish from one plugin and subscribe from another: nothing is denied."""
        self.assertEqual(self.warnings("listener.tcp.default = 127.0.0.1:1883\n",
                                       pub=PublishOnly(), sub=SubscribeOnly()), [])

    def test_no_authorization_plugin(self) -> None:
        """
        Without any authorization plugin everything is allowed (another warning says no ACL
        is in force): no denial warning.
        """
        self.assertEqual(self.warnings("listener.tcp.default = 127.0.0.1:1883\n",
                                       login=LoginOnly()), [])
        self.assertEqual(self.warnings("listener.tcp.default = 127.0.0.1:1883\n"), [])

    def test_m5_only_hooks_deny_3x_clients(self) -> None:
        """
        ``_m5`` hooks alone serve MQTT 5.0 clients only: on a listener allowing 3.x the
        warning names the 3.x protocol versions and offers allowing only 5.0 as a fix.
        """
        warnings = self.warnings("listener.tcp.default = 127.0.0.1:1883\n"
                                 "listener.tcp.default.allowed_protocol_versions = 3,4,5\n",
                                 m5=OnlyM5())
        self.assertEqual(len(warnings), 2, warnings)
        publish, subscribe = warnings
        self.assertTrue(publish.startswith(
            "<config>:1: listener.tcp.default: every PUBLISH from MQTT 3.x clients (protocol "
            "versions 3, 4) will be denied: the plugins enabled (m5) provide "
            "auth_on_publish_m5 (IAuthOnPublishM5) for MQTT 5.0 clients only"), publish)
        self.assertIn("or allow only MQTT 5.0 "
                      "(listener.tcp.default.allowed_protocol_versions = 5)", publish)
        self.assertIn("every SUBSCRIBE from MQTT 3.x clients", subscribe)

    def test_m5_only_hooks_on_a_5_0_listener(self) -> None:
        """A listener that allows only MQTT 5.0 is served by ``_m5`` hooks alone."""
        self.assertEqual(self.warnings("listener.tcp.default = 127.0.0.1:1883\n"
                                       "listener.tcp.default.allowed_protocol_versions = 5\n",
                                       m5=OnlyM5()), [])

    def test_plain_hooks_serve_5_0_clients(self) -> None:
        """
        The chain asks 5.0 clients the plain hook where no plugin has the ``_m5`` one, so
        plain hooks alone deny nothing, on a 5.0-only listener too.
        """
        self.assertEqual(self.warnings("listener.tcp.default = 127.0.0.1:1883\n"
                                       "listener.tcp.default.allowed_protocol_versions = 5\n",
                                       pub=PublishOnly(), sub=SubscribeOnly()), [])

    def test_bridge_levels_count_as_3x(self) -> None:
        """Bridge levels 131/132 are asked the plain hooks, as 3.1/3.1.1 clients are."""
        (warning, _) = self.warnings(
            "listener.tcp.default = 127.0.0.1:1883\n"
            "listener.tcp.default.allowed_protocol_versions = 5,131,132\n", m5=OnlyM5())
        self.assertIn("every PUBLISH from MQTT 3.x clients (protocol versions 131, 132)",
                      warning)

    def test_listener_chain(self) -> None:
        """
        A listener with its own ``authz_plugins`` is judged on that chain: the warning is at
        the option's line and the fix is to add a plugin to that list.
        """
        warnings = self.warnings("listener.tcp.default = 127.0.0.1:1883\n"
                                 "listener.tcp.tenants = 127.0.0.1:1884\n"
                                 "listener.tcp.tenants.authz_plugins = pub\n",
                                 pub=PublishOnly(), sub=SubscribeOnly())
        self.assertEqual(warnings, [
            "<config>:3: listener.tcp.tenants: every SUBSCRIBE from any client will be "
            "denied: none of listener.tcp.tenants.authz_plugins (pub) implements "
            "auth_on_subscribe (IAuthOnSubscribe) or auth_on_subscribe_m5 "
            "(IAuthOnSubscribeM5). To fix it, add vmq_acl or another plugin implementing "
            "IAuthOnSubscribe to listener.tcp.tenants.authz_plugins"])

