"""The cyclic garbage collector's settings for a broker process.

CPython frees most objects by reference counting; its cyclic collector only
finds groups of objects that refer to each other.  Its full runs (the oldest
generation) walk every tracked object of the process, and with CPython's
defaults one runs each time the long-lived objects grew by a quarter: while
clients connect, the live connections are walked again and again (about five
times each by the time the count has settled).  Measured with
``bench/connect_path.py`` at 2,000-12,000 connections, that was 30-50 us of
the 40-90 us of Python per CONNECT, and a full run over 10,000 idle clients
stalls the reactor for ~0.1 s (a latency spike for every client).

A broker's long-lived objects are its connections, sessions and
subscriptions, and they do not form garbage cycles (a closed connection is
freed by reference counting, see ``MQTTProtocol.connectionLost``), so
``tune()``:

- moves what start-up built (modules, configuration, plugins) out of the
  collector's sight (``gc.freeze()``: never walked again);
- runs a full collection only after ``FULL_AFTER`` collections of the middle
  generation instead of 10 (the quarter-growth rule still applies), so full
  runs are ten times rarer; the young generations, which catch the
  short-lived cycles (a ``Failure`` and its traceback, ...), run as before.
"""
from __future__ import annotations

import gc

#: Collections of the middle generation between two full runs (CPython: 10).
FULL_AFTER = 100


def tune() -> None:
    """Apply the broker's collector settings (once start-up is done)."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_AFTER)
