"""Catalog refresh: the bad-input corpus, incremental snapshots, the Prefect flow and its event,
campaign runs pinned to a snapshot, and the `stylematrix catalog` commands end to end."""

from __future__ import annotations

import io
import json
import struct
import time
import uuid
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data
from skimage.util import img_as_ubyte

from adapters.catalog import snapshots
from adapters.catalog.images import load_image
from adapters.catalog.sample import sample_png, seed_sample_catalog
from adapters.infra.storage import S3Store
from adapters.steps import publish
from tasks.catalog_rules import find_duplicates, key_problem, perceptual_hash
from tasks.phash import hamming
from tasks.snapshot_tables import SNAPSHOT_TABLES
from tests.helpers import ROOT, documented_columns, encode, photo, run_cli, small_campaign

# --------------------------------------------------------------------------- the corpus


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels but carries almost no data: a decompression bomb's header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def rotated_jpeg() -> bytes:
    """Stored 160x80, left half red and right half blue, with EXIF "rotate 90 CW to display"."""
    stored = Image.new("RGB", (160, 80), (220, 20, 20))
    stored.paste((20, 20, 220), (80, 0, 160, 80))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", exif=exif, quality=95)


def palette_cutout() -> bytes:
    """The horse silhouette as a palette PNG whose background index is transparent."""
    shape = ~data.horse()
    palette = Image.fromarray(np.where(shape, 1, 0).astype(np.uint8), mode="P")
    palette.putpalette([255, 255, 255, 120, 70, 30] + [0, 0, 0] * 254)
    return encode(palette, "PNG", transparency=0)


def sixteen_bit_png() -> bytes:
    """skimage's camera photo as a 16-bit grayscale PNG (what a scanner or raw converter writes)."""
    return encode(Image.fromarray(img_as_ubyte(data.camera()).astype(np.uint16) * 257), "PNG")


def sixteen_bit_rgb_png() -> bytes:
    ok, encoded = cv2.imencode(".png", np.asarray(photo("astronaut", 256))[:, :, ::-1].astype(np.uint16) * 257)
    assert ok
    return encoded.tobytes()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (96, 96), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def on_white() -> bytes:
    """skimage's coffee photo cut to its horse silhouette, placed on a plain white background."""
    shape = ~data.horse()  # True on the horse
    picture = np.full((shape.shape[0] + 48, shape.shape[1] + 48, 3), 255, dtype=np.uint8)
    inside = np.zeros(picture.shape[:2], dtype=bool)
    inside[24:-24, 24:-24] = shape
    picture[inside] = img_as_ubyte(data.coffee())[: shape.shape[0], : shape.shape[1]][shape]
    return encode(Image.fromarray(picture), "PNG")


