"""The published tables as the data team reads them: DuckDB over the Hive-partitioned parts of a run."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from adapters import publish
from catalogs.models import RunRequest
from tasks.tables import SCHEMA_VERSION
from tests.helpers import ROOT

duckdb = pytest.importorskip("duckdb")


def test_column_docs_name_every_value_the_code_writes():
    from typing import get_args

    from catalogs import load_profiles
    from catalogs.models import OPTIONAL_KEY
    from tasks.canny import canvas_kinds
    from tasks.tables import CELL_METRICS, GENERATIONS, RUNS

    doc = {c.name: c.doc for c in RUNS}
    assert all(value in doc["triggered_by"] for value in get_args(RunRequest.model_fields["triggered_by"].annotation))
    assert f"`{OPTIONAL_KEY}`" in {c.name: c.doc for c in CELL_METRICS}["cell"]
    assert "first ControlNet" in {c.name: c.doc for c in GENERATIONS}["control_key"]
    # The manifest's `controls` holds every canvas image a batch of any shipped profile and mode needs.
    page = (ROOT / "docs" / "metadata-tables.md").read_text()
    (controls,) = [line for line in page.splitlines() if line.startswith("| `controls` |")]
    kinds = {k for p in load_profiles().values() for mode in ("ip_adapter", "img2img", "preserve")
             for k in canvas_kinds({"mode": mode}, p.control_types, p.adapter_images)}
    assert kinds >= {"canny", "depth", "canvas", "keep"}
    assert all(k in controls for k in kinds), sorted(k for k in kinds if k not in controls)

CAMPAIGN = """
name: duck
products: {ids: [rocket, brand-logo]}
styles: {ids: [space-age]}
matrix:
  template: "{product} on {surface}"
  axes: {surface: [sand, marble]}
  seeds: [1, 2, 3]
generation: {profile: tiny, width: 64, height: 64, steps: 2, batch_size: 6}
selection:
  top_k: 2
  gates: ["clipped_share <= 0.9"]
  weights: {sharpness: 1.0, clip_text: 1.0}
  duplicate_distance: 0
"""

TOP_PER_PRODUCT = """
SELECT g.product_id, g.rank_in_product AS rank, g.cell['surface'] AS surface, g.seed,
       round(g.score, 3) AS score, round(g.edge_f1, 3) AS edge_f1, round(g.clip_text, 3) AS clip_text,
       c.diversity, r.images_selected, g.run_date
FROM read_parquet('{root}/generations/*/*.parquet', hive_partitioning = true) g
JOIN read_parquet('{root}/cell_metrics/*/*.parquet', hive_partitioning = true) c
  USING (run_id, product_id, style_id, cell_index)
JOIN read_parquet('{root}/runs/*/*.parquet', hive_partitioning = true) r USING (run_id)
WHERE g.selected
ORDER BY g.product_id, rank
"""


def test_duckdb_reads_the_published_tables_of_a_run(campaign_env, store, tmp_path):
    from flows.campaign import run_campaign

    spec = tmp_path / "duck.yaml"
    spec.write_text(CAMPAIGN)
    # Overrides that repeat the campaign's own choices: the run is the same, the request is recorded.
    summary = run_campaign(RunRequest(campaign=str(spec), products=("rocket", "brand-logo"), seeds=(1, 2, 3),
                                      triggered_by="test"))
    manifest = json.loads(store.get(summary.manifest))
    assert {p["table"] for p in manifest["parts"]} == {"generations", "cell_metrics", "runs"}

    local = publish.copy_run(store, campaign_env["assets"], summary.run_id, tmp_path / "out")
    root = local / "tables"
    db = duckdb.connect()
    top = db.execute(TOP_PER_PRODUCT.format(root=root)).fetchall()
    print(TOP_PER_PRODUCT.format(root="out/<run_id>/tables"), *top, sep="\n")

    # Two selected images per product, ranked 1 and 2, the run's date as the partition column.
    assert [(row[0], row[1]) for row in top] == [("brand-logo", 1), ("brand-logo", 2), ("rocket", 1), ("rocket", 2)]
    today = datetime.now(UTC).date()
    assert {row[-1] for row in top} in ({today}, {str(today)})
    assert {row[-2] for row in top} == {4}  # runs.images_selected
    assert all(row[2] in {"sand", "marble"} and 0 <= row[4] <= 1 for row in top)

    # Every image has its scores and an outcome; the tiny model barely hears the surface word, so
    # some cells repeat another's background exactly: those fold into the better image as duplicates.
    counts = db.execute(f"""
        SELECT count(*), count(edge_f1), count(sharpness), count(clip_text), count(DISTINCT clip_model),
               count(*) FILTER (WHERE status IN ('ok', 'duplicate')), sum(selected::INT)
        FROM read_parquet('{root}/generations/*/*.parquet', hive_partitioning = true)""").fetchone()
    assert counts == (12, 12, 12, 12, 1, 12, 4)
    repeats = db.execute(f"""
        WITH g AS (SELECT * FROM read_parquet('{root}/generations/*/*.parquet', hive_partitioning = true))
        SELECT d.asset_id, k.status, d.product_id = k.product_id, d.background_hash = k.background_hash
        FROM g d JOIN g k ON d.duplicate_of = k.asset_id WHERE d.status = 'duplicate'""").fetchall()
    assert all(r[1:] == ("ok", True, True) for r in repeats)
    cells = db.execute(f"""
        SELECT product_id, cell_index, images, ok + duplicates, selected, duplicate_rate, duplicates
        FROM read_parquet('{root}/cell_metrics/*/*.parquet', hive_partitioning = true) ORDER BY ALL""").fetchall()
    assert [c[:4] for c in cells] == [("brand-logo", 0, 3, 3), ("brand-logo", 1, 3, 3), ("rocket", 0, 3, 3), ("rocket", 1, 3, 3)]
    assert sum(c[4] for c in cells) == 4 and sum(c[6] for c in cells) == len(repeats)
    assert all(c[5] == pytest.approx(c[6] / 3) for c in cells)
    # The parts are exactly the manifest's: same bytes as in the bucket.
    for part in manifest["parts"]:
        path = root / part["uri"].removeprefix(f"{campaign_env['assets']}/tables/")
        assert path.read_bytes() == store.get(part["uri"])

    # What the run was asked for and what it ran with, queryable from the runs table.
    asked = db.execute(f"""
        SELECT triggered_by, schema_version,
               json_extract(parameters, '$.request.products')::VARCHAR[],
               json_extract(parameters, '$.request.seeds')::INT[],
               json_extract_string(parameters, '$.request.profile'),
               json_extract_string(parameters, '$.generation.profile'),
               json_extract(parameters, '$.generation.steps')::INT,
               json_extract(parameters, '$.generation.width')::INT,
               json_extract(parameters, '$.matrix.seeds')::INT[],
               json_extract(parameters, '$.matrix.axes.surface')::VARCHAR[],
               json_extract(parameters, '$.selection.top_k')::INT,
               json_extract(parameters, '$.styles')::VARCHAR[]
        FROM read_parquet('{root}/runs/*/*.parquet', hive_partitioning = true)""").fetchall()
    assert asked == [("test", SCHEMA_VERSION, ["rocket", "brand-logo"], [1, 2, 3], None, "tiny", 2, 64, [1, 2, 3],
                      ["sand", "marble"], 2, ["space-age"])]
