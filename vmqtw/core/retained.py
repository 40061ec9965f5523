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

Each mountpoint has its own tree, so a filter never sees another mountpoint's
messages.  Clearing a topic prunes the nodes it leaves empty, and a
mountpoint whose last retained message is cleared is forgotten.

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
    """A topic level with levels below it: the retained message of the topic
    ending here (if any) and the children.

    A level with nothing below it is not a node: its parent's ``children``
    maps the level's name straight to its ``Message`` (most retained topics
    are leaves, and this halves what they cost).  So every node but a root
    has at least one child; a node left without children is pruned, or
    folded back into its message.
    """

    __slots__ = ("message", "children")

    def __init__(self, message: Message | None = None) -> None:
        self.message = message
        self.children: dict[str, _Entry] = {}


_Entry = Union[_Node, Message]


class RetainedTree:
    """The retained messages of every mountpoint, one trie each."""

    def __init__(self) -> None:
        self._roots: dict[str, _Node] = {}
        self._count = 0

    # -- changes ---------------------------------------------------------------------------

    def set(self, mountpoint: str, topic: str, message: Message | None) -> None:
        """Make ``message`` the retained message of ``topic``; None clears it."""
        if message is None:
            self._clear(mountpoint, topic)
            return
        node = self._roots.get(mountpoint)
        if node is None:
            node = self._roots[mountpoint] = _Node()
        levels = topic.split("/")
        leaf = levels.pop()
        for level in levels:
            children = node.children
            child = children.get(level)
            if child is None:
                child = children[_intern(level)] = _Node()
            elif child.__class__ is not _Node:  # a leaf gets a level below it
                child = children[level] = _Node(child)  # type: ignore[arg-type]
            node = child  # type: ignore[assignment]
        children = node.children
        old = children.get(leaf)
        if old is None:
            children[_intern(leaf)] = message
            self._count += 1
        elif old.__class__ is _Node:
            if old.message is None:  # type: ignore[union-attr]
                self._count += 1
            old.message = message  # type: ignore[union-attr]
        else:
            children[leaf] = message

    def _clear(self, mountpoint: str, topic: str) -> None:
        root = self._roots.get(mountpoint)
        if root is None:
            return
        levels = topic.split("/")
        leaf = levels.pop()
        path: list[tuple[_Node, str]] = []
        node = root
        for level in levels:
            child = node.children.get(level)
            if child is None or child.__class__ is not _Node:
                return  # nothing retained there
            path.append((node, level))
            node = child  # type: ignore[assignment]
        old = node.children.get(leaf)
        if old is None:
            return
        if old.__class__ is _Node:
            if old.message is None:  # type: ignore[union-attr]
                return
            old.message = None  # type: ignore[union-attr]
            self._count -= 1
            return  # a node has children: the branch stays
        del node.children[leaf]
        self._count -= 1
        # Prune bottom-up: a node without children goes, or becomes its message.
        for parent, level in reversed(path):
            if node.children:
                return
            if node.message is None:
                del parent.children[level]
            else:
                parent.children[level] = node.message
                return
            node = parent
        if not root.children:
            del self._roots[mountpoint]

    # -- queries ---------------------------------------------------------------------------

    def get(self, mountpoint: str, topic: str) -> Message | None:
        """The retained message of exactly ``topic``, or None."""
        node = self._roots.get(mountpoint)
        if node is None:
            return None
        levels = topic.split("/")
        leaf = levels.pop()
        for level in levels:
            child = node.children.get(level)
            if child is None or child.__class__ is not _Node:
                return None
            node = child  # type: ignore[assignment]
        entry = node.children.get(leaf)
        if entry is None or entry.__class__ is not _Node:
            return entry  # type: ignore[return-value]
        return entry.message  # type: ignore[union-attr]

    def match(self, mountpoint: str, topic_filter: str) -> list[Message]:
        """The retained messages of ``mountpoint`` whose topic ``topic_filter``
        matches, in the tree's order (depth first, each level's children in the
        order they were first retained)."""
        root = self._roots.get(mountpoint)
        if root is None:
            return []
        if "+" not in topic_filter and "#" not in topic_filter:
            message = self.get(mountpoint, topic_filter)
            return [message] if message is not None else []
        levels = topic_filter.split("/")
        n = len(levels)
        out: list[Message] = []
        stack: list[tuple[_Entry, int]] = [(root, 0)]
        pop, push = stack.pop, stack.append
        while stack:
            entry, i = pop()
            if entry.__class__ is not _Node:  # a leaf: its topic ends here
                if i == n or levels[i] == "#":  # 'a/#' matches 'a'
                    out.append(entry)  # type: ignore[arg-type]
                continue
            node: _Node = entry  # type: ignore[assignment]
            if i == n:
                if node.message is not None:
                    out.append(node.message)
                continue
            level = levels[i]
            if level == "#":
                # The parent level itself (a root has no message), then all below.
                if node.message is not None:
                    out.append(node.message)
                self._collect(node, i == 0, out)
            elif level == "+":
                # Reversed, so that the stack pops them in their order.
                for name, child in reversed(node.children.items()):
                    if i or not name.startswith("$"):
                        push((child, i + 1))
            else:
                found = node.children.get(level)
                if found is not None:
                    push((found, i + 1))
        return out

    @staticmethod
    def _collect(top: _Node, skip_dollar: bool, out: list[Message]) -> None:
        """Append every message strictly below ``top`` to ``out``; with
        ``skip_dollar`` (``top`` is a root) leave out the ``$`` branches."""
        stack = [child for name, child in reversed(top.children.items())
                 if not (skip_dollar and name.startswith("$"))]
        pop, extend, append = stack.pop, stack.extend, out.append
        while stack:
            entry = pop()
            if entry.__class__ is not _Node:
                append(entry)  # type: ignore[arg-type]
                continue
            if entry.message is not None:  # type: ignore[union-attr]
                append(entry.message)  # type: ignore[union-attr]
            extend(reversed(entry.children.values()))  # type: ignore[union-attr]

    def __len__(self) -> int:
        """How many retained messages there are, over all mountpoints."""
        return self._count

    def items(self) -> Iterator[tuple[str, str, Message]]:
        """Every (mountpoint, topic, message), each mountpoint's in tree order."""
        for mountpoint, root in list(self._roots.items()):
            stack: list[tuple[_Entry, str]] = [
                (child, name) for name, child in reversed(root.children.items())]
            while stack:
                entry, topic = stack.pop()
                if entry.__class__ is not _Node:
                    yield mountpoint, topic, entry  # type: ignore[misc]
                    continue
                if entry.message is not None:  # type: ignore[union-attr]
                    yield mountpoint, topic, entry.message  # type: ignore[union-attr]
                stack.extend((child, f"{topic}/{name}") for name, child in
                             reversed(entry.children.items()))  # type: ignore[union-attr]

    def _node_count(self) -> int:
        """Trie entries over all mountpoints, roots and leaves included (for tests)."""
        count = 0
        stack: list[_Entry] = list(self._roots.values())
        while stack:
            entry = stack.pop()
            count += 1
            if entry.__class__ is _Node:
                stack.extend(entry.children.values())  # type: ignore[union-attr]
        return count
