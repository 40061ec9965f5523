"""
Parse a VerneMQ-style configuration file into frozen, typed objects.

The format is cuttlefish's flat ``key = value`` file (``vernemq.conf``)::

    # a comment
    allow_anonymous = off
    listener.max_connections = 10000
    listener.tcp.default = 127.0.0.1:1883
    listener.tcp.default.mountpoint = site-a/
    plugins.vmq_passwd = on
    vmq_passwd.password_file = /etc/vmqtw/vmq.passwd

Rules:

- one ``key = value`` per line, split on the first ``=``; key and value are
  stripped of surrounding whitespace.  Lines whose first non-blank character is
  ``#`` are comments.  There are no inline comments: ``x = 1 # one`` has the
  value ``1 # one`` (which then fails validation for an integer key).
- a key given twice: the later line wins (as in cuttlefish).  Every line is
  still validated on its own, so a bad value is reported even when a later line
  overrides it.
- listener settings resolve named -> protocol -> root -> built-in default
  (see ``REGISTRY`` and ``vmqtw.config.parser``).

Every problem is a ``ConfigError`` naming the file, the line and the key.  All
the problems of a file are found in one run and raised together as one
``ConfigErrors`` (a ``ConfigError`` for the earliest one; ``errors`` has them
all, ``str()`` is one line each).  A key VerneMQ has but vmqtw does not act on
is accepted with a ``ConfigWarning`` in ``BrokerConfig.warnings``
(``vmqtw.config.compat``); relative paths are taken against the file's
directory.

Nothing here binds sockets or reads other files; that is the daemon's job.

The package, by role (imports point down this list):

- ``values``: value parsers (booleans, integers, durations, lists...);
- ``schema``: the key registry (listener options and their scopes, global keys);
- ``settings``: the typed settings of the TLS, WebSocket and PROXY layers and
  of the store;
- ``model``: ``BrokerConfig``, ``ListenerConfig``, ``PluginConfig``,
  ``Address``, ``ConfigError``;
- ``compat``: VerneMQ keys accepted without (all of) their effect, and why;
- ``build``: the ``log.*`` settings and the built-in plugins on by default;
- ``parser``: tokenise, check, resolve, build (``parse``, ``load``);
- ``describe``: the ``--check`` description.
"""

from __future__ import annotations

from vmqtw.config import compat as compat
from vmqtw.config import parser as _parser
from vmqtw.config.describe import describe_listeners, describe_tls, describe_warnings
from vmqtw.config.model import (
    Address,
    BrokerConfig,
    ConfigError,
    ConfigErrors,
    ConfigWarning,
    ListenerConfig,
    PluginConfig,
)
from vmqtw.config.schema import _ROOT_OPTIONS as _ROOT_OPTIONS
from vmqtw.config.schema import (
    BUILTIN_PLUGINS,
    GLOBAL_KEYS,
    LISTENER_KINDS,
    REGISTRY,
    STORE_SYNC_MODES,
    TLS_KINDS,
    WEBSOCKET_KINDS,
    GlobalKey,
    ListenerOption,
)
from vmqtw.config.schema import _scope as _scope
from vmqtw.config.settings import (
    PROXY_HEADER_TIMEOUT,
    ClusterConfig,
    LogConfig,
    ProxyConfig,
    SettingError,
    StoreConfig,
    TLSConfig,
    WebSocketConfig,
)
from vmqtw.config.values import TLS_VERSIONS, split_list
from vmqtw.config.values import _bool as _bool

# _ROOT_OPTIONS, _scope and _bool (imported "as" themselves) are for code and
# tests that extend the registry.

__all__ = [
    "ConfigError",
    "ConfigErrors",
    "ConfigWarning",
    "LogConfig",
    "Address",
    "ListenerConfig",
    "PluginConfig",
    "BrokerConfig",
    "SettingError",
    "TLSConfig",
    "WebSocketConfig",
    "ProxyConfig",
    "StoreConfig",
    "ClusterConfig",
    "ListenerOption",
    "GlobalKey",
    "REGISTRY",
    "GLOBAL_KEYS",
    "LISTENER_KINDS",
    "TLS_KINDS",
    "WEBSOCKET_KINDS",
    "TLS_VERSIONS",
    "STORE_SYNC_MODES",
    "PROXY_HEADER_TIMEOUT",
    "BUILTIN_PLUGINS",
    "split_list",
    "parse",
    "load",
    "describe_listeners",
    "describe_tls",
    "describe_warnings",
]


def parse(text: str, filename: str = "<config>") -> BrokerConfig:
    """
    Parse configuration text; raise ``ConfigErrors`` (a ``ConfigError``)
    listing every problem.

    The listener options are this package's ``REGISTRY`` at the time of the
    call, so replacing ``vmqtw.config.REGISTRY`` extends the file format.
    """
    return _parser.parse(text, filename, REGISTRY)


def load(path: str) -> BrokerConfig:
    """Read and parse the file at ``path`` (see ``parse``)."""
    return _parser.load(path, REGISTRY)
