"""The published tables as the data team reads them: DuckDB over the Hive-partitioned parts of a run."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from adapters.steps import publish
from catalogs.models import RunRequest
from tasks.layout import AssetsLayout
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
FROM generations g
JOIN cell_metrics c USING (run_id, product_id, style_id, cell_index)
JOIN runs r USING (run_id)
WHERE g.selected
ORDER BY g.product_id, rank
"""


def doc_queries() -> list[str]:
    """The statements of the first SQL block of the docs' "Querying" section."""
    page = (ROOT / "docs" / "metadata-tables.md").read_text()
    block = page.split("## Querying", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    return [q.strip() for q in block.split(";") if q.strip()]


def test_duckdb_reads_the_published_tables_of_a_run(campaign_env, store, tmp_path):
    from deltalake import DeltaTable
    from typer.testing import CliRunner

    from adapters.infra import lake
    from adapters.steps import lake_ops
    from flows.campaign import run_campaign
    from flows.cli import app

    spec = tmp_path / "duck.yaml"
    spec.write_text(CAMPAIGN)
    # Overrides that repeat the campaign's own choices: the run is the same, the request is recorded.
    summary = run_campaign(RunRequest(campaign=str(spec), products=("rocket", "brand-logo"), seeds=(1, 2, 3),
                                      triggered_by="test"))
    manifest = json.loads(store.get(summary.manifest))
    assert {t["table"]: t["rows"] for t in manifest["tables"]} == {"generations": 12, "cell_metrics": 4, "finishes": 0,
                                                                   "runs": 1}
    tables = lake.Lake.of(store, AssetsLayout.at(campaign_env["assets"]))

    def sql(text: str) -> list[tuple]:
        return lake_ops.query(tables, text).rows

    top = sql(TOP_PER_PRODUCT)
    # Two selected images per product, ranked 1 and 2, the run's date as the partition column.
    assert [(row[0], row[1]) for row in top] == [("brand-logo", 1), ("brand-logo", 2), ("rocket", 1), ("rocket", 2)]
    assert {row[-1] for row in top} == {datetime.now(UTC).date()}
    assert {row[-2] for row in top} == {4}  # runs.images_selected
    assert all(row[2] in {"sand", "marble"} and 0 <= row[4] <= 1 for row in top)

    # Every image has its scores and an outcome; the tiny model barely hears the surface word, so
    # some cells repeat another's background exactly: those fold into the better image as duplicates.
    counts = sql("""
        SELECT count(*), count(edge_f1), count(sharpness), count(clip_text), count(DISTINCT clip_model),
               count(*) FILTER (WHERE status IN ('ok', 'duplicate')), sum(selected::INT) FROM generations""")
    assert counts == [(12, 12, 12, 12, 1, 12, 4)]
    repeats = sql("""
        SELECT d.asset_id, k.status, d.product_id = k.product_id, d.background_hash = k.background_hash
        FROM generations d JOIN generations k ON d.duplicate_of = k.asset_id WHERE d.status = 'duplicate'""")
    assert all(r[1:] == ("ok", True, True) for r in repeats)
    cells = sql("SELECT product_id, cell_index, images, ok + duplicates, selected, duplicate_rate, duplicates "
                "FROM cell_metrics ORDER BY ALL")
    assert [c[:4] for c in cells] == [("brand-logo", 0, 3, 3), ("brand-logo", 1, 3, 3), ("rocket", 0, 3, 3), ("rocket", 1, 3, 3)]
    assert sum(c[4] for c in cells) == 4 and sum(c[6] for c in cells) == len(repeats)
    assert all(c[5] == pytest.approx(c[6] / 3) for c in cells)

    # What the run was asked for and what it ran with, queryable from the runs table.
    asked = sql("""
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
        FROM runs""")
    assert asked == [("test", SCHEMA_VERSION, ["rocket", "brand-logo"], [1, 2, 3], None, "tiny", 2, 64, [1, 2, 3],
                      ["sand", "marble"], 2, ["space-age"])]

    # Every query the docs show runs as written; the campaign query says each image is there once.
    answers = [sql(q) for q in doc_queries()]
    assert len(answers) == 5 and sum(r[2] for r in answers[0]) == 12 and len(answers[1]) == 4
    assert answers[2] == [("duck", 12, 12, 0)] and answers[4] == []

    # The command line answers the same, tab-separated with a header.
    result = CliRunner().invoke(app, ["tables", "query", "SELECT count(*) AS n, count(DISTINCT asset_id) FROM generations",
                                      "--assets", campaign_env["assets"]])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-2:] == ["n\tcount(DISTINCT asset_id)", "12\t12"]
    bad = CliRunner().invoke(app, ["tables", "query", "SELECT nope FROM generations", "--assets", campaign_env["assets"]])
    assert bad.exit_code == 2 and "query:" in bad.output

    # pandas through deltalake, and the run's local copy through DuckDB's parquet reader.
    frame = DeltaTable(tables.uri("generations"), storage_options=tables.options).to_pandas()
    assert len(frame) == 12 and set(frame["run_id"]) == {summary.run_id}
    local = publish.copy_run(store, AssetsLayout.at(campaign_env["assets"]).run(summary.run_id), tmp_path / "out")
    mirrored = duckdb.connect().execute(
        f"SELECT count(*), min(run_date) FROM read_parquet('{local}/tables/generations/*/*.parquet', "
        "hive_partitioning = true)").fetchone()
    assert mirrored == (12, datetime.now(UTC).date())
