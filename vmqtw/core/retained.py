"""Retained messages in a topic tree, one tree per mountpoint.

A SUBSCRIBE looks up the retained messages its filter matches.  Kept in a
flat ``topic -> message`` table, every wildcard filter would have to be
compared with every retained topic; here the topics are split into levels and
stored in a trie, so a lookup walks only the branches the filter can match:

- a literal level follows one child;
- ``+`` follows every child of the level (one level, which may be empty);
- ``#`` takes the node it is under (``a/#`` matches ``a``) and everything
  below it;
- at the first level neither wildcard enters a branch whose name starts with
  ``$`` (MQTT-4.7.2-1: ``#`` and ``+/x`` do not match ``$SYS/x``).

The messages themselves sit in a flat ``topic -> message`` table next to the
trie, which holds only the topics: replacing a topic's retained message (the
common case: a device publishing its state) and exact lookups stay one dict
operation; the trie changes only when a topic appears or goes.

Each mountpoint has its own table and trie, so a filter never sees another
mountpoint's messages.  Clearing a topic prunes the trie nodes it leaves
empty, and a mountpoint whose last retained message is cleared is forgotten.

Topics are not validated here: callers pass topic names and filters that
passed ``vmqtw.core.topics`` validation.  This module does not import Twisted.
"""
from __future__ import annotations

import sys
from typing import Iterator, Union

from vmqtw.core.message import Message

__all__ = ["RetainedTree"]

_intern = sys.intern


class _Node:
    """A topic level with levels below it: ``topic`` when a retained topic
    ends here (else None) and the children.

    A level with nothing below it is not a node: its parent's ``children``
    maps the level's name straight to the topic string (most retained topics
    are leaves, and the string is the message's own).  So every node but a
    root has at least one child; a node left without children is pruned, or
    folded back into its topic.
    """

    __slots__ = ("topic", "children")

    def __init__(self, topic: str | None = None) -> None:
        self.topic = topic
        self.children: dict[str, _Entry] = {}


_Entry = Union[_Node, str]


class _Mountpoint:
    """The retained messages of one mountpoint: the table and the trie."""

    __slots__ = ("messages", "root")

    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}
        self.root = _Node()


