"""Sample files shipped with the package: ``broker.conf`` (the sample
configuration ``vmqtw --sample-config`` prints), and the ``vmq.passwd`` and
``vmq.acl`` it names.  They are the same files as ``etc/`` in the source tree,
so an installed vmqtw (and its tests) needs no checkout."""
from __future__ import annotations

import os

__all__ = ["SAMPLES", "sample_dir", "sample_path", "read_sample"]

#: The shipped sample files.
SAMPLES = ("broker.conf", "vmq.passwd", "vmq.acl")


def sample_dir() -> str:
    """The directory holding the sample files (relative paths in the sample
    ``broker.conf`` resolve against it)."""
    return os.path.dirname(os.path.abspath(__file__))


def sample_path(name: str) -> str:
    """The absolute path of the shipped sample file ``name`` (one of ``SAMPLES``)."""
    if name not in SAMPLES:
        raise ValueError(f"no shipped sample file {name!r}; there are {', '.join(SAMPLES)}")
    return os.path.join(sample_dir(), name)


def read_sample(name: str) -> str:
    """The text of the shipped sample file ``name``."""
    with open(sample_path(name), encoding="utf-8") as f:
        return f.read()
