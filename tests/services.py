"""Private Redis and PostgreSQL servers for the tests, from the Debian packages, on free loopback ports.

Each test session starts its own, in a temporary folder, so no test touches a developer's own Redis or
database, and a test can stop and restart one to see the proxy survive it. ``.ci/run`` installs the
packages; without them these tests skip on a developer's machine and fail under CI (``tests/debian.py``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .debian import missing, program
from .servers import free_port


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                raise RuntimeError(f"{what} did not start: {out[-2000:]}") from None
            time.sleep(0.05)


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.binary = program("redis-server", "redis-server")
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--protected-mode", "no"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "redis-server")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def flush(self) -> None:
        import redis

        redis.Redis.from_url(self.url).flushall()


class PostgresServer:
    """A throwaway cluster; as root it runs as the ``postgres`` user the Debian package creates."""

    USER = "mooltiproxy"
    PASSWORD = "pg-secret-Zq81"

    def __init__(self, directory: Path) -> None:
        self.bin = Path(program("initdb", "postgresql", "/usr/lib/postgresql/*/bin/initdb")).parent
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                missing("the postgres user", "postgresql")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.port}/postgres"

    def init(self) -> PostgresServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        password = self.directory / "pw"
        password.write_text(self.PASSWORD)
        if self.as_user:
            shutil.chown(self.directory, "postgres")
            shutil.chown(password, "postgres")
        subprocess.run([*self.as_user, str(self.bin / "initdb"), "-D", str(self.data), "-U", self.USER, f"--pwfile={password}",
                        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                       check=True, capture_output=True)
        return self

    def start(self) -> PostgresServer:
        self.proc = subprocess.Popen(
            [*self.as_user, str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.directory),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "postgres")
        import psycopg

        deadline = time.monotonic() + 30
        while True:  # the port opens a moment before the server takes logins
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """A fast shutdown: connected clients (the proxy) are cut off, as when a database server goes away."""
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w"],
                           check=True, capture_output=True)
            self.proc.wait(30)
        self.proc = None

    def query(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        import psycopg

        with psycopg.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute(sql, args)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []
