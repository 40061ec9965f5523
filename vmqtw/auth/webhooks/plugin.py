"""The vmq_webhooks plugin: every hook it is configured for becomes an HTTP
POST to the endpoints registered for it, as VerneMQ does.

Auth hooks (auth_on_register/publish/subscribe and their _m5 forms, on_auth_m5)
ask the endpoints of the hook in order until one answers something other than
``next``; an endpoint that fails (timeout, non-200, not JSON, a bad modifier,
a transport error) **refuses**, with one log line naming the endpoint and the
reason.  Answers with ``cache-control: max-age=N`` are cached; a cached answer
is given synchronously, so no Deferred is made for it.

Notification hooks post and never wait: a slow endpoint delays nobody.  The
answers of on_deliver and on_unsubscribe are not applied (those hooks are
synchronous in the hook API); their requests are still sent.
"""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import alsoProvides

from vmqtw.auth import api
from vmqtw.auth.api import NEXT, Error, Ok, Result
from vmqtw.auth.webhooks.answers import AnswerError, parse_answer
from vmqtw.auth.webhooks.bodies import (
    client_fields, payload_field, peer_fields, properties_out, publish_body, register_body,
    subscribe_body,
)
from vmqtw.auth.webhooks.client import Poster, WebhookFailure
from vmqtw.auth.webhooks.settings import AUTH_HOOKS, Endpoint, WebhookSettings

__all__ = ["WebhooksPlugin", "WEBHOOK_FAILED"]

#: The refusal reason when an endpoint of an auth hook gave no usable answer.
WEBHOOK_FAILED = "webhook_failed"

#: Which hook interface a configured hook needs the plugin to provide.
_INTERFACES = {
    "auth_on_register": api.IAuthOnRegister, "auth_on_register_m5": api.IAuthOnRegister,
    "auth_on_publish": api.IAuthOnPublish, "auth_on_publish_m5": api.IAuthOnPublishM5,
    "auth_on_subscribe": api.IAuthOnSubscribe, "auth_on_subscribe_m5": api.IAuthOnSubscribeM5,
    "on_auth_m5": api.IOnAuth,
    "on_register": api.IOnRegister, "on_register_m5": api.IOnRegister,
    "on_publish": api.IOnPublish, "on_publish_m5": api.IOnPublish,
    "on_subscribe": api.IOnSubscribe, "on_subscribe_m5": api.IOnSubscribe,
    "on_unsubscribe": api.IOnUnsubscribe, "on_unsubscribe_m5": api.IOnUnsubscribe,
    "on_deliver": api.IOnDeliver, "on_deliver_m5": api.IOnDeliver,
    "on_offline_message": api.IOnOfflineMessage, "on_client_wakeup": api.IOnClientWakeup,
    "on_client_offline": api.IOnClientOffline, "on_client_gone": api.IOnClientGone,
    "on_session_expired": api.IOnSessionExpired,
}

Body = Callable[[Endpoint], dict[str, Any]]


def _level(client: Any) -> int:
    """The MQTT protocol level of a connected client (4 when unknown)."""
    conn = getattr(client, "conn", None)
    level = getattr(conn, "protocol_level", None) or getattr(client, "protocol_level", None)
    return level if isinstance(level, int) else 4


