"""Parquet to and from bytes in memory, with no reader left running after the call returns.

pyarrow's default reader (`pq.read_table`) scans on its thread pool and may drop its last
reference to the input a moment after returning. If the input is a Python object (``bytes``,
``io.BytesIO``), that release needs the interpreter, and a short command that exits at that
moment aborts with "terminate called without an active exception". Reading through
`ParquetFile` with ``use_threads=False`` decodes in the calling thread and is done when it returns;
the tables read here are small (a catalog snapshot, one run's rows), so nothing is lost.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq


def read_parquet_bytes(data: bytes) -> pa.Table:
    with pq.ParquetFile(pa.BufferReader(data)) as file:
        return file.read(use_threads=False)


def parquet_row_count(data: bytes) -> int:
    with pq.ParquetFile(pa.BufferReader(data)) as file:
        return file.metadata.num_rows


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()