def corpus() -> tuple[dict[str, bytes], dict[str, str]]:
    """Bad inputs (and the awkward-but-fine ones) as catalog-relative key -> bytes, and for each
    refused key the fragment of the reason a person should read."""
    jpeg = encode(photo("coffee", 256), "JPEG", quality=90)
    good = encode(photo("chelsea", 256), "PNG")
    objects = {
        "products/zero-bytes/image.png": b"",
        "products/truncated/image.jpg": jpeg[: len(jpeg) // 2],
        "products/text-as-jpeg/image.jpg": b"this is not a photo, it is a note\n",
        "products/bomb/image.png": png_header_only(100_000, 100_000),
        "products/thumbnail/image.png": encode(photo("rocket", 40), "PNG"),
        "styles/banner/strip.png": encode(Image.new("RGB", (2000, 100), (30, 90, 160)), "PNG"),
        "styles/animated/loop.gif": animated_gif(),
        "products/../escape/image.png": good,
        "products//etc/image.png": good,
        "products/bad-yaml/image.png": good,
        "products/bad-yaml/product.yaml": b"title: [unclosed\ntags: x\n",
        "products/extra-field/image.png": good,
        "products/extra-field/product.yaml": b"title: Mug\ncolour: red\n",
        "products/no-image/product.yaml": b"title: Ghost\n",
        "products/bad-mask/image.png": good,
        "products/bad-mask/mask.png": encode(Image.new("L", (100, 80), 255), "PNG"),
        # Awkward but usable: converted, rotated, or masked by their transparency.
        "products/cmyk-print/image.jpg": encode(photo("coffee", 256).convert("CMYK"), "JPEG", quality=95),
        "products/sixteen-bit/image.png": sixteen_bit_png(),
        "products/sixteen-bit-rgb/image.png": sixteen_bit_rgb_png(),
        "products/palette-cutout/image.png": palette_cutout(),
        "products/rotated/image.jpg": rotated_jpeg(),
        "products/on-white/image.png": on_white(),  # no mask file, no alpha: the plain border gives the mask
    }
    reasons = {
        "products/zero-bytes/": "products/zero-bytes/image.png: empty file (0 bytes)",
        "products/truncated/": "products/truncated/image.jpg: truncated or corrupt image data (image file is truncated",
        "products/text-as-jpeg/": "products/text-as-jpeg/image.jpg: not an image: the content is not PNG, JPEG, WebP or "
                                  "GIF; it starts with text: 'this is not a photo",
        "products/bomb/": "products/bomb/image.png: image declares 10,000 MP, over the 40 MP limit; not decoded",
        "products/thumbnail/": "products/thumbnail/image.png: image is 40x27, too small (the short side must be at least 64 px)",
        "styles/banner/": "styles/banner/strip.png: image is 2000x100, an aspect ratio of 20:1 (at most 10:1)",
        "styles/animated/": "styles/animated/loop.gif: animated image (3 frames); use a single still image",
        "products/../escape/image.png": "products/../escape/image.png: unsafe key ('..' segment",
        "products//etc/image.png": "products//etc/image.png: unsafe key (empty path segment",
        "products/bad-yaml/": "products/bad-yaml/product.yaml: invalid YAML (",
        "products/extra-field/": "products/extra-field/product.yaml: unknown field 'colour' (allowed: title, category, tags",
        "products/no-image/": "products/no-image/: no product image",
        "products/bad-mask/": "products/bad-mask/mask.png: mask is 100x80 but products/bad-mask/image.png is 256x170",
    }
    return objects, reasons


@pytest.fixture
def catalog(store: S3Store, fresh_bucket: str) -> str:
    """The sample catalog under a prefix."""
    uri = f"s3://{fresh_bucket}/catalog"
    seed_sample_catalog(store, uri)
    return uri


def put_all(store: S3Store, catalog: str, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        store.put(f"{catalog}/{key}", body)


# --------------------------------------------------------------------------- the corpus, refreshed


def test_every_bad_input_is_quarantined_with_a_reason_and_the_rest_is_catalogued(store, catalog):
    objects, reasons = corpus()
    put_all(store, catalog, objects)
    report = snapshots.refresh(store, catalog)
    state = snapshots.load_snapshot(store, catalog)

    found = {q.key.removeprefix(f"{catalog}/"): q.reason for q in state.quarantine}
    assert set(found) == set(reasons)
    for key, fragment in reasons.items():
        assert found[key].startswith(fragment), (key, found[key])

    products = {p.product_id: p for p in state.products}
    assert set(products) == {"coffee-cup", "rocket", "alarm-clock", "brand-logo", "cmyk-print", "sixteen-bit",
                             "sixteen-bit-rgb", "palette-cutout", "rotated", "on-white"}
    assert {s.style_id for s in state.styles} == {"space-age", "earthy-textures"}
    assert (report.products, report.styles, report.quarantined) == (10, 2, len(reasons))
    # Unsafe keys and the empty file are refused from the listing alone, never downloaded.
    assert report.unread == 3 and report.fetched == report.listed - 3

    # Every accepted image is fingerprinted: sha256, upright size, stored mode, perceptual hash.
    for p in state.products:
        assert len(p.sha256) == 64 and len(p.phash) == 16 and p.width >= 64 and p.mode, p.product_id
    assert products["cmyk-print"].mode == "CMYK"
    assert products["sixteen-bit"].mode == "I;16"
    assert products["palette-cutout"].mode == "P" and products["palette-cutout"].mask_source == "alpha"
    assert (products["rotated"].width, products["rotated"].height) == (80, 160)
    rows = {r["product_id"]: r for r in snapshots.read_snapshot_rows(store, catalog, report.snapshot_id, "products")}
    assert products["on-white"].mask_source == rows["on-white"]["mask_source"] == "auto"
    horse = (~data.horse()).mean() * data.horse().size / ((data.horse().shape[0] + 48) * (data.horse().shape[1] + 48))
    assert abs(rows["on-white"]["mask_coverage"] - horse) < 0.02  # the mask is the horse, not the whole photo
    assert rows["coffee-cup"]["mask_source"] == "none"  # a busy background gives no mask


def test_awkward_images_are_read_as_a_person_sees_them(store, catalog):
    objects, _ = corpus()
    put_all(store, catalog, objects)
    snapshots.refresh(store, catalog)
    products = {p.product_id: p for p in snapshots.load_snapshot(store, catalog).products}

    # CMYK: converted to RGB with the right colours (not inverted, not washed out).
    cmyk = np.asarray(load_image(store, products["cmyk-print"].image_key), dtype=np.int16)
    assert load_image(store, products["cmyk-print"].image_key).mode == "RGB"
    assert np.abs(cmyk - np.asarray(photo("coffee", 256), dtype=np.int16)).mean() < 6

    # 16-bit: scaled to 8 bits, not clipped to white.
    camera = np.asarray(load_image(store, products["sixteen-bit"].image_key))
    assert camera.shape == (512, 512, 3)
    assert np.abs(camera[:, :, 0].astype(np.int16) - img_as_ubyte(data.camera())).max() <= 1
    rgb16 = np.asarray(load_image(store, products["sixteen-bit-rgb"].image_key), dtype=np.int16)
    assert np.abs(rgb16 - np.asarray(photo("astronaut", 256), dtype=np.int16)).max() <= 1

    # Palette transparency: RGBA with the background transparent.
    cutout = load_image(store, products["palette-cutout"].image_key)
    inside = np.argwhere(~data.horse())[1000]  # (row, column) of a horse pixel
    assert cutout.mode == "RGBA" and cutout.getpixel((0, 0))[3] == 0
    assert cutout.getpixel((int(inside[1]), int(inside[0]))) == (120, 70, 30, 255)

    # EXIF rotation applied: the stored left half (red) is on top once upright.
    upright = load_image(store, products["rotated"].image_key)
    assert upright.size == (80, 160)
    top, bottom = upright.getpixel((40, 20)), upright.getpixel((40, 140))
    assert top[0] > 180 and top[2] < 80 and bottom[2] > 180 and bottom[0] < 80


def test_the_decompression_bomb_is_refused_from_its_header():
    from tasks.catalog_rules import Rejected, decode_image

    # 100000 x 100000 RGB would be 30 GB: the refusal comes before any pixel is allocated.
    with pytest.raises(Rejected, match="declares 10,000 MP"):
        decode_image(png_header_only(100_000, 100_000), "bomb.png")
    # Under PIL's own bomb limit but over ours: refused by our check, still before decoding.
    with pytest.raises(Rejected, match=r"image is 9000x9000 \(81 MP\), over the 40 MP limit; not decoded"):
        decode_image(png_header_only(9_000, 9_000), "big.png")


# --------------------------------------------------------------------------- incremental refresh


def test_refresh_reads_only_what_changed(store, catalog):
    first = snapshots.refresh(store, catalog)
    assert first.written and first.previous_id is None
    assert (first.listed, first.fetched, first.skipped) == (14, 14, 0)
    assert snapshots.latest_snapshot_id(store, catalog) == first.snapshot_id

    unchanged = snapshots.refresh(store, catalog)
    assert not unchanged.written and unchanged.snapshot_id == first.snapshot_id
    assert (unchanged.fetched, unchanged.skipped) == (0, 14)

    store.put(f"{catalog}/products/rocket/product.yaml", b"title: big red rocket\ntags: [space]\n")
    second = snapshots.refresh(store, catalog)
    assert second.written and second.previous_id == first.snapshot_id
    assert (second.listed, second.fetched, second.skipped, second.removed) == (14, 1, 13, 0)
    assert snapshots.latest_snapshot_id(store, catalog) == second.snapshot_id
    titles = {p.product_id: p.title for p in snapshots.load_snapshot(store, catalog).products}
    assert titles["rocket"] == "big red rocket"

    # The first snapshot is untouched: a run pinned to it reads the catalog as it was.
    old = {p.product_id: p.title for p in snapshots.load_snapshot(store, catalog, first.snapshot_id).products}
    assert old["rocket"] == "rocket on the launch pad"

    store.delete(f"{catalog}/products/alarm-clock/product.yaml")
    third = snapshots.refresh(store, catalog)
    assert third.written and (third.listed, third.fetched, third.removed) == (13, 0, 1)
    clock = {p.product_id: p for p in snapshots.load_snapshot(store, catalog).products}["alarm-clock"]
    assert (clock.title, clock.category) == ("alarm clock", "")  # the folder name, no metadata

    # --full trusts nothing: every object is read again; the same inventory commits nothing new.
    snapshot_ids = snapshots.snapshot_ids(store, catalog)
    full = snapshots.refresh(store, catalog, full=True)
    assert (full.fetched, full.skipped) == (13, 0)
    assert not full.written and full.snapshot_id == third.snapshot_id
    assert snapshots.snapshot_ids(store, catalog) == snapshot_ids
    assert snapshots.latest_snapshot_id(store, catalog) == third.snapshot_id

    # ... but a full refresh after a change commits one.
    store.put(f"{catalog}/products/alarm-clock/product.yaml", b"title: clock\n")
    changed = snapshots.refresh(store, catalog, full=True)
    assert changed.written and changed.snapshot_id != third.snapshot_id


def test_a_full_refresh_under_new_rules_commits_a_snapshot(store, catalog, monkeypatch):
    import tasks.snapshot_tables

    first = snapshots.refresh(store, catalog)
    monkeypatch.setattr(snapshots, "RULES_VERSION", "rules-of-tomorrow")
    monkeypatch.setattr(tasks.snapshot_tables, "RULES_VERSION", "rules-of-tomorrow")
    for full in (True, False):
        again = snapshots.refresh(store, catalog, full=full)
        assert again.written is full and again.fetched == (14 if full else 0)  # then the new rules' snapshot is trusted
    assert snapshots.latest_snapshot_id(store, catalog) != first.snapshot_id


def test_snapshot_files_and_named_snapshots(store, catalog):
    report = snapshots.refresh(store, catalog)
    prefix = f"{catalog}/_snapshots/{report.snapshot_id}/"
    assert {o.uri.removeprefix(prefix) for o in store.list(prefix)} == {
        "products.parquet", "styles.parquet", "quarantine.parquet", "objects.parquet", "_SNAPSHOT.json"}
    info = json.loads(store.get(prefix + "_SNAPSHOT.json"))
    assert info["snapshot_id"] == report.snapshot_id and info["listed"] == 14 and info["products"] == 4
    products = snapshots.read_snapshot_rows(store, catalog, report.snapshot_id, "products")
    assert [c.name for c in SNAPSHOT_TABLES["products"]] == list(products[0])
    logo = next(r for r in products if r["product_id"] == "brand-logo")
    assert logo["mask_source"] == "alpha" and 0.3 < logo["mask_coverage"] < 0.9
    styles = snapshots.read_snapshot_rows(store, catalog, report.snapshot_id, "styles")
    assert [(r["style_id"], r["reference_index"]) for r in styles if r["style_id"] == "earthy-textures"] == [
        ("earthy-textures", 0), ("earthy-textures", 1), ("earthy-textures", 2)]

    with pytest.raises(FileNotFoundError, match=f"has no snapshot 'nope'; known: {report.snapshot_id}"):
        snapshots.load_snapshot(store, catalog, "nope")
    with pytest.raises(ValueError, match="is not a snapshot id"):
        snapshots.load_snapshot(store, catalog, "../products")


def test_no_snapshot_yet(store, fresh_bucket):
    with pytest.raises(FileNotFoundError, match="has no snapshot yet: run `stylematrix catalog refresh`"):
        snapshots.load_snapshot(store, f"s3://{fresh_bucket}")


def test_duplicates_are_flagged_across_the_catalog(store, catalog):
    rocket = store.get(f"{catalog}/products/rocket/image.png")
    recompressed = encode(Image.open(io.BytesIO(rocket)).convert("RGB").resize((384, 256)), "JPEG", quality=70)
    put_all(store, catalog, {"products/rocket-copy/image.png": rocket, "styles/launch/pad.jpg": recompressed})
    report = snapshots.refresh(store, catalog)
    assert report.duplicates == 2
    rows = {r["product_id"]: r for r in snapshots.read_snapshot_rows(store, catalog, report.snapshot_id, "products")}
    assert rows["rocket"]["duplicate_of"] is None
    assert rows["rocket-copy"]["duplicate_of"] == f"{catalog}/products/rocket/image.png"
    assert (rows["rocket-copy"]["duplicate_kind"], rows["rocket-copy"]["duplicate_distance"]) == ("exact", 0)
    launch = next(r for r in snapshots.read_snapshot_rows(store, catalog, report.snapshot_id, "styles")
                  if r["style_id"] == "launch")
    assert launch["duplicate_of"] == f"{catalog}/products/rocket/image.png" and launch["duplicate_kind"] == "near"
    # Duplicates are flagged, not refused: both stay usable.
    state = snapshots.load_snapshot(store, catalog)
    assert "rocket-copy" in {p.product_id for p in state.products} and "launch" in {s.style_id for s in state.styles}


def test_a_run_refuses_images_changed_since_its_snapshot(store, catalog):
    from adapters.steps import conditioning

    store.put(f"{catalog}/products/alarm-clock/mask.png",
              encode(Image.new("L", Image.open(io.BytesIO(store.get(f"{catalog}/products/alarm-clock/image.png"))).size, 255), "PNG"))
    pinned = snapshots.refresh(store, catalog).snapshot_id
    before = snapshots.load_snapshot(store, catalog, pinned)
    style = next(s for s in before.styles if s.style_id == "space-age")
    reference = style.references[0].key

    # Overwritten after the snapshot: a product photo, a mask and one style reference.
    store.put(f"{catalog}/products/rocket/image.png", sample_png("coffee", 300, "keep"))
    store.put(f"{catalog}/products/alarm-clock/mask.png",
              encode(Image.new("L", (before.products[0].width, before.products[0].height), 0), "PNG"))
    store.put(reference, encode(photo("astronaut", 256), "PNG"))
    # Re-uploaded with the same bytes (a new ETag on some stores, the same sha256): no change.
    store.put(f"{catalog}/products/coffee-cup/image.png", store.get(f"{catalog}/products/coffee-cup/image.png"))

    state = snapshots.load_snapshot(store, catalog, pinned, verify=True)
    assert state.snapshot_id == pinned
    assert {p.product_id for p in state.products} == {"coffee-cup", "brand-logo"}
    assert {s.style_id for s in state.styles} == {s.style_id for s in before.styles} - {"space-age"}
    reasons = {q.entry_id: q.reason for q in state.quarantine if q.entry_id}
    relative = reference.removeprefix(f"{catalog}/")
    assert reasons == {
        "rocket": f"products/rocket/image.png changed since snapshot {pinned}: refresh the catalog",
        "alarm-clock": f"products/alarm-clock/mask.png changed since snapshot {pinned}: refresh the catalog",
        "space-age": f"{relative} changed since snapshot {pinned}: refresh the catalog",
    }
    assert {q.kind for q in state.quarantine if q.entry_id} == {"product", "style"}
    # Unverified, the snapshot still says what it recorded.
    assert len(snapshots.load_snapshot(store, catalog, pinned).products) == 4

    store.delete(f"{catalog}/products/brand-logo/image.png")
    gone = snapshots.load_snapshot(store, catalog, pinned, verify=True)
    assert {p.product_id for p in gone.products} == {"coffee-cup"}
    assert f"products/brand-logo/image.png was deleted since snapshot {pinned}" in {
        q.reason.split(":")[0] for q in gone.quarantine}

    # Read by a batch, the changed bytes are refused under the digest the snapshot recorded.
    product = {p.product_id: p for p in before.products}["rocket"]
    with pytest.raises(ValueError, match=r"products/rocket/image.png changed since the catalog snapshot .*refresh the catalog"):
        conditioning.product_canvases(store, product, {"width": 64, "height": 64, "canny_low": 100, "canny_high": 200},
                                      ["canny"])
    with pytest.raises(ValueError, match=f"{relative} changed since the catalog snapshot"):
        conditioning.style_input(store, style)
    assert load_image(store, product.image_key).size == (300, 200)  # unpinned reads still work
    assert conditioning.style_input(store, next(s for s in before.styles if s.style_id != "space-age"))


def test_perceptual_hash_and_duplicate_grouping():
    coffee, rocket = photo("coffee", 256), photo("rocket", 256)
    again = Image.open(io.BytesIO(encode(coffee.resize((200, 133)), "JPEG", quality=60)))
    assert hamming(perceptual_hash(coffee), perceptual_hash(again)) <= 4
    assert hamming(perceptual_hash(coffee), perceptual_hash(rocket)) > 16
    found = find_duplicates([("b", "s1", "ffff0000ffff0000"), ("a", "s1", "0000000000000000"),
                             ("c", "s2", "ffff0000ffff0001"), ("d", "s3", "0f0f0f0f0f0f0f0f")])
    # Same bytes are an exact duplicate whatever the hashes say; 33 bits apart is another picture.
    assert {k: (d.of, d.kind, d.distance) for k, d in found.items()} == {"b": ("a", "exact", 0)}
    near = find_duplicates([("a", "s1", "ffff0000ffff0000"), ("b", "s2", "ffff0000ffff0003"), ("c", "s3", "ffff0000ffff00ff")])
    assert {k: (d.of, d.kind, d.distance) for k, d in near.items()} == {"b": ("a", "near", 2), "c": ("a", "near", 8)}


def test_unsafe_keys():
    assert key_problem("products/mug/image.png") is None
    assert "'..'" in key_problem("products/../../etc/image.png")
    assert key_problem("/products/mug/image.png") == "absolute path"
    assert "empty path segment" in key_problem("products//etc/passwd")
    assert "backslash" in key_problem("products/mug\\..\\image.png")
    assert "control character" in key_problem("products/mug/ima\nge.png")


def test_snapshot_tables_are_documented():
    doc = (ROOT / "docs" / "metadata-tables.md").read_text()
    for table, columns in SNAPSHOT_TABLES.items():
        documented = documented_columns(doc, f"### `{table}.parquet`", "\n#")
        assert documented == [(c.name, c.type) for c in columns], f"{table}: doc and schema differ"


# --------------------------------------------------------------------------- the flow, its event, campaign runs


def read_events(resource_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        page = client.read_events(EventFilter(event=EventNameFilter(name=["stylematrix.catalog.updated"]),
                                              resource=EventResourceFilter(id=[resource_id])),
                                  limit=50)  # the client defaults to 100, which the server refuses
    return page.events


def wait_for_events(resource_id: str, count: int, timeout: float = 60) -> list:
    """Events reach the server asynchronously: poll until `count` arrived (or give up)."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    deadline = time.monotonic() + timeout
    while True:
        events = read_events(resource_id)
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_refresh_flow_emits_an_event_when_the_catalog_changed(campaign_env, store):
    from flows.catalog import refresh_catalog

    catalog = campaign_env["catalog"]
    resource = f"stylematrix.catalog.{catalog}"
    first = refresh_catalog(catalog=catalog)
    assert first["written"] and first["quarantined"] == 1  # campaign_env adds one broken product
    (event,) = wait_for_events(resource, 1)
    assert event.payload["snapshot_id"] == first["snapshot_id"]
    assert (event.payload["listed"], event.payload["fetched"], event.payload["products"]) == (15, 15, 4)

    again = refresh_catalog(catalog=catalog)
    assert not again["written"] and again["skipped"] == 15

    store.put(f"{catalog}/products/broken-mug/image.png", sample_png("coffee", 200, "keep"))
    fixed = refresh_catalog(catalog=catalog)
    assert fixed["written"] and (fixed["fetched"], fixed["quarantined"], fixed["products"]) == (1, 0, 5)
    events = wait_for_events(resource, 2)
    assert len(events) == 2  # the unchanged refresh emitted nothing
    assert {e.payload["snapshot_id"] for e in events} == {first["snapshot_id"], fixed["snapshot_id"]}


def test_a_trailing_slash_names_the_same_catalog(campaign_env):
    from flows.catalog import refresh_catalog

    catalog = campaign_env["catalog"]
    report = refresh_catalog(catalog=catalog + "/")
    assert report["written"] and report["catalog"] == catalog
    (event,) = wait_for_events(f"stylematrix.catalog.{catalog}", 1)
    assert event.payload["snapshot_id"] == report["snapshot_id"]
    again = refresh_catalog(catalog=catalog)
    assert not again["written"] and again["snapshot_id"] == report["snapshot_id"]


def test_a_run_given_the_catalog_with_a_trailing_slash_reads_the_same_snapshot(campaign_env, store, tmp_path,
                                                                               monkeypatch):
    from adapters.infra.settings import get_settings
    from catalogs.models import RunRequest
    from flows import steps
    from flows.campaign import run_campaign
    from flows.catalog import catalog_resource, refresh_catalog

    catalog = campaign_env["catalog"]
    snapshot = refresh_catalog(catalog=catalog)["snapshot_id"]
    read: list[tuple[str, str]] = []
    real = steps.load_snapshot

    def load_snapshot(store, catalog, snapshot, **kwargs):
        state = real(store, catalog, snapshot, **kwargs)
        read.append((catalog, state.snapshot_id))
        return state

    monkeypatch.setattr(steps, "load_snapshot", load_snapshot)
    spec = str(small_campaign(tmp_path, "slash", 1))
    plans = [run_campaign(RunRequest(campaign=spec, catalog=given, dry_run=True, triggered_by="test"))
             for given in (catalog, catalog + "/")]
    assert read == [(catalog, snapshot)] * 2  # one catalog URI, one snapshot lookup
    assert plans[0] == plans[1] and plans[0].images_planned == 4
    assert snapshots.latest_snapshot_id(store, catalog) == snapshot  # no second refresh under another spelling
    assert catalog_resource(get_settings().catalog_uri(catalog + "/")) == catalog_resource(catalog)


def test_campaign_runs_read_a_snapshot_and_record_it(campaign_env, store, tmp_path):
    from catalogs.models import RunRequest
    from flows.campaign import run_campaign
    from flows.catalog import refresh_catalog

    catalog = campaign_env["catalog"]
    spec = small_campaign(tmp_path, "small", 3)

    def runs_row(summary) -> dict:
        manifest = json.loads(store.get(summary.manifest))
        return publish.read_table(store, manifest, "runs").iloc[0].to_dict()

    # No snapshot yet: the run refreshes the catalog first, then reads that snapshot.
    first = run_campaign(RunRequest(campaign=str(spec), triggered_by="test"))
    original = snapshots.latest_snapshot_id(store, catalog)
    assert original is not None
    assert runs_row(first)["snapshot_id"] == original and runs_row(first)["products"] == 4

    store.put(f"{catalog}/products/teapot/image.png", sample_png("coffee", 300, "keep"))
    refreshed = refresh_catalog(catalog=catalog)["snapshot_id"]

    pinned = run_campaign(RunRequest(campaign=str(spec), snapshot=original, triggered_by="test"))
    assert runs_row(pinned)["snapshot_id"] == original
    assert runs_row(pinned)["products"] == 4 and pinned.images_generated == 0  # the teapot is not in it

    latest = run_campaign(RunRequest(campaign=str(spec), triggered_by="test"))
    assert runs_row(latest)["snapshot_id"] == refreshed
    assert runs_row(latest)["products"] == 5 and latest.images_generated == 1


# --------------------------------------------------------------------------- the command line


def test_serve_names_every_deployment_it_registers():
    import re

    from flows.cli import deployment_names

    declared = re.findall(r"^  - name: (\S+)$", (ROOT / "prefect.yaml").read_text(), flags=re.M)
    assert "catalog-refresh" in declared
    assert deployment_names() == declared


@pytest.mark.slow
def test_catalog_commands_end_to_end(s3_server, store, tmp_path, prefect_api_env):
    bucket = f"cli-{uuid.uuid4().hex[:10]}"
    store.ensure_bucket(bucket)
    # The session's Prefect server: `catalog refresh` starts no temporary one (the demo's test does).
    env = {"AWS_ENDPOINT_URL_S3": s3_server.endpoint, "STYLEMATRIX_CATALOG": f"s3://{bucket}",
           "PREFECT_HOME": str(tmp_path / "prefect"), **prefect_api_env}
    materials = tmp_path / "materials"
    (materials / "products" / "cup").mkdir(parents=True)
    (materials / "products" / "cup" / "image.png").write_bytes(sample_png("coffee", 256, "keep"))
    (materials / "products" / "broken").mkdir()
    (materials / "products" / "broken" / "image.jpg").write_bytes(b"not a photo")
    (materials / "styles" / "rough").mkdir(parents=True)
    (materials / "styles" / "rough" / "brick.png").write_bytes(sample_png("brick", 128, "keep"))

    empty = run_cli(["catalog", "ls"], env, tmp_path)
    assert empty.returncode == 2
    assert empty.stderr.strip() == f"stylematrix: error: catalog s3://{bucket} has no snapshot yet: run `stylematrix catalog refresh`"

    imported = run_cli(["catalog", "import", str(materials)], env, tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert "1 products, 1 style sets; 2 files uploaded, 0 unchanged, 1 refused" in imported.stdout
    assert "products/broken/image.jpg: not an image" in imported.stderr
    again = run_cli(["catalog", "import", str(materials)], env, tmp_path)
    assert "0 files uploaded, 2 unchanged" in again.stdout

    refreshed = run_cli(["catalog", "refresh"], env, tmp_path)
    assert refreshed.returncode == 0, refreshed.stderr[-3000:]
    assert "objects: 2 listed, 2 fetched, 0 skipped (unchanged)" in refreshed.stdout
    assert "entries: 1 products, 1 style sets, 0 quarantined" in refreshed.stdout

    listed = run_cli(["catalog", "ls"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    cup = next(line for line in lines if line.strip().startswith("cup "))
    assert "256x171" in cup and "RGB" in cup and "none" in cup
    assert any(line.strip().startswith("rough ") and "brick.png" in line for line in lines)
    assert "quarantine (0)" in listed.stdout

    missing = run_cli(["catalog", "ls", "--snapshot", "20200101T000000Z-00000000"], env, tmp_path)
    assert missing.returncode == 2 and "has no snapshot '20200101T000000Z-00000000'; known: " in missing.stderr
