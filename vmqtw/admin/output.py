"""What an admin command prints: VerneMQ's elements and its two writers.

A command returns a list of elements - ``Table`` (rows of column -> value),
``Text``, ``Alert`` or ``List`` - written either as VerneMQ's human output
(ASCII tables with ``+---+`` borders, the header from the first row's keys,
nothing at all for an empty table) or as the JSON of ``/api/v1`` and
``--format=json`` (one element: an object; several: an array; none: ``[]``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Union


@dataclass
class Table:
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Text:
    text: str


@dataclass
class Alert:
    items: list["Element"]


@dataclass
class List:
    title: str
    items: list[str]


Element = Union[Table, Text, Alert, List]


def cell(value: Any) -> str:
    """A value as VerneMQ prints it in a table."""
    if value is None:
        return "undefined"
    if isinstance(value, bool):
        return json.dumps(value)  # true / false, as Erlang's atoms read
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def human(elements: list[Element]) -> str:
    """VerneMQ's human writer."""
    out: list[str] = []
    for element in elements:
        if isinstance(element, Table):
            if element.rows:
                out.append(_table(element.rows))
        elif isinstance(element, Text):
            out.append(element.text + "\n")
        elif isinstance(element, List):
            out.append(element.title + "\n" + "".join(f"{item}\n" for item in element.items))
        elif isinstance(element, Alert):
            out.append(human(element.items))
    return "".join(out)


def _table(rows: list[dict[str, Any]]) -> str:
    header = list(rows[0])
    cells = [[cell(row.get(col)) for col in header] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(header)]
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+\n"

    def line(values: list[str]) -> str:
        return "|" + "|".join(f" {v:<{w}} " for v, w in zip(values, widths, strict=True)) + "|\n"

    return border + line(header) + border + "".join(line(r) for r in cells) + border


def _json_cell(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value.strip()
    return value


def _json_element(element: Element) -> Any:
    if isinstance(element, Table):
        return {"type": "table", "table": [{k: _json_cell(v) for k, v in row.items()}
                                           for row in element.rows]}
    if isinstance(element, Text):
        return {"type": "text", "text": element.text}
    if isinstance(element, List):
        return {"type": "list", "list": [element.title, *element.items]}
    return {"type": "alert", "alert": [_json_element(e) for e in element.items]}


def as_json(elements: list[Element]) -> Any:
    """VerneMQ's JSON writer (``vmq_cli_json_writer``), as a Python value."""
    if len(elements) == 1:
        return _json_element(elements[0])
    return [_json_element(e) for e in elements]


def render(elements: list[Element], fmt: str) -> str:
    """``fmt`` is ``human`` or ``json``."""
    if fmt == "json":
        return json.dumps(as_json(elements)) + "\n"
    return human(elements)
