"""
The key registry: which keys the file may hold, and for listener options,
which listener kinds have them at which levels, their value parser and their
built-in default.

A new listener option is one ``REGISTRY`` entry; a new top-level key is one
line in ``_TYPED_GLOBALS`` (a ``BrokerConfig`` field) or ``_EXTRA_GLOBALS``
(validated, kept raw in ``BrokerConfig.extra``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from vmqtw.config.values import (
    Validator,
    _bool,
    _buffer_sizes,
    _bytesize_or_infinity,
    _cipher_list,
    _empty_mapping,
    _enum,
    _expiration,
    _header_name,
    _int,
    _ip_list,
    _last_will_delay,
    _log_level,
    _mountpoint,
    _name_list,
    _plugin_list,
    _protocol_versions,
    _single_char,
    _str,
    _tls_versions,
    _websocket_path,
)

LISTENER_KINDS: tuple[str, ...] = (
    "tcp", "ssl", "ws", "wss", "vmq", "vmqs", "http", "https",
)

ROOT, PROTOCOL, NAMED = "root", "protocol", "named"
_LEVEL_LETTERS = {"R": ROOT, "P": PROTOCOL, "N": NAMED}

_ALL = " ".join(LISTENER_KINDS)
_MQTT = "tcp ssl ws wss"
_TLS = "ssl wss vmqs https"
_WEB = "ws wss http https"

#: The kinds of listener that speak TLS (and have the TLS options).
TLS_KINDS: frozenset[str] = frozenset(_TLS.split())
#: The kinds of listener that carry MQTT over WebSocket.
WEBSOCKET_KINDS: frozenset[str] = frozenset({"ws", "wss"})


def _scope(*rules: tuple[str, str]) -> Mapping[str, frozenset[str]]:
    """
    ``_scope(("tcp ssl", "PN"), ("vmq", "N"))``: kind -> allowed levels, with
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

    :ivar scope: listener kind -> the levels the option may be set at.  A
        root value (``listener.<opt>``) applies to the kinds whose levels
        include ``ROOT``.
    :ivar check: validator for a raw value (raises ``_Invalid``).
    :ivar default: built-in default as a raw string, or None (no value).
    :ivar kind_defaults: schema default of the protocol level for some kinds.
        VerneMQ uses it instead of the root value when the protocol key is not
        set (e.g. ``nr_of_acceptors`` is 10 for vmq/vmqs/http/https no matter
        what ``listener.nr_of_acceptors`` says).
    :ivar inherit: raw values meaning "take the value of the level above".
    """

    scope: Mapping[str, frozenset[str]]
    check: Validator
    default: str | None = None
    kind_defaults: Mapping[str, str] = field(default_factory=_empty_mapping)
    inherit: frozenset[str] = frozenset()


_INHERIT_INT = frozenset({"-1"})

#: VerneMQ's HTTP modules (``http_modules``) and their auth modes.
_HTTP_MODULES = ("vmq_metrics_http", "vmq_http_mgmt_api", "vmq_status_http",
                 "vmq_health_http", "vmq_http_v2_api", "vmq_http_pub")
_HTTP_AUTH_MODE = _enum("apikey", "noauth")
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
    value as "inherit", like VerneMQ's translator; others take ``inherit=...``.
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


def _cidr_list(raw: str) -> tuple[str, ...]:
    """IP addresses or networks (``10.0.0.0/8``), separated by commas, ``;`` or
    blanks; each normalised (``str(ip_network(...))``)."""
    import ipaddress

    from vmqtw.config.values import _Invalid

    out: list[str] = []
    for item in re.split(r"[,;\s]+", raw.strip()):
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise _Invalid(f"{item!r} is not an IP address or network (CIDR)") from None
    return tuple(out)


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
    # VerneMQ 2.x's schema default (its older listener docs say "3,4"):
    # MQTT 3.1, 3.1.1, 5.0 and 3.1 bridges (131; 132 = 3.1.1 bridges is not).
    "allowed_protocol_versions": _opt(_scope((_MQTT, "PN")), _protocol_versions, "3,4,5,131"),
    "allow_anonymous_override": _opt(_scope((_MQTT, "N")), _bool, "off"),
    "auth_plugins": _opt(_scope((_MQTT, "N")), _plugin_list),
    "authz_plugins": _opt(_scope((_MQTT, "N")), _plugin_list),
    "forward_connection_opts": _opt(_scope((_MQTT, "PN")), _bool, "off"),
    # -- PROXY protocol / X-Forwarded-For --
    "proxy_protocol": _opt(_scope(("tcp ws http", "PN")), _bool, "off"),
    # Security (#14): no built-in default.  Unset, it is on only when
    # proxy_protocol_trusted_sources is set (VerneMQ: always on).
    "proxy_protocol_use_cn_as_username": _opt(_scope(("tcp ws http", "PN")), _bool),
    # our addition (#14): the peers allowed to send a PROXY header (IPs or
    # CIDRs, comma-separated); empty = any peer, as in VerneMQ.
    "proxy_protocol_trusted_sources": _opt(
        _scope(("tcp ws http", "PN")), _cidr_list, "", inherit=_INHERIT_STR
    ),
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
    # vmq_http_pub's settings of one listener (VerneMQ's plural ``http_modules.``)
    **{f"http_modules.vmq_http_pub.{k}": _opt(_scope(("http https", "N")), _str)
       for k in ("mqtt_auth.mode", "mqtt_auth.user", "mqtt_auth.password",
                 "mqtt_auth.client_id", "mountpoint")},
    # the auth mode of one module on one listener (singular ``http_module.``)
    **{f"http_module.{m}.auth.mode": _opt(_scope(("http https", "N")), _HTTP_AUTH_MODE)
       for m in _HTTP_MODULES},
    # -- TLS --
    "tls_handshake_timeout": _intopt(_scope((_TLS, "PN")), "5000", 0, infinity=True),
    "cafile": _opt(_scope((_TLS, "PN")), _str, ""),
    "certfile": _opt(_scope((_TLS, "PN")), _str, ""),
    "keyfile": _opt(_scope((_TLS, "PN")), _str, ""),
    "keypasswd": _opt(_scope((_TLS, "PN")), _str, ""),
    "ciphers": _opt(_scope((_TLS, "PN")), _cipher_list, "", inherit=_INHERIT_STR),
    "eccs": _opt(_scope((_TLS, "PN")), _name_list, "", inherit=_INHERIT_STR),
    "crlfile": _opt(_scope((_TLS, "PN")), _str, ""),
    "depth": _intopt(_scope((_TLS, "PN")), "1", 0),
    "require_certificate": _opt(_scope((_TLS, "PN")), _bool, "off"),
    # Security (#14): no built-in value; unset, TLS 1.2 and 1.3, or VerneMQ's
    # tlsv1.2 when ciphers names no TLS 1.3 suite (see settings.tls_config).
    "tls_version": _opt(_scope((_TLS, "PN")), _tls_versions),
    # our addition (#14): refuse client certificates when the CRL file cannot
    # say (no CRL for an issuer, a CRL past its next update, an unreadable
    # file at a refresh); off = VerneMQ's fail-open list of revoked certificates.
    "crl_fail_closed": _opt(_scope((_TLS, "PN")), _bool, "off"),
    "use_identity_as_username": _opt(_scope(("ssl wss", "PN")), _bool, "off"),
    "psk_support": _opt(_scope(("ssl", "PN")), _bool, "off"),
    "psk_identity_hint": _opt(_scope(("ssl", "PN")), _str, "VMQ_PSK"),
    "pskfile": _opt(_scope(("ssl", "P")), _str),
    "pskfile_separator": _opt(_scope(("ssl", "P")), _single_char, ":"),
}



def root_options(registry: Mapping[str, ListenerOption]) -> tuple[str, ...]:
    """The options of ``registry`` that can be set at the root level."""
    return tuple(
        name for name, opt in registry.items()
        if any(ROOT in levels for levels in opt.scope.values())
    )


_ROOT_OPTIONS = root_options(REGISTRY)

_LISTENER_NAME_RE = re.compile(r"[A-Za-z0-9_-]+\Z")


# --------------------------------------------------------------------------
# Global keys
# --------------------------------------------------------------------------


#: The values of ``persistent_store.sync``.
STORE_SYNC_MODES: tuple[str, ...] = ("group", "always", "none")


@dataclass(frozen=True)
class GlobalKey:
    """
    A top-level key.  With ``field`` set, the checked value goes into that
    ``BrokerConfig`` field; otherwise the raw string goes into
    ``BrokerConfig.extra`` (recognised, validated, no behaviour yet).
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
    "override_max_online_messages": _bool,
    "max_message_rate": _int(0),
    "receive_max_client": _int(1, 65535),
    "receive_max_broker": _int(1, 65535),
    "topic_alias_max_client": _int(0, 65535),
    "topic_alias_max_broker": _int(0, 65535),
    "max_last_will_delay": _last_will_delay,
    # our own key: MQTT 5.0 Server Keep Alive cap in seconds (0 = no cap)
    "max_keep_alive": _int(0, 65535),
    # our own keys (security limits, 0 = no limit): see README "Security"
    "max_preauth_packet_size": _int(0),
    "max_retained_messages": _int(0),
    "max_retained_bytes": _int(0),
    "max_inflight_bytes": _int(0),
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
    "nodename": _str,
    "distributed_cookie": _str,
    "metadata_plugin": _str,
    "expire_retain_cache": _int(0),
    # log.* (VerneMQ 2.x's names), read into BrokerConfig.log
    "log.console": _enum("console", "file", "both", "off"),
    "log.console.level": _log_level,
    "log.console.file": _str,
    "log.console.file.format": _enum("text", "json"),
    "log.console.rotation.size": _bytesize_or_infinity,
    "log.console.rotation.keep": _int(0),
    "log.error": _bool,
    "log.error.file": _str,
    "log.error.file.format": _enum("text", "json"),
    "log.error.rotation.size": _bytesize_or_infinity,
    "log.error.rotation.keep": _int(0),
    "log.syslog": _bool,
    "log.syslog.level": _log_level,
    # -- cluster (vmqtw/cluster; see ClusterConfig) --
    "outgoing_clustering_buffer_size": _int(0),
    "outgoing_clustering_flush_threshold": _int(1),
    "incoming_clustering_buffer_size": _int(4096),
    "outgoing_cluster_handshake_ack_timeout": _int(1),
    "remote_enqueue_timeout": _int(1),
    "metadata.redis.url": _str,
    "metadata.redis.sentinels": _str,
    "metadata.redis.master_name": _str,
    "cluster.name": _str,
    "cluster.heartbeat_interval": _int(1),
    "cluster.node_timeout": _int(1),
    # our own key: `vmqtw -c FILE` starts N cluster nodes on this machine (vmqtw.workers)
    "workers": _int(1),
    "persistent_store.directory": _str,
    "persistent_store.enabled": _bool,
    # the HTTP listeners, the admin channel and $SYS (vmqtw.admin.ops)
    "prometheus_namespace": _str,
    "http_modules": _name_list,
    **{f"http_module.{m}.auth.mode": _HTTP_AUTH_MODE for m in _HTTP_MODULES},
    "min_apikey_length": _int(0),
    "max_apikey_expiry_days": _int(1),
    # our own keys: where the admin socket and the API key file live
    # (default: vmq-admin.sock and apikeys.json in persistent_store.directory)
    "admin_socket": _str,
    "api_keys_file": _str,
    # VerneMQ's hidden $SYS keys
    "systree_mountpoint": _str,
    "systree_qos": _int(0, 2),
    "systree_retain": _bool,
    "persistent_store.sync": _enum(*STORE_SYNC_MODES),
}