class RetainedTree:
    """The retained messages of every mountpoint, a table and a trie each."""

    def __init__(self) -> None:
        self._mounts: dict[str, _Mountpoint] = {}
        self._count = 0
        #: The payload bytes of every retained message (for ``max_retained_bytes``).
        self.nbytes = 0

    # -- changes ---------------------------------------------------------------------------

    def set(self, mountpoint: str, topic: str, message: Message | None) -> None:
        """Make ``message`` the retained message of ``topic``; None clears it."""
        if message is None:
            self._clear(mountpoint, topic)
            return
        mount = self._mounts.get(mountpoint)
        if mount is None:
            mount = self._mounts[mountpoint] = _Mountpoint()
        messages = mount.messages
        old = messages.get(topic)
        messages[topic] = message
        self.nbytes += len(message.payload)
        if old is not None:
            self.nbytes -= len(old.payload)
            return  # a new message for a known topic: the trie stays as it is
        self._count += 1
        node = mount.root
        levels = topic.split("/")
        leaf = levels.pop()
        for level in levels:
            children = node.children
            child = children.get(level)
            if child is None:
                child = children[_intern(level)] = _Node()
            elif child.__class__ is not _Node:  # a leaf gets a level below it
                child = children[level] = _Node(child)  # type: ignore[arg-type]
            node = child
        children = node.children
        entry = children.get(leaf)
        if entry is None:
            children[_intern(leaf)] = topic
        else:  # an inner node (a leaf would be a known topic)
            entry.topic = topic  # type: ignore[union-attr]

    def _clear(self, mountpoint: str, topic: str) -> None:
        mount = self._mounts.get(mountpoint)
        if mount is None:
            return
        old = mount.messages.pop(topic, None)
        if old is None:
            return  # nothing retained there
        self._count -= 1
        self.nbytes -= len(old.payload)
        if not mount.messages:
            del self._mounts[mountpoint]  # the trie goes with it
            return
        levels = topic.split("/")
        leaf = levels.pop()
        path: list[tuple[_Node, str]] = []
        node = mount.root
        for level in levels:
            path.append((node, level))
            node = node.children[level]  # type: ignore[assignment]
        entry = node.children[leaf]
        if entry.__class__ is _Node:
            entry.topic = None
            return  # a node has children: the branch stays
        del node.children[leaf]
        # Prune bottom-up: a node without children goes, or becomes its topic.
        for parent, level in reversed(path):
            if node.children:
                return
            if node.topic is None:
                del parent.children[level]
            else:
                parent.children[level] = node.topic
                return
            node = parent

    # -- queries ---------------------------------------------------------------------------

    def get(self, mountpoint: str, topic: str) -> Message | None:
        """The retained message of exactly ``topic``, or None."""
        mount = self._mounts.get(mountpoint)
        return mount.messages.get(topic) if mount is not None else None

    def match(self, mountpoint: str, topic_filter: str) -> list[Message]:
        """The retained messages of ``mountpoint`` whose topic ``topic_filter``
        matches, in the trie's order (depth first, each level's children in the
        order they first appeared)."""
        mount = self._mounts.get(mountpoint)
        if mount is None:
            return []
        messages = mount.messages
        if "+" not in topic_filter and "#" not in topic_filter:
            message = messages.get(topic_filter)
            return [message] if message is not None else []
        levels = topic_filter.split("/")
        n = len(levels)
        found: list[str] = []
        stack: list[tuple[_Entry, int]] = [(mount.root, 0)]
        pop, push = stack.pop, stack.append
        while stack:
            entry, i = pop()
            if entry.__class__ is not _Node:  # a leaf: its topic ends here
                if i == n or levels[i] == "#":  # 'a/#' matches 'a'
                    found.append(entry)  # type: ignore[arg-type]
                continue
            node: _Node = entry
            if i == n:
                if node.topic is not None:
                    found.append(node.topic)
                continue
            level = levels[i]
            if level == "#":
                # The parent level itself (a root has no topic), then all below.
                if node.topic is not None:
                    found.append(node.topic)
                self._collect(node, i == 0, found)
            elif level == "+":
                # Reversed, so that the stack pops them in their order.
                for name, child in reversed(node.children.items()):
                    if i or not name.startswith("$"):
                        push((child, i + 1))
            else:
                found_child = node.children.get(level)
                if found_child is not None:
                    push((found_child, i + 1))
        return [messages[topic] for topic in found]

    def iter_match(self, mountpoint: str, topic_filter: str) -> Iterator[Message | None]:
        """What ``match`` finds, one trie step at a time: each item is a matching
        message or None (a step that matched nothing), so that a caller can
        bound the work it does per reactor turn.  The trie may change between
        steps: a topic cleared meanwhile is skipped, one added may be missed."""
        mount = self._mounts.get(mountpoint)
        if mount is None:
            return
        messages = mount.messages
        if "+" not in topic_filter and "#" not in topic_filter:
            message = messages.get(topic_filter)
            if message is not None:
                yield message
            return
        levels = topic_filter.split("/")
        n = len(levels)
        # (entry, level index); index -1: everything below a '#' matches.
        stack: list[tuple[_Entry, int]] = [(mount.root, 0)]
        pop, push = stack.pop, stack.append
        get = messages.get
        while stack:
            entry, i = pop()
            if entry.__class__ is not _Node:  # a leaf: its topic ends here
                if i < 0 or i == n or levels[i] == "#":
                    yield get(entry)  # type: ignore[arg-type]
                else:
                    yield None
                continue
            node: _Node = entry
            if i < 0 or i == n:
                yield get(node.topic) if node.topic is not None else None
                if i < 0:
                    for child in reversed(node.children.values()):
                        push((child, -1))
                continue
            level = levels[i]
            if level == "#":
                # The parent level itself (a root has no topic), then all below.
                yield get(node.topic) if node.topic is not None else None
                for name, child in reversed(node.children.items()):
                    if i or not name.startswith("$"):
                        push((child, -1))
            elif level == "+":
                for name, child in reversed(node.children.items()):
                    if i or not name.startswith("$"):
                        push((child, i + 1))
                yield None
            else:
                found_child = node.children.get(level)
                if found_child is not None:
                    push((found_child, i + 1))
                yield None

    @staticmethod
    def _collect(top: _Node, skip_dollar: bool, found: list[str]) -> None:
        """Append every topic strictly below ``top`` to ``found``; with
        ``skip_dollar`` (``top`` is a root) leave out the ``$`` branches."""
        stack = [child for name, child in reversed(top.children.items())
                 if not (skip_dollar and name.startswith("$"))]
        pop, extend, append = stack.pop, stack.extend, found.append
        while stack:
            entry = pop()
            if entry.__class__ is not _Node:
                append(entry)  # type: ignore[arg-type]
                continue
            if entry.topic is not None:
                append(entry.topic)
            extend(reversed(entry.children.values()))

    def __len__(self) -> int:
        """How many retained messages there are, over all mountpoints."""
        return self._count

    def items(self) -> Iterator[tuple[str, str, Message]]:
        """Every (mountpoint, topic, message), each mountpoint's in the order
        the topics were first retained."""
        for mountpoint, mount in list(self._mounts.items()):
            for topic, message in list(mount.messages.items()):
                yield mountpoint, topic, message

    def _node_count(self) -> int:
        """Trie entries over all mountpoints, roots and leaves included (for tests)."""
        count = 0
        stack: list[_Entry] = [mount.root for mount in self._mounts.values()]
        while stack:
            entry = stack.pop()
            count += 1
            if entry.__class__ is _Node:
                stack.extend(entry.children.values())
        return count
