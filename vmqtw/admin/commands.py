"""The vmq-admin command set, as functions on a running broker.

``Admin.run(argv)`` takes the words after ``vmq-admin`` and returns a
``Reply``: the exit code and the elements to print (``vmqtw.admin.output``).
Bad commands and bad arguments are usage errors (exit code 1, the command's
usage on the output); nothing here raises into the caller.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from vmqtw import logs
from vmqtw.admin import output as out
from vmqtw.admin.apikeys import SCOPES, ApiKeyError, ApiKeys, format_expiry, parse_expiry
from vmqtw.admin.listeners import MQTT_KINDS, IListenerController, ListenerError
from vmqtw.admin.parse import Flag, Parsed, UsageError, bool_value, int_value, parse
from vmqtw.admin.trace import TraceError, Tracer
from vmqtw.codec import reasons
from vmqtw.metrics import DEFAULT_NODE, Metrics

Handler = Callable[["Admin", Parsed], list[out.Element]]


@dataclass
class Reply:
    """``code`` 0 (done) or 1; ``usage_error``: the command line itself was wrong."""

    code: int
    elements: list[out.Element] = field(default_factory=list)
    usage_error: bool = False
    #: the command goes on writing to the console (``trace client``)
    streaming: bool = False

    def render(self, fmt: str = "human") -> str:
        return out.render(self.elements, fmt)


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    handler: Handler
    usage: str
    keys: tuple[str, ...] = ()
    flags: tuple[Flag, ...] = ()
    any_flag: bool = False


COMMANDS: dict[tuple[str, ...], Command] = {}


def command(words: str, usage: str, keys: tuple[str, ...] = (), flags: tuple[Flag, ...] = (),
            any_flag: bool = False) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        key = tuple(words.split())
        COMMANDS[key] = Command(key, handler, usage, keys, flags, any_flag)
        return handler
    return register


def _done() -> list[out.Element]:
    return [out.Text("Done")]


class Admin:
    """The command set of one broker.

    ``listeners`` provides ``IListenerController``; ``plugins`` is the
    service's ``[(name, plugin)]`` list; ``apikeys`` an ``ApiKeys``.
    """

    #: The broker's :class:`~vmqtw.cluster.node.ClusterNode`, None for a single node
    #: (``cluster`` commands, :mod:`vmqtw.admin.cluster_cmds`).
    cluster: Any = None

    def __init__(self, broker: Any, metrics: Metrics | None = None,
                 listeners: IListenerController | None = None,
                 apikeys: ApiKeys | None = None,
                 plugins: Iterable[tuple[str, Any]] = (),
                 node: str = DEFAULT_NODE, clock: Callable[[], float] = time.time,
                 tracer: Tracer | None = None) -> None:
        self.broker = broker
        self.tracer = tracer if tracer is not None else Tracer(clock)
        #: where a streaming command writes while it runs (see ``run``)
        self.console: Any = None
        self._streaming = False
        self.metrics = metrics
        self.listeners = listeners
        self.apikeys = apikeys if apikeys is not None else ApiKeys(None)
        self.plugins = list(plugins)
        self.node = node
        self.clock = clock

    def run(self, argv: list[str], console: Any = None) -> Reply:
        """Run one command line; never raises.  ``console`` (with ``write(text)``,
        ``end()`` and a ``trace`` attribute) lets a command go on writing after
        it returned: the reply then has ``streaming`` set."""
        self.console, self._streaming = console, False
        try:
            cmd, rest = self.lookup([a for a in argv if a != "--format=json"])
            parsed = parse(rest, cmd.keys, cmd.flags, cmd.any_flag, cmd.usage)
            elements = cmd.handler(self, parsed)
            return Reply(0, elements, streaming=self._streaming)
        except UsageError as e:
            text = str(e)
            if e.usage:
                text += "\n" + e.usage
            return Reply(1, [out.Text(text)], usage_error=True)
        except CommandError as e:
            return Reply(1, [out.Text(str(e))])
        finally:
            self.console = None

    @staticmethod
    def lookup(argv: list[str]) -> tuple[Command, list[str]]:
        """The command named by the leading words of ``argv`` and the rest."""
        words = []
        for token in argv:
            if token.startswith("-") or "=" in token:
                break
            words.append(token)
        for n in range(len(words), 0, -1):
            cmd = COMMANDS.get(tuple(words[:n]))
            if cmd is not None:
                if n < len(words):
                    raise UsageError(f"Invalid argument: {words[n]}", cmd.usage)
                return cmd, argv[n:]
        raise UsageError("Unknown command: " + (" ".join(words) or "(none)"),
                         usage_of(tuple(words[:1])))


class CommandError(Exception):
    """The command ran but failed: the message is printed, the exit code is 1."""


def usage_of(prefix: tuple[str, ...]) -> str:
    """The usage lines of every command under ``prefix`` (all when unknown)."""
    matching = [c for k, c in COMMANDS.items() if k[:len(prefix)] == prefix] or \
        list(COMMANDS.values())
    return "Usage:\n" + "".join(f"  {c.usage}\n" for c in matching).rstrip("\n")


# -- sessions ------------------------------------------------------------------------

DEFAULT_SESSION_COLUMNS = ("client_id", "is_online", "mountpoint", "peer_host", "peer_port",
                           "user")
SESSION_COLUMNS = ("node", "mountpoint", "client_id", "queue_size", "is_offline",
                   "is_online", "statename", "deliver_mode", "offline_messages",
                   "online_messages", "num_sessions", "clean_session", "is_plugin", "user",
                   "peer_host", "peer_port", "protocol", "waiting_acks", "topic", "qos",
                   "rap", "no_local")
SUBSCRIPTION_COLUMNS = ("topic", "qos", "rap", "no_local")


def _session_rows(admin: Admin, session: Any) -> list[dict[str, Any]]:
    conn = session.conn
    queued = len(session.queue)
    peer = session.peer or (None, None)
    row = {
        "node": admin.node, "mountpoint": session.mountpoint, "client_id": session.client_id,
        "queue_size": queued + len(session.inflight), "is_offline": conn is None,
        "is_online": conn is not None, "statename": "online" if conn is not None else "offline",
        "deliver_mode": "fanout", "offline_messages": queued if conn is None else 0,
        "online_messages": queued if conn is not None else 0,
        "num_sessions": 1 if conn is not None else 0, "clean_session": not session.persistent,
        "is_plugin": False, "user": session.username, "peer_host": peer[0],
        "peer_port": peer[1],
        "protocol": getattr(conn, "protocol_level", None) if conn is not None else None,
        "waiting_acks": len(session.inflight),
    }
    if not session.subscriptions:
        return [dict(row, topic=None, qos=None, rap=None, no_local=None)]
    return [dict(row, topic=topic, qos=opts.qos, rap=opts.retain_as_published,
                 no_local=opts.no_local)
            for topic, opts in session.subscriptions.items()]


def _matches(value: Any, wanted: str) -> bool:
    text = out.cell(value)
    if wanted.startswith("~"):
        try:
            return re.search(wanted[1:], text) is not None
        except re.error as e:
            raise UsageError(f"Invalid regex {wanted[1:]!r}: {e}",
                             COMMANDS[("session", "show")].usage) from None
    return text == wanted


@command("session show", "session show [--limit=<NumberOfResults>] [--rowtimeout=<ms>] "
         "[--<column>] [--<column>=<value>|~<regex>]",
         flags=(Flag("limit", takes_value=True), Flag("rowtimeout", takes_value=True)),
         any_flag=True)
def session_show(admin: Admin, p: Parsed) -> list[out.Element]:
    limit = int_value(p.flag("limit", "100"), "--limit", COMMANDS[("session", "show")].usage, 1)
    columns: list[str] = []
    filters: dict[str, str] = {}
    for name, value in p.items:
        if name in ("limit", "rowtimeout"):
            continue
        if name not in SESSION_COLUMNS:
            raise UsageError(f"Invalid flag: --{name}", COMMANDS[("session", "show")].usage)
        if value is None:
            columns.append(name)
        else:
            filters[name] = value
    for value in filters.values():
        _matches("", value)  # a bad regex is a usage error even with no sessions
    shown = sorted(columns or DEFAULT_SESSION_COLUMNS)
    per_topic = any(c in SUBSCRIPTION_COLUMNS for c in (*shown, *filters))
    rows: list[dict[str, Any]] = []
    for session in list(admin.broker.sessions.values()):
        candidates = _session_rows(admin, session)
        if not per_topic:
            candidates = candidates[:1]
        for row in candidates:
            if all(_matches(row[k], v) for k, v in filters.items()):
                rows.append({c: row[c] for c in shown})
                if len(rows) >= limit:
                    return [out.Table(rows)]
    return [out.Table(rows)]


def _find_session(admin: Admin, client_id: str, mountpoint: str) -> Any:
    return admin.broker.sessions.get((mountpoint, client_id))


@command("session disconnect", "session disconnect client-id=<ClientId> "
         "[-m|--mountpoint=<Mountpoint>] [-c|--cleanup]", keys=("client-id",),
         flags=(Flag("mountpoint", "m", True), Flag("cleanup", "c")))
def session_disconnect(admin: Admin, p: Parsed) -> list[out.Element]:
    client_id = _required(p, "client-id", ("session", "disconnect"))
    session = _find_session(admin, client_id, p.flag("mountpoint", ""))
    if session is not None:
        _disconnect(admin, session, "cleanup" in p.flags)
    return _done()


def _disconnect(admin: Admin, session: Any, cleanup: bool) -> None:
    broker = admin.broker
    conn = session.conn
    if conn is not None:
        conn.close(reasons.ADMINISTRATIVE_ACTION)
    if cleanup and broker.sessions.get(session.key) is session:
        if session.conn is not None:
            session.detach()
        broker.discard_session(session, "gone")
    broker.flush()


@command("disconnect clients", "disconnect clients client-ids=<id>,<id>...",
         keys=("client-ids",), flags=(Flag("mountpoint", "m", True), Flag("cleanup", "c")))
def disconnect_clients(admin: Admin, p: Parsed) -> list[out.Element]:
    ids = _required(p, "client-ids", ("disconnect", "clients")).split(",")
    for client_id in ids:
        session = _find_session(admin, client_id.strip(), p.flag("mountpoint", ""))
        if session is not None:
            _disconnect(admin, session, "cleanup" in p.flags)
    return _done()


@command("session unsubscribe", "session unsubscribe client-id=<ClientId> topic=<Topic> "
         "[-m|--mountpoint=<Mountpoint>]", keys=("client-id", "topic"),
         flags=(Flag("mountpoint", "m", True),))
def session_unsubscribe(admin: Admin, p: Parsed) -> list[out.Element]:
    cmd = ("session", "unsubscribe")
    session = _find_session(admin, _required(p, "client-id", cmd), p.flag("mountpoint", ""))
    topic = _required(p, "topic", cmd)
    if session is None or not admin.broker.unsubscribe(session, topic):
        return [out.Text("Not successfull")]
    return _done()


def _required(p: Parsed, key: str, cmd: tuple[str, ...]) -> str:
    value = p.args.get(key)
    if not value:
        raise UsageError(f"Missing argument: {key}", COMMANDS[cmd].usage)
    return value


# -- retained messages -------------------------------------------------------------------

@command("retain show", "retain show [--limit=<NumberOfResults>] [--payload] [--topic] "
         "[--mountpoint] [--<column>=<value>]", flags=(
             Flag("limit", takes_value=True), Flag("rowtimeout", takes_value=True),
             Flag("payload"), Flag("topic"), Flag("mountpoint")))
def retain_show(admin: Admin, p: Parsed) -> list[out.Element]:
    usage = COMMANDS[("retain", "show")].usage
    limit = int_value(p.flag("limit", "100"), "--limit", usage, 1)
    columns = [k for k, v in p.items if v is None]
    filters = {k: v for k, v in p.items if v is not None and k not in ("limit", "rowtimeout")}
    shown = sorted(columns) if columns else ["payload", "topic"]
    rows: list[dict[str, Any]] = []
    items = getattr(admin.broker.store, "retained_items", None)
    for mountpoint, topic, message in (items() if items is not None else ()):
        row = {"mountpoint": mountpoint, "topic": topic,
               "payload": message.payload.decode("utf-8", "replace")}
        if all(_matches(row[k], v) for k, v in filters.items()):
            rows.append({c: row[c] for c in shown})
            if len(rows) >= limit:
                break
    return [out.Table(rows)]


@command("retain delete", "retain delete -t|--topic=<Topic> [-m|--mountpoint=<Mountpoint>]",
         flags=(Flag("topic", "t", True), Flag("mountpoint", "m", True)))
def retain_delete(admin: Admin, p: Parsed) -> list[out.Element]:
    topic = p.flag("topic")
    if not topic:
        raise UsageError("Missing flag: --topic", COMMANDS[("retain", "delete")].usage)
    admin.broker.store.retained_set(p.flag("mountpoint", ""), topic, None)
    return _done()


# -- metrics ---------------------------------------------------------------------------------

@command("metrics show", "metrics show [-d|--with-descriptions] [-a|--aggregate=true|false] "
         "[--<label>=<value>]", flags=(Flag("with-descriptions", "d"),
                                      Flag("aggregate", "a", True)), any_flag=True)
def metrics_show(admin: Admin, p: Parsed) -> list[out.Element]:
    metrics = _metrics(admin)
    usage = COMMANDS[("metrics", "show")].usage
    described = "with-descriptions" in p.flags
    aggregate = "aggregate" not in p.flags or bool_value(p.flag("aggregate"), "--aggregate",
                                                          usage)
    wanted = {k: v for k, v in p.flags.items() if k not in ("with-descriptions", "aggregate")}
    if any(v is None for v in wanted.values()):
        raise UsageError("Label flags need a value (--<label>=<value>)", usage)
    lines: list[str] = []
    totals: dict[str, tuple[str, float]] = {}
    for typ, name, labels, value in metrics.samples():
        label_map = dict(labels)
        if any(label_map.get(k) != v for k, v in wanted.items()):
            continue
        if aggregate:
            prev = totals.get(name)
            totals[name] = (typ, value + (prev[1] if prev else 0))
            continue
        if described:
            lines.append(f"# {metrics.describe(name)[1]}")
        suffix = "".join(f".{k}.{v}" for k, v in labels)
        lines.append(f"{typ}.{name}{suffix} = {_int(value)}")
    for name, (typ, value) in totals.items():
        if described:
            lines.append(f"# {metrics.describe(name)[1]}")
        lines.append(f"{typ}.{name} = {_int(value)}")
    return [out.Text("\n".join(lines))]


def _int(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@command("metrics reset", "metrics reset")
def metrics_reset(admin: Admin, p: Parsed) -> list[out.Element]:
    _metrics(admin).reset()
    return _done()


def _metrics(admin: Admin) -> Metrics:
    if admin.metrics is None:
        raise CommandError("metrics are not enabled")
    return admin.metrics


# -- listeners ---------------------------------------------------------------------------------

_ADDR = ("address", "port")
_LISTENER_OPTIONS = (
    "mountpoint", "nr_of_acceptors", "max_connections", "allowed_protocol_versions",
    "proxy_protocol", "cafile", "certfile", "keyfile", "tls_version", "require_certificate",
    "use_identity_as_username", "allow_anonymous_override", "websocket_path", "http_modules")


@command("listener show", "listener show [-t|--tls] [-m|--mqtt]",
         flags=(Flag("tls", "t"), Flag("mqtt", "m")))
def listener_show(admin: Admin, p: Parsed) -> list[out.Element]:
    rows = []
    for r in _controller(admin).rows():
        row = {k: r[k] for k in ("type", "status", "address")}
        row.update(port=str(r["port"]), mountpoint=r["mountpoint"], max_conns=r["max_conns"],
                   active_conns=r["active_conns"], all_conns=r["all_conns"])
        if "tls" in p.flags:
            o = r["options"]
            row.update(tls_version=o.get("tls_version", ""), certfile=o.get("certfile", ""),
                       cafile="", keyfile=o.get("keyfile", ""),
                       require_certificate=o.get("require_certificate", "false"),
                       use_identity_as_username=o.get("use_identity_as_username", "false"),
                       psk_support=o.get("psk_support", "false"), pskfile=o.get("pskfile", ""))
        if "mqtt" in p.flags:
            row.update(allowed_protocol_versions=r.get("allowed_protocol_versions", ""),
                       allow_anonymous_override=r.get("allow_anonymous_override", False))
        rows.append(row)
    return [out.Table(rows)]


def _controller(admin: Admin) -> IListenerController:
    if admin.listeners is None:
        raise CommandError("no listener controller")
    return admin.listeners


def _address(p: Parsed, cmd: tuple[str, ...]) -> tuple[str, int]:
    address = _required(p, "address", cmd)
    port = int_value(_required(p, "port", cmd), "port", COMMANDS[cmd].usage)
    return address, port


def _listener_verb(verb: str, call: Callable[[IListenerController, str, int, Parsed], None]
                   ) -> Handler:
    def handler(admin: Admin, p: Parsed) -> list[out.Element]:
        address, port = _address(p, ("listener", verb))
        try:
            call(_controller(admin), address, port, p)
        except ListenerError as e:
            raise CommandError(str(e)) from None
        return _done()
    return handler


def _start(c: IListenerController, address: str, port: int, p: Parsed) -> None:
    ssl, ws, http = ("ssl" in p.flags), ("websocket" in p.flags), ("http" in p.flags)
    kind = ("https" if ssl else "http") if http else \
        ("wss" if ssl and ws else "ws" if ws else "ssl" if ssl else "tcp")
    options = {k: v for k, v in p.flags.items() if k in _LISTENER_OPTIONS}
    c.start(address, port, {"kind": kind, **options})


command("listener start", "listener start address=<IP> port=<Port> [--ssl] [--websocket] "
        "[--http [--http_modules=<m1,m2>]] [-m|--mountpoint=<Mountpoint>] "
        "[--max_connections=<N>|infinity] ...",
        keys=_ADDR, flags=(Flag("ssl"), Flag("websocket", "ws"), Flag("http"),
                           Flag("mountpoint", "m", True),
                           *(Flag(o, takes_value=True) for o in _LISTENER_OPTIONS[1:])))(
    _listener_verb("start", _start))
command("listener stop", "listener stop address=<IP> port=<Port> [-k|--kill_sessions]",
        keys=_ADDR, flags=(Flag("kill_sessions", "k"),))(_listener_verb(
            "stop", lambda c, a, port, p: c.stop(a, port, "kill_sessions" in p.flags)))
command("listener restart", "listener restart address=<IP> port=<Port>", keys=_ADDR)(
    _listener_verb("restart", lambda c, a, port, p: c.restart(a, port)))
command("listener delete", "listener delete address=<IP> port=<Port>", keys=_ADDR)(
    _listener_verb("delete", lambda c, a, port, p: c.delete(a, port)))


# -- plugins, logs -----------------------------------------------------------------------

def plugin_hooks(plugin: Any) -> list[str]:
    """The hook names ``plugin`` provides (from its zope interfaces)."""
    from zope.interface import providedBy
    hooks: list[str] = []
    for iface in providedBy(plugin).flattened():
        for name in iface.names():
            if callable(getattr(plugin, name, None)) and name not in hooks and \
                    (name.startswith(("auth_on_", "on_")) or name == "on_auth"):
                hooks.append(name)
    return sorted(hooks)


@command("plugin show", "plugin show [--plugin=<PluginName>] [--hook=<Hook>] [--internal]",
         flags=(Flag("plugin", takes_value=True), Flag("hook", takes_value=True),
                Flag("internal")))
def plugin_show(admin: Admin, p: Parsed) -> list[out.Element]:
    rows = []
    for name, plugin in admin.plugins:
        if p.flag("plugin") not in (None, name):
            continue
        hooks = plugin_hooks(plugin)
        if p.flag("hook") is not None and p.flag("hook") not in hooks:
            continue
        cls = type(plugin)
        rows.append({"Plugin": name, "Type": "application", "Hook(s)": "\n".join(hooks),
                     "M:F/A": "\n".join(f"{cls.__module__}.{cls.__qualname__}:{h}"
                                        for h in hooks)})
    return [out.Table(rows)]


LOG_LEVELS = ("debug", "info", "warn", "warning", "error", "critical")


def current_log_level() -> str:
    for name in ("debug", "info", "warn", "error", "critical"):
        if logs._NAMES[name] in logs._enabled:
            return name
    return "none"


@command("log show config", "log show config")
def log_show(admin: Admin, p: Parsed) -> list[out.Element]:
    return [out.Table([{"logger": "default", "level": current_log_level(),
                        "type": "standard", "file": ""}])]


@command("log level", "log level logger=<Logger> level=<Level>", keys=("logger", "level"))
def log_level(admin: Admin, p: Parsed) -> list[out.Element]:
    level = _required(p, "level", ("log", "level"))
    if level not in LOG_LEVELS:
        raise UsageError(f"Invalid log level: {level}", COMMANDS[("log", "level")].usage)
    logs.set_level(level)
    return _done()


# -- traces ------------------------------------------------------------------------------

@command("trace client", "trace client client-id=<ClientId> [-m|--mountpoint=<Mountpoint>] "
         "[--rate-max=10] [--rate-interval=100] [--trunc-payload=200]", keys=("client-id",),
         flags=(Flag("mountpoint", "m", True), Flag("rate-max", takes_value=True),
                Flag("rate-interval", takes_value=True),
                Flag("trunc-payload", takes_value=True)))
def trace_client(admin: Admin, p: Parsed) -> list[out.Element]:
    cmd = ("trace", "client")
    usage = COMMANDS[cmd].usage
    client_id = _required(p, "client-id", cmd)
    mountpoint = p.flag("mountpoint", "")
    rate_max = int_value(p.flag("rate-max", "10"), "--rate-max", usage, 1)
    interval = int_value(p.flag("rate-interval", "100"), "--rate-interval", usage, 1)
    trunc = int_value(p.flag("trunc-payload", "200"), "--trunc-payload", usage, 0)
    console = admin.console
    if console is None:
        raise CommandError("trace client needs the vmq-admin console")
    try:
        console.trace = admin.tracer.start(client_id, mountpoint, console.write, console.end,
                                           rate_max, interval, trunc)
    except TraceError as e:
        raise CommandError(str(e)) from None
    admin._streaming = True
    session = _find_session(admin, client_id, mountpoint)
    online = 1 if session is not None and session.conn is not None else 0
    return [out.Text(f'Starting trace for {online} existing sessions for client '
                     f'"{client_id}"')]


@command("trace stop_all", "trace stop_all")
def trace_stop_all(admin: Admin, p: Parsed) -> list[out.Element]:
    admin.tracer.stop_all()
    return _done()


# -- api keys --------------------------------------------------------------------------

def _expiry(p: Parsed) -> float | None:
    text = p.args.get("expires")
    return parse_expiry(text) if text else None


@command("api-key create", "api-key create [scope=<Scope>] [expires=<YYYY-MM-DDTHH:MM:SS>]",
         keys=("scope", "expires"))
def api_key_create(admin: Admin, p: Parsed) -> list[out.Element]:
    try:
        return [out.Text(admin.apikeys.create(p.args.get("scope", "mgmt"), _expiry(p)))]
    except ApiKeyError as e:
        raise CommandError(f"{{error,{e}}}") from None


@command("api-key add", "api-key add key=<Key> [scope=<Scope>] "
         "[expires=<YYYY-MM-DDTHH:MM:SS>]", keys=("key", "scope", "expires"))
def api_key_add(admin: Admin, p: Parsed) -> list[out.Element]:
    key = _required(p, "key", ("api-key", "add"))
    try:
        admin.apikeys.add(key, p.args.get("scope", "mgmt"), _expiry(p))
    except ApiKeyError as e:
        raise CommandError(f"{{error,{e}}}") from None
    return [out.Text("ok")]


@command("api-key delete", "api-key delete key=<Key> [scope=<Scope>]", keys=("key", "scope"))
def api_key_delete(admin: Admin, p: Parsed) -> list[out.Element]:
    key = _required(p, "key", ("api-key", "delete"))
    try:
        admin.apikeys.delete(key, p.args.get("scope", "mgmt"))
    except ApiKeyError as e:
        raise CommandError(f"{{error,{e}}}") from None
    return [out.Text("ok")]


@command("api-key show", "api-key show [scope=<Scope>|all]", keys=("scope",))
def api_key_show(admin: Admin, p: Parsed) -> list[out.Element]:
    scope = p.args.get("scope", "all")
    if scope != "all" and scope not in SCOPES:
        raise UsageError(f"Invalid scope: {scope}", COMMANDS[("api-key", "show")].usage)
    now = admin.clock()
    rows = [{"Key": k.key, "Scope": k.scope, "Expires (UTC)": format_expiry(k.expires),
             "has expired": k.expired(now)}
            for k in admin.apikeys.show(None if scope == "all" else scope)]
    return [out.Table(rows)]


# ``cluster show|join|leave`` live in their own module (registered on import).
from vmqtw.admin import cluster_cmds  # noqa: E402,F401

__all__ = ["Admin", "Reply", "COMMANDS", "CommandError", "MQTT_KINDS"]
