"""Notification hooks (on_register, on_publish, ...): every plugin that provides
one is called; return values are ignored; a failing plugin is logged by name and
never disturbs the client or the other plugins.

Each hook keeps the list of plugins that provide it, so a hook nobody provides
costs one truth test on the paths that call it (on_publish is per message).
"""
from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure

from vmqtw.auth import api
from vmqtw.auth.api import Next, Ok, Result
from vmqtw.auth.chain import PluginResultError
from vmqtw.auth.modifiers import DELIVER as DELIVER_MODIFIERS
from vmqtw.auth.modifiers import ModifierError
from vmqtw.auth.modifiers import check as check_modifiers
from vmqtw.logs import Logger


class Notifier:
    log = Logger()

    def __init__(self, plugins: list[tuple[str, Any]]) -> None:
        def providers(iface: Any) -> list[tuple[str, Any]]:
            return [(n, p) for n, p in plugins if iface.providedBy(p)]

        self.register = providers(api.IOnRegister)
        self.publish = providers(api.IOnPublish)
        self.subscribe = providers(api.IOnSubscribe)
        self.unsubscribe = providers(api.IOnUnsubscribe)
        self.wakeup = providers(api.IOnClientWakeup)
        self.offline = providers(api.IOnClientOffline)
        self.gone = providers(api.IOnClientGone)
        self.expired = providers(api.IOnSessionExpired)
        self.offline_message = providers(api.IOnOfflineMessage)
        self.deliver = providers(api.IOnDeliver)

    def _call_all(self, plugins: list[tuple[str, Any]], hook: str, *args: Any) -> None:
        for name, plugin in plugins:
            try:
                getattr(plugin, hook)(*args)
            except Exception:
                self.log.failure("plugin {plugin} failed in {hook}", plugin=name, hook=hook)

    def on_register(self, client: Any) -> None:
        if self.register:
            self._call_all(self.register, "on_register", client)

    def on_publish(self, client: Any, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if self.publish:
            self._call_all(self.publish, "on_publish", client, topic, payload, qos, retain)

    def on_subscribe(self, client: Any, topics: list[tuple[str, int]]) -> None:
        if self.subscribe:
            self._call_all(self.subscribe, "on_subscribe", client, topics)

    def on_unsubscribe(self, client: Any, topics: list[str]) -> list[str]:
        """The filters to unsubscribe.

        A chain, as in VerneMQ: plugins are asked in order until one answers
        something other than NEXT.  ``ok(topics=[...])`` replaces the filters;
        OK, an error, an exception or a value that is not a Result keep them
        (the last two, and a bad ``topics`` modifier, are logged as the
        plugin's failure).
        """
        for name, plugin in self.unsubscribe:
            try:
                result = plugin.on_unsubscribe(client, topics)
            except Exception:
                self.log.failure("plugin {plugin} failed in {hook}", plugin=name,
                                 hook="on_unsubscribe")
                return topics
            if isinstance(result, Next):
                continue
            if not isinstance(result, Result):
                self.log.failure(
                    "plugin {plugin} returned {value!r} from {hook}; keeping the topics",
                    Failure(PluginResultError(f"{name}.on_unsubscribe returned {result!r}")),
                    plugin=name, value=result, hook="on_unsubscribe")
                return topics
            if isinstance(result, Ok) and "topics" in result.modifiers:
                new = result.modifiers["topics"]
                if isinstance(new, list) and all(isinstance(t, str) for t in new):
                    return new
                self.log.failure(
                    "plugin {plugin}: bad topics modifier {value!r} from {hook}; keeping "
                    "the topics",
                    Failure(ModifierError(f"{name}.on_unsubscribe: topics must be a list "
                                          f"of strings, got {new!r}")),
                    plugin=name, value=new, hook="on_unsubscribe")
            return topics
        return topics

    def session_event(self, event: str, session: Any) -> None:
        """A ``Broker.session_observers`` callback."""
        mp, cid = session.mountpoint, session.client_id
        if event == "wakeup":
            self._call_all(self.wakeup, "on_client_wakeup", mp, cid)
        elif event == "offline":
            self._call_all(self.offline, "on_client_offline", mp, cid)
        elif event == "gone":
            self._call_all(self.gone, "on_client_gone", mp, cid)
        elif event == "expired":
            self._call_all(self.expired, "on_session_expired", mp, cid)

    def on_deliver(self, client: Any, message: Any, qos: int, retain: bool) -> Any:
        """The message to send to ``client``: the first plugin answering
        ``ok(topic=..., payload=...)`` rewrites it.  It is delivered in any case:
        an error, an exception or a bad modifier is logged and changes nothing."""
        for name, plugin in self.deliver:
            try:
                result = plugin.on_deliver(client, message.topic, message.payload, qos, retain)
            except Exception:
                self.log.failure("plugin {plugin} failed in {hook}", plugin=name,
                                 hook="on_deliver")
                return message
            if result.__class__ is api.Next:
                continue
            if not isinstance(result, Ok):
                self.log.error("plugin {plugin} answered {result!r} from on_deliver; "
                               "delivering unchanged", plugin=name, result=result)
                return message
            if not result.modifiers:
                return message
            try:
                mods = check_modifiers(DELIVER_MODIFIERS, result.modifiers, "on_deliver")
            except ModifierError as e:
                self.log.error("plugin {plugin}: {reason}", plugin=name, reason=str(e))
                return message
            return type(message)(mods.get("topic", message.topic),
                                 mods.get("payload", message.payload), message.qos,
                                 message.retain, message.properties,
                                 expires_at=message.expires_at)
        return message

    def on_offline_message(self, client: Any, message: Any, qos: int, retain: bool) -> None:
        if self.offline_message:
            self._call_all(self.offline_message, "on_offline_message", client.mountpoint,
                           client.client_id, qos, message.topic, message.payload, retain)
