"""
The configuration as the rest of the broker sees it: frozen, typed objects.

``BrokerConfig`` is the whole file; each declared listener is a
``ListenerConfig`` with its settings resolved (named -> protocol -> root ->
built-in default) and its layers' typed settings (``tls``, ``websocket``,
``proxy``); plugins are ``PluginConfig`` objects.  Every problem found while
reading the file is a ``ConfigError`` naming the file, the line and the key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from vmqtw.config.settings import (
    ClusterConfig,
    LogConfig,
    ProxyConfig,
    StoreConfig,
    TLSConfig,
    WebSocketConfig,
    proxy_config,
    tls_config,
    websocket_config,
)
from vmqtw.config.values import _empty_mapping


class ConfigError(Exception):
    """
    A problem with the configuration.

    ``str(e)`` is ``"FILE:LINE: KEY: MESSAGE"``, or ``"FILE: MESSAGE"`` when the
    problem is not tied to one line (``line == 0``), e.g. a missing file.
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


class ConfigErrors(ConfigError):
    """
    Every problem of one file, found in one run.

    It is a ``ConfigError`` for the first problem (``file``, ``line``, ``key``
    and ``message`` are the earliest one's), and ``errors`` holds them all in
    line order.  ``str(e)`` is one ``FILE:LINE: KEY: MESSAGE`` line per problem,
    so ``--check`` prints them all.
    """

    def __init__(self, errors: "list[ConfigError] | tuple[ConfigError, ...]") -> None:
        ordered = sorted(errors, key=lambda e: e.line)
        self.errors: tuple[ConfigError, ...] = tuple(ordered)
        first = ordered[0]
        super().__init__(first.file, first.line, first.key, first.message)

    def __str__(self) -> str:
        return "\n".join(ConfigError.__str__(e) for e in getattr(self, "errors", ()))


@dataclass(frozen=True)
class ConfigWarning:
    """
    A key that is accepted but does not do (everything) it does in VerneMQ.

    ``line`` is 0 when the warning is about a default rather than a line.
    ``str(w)`` is ``"FILE:LINE: KEY: MESSAGE"`` like a ``ConfigError``.
    """

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}: {self.key}: {self.message}"
        return f"{self.file}: {self.key}: {self.message}"


@dataclass(frozen=True)
class Address:
    """
    Where a listener binds: an IP address and port, or a unix socket path.

    ``host`` is normalised (``str(ipaddress.ip_address(...))``) and is ``None``
    for a unix socket, whose ``port`` is always 0.
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


@dataclass(frozen=True)
class ListenerConfig:
    """
    One resolved listener.

    Typed fields hold the effective values after inheritance.  For options
    that do not exist for this listener's kind (e.g. ``mountpoint`` on an
    ``http`` listener) the typed field holds the neutral "off" value
    (``''``, ``0``, ``False``, ``frozenset()``).

    ``options`` has every resolved option that applies to this kind and has a
    value (set in the file, inherited, or a built-in default) as the raw string
    from the file, and ``option_source`` where it came from.

    ``tls``, ``websocket`` and ``proxy`` are the typed settings of the
    listener's layers, read from ``options`` through the schema's value
    parsers (``vmqtw.config.settings``); ``tls`` is None for a kind without
    TLS, ``websocket`` for a kind that is not MQTT over WebSocket.  They are
    read when first used (the parser reads them right away), so a listener
    made with ``dataclasses.replace(listener, options=...)`` gets settings
    from its new options; reading a bad value raises ``SettingError``.
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
        """The declaring key, e.g. ``'listener.tcp.default'``."""
        return f"listener.{self.kind}.{self.name}"

    def option_source(self, opt: str) -> tuple[str, int]:
        """
        Where the effective value of ``opt`` came from: ``(file, line)``, with
        line 0 for a built-in default (or an option that is not set).
        """
        return self.option_sources.get(opt, (self.source[0], 0))

    @cached_property
    def tls(self) -> TLSConfig | None:
        """The TLS settings (None for a kind without TLS)."""
        # Relative TLS/PSK file paths are taken against the directory of the
        # file that declares the listener, like every path of the file.
        base = os.path.dirname(os.path.abspath(self.source[0]))
        return tls_config(self.options, self.kind, self.key, base)

    @cached_property
    def websocket(self) -> WebSocketConfig | None:
        """The WebSocket settings (None unless a ws or wss listener)."""
        return websocket_config(self.options, self.kind)

    @cached_property
    def proxy(self) -> ProxyConfig:
        """The PROXY protocol settings."""
        return proxy_config(self.options, self.proxy_protocol,
                            self.proxy_protocol_use_cn_as_username)


@dataclass(frozen=True)
class PluginConfig:
    """
    One ``plugins.NAME`` line with its ``priority`` and ``path``.

    ``vmq_passwd`` and ``vmq_acl`` are on by default, as in VerneMQ: without a
    ``plugins.NAME`` line they get a ``PluginConfig`` with ``source`` line 0.
    """

    name: str
    enabled: bool
    priority: int | None
    path: str | None
    source: tuple[str, int]


