"""``/api/v1/...`` (the vmq-admin commands over HTTP) and ``/api/v2/...``.

v1 (VerneMQ's ``vmq_http_mgmt_api``): the path words are the command words,
query items the arguments (``k=v``, ``--flag``, ``--f=v`` kept as they are);
the answer is the JSON writer's output.  Aliases: ``sessions`` -> ``session
show``, ``listeners`` -> ``listener show``, ``plugins`` -> ``plugin show``,
``cluster`` -> ``cluster status`` (which does not exist, as in VerneMQ).  A
command line that does not parse gives 400 with an empty body.

v2 (``vmq_http_v2_api``): ``client?client_id=&mountpoint=&topics`` and
``disconnect?client_id=&mountpoint=&cleanup``; anything else is 400
``invalid_command``.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_plus

from twisted.web.resource import Resource

from vmqtw.admin.commands import Admin
from vmqtw.admin.output import as_json

ALIASES = {"sessions": ["session", "show"], "listeners": ["listener", "show"],
           "plugins": ["plugin", "show"], "cluster": ["cluster", "status"]}
CORS = ((b"access-control-allow-origin", b"*"),
        (b"access-control-allow-methods", b"HEAD, GET"),
        (b"access-control-allow-headers", b"content-type, authorization"))


def query_items(request: Any) -> list[tuple[str, str | None]]:
    """The query items in order; a bare item has the value None."""
    _, _, query = request.uri.partition(b"?")
    items: list[tuple[str, str | None]] = []
    for part in query.decode("utf-8", "replace").split("&"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        items.append((unquote_plus(key), unquote_plus(value) if eq else None))
    return items


def command_line(words: list[str], items: list[tuple[str, str | None]]) -> list[str]:
    """``/api/v1`` path words and query items -> a vmq-admin command line."""
    if words == ["sessions"] or words[:1] != ["sessions"] and len(words) == 1 \
            and words[0] in ALIASES:
        words = ALIASES[words[0]]
    elif words[:1] == ["sessions"]:
        words = ["session"] + words[1:]
    argv = list(words)
    for key, value in items:
        argv.append(key if value is None else f"{key}={value}")
    return argv + ["--format=json"]


class ApiV1(Resource):
    isLeaf = True

    def __init__(self, admin: Admin) -> None:
        super().__init__()
        self.admin = admin

    def render_GET(self, request: Any) -> bytes:
        words = [w.decode("utf-8", "replace") for w in request.postpath if w]
        reply = self.admin.run(command_line(words, query_items(request)))
        request.setHeader(b"content-type", b"application/json")
        if reply.usage_error:
            request.setResponseCode(400)
            return b""
        return json.dumps(as_json(reply.elements) if reply.elements else []).encode()

    def render_OPTIONS(self, request: Any) -> bytes:
        for name, value in CORS:
            request.setHeader(name, value)
        return b""


class ApiV2(Resource):
    isLeaf = True

    def __init__(self, admin: Admin) -> None:
        super().__init__()
        self.admin = admin

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        words = [w.decode("utf-8", "replace") for w in request.postpath if w]
        args = dict(query_items(request))
        if words == ["client"] and args.get("client_id"):
            return json.dumps(self._client(args)).encode()
        if words == ["disconnect"] and args.get("client_id"):
            return json.dumps(self._disconnect(args)).encode()
        request.setResponseCode(400)
        return json.dumps("invalid_command").encode()

    def _session(self, args: dict[str, str | None]) -> Any:
        key = (args.get("mountpoint") or "", args["client_id"])
        return self.admin.broker.sessions.get(key)

    def _client(self, args: dict[str, str | None]) -> dict[str, Any]:
        session = self._session(args)
        if session is None:
            answer: dict[str, Any] = {"status": "unknown"}
        else:
            answer = {"status": "online" if session.conn is not None else "offline"}
        if "topics" in args:
            answer["topics"] = {} if session is None else {
                t: o.qos for t, o in session.subscriptions.items()}
        return answer

    def _disconnect(self, args: dict[str, str | None]) -> Any:
        argv = ["session", "disconnect", f"client-id={args['client_id']}"]
        if args.get("mountpoint"):
            argv.append(f"--mountpoint={args['mountpoint']}")
        if "cleanup" in args:
            argv.append("--cleanup")
        if self._session(args) is None:
            return {"status": "not_found"}
        reply = self.admin.run(argv)
        return {"status": "ok" if reply.code == 0 else "error"}
