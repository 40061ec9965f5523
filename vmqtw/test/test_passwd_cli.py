"""
Tests for ``vmqtw.auth.passwd_cli``: the vmq-passwd command.
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import sys

from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.auth import passwd_cli
from vmqtw.auth.api import OK, RegisterRequest
from vmqtw.auth.context import PluginContext
from vmqtw.auth.passwd import make_plugin


def verifies(line: str, username: str, password: bytes) -> bool:
    """Check a written line with hashlib only."""
    user, _, hashed = line.partition(":")
    empty, ident, salt_b64, digest_b64 = hashed.split("$")
    salt = base64.b64decode(salt_b64)
    return (user == username and empty == "" and ident == "6" and len(salt) == 12
            and base64.b64decode(digest_b64) == hashlib.sha512(password + salt).digest())


def vmq6(password: bytes) -> str:
    salt = b"0123456789ab"
    digest = hashlib.sha512(password + salt).digest()
    return f"$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class CliTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "vmq.passwd")
        self.stderr = io.StringIO()
        self.stdout = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.patch(sys, "stdout", self.stdout)
        self.prompts: list[str] = []
        self.answers: list[str] = []
        self.patch(passwd_cli, "prompt", self.prompt)

    def prompt(self, text: str) -> str:
        self.prompts.append(text)
        return self.answers.pop(0)

    def run_cli(self, *argv: str, answers: tuple[str, ...] = (), stdin: str | None = None
                ) -> int:
        self.answers = list(answers)
        self.stderr.seek(0)
        self.stderr.truncate()
        if stdin is not None:
            self.patch(sys, "stdin", io.StringIO(stdin))
        return passwd_cli.main(list(argv))

    def lines(self) -> list[str]:
        with open(self.path, encoding="utf-8") as f:
            return f.read().splitlines()

    def write(self, text: str) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(text)

    def assertFails(self, code: int, message: str) -> None:
        self.assertEqual(code, 1)
        self.assertIn(message, self.stderr.getvalue())

    def assertNoTempFiles(self) -> None:
        self.assertEqual(sorted(os.listdir(self.dir)), ["vmq.passwd"])

    def check_with_plugin(self, user: str, password: bytes) -> object:
        plugin = make_plugin({"password_file": self.path},
                             PluginContext(Clock(), self.dir, Logger(observer=lambda e: None)))
        return plugin.auth_on_register(
            RegisterRequest(("::1", 1), "", "c", user, password, True, 4))

    # -- -c / -cf ----------------------------------------------------------------

    def test_create(self) -> None:
        """
        ``vmq-passwd -c FILE USER`` prompts twice, writes a single VerneMQ ``$6$`` line with
        mode 0600 that the vmq_passwd plugin accepts, leaves no temporary file and prints
        nothing on stderr.
        """
        self.assertEqual(self.run_cli("-c", self.path, "alice", answers=("s3cret", "s3cret")), 0)
        self.assertEqual(self.prompts, ["Password: ", "Reenter password: "])
        [line] = self.lines()
        self.assertTrue(verifies(line, "alice", b"s3cret"))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertIs(self.check_with_plugin("alice", b"s3cret"), OK)
        self.assertNoTempFiles()
        self.assertEqual(self.stderr.getvalue(), "")

    def test_create_refuses_existing(self) -> None:
        """
        ``-c`` on an existing file fails with "already exists" before prompting and leaves the
        file untouched.
        """
        self.write("keep:me\n")
        self.assertFails(self.run_cli("-c", self.path, "alice", answers=("a", "a")),
                         "already exists")
        self.assertEqual(self.prompts, [])
        self.assertEqual(self.lines(), ["keep:me"])

    def test_create_force(self) -> None:
        """
        ``-cf`` replaces an existing file with only the new user, and also creates a file that
        does not exist yet.
        """
        self.write(f"old:{vmq6(b'x')}\n")
        self.assertEqual(self.run_cli("-cf", self.path, "alice", answers=("pw", "pw")), 0)
        [line] = self.lines()
        self.assertTrue(verifies(line, "alice", b"pw"))
        self.assertEqual(self.run_cli("-cf", self.path + ".new", "bob", answers=("b", "b")), 0)
        self.assertTrue(os.path.exists(self.path + ".new"))

    # -- add / update ------------------------------------------------------------

    def test_add_and_update(self) -> None:
        """
        Without ``-c`` an existing user's line is updated in place (later duplicates of that
        user are dropped) and a new user is appended; comments, blank lines, other users and
        are kept, a 0644 file is tightened to 0600 (#14), and no temporary file is left.
        """
        self.write(f"# users\nalice:{vmq6(b'one')}\n\nbob:{vmq6(b'b')}\nalice:{vmq6(b'dup')}\n")
        os.chmod(self.path, 0o644)
        self.assertEqual(self.run_cli(self.path, "alice", answers=("two", "two")), 0)
        lines = self.lines()
        self.assertEqual(lines[0], "# users")
        self.assertTrue(verifies(lines[1], "alice", b"two"))
        self.assertEqual(lines[2:], ["", f"bob:{vmq6(b'b')}"])
        self.assertEqual(self.run_cli(self.path, "carol", answers=("c", "c")), 0)
        self.assertTrue(verifies(self.lines()[-1], "carol", b"c"))
        self.assertEqual(len(self.lines()), 5)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertNoTempFiles()

    def test_add_needs_existing_file(self) -> None:
        """
        Adding a user to a file that does not exist fails before prompting, pointing at ``-c``,
        and creates no file.
        """
        self.assertFails(self.run_cli(self.path, "alice", answers=("a", "a")), "-c")
        self.assertEqual(self.prompts, [])
        self.assertFalse(os.path.exists(self.path))

    def test_symlink_kept(self) -> None:
        """Updating through a symbolic link writes the link's target and keeps the link."""
        real = os.path.join(self.dir, "real")
        with open(real, "w") as f:
            f.write("")
        link = os.path.join(self.dir, "link")
        os.symlink(real, link)
        self.assertEqual(self.run_cli(link, "a", answers=("p", "p")), 0)
        self.assertTrue(os.path.islink(link))
        with open(real) as f:
            self.assertTrue(verifies(f.read().strip(), "a", b"p"))

    # -- passwords ---------------------------------------------------------------

    def test_password_mismatch(self) -> None:
        """
        When the two typed passwords differ the command fails with "do not match" and writes
        nothing.
        """
        self.write("")
        self.assertFails(self.run_cli(self.path, "alice", answers=("one", "two")),
                         "do not match")
        self.assertEqual(self.lines(), [])

    def test_empty_password(self) -> None:
        """
        An empty password is refused, whether typed or read from standard input, and nothing is
        written.
        """
        self.write("")
        self.assertFails(self.run_cli(self.path, "alice", answers=("", "")), "empty password")
        self.assertFails(self.run_cli("--password-stdin", self.path, "alice", stdin="\n"),
                         "empty password")
        self.assertEqual(self.lines(), [])

    def test_password_stdin(self) -> None:
        """
        ``--password-stdin`` reads the first line of standard input as the password (colons and
        spaces kept, CR/LF stripped, a missing final newline fine) without prompting, in any
        option position; empty standard input fails with "no password on standard input".
        """
        self.write("")
        self.assertEqual(self.run_cli("--password-stdin", self.path, "alice",
                                      stdin="pa:ss word\nignored\n"), 0)
        self.assertEqual(self.prompts, [])
        [line] = self.lines()
        self.assertTrue(verifies(line, "alice", b"pa:ss word"))
        self.assertEqual(self.run_cli("-cf", "--password-stdin", self.path, "bob",
                                      stdin="crlf\r\n"), 0)
        self.assertTrue(verifies(self.lines()[0], "bob", b"crlf"))
        self.assertEqual(self.run_cli(self.path, "--password-stdin", "carol", stdin="last"), 0)
        self.assertTrue(verifies(self.lines()[1], "carol", b"last"))
        self.assertFails(self.run_cli("--password-stdin", self.path, "dave", stdin=""),
                         "no password on standard input")

    def test_non_ascii_password(self) -> None:
        """
        Non-ASCII user names and passwords are written as UTF-8 and verify with the plugin.
        """
        self.write("")
        self.assertEqual(self.run_cli(self.path, "jürgen", answers=("grüß", "grüß")), 0)
        self.assertTrue(verifies(self.lines()[0], "jürgen", "grüß".encode()))
        self.assertIs(self.check_with_plugin("jürgen", "grüß".encode()), OK)

    # -- user names --------------------------------------------------------------

    def test_bad_usernames(self) -> None:
        """
        User names with ``:``, a leading ``#`` or whitespace, line breaks, or empty ones are
        refused for add, ``-c`` and ``-D`` before prompting, and no file is written or created.
        """
        self.write("")
        for name, message in [("a:b", "':'"), ("", "empty"), ("#x", "'#'"), (" x", "whitespace"),
                              ("a\nb", "line breaks")]:
            self.assertFails(self.run_cli(self.path, name, answers=("p", "p")), message)
            self.assertFails(self.run_cli("-D", self.path, name), message)
        self.assertFails(self.run_cli("-c", self.path + "2", "a:b", answers=("p", "p")), "':'")
        self.assertEqual(self.prompts, [])
        self.assertEqual(self.lines(), [])
        self.assertFalse(os.path.exists(self.path + "2"))

    # -- -D ----------------------------------------------------------------------

    def test_delete(self) -> None:
        """
        ``-D`` removes every line of the user and keeps the rest; deleting an unknown user
        fails with "not found" and a missing file with "no such file".
        """
        self.write(f"# c\nalice:{vmq6(b'a')}\nbob:{vmq6(b'b')}\nalice:{vmq6(b'a2')}\n")
        self.assertEqual(self.run_cli("-D", self.path, "alice"), 0)
        self.assertEqual(self.lines(), ["# c", f"bob:{vmq6(b'b')}"])
        self.assertFails(self.run_cli("-D", self.path, "alice"), "not found")
        self.assertFails(self.run_cli("-D", self.path + "x", "bob"), "no such file")
        self.assertNoTempFiles()

    # -- -U ----------------------------------------------------------------------

    def test_hash_file(self) -> None:
        """
        ``-U`` hashes every plain-text password in place (the whole text after the first colon,
        so colons and spaces stay part of it), keeps comments, blank lines and existing ``$6$``
        and mosquitto ``$7$`` hashes, treats a hash-looking but invalid entry as plain text,
        and is idempotent.
        """
        pbkdf2 = hashlib.pbkdf2_hmac("sha512", b"m", b"salt", 101, 64)
        seven = f"$7$101${base64.b64encode(b'salt').decode()}${base64.b64encode(pbkdf2).decode()}"
        self.write("# plain users\r\n"
                   "alice:pass:with:colons\r\n"
                   "\n"
                   f"bob:{vmq6(b'already')}\n"
                   f"mosq:{seven}\n"
                   "carol:$6$looks$like a hash but is not\n"
                   "dave: spaced \n")
        self.assertEqual(self.run_cli("-U", self.path), 0)
        lines = self.lines()
        self.assertEqual(lines[0], "# plain users")
        self.assertTrue(verifies(lines[1], "alice", b"pass:with:colons"))
        self.assertEqual(lines[2:5], ["", f"bob:{vmq6(b'already')}", f"mosq:{seven}"])
        self.assertTrue(verifies(lines[5], "carol", b"$6$looks$like a hash but is not"))
        self.assertTrue(verifies(lines[6], "dave", b" spaced "))
        # idempotent
        self.assertEqual(self.run_cli("-U", self.path), 0)
        self.assertEqual(self.lines(), lines)
        self.assertIs(self.check_with_plugin("alice", b"pass:with:colons"), OK)
        self.assertIs(self.check_with_plugin("mosq", b"m"), OK)
        self.assertNoTempFiles()

    def test_hash_file_byte_order_mark(self) -> None:
        """
        ``-U`` drops a UTF-8 byte order mark so the first user's line is hashed like any other.
        """
        with open(self.path, "wb") as f:
            f.write("\ufeffalice:pw\n".encode("utf-8"))
        self.assertEqual(self.run_cli("-U", self.path), 0)
        self.assertTrue(verifies(self.lines()[0], "alice", b"pw"))

    def test_hash_file_errors(self) -> None:
        """
        ``-U`` on a file with a line without a colon, an empty user or an empty password fails
        with ``:LINE:`` and leaves the file byte for byte unchanged; a missing file and invalid
        UTF-8 are reported too.
        """
        for text, message in [("alice\n", ":1:"), ("ok:pw\n:pw\n", ":2:"),
                              ("ok:pw\nempty:\n", ":2: empty password")]:
            self.write(text)
            self.assertFails(self.run_cli("-U", self.path), message)
            with open(self.path) as f:
                self.assertEqual(f.read(), text)
        self.assertFails(self.run_cli("-U", self.path + "x"), "no such file")
        with open(self.path, "wb") as f:
            f.write(b"a:\xff\n")
        self.assertFails(self.run_cli("-U", self.path), "UTF-8")

    # -- usage -------------------------------------------------------------------

    def test_usage_errors(self) -> None:
        """
        Missing or extra arguments, an unknown option and contradictory options (``-c`` with
        ``-D``, ``--password-stdin`` with ``-D`` or ``-U``) print the usage and fail without
        creating the file.
        """
        for argv in [(), (self.path,), ("-c", self.path), ("-U",), ("-U", self.path, "x"),
                     ("-c", "-D", self.path, "x"), ("-x", self.path, "a"),
                     ("-D", "--password-stdin", self.path, "a"),
                     ("-U", "--password-stdin", self.path)]:
            self.assertFails(self.run_cli(*argv), "usage: vmq-passwd")
        self.assertFalse(os.path.exists(self.path))

    def test_help(self) -> None:
        """``--help`` prints the usage on standard output and exits 0."""
        self.assertEqual(self.run_cli("--help"), 0)
        self.assertIn("usage: vmq-passwd", self.stdout.getvalue())

    def test_double_dash(self) -> None:
        """``--`` ends the options, so a file name starting with ``-`` can be created."""
        path = os.path.join(self.dir, "-odd")
        self.assertEqual(self.run_cli("-c", "--", path, "a", answers=("p", "p")), 0)
        self.assertTrue(os.path.exists(path))

    def test_os_error(self) -> None:
        """
        An operating-system error, such as a missing directory, is reported as a failure naming
        the path instead of a traceback.
        """
        missing_dir = os.path.join(self.dir, "nope", "file")
        self.assertFails(self.run_cli("-c", missing_dir, "a", answers=("p", "p")), "nope")

    def test_interrupt(self) -> None:
        """
        Ctrl-C at the prompt fails with "interrupted", and end of input at the prompt fails
        suggesting ``--password-stdin``; nothing is written in either case.
        """
        self.write("")

        def interrupted(text: str) -> str:
            raise KeyboardInterrupt()

        self.patch(passwd_cli, "prompt", interrupted)
        self.assertFails(self.run_cli(self.path, "a"), "interrupted")

        def closed(text: str) -> str:
            raise EOFError()

        self.patch(passwd_cli, "prompt", closed)
        self.assertFails(self.run_cli(self.path, "a"), "--password-stdin")
        self.assertEqual(self.lines(), [])
