#!/usr/bin/env python3
"""Retained-message lookup micro benchmark (in process, no sockets).

    python3 bench/retained.py              # 200,000 retained topics
    python3 bench/retained.py --sites 20   # 20,000

Fills a ``MemoryStore`` with ``site/S/dev/D/KIND`` topics (``--sites`` x 250
devices x 4 kinds), then prints the cost of setting, replacing and clearing a
retained message, the memory of the index (messages excluded, measured with
tracemalloc) and the time of one lookup for a few filters, as a SUBSCRIBE
would do it (best of 5).  Runs against older trees too (the store used to be
``vmqtw.core.store``), so a before/after comparison is one checkout away.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import tracemalloc
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vmqtw.core.message import Message

try:
    from vmqtw.store.memory import MemoryStore
except ImportError:  # before the store moved out of the core
    from vmqtw.core.store import MemoryStore  # type: ignore[no-redef]

KINDS = ("temp", "hum", "co2", "lux")
DEVICES = 250
FILTERS = ("site/17/dev/42/#", "site/+/dev/42/temp", "site/17/dev/+/co2", "site/3/#",
           "+/17/+/42/+", "site/17/dev/42/temp", "nomatch/+/x")


def best(fn: Callable[[], Any], runs: int = 5) -> tuple[float, Any]:
    """The shortest of ``runs`` timings of ``fn()`` and its last result."""
    times = []
    result = None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=200)
    args = parser.parse_args()
    messages = [Message(f"site/{s}/dev/{d}/{k}", b"x", 0, True)
                for s in range(args.sites) for d in range(DEVICES) for k in KINDS]
    n = len(messages)

    tracemalloc.start()
    store = MemoryStore()
    for m in messages:
        store.retained_set("", m.topic, m)
    memory, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del store

    store = MemoryStore()
    t0 = time.perf_counter()
    for m in messages:
        store.retained_set("", m.topic, m)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for m in messages:
        store.retained_set("", m.topic, m)
    replace = time.perf_counter() - t0
    print(f"{n} retained topics: set {first / n * 1e6:.2f} us, replace "
          f"{replace / n * 1e6:.2f} us; index memory {memory / 1e6:.1f} MB "
          "(messages excluded)")
    for topic_filter in FILTERS:
        seconds, found = best(functools.partial(store.retained_match, "", topic_filter))
        print(f"  {topic_filter:22s} {len(found):6d} matches  {seconds * 1e3:10.3f} ms")
    t0 = time.perf_counter()
    for m in messages:
        store.retained_set("", m.topic, None)
    clear = time.perf_counter() - t0
    print(f"clear {clear / n * 1e6:.2f} us each; left: {store.retained_count()}")


if __name__ == "__main__":
    main()
