"""Sockets passed by systemd socket activation (``sd_listen_fds``).

systemd (a ``.socket`` unit, or ``systemd-socket-activate``) starts the broker
with its listening sockets open from file descriptor 3 on, and says so in
``LISTEN_PID``, ``LISTEN_FDS`` and, since systemd 227 for units,
``LISTEN_FDNAMES``.

The environment is read when this module is imported, because importing
``twisted.internet.endpoints`` deletes ``LISTEN_PID``/``LISTEN_FDS`` (and
Twisted ignores them when ``LISTEN_FDNAMES`` is missing, as it is with
``systemd-socket-activate`` without ``--fdname``).  ``vmqtw.tap`` imports this
module before anything imports Twisted's endpoints; when Twisted got there
first (e.g. ``twistd``, whose plugin scan imports them), Twisted's own record
of the descriptors is used.  No Twisted import here.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

__all__ = ["inherited_descriptors", "inherited"]


def inherited_descriptors(environ: Mapping[str, str] | None = None
                          ) -> tuple[list[int], list[str]]:
    """The descriptors ``environ`` (default: this process's environment)
    passes to this process, and their names (empty when not given)."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return [], []
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return [], []
    names = [n for n in env.get("LISTEN_FDNAMES", "").split(":") if n]
    return list(range(3, 3 + max(0, count))), names


#: What the environment said when this module was first imported.
AT_IMPORT = inherited_descriptors()


def inherited() -> tuple[list[int], list[str]]:
    """The inherited descriptors and names: from the environment now, else as
    they were when this module was imported, else as Twisted recorded them."""
    fds, names = inherited_descriptors()
    if fds:
        return fds, names
    if AT_IMPORT[0]:
        return AT_IMPORT
    from twisted.internet import endpoints
    listen_fds: Any = endpoints._SystemdParser._sddaemon
    fds = list(listen_fds.inheritedDescriptors())
    by_fd = {fd: name for name, fd in listen_fds.inheritedNamedDescriptors().items()}
    return fds, [by_fd.get(fd, "") for fd in fds] if by_fd else []
