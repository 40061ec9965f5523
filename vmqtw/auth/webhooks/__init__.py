"""vmq_webhooks: VerneMQ's webhooks plugin (``plugins.vmq_webhooks = on``).

See ``docs/webhooks.md``.  Modules: ``settings`` (broker.conf keys),
``bodies`` (request bodies), ``answers`` (reading answers), ``client`` (HTTP,
pools, TLS, cache) and ``plugin`` (the hooks).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from vmqtw.auth.context import resolve_path
from vmqtw.auth.webhooks.plugin import WebhooksPlugin
from vmqtw.auth.webhooks.settings import parse_settings

__all__ = ["make_plugin", "WebhooksPlugin"]


def make_plugin(settings: Mapping[str, Any], context: Any) -> WebhooksPlugin:
    parsed = parse_settings(settings)
    if not parsed.endpoints:
        raise ValueError("no webhook is registered: set vmq_webhooks.NAME.hook and "
                         "vmq_webhooks.NAME.endpoint")
    tls = parsed.tls
    # relative paths are taken from the configuration file's directory
    parsed = dataclasses.replace(parsed, tls=dataclasses.replace(
        tls,
        cafile=tls.cafile and resolve_path(tls.cafile, context.config_dir),
        certfile=tls.certfile and resolve_path(tls.certfile, context.config_dir),
        keyfile=tls.keyfile and resolve_path(tls.keyfile, context.config_dir)))
    return WebhooksPlugin(parsed, context)
