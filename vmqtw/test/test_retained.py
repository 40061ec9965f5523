"""
Tests for ``vmqtw.core.retained``: retained messages in a topic tree.

The tree is checked against ``oracle_match``, a plain level-by-level
comparison written here, independent of the tree and of
``vmqtw.core.topics``.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.core.message import Message
from vmqtw.core.retained import RetainedTree


def oracle_match(topic_filter: str, topic: str) -> bool:
    """
    Oracle: does ``topic_filter`` match the topic name ``topic``?

    Written from MQTT 3.1.1/5.0 section 4.7 alone: ``#`` matches the rest
    (its parent level included), ``+`` exactly one level, anything else
    one equal level; a topic whose first level starts with ``$`` is not
    matched by a filter starting with a wildcard.
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    want = topic_filter.split("/")
    have = topic.split("/")
    while want:
        head = want.pop(0)
        if head == "#":
            return True
        if not have:
            return False
        level = have.pop(0)
        if head != "+" and head != level:
            return False
    return not have


def message(topic: str, payload: bytes = b"x") -> Message:
    return Message(topic, payload, 0, True)


def topics_of(messages: list[Message]) -> list[str]:
    return [m.topic for m in messages]


class OracleSelfTests(SynchronousTestCase):
    """The oracle itself gets the rules of section 4.7 right."""

    CASES = [
        ("a/b", "a/b", True), ("a/b", "a/c", False), ("a/+", "a/b", True),
        ("a/+", "a", False), ("a/+", "a/b/c", False), ("a/#", "a", True),
        ("a/#", "a/b/c", True), ("#", "a/b", True), ("+", "a", True),
        ("+", "a/b", False), ("+/+", "/", True), ("+", "", True),
        ("a/+/b", "a//b", True), ("#", "$SYS/x", False), ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS", True), ("$SYS/+", "$SYS/x", True), ("A", "a", False),
        ("a/b", "a/b/", False), ("a/b/", "a/b/", True), ("+/#", "$x", False),
        ("a/$x", "a/$x", True), ("a/+", "a/$x", True), ("a/#", "a/$x", True),
    ]

    def test_cases(self) -> None:
        """Hand-checked filter/topic pairs, including the ``$`` rule and empty levels."""
        for f, t, expected in self.CASES:
            self.assertEqual(oracle_match(f, t), expected, (f, t))


class RetainedTreeTests(SynchronousTestCase):
    """Setting, replacing, clearing and looking up retained messages."""

    def test_set_get_replace_clear(self) -> None:
        """A topic holds one message: set, replace, then clear it."""
        tree = RetainedTree()
        m1, m2 = message("a/b", b"1"), message("a/b", b"2")
        tree.set("", "a/b", m1)
        self.assertIs(tree.get("", "a/b"), m1)
        tree.set("", "a/b", m2)
        self.assertIs(tree.get("", "a/b"), m2)
        self.assertEqual(len(tree), 1)
        tree.set("", "a/b", None)
        self.assertIsNone(tree.get("", "a/b"))
        self.assertEqual(len(tree), 0)
        self.assertEqual(tree.match("", "#"), [])

    def test_clear_what_is_not_there(self) -> None:
        """Clearing a topic with no retained message changes nothing, even when
        the topic is a prefix of a retained one or has one as its prefix."""
        tree = RetainedTree()
        tree.set("", "a/b", message("a/b"))
        for topic in ("a", "a/b/c", "x", "a/c"):
            tree.set("", topic, None)
        tree.set("other", "a/b", None)
        self.assertEqual(len(tree), 1)
        self.assertEqual(topics_of(tree.match("", "#")), ["a/b"])
        self.assertEqual(tree._node_count(), 3)

    def test_get_of_an_inner_level(self) -> None:
        """A level that only leads to retained topics has no message of its own."""
        tree = RetainedTree()
        tree.set("", "a/b/c", message("a/b/c"))
        self.assertIsNone(tree.get("", "a/b"))
        self.assertIsNone(tree.get("", "a/b/c/d"))
        self.assertEqual(tree.match("", "a/b"), [])

    def test_exact_filter(self) -> None:
        """A filter without wildcards finds exactly its own topic."""
        tree = RetainedTree()
        for t in ("a", "a/b", "a/b/c"):
            tree.set("", t, message(t))
        self.assertEqual(topics_of(tree.match("", "a/b")), ["a/b"])
        self.assertEqual(tree.match("", "a/c"), [])

    def test_wildcards(self) -> None:
        """``+`` takes one level, ``#`` its parent and everything below."""
        tree = RetainedTree()
        for t in ("a", "a/b", "a/b/c", "a/x/c", "b", "a//c"):
            tree.set("", t, message(t))
        self.assertEqual(topics_of(tree.match("", "a/#")), ["a", "a/b", "a/b/c", "a/x/c", "a//c"])
        self.assertEqual(topics_of(tree.match("", "a/+/c")), ["a/b/c", "a/x/c", "a//c"])
        self.assertEqual(topics_of(tree.match("", "+")), ["a", "b"])
        self.assertEqual(topics_of(tree.match("", "a/+")), ["a/b"])
        self.assertEqual(topics_of(tree.match("", "+/+/#")),
                         ["a/b", "a/b/c", "a/x/c", "a//c"])

    def test_dollar_topics_not_matched_by_leading_wildcards(self) -> None:
        """MQTT-4.7.2-1: ``#`` and ``+/...`` never match a topic whose first level
        starts with ``$``; a filter naming the ``$`` level does, and ``$`` below
        the first level is an ordinary name."""
        tree = RetainedTree()
        for t in ("$SYS/uptime", "$", "a/$x", "b"):
            tree.set("", t, message(t))
        self.assertEqual(topics_of(tree.match("", "#")), ["a/$x", "b"])
        self.assertEqual(topics_of(tree.match("", "+")), ["b"])
        self.assertEqual(topics_of(tree.match("", "+/uptime")), [])
        self.assertEqual(topics_of(tree.match("", "+/#")), ["a/$x", "b"])
        self.assertEqual(topics_of(tree.match("", "$SYS/#")), ["$SYS/uptime"])
        self.assertEqual(topics_of(tree.match("", "$SYS/+")), ["$SYS/uptime"])
        self.assertEqual(topics_of(tree.match("", "$")), ["$"])
        self.assertEqual(topics_of(tree.match("", "a/+")), ["a/$x"])

    def test_empty_levels(self) -> None:
        """Empty levels are levels: ``/`` has two, ``+`` matches the empty one."""
        tree = RetainedTree()
        for t in ("/", "/a", "a/", ""):
            tree.set("", t, message(t))
        self.assertEqual(topics_of(tree.match("", "+/+")), ["/", "/a", "a/"])
        self.assertEqual(topics_of(tree.match("", "+")), [""])
        # '/#' takes its parent level, the empty first level: the topic "".
        self.assertEqual(topics_of(tree.match("", "/#")), ["", "/", "/a"])

    def test_mountpoints_kept_apart(self) -> None:
        """Each mountpoint has its own messages; a filter sees only its own."""
        tree = RetainedTree()
        tree.set("m1", "t", message("t", b"1"))
        tree.set("m2", "t", message("t", b"2"))
        tree.set("m2", "u", message("u", b"3"))
        self.assertEqual([m.payload for m in tree.match("m1", "#")], [b"1"])
        self.assertEqual([m.payload for m in tree.match("m2", "+")], [b"2", b"3"])
        self.assertEqual(tree.match("", "#"), [])
        self.assertEqual(len(tree), 3)
        tree.set("m1", "t", None)
        self.assertEqual([m.payload for m in tree.match("m2", "t")], [b"2"])
        self.assertEqual(sorted((mp, t) for mp, t, _m in tree.items()),
                         [("m2", "t"), ("m2", "u")])

    def test_order(self) -> None:
        """Wildcard matches come depth first, each level in the order its names
        first appeared; ``items()`` lists topics in the order they were first
        retained."""
        tree = RetainedTree()
        for t in ("a/2", "b", "a/1", "a/1/x", "a"):
            tree.set("", t, message(t))
        self.assertEqual(topics_of(tree.match("", "#")), ["a", "a/2", "a/1", "a/1/x", "b"])
        self.assertEqual([t for _mp, t, _m in tree.items()], ["a/2", "b", "a/1", "a/1/x", "a"])

    def test_replacing_keeps_the_trie(self) -> None:
        """A new message for a retained topic replaces the old one without
        touching the trie; the lookups return the new message."""
        tree = RetainedTree()
        tree.set("", "a/b", message("a/b", b"old"))
        tree.set("", "a", message("a", b"old"))
        nodes = tree._node_count()
        new_ab, new_a = message("a/b", b"new"), message("a", b"new")
        tree.set("", "a/b", new_ab)
        tree.set("", "a", new_a)
        self.assertEqual(tree._node_count(), nodes)
        self.assertEqual(len(tree), 2)
        self.assertEqual(tree.match("", "a/#"), [new_a, new_ab])
        self.assertIs(tree.get("", "a/b"), new_ab)

    def test_items_rebuild_the_topics(self) -> None:
        """``items()`` gives each topic as it was set, empty levels included."""
        tree = RetainedTree()
        topics = ["a/b", "/", "a//b", "$SYS/x", "a"]
        for t in topics:
            tree.set("mp", t, message(t))
        self.assertEqual(sorted(t for _mp, t, _m in tree.items()), sorted(topics))
        for _mp, t, m in tree.items():
            self.assertEqual(m.topic, t)

    def test_emptied_branches_are_pruned(self) -> None:
        """Clearing the last message of a branch removes the branch, and the
        last message of a mountpoint removes the mountpoint: memory goes back
        to what it was."""
        tree = RetainedTree()
        tree.set("", "keep", message("keep"))
        baseline = tree._node_count()
        for t in ("a/b/c/d", "a/b/x", "a", "a/b"):
            tree.set("", t, message(t))
        tree.set("m", "deep/er/still", message("deep/er/still"))
        for t in ("a/b/x", "a/b/c/d", "a/b"):
            tree.set("", t, None)
        self.assertEqual(tree._node_count(), baseline + 1 + 4)  # 'a' stays; 'm' has 4
        tree.set("", "a", None)
        tree.set("m", "deep/er/still", None)
        self.assertEqual(tree._node_count(), baseline)
        self.assertEqual(list(tree._mounts), [""])
        tree.set("", "keep", None)
        self.assertEqual(tree._node_count(), 0)
        self.assertEqual(len(tree), 0)

    def test_clearing_an_inner_topic_keeps_the_branch(self) -> None:
        """Clearing ``a`` while ``a/b`` is retained keeps ``a/b`` reachable."""
        tree = RetainedTree()
        tree.set("", "a", message("a"))
        tree.set("", "a/b", message("a/b"))
        tree.set("", "a", None)
        self.assertEqual(topics_of(tree.match("", "#")), ["a/b"])
        self.assertEqual(topics_of(tree.match("", "a/#")), ["a/b"])

    def test_deep_topics_do_not_recurse(self) -> None:
        """Thousands of levels (a topic may be 65535 bytes) are walked without
        running into the recursion limit."""
        tree = RetainedTree()
        deep = "/".join(["l"] * 5000)
        tree.set("", deep, message(deep))
        self.assertEqual(topics_of(tree.match("", "#")), [deep])
        self.assertEqual(topics_of(tree.match("", "/".join(["+"] * 5000))), [deep])
        self.assertEqual([t for _mp, t, _m in tree.items()], [deep])
        tree.set("", deep, None)
        self.assertEqual(tree._node_count(), 0)

    def test_wildcard_visits_only_matching_branches(self) -> None:
        """A filter with a literal level does not walk the branches that level
        rules out: a lookup among many retained topics touches few nodes."""
        tree = RetainedTree()
        for site in range(50):
            for dev in range(50):
                t = f"site/{site}/dev/{dev}"
                tree.set("", t, message(t))
        visited = _count_visits(tree, "", "site/7/+/3")
        self.assertEqual(topics_of(tree.match("", "site/7/+/3")), ["site/7/dev/3"])
        self.assertLess(visited, 10)


