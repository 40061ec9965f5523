"""Plugins enabled in broker.conf, loaded by name and ordered into chains.

A plugin runs only when ``plugins.NAME = on``.  ``NAME`` is a built-in
(``vmq_passwd``, ``vmq_acl``), a module found in ``plugins.NAME.path`` (a
directory, relative to the configuration file's directory), or an importable
module of that name.  The module exposes
``make_plugin(settings, context) -> plugin`` (see ``vmqtw.auth.context``).

Chain order follows VerneMQ: plugins with a ``priority`` first, lowest number
first; then the rest by name.  A listener's ``auth_plugins`` /
``authz_plugins`` picks its own chain, in the order written.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any, Iterable

from vmqtw.logs import Logger
from zope.interface import providedBy

from vmqtw.auth import api
from vmqtw.auth.chain import Authorizer, Chain
from vmqtw.auth.context import PluginContext
from vmqtw.auth.verify import describe_object, interface_problems
from vmqtw.config import BrokerConfig, ConfigError, ListenerConfig, PluginConfig, split_list

#: VerneMQ plugins that are not auth plugins here: ``vmq_http_pub`` is an HTTP
#: module (``http_modules``), served by the http listeners, which read its
#: ``vmq_http_pub.*`` settings.
NOT_AUTH_PLUGINS = frozenset({"vmq_http_pub"})

BUILTIN_MODULES = {
    "vmq_passwd": "vmqtw.auth.passwd",
    "vmq_acl": "vmqtw.auth.acl",
    "vmq_webhooks": "vmqtw.auth.webhooks",
    "vmq_diversity": "vmqtw.auth.diversity",
}

#: Every interface a plugin may provide; one of them is required.
HOOK_INTERFACES = tuple(
    obj for name, obj in vars(api).items()
    if name.startswith(("IAuthOn", "IOn")) and name != "IOnAuthRequest"
)

AUTHN_INTERFACES = (api.IAuthOnRegister, api.IOnAuth)
AUTHZ_INTERFACES = (api.IAuthOnPublish, api.IAuthOnPublishM5, api.IAuthOnSubscribe,
                    api.IAuthOnSubscribeM5)

Plugins = list[tuple[str, Any]]


def chain_order(plugins: Iterable[PluginConfig]) -> list[PluginConfig]:
    """Enabled plugins in chain order."""
    enabled = [p for p in plugins if p.enabled]
    return sorted(enabled, key=lambda p: (p.priority is None, p.priority or 0, p.name))


def _error(pc: PluginConfig, message: str) -> ConfigError:
    file, line = pc.source
    return ConfigError(file, line, f"plugins.{pc.name}", message)


def _same_file(module: ModuleType, origin: str | None) -> bool:
    path = getattr(module, "__file__", None)
    if path is None or origin is None:
        return False
    return os.path.realpath(path) == os.path.realpath(origin)


def _import(pc: PluginConfig, config_dir: str) -> ModuleType:
    if pc.path is not None:
        directory = pc.path if os.path.isabs(pc.path) else os.path.join(config_dir, pc.path)
        if not os.path.isdir(directory):
            raise _error(pc, f"plugin directory {directory} does not exist")
        spec = importlib.machinery.PathFinder.find_spec(pc.name, [directory])
        if spec is None or spec.loader is None:
            raise _error(pc, f"no module {pc.name!r} ({pc.name}.py or {pc.name}/) "
                             f"in {directory}")
        # The module is registered under the plugin's name (so the plugin and
        # its tests can import it by that name).  Never replace an unrelated
        # module that is already imported: a plugin called "json" or "vmqtw"
        # would break the whole process.  An earlier load of a plugin, or the
        # same file imported by a test, may be replaced.
        previous = sys.modules.get(pc.name)
        if previous is not None and not getattr(previous, "__vmqtw_plugin__", False) \
                and not _same_file(previous, spec.origin):
            where = getattr(previous, "__file__", None) or "the Python runtime"
            raise _error(pc, f"a module named {pc.name!r} is already imported (from "
                             f"{where}); rename the plugin, its name is its module name")
        module = importlib.util.module_from_spec(spec)
        module.__vmqtw_plugin__ = True  # type: ignore[attr-defined]
        sys.modules[pc.name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            if previous is None:
                sys.modules.pop(pc.name, None)
            else:
                sys.modules[pc.name] = previous
            raise _error(pc, f"importing {spec.origin} failed: {type(e).__name__}: {e}") from e
        return module
    name = BUILTIN_MODULES.get(pc.name, pc.name)
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if e.name != name:  # the module exists but one of its own imports failed
            raise _error(pc, f"importing {name} failed: {type(e).__name__}: {e}") from e
        raise _error(pc, f"unknown plugin (not built in, no plugins.{pc.name}.path, "
                         f"and no importable module {name!r})") from e
    except Exception as e:
        raise _error(pc, f"importing {name} failed: {type(e).__name__}: {e}") from e


def load_plugins(config: BrokerConfig, reactor: Any) -> Plugins:
    """Instantiate every enabled plugin, in chain order.  Raises ConfigError."""
    config_dir = os.path.dirname(os.path.abspath(config.path))
    loaded: Plugins = []
    for pc in chain_order(config.plugins.values()):
        if pc.name in NOT_AUTH_PLUGINS:
            continue
        module = _import(pc, config_dir)
        make = getattr(module, "make_plugin", None)
        if not callable(make):
            raise _error(pc, f"module {module.__name__} has no make_plugin(settings, context)")
        settings = dict(config.plugin_settings.get(pc.name, {}))
        context = PluginContext(reactor, config_dir, Logger(namespace=f"vmqtw.plugin.{pc.name}"))
        try:
            plugin = make(settings, context)
        except ValueError as e:
            raise _error(pc, str(e)) from e
        except Exception as e:
            raise _error(pc, f"make_plugin failed: {type(e).__name__}: {e}") from e
        if not any(i.providedBy(plugin) for i in HOOK_INTERFACES):
            raise _error(pc, "the plugin provides no hook interface of vmqtw.auth.api "
                             "(declare them with @implementer)")
        # A hook that does not match its interface would fail every request:
        # refuse it now, naming each problem (vmqtw.auth.verify).
        try:
            problems = interface_problems(plugin)
        except Exception as e:  # e.g. a property that raises when read
            raise _error(pc, f"checking {describe_object(plugin)} against its interfaces "
                             f"failed: {type(e).__name__}: {e}") from e
        if problems:
            raise _error(pc, f"{describe_object(plugin)} does not implement the interfaces "
                             f"it declares: {'; '.join(problems)}")
        loaded.append((pc.name, plugin))
    return loaded


def provides_any(plugins: Plugins, interfaces: Iterable[Any]) -> bool:
    ifaces = tuple(interfaces)
    return any(i.providedBy(p) for _, p in plugins for i in ifaces)


def listener_authorizer(config: BrokerConfig, listener: ListenerConfig,
                        plugins: Plugins) -> Authorizer:
    """The Authorizer of one listener: its own chains, or the global one."""
    by_name = dict(plugins)

    def pick(option: str, interfaces: tuple[Any, ...], what: str) -> Chain | None:
        raw = listener.options.get(option)
        if not raw:
            return None
        names = split_list(raw)
        file, line = listener.option_source(option)
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ConfigError(file, line, f"{listener.key}.{option}",
                              f"plugin(s) {', '.join(missing)} not enabled")
        chain = [(n, by_name[n]) for n in names]
        # A chain without a single plugin for its hooks is a mistake: it would
        # refuse every CONNECT (auth_plugins), or silently allow everything
        # (authz_plugins: the Authorizer allows what no plugin can decide).
        if not provides_any(chain, interfaces):
            raise ConfigError(file, line, f"{listener.key}.{option}",
                              f"none of {', '.join(names)} implements {what}")
        return Chain(chain)

    authn = pick("auth_plugins", AUTHN_INTERFACES,
                 "auth_on_register or on_auth") or Chain(plugins)
    authz = pick("authz_plugins", AUTHZ_INTERFACES,
                 "auth_on_publish or auth_on_subscribe") or Chain(plugins)
    return Authorizer(authn, config.allow_anonymous, authz_chain=authz)


def describe(plugins: Plugins) -> str:
    """One line per plugin: name and the hooks it provides."""
    lines = []
    for name, plugin in plugins:
        hooks = sorted(i.__name__ for i in providedBy(plugin) if i in HOOK_INTERFACES)
        lines.append(f"plugin {name}: {', '.join(hooks)}")
    return "\n".join(lines)


#: MQTT protocol levels whose clients are asked the plain (not ``_m5``) hooks:
#: 3.1, 3.1.1 and their bridge levels.
_PLAIN_LEVELS = frozenset({3, 4, 131, 132})

#: (packet, plain hook interface, MQTT 5.0 hook interface)
_AUTHZ_HOOKS = (("PUBLISH", api.IAuthOnPublish, api.IAuthOnPublishM5),
                ("SUBSCRIBE", api.IAuthOnSubscribe, api.IAuthOnSubscribeM5))


def _hook(iface: Any) -> str:
    """``auth_on_publish (IAuthOnPublish)``."""
    return f"{next(iter(iface.names()))} ({iface.__name__})"


def _denied_text(packet: str, listener: ListenerConfig, plain: Any, m5: Any,
                 names: list[str], has_m5: bool, denied: list[int]) -> str:
    own = bool(listener.options.get("authz_plugins"))
    whose = "any client" if set(denied) == set(listener.allowed_protocol_versions) else \
        f"MQTT 3.x clients (protocol versions {', '.join(map(str, denied))})"
    where = f"{listener.key}.authz_plugins" if own else "the plugins enabled"
    if has_m5:
        why = (f"{where} ({', '.join(names)}) provide {_hook(m5)} for MQTT 5.0 clients "
               f"only, and MQTT 3.x clients are asked {_hook(plain)}, which none of them "
               f"implements")
    else:
        either = f" or {_hook(m5)}" if 5 in denied else ""
        why = f"none of {where} ({', '.join(names)}) implements {_hook(plain)}{either}"
    fix = (f"add vmq_acl or another plugin implementing {plain.__name__} to "
           f"{listener.key}.authz_plugins" if own else
           f"enable vmq_acl (plugins.vmq_acl = on) or a plugin implementing {plain.__name__}")
    if has_m5:
        fix += f", or allow only MQTT 5.0 ({listener.key}.allowed_protocol_versions = 5)"
    file, line = listener.option_source("authz_plugins") if own else listener.source
    return (f"{file}:{line}: {listener.key}: every {packet} from {whose} will be denied: "
            f"{why}. To fix it, {fix}")


def denied_requests(config: BrokerConfig, plugins: Plugins) -> list[str]:
    """Warnings for listeners whose authorization chain would deny every
    PUBLISH or every SUBSCRIBE of some protocol version.

    The rules are the Authorizer's (``vmqtw.auth.chain``): once any plugin of a
    listener's chain provides an authorization hook, a hook nobody provides is
    an exhausted chain, and denies.  MQTT 3.x clients are asked only the plain
    hook; 5.0 clients the ``_m5`` hook where a plugin provides it and the plain
    one otherwise, so a chain of plain hooks serves 5.0 clients too, but a
    chain of ``_m5`` hooks alone denies 3.x clients.  A chain without any
    authorization plugin allows everything (warned about elsewhere), and a
    listener that speaks no MQTT version (http) is not checked.
    """
    warnings = []
    for listener in config.listeners:
        versions = listener.allowed_protocol_versions
        plain_levels = sorted(v for v in versions if v in _PLAIN_LEVELS)
        if not plain_levels and 5 not in versions:
            continue
        chain = listener_authorizer(config, listener, plugins).authz_chain
        names = [n for n, p in chain.plugins if any(i.providedBy(p) for i in AUTHZ_INTERFACES)]
        if not names:
            continue
        for packet, plain, m5 in _AUTHZ_HOOKS:
            if chain.providers(plain):
                continue
            has_m5 = bool(chain.providers(m5))
            denied = sorted(plain_levels + ([] if has_m5 or 5 not in versions else [5]))
            if denied:
                warnings.append(_denied_text(packet, listener, plain, m5, names, has_m5,
                                             denied))
    return warnings
