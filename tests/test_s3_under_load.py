"""S3 under load: throttling and dropped connections are retried, an endpoint that is down fails fast,
a write whose answer is lost is written once, and a whole refresh and campaign survive a faulty endpoint.

The faulty endpoint is a loopback proxy in front of the session's S3 server (tests/s3_faults.py).
Its rates can be changed without editing the test: STYLEMATRIX_TEST_S3_FAULTS="throttle,reset,seed".
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from botocore.exceptions import EndpointConnectionError

from adapters.infra.local_s3 import free_port
from adapters.infra.settings import Settings, get_settings
from adapters.infra.storage import RetryPolicy, S3Store, fault_kind
from adapters.steps import publish
from catalogs.models import RunRequest
from tests.s3_faults import FaultyS3Proxy

THROTTLE, RESET, SEED = (float(x) for x in os.environ.get("STYLEMATRIX_TEST_S3_FAULTS", "0.25,0.06,7").split(","))
FAST = RetryPolicy(attempts=30, base_seconds=0.02, cap_seconds=0.5)


def store_at(endpoint: str, policy: RetryPolicy = FAST) -> S3Store:
    plain = S3Store.from_settings(Settings(s3_endpoint=endpoint))
    return S3Store(plain._client, policy)


def test_an_endpoint_that_is_down_fails_in_seconds_with_one_line(s3_server, monkeypatch):
    waits: list[int] = []
    monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt, rng: waits.append(attempt) or 0.0)
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConnectionError, match=f"^cannot reach S3 endpoint {endpoint}"):
        store_at(endpoint, RetryPolicy()).get("s3://bucket/key")
    assert len(waits) == RetryPolicy().down_attempts - 1  # one short retry, not thirty
    assert fault_kind(EndpointConnectionError(endpoint_url=endpoint)) == "down"


def test_a_busy_endpoint_is_retried_until_it_answers(s3_server, store, fresh_bucket):
    with FaultyS3Proxy(s3_server.endpoint, throttle=0.5, reset=0.1, seed=3) as proxy:
        busy = store_at(proxy.endpoint)
        for i in range(20):
            busy.put(f"s3://{fresh_bucket}/k{i}", f"value {i}".encode())
        assert [busy.get(f"s3://{fresh_bucket}/k{i}") for i in range(20)] == [f"value {i}".encode() for i in range(20)]
        assert len(busy.list(f"s3://{fresh_bucket}/")) == 20
    assert proxy.counts["503"] > 5 and proxy.counts["reset-before"] + proxy.counts["reset-after"] > 0


def test_a_busy_endpoint_gives_up_after_its_attempts_naming_the_object(s3_server, store, fresh_bucket, monkeypatch):
    monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt, rng: 0.0)
    with FaultyS3Proxy(s3_server.endpoint, rules={"/stuck": "503"}) as proxy:
        with pytest.raises(ConnectionError, match=rf"still busy after 4 attempts .*\(SlowDown\) on s3://{fresh_bucket}/stuck"):
            store_at(proxy.endpoint, RetryPolicy(attempts=4)).get(f"s3://{fresh_bucket}/stuck")
    assert proxy.counts["503"] == 4


def test_a_conditional_write_whose_answer_is_lost_is_written_once(s3_server, store, fresh_bucket):
    uri = f"s3://{fresh_bucket}/runs/r1/_MANIFEST.json"
    with FaultyS3Proxy(s3_server.endpoint, rules={"/_MANIFEST.json$": "reset-after*1"}) as proxy:
        busy = store_at(proxy.endpoint)
        busy.put(uri, b'{"run": 1}', if_absent=True)  # written, answer lost, retried: 412 on its own bytes
        assert proxy.counts["reset-after"] == 1
        with pytest.raises(FileExistsError):  # someone else's bytes are still refused
            busy.put(uri, b'{"run": 2}', if_absent=True)
    assert store.get(uri) == b'{"run": 1}' and [o.uri for o in store.list(f"s3://{fresh_bucket}/")] == [uri]


CAMPAIGN = (
    "name: load\nproducts: {ids: [rocket, coffee-cup]}\nstyles: {ids: [space-age]}\n"
    "matrix: {template: '{product} on {surface}', axes: {surface: [sand, slate]}, seeds: 2}\n"
    "generation: {profile: tiny, width: 64, height: 64, steps: 2, batch_size: 4}\n"
)


def test_a_refresh_and_a_campaign_survive_throttling_and_dropped_connections(campaign_env, s3_server, store,
                                                                            tmp_path, monkeypatch):
    from flows.campaign import run_campaign
    from flows.catalog import refresh_catalog

    spec = tmp_path / "load.yaml"
    spec.write_text(CAMPAIGN)
    catalog, assets = campaign_env["catalog"], campaign_env["assets"]
    # The Delta tables' own client (delta-rs, with its own retries) gets no answer from this test proxy to
    # its log listings, faults or none: its commits go to the server directly, every other call through
    # the faults.
    direct = S3Store.storage_options
    monkeypatch.setattr(S3Store, "storage_options", lambda self: {**direct(self), "AWS_ENDPOINT_URL": s3_server.endpoint,
                                                                  "AWS_ENDPOINT_URL_S3": s3_server.endpoint})
    with FaultyS3Proxy(s3_server.endpoint, throttle=THROTTLE, reset=RESET, seed=int(SEED)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        monkeypatch.setenv("STYLEMATRIX_S3_RETRY_CAP_SECONDS", "0.5")
        get_settings.cache_clear()
        report = refresh_catalog(catalog=catalog)
        summary = run_campaign(RunRequest(campaign=str(spec), triggered_by="test"))
        before = {o.uri for o in store.list(f"{assets}/")}
        again = run_campaign(RunRequest(campaign=str(spec), triggered_by="test"))
    get_settings.cache_clear()
    faults = proxy.counts["503"] + proxy.counts["reset-before"] + proxy.counts["reset-after"]
    print(f"\nS3 faults: {dict(proxy.counts)}")
    assert faults > 10, proxy.counts

    # The refresh quarantined only the broken product, never an object a retry could read.
    assert report["quarantined"] == 1 and report["products"] == 4
    # Every image is in the table exactly once, every object holds the bytes its row names.
    manifest = json.loads(store.get(summary.manifest))
    gens = publish.read_table(store, manifest, "generations")
    assert summary.images_generated == len(gens) == 8 and gens["asset_id"].is_unique
    assert sorted(i["asset_id"] for i in manifest["images"]) == sorted(gens["asset_id"])
    for row in gens.itertuples():
        assert hashlib.sha256(store.get(row.output_key)).hexdigest() == row.sha256
    images = {o.uri for o in store.list(f"{assets}/runs/{summary.run_id}/images/")}
    assert images == set(gens["output_key"])  # no stray copy, none lost
    # A rerun through the same faults adds nothing but its own manifest and runs row.
    assert again.images_generated == 0 and again.images_skipped == 8
    added = {o.uri for o in store.list(f"{assets}/")} - before
    assert added and all(u == again.manifest or u.startswith(f"{assets}/tables/runs/") for u in added), added
