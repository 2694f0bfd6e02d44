"""A run's rows held as columns (tasks/rows.py): read from its parts a few at a time, they read as the dicts the
run's code was written against, selection and the commit give what they gave on dicts, and they hold a fraction
of the dicts' memory."""

from __future__ import annotations

import math
import tracemalloc
from datetime import date

import numpy as np
import pyarrow as pa
import pytest

from adapters.infra import lake
from adapters.infra.parquet_io import arrow_schema
from adapters.steps import publish, run_outputs
from catalogs.models import Selection
from tasks.rows import Rows, compact
from tasks.select import OUTCOME, select_images
from tasks.tables import TABLES, to_frame
from tasks.values import is_missing

COLUMNS = [c.name for c in TABLES["generations"]]


def generations(n: int, products: int = 3) -> list[dict]:
    """`n` `generations` rows as a shard writes them: scores and looks set, outcome columns empty, some nulls."""
    rows = []
    for i in range(n):
        row = dict.fromkeys(COLUMNS)
        row.update(
            schema_version=3, asset_id=f"{i:064x}", run_id="spring-run", campaign="spring",
            product_id=f"p{i % products}", style_id=f"s{i // products % 2}", cell_index=i % 4,
            cell=[("surface", f"v{i % 4}"), ("light", "soft")], prompt="a mug on marble, soft light",
            seed=i, mode="ip_adapter", width=64, height=64, steps=2, guidance=5.0,
            control_scales=[("canny", "0.8")], reference_keys=["s3://cat/styles/a.jpg"],
            output_key=f"s3://assets/runs/2026-12-07/spring-run/images/{i:064x}.png", sha256=f"{i:064x}",
            made_by_run="spring-run", status="failed" if i % 17 == 0 else "ok",
            status_reason="cannot decode" if i % 17 == 0 else None,
            edge_f1=None if i % 17 == 0 else (i * 37 % 100) / 100, clip_text=None,
            sharpness=float(i * 13 % 500), luminance=(i * 7 % 100) / 100,
            background_hash=f"{(0x9E3779B97F4A7C15 * (i + 1)) % 2**64:016x}",
            clip_embedding=[float((i * k) % 7) for k in range(8)],
            background_palette=["#ffffff 0.6", "#336699 0.4"], background_lightness=60.0 + i % 9,
            background_cct=5000.0 + 10 * (i % 5), gates_failed=[], selected=False)
        rows.append(row)
    return rows


def arrow_of(rows: list[dict]) -> pa.Table:
    schema = arrow_schema(TABLES["generations"])
    return pa.Table.from_pandas(to_frame("generations", rows), schema=schema, preserve_index=False)


def same(a: object, b: object) -> bool:
    if is_missing(a) and is_missing(b):  # pandas gives NaN for some missing strings; both read as missing
        return True
    a, b = (v.tolist() if hasattr(v, "tolist") else v for v in (a, b))  # list columns as arrays, as pandas gives them
    return a == b or (isinstance(a, list) and isinstance(b, list) and list(map(tuple, a)) == list(map(tuple, b)))


@pytest.mark.parametrize("compacted", [False, True], ids=["plain", "compacted"])
def test_a_row_reads_as_pandas_hands_the_same_row_back(compacted):
    table = arrow_of(generations(40))
    expected = table.to_pandas().to_dict("records")
    rows = Rows(compact(table) if compacted else table)
    assert len(rows) == 40 and list(rows[3]) == COLUMNS
    for want, got in zip(expected, rows, strict=True):
        for name in COLUMNS:
            if name == "created_at":
                continue  # pandas gives a Timestamp, Arrow a datetime: both the same instant
            assert same(want[name], got[name]), (name, want[name], got[name])
    assert math.isnan(rows[0]["edge_f1"]) and rows[0]["status_reason"] == "cannot decode"
    assert math.isnan(rows[0]["rank_in_cell"])  # an integer column with a missing value reads as floats, as in pandas
    assert rows[-1]["asset_id"] == f"{39:064x}" and rows[2:4][1]["seed"] == 3
    assert rows[1].get("no such column", "default") == "default" and "seed" in rows[1]
    assert rows[5] == rows[5] and rows[5] != rows[6] and len({rows[5], rows[5], rows[6]}) == 2  # a row is itself
    with pytest.raises(KeyError):
        rows[1]["no such column"]
    with pytest.raises(IndexError):
        rows[40]


def test_repeated_values_are_one_object_for_every_row():
    rows = Rows(arrow_of(generations(30)))
    assert rows[0]["prompt"] is rows[29]["prompt"]
    assert rows[0]["cell"] is rows[4]["cell"]  # the same matrix cell
    assert rows[0]["background_palette"] is rows[7]["background_palette"]


