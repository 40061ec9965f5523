"""vmq_diversity database auth, in memory: settings, VerneMQ's ACL entries and
matching, the per-node ACL cache, the plugin over a fake database, and the
Redis reply parser."""
from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.auth.api import OK, Error, RegisterRequest
from vmqtw.auth.context import PluginContext
from vmqtw.auth.diversity.acl import AclCache, ClientAcl, parse_acl
from vmqtw.auth.diversity.plugin import DATABASE_UNAVAILABLE, DiversityPlugin
from vmqtw.auth.diversity.redis import RedisError, _parse, redis_key
from vmqtw.auth.diversity.settings import parse_settings
from vmqtw.auth.diversity.sql import BackendDown, _pick


def acl(publish: Any = None, subscribe: Any = None, user: str = "alice",
        client_id: str = "c1", mountpoint: str = "") -> ClientAcl:
    return ClientAcl(user, client_id, mountpoint, parse_acl(json.dumps(publish or [])),
                     parse_acl(json.dumps(subscribe or [])))


class SettingsTests(SynchronousTestCase):

    def test_postgres_defaults_and_values(self) -> None:
        """auth_postgres reads VerneMQ's postgres.* keys with VerneMQ's defaults."""
        s = parse_settings({"auth_postgres.enabled": "on", "postgres.host": "db",
                            "postgres.port": "5433"})
        [db] = s.databases
        self.assertEqual((db.kind, db.host, db.port, db.user, db.password, db.database,
                          db.hash_method, db.pool_size, db.ssl),
                         ("auth_postgres", "db", 5433, "root", "password", "vernemq_db",
                          "crypt", 5, False))

    def test_mysql_and_redis_defaults(self) -> None:
        """auth_mysql hashes with PASSWORD() by default, auth_mysql2 with sha256,
        Redis uses bcrypt on database 0."""
        s = parse_settings({"auth_mysql.enabled": "on", "auth_mysql2.enabled": "on",
                            "auth_redis.enabled": "on"})
        self.assertEqual([(d.kind, d.hash_method, d.port) for d in s.databases], [
            ("auth_mysql", "password", 3306), ("auth_mysql2", "sha256", 3306),
            ("auth_redis", "bcrypt", 6379)])

    def test_bad_settings(self) -> None:
        """Unknown keys, unsupported databases, bad hash methods and settings for a
        database that is not enabled are errors naming the key."""
        for settings, text in [
            ({"auth_postgres.enabled": "on", "postgres.colour": "red"}, "postgres.colour"),
            ({"auth_mongodb.enabled": "on"}, "not supported"),
            ({"auth_postgres.enabled": "on", "postgres.password_hash_method": "md5"},
             "password_hash_method"),
            ({"auth_postgres.enabled": "maybe"}, "on or off"),
            ({"auth_postgres.enabled": "on", "mysql.host": "x"}, "auth_mysql"),
        ]:
            with self.assertRaises(ValueError) as e:
                parse_settings(settings)
            self.assertIn(text, str(e.exception))


