"""Listener addresses written as Twisted endpoint descriptions: recognising
and checking them (syntax only; nothing is resolved or bound).

Standard library only, so the configuration parser can use it.
"""
from __future__ import annotations

import socket

__all__ = ["PREFIXES", "PROXY_KINDS", "is_description", "split_description",
           "check_description"]

#: Description prefixes a listener address may use.
PREFIXES = ("tcp", "tcp6", "unix", "systemd", "proxy")
#: Listener kinds that may have the PROXY protocol (as ``proxy_protocol``).
PROXY_KINDS = ("tcp", "ws", "http")

_ARGS = {
    "tcp": ({"interface", "backlog"}, 1),
    "tcp6": ({"interface", "backlog"}, 1),
    "unix": ({"backlog", "mode", "lockfile"}, 1),
    "systemd": ({"domain", "index", "name"}, 0),
}


def is_description(value: str) -> bool:
    """True if ``value`` starts with one of ``PREFIXES`` and a colon."""
    prefix, colon, _ = value.partition(":")
    return bool(colon) and prefix in PREFIXES


def split_description(description: str) -> tuple[list[str], dict[str, str]]:
    """Positional and ``key=value`` parts, as Twisted's ``serverFromString``
    splits them: ``:`` separates parts, ``=`` the first one in a part ends its
    key, a backslash escapes the next character."""
    parts: list[tuple[str, str | None]] = []  # (key or value, value or None)
    current, key = "", None
    chars = iter(description)
    for c in chars:
        if c == "\\":
            current += next(chars, "")
        elif c == ":":
            parts.append((current, None) if key is None else (key, current))
            current, key = "", None
        elif c == "=" and key is None:
            key, current = current, ""
        else:
            current += c
    parts.append((current, None) if key is None else (key, current))
    args = [text for text, value in parts if value is None]
    kwargs = {text: value for text, value in parts if value is not None}
    return args, kwargs


def check_description(description: str, kind: str = "tcp") -> None:
    """Raise ValueError (the message says what is wrong) unless
    ``description`` is an endpoint description a ``kind`` listener can use."""
    proxied = description.startswith("proxy:")
    if proxied:
        if kind not in PROXY_KINDS:
            raise ValueError(f"proxy: descriptions are for {', '.join(PROXY_KINDS)} "
                             f"listeners (as proxy_protocol)")
        description = description[len("proxy:"):]
    try:
        args, kwargs = split_description(description)
    except Exception as e:
        raise ValueError(f"cannot parse endpoint description {description!r}: {e}") from None
    if not args or args[0] not in _ARGS:
        known = ", ".join(p + ":" for p in PREFIXES if p != "proxy" or not proxied)
        raise ValueError(f"unknown endpoint type in {description!r} (use {known})")
    prefix, positional = args[0], args[1:]
    allowed, n = _ARGS[prefix]
    if len(positional) != n:
        what = "a path" if prefix == "unix" else "a port" if n else "no positional value"
        raise ValueError(f"{prefix}: takes {what}, got {description!r}")
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"{prefix}: unknown parameter {unknown[0]!r} (known: "
                         f"{', '.join(sorted(allowed))})")
    if prefix in ("tcp", "tcp6"):
        _int_in(positional[0], "port", 0, 65535)
    if "backlog" in kwargs:
        _int_in(kwargs["backlog"], "backlog", 1, 1 << 20)
    if prefix == "unix" and not positional[0]:
        raise ValueError("unix: needs a socket path")
    if prefix == "systemd":
        family = kwargs.get("domain")
        if family is None or not isinstance(getattr(socket, f"AF_{family}", None), int):
            raise ValueError("systemd: needs domain=INET, INET6 or UNIX")
        if ("index" in kwargs) == ("name" in kwargs):
            raise ValueError("systemd: needs exactly one of index=N or name=NAME")
        if "index" in kwargs:
            _int_in(kwargs["index"], "index", 0, 1 << 16)


def _int_in(text: str, what: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"{what} must be an integer between {low} and {high}, got {text!r}")
    return int(text)
