"""VerneMQ's ``vmq_http_pub``: ``POST``/``PUT /restmqtt/api/v1/publish``.

Input, checked in this order: a ``topic`` header (then ``qos``, ``retain``,
``client_id``, ``user``, ``password``, ``user_properties`` headers, the body
is the payload); a ``topic`` query parameter (same names, no user
properties); else a JSON body ``{"topic", "payload", "qos", "retain",
"client_id", "user", "password", "user_properties"}`` where ``?encoding=
base64|plain`` may be the only query parameter.  Only ``application/json``
and ``application/octet-stream`` bodies are accepted.

The message goes through the broker's authorization chain: unless anonymous
access is on, ``auth_on_register`` (as an MQTT 3.1.1 clean session) must
accept the credentials - the request's (``on-behalf-of``, the default) or the
configured ones (``predefined``); ``auth_on_publish`` (3.1.1, retain false)
always runs, like for an MQTT client (VerneMQ skips it with anonymous access
on; we do not, so ACLs hold).  Modifiers may change topic, qos and
mountpoint, not the payload.  The size is checked against
``max_message_size`` before base64 decoding; the topic must be valid and not
start with ``$``.

Answers (text/plain): 200 ``Published``; 400 for bad input; 401
``Authentication failure.``; 403 ``Authorization failure.``; 413 ``Payload
too large.``.  Counters ``http_pub_published``, ``http_pub_api_error``,
``http_pub_auth_error`` are kept on the resource.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from vmqtw.auth.api import Error, Ok, RegisterRequest
from vmqtw.core.message import Message
from vmqtw.http.auth import header
from vmqtw.core.topics import TopicError, validate_topic_name
from vmqtw.logs import Logger

CONTENT_TYPES = ("application/json", "application/octet-stream")


class PubError(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


@dataclass(frozen=True)
class PubSettings:
    """``vmq_http_pub.*`` settings."""

    mode: str = "on-behalf-of"           # on-behalf-of | predefined | testMode
    user: str | None = None
    password: str | None = None
    client_id: str = "http-pub"
    mountpoint: str = ""


class HttpClient:
    """What the auth hooks see of an HTTP publisher."""

    def __init__(self, client_id: str, username: str | None, mountpoint: str,
                 peer: tuple[str, int]) -> None:
        self.client_id = client_id
        self.username = username
        self.mountpoint = mountpoint
        self.peer = peer
        self.persistent = False
        self.key = (mountpoint, client_id)


def _bool(value: Any) -> bool:
    """The retain flag: a JSON boolean, or one written in a header or the query."""
    if isinstance(value, str):
        try:
            value = json.loads(value.lower())
        except ValueError:
            pass
    if isinstance(value, bool):
        return value
    raise PubError(400, "Invalid retain flag. Must be true or false.")


def _qos(value: Any) -> int:
    try:
        qos = int(value)
    except (TypeError, ValueError):
        raise PubError(400, "Invalid QoS value. Must be 0, 1 or 2.") from None
    if qos not in (0, 1, 2) or isinstance(value, bool):
        raise PubError(400, "Invalid QoS value. Must be 0, 1 or 2.")
    return qos


class Publish(Resource):
    isLeaf = True
    log = Logger(namespace="vmqtw.http_pub")

    def __init__(self, broker: Any, authorizer: Any, settings: PubSettings | None = None
                 ) -> None:
        super().__init__()
        self.broker = broker
        self.authorizer = authorizer
        self.settings = settings or PubSettings()
        self.published = self.api_errors = self.auth_errors = 0

    def render_POST(self, request: Any) -> Any:
        request.setHeader(b"content-type", b"text/plain")
        try:
            fields = self._fields(request)
        except PubError as e:
            return self._fail(request, e)
        d = defer.maybeDeferred(self._publish, request, fields)
        d.addCallback(lambda _: self._done(request, 200, "Published"))
        d.addErrback(lambda f: self._failed(request, f))
        return NOT_DONE_YET

    render_PUT = render_POST

    def _fail(self, request: Any, e: PubError) -> bytes:
        if e.code in (401, 403):
            self.auth_errors += 1
        else:
            self.api_errors += 1
        request.setResponseCode(e.code)
        return str(e).encode()

    def _failed(self, request: Any, failure: Any) -> None:
        if failure.check(PubError):
            body = self._fail(request, failure.value)
        else:
            self.log.failure("http publish failed", failure)
            self.api_errors += 1
            request.setResponseCode(500)
            body = b"Internal error."
        self._finish(request, body)

    def _done(self, request: Any, code: int, text: str) -> None:
        self.published += 1
        request.setResponseCode(code)
        self._finish(request, text.encode())

    @staticmethod
    def _finish(request: Any, body: bytes) -> None:
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(body)
            request.finish()

    # -- input -------------------------------------------------------------------

    def _fields(self, request: Any) -> dict[str, Any]:
        ctype = (header(request, b"content-type") or "").split(";")[0].strip().lower()
        if ctype not in CONTENT_TYPES:
            raise PubError(415, "Unsupported content type.")
        body = request.content.read()
        args = {k.decode(): [v.decode("utf-8", "replace") for v in vs]
                for k, vs in request.args.items()}
        topic = header(request, b"topic")
        if topic is not None:
            if "topic" in args:
                raise PubError(400, "Parameters found in header as well as url-encoded")
            self._check_size(body)
            f: dict[str, Any] = {"topic": topic, "payload": body}
            for name in ("qos", "retain", "client_id", "user", "password", "user_properties"):
                value = header(request, name.encode())
                if value is not None:
                    f[name] = value
            if "user_properties" in f:
                f["user_properties"] = self._user_properties(f["user_properties"])
            return f
        if "topic" in args:
            f = {k: v[0] for k, v in args.items()
                 if k in ("topic", "qos", "retain", "client_id", "user", "password")}
            self._check_size(body)
            f["payload"] = body
            return f
        if args and (set(args) != {"encoding"} or args["encoding"][0] not in ("base64",
                                                                               "plain")):
            raise PubError(400, "Only encoding plain or base64 allows as URL parameter")
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise ValueError
        except ValueError:
            raise PubError(400, "Content is not a valid json") from None
        if "topic" not in doc:
            raise PubError(400, "Invalid topic")
        payload = doc.get("payload", "")
        if not isinstance(payload, str):
            raise PubError(400, "Content is not a valid json")
        self._check_size(payload.encode())
        encoding = args.get("encoding", ["plain"])[0]
        if encoding == "base64":
            try:
                doc["payload"] = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise PubError(400, "Unknown payload encoding") from None
        else:
            doc["payload"] = payload.encode()
        if "user_properties" in doc:
            doc["user_properties"] = self._user_properties(doc["user_properties"])
        return doc

    def _check_size(self, data: bytes) -> None:
        """``max_message_size`` (a limit of 1 or less means none), checked
        before any base64 decoding as VerneMQ does."""
        limit = self.broker.config.max_message_size
        if limit > 1 and len(data) > limit:
            raise PubError(413, "Payload too large.")

    @staticmethod
    def _user_properties(value: Any) -> list[tuple[str, str]]:
        try:
            items = json.loads(value) if isinstance(value, str) else value
            if not isinstance(items, list) or (items and not isinstance(items[0], dict)):
                raise ValueError
            first = items[0] if items else {}
            return [(str(k), str(v)) for k, v in first.items()]
        except ValueError:
            raise PubError(400, "User properties need to be a JSON array of objects") \
                from None

    # -- checks and publishing ------------------------------------------------------

    @defer.inlineCallbacks
    def _publish(self, request: Any, f: dict[str, Any]) -> Any:
        topic = f["topic"]
        if not isinstance(topic, str) or not topic or topic.startswith("$"):
            raise PubError(400, "Invalid topic")
        try:
            validate_topic_name(topic, self.broker.config.topic_max_depth)
        except TopicError:
            raise PubError(400, "Invalid topic") from None
        qos = _qos(f.get("qos", 0))
        retain = _bool(f.get("retain", False))
        s = self.settings
        if s.mode == "predefined":
            user, password, client_id = s.user, s.password, s.client_id
        else:
            user, password = f.get("user"), f.get("password")
            client_id = f.get("client_id") or s.client_id
        mountpoint = s.mountpoint
        peer = request.getClientAddress()
        client = HttpClient(str(client_id), user, mountpoint,
                            (getattr(peer, "host", ""), getattr(peer, "port", 0)))
        if s.mode != "testMode":
            register = RegisterRequest(
                peer=client.peer, mountpoint=mountpoint, client_id=client.client_id,
                username=user, password=password.encode() if password else None,
                clean_start=True, protocol_level=4, listener="http",
                listener_kind="http")
            result = yield self.authorizer.register(register)
            if isinstance(result, Error):
                raise PubError(401, "Authentication failure.")
        payload = f["payload"]
        verdict = self.authorizer.publish(client, topic, payload, qos, False)
        if isinstance(verdict, Error):
            raise PubError(403, "Authorization failure.")
        if isinstance(verdict, Ok) and verdict.modifiers:
            mods = verdict.modifiers
            if "payload" in mods and mods["payload"] != payload:
                raise PubError(403, "Authorization failure.")
            topic = mods.get("topic", topic)
            qos = _qos(mods.get("qos", qos))
            mountpoint = mods.get("mountpoint", mountpoint)
        properties = {"user_property": f["user_properties"]} \
            if f.get("user_properties") else None
        message = Message(topic, payload, qos, retain, properties)
        self.broker.publish(message, mountpoint)
        self.broker.flush()
