"""
``vmqtw.log_json``: VerneMQ's ``json`` log format (``log.console.file.format``,
``log.error.file.format``): one JSON object per line with time, level,
namespace, node, msg, the event's fields and tracebacks, never raising.
"""

from __future__ import annotations

import io
import json
import os
from datetime import datetime, timedelta, timezone
from typing import Any

from twisted.logger import LogLevel, LogPublisher, formatEvent, globalLogPublisher
from twisted.logger._legacy import publishToNewObserver
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from vmqtw import log_json, logs
from vmqtw.config import ConfigError, LogConfig, parse
from vmqtw.config.settings import SettingError
from vmqtw.codec import Disconnect
from vmqtw.test.connection_harness import Rig


def one_line(text: str) -> dict[str, Any]:
    """The single JSON object of ``text`` (one line ending with a newline)."""
    assert text.endswith("\n"), repr(text)
    lines = text.splitlines()
    assert len(lines) == 1, lines
    doc = json.loads(lines[0])
    assert isinstance(doc, dict)
    return doc


def event(fmt: str = "hello", level: Any = LogLevel.info, **fields: Any) -> dict[str, Any]:
    return {"log_format": fmt, "log_level": level, "log_namespace": "vmqtw.t",
            "log_time": 1765064401.123456, **fields}


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")


