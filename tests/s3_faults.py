"""A loopback HTTP proxy in front of an S3 server that throttles and drops connections at set rates.

Each request, drawn from a seeded generator: with probability `throttle` it is answered
`503 SlowDown` without reaching S3; with probability `reset` the connection is reset, half the
time before the request is forwarded and half the time after S3 has carried it out (the answer
to a write is lost, the write happened). Everything else is forwarded as is. `rules` can force a
fault on requests whose path matches a pattern (`"503"`, `"reset-before"`, `"reset-after"`; with
`"*N"` appended, only the first N times), for tests that need one object to stay unreadable or
one write to lose its answer; `"hold"` keeps matching requests waiting until `release()`, so a test
knows its client is stuck in that very call (and can kill it there).
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


class FaultyS3Proxy:
    """`with FaultyS3Proxy(upstream, throttle=0.25, reset=0.06, seed=7) as proxy:` then use `proxy.endpoint`."""

    def __init__(self, upstream: str, *, throttle: float = 0.0, reset: float = 0.0, seed: int = 0,
                 rules: dict[str, str] | None = None) -> None:
        self.upstream = urlsplit(upstream)
        self.throttle, self.reset = throttle, reset
        self.rules: list[list] = []
        for pattern, fault in (rules or {}).items():
            name, _, times = fault.partition("*")
            self.rules.append([re.compile(pattern), name, int(times) if times else -1])
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-s3", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultyS3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def release(self) -> None:
        """Let every held request through, and every later one that a `hold` rule matches."""
        self._released.set()

    def _fault(self, method: str, path: str) -> str:
        with self._lock:
            self.counts["requests"] += 1
            for rule in self.rules:
                pattern, fault, left = rule
                if left != 0 and pattern.search(path):
                    rule[2] = left - 1
                    self.counts[fault] += 1
                    return fault
            draw = self._rng.random()
            if draw < self.throttle:
                fault = "503"
            elif draw < self.throttle + self.reset / 2:
                fault = "reset-before"
            elif draw < self.throttle + self.reset:
                fault = "reset-after"
            else:
                fault = "ok"
            self.counts[fault] += 1
            if fault in ("ok", "reset-after") and method == "PUT":
                self.counts["writes"] += 1
            return fault

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reset(self) -> None:
                # SO_LINGER 0: the close sends a TCP RST, as a dropped connection does.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    return response.status, response.getheaders(), response.read()
                finally:
                    conn.close()

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._fault(self.command, self.path)
                if fault == "hold" and not proxy._released.wait(timeout=900):
                    return self._reset()
                if fault == "reset-before":
                    return self._reset()
                if fault == "503":
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return None
                status, headers, payload = self._forward(body)
                if fault == "reset-after":
                    return self._reset()
                self.send_response(status)
                for name, value in headers:
                    # HEAD keeps the object's own Content-Length: boto3 reads the size from it.
                    if name.lower() not in _HOP_BY_HOP and (name.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                return None

            def _handle_quietly(self) -> None:
                try:
                    self._handle()
                except (BrokenPipeError, ConnectionResetError):  # the client is gone (a held one was killed)
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle_quietly  # noqa: N815

        return Handler
