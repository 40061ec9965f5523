"""
Tests for ``vmqtw.auth.passwd``: the vmq_passwd plugin.
"""
from __future__ import annotations

import base64
import hashlib
import os

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from vmqtw.auth.api import NEXT, OK, Error, IAuthOnRegister, RegisterRequest
from vmqtw.auth.context import PluginContext
from vmqtw.auth.passwd import (
    PasswdPlugin, hash_password, hash_password_pbkdf2, is_hashed, make_plugin, parse_hash,
)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def vmq6(password: bytes, salt: bytes) -> str:
    """VerneMQ's hash, computed here with hashlib only."""
    return f"$6${b64(salt)}${b64(hashlib.sha512(password + salt).digest())}"


def mosq7(password: bytes, salt: bytes, iterations: int = 101) -> str:
    dk = hashlib.pbkdf2_hmac("sha512", password, salt, iterations, 64)
    return f"$7${iterations}${b64(salt)}${b64(dk)}"


SALT = bytes(range(12))
#: Written by mosquitto_passwd 2.x for user "robots", password "robots".
MOSQUITTO_7 = ("$7$101$TdwP4Y1uJ+tFo9Bn$84rK4XGZEuBmuKJHABOT4pQOzQQPX2LIhN/m/kLG6OgxT+vS8w6v"
               "Cofgzd7YonvcKXTGIwK5tFe6nAWLpCT4Ow==")


def request(username: str | None, password: bytes | None) -> RegisterRequest:
    return RegisterRequest(("127.0.0.1", 40000), "", "client-1", username, password, True, 4)


class Events:
    """Collects log events of a Logger."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.log = Logger(observer=self.events.append)

    def texts(self, level: LogLevel | None = None) -> list[str]:
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in self.events
                if level is None or e["log_level"] == level]


class HashTests(SynchronousTestCase):
    def test_vmq_hash(self) -> None:
        """hash_password writes VerneMQ's form: $6$, 12-byte salt, SHA-512(pw || salt)."""
        text = hash_password(b"secret", SALT)
        self.assertEqual(text, vmq6(b"secret", SALT))
        random = hash_password(b"secret")
        salt = base64.b64decode(random.split("$")[2])
        self.assertEqual(len(salt), 12)
        self.assertEqual(random, vmq6(b"secret", salt))
        self.assertNotEqual(hash_password(b"secret"), random)

    def test_verify6(self) -> None:
        """
        A ``$6$`` entry verifies only the exact password bytes it was made from (UTF-8
        included); a different or empty password fails.
        """
        entry = parse_hash(vmq6(b"p\xc3\xa4ss", SALT))
        self.assertTrue(entry.verify(b"p\xc3\xa4ss"))
        self.assertFalse(entry.verify(b"pass"))
        self.assertFalse(entry.verify(b""))

    def test_any_id(self) -> None:
        """The text between the first two '$' is ignored, as in VerneMQ."""
        text = vmq6(b"x", SALT).replace("$6$", "$whatever$", 1)
        self.assertTrue(parse_hash(text).verify(b"x"))

    def test_unpadded_base64(self) -> None:
        """Salt and digest written in base64 without ``=`` padding are still accepted."""
        text = vmq6(b"x", SALT).rstrip("=")
        self.assertTrue(parse_hash(text).verify(b"x"))

    def test_verify7(self) -> None:
        """
        A mosquitto ``$7$`` entry (PBKDF2-SHA512 with its iteration count) verifies the right
        password only, and ``hash_password_pbkdf2`` writes exactly that form.
        """
        entry = parse_hash(mosq7(b"secret", SALT, 1000))
        self.assertEqual(entry.iterations, 1000)
        self.assertTrue(entry.verify(b"secret"))
        self.assertFalse(entry.verify(b"secreT"))
        self.assertEqual(hash_password_pbkdf2(b"secret", SALT, 1000), mosq7(b"secret", SALT, 1000))

    def test_mosquitto_vector(self) -> None:
        """A hash written by mosquitto_passwd 2.x verifies."""
        entry = parse_hash(MOSQUITTO_7)
        self.assertTrue(entry.verify(b"robots"))
        self.assertFalse(entry.verify(b"robot"))

    def test_bad_hashes(self) -> None:
        """
        Plain text, truncated entries, bad base64, wrong digest lengths, trailing fields and
        out-of-range or non-numeric iteration counts are refused by ``parse_hash`` and not
        reported as hashed by ``is_hashed``.
        """
        good = vmq6(b"x", SALT)
        digest = good.split("$")[3]
        for text in ["plaintext", "", "$", "$6$", "$6$abc", f"$6${digest}",
                     f"$6$!!!${digest}", "$6$AAAA$AAAA", good + "$x",
                     "$7$$AAAA$" + digest, "$7$0$AAAA$" + digest, "$7$x$AAAA$" + digest,
                     "$7$99999999$AAAA$" + digest, "$7$101$AAAA"]:
            self.assertRaises(ValueError, parse_hash, text)
            self.assertFalse(is_hashed(text))
        self.assertTrue(is_hashed(good))

    def test_reason_hides_plaintext(self) -> None:
        """
        The error for an entry that is not a hash does not echo the entry, which may be a
        plain-text password.
        """
        with self.assertRaises(ValueError) as cm:
            parse_hash("hunter2")
        self.assertNotIn("hunter2", str(cm.exception))


