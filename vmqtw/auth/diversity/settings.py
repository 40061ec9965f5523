"""vmq_diversity settings for database authentication, as VerneMQ names them::

    vmq_diversity.auth_postgres.enabled = on
    vmq_diversity.postgres.host = 127.0.0.1
    vmq_diversity.postgres.port = 5432
    vmq_diversity.postgres.user = vernemq
    vmq_diversity.postgres.password = secret
    vmq_diversity.postgres.database = vernemq_db
    vmq_diversity.postgres.pool_size = 5
    vmq_diversity.postgres.ssl = off
    vmq_diversity.postgres.password_hash_method = crypt     (crypt | bcrypt)

``auth_mysql`` (``mysql.*``; hash ``password`` | ``md5`` | ``sha1`` | ``sha256``,
default ``password``), ``auth_mysql2`` (``mysql2.*``, default ``sha256``) and
``auth_redis`` (``redis.host/port/user/password/database/pool_size``, bcrypt)
take the same shape.  MongoDB and CockroachDB are not supported (a clear error).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping
from vmqtw.config.values import _bool

__all__ = ["DatabaseSettings", "DiversitySettings", "parse_settings"]


#: auth_<db> -> (settings prefix, default port, hash methods, default method, user default)
DATABASES: dict[str, tuple[str, int, tuple[str, ...], str]] = {
    "auth_postgres": ("postgres", 5432, ("crypt", "bcrypt"), "crypt"),
    "auth_mysql": ("mysql", 3306, ("password", "md5", "sha1", "sha256"), "password"),
    "auth_mysql2": ("mysql2", 3306, ("password", "md5", "sha1", "sha256"), "sha256"),
    "auth_redis": ("redis", 6379, ("bcrypt",), "bcrypt"),
}
UNSUPPORTED = ("auth_mongodb", "auth_cockroachdb", "mongodb", "cockroachdb")

CONNECTION_KEYS = ("host", "port", "user", "password", "database", "pool_size", "ssl",
                   "password_hash_method", "cafile", "certfile", "keyfile", "ssl.verify",
                   "ssl.depth", "ssl.use_system_cas", "ssl.customize_hostname_check")


@dataclass(frozen=True)
class DatabaseSettings:
    kind: str                  # auth_postgres, auth_mysql, auth_mysql2, auth_redis
    host: str = "localhost"
    port: int = 5432
    user: str = "root"
    password: str = "password"
    database: str = "vernemq_db"
    pool_size: int = 5
    ssl: bool = False
    hash_method: str = "crypt"
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify_peer: bool = True


@dataclass(frozen=True)
class DiversitySettings:
    databases: tuple[DatabaseSettings, ...] = field(default_factory=tuple)


def _flag(key: str, raw: Any) -> bool:
    try:
        return _bool(str(raw).strip().lower())
    except ValueError:
        raise ValueError(f"vmq_diversity.{key} must be on or off, got {raw!r}") from None


def _number(key: str, raw: Any, lo: int = 0) -> int:
    try:
        value = int(str(raw).strip(), 10)
    except ValueError:
        raise ValueError(f"vmq_diversity.{key} must be a whole number, got {raw!r}") from None
    if value < lo:
        raise ValueError(f"vmq_diversity.{key} must be at least {lo}, got {value}")
    return value


def parse_settings(settings: Mapping[str, Any]) -> DiversitySettings:
    """ValueError names the first bad or unsupported key."""
    enabled: dict[str, bool] = {}
    conn: dict[str, dict[str, str]] = {}
    prefixes = {v[0]: k for k, v in DATABASES.items()}
    for key, value in settings.items():
        head, _, rest = key.partition(".")
        if head in UNSUPPORTED:
            raise ValueError(f"vmq_diversity.{key}: {head.replace('auth_', '')} is not "
                             f"supported by vmqtw (PostgreSQL, MySQL/MariaDB and Redis are)")
        if head in DATABASES and rest == "enabled":
            enabled[head] = _flag(key, value)
        elif head in prefixes and rest in CONNECTION_KEYS:
            conn.setdefault(head, {})[rest] = str(value).strip()
        else:
            raise ValueError(f"unknown or unsupported setting vmq_diversity.{key} (database "
                             f"auth takes auth_<db>.enabled and <db>.{{"
                             f"{','.join(CONNECTION_KEYS)}}} for postgres, mysql, mysql2, "
                             f"redis)")
    databases = []
    for kind, (prefix, port, methods, default_method) in DATABASES.items():
        if not enabled.get(kind):
            continue
        opts = conn.get(prefix, {})
        method = opts.get("password_hash_method", default_method).lower()
        if method not in methods:
            raise ValueError(f"vmq_diversity.{prefix}.password_hash_method must be one of "
                             f"{', '.join(methods)}, got {method!r}")
        redis = kind == "auth_redis"
        databases.append(DatabaseSettings(
            kind=kind, host=opts.get("host", "localhost"),
            port=_number(f"{prefix}.port", opts.get("port", port), 1),
            user=opts.get("user", "" if redis else "root"),
            password=opts.get("password", "" if redis else "password"),
            database=opts.get("database", "0" if redis else "vernemq_db"),
            pool_size=_number(f"{prefix}.pool_size", opts.get("pool_size", 5), 1),
            ssl=_flag(f"{prefix}.ssl", opts.get("ssl", "off")),
            hash_method=method, cafile=opts.get("cafile") or None,
            certfile=opts.get("certfile") or None, keyfile=opts.get("keyfile") or None,
            verify_peer=opts.get("ssl.verify", "verify_peer") != "verify_none"))
    unused = set(conn) - {DATABASES[d.kind][0] for d in databases}
    if unused:
        name = sorted(unused)[0]
        raise ValueError(f"vmq_diversity.{name}.* is set but vmq_diversity.auth_{name}.enabled "
                         f"is not on")
    return DiversitySettings(tuple(databases))
