"""catalogs/examples/channels.yaml through the campaign flow on the tiny kit: every placement, its own canvas."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from tests.helpers import ROOT

SIZES = {"square": (64, 64), "portrait": (64, 80), "story": (72, 128), "banner": (128, 72)}


def test_the_channels_example_makes_every_placement(campaign_env, store):
    from adapters.steps import publish
    from catalogs.models import RunRequest
    from flows.campaign import run_campaign

    catalog = campaign_env["catalog"]
    text = (ROOT / "catalogs" / "examples" / "channels.yaml").read_text()
    # Two products (one with a transparent background, one photo without a mask), one surface.
    text = text.replace("ids: [coffee-cup, rocket, alarm-clock, brand-logo]", "ids: [coffee-cup, brand-logo]")
    text = text.replace("surface: [a marble counter, a sunny beach]", "surface: [a marble counter]")
    store.put(f"{catalog}/campaigns/channels.yaml", text.encode(), content_type="application/yaml")
    summary = run_campaign(RunRequest(campaign="channels", triggered_by="test"))

    gens = publish.read_table(store, json.loads(store.get(summary.manifest)), "generations")
    assert len(gens) == 2 * 4 and summary.images_generated == 8
    for row in gens.itertuples():
        picture = Image.open(io.BytesIO(store.get(row.output_key)))
        assert picture.size == SIZES[row.channel] == (row.width, row.height)
        assert row.size_error == 0 and row.aspect_error <= 0.02 and row.safe_zone_share == 0.0
        assert row.product_cut == 0.0 and 0 < row.product_share <= 0.6
        # The control image is the channel's canvas with the product's edges inside its box only.
        edges = np.asarray(Image.open(io.BytesIO(store.get(row.control_key))).convert("L")) > 127
        assert edges.shape == (row.height, row.width) and edges.any()
        outside = edges.copy()
        outside[max(0, row.box_top - 1):row.box_bottom + 1, max(0, row.box_left - 1):row.box_right + 1] = False
        assert not outside.any(), row.channel
    banner = gens[gens["channel"] == "banner"].iloc[0]
    assert banner["anchor"] == "left" and list(banner["safe_zones"]) == ["70,0,128,72"]
    assert banner["box_right"] <= 70  # clear of the copy's side
    assert dict(banner["cell"])["channel"] == "banner"
    # Each placement is judged apart: top_k 1 selects one image per product and channel.
    assert gens.groupby(["product_id", "channel"])["selected"].sum().tolist() == [1] * 8
    assert sorted(summary.sheets) == sorted([*(f"{p}__space-age__{c}.jpg" for p in ("coffee-cup", "brand-logo")
                                              for c in SIZES), "overview.jpg"])
    page = store.get(summary.gallery).decode()
    assert 'id="f-channel"' in page and 'id="t-zones"' in page
