"""A real webhook service for the tests: twisted.web on 127.0.0.1, port 0.

Each path answers through a handler ``body -> answer``; an answer is a JSON
value (sent with status 200), a ``Reply`` (status, headers, raw bytes), or a
Deferred firing with either (a slow endpoint).  Every request is recorded with
its path, headers and decoded body.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer, reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

__all__ = ["Reply", "Recorded", "WebhookService", "OK_ANSWER", "NEXT_ANSWER"]

OK_ANSWER = {"result": "ok"}
NEXT_ANSWER = {"result": "next"}


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"result": "ok"}'
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    path: str
    hook: str | None
    content_type: str | None
    body: Any
    raw: bytes
    peer_port: int


class _Hooks(Resource):
    isLeaf = True

    def __init__(self, service: "WebhookService") -> None:
        super().__init__()
        self.service = service

    def render_POST(self, request: Any) -> Any:
        raw = request.content.read()
        path = request.path.decode()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.service.requests.append(Recorded(
            path, (request.getHeader(b"vernemq-hook") or b"").decode() or None,
            (request.getHeader(b"content-type") or b"").decode() or None,
            body, raw, request.getClientAddress().port))
        waiter = self.service.waiters.pop(path, None)
        handler = self.service.routes.get(path, lambda b: OK_ANSWER)
        answer = handler(body)
        if waiter is not None:
            waiter.callback(body)
        if isinstance(answer, defer.Deferred):
            finished = request.notifyFinish()
            answer.addCallback(self._send, request)
            finished.addErrback(lambda _: answer.cancel())
            answer.addErrback(lambda _: None)
            return NOT_DONE_YET
        return self._send(answer, request, finish=False)

    def _send(self, answer: Any, request: Any, finish: bool = True) -> Any:
        reply = answer if isinstance(answer, Reply) else \
            Reply(body=json.dumps(answer).encode())
        request.setResponseCode(reply.status)
        request.setHeader(b"content-type", b"application/json")
        for name, value in reply.headers.items():
            request.setHeader(name.encode(), value.encode())
        if not finish:
            return reply.body
        request.write(reply.body)
        request.finish()
        return None


class WebhookService:
    """Start with ``listen(testcase)``; the port is closed when the test ends."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[Any], Any]] = {}
        self.requests: list[Recorded] = []
        self.waiters: dict[str, defer.Deferred[Any]] = {}
        self.site = Site(_Hooks(self))
        self.site.noisy = False
        self.port: Any = None
        self.port_number = 0

    def listen(self, testcase: Any) -> "WebhookService":
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.port_number = self.port.getHost().port
        testcase.addCleanup(self.stop)
        return self

    def stop(self) -> "defer.Deferred[Any]":
        """Stop listening (again is fine); the URL then refuses connections."""
        if not self.port.connected:
            return defer.succeed(None)
        return defer.maybeDeferred(self.port.stopListening)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port_number}{path}"

    def route(self, path: str, handler: Callable[[Any], Any] | Any) -> None:
        """Answer ``path`` with ``handler(body)`` (or a constant answer)."""
        self.routes[path] = handler if callable(handler) else (lambda b: handler)

    def next_request(self, path: str) -> "defer.Deferred[Any]":
        """Fires with the body of the next request to ``path``."""
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiters[path] = d
        return d

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.path == path]
