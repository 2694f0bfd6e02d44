"""Object storage: `s3://bucket/key` URIs, a small store protocol and its boto3 implementation.

Every S3 error that a caller can act on leaves this module as a builtin exception:
a missing key or bucket is `FileNotFoundError`, an existing key refused by a
conditional write is `FileExistsError`, an endpoint that does not answer is
`ConnectionError`, missing or refused credentials are `PermissionError`.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    HTTPClientError,
    NoCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

if TYPE_CHECKING:
    from adapters.settings import Settings

__all__ = ["ObjectInfo", "ObjectStore", "S3Store", "join_uri", "split_uri"]

SCHEME = "s3://"
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 60.0
# Two attempts in all: one retry absorbs a transient hiccup, while an unreachable
# endpoint still fails in seconds (2 x connect timeout + backoff) instead of minutes.
MAX_ATTEMPTS = 2
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


class ObjectStore(Protocol):
    """What the pipeline needs from object storage; `S3Store` is the implementation."""

    def put(self, uri: str, data: bytes, content_type: str | None = None, *, if_absent: bool = False) -> str: ...

    def get(self, uri: str) -> bytes: ...

    def download(self, uri: str, out: BinaryIO, *, etag: str = "") -> None: ...

    def exists(self, uri: str) -> bool: ...

    def head(self, uri: str) -> ObjectInfo | None: ...

    def list(self, prefix_uri: str) -> list[ObjectInfo]: ...

    def delete(self, uri: str) -> None: ...

    def ensure_bucket(self, bucket: str) -> None: ...

    def check_reachable(self, uri: str) -> None: ...


# --------------------------------------------------------------------------- S3


class S3Store:
    """`ObjectStore` over a boto3 S3 client (AWS, MinIO, R2, or the embedded moto server)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.endpoint: str = client.meta.endpoint_url

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        """A store for `settings.s3_endpoint` (None: the AWS default) and `settings.s3_region`."""
        config = Config(
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            # Custom endpoints (moto, MinIO, an IP address) rarely resolve bucket
            # subdomains; AWS itself keeps its default virtual-host addressing.
            s3={"addressing_style": "path" if settings.s3_endpoint else "auto"},
        )
        client = boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region, config=config)
        return cls(client)

    # ------------------------------------------------------------------ objects

    def put(self, uri: str, data: bytes, content_type: str | None = None, *, if_absent: bool = False) -> str:
        """Write `data` at `uri` and return its ETag (without quotes).

        With `if_absent`, the write is conditional (`If-None-Match: *`): if the key
        already exists, nothing is written and FileExistsError is raised.
        """
        bucket, key = _object_parts(uri)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": data}
        if content_type:
            kwargs["ContentType"] = content_type
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        try:
            with self._translate(uri):
                response = self._client.put_object(**kwargs)
        except _Precondition as exc:
            raise FileExistsError(f"{uri} already exists ({exc})") from None
        return _etag(response["ETag"])

    def get(self, uri: str) -> bytes:
        """The bytes stored at `uri`; FileNotFoundError if there are none."""
        bucket, key = _object_parts(uri)
        with self._translate(uri):
            response = self._client.get_object(Bucket=bucket, Key=key)
            return response["Body"].read()

    def download(self, uri: str, out: BinaryIO, *, etag: str = "") -> None:
        """Stream the bytes stored at `uri` into the binary file `out`: for objects too large to hold in memory.

        With `etag`, only the object with that ETag is read: one replaced since it was listed
        raises FileNotFoundError before anything is written. FileNotFoundError if there is none.
        """
        bucket, key = _object_parts(uri)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if etag:
            kwargs["IfMatch"] = f'"{etag}"'
        try:
            with self._translate(uri):
                body = self._client.get_object(**kwargs)["Body"]
                shutil.copyfileobj(body, out, length=COPY_CHUNK_BYTES)
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
            with self._translate(uri):
                response = self._client.head_object(Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        return ObjectInfo(uri=uri, key=key, size=response["ContentLength"], etag=_etag(response["ETag"]))

    def list(self, prefix_uri: str) -> list[ObjectInfo]:
        """Every object whose key starts with the key part of `prefix_uri`, sorted by key.

        The prefix is a raw key prefix: pass `s3://b/products/` (trailing slash) for
        the contents of a folder, as `s3://b/products` also matches `products-old/`.
        """
        bucket, prefix = split_uri(prefix_uri)
        found: list[ObjectInfo] = []
        with self._translate(prefix_uri):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    found.append(
                        ObjectInfo(
                            uri=f"{SCHEME}{bucket}/{item['Key']}",
                            key=item["Key"],
                            size=item["Size"],
                            etag=_etag(item["ETag"]),
                        )
                    )
        return sorted(found, key=lambda info: info.key)

    def delete(self, uri: str) -> None:
        """Remove the object at `uri`; removing a missing object is not an error (as in S3)."""
        bucket, key = _object_parts(uri)
        with self._translate(uri):
            self._client.delete_object(Bucket=bucket, Key=key)

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
            self._client.create_bucket(**kwargs)
        except ClientError as exc:
            # Lost a race with another creator; fine if the bucket is now ours to use.
            if _code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"} or not self._bucket_exists(name):
                raise _translated(exc, f"{SCHEME}{name}", self.endpoint) from None
        except BotoCoreError as exc:
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
            self._client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND_CODES:
                return False
            raise _translated(exc, f"{SCHEME}{bucket}", self.endpoint) from None
        except BotoCoreError as exc:
            raise _translated(exc, f"{SCHEME}{bucket}", self.endpoint) from None
        return True

    @contextmanager
    def _translate(self, uri: str) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
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
