"""adapters.infra.storage and adapters.infra.local_s3 against a real moto S3 server subprocess."""

from __future__ import annotations

import hashlib
import socket
import time

import pytest

import adapters
from adapters.infra.local_s3 import LocalS3Server, free_port
from adapters.infra.settings import Settings
from adapters.infra.storage import ObjectInfo, ObjectStore, S3Store, join_uri, split_uri


def test_adapters_is_this_repository() -> None:
    # A PyPI package is also called `adapters`; it must never shadow ours.
    assert hasattr(adapters, "__path__")
    assert adapters.__file__.endswith("adapters/__init__.py")
    assert "site-packages" not in adapters.__file__


# --------------------------------------------------------------------------- URIs


def test_split_uri() -> None:
    assert split_uri("s3://bkt/a/b.png") == ("bkt", "a/b.png")
    assert split_uri("s3://bkt") == ("bkt", "")
    assert split_uri("s3://bkt/") == ("bkt", "")
    with pytest.raises(ValueError, match="s3://"):
        split_uri("/local/path")
    with pytest.raises(ValueError, match="no bucket"):
        split_uri("s3:///key")


def test_join_uri() -> None:
    assert join_uri("s3://bkt", "products", "x/image.png") == "s3://bkt/products/x/image.png"
    assert join_uri("s3://bkt/cat/", "products/") == "s3://bkt/cat/products/"
    assert join_uri("s3://bkt/cat") == "s3://bkt/cat"
    assert join_uri("s3://bkt") == "s3://bkt"


@pytest.mark.parametrize("part", ["..", "a/../b", "../x", "./x", "/abs/key"])
def test_join_uri_rejects_escapes(part: str) -> None:
    with pytest.raises(ValueError, match="cannot join"):
        join_uri("s3://bkt/cat", part)


def test_settings_take_the_endpoint_by_field_name() -> None:
    # The fixtures rely on this; without validate-by-name pydantic-settings drops it silently.
    settings = Settings(s3_endpoint="http://127.0.0.1:9", s3_region="eu-west-1")
    assert (settings.s3_endpoint, settings.s3_region) == ("http://127.0.0.1:9", "eu-west-1")


# --------------------------------------------------------------------------- objects


def test_store_satisfies_protocol(store: S3Store) -> None:
    def takes_store(s: ObjectStore) -> ObjectStore:
        return s

    assert takes_store(store) is store


def test_put_get_head_exists_round_trip(store: S3Store, fresh_bucket: str) -> None:
    uri = f"s3://{fresh_bucket}/a/b/hello.txt"
    etag = store.put(uri, b"hello", "text/plain")
    assert etag == hashlib.md5(b"hello").hexdigest()  # single-part ETag is the MD5, unquoted
    assert store.get(uri) == b"hello"
    assert store.exists(uri)
    assert store.head(uri) == ObjectInfo(uri=uri, key="a/b/hello.txt", size=5, etag=etag)
    store.put(uri, b"hello again")  # plain put overwrites
    assert store.get(uri) == b"hello again"
    store.delete(uri)
    assert not store.exists(uri)
    assert store.head(uri) is None
    store.delete(uri)  # deleting a missing object is not an error, as in S3


def test_list_is_sorted_and_respects_prefix(store: S3Store, fresh_bucket: str) -> None:
    base = f"s3://{fresh_bucket}"
    keys = [f"products/p{i:03d}/image.png" for i in range(300)]
    for key in reversed(keys):
        store.put(join_uri(base, key), key.encode())
    store.put(join_uri(base, "products-old/x.png"), b"old")
    store.put(join_uri(base, "styles/s/a.png"), b"style")

    listed = store.list(join_uri(base, "products/"))
    assert [info.key for info in listed] == keys
    assert listed[7].uri == f"{base}/{keys[7]}"
    assert listed[7].size == len(keys[7])
    assert len(store.list(f"{base}/products")) == 301  # a raw prefix, not a folder
    assert store.list(join_uri(base, "nothing-here/")) == []


def test_list_paginates(store: S3Store, fresh_bucket: str) -> None:
    # A small page size forces several pages through the same code path as 1000+ keys.
    for i in range(25):
        store.put(f"s3://{fresh_bucket}/k/{i:02d}", b"x")
    paginator = store._client.get_paginator("list_objects_v2")
    pages = list(paginator.paginate(Bucket=fresh_bucket, Prefix="k/", PaginationConfig={"PageSize": 10}))
    assert len(pages) == 3
    assert len(store.list(f"s3://{fresh_bucket}/k/")) == 25


def test_put_if_absent_refuses_existing_key(store: S3Store, fresh_bucket: str) -> None:
    uri = f"s3://{fresh_bucket}/runs/r1/_MANIFEST.json"
    store.put(uri, b"first", if_absent=True)
    with pytest.raises(FileExistsError, match="already exists"):
        store.put(uri, b"second", if_absent=True)
    assert store.get(uri) == b"first"


