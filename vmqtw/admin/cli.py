"""``vmq-admin``: VerneMQ's admin commands against a running vmqtw broker.

    vmq-admin [-c FILE] [--socket PATH] COMMAND...

The broker is found from its configuration file: ``-c FILE``, else
``$VMQTW_CONFIG``, else ``etc/broker.conf``.  Its admin socket is
``admin_socket`` if the file sets it, else ``vmq-admin.sock`` in the store's
directory (``persistent_store.directory``, default ``data`` next to the
file).  Only the file's flat ``key = value`` lines are read (not validated:
the broker did that when it started).

Exit codes: 0 done, 1 the command failed or was wrong (usage printed), 2 this
script's own usage, 3 the broker could not be reached.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from vmqtw.admin.channel import SOCKET_NAME, ChannelError, request

DEFAULT_CONFIG = os.path.join("etc", "broker.conf")
USAGE = ("usage: vmq-admin [-c FILE] [--socket PATH] COMMAND...\n"
         "  e.g. vmq-admin session show --limit=10\n")


def read_keys(path: str) -> dict[str, str]:
    """The ``key = value`` lines of a configuration file (last one wins)."""
    keys: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
    return keys


def socket_path(config_path: str) -> str:
    """Where the broker of ``config_path`` serves its admin channel."""
    keys = read_keys(config_path)
    base = os.path.dirname(os.path.abspath(config_path))
    explicit = keys.get("admin_socket")
    if explicit:
        return os.path.normpath(os.path.join(base, explicit))
    directory = os.path.join(base, keys.get("persistent_store.directory", "data"))
    return os.path.normpath(os.path.join(directory, SOCKET_NAME))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = os.environ.get("VMQTW_CONFIG") or DEFAULT_CONFIG
    path = None
    while args and args[0] in ("-c", "--config", "--socket", "-h", "--help"):
        flag = args.pop(0)
        if flag in ("-h", "--help"):
            sys.stdout.write(USAGE)
            args = ["help"] if not args else args
            break
        if not args:
            sys.stderr.write(f"vmq-admin: {flag} needs a value\n" + USAGE)
            return 2
        value = args.pop(0)
        if flag == "--socket":
            path = value
        else:
            config = value
    if path is None:
        try:
            path = socket_path(config)
        except OSError as e:
            sys.stderr.write(f"vmq-admin: cannot read the configuration {config}: "
                             f"{e.strerror or e}\n" + USAGE)
            return 2
    def stream(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        code, output = request(path, args, on_stream=stream)
    except KeyboardInterrupt:  # the end of a trace
        return 0
    except ChannelError as e:
        sys.stderr.write(f"vmq-admin: {e}\n")
        return 3
    (sys.stdout if code == 0 else sys.stderr).write(output)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