def _count_visits(tree: RetainedTree, mountpoint: str, topic_filter: str) -> int:
    """How many nodes ``match`` reads the children of, counted by wrapping
    every children dict in one that counts lookups and iterations."""
    visits = [0]

    class Counting(dict):  # type: ignore[type-arg]
        def get(self, key, default=None):  # type: ignore[no-untyped-def]
            visits[0] += 1
            return super().get(key, default)

        def items(self):  # type: ignore[no-untyped-def]
            visits[0] += 1
            return super().items()

        def values(self):  # type: ignore[no-untyped-def]
            visits[0] += 1
            return super().values()

    stack = [mount.root for mount in tree._mounts.values()]
    while stack:
        node = stack.pop()
        children = getattr(node, "children", None)  # leaves are bare messages
        if children is not None:
            node.children = Counting(children)
            stack.extend(children.values())
    visits[0] = 0
    tree.match(mountpoint, topic_filter)
    return visits[0]


# -- property tests against the oracle -------------------------------------------------

_LEVELS = ["a", "b", "", "$x", "$"]

topic_names = st.lists(st.sampled_from(_LEVELS), min_size=1, max_size=4).map("/".join)


@st.composite
def topic_filters(draw: st.DrawFn) -> str:
    """Valid filters over the small alphabet, with ``+`` and maybe a final ``#``."""
    levels = draw(st.lists(st.sampled_from(_LEVELS + ["+"]), min_size=0, max_size=4))
    if not levels or draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


mountpoints = st.sampled_from(["", "m"])

operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), mountpoints, topic_names, st.integers(0, 3)),
        st.tuples(st.just("clear"), mountpoints, topic_names),
        st.tuples(st.just("match"), mountpoints, topic_filters()),
    ),
    max_size=50,
)


class OracleTests(SynchronousTestCase):
    """``RetainedTree`` agrees with the oracle on random sets, clears and lookups."""

    @settings(max_examples=300, deadline=None)
    @given(operations=operations)
    def test_matches_oracle(self, operations: list) -> None:
        """After any sequence of sets and clears, every lookup returns exactly
        the messages the oracle picks from a plain dict of what is retained, no
        message twice; the count and ``items()`` agree; clearing everything
        leaves no node behind."""
        tree = RetainedTree()
        model: dict[tuple[str, str], Message] = {}
        for op in operations:
            if op[0] == "set":
                _, mp, t, n = op
                m = Message(t, b"%d" % n, 0, True)
                tree.set(mp, t, m)
                model[mp, t] = m
            elif op[0] == "clear":
                _, mp, t = op
                tree.set(mp, t, None)
                model.pop((mp, t), None)
            else:
                _, mp, f = op
                got = tree.match(mp, f)
                expected = [m for (mmp, t), m in model.items()
                            if mmp == mp and oracle_match(f, t)]
                self.assertEqual(len(got), len({id(m) for m in got}), f)
                self.assertEqual({id(m) for m in got}, {id(m) for m in expected}, f)
            self.assertEqual(len(tree), len(model))
        self.assertEqual({(mp, t): m for mp, t, m in tree.items()}, model)
        for (mp, t), m in model.items():
            self.assertIs(tree.get(mp, t), m)
        for mp, t in list(model):
            tree.set(mp, t, None)
        self.assertEqual(tree._node_count(), 0)
        self.assertEqual(len(tree), 0)

    @settings(max_examples=100, deadline=None)
    @given(topics=st.lists(topic_names, max_size=30, unique=True),
           probes=st.lists(topic_filters(), min_size=1, max_size=20))
    def test_every_filter_against_one_population(self, topics: list, probes: list) -> None:
        """One population of retained topics, many filters: each lookup finds
        the oracle's topics."""
        tree = RetainedTree()
        for t in topics:
            tree.set("", t, message(t))
        for f in probes:
            self.assertEqual(sorted(topics_of(tree.match("", f))),
                             sorted(t for t in topics if oracle_match(f, t)), f)
