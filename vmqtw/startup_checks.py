"""Doors left open, checked once the listeners are bound (security, #14).

``find_open_doors`` looks at the bound listeners, the plugins and the files
they read, and returns what the broker must refuse or warn about:

- the demo user shipped in ``etc/vmq.passwd`` (``demo``/``demo``): a loud
  warning while it is in a password file in force; a refusal to start
  (``FILE:LINE`` of the listener) when a listener whose authentication uses
  that file is reachable from the network: bound to an address that is not
  loopback, or behind a proxy (``proxy_protocol``, ``proxy_xff_support``);
- an ACL line granting ``#`` to every client (``topic #`` before the first
  ``user`` line, ``pattern #``);
- a listener reachable from the network without TLS (``tcp``/``ws`` bound to
  a non-loopback address; a PROXY listener is not warned about, since its
  proxy may terminate TLS);
- loose modes of existing private files: password files, TLS keys and PSK
  files, and the store directory and files (any group or other bit), ACL
  files (writable by group or others).
"""
from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Iterable

from vmqtw.auth.acl import AclPlugin
from vmqtw.auth.passwd import PasswdPlugin

__all__ = ["Findings", "find_open_doors", "is_loopback", "loose_mode"]


@dataclass
class Findings:
    """What the checks found: ``errors`` stop the start, ``loud`` and
    ``warnings`` are logged (``loud`` ones stand out)."""

    errors: list[str] = field(default_factory=list)
    loud: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def is_loopback(host: str) -> bool:
    """Whether a bound address is reachable from this machine only: a
    loopback IP (``::ffff:127.0.0.1`` too) or a unix socket (``local:...``)."""
    if host.startswith("local:"):
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def loose_mode(path: str, mask: int) -> int | None:
    """The permission bits of ``path`` when any bit of ``mask`` is set, else
    None (also for a path that does not exist)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    return mode if mode & mask else None


def _reachable(svc: Any) -> str | None:
    """Why a bound listener is reachable from the network, or None."""
    host, port = svc.address()
    listener = svc.listener
    if listener.proxy.enabled:
        return f"behind a proxy (proxy_protocol) on {svc.bound_address()}"
    ws = listener.websocket
    if ws is not None and ws.xff_support:
        return f"behind a proxy (proxy_xff_support) on {svc.bound_address()}"
    if not is_loopback(host):
        return f"on {svc.bound_address()}, which is not a loopback address"
    return None


def _chain_plugins(authorizer: Any) -> list[Any]:
    chain = getattr(authorizer, "chain", None)
    return [plugin for _, plugin in getattr(chain, "plugins", ())]


def _demo_checks(found: Findings, listeners: Iterable[Any], plugins: list[Any],
                 authorizers: dict[str, Any]) -> None:
    for plugin in plugins:
        if not isinstance(plugin, PasswdPlugin):
            continue
        for user, line in plugin.demo_users():
            where = f"{plugin.path}:{line}"
            found.loud.append(
                f"*** DEMO CREDENTIALS *** {where}: user {user!r} has the demo password "
                f"'demo' that ships with vmqtw: anyone who reaches a listener can log in "
                f"as {user!r}. Remove it: vmq-passwd -D {plugin.path} {user}")
            for svc in listeners:
                if plugin not in _chain_plugins(authorizers.get(svc.listener.key)):
                    continue
                why = _reachable(svc)
                if why is None:
                    continue
                file, lineno = svc.listener.source
                found.errors.append(
                    f"{file}:{lineno}: {svc.listener.key}: refusing to start: the listener "
                    f"is reachable from the network ({why}) and the password file {where} "
                    f"still holds the demo user {user!r} (password 'demo'). Remove it "
                    f"(vmq-passwd -D {plugin.path} {user}) or bind the listener to "
                    f"127.0.0.1")


def _acl_checks(found: Findings, plugins: list[Any]) -> None:
    for plugin in plugins:
        if not isinstance(plugin, AclPlugin):
            continue
        for line, text in plugin.table.open_to_all:
            found.warnings.append(
                f"{plugin.path}:{line}: {text!r} grants every topic ($SYS included) to "
                f"EVERY client; list topics per user (user NAME + topic lines) instead")


def _plain_text_checks(found: Findings, listeners: Iterable[Any]) -> None:
    for svc in listeners:
        listener = svc.listener
        if listener.tls is not None or listener.proxy.enabled:
            continue
        host, _ = svc.address()
        if is_loopback(host):
            continue
        file, line = listener.source
        found.warnings.append(
            f"{file}:{line}: {listener.key} listens on {svc.bound_address()} without TLS: "
            f"passwords and messages cross the network in clear (use an ssl/wss listener, "
            f"or bind to 127.0.0.1)")


def _private_files(config: Any, listeners: Iterable[Any],
                   plugins: list[Any]) -> Iterable[tuple[str, str, int]]:
    """(what, path, mask of the bits that are too loose)."""
    secret, shared_write = 0o077, 0o022
    for plugin in plugins:
        if isinstance(plugin, PasswdPlugin):
            yield "password file", plugin.path, secret
        elif isinstance(plugin, AclPlugin):
            yield "ACL file", plugin.path, shared_write
    for svc in listeners:
        tls = svc.listener.tls
        if tls is None:
            continue
        key = tls.keyfile or tls.certfile
        if key:
            yield f"{svc.listener.key} private key", key, secret
        if tls.psk and tls.pskfile:
            yield f"{svc.listener.key} PSK file", tls.pskfile, secret
    store = getattr(config, "store", None)
    if store is not None and store.enabled:
        yield "store directory", store.directory, secret
        for name in sorted(os.listdir(store.directory)) if os.path.isdir(store.directory) \
                else ():
            yield "store file", os.path.join(store.directory, name), secret


def _mode_checks(found: Findings, config: Any, listeners: list[Any],
                 plugins: list[Any]) -> None:
    seen: set[str] = set()
    for what, path, mask in _private_files(config, listeners, plugins):
        if path in seen:
            continue
        seen.add(path)
        mode = loose_mode(path, mask)
        if mode is None:
            continue
        private = "0700" if os.path.isdir(path) else "0600"
        found.warnings.append(
            f"{path}: {what} has mode {mode:04o}: other users of this machine can "
            f"{'change' if mask == 0o022 else 'read'} it (chmod {private} {path})")


def find_open_doors(config: Any, listeners: list[Any], plugins: list[tuple[str, Any]],
                    authorizers: dict[str, Any]) -> Findings:
    """Check bound ``listeners`` (``ListenerService``), enabled ``plugins``
    and each listener's authorizer (by listener key)."""
    found = Findings()
    objects = [plugin for _, plugin in plugins]
    _demo_checks(found, listeners, objects, authorizers)
    _acl_checks(found, objects)
    _plain_text_checks(found, listeners)
    _mode_checks(found, config, listeners, objects)
    return found
