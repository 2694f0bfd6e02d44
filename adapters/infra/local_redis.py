"""A Redis server for the Prefect server's API and services when they run as separate processes.

Prefect 3.9 passes events from the API to its background services (triggers and automations, the event
persister, ...) through a message broker, and schedules its own background work through Docket. Both
default to memory inside one process: an API started with `--no-services` and `prefect server services
start` beside it would never hand each other anything. With prefect-redis, both go through Redis
(`broker_env`), as Prefect documents for a server scaled out.

Debian's `redis-server` gives the binary; this module runs it on 127.0.0.1 only, with a generated password
(kept in `<folder>/password`, readable by this user only, and written to the config file, never on a
command line), nothing saved to disk: what passes through it is in flight, the record is PostgreSQL's.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from adapters.infra.processes import stop_processes


def broker_env(url: str) -> dict[str, str]:
    """The settings that put a Prefect server's messaging, causal ordering, concurrency leases and Docket on the
    Redis at `url` (`redis://:password@host:port/0`): for the API and for its services, the same in both."""
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_URL": url,
        "PREFECT_SERVER_DOCKET_URL": url,
    }


@dataclass
class LocalRedis:
    """A Redis server under `folder`, on 127.0.0.1:`port`."""

    folder: Path
    port: int
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def password(self) -> str:
        return (self.folder / "password").read_text().strip()

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> LocalRedis:
        """Start the server (its password made on first start) and wait until it answers."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("Redis is not installed: `apt-get install -y redis-server` (Debian) gives redis-server")
        self.folder.mkdir(parents=True, exist_ok=True)
        password = self.folder / "password"
        if not password.exists():
            password.write_text(secrets.token_urlsafe(24))
            password.chmod(0o600)
        config = self.folder / "redis.conf"
        config.write_text(f"port {self.port}\nbind 127.0.0.1\nprotected-mode yes\nrequirepass {self.password}\n"
                          f"dir {self.folder}\nsave \"\"\nappendonly no\ndaemonize no\n")
        config.chmod(0o600)
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=self.folder)
        self._wait(timeout)
        return self

    def _wait(self, timeout: float) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2)
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis: redis-server exited with {self.process.returncode}: see "
                                   f"{self.folder / 'redis.log'}")
            try:
                if client.ping():
                    return
            except redis.exceptions.RedisError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"redis: no answer on 127.0.0.1:{self.port} within {timeout:.0f} s") from None
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            stop_processes([self.process])
            self.process = None
