"""
Parse a VerneMQ-style configuration file into frozen, typed objects.

The format is cuttlefish's flat ``key = value`` file (``vernemq.conf``)::

    # a comment
    allow_anonymous = off
    listener.max_connections = 10000
    listener.tcp.default = 127.0.0.1:1883
    listener.tcp.default.mountpoint = site-a/
    plugins.vmq_passwd = on
    vmq_passwd.password_file = /etc/vmqtw/vmq.passwd

Rules:

- one ``key = value`` per line, split on the first ``=``; key and value are
  stripped of surrounding whitespace.  Lines whose first non-blank character is
  ``#`` are comments.  There are no inline comments: ``x = 1 # one`` has the
  value ``1 # one`` (which then fails validation for an integer key).
- a key given twice: the later line wins (as in cuttlefish).  Every line is
  still validated on its own, so a bad value is reported even when a later line
  overrides it.
- listener settings resolve named -> protocol -> root -> built-in default
  (see L{REGISTRY} and L{_resolve_option}).

Every problem raises L{ConfigError} naming the file, the line and the key.  When
a file has several problems, the one on the earliest line is reported.

Nothing here binds sockets or reads other files; that is the daemon's job.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

__all__ = [
    "ConfigError",
    "Address",
    "ListenerConfig",
    "PluginConfig",
    "BrokerConfig",
    "ListenerOption",
    "GlobalKey",
    "REGISTRY",
    "GLOBAL_KEYS",
    "LISTENER_KINDS",
    "BUILTIN_PLUGINS",
    "split_list",
    "parse",
    "load",
    "describe_listeners",
]


# --------------------------------------------------------------------------
# Errors and result types
# --------------------------------------------------------------------------


class ConfigError(Exception):
    """
    A problem with the configuration.

    C{str(e)} is C{"FILE:LINE: KEY: MESSAGE"}, or C{"FILE: MESSAGE"} when the
    problem is not tied to one line (C{line == 0}), e.g. a missing file.
    """

    def __init__(self, file: str, line: int, key: str, message: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}: {self.key}: {self.message}"
        if self.key:
            return f"{self.file}: {self.key}: {self.message}"
        return f"{self.file}: {self.message}"


@dataclass(frozen=True)
class Address:
    """
    Where a listener binds: an IP address and port, or a unix socket path.

    C{host} is normalised (C{str(ipaddress.ip_address(...))}) and is C{None}
    for a unix socket, whose C{port} is always 0.
    """

    host: str | None
    port: int
    path: str | None = None
    #: A Twisted endpoint description (``tcp:1883``, ``unix:/run/x.sock``,
    #: ``systemd:domain=INET:index=0``, ``proxy:tcp:1883``...), else None.
    endpoint: str | None = None

    def __str__(self) -> str:
        if self.endpoint is not None:
            return self.endpoint
        if self.path is not None:
            return f"local:{self.path}"
        if self.host is not None and ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _empty_mapping() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class ListenerConfig:
    """
    One resolved listener.

    Typed fields hold the effective values after inheritance.  For options
    that do not exist for this listener's kind (e.g. C{mountpoint} on an
    C{http} listener) the typed field holds the neutral "off" value
    (C{''}, C{0}, C{False}, C{frozenset()}).

    C{options} has every resolved option that applies to this kind and has a
    value (set in the file, inherited, or a built-in default) as the raw string
    from the file, so later features can read (and validate) their own options.
    """

    kind: str
    name: str
    address: Address
    max_connections: int | None
    nr_of_acceptors: int
    mountpoint: str
    max_connection_lifetime: int
    allowed_protocol_versions: frozenset[int]
    allow_anonymous_override: bool
    proxy_protocol: bool
    proxy_protocol_use_cn_as_username: bool
    options: Mapping[str, str] = field(default_factory=_empty_mapping, hash=False)
    source: tuple[str, int] = ("<config>", 0)
    option_sources: Mapping[str, tuple[str, int]] = field(
        default_factory=_empty_mapping, hash=False, compare=False, repr=False
    )

    @property
    def key(self) -> str:
        """The declaring key, e.g. C{'listener.tcp.default'}."""
        return f"listener.{self.kind}.{self.name}"

    def option_source(self, opt: str) -> tuple[str, int]:
        """
        Where the effective value of C{opt} came from: C{(file, line)}, with
        line 0 for a built-in default (or an option that is not set).
        """
        return self.option_sources.get(opt, (self.source[0], 0))


@dataclass(frozen=True)
class PluginConfig:
    name: str
    enabled: bool
    priority: int | None
    path: str | None
    source: tuple[str, int]


@dataclass(frozen=True)
class BrokerConfig:
    path: str
    listeners: tuple[ListenerConfig, ...]
    allow_anonymous: bool = False
    max_client_id_size: int = 100
    max_message_size: int = 0
    max_inflight_messages: int = 20
    max_online_messages: int = 1000
    max_offline_messages: int = 1000
    retry_interval: int = 20
    mqtt_connect_timeout: int = 5000
    persistent_client_expiration: int | None = None
    topic_max_depth: int = 10
    upgrade_outgoing_qos: bool = False
    max_subscriptions_per_client: int = 0
    disconnect_on_unauthorized_publish_v3: bool = False
    suppress_lwt_on_session_takeover: bool = False
    shared_subscription_policy: str = "prefer_local"
    queue_type: str = "fifo"
    receive_max_client: int = 65535
    receive_max_broker: int = 65535
    topic_alias_max_client: int = 0
    topic_alias_max_broker: int = 0
    max_last_will_delay: int | None = None
    # Our own key (VerneMQ has none): cap for MQTT 5.0 keep alive, announced
    # as Server Keep Alive; 0 = no cap.
    max_keep_alive: int = 0
    max_ws_frame_size: int = 268435456
    crl_refresh_interval: int = 60000
    log_level: str = "info"
    plugins: Mapping[str, PluginConfig] = field(
        default_factory=_empty_mapping, hash=False
    )
    plugin_settings: Mapping[str, Mapping[str, str]] = field(
        default_factory=_empty_mapping, hash=False
    )
    extra: Mapping[str, str] = field(default_factory=_empty_mapping, hash=False)
    key_sources: Mapping[str, tuple[str, int]] = field(
        default_factory=_empty_mapping, hash=False, compare=False, repr=False
    )

    def source(self, key: str) -> tuple[str, int]:
        """
        Where C{key} was set: C{(file, line)}; line 0 when the key is not in
        the file (its built-in default is in effect).
        """
        return self.key_sources.get(key, (self.path, 0))


# --------------------------------------------------------------------------
# Value validators.  Each takes the raw string and returns the typed value or
# raises _Invalid(message).
# --------------------------------------------------------------------------


class _Invalid(ValueError):
    pass


Validator = Callable[[str], Any]

_INT_RE = re.compile(r"-?[0-9]+\Z")


def _bool(raw: str) -> bool:
    if raw in ("on", "true"):
        return True
    if raw in ("off", "false"):
        return False
    raise _Invalid(f"expected on or off, got {raw!r}")


def _str(raw: str) -> str:
    return raw


def _int(
    lo: int | None = None,
    hi: int | None = None,
    *,
    inherit: bool = False,
    infinity: bool = False,
) -> Validator:
    """
    An integer in [lo, hi].  With C{inherit}, -1 is also accepted (meaning
    "inherit from the level above"; the validator returns -1).  With
    C{infinity}, the word C{infinity} is accepted and returned as C{None}.
    """
    alts = [a for a, on in (("-1", inherit), ("infinity", infinity)) if on]

    def choices(first: str) -> str:
        items = [first, *alts]
        if len(items) == 1:
            return first
        return ", ".join(items[:-1]) + " or " + items[-1]

    # not a number at all: "an integer, -1 or infinity"
    what = choices("an integer")
    # a number out of range: "an integer >= 1 or -1"
    if lo is not None and hi is not None:
        rng = choices(f"an integer between {lo} and {hi}")
    elif lo is not None:
        rng = choices(f"an integer >= {lo}")
    elif hi is not None:
        rng = choices(f"an integer <= {hi}")
    else:
        rng = what

    def check(raw: str) -> int | None:
        if infinity and raw == "infinity":
            return None
        if not _INT_RE.match(raw):
            raise _Invalid(f"expected {what}, got {raw!r}")
        value = int(raw)
        if inherit and value == -1:
            return -1
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise _Invalid(f"expected {rng}, got {raw!r}")
        return value

    return check


def _enum(*choices: str) -> Validator:
    def check(raw: str) -> str:
        if raw not in choices:
            raise _Invalid(f"expected one of {', '.join(choices)}, got {raw!r}")
        return raw

    return check


def split_list(raw: str) -> tuple[str, ...]:
    """
    Split a list value written as C{[a, b]} or C{a,b} (the forms VerneMQ
    accepts for C{auth_plugins}, C{eccs}, C{http_modules},
    C{allowed_protocol_versions}...) into its stripped, non-empty items.
    """
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return tuple(item.strip() for item in text.split(",") if item.strip())


_PROTOCOL_VERSIONS = (3, 4, 5, 131, 132)


def _protocol_versions(raw: str) -> frozenset[int]:
    items = split_list(raw)
    ok = bool(items) and all(
        _INT_RE.match(i) and int(i) in _PROTOCOL_VERSIONS for i in items
    )
    if not ok:
        allowed = ", ".join(str(v) for v in _PROTOCOL_VERSIONS)
        raise _Invalid(
            f"expected a comma-separated list of protocol versions from "
            f"{allowed}, got {raw!r}"
        )
    return frozenset(int(i) for i in items)


_PLUGIN_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _plugin_list(raw: str) -> tuple[str, ...]:
    items = split_list(raw)
    if not items:
        raise _Invalid(f"expected a list of plugin names like [a, b], got {raw!r}")
    seen: set[str] = set()
    for item in items:
        if not _PLUGIN_NAME_RE.match(item):
            raise _Invalid(f"{item!r} is not a plugin name")
        if item in seen:
            raise _Invalid(f"plugin {item!r} is listed twice")
        seen.add(item)
    return items


def _name_list(raw: str) -> tuple[str, ...]:
    items = split_list(raw)
    for item in items:
        if not re.match(r"[A-Za-z0-9_.-]+\Z", item):
            raise _Invalid(f"expected a list of names like [a, b], got {raw!r}")
    return items


def _buffer_sizes(raw: str) -> tuple[int, int, int]:
    items = split_list(raw)
    if len(items) != 3 or not all(re.match(r"[0-9]+\Z", i) for i in items):
        raise _Invalid(
            f"expected three non-negative integers 'sndbuf,recbuf,buffer', "
            f"got {raw!r}"
        )
    return (int(items[0]), int(items[1]), int(items[2]))


_TLS_VERSIONS = ("tlsv1", "tlsv1.1", "tlsv1.2", "tlsv1.3")


def _tls_versions(raw: str) -> tuple[str, ...]:
    items = split_list(raw)
    if not items or any(i not in _TLS_VERSIONS for i in items):
        raise _Invalid(
            f"expected a comma-separated list from {', '.join(_TLS_VERSIONS)}, "
            f"got {raw!r}"
        )
    return items


def _single_char(raw: str) -> str:
    if len(raw) != 1:
        raise _Invalid(f"expected a single character, got {raw!r}")
    return raw


def _mountpoint(raw: str) -> str:
    if raw == "off":
        return ""
    if "+" in raw or "#" in raw:
        raise _Invalid(f"a mountpoint cannot contain '+' or '#', got {raw!r}")
    return raw.rstrip("/")


def _ip_list(raw: str) -> tuple[str, ...]:
    """C{;}-separated IP addresses (proxy_xff_trusted_intermediate)."""
    items = tuple(i.strip() for i in raw.split(";") if i.strip())
    for item in items:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise _Invalid(
                f"expected ';'-separated IP addresses, {item!r} is not an IP address"
            ) from None
    return items


def _websocket_path(raw: str) -> str:
    if not raw.startswith("/") or any(c.isspace() for c in raw):
        raise _Invalid(f"expected a URL path starting with '/', got {raw!r}")
    return raw


_HEADER_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def _header_name(raw: str) -> str:
    if not _HEADER_RE.match(raw):
        raise _Invalid(f"expected an HTTP header name, got {raw!r}")
    return raw


# persistent_client_expiration units, exactly as VerneMQ's schema computes
# them: a "month" is 4 weeks (28 days), not 30 days, and a "year" is 12 such
# months (336 days), not 365 days.
_EXPIRATION_UNITS = {
    "h": 60 * 60,
    "d": 24 * 60 * 60,
    "w": 7 * 24 * 60 * 60,
    "m": 4 * 7 * 24 * 60 * 60,
    "y": 12 * 4 * 7 * 24 * 60 * 60,
}


def _expiration(raw: str) -> int | None:
    """C{never} -> None; C{Nh}, C{Nd}, C{Nw}, C{Nm}, C{Ny} -> seconds."""
    if raw == "never":
        return None
    m = re.match(r"([0-9]+)([hdwmy])\Z", raw)
    if not m:
        raise _Invalid(
            "expected 'never' or an integer followed by h, d, w, m or y "
            f"(hour, day, week, month = 4 weeks, year = 48 weeks), got {raw!r}"
        )
    seconds = int(m.group(1)) * _EXPIRATION_UNITS[m.group(2)]
    # VerneMQ stores 'never' as 0, so a zero duration also means never.
    return seconds or None


_DURATION_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_RE = re.compile(r"(?:[0-9]+[wdhms])+\Z")


def _duration_seconds(raw: str) -> int:
    """Plain seconds (C{90}) or a cuttlefish-style duration (C{1h30m})."""
    if re.match(r"[0-9]+\Z", raw):
        return int(raw)
    if not _DURATION_RE.match(raw):
        raise _Invalid(
            f"expected seconds or a duration like 30s, 5m, 1h, 1d, got {raw!r}"
        )
    return sum(
        int(n) * _DURATION_UNITS[u] for n, u in re.findall(r"([0-9]+)([wdhms])", raw)
    )


def _last_will_delay(raw: str) -> int | None:
    if raw == "client":
        return None
    try:
        return _duration_seconds(raw)
    except _Invalid:
        raise _Invalid(
            f"expected 'client', seconds or a duration like 30s, 5m, 1h, got {raw!r}"
        ) from None


# --------------------------------------------------------------------------
# The listener option registry: the one place that says which option exists
# for which listener kinds at which levels, its validator and its default.
# --------------------------------------------------------------------------

LISTENER_KINDS: tuple[str, ...] = (
    "tcp", "ssl", "ws", "wss", "vmq", "vmqs", "http", "https",
)

ROOT, PROTOCOL, NAMED = "root", "protocol", "named"
_LEVEL_LETTERS = {"R": ROOT, "P": PROTOCOL, "N": NAMED}

_ALL = " ".join(LISTENER_KINDS)
_MQTT = "tcp ssl ws wss"
_TLS = "ssl wss vmqs https"
_WEB = "ws wss http https"


def _scope(*rules: tuple[str, str]) -> Mapping[str, frozenset[str]]:
    """
    C{_scope(("tcp ssl", "PN"), ("vmq", "N"))}: kind -> allowed levels, with
    levels written as letters R (root), P (protocol), N (named).
    """
    out: dict[str, frozenset[str]] = {}
    for kinds, letters in rules:
        levels = frozenset(_LEVEL_LETTERS[c] for c in letters)
        for kind in kinds.split():
            assert kind in LISTENER_KINDS, kind
            out[kind] = levels
    return MappingProxyType(out)


@dataclass(frozen=True)
class ListenerOption:
    """
    One listener option.

    @ivar scope: listener kind -> the levels the option may be set at.  A
        root value (C{listener.<opt>}) applies to the kinds whose levels
        include C{ROOT}.
    @ivar check: validator for a raw value (raises L{_Invalid}).
    @ivar default: built-in default as a raw string, or None (no value).
    @ivar kind_defaults: schema default of the protocol level for some kinds.
        VerneMQ uses it instead of the root value when the protocol key is not
        set (e.g. C{nr_of_acceptors} is 10 for vmq/vmqs/http/https no matter
        what C{listener.nr_of_acceptors} says).
    @ivar inherit: raw values meaning "take the value of the level above".
    """

    scope: Mapping[str, frozenset[str]]
    check: Validator
    default: str | None = None
    kind_defaults: Mapping[str, str] = field(default_factory=_empty_mapping)
    inherit: frozenset[str] = frozenset()


_INHERIT_INT = frozenset({"-1"})
# As in VerneMQ's translator, an empty string value means "inherit".
_INHERIT_STR = frozenset({""})


def _opt(
    scope: Mapping[str, frozenset[str]],
    check: Validator,
    default: str | None = None,
    **kw: Any,
) -> ListenerOption:
    """
    A non-integer option.  Free-text options (and mountpoint) treat an empty
    value as "inherit", like VerneMQ's translator; others take C{inherit=...}.
    """
    if "inherit" not in kw:
        kw["inherit"] = _INHERIT_STR if check in (_str, _mountpoint) else frozenset()
    return ListenerOption(scope=scope, check=check, default=default, **kw)


def _intopt(
    scope: Mapping[str, frozenset[str]],
    default: str | None,
    lo: int | None = None,
    hi: int | None = None,
    *,
    infinity: bool = False,
    **kw: Any,
) -> ListenerOption:
    """An integer option; -1 always means "inherit from the level above"."""
    return ListenerOption(
        scope=scope,
        check=_int(lo, hi, inherit=True, infinity=infinity),
        default=default,
        inherit=_INHERIT_INT,
        **kw,
    )


REGISTRY: dict[str, ListenerOption] = {
    # -- options with a root level (vernemq.md 1.2) --
    "max_connections": _intopt(_scope((_ALL, "RPN")), "10000", 0, infinity=True),
    "nr_of_acceptors": _intopt(
        _scope((_ALL, "RPN")), "10", 1,
        kind_defaults=MappingProxyType({k: "10" for k in ("vmq", "vmqs", "http", "https")}),
    ),
    "mountpoint": _opt(_scope((_MQTT + " vmq vmqs", "RPN")), _mountpoint, "off"),
    "max_connection_lifetime": _intopt(_scope((_MQTT, "RPN")), "0", 0),
    # -- MQTT --
    # Default "3,4" follows the listener documentation our spec is based on;
    # VerneMQ 2.x's schema default is "3,4,5,131".
    "allowed_protocol_versions": _opt(_scope((_MQTT, "PN")), _protocol_versions, "3,4"),
    "allow_anonymous_override": _opt(_scope((_MQTT, "N")), _bool, "off"),
    "auth_plugins": _opt(_scope((_MQTT, "N")), _plugin_list),
    "authz_plugins": _opt(_scope((_MQTT, "N")), _plugin_list),
    "forward_connection_opts": _opt(_scope((_MQTT, "PN")), _bool, "off"),
    # -- PROXY protocol / X-Forwarded-For --
    "proxy_protocol": _opt(_scope(("tcp ws http", "PN")), _bool, "off"),
    "proxy_protocol_use_cn_as_username": _opt(_scope(("tcp ws http", "PN")), _bool, "on"),
    "proxy_xff_support": _opt(_scope(("ws", "PN")), _bool, "off"),
    "proxy_xff_trusted_intermediate": _opt(
        _scope(("ws", "PN")), _ip_list, "", inherit=_INHERIT_STR
    ),
    "proxy_xff_use_cn_as_username": _opt(_scope(("ws", "N")), _bool, "off"),
    "proxy_xff_cn_header": _opt(_scope(("ws", "N")), _header_name, "x-ssl-client-cn"),
    # -- sockets --
    "buffer_sizes": _opt(_scope(("tcp ssl", "PN"), ("vmq", "N")), _buffer_sizes),
    "active_n": _intopt(_scope(("tcp ssl", "PN")), "1", 1, 32767),
    "high_watermark": _intopt(_scope(("vmq", "N")), "8192", 0),
    "low_watermark": _intopt(_scope(("vmq", "N")), "4096", 0),
    "high_msgq_watermark": _intopt(_scope(("vmq", "N")), "8192", 0),
    "low_msgq_watermark": _intopt(_scope(("vmq", "N")), "4096", 0),
    # -- HTTP / WebSocket --
    "max_request_line_length": _intopt(_scope((_WEB, "N")), "8000", 1),
    "max_header_value_length": _intopt(_scope((_WEB, "N")), "4096", 1),
    "websocket_path": _opt(  # our addition: VerneMQ serves only /mqtt
        _scope(("ws wss", "PN")), _websocket_path, "/mqtt"
    ),
    # our addition: accept permessage-deflate offers.  VerneMQ always does;
    # off by default here (zlib state costs ~300 KiB per connection, and a
    # client whose offer is declined simply talks uncompressed).
    "websocket_compression": _opt(_scope(("ws wss", "PN")), _bool, "off"),
    "http_modules": _opt(_scope(("http https", "N")), _name_list),
    # -- TLS --
    "tls_handshake_timeout": _intopt(_scope((_TLS, "PN")), "5000", 0, infinity=True),
    "cafile": _opt(_scope((_TLS, "PN")), _str, ""),
    "certfile": _opt(_scope((_TLS, "PN")), _str, ""),
    "keyfile": _opt(_scope((_TLS, "PN")), _str, ""),
    "keypasswd": _opt(_scope((_TLS, "PN")), _str, ""),
    "ciphers": _opt(_scope((_TLS, "PN")), _str, ""),
    "eccs": _opt(_scope((_TLS, "PN")), _name_list, "", inherit=_INHERIT_STR),
    "crlfile": _opt(_scope((_TLS, "PN")), _str, ""),
    "depth": _intopt(_scope((_TLS, "PN")), "1", 0),
    "require_certificate": _opt(_scope((_TLS, "PN")), _bool, "off"),
    "tls_version": _opt(_scope((_TLS, "PN")), _tls_versions, "tlsv1.2"),
    "use_identity_as_username": _opt(_scope(("ssl wss", "PN")), _bool, "off"),
    "psk_support": _opt(_scope(("ssl", "PN")), _bool, "off"),
    "psk_identity_hint": _opt(_scope(("ssl", "PN")), _str, "VMQ_PSK"),
    "pskfile": _opt(_scope(("ssl", "P")), _str),
    "pskfile_separator": _opt(_scope(("ssl", "P")), _single_char, ":"),
}

_ROOT_OPTIONS = tuple(
    name for name, opt in REGISTRY.items()
    if any(ROOT in levels for levels in opt.scope.values())
)

_LISTENER_NAME_RE = re.compile(r"[A-Za-z0-9_-]+\Z")


# --------------------------------------------------------------------------
# Global keys
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class GlobalKey:
    """
    A top-level key.  With C{field} set, the checked value goes into that
    L{BrokerConfig} field; otherwise the raw string goes into
    C{BrokerConfig.extra} (recognised, validated, no behaviour yet).
    """

    check: Validator
    field: str | None = None


def _g(check: Validator, fieldname: str | None = None) -> GlobalKey:
    return GlobalKey(check=check, field=fieldname)


_TYPED_GLOBALS: dict[str, Validator] = {
    "allow_anonymous": _bool,
    "max_client_id_size": _int(1, 65535),
    "max_message_size": _int(0),
    "max_inflight_messages": _int(0, 65535),
    "max_online_messages": _int(-1),
    "max_offline_messages": _int(-1),
    "retry_interval": _int(1),
    "mqtt_connect_timeout": _int(1),
    "persistent_client_expiration": _expiration,
    "topic_max_depth": _int(1),
    "upgrade_outgoing_qos": _bool,
    "max_subscriptions_per_client": _int(0),
    "disconnect_on_unauthorized_publish_v3": _bool,
    "suppress_lwt_on_session_takeover": _bool,
    "shared_subscription_policy": _enum(
        "prefer_local", "local_only", "random", "prefer_online_before_local"
    ),
    "queue_type": _enum("fifo", "lifo"),
    "receive_max_client": _int(1, 65535),
    "receive_max_broker": _int(1, 65535),
    "topic_alias_max_client": _int(0, 65535),
    "topic_alias_max_broker": _int(0, 65535),
    "max_last_will_delay": _last_will_delay,
    # our own key: MQTT 5.0 Server Keep Alive cap in seconds (0 = no cap)
    "max_keep_alive": _int(0, 65535),
    "max_ws_frame_size": _int(1),
    "crl_refresh_interval": _int(0),
    # our own key, not VerneMQ's (VerneMQ uses log.console.level)
    "log_level": _enum("debug", "info", "warn", "error"),
}

_EXTRA_GLOBALS: dict[str, Validator] = {
    "allow_register_during_netsplit": _bool,
    "allow_publish_during_netsplit": _bool,
    "allow_subscribe_during_netsplit": _bool,
    "allow_unsubscribe_during_netsplit": _bool,
    "coordinate_registrations": _bool,
    "systree_enabled": _bool,
    "systree_interval": _int(0),
    "max_message_rate": _int(0),
    "override_max_online_messages": _bool,
    "nodename": _str,
    "distributed_cookie": _str,
    "metadata_plugin": _str,
    "expire_retain_cache": _int(0),
    "log.console": _str,
    "log.console.level": _str,
    "log.console.file": _str,
    "persistent_store.directory": _str,
    "persistent_store.enabled": _bool,
    "persistent_store.sync": _enum("group", "always", "none"),
}

GLOBAL_KEYS: dict[str, GlobalKey] = {
    **{k: _g(v, k) for k, v in _TYPED_GLOBALS.items()},
    **{k: _g(v) for k, v in _EXTRA_GLOBALS.items()},
}

# Plugins whose settings (NAME.key = value) are accepted even without a
# plugins.NAME line in the file.
BUILTIN_PLUGINS: frozenset[str] = frozenset({"vmq_passwd", "vmq_acl"})


# --------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------


@dataclass
class _Set:
    """One effective setting: raw value and the line it came from."""

    raw: str
    line: int


class _Parser:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.errors: list[ConfigError] = []
        self.sources: dict[str, int] = {}
        self.typed: dict[str, Any] = {}
        self.extra: dict[str, str] = {}
        self.root: dict[str, _Set] = {}
        self.proto: dict[tuple[str, str], _Set] = {}
        self.named: dict[tuple[str, str, str], _Set] = {}
        self.decls: dict[tuple[str, str], tuple[_Set, Address | None]] = {}
        self.plugin_lines: dict[str, dict[str, tuple[Any, int]]] = {}
        self.plugin_settings: dict[str, dict[str, str]] = {}
        self.plugin_list_uses: list[tuple[int, str, tuple[str, ...]]] = []

    # -- helpers --

    def fail(self, line: int, key: str, message: str) -> None:
        self.errors.append(ConfigError(self.filename, line, key, message))

    def check(self, line: int, key: str, validator: Validator, raw: str) -> tuple[bool, Any]:
        try:
            return True, validator(raw)
        except _Invalid as e:
            self.fail(line, key, str(e))
            return False, None

    # -- passes --

    def run(self, text: str) -> BrokerConfig:
        entries = self.tokenise(text)
        effective: dict[str, int] = {}
        for line, key, _ in entries:
            effective[key] = line
        declared = self.find_declarations(effective)
        plugin_names = self.find_plugin_names(effective)
        for line, key, value in entries:
            self.sources[key] = line
            self.classify(line, key, value, declared, plugin_names)
        listeners = self.resolve_listeners()
        plugins = self.build_plugins()
        self.check_plugin_lists(plugins)
        if self.errors:
            # min() keeps the first of several errors on the same line.
            raise min(self.errors, key=lambda e: e.line)
        return BrokerConfig(
            path=self.filename,
            listeners=listeners,
            plugins=MappingProxyType(plugins),
            plugin_settings=MappingProxyType(
                {k: MappingProxyType(v) for k, v in self.plugin_settings.items()}
            ),
            extra=MappingProxyType(self.extra),
            key_sources=MappingProxyType(
                {k: (self.filename, n) for k, n in self.sources.items()}
            ),
            **self.typed,
        )

    def tokenise(self, text: str) -> list[tuple[int, str, str]]:
        entries = []
        for lineno, raw_line in enumerate(text.splitlines(), start=1):
            stripped = raw_line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            key, eq, value = stripped.partition("=")
            key = key.strip()
            if not eq or not key:
                self.fail(lineno, stripped, "expected 'key = value'")
                continue
            entries.append((lineno, key, value.strip()))
        return entries

    @staticmethod
    def find_declarations(effective: Mapping[str, int]) -> set[tuple[str, str]]:
        """(kind, name) of every listener.KIND.NAME key, valid or not."""
        out = set()
        for key in effective:
            parts = key.split(".")
            if (
                len(parts) == 3
                and parts[0] == "listener"
                and parts[1] in LISTENER_KINDS
                and parts[2] not in REGISTRY
            ):
                out.add((parts[1], parts[2]))
        return out

    @staticmethod
    def find_plugin_names(effective: Mapping[str, int]) -> set[str]:
        names = set(BUILTIN_PLUGINS)
        for key in effective:
            parts = key.split(".")
            if parts[0] == "plugins" and len(parts) >= 2 and parts[1]:
                names.add(parts[1])
        return names

    def classify(
        self,
        line: int,
        key: str,
        value: str,
        declared: set[tuple[str, str]],
        plugin_names: set[str],
    ) -> None:
        gk = GLOBAL_KEYS.get(key)
        if gk is not None:
            ok, typed = self.check(line, key, gk.check, value)
            if ok:
                if gk.field is not None:
                    self.typed[gk.field] = typed
                else:
                    self.extra[key] = value
            return
        parts = key.split(".")
        if parts[0] == "listener":
            self.listener_key(line, key, value, parts, declared)
            return
        if parts[0] == "plugins":
            self.plugin_key(line, key, value, parts)
            return
        if len(parts) >= 2 and parts[0] in plugin_names and all(parts[1:]):
            self.plugin_settings.setdefault(parts[0], {})[".".join(parts[1:])] = value
            return
        self.fail(line, key, "unknown configuration key")

    def listener_key(
        self,
        line: int,
        key: str,
        value: str,
        parts: list[str],
        declared: set[tuple[str, str]],
    ) -> None:
        if len(parts) == 2:
            opt = REGISTRY.get(parts[1])
            if opt is None or parts[1] not in _ROOT_OPTIONS:
                hint = ""
                if opt is not None:
                    hint = (
                        f" (only {', '.join(_ROOT_OPTIONS)} can be set at the root "
                        f"level; use listener.<kind>.{parts[1]})"
                    )
                self.fail(line, key, "unknown configuration key" + hint)
                return
            ok, _ = self.check(line, key, opt.check, value)
            if ok:
                self.root[parts[1]] = _Set(value, line)
            return
        if len(parts) not in (3, 4) or parts[1] not in LISTENER_KINDS:
            self.fail(line, key, "unknown configuration key")
            return
        kind = parts[1]
        if len(parts) == 3 and parts[2] not in REGISTRY:
            self.declaration(line, key, kind, parts[2], value)
            return
        if len(parts) == 3:
            name, optname, level = None, parts[2], PROTOCOL
        else:
            name, optname, level = parts[2], parts[3], NAMED
            if name in REGISTRY or not _LISTENER_NAME_RE.match(name):
                self.fail(line, key, "unknown configuration key")
                return
        opt = REGISTRY.get(optname)
        if opt is None:
            self.fail(line, key, "unknown configuration key")
            return
        if kind not in opt.scope:
            kinds = ", ".join(k for k in LISTENER_KINDS if k in opt.scope)
            self.fail(
                line, key,
                f"{optname} is not an option of {kind} listeners (only of: {kinds})",
            )
            return
        levels = opt.scope[kind]
        if level not in levels:
            if levels == {NAMED}:
                where = f"on a named listener (listener.{kind}.NAME.{optname})"
            else:
                where = f"for the whole protocol (listener.{kind}.{optname})"
            self.fail(line, key, f"{optname} can only be set {where}")
            return
        if name is not None and (kind, name) not in declared:
            self.fail(line, key, f"set but listener.{kind}.{name} is not declared")
            return
        ok, _ = self.check(line, key, opt.check, value)
        if not ok:
            return
        if name is None:
            self.proto[(kind, optname)] = _Set(value, line)
        else:
            self.named[(kind, name, optname)] = _Set(value, line)
            if optname in ("auth_plugins", "authz_plugins"):
                self.plugin_list_uses.append((line, key, _plugin_list(value)))

    def declaration(self, line: int, key: str, kind: str, name: str, value: str) -> None:
        if not _LISTENER_NAME_RE.match(name):
            self.fail(
                line, key,
                f"invalid listener name {name!r} (use letters, digits, '_' and '-')",
            )
            return
        try:
            address = _parse_address(value, kind)
        except _Invalid as e:
            self.fail(line, key, str(e))
            return
        self.decls[(kind, name)] = (_Set(value, line), address)

    def plugin_key(self, line: int, key: str, value: str, parts: list[str]) -> None:
        if len(parts) < 2 or not _PLUGIN_NAME_RE.match(parts[1]):
            self.fail(line, key, "unknown configuration key")
            return
        name = parts[1]
        if len(parts) == 2:
            what, validator = "enabled", _bool
        elif len(parts) == 3 and parts[2] == "priority":
            what, validator = "priority", _int()
        elif len(parts) == 3 and parts[2] == "path":
            what, validator = "path", _str
        else:
            self.fail(line, key, "unknown configuration key")
            return
        ok, typed = self.check(line, key, validator, value)
        if ok:
            self.plugin_lines.setdefault(name, {})[what] = (typed, line)

    # -- cross-key checks and resolution --

    def build_plugins(self) -> dict[str, PluginConfig]:
        plugins: dict[str, PluginConfig] = {}
        for name, got in self.plugin_lines.items():
            if "enabled" not in got:
                for what in ("priority", "path"):
                    if what in got:
                        self.fail(
                            got[what][1], f"plugins.{name}.{what}",
                            f"set but plugins.{name} is not set "
                            f"(add plugins.{name} = on)",
                        )
                continue
            enabled, line = got["enabled"]
            plugins[name] = PluginConfig(
                name=name,
                enabled=enabled,
                priority=got.get("priority", (None, 0))[0],
                path=got.get("path", (None, 0))[0],
                source=(self.filename, line),
            )
        # file order of the plugins.NAME lines
        return dict(sorted(plugins.items(), key=lambda kv: kv[1].source[1]))

    def check_plugin_lists(self, plugins: Mapping[str, PluginConfig]) -> None:
        for line, key, names in self.plugin_list_uses:
            for name in names:
                plugin = plugins.get(name)
                if plugin is None or not plugin.enabled:
                    self.fail(
                        line, key,
                        f"plugin {name!r} is not enabled (set plugins.{name} = on)",
                    )
                    break

    def resolve_listeners(self) -> tuple[ListenerConfig, ...]:
        # Options for undeclared listeners were already rejected in
        # listener_key; declarations with a bad address were rejected too.
        by_address: dict[tuple[Any, ...], tuple[str, int]] = {}
        listeners = []
        ordered = sorted(self.decls.items(), key=lambda kv: kv[1][0].line)
        for (kind, name), (decl, address) in ordered:
            key = f"listener.{kind}.{name}"
            if address is None:
                continue
            ident: tuple[Any, ...] | None = None
            if address.path is not None:
                ident = ("unix", address.path)
            elif address.port != 0:
                ident = ("ip", address.host, address.port)
            if ident is not None:
                if ident in by_address:
                    other_key, other_line = by_address[ident]
                    self.fail(
                        decl.line, key,
                        f"address {address} is already used by {other_key} "
                        f"({self.filename}:{other_line})",
                    )
                    continue
                by_address[ident] = (key, decl.line)
            listeners.append(self.build_listener(kind, name, decl, address))
        return tuple(listeners)

    def build_listener(
        self, kind: str, name: str, decl: _Set, address: Address
    ) -> ListenerConfig:
        options: dict[str, str] = {}
        sources: dict[str, tuple[str, int]] = {}
        for optname, opt in REGISTRY.items():
            if kind not in opt.scope:
                continue
            found = _resolve_option(self, kind, name, optname, opt)
            if found is None:
                continue
            raw, line = found
            options[optname] = raw
            sources[optname] = (self.filename, line)

        def typed(optname: str, neutral: Any) -> Any:
            if optname not in options:
                return neutral
            return REGISTRY[optname].check(options[optname])

        return ListenerConfig(
            kind=kind,
            name=name,
            address=address,
            max_connections=typed("max_connections", None),
            nr_of_acceptors=typed("nr_of_acceptors", 10),
            mountpoint=typed("mountpoint", ""),
            max_connection_lifetime=typed("max_connection_lifetime", 0),
            allowed_protocol_versions=typed("allowed_protocol_versions", frozenset()),
            allow_anonymous_override=typed("allow_anonymous_override", False),
            proxy_protocol=typed("proxy_protocol", False)
            or (address.endpoint or "").startswith("proxy:"),
            proxy_protocol_use_cn_as_username=typed(
                "proxy_protocol_use_cn_as_username", False
            ),
            options=MappingProxyType(options),
            source=(self.filename, decl.line),
            option_sources=MappingProxyType(sources),
        )


def _resolve_option(
    parser: _Parser, kind: str, name: str, optname: str, opt: ListenerOption
) -> tuple[str, int] | None:
    """
    The effective raw value of one option for listener C{kind}/C{name} and the
    line it came from (0 for a built-in default), following VerneMQ's
    C{vmq_schema:extract/4}:

      1. the named value, unless it is an "inherit" value (-1, or '' for
         strings);
      2. else the protocol value, unless it is an inherit value; when the
         protocol key is not set at all, the protocol's schema default for
         this kind (C{kind_defaults}) if there is one;
      3. else the root value (only for options with a root level), unless it
         is an inherit value;
      4. else the built-in default (None: the option has no value).
    """
    levels = opt.scope[kind]
    candidates: list[_Set | None] = []
    if NAMED in levels:
        candidates.append(parser.named.get((kind, name, optname)))
    if PROTOCOL in levels:
        proto = parser.proto.get((kind, optname))
        if proto is None and kind in opt.kind_defaults:
            proto = _Set(opt.kind_defaults[kind], 0)
        candidates.append(proto)
    if ROOT in levels:
        candidates.append(parser.root.get(optname))
    for cand in candidates:
        if cand is not None and cand.raw not in opt.inherit:
            return cand.raw, cand.line
    if opt.default is None:
        return None
    return opt.default, 0


def _parse_address(value: str, kind: str) -> Address:
    """
    C{IP:PORT} split on the last colon (C{127.0.0.1:1883}, C{:::1883},
    C{::1:1883}) or C{local:/path/app.sock:0} (tcp listeners only), or a
    Twisted endpoint description (checked by C{vmqtw.transport.descriptions}).
    """
    usage = "expected IP:PORT (e.g. 127.0.0.1:1883 or :::1883) or local:/path.sock:0"
    if not value:
        raise _Invalid(f"empty address; {usage}")
    from vmqtw.transport import descriptions
    if descriptions.is_description(value):
        try:
            descriptions.check_description(value, kind)
        except ValueError as e:
            raise _Invalid(str(e)) from None
        return Address(host=None, port=0, endpoint=value)
    host, colon, port_text = value.rpartition(":")
    if not colon or not host:
        raise _Invalid(f"{usage}, got {value!r}")
    if not re.match(r"[0-9]+\Z", port_text) or int(port_text) > 65535:
        raise _Invalid(f"port must be an integer between 0 and 65535, got {value!r}")
    port = int(port_text)
    if host.startswith("local:"):
        path = host[len("local:"):]
        if kind != "tcp":
            raise _Invalid("unix socket addresses (local:...) are only supported for tcp listeners")
        if not path:
            raise _Invalid(f"missing unix socket path, {usage}, got {value!r}")
        if port != 0:
            raise _Invalid(f"a unix socket address must end in ':0', got {value!r}")
        return Address(host=None, port=0, path=path)
    if host.startswith("[") and host.endswith("]"):
        raise _Invalid(
            f"IPv6 addresses are written without brackets (e.g. ::1:1883), got {value!r}"
        )
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise _Invalid(f"{host!r} is not an IP address; {usage}") from None
    return Address(host=str(ip), port=port)


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


def parse(text: str, filename: str = "<config>") -> BrokerConfig:
    """Parse configuration text; raise L{ConfigError} on the first problem."""
    return _Parser(filename).run(text)


def load(path: str) -> BrokerConfig:
    """Read and parse the file at C{path}."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ConfigError(path, 0, "", f"cannot read configuration file: not UTF-8 ({e.reason})") from None
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError(path, 0, "", f"cannot read configuration file: {reason}") from None
    return parse(text, path)


def describe_listeners(config: BrokerConfig) -> str:
    """A plain-text table of the resolved listeners, for C{--check}."""
    if not config.listeners:
        return f"{config.path}: no listeners configured"
    header = (
        "KIND", "NAME", "ADDRESS", "MOUNTPOINT", "MAX_CONN", "ACCEPTORS",
        "VERSIONS", "LIFETIME", "ANON_OVERRIDE", "PROXY", "SOURCE",
    )
    rows: list[tuple[str, ...]] = [header]
    for lc in config.listeners:
        versions = ",".join(str(v) for v in sorted(lc.allowed_protocol_versions))
        rows.append((
            lc.kind,
            lc.name,
            str(lc.address),
            lc.mountpoint or "-",
            "infinity" if lc.max_connections is None else str(lc.max_connections),
            str(lc.nr_of_acceptors),
            versions or "-",
            f"{lc.max_connection_lifetime}s" if lc.max_connection_lifetime else "off",
            "on" if lc.allow_anonymous_override else "off",
            "on" if lc.proxy_protocol else "off",
            f"{lc.source[0]}:{lc.source[1]}",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)