def test_missing_key_is_file_not_found(store: S3Store, fresh_bucket: str) -> None:
    uri = f"s3://{fresh_bucket}/no/such/key.png"
    with pytest.raises(FileNotFoundError) as caught:
        store.get(uri)
    assert str(caught.value) == uri
    assert not store.exists(uri)


def test_uri_without_key_is_rejected(store: S3Store, fresh_bucket: str) -> None:
    with pytest.raises(ValueError, match="names no object"):
        store.put(f"s3://{fresh_bucket}/folder/", b"x")


# --------------------------------------------------------------------------- buckets and reachability


def test_ensure_bucket_is_idempotent(store: S3Store, fresh_bucket: str) -> None:
    store.ensure_bucket(fresh_bucket)
    store.ensure_bucket(f"s3://{fresh_bucket}")
    store.check_reachable(f"s3://{fresh_bucket}/some/prefix")


def test_missing_bucket(store: S3Store, s3_server: LocalS3Server) -> None:
    expected = f"bucket 'no-such-bucket-here' does not exist at {s3_server.endpoint}"
    with pytest.raises(FileNotFoundError, match=expected):
        store.check_reachable("s3://no-such-bucket-here/catalog")
    with pytest.raises(FileNotFoundError, match="no-such-bucket-here"):
        store.get("s3://no-such-bucket-here/key")
    with pytest.raises(FileNotFoundError, match="no-such-bucket-here"):
        store.list("s3://no-such-bucket-here/")


def test_unreachable_endpoint_fails_fast(s3_server: LocalS3Server) -> None:
    # s3_server is requested only for its dummy credentials; nothing listens on `port`.
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    store = S3Store.from_settings(Settings(s3_endpoint=endpoint))
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=f"cannot reach S3 endpoint {endpoint}: connection refused"):
        store.check_reachable("s3://catalog")
    with pytest.raises(ConnectionError, match="cannot reach S3 endpoint"):
        store.get("s3://catalog/products/x/image.png")
    assert time.monotonic() - started < 10


# --------------------------------------------------------------------------- the server itself


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_local_server_stops_cleanly(s3_server: LocalS3Server) -> None:
    server = LocalS3Server()
    with server:
        assert server.running
        assert server.endpoint.startswith("http://127.0.0.1:")
        port = server.port
        assert port is not None and _port_open(port)
        process = server._process
        store = S3Store.from_settings(Settings(s3_endpoint=server.endpoint))
        store.ensure_bucket("stop-test")
        store.put("s3://stop-test/k", b"v")
    assert not server.running
    assert process is not None and process.returncode is not None
    assert not _port_open(port)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.endpoint


def test_local_server_refuses_busy_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"port {port} on 127.0.0.1 is in use"):
            LocalS3Server(port=port).start()


def test_local_server_listens_on_loopback_only(s3_server: LocalS3Server) -> None:
    assert s3_server.endpoint == f"http://127.0.0.1:{s3_server.port}"
    # A server bound to 0.0.0.0 would also answer on 127.0.0.2; one bound to 127.0.0.1 does not.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        assert sock.connect_ex(("127.0.0.2", s3_server.port)) != 0


def test_parallel_each_holds_a_bounded_part_of_a_stream_and_raises_a_calls_error():
    import threading

    from adapters.infra.storage import parallel_each

    made, done, lock = [0], [0], threading.Lock()
    ahead = []

    def stream():
        for i in range(200):
            made[0] += 1
            with lock:
                ahead.append(made[0] - done[0])  # items taken from the stream and not yet written
            yield i

    def write(_):
        time.sleep(0.001)
        with lock:
            done[0] += 1

    assert parallel_each(write, stream(), workers=4) == 200 and done[0] == 200
    assert max(ahead) <= 2 * 4 + 1  # never the whole stream in memory

    def broken(i):
        if i == 7:
            raise OSError(f"item {i}: broken")

    with pytest.raises(OSError, match="item 7"):
        parallel_each(broken, iter(range(50)), workers=4)


def test_the_embedded_server_lets_one_of_many_conditional_writers_win(store, fresh_bucket):
    """As on S3: of writers putting one key with If-None-Match at once, exactly one wins (Delta commits and claims
    rely on it); moto alone checks and writes apart, so two could both win."""
    from concurrent.futures import ThreadPoolExecutor

    def attempt(args):
        key, writer = args
        try:
            store.put(f"s3://{fresh_bucket}/race/{key}", f"writer {writer}".encode(), if_absent=True)
            return key
        except FileExistsError:
            return None

    with ThreadPoolExecutor(8) as pool:
        won = [k for k in pool.map(attempt, [(k, w) for k in range(30) for w in range(8)]) if k is not None]
    assert sorted(won) == list(range(30))  # one winner per key, never two
