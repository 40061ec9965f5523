"""An HTTP listener's settings from the configuration's raw strings.

``http_settings(global_keys, listener_options)`` reads VerneMQ's keys:

- ``listener.http(s).NAME.http_modules``: a comma-separated list, brackets
  optional; the default ``[]`` means the global ``http_modules`` (an Erlang
  list term, ``[vmq_metrics_http, vmq_health_http]``), else VerneMQ's default
  modules (all but ``vmq_http_pub``);
- ``http_module.MODULE.auth.mode`` (global) and the listener's own
  ``http_module.MODULE.auth.mode`` (singular ``http_module``): ``apikey`` or
  ``noauth``;
- ``vmq_http_pub.mqtt_auth.{mode,user,password,client_id}`` and
  ``vmq_http_pub.mountpoint``, overridden per listener by
  ``http_modules.vmq_http_pub.*`` (plural, as VerneMQ; there, a value counts
  only when longer than 3 characters, and the global client id is also
  accepted as ``client-id``);
- ``max_request_line_length`` (8000) and ``max_header_value_length`` (4096).

Bad values raise ``ValueError`` naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from vmqtw.http.pub import PubSettings
from vmqtw.http.site import ALL_MODULES, DEFAULT_MODULES

AUTH_MODES = ("apikey", "noauth")
PUB_MODES = ("on-behalf-of", "predefined", "testMode")


@dataclass(frozen=True)
class HttpSettings:
    modules: tuple[str, ...] = DEFAULT_MODULES
    auth_modes: Mapping[str, str] = field(default_factory=dict)
    pub: PubSettings = field(default_factory=PubSettings)
    max_request_line_length: int = 8000
    max_header_value_length: int = 4096


def module_list(raw: str, key: str) -> tuple[str, ...]:
    """``a, b``, ``[a,b]`` or ``[]`` -> the module names (checked)."""
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL_MODULES]
    if unknown:
        raise ValueError(f"{key}: unknown http module(s) {', '.join(unknown)} "
                         f"(known: {', '.join(ALL_MODULES)})")
    return names


def _positive(raw: str, key: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{key}: expected a whole number, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{key}: expected a number above 0, got {raw!r}")
    return value


def http_settings(global_keys: Mapping[str, str], options: Mapping[str, str]) -> HttpSettings:
    """The settings of one HTTP listener: ``global_keys`` are the file's
    top-level keys, ``options`` the listener's own (``http_modules``, ...)."""
    modules = module_list(options.get("http_modules", "[]"), "http_modules")
    if not modules:
        raw = global_keys.get("http_modules")
        modules = module_list(raw, "http_modules") if raw else DEFAULT_MODULES
    auth_modes: dict[str, str] = {}
    for module in ALL_MODULES:
        key = f"http_module.{module}.auth.mode"
        mode = options.get(key, global_keys.get(key))
        if mode is None:
            continue
        if mode not in AUTH_MODES:
            raise ValueError(f"{key}: expected apikey or noauth, got {mode!r}")
        auth_modes[module] = mode

    def pub(name: str, default: str | None = None) -> str | None:
        local = options.get(f"http_modules.vmq_http_pub.{name}")
        if local is not None and len(local) > 3:
            return local
        value = global_keys.get(f"vmq_http_pub.{name}")
        if value is None and name == "mqtt_auth.client_id":
            value = global_keys.get("vmq_http_pub.mqtt_auth.client-id")
        return value if value is not None else default

    mode = pub("mqtt_auth.mode", "on-behalf-of")
    if mode not in PUB_MODES:
        raise ValueError(f"vmq_http_pub.mqtt_auth.mode: expected one of "
                         f"{', '.join(PUB_MODES)}, got {mode!r}")
    pub_settings = PubSettings(mode=mode or "on-behalf-of", user=pub("mqtt_auth.user"),
                               password=pub("mqtt_auth.password"),
                               client_id=pub("mqtt_auth.client_id", "http-pub") or "http-pub",
                               mountpoint=pub("mountpoint", "") or "")
    return HttpSettings(
        modules, auth_modes, pub_settings,
        _positive(options.get("max_request_line_length", "8000"), "max_request_line_length"),
        _positive(options.get("max_header_value_length", "4096"), "max_header_value_length"))
