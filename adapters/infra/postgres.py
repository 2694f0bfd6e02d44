"""A PostgreSQL cluster for the Prefect server, created and run by the project itself under a folder it owns.

Prefect documents SQLite as for lightweight, single-server use; PostgreSQL is its production database
(>= 14.9, with pg_trgm). Debian's `postgresql` package gives the binaries; this module makes the
cluster: `initdb` into `<folder>/data` with a generated password (kept in `<folder>/password`, readable
by this user only), the server listening on 127.0.0.1 only, its socket in the folder, a database with
pg_trgm. Started again on the same folder, it reuses the cluster and its password.

PostgreSQL refuses to run as root: run as root (CI, a container), the cluster belongs to the
`postgres` account the Debian package creates, and every folder above it must let that account
through (o+x).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from adapters.infra.settings import child_env

DATABASE = "prefect"
USER = "prefect"


def _bindir() -> Path:
    """The newest PostgreSQL's binaries (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise FileNotFoundError("PostgreSQL is not installed: `apt-get install -y postgresql` (Debian) gives initdb")


@dataclass
class LocalPostgres:
    """A cluster under `folder`, on 127.0.0.1:`port`."""

    folder: Path
    port: int
    netns: str | None = None  # the network namespace the server runs in (the fleet test's server host)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def password(self) -> str:
        return (self.folder / "password").read_text().strip()

    @property
    def url(self) -> str:
        """PREFECT_API_DATABASE_CONNECTION_URL for this cluster's database."""
        return self.url_of(DATABASE)

    def url_of(self, database: str) -> str:
        return f"postgresql+asyncpg://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """Create database `name` with pg_trgm if it is not there (one per Prefect server); returns its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"postgres: database name {name!r} must be letters, digits and underscores")
        if self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'") != "1":
            self._psql(f"CREATE DATABASE {name}")
        self._psql("CREATE EXTENSION IF NOT EXISTS pg_trgm", name)
        return self.url_of(name)

    def _command(self, args: list[str], as_owner: bool) -> tuple[list[str], dict]:
        """The command line and Popen arguments: in `netns`, and as PostgreSQL's own account when we are root."""
        root, prefix = os.geteuid() == 0, ["ip", "netns", "exec", self.netns] if self.netns else []
        if not (as_owner and root):
            return prefix + args, {}
        if prefix:  # entering the namespace needs root: change account after it
            return [*prefix, "runuser", "-u", "postgres", "--", *args], {}
        return args, {"user": "postgres", "group": "postgres", "extra_groups": []}

    def _run(self, *args: str, timeout: float = 120) -> str:
        command, owner = self._command([str(_bindir() / args[0]), *args[1:]], as_owner=True)
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd="/", **owner)
        if result.returncode != 0:
            raise RuntimeError(f"postgres: {args[0]} failed: {(result.stderr or result.stdout).strip()[-1500:]}")
        return result.stdout

    def _initdb(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        password = self.folder / "password"
        if not password.exists():
            password.write_text(secrets.token_urlsafe(24))
            password.chmod(0o600)
        self.data.mkdir(mode=0o700, exist_ok=True)
        secret = self.folder / "initdb"  # only the cluster's owner reads it, for initdb; removed after
        secret.mkdir(mode=0o700, exist_ok=True)
        pwfile = secret / "pwfile"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            self._check_reachable_by_postgres()
            account = pwd.getpwnam("postgres")
            for path in (self.data, secret, pwfile):
                os.chown(path, account.pw_uid, account.pw_gid)
        try:
            self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=scram-sha-256", f"--pwfile={pwfile}",
                      "-E", "UTF8", "--locale=C.UTF-8")
        finally:
            shutil.rmtree(secret, ignore_errors=True)

    def _check_reachable_by_postgres(self) -> None:
        self.folder.chmod(0o711)
        for parent in self.folder.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                raise PermissionError(f"postgres: the `postgres` account cannot reach {self.folder}: {parent} is not "
                                      "o+x; put the cluster elsewhere (PREFECT_API_DATABASE_CONNECTION_URL) or chmod it")

    def start(self, timeout: float = 60) -> LocalPostgres:
        """Create the cluster if the folder has none, start it, make sure the database has pg_trgm."""
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.data / "server.log"), "-w",
                  "-t", str(int(timeout)), "start", timeout=timeout + 10)
        self.database(DATABASE)
        return self

    def _psql(self, sql: str, database: str = "postgres") -> str:
        env = child_env({"PGPASSWORD": self.password})
        command, _ = self._command([str(_bindir() / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER,
                                    "-d", database, "-tAc", sql], as_owner=False)
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"postgres: {sql!r} failed: {result.stderr.strip()[-800:]}")
        return result.stdout.strip()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`immediate`: as a crash would, no checkpoint)."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
