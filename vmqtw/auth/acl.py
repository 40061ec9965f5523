"""vmq_acl: publish and subscribe authorization from an ACL file.

File format (VerneMQ's, see docs/file-auth.md)::

    # comment
    topic [read|write|readwrite] FILTER     no access word = read and write
    user USERNAME                           the topic lines below are that user's
    pattern [read|write|readwrite] FILTER   for every client, even after a user line

``topic`` lines before the first ``user`` line form the "all" table, which
applies to EVERY client (that is what VerneMQ's code does; its docs say
"anonymous clients").  In ``pattern`` filters a whole level ``%u`` is
replaced by the user name, ``%c`` by the client id and ``%m`` by the
mountpoint; the replaced value is always a literal word, never a wildcard,
and a pattern with ``%u`` does not apply to a client without a user name.

Where VerneMQ refuses the file, we accept it with a warning naming FILE:LINE:
CRLF line endings, leading or trailing whitespace, several spaces or tabs
between the words.  A line that still fits no form, or a filter that is not
a valid MQTT topic filter, is an error: at startup a ``ValueError``, on a
reload the last good rules stay in force.

Evaluation, for write (auth_on_publish, the topic name) and read
(auth_on_subscribe, each filter): the "all" rules, then the client's user
rules, then the patterns.  Each ACL entry is a filter and the request is
matched against it level by level, treating ``+`` and ``#`` in the request
as ordinary words, with two safety rules on top of VerneMQ's matcher:

- a ``#`` in the request is granted only by a ``#`` in the ACL at the same or
  an earlier level (VerneMQ lets ACL ``a/+`` grant a subscription to
  ``a/#``, which receives ``a/b/c``);
- a request's ``+`` / ``#`` never equals a literal ACL word (a client id
  ``+`` in ``pattern devices/%c/#`` must not grant ``devices/+/#``).

So subscribing to ``a/+`` is granted by ``a/+``, ``a/#`` and ``#`` but not by
``a/b``; publishing to ``a/b`` by ``a/b``, ``a/+``, ``a/#``, ``#``.  ``#`` also
matches the parent level (ACL ``a/#`` grants ``a``), as in MQTT.

Topics starting with ``$`` are NOT special here, as in VerneMQ: ACL ``#`` or
``+/x`` grants ``$SYS/x``.  (Routing still keeps ``$`` topics out of ``#``
subscriptions, per MQTT; an explicit ``$SYS/#`` subscription is what the ACL
decides.)  Topics are compared without the listener's mountpoint.

A SUBSCRIBE is granted (OK) only when every filter is; the first denied
filter makes the answer NEXT, so unless another plugin grants it the whole
SUBSCRIBE is refused, as in VerneMQ.  A shared subscription
``$share/GROUP/FILTER`` is checked on FILTER.

Settings: ``vmq_acl.acl_file`` (default ``vmq.acl`` next to broker.conf),
``vmq_acl.acl_reload_interval`` (seconds, default 10, 0 = off).
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from zope.interface import implementer

from vmqtw.auth.api import NEXT, OK, IAuthOnPublish, IAuthOnSubscribe, IClient, Result
from vmqtw.auth.context import (
    FileFormatError, PluginContext, ReloadingFile, check_settings, parse_interval,
    resolve_path,
)
from vmqtw.core.topics import TopicError, parse_shared, validate_topic_filter

__all__ = ["AclPlugin", "AclTable", "parse_acl", "make_plugin", "READ", "WRITE"]

READ = "read"
WRITE = "write"
_ACCESS = {"read": (READ,), "write": (WRITE,), "readwrite": (READ, WRITE)}

SETTINGS = ("acl_file", "acl_reload_interval")


class _Token:
    """A non-literal level of an ACL filter."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


PLUS = _Token("+")
HASH = _Token("#")
SUB_USER = _Token("%u")
SUB_CLIENT = _Token("%c")
SUB_MOUNTPOINT = _Token("%m")
_SUBSTITUTIONS = {"%u": SUB_USER, "%c": SUB_CLIENT, "%m": SUB_MOUNTPOINT}


