"""Parquet in memory: tables round-trip, and a short process that reads one exits cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest

from adapters.infra.parquet_io import parquet_bytes, parquet_row_count, read_parquet_bytes
from tests.helpers import ROOT


def test_round_trip_keeps_rows_types_and_count():
    table = pa.table({"id": ["a", "b", "c"], "score": [0.5, None, 1.0],
                      "tags": [["x"], [], ["y", "z"]]})
    data = parquet_bytes(table)
    assert data[:4] == b"PAR1"
    assert parquet_row_count(data) == 3
    back = read_parquet_bytes(data)
    assert back.schema == table.schema
    assert back.to_pylist() == table.to_pylist()


# A command such as `stylematrix catalog ls` reads a snapshot and exits at once. pyarrow's
# threaded reader could still be releasing the input bytes on a worker thread while the
# interpreter shut down, which aborted the process ("terminate called without an active
# exception", exit -6) about one time in three in this script.
_SHORT_COMMAND = """
import pyarrow as pa
from adapters.infra.parquet_io import parquet_bytes, read_parquet_bytes
data = parquet_bytes(pa.table({"a": list(range(50)), "b": [str(i) for i in range(50)]}))
for _ in range(3):
    assert len(read_parquet_bytes(data).to_pylist()) == 50
"""


@pytest.mark.slow  # 16 short processes
def test_a_process_that_reads_parquet_and_exits_does_not_abort():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def once(_: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _SHORT_COMMAND], env=env, capture_output=True, text=True,
                              timeout=120)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(once, range(16)))
    failed = [(r.returncode, r.stderr[-300:]) for r in results if r.returncode != 0]
    assert not failed, failed
