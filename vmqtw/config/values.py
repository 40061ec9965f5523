"""
Value parsers: each takes the raw string of one ``key = value`` line and
returns the typed value, or raises ``_Invalid(message)``.

This is the only module that reads the text of a value: ``on``/``true`` and
``off``/``false`` (``_bool``), integers, durations, lists, addresses of
proxies, TLS versions...  The schema (``vmqtw.config.schema``) says which
parser checks which key; everything after the parser works on typed values.
"""

from __future__ import annotations

import ipaddress
import re
from types import MappingProxyType
from typing import Any, Callable, Mapping


def _empty_mapping() -> Mapping[Any, Any]:
    """A read-only empty mapping (the default of mapping fields)."""
    return MappingProxyType({})


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
    An integer in [lo, hi].  With ``inherit``, -1 is also accepted (meaning
    "inherit from the level above"; the validator returns -1).  With
    ``infinity``, the word ``infinity`` is accepted and returned as ``None``.
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
    Split a list value written as ``[a, b]`` or ``a,b`` (the forms VerneMQ
    accepts for ``auth_plugins``, ``eccs``, ``http_modules``,
    ``allowed_protocol_versions``...) into its stripped, non-empty items.
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


#: The TLS versions a listener may speak, oldest first.
TLS_VERSIONS: tuple[str, ...] = ("tlsv1", "tlsv1.1", "tlsv1.2", "tlsv1.3")
_TLS_VERSIONS = TLS_VERSIONS


def _tls_versions(raw: str) -> tuple[str, ...]:
    """A list of TLS versions, returned oldest first."""
    items = split_list(raw)
    if not items or any(i not in _TLS_VERSIONS for i in items):
        raise _Invalid(
            f"expected a comma-separated list from {', '.join(_TLS_VERSIONS)}, "
            f"got {raw!r}"
        )
    return tuple(v for v in _TLS_VERSIONS if v in items)


def _cipher_list(raw: str) -> tuple[str, ...]:
    """
    OpenSSL cipher names separated by ``:`` (VerneMQ's form), ``,`` or blanks,
    optionally in brackets.  Names are not checked here: only OpenSSL knows
    them (the TLS layer asks it when the listener is built).
    """
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return tuple(c for c in re.split(r"[:,\s]+", text) if c)


def _single_char(raw: str) -> str:
    if len(raw) != 1:
        raise _Invalid(f"expected a single character, got {raw!r}")
    return raw


def _mountpoint(raw: str) -> str:
    """
    ``off`` -> ``''``; anything else is kept exactly as written.  As in
    VerneMQ (``vmq_schema``'s mountpoint translation keeps the string), the
    mountpoint is a namespace name, not a topic prefix: ``site/`` and
    ``site`` are two different namespaces.
    """
    if raw == "off":
        return ""
    if "+" in raw or "#" in raw:
        raise _Invalid(f"a mountpoint cannot contain '+' or '#', got {raw!r}")
    return raw


def _ip_list(raw: str) -> tuple[str, ...]:
    """``;``-separated IP addresses (proxy_xff_trusted_intermediate)."""
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


# VerneMQ's vmq_schema:string_to_secs/1, used by persistent_client_expiration
# and max_last_will_delay: ONE integer followed by ONE unit letter.  There is no
# minute: "m" is a month of 4 weeks (28 days) and "y" a year of 12 such months
# (336 days), exactly as VerneMQ computes them.
_VMQ_UNITS = {
    "s": 1,
    "h": 60 * 60,
    "d": 24 * 60 * 60,
    "w": 7 * 24 * 60 * 60,
    "m": 4 * 7 * 24 * 60 * 60,
    "y": 12 * 4 * 7 * 24 * 60 * 60,
}
_VMQ_DURATION_RE = re.compile(r"([0-9]+)([shdwmy])\Z")
_VMQ_UNITS_TEXT = (
    "s, h, d, w, m or y (second, hour, day, week, month = 4 weeks, "
    "year = 48 weeks; there is no minute unit)"
)


def vmq_seconds(raw: str) -> int | None:
    """``N<unit>`` in seconds as VerneMQ's ``string_to_secs``, or None."""
    m = _VMQ_DURATION_RE.match(raw)
    if not m:
        return None
    return int(m.group(1)) * _VMQ_UNITS[m.group(2)]


def _expiration(raw: str) -> int | None:
    """``never`` -> None; ``Ns``, ``Nh``, ``Nd``, ``Nw``, ``Nm``, ``Ny`` -> seconds."""
    if raw == "never":
        return None
    seconds = vmq_seconds(raw)
    if seconds is None:
        raise _Invalid(
            f"expected 'never' or an integer followed by {_VMQ_UNITS_TEXT}, got {raw!r}"
        )
    # VerneMQ stores 'never' as 0, so a zero duration also means never.
    return seconds or None


def _last_will_delay(raw: str) -> int | None:
    """
    ``client`` -> None (the client's value stands); ``N<unit>`` with VerneMQ's
    units (``1m`` is a month).  Plain seconds (``90``) are accepted too: a
    vmqtw extension, VerneMQ refuses a number without a unit.
    """
    if raw == "client":
        return None
    if re.match(r"[0-9]+\Z", raw):
        return int(raw)
    seconds = vmq_seconds(raw)
    if seconds is None:
        raise _Invalid(
            f"expected 'client', seconds, or an integer followed by {_VMQ_UNITS_TEXT}, "
            f"got {raw!r}"
        )
    return seconds


_BYTE_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}


def _bytesize_or_infinity(raw: str) -> int | None:
    """A cuttlefish byte size (``10MB``, ``512KB``, ``100``) or ``infinity`` (None)."""
    if raw == "infinity":
        return None
    m = re.match(r"([0-9]+)(B|KB|MB|GB|TB)?\Z", raw)
    if not m:
        raise _Invalid(f"expected a byte size like 10MB, or infinity, got {raw!r}")
    return int(m.group(1)) * _BYTE_UNITS[m.group(2) or ""]


#: VerneMQ's log levels (``log.console.level``), and what vmqtw calls them.
LOG_LEVELS = {"debug": "debug", "info": "info", "notice": "info", "warning": "warn",
              "warn": "warn", "error": "error", "critical": "critical",
              "alert": "critical", "emergency": "critical"}


def _log_level(raw: str) -> str:
    """A VerneMQ log level, returned as vmqtw's name (``warning`` -> ``warn``)."""
    if raw not in LOG_LEVELS:
        raise _Invalid(f"expected one of debug, info, warning, error, got {raw!r}")
    return LOG_LEVELS[raw]