class PluginTestsMixin:
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(self.dir)
        self.clock = Clock()
        self.events = Events()
        self.context = PluginContext(self.clock, self.dir, self.events.log)

    def write(self, name: str, text: str | bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
        return path


class PasswdPluginTests(PluginTestsMixin, SynchronousTestCase):
    def plugin(self, text: str | bytes, **settings: str) -> PasswdPlugin:
        self.write("vmq.passwd", text)
        return make_plugin(settings, self.context)

    def test_interface(self) -> None:
        """The plugin provides ``IAuthOnRegister``."""
        plugin = self.plugin(f"alice:{vmq6(b'a', SALT)}\n")
        self.assertTrue(verifyObject(IAuthOnRegister, plugin))

    def test_results(self) -> None:
        """
        A known user with the right password gets ``ok``; a wrong or empty password gets an
        error ``invalid_credentials``; an unknown user, or a CONNECT without username or
        password, is passed to the next plugin (``next``), as vmq_passwd does.
        """
        plugin = self.plugin(
            "# users\n"
            "\n"
            f"alice:{vmq6(b'wonderland', SALT)}\n"
            f"bob:{mosq7(b'builder', SALT)}\n"
            f"robots:{MOSQUITTO_7}\n")
        self.assertIs(plugin.auth_on_register(request("alice", b"wonderland")), OK)
        self.assertIs(plugin.auth_on_register(request("bob", b"builder")), OK)
        self.assertIs(plugin.auth_on_register(request("robots", b"robots")), OK)
        wrong = plugin.auth_on_register(request("alice", b"builder"))
        self.assertIsInstance(wrong, Error)
        self.assertEqual(wrong.reason, "invalid_credentials")
        empty = plugin.auth_on_register(request("alice", b""))
        self.assertEqual(empty.reason, "invalid_credentials")
        self.assertIs(plugin.auth_on_register(request("carol", b"wonderland")), NEXT)
        self.assertIs(plugin.auth_on_register(request(None, b"wonderland")), NEXT)
        self.assertIs(plugin.auth_on_register(request("alice", None)), NEXT)
        self.assertIs(plugin.auth_on_register(request(None, None)), NEXT)
        self.assertEqual(plugin.users, {"alice", "bob", "robots"})

    def test_user_before_first_colon(self) -> None:
        """
        The user is the text before the first ``:`` and the rest must be a hash, so
        ``a:b:HASH`` is refused with ``FILE:LINE``; CRLF, surrounding blanks and blank lines
        are fine.
        """
        plugin = self.plugin(f"  alice:{vmq6(b'x', SALT)}  \r\n\r\n   \n")
        self.assertIs(plugin.auth_on_register(request("alice", b"x")), OK)
        with self.assertRaises(ValueError) as cm:
            self.plugin(f"a:b:{vmq6(b'x', SALT)}\n")
        self.assertIn("vmq.passwd:1:", str(cm.exception))

    def test_byte_order_mark(self) -> None:
        """
        A UTF-8 byte order mark at the start of the file is skipped, and a warning names the
        file and line 1.
        """
        plugin = self.plugin(b"\xef\xbb\xbfalice:" + vmq6(b"x", SALT).encode() + b"\n")
        self.assertIs(plugin.auth_on_register(request("alice", b"x")), OK)
        self.assertTrue(any("vmq.passwd:1: UTF-8 byte order mark" in t
                            for t in self.events.texts()))

    def test_duplicate_user_last_wins(self) -> None:
        """
        When a user appears twice the later line wins, and the duplicate is logged with its
        line number.
        """
        plugin = self.plugin(f"a:{vmq6(b'one', SALT)}\na:{vmq6(b'two', SALT)}\n")
        self.assertIs(plugin.auth_on_register(request("a", b"two")), OK)
        self.assertIsInstance(plugin.auth_on_register(request("a", b"one")), Error)
        self.assertTrue(any("vmq.passwd:2:" in t for t in self.events.texts()))

    def test_malformed_at_start(self) -> None:
        """
        A malformed file (no colon, empty user, plain-text or broken hash, invalid UTF-8)
        refuses plugin start with an error naming ``PATH:LINE`` and never showing the password.
        """
        for text, line in [("nocolon\n", 1),
                           (f"a:{vmq6(b'x', SALT)}\n\nb:secret\n", 3),
                           (f":{vmq6(b'x', SALT)}\n", 1),
                           ("# c\nb:$6$AAAA$AAAA\n", 2),
                           (b"a:\xff\n", 1)]:
            with self.assertRaises(ValueError) as cm:
                self.plugin(text)
            message = str(cm.exception)
            self.assertIn(os.path.join(self.dir, "vmq.passwd") + f":{line}:", message)
            self.assertNotIn("secret", message)

    def test_missing_at_start(self) -> None:
        """
        A password file that does not exist refuses plugin start with an error naming its full
        path.
        """
        with self.assertRaises(ValueError) as cm:
            make_plugin({"password_file": "nope.passwd"}, self.context)
        self.assertIn(os.path.join(self.dir, "nope.passwd"), str(cm.exception))

    def test_settings(self) -> None:
        """
        ``password_file`` is resolved against the configuration directory and
        ``password_reload_interval`` defaults to 10 seconds; a negative, non-integer or empty
        interval, an unknown ``vmq_passwd.*`` setting and a blank file name are refused with
        the setting's name.
        """
        path = self.write("other", f"a:{vmq6(b'x', SALT)}\n")
        plugin = make_plugin({"password_file": path, "password_reload_interval": "0"},
                             self.context)
        self.assertEqual(plugin.path, path)
        self.assertEqual(plugin.interval, 0)
        plugin = make_plugin({"password_file": "other"}, self.context)
        self.assertEqual(plugin.path, path)
        self.assertEqual(plugin.interval, 10)
        for bad in ["-1", "ten", "1.5", ""]:
            with self.assertRaises(ValueError) as cm:
                make_plugin({"password_file": path, "password_reload_interval": bad},
                            self.context)
            self.assertIn("vmq_passwd.password_reload_interval", str(cm.exception))
        with self.assertRaises(ValueError) as cm:
            make_plugin({"passwd_file": path}, self.context)
        self.assertIn("vmq_passwd.passwd_file", str(cm.exception))
        self.assertRaises(ValueError, make_plugin, {"password_file": " "}, self.context)

    def test_interval_off(self) -> None:
        """
        ``password_reload_interval = 0`` schedules no periodic reload, but an explicit reload
        (as on SIGHUP) still picks up a changed file.
        """
        plugin = self.plugin(f"a:{vmq6(b'x', SALT)}\n", password_reload_interval="0")
        plugin.start()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.write("vmq.passwd", f"a:{vmq6(b'y', SALT)}\n")
        self.assertTrue(plugin.reload())
        self.assertIs(plugin.auth_on_register(request("a", b"y")), OK)


class PasswdReloadTests(PluginTestsMixin, SynchronousTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.path = self.write("vmq.passwd", f"alice:{vmq6(b'one', SALT)}\n")
        self.plugin = make_plugin({"password_reload_interval": "5"}, self.context)
        self.plugin.start()
        self.addCleanup(self.plugin.stop)

    def touch_later(self) -> None:
        """Make sure a rewrite gets a new mtime even on coarse file systems."""
        st = os.stat(self.path)
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))

    def check(self, user: str, password: bytes) -> object:
        return self.plugin.auth_on_register(request(user, password))

    def test_changed_file_picked_up(self) -> None:
        """
        A rewritten file takes effect at the next reload interval, not before; users removed
        from the file are no longer known afterwards, and one timer stays scheduled.
        """
        self.write("vmq.passwd", f"alice:{vmq6(b'two', SALT)}\nbob:{vmq6(b'b', SALT)}\n")
        self.touch_later()
        self.clock.advance(4)
        self.assertIs(self.check("alice", b"one"), OK)
        self.clock.advance(1)
        self.assertIs(self.check("alice", b"two"), OK)
        self.assertIs(self.check("bob", b"b"), OK)
        self.assertIsInstance(self.check("alice", b"one"), Error)
        # removed users are gone after the next change
        self.write("vmq.passwd", f"bob:{vmq6(b'b', SALT)}\n")
        self.touch_later()
        self.clock.advance(5)
        self.assertIs(self.check("alice", b"two"), NEXT)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_unchanged_file_not_reparsed(self) -> None:
        """
        Periodic checks do not re-read a file whose size, mtime and inode are unchanged; an
        explicit reload always parses it.
        """
        parsed: list[bytes] = []
        original = self.plugin.parse

        def counting(data: bytes) -> dict:
            parsed.append(data)
            return original(data)

        self.plugin.parse = counting  # type: ignore[method-assign]
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(parsed, [])
        self.assertTrue(self.plugin.reload())
        self.assertEqual(len(parsed), 1)

    def test_broken_file_keeps_old_table(self) -> None:
        """
        A file that becomes malformed leaves the previous users in force and is logged once as
        an error with ``PATH:LINE`` and no password; an explicit reload reports it again, and
        the fixed file is picked up at the next interval.
        """
        self.write("vmq.passwd", f"alice:{vmq6(b'two', SALT)}\nbob:plaintext\n")
        self.touch_later()
        self.clock.advance(5)
        self.assertIs(self.check("alice", b"one"), OK)
        self.assertIs(self.check("bob", b"plaintext"), NEXT)
        errors = self.events.texts(LogLevel.error)
        self.assertEqual(len(errors), 1)
        self.assertIn(self.path + ":2:", errors[0])
        self.assertNotIn("plaintext", errors[0])
        # reported once, not every interval
        self.clock.advance(5)
        self.assertEqual(len(self.events.texts(LogLevel.error)), 1)
        self.assertFalse(self.plugin.reload())
        self.assertEqual(len(self.events.texts(LogLevel.error)), 2)
        # fixed: picked up
        self.write("vmq.passwd", f"alice:{vmq6(b'three', SALT)}\n")
        self.touch_later()
        self.clock.advance(5)
        self.assertIs(self.check("alice", b"three"), OK)

    def test_deleted_file_keeps_old_table(self) -> None:
        """
        A deleted file leaves the previous users in force with a single warning naming the
        path; an explicit reload fails, and a file written again is picked up at the next
        interval.
        """
        os.remove(self.path)
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertIs(self.check("alice", b"one"), OK)
        warnings = self.events.texts(LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn(self.path, warnings[0])
        self.assertFalse(self.plugin.reload())
        self.write("vmq.passwd", f"alice:{vmq6(b'two', SALT)}\n")
        self.clock.advance(5)
        self.assertIs(self.check("alice", b"two"), OK)

    def test_atomic_replace_same_size_and_mtime(self) -> None:
        """A file replaced by os.replace is noticed through its inode."""
        st = os.stat(self.path)
        tmp = self.write("new", f"alice:{vmq6(b'owt', SALT)}\n")
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, self.path)
        self.clock.advance(5)
        self.assertIs(self.check("alice", b"owt"), OK)

    def test_stop(self) -> None:
        """
        The plugin keeps one reload timer while started; ``stop`` cancels it, and stopping or
        starting twice is harmless.
        """
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.plugin.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.plugin.stop()
        self.plugin.start()
        self.plugin.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_reload_failure_does_not_stop_timer(self) -> None:
        """
        An unexpected error while reloading is logged (not raised, not left as an unhandled
        failure), the old users stay in force and the reload timer keeps running; an explicit
        reload reports ``False``.
        """
        def boom(data: bytes) -> dict:
            raise RuntimeError("boom")

        self.plugin.parse = boom  # type: ignore[method-assign]
        self.write("vmq.passwd", f"alice:{vmq6(b'two', SALT)}\n")
        self.touch_later()
        self.clock.advance(5)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertIs(self.check("alice", b"one"), OK)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 0)
        self.assertTrue(any("boom" in repr(e.get("log_failure")) for e in self.events.events))
        self.assertFalse(self.plugin.reload())  # SIGHUP: logged, never raised
