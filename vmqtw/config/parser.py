"""
Read a configuration file: tokenise it, check every line against the schema,
resolve each listener's options (named -> protocol -> root -> built-in
default, as VerneMQ's ``vmq_schema:extract/4``) and build the frozen
``BrokerConfig``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from vmqtw.config import compat, descriptions
from vmqtw.config.build import build_log, builtin_plugins
from vmqtw.config.model import (
    Address,
    BrokerConfig,
    ConfigError,
    ConfigErrors,
    ConfigWarning,
    ListenerConfig,
    PluginConfig,
)
from vmqtw.config.schema import (
    _LISTENER_NAME_RE,
    VERNEMQ_PLUGINS,
    GLOBAL_KEYS,
    LISTENER_KINDS,
    NAMED,
    PROTOCOL,
    REGISTRY,
    ROOT,
    SERVED_KINDS,
    GlobalKey,
    ListenerOption,
    root_options,
)
from vmqtw.config.settings import (
    CLUSTER_KEYS, ClusterConfig, SettingError, StoreConfig, cluster_config,
)
from vmqtw.config.values import (
    _PLUGIN_NAME_RE,
    Validator,
    _bool,
    _int,
    _Invalid,
    _plugin_list,
    _str,
)

__all__ = ["parse", "load"]


@dataclass
class _Set:
    """One effective setting: raw value and the line it came from."""

    raw: str
    line: int


class _Parser:
    """
    One run over one file.  Problems are collected in ``errors`` and all of
    them are raised at the end of ``run`` as one ``ConfigErrors``; keys that
    are accepted without (all of) their VerneMQ effect are collected in
    ``warnings`` (``vmqtw.config.compat``).
    """

    def __init__(self, filename: str, registry: Mapping[str, ListenerOption]) -> None:
        self.filename = filename
        self.registry = registry
        self.root_options = root_options(registry)
        self.errors: list[ConfigError] = []
        self.warnings: list[ConfigWarning] = []
        self.sources: dict[str, int] = {}
        self.typed: dict[str, Any] = {}
        self.extra: dict[str, str] = {}
        self.extra_typed: dict[str, Any] = {}
        self.root: dict[str, _Set] = {}
        self.proto: dict[tuple[str, str], _Set] = {}
        self.named: dict[tuple[str, str, str], _Set] = {}
        self.decls: dict[tuple[str, str], tuple[_Set, Address | None]] = {}
        self.plugin_lines: dict[str, dict[str, tuple[Any, int]]] = {}
        self.plugin_settings: dict[str, dict[str, str]] = {}
        self.plugin_list_uses: list[tuple[int, str, tuple[str, ...]]] = []
        self.plugin_setting_lines: dict[str, int] = {}
        # key -> (line, reason) of accepted keys without effect (last line wins)
        self.no_effect: dict[str, tuple[int, str]] = {}

    # -- helpers --

    def fail(self, line: int, key: str, message: str) -> None:
        self.errors.append(ConfigError(self.filename, line, key, message))

    def warn(self, line: int, key: str, message: str) -> None:
        self.warnings.append(ConfigWarning(self.filename, line, key, message))

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
        # Before the warnings: the cluster keys have an effect on a cluster node only.
        self.cluster = self.build_cluster()
        self.no_effect_warnings()
        listeners, unserved = self.resolve_listeners()
        plugins = self.build_plugins()
        self.check_plugin_lists(plugins)
        log = build_log(self)
        for key, (line, reason) in self.no_effect.items():
            self.warn(line, key, reason)
        if self.errors:
            # sorted() is stable: several errors of one line keep their order.
            raise ConfigErrors(self.errors)
        self.warnings.sort(key=lambda w: w.line)
        return BrokerConfig(
            path=self.filename,
            listeners=listeners,
            plugins=MappingProxyType(plugins),
            plugin_settings=MappingProxyType(
                {k: MappingProxyType(v) for k, v in self.plugin_settings.items()}
            ),
            extra=MappingProxyType(self.extra),
            store=self.build_store(),
            cluster=self.cluster,
            key_sources=MappingProxyType(
                {k: (self.filename, n) for k, n in self.sources.items()}
            ),
            log=log,
            unserved_listeners=unserved,
            warnings=tuple(self.warnings),
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

    def find_declarations(self, effective: Mapping[str, int]) -> set[tuple[str, str]]:
        """(kind, name) of every listener.KIND.NAME key, valid or not."""
        out = set()
        for key in effective:
            parts = key.split(".")
            if (
                len(parts) == 3
                and parts[0] == "listener"
                and parts[1] in LISTENER_KINDS
                and parts[2] not in self.registry
            ):
                out.add((parts[1], parts[2]))
        return out

    @staticmethod
    def find_plugin_names(effective: Mapping[str, int]) -> set[str]:
        names = set(VERNEMQ_PLUGINS)
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
        if gk is None and key in compat.NO_EFFECT:
            gk = GlobalKey(check=compat.NO_EFFECT[key][0])
        if gk is not None:
            ok, typed = self.check(line, key, gk.check, value)
            if ok:
                if gk.field is not None:
                    self.typed[gk.field] = typed
                else:
                    self.extra[key] = value
                    self.extra_typed[key] = typed
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
            self.plugin_setting_lines[key] = line
            return
        reason = compat.prefix_reason(key)
        if reason is not None:
            self.extra[key] = value
            self.no_effect[key] = (line, reason)
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
            opt = self.registry.get(parts[1])
            if opt is None or parts[1] not in self.root_options:
                hint = ""
                if opt is not None:
                    hint = (
                        f" (only {', '.join(self.root_options)} can be set at the root "
                        f"level; use listener.<kind>.{parts[1]})"
                    )
                self.fail(line, key, "unknown configuration key" + hint)
                return
            ok, _ = self.check(line, key, opt.check, value)
            if ok:
                self.root[parts[1]] = _Set(value, line)
            return
        if len(parts) > 4 and ".".join(parts[3:]) in self.registry:
            # a dotted option of a named listener (http_module.M.auth.mode)
            parts = parts[:3] + [".".join(parts[3:])]
        if len(parts) not in (3, 4) or parts[1] not in LISTENER_KINDS:
            self.fail(line, key, "unknown configuration key")
            return
        kind = parts[1]
        if len(parts) == 3 and parts[2] not in self.registry:
            self.declaration(line, key, kind, parts[2], value)
            return
        if len(parts) == 3:
            name, optname, level = None, parts[2], PROTOCOL
        else:
            name, optname, level = parts[2], parts[3], NAMED
            if name in self.registry or not _LISTENER_NAME_RE.match(name):
                self.fail(line, key, "unknown configuration key")
                return
        opt = self.registry.get(optname)
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
        ok, _ = self.check(line, key, opt.check, value)
        if not ok:
            return
        if name is not None and (kind, name) not in declared:
            # VerneMQ ignores the options of a listener that is not declared.
            self.no_effect[key] = (line, f"listener.{kind}.{name} is not declared: "
                                         f"this option is ignored")
            return
        reason = compat.listener_warning(optname, value)
        if reason is not None:
            self.no_effect[key] = (line, reason)
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
        validator: Validator
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
        plugins.update(builtin_plugins(self, plugins))
        # file order of the plugins.NAME lines (built-ins on by default first)
        ordered = dict(sorted(plugins.items(), key=lambda kv: kv[1].source[1]))
        for name, settings in self.plugin_settings.items():
            pc = ordered.get(name)
            if pc is not None and pc.enabled:
                continue
            for setting in settings:
                key = f"{name}.{setting}"
                self.no_effect[key] = (self.plugin_setting_lines.get(key, 0),
                                       f"plugins.{name} is not on: this setting has "
                                       f"no effect")
        return ordered

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

    def resolve_listeners(
        self,
    ) -> tuple[tuple[ListenerConfig, ...], tuple[ListenerConfig, ...]]:
        """The listeners vmqtw serves, and those it does not serve yet (with a
        warning each)."""
        # Options for undeclared listeners were already rejected in
        # listener_key; declarations with a bad address were rejected too.
        by_address: dict[tuple[Any, ...], tuple[str, int]] = {}
        listeners = []
        unserved = []
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
            listener = self.build_listener(kind, name, decl, address)
            if kind in SERVED_KINDS:
                listeners.append(listener)
            elif kind in ("vmq", "vmqs"):
                # Served by the cluster node (vmqtw.cluster) when there is one.
                unserved.append(listener)
                if not self.cluster.enabled:
                    self.warn(decl.line, key, f"VerneMQ's cluster listener ({kind}) is "
                              f"not served: {address} is not opened (vmqtw is a cluster "
                              f"node only with metadata_plugin = redis)")
            else:
                unserved.append(listener)
                self.warn(decl.line, key, f"{kind} listeners are not "
                                          f"served yet by vmqtw: {address} is not opened")
        return tuple(listeners), tuple(unserved)

    def build_listener(
        self, kind: str, name: str, decl: _Set, address: Address
    ) -> ListenerConfig:
        options: dict[str, str] = {}
        sources: dict[str, tuple[str, int]] = {}
        for optname, opt in self.registry.items():
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
            return self.registry[optname].check(options[optname])

        listener = ListenerConfig(
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
            # Unset: on only with trusted sources (#14).
            proxy_protocol_use_cn_as_username=typed(
                "proxy_protocol_use_cn_as_username",
                bool(options.get("proxy_protocol_trusted_sources")),
            ),
            options=MappingProxyType(options),
            source=(self.filename, decl.line),
            option_sources=MappingProxyType(sources),
        )
        try:
            # Read the layers' typed settings now: every value was checked
            # above, so this only fails if the schema and the settings disagree.
            _ = listener.tls, listener.websocket, listener.proxy
        except SettingError as e:
            file, line = listener.option_source(e.option)
            self.fail(line or decl.line, f"{listener.key}.{e.option}", e.message)
        return listener

    def no_effect_warnings(self) -> None:
        """Keys set in the file that vmqtw accepts without effect (compat.NO_EFFECT)."""
        for key, line in self.sources.items():
            if key in CLUSTER_KEYS and self.cluster.enabled:
                continue  # honoured by the cluster node
            if key in compat.NO_EFFECT:
                self.no_effect[key] = (line, compat.NO_EFFECT[key][1])

    def build_store(self) -> StoreConfig:
        """The ``persistent_store.*`` keys (checked by ``classify``)."""
        got = self.extra_typed
        return StoreConfig(
            enabled=got.get("persistent_store.enabled", StoreConfig.enabled),
            directory=got.get("persistent_store.directory", StoreConfig.directory),
            sync=got.get("persistent_store.sync", StoreConfig.sync),
        )


    def build_cluster(self) -> ClusterConfig:
        """The cluster keys (checked by ``classify``); a bad combination is an error
        on the line of the key at fault."""
        try:
            return cluster_config(self.extra_typed)
        except SettingError as e:
            self.fail(self.sources.get(e.option, 0), e.option, e.message)
            return ClusterConfig()


def _resolve_option(
    parser: _Parser, kind: str, name: str, optname: str, opt: ListenerOption
) -> tuple[str, int] | None:
    """
    The effective raw value of one option for listener ``kind``/``name`` and the
    line it came from (0 for a built-in default), following VerneMQ's
    ``vmq_schema:extract/4``:

      1. the named value, unless it is an "inherit" value (-1, or '' for
         strings);
      2. else the protocol value, unless it is an inherit value; when the
         protocol key is not set at all, the protocol's schema default for
         this kind (``kind_defaults``) if there is one;
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
    ``IP:PORT`` split on the last colon (``127.0.0.1:1883``, ``:::1883``,
    ``::1:1883``) or ``local:/path/app.sock:0`` (tcp listeners only), or a
    Twisted endpoint description (checked by ``vmqtw.config.descriptions``).
    """
    usage = "expected IP:PORT (e.g. 127.0.0.1:1883 or :::1883) or local:/path.sock:0"
    if not value:
        raise _Invalid(f"empty address; {usage}")
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


def parse(
    text: str,
    filename: str = "<config>",
    registry: Mapping[str, ListenerOption] | None = None,
) -> BrokerConfig:
    """
    Parse configuration text; raise ``ConfigErrors`` listing every problem.

    ``registry`` is the table of listener options (default: the schema's
    ``REGISTRY``).
    """
    return _Parser(filename, REGISTRY if registry is None else registry).run(text)


def load(path: str, registry: Mapping[str, ListenerOption] | None = None) -> BrokerConfig:
    """Read and parse the file at ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ConfigError(
            path, 0, "", f"cannot read configuration file: not UTF-8 ({e.reason})"
        ) from None
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError(path, 0, "", f"cannot read configuration file: {reason}") from None
    return parse(text, path, registry)