def covers(acl: Sequence[Any], request: Sequence[str]) -> bool:
    """Whether the ACL filter ``acl`` (tokens) grants the request (its levels).

    ``acl`` holds literal strings, ``PLUS`` and ``HASH``; substitutions must
    already have been replaced.
    """
    n = len(request)
    for i, tok in enumerate(acl):
        if tok is HASH:
            return True
        if i >= n:
            return False
        word = request[i]
        if tok is PLUS:
            if word == "#":
                return False
            continue
        if tok != word or word == "+" or word == "#":
            return False
    return len(acl) == n


class _Rules:
    """The filters of one table for one access (read or write)."""

    __slots__ = ("exact", "wild")

    def __init__(self) -> None:
        #: Filters without wildcards: they grant exactly that topic.
        self.exact: set[str] = set()
        #: Filters with wildcards, tokenized.
        self.wild: list[tuple[Any, ...]] = []

    def add(self, text: str, tokens: tuple[Any, ...]) -> None:
        if all(isinstance(t, str) for t in tokens):
            self.exact.add(text)
        elif tokens not in self.wild:
            self.wild.append(tokens)

    def allows(self, text: str, levels: Sequence[str]) -> bool:
        if text in self.exact:
            return True
        for tokens in self.wild:
            if covers(tokens, levels):
                return True
        return False

    def __len__(self) -> int:
        return len(self.exact) + len(self.wild)


class AclTable:
    """Parsed ACL rules: the "all" table, per-user tables and patterns."""

    def __init__(self) -> None:
        self.all: dict[str, _Rules] = {READ: _Rules(), WRITE: _Rules()}
        self.users: dict[str, dict[str, _Rules]] = {}
        #: (tokens, uses %u) pairs per access.
        self.patterns: dict[str, list[tuple[tuple[Any, ...], bool]]] = {READ: [], WRITE: []}

    def add_topic(self, user: str | None, accesses: Iterable[str], text: str,
                  tokens: tuple[Any, ...]) -> None:
        for access in accesses:
            if user is None:
                self.all[access].add(text, tokens)
            else:
                rules = self.users.setdefault(user, {READ: _Rules(), WRITE: _Rules()})
                rules[access].add(text, tokens)

    def add_pattern(self, accesses: Iterable[str], tokens: tuple[Any, ...]) -> None:
        entry = (tokens, SUB_USER in tokens)
        for access in accesses:
            if entry not in self.patterns[access]:
                self.patterns[access].append(entry)

    def allows(self, access: str, username: str | None, client_id: str, mountpoint: str,
               topic: str) -> bool:
        levels = topic.split("/")
        if self.all[access].allows(topic, levels):
            return True
        if username is not None:
            rules = self.users.get(username)
            if rules is not None and rules[access].allows(topic, levels):
                return True
        for tokens, uses_user in self.patterns[access]:
            if uses_user and username is None:
                continue
            acl = [username if t is SUB_USER else client_id if t is SUB_CLIENT
                   else mountpoint if t is SUB_MOUNTPOINT else t for t in tokens]
            if covers(acl, levels):
                return True
        return False


_KEYWORD = re.compile(r"(\S+)(\s*)(.*)", re.S)
_ACCESS_WORD = re.compile(r"(read|write|readwrite)(\s+)(.+)", re.S)


def _tokens(text: str, pattern: bool, lineno: int, warn: Any) -> tuple[Any, ...]:
    out: list[Any] = []
    for level in text.split("/"):
        if level == "+":
            out.append(PLUS)
        elif level == "#":
            out.append(HASH)
        elif level in _SUBSTITUTIONS:
            if pattern:
                out.append(_SUBSTITUTIONS[level])
            else:
                warn(lineno, f"{level} is replaced only in pattern lines; "
                             f"here it is the literal word {level!r}")
                out.append(level)
        else:
            if pattern and ("%u" in level or "%c" in level or "%m" in level):
                warn(lineno, f"substitutions work only as a whole topic level; "
                             f"{level!r} is taken literally")
            out.append(level)
    return tuple(out)


