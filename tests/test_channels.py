"""Channels: preset canvases, the product box placed by rule, the channel axis, and the channel checks."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from catalogs import load_profiles, parse_campaign
from catalogs.models import CHANNEL_PRESETS, Campaign, ChannelSpec, Product, Zone
from tasks.canny import canvas_images, canvas_name, fit_to_canvas
from tasks.channels import (
    channel_checks,
    layout_params,
    product_box,
    resolve_channel,
    resolve_channels,
    size_family,
    zones_mask,
)
from tasks.matrix import expand_matrix
from tasks.plan import ModelIdentity, group_batches, plan_jobs
from tasks.scores import product_mask_on_canvas
from tests.helpers import STYLES, campaign, plan

ANCHORS = ("centre", "left", "right", "top", "bottom")
PROFILES = load_profiles()
PHOTOS = [(64, 64), (300, 100), (100, 300)]  # square, wide and tall product photos

EXPECTED_SIZES = {
    "tiny": {"square": (64, 64), "portrait": (64, 80), "story": (72, 128), "banner": (128, 72)},
    "sd15": {"square": (512, 512), "portrait": (512, 640), "story": (576, 1024), "banner": (1024, 576)},
    "sdxl": {"square": (1024, 1024), "portrait": (1024, 1280), "story": (1024, 1792), "banner": (1792, 1024)},
}


def spec_with(channels: dict | None = None, axes: dict | None = None, zip_: list | None = None, **extra) -> Campaign:
    """A small campaign (tiny profile) with the given channels and axes."""
    raw = {"name": "chan", "matrix": {"template": "a photo of {product} on {surface}",
                                     "axes": {"surface": ["marble", "sand"], **(axes or {})}, "zip": zip_ or []},
           "generation": {"profile": "tiny"}, **extra}
    if channels is not None:
        raw["channels"] = channels
    return Campaign.model_validate(raw)


PRODUCTS = [Product(product_id="kettle", image_key="s3://c/products/kettle/image.png", title="kettle",
                    sha256="1" * 64, width=300, height=200)]


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("profile, family", [("tiny", "tiny"), ("tiny-sdxl", "tiny"), ("sd15", "sd15"),
                                             ("sdxl", "sdxl"), ("sd15-multi", "sd15")])
def test_each_profile_picks_its_size_family(profile, family):
    assert size_family(PROFILES[profile]) == family


@pytest.mark.parametrize("family", sorted(EXPECTED_SIZES))
@pytest.mark.parametrize("preset", CHANNEL_PRESETS)
def test_each_preset_has_its_canvas_for_each_profile_family(family, preset):
    layout = resolve_channel(preset, ChannelSpec(), family)
    assert (layout.width, layout.height) == EXPECTED_SIZES[family][preset]
    a, b = (int(v) for v in layout.aspect.split(":"))
    assert abs(layout.width / layout.height / (a / b) - 1) <= 0.02  # near the declared aspect
    if family != "tiny":
        assert layout.width % 64 == 0 and layout.height % 64 == 0
        short = min(layout.width, layout.height)
        assert short == (512 if family == "sd15" else 1024) or (family == "sd15" and short == 576)


def test_preset_safe_zones_are_the_placements_own():
    story = resolve_channel("story", ChannelSpec(), "sd15")
    # Meta keeps the top 14% and the bottom 20% of a story clear.
    assert story.safe_zones == ((0, 0, 576, 144), (0, 819, 576, 1024))
    banner = resolve_channel("banner", ChannelSpec(), "sd15")
    assert banner.safe_zones == ((563, 0, 1024, 576),)  # the right 45% for the copy


def test_a_channel_overrides_parts_of_a_preset_or_is_its_own():
    reels = resolve_channel("reels", ChannelSpec(preset="story", safe_zones=(Zone(bottom=0.14), Zone(top=0.65))), "sd15")
    assert (reels.width, reels.height, reels.aspect) == (576, 1024, "9:16")
    assert reels.safe_zones[1] == (0, 665, 576, 1024)
    wide = resolve_channel("hero", ChannelSpec(width=1024, height=384, aspect="8:3", anchor="right"), "sd15")
    assert (wide.width, wide.height, wide.anchor, wide.safe_zones) == (1024, 384, "right", ())


def test_a_channel_that_is_no_preset_must_say_its_canvas():
    with pytest.raises(ValueError, match="channel 'hero' is no preset"):
        spec_with({"hero": {"width": 640}})


def test_a_channel_axis_names_known_channels_only():
    with pytest.raises(ValueError, match=r"matrix axis 'channel': \['poster'\] are not channels"):
        spec_with({"square": {}}, axes={"channel": ["square", "poster"]})


# --------------------------------------------------------------------------- placement


@pytest.mark.parametrize("family", sorted(EXPECTED_SIZES))
@pytest.mark.parametrize("anchor", ANCHORS)
@pytest.mark.parametrize("preset", CHANNEL_PRESETS)
def test_the_product_box_is_inside_the_canvas_and_out_of_the_safe_zones(family, anchor, preset):
    layout = resolve_channel(preset, ChannelSpec(anchor=anchor), family)
    for w, h in PHOTOS:
        left, top, right, bottom = box = product_box(layout, w, h)
        m = layout.margin_px
        assert m <= left < right <= layout.width - m and m <= top < bottom <= layout.height - m, box
        assert not zones_mask(layout.width, layout.height, layout.safe_zones)[top:bottom, left:right].any(), box
        assert (right - left) * (bottom - top) <= layout.max_share * layout.width * layout.height + 1
        assert abs((right - left) / (bottom - top) - w / h) <= 0.15 * w / h  # the photo's aspect, not stretched


def test_the_anchor_pushes_the_product_to_its_side():
    boxes = {a: product_box(resolve_channel("square", ChannelSpec(anchor=a, max_share=0.2), "sd15"), 100, 100)
             for a in ANCHORS}
    assert boxes["left"][0] < boxes["centre"][0] < boxes["right"][0]
    assert boxes["top"][1] < boxes["centre"][1] < boxes["bottom"][1]
    assert boxes["left"][0] == 31  # the margin: 6% of 512


def test_the_banner_keeps_its_copy_side_clear():
    left, _, right, _ = product_box(resolve_channel("banner", ChannelSpec(), "sd15"), 200, 200)
    assert right <= 563 and left >= 35  # clear of the copy side, inside the 6% margin


def test_safe_zones_that_leave_no_room_are_refused():
    layout = resolve_channel("square", ChannelSpec(safe_zones=(Zone(right=0.5), Zone(left=0.5))), "tiny")
    with pytest.raises(ValueError, match="channel 'square': its margin and safe zones leave no room"):
        product_box(layout, 10, 10)


def test_the_canvas_images_put_the_product_in_its_box():
    layout = resolve_channel("banner", ChannelSpec(), "sd15")
    photo = Image.new("RGB", (64, 64), (200, 40, 40))  # no mask: the whole photo is the product
    params = {**layout_params(layout, box := product_box(layout, 64, 64)), "canny_low": 100, "canny_high": 200}
    fitted = canvas_images(photo, None, params, ("canvas", "mask"))
    mask = np.asarray(fitted["mask"].convert("L")) >= 128
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == box
    region = product_mask_on_canvas(photo, layout.width, layout.height, None, box)
    assert (region == mask).all()  # the scores look where the control images put the product
    # Without a box the product is centred on the whole canvas, as always.
    centred = np.asarray(fit_to_canvas(photo, 128, 64).convert("L")) < 255
    assert centred[:, 32:96].all() and not centred[:, :32].any() and not centred[:, 96:].any()


# --------------------------------------------------------------------------- the channel axis


def test_channels_multiply_the_matrix_and_set_each_canvas():
    spec = spec_with({"square": {}, "story": {}, "banner": {"anchor": "left"}})
    assert spec.matrix.axes["channel"] == ("square", "story", "banner")
    jobs = plan_jobs(spec, PRODUCTS, STYLES[:1], expand_matrix(spec.matrix),
                     ModelIdentity(revision="r", dtype="float32"))
    assert len(jobs) == 2 * 3
    sizes = {j.params["channel"]: (j.params["width"], j.params["height"]) for j in jobs}
    assert sizes == {"square": (64, 64), "story": (72, 128), "banner": (128, 72)}
    banner = next(j for j in jobs if j.params["channel"] == "banner")
    assert banner.params["anchor"] == "left" and banner.params["safe_zones"] == [[70, 0, 128, 72]]
    assert banner.cell["channel"] == "banner"
    # One batch per channel: one canvas and control image each.
    assert len(group_batches(jobs, 8)) == 3
    names = {canvas_name("kettle", j.params) for j in jobs}
    assert len(names) == 3


def test_the_channel_axis_zips_with_a_word_axis():
    spec = spec_with({"square": {}, "banner": {}}, axes={"channel": ["square", "banner"]},
                     zip_=[["surface", "channel"]])
    cells = expand_matrix(spec.matrix)
    assert [(c.as_dict()["surface"], c.as_dict()["channel"]) for c in cells] == [("marble", "square"),
                                                                               ("sand", "banner")]
    jobs = plan_jobs(spec, PRODUCTS, STYLES[:1], cells, ModelIdentity(revision="r", dtype="float32"))
    assert [(j.prompt, j.params["width"]) for j in jobs] == [("a photo of kettle on marble", 64),
                                                             ("a photo of kettle on sand", 128)]


def test_a_channel_axis_alone_names_presets():
    spec = spec_with(axes={"channel": ["portrait"]})
    assert resolve_channels(spec, PROFILES["sd15"])["portrait"].height == 640


def test_the_channel_layout_is_part_of_the_asset_id():
    one = plan_jobs(spec_with({"square": {}}), PRODUCTS, STYLES[:1], expand_matrix(spec_with({"square": {}}).matrix),
                    ModelIdentity(revision="r", dtype="float32"))
    moved = spec_with({"square": {"anchor": "left"}})
    two = plan_jobs(moved, PRODUCTS, STYLES[:1], expand_matrix(moved.matrix),
                    ModelIdentity(revision="r", dtype="float32"))
    assert {j.asset_id for j in one}.isdisjoint(j.asset_id for j in two)


def test_a_campaign_without_channels_keeps_its_asset_ids():
    # The sample campaign's ids as they were before channels existed: a change here republishes everything.
    spec = campaign()
    assert not spec.channels and "channel" not in spec.matrix.axes
    ids = [j.asset_id for j in plan(spec)]
    assert ids[:2] == ["59ea4b2b38b2a57b786b4c20266c45b2", "a9424a437d5c5f8e9ad8a9f798c58280"]
    assert hashlib.sha256("".join(ids).encode()).hexdigest()[:16] == "3c49aba597d5237b"
    assert all("channel" not in j.params and "product_box" not in j.params for j in plan(spec))


def test_a_product_of_unknown_size_cannot_be_placed():
    spec = spec_with({"square": {}})
    unsized = [PRODUCTS[0].model_copy(update={"width": 0, "height": 0})]
    with pytest.raises(ValueError, match="product 'kettle': its photo size is unknown"):
        plan_jobs(spec, unsized, STYLES[:1], expand_matrix(spec.matrix), ModelIdentity(revision="r", dtype="float32"))


def test_the_spec_text_reads_channels():
    spec = parse_campaign("""
