"""
Tests for ``vmqtw.core.topics``.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.core.topics import (
    TopicError,
    TopicTree,
    parse_shared,
    validate_topic_filter,
    validate_topic_name,
)


def naive_match(filter: str, topic: str) -> bool:
    """
    Oracle: does ``filter`` match ``topic``?  A plain level-by-level
    comparison, independent of the trie.
    """
    f = filter.split("/")
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


class ValidateTopicNameTests(SynchronousTestCase):
    """Tests for ``validate_topic_name``."""

    VALID = [
        "a",
        "a/b/c",
        "/",
        "/a",
        "a/",
        "a//b",
        "$SYS/broker/uptime",
        "$",
        " ",
        "A/b",
        "\u00e9t\u00e9/\U0001f600",
        "x" * 65535,
        "\u00e9" * 32767,  # 65534 bytes
    ]

    INVALID = [
        "",
        "+",
        "#",
        "a/+",
        "a/#",
        "a+",
        "a#b",
        "a/\x00",
        "x" * 65536,
        "\u00e9" * 32768,  # 65536 bytes, only 32768 characters
        "\U0001f600" * 16384,  # 65536 bytes, 16384 characters
    ]

    def test_valid(self) -> None:
        """Valid topic names pass."""
        for topic in self.VALID:
            validate_topic_name(topic)

    def test_invalid(self) -> None:
        """Invalid topic names raise TopicError with a message."""
        for topic in self.INVALID:
            with self.assertRaises(TopicError, msg=repr(topic[:20])) as cm:
                validate_topic_name(topic)
            self.assertTrue(str(cm.exception))

    def test_topicErrorIsValueError(self) -> None:
        """TopicError is a ValueError."""
        self.assertRaises(ValueError, validate_topic_name, "")

    def test_depth(self) -> None:
        """Levels are counted as slashes + 1, empty levels included."""
        validate_topic_name("a/b/c", max_depth=3)
        validate_topic_name("a/b/c", max_depth=0)
        validate_topic_name("//", max_depth=3)
        self.assertRaises(TopicError, validate_topic_name, "a/b/c/d", 3)
        self.assertRaises(TopicError, validate_topic_name, "///", 3)
        self.assertRaises(TopicError, validate_topic_name, "/a", 1)
        validate_topic_name("/" * 1000)


class ValidateTopicFilterTests(SynchronousTestCase):
    """Tests for ``validate_topic_filter``."""

    VALID = [
        "a",
        "a/b",
        "#",
        "+",
        "+/+",
        "/+",
        "+/",
        "a/#",
        "a/+/b",
        "a/+/#",
        "+/#",
        "/#",
        "//",
        "a//b",
        "$SYS/#",
        "$share",
        "$sharefoo/x",
        "x" * 65535,
    ]

    INVALID = [
        "",
        "a#",
        "#a",
        "a/#/b",
        "#/",
        "#/a",
        "##",
        "a/b#",
        "a+",
        "+a",
        "a/+b/c",
        "++",
        "a/\x00",
        "x" * 65536,
        "\u00e9" * 32768,
    ]

    def test_valid(self) -> None:
        """Valid filters pass."""
        for f in self.VALID:
            validate_topic_filter(f)

    def test_invalid(self) -> None:
        """Invalid filters raise TopicError with a message."""
        for f in self.INVALID:
            with self.assertRaises(TopicError, msg=repr(f[:20])) as cm:
                validate_topic_filter(f)
            self.assertTrue(str(cm.exception))

    def test_depth(self) -> None:
        """The depth limit applies to filters too."""
        validate_topic_filter("a/+/#", max_depth=3)
        self.assertRaises(TopicError, validate_topic_filter, "a/+/b/#", 3)
        self.assertRaises(TopicError, validate_topic_filter, "+/", 1)
        validate_topic_filter("#", max_depth=1)


class ParseSharedTests(SynchronousTestCase):
    """Tests for ``parse_shared``."""

    def test_shared(self) -> None:
        """Shared filters are split into group and inner filter."""
        cases = {
            "$share/GROUP/a/b": ("GROUP", "a/b"),
            "$share/g/#": ("g", "#"),
            "$share/g/+/x": ("g", "+/x"),
            "$share/g//": ("g", "/"),
            "$share/g/$SYS/#": ("g", "$SYS/#"),
            "$share/g/$share/h/a": ("g", "$share/h/a"),
        }
        for f, expected in cases.items():
            self.assertEqual(parse_shared(f), expected, f)

    def test_normal(self) -> None:
        """Other filters come back unchanged with no group."""
        for f in ["a/b", "#", "$share", "$sharefoo/x", "$SYS/#", "share/g/a",
                  "$SHARE/g/a"]:
            self.assertEqual(parse_shared(f), (None, f))

    def test_invalid(self) -> None:
        """Invalid shared forms raise TopicError."""
        for f in [
            "$share/",
            "$share/GROUP",
            "$share//a",
            "$share//",
            "$share/GROUP/",
            "$share/g+/a",
            "$share/+/a",
            "$share/#/a",
            "$share/g#/a",
            "$share/g/a#",
            "$share/g/#/a",
            "$share/g/a+",
            "$share/g/a\x00",
        ]:
            with self.assertRaises(TopicError, msg=f) as cm:
                parse_shared(f)
            self.assertTrue(str(cm.exception))


def _matches(tree: TopicTree, topic: str) -> set:
    return set(tree.match(topic))


class MatchTests(SynchronousTestCase):
    """Table tests of ``TopicTree.match``."""

    # (filter, topic, matches?)
    TABLE = [
        # exact
        ("a", "a", True),
        ("a", "b", False),
        ("a", "A", False),
        ("a/b", "a/b", True),
        ("a/b", "a", False),
        ("a", "a/b", False),
        ("a/b", "a/b/c", False),
        # '+'
        ("+", "a", True),
        ("+", "a/b", False),
        ("+", "/a", False),
        ("+/+", "/a", True),
        ("/+", "/a", True),
        ("+/+", "a/", True),
        ("+", "/", False),
        ("+/+", "/", True),
        ("a/+", "a/b", True),
        ("a/+", "a/", True),
        ("a/+", "a", False),
        ("a/+", "a/b/c", False),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a//c", True),
        ("a/+/c", "a/b/d", False),
        ("+/b/+", "a/b/c", True),
        # '#'
        ("#", "a", True),
        ("#", "a/b/c", True),
        ("#", "/", True),
        ("#", "/a", True),
        ("a/#", "a", True),
        ("a/#", "a/b", True),
        ("a/#", "a/b/c", True),
        ("a/#", "a/", True),
        ("a/#", "b", False),
        ("a/#", "ab", False),
        ("a/b/#", "a", False),
        ("a/b/#", "a/b", True),
        ("+/#", "a", True),
        ("+/#", "a/b/c", True),
        ("a/+/#", "a", False),
        ("a/+/#", "a/b", True),
        ("a/+/#", "a/b/c/d", True),
        ("/#", "/", True),
        ("/#", "/a", True),
        ("/#", "a", False),
        # empty levels
        ("a//b", "a//b", True),
        ("a//b", "a/b", False),
        ("a/b", "a//b", False),
        ("a//#", "a//b", True),
        ("a//#", "a/b", False),
        ("//", "//", True),
        ("/", "/", True),
        ("/", "//", False),
        # '$' topics
        ("#", "$SYS", False),
        ("#", "$SYS/x", False),
        ("#", "$", False),
        ("+", "$SYS", False),
        ("+/x", "$SYS/x", False),
        ("+/#", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("$SYS/#", "$SYS", True),
        ("$SYS/+", "$SYS/x", True),
        ("$SYS", "$SYS", True),
        ("$SYS/#", "$sys/x", False),
        ("a/#", "a/$x", True),
        ("#", "a/$x", True),
        ("+/+", "a/$x", True),
        ("a/+", "a/$x", True),
        ("#", "x$", True),
        ("+", "x$", True),
    ]

    def test_table(self) -> None:
        """Each filter matches exactly the topics the spec says."""
        for filter, topic, expected in self.TABLE:
            tree: TopicTree[str, int] = TopicTree()
            tree.add(filter, "k", 1)
            got = tree.match(topic)
            self.assertEqual(
                got, [(filter, "k", 1)] if expected else [],
                f"{filter!r} vs {topic!r}",
            )
            self.assertEqual(naive_match(filter, topic), expected,
                             f"oracle: {filter!r} vs {topic!r}")

    def test_tableAllInOneTree(self) -> None:
        """All table filters in one tree give the union of the rows."""
        tree: TopicTree[str, int] = TopicTree()
        filters = {f for f, _, _ in self.TABLE}
        for f in filters:
            tree.add(f, "k", 0)
            tree.add(f, "j", 1)
        for _, topic, _ in self.TABLE:
            expected = {(f, k, v) for f in filters if naive_match(f, topic)
                        for k, v in [("k", 0), ("j", 1)]}
            self.assertEqual(_matches(tree, topic), expected, topic)
            # and again from the cache
            self.assertEqual(_matches(tree, topic), expected, topic)

    def test_multipleKeys(self) -> None:
        """Several keys on one filter all match."""
        tree: TopicTree[int, str] = TopicTree()
        for k in range(5):
            tree.add("a/+", k, str(k))
        self.assertEqual(_matches(tree, "a/b"),
                         {("a/+", k, str(k)) for k in range(5)})

    def test_empty(self) -> None:
        """An empty tree matches nothing."""
        tree: TopicTree[int, int] = TopicTree()
        self.assertEqual(tree.match("a"), [])
        self.assertEqual(tree.match("$SYS/a"), [])


class TreeTests(SynchronousTestCase):
    """Tests for add/remove/get/len/filters of ``TopicTree``."""

    def test_addReplace(self) -> None:
        """add returns True for a new entry, False when replacing."""
        tree: TopicTree[str, int] = TopicTree()
        self.assertTrue(tree.add("a/b", "k", 1))
        self.assertFalse(tree.add("a/b", "k", 2))
        self.assertTrue(tree.add("a/b", "j", 3))
        self.assertTrue(tree.add("a/+", "k", 4))
        self.assertEqual(len(tree), 3)
        self.assertEqual(tree.get("a/b", "k"), 2)
        self.assertEqual(tree.get("a/+", "k"), 4)
        self.assertIsNone(tree.get("a/#", "k"))
        self.assertIsNone(tree.get("a/b", "x"))
        self.assertIsNone(tree.get("a/b/c", "k"))
        self.assertIsNone(tree.get("a", "k"))

    def test_replaceInvalidatesCache(self) -> None:
        """Replacing a value is visible in the next match."""
        tree: TopicTree[str, int] = TopicTree()
        tree.add("a/#", "k", 1)
        self.assertEqual(tree.match("a/b"), [("a/#", "k", 1)])
        tree.add("a/#", "k", 2)
        self.assertEqual(tree.match("a/b"), [("a/#", "k", 2)])

    def test_remove(self) -> None:
        """remove returns whether the entry was there."""
        tree: TopicTree[str, int] = TopicTree()
        tree.add("a/b", "k", 1)
        tree.add("a/b", "j", 1)
        self.assertFalse(tree.remove("a/b", "x"))
        self.assertFalse(tree.remove("a", "k"))
        self.assertFalse(tree.remove("a/b/c", "k"))
        self.assertFalse(tree.remove("a/+", "k"))
        self.assertFalse(tree.remove("a/#", "k"))
        self.assertTrue(tree.remove("a/b", "k"))
        self.assertFalse(tree.remove("a/b", "k"))
        self.assertEqual(len(tree), 1)
        self.assertEqual(tree.match("a/b"), [("a/b", "j", 1)])
        self.assertTrue(tree.remove("a/b", "j"))
        self.assertEqual(tree.match("a/b"), [])
        self.assertEqual(len(tree), 0)

    def test_prune(self) -> None:
        """Removing every entry leaves only the root node."""
        tree: TopicTree[int, int] = TopicTree()
        filters = ["a", "a/b", "a/b/c", "+", "+/+", "#", "a/#", "a/+/#",
                   "/", "//", "a//b", "$SYS/#", "+/b/#"]
        self.assertEqual(tree._node_count(), 1)
        for i, f in enumerate(filters):
            tree.add(f, i % 3, i)
            tree.add(f, 7, i)
        self.assertGreater(tree._node_count(), 10)
        for i, f in enumerate(filters):
            self.assertTrue(tree.remove(f, i % 3))
        self.assertGreater(tree._node_count(), 10)
        for f in reversed(filters):
            self.assertTrue(tree.remove(f, 7))
        self.assertEqual(tree._node_count(), 1)
        self.assertEqual(len(tree), 0)
        self.assertEqual(list(tree.filters()), [])

    def test_prunePartial(self) -> None:
        """Removing a leaf keeps the nodes its siblings still need."""
        tree: TopicTree[int, int] = TopicTree()
        tree.add("a/b/c", 1, 1)
        tree.add("a", 1, 1)
        self.assertEqual(tree._node_count(), 4)
        tree.remove("a/b/c", 1)
        self.assertEqual(tree._node_count(), 2)
        self.assertEqual(tree.match("a"), [("a", 1, 1)])
        tree.remove("a", 1)
        self.assertEqual(tree._node_count(), 1)

    def test_filters(self) -> None:
        """filters() yields each filter with entries once."""
        tree: TopicTree[int, int] = TopicTree()
        fs = ["a", "a/b", "+", "#", "a/+/#", "/", "$SYS/#"]
        for f in fs:
            tree.add(f, 1, 1)
            tree.add(f, 2, 2)
        self.assertEqual(sorted(tree.filters()), sorted(fs))
        # the tree may change while iterating
        for f in tree.filters():
            tree.remove(f, 1)
            tree.remove(f, 2)
        self.assertEqual(list(tree.filters()), [])


class CacheTests(SynchronousTestCase):
    """Tests of the match cache."""

    def test_cacheHit(self) -> None:
        """A repeated topic gets the same (shared) list."""
        tree: TopicTree[int, int] = TopicTree()
        tree.add("a/+", 1, 1)
        first = tree.match("a/b")
        self.assertIs(tree.match("a/b"), first)

    def test_invalidation(self) -> None:
        """Adds and removes that change the tree drop cached results."""
        tree: TopicTree[int, int] = TopicTree()
        self.assertEqual(tree.match("a/b"), [])
        tree.add("a/+", 1, 1)
        self.assertEqual(tree.match("a/b"), [("a/+", 1, 1)])
        tree.add("#", 2, 2)
        self.assertEqual(_matches(tree, "a/b"),
                         {("a/+", 1, 1), ("#", 2, 2)})
        tree.remove("a/+", 1)
        self.assertEqual(tree.match("a/b"), [("#", 2, 2)])
        tree.remove("#", 2)
        self.assertEqual(tree.match("a/b"), [])

    def test_bounded(self) -> None:
        """Many distinct topics do not grow the cache past its bound."""
        tree: TopicTree[int, int] = TopicTree()
        tree.add("#", 1, 1)
        bound = TopicTree.DEFAULT_CACHE_SIZE
        for i in range(bound * 2 + 17):
            self.assertEqual(tree.match(f"t/{i}"), [("#", 1, 1)])
            self.assertLessEqual(len(tree._cache), bound)
        self.assertGreater(len(tree._cache), 0)

    def test_smallBound(self) -> None:
        """A custom bound is honoured; 0 disables the cache."""
        tree: TopicTree[int, int] = TopicTree(cache_size=3)
        tree.add("+", 1, 1)
        for t in "abcdefg":
            self.assertEqual(tree.match(t), [("+", 1, 1)])
            self.assertLessEqual(len(tree._cache), 3)
        tree = TopicTree(cache_size=0)
        tree.add("+", 1, 1)
        for t in "abcdefg":
            self.assertEqual(tree.match(t), [("+", 1, 1)])
        self.assertEqual(len(tree._cache), 0)


# -- property tests against the oracle ----------------------------------

_TOPIC_LEVELS = ["a", "b", "", "$x"]

topics = (
    st.lists(st.sampled_from(_TOPIC_LEVELS), min_size=1, max_size=4)
    .map("/".join)
    .filter(bool)
)


@st.composite
def filters(draw: st.DrawFn) -> str:
    """Valid filters over the small alphabet, with '+' and a final '#'."""
    levels = draw(
        st.lists(st.sampled_from(_TOPIC_LEVELS + ["+"]), min_size=0,
                 max_size=4)
    )
    if not "/".join(levels) or draw(st.booleans()):
        levels.append("#")
    f = "/".join(levels)
    validate_topic_filter(f)
    return f


keys = st.integers(0, 2)
values = st.integers(0, 5)

ops = st.one_of(
    st.tuples(st.just("add"), filters(), keys, values),
    st.tuples(st.just("remove"), filters(), keys),
    st.tuples(st.just("match"), topics),
)


def _expected(model: dict, topic: str) -> set:
    return {(f, k, v) for (f, k), v in model.items() if naive_match(f, topic)}


class OracleTests(SynchronousTestCase):
    """TopicTree agrees with the naive matcher on random trees."""

    @settings(max_examples=200, deadline=None)
    @given(
        entries=st.lists(st.tuples(filters(), keys, values), max_size=25),
        removals=st.lists(st.tuples(filters(), keys), max_size=10),
        probe=st.lists(topics, min_size=1, max_size=10),
    )
    def test_matchesOracle(self, entries: list, removals: list,
                           probe: list) -> None:
        """Random trees, then random removes, match like the oracle."""
        tree: TopicTree[int, int] = TopicTree()
        model: dict = {}
        for f, k, v in entries:
            self.assertEqual(tree.add(f, k, v), (f, k) not in model)
            model[f, k] = v
        self.assertEqual(len(tree), len(model))
        for t in probe:
            self.assertEqual(_matches(tree, t), _expected(model, t), t)
        for f, k in removals:
            self.assertEqual(tree.remove(f, k), (f, k) in model)
            model.pop((f, k), None)
        self.assertEqual(len(tree), len(model))
        self.assertEqual(set(tree.filters()), {f for f, _ in model})
        for t in probe:
            result = tree.match(t)
            self.assertEqual(len(result), len(set(result)))
            self.assertEqual(set(result), _expected(model, t), t)
        for (f, k), v in model.items():
            self.assertEqual(tree.get(f, k), v)
        for f, k in list(model):
            self.assertTrue(tree.remove(f, k))
        self.assertEqual(tree._node_count(), 1)

    @settings(max_examples=200, deadline=None)
    @given(
        operations=st.lists(ops, max_size=40),
        cache_size=st.sampled_from([0, 2, 10000]),
    )
    def test_cacheNeverStale(self, operations: list, cache_size: int) -> None:
        """Interleaved adds, removes and matches never see stale results."""
        tree: TopicTree[int, int] = TopicTree(cache_size=cache_size)
        model: dict = {}
        for op in operations:
            if op[0] == "add":
                _, f, k, v = op
                self.assertEqual(tree.add(f, k, v), (f, k) not in model)
                model[f, k] = v
            elif op[0] == "remove":
                _, f, k = op
                self.assertEqual(tree.remove(f, k), (f, k) in model)
                model.pop((f, k), None)
            else:
                _, t = op
                self.assertEqual(_matches(tree, t), _expected(model, t), t)
                # a second match, likely from the cache
                self.assertEqual(_matches(tree, t), _expected(model, t), t)
            self.assertEqual(len(tree), len(model))
        for f, k in list(model):
            tree.remove(f, k)
        self.assertEqual(tree._node_count(), 1)
        self.assertEqual(len(tree), 0)
