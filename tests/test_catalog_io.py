"""adapters.catalog_io: seeding the sample catalog, reading it back, quarantine, images, campaigns."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from adapters import catalog_io
from adapters.catalog_io import (
    CatalogState,
    campaign_uri,
    load_image,
    read_campaign,
    read_catalog,
    seed_sample_catalog,
)
from adapters.storage import S3Store

# catalogs/sample/campaign.yaml is written by another part of the project; until it exists
# the seeding tests use this stand-in (read_catalog never parses campaigns).
_STAND_IN_CAMPAIGN = "name: stand-in\nmatrix:\n  template: a photo of {product}\n"


def _campaign_text() -> str | None:
    shipped = resources.files("catalogs").joinpath("sample/campaign.yaml")
    return None if shipped.is_file() else _STAND_IN_CAMPAIGN


def _snapshot(store: S3Store, prefix_uri: str) -> dict[str, bytes]:
    base = prefix_uri.rstrip("/") + "/"
    return {info.uri[len(base) :]: store.get(info.uri) for info in store.list(base)}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def sample(store: S3Store, fresh_bucket: str) -> str:
    """A freshly seeded sample catalog under a prefix (so key handling below a bucket root is exercised)."""
    catalog = f"s3://{fresh_bucket}/catalog"
    seed_sample_catalog(store, catalog, campaign_text=_campaign_text())
    return catalog


# --------------------------------------------------------------------------- seeding


def test_seeding_is_deterministic(store: S3Store, fresh_bucket: str) -> None:
    first = f"s3://{fresh_bucket}/one"
    second = f"s3://{fresh_bucket}/two"
    counts = seed_sample_catalog(store, first, campaign_text=_campaign_text())
    catalog_io._sample_png.cache_clear()  # encode again rather than reuse this process's bytes
    seed_sample_catalog(store, second, campaign_text=_campaign_text())
    one, two = _snapshot(store, first), _snapshot(store, second)
    assert one == two
    assert counts["products"] >= 4 and counts["styles"] >= 2
    assert counts["objects"] == len(one)

    seed_sample_catalog(store, first, campaign_text=_campaign_text())  # reseed in place
    assert _snapshot(store, first) == one

    assert "campaigns/sample.yaml" in one
    assert {"products/brand-logo/image.png", "products/brand-logo/product.yaml"} <= set(one)
    assert {"styles/earthy-textures/style.yaml", "styles/space-age/style.yaml"} <= set(one)
    for key, data in one.items():
        if key.endswith(".png"):
            image = Image.open(io.BytesIO(data))
            assert max(image.size) <= 512, key
            assert image.mode in ("RGB", "RGBA"), key


def test_sample_images_are_the_same_in_another_process(store: S3Store, sample: str) -> None:
    # The logo goes through every step (RGBA source, cut-out background, PNG encoding).
    code = (
        "import hashlib; from adapters.catalog_io import _sample_png; "
        "print(hashlib.sha256(_sample_png('logo', 512, 'transparent')).hexdigest())"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = hashlib.sha256(store.get(f"{sample}/products/brand-logo/image.png")).hexdigest()
    assert other.stdout.strip() == here


def test_seed_uses_shipped_campaign(store: S3Store, fresh_bucket: str) -> None:
    if _campaign_text() is not None:
        pytest.skip("catalogs/sample/campaign.yaml is not written yet")
    import catalogs

    seed_sample_catalog(store, f"s3://{fresh_bucket}")
    assert store.get(f"s3://{fresh_bucket}/campaigns/sample.yaml").decode() == catalogs.sample_campaign_text()


# --------------------------------------------------------------------------- reading a good catalog


def test_read_sample_catalog(store: S3Store, sample: str) -> None:
    state = read_catalog(store, sample)
    assert isinstance(state, CatalogState)
    assert state.quarantine == []
    products = {p.product_id: p for p in state.products}
    styles = {s.style_id: s for s in state.styles}
    assert {"coffee-cup", "rocket", "alarm-clock", "brand-logo"} <= set(products)
    assert {"space-age", "earthy-textures"} <= set(styles)
    assert [p.product_id for p in state.products] == sorted(products)

    logo = products["brand-logo"]
    assert logo.mask_source == "alpha"
    assert logo.image_key == f"{sample}/products/brand-logo/image.png"  # keys are full URIs
    assert logo.title == "round brand logo" and "logo" in logo.tags
    assert products["coffee-cup"].mask_source == "none"
    assert (products["coffee-cup"].width, products["coffee-cup"].height) == (512, 341)
    assert products["alarm-clock"].category == "home"

    cup = products["coffee-cup"]
    assert cup.sha256 == hashlib.sha256(store.get(cup.image_key)).hexdigest()

    earthy = styles["earthy-textures"]
    assert [r.key.rsplit("/", 1)[1] for r in earthy.references] == ["brick.png", "grass.png", "gravel.png"]
    assert [r.weight for r in earthy.references] == [1.0, 0.6, 0.4]
    assert all(len(r.sha256) == 64 and r.key.startswith(f"{sample}/styles/") for r in earthy.references)
    assert len(styles["space-age"].references) == 1
    assert styles["space-age"].ip_scale == 0.7


def test_load_image_modes(store: S3Store, sample: str) -> None:
    state = read_catalog(store, sample)
    by_id = {p.product_id: p for p in state.products}
    logo = load_image(store, by_id["brand-logo"].image_key)
    assert logo.mode == "RGBA"
    assert logo.getpixel((0, 0))[3] == 0  # the corner is background: transparent
    assert logo.getpixel((250, 250))[3] == 255
    clock = load_image(store, by_id["alarm-clock"].image_key)
    assert clock.mode == "RGB"  # stored grayscale photo converted at seeding
    assert clock.size == (by_id["alarm-clock"].width, by_id["alarm-clock"].height)


# --------------------------------------------------------------------------- quarantine


def test_bad_entries_are_quarantined_beside_good_ones(store: S3Store, sample: str) -> None:
    good_png = _png(Image.new("RGB", (40, 30), (200, 10, 10)))
    truncated = _png(Image.effect_noise((64, 64), 50).convert("RGB"))[:-200]
    bad = {
        "products/text-image/image.png": b"this is a text file, not a picture\n",
        "products/empty-image/image.png": b"",
        "products/cut-short/image.png": truncated,
        "products/bad-yaml/image.png": good_png,
        "products/bad-yaml/product.yaml": b"title: [unclosed\ntags: x\n",
        "products/extra-field/image.png": good_png,
        "products/extra-field/product.yaml": b"title: Mug\ncolour: red\n",
        "products/no-image/product.yaml": b"title: Ghost\n",
        "products/two-images/image.png": good_png,
        "products/two-images/image.jpg": good_png,
        "products/bad-mask/image.png": good_png,
        "products/bad-mask/mask.png": _png(Image.new("L", (10, 10), 255)),
        "products/Bad Name/image.png": good_png,
        "products/stray.png": good_png,
        "styles/typo-weights/a.png": good_png,
        "styles/typo-weights/style.yaml": b"weights: {b.png: 2.0}\n",
        "styles/broken-ref/a.png": good_png,
        "styles/broken-ref/b.png": b"GIF89a not really",
        "styles/no-refs/style.yaml": b"tags: [x]\n",
        "styles/zero-weight/a.png": good_png,
        "styles/zero-weight/style.yaml": b"weights: {a.png: 0}\n",
    }
    extra_good = {
        "products/masked/image.png": good_png,
        "products/masked/mask.png": _png(Image.new("L", (40, 30), 255)),
        "products/no-meta/image.png": good_png,
        "styles/solo/a.png": good_png,
    }
    for key, data in {**bad, **extra_good}.items():
        store.put(f"{sample}/{key}", data)

    state = read_catalog(store, sample)
    reasons = {entry.key.removeprefix(f"{sample}/"): entry.reason for entry in state.quarantine}
    expected = {
        "products/text-image/": "products/text-image/image.png: not a decodable image (cannot identify image file)",
        "products/empty-image/": "products/empty-image/image.png: not a decodable image (empty file)",
        "products/cut-short/": "products/cut-short/image.png: not a decodable image (",
        "products/bad-yaml/": "products/bad-yaml/product.yaml: invalid YAML (",
        "products/extra-field/": "products/extra-field/product.yaml: unknown field 'colour'",
        "products/no-image/": "products/no-image/: no product image",
        "products/two-images/": "several product images (image.jpg, image.png)",
        "products/bad-mask/": "products/bad-mask/mask.png: mask is 10x10 but products/bad-mask/image.png is 40x30",
        "products/Bad Name/": "'Bad Name' is not a valid product id",
        "products/stray.png": "products/stray.png: not read (expected products/<id>/<file>",
        "styles/typo-weights/": "styles/typo-weights/style.yaml: weights given for b.png, but no such reference image",
        "styles/broken-ref/": "styles/broken-ref/b.png: not a decodable image",
        "styles/no-refs/": "styles/no-refs/: no reference images",
        "styles/zero-weight/": "styles/zero-weight/style.yaml: weight of a.png: Input should be greater than 0",
    }
    assert set(reasons) == set(expected)
    for key, fragment in expected.items():
        assert fragment in reasons[key], (key, reasons[key])

    products = {p.product_id: p for p in state.products}
    assert {"coffee-cup", "rocket", "alarm-clock", "brand-logo", "masked", "no-meta"} == set(products)
    assert products["masked"].mask_source == "file"
    assert products["masked"].mask_key == f"{sample}/products/masked/mask.png"
    assert products["no-meta"].title == "no meta"
    assert {s.style_id for s in state.styles} == {"space-age", "earthy-textures", "solo"}


def test_oversized_image_is_quarantined(store: S3Store, fresh_bucket: str) -> None:
    # 10000 x 5000 bilevel pixels compress to a few kB but would decode to 50 MP.
    catalog = f"s3://{fresh_bucket}"
    store.put(f"{catalog}/products/huge/image.png", _png(Image.new("1", (10_000, 5_000))))
    state = read_catalog(store, catalog)
    assert state.products == []
    assert state.quarantine[0].reason == "products/huge/image.png: image is 10000x5000, over the 40 MP limit"


def test_exif_rotation_is_applied(store: S3Store, fresh_bucket: str) -> None:
    catalog = f"s3://{fresh_bucket}"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored 60x20, shown 20x60
    buffer = io.BytesIO()
    Image.new("RGB", (60, 20), (0, 128, 255)).save(buffer, format="JPEG", exif=exif)
    store.put(f"{catalog}/products/tall/image.jpg", buffer.getvalue())
    state = read_catalog(store, catalog)
    (product,) = state.products
    assert (product.width, product.height) == (20, 60)
    assert load_image(store, product.image_key).size == (20, 60)


def test_empty_catalog(store: S3Store, fresh_bucket: str) -> None:
    assert read_catalog(store, f"s3://{fresh_bucket}") == CatalogState([], [], [], f"s3://{fresh_bucket}")


# --------------------------------------------------------------------------- campaigns and images


def test_read_campaign_from_s3_and_local(store: S3Store, sample: str, tmp_path: Path) -> None:
    text = read_campaign(store, f"{sample}/campaigns/sample.yaml")
    assert "name:" in text
    local = tmp_path / "spring.yaml"
    local.write_text("name: spring\n")
    assert read_campaign(None, str(local)) == "name: spring\n"
    with pytest.raises(FileNotFoundError, match="campaign 'nope.yaml' not found"):
        read_campaign(None, "nope.yaml")
    with pytest.raises(FileNotFoundError, match="not found: no such object"):
        read_campaign(store, f"{sample}/campaigns/missing.yaml")
    with pytest.raises(ValueError, match="no object store"):
        read_campaign(None, f"{sample}/campaigns/sample.yaml")


def test_campaign_uri(tmp_path: Path) -> None:
    assert campaign_uri("sample", "s3://cat/prefix") == "s3://cat/prefix/campaigns/sample.yaml"
    assert campaign_uri("s3://other/c.yaml", "s3://cat") == "s3://other/c.yaml"
    local = tmp_path / "spring.yaml"
    local.write_text("name: spring\n")
    assert campaign_uri(str(local), "s3://cat") == str(local)
    assert campaign_uri("missing/spring.yaml", "s3://cat") == "missing/spring.yaml"


def test_load_image_errors(store: S3Store, fresh_bucket: str) -> None:
    uri = f"s3://{fresh_bucket}/x.png"
    with pytest.raises(FileNotFoundError):
        load_image(store, uri)
    store.put(uri, b"not an image")
    with pytest.raises(ValueError, match="not a decodable image"):
        load_image(store, uri)
