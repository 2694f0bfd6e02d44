"""A report never sinks a run: sheets fit image-format limits at any size; a failing sheet or gallery
step leaves the run committed, says which report failed, and `stylematrix report` makes it again."""

from __future__ import annotations

import io
import json

from PIL import Image

from catalogs.models import RunRequest
from flows.reports import remake_reports
from tasks.layout import AssetsLayout
from tasks.sheets import PAGE_COLUMNS, PAGE_ROWS, Tile, contact_sheet, sheet_layout, sheet_pages
from tests.test_sim import SIM

JPEG_MAX = 65_535


def test_a_sheet_of_any_size_is_split_into_pages_that_fit_and_hold_every_image_once():
    # The sheet that once broke a run: 4 cells x 256 seeds, 1,024 tiles side by side.
    tiles = [Tile(cell=(("surface", s), ("light", lt)), seed=seed, image=None, lines=("ok",))
             for s in ("sand", "slate") for lt in ("dawn", "noon") for seed in range(256)]
    assert len(sheet_layout(tiles).cols) * 176 > JPEG_MAX  # one page would not fit in a JPEG
    pages = sheet_pages(tiles)
    assert sorted(i for page in pages for i in page) == list(range(len(tiles)))
    for page in pages:
        layout = sheet_layout([tiles[i] for i in page])
        assert len(layout.cols) <= PAGE_COLUMNS and len(layout.rows) <= PAGE_ROWS
    sheet = contact_sheet([tiles[i] for i in pages[0]], title="p x s · page 1", tile_size=32)
    assert max(sheet.size) < JPEG_MAX
    assert sheet_pages(tiles[:8]) == [list(range(8))]  # a small sheet is one page


def test_a_failing_sheet_and_gallery_leave_the_run_committed_and_can_be_made_again(campaign_env, store, monkeypatch):
    from adapters.steps import run_outputs
    from flows.campaign import run_campaign

    def broken(*args, **kwargs):
        raise OSError("broken data stream when writing image file")

    store.put(f"{campaign_env['catalog']}/campaigns/simload.yaml", SIM.encode())
    with monkeypatch.context() as patched:
        patched.setattr(run_outputs, "contact_sheet", broken)
        patched.setattr(run_outputs, "overview_sheet", broken)
        patched.setattr(run_outputs, "iter_gallery_files", broken)
        summary = run_campaign(RunRequest(campaign="simload", triggered_by="test"))
    # Committed: the manifest lists every image and the tables; the failed reports are named, with why.
    manifest = json.loads(store.get(summary.manifest))
    assert len(manifest["images"]) == summary.images_generated == 36
    assert set(summary.reports_failed) == {"contact-sheets", "overview", "gallery"}
    assert "broken data stream" in summary.reports_failed["contact-sheets"]
    assert manifest["reports_failed"] == summary.reports_failed and not summary.sheets and summary.gallery is None
    assert any("report contact-sheets failed" in line for line in summary.lines())
    assert not store.exists(AssetsLayout.at(campaign_env["assets"]).run(summary.run_id).uri("index.html"))

    made = remake_reports(store, AssetsLayout.at(campaign_env["assets"]).run(summary.run_id))
    assert sorted(made["sheets"]) == ["coffee-cup__space-age.jpg", "overview.jpg", "rocket__space-age.jpg"]
    for uri in made["sheets"].values():
        assert Image.open(io.BytesIO(store.get(uri))).format == "JPEG"
    page = store.get(made["gallery"]).decode()
    assert summary.run_id in page and "sheets/rocket__space-age.jpg" in page
    assert json.loads(store.get(AssetsLayout.at(campaign_env["assets"]).run(summary.run_id).reports))["gallery"] == made["gallery"]


def test_report_command_refuses_a_run_that_never_committed(campaign_env, store):
    import pytest

    with pytest.raises(FileNotFoundError, match="run nope: no manifest"):
        remake_reports(store, AssetsLayout.at(campaign_env["assets"]).run("nope"))
