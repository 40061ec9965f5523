"""PostgreSQL and MySQL/MariaDB lookups in VerneMQ's ``vmq_auth_acl`` table,
through a thread pool of ``pool_size`` threads, each with its own DB-API
connection (psycopg2, pymysql).  A query that fails drops its thread's
connection, so the next lookup reconnects: a database that was down is used
again as soon as it is back, without a log storm.

Table (``json`` columns in PostgreSQL, ``TEXT`` in MySQL)::

    vmq_auth_acl(mountpoint, client_id, username, password, publish_acl, subscribe_acl)
    PRIMARY KEY (mountpoint, client_id, username)

A row whose client_id is ``*`` is the user's default row; a row for the
client's own id is preferred.
"""
from __future__ import annotations

from typing import Any

import importlib
import threading

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from vmqtw.auth.diversity.settings import DatabaseSettings

__all__ = ["Row", "BackendDown", "SQLBackend", "check_bcrypt"]

#: (publish_acl, subscribe_acl) of the row that matched, JSON text or None.
Row = tuple[Any, Any]


class BackendDown(Exception):
    """The database could not be asked (down, unreachable, refused us)."""


def check_bcrypt(password: bytes, stored: Any) -> bool:
    """``bcrypt(password, stored) == stored`` for a ``$2a$``/``$2b$``/``$2y$`` hash."""
    import bcrypt
    if isinstance(stored, str):
        stored = stored.encode("utf-8")
    if not isinstance(stored, bytes) or not stored.startswith((b"$2a$", b"$2b$", b"$2y$")):
        return False
    try:
        return bcrypt.checkpw(password, stored)
    except ValueError:
        return False


def _pick(rows: list[tuple[Any, ...]]) -> Row | None:
    """The first row for the client's own id, else the first (``*``) row."""
    if not rows:
        return None
    for row in rows:
        if row[2] != "*":
            return (row[0], row[1])
    return (rows[0][0], rows[0][1])


_MYSQL_HASH = {"password": "PASSWORD(%s)", "md5": "MD5(%s)", "sha1": "SHA1(%s)",
               "sha256": "SHA2(%s, 256)"}


class SQLBackend:
    """One database's pool and its VerneMQ queries."""

    def __init__(self, settings: DatabaseSettings, reactor: Any = None) -> None:
        self.settings = settings
        self.name = settings.kind
        s = settings
        if s.kind == "auth_postgres":
            module = "psycopg2"
            kwargs: dict[str, Any] = dict(host=s.host, port=s.port, user=s.user,
                                          password=s.password, dbname=s.database,
                                          connect_timeout=5)
            if s.ssl:
                kwargs["sslmode"] = ("verify-full" if s.verify_peer and s.cafile else "require")
                for key, value in (("sslrootcert", s.cafile), ("sslcert", s.certfile),
                                   ("sslkey", s.keyfile)):
                    if value:
                        kwargs[key] = value
            columns = "publish_acl::TEXT, subscribe_acl::TEXT, client_id"
            where = "mountpoint=%s AND (client_id=%s OR client_id='*') AND username=%s"
            if s.hash_method == "crypt":
                self.query = (f"SELECT {columns} FROM vmq_auth_acl WHERE {where} "
                              f"AND password=crypt(%s, password)")
            else:
                self.query = f"SELECT {columns}, password FROM vmq_auth_acl WHERE {where}"
        else:
            module = "pymysql"
            kwargs = dict(host=s.host, port=s.port, user=s.user, password=s.password,
                          database=s.database, connect_timeout=5, read_timeout=10,
                          write_timeout=10, autocommit=True,
                          charset="utf8mb4")
            if s.ssl:
                kwargs["ssl"] = {k: v for k, v in (("ca", s.cafile), ("cert", s.certfile),
                                                   ("key", s.keyfile)) if v} or {"ca": None}
            self.query = ("SELECT publish_acl, subscribe_acl, client_id FROM vmq_auth_acl "
                          "WHERE mountpoint=%s AND (client_id=%s OR client_id='*') AND "
                          f"username=%s AND password={_MYSQL_HASH[s.hash_method]}")
        self.bcrypt = s.hash_method == "bcrypt"
        self.module = module
        self.kwargs = kwargs
        self.local = threading.local()
        self.open: set[Any] = set()
        self.lock = threading.Lock()
        self.threads = ThreadPool(0, s.pool_size, name=f"vmq_diversity-{s.kind}")
        self.reactor = reactor

    def _connect(self) -> Any:
        """(in a pool thread) this thread's connection, opened if needed."""
        conn = getattr(self.local, "conn", None)
        if conn is None:
            driver = importlib.import_module(self.module)
            conn = driver.connect(**self.kwargs)
            if self.module == "psycopg2":
                conn.autocommit = True
            self.local.conn = conn
            with self.lock:
                self.open.add(conn)
        return conn

    def _drop(self) -> None:
        """(in a pool thread) forget this thread's connection after a failure."""
        conn = getattr(self.local, "conn", None)
        self.local.conn = None
        if conn is not None:
            with self.lock:
                self.open.discard(conn)
            try:
                conn.close()
            except Exception:
                pass

    def _run(self, *args: Any) -> Any:
        """(in a pool thread) one lookup.  A failure drops the connection; if it
        was an old one (the database may have restarted since), the lookup is
        tried once more on a new connection."""
        for attempt in (1, 2):
            reused = getattr(self.local, "conn", None) is not None
            try:
                conn = self._connect()
                cursor = conn.cursor()
                try:
                    return self._lookup(cursor, *args)
                finally:
                    cursor.close()
            except Exception:
                self._drop()
                if not reused or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def lookup(self, mountpoint: str, client_id: str, username: str,
               password: bytes) -> "defer.Deferred[Row | None]":
        """The row for these credentials, None when they are wrong; fails with
        BackendDown when the database cannot be asked."""
        if not self.threads.started:
            if self.reactor is None:
                from twisted.internet import reactor
                self.reactor = reactor
            self.threads.start()
        d = threads.deferToThreadPool(self.reactor, self.threads, self._run,
                                      mountpoint, client_id, username, password)

        def down(failure: Any) -> Any:
            raise BackendDown(f"{failure.type.__name__}: {failure.getErrorMessage()}"
                              .strip()[:300])

        return d.addErrback(down)

    def _lookup(self, cursor: Any, mountpoint: str, client_id: str, username: str,
                password: bytes) -> Row | None:
        """(in a pool thread)"""
        text = password.decode("utf-8", "replace")
        if self.bcrypt:
            cursor.execute(self.query, (mountpoint, client_id, username))
            rows = [r for r in cursor.fetchall() if check_bcrypt(password, r[3])]
        else:
            cursor.execute(self.query, (mountpoint, client_id, username, text))
            rows = list(cursor.fetchall())
        return _pick(rows)

    def close(self) -> None:
        if self.threads.started:
            self.threads.stop()
        with self.lock:
            conns, self.open = list(self.open), set()
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass
