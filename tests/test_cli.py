"""The `stylematrix` command: one clear line for user errors, and the demo end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from adapters.infra.local_s3 import free_port
from tests.helpers import ROOT, run_cli


@pytest.mark.slow
def test_bad_campaign_file_is_one_line_not_a_traceback(s3_server, store, fresh_bucket, tmp_path):
    bad = tmp_path / "spring.yaml"
    bad.write_text("name: spring\nmatrix: {template: '{product} on {surface}', axes: {surface: []}}\n")
    env = {"AWS_ENDPOINT_URL_S3": s3_server.endpoint, "STYLEMATRIX_CATALOG": f"s3://{fresh_bucket}",
           "STYLEMATRIX_ASSETS": f"s3://{fresh_bucket}/assets"}
    result = run_cli(["run", "--campaign", str(bad)], env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"stylematrix: error: {bad}: campaign 'spring': matrix.axes: Value error, axis 'surface' is empty"]
    assert "Traceback" not in result.stdout + result.stderr

    missing = run_cli(["run", "--campaign", str(tmp_path / "nope.yaml")], env, tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "nope.yaml" in missing.stderr and "not found" in missing.stderr


def test_unreachable_endpoint_is_one_line(tmp_path):
    port = free_port()  # nothing listens there
    env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    result = run_cli(["run", "--campaign", "sample"], env, tmp_path, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stylematrix: error: cannot reach S3 endpoint http://127.0.0.1:{port}")


@pytest.mark.parametrize(("user_value", "expected"), [(None, 180), ("45", 45)])
def test_commands_wait_long_enough_for_a_new_ephemeral_prefect_database(user_value, expected):
    # A first command on a new PREFECT_HOME migrates a fresh SQLite database before Prefect's
    # temporary server answers: about 20 s on two cores, Prefect's own default wait.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", None)
    if user_value is not None:
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = user_value
    script = ("import flows.cli\n"
              "from prefect.settings import get_current_settings\n"
              "print(get_current_settings().server.ephemeral.startup_timeout_seconds)\n")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) == expected


@pytest.mark.slow
@pytest.mark.early("demo_run")
def test_demo_runs_the_sample_campaign_and_mirrors_it(demo_run):
    command, tmp_path = demo_run  # started with the session (tests/conftest.py), in a folder of its own
    result = command.result()
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "64 images generated" in out and "batch 8/8 done" in result.stdout + result.stderr
    assert "embedded S3 server stopped" in out
    latest = tmp_path / "out" / "latest"
    assert len(list((latest / "images").glob("*.png"))) == 64
    assert pq.read_table(latest / "generations.parquet").num_rows == 64
    assert (latest / "_MANIFEST.json").is_file() and (latest / "index.html").is_file()


@pytest.mark.parametrize(("args", "uri", "bad"), [
    (["run", "--campaign", "sample", "--assets", "s3://{bucket}/../x"], "assets URI 's3://{bucket}/../x'", "'..'"),
    (["run", "--campaign", "sample", "--catalog", "s3://{bucket}/./c"], "catalog URI 's3://{bucket}/./c'", "'.'"),
    (["gc", "--assets", "s3://{bucket}/a//b"], "assets URI 's3://{bucket}/a//b'", "empty segment"),
    (["tables", "query", "SELECT 1", "--assets", "s3://{bucket}/.."], "assets URI 's3://{bucket}/..'", "'..'"),
])
def test_a_root_that_climbs_out_of_its_prefix_is_refused_before_anything_runs(args, uri, bad, s3_server, store,
                                                                             fresh_bucket, tmp_path):
    env = {"AWS_ENDPOINT_URL_S3": s3_server.endpoint, "STYLEMATRIX_CATALOG": f"s3://{fresh_bucket}/catalog",
           "STYLEMATRIX_ASSETS": f"s3://{fresh_bucket}/assets"}
    result = run_cli([a.format(bucket=fresh_bucket) for a in args], env, tmp_path, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"stylematrix: error: {uri.format(bucket=fresh_bucket)}: ") and bad in line, line
    assert store.list(f"s3://{fresh_bucket}/") == []  # nothing written, under any key
