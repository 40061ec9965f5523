"""
MQTT topic names, topic filters and the subscription trie.

Implements the rules of MQTT 3.1.1 section 4.7 and MQTT 5.0 section 4.7:

- ``+`` matches exactly one level (which may be empty);
- ``#`` matches its parent level and any number of child levels;
- topics whose first level starts with ``$`` are not matched by filters
  whose first level is ``+`` or ``#``;
- levels are compared exactly (case-sensitive; empty levels count).

This module does not import Twisted.
"""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

__all__ = [
    "TopicError",
    "TopicTree",
    "filter_matches",
    "parse_shared",
    "validate_topic_filter",
    "validate_topic_name",
]

K = TypeVar("K")
V = TypeVar("V")

#: Largest UTF-8 encoded length of an MQTT string, in bytes.
MAX_TOPIC_BYTES = 65535

# A string of at most this many code points is at most MAX_TOPIC_BYTES bytes
# in UTF-8 (4 bytes per code point at worst), so it need not be encoded.
_SHORT_TOPIC_CHARS = MAX_TOPIC_BYTES // 4

_SHARE_PREFIX = "$share/"


class TopicError(ValueError):
    """A topic name, topic filter or shared subscription is invalid."""


def _check_length(s: str, what: str) -> None:
    """Raise TopicError if ``s`` is longer than an MQTT string may be."""
    if len(s) <= _SHORT_TOPIC_CHARS:
        return
    try:
        size = len(s.encode("utf-8"))
    except UnicodeEncodeError:
        raise TopicError(f"{what} is not valid UTF-8") from None
    if size > MAX_TOPIC_BYTES:
        raise TopicError(
            f"{what} is {size} bytes long, more than {MAX_TOPIC_BYTES}"
        )


def _check_depth(s: str, max_depth: int, what: str) -> None:
    """Raise TopicError if ``s`` has more than ``max_depth`` levels."""
    if max_depth > 0:
        depth = s.count("/") + 1
        if depth > max_depth:
            raise TopicError(
                f"{what} has {depth} levels, more than the limit {max_depth}"
            )


def validate_topic_name(topic: str, max_depth: int = 0) -> None:
    """
    Check a PUBLISH topic name.

    It must be non-empty, contain no wildcard (``+``, ``#``) and no U+0000,
    be at most 65535 UTF-8 bytes and, if ``max_depth > 0``, have at most
    ``max_depth`` levels.

    Lone surrogates are only detected for very long strings; the codec
    decodes strictly, so they cannot arrive from the wire.

    :raises TopicError: if the topic name is invalid.
    """
    if not topic:
        raise TopicError("topic name is empty")
    if "+" in topic or "#" in topic:
        raise TopicError(f"topic name {topic!r} contains a wildcard")
    if "\x00" in topic:
        raise TopicError("topic name contains U+0000")
    _check_length(topic, "topic name")
    _check_depth(topic, max_depth, "topic name")


def validate_topic_filter(filter: str, max_depth: int = 0) -> None:
    """
    Check a SUBSCRIBE / UNSUBSCRIBE topic filter.

    It must be non-empty, contain no U+0000, be at most 65535 UTF-8 bytes;
    ``#`` may only be the whole last level and ``+`` only a whole level;
    if ``max_depth > 0`` it may have at most ``max_depth`` levels.

    :raises TopicError: if the filter is invalid.
    """
    if not filter:
        raise TopicError("topic filter is empty")
    if "\x00" in filter:
        raise TopicError("topic filter contains U+0000")
    _check_length(filter, "topic filter")
    if "+" in filter or "#" in filter:
        levels = filter.split("/")
        last = len(levels) - 1
        for i, level in enumerate(levels):
            if "#" in level:
                if level != "#":
                    raise TopicError(
                        f"topic filter {filter!r}: '#' must be a whole level"
                    )
                if i != last:
                    raise TopicError(
                        f"topic filter {filter!r}: '#' must be the last level"
                    )
            elif "+" in level and level != "+":
                raise TopicError(
                    f"topic filter {filter!r}: '+' must be a whole level"
                )
    _check_depth(filter, max_depth, "topic filter")


def parse_shared(filter: str) -> tuple[str | None, str]:
    """
    Split a shared subscription filter into its group and inner filter.

    ``'$share/GROUP/a/b'`` gives ``('GROUP', 'a/b')``; any filter not
    starting with ``'$share/'`` gives ``(None, filter)`` unchanged and
    unvalidated.  For a shared filter the inner filter is checked with
    ``validate_topic_filter`` (without a depth limit; the caller applies
    its own limit to the returned filter).

    :raises TopicError: if the shared form is invalid (no inner filter,
        empty group, group containing a wildcard, invalid inner filter).
    """
    if not filter.startswith(_SHARE_PREFIX):
        return None, filter
    rest = filter[len(_SHARE_PREFIX):]
    sep = rest.find("/")
    if sep < 0:
        raise TopicError(f"shared subscription {filter!r} has no topic filter")
    group = rest[:sep]
    if not group:
        raise TopicError(f"shared subscription {filter!r} has an empty group")
    if "+" in group or "#" in group:
        raise TopicError(
            f"shared subscription {filter!r}: group name contains a wildcard"
        )
    inner = rest[sep + 1:]
    if not inner:
        raise TopicError(f"shared subscription {filter!r} has no topic filter")
    validate_topic_filter(inner)
    return group, inner


def filter_matches(topic_filter: str, topic: str) -> bool:
    """
    True if MQTT ``topic_filter`` matches ``topic`` (wildcards and ``$`` rules).

    One comparison, level by level: for many topics or filters use a tree
    (``TopicTree`` for subscriptions, ``vmqtw.core.retained.RetainedTree`` for
    retained messages).
    """
    f = topic_filter.split("/")
    t = topic.split("/")
    if t[0].startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