def parse_acl(data: bytes, warn: Any = None) -> AclTable:
    """Parse a whole ACL file.

    :param warn: called as ``warn(line, message)`` for tolerated oddities.
    :raise FileFormatError: at the first line that fits no form.
    """
    if warn is None:
        def warn(line: int, message: str) -> None:
            pass
    table = AclTable()
    user: str | None = None
    crlf_warned = False
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
        warn(1, "UTF-8 byte order mark ignored")
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FileFormatError(lineno, "not valid UTF-8") from None
        if text.endswith("\r"):
            text = text[:-1]
            if not crlf_warned:
                warn(lineno, "CRLF line endings (accepted; VerneMQ would not load this file)")
                crlf_warned = True
        line = text.strip()
        if not line:
            continue
        if line != text:
            warn(lineno, "leading or trailing whitespace ignored")
        if line.startswith("#"):
            continue
        match = _KEYWORD.fullmatch(line)
        assert match is not None
        keyword, gap, rest = match.groups()
        if keyword not in ("topic", "user", "pattern"):
            raise FileFormatError(
                lineno, f"unknown keyword {keyword!r} (expected topic, user or pattern)")
        if not rest:
            what = "user name" if keyword == "user" else "topic filter"
            raise FileFormatError(lineno, f"{keyword} line without a {what}")
        if gap != " ":
            warn(lineno, f"expected exactly one space after {keyword!r}")
        if keyword == "user":
            user = rest
            continue
        access = _ACCESS_WORD.fullmatch(rest)
        if access is not None:
            accesses = _ACCESS[access.group(1)]
            if access.group(2) != " ":
                warn(lineno, f"expected exactly one space after {access.group(1)!r}")
            filt = access.group(3)
        else:
            accesses = _ACCESS["readwrite"]
            filt = rest
            if rest in _ACCESS:
                warn(lineno, f"no topic filter after {rest!r}: taken as read and write "
                             f"access to the topic {rest!r}, as VerneMQ does")
        try:
            validate_topic_filter(filt)
        except TopicError as e:
            raise FileFormatError(lineno, str(e)) from None
        if keyword == "topic":
            table.add_topic(user, accesses, filt, _tokens(filt, False, lineno, warn))
        else:
            table.add_pattern(accesses, _tokens(filt, True, lineno, warn))
    return table


@implementer(IAuthOnPublish, IAuthOnSubscribe)
class AclPlugin(ReloadingFile[AclTable]):
    """The vmq_acl plugin: grants publishes and subscriptions from the ACL file."""

    what = "ACL file"

    def __init__(self, path: str, interval: int, context: PluginContext) -> None:
        self.table = AclTable()
        #: Called (without arguments) after a reload installed new rules: the
        #: broker authorizes existing subscriptions again (``vmqtw.connection.reauth``).
        self.rules_reloaded: list[Callable[[], None]] = []
        super().__init__(path, interval, context)

    def parse(self, data: bytes) -> AclTable:
        return parse_acl(data, self.warn)

    def install(self, table: AclTable) -> None:
        self.table = table
        for observer in list(self.rules_reloaded):
            observer()

    def allows(self, access: str, client: IClient, topic: str) -> bool:
        return self.table.allows(access, client.username, client.client_id,
                                 client.mountpoint or "", topic)

    def auth_on_publish(self, client: IClient, topic: str, payload: bytes, qos: int,
                        retain: bool) -> Result:
        return OK if self.allows(WRITE, client, topic) else NEXT

    def auth_on_subscribe(self, client: IClient, topics: list[tuple[str, int]]) -> Result:
        for filt, _qos in topics:
            try:
                _group, inner = parse_shared(filt)
            except TopicError:
                return NEXT
            if not self.allows(READ, client, inner):
                return NEXT
        return OK


def make_plugin(settings: Mapping[str, str], context: PluginContext) -> AclPlugin:
    check_settings(settings, SETTINGS, "vmq_acl")
    path = str(settings.get("acl_file", "vmq.acl")).strip()
    if not path:
        raise ValueError("vmq_acl.acl_file is empty")
    interval = parse_interval(settings, "acl_reload_interval", "vmq_acl")
    # Relative to the configuration file's directory; normalised so that errors name
    # the file plainly.
    return AclPlugin(os.path.normpath(resolve_path(path, context.config_dir)), interval,
                     context)
