"""Parquet to and from bytes in memory, with no reader left running after the call returns.

pyarrow's default reader (`pq.read_table`) scans on its thread pool and may drop its last
reference to the input a moment after returning. If the input is a Python object (``bytes``,
``io.BytesIO``), that release needs the interpreter, and a short command that exits at that
moment aborts with "terminate called without an active exception". Reading through
`ParquetFile` with ``use_threads=False`` decodes in the calling thread and is done when it returns;
the tables read here are small (a catalog snapshot, one run's rows), so nothing is lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.tables import Column

# The column types that `tasks.tables` and `tasks.snapshot_tables` write down, in Arrow.
ARROW_TYPES = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "list<string>": pa.list_(pa.string()),
    "list<float32>": pa.list_(pa.float32()),
    "map<string,string>": pa.map_(pa.string(), pa.string()),
}


def arrow_schema(columns: Iterable[Column]) -> pa.Schema:
    """The parquet schema of a table from its column list."""
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.type]) for c in columns])


def read_parquet_bytes(data: bytes, columns: Sequence[str] | None = None) -> pa.Table:
    """A parquet file's table (only `columns`, where named)."""
    with pq.ParquetFile(pa.BufferReader(data)) as file:
        return file.read(columns=list(columns) if columns is not None else None, use_threads=False)


def parquet_row_count(data: bytes) -> int:
    with pq.ParquetFile(pa.BufferReader(data)) as file:
        return file.metadata.num_rows


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()
