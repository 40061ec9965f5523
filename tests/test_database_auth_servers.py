"""Real database servers for the database-auth tests, on 127.0.0.1 with a
free port and a temporary data directory each: PostgreSQL (initdb + pg_ctl,
run as the ``postgres`` user when the tests run as root), MariaDB
(mariadb-install-db + mariadbd) and Redis (redis-server, no persistence).

Each server is started once per test class (``start_*`` from setUpClass) and
stopped by its ``stop()``; ``pause()``/``resume()`` stop and restart it on the
same port and data, for "the database went down" tests.  Every wait is bounded.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, Callable

from tests.support import missing

__all__ = ["Postgres", "MariaDB", "Redis", "free_port"]

START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(ready: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    """Poll ``ready`` (bounded in time) until it is true; RuntimeError otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _run(args: list[str], user: str | None = None, timeout: float = 120) -> None:
    if user is not None and os.geteuid() == 0:
        args = ["runuser", "-u", user, "--", *args]
    done = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stdout.decode(errors='replace')[-2000:]}")


class Postgres:
    """A PostgreSQL cluster with a ``vernemq`` role (password auth over TCP)
    owning database ``vernemq_db`` with pgcrypto."""

    user = "vernemq"
    password = "vmq-pw"
    database = "vernemq_db"

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        self.bin = bins[-1] if bins else os.path.dirname(shutil.which("pg_ctl") or "")
        if not os.path.exists(os.path.join(self.bin, "initdb")):
            missing("PostgreSQL is not installed (apt-get install postgresql)")
        self.run_as = "postgres" if os.geteuid() == 0 else None
        self.dir = tempfile.mkdtemp(prefix="vmqtw-pg-")
        self.data = os.path.join(self.dir, "data")
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.port = free_port()
        pwfile = os.path.join(self.dir, "pw")
        with open(pwfile, "w") as f:
            f.write("super-pw\n")
        if self.run_as:
            os.chown(pwfile, pwd.getpwnam(self.run_as).pw_uid, -1)
        _run([os.path.join(self.bin, "initdb"), "-D", self.data, "-U", "postgres",
              "--pwfile", pwfile, "--auth-local=trust", "--auth-host=scram-sha-256",
              "-N", "-E", "UTF8"], self.run_as)
        self.resume()
        self.sql("postgres", f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
        self.sql("postgres", f"CREATE DATABASE {self.database} OWNER {self.user}")
        self.sql(self.database, "CREATE EXTENSION pgcrypto")

    def resume(self) -> None:
        _run([os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l",
              os.path.join(self.dir, "log"), "-w", "-t", "60", "-o",
              f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
              "start"], self.run_as)

    def pause(self) -> None:
        _run([os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", "fast", "-w",
              "-t", "60", "stop"], self.run_as)

    def sql(self, database: str, *statements: str, params: Any = None) -> None:
        """Run statements as the superuser over the unix socket."""
        import psycopg2
        conn = psycopg2.connect(host=self.dir, port=self.port, user="postgres",
                                dbname=database)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement, params)
        finally:
            conn.close()

    def stop(self) -> None:
        try:
            self.pause()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class MariaDB:
    """A MariaDB server with user ``vernemq`` owning database ``vernemq_db``."""

    user = "vernemq"
    password = "vmq-pw"
    database = "vernemq_db"

    def __init__(self) -> None:
        self.mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        install = shutil.which("mariadb-install-db")
        if not os.path.exists(self.mariadbd) or install is None:
            missing("MariaDB is not installed (apt-get install mariadb-server)")
        self.dir = tempfile.mkdtemp(prefix="vmqtw-mariadb-")
        self.data = os.path.join(self.dir, "data")
        self.socket = os.path.join(self.dir, "sock")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        user = ["--user=root"] if os.geteuid() == 0 else []
        _run([install, "--no-defaults", f"--datadir={self.data}", "--skip-test-db",
              "--auth-root-authentication-method=normal", *user])
        self.resume()
        self.sql(f"CREATE USER '{self.user}'@'%' IDENTIFIED BY '{self.password}'",
                 f"CREATE DATABASE {self.database}",
                 f"GRANT ALL ON {self.database}.* TO '{self.user}'@'%'")

    def resume(self) -> None:
        user = ["--user=root"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen(
            [self.mariadbd, "--no-defaults", f"--datadir={self.data}",
             f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--pid-file={self.dir}/pid", f"--log-error={self.dir}/err.log",
             "--skip-log-bin", "--innodb-buffer-pool-size=16M", "--skip-name-resolve",
             *user], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: self.process.poll() is not None or self._answers(), "mariadbd")
        if self.process.poll() is not None:
            with open(f"{self.dir}/err.log") as f:
                raise RuntimeError(f"mariadbd exited:\n{f.read()[-2000:]}")

    def _answers(self) -> bool:
        """Whether the server accepts a query (it ignores SIGTERM until then)."""
        try:
            self.sql("SELECT 1")
            return True
        except Exception:
            return False

    def pause(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
            self.process = None

    def sql(self, *statements: str, database: str | None = None, params: Any = None) -> None:
        import pymysql
        conn = pymysql.connect(unix_socket=self.socket, user="root", database=database,
                               autocommit=True, connect_timeout=5)
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement, params)
        finally:
            conn.close()

    def stop(self) -> None:
        try:
            self.pause()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    """redis-server without persistence, with a password.  ``seed`` (if set)
    runs after every start, since a restart forgets everything."""

    password = "redis-pw"
    seed: "Callable[[Redis], None] | None" = None

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            missing("Redis is not installed (apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="vmqtw-redis-")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.resume()

    def resume(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--requirepass", self.password, "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: self.process.poll() is not None or _port_open(self.port),
              "redis-server", 30)
        if self.process.poll() is not None:
            raise RuntimeError("redis-server exited at start")
        if self.seed is not None:
            self.seed(self)

    def command(self, *args: str) -> bytes:
        """One command (after AUTH) over a blocking socket; the raw reply."""
        parts = ("AUTH", self.password), args
        out = b""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            for cmd in parts:
                s.sendall(b"*%d\r\n" % len(cmd) + b"".join(
                    b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in cmd))
                out = s.recv(65536)
        return out

    def pause(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
            self.process = None

    def stop(self) -> None:
        try:
            self.pause()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