def test_outcome_columns_replace_the_staged_ones_in_the_tables_types():
    rows = Rows(compact(arrow_of(generations(40))[:10]))
    _ = rows[0]["prompt"]  # a column already read is kept
    scored = rows.with_columns({"score": [i / 10 for i in range(10)], "selected": [i < 3 for i in range(10)],
                                "gates_failed": [["edge_f1 >= 0.3"]] * 10, "status": ["gated"] * 10})
    assert pa.types.is_dictionary(scored.table.schema.field("status").type)  # stored once per value, as it was
    assert scored.table.schema == rows.table.schema
    assert scored[2]["score"] == 0.2 and scored[2]["selected"] and not scored[5]["selected"]
    assert scored[9]["gates_failed"] == ["edge_f1 >= 0.3"] and scored[9]["prompt"] == rows[9]["prompt"]
    assert scored[4]["status"] == "gated" and rows[4]["status"] == "ok"
    assert rows[2]["selected"] is False  # the rows it was made from are unchanged
    with pytest.raises(ValueError, match="column 'score': 3 values for 10 rows"):
        rows.with_columns({"score": [1.0, 2.0, 3.0]})


def test_selection_on_columns_gives_every_outcome_it_gives_on_dicts():
    dicts = generations(120)
    selection = Selection(gates=("sharpness >= 40",), weights={"edge_f1": 1.0, "sharpness": 0.5, "luminance": 0.2},
                          top_k=3, duplicate_distance=4)
    on_dicts = select_images(arrow_of(dicts).to_pandas().to_dict("records"), selection)
    on_columns = select_images(Rows(arrow_of(dicts)), selection)
    assert any(o["selected"] for o in on_columns) and any(o["status"] == "gated" for o in on_columns)
    for want, got in zip(on_dicts, on_columns, strict=True):
        assert {k: want[k] for k in OUTCOME if k in want}.keys() == {k: got[k] for k in OUTCOME if k in got}.keys()
        for k in want:
            assert same(want[k], got[k]), (k, want[k], got[k])


def test_the_commit_takes_columns_as_they_are_and_writes_what_dicts_would(monkeypatch):
    monkeypatch.setattr(lake, "BATCH_ROWS", 7)  # cast and written in four batches
    dicts = generations(25)
    day = date(2026, 12, 7)
    from_dicts = lake.arrow_rows("generations", dicts, day)
    compacted = compact(arrow_of(dicts))
    for name in ("prompt", "run_id", "made_by_run"):  # they repeat: each value stored once
        assert compacted.column(name).nbytes < arrow_of(dicts).column(name).nbytes / 2
    assert not pa.types.is_dictionary(compacted.schema.field("asset_id").type)  # every value differs: kept plain
    for rows in (Rows(arrow_of(dicts)), Rows(compacted)):
        from_columns = lake.in_batches(lake.arrow_rows("generations", rows, day), from_dicts.schema).read_all()
        assert from_columns.schema == from_dicts.schema
        assert from_columns.equals(from_dicts)


def test_a_runs_rows_hold_a_fraction_of_the_memory_of_dicts():
    table = compact(arrow_of(generations(2000)))
    tracemalloc.start()
    try:
        dicts = table.to_pandas().to_dict("records")
        as_dicts = tracemalloc.get_traced_memory()[0]
        del dicts
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        rows = Rows(table)
        for name in COLUMNS:  # every column read, as the gallery and selection together read most of them
            rows.column(name)
        as_columns = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert as_columns < as_dicts / 2, (as_columns, as_dicts)


class PartsStore:
    """Staged parts in memory, by URI: what `select_run` reads."""

    def __init__(self, parts: dict[str, bytes]) -> None:
        self.parts = parts

    def get(self, uri: str) -> bytes:
        return self.parts[uri]


def test_a_runs_rows_are_read_from_its_parts_a_few_at_a_time_in_order_and_only_those_it_owns(monkeypatch):
    monkeypatch.setattr(publish, "STAGED_CHUNK", 2)  # five parts joined in three chunks
    dicts = generations(50)
    store = PartsStore({f"s3://a/part-{i}.parquet": publish.table_bytes("generations", dicts[i * 10:(i + 1) * 10])
                        for i in range(5)})
    parts = [{"table": "generations", "uri": uri} for uri in store.parts]
    owned = [d["asset_id"] for d in dicts if d["seed"] % 5]  # another run took every fifth image over
    selection = Selection(weights={"edge_f1": 1.0, "sharpness": 0.5}, top_k=2)
    rows = run_outputs.select_run(store, parts, selection, owned)
    assert [r["asset_id"] for r in rows] == owned
    mine = [d for d in dicts if d["seed"] % 5]
    expected = select_images(arrow_of(mine).to_pandas().to_dict("records"), selection)
    assert [r["selected"] for r in rows] == [o["selected"] for o in expected]
    assert [r["rank_in_product"] for r in rows if r["selected"]] == [o["rank_in_product"] for o in expected if o["selected"]]
    assert sum(r["selected"] for r in rows) == 2 * 3  # top 2 of each of three products


