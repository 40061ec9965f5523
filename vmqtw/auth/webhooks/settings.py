"""vmq_webhooks settings, read exactly as VerneMQ writes them in vernemq.conf.

Per endpoint (``NAME`` is any word; names are sorted as strings, so
``webhook10`` comes before ``webhook2``)::

    vmq_webhooks.NAME.hook = auth_on_register
    vmq_webhooks.NAME.endpoint = http://127.0.0.1:8080/auth
    vmq_webhooks.NAME.base64encode = on        (also spelled base64_payload)
    vmq_webhooks.NAME.no_payload = off         (auth_on_publish(_m5) only)
    vmq_webhooks.NAME.response_timeout = 5000  (milliseconds)

Global: ``pool_max_connections`` (100), ``pool_timeout`` (60000 ms),
``tls_version`` (tlsv1.2), ``verify_peer`` (on), ``depth``, ``use_crls``,
``cafile``, ``certfile``, ``keyfile``, ``keyfile_password``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vmqtw.config.values import _bool

#: Every hook VerneMQ's webhooks plugin can call.
AUTH_HOOKS = frozenset({
    "auth_on_register", "auth_on_register_m5", "auth_on_publish", "auth_on_publish_m5",
    "auth_on_subscribe", "auth_on_subscribe_m5",
})
HOOKS = AUTH_HOOKS | frozenset({
    "on_register", "on_register_m5", "on_publish", "on_publish_m5", "on_subscribe",
    "on_subscribe_m5", "on_unsubscribe", "on_unsubscribe_m5", "on_deliver", "on_deliver_m5",
    "on_offline_message", "on_client_wakeup", "on_client_offline", "on_client_gone",
    "on_session_expired", "on_auth_m5",
})

TLS_VERSIONS = ("tlsv1", "tlsv1.1", "tlsv1.2", "tlsv1.3")

GLOBAL_KEYS = ("pool_max_connections", "pool_timeout", "tls_version", "verify_peer", "depth",
               "use_crls", "cafile", "certfile", "keyfile", "keyfile_password")
ENDPOINT_KEYS = ("hook", "endpoint", "base64encode", "base64_payload", "no_payload",
                 "response_timeout")



@dataclass(frozen=True)
class Endpoint:
    """One registered webhook: a hook and the URL it is posted to."""

    name: str
    hook: str
    url: str
    base64_payload: bool = True
    no_payload: bool = False
    #: Seconds (the setting is in milliseconds).
    response_timeout: float = 5.0


@dataclass(frozen=True)
class TLSSettings:
    """How https:// endpoints are reached."""

    version: str = "tlsv1.2"
    verify_peer: bool = True
    depth: int = 100
    use_crls: bool = True
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password: str | None = None


@dataclass(frozen=True)
class WebhookSettings:
    endpoints: tuple[Endpoint, ...]
    tls: TLSSettings
    pool_max_connections: int = 100
    #: Seconds an idle pooled connection is kept (the setting is in milliseconds).
    pool_timeout: float = 60.0


def _flag(key: str, raw: Any) -> bool:
    try:
        return _bool(str(raw).strip().lower())
    except ValueError:
        raise ValueError(f"vmq_webhooks.{key} must be on or off, got {raw!r}") from None


def _count(key: str, raw: Any, minimum: int = 0) -> int:
    try:
        value = int(str(raw).strip(), 10)
    except ValueError:
        raise ValueError(f"vmq_webhooks.{key} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"vmq_webhooks.{key} must be at least {minimum}, got {value}")
    return value


def parse_settings(settings: Mapping[str, Any]) -> WebhookSettings:
    """The plugin's settings (keys without the ``vmq_webhooks.`` prefix);
    ValueError names the first bad key."""
    per_name: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in settings.items():
        name, dot, option = key.rpartition(".")
        if not dot:
            if key not in GLOBAL_KEYS:
                raise ValueError(f"unknown setting vmq_webhooks.{key} (known: "
                                 f"{', '.join(GLOBAL_KEYS)}, and NAME.{{"
                                 f"{','.join(ENDPOINT_KEYS)}}})")
            top[key] = value
            continue
        if option not in ENDPOINT_KEYS or "." in name:
            raise ValueError(f"unknown setting vmq_webhooks.{key} (an endpoint takes "
                             f"{', '.join(ENDPOINT_KEYS)})")
        per_name.setdefault(name, {})[option] = value
    endpoints = []
    for name in sorted(per_name):
        opts = per_name[name]
        for required in ("hook", "endpoint"):
            if not str(opts.get(required, "")).strip():
                raise ValueError(f"vmq_webhooks.{name}.{required} is required")
        hook = str(opts["hook"]).strip()
        if hook not in HOOKS:
            raise ValueError(f"vmq_webhooks.{name}.hook: unknown hook {hook!r} "
                             f"(known: {', '.join(sorted(HOOKS))})")
        url = str(opts["endpoint"]).strip()
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"vmq_webhooks.{name}.endpoint must be an http:// or https:// "
                             f"URL, got {url!r}")
        b64 = True
        for spelling in ("base64encode", "base64_payload"):
            if spelling in opts:
                b64 = _flag(f"{name}.{spelling}", opts[spelling])
        timeout_ms = _count(f"{name}.response_timeout", opts.get("response_timeout", 5000), 1)
        endpoints.append(Endpoint(
            name=name, hook=hook, url=url, base64_payload=b64,
            no_payload=_flag(f"{name}.no_payload", opts.get("no_payload", "off")),
            response_timeout=timeout_ms / 1000.0))
    version = str(top.get("tls_version", "tlsv1.2")).strip().lower()
    if version not in TLS_VERSIONS:
        raise ValueError(f"vmq_webhooks.tls_version must be one of {', '.join(TLS_VERSIONS)}, "
                         f"got {version!r}")

    def path(key: str) -> str | None:
        raw = top.get(key)
        return str(raw).strip() or None if raw is not None else None

    tls = TLSSettings(
        version=version,
        verify_peer=_flag("verify_peer", top.get("verify_peer", "on")),
        depth=_count("depth", top.get("depth", 100)),
        use_crls=_flag("use_crls", top.get("use_crls", "on")),
        cafile=path("cafile"), certfile=path("certfile"), keyfile=path("keyfile"),
        keyfile_password=top.get("keyfile_password"))
    if (tls.certfile is None) != (tls.keyfile is None):
        raise ValueError("vmq_webhooks.certfile and vmq_webhooks.keyfile go together")
    return WebhookSettings(
        endpoints=tuple(endpoints), tls=tls,
        pool_max_connections=_count("pool_max_connections",
                                    top.get("pool_max_connections", 100), 1),
        pool_timeout=_count("pool_timeout", top.get("pool_timeout", 60000)) / 1000.0)
