"""Review decisions and delivery: the spec sections, which decision wins, the delivery layout, the encoder,
and delivery against the S3 server (idempotent, size limits, a cut-short delivery recovered)."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image, ImageCms
from pydantic import ValidationError

from adapters.steps import publish
from adapters.steps.delivery import (
    TooLarge,
    deliver,
    encode_delivery,
    read_parts,
    srgb_profile,
    to_srgb,
    write_part_once,
)
from catalogs import parse_campaign
from catalogs.models import Campaign, DeliveryFormat, RunRequest
from tasks.channels import resolve_channels
from tasks.gallery import Gallery, render_gallery
from tasks.layout import AssetsLayout
from tasks.request import apply_request
from tasks.review import (
    ImageReview,
    ReviewRequest,
    approved,
    channel_formats,
    decided_images,
    delivery_groups,
    form_description,
    latest_decisions,
    review_rows,
    review_states,
    timeout_rows,
)
from tasks.tables import SCHEMA_VERSION, to_frame
from tests.helpers import campaign, photo

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
A, B, C = "a" * 32, "b" * 32, "c" * 32


def _row(asset, decision, at, review_id="r1"):
    return {"asset_id": asset, "decision": decision, "reviewed_at": at, "review_id": review_id}


# --------------------------------------------------------------------------- the spec


def test_campaign_review_and_delivery_sections_parse_and_refuse_bad_values():
    spec = campaign()
    assert spec.review.required is False and spec.delivery.format == "jpeg"
    text = ("name: x\nmatrix: {template: 'a {product}'}\nreview: {required: true, reviewers: [brand team], "
            "wait_hours: 24}\ndelivery: {format: webp, quality: 80, max_bytes: 200000, metadata: keep}\n")
    spec = parse_campaign(text)
    assert spec.review.reviewers == ("brand team",) and spec.review.wait_hours == 24
    assert spec.delivery.extension == "webp" and spec.delivery.max_bytes == 200_000
    with pytest.raises(ValueError, match="min_quality 90 is above quality 80"):
        DeliveryFormat(quality=80, min_quality=90)
    with pytest.raises(ValidationError, match="format"):
        DeliveryFormat(format="gif")
    with pytest.raises(ValidationError, match="wait_hours"):
        Campaign.model_validate({"name": "x", "matrix": {"template": "a"}, "review": {"wait_hours": 0}})


def test_run_request_switches_review_on_or_off():
    from catalogs import load_profiles

    spec = campaign()
    on, _ = apply_request(spec, RunRequest(campaign="sample", review=True), "tiny", load_profiles())
    assert on.review.required is True
    off, _ = apply_request(on, RunRequest(campaign="sample", review=False), "tiny", load_profiles())
    assert off.review.required is False
    same, _ = apply_request(on, RunRequest(campaign="sample"), "tiny", load_profiles())
    assert same.review.required is True


# --------------------------------------------------------------------------- decisions


def test_latest_decision_wins_image_by_image():
    rows = [_row(A, "approve", T0), _row(B, "approve", T0),
            _row(A, "reject", T0 + timedelta(hours=1), "r2"), _row(C, "hold", T0 + timedelta(hours=1), "r2")]
    latest = latest_decisions(reversed(rows))  # order of the parts does not matter
    assert {a: r["decision"] for a, r in latest.items()} == {A: "reject", B: "approve", C: "hold"}
    assert approved(latest) == [B]


def test_a_timeout_never_overrides_a_decision():
    rows = [_row(A, "approve", T0), _row(A, "timed-out", T0 + timedelta(days=3), "r2"),
            _row(B, "timed-out", T0 + timedelta(days=3), "r2")]
    latest = latest_decisions(rows)
    assert latest[A]["decision"] == "approve" and latest[B]["decision"] == "timed-out"
    assert approved(latest) == [A]
    assert review_states(latest, [A, B, C]) == {A: "approved", B: "timed out", C: "pending"}
    assert review_states({}, [A, B]) == {}  # nothing decided yet: no states shown


def test_form_decisions_merge_approve_also_and_drop_unknown_ids():
    known = {A: {"product_id": "kettle", "selected": True}, B: {"product_id": "mug", "selected": False}}
    items, unknown = decided_images([ImageReview(asset_id=A, decision="reject", note=" too dark ")],
                                    [A, B, "f" * 32], known)
    assert [(i.asset_id, i.decision, i.product_id) for i in items] == [(A, "reject", "kettle"), (B, "approve", "mug")]
    assert unknown == ["f" * 32]
    request = ReviewRequest(run_id="spring-1", campaign="spring", assets="s3://a", run_date="2026-12-01")
    rows = review_rows(request, "rev-1", items, known=known, reviewer="Ana", reviewed_at=T0)
    assert [(r["asset_id"], r["selected"], r["note"], r["reviewer"]) for r in rows] == [
        (A, True, "too dark", "Ana"), (B, False, None, "Ana")]
    to_frame("reviews", rows)  # exactly the table's columns
    timeouts = timeout_rows(request, "rev-2", [{"asset_id": A, "product_id": "kettle"}], at=T0)
    assert timeouts[0]["decision"] == "timed-out" and timeouts[0]["reviewer"] is None
    to_frame("reviews", timeouts)


def test_delivery_path_layout_and_refusals():
    jpeg, webp = DeliveryFormat(), DeliveryFormat(format="webp")
    assets = AssetsLayout.at("s3://a/team")
    assert assets.delivery("spring", "default", "kettle", A, jpeg.extension) == \
        f"s3://a/team/delivery/spring/default/kettle/{A}.jpg"
    assert assets.delivery("spring", "instagram", "kettle", A, webp.extension).endswith(f"/instagram/kettle/{A}.webp")
    with pytest.raises(ValueError, match="channel '../x' is not a slug"):
        assets.delivery("spring", "../x", "kettle", A, jpeg.extension)
    with pytest.raises(ValueError, match="is not an asset id"):
        assets.delivery("spring", "default", "kettle", "../../etc", jpeg.extension)


def test_gallery_shows_review_state_once_a_decision_exists():
    rows = [{"asset_id": a, "product_id": "kettle", "style_id": "s", "cell": [("surface", "oak")], "seed": 1,
             "prompt": "p", "status": "ok", "selected": True, "rank_in_product": i + 1, "rank_in_cell": 1,
             "output_key": f"s3://x/{a}.png"} for i, a in enumerate((A, B))]
    before = render_gallery(Gallery("run-1", "spring", rows))
    assert "data-review" not in before and "review:" not in before
    after = render_gallery(Gallery("run-1", "spring", rows, reviews={A: "approved", B: "pending"}))
    assert 'data-review="approved"' in after and 'data-review="pending"' in after
    assert "review: 1 approved · 1 pending" in after


# --------------------------------------------------------------------------- the encoder


def test_encoder_steps_quality_down_to_fit_max_bytes():
    image = photo("astronaut", 256)
    free = encode_delivery(image, DeliveryFormat(quality=95), asset_id=A)
    assert free.quality == 95
    limit = len(free.data) * 2 // 3
    fitted = encode_delivery(image, DeliveryFormat(quality=95, min_quality=20, max_bytes=limit), asset_id=A)
    assert len(fitted.data) <= limit < len(free.data) and fitted.quality < 95
    assert Image.open(io.BytesIO(fitted.data)).format == "JPEG"
    with pytest.raises(TooLarge, match=f"image {A}: jpeg does not fit max_bytes 1024"):
        encode_delivery(image, DeliveryFormat(quality=90, min_quality=80, max_bytes=1024), asset_id=A)
    again = encode_delivery(image, DeliveryFormat(quality=95, min_quality=20, max_bytes=limit), asset_id=A)
    assert again.data == fitted.data  # same image and format, same bytes: a repeated write is recognised


def test_encoder_strips_or_keeps_metadata_and_writes_srgb():
    image = photo("astronaut", 128)
    image.info["icc_profile"] = srgb_profile()
    stripped = Image.open(io.BytesIO(encode_delivery(image, DeliveryFormat(format="webp"), asset_id=A).data))
    assert stripped.format == "WEBP" and "icc_profile" not in stripped.info and not stripped.getexif()
    kept = Image.open(io.BytesIO(encode_delivery(image, DeliveryFormat(metadata="keep"), asset_id=A).data))
    assert ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(kept.info["icc_profile"]))).strip() \
        == "sRGB built-in"
    assert kept.getexif()[0x010E] == f"stylematrix asset {A}"


def test_to_srgb_keeps_srgb_pixels_and_flattens_transparency():
    wide = Image.new("RGB", (8, 8), (0, 200, 0))
    wide.info["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert to_srgb(wide).getpixel((0, 0)) == (0, 200, 0)  # already sRGB: unchanged
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_srgb(rgba).getpixel((0, 0)) == (255, 255, 255)


# --------------------------------------------------------------------------- delivery against S3


def _published(store, assets, run_id, product_id, image):
    asset_id = hashlib.sha256(image.tobytes()).hexdigest()[:32]
    pub = publish.put_image(store, AssetsLayout.at(assets).run(run_id), asset_id, image)
    return {"asset_id": asset_id, "product_id": product_id, "output_key": pub.uri, "sha256": pub.sha256}


def test_delivery_writes_once_and_records_what_it_wrote(store, fresh_bucket):
    assets = f"s3://{fresh_bucket}/team"
    request = ReviewRequest(run_id="spring-1", campaign="spring", assets=assets, run_date="2026-12-01",
                            delivery=DeliveryFormat(format="webp", quality=90, max_bytes=20_000))
    rng = np.random.default_rng(0)
    sources = [_published(store, assets, "spring-1", "kettle", photo("astronaut", 128)),
               _published(store, assets, "spring-1", "mug",
                          Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)))]
    first = deliver(store, request, "rev-1", ("default", request.delivery, sources), set())
    assert [r["asset_id"] for r in first.rows] == [sources[0]["asset_id"]]
    assert list(first.too_large) == [sources[1]["asset_id"]]  # noise does not compress under 20 kB
    row = first.rows[0]
    data = store.get(row["delivered_key"])
    assert row["delivered_key"] == f"{assets}/delivery/spring/default/kettle/{sources[0]['asset_id']}.webp"
    assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["bytes"] == len(data) <= 20_000
    assert Image.open(io.BytesIO(data)).format == "WEBP"
    write_part_once(store, request, "deliveries", "rev-1", first.rows)

    recorded = {r["delivered_key"] for r in read_parts(store, AssetsLayout.at(assets).run("spring-1", "2026-12-01"), "deliveries")}
    second = deliver(store, request, "rev-2", ("default", request.delivery, sources[:1]), recorded)
    assert second.rows == [] and second.already == [row["delivered_key"]]
    # A delivery that wrote its file but died before its table part: the next one records it, writes nothing.
    recovered = deliver(store, request, "rev-3", ("default", request.delivery, sources[:1]), set())
    assert [(r["sha256"], r["quality"]) for r in recovered.rows] == [(row["sha256"], row["quality"])]
    assert len(store.list(f"{assets}/delivery/")) == 1


def test_each_channel_is_delivered_in_its_own_format_and_folder(store, fresh_bucket):
    text = ("name: spring\nmatrix: {template: 'a {product}'}\ndelivery: {format: jpeg, quality: 85}\n"
            "channels:\n  square: {}\n  story: {max_share: 0.35, delivery: {format: webp, max_bytes: 60000}}\n")
    spec = parse_campaign(text)
    plain = parse_campaign(text.replace(", delivery: {format: webp, max_bytes: 60000}", ""))
    assert resolve_channels(spec) == resolve_channels(plain)  # a delivery format is no part of the layout
    formats = channel_formats(spec)
    assert formats == {"square": spec.delivery, "story": DeliveryFormat(format="webp", max_bytes=60_000)}
    assets = f"s3://{fresh_bucket}/team"
    request = ReviewRequest(run_id="spring-1", campaign="spring", assets=assets, run_date="2026-12-01",
                            delivery=spec.delivery, channel_delivery=formats)
    square, story = (_published(store, assets, "spring-1", "kettle", photo(name, 96)) for name in ("astronaut", "coffee"))
    sources = [{**square, "channel": "square"}, {**story, "channel": "story"}]
    groups = delivery_groups(request, sources)
    assert [(segment, fmt.format, [r["asset_id"] for r in rows]) for segment, fmt, rows in groups] == [
        ("square", "jpeg", [square["asset_id"]]), ("story", "webp", [story["asset_id"]])]
    keys = {}
    for group in groups:
        keys |= {r["delivered_key"]: r for r in deliver(store, request, "rev-1", group, set()).rows}
    assert sorted(keys) == [f"{assets}/delivery/spring/square/kettle/{square['asset_id']}.jpg",
                            f"{assets}/delivery/spring/story/kettle/{story['asset_id']}.webp"]
    assert {r["channel"]: Image.open(io.BytesIO(store.get(k))).format for k, r in keys.items()} == {
        "square": "JPEG", "story": "WEBP"}
    # A campaign without channels: every image under `default`, a row's null channel included.
    request = ReviewRequest(run_id="spring-1", campaign="spring", assets=assets, run_date="2026-12-01")
    assert [s for s, _, _ in delivery_groups(request, [{**square, "channel": float("nan")}, story])] == ["default"]
    assert "square: JPEG; story: WEBP of at most 60,000 bytes" in form_description(
        ReviewRequest(run_id="r", campaign="spring", assets=assets, run_date="2026-12-01", channel_delivery=formats),
        [], None, {})


def test_review_parts_are_written_once_per_review(store, fresh_bucket):
    assets = f"s3://{fresh_bucket}"
    request = ReviewRequest(run_id="spring-1", campaign="spring", assets=assets, run_date="2026-12-01")
    known = {A: {"product_id": "kettle", "selected": True}}
    rows = review_rows(request, "rev-1", [ImageReview(asset_id=A, product_id="kettle")], known=known, reviewer="Ana",
                       reviewed_at=T0)
    uri = write_part_once(store, request, "reviews", "rev-1", rows)
    later = [dict(r, reviewed_at=T0 + timedelta(hours=1)) for r in rows]
    assert write_part_once(store, request, "reviews", "rev-1", later) == uri  # a rerun keeps the first
    write_part_once(store, request, "reviews", "rev-2", [dict(r, review_id="rev-2", decision="reject",
                                                                        reviewed_at=T0 + timedelta(hours=2))
                                                                 for r in rows])
    stored = read_parts(store, AssetsLayout.at(assets).run("spring-1", "2026-12-01"), "reviews")
    assert len(stored) == 2 and latest_decisions(stored)[A]["decision"] == "reject"
    assert read_parts(store, AssetsLayout.at(assets).run("spring-10", "2026-12-01"), "reviews") == []


def test_review_form_offers_the_runs_other_images_and_describes_the_selected():
    from adapters.steps.delivery import ReviewedRun
    from flows.review import ReviewForm, review_form
    from tasks.review import form_description

    images = tuple({"asset_id": a, "product_id": "kettle", "selected": a != C, "rank_in_product": i + 1,
                    "status": "ok", "output_key": f"s3://x/{a}.png"} for i, a in enumerate((A, B, C)))
    run = ReviewedRun(manifest={}, images=images)
    form = review_form(run)
    schema = form.model_json_schema()
    assert schema["properties"]["approve_also"]["items"]["enum"] == [C]
    assert schema["required"] == ["reviewer"]
    with pytest.raises(ValidationError):
        form(reviewer="Ana", approve_also=["f" * 32])  # only the run's own images
    assert review_form(ReviewedRun(manifest={}, images=images[:2])) is ReviewForm  # nothing else to approve
    request = ReviewRequest(run_id="spring-1", campaign="spring", title="春季", assets="s3://a", run_date="2026-12-01",
                            review={"required": True, "reviewers": ["brand team"], "wait_hours": 24},
                            delivery={"format": "webp", "max_bytes": 300_000})
    text = form_description(request, run.selected, "https://s3.example/index.html?sig", {A: "https://s3.example/a"})
    assert "**Review of 春季 (spring)** · run `spring-1`" in text and "For: brand team." in text
    assert "WEBP of at most 300,000 bytes" in text and "within 24 h nothing is delivered" in text
    assert "[Open the gallery](https://s3.example/index.html?sig)" in text
    assert f"![{A}](https://s3.example/a)" in text and f"`s3://x/{B}.png`" in text and C not in text


def test_documented_duckdb_query_gives_the_latest_decision_and_the_delivered_file(store, fresh_bucket):
    import re

    from adapters.infra import lake
    from adapters.steps import lake_ops
    from tests.helpers import ROOT

    tables = lake.Lake.of(store, AssetsLayout.at(f"s3://{fresh_bucket}"))
    request = ReviewRequest(run_id="spring-1", campaign="spring", assets="s3://a", run_date="2026-12-01")
    known = {a: {"product_id": "kettle", "selected": True} for a in (A, B, C)}
    first = review_rows(request, "rev-1", [ImageReview(asset_id=a, product_id="kettle") for a in (A, B)],
                        known=known, reviewer="Ana", reviewed_at=T0)
    second = review_rows(request, "rev-2", [ImageReview(asset_id=B, product_id="kettle", decision="reject")],
                         known=known, reviewer="Bo", reviewed_at=T0 + timedelta(hours=1))
    late = timeout_rows(request, "rev-3", [{"asset_id": a, "product_id": "kettle"} for a in (A, C)],
                        at=T0 + timedelta(days=3))
    delivered = [{"schema_version": SCHEMA_VERSION, "review_id": "rev-1", "run_id": "spring-1", "campaign": "spring",
                  "asset_id": A, "product_id": "kettle", "channel": "default", "source_key": "s3://a/x.png",
                  "source_sha256": "0" * 64, "delivered_key": f"s3://a/delivery/spring/default/kettle/{A}.jpg",
                  "format": "jpeg", "quality": 88, "max_bytes": None, "metadata": "strip", "width": 64, "height": 64,
                  "bytes": 1234, "sha256": "1" * 64, "delivered_at": T0}]
    for table, name, rows in (("reviews", "rev-1", first), ("reviews", "rev-2", second), ("reviews", "rev-3", late),
                              ("deliveries", "rev-1", delivered)):
        lake.commit(tables, table, rows, run_date="2026-12-01", txn=f"review:spring-1--{name}")
    page = (ROOT / "docs" / "metadata-tables.md").read_text()
    (query,) = [q for q in re.findall(r"(WITH latest AS .*?;)", page, flags=re.S)]
    got = lake_ops.query(tables, query).rows
    assert [(r[1], r[2], r[3], r[4]) for r in got] == [
        (A, "approve", "Ana", f"s3://a/delivery/spring/default/kettle/{A}.jpg"), (B, "reject", "Bo", None),
        (C, "timed-out", None, None)]


def test_a_run_that_needs_review_without_a_prefect_server_says_so_and_commits(campaign_env, store, tmp_path):
    import json

    from flows.campaign import run_campaign
    from tests.helpers import small_campaign

    spec = small_campaign(tmp_path, "signoff", 21)
    summary = run_campaign(RunRequest(campaign=str(spec), review=True, triggered_by="test"))
    assert summary.images_generated == 4 and json.loads(store.get(summary.manifest))["run_id"] == summary.run_id
    assert summary.review.startswith("not started") and "'review-run/review'" in summary.review
    assert any(line.startswith("  review:   not started") for line in summary.lines())
    assert store.list(f"{campaign_env['assets']}/delivery/") == []
    plain = run_campaign(RunRequest(campaign=str(small_campaign(tmp_path, "plain", 22)), triggered_by="test"))
    assert plain.review is None