name: placements
matrix: {template: "a photo of {product}"}
generation: {profile: tiny}
channels:
  square: {}
  story: {safe_zones: [{bottom: 0.14}, {top: 0.65}]}
  hero: {preset: banner, anchor: right}
""")
    layouts = resolve_channels(spec)
    assert list(layouts) == ["square", "story", "hero"]
    assert layouts["hero"].anchor == "right" and layouts["hero"].width == 128
    assert layouts["story"].safe_zones[1] == (0, 83, 72, 128)


# --------------------------------------------------------------------------- checks


def _layout_params(preset: str = "banner") -> dict:
    layout = resolve_channel(preset, ChannelSpec(), "sd15")
    return layout_params(layout, product_box(layout, 100, 100))


def _box_mask(params: dict, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((params["height"], params["width"]), dtype=bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    return mask


def test_a_well_placed_product_passes_every_check():
    params = _layout_params()
    checks = channel_checks(_box_mask(params, tuple(params["product_box"])), (1024, 576), params)
    assert checks["safe_zone_share"] == 0.0 and checks["product_cut"] == 0.0
    assert checks["size_error"] == 0.0 and checks["aspect_error"] < 1e-9
    assert 0.1 < checks["product_share"] <= 0.45


def test_a_product_in_the_safe_zone_fails_that_check():
    params = _layout_params()
    checks = channel_checks(_box_mask(params, (700, 100, 900, 300)), (1024, 576), params)  # in the right 45%
    assert checks["safe_zone_share"] == 1.0
    half = channel_checks(_box_mask(params, (463, 100, 663, 300)), (1024, 576), params)
    assert half["safe_zone_share"] == pytest.approx(0.5)


def test_a_small_product_shows_in_its_share():
    params = _layout_params()
    assert channel_checks(_box_mask(params, (100, 100, 110, 110)), (1024, 576), params)["product_share"] == \
        pytest.approx(100 / (1024 * 576))


def test_a_product_cut_by_the_edge_fails_that_check():
    params = _layout_params()
    cut = channel_checks(_box_mask(params, (0, 100, 100, 200)), (1024, 576), params)["product_cut"]
    assert 0.2 < cut < 0.3  # one side of four runs along the canvas edge
    assert channel_checks(_box_mask(params, (1, 100, 100, 200)), (1024, 576), params)["product_cut"] == 0.0


def test_an_output_of_the_wrong_size_or_aspect_fails_those_checks():
    params = _layout_params("story")
    mask = _box_mask(params, tuple(params["product_box"]))
    checks = channel_checks(mask, (576, 1000), params)
    assert checks["size_error"] == 24.0
    assert checks["aspect_error"] == pytest.approx((576 / 1000) / (9 / 16) - 1)
    square = channel_checks(mask, (1024, 1024), params)
    assert square["aspect_error"] == pytest.approx(16 / 9 - 1)


def test_gates_and_weights_may_name_the_channel_checks():
    spec = spec_with({"story": {}}, selection={"gates": ["safe_zone_share <= 0.02", "product_cut <= 0.1",
                                                         "size_error <= 0", "aspect_error <= 0.02",
                                                         "product_share >= 0.05"]})
    assert len(spec.selection.gates) == 5


def test_a_blank_mask_leaves_the_mask_checks_empty():
    params = _layout_params()
    checks = channel_checks(np.zeros((576, 1024), dtype=bool), Image.new("RGB", (1024, 576)).size, params)
    assert checks["safe_zone_share"] is None and checks["product_cut"] is None and checks["size_error"] == 0.0


def test_each_channel_gets_its_own_top_k():
    from catalogs.models import Selection
    from tasks.select import select_images

    rows = [{"product_id": "kettle", "channel": ch, "style_id": "one", "cell_index": i, "asset_id": f"{ch}{i}",
             "edge_f1": score, "status": "ok"} for ch, base in (("square", 0.9), ("story", 0.3))
            for i, score in enumerate((base, base - 0.1))]
    outcomes = select_images(rows, Selection(top_k=1, gates=(), weights={"edge_f1": 1.0}))
    chosen = [r["asset_id"] for r, o in zip(rows, outcomes, strict=True) if o["selected"]]
    assert chosen == ["square0", "story0"]  # not both squares, whose scores are higher


def test_a_row_read_back_from_parquet_gives_its_layout():
    from tasks.channels import row_layout

    params = _layout_params("story")
    row = {"width": params["width"], "height": params["height"], "channel": "story", "channel_aspect": "9:16",
           "box_left": 10, "box_top": 200, "box_right": 100, "box_bottom": 300,
           "safe_zones": np.array(["0,0,576,144", "0,819,576,1024"], dtype=object)}
    layout = row_layout(row)
    assert layout["safe_zones"] == [[0, 0, 576, 144], [0, 819, 576, 1024]] and layout["product_box"] == [10, 200, 100, 300]
    plain = row_layout({"width": 64, "height": 64, "channel": float("nan"), "channel_aspect": None,
                        "box_left": float("nan"), "safe_zones": np.array([], dtype=object)})
    assert plain["safe_zones"] == [] and "product_box" not in plain and plain["channel"] is None


def test_the_layout_is_drawn_where_the_zones_and_box_are():
    from tasks.channels import BOX_INK, ZONE_INK, outline_layout

    params = _layout_params("banner")  # 1024 x 576; copy side from x = 563
    drawn = np.asarray(outline_layout(Image.new("RGB", (256, 144), (255, 255, 255)), params, long_side=512))
    assert drawn.shape == (288, 512, 3)
    left = round(563 / 2)
    assert (drawn[:, left] == ZONE_INK).all(axis=1).any()  # the zone's left edge, dashed
    assert not (drawn[:, : left - 2] == ZONE_INK).all(axis=2).any()  # nothing of the zone left of it
    box = [round(v / 2) for v in params["product_box"]]
    assert (drawn[box[1] + 5, box[0]] == BOX_INK).all() and (drawn[box[1], box[0] + 5] == BOX_INK).all()


def test_preserve_modes_canvas_and_keep_mask_sit_in_the_channels_box():
    layout = resolve_channel("story", ChannelSpec(), "tiny")
    photo = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    photo.paste(Image.new("RGBA", (20, 30), (200, 40, 40, 255)), (10, 5))  # a cut-out product
    params = {**layout_params(layout, box := product_box(layout, 40, 40)), "mode": "preserve",
              "canny_low": 100, "canny_high": 200}
    made = canvas_images(photo, None, params, ("canny", "canvas", "keep"))
    keep = np.asarray(made["keep"]) >= 128
    assert made["canvas"].size == made["keep"].size == made["canny"].size == (72, 128)
    ys, xs = np.nonzero(keep)
    assert box[0] <= xs.min() and xs.max() < box[2] and box[1] <= ys.min() and ys.max() < box[3]
    assert not (keep & zones_mask(72, 128, layout.safe_zones)).any()
    red = np.asarray(made["canvas"]).astype(int)[keep]
    assert np.median(np.abs(red - (200, 40, 40)).max(axis=1)) <= 8  # the product's own pixels, where preserve keeps them


def test_the_channels_example_is_in_the_doc_and_plans_every_placement():
    from tests.helpers import ROOT

    text = (ROOT / "catalogs" / "examples" / "channels.yaml").read_text()
    assert f"```yaml\n{text}```" in (ROOT / "docs" / "campaign-spec.md").read_text(), "the doc shows the file as it is"
    spec = parse_campaign(text, origin="channels.yaml")
    products = [PRODUCTS[0].model_copy(update={"product_id": pid, "sha256": f"{i:064x}"})
                for i, pid in enumerate(spec.products.ids)]
    jobs = plan_jobs(spec, products, STYLES[:1], expand_matrix(spec.matrix),
                     ModelIdentity(revision="r", dtype="float32", profile=PROFILES["tiny"]))
    assert len(jobs) == 4 * 2 * 4
    assert {(j.params["width"], j.params["height"]) for j in jobs} == set(EXPECTED_SIZES["tiny"].values())


def test_canny_edges_of_a_canvas_off_the_64_grid_stay_where_the_product_is():
    import cv2

    from tasks.canny import canny_map

    for width, height in ((64, 80), (72, 128), (128, 72)):
        canvas = Image.new("RGB", (width, height), (255, 255, 255))
        canvas.paste(Image.new("RGB", (20, 30), (30, 30, 30)), (10, 20))  # a dark box at x 10..29, y 20..49
        edges = np.asarray(canny_map(canvas, 100, 200).convert("L")) > 127
        # Unscaled: the same edges as canny on the canvas itself, not a squashed copy stretched back.
        assert (edges == (cv2.Canny(np.asarray(canvas), 100, 200) > 0)).all(), (width, height)


def test_a_run_request_may_narrow_the_channels_but_not_invent_one():
    from catalogs.models import RunRequest
    from tasks.request import apply_request

    spec = spec_with({"square": {}, "story": {}})
    narrowed, profile = apply_request(spec, RunRequest(campaign="chan", axes={"channel": ["story"]}), "tiny", PROFILES)
    assert list(resolve_channels(narrowed, profile)) == ["story"]
    invented, profile = apply_request(spec, RunRequest(campaign="chan", axes={"channel": ["poster"]}), "tiny", PROFILES)
    with pytest.raises(ValueError, match=r"campaign 'chan': channels \['poster'\] are not in its channels"):
        resolve_channels(invented, profile)


def test_rows_read_back_without_a_channel_stay_one_placement():
    from catalogs.models import Selection
    from tasks.select import select_images

    # Parquet hands back a null channel as NaN, and NaN != NaN: every such row is still the same placement.
    rows = [{"product_id": "kettle", "channel": float("nan"), "style_id": "one", "cell_index": i, "asset_id": f"a{i}",
             "edge_f1": 0.9 - i / 10, "status": "ok", "width": 64, "height": 64, "canny_low": 100, "canny_high": 200}
            for i in range(3)]
    outcomes = select_images(rows, Selection(top_k=1, gates=(), weights={"edge_f1": 1.0}))
    assert [o["selected"] for o in outcomes] == [True, False, False]
    assert [o["rank_in_product"] for o in outcomes] == [1, 2, 3]
    assert canvas_name("kettle", rows[0]) == canvas_name("kettle", {k: v for k, v in rows[0].items() if k != "channel"})


def test_the_runs_table_records_the_channels_as_written():
    import json

    from catalogs.models import RunRequest
    from tasks.tables import run_parameters

    spec = spec_with({"square": {}, "hero": {"preset": "banner", "anchor": "right"}})
    recorded = json.loads(run_parameters(RunRequest(campaign="chan"), spec, products=["kettle"], styles=["one"]))
    assert recorded["channels"] == {"square": {}, "hero": {"preset": "banner", "anchor": "right"}}
    assert recorded["matrix"]["axes"]["channel"] == ["square", "hero"]
    assert json.loads(run_parameters(RunRequest(campaign="s"), campaign(), products=[], styles=[]))["channels"] == {}


def test_the_run_summary_says_selection_is_per_channel_only_where_there_are_channels():
    from catalogs.models import RunSummary

    def selected_line(channels: tuple[str, ...]) -> str:
        summary = RunSummary(run_id="r1", campaign="spring", images_planned=8, images_skipped=0, images_to_generate=8,
                             images_generated=8, images_selected=2, channels=channels)
        return next(line for line in summary.lines() if "selected:" in line)

    assert "(top k per product)," in selected_line(())
    assert "(top k per product and channel)," in selected_line(("square", "story"))
