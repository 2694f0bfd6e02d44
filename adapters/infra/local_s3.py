"""The embedded S3 server: moto's S3 in a subprocess on loopback, for the demo and the tests.

A subprocess rather than in-process mocking, so that every client (boto3, pyarrow,
Prefect workers in other processes) talks real HTTP to one real endpoint.
"""

from __future__ import annotations

import atexit
import http.client
import socket
import subprocess
import sys
import tempfile
import time
from types import TracebackType
from typing import IO

__all__ = ["LocalS3Server", "free_port"]

STARTUP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalS3Server:
    """moto's S3 server on 127.0.0.1, started on enter and stopped on exit.

    >>> with LocalS3Server() as server:
    ...     store = S3Store.from_settings(Settings(s3_endpoint=server.endpoint))
    """

    def __init__(
        self, port: int | None = None, *, host: str = "127.0.0.1", startup_timeout: float = STARTUP_TIMEOUT_S
    ) -> None:
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """`http://127.0.0.1:PORT`; only valid while the server runs."""
        if not self.running:
            raise RuntimeError("the local S3 server is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> LocalS3Server:
        """Start the server and wait until it answers HTTP; raise RuntimeError if it does not."""
        if self.running:
            return self
        if self.port is None:
            # Bind-to-0 then release: another process could take the port in between,
            # but then moto exits with "Address already in use" and we report it.
            self.port = free_port(self.host)
        elif not _port_free(self.host, self.port):
            raise OSError(f"cannot start the local S3 server: port {self.port} on {self.host} is in use")
        # The server logs every request; a pipe nobody drains would fill and stall it,
        # so its output goes to a temporary file that is read only to explain a failure.
        self._log = tempfile.TemporaryFile(prefix="stylematrix-moto-")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "adapters.infra.s3_server", "-H", self.host, "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        atexit.register(self.stop)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate the server (kill it if it ignores that) and release its port."""
        process, self._process = self._process, None
        if process is not None:
            atexit.unregister(self.stop)
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None

    def output(self, limit: int = 4000) -> str:
        """The last `limit` characters the server printed (its request log and errors)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode("utf-8", errors="replace")
        return text[-limit:]

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(
                    f"the local S3 server exited with code {code} while starting on {self.host}:{self.port}:\n"
                    f"{self.output()}"
                )
            if _answers_http(self.host, self.port or 0):
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"the local S3 server did not answer on {self.host}:{self.port} within {self.startup_timeout:g} s:\n"
            f"{self.output()}"
        )

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _answers_http(host: str, port: int) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=0.5)
    try:
        connection.request("GET", "/")
        connection.getresponse().read()
    except (OSError, http.client.HTTPException):  # refused while binding, reset, timed out
        return False
    finally:
        connection.close()
    return True


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option as the server's own bind, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
