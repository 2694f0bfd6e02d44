"""`python -m adapters.infra.s3_server -H <host> -p <port>`: moto's S3 server with atomic conditional writes.

S3 makes a conditional put (`If-None-Match: *`, `If-Match: <etag>`) atomic: of two writers of one key, one
wins and the other gets 412. moto's server checks the condition and then writes, on threads of its own, so
two writers at once can both "win", the second replacing the first. Delta commits (a log entry per version)
and claims rely on that atomicity; this server holds a lock around every conditional put so the embedded
server behaves as S3 does. Unconditional puts are not serialised.
"""

from __future__ import annotations

import threading

from moto import server
from moto.s3.responses import S3Response

_CONDITIONAL = threading.Lock()
_put_object = S3Response.put_object


def _atomic_put_object(self: S3Response):  # noqa: ANN202 - moto's own response type
    if self.headers.get("If-None-Match") or self.headers.get("If-Match"):
        with _CONDITIONAL:
            return _put_object(self)
    return _put_object(self)


S3Response.put_object = _atomic_put_object  # type: ignore[method-assign]

if __name__ == "__main__":
    server.main()
