"""Running hooks over an ordered chain of plugins.

The first answer that is not NEXT wins; an exhausted chain rejects.  A plugin
that raises or returns something that is not a Result counts as an error and is
logged with its name; it never takes the broker down.
"""
from __future__ import annotations

from typing import Any, Sequence

from twisted.internet import defer
from vmqtw.logs import Logger
from twisted.python.failure import Failure
from zope.interface.interface import InterfaceClass

from vmqtw.auth.api import (
    IAuthOnPublish, IAuthOnPublishM5, IAuthOnRegister, IAuthOnSubscribe, IAuthOnSubscribeM5,
    IOnAuth, NEXT, OK, AuthRequest, Error, Next, Result, RegisterRequest,
)

CHAIN_EXHAUSTED = "plugin_chain_exhausted"
PLUGIN_ERROR = "plugin_error"
#: The reason of a deferred answer whose Deferred was cancelled (the client left).
CANCELLED = "cancelled"


class PluginResultError(TypeError):
    """A plugin returned something that is not a Result (e.g. True or None)."""


def _choose(iface: InterfaceClass, hook: str, args: tuple[Any, ...]) -> Any:
    """A chooser for ``Chain._run``: ``hook`` of every plugin providing ``iface``."""
    call = (hook, args)
    return lambda plugin: call if iface.providedBy(plugin) else None


