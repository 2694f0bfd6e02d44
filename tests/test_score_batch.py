"""Scoring a generated batch on the worker: a product photo that cannot be read any more
costs the fidelity columns, never the images or their other scores."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image
from skimage import data

from adapters.model.engine import StyleInput
from adapters.steps.publish import encode_png
from adapters.steps.scoring import Sources, product_view, score_batch
from catalogs.models import Product
from tasks.canny import control_image, fit_to_canvas
from tests.helpers import ReadLog

SIZE = 128
LOW, HIGH = 100, 200
FIDELITY = ("edge_f1", "product_ssim", "product_delta_e")
OTHERS = ("sharpness", "luminance", "clipped_share", "colourfulness", "background_hash")


def _stored_rocket(store, bucket: str) -> tuple[Image.Image, Product]:
    """The rocket photo in the catalog bucket, and its product record."""
    photo = Image.fromarray(data.rocket()).convert("RGB")
    data_bytes = encode_png(photo)
    key = f"s3://{bucket}/products/rocket/image.png"
    store.put(key, data_bytes, "image/png")
    return photo, Product(product_id="rocket", image_key=key, title="Rocket",
                          sha256=hashlib.sha256(data_bytes).hexdigest(), width=photo.width, height=photo.height)


@pytest.fixture
def batch(store, fresh_bucket):
    product_view.cache_clear()
    store = ReadLog(store)
    photo, product = _stored_rocket(store, fresh_bucket)
    reference = Image.fromarray(data.brick()).convert("RGB").resize((64, 64))
    style_input = StyleInput.from_images([reference], ["0" * 64])
    # The product as the control image places it, on a new, noisy background: a faithful image.
    placed = np.asarray(fit_to_canvas(photo, SIZE, SIZE)).copy()
    noise = np.random.default_rng(0).integers(0, 256, placed.shape, dtype=np.uint8)
    white = (placed > 245).all(axis=2)
    placed[white] = noise[white]
    images = [Image.fromarray(placed), Image.fromarray(np.roll(placed, 3, axis=0))]

    def score():
        rows = [{"asset_id": f"a{i}", "style_id": "brick", "prompt": "a rocket on brick", "width": SIZE, "height": SIZE,
                 "canny_low": LOW, "canny_high": HIGH} for i in range(len(images))]
        return score_batch(store, rows, images, Sources(product=product, style_input=style_input,
                                                        control=control_image(photo, SIZE, SIZE, LOW, HIGH)))

    return store, product.image_key, score


def test_every_score_is_filled_while_the_photo_is_readable(batch):
    _, _, score = batch
    first, second = score()
    assert all(first[name] is not None for name in FIDELITY + OTHERS)
    assert first["edge_f1"] > 0.5 and first["product_ssim"] > 0.5
    assert first["product_mask"] == "none"  # a busy photo: the whole fitted photo is the product
    assert second["edge_f1"] < first["edge_f1"]  # shifted off the product's edges


def test_the_photo_is_read_once_for_every_batch_of_its_product_in_a_process(batch):
    store, key, score = batch
    first = score()
    store.put(key, encode_png(Image.new("RGB", (300, 300), (10, 20, 30))), "image/png")  # changed since
    again = score()
    assert store.reads.count(key) == 1
    # The images were made from the photo the run's snapshot recorded: they are scored against it.
    assert [r["edge_f1"] for r in again] == [r["edge_f1"] for r in first]


@pytest.mark.parametrize("change", ["overwritten", "deleted"])
def test_a_photo_changed_or_gone_during_the_run_nulls_only_fidelity(batch, change, caplog):
    store, key, score = batch
    before = score()
    if change == "overwritten":
        store.put(key, encode_png(Image.new("RGB", (300, 300), (10, 20, 30))), "image/png")
    else:
        store.delete(key)
    product_view.cache_clear()  # a process that has not read the photo yet: another GPU worker
    rows = score()
    assert len(rows) == 2 and all(row.get("status") is None for row in rows)  # the images stay
    for row, earlier in zip(rows, before, strict=True):
        assert all(row[name] is None for name in FIDELITY) and row["product_mask"] is None
        # The other scores do not depend on the photo; only the hash loses its product blanking.
        assert all(row[name] == earlier[name] for name in OTHERS if name != "background_hash")
        assert isinstance(row["background_hash"], str) and len(row["background_hash"]) == 16
    assert "fidelity scores of rocket x brick left null" in caplog.text


def test_fidelity_and_channel_checks_look_where_the_channel_put_the_product(store, fresh_bucket):
    from catalogs.models import ChannelSpec
    from tasks.channels import layout_params, product_box, resolve_channel
    from tasks.tables import layout_columns

    photo, product = _stored_rocket(store, fresh_bucket)
    layout = resolve_channel("banner", ChannelSpec(anchor="left"), "tiny")  # 128 x 72, copy on the right 45%
    params = layout_params(layout, box := product_box(layout, photo.width, photo.height))
    placed = fit_to_canvas(photo, layout.width, layout.height, box=box)  # the product where the channel put it
    row = {"asset_id": "a0", "style_id": "brick", "prompt": "a rocket", "width": layout.width, "height": layout.height,
           "canny_low": LOW, "canny_high": HIGH, **layout_columns(params)}
    style_input = StyleInput.from_images([Image.fromarray(data.brick()).convert("RGB").resize((64, 64))], ["0" * 64])
    [scored] = score_batch(store, [row], [placed], Sources(product=product, style_input=style_input))
    assert scored["product_ssim"] > 0.99 and scored["product_delta_e"] < 1.0  # measured in the box, not centred
    assert scored["safe_zone_share"] == 0.0 and scored["product_cut"] == 0.0 and scored["size_error"] == 0.0
    assert scored["aspect_error"] < 0.01
    expected = (box[2] - box[0]) * (box[3] - box[1]) / (layout.width * layout.height)
    assert scored["product_share"] == pytest.approx(expected, rel=0.05)
    # An output of the wrong size fails the size check.
    [small] = score_batch(store, [dict(row)], [placed.resize((120, 72))], Sources(product=product, style_input=style_input))
    assert small["size_error"] == 8.0