GLOBAL_KEYS: dict[str, GlobalKey] = {
    **{k: _g(v, k) for k, v in _TYPED_GLOBALS.items()},
    **{k: _g(v) for k, v in _EXTRA_GLOBALS.items()},
}

# Plugins whose settings (NAME.key = value) are accepted even without a
# plugins.NAME line in the file.  As in VerneMQ they are ON by default.
BUILTIN_PLUGINS: frozenset[str] = frozenset({"vmq_passwd", "vmq_acl"})

#: Plugins of VerneMQ's release whose ``NAME.key`` settings VerneMQ's schema
#: knows whether or not the plugin is on: accepted without a ``plugins.NAME``
#: line (with a warning when the plugin is not on).
VERNEMQ_PLUGINS: frozenset[str] = BUILTIN_PLUGINS | {"vmq_webhooks", "vmq_diversity",
                                                      "vmq_bridge", "vmq_http_pub"}

#: The default file of each built-in plugin (VerneMQ: ``./etc/vmq.passwd``
#: and ``./etc/vmq.acl``; here next to the configuration file) and the
#: setting that names it.
BUILTIN_PLUGIN_FILES: Mapping[str, tuple[str, str]] = MappingProxyType({
    "vmq_passwd": ("password_file", "vmq.passwd"),
    "vmq_acl": ("acl_file", "vmq.acl"),
})

#: Listener kinds vmqtw serves.  The others (vmq, vmqs) are accepted with a
#: "not served yet" warning and kept in ``BrokerConfig.unserved_listeners``.
SERVED_KINDS: frozenset[str] = frozenset({"tcp", "ssl", "ws", "wss", "http", "https"})
#: The listener kinds that serve VerneMQ's HTTP modules.
HTTP_KINDS: frozenset[str] = frozenset({"http", "https"})


