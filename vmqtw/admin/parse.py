"""VerneMQ's (clique's) command-line syntax.

``vmq-admin session show --limit=10 --client_id=c1`` is made of the command
words (``session show``), ``key=value`` arguments, and flags: ``--name``,
``--name=value``, ``-x`` or ``-x value`` for a short alias that takes a value.
Whatever a command does not declare is a usage error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmqtw.config import _bool as config_bool  # the one reader of on/off values


class UsageError(Exception):
    """A bad command line: the message is printed with the command's usage."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class Flag:
    name: str
    short: str | None = None
    takes_value: bool = False


@dataclass
class Parsed:
    args: dict[str, str] = field(default_factory=dict)
    #: flag name -> value (None for a bare flag); the last one given wins
    flags: dict[str, str | None] = field(default_factory=dict)
    #: every flag as given, in order (``--topic --topic=a`` is two items)
    items: list[tuple[str, str | None]] = field(default_factory=list)

    def flag(self, name: str, default: Any = None) -> Any:
        return self.flags.get(name, default)


def parse(tokens: list[str], keys: tuple[str, ...], flags: tuple[Flag, ...],
          any_flag: bool = False, usage: str = "") -> Parsed:
    """Split ``tokens`` (after the command words).  With ``any_flag`` every
    ``--name[=value]`` is accepted (``session show``'s column flags)."""
    by_short = {f.short: f for f in flags if f.short}
    by_name = {f.name: f for f in flags}
    out = Parsed()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            spec = by_name.get(name)
            if not name or (spec is None and not any_flag):
                raise UsageError(f"Invalid flag: {token}", usage)
            if spec is not None and spec.takes_value and not eq:
                raise UsageError(f"The flag --{name} needs a value", usage)
            out.flags[name] = value if eq else None
            out.items.append((name, out.flags[name]))
        elif token.startswith("-") and len(token) > 1:
            spec = by_short.get(token[1:])
            if spec is None:
                raise UsageError(f"Invalid flag: {token}", usage)
            if spec.takes_value:
                if i >= len(tokens):
                    raise UsageError(f"The flag {token} needs a value", usage)
                out.flags[spec.name] = tokens[i]
                i += 1
            else:
                out.flags[spec.name] = None
            out.items.append((spec.name, out.flags[spec.name]))
        elif "=" in token:
            key, _, value = token.partition("=")
            if key not in keys:
                raise UsageError(f"Invalid argument: {key}", usage)
            out.args[key] = value
        else:
            raise UsageError(f"Invalid argument: {token}", usage)
    return out


def bool_value(value: str | None, name: str, usage: str = "") -> bool:
    """A flag's value, read like the configuration's booleans (``true``,
    ``false``, ``on``, ``off``); a bare flag is true."""
    if value is None:
        return True
    try:
        return bool(config_bool(value.lower()))
    except ValueError:
        raise UsageError(f"Invalid value for {name}: {value}", usage) from None


def int_value(value: str | None, name: str, usage: str = "", lo: int = 0) -> int:
    try:
        number = int(value or "")
    except ValueError:
        raise UsageError(f"Invalid value for {name}: {value}", usage) from None
    if number < lo:
        raise UsageError(f"Invalid value for {name}: {value}", usage)
    return number