class _Node:
    """One trie level: literal children, the '+' and '#' children, entries."""

    __slots__ = ("children", "plus", "hash", "subs")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.plus: _Node | None = None
        self.hash: _Node | None = None
        # key -> (filter, key, value); the tuple is what match() returns.
        self.subs: dict = {}

    def is_empty(self) -> bool:
        """True if the node holds no entries and has no children."""
        return (
            not self.subs
            and not self.children
            and self.plus is None
            and self.hash is None
        )


class TopicTree(Generic[K, V]):
    """
    Subscriptions: filter -> {key: value}.

    Keys are hashable subscriber identities, values are opaque.  Filters
    are not validated here: callers pass filters that have passed
    ``validate_topic_filter`` (and, for shared subscriptions, the inner
    filter from ``parse_shared``).

    ``match`` results are cached per topic; the cache is dropped on every
    change to the tree and cleared whenever it reaches ``cache_size``
    topics (0 disables caching).
    """

    DEFAULT_CACHE_SIZE = 10000

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._root = _Node()
        self._count = 0
        self._cache: dict[str, list[tuple[str, K, V]]] = {}
        self._cache_size = cache_size

    # -- changes -------------------------------------------------------

    def add(self, filter: str, key: K, value: V) -> bool:
        """
        Store ``value`` for (``filter``, ``key``).

        :returns: True if (filter, key) is new, False if its value was
            replaced.
        """
        node = self._root
        for level in filter.split("/"):
            if level == "+":
                nxt = node.plus
                if nxt is None:
                    nxt = node.plus = _Node()
            elif level == "#":
                nxt = node.hash
                if nxt is None:
                    nxt = node.hash = _Node()
            else:
                nxt = node.children.get(level)
                if nxt is None:
                    nxt = node.children[level] = _Node()
            node = nxt
        new = key not in node.subs
        node.subs[key] = (filter, key, value)
        if new:
            self._count += 1
        self._cache.clear()
        return new

    def remove(self, filter: str, key: K) -> bool:
        """
        Remove (``filter``, ``key``), pruning nodes left empty.

        :returns: True if it was there.
        """
        path: list[tuple[_Node, str]] = []
        node: _Node | None = self._root
        for level in filter.split("/"):
            assert node is not None
            path.append((node, level))
            if level == "+":
                node = node.plus
            elif level == "#":
                node = node.hash
            else:
                node = node.children.get(level)
            if node is None:
                return False
        assert node is not None  # split() yields at least one level
        if key not in node.subs:
            return False
        del node.subs[key]
        self._count -= 1
        self._cache.clear()
        # Prune empty nodes bottom-up.
        for parent, level in reversed(path):
            if not node.is_empty():
                break
            if level == "+":
                parent.plus = None
            elif level == "#":
                parent.hash = None
            else:
                del parent.children[level]
            node = parent
        return True

    # -- queries -------------------------------------------------------

    def get(self, filter: str, key: K) -> V | None:
        """Return the value stored for (``filter``, ``key``), or None."""
        node: _Node | None = self._root
        for level in filter.split("/"):
            assert node is not None
            if level == "+":
                node = node.plus
            elif level == "#":
                node = node.hash
            else:
                node = node.children.get(level)
            if node is None:
                return None
        assert node is not None  # split() yields at least one level
        entry = node.subs.get(key)
        return None if entry is None else entry[2]

    def match(self, topic: str) -> list[tuple[str, K, V]]:
        """
        Return every (filter, key, value) whose filter matches ``topic``.

        The order is unspecified.  The returned list may be shared with
        other callers through the cache: callers must not mutate it.
        """
        cache = self._cache
        result = cache.get(topic)
        if result is not None:
            return result
        result = self._match(topic)
        if self._cache_size > 0:
            if len(cache) >= self._cache_size:
                cache.clear()
            cache[topic] = result
        return result

    def _match(self, topic: str) -> list[tuple[str, K, V]]:
        """Walk the trie for ``topic``, without the cache."""
        levels = topic.split("/")
        n = len(levels)
        out: list = []
        root = self._root
        stack: list[tuple[_Node, int]] = []
        # '$' topics are not matched by a first-level wildcard.
        if not topic.startswith("$"):
            h = root.hash
            if h is not None:
                out.extend(h.subs.values())
            p = root.plus
            if p is not None:
                stack.append((p, 1))
        c = root.children.get(levels[0])
        if c is not None:
            stack.append((c, 1))
        pop = stack.pop
        push = stack.append
        extend = out.extend
        while stack:
            node, i = pop()
            h = node.hash
            if h is not None:
                # 'a/#' matches 'a' as well as everything below it.
                extend(h.subs.values())
            if i == n:
                if node.subs:
                    extend(node.subs.values())
                continue
            children = node.children
            if children:
                c = children.get(levels[i])
                if c is not None:
                    push((c, i + 1))
            p = node.plus
            if p is not None:
                push((p, i + 1))
        return out

    def __len__(self) -> int:
        """Number of (filter, key) entries."""
        return self._count

    def filters(self) -> Iterator[str]:
        """
        Iterate over the filters that have at least one entry.

        The filters are collected before the first one is yielded, so the
        tree may be changed while iterating.
        """
        found: list[str] = []
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.subs:
                found.append(next(iter(node.subs.values()))[0])
            stack.extend(node.children.values())
            if node.plus is not None:
                stack.append(node.plus)
            if node.hash is not None:
                stack.append(node.hash)
        return iter(found)

    def _node_count(self) -> int:
        """Number of trie nodes, root included (for tests)."""
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children.values())
            if node.plus is not None:
                stack.append(node.plus)
            if node.hash is not None:
                stack.append(node.hash)
        return count