class Hopeless(Unprintable):
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class FormatTests(SynchronousTestCase):

    def test_core_fields(self) -> None:
        """A line has ``time`` (RFC 3339, UTC, microseconds), ``level``,
        ``namespace``, ``node`` and ``msg``, the text of the text format's message."""
        e = event("client {client_id!r} from {peer}", client_id="c1", peer="1.2.3.4:5")
        doc = one_line(log_json.format_json_event(e, node="VerneMQ@10.0.0.1"))
        self.assertEqual(list(doc)[:5], ["time", "level", "namespace", "node", "msg"])
        self.assertEqual(doc["time"], "2025-12-06T23:40:01.123456Z")
        parsed = datetime.fromisoformat(doc["time"].replace("Z", "+00:00"))
        self.assertEqual(parsed.utcoffset(), timedelta(0))
        self.assertEqual(parsed, datetime(2025, 12, 6, 23, 40, 1, 123456, timezone.utc))
        self.assertEqual(doc["level"], "info")
        self.assertEqual(doc["namespace"], "vmqtw.t")
        self.assertEqual(doc["node"], "VerneMQ@10.0.0.1")
        self.assertEqual(doc["msg"], "client 'c1' from 1.2.3.4:5")
        self.assertEqual(doc["msg"], formatEvent(e))
        self.assertNotIn("node", one_line(log_json.format_json_event(e)))

    def test_levels_have_erlang_names(self) -> None:
        """Twisted's levels are written with Erlang logger's names (``warn`` is
        ``warning``), as VerneMQ writes them."""
        got = {level: one_line(log_json.format_json_event(event(level=level)))["level"]
               for level in LogLevel.iterconstants()}
        self.assertEqual(got, {LogLevel.debug: "debug", LogLevel.info: "info",
                               LogLevel.warn: "warning", LogLevel.error: "error",
                               LogLevel.critical: "critical"})

    def test_fields_are_kept_as_json(self) -> None:
        """Every field the event was logged with is a key of its own, JSON values as
        they are (tuples as lists); ``log_*`` keys are not repeated."""
        e = event(client_id="c1", username=None, qos=1, ok=True, ratio=0.5,
                  filters=("a/+", "b/#"), props={"k": [1, 2]})
        doc = one_line(log_json.format_json_event(e))
        self.assertEqual({k: doc[k] for k in ("client_id", "username", "qos", "ok",
                                              "ratio", "filters", "props")},
                         {"client_id": "c1", "username": None, "qos": 1, "ok": True,
                          "ratio": 0.5, "filters": ["a/+", "b/#"], "props": {"k": [1, 2]}})
        self.assertFalse([k for k in doc if k.startswith("log_")], doc)

    def test_field_named_like_a_core_key(self) -> None:
        """A field called like a core key (``time``, ``msg``...) does not replace it:
        it is written as ``field_<name>``."""
        e = event("{msg}", msg="text", time=3, node="other")
        doc = one_line(log_json.format_json_event(e, node="VerneMQ@a"))
        self.assertEqual((doc["msg"], doc["field_msg"]), ("text", "text"))
        self.assertEqual((doc["node"], doc["field_node"]), ("VerneMQ@a", "other"))
        self.assertEqual(doc["field_time"], 3)
        self.assertEqual(doc["time"], "2025-12-06T23:40:01.123456Z")

    def test_escaping_keeps_one_line(self) -> None:
        """Quotes, backslashes, newlines, control characters and the Unicode line
        separators stay inside one line, and read back unchanged."""
        nasty = 'a"b\\c\nd\re\tf\x00g\x0bh\x1ei\x85j\u2028k\u2029l'
        text = log_json.format_json_event(event("{x}", x=nasty, **{"odd\nkey": nasty}))
        self.assertEqual(text.count("\n"), 1)
        doc = one_line(text)
        self.assertEqual(doc["x"], nasty)
        self.assertEqual(doc["msg"], nasty)
        self.assertEqual(doc["odd\nkey"], nasty)

    def test_unicode_is_utf8(self) -> None:
        """Non-ASCII text is written as UTF-8 characters (not ``\\u`` escapes); a
        lone surrogate (undecodable bytes) is escaped so the line still encodes."""
        text = log_json.format_json_event(event("{who}", who="Zoë 東京 🚀", bad="x\udc80y"))
        self.assertIn("Zoë 東京 🚀", text)
        text.encode("utf-8")  # does not raise
        doc = one_line(text)
        self.assertEqual(doc["who"], "Zoë 東京 🚀")
        self.assertEqual(doc["bad"], "x\udc80y")

    def test_non_json_values_as_text(self) -> None:
        """Values JSON has no type for are written as their ``str`` (``repr`` if
        ``str`` fails, a placeholder if both do): bytes, sets, objects, NaN,
        infinity, huge ints, non-string keys, cycles."""
        cycle: list[Any] = [1]
        cycle.append(cycle)
        e = event(raw=b"\xff\x00", tags={"a"}, obj=Unprintable(), nope=Hopeless(),
                  nan=float("nan"), inf=float("-inf"), big=1 << 20000,
                  keyed={(1, 2): "t", 3: "n"}, cycle=cycle, peer=("127.0.0.1", 1883))
        doc = one_line(log_json.format_json_event(e))
        self.assertEqual(doc["raw"], "b'\\xff\\x00'")
        self.assertEqual(doc["tags"], "{'a'}")
        self.assertIn("Unprintable object at", doc["obj"])
        self.assertEqual(doc["nope"], "<unprintable Hopeless>")
        self.assertEqual((doc["nan"], doc["inf"]), ("nan", "-inf"))
        self.assertEqual(doc["big"], "<int of 20001 bits>")
        self.assertEqual(doc["keyed"], {"(1, 2)": "t", "3": "n"})
        self.assertEqual(doc["cycle"][0], 1)
        self.assertEqual(doc["peer"], ["127.0.0.1", 1883])

    def test_failure_has_a_traceback_field(self) -> None:
        """``log.failure``: the message in ``msg``, the traceback in ``traceback``,
        still one line; ``twisted.python.log.err`` events too."""
        seen: list[dict[str, Any]] = []
        log = logs.Logger(namespace="vmqtw.t", observer=LogPublisher(seen.append))
        try:
            raise ZeroDivisionError("integer division or modulo by zero")
        except ZeroDivisionError:
            log.failure("while handling {what}", what="a PUBLISH")
        doc = one_line(log_json.format_json_event(seen[0]))
        self.assertEqual(doc["level"], "critical")
        self.assertEqual(doc["msg"], "while handling a PUBLISH")
        self.assertEqual(doc["what"], "a PUBLISH")
        self.assertIn("Traceback (most recent call last)", doc["traceback"])
        self.assertIn("ZeroDivisionError", doc["traceback"])
        self.assertNotIn("failure", doc)

        legacy: dict[str, Any] = {"message": (), "isError": 1, "system": "-",
                                  "time": 1765064401.0, "why": "oops",
                                  "failure": Failure(ValueError("bad"))}
        observed: list[dict[str, Any]] = []
        publishToNewObserver(observed.append, legacy, legacy_log.textFromEventDict)
        doc = one_line(log_json.format_json_event(observed[0]))
        self.assertEqual(doc["level"], "critical")
        self.assertIn("ValueError", doc["traceback"])
        self.assertFalse({"message", "isError", "why", "failure", "system"} & set(doc), doc)

    def test_never_raises(self) -> None:
        """Broken events still give a line: an empty event, a format that does not
        match its fields, a bad time, and a failure whose traceback cannot be had."""
        class BadFailure:
            def getTraceback(self) -> str:
                raise RuntimeError("no traceback")

        for e in ({}, event("{missing"), event("{x.y}", x=1), event(log_time="soon"),
                  event(log_time=float("nan")), event(log_failure=BadFailure()),
                  {1: "non-string key", "log_format": "k"}):
            doc = one_line(log_json.format_json_event(e))
            self.assertIn("msg", doc)
            self.assertIn("time", doc)

    def test_encoder_failure_still_writes_a_line(self) -> None:
        """If encoding fails anyway, the line says so at error level (the log call
        does not raise)."""
        self.patch(log_json, "_document", lambda event, node: {"x": object()})
        doc = one_line(log_json.format_json_event(event("the event"), node="n"))
        self.assertEqual(doc["level"], "error")
        self.assertIn("unable to write a log event as JSON", doc["msg"])
        self.assertEqual((doc["event"], doc["node"]), ("the event", "n"))

    def test_connect_and_disconnect_lines(self) -> None:
        """The connect and disconnect lines of a session carry client id, user name,
        peer and listener as fields, and the disconnect line its reason."""
        seen: list[str] = []

        def observer(e: dict[str, Any]) -> None:
            seen.append(log_json.format_json_event(e))

        globalLogPublisher.addObserver(observer)
        try:
            c = Rig().connected("dev-9", username="alice")
            c.send(Disconnect())
            c.lose()
        finally:
            globalLogPublisher.removeObserver(observer)
        docs = [one_line(t) for t in seen]
        (connect,) = [d for d in docs if " connected from " in d["msg"]]
        (disconnect,) = [d for d in docs if "disconnected:" in d["msg"]]
        for doc in (connect, disconnect):
            self.assertEqual((doc["client_id"], doc["username"], doc["peer"],
                              doc["listener"]), ("dev-9", "alice", "192.0.2.7:50000", "tcp.t"))
            self.assertTrue(doc["namespace"].startswith("vmqtw.connection."), doc)
        self.assertEqual(disconnect["reason"], "client DISCONNECT")


class ObserverTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.publisher = LogPublisher()
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def tearDown(self) -> None:
        logs.set_level("info")

    def emit(self, level: LogLevel, text: str, **fields: Any) -> None:
        self.publisher({"log_level": level, "log_format": text, "log_namespace": "t",
                        "log_time": 0.0, **fields})

    def read(self, path: str) -> list[str]:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()

    def test_console_file_json_rotates(self) -> None:
        """``log.console.file.format = json``: the console file gets one JSON object
        per line, with the node name, and rotation still cuts between lines."""
        path = os.path.join(self.dir, "console.log")
        config = LogConfig(console="file", console_file=path, console_format="json",
                           rotation_size=400, rotation_keep=2)
        added = logs.install(config, self.publisher, node="VerneMQ@n1")
        for i in range(40):
            self.emit(LogLevel.info, "line {i}", i=i)
        logs.uninstall(added, self.publisher)
        names = sorted(os.listdir(self.dir))
        self.assertEqual(names, ["console.log", "console.log.1", "console.log.2"])
        docs = [json.loads(line) for name in reversed(names)
                for line in self.read(os.path.join(self.dir, name))]
        self.assertEqual(docs[-1]["msg"], "line 39")
        self.assertEqual(docs[-1]["i"], 39)
        self.assertEqual({d["node"] for d in docs}, {"VerneMQ@n1"})
        self.assertEqual([d["i"] for d in docs], list(range(40 - len(docs), 40)))

    def test_each_file_has_its_format(self) -> None:
        """The console file and the error file each follow their own key; the
        error file keeps only errors, whatever its format."""
        console = os.path.join(self.dir, "console.log")
        error = os.path.join(self.dir, "error.log")
        config = LogConfig(console="file", console_file=console, error_file=error,
                           error_format="json")
        added = logs.install(config, self.publisher)
        self.emit(LogLevel.warn, "a warning")
        self.emit(LogLevel.error, "an error")
        logs.uninstall(added, self.publisher)
        text = self.read(console)
        self.assertEqual(len(text), 2)
        self.assertIn("[t#warn] a warning", text[0])
        self.assertRaises(ValueError, json.loads, text[0])
        (line,) = self.read(error)
        self.assertEqual((json.loads(line)["msg"], json.loads(line)["level"]),
                         ("an error", "error"))

    def test_standard_output_stays_text(self) -> None:
        """``log.console = both`` with ``json``: the file is JSON, standard output
        stays text (VerneMQ's console handler is always text)."""
        out = io.StringIO()
        path = os.path.join(self.dir, "console.log")
        config = LogConfig(console="both", console_file=path, console_format="json")
        added = logs.install(config, self.publisher, console=True, stdout=out)
        self.emit(LogLevel.info, "hello")
        logs.uninstall(added, self.publisher)
        self.assertIn("[t#info] hello", out.getvalue())
        self.assertEqual(json.loads(self.read(path)[0])["msg"], "hello")

    def test_nothing_formatted_below_the_level(self) -> None:
        """Events below the level cost no JSON formatting: a ``Logger`` drops them
        before they are published, and the file's filter before its observer."""
        calls: list[dict[str, Any]] = []
        real = log_json.format_json_event

        def counting(event: dict[str, Any], node: str = "") -> str:
            calls.append(event)
            return real(event, node)

        self.patch(log_json, "format_json_event", counting)
        path = os.path.join(self.dir, "console.log")
        config = LogConfig(console="file", console_file=path, console_format="json",
                           level="warn")
        added = logs.install(config, self.publisher)
        log = logs.Logger(namespace="vmqtw.t", observer=self.publisher)
        for _ in range(50):
            log.debug("debug {x}", x=1)
            log.info("info {x}", x=1)
        self.emit(LogLevel.info, "published anyway")  # not through a Logger
        log.warn("shown")
        logs.uninstall(added, self.publisher)
        self.assertEqual([e["log_format"] for e in calls], ["shown"])
        self.assertEqual([json.loads(line)["msg"] for line in self.read(path)], ["shown"])


class ConfigTests(SynchronousTestCase):

    def test_format_keys(self) -> None:
        """``log.console.file.format`` and ``log.error.file.format`` take ``text``
        (the default) or ``json``, and are no longer reported as without effect."""
        cfg = parse("log.console = file\nlog.console.file.format = json\n"
                    "log.error.file = e.log\nlog.error.file.format = json\n", "/srv/b.conf")
        self.assertEqual((cfg.log.console_format, cfg.log.error_format), ("json", "json"))
        self.assertEqual([w for w in cfg.warnings if "format" in str(w)], [])
        cfg = parse("log.error.file.format = text\n", "/srv/b.conf")
        self.assertEqual((cfg.log.console_format, cfg.log.error_format), ("text", "text"))
        self.assertEqual(parse("").log.console_format, "text")

    def test_bad_format_is_an_error_with_its_line(self) -> None:
        """Any other value is refused with FILE:LINE, as every other key."""
        err = self.assertRaises(ConfigError, parse,
                                "log.console = file\nlog.console.file.format = yaml\n",
                                "b.conf")
        self.assertEqual(str(err), "b.conf:2: log.console.file.format: expected one of "
                                   "text, json, got 'yaml'")
        err = self.assertRaises(ConfigError, parse, "log.error.file.format = JSON\n",
                                "b.conf")
        self.assertIn("b.conf:1: log.error.file.format: expected one of text, json",
                      str(err))

    def test_log_config_checks_formats(self) -> None:
        """``LogConfig`` itself refuses an unknown format (naming the key)."""
        err = self.assertRaises(SettingError, LogConfig, error_format="xml")
        self.assertEqual(err.option, "log.error.file.format")
