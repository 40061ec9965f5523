"""vmq_passwd: CONNECT authentication against a password file.

The file holds one ``user:HASH`` line per user; blank lines and lines
starting with ``#`` are skipped.  The user is the text before the first
``:``.  Two hash forms are verified:

``$6$SALT$HASH`` (VerneMQ, mosquitto 1.x)
    SALT is base64 of the raw salt (12 bytes when VerneMQ or vmq-passwd made
    it), HASH base64 of SHA-512(password bytes || raw salt bytes), one pass.
    As in VerneMQ the text between the first two ``$`` is not looked at, so
    any id is accepted (``$6$`` is what everybody writes).

``$7$ITERATIONS$SALT$HASH`` (mosquitto 2.x)
    PBKDF2-HMAC-SHA512 with ITERATIONS rounds (at most
    ``MAX_PBKDF2_ITERATIONS``, since the check runs in the reactor thread).

Results of auth_on_register: no user name or no password, or a user not in
the file: NEXT; right password: OK; wrong password:
``error('invalid_credentials')`` (CONNACK "bad user name or password").

Settings (broker.conf): ``vmq_passwd.password_file`` (default ``vmq.passwd``
next to broker.conf) and ``vmq_passwd.password_reload_interval`` (seconds,
default 10, 0 = off).  The file is re-read when its mtime, size or inode
changed, and on ``PasswdPlugin.reload`` (SIGHUP).  A file that is broken or
missing at reload time leaves the last good table in force and is logged
with FILE:LINE; at startup either is a ``ValueError``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Any, Callable, Mapping

from zope.interface import implementer

from vmqtw.auth.api import NEXT, OK, IAuthOnRegister, RegisterRequest, Result, error
from vmqtw.auth.context import (
    FileFormatError, PluginContext, ReloadingFile, check_settings, parse_interval,
    resolve_path,
)

__all__ = ["PasswordHash", "PasswdPlugin", "parse_hash", "hash_password",
           "hash_password_pbkdf2", "make_plugin", "SALT_BYTES", "MAX_PBKDF2_ITERATIONS"]

#: Salt length used by VerneMQ's vmq-passwd, and by ours.
SALT_BYTES = 12
#: SHA-512 digest length; both hash forms store exactly this many bytes.
HASH_BYTES = 64
#: Upper bound for ``$7$`` iterations (mosquitto's default is 101).
MAX_PBKDF2_ITERATIONS = 1_000_000
#: mosquitto 2.x's default iteration count.
PBKDF2_DEFAULT_ITERATIONS = 101

SETTINGS = ("password_file", "password_reload_interval")


def _b64decode(text: str) -> bytes:
    """Standard base64, padding optional; ValueError on anything else."""
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not base64") from None


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


class PasswordHash:
    """One stored hash; ``verify`` checks a password in constant time."""

    __slots__ = ("salt", "digest", "iterations")

    def __init__(self, salt: bytes, digest: bytes, iterations: int = 0) -> None:
        self.salt = salt
        self.digest = digest
        #: 0 for the single-pass ``$6$`` form, else PBKDF2 rounds (``$7$``).
        self.iterations = iterations

    def compute(self, password: bytes) -> bytes:
        if self.iterations:
            return hashlib.pbkdf2_hmac("sha512", password, self.salt, self.iterations,
                                       len(self.digest))
        return hashlib.sha512(password + self.salt).digest()

    def verify(self, password: bytes) -> bool:
        return hmac.compare_digest(self.compute(password), self.digest)

    def __repr__(self) -> str:
        kind = f"$7$ x{self.iterations}" if self.iterations else "$6$"
        return f"<PasswordHash {kind}>"


def parse_hash(text: str) -> PasswordHash:
    """Parse the part after ``user:``.

    :raise ValueError: with a reason that never repeats the text (it may be
        a plain-text password someone forgot to hash).
    """
    if not text.startswith("$"):
        raise ValueError("the password is not hashed (hash plain-text files with vmq-passwd -U)")
    parts = text.split("$")
    if parts[1] == "7":
        # $7$ITERATIONS$SALT$HASH
        if len(parts) != 5:
            raise ValueError("a $7$ hash must look like $7$ITERATIONS$SALT$HASH")
        if not parts[2].isdigit():
            raise ValueError("the iteration count of a $7$ hash is not a number")
        iterations = int(parts[2])
        if not 1 <= iterations <= MAX_PBKDF2_ITERATIONS:
            raise ValueError(f"the iteration count of a $7$ hash must be between 1 and "
                             f"{MAX_PBKDF2_ITERATIONS}")
        salt_text, hash_text = parts[3], parts[4]
    else:
        # $ID$SALT$HASH, ID ignored as VerneMQ does.
        if len(parts) != 4:
            raise ValueError("a hash must look like $6$SALT$HASH")
        iterations = 0
        salt_text, hash_text = parts[2], parts[3]
    try:
        salt = _b64decode(salt_text)
    except ValueError:
        raise ValueError("the salt is not base64") from None
    try:
        digest = _b64decode(hash_text)
    except ValueError:
        raise ValueError("the hash is not base64") from None
    if len(digest) != HASH_BYTES:
        raise ValueError(f"the hash is {len(digest)} bytes long, not {HASH_BYTES} (SHA-512)")
    return PasswordHash(salt, digest, iterations)


def hash_password(password: bytes, salt: bytes | None = None) -> str:
    """The ``$6$SALT$HASH`` form VerneMQ's vmq-passwd writes."""
    if salt is None:
        salt = os.urandom(SALT_BYTES)
    digest = hashlib.sha512(password + salt).digest()
    return f"$6${_b64encode(salt)}${_b64encode(digest)}"


def hash_password_pbkdf2(password: bytes, salt: bytes | None = None,
                         iterations: int = PBKDF2_DEFAULT_ITERATIONS) -> str:
    """The ``$7$`` form of mosquitto 2.x's mosquitto_passwd."""
    if salt is None:
        salt = os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password, salt, iterations, HASH_BYTES)
    return f"$7${iterations}${_b64encode(salt)}${_b64encode(digest)}"


def is_hashed(text: str) -> bool:
    """Whether the part after ``user:`` already is a hash we can verify."""
    try:
        parse_hash(text)
    except ValueError:
        return False
    return True


def parse_password_file(data: bytes, warn: Any = None) -> dict[str, PasswordHash]:
    """Parse a whole password file.

    :param warn: called as ``warn(line, message)`` for tolerated oddities.
    :raise FileFormatError: at the first malformed line.
    """
    table: dict[str, PasswordHash] = {}
    seen_at: dict[str, int] = {}
    if data.startswith(b"\xef\xbb\xbf"):
        # Left in place it would become part of the first user name.
        data = data[3:]
        if warn is not None:
            warn(1, "UTF-8 byte order mark ignored")
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FileFormatError(lineno, "not valid UTF-8") from None
        line = text.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, rest = line.partition(":")
        if not sep:
            raise FileFormatError(lineno, "expected user:hash (no ':' on the line)")
        if not user:
            raise FileFormatError(lineno, "empty user name")
        try:
            entry = parse_hash(rest.strip())
        except ValueError as e:
            raise FileFormatError(lineno, f"user {user!r}: {e}") from None
        if user in seen_at and warn is not None:
            warn(lineno, f"user {user!r} is also on line {seen_at[user]}; this line wins")
        seen_at[user] = lineno
        table[user] = entry
    return table


@implementer(IAuthOnRegister)
class PasswdPlugin(ReloadingFile[dict[str, PasswordHash]]):
    """The vmq_passwd plugin: checks CONNECT user names and passwords."""

    what = "password file"

    def __init__(self, path: str, interval: int, context: PluginContext) -> None:
        self._users: dict[str, PasswordHash] = {}
        #: Called after a reload with the user names removed from the file or
        #: whose password changed: the broker closes their connections.
        self.users_revoked: list[Callable[[frozenset[str]], None]] = []
        super().__init__(path, interval, context)

    def parse(self, data: bytes) -> dict[str, PasswordHash]:
        return parse_password_file(data, self.warn)

    def install(self, table: dict[str, PasswordHash]) -> None:
        old, self._users = self._users, table
        revoked = frozenset(user for user, entry in old.items()
                            if user not in table or table[user].digest != entry.digest)
        if revoked:
            for observer in list(self.users_revoked):
                observer(revoked)

    @property
    def users(self) -> frozenset[str]:
        """The user names currently in force."""
        return frozenset(self._users)

    def auth_on_register(self, request: RegisterRequest) -> Result:
        username, password = request.username, request.password
        if username is None or password is None:
            return NEXT
        entry = self._users.get(username)
        if entry is None:
            return NEXT
        if isinstance(password, str):  # defensive: the API says bytes
            password = password.encode("utf-8")
        if entry.verify(password):
            return OK
        return error("invalid_credentials")


def make_plugin(settings: Mapping[str, str], context: PluginContext) -> PasswdPlugin:
    check_settings(settings, SETTINGS, "vmq_passwd")
    path = str(settings.get("password_file", "vmq.passwd")).strip()
    if not path:
        raise ValueError("vmq_passwd.password_file is empty")
    interval = parse_interval(settings, "password_reload_interval", "vmq_passwd")
    # Relative to the configuration file's directory; normalised so that errors name
    # the file plainly.
    return PasswdPlugin(os.path.normpath(resolve_path(path, context.config_dir)), interval,
                        context)
