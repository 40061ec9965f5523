"""
The ``--check`` description of a configuration: a table of the resolved
listeners, then the TLS settings of every TLS listener.
"""

from __future__ import annotations

from vmqtw.config.model import BrokerConfig, ListenerConfig
from vmqtw.config.settings import TLSConfig

__all__ = ["describe_listeners", "describe_tls", "describe_warnings"]


def describe_listeners(config: BrokerConfig) -> str:
    """
    A plain-text table of the resolved listeners, for ``--check``, followed by
    a ``describe_tls`` block for each listener with TLS settings.
    """
    listeners = sorted(config.listeners + config.unserved_listeners,
                       key=lambda lc: lc.source[1])
    if not listeners:
        return f"{config.path}: no listeners configured"
    header = (
        "KIND", "NAME", "ADDRESS", "MOUNTPOINT", "MAX_CONN", "ACCEPTORS",
        "VERSIONS", "LIFETIME", "ANON_OVERRIDE", "PROXY", "SOURCE",
    )
    rows: list[tuple[str, ...]] = [header]
    for lc in listeners:
        versions = ",".join(str(v) for v in sorted(lc.allowed_protocol_versions))
        rows.append((
            lc.kind,
            lc.name,
            str(lc.address),
            lc.mountpoint or "-",
            "infinity" if lc.max_connections is None else str(lc.max_connections),
            str(lc.nr_of_acceptors),
            versions or "-",
            f"{lc.max_connection_lifetime}s" if lc.max_connection_lifetime else "off",
            "on" if lc.allow_anonymous_override else "off",
            "on" if lc.proxy_protocol else "off",
            f"{lc.source[0]}:{lc.source[1]}",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    blocks = ["\n".join(lines)]
    blocks.extend(
        describe_tls(lc, config.crl_refresh_interval)
        for lc in listeners if lc.tls is not None
    )
    return "\n\n".join(blocks)


def describe_warnings(config: BrokerConfig) -> str:
    """
    One ``vmqtw: warning: FILE:LINE: KEY: MESSAGE`` line per entry of
    ``config.warnings`` (keys accepted without their VerneMQ effect, listeners
    not served, plugins on by default but not loaded), or ``""``.
    """
    return "\n".join(f"vmqtw: warning: {w}" for w in config.warnings)


def _verify(tls: TLSConfig) -> str:
    if tls.require_certificate:
        return f"client certificate required (depth {tls.depth})"
    if tls.verify_peer:
        return f"client certificate verified when sent (depth {tls.depth})"
    return "off (no client certificate asked for)"


def describe_tls(listener: ListenerConfig, crl_refresh_interval: int = 0) -> str:
    """
    The TLS settings of ``listener`` as ``name  value`` lines under a title
    line naming the listener and where it is declared.  Never shows
    ``keypasswd``, only whether it is set.  ``crl_refresh_interval`` (ms, the
    global key) is shown with the CRL file.
    """
    tls = listener.tls
    assert tls is not None, listener.key
    crl = tls.crlfile or "-"
    if tls.crlfile:
        crl += (f" (re-read every {crl_refresh_interval / 1000:g} s)"
                if crl_refresh_interval else " (read at startup and reload)")
    keyfile = tls.keyfile or ("- (the key is in certfile)" if tls.certfile else "-")
    if tls.keypasswd:
        keyfile += " (keypasswd set)"
    items = [
        ("versions", ", ".join(tls.versions)),
        ("certfile", tls.certfile or "-"),
        ("keyfile", keyfile),
        ("cafile", tls.cafile or "-"),
        ("crlfile", crl),
        ("ciphers", ":".join(tls.ciphers) or "OpenSSL default"),
        ("tls1.3 suites", ":".join(tls.tls13_suites) or "OpenSSL default"),
        ("eccs", ", ".join(tls.eccs) or "OpenSSL default"),
        ("verify", _verify(tls)),
        ("identity", "username from the certificate CN or PSK identity"
         if tls.use_identity_as_username else "off"),
        ("psk", f"on (file {tls.pskfile or '-'}, hint {tls.psk_identity_hint!r})"
         if tls.psk else "off"),
        ("handshake", "no timeout" if tls.handshake_timeout is None
         else f"timeout {tls.handshake_timeout * 1000:g} ms"),
    ]
    width = max(len(name) for name, _ in items)
    file, line = listener.source
    out = [f"TLS {listener.key} ({file}:{line}):"]
    out.extend(f"  {name.ljust(width)}  {value}" for name, value in items)
    return "\n".join(out)
