"""Settings, read once from the environment. The only module that reads `os.environ`.

Every variable is `STYLEMATRIX_<FIELD>`, except the S3 endpoint, which follows the AWS
convention (`AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`) so that boto3, pyarrow and
Prefect blocks all talk to the same server.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from catalogs.uris import check_prefix

# A flow run's process sends a Prefect heartbeat this often while it runs (PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
# set on workers; Prefect 3.9 never sends them more often: flow_engine.MINIMUM_HEARTBEAT_INTERVAL).
FLOW_HEARTBEAT_SECONDS = 30


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STYLEMATRIX_", extra="ignore", frozen=True, populate_by_name=True)

    catalog: str = "s3://stylematrix-catalog"
    assets: str = "s3://stylematrix-assets"
    profile: str = "tiny"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    model_cache: Path = Path.home() / ".cache" / "stylematrix" / "models"
    out_dir: Path = Path("out")
    # Scale-out: with shard workers on, shards are handed to the GPU task workers
    # (flows/gpu_worker.py, which keep their engine loaded); off, they run in the campaign's own process.
    shard_workers: bool = False
    # A worker beats every `shard_heartbeat_seconds` while it runs a shard; a shard whose beat has not
    # moved for `shard_lease_seconds` is presumed lost with its worker and is handed out again.
    shard_heartbeat_seconds: float = Field(default=5.0, gt=0)
    shard_lease_seconds: float = Field(default=60.0, gt=0)
    # A fleet: a campaign waits this long for a GPU worker on its code version before it fails saying which it
    # needs; a handed-out shard left SCHEDULED this long while a worker is free (the server restarted and forgot
    # it) is handed out again (flows/fleet.py).
    worker_wait_seconds: float = Field(default=60.0, gt=0)
    shard_forgotten_seconds: float = Field(default=10.0, gt=0)
    # How long a campaign keeps handing out shards while the Prefect API cannot be reached (a server restart).
    api_outage_seconds: float = Field(default=300.0, gt=0)
    # The Prefect server's database (a fleet: PostgreSQL). Unset, `stylematrix serve` creates and runs a
    # PostgreSQL cluster of its own under its home folder (adapters/infra/postgres.py).
    prefect_database_url: str | None = Field(default=None, validation_alias=AliasChoices(
        "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"), repr=False)
    # The code version workers and campaigns compare (adapters/infra/code_version.py); unset: the git commit.
    code_version: str | None = None
    images_per_shard: int = Field(default=64, ge=1)
    shard_attempts: int = Field(default=3, ge=1)
    shard_poll_seconds: float = Field(default=2.0, gt=0)
    # A running flow run silent for this long after a heartbeat is marked Crashed by the server automation
    # `crash-silent-flow-runs` (flows/zombies.py); runs that wait on purpose (suspended, paused, scheduled) are not.
    zombie_seconds: float = Field(default=75.0, gt=FLOW_HEARTBEAT_SECONDS)
    # Shards handed to the pool at once: each poll reads the states (and beats) of these, whatever the run's size.
    shards_in_flight: int = Field(default=64, ge=1)
    # A campaign whose review is required starts this deployment (prefect.yaml: `review`) after it commits.
    review_deployment: str = "review-run/review"
    # A run's claim on an asset (adapters/steps/claims.py) older than this, never committed, is presumed abandoned:
    # another run takes the asset over. Longer than a batch takes, shorter than you would wait for a dead run.
    claim_lease_seconds: float = Field(default=900.0, gt=0)
    worker_name: str = Field(default_factory=socket.gethostname)
    # The `sim` profile's simulated GPU: seconds per image (a run may set its own, `RunRequest.sim_seconds`).
    sim_seconds_per_image: float = Field(default=0.0, ge=0)
    s3_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "STYLEMATRIX_S3_ENDPOINT"),
    )
    # S3 under load: calls that meet throttling or dropped connections are retried this many
    # times in all, with full-jitter backoff capped at this many seconds (adapters/infra/storage.RetryPolicy).
    s3_retry_attempts: int = Field(default=30, ge=1)
    s3_retry_cap_seconds: float = Field(default=8.0, gt=0)
    s3_region: str = Field(
        default="us-east-1", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION", "STYLEMATRIX_S3_REGION")
    )

    @field_validator("catalog", "assets")
    @classmethod
    def _s3_uri(cls, value: str, info: ValidationInfo) -> str:
        # The one check every root URI passes (catalogs/uris.py): no `.`, `..` or empty segment in the prefix.
        return check_prefix(value, f"STYLEMATRIX_{info.field_name.upper()}")

    def catalog_uri(self, given: str | None = None) -> str:
        """The catalog a request or command names, else this setting's, without a trailing `/`.

        The one place a catalog URI is normalised: one catalog has one URI however it was written, so
        its events' resource id (flows/catalog.catalog_resource) and its snapshots are the same.
        """
        return (given or self.catalog).rstrip("/")

    @model_validator(mode="after")
    def _lease_outlasts_beats(self) -> Settings:
        if self.shard_lease_seconds < 2 * self.shard_heartbeat_seconds:
            raise ValueError(f"STYLEMATRIX_SHARD_LEASE_SECONDS ({self.shard_lease_seconds:g}) must be at least two "
                             f"heartbeats (STYLEMATRIX_SHARD_HEARTBEAT_SECONDS={self.shard_heartbeat_seconds:g}): "
                             "a live worker would be taken for dead")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()


# Environment for the libraries we embed: telemetry off (it errors without network and
# races on a fresh ephemeral database). Without a Prefect server, each command starts a
# temporary one; on a new PREFECT_HOME it first creates and migrates its SQLite database,
# which takes about 20 s on two cores: Prefect's own 20 s wait is too short for that.
EPHEMERAL_STARTUP_TIMEOUT_S = 180
_RUNTIME_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(EPHEMERAL_STARTUP_TIMEOUT_S),
    # Warnings of adapters/ (a score left null, a scorer that failed) reach the flow run's log in Prefect.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "adapters",
    # ... and outside a flow run (a unit test, a bench) they stay local log lines, without a warning.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def prepare_runtime_env() -> None:
    """Set defaults for embedded libraries, keeping anything the user set.

    Call it before Prefect is imported: Prefect reads its settings once, at import.
    """
    for key, value in _RUNTIME_DEFAULTS.items():
        os.environ.setdefault(key, value)


def export_s3_endpoint(endpoint: str, *, access_key: str = "stylematrix", secret_key: str = "stylematrix") -> None:
    """Point every S3 client in this process (boto3, pyarrow, Prefect) at `endpoint`.

    Used for the embedded server; credentials are dummies that only it accepts.
    """
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    os.environ.setdefault("AWS_ACCESS_KEY_ID", access_key)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", secret_key)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    get_settings.cache_clear()


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus `extra`: for the servers and workers it starts."""
    return {**os.environ, **(extra or {})}
