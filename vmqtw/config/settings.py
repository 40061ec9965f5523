"""
The typed settings of a listener's layers (TLS, WebSocket, PROXY) and of the
durable store, and how each is read from resolved option values.

``ListenerConfig.tls``, ``.websocket`` and ``.proxy`` and ``BrokerConfig.store``
hold these objects; the transport and store code read their fields and never
the option text.  Each value goes through the same parser the configuration
file's line went through (the schema's validator), so a value means the same
everywhere.

The settings objects check their own invariants (known TLS versions, a verify
depth >= 0...), so one built in code is as safe as one read from a file.  A
problem raises ``SettingError`` naming the option; the layer that builds the
listener turns it into a ``FILE:LINE: KEY: message`` error with
``ListenerConfig.option_source``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vmqtw.config import schema
from vmqtw.config.schema import STORE_SYNC_MODES
from vmqtw.config.values import TLS_VERSIONS, _Invalid, split_list

__all__ = [
    "SettingError", "TLSConfig", "WebSocketConfig", "ProxyConfig", "StoreConfig",
    "ClusterConfig", "CLUSTER_KEYS", "METADATA_PLUGINS", "WORKERS_NEED_CLUSTER",
    "cluster_config",
    "PROXY_HEADER_TIMEOUT", "STORE_SYNC_MODES", "tls_config", "websocket_config",
    "proxy_config",
]

#: Seconds a PROXY-protocol connection has to send its whole header (VerneMQ/Ranch: 10 s).
PROXY_HEADER_TIMEOUT = 10.0


class SettingError(ValueError):
    """A setting that cannot be used; ``option`` is the listener option at fault."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


# --------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSConfig:
    """
    The TLS settings of an ``ssl``, ``wss`` (``vmqs``, ``https``) listener.

    File names are as written (``""``: not set).  ``ciphers`` holds the
    TLS <= 1.2 names of the ``ciphers`` option, ``tls13_suites`` its TLS 1.3
    suite names (``TLS_...``); both empty means OpenSSL's defaults.
    ``versions`` is ``tls_version``, oldest first.  ``handshake_timeout`` is
    ``tls_handshake_timeout`` in seconds (None: no timeout).  ``session_id``
    is the listener's TLS session-cache context.
    """

    certfile: str = ""
    keyfile: str = ""
    keypasswd: str = ""
    cafile: str = ""
    crlfile: str = ""
    ciphers: tuple[str, ...] = ()
    tls13_suites: tuple[str, ...] = ()
    eccs: tuple[str, ...] = ()
    versions: tuple[str, ...] = ("tlsv1.2", "tlsv1.3")
    depth: int = 1
    require_certificate: bool = False
    use_identity_as_username: bool = False
    handshake_timeout: float | None = 5.0
    psk: bool = False
    pskfile: str = ""
    psk_separator: str = ":"
    psk_identity_hint: str = "VMQ_PSK"
    session_id: bytes = b"vmqtw"
    crl_fail_closed: bool = False

    def __post_init__(self) -> None:
        if not self.versions:
            raise SettingError("tls_version", "no TLS version given")
        for v in self.versions:
            if v not in TLS_VERSIONS:
                raise SettingError("tls_version", f"unknown TLS version {v!r} (expected "
                                   f"{', '.join(TLS_VERSIONS)})")
        ordered = tuple(v for v in TLS_VERSIONS if v in self.versions)
        if ordered != self.versions:
            object.__setattr__(self, "versions", ordered)
        if self.depth < 0:
            raise SettingError("depth", f"expected an integer >= 0, got {self.depth}")
        if len(self.psk_separator) != 1:
            raise SettingError("pskfile_separator",
                               f"expected a single character, got {self.psk_separator!r}")
        if self.handshake_timeout is not None and self.handshake_timeout < 0:
            raise SettingError("tls_handshake_timeout",
                               f"expected milliseconds or infinity, got "
                               f"{self.handshake_timeout * 1000:g} ms")

    @property
    def verify_peer(self) -> bool:
        """Whether client certificates are asked for and verified."""
        return self.require_certificate or self.use_identity_as_username

    @property
    def certificate_required(self) -> bool:
        """Whether a client without a certificate is refused at the handshake:
        ``require_certificate``, or ``use_identity_as_username`` (security, #14:
        the identity IS the user name, so a client without one must not fall
        back to the CONNECT user name; a TLS-PSK handshake, which has no
        certificate, is still served and its identity used)."""
        return self.require_certificate or self.use_identity_as_username