def test_looks_read_from_a_runs_columns_are_the_looks_of_its_rows_without_an_object_per_image():
    from tasks.consistency import look_of, looks_of, parse_palette

    dicts = generations(60)
    for i, d in enumerate(dicts):
        d["background_palette"] = [f"#{i * 40503 % 0xFFFFFF:06X} 3", f"#{i * 7919 % 0xFFFFFF:06x} 1"] if i % 11 else None
        if i % 3 == 0:  # stored at unit length, as the scorer stores it
            d["clip_embedding"] = [0.6, 0.8] + [0.0] * 6
        if i % 13 == 0:
            d["background_lightness"] = None
    rows = Rows(compact(arrow_of(dicts)))
    failed = [d["status"] == "failed" for d in dicts]
    from_columns, from_dicts = looks_of(rows, skip=failed), looks_of(dicts, skip=failed)
    assert len(from_columns) == len(from_dicts) == 60
    for i, (a, b, d) in enumerate(zip(from_columns, from_dicts, dicts, strict=True)):
        alone = look_of({} if failed[i] else d)  # one row alone: what scoring stored, read back
        for look in (a, b):
            assert (look.palette is None) == (alone.palette is None) and (look.embedding is None) == (alone.embedding is None)
            assert look.lightness == (None if failed[i] else d["background_lightness"])
            assert look.mired == (None if failed[i] else 1e6 / d["background_cct"])
            if alone.palette is not None:
                lab, shares = parse_palette(d["background_palette"])
                assert np.allclose(look.palette, lab) and np.allclose(look.weights, shares / shares.sum())
            if alone.embedding is not None:
                expected = np.asarray(d["clip_embedding"], dtype=np.float64)
                assert np.allclose(look.embedding, expected / np.linalg.norm(expected), atol=1e-6)
        assert a.empty == failed[i]
    # A unit embedding is read in place: the looks' embeddings are views into the column, not copies.
    unit = [from_columns[i].embedding for i in range(3, 60, 3) if not failed[i]]
    assert all(e.base is not None and e.base is unit[0].base for e in unit)
    with pytest.raises(ValueError, match="palette entry 'teal 0.5' is not '#rrggbb share'"):
        looks_of(Rows(arrow_of([{**dicts[1], "background_palette": ["#ffffff 1", "teal 0.5"]}])))


def test_a_list_column_sliced_out_of_a_larger_one_reads_its_own_rows():
    from tasks.rows import list_layout, python_values

    lists = [[float(i), 1.0] if i % 4 else None for i in range(30)]
    sliced = pa.array(lists, pa.list_(pa.float32())).slice(10, 12)  # offsets start mid-values
    values, offsets = list_layout(sliced)
    assert [values.slice(offsets[i], offsets[i + 1] - offsets[i]).to_pylist() for i in range(12)] == \
        [v or [] for v in lists[10:22]]
    assert [None if v is None else v.tolist() for v in python_values(sliced)] == lists[10:22]


def test_rows_outcomes_and_looks_index_slice_and_iterate_alike():
    from tasks.consistency import looks_of
    from tasks.rows import Columns

    rows = Rows(arrow_of(generations(5)))
    outcomes = Columns(5, {"status": "ok", "score": None})
    for i in range(5):
        outcomes.set(i, score=float(i))
    looks = looks_of(rows)
    for items, read in ((rows, lambda r: r["seed"]), (outcomes, lambda o: o["score"]),
                        (looks, lambda lk: lk.lightness)):
        every = [read(x) for x in items]
        assert len(every) == 5 and read(items[-1]) == every[4] and read(items[-5]) == every[0]
        assert [read(x) for x in items[1:4]] == every[1:4] and [read(x) for x in items[::-2]] == every[::-2]
        with pytest.raises(IndexError):
            items[5]
        with pytest.raises(IndexError):
            items[-6]
    assert [o["score"] for o in outcomes] == [0.0, 1.0, 2.0, 3.0, 4.0]
