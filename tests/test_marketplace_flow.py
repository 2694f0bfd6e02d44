"""catalogs/examples/marketplace.yaml through the campaign flow on the tiny kit: scene and main images in one run."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from tasks.values import is_missing
from tests.helpers import ROOT


def test_a_run_makes_a_scene_and_compliant_main_images_and_records_their_lineage(campaign_env, store):
    from adapters.steps import publish
    from catalogs.models import RunRequest
    from flows.campaign import run_campaign

    catalog = campaign_env["catalog"]
    text = (ROOT / "catalogs" / "examples" / "marketplace.yaml").read_text()
    text = text.replace("long_side: 1024", "long_side: 256")  # small enough for a test
    store.put(f"{catalog}/campaigns/marketplace.yaml", text.encode(), content_type="application/yaml")
    summary = run_campaign(RunRequest(campaign="marketplace", triggered_by="test"))
    manifest = json.loads(store.get(summary.manifest))
    gens = publish.read_table(store, manifest, "generations")
    finishes = publish.read_table(store, manifest, "finishes")

    logo = gens[gens["product_id"] == "brand-logo"]
    # Two scenes (one per surface) and one main image per marketplace: composed, never generated twice.
    assert sorted(logo["channel"]) == ["amazon-main", "feed", "feed", "jd-main"]
    assert set(finishes["source_asset_id"]) <= set(gens["asset_id"][gens["selected"]])
    by_channel = {r.channel: r for r in finishes[finishes["product_id"] == "brand-logo"].itertuples()}
    assert set(by_channel) == {"feed", "amazon-main", "jd-main"}, logo[["channel", "status", "status_reason", "selected"]].to_dict("records")

    amazon = by_channel["amazon-main"]
    assert (amazon.width, amazon.height, amazon.method, amazon.background) == (2000, 2000, "compose", "white")
    assert amazon.checks_passed and list(amazon.check_reasons) == [] and amazon.product_fill >= 0.85
    main = Image.open(io.BytesIO(store.get(amazon.output_key))).convert("RGB")
    assert main.size == (2000, 2000) and main.getpixel((5, 5)) == (255, 255, 255)
    assert json.loads(amazon.shadow)["type"] == "contact" and amazon.paste_back
    assert by_channel["jd-main"].width == 800 and by_channel["jd-main"].checks_passed

    feed = by_channel["feed"]
    source = gens[gens["asset_id"] == feed.source_asset_id].iloc[0]
    assert (feed.width, feed.height, feed.method) == (256, 256, "lanczos") and feed.paste_back
    assert feed.seed == source["seed"] and is_missing(feed.marketplace) and is_missing(feed.checks_passed)
    assert json.loads(feed.upscale)["long_side"] == 256
    # The product's pixels at 256 px are the catalog photo's, not the upscaled 64 px render's.
    assert feed.product_ssim > 0.95
    finished = Image.open(io.BytesIO(store.get(feed.output_key)))
    assert finished.size == (256, 256)
    # Every finished image is listed in the manifest (the local copy and the GC keep it).
    assert set(finishes["asset_id"]) <= {i["asset_id"] for i in manifest["images"]}
    page = store.get(summary.gallery).decode()
    assert "finished 2000x2000" in page and "amazon-main: checks pass" in page
    sheet = Image.open(io.BytesIO(store.get(summary.sheets["brand-logo__space-age__amazon-main.jpg"])))
    assert np.asarray(sheet).size
