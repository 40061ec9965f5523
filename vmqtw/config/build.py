"""
The parts of a ``BrokerConfig`` built from several keys at once: the
``log.*`` settings and the built-in plugins that are on by default.

Both read a parser's checked values (``vmqtw.config.parser._Parser``) and
report problems through its ``fail`` and ``warn``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from vmqtw.config.model import PluginConfig
from vmqtw.config.schema import BUILTIN_PLUGIN_FILES
from vmqtw.config.settings import LogConfig, SettingError

__all__ = ["build_log", "builtin_plugins", "resolve"]

#: VerneMQ's default ``log.console.file`` (relative to the config directory here).
DEFAULT_CONSOLE_FILE = "log/console.log"

# What VerneMQ does when a built-in plugin's file is missing: it logs an
# error and starts with an empty table, so the plugin answers "next" to
# everything; with nothing else in the chain that refuses every CONNECT
# (vmq_passwd, unless allow_anonymous) or every PUBLISH/SUBSCRIBE (vmq_acl).
_EMPTY_TABLE = {
    "vmq_passwd": "refuse every CONNECT that allow_anonymous does not let in",
    "vmq_acl": "refuse every publish and subscribe",
}


def resolve(parser: Any, path: str) -> str:
    """``path`` made absolute against the directory of the parser's file."""
    if not path or os.path.isabs(path):
        return path
    base = os.path.dirname(os.path.abspath(parser.filename))
    return os.path.normpath(os.path.join(base, path))


def build_log(parser: Any) -> LogConfig:
    """
    ``BrokerConfig.log`` from the ``log.*`` keys (and vmqtw's ``log_level``).

    ``log.console.level`` and ``log_level`` say the same thing: setting both
    is an error.  ``log.console.level`` also sets ``BrokerConfig.log_level``.
    """
    got: Mapping[str, Any] = parser.extra_typed
    level = got.get("log.console.level")
    if level is not None:
        if "log_level" in parser.typed:
            parser.fail(parser.sources["log.console.level"], "log.console.level",
                        f"log_level is also set (line {parser.sources['log_level']}); "
                        f"set only one of them")
        else:
            parser.typed["log_level"] = level
    console = got.get("log.console", "console")
    console_file = got.get("log.console.file", "")
    if console in ("file", "both") and not console_file:
        console_file = DEFAULT_CONSOLE_FILE
    error_file = got.get("log.error.file", "") if got.get("log.error", True) else ""
    try:
        return LogConfig(
            console=console,
            level=parser.typed.get("log_level", "info"),
            console_file=resolve(parser, console_file),
            rotation_size=got.get("log.console.rotation.size"),
            rotation_keep=got.get("log.console.rotation.keep", 5),
            error_file=resolve(parser, error_file),
            error_rotation_size=got.get("log.error.rotation.size"),
            error_rotation_keep=got.get("log.error.rotation.keep", 5),
            syslog=got.get("log.syslog", False),
            syslog_level=got.get("log.syslog.level", "info"),
            console_format=got.get("log.console.file.format", "text"),
            error_format=got.get("log.error.file.format", "text"),
        )
    except SettingError as e:
        parser.fail(parser.sources.get(e.option, 0), e.option, e.message)
        return LogConfig()


def builtin_plugins(parser: Any, plugins: Mapping[str, PluginConfig]) -> dict[str, PluginConfig]:
    """
    ``vmq_passwd`` and ``vmq_acl`` are on by default, as in VerneMQ.  For each
    one without a ``plugins.NAME`` line: when its file (the ``NAME`` setting,
    or ``vmq.passwd`` / ``vmq.acl`` next to the configuration file) exists it
    is loaded (source line 0); when it does not, it is left out with a
    warning naming the resolved path.  VerneMQ would start it with an empty
    table, which refuses everything; vmqtw does not brick a configuration
    that never asked for the plugin.
    """
    out: dict[str, PluginConfig] = {}
    for name, (setting, default) in sorted(BUILTIN_PLUGIN_FILES.items()):
        if name in plugins:
            continue
        settings = parser.plugin_settings.get(name, {})
        path = resolve(parser, str(settings.get(setting, default)).strip() or default)
        if os.path.exists(path):
            out[name] = PluginConfig(name=name, enabled=True, priority=None, path=None,
                                     source=(parser.filename, 0))
            continue
        key = f"{name}.{setting}"
        line = parser.plugin_setting_lines.get(key, 0)
        parser.warn(line, f"plugins.{name}",
                    f"on by default as in VerneMQ, but {path} does not exist: not "
                    f"loaded (VerneMQ would load it with an empty table and "
                    f"{_EMPTY_TABLE[name]}); create the file, or set "
                    f"plugins.{name} = off to silence this")
    return out
