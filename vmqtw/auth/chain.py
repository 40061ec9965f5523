"""Running hooks over an ordered chain of plugins.

The first answer that is not NEXT wins; an exhausted chain rejects.  A plugin
that raises or returns something that is not a Result counts as an error and is
logged with its name; it never takes the broker down.
"""
from __future__ import annotations

from typing import Any, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface.interface import InterfaceClass

from vmqtw.auth.api import (
    IAuthOnPublish, IAuthOnPublishM5, IAuthOnRegister, IAuthOnSubscribe, IAuthOnSubscribeM5,
    IOnAuth, NEXT, OK, AuthRequest, Error, Next, Result, RegisterRequest,
)

CHAIN_EXHAUSTED = "plugin_chain_exhausted"
PLUGIN_ERROR = "plugin_error"


class PluginResultError(TypeError):
    """A plugin returned something that is not a Result (e.g. True or None)."""


class Chain:
    """An ordered list of (name, plugin) pairs."""

    log = Logger()

    def __init__(self, plugins: Sequence[tuple[str, Any]] = ()) -> None:
        self.plugins = list(plugins)

    def providers(self, iface: InterfaceClass) -> list[tuple[str, Any]]:
        return [(n, p) for n, p in self.plugins if iface.providedBy(p)]

    def _checked(self, name: str, hook: str, value: Any) -> Result:
        if isinstance(value, Result):
            return value
        # Logged as a failure (like a raising plugin) so it is not mistaken for a
        # routine refusal: it is a bug in the plugin.
        self.log.failure("plugin {plugin} returned {value!r} from {hook}; treating it as an error",
                         Failure(PluginResultError(f"{name}.{hook} returned {value!r}")),
                         plugin=name, value=value, hook=hook)
        return Error(PLUGIN_ERROR)

    def run_sync(self, iface: InterfaceClass, hook: str, *args: Any) -> Result:
        """Run a synchronous hook through the chain."""
        return self._run_sync(lambda plugin: (hook, args) if iface.providedBy(plugin) else None)

    def run_sync_m5(self, iface_m5: InterfaceClass, hook_m5: str, iface: InterfaceClass,
                    hook: str, args: tuple[Any, ...], properties: dict[str, Any]) -> Result:
        """Run a synchronous hook for an MQTT 5.0 client: each plugin is asked its
        ``_m5`` variant (with ``properties``) if it provides it, else the plain one."""
        args_m5 = (*args, properties)

        def choose(plugin: Any) -> tuple[str, tuple[Any, ...]] | None:
            if iface_m5.providedBy(plugin):
                return hook_m5, args_m5
            if iface.providedBy(plugin):
                return hook, args
            return None

        return self._run_sync(choose)

    def _run_sync(self, choose: Any) -> Result:
        """The chain loop: ``choose(plugin)`` names the hook to call and its
        arguments, or None to skip that plugin."""
        for name, plugin in self.plugins:
            call = choose(plugin)
            if call is None:
                continue
            hook, args = call
            try:
                result = self._checked(name, hook, getattr(plugin, hook)(*args))
            except Exception:
                self.log.failure("plugin {plugin} failed in {hook}", plugin=name, hook=hook)
                return Error(PLUGIN_ERROR)
            if result.__class__ is not Next:
                return result
        return Error(CHAIN_EXHAUSTED)

    @defer.inlineCallbacks
    def run_async(self, iface: InterfaceClass, hook: str, *args: Any):  # type: ignore[no-untyped-def]
        """Run a hook whose plugins may return Deferreds; fires with a Result."""
        for name, plugin in self.plugins:
            if not iface.providedBy(plugin):
                continue
            try:
                value = yield defer.maybeDeferred(getattr(plugin, hook), *args)
            except Exception:
                self.log.failure("plugin {plugin} failed in {hook}", plugin=name, hook=hook)
                return Error(PLUGIN_ERROR)
            result = self._checked(name, hook, value)
            if result.__class__ is not Next:
                return result
        return Error(CHAIN_EXHAUSTED)


class Authorizer:
    """The one authorization point for CONNECT, PUBLISH (and will) and SUBSCRIBE.

    ``allow_anonymous`` (or a listener's ``allow_anonymous_override``) skips the
    register chain but not the publish/subscribe hooks.  With no authorization
    plugin at all in the chain, publish and subscribe are allowed; once any
    plugin provides an authorization hook, VerneMQ's semantics apply to every
    one of them: a hook nobody provides is an exhausted chain, and denies.
    """

    def __init__(self, chain: Chain, allow_anonymous: bool = False,
                 authz_chain: Chain | None = None) -> None:
        self.chain = chain
        self.authz_chain = authz_chain if authz_chain is not None else chain
        self.allow_anonymous = allow_anonymous
        self._has_publish_m5 = bool(self.authz_chain.providers(IAuthOnPublishM5))
        self._has_subscribe_m5 = bool(self.authz_chain.providers(IAuthOnSubscribeM5))
        #: False when no authorization plugin is enabled: no ACL is in force.
        self.authz_enabled = any(self.authz_chain.providers(i) for i in (
            IAuthOnPublish, IAuthOnSubscribe, IAuthOnPublishM5, IAuthOnSubscribeM5))
        self._has_publish = self._has_subscribe = self.authz_enabled
        #: True when some plugin of the register chain does MQTT 5.0 enhanced auth.
        self.has_on_auth = bool(self.chain.providers(IOnAuth))
        #: True when some plugin of the register chain checks CONNECTs.
        self.has_register = bool(self.chain.providers(IAuthOnRegister))

    def register(self, request: RegisterRequest, anonymous_override: bool = False) -> "defer.Deferred[Result]":
        if self.allow_anonymous or anonymous_override:
            return defer.succeed(OK)
        return self.chain.run_async(IAuthOnRegister, "auth_on_register", request)

    def verify(self, request: RegisterRequest) -> "defer.Deferred[Result]":
        """The register chain's answer even where anonymous access is allowed
        (a claimed user name is checked: see ``vmqtw.connection.connect.register``)."""
        return self.chain.run_async(IAuthOnRegister, "auth_on_register", request)

    def publish(self, client: Any, topic: str, payload: bytes, qos: int, retain: bool) -> Result:
        if not self._has_publish:
            return OK
        return self.authz_chain.run_sync(IAuthOnPublish, "auth_on_publish",
                                         client, topic, payload, qos, retain)

    def subscribe(self, client: Any, topics: list[tuple[str, int]]) -> Result:
        if not self._has_subscribe:
            return OK
        return self.authz_chain.run_sync(IAuthOnSubscribe, "auth_on_subscribe", client, topics)

    # -- MQTT 5.0 -------------------------------------------------------------------

    def publish_m5(self, client: Any, topic: str, payload: bytes, qos: int, retain: bool,
                   properties: dict[str, Any]) -> Result:
        """auth_on_publish_m5 where a plugin provides it, else auth_on_publish."""
        if not self._has_publish_m5:
            return self.publish(client, topic, payload, qos, retain)
        return self.authz_chain.run_sync_m5(
            IAuthOnPublishM5, "auth_on_publish_m5", IAuthOnPublish, "auth_on_publish",
            (client, topic, payload, qos, retain), properties)

    def subscribe_m5(self, client: Any, topics: list[tuple[str, int]],
                     properties: dict[str, Any]) -> Result:
        """auth_on_subscribe_m5 where a plugin provides it, else auth_on_subscribe."""
        if not self._has_subscribe_m5:
            return self.subscribe(client, topics)
        return self.authz_chain.run_sync_m5(
            IAuthOnSubscribeM5, "auth_on_subscribe_m5", IAuthOnSubscribe, "auth_on_subscribe",
            (client, topics), properties)

    def on_auth(self, request: AuthRequest) -> "defer.Deferred[Result]":
        """One step of enhanced authentication through the register chain's on_auth hooks."""
        return self.chain.run_async(IOnAuth, "on_auth", request)


__all__ = ["Chain", "Authorizer", "NEXT", "OK", "CHAIN_EXHAUSTED", "PLUGIN_ERROR",
           "PluginResultError"]
