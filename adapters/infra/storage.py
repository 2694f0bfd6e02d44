"""Object storage: `s3://bucket/key` URIs, a small store protocol and its boto3 implementation.

Every S3 error that a caller can act on leaves this module as a builtin exception:
a missing key or bucket is `FileNotFoundError`, an existing key refused by a
conditional write is `FileExistsError`, an endpoint that does not answer is
`ConnectionError`, missing or refused credentials are `PermissionError`.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from urllib3.exceptions import ProtocolError
from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeout

if TYPE_CHECKING:
    from adapters.infra.settings import Settings

__all__ = ["ObjectInfo", "ObjectStore", "RetryPolicy", "S3Store", "fault_kind", "join_uri", "parallel_map", "split_uri"]

T = TypeVar("T")

SCHEME = "s3://"
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 60.0
PARALLEL_CALLS = 16  # S3 calls `parallel_map` makes at once, and the client's connection pool to carry them
COPY_CHUNK_BYTES = 8 << 20

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}


# --------------------------------------------------------------------------- URIs


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> `("bucket", "a/b")`; the key is "" for a bare bucket."""
    if not uri.startswith(SCHEME):
        raise ValueError(f"expected an s3://bucket/key URI, got {uri!r}")
    bucket, _, key = uri[len(SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"URI {uri!r} names no bucket")
    return bucket, key


def join_uri(base: str, *parts: str) -> str:
    """`base` with `parts` appended as key segments, e.g. `join_uri("s3://b/cat", "products/x")`.

    A trailing "/" on the last part is kept, so a join can name a listing prefix.
    Raises ValueError for an absolute part or a `.`/`..` segment: keys built from
    catalog content must never climb out of the prefix they were joined under.
    """
    bucket, key = split_uri(base)
    segments = [s for s in key.split("/") if s]
    for part in parts:
        if part.startswith("/"):
            raise ValueError(f"cannot join absolute part {part!r} to {base!r}")
        for segment in part.split("/"):
            if segment in (".", ".."):
                raise ValueError(f"cannot join {part!r} to {base!r}: '{segment}' segments are not allowed")
            if segment:
                segments.append(segment)
    joined = f"{SCHEME}{bucket}/{'/'.join(segments)}" if segments else f"{SCHEME}{bucket}"
    if parts and parts[-1].endswith("/") and segments:
        joined += "/"
    return joined


# --------------------------------------------------------------------------- protocol


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its URI, its key inside the bucket, size in bytes and ETag."""

    uri: str
    key: str
    size: int
    etag: str
    modified: datetime | None = None  # last modified, as listings report it


class ObjectStore(Protocol):
    """What the pipeline needs from object storage; `S3Store` is the implementation."""

    def put(self, uri: str, data: bytes, content_type: str | None = None, *, if_absent: bool = False,
            metadata: dict[str, str] | None = None) -> str: ...

    def get(self, uri: str) -> bytes: ...

    def read(self, uri: str) -> tuple[bytes, dict[str, str]]: ...

    def download(self, uri: str, out: BinaryIO, *, etag: str = "") -> None: ...

    def exists(self, uri: str) -> bool: ...

    def head(self, uri: str) -> ObjectInfo | None: ...

    def list(self, prefix_uri: str) -> list[ObjectInfo]: ...

    def delete(self, uri: str) -> None: ...

    def ensure_bucket(self, bucket: str) -> None: ...

    def check_reachable(self, uri: str) -> None: ...

    def storage_options(self) -> dict[str, str]: ...


def parallel_map(fn: Callable[[str], T], uris: Sequence[str], workers: int = PARALLEL_CALLS) -> list[T]:
    """`fn` over many URIs at once, results in order: S3 calls wait on latency, not on this process's CPU."""
    if len(uris) <= 1:
        return [fn(u) for u in uris]
    with ThreadPoolExecutor(max_workers=min(workers, len(uris)), thread_name_prefix="s3") as pool:
        return list(pool.map(fn, uris))


def parallel_each(fn: Callable[[T], object], items: Iterable[T], workers: int = PARALLEL_CALLS) -> int:
    """`fn` over the items of a stream as they come, `workers` calls at once and at most twice that many items
    held (the stream is not read ahead of the calls); the first error raised by a call is raised. Returns how
    many items there were."""
    done = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3") as pool:
        pending: set[Future] = set()
        for item in items:
            if len(pending) >= 2 * workers:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()
            pending.add(pool.submit(fn, item))
            done += 1
        for future in pending:
            future.result()
    return done


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """How long S3 calls are retried, telling an endpoint that is busy from one that is down.

    Busy (throttling: 503 SlowDown, 500, 502, 504, 429; a connection reset or closed mid-call;
    a read timeout) is retried with exponential backoff and full jitter (AWS's recommended
    scheme: the n-th wait is uniform in [0, min(cap, base x 2^n)]), up to `attempts` in all:
    30 by default, at most about 3.5 minutes of waiting, enough to ride out a throttled prefix.
    Down (connection refused, a name that does not resolve, no answer to connect) gets
    `down_attempts` (2) and fails in seconds with one line. Anything else (not found, access
    denied, a refused conditional write) is an answer, not a fault: never retried.
    botocore's own retries are off (one attempt each), so this is the only policy.
    """

    attempts: int = 30
    down_attempts: int = 2
    base_seconds: float = 0.1
    cap_seconds: float = 8.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return rng.uniform(0.0, min(self.cap_seconds, self.base_seconds * 2 ** (attempt - 1)))


_BUSY_CODES = {"SlowDown", "ServiceUnavailable", "Throttling", "ThrottlingException", "RequestLimitExceeded",
               "TooManyRequests", "InternalError", "RequestTimeout", "BadGateway", "GatewayTimeout",
               "500", "502", "503", "504", "429"}
_BUSY_STATUS = {429, 500, 502, 503, 504}


def fault_kind(exc: BaseException) -> str:
    """'busy' (retry long), 'down' (retry once) or 'answer' (never retry) for an error of one S3 call."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return "busy" if _code(exc) in _BUSY_CODES or status in _BUSY_STATUS else "answer"
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)) and not isinstance(exc, ReadTimeoutError):
        return "down"
    if isinstance(exc, (HTTPClientError, BotoConnectionError, ResponseStreamingError, IncompleteReadError,
                        ProtocolError, Urllib3ReadTimeout, ConnectionResetError, TimeoutError)):
        return "busy"
    return "answer"


# --------------------------------------------------------------------------- S3


class S3Store:
    """`ObjectStore` over a boto3 S3 client (AWS, MinIO, R2, or the embedded moto server).

    Every call goes through `RetryPolicy`; every write is safe to repeat when its answer was
    lost: a plain put writes the same bytes again, and a conditional put that finds an object
    with exactly its bytes (its own earlier attempt) counts as written.
    """

    def __init__(self, client: Any, policy: RetryPolicy | None = None) -> None:
        self._client = client
        self.endpoint: str = client.meta.endpoint_url
        self.policy = policy or RetryPolicy()
        self._rng = random.Random()

    @classmethod
    def shared(cls, settings: Settings) -> S3Store:
        """The process's store for `settings`: one boto3 client (thread-safe) for every shard the process
        runs, so what a shard read once (a product photo, a style set's references) is not read again."""
        return _shared_store(settings.s3_endpoint, settings.s3_region, settings.s3_retry_attempts,
                             settings.s3_retry_cap_seconds)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        """A store for `settings.s3_endpoint` (None: the AWS default) and `settings.s3_region`."""
        return _new_store(settings.s3_endpoint, settings.s3_region, settings.s3_retry_attempts,
                          settings.s3_retry_cap_seconds)

    # ------------------------------------------------------------------ objects

    def put(self, uri: str, data: bytes, content_type: str | None = None, *, if_absent: bool = False,
            metadata: dict[str, str] | None = None) -> str:
        """Write `data` at `uri` (with user `metadata`, stored as `x-amz-meta-*`) and return its ETag (without quotes).

        With `if_absent`, the write is conditional (`If-None-Match: *`): if the key already
        holds other bytes, nothing is written and FileExistsError is raised. If it holds exactly
        `data` (an earlier attempt of this very write whose answer was lost), the write counts.
        """
        bucket, key = _object_parts(uri)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": data}
        if content_type:
            kwargs["ContentType"] = content_type
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        if metadata:
            kwargs["Metadata"] = metadata
        try:
            response = self._call(uri, lambda: self._client.put_object(**kwargs))
        except _Precondition as exc:
            try:
                if self.get(uri) == data:
                    return hashlib.md5(data, usedforsecurity=False).hexdigest()
            except FileNotFoundError:
                pass
            raise FileExistsError(f"{uri} already exists ({exc})") from None
        return _etag(response["ETag"])

    def get(self, uri: str) -> bytes:
        """The bytes stored at `uri`; FileNotFoundError if there are none."""
        bucket, key = _object_parts(uri)
        return self._call(uri, lambda: self._client.get_object(Bucket=bucket, Key=key)["Body"].read())

    def read(self, uri: str) -> tuple[bytes, dict[str, str]]:
        """The bytes stored at `uri` and the user metadata written with them; FileNotFoundError if there are none."""
        bucket, key = _object_parts(uri)

        def fetch() -> tuple[bytes, dict[str, str]]:
            response = self._client.get_object(Bucket=bucket, Key=key)
            return response["Body"].read(), dict(response.get("Metadata") or {})

        return self._call(uri, fetch)

    def download(self, uri: str, out: BinaryIO, *, etag: str = "") -> None:
        """Stream the bytes stored at `uri` into the binary file `out`: for objects too large to hold in memory.

        With `etag`, only the object with that ETag is read: one replaced since it was listed
        raises FileNotFoundError before anything is written. FileNotFoundError if there is none.
        """
        bucket, key = _object_parts(uri)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if etag:
            kwargs["IfMatch"] = f'"{etag}"'

        def copy() -> None:
            out.seek(0)
            out.truncate()  # a retry starts the file again
            shutil.copyfileobj(self._client.get_object(**kwargs)["Body"], out, length=COPY_CHUNK_BYTES)

        try:
            self._call(uri, copy)
        except _Precondition:
            raise FileNotFoundError(f"{uri} changed while it was being read (its ETag is no longer {etag}); "
                                    "try again") from None

    def exists(self, uri: str) -> bool:
        """Whether an object is stored at `uri`."""
        return self.head(uri) is not None

    def head(self, uri: str) -> ObjectInfo | None:
        """Size and ETag of the object at `uri`, or None if there is none."""
        bucket, key = _object_parts(uri)
        try:
            response = self._call(uri, lambda: self._client.head_object(Bucket=bucket, Key=key))
        except FileNotFoundError:
            return None
        return ObjectInfo(uri=uri, key=key, size=response["ContentLength"], etag=_etag(response["ETag"]))

    def list(self, prefix_uri: str) -> list[ObjectInfo]:
        """Every object whose key starts with the key part of `prefix_uri`, sorted by key.

        The prefix is a raw key prefix: pass `s3://b/products/` (trailing slash) for
        the contents of a folder, as `s3://b/products` also matches `products-old/`.
        """
        bucket, prefix = split_uri(prefix_uri)

        def listing() -> list[ObjectInfo]:  # a retry lists again from the first page
            paginator = self._client.get_paginator("list_objects_v2")
            return [ObjectInfo(uri=f"{SCHEME}{bucket}/{item['Key']}", key=item["Key"], size=item["Size"],
                               etag=_etag(item["ETag"]), modified=item.get("LastModified"))
                    for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for item in page.get("Contents", [])]

        return sorted(self._call(prefix_uri, listing), key=lambda info: info.key)

    def storage_options(self) -> dict[str, str]:
        """The endpoint and region of this store as Delta Lake (delta-rs) storage options.

        Credentials are not in them: delta-rs finds them itself, as boto3 does (AWS_ACCESS_KEY_ID and
        AWS_SECRET_ACCESS_KEY, a profile, an instance role).
        """
        options = {"AWS_REGION": self._client.meta.region_name or "us-east-1"}
        if self.endpoint and not self.endpoint.endswith(".amazonaws.com"):
            # Both names: delta-rs lets AWS_ENDPOINT_URL_S3 in the environment win over AWS_ENDPOINT_URL.
            options["AWS_ENDPOINT_URL"] = options["AWS_ENDPOINT_URL_S3"] = self.endpoint
            options["AWS_ALLOW_HTTP"] = "true" if self.endpoint.startswith("http://") else "false"
        return options

    def presigned_url(self, uri: str, expires_seconds: int = 3600) -> str:
        """An https URL that reads the object at `uri` without credentials until it expires (at most 7 days, SigV4's limit)."""
        bucket, key = _object_parts(uri)
        return self._client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                   ExpiresIn=max(1, min(int(expires_seconds), 7 * 24 * 3600)))

    def delete(self, uri: str) -> None:
        """Remove the object at `uri`; removing a missing object is not an error (as in S3)."""
        bucket, key = _object_parts(uri)
        self._call(uri, lambda: self._client.delete_object(Bucket=bucket, Key=key))

    # ------------------------------------------------------------------ buckets

    def ensure_bucket(self, bucket: str) -> None:
        """Create `bucket` (a name or an `s3://` URI) unless it already exists."""
        name = split_uri(bucket)[0] if bucket.startswith(SCHEME) else bucket
        if self._bucket_exists(name):
            return
        kwargs: dict[str, Any] = {"Bucket": name}
        region = self._client.meta.region_name
        if region and region != "us-east-1":  # us-east-1 refuses an explicit LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._call(f"{SCHEME}{name}", lambda: self._client.create_bucket(**kwargs), translate=False)
        except ClientError as exc:
            # Lost a race with another creator; fine if the bucket is now ours to use.
            if _code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"} or not self._bucket_exists(name):
                raise _translated(exc, f"{SCHEME}{name}", self.endpoint) from None

    def check_reachable(self, uri: str) -> None:
        """Fail fast, with a message a user can act on, unless the bucket of `uri` is usable.

        Raises ConnectionError (endpoint down), FileNotFoundError (no such bucket),
        PermissionError (credentials missing or refused).
        """
        bucket, _ = split_uri(uri)
        if not self._bucket_exists(bucket):
            raise FileNotFoundError(f"bucket {bucket!r} does not exist at {self.endpoint}")

    def _bucket_exists(self, bucket: str) -> bool:
        try:
            self._call(f"{SCHEME}{bucket}", lambda: self._client.head_bucket(Bucket=bucket), translate=False)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND_CODES:
                return False
            raise _translated(exc, f"{SCHEME}{bucket}", self.endpoint) from None
        return True

    def _call(self, uri: str, op: Callable[[], T], *, translate: bool = True) -> T:
        """`op()` under the retry policy; its last error translated to a builtin exception (or, with
        `translate=False`, a ClientError left as it is for the caller to read its code)."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return op()
            except (ClientError, BotoCoreError, ProtocolError, Urllib3ReadTimeout, ConnectionResetError,
                    TimeoutError) as exc:
                kind = fault_kind(exc)
                limit = {"busy": self.policy.attempts, "down": self.policy.down_attempts}.get(kind, 1)
                if attempt < limit:
                    time.sleep(self.policy.delay(attempt, self._rng))
                    continue
                if kind == "busy":
                    raise ConnectionError(
                        f"S3 endpoint {self.endpoint} is still busy after {attempt} attempts over "
                        f"{time.monotonic() - started:.0f} s ({_fault_reason(exc)}) on {uri}") from None
                if isinstance(exc, ClientError) and not translate:
                    raise
                raise _translated(exc, uri, self.endpoint) from None


# --------------------------------------------------------------------------- errors


class _Precondition(Exception):
    """A conditional write refused (412); `put` turns it into FileExistsError."""


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _translated(exc: Exception, uri: str, endpoint: str) -> Exception:
    """The builtin exception a caller should see for a boto3 error on `uri`."""
    if isinstance(exc, ClientError):
        code = _code(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        if code == "NoSuchBucket":
            return FileNotFoundError(f"bucket {split_uri(uri)[0]!r} does not exist at {endpoint} (reading {uri})")
        if code in _NOT_FOUND_CODES:
            return FileNotFoundError(uri)
        if code in {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}:
            return _Precondition(message)
        if code in _DENIED_CODES:
            return PermissionError(f"access to {uri} refused by {endpoint}: {message}")
        return OSError(f"S3 error on {uri}: {code}: {message}")
    if isinstance(exc, NoCredentialsError):
        return PermissionError(
            f"no S3 credentials for {endpoint}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        return ConnectionError(f"cannot reach S3 endpoint {endpoint}: {_short_reason(exc)}")
    return OSError(f"S3 error on {uri}: {exc}")


def _fault_reason(exc: BaseException) -> str:
    """The last fault of a busy call in a few words: an S3 error code, or the connection problem."""
    if isinstance(exc, ClientError):
        return _code(exc) or "server error"
    return type(exc).__name__ if not str(exc) else _short_reason(exc)


def _short_reason(exc: Exception) -> str:
    """'connection refused' rather than three lines of urllib3 repr."""
    if isinstance(exc, ConnectTimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    text = str(getattr(exc, "kwargs", {}).get("error") or exc)
    errno = re.search(r"\[Errno -?\d+\]\s*(.+?)\)?$", text)
    if errno:
        return errno.group(1).strip().rstrip("')\"").lower()
    return text if len(text) <= 160 else text[:157] + "..."


def _object_parts(uri: str) -> tuple[str, str]:
    bucket, key = split_uri(uri)
    if not key or key.endswith("/"):
        raise ValueError(f"URI {uri!r} names no object (it needs a key after the bucket)")
    return bucket, key


def _etag(raw: str) -> str:
    return raw.strip('"')


def _new_store(endpoint: str | None, region: str | None, attempts: int, cap_seconds: float) -> S3Store:
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"total_max_attempts": 1, "mode": "standard"},  # RetryPolicy decides, not botocore
        # Custom endpoints (moto, MinIO, an IP address) rarely resolve bucket
        # subdomains; AWS itself keeps its default virtual-host addressing.
        s3={"addressing_style": "path" if endpoint else "auto"},
        signature_version="s3v4",  # presigned URLs too (botocore's default for them is the older scheme)
        max_pool_connections=PARALLEL_CALLS,  # one connection for each thread of parallel_map
    )
    client = boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config)
    return S3Store(client, RetryPolicy(attempts=attempts, cap_seconds=cap_seconds))


_shared_store = functools.lru_cache(maxsize=4)(_new_store)  # S3Store.shared: one store per process and endpoint