@dataclass(frozen=True)
class BrokerConfig:
    """
    The whole configuration file.

    Typed top-level keys are fields; recognised keys without behaviour yet are
    in ``extra`` as raw strings; ``NAME.key`` settings of plugins are in
    ``plugin_settings``; ``store`` is the ``persistent_store.*`` keys and
    ``log`` the ``log.*`` keys, ``cluster`` the cluster keys (also in ``extra``).
    ``warnings`` lists every key that is accepted
    but has no effect (or not all of its VerneMQ effect) in vmqtw, and every
    listener declared but not served: the service logs them at startup.

    MQTT 5.0 topic aliases, with VerneMQ's meaning:

    - ``topic_alias_max_client`` is the INBOUND limit: announced to the client
      in CONNACK as Topic Alias Maximum; the client may use aliases 1..N in
      its PUBLISH packets (an alias above it is a protocol error, 0x94).
      Also available as ``topic_alias_inbound_max``.
    - ``topic_alias_max_broker`` is the OUTBOUND limit: the broker uses at
      most this many aliases towards a client, and never more than the
      client's CONNECT Topic Alias Maximum.  Also ``topic_alias_outbound_max``.
    """

    path: str
    listeners: tuple[ListenerConfig, ...]
    allow_anonymous: bool = False
    max_client_id_size: int = 100
    # Finite by default (VerneMQ: 0 = the protocol's 256 MiB); see README "Security".
    max_message_size: int = 1048576
    max_inflight_messages: int = 20
    max_online_messages: int = 1000
    max_offline_messages: int = 1000
    retry_interval: int = 20
    mqtt_connect_timeout: int = 5000
    persistent_client_expiration: int | None = None
    topic_max_depth: int = 10
    upgrade_outgoing_qos: bool = False
    # Finite by default (VerneMQ: 0 = unlimited); see README "Security".
    max_subscriptions_per_client: int = 10000
    disconnect_on_unauthorized_publish_v3: bool = False
    suppress_lwt_on_session_takeover: bool = False
    shared_subscription_policy: str = "prefer_local"
    queue_type: str = "fifo"
    override_max_online_messages: bool = False
    # PUBLISHes per second and client (vmqtw.connection.publish.over_rate); 0 = no limit.
    max_message_rate: int = 0
    receive_max_client: int = 65535
    receive_max_broker: int = 65535
    topic_alias_max_client: int = 0
    topic_alias_max_broker: int = 0
    max_last_will_delay: int | None = None
    # Our own key (VerneMQ has none): cap for MQTT 5.0 keep alive, announced
    # as Server Keep Alive; 0 = no cap.
    max_keep_alive: int = 0
    # Our own keys (VerneMQ has none), see README "Security": the largest
    # packet before authentication completes; the retained messages kept
    # (count and payload bytes); the payload bytes of QoS 1/2 messages
    # unacknowledged by one client.  0 = no limit.
    max_preauth_packet_size: int = 102400
    max_retained_messages: int = 1000000
    max_retained_bytes: int = 1073741824
    max_inflight_bytes: int = 16777216
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
    store: StoreConfig = field(default_factory=StoreConfig)
    log: LogConfig = field(default_factory=LogConfig)
    #: The cluster keys (``nodename``, ``metadata_plugin``...; vmqtw.cluster).
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    #: Declared listeners that are not served by the MQTT listener services:
    #: vmq/vmqs (opened by the cluster node when there is one, otherwise a
    #: "not served" warning).
    unserved_listeners: tuple[ListenerConfig, ...] = ()
    warnings: tuple[ConfigWarning, ...] = field(default=(), hash=False, compare=False)

    @property
    def topic_alias_inbound_max(self) -> int:
        """Aliases a client may send (CONNACK Topic Alias Maximum):
        VerneMQ's ``topic_alias_max_client``."""
        return self.topic_alias_max_client

    @property
    def topic_alias_outbound_max(self) -> int:
        """Aliases the broker may use towards a client (also capped by the
        client's CONNECT Topic Alias Maximum): VerneMQ's
        ``topic_alias_max_broker``."""
        return self.topic_alias_max_broker

    @property
    def config_dir(self) -> str:
        """The directory every relative path of the file is taken against."""
        return os.path.dirname(os.path.abspath(self.path))

    def resolve(self, path: str) -> str:
        """``path`` made absolute against ``config_dir`` (absolute ones unchanged)."""
        if not path or os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(self.config_dir, path))

    def __post_init__(self) -> None:
        # The store directory is relative to the configuration file's directory.
        directory = self.store.directory
        if not os.path.isabs(directory):
            base = os.path.dirname(os.path.abspath(self.path))
            resolved = os.path.normpath(os.path.join(base, directory))
            object.__setattr__(self, "store", dataclasses.replace(self.store, directory=resolved))

    def source(self, key: str) -> tuple[str, int]:
        """
        Where ``key`` was set: ``(file, line)``; line 0 when the key is not in
        the file (its built-in default is in effect).
        """
        return self.key_sources.get(key, (self.path, 0))
