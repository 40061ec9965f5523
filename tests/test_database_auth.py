"""vmq_diversity database auth with a real broker (port 0), raw MQTT clients
and real PostgreSQL, MariaDB and Redis servers started by the tests (once per
test process, see tests/test_database_auth_servers.py), each holding VerneMQ's
schema and hashes: CONNACKs, the ACLs of the row, and a database that stops
mid-test and comes back."""
from __future__ import annotations

import atexit
import json
from typing import Any, Callable

from twisted.internet.defer import inlineCallbacks

from tests.support import publish_packet, subscribe_packet
from tests.test_auth_plugins import (
    CONNACK_BAD_LOGIN, CONNACK_NOT_AUTHORIZED, CONNACK_OK, AuthTestCase, login_packet,
)
from tests.test_database_auth_servers import MariaDB, Postgres, Redis
from tests.test_webhooks import LogLines

PUBLISH_ACL = json.dumps([{"pattern": "users/%u/#"}, {"pattern": "open/+", "max_qos": 0}])
SUBSCRIBE_ACL = json.dumps([{"pattern": "users/%u/#"}, {"pattern": "open/+"}])
DEFAULT_ACL = json.dumps([{"pattern": "default/#"}])

_servers: dict[str, Any] = {}
_failed: dict[str, BaseException] = {}


def shared(name: str, start: Callable[[], Any]) -> Any:
    """One server per test process, started on first use, stopped at exit.
    (A server that failed to start fails every test that needs it, quickly.)"""
    if name in _failed:
        raise _failed[name]
    if name not in _servers:
        try:
            server = start()
        except BaseException as e:
            _failed[name] = e
            raise
        _servers[name] = server
        atexit.register(server.stop)
    return _servers[name]


def bcrypt_2a(password: str) -> str:
    """A bcrypt hash in VerneMQ's $2a$ form (the same algorithm as $2b$)."""
    import bcrypt
    return "$2a$" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()[4:]


def start_postgres() -> Postgres:
    db = Postgres()
    db.sql(db.database, """
        CREATE TABLE vmq_auth_acl (
          mountpoint character varying(10) NOT NULL,
          client_id character varying(128) NOT NULL,
          username character varying(128) NOT NULL,
          password character varying(128),
          publish_acl json,
          subscribe_acl json,
          CONSTRAINT vmq_auth_acl_primary_key PRIMARY KEY (mountpoint, client_id, username))
    """, f"GRANT SELECT ON vmq_auth_acl TO {db.user}")
    insert = ("INSERT INTO vmq_auth_acl VALUES "
              "('', %s, %s, crypt(%s, gen_salt('bf')), %s, %s)")
    db.sql(db.database, insert, params=("c1", "alice", "secret", PUBLISH_ACL, SUBSCRIBE_ACL))
    db.sql(db.database, insert, params=("*", "alice", "other", DEFAULT_ACL, DEFAULT_ACL))
    return db


def start_mariadb() -> MariaDB:
    db = MariaDB()
    db.sql("""
        CREATE TABLE vmq_auth_acl (
          mountpoint VARCHAR(10) NOT NULL,
          client_id VARCHAR(128) NOT NULL,
          username VARCHAR(128) NOT NULL,
          password VARCHAR(128),
          publish_acl TEXT,
          subscribe_acl TEXT,
          CONSTRAINT vmq_auth_acl_primary_key PRIMARY KEY (mountpoint, client_id, username))
    """, database=db.database)
    for user, expression in (("alice", "SHA2(%s, 256)"), ("pw", "PASSWORD(%s)"),
                             ("md5", "MD5(%s)"), ("sha1", "SHA1(%s)")):
        db.sql(f"INSERT INTO vmq_auth_acl VALUES ('', 'c1', %s, {expression}, %s, %s)",
               database=db.database, params=(user, "secret", PUBLISH_ACL, SUBSCRIBE_ACL))
    db.sql("INSERT INTO vmq_auth_acl VALUES ('', '*', 'alice', SHA2(%s, 256), %s, %s)",
           database=db.database, params=("other", DEFAULT_ACL, DEFAULT_ACL))
    return db


def start_redis() -> Redis:
    db = Redis()
    db.seed = seed_redis
    seed_redis(db)
    return db


def seed_redis(db: Redis) -> None:
    db.command("SET", '["","c1","alice"]', json.dumps({
        "passhash": bcrypt_2a("secret"), "publish_acl": json.loads(PUBLISH_ACL),
        "subscribe_acl": json.loads(SUBSCRIBE_ACL)}))
    db.command("SET", '["","*","alice"]', json.dumps({
        "passhash": bcrypt_2a("other"), "publish_acl": json.loads(DEFAULT_ACL),
        "subscribe_acl": json.loads(DEFAULT_ACL)}))


class DatabaseAuthMixin:
    """The scenarios every database passes; subclasses say how to reach it."""

    prefix = ""        # postgres, mysql, redis
    kind = ""          # auth_postgres, ...
    start_server: Callable[[], Any]

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.db = shared(self.kind, type(self).start_server)
        self.log = LogLines(self)

    def config(self, **options: str) -> str:
        db, p = self.db, self.prefix
        lines = ["allow_anonymous = off", "listener.tcp.default = 127.0.0.1:0",
                 "plugins.vmq_diversity = on", f"vmq_diversity.{self.kind}.enabled = on",
                 f"vmq_diversity.{p}.host = 127.0.0.1", f"vmq_diversity.{p}.port = {db.port}",
                 f"vmq_diversity.{p}.password = {db.password}"]
        if p != "redis":
            lines += [f"vmq_diversity.{p}.user = {db.user}",
                      f"vmq_diversity.{p}.database = {db.database}"]
        lines += [f"vmq_diversity.{p}.{k} = {v}" for k, v in options.items()]
        return "\n".join(lines) + "\n"

    def broker(self, **options: str) -> Any:
        return self.start(self.config(**options))  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_login(self):
        """The right password is CONNACK 0, a wrong one or an unknown user CONNACK 4."""
        service = self.broker()
        self.assertEqual((yield self.connack(service, "c1", "alice", "secret")), CONNACK_OK)
        self.assertEqual((yield self.connack(service, "c1", "alice", "wrong")),
                         CONNACK_BAD_LOGIN)
        self.assertEqual((yield self.connack(service, "c1", "nobody", "secret")),
                         CONNACK_BAD_LOGIN)

    @inlineCallbacks
    def test_acl_of_the_row(self):
        """The row's publish_acl/subscribe_acl decide: %u is the user; a filter the
        ACL does not cover gets 0x80; an allowed publish is routed; a forbidden
        one disconnects (3.1.1)."""
        service = self.broker()
        client = yield self.raw_client(service)
        client.send(login_packet("c1", "alice", "secret"))
        self.assertEqual((yield client.read(4)), CONNACK_OK)
        client.send(subscribe_packet("users/alice/#", 1, packet_id=1))
        self.assertEqual((yield client.read(5)), b"\x90\x03\x00\x01\x01")
        client.send(subscribe_packet("users/bob/#", 0, packet_id=2))
        self.assertEqual((yield client.read(5)), b"\x90\x03\x00\x02\x80")
        client.send(publish_packet("users/alice/x", b"hi"))
        self.assertEqual((yield client.read(len(publish_packet("users/alice/x", b"hi")))),
                         publish_packet("users/alice/x", b"hi"))
        client.send(publish_packet("open/x", b"qos1 is above max_qos", qos=1))
        yield client.when_closed()

    @inlineCallbacks
    def test_default_row(self):
        """A client id without a row of its own uses the user's '*' row and its ACLs."""
        service = self.broker()
        client = yield self.raw_client(service)
        client.send(login_packet("c2", "alice", "other"))
        self.assertEqual((yield client.read(4)), CONNACK_OK)
        client.send(subscribe_packet("default/a", 0))
        self.assertEqual((yield client.read(5)), b"\x90\x03\x00\x01\x00")
        client.send(subscribe_packet("users/alice/a", 0, packet_id=2))
        self.assertEqual((yield client.read(5)), b"\x90\x03\x00\x02\x80")

    @inlineCallbacks
    def test_database_stopped_mid_test(self):
        """While the database is down logins are refused (CONNACK 5) with a log line
        naming it; when it is back, logins work again."""
        service = self.broker()
        self.assertEqual((yield self.connack(service, "c1", "alice", "secret")), CONNACK_OK)
        self.db.pause()
        try:
            self.assertEqual((yield self.connack(service, "c1", "alice", "secret")),
                             CONNACK_NOT_AUTHORIZED)
        finally:
            self.db.resume()
        self.assertTrue(self.log.matching(self.kind, "database unavailable"))
        self.assertEqual((yield self.connack(service, "c1", "alice", "secret")), CONNACK_OK)

    @inlineCallbacks
    def test_database_restarted_between_logins(self):
        """Connections opened before the database restarted are replaced without
        refusing anybody: the login after the restart works."""
        service = self.broker()
        self.assertEqual((yield self.connack(service, "c1", "alice", "secret")), CONNACK_OK)
        self.db.pause()
        self.db.resume()
        self.assertEqual((yield self.connack(service, "c1", "alice", "secret")), CONNACK_OK)
        self.assertEqual(self.log.matching("database unavailable"), [])


class PostgresTests(DatabaseAuthMixin, AuthTestCase):
    prefix, kind = "postgres", "auth_postgres"
    start_server = staticmethod(start_postgres)

    @inlineCallbacks
    def test_bcrypt_checked_in_the_broker(self):
        """password_hash_method = bcrypt checks the stored $2a$ hash in the broker."""
        service = self.broker(password_hash_method="bcrypt")
        self.assertEqual((yield self.connack(service, "c1", "alice", "secret")), CONNACK_OK)
        self.assertEqual((yield self.connack(service, "c1", "alice", "wrong")),
                         CONNACK_BAD_LOGIN)


class MariaDBTests(DatabaseAuthMixin, AuthTestCase):
    prefix, kind = "mysql", "auth_mysql"
    start_server = staticmethod(start_mariadb)

    def broker(self, **options: str) -> Any:
        options.setdefault("password_hash_method", "sha256")
        return super().broker(**options)

    @inlineCallbacks
    def test_hash_methods(self):
        """PASSWORD(), MD5, SHA1 and SHA2-256 rows each log in with their method only."""
        for method, user in (("password", "pw"), ("md5", "md5"), ("sha1", "sha1"),
                             ("sha256", "alice")):
            service = self.broker(password_hash_method=method)
            self.assertEqual((yield self.connack(service, "c1", user, "secret")), CONNACK_OK,
                             method)
            other = "md5" if user != "md5" else "sha1"
            self.assertEqual((yield self.connack(service, "c1", other, "secret")),
                             CONNACK_BAD_LOGIN, method)


class RedisTests(DatabaseAuthMixin, AuthTestCase):
    prefix, kind = "redis", "auth_redis"
    start_server = staticmethod(start_redis)
