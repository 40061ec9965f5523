"""vmq-passwd: manage vmq_passwd password files (VerneMQ's command line).

    vmq-passwd [-c | -cf | -D] [--password-stdin] passwordfile username
    vmq-passwd -U passwordfile

Hashes are written in VerneMQ's ``$6$`` form (12 random salt bytes,
SHA-512(password || salt)), which VerneMQ and mosquitto 1.x read too.  The
file is rewritten atomically: a temporary file in the same directory, then
``os.replace``; the file is always left readable and writable by its owner
only (0600; security, #14): an existing file's stricter mode (0400) is kept,
its group and other bits are dropped (silently: scripts see no new output).

Differences from VerneMQ's C tool, on purpose: ``-U`` splits each line at the
FIRST ``:`` (passwords containing ``:`` survive) and leaves lines that already
hold a ``$6$``/``$7$`` hash alone, so running it twice is harmless; and
``--password-stdin`` reads the password from standard input for scripts.
"""
from __future__ import annotations

import getpass
import os
import stat
import sys
import tempfile

from vmqtw.auth.passwd import hash_password, is_hashed

__all__ = ["main", "USAGE"]

USAGE = """\
usage: vmq-passwd [-c | -cf | -D] [--password-stdin] passwordfile username
       vmq-passwd -U passwordfile

  (no flag)          add the user, or change their password
  -c                 create a new password file with this user (refused if it exists)
  -cf                create the password file, overwriting an existing one
  -D                 delete the user
  -U                 hash the plain-text passwords of a user:password file in place
                     (lines that are already hashed are left alone)
  --password-stdin   read the password from standard input (one line) instead of
                     prompting twice
"""

_MODES = ("-c", "-cf", "-D", "-U")


class CliError(Exception):
    """A message for stderr; exit code 1."""


class _Options:
    def __init__(self) -> None:
        self.mode: str | None = None
        self.password_stdin = False
        self.help = False
        self.positional: list[str] = []


def _parse(argv: list[str]) -> _Options:
    opts = _Options()
    options_done = False
    for arg in argv:
        if options_done or arg == "-" or not arg.startswith("-"):
            opts.positional.append(arg)
        elif arg == "--":
            options_done = True
        elif arg in _MODES:
            if opts.mode is not None and opts.mode != arg:
                raise CliError(f"{opts.mode} and {arg} cannot be used together")
            opts.mode = arg
        elif arg == "--password-stdin":
            opts.password_stdin = True
        elif arg in ("-h", "--help"):
            opts.help = True
        else:
            raise CliError(f"unknown option {arg}")
    if opts.help:
        return opts
    want = 1 if opts.mode == "-U" else 2
    if len(opts.positional) != want:
        if opts.mode == "-U":
            raise CliError("-U takes exactly one argument: the password file")
        raise CliError("expected a password file and a user name")
    if opts.password_stdin and opts.mode in ("-D", "-U"):
        raise CliError(f"--password-stdin cannot be used with {opts.mode}")
    return opts


def check_username(username: str) -> None:
    if not username:
        raise CliError("the user name is empty")
    if ":" in username:
        raise CliError("user names must not contain ':'")
    if any(c in username for c in "\r\n\x00"):
        raise CliError("user names must not contain line breaks or NUL")
    if username != username.strip():
        raise CliError("user names must not start or end with whitespace")
    if username.startswith("#"):
        raise CliError("user names must not start with '#' (that line would be a comment)")


def prompt(text: str) -> str:
    """Read a password without echo (tests replace this)."""
    return getpass.getpass(text)


def _read_password(from_stdin: bool) -> bytes:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise CliError("no password on standard input")
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    else:
        password = prompt("Password: ")
        again = prompt("Reenter password: ")
        if password != again:
            raise CliError("the passwords do not match")
    if not password:
        raise CliError("empty passwords are not allowed")
    return password.encode("utf-8")


def _read_lines(path: str) -> list[str]:
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{path}: not valid UTF-8") from None
    text = text.removeprefix("\ufeff")  # a byte order mark would join the first user name
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _line_user(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    user, sep, _rest = stripped.partition(":")
    return user if sep else None


def private_mode(mode: int | None) -> int:
    """The mode a password file is written with: 0600, or an existing file's
    stricter owner bits (0400); never any group or other bit."""
    if mode is None:
        return 0o600
    return (mode & 0o600) or 0o600


def write_atomically(path: str, lines: list[str]) -> None:
    """Replace ``path`` with ``lines`` via a temporary file in the same directory."""
    target = os.path.realpath(path)
    directory = os.path.dirname(target) or "."
    try:
        mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, private_mode(mode))
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _existing_lines(path: str) -> list[str]:
    try:
        return _read_lines(path)
    except FileNotFoundError:
        raise CliError(f"{path}: no such file (use -c to create it)") from None


def _set_user(path: str, username: str, entry: str, create: bool) -> None:
    lines = [] if create else _existing_lines(path)
    out: list[str] = []
    replaced = False
    for line in lines:
        if _line_user(line) == username:
            if not replaced:
                out.append(entry)
                replaced = True
            # later duplicates are dropped: the new password must win
        else:
            out.append(line)
    if not replaced:
        out.append(entry)
    write_atomically(path, out)


def _delete_user(path: str, username: str) -> None:
    lines = _existing_lines(path)
    out = [line for line in lines if _line_user(line) != username]
    if len(out) == len(lines):
        raise CliError(f"{path}: user {username!r} not found")
    write_atomically(path, out)


def _hash_file(path: str) -> None:
    lines = _existing_lines(path)
    out: list[str] = []
    for lineno, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            out.append(line)
            continue
        user, sep, password = line.partition(":")
        user = user.strip()
        if not sep:
            raise CliError(f"{path}:{lineno}: expected user:password (no ':' on the line)")
        if not user:
            raise CliError(f"{path}:{lineno}: empty user name")
        if is_hashed(password.strip()):
            out.append(line)
            continue
        if not password:
            raise CliError(f"{path}:{lineno}: empty password for user {user!r}")
        out.append(f"{user}:{hash_password(password.encode('utf-8'))}")
    write_atomically(path, out)


def _run(opts: _Options) -> None:
    path = opts.positional[0]
    if opts.mode == "-U":
        _hash_file(path)
        return
    username = opts.positional[1]
    check_username(username)
    if opts.mode == "-D":
        _delete_user(path, username)
        return
    if opts.mode == "-c" and os.path.lexists(path):
        raise CliError(f"{path} already exists (use -cf to overwrite it)")
    if opts.mode is None:
        _existing_lines(path)  # complain before prompting
    password = _read_password(opts.password_stdin)
    entry = f"{username}:{hash_password(password)}"
    _set_user(path, username, entry, create=opts.mode in ("-c", "-cf"))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        opts = _parse(args)
    except CliError as e:
        sys.stderr.write(f"vmq-passwd: {e}\n{USAGE}")
        return 1
    if opts.help:
        sys.stdout.write(USAGE)
        return 0
    try:
        _run(opts)
    except CliError as e:
        sys.stderr.write(f"vmq-passwd: {e}\n")
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"vmq-passwd: {where}{e.strerror or e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("\nvmq-passwd: interrupted\n")
        return 1
    except EOFError:
        sys.stderr.write("\nvmq-passwd: no password entered (end of input; "
                         "use --password-stdin in scripts)\n")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
