"""vmq_diversity: database authentication with VerneMQ's schemas
(``plugins.vmq_diversity = on``).  See ``docs/database-auth.md``.

Modules: ``settings`` (broker.conf keys), ``acl`` (ACL entries and the cache),
``sql`` (PostgreSQL, MySQL/MariaDB), ``redis`` (Redis) and ``plugin``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from vmqtw.auth.context import resolve_path
from vmqtw.auth.diversity.plugin import DiversityPlugin
from vmqtw.auth.diversity.settings import parse_settings

__all__ = ["make_plugin", "DiversityPlugin"]


def make_plugin(settings: Mapping[str, Any], context: Any) -> DiversityPlugin:
    parsed = parse_settings(settings)
    if not parsed.databases:
        raise ValueError("no database is enabled: set vmq_diversity.auth_postgres.enabled, "
                         "auth_mysql.enabled, auth_mysql2.enabled or auth_redis.enabled = on")
    for db in parsed.databases:
        module = {"auth_postgres": "psycopg2", "auth_redis": "bcrypt"}.get(db.kind, "pymysql")
        for needed in {module, "bcrypt"} if db.hash_method == "bcrypt" else {module}:
            try:
                __import__(needed)
            except ImportError:
                raise ValueError(f"vmq_diversity.{db.kind} needs the Python package "
                                 f"{needed!r} (pip install 'vmqtw[db]')") from None
    # relative certificate paths are taken from the configuration file's directory
    databases = tuple(dataclasses.replace(
        db,
        cafile=db.cafile and resolve_path(db.cafile, context.config_dir),
        certfile=db.certfile and resolve_path(db.certfile, context.config_dir),
        keyfile=db.keyfile and resolve_path(db.keyfile, context.config_dir),
    ) for db in parsed.databases)
    return DiversityPlugin(dataclasses.replace(parsed, databases=databases), context)
