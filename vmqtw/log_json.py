"""JSON log lines: ``log.console.file.format = json`` and ``log.error.file.format = json``.

VerneMQ 2.x takes ``text`` (the default) or ``json`` for both keys; ``json``
writes each event as one JSON object on one line (VerneMQ's
``vmq_log_json_format``), for log shippers that parse lines.  Here a line is::

    {"time":"2026-12-06T23:40:01.123456Z","level":"info",
     "namespace":"vmqtw.connection","node":"VerneMQ@127.0.0.1",
     "msg":"client 'dev-9' (user 'alice') connected from ...",
     "client_id":"dev-9","username":"alice","peer":"127.0.0.1:50000",...}

(wrapped here; one line in the file, UTF-8, compact, no pretty-printing):

- ``time``: the event's time, RFC 3339 in UTC with microseconds (VerneMQ
  writes Erlang's integer microseconds since the epoch);
- ``level``: ``debug``, ``info``, ``warning``, ``error`` or ``critical``
  (Erlang logger's names; Twisted's ``warn`` is ``warning``);
- ``namespace``: the logger (``vmqtw.connection``...);
- ``node``: the node name, when the observer was given one;
- ``msg``: the same text as the text format's message;
- every field the event was logged with (``client_id``, ``peer``,
  ``reason``...): JSON values as they are, anything else as its ``str``
  (its ``repr`` if that fails); a field named like one of the keys above is
  written as ``field_<name>``;
- ``traceback``: for ``log.failure`` events, the traceback (escaped, so the
  line stays one line).

A log call must never raise: an event that cannot be encoded at all still
gives a line (``level`` error, ``msg`` saying why).  Formatting happens in the
observer only, so events below the level (dropped by ``vmqtw.logs.Logger``
before they are published) cost nothing here.
"""
from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import FileLogObserver, LogLevel, formatEvent

__all__ = ["LEVELS", "format_json_event", "json_file_log_observer", "jsonable"]

#: Twisted's levels by the names Erlang's logger (and so VerneMQ) gives them.
LEVELS: dict[Any, str] = {LogLevel.debug: "debug", LogLevel.info: "info",
                          LogLevel.warn: "warning", LogLevel.error: "error",
                          LogLevel.critical: "critical"}

#: The keys every line has (``node`` and ``traceback`` when there is one).
CORE_KEYS = frozenset({"time", "level", "namespace", "node", "msg", "traceback"})

# Keys of twisted.python.log events (bridged into twisted.logger; they all
# have "message" and "isError") that repeat what the log_* keys and msg say.
_LEGACY_KEYS = frozenset({"message", "format", "isError", "time", "failure", "why",
                          "system", "printed", "logLevel"})

# Containers deeper than this are written as their str (and a cycle ends here).
_MAX_DEPTH = 6

# Larger ints would make json.dumps raise (Python's int-to-str digit limit).
_MAX_INT_BITS = 4096

# Line terminators JSON leaves raw (with ensure_ascii off) but str.splitlines
# and some log shippers split on: escaped so a line stays one line everywhere.
_SEPARATORS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028",
                             "\u2029": "\\u2029"})


def _text(value: Any) -> str:
    """``str(value)``, else its ``repr``, else a placeholder naming its type."""
    try:
        return str(value)
    except Exception:
        pass
    try:
        return repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` made of JSON types only: str, int, bool and None as they are,
    finite floats, lists (from lists and tuples) and objects (keys as ``str``);
    anything else (bytes, sets, objects, NaN, huge ints, containers nested
    deeper than a few levels) as its text."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        if value.bit_length() <= _MAX_INT_BITS:
            return value
        return f"<int of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else _text(value)
    if depth < _MAX_DEPTH:
        if isinstance(value, (list, tuple)):
            return [jsonable(v, depth + 1) for v in value]
        if isinstance(value, dict):
            return {k if isinstance(k, str) else _text(k): jsonable(v, depth + 1)
                    for k, v in value.items()}
    return _text(value)


def _rfc3339(seconds: Any) -> str:
    """``seconds`` since the epoch as RFC 3339, UTC, with microseconds."""
    try:
        moment = datetime.fromtimestamp(float(seconds), timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        moment = datetime.fromtimestamp(time.time(), timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _traceback(failure: Any) -> str:
    try:
        return str(failure.getTraceback())
    except Exception:
        return _text(failure)


def _document(event: dict[str, Any], node: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "time": _rfc3339(event.get("log_time", time.time())),
        "level": LEVELS.get(event.get("log_level"), "info"),
        "namespace": _text(event.get("log_namespace", "-")),
    }
    if node:
        doc["node"] = node
    doc["msg"] = formatEvent(event)  # never raises: says so in its text instead
    legacy = "isError" in event and "message" in event
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith("log_"):
            continue
        if legacy and key in _LEGACY_KEYS:
            continue
        doc["field_" + key if key in CORE_KEYS else key] = jsonable(value)
    failure = event.get("log_failure")
    if failure is None and legacy:
        failure = event.get("failure")  # twisted.python.log.err
    if failure is not None:
        doc["traceback"] = _traceback(failure)
    return doc


def _line(doc: dict[str, Any]) -> str:
    line = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if not line.isascii():
        line = line.translate(_SEPARATORS)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: written as \\udXXX escapes
            line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    return line + "\n"


def format_json_event(event: dict[str, Any], node: str = "") -> str:
    """``event`` as one JSON line (ending with a newline); see the module's doc.
    Never raises."""
    try:
        return _line(_document(event, node))
    except Exception as e:  # a log call must never raise
        doc = {"time": _rfc3339(time.time()), "level": "error", "namespace": "vmqtw.logs",
               "msg": f"unable to write a log event as JSON: {_text(e)}",
               "event": _text(event.get("log_format") if isinstance(event, dict) else event)}
        if node:
            doc["node"] = node
        try:
            return _line(doc)
        except Exception:
            return '{"level":"error","msg":"unable to write a log event as JSON"}\n'


def json_file_log_observer(stream: IO[Any], node: str = "") -> FileLogObserver:
    """An observer writing each event to ``stream`` as one JSON line (a text or
    binary stream, e.g. a rotating ``LogFile``; binary ones get UTF-8)."""
    return FileLogObserver(stream, lambda event: format_json_event(event, node))