def default_tls_versions(ciphers: tuple[str, ...]) -> str:
    """``tls_version`` when the listener does not set it (security, #14): TLS 1.2
    and 1.3; but a ``ciphers`` list without a TLS 1.3 suite keeps VerneMQ's
    ``tlsv1.2``, so that the list it set is the whole story."""
    if ciphers and not any(c.startswith("TLS_") for c in ciphers):
        return "tlsv1.2"
    return "tlsv1.2,tlsv1.3"


# --------------------------------------------------------------------------
# WebSocket, PROXY, store
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class WebSocketConfig:
    """
    The WebSocket settings of a ``ws`` or ``wss`` listener.

    ``xff_*`` are the ``proxy_xff_*`` options (``ws`` listeners only; off on
    ``wss``); ``xff_trusted_intermediate`` holds IP addresses as written.
    """

    path: str = "/mqtt"
    compression: bool = False
    max_request_line_length: int = 8000
    max_header_value_length: int = 4096
    xff_support: bool = False
    xff_trusted_intermediate: tuple[str, ...] = ()
    xff_use_cn_as_username: bool = False
    xff_cn_header: str = "x-ssl-client-cn"


@dataclass(frozen=True)
class ProxyConfig:
    """
    The PROXY protocol settings of a listener.

    ``enabled`` is ``proxy_protocol``; ``use_cn_as_username`` is
    ``proxy_protocol_use_cn_as_username`` (it applies only when ``enabled``;
    unset, it is on only when trusted sources are set);
    ``header_timeout`` is in seconds (no key sets it; VerneMQ's is 10 s).
    ``trusted_sources`` is ``proxy_protocol_trusted_sources``: the networks
    (``str(ipaddress.ip_network(...))``) allowed to send a header; empty means
    any peer (VerneMQ's behaviour).
    """

    enabled: bool = False
    use_cn_as_username: bool = False
    header_timeout: float = PROXY_HEADER_TIMEOUT
    trusted_sources: tuple[str, ...] = ()
    _networks: tuple[Any, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        import ipaddress

        try:
            networks = tuple(ipaddress.ip_network(n, strict=False)
                             for n in self.trusted_sources)
        except ValueError as e:
            raise SettingError("proxy_protocol_trusted_sources", str(e)) from None
        object.__setattr__(self, "_networks", networks)

    def trusts(self, host: str | None) -> bool:
        """Whether a peer at ``host`` (an IP address as text; None for a unix
        socket peer, always trusted) may send a PROXY header."""
        if not self.trusted_sources or host is None:
            return True
        import ipaddress

        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(addr, "ipv4_mapped", None)
        if mapped is not None:
            addr = mapped
        return any(addr in net for net in self._networks)


def proxy_config(options: Mapping[str, str], enabled: bool,
                 use_cn_as_username: bool | None = None) -> ProxyConfig:
    """
    The PROXY settings from the resolved ``options`` of a listener.
    ``use_cn_as_username`` None: the option's value, or (unset) whether
    trusted sources are set.  Raises ``SettingError``.
    """
    o = _Options(options)
    trusted: tuple[str, ...] = o.get("proxy_protocol_trusted_sources", ())
    if use_cn_as_username is None:
        use_cn_as_username = o.get("proxy_protocol_use_cn_as_username", bool(trusted))
    return ProxyConfig(enabled=enabled, use_cn_as_username=bool(use_cn_as_username),
                       trusted_sources=trusted)


@dataclass(frozen=True)
class StoreConfig:
    """
    The ``persistent_store.*`` keys.

    ``directory`` is absolute in a ``BrokerConfig`` (a relative value is
    relative to the configuration file's directory); ``sync`` is one of
    ``STORE_SYNC_MODES``.
    """

    enabled: bool = True
    directory: str = "data"
    sync: str = "group"

    def __post_init__(self) -> None:
        if self.sync not in STORE_SYNC_MODES:
            raise SettingError("persistent_store.sync", f"expected one of "
                               f"{', '.join(STORE_SYNC_MODES)}, got {self.sync!r}")


#: The values of ``log.console``.
LOG_CONSOLE_MODES: tuple[str, ...] = ("console", "file", "both", "off")
#: ``log.console.file.format`` / ``log.error.file.format`` (VerneMQ 2.x's choices).
LOG_FILE_FORMATS: tuple[str, ...] = ("text", "json")


@dataclass(frozen=True)
class LogConfig:
    """
    The ``log.*`` keys, with VerneMQ's meaning.

    - ``console``: where the log goes: ``console`` (standard output),
      ``file`` (``console_file``), ``both`` or ``off``.  VerneMQ's default
      is ``file``; vmqtw's is ``console`` (it runs in the foreground or under
      twistd, whose own log options still apply) unless the file says so.
    - ``level``: the lowest level logged, vmqtw's name (``debug``, ``info``,
      ``warn``, ``error``): ``log.console.level`` (``warning`` is ``warn``)
      or vmqtw's own ``log_level``.
    - ``console_file``: ``log.console.file``, absolute in a ``BrokerConfig``.
    - ``rotation_size`` (bytes, None = never) / ``rotation_keep``: rotate
      ``console_file`` at that size, keeping that many old files
      (``log.console.rotation.size`` / ``.keep``).
    - ``error_file``: ``log.error.file`` when ``log.error`` is on (errors
      and worse are also written there), else ``""``.
    - ``syslog``: ``log.syslog``; ``syslog_level`` its level.
    - ``console_format`` / ``error_format``: ``text`` or ``json``
      (``log.console.file.format`` / ``log.error.file.format``): the format of
      ``console_file`` / ``error_file``; standard output stays text, as in
      VerneMQ.
    """

    console: str = "console"
    level: str = "info"
    console_file: str = ""
    rotation_size: int | None = None
    rotation_keep: int = 5
    error_file: str = ""
    error_rotation_size: int | None = None
    error_rotation_keep: int = 5
    syslog: bool = False
    syslog_level: str = "info"
    console_format: str = "text"
    error_format: str = "text"

    def __post_init__(self) -> None:
        for option, value in (("log.console.file.format", self.console_format),
                              ("log.error.file.format", self.error_format)):
            if value not in LOG_FILE_FORMATS:
                raise SettingError(option, f"expected one of "
                                   f"{', '.join(LOG_FILE_FORMATS)}, got {value!r}")
        if self.console not in LOG_CONSOLE_MODES:
            raise SettingError("log.console", f"expected one of "
                               f"{', '.join(LOG_CONSOLE_MODES)}, got {self.console!r}")
        if self.console in ("file", "both") and not self.console_file:
            raise SettingError("log.console.file",
                               f"log.console = {self.console} needs log.console.file")


# --------------------------------------------------------------------------
# Cluster
# --------------------------------------------------------------------------

#: VerneMQ's cluster keys that ``vmqtw.config.compat`` lists as without effect, but
#: that a cluster node (``metadata_plugin = redis``) honours.
CLUSTER_KEYS: frozenset[str] = frozenset({
    "nodename", "distributed_cookie", "metadata_plugin", "outgoing_clustering_buffer_size",
    "allow_register_during_netsplit", "allow_publish_during_netsplit",
    "allow_subscribe_during_netsplit", "allow_unsubscribe_during_netsplit",
    "coordinate_registrations",
})

#: The values of ``metadata_plugin``: ``none`` is a one-node broker (VerneMQ's own
#: engines, ``vmq_swc`` and ``vmq_plumtree``, are accepted and mean the same here).
METADATA_PLUGINS: tuple[str, ...] = ("none", "redis", "vmq_swc", "vmq_plumtree")


#: Why workers (``workers = N``, ``vmqtw --workers N``) need the metadata engine.
WORKERS_NEED_CLUSTER = ("workers are cluster nodes: they need metadata_plugin = redis "
                        "(and a listener.vmq)")


def _host_port(raw: str, default_port: int) -> tuple[str, int]:
    host, _, port = raw.strip().rpartition(":")
    if not host:
        return raw.strip(), default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingError("metadata.redis.sentinels", f"bad port in {raw!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class ClusterConfig:
    """
    The cluster keys (VerneMQ's where they exist, ``metadata.*`` and ``cluster.*``
    are ours).  Durations are in seconds here (milliseconds in the file).

    ``enabled`` is true with ``metadata_plugin = redis``; without it the broker is a
    single node exactly as before, and a ``listener.vmq`` is refused.
    """

    nodename: str = "VerneMQ@127.0.0.1"
    cookie: str = "vmq"
    metadata_plugin: str = "none"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_master_name: str = "vmqtw"
    name: str = "vmqtw"
    heartbeat_interval: float = 1.0
    node_timeout: float = 5.0
    outgoing_buffer_size: int = 64 * 1024 * 1024
    flush_threshold: int = 64 * 1024
    incoming_buffer_size: int = 64 * 1024 * 1024
    handshake_timeout: float = 5.0
    remote_enqueue_timeout: float = 5.0
    coordinate_registrations: bool = True
    allow_register_during_netsplit: bool = False
    allow_publish_during_netsplit: bool = False
    allow_subscribe_during_netsplit: bool = False
    allow_unsubscribe_during_netsplit: bool = False
    #: ``workers = N``: ``vmqtw -c FILE`` supervises N nodes on this machine
    #: (:mod:`vmqtw.workers`); 0 when the key is not set.
    workers: int = 0

    def __post_init__(self) -> None:
        if self.metadata_plugin not in METADATA_PLUGINS:
            raise SettingError("metadata_plugin", f"expected one of "
                               f"{', '.join(METADATA_PLUGINS)}, got {self.metadata_plugin!r}")
        if not self.nodename:
            raise SettingError("nodename", "must not be empty")
        if self.workers and not self.enabled:
            raise SettingError("workers", WORKERS_NEED_CLUSTER)
        if self.node_timeout <= self.heartbeat_interval:
            raise SettingError("cluster.node_timeout", "must be longer than "
                               "cluster.heartbeat_interval")

    @property
    def enabled(self) -> bool:
        """Whether this node joins a cluster (a metadata engine is configured)."""
        return self.metadata_plugin == "redis"

    @property
    def host(self) -> str:
        """The host part of ``nodename`` (``VerneMQ@HOST``), or ``""``."""
        return self.nodename.rpartition("@")[2] if "@" in self.nodename else ""


def cluster_config(got: Mapping[str, Any]) -> ClusterConfig:
    """The ``ClusterConfig`` from the checked values of the top-level keys (``got``:
    key -> value through its schema parser).  Raises ``SettingError``."""
    d = ClusterConfig
    sentinels = tuple(_host_port(s, 26379)
                      for s in split_list(got.get("metadata.redis.sentinels", "")))

    def ms(key: str, default: float) -> float:
        value = got.get(key)
        return default if value is None else value / 1000.0

    return ClusterConfig(
        nodename=got.get("nodename", d.nodename),
        cookie=got.get("distributed_cookie", d.cookie),
        metadata_plugin=got.get("metadata_plugin", d.metadata_plugin),
        redis_url=got.get("metadata.redis.url", d.redis_url),
        redis_sentinels=sentinels,
        redis_master_name=got.get("metadata.redis.master_name", d.redis_master_name),
        name=got.get("cluster.name", d.name),
        heartbeat_interval=ms("cluster.heartbeat_interval", d.heartbeat_interval),
        node_timeout=ms("cluster.node_timeout", d.node_timeout),
        outgoing_buffer_size=got.get("outgoing_clustering_buffer_size",
                                     d.outgoing_buffer_size),
        flush_threshold=got.get("outgoing_clustering_flush_threshold", d.flush_threshold),
        incoming_buffer_size=got.get("incoming_clustering_buffer_size",
                                     d.incoming_buffer_size),
        handshake_timeout=ms("outgoing_cluster_handshake_ack_timeout", d.handshake_timeout),
        remote_enqueue_timeout=ms("remote_enqueue_timeout", d.remote_enqueue_timeout),
        workers=got.get("workers", d.workers),
        coordinate_registrations=got.get("coordinate_registrations",
                                         d.coordinate_registrations),
        **{f"allow_{op}_during_netsplit": got.get(f"allow_{op}_during_netsplit", False)
           for op in ("register", "publish", "subscribe", "unsubscribe")},
    )


# --------------------------------------------------------------------------
# From resolved option values to settings
# --------------------------------------------------------------------------


class _Options:
    """Typed access to one listener's resolved option values."""

    def __init__(self, options: Mapping[str, str], base_dir: str | None = None) -> None:
        self.options = options
        self.base_dir = base_dir

    def path(self, name: str) -> str:
        """A file option, made absolute against ``base_dir`` when relative."""
        value: str = self.get(name, "")
        if value and self.base_dir is not None and not os.path.isabs(value):
            return os.path.normpath(os.path.join(self.base_dir, value))
        return value

    def raw(self, name: str, default: str) -> str:
        value = self.options.get(name)
        return default if value is None else value

    def get(self, name: str, default: Any) -> Any:
        """The value of option ``name`` through its schema parser, or ``default``
        when the listener has no value for it."""
        raw = self.options.get(name)
        if raw is None:
            return default
        try:
            return schema.REGISTRY[name].check(raw)
        except _Invalid as e:
            raise SettingError(name, str(e)) from None


def tls_config(options: Mapping[str, str], kind: str, key: str,
               base_dir: str | None = None) -> TLSConfig | None:
    """
    The TLS settings from the resolved ``options`` of listener ``key`` (of
    ``kind``); None for a kind without TLS.  Raises ``SettingError``.

    With ``base_dir``, relative ``certfile``, ``keyfile``, ``cafile``,
    ``crlfile`` and ``pskfile`` paths are made absolute against it (the
    configuration file's directory), so that file errors name the real path.
    """
    if kind not in schema.TLS_KINDS:
        return None
    o = _Options(options, base_dir)
    ciphers: tuple[str, ...] = o.get("ciphers", ())
    timeout_ms: int | None = o.get("tls_handshake_timeout", 5000)
    return TLSConfig(
        certfile=o.path("certfile"),
        keyfile=o.path("keyfile"),
        keypasswd=o.get("keypasswd", ""),
        cafile=o.path("cafile"),
        crlfile=o.path("crlfile"),
        ciphers=tuple(c for c in ciphers if not c.startswith("TLS_")),
        tls13_suites=tuple(c for c in ciphers if c.startswith("TLS_")),
        eccs=o.get("eccs", ()),
        # Split only: TLSConfig names an unknown version itself, so that a
        # TLSConfig built in code gets the same check.
        versions=split_list(o.raw("tls_version", default_tls_versions(ciphers))),
        depth=o.get("depth", 1),
        require_certificate=o.get("require_certificate", False),
        use_identity_as_username=o.get("use_identity_as_username", False),
        handshake_timeout=timeout_ms / 1000.0 if timeout_ms else None,
        psk=o.get("psk_support", False),
        pskfile=o.path("pskfile"),
        psk_separator=o.get("pskfile_separator", ":"),
        psk_identity_hint=o.get("psk_identity_hint", "VMQ_PSK"),
        session_id=hashlib.sha256(key.encode()).hexdigest()[:32].encode(),
        crl_fail_closed=o.get("crl_fail_closed", False),
    )


def websocket_config(options: Mapping[str, str], kind: str) -> WebSocketConfig | None:
    """
    The WebSocket settings from the resolved ``options`` of a listener of
    ``kind``; None for a kind that is not MQTT over WebSocket.  Raises
    ``SettingError``.
    """
    if kind not in schema.WEBSOCKET_KINDS:
        return None
    o = _Options(options)
    return WebSocketConfig(
        path=o.get("websocket_path", "/mqtt"),
        compression=o.get("websocket_compression", False),
        max_request_line_length=o.get("max_request_line_length", 8000),
        max_header_value_length=o.get("max_header_value_length", 4096),
        xff_support=o.get("proxy_xff_support", False),
        xff_trusted_intermediate=o.get("proxy_xff_trusted_intermediate", ()),
        xff_use_cn_as_username=o.get("proxy_xff_use_cn_as_username", False),
        xff_cn_header=o.get("proxy_xff_cn_header", "x-ssl-client-cn"),
    )