class WebhooksPlugin:
    """Provides the hook interfaces of the hooks that have endpoints."""

    def __init__(self, settings: WebhookSettings, context: Any,
                 poster: Poster | None = None) -> None:
        self.settings = settings
        self.log = context.log
        self.reactor = context.reactor
        self.poster = poster if poster is not None else Poster(context.reactor, settings)
        self.endpoints: dict[str, list[Endpoint]] = {}
        for endpoint in settings.endpoints:
            self.endpoints.setdefault(endpoint.hook, []).append(endpoint)
        #: hook -> [requests, errors]
        self.stats: dict[str, list[int]] = {hook: [0, 0] for hook in self.endpoints}
        #: Notification requests still waiting for their answer.
        self.outstanding: set[defer.Deferred[Any]] = set()
        ifaces = {_INTERFACES[hook] for hook in self.endpoints}
        if ifaces:
            alsoProvides(self, *ifaces)

    def stop(self) -> Any:
        for d in list(self.outstanding):
            d.cancel()
        return self.poster.stop()

    def idle(self) -> "defer.Deferred[Any]":
        """Fires when every notification sent so far has its answer (or failed)."""
        return defer.gatherResults(list(self.outstanding))

    # -- calling endpoints --------------------------------------------------------------

    def _ask(self, hook: str, body: Body) -> Any:
        """Ask the endpoints of an auth hook in order: a Result, or a Deferred of one."""
        return self._ask_from(hook, self.endpoints.get(hook, ()), 0, body)

    def _ask_from(self, hook: str, endpoints: Any, start: int, body: Body) -> Any:
        cache = self.poster.cache
        for index in range(start, len(endpoints)):
            endpoint = endpoints[index]
            payload = body(endpoint)
            key = cache.key(endpoint.url, hook, payload) if hook in AUTH_HOOKS else None
            if key is not None:
                cached = cache.get(key)
                if cached is not None:
                    return cached
            self.stats[hook][0] += 1
            d = self.poster.post(endpoint, payload)
            d.addCallbacks(self._answered, self._failed,
                           callbackArgs=(hook, endpoint, key, index, endpoints, body),
                           errbackArgs=(hook, endpoint))
            return d
        return NEXT

    def _answered(self, answer: tuple[bytes, int | None], hook: str, endpoint: Endpoint,
                  key: Any, index: int, endpoints: Any, body: Body) -> Any:
        data, max_age = answer
        try:
            result = parse_answer(hook, data, endpoint.base64_payload)
        except AnswerError as e:
            return self._refuse(hook, endpoint, str(e))
        if result.__class__ is api.Next:
            return self._ask_from(hook, endpoints, index + 1, body)
        if key is not None and max_age is not None and isinstance(result, Ok):
            kept = {k: v for k, v in result.modifiers.items() if k != "payload"}
            self.poster.cache.put(key, max_age, Ok(kept) if kept else api.OK)
        return result

    def _failed(self, failure: Failure, hook: str, endpoint: Endpoint) -> Any:
        if failure.check(defer.CancelledError):
            return failure  # the caller gave up waiting: nothing to say about the endpoint
        reason = failure.getErrorMessage() if failure.check(WebhookFailure) else \
            f"{getattr(failure.type, '__name__', 'error')}: {failure.getErrorMessage()}"
        return self._refuse(hook, endpoint, reason)

    def _refuse(self, hook: str, endpoint: Endpoint, reason: str) -> Result:
        self.stats[hook][1] += 1
        self.log.warn("webhook {endpoint} ({hook}) failed: {reason}; refused",
                      endpoint=endpoint.url, hook=hook, reason=reason)
        return Error(WEBHOOK_FAILED)

    def _notify(self, hook: str, body: Body) -> None:
        """Post to every endpoint of a notification hook; never wait, log failures."""
        for endpoint in self.endpoints.get(hook, ()):
            self.stats[hook][0] += 1
            d = self.poster.post(endpoint, body(endpoint))
            d.addErrback(self._notify_failed, hook, endpoint)
            self.outstanding.add(d)
            d.addBoth(self._notified, d)

    def _notified(self, result: Any, d: "defer.Deferred[Any]") -> None:
        self.outstanding.discard(d)

    def _notify_failed(self, failure: Failure, hook: str, endpoint: Endpoint) -> None:
        if failure.check(defer.CancelledError):
            return  # stopping
        self.stats[hook][1] += 1
        self.log.warn("webhook {endpoint} ({hook}) failed: {reason}",
                      endpoint=endpoint.url, hook=hook, reason=failure.getErrorMessage())

    def _has(self, hook: str) -> bool:
        return hook in self.endpoints

    # -- auth hooks ---------------------------------------------------------------------

    def auth_on_register(self, request: api.RegisterRequest) -> Any:
        m5 = request.protocol_level == 5
        hook = "auth_on_register_m5" if m5 else "auth_on_register"
        if not self._has(hook):
            return NEXT
        return self._ask(hook, lambda e: register_body(request, m5, e.base64_payload))

    def auth_on_publish(self, client: Any, topic: str, payload: bytes, qos: int,
                        retain: bool) -> Any:
        if _level(client) == 5 or not self._has("auth_on_publish"):
            return NEXT  # VerneMQ asks MQTT 5.0 clients' publishes through _m5 only
        return self._ask("auth_on_publish", lambda e: publish_body(
            client, topic, payload, qos, retain, None, e.base64_payload, e.no_payload))

    def auth_on_publish_m5(self, client: Any, topic: str, payload: bytes, qos: int,
                           retain: bool, properties: dict[str, Any]) -> Any:
        return self._ask("auth_on_publish_m5", lambda e: publish_body(
            client, topic, payload, qos, retain, properties, e.base64_payload, e.no_payload))

    def auth_on_subscribe(self, client: Any, topics: list[tuple[str, int]]) -> Any:
        if _level(client) == 5 or not self._has("auth_on_subscribe"):
            return NEXT
        return self._ask("auth_on_subscribe", lambda e: subscribe_body(client, topics, None))

    def auth_on_subscribe_m5(self, client: Any, topics: list[tuple[str, int]],
                             properties: dict[str, Any]) -> Any:
        return self._ask("auth_on_subscribe_m5",
                         lambda e: subscribe_body(client, topics, properties))

    def on_auth(self, request: api.AuthRequest) -> Any:
        def body(e: Endpoint) -> dict[str, Any]:
            props: dict[str, Any] = {"authentication_method": request.method}
            if request.data is not None:
                props["authentication_data"] = request.data
            return {"username": request.username, "mountpoint": request.mountpoint or "",
                    "client_id": request.client_id, "properties": properties_out(props)}
        return self._ask("on_auth_m5", body)

    # -- notification hooks -------------------------------------------------------------

    def _pick(self, client: Any, hook: str) -> str | None:
        """``hook`` or ``hook_m5`` by the client's protocol level, if it has endpoints."""
        name = hook + "_m5" if _level(client) == 5 else hook
        return name if name in self.endpoints else None

    def on_register(self, client: Any) -> None:
        hook = self._pick(client, "on_register")
        if hook is not None:
            m5 = hook.endswith("_m5")
            self._notify(hook, lambda e: {**peer_fields(client),
                                          **({"properties": {}} if m5 else {})})

    def on_publish(self, client: Any, topic: str, payload: bytes, qos: int,
                   retain: bool) -> None:
        hook = self._pick(client, "on_publish")
        if hook is not None:
            props: dict[str, Any] | None = {} if hook.endswith("_m5") else None
            self._notify(hook, lambda e: publish_body(client, topic, payload, qos, retain,
                                                      props, e.base64_payload))

    def on_subscribe(self, client: Any, topics: list[tuple[str, int]]) -> None:
        hook = self._pick(client, "on_subscribe")
        if hook is not None:
            props: dict[str, Any] | None = {} if hook.endswith("_m5") else None
            self._notify(hook, lambda e: subscribe_body(client, topics, props))

    def on_unsubscribe(self, client: Any, topics: list[str]) -> Result:
        hook = self._pick(client, "on_unsubscribe")
        if hook is not None:
            m5 = hook.endswith("_m5")
            self._notify(hook, lambda e: {**client_fields(client), "topics": list(topics),
                                          **({"properties": {}} if m5 else {})})
        return NEXT

    def on_deliver(self, client: Any, topic: str, payload: bytes, qos: int,
                   retain: bool) -> Result:
        hook = self._pick(client, "on_deliver")
        if hook is not None:
            self._notify(hook, lambda e: publish_body(client, topic, payload, qos, retain,
                                                      {}, e.base64_payload))
        return NEXT

    def on_offline_message(self, mountpoint: str, client_id: str, qos: int, topic: str,
                           payload: bytes, retain: bool) -> None:
        self._notify("on_offline_message", lambda e: {
            "mountpoint": mountpoint or "", "client_id": client_id, "qos": qos,
            "topic": topic, "payload": payload_field(payload, e.base64_payload),
            "retain": bool(retain)})

    def _session_event(self, hook: str, mountpoint: str, client_id: str) -> None:
        self._notify(hook, lambda e: {"mountpoint": mountpoint or "", "client_id": client_id})

    def on_client_wakeup(self, mountpoint: str, client_id: str) -> None:
        self._session_event("on_client_wakeup", mountpoint, client_id)

    def on_client_offline(self, mountpoint: str, client_id: str) -> None:
        self._session_event("on_client_offline", mountpoint, client_id)

    def on_client_gone(self, mountpoint: str, client_id: str) -> None:
        self._session_event("on_client_gone", mountpoint, client_id)

    def on_session_expired(self, mountpoint: str, client_id: str) -> None:
        self._session_event("on_session_expired", mountpoint, client_id)