class AclTests(SynchronousTestCase):

    def test_publish_pattern_with_substitution(self) -> None:
        """%u, %c and %m stand for user, client id and mountpoint as whole levels only."""
        a = acl([{"pattern": "users/%u/%c/#"}, {"pattern": "x%u"}], mountpoint="mp")
        self.assertIs(a.check_publish("users/alice/c1/t", 0, 0, False), OK)
        self.assertIsInstance(a.check_publish("users/bob/c1/t", 0, 0, False), Error)
        self.assertIsInstance(a.check_publish("xalice", 0, 0, False), Error)
        self.assertIs(a.check_publish("x%u", 0, 0, False), OK)

    def test_publish_limits(self) -> None:
        """max_qos, max_payload_size and allowed_retain make an entry not match."""
        a = acl([{"pattern": "t", "max_qos": 1, "max_payload_size": 3,
                  "allowed_retain": False}])
        self.assertIs(a.check_publish("t", 3, 1, False), OK)
        for args in ((4, 1, False), (3, 2, False), (3, 1, True)):
            self.assertIsInstance(a.check_publish("t", *args), Error, args)

    def test_publish_modifiers(self) -> None:
        """An entry's modifiers come back as ok(...); invalid ones are dropped."""
        warnings: list[str] = []
        a = acl([{"pattern": "t", "modifiers": {"topic": "new", "payload": "p", "qos": 5.5}}])
        result = a.check_publish("t", 0, 0, False, warnings.append)
        self.assertEqual(result.modifiers, {"topic": "new", "payload": b"p"})
        self.assertEqual(len(warnings), 1)

    def test_subscribe_matching(self) -> None:
        """Pattern a/+ allows the filter a/# and a/+; a higher QoS than max_qos does
        not match; one denied filter denies the whole SUBSCRIBE."""
        a = acl(subscribe=[{"pattern": "a/+", "max_qos": 1}, {"pattern": "b/#"}])
        self.assertIs(a.check_subscribe([("a/#", 1), ("a/+", 0), ("b/c/d", 2)]), OK)
        self.assertIsInstance(a.check_subscribe([("a/x", 2)]), Error)
        self.assertIsInstance(a.check_subscribe([("a/x", 0), ("c", 0)]), Error)

    def test_subscribe_modifiers(self) -> None:
        """[["new/topic", qos]] replaces the requested filter."""
        a = acl(subscribe=[{"pattern": "a", "modifiers": [["b", 1]]}, {"pattern": "c"}])
        self.assertEqual(a.check_subscribe([("a", 0), ("c", 2)]).modifiers,
                         {"topics": [("b", 1), ("c", 2)]})

    def test_missing_acl_allows_nothing(self) -> None:
        """Without a publish_acl nothing may be published; broken JSON is no ACL."""
        warnings: list[str] = []
        a = ClientAcl("u", "c", "", parse_acl(None), parse_acl("{not json", warnings.append))
        self.assertIsInstance(a.check_publish("t", 0, 0, False), Error)
        self.assertIsInstance(a.check_subscribe([("t", 0)]), Error)
        self.assertEqual(len(warnings), 1)

    def test_cache_newest_wins_oldest_dropped(self) -> None:
        """Lookups use the newest entry of (mountpoint, client_id); a session ending
        drops the oldest, as vmq_diversity_cache does on takeover."""
        cache = AclCache()
        old, new = acl(), acl([{"pattern": "#"}])
        cache.add("", "c1", old)
        cache.add("", "c1", new)
        self.assertIs(cache.get("", "c1"), new)
        cache.drop_oldest("", "c1")
        self.assertIs(cache.get("", "c1"), new)
        cache.drop_oldest("", "c1")
        self.assertIsNone(cache.get("", "c1"))

    def test_pick_prefers_the_clients_own_row(self) -> None:
        """Of the rows found, one for the client id beats the '*' default row."""
        self.assertEqual(_pick([("p*", "s*", "*"), ("p", "s", "c1")]), ("p", "s"))
        self.assertEqual(_pick([("p*", "s*", "*")]), ("p*", "s*"))
        self.assertIsNone(_pick([]))


class FakeBackend:
    name = "auth_fake"

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[tuple[Any, ...]] = []

    def lookup(self, *args: Any) -> Any:
        self.asked.append(args)
        if isinstance(self.answer, Exception):
            return defer.fail(self.answer)
        return defer.succeed(self.answer)

    def close(self) -> None:
        pass


class Client:
    def __init__(self, client_id: str = "c1", mountpoint: str = "") -> None:
        self.client_id = client_id
        self.mountpoint = mountpoint


def request(username: str | None = "alice", password: bytes | None = b"pw") -> RegisterRequest:
    return RegisterRequest(("127.0.0.1", 1), "", "c1", username, password, True, 4)