def _choose_m5(iface_m5: InterfaceClass, hook_m5: str, iface: InterfaceClass, hook: str,
               args: tuple[Any, ...], properties: dict[str, Any]) -> Any:
    """A chooser asking each plugin its ``_m5`` hook if it has one, else the plain one."""
    call_m5 = (hook_m5, (*args, properties))
    call = (hook, args)

    def choose(plugin: Any) -> tuple[str, tuple[Any, ...]] | None:
        if iface_m5.providedBy(plugin):
            return call_m5
        if iface.providedBy(plugin):
            return call
        return None

    return choose


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
        """Run a synchronous hook through the chain.

        A plugin answering with a Deferred here is refused (fail closed): the
        caller cannot wait.  Callers that can wait use ``run_deferrable``."""
        return self._run(_choose(iface, hook, args), False)  # type: ignore[return-value]

    def run_sync_m5(self, iface_m5: InterfaceClass, hook_m5: str, iface: InterfaceClass,
                    hook: str, args: tuple[Any, ...], properties: dict[str, Any]) -> Result:
        """Run a synchronous hook for an MQTT 5.0 client: each plugin is asked its
        ``_m5`` variant (with ``properties``) if it provides it, else the plain one."""
        return self._run(_choose_m5(iface_m5, hook_m5, iface, hook, args, properties),
                         False)  # type: ignore[return-value]

    def run_deferrable(self, iface: InterfaceClass, hook: str,
                       *args: Any) -> "Result | defer.Deferred[Result]":
        """Run a hook whose plugins may answer with a Deferred.

        The answer is a Result when every plugin asked answered synchronously
        (no Deferred is created on that path), else a Deferred that fires with a
        Result and never fails.  Cancelling it cancels the plugin's pending
        answer and fires it with ``Error("cancelled")``."""
        return self._run(_choose(iface, hook, args), True)

    def run_deferrable_m5(self, iface_m5: InterfaceClass, hook_m5: str, iface: InterfaceClass,
                          hook: str, args: tuple[Any, ...],
                          properties: dict[str, Any]) -> "Result | defer.Deferred[Result]":
        """``run_deferrable`` for an MQTT 5.0 client (see ``run_sync_m5``)."""
        return self._run(_choose_m5(iface_m5, hook_m5, iface, hook, args, properties), True)

    def _run(self, choose: Any, deferrable: bool,
             start: int = 0) -> "Result | defer.Deferred[Result]":
        """The chain loop from plugin number ``start``: ``choose(plugin)`` names
        the hook to call and its arguments, or None to skip that plugin."""
        plugins = self.plugins
        for index in range(start, len(plugins)):
            name, plugin = plugins[index]
            call = choose(plugin)
            if call is None:
                continue
            hook, args = call
            try:
                value = getattr(plugin, hook)(*args)
            except Exception:
                self.log.failure("plugin {plugin} failed in {hook}", plugin=name, hook=hook)
                return Error(PLUGIN_ERROR)
            if isinstance(value, defer.Deferred):
                if not deferrable:
                    return self._refuse_deferred(name, hook, value)
                return self._resume(value, index, name, hook, choose)
            result = self._checked(name, hook, value)
            if result.__class__ is not Next:
                return result
        return Error(CHAIN_EXHAUSTED)

    def _resume(self, pending: "defer.Deferred[Any]", index: int, name: str, hook: str,
                choose: Any) -> "defer.Deferred[Result]":
        """Wait for plugin ``index``'s answer, then go on with the chain after it."""

        def answered(value: Any) -> Any:
            result = self._checked(name, hook, value)
            if result.__class__ is not Next:
                return result
            return self._run(choose, True, index + 1)

        def failed(failure: Failure) -> Result:
            if failure.check(defer.CancelledError):
                return Error(CANCELLED)
            self.log.failure("plugin {plugin} failed in {hook}", failure, plugin=name, hook=hook)
            return Error(PLUGIN_ERROR)

        return pending.addCallbacks(answered, failed)

    def _refuse_deferred(self, name: str, hook: str, pending: "defer.Deferred[Any]") -> Result:
        """A Deferred answer where the caller cannot wait: refuse, and drop it."""
        self.log.failure(
            "plugin {plugin} answered {hook} with a Deferred, but this caller takes only "
            "synchronous answers: refused (fail closed)",
            Failure(PluginResultError(f"{name}.{hook} returned a Deferred")),
            plugin=name, hook=hook)
        pending.addErrback(lambda _: None)
        pending.cancel()
        return Error(PLUGIN_ERROR)

    @defer.inlineCallbacks
    def run_async(self, iface: InterfaceClass, hook: str, *args: Any):
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

    ``publish``/``subscribe`` (and ``_m5``) answer a Result, or, only when the
    caller passes ``deferrable=True``, possibly a Deferred that fires with a
    Result and never fails.  A caller passing it must, on a Deferred: stop
    reading the client and hold its later packets in order; when it fires,
    apply the verdict exactly as a synchronous one (unless the connection is
    gone), then replay the held packets (stopping again at the next Deferred)
    and resume reading; cancel it if the connection closes first (it then
    fires with ``Error("cancelled")``).  Synchronous plugins never create a
    Deferred, so the hot path is unchanged.

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

    def register(self, request: RegisterRequest,
                 anonymous_override: bool = False) -> "defer.Deferred[Result]":
        if self.allow_anonymous or anonymous_override:
            return defer.succeed(OK)
        return self.chain.run_async(IAuthOnRegister, "auth_on_register", request)

    def verify(self, request: RegisterRequest) -> "defer.Deferred[Result]":
        """The register chain's answer even where anonymous access is allowed
        (a claimed user name is checked: see ``vmqtw.connection.connect.register``)."""
        return self.chain.run_async(IAuthOnRegister, "auth_on_register", request)

    def publish(self, client: Any, topic: str, payload: bytes, qos: int, retain: bool,
                deferrable: bool = False) -> Any:
        """auth_on_publish through the chain: a Result.

        With ``deferrable=True`` the answer may instead be a Deferred firing
        with a Result (a plugin waits for a server); see ``Chain.run_deferrable``.
        Without it, a plugin's Deferred answer is refused (fail closed)."""
        if not self._has_publish:
            return OK
        if deferrable:
            return self.authz_chain.run_deferrable(IAuthOnPublish, "auth_on_publish",
                                                   client, topic, payload, qos, retain)
        return self.authz_chain.run_sync(IAuthOnPublish, "auth_on_publish",
                                         client, topic, payload, qos, retain)

    def subscribe(self, client: Any, topics: list[tuple[str, int]],
                  deferrable: bool = False) -> Any:
        """auth_on_subscribe through the chain (``deferrable`` as in ``publish``)."""
        if not self._has_subscribe:
            return OK
        if deferrable:
            return self.authz_chain.run_deferrable(IAuthOnSubscribe, "auth_on_subscribe",
                                                   client, topics)
        return self.authz_chain.run_sync(IAuthOnSubscribe, "auth_on_subscribe", client, topics)

    # -- MQTT 5.0 -------------------------------------------------------------------

    def publish_m5(self, client: Any, topic: str, payload: bytes, qos: int, retain: bool,
                   properties: dict[str, Any], deferrable: bool = False) -> Any:
        """auth_on_publish_m5 where a plugin provides it, else auth_on_publish
        (``deferrable`` as in ``publish``)."""
        if not self._has_publish_m5:
            return self.publish(client, topic, payload, qos, retain, deferrable)
        run = self.authz_chain.run_deferrable_m5 if deferrable else self.authz_chain.run_sync_m5
        return run(IAuthOnPublishM5, "auth_on_publish_m5", IAuthOnPublish, "auth_on_publish",
                   (client, topic, payload, qos, retain), properties)

    def subscribe_m5(self, client: Any, topics: list[tuple[str, int]],
                     properties: dict[str, Any], deferrable: bool = False) -> Any:
        """auth_on_subscribe_m5 where a plugin provides it, else auth_on_subscribe
        (``deferrable`` as in ``publish``)."""
        if not self._has_subscribe_m5:
            return self.subscribe(client, topics, deferrable)
        run = self.authz_chain.run_deferrable_m5 if deferrable else self.authz_chain.run_sync_m5
        return run(IAuthOnSubscribeM5, "auth_on_subscribe_m5", IAuthOnSubscribe,
                   "auth_on_subscribe", (client, topics), properties)

    def on_auth(self, request: AuthRequest) -> "defer.Deferred[Result]":
        """One step of enhanced authentication through the register chain's on_auth hooks."""
        return self.chain.run_async(IOnAuth, "on_auth", request)


__all__ = ["Chain", "Authorizer", "NEXT", "OK", "CHAIN_EXHAUSTED", "PLUGIN_ERROR", "CANCELLED",
           "PluginResultError"]
