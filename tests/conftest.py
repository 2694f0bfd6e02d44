"""Shared fixtures: one embedded S3 server per test session, a store and a fresh bucket per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.local_s3 import LocalS3Server
from adapters.sample_catalog import seed_sample_catalog
from adapters.settings import Settings, get_settings
from adapters.storage import S3Store

# Dummy credentials and an isolated AWS config: boto3 must never read the developer's
# ~/.aws files or wait on the EC2 instance-metadata service during tests.
_AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "stylematrix-test",
    "AWS_SECRET_ACCESS_KEY": "stylematrix-test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/stylematrix-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/stylematrix-aws-credentials",
}
_AWS_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3Server]:
    """moto's S3 server in a subprocess on 127.0.0.1, with dummy AWS credentials set."""
    patch = pytest.MonkeyPatch()
    for name in _AWS_CLEARED:
        patch.delenv(name, raising=False)
    for name, value in _AWS_TEST_ENV.items():
        patch.setenv(name, value)
    try:
        with LocalS3Server() as server:
            yield server
    finally:
        patch.undo()


@pytest.fixture
def store(s3_server: LocalS3Server) -> S3Store:
    """An S3Store against the session's server (settings built explicitly, not from the environment)."""
    settings = Settings(s3_endpoint=s3_server.endpoint, s3_region="us-east-1")
    return S3Store.from_settings(settings)


@pytest.fixture
def fresh_bucket(store: S3Store) -> str:
    """The name of a new, empty bucket, unique to this test."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    store.ensure_bucket(name)
    return name


@pytest.fixture(scope="session")
def prefect_harness():
    """A throwaway Prefect API for the whole session (it takes seconds to start)."""
    from adapters.settings import prepare_runtime_env

    prepare_runtime_env()
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def campaign_env(s3_server, store: S3Store, tmp_path_factory, monkeypatch, prefect_harness):
    """A seeded catalog bucket, an empty assets bucket, and settings pointing at both."""
    suffix = uuid.uuid4().hex[:10]
    catalog, assets = f"s3://catalog-{suffix}", f"s3://assets-{suffix}/team-a"
    store.ensure_bucket(f"catalog-{suffix}")
    store.ensure_bucket(f"assets-{suffix}")
    seed_sample_catalog(store, catalog)
    # One broken product beside the good ones: it is quarantined, the run goes on.
    store.put(f"{catalog}/products/broken-mug/image.png", b"this is not a png", content_type="image/png")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    monkeypatch.setenv("STYLEMATRIX_CATALOG", catalog)
    monkeypatch.setenv("STYLEMATRIX_ASSETS", assets)
    monkeypatch.setenv("STYLEMATRIX_MODEL_CACHE", str(tmp_path_factory.getbasetemp() / "models"))
    monkeypatch.setenv("STYLEMATRIX_DEVICE", "cpu")
    get_settings.cache_clear()
    yield {"catalog": catalog, "assets": assets}
    get_settings.cache_clear()


def small_campaign(folder: Path, name: str, seed: int) -> Path:
    """A campaign file of one style set and one seed at 64 px, 2 steps: one image per product."""
    spec = folder / f"{name}.yaml"
    spec.write_text(f"name: {name}\nstyles: {{ids: [space-age]}}\n"
                    f"matrix: {{template: '{{product}} on sand', seeds: [{seed}]}}\n"
                    "generation: {profile: tiny, width: 64, height: 64, steps: 2}\n")
    return spec