class PluginTests(SynchronousTestCase):

    def plugin(self, answer: Any) -> DiversityPlugin:
        self.lines: list[str] = []
        log = Logger(observer=lambda e: self.lines.append(formatEvent(e)))
        return DiversityPlugin(parse_settings({}), PluginContext(Clock(), ".", log),
                               backends=[FakeBackend(answer)])

    def test_row_found_caches_acls_for_publish_and_subscribe(self) -> None:
        """A matching row grants the CONNECT; its ACLs then decide publish/subscribe
        synchronously until the session ends."""
        plugin = self.plugin((json.dumps([{"pattern": "a/#"}]), '[{"pattern": "s"}]'))
        self.assertIs(self.successResultOf(plugin.auth_on_register(request())), OK)
        self.assertIs(plugin.auth_on_publish(Client(), "a/b", b"", 0, False), OK)
        self.assertIsInstance(plugin.auth_on_publish(Client(), "b", b"", 0, False), Error)
        self.assertIs(plugin.auth_on_subscribe_m5(Client(), [("s", 1)], {}), OK)
        plugin.on_client_gone("", "c1")
        self.assertIsInstance(plugin.auth_on_publish(Client(), "a/b", b"", 0, False), Error)

    def test_wrong_or_missing_credentials(self) -> None:
        """No row, no user name or no password: invalid_credentials (CONNACK 4)."""
        plugin = self.plugin(None)
        for req in (request(), request(username=None), request(password=None)):
            result = self.successResultOf(plugin.auth_on_register(req))
            self.assertEqual(result.reason, "invalid_credentials")

    def test_database_down_refuses_with_a_log_line(self) -> None:
        """A database that cannot be asked refuses the login and logs one line naming it."""
        plugin = self.plugin(BackendDown("connection refused"))
        result = self.successResultOf(plugin.auth_on_register(request()))
        self.assertEqual(result.reason, DATABASE_UNAVAILABLE)
        self.assertEqual(len(self.lines), 1)
        self.assertIn("auth_fake", self.lines[0])
        self.assertIn("connection refused", self.lines[0])

    def test_client_without_cache_entry_is_denied(self) -> None:
        """A client that authenticated elsewhere has no ACL entry: denied."""
        plugin = self.plugin(None)
        self.assertIsInstance(plugin.auth_on_publish(Client(), "t", b"", 0, False), Error)
        self.assertIsInstance(plugin.auth_on_subscribe(Client(), [("t", 0)]), Error)


class RedisProtocolTests(SynchronousTestCase):

    def test_key_layout(self) -> None:
        """The key is compact JSON [mountpoint, client_id, username]."""
        self.assertEqual(redis_key("", "c1", "alice"), '["","c1","alice"]')

    def test_replies(self) -> None:
        """RESP2 replies parse whole, and incomplete ones wait for more bytes."""
        self.assertEqual(_parse(b"+OK\r\n", 0), ("OK", 5))
        self.assertEqual(_parse(b"$3\r\nabc\r\n", 0), (b"abc", 9))
        self.assertEqual(_parse(b"$-1\r\n", 0), (None, 5))
        self.assertEqual(_parse(b"*2\r\n:1\r\n$1\r\nx\r\n", 0), ([1, b"x"], 15))
        self.assertIsInstance(_parse(b"-ERR no\r\n", 0)[0], RedisError)
        self.assertIsNone(_parse(b"$3\r\nab", 0))


class RedisPipelineTests(SynchronousTestCase):

    def test_pipelined_replies_fire_in_order(self) -> None:
        """Commands written back to back get their replies in order, even when the
        replies arrive split across reads."""
        from twisted.internet.testing import StringTransport

        from vmqtw.auth.diversity.redis import RedisProtocol
        proto = RedisProtocol()
        proto.makeConnection(StringTransport())
        first = proto.execute("GET", "a")
        second = proto.execute("GET", "b")
        self.assertEqual(proto.transport.value(),
                         b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n")
        proto.dataReceived(b"$1\r\nx\r\n$-")
        self.assertEqual(self.successResultOf(first), b"x")
        self.assertNoResult(second)
        proto.dataReceived(b"1\r\n")
        self.assertIsNone(self.successResultOf(second))

    def test_connection_lost_fails_pending_commands(self) -> None:
        """A lost connection fails what waits on it and refuses new commands."""
        from twisted.internet.testing import StringTransport

        from vmqtw.auth.diversity.redis import RedisProtocol
        proto = RedisProtocol()
        proto.makeConnection(StringTransport())
        pending = proto.execute("GET", "a")
        proto.connectionLost(None)
        self.failureResultOf(pending, ConnectionError)
        self.failureResultOf(proto.execute("GET", "b"), ConnectionError)
