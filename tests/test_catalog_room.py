"""The catalog room (adapters/catalog): seeding, reading, entry rules, images and masks, importing, campaigns."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from adapters.catalog import sample as sample_catalog
from adapters.catalog import scan as catalog_scan
from adapters.catalog.campaigns import campaign_uri, read_campaign
from adapters.catalog.images import load_image, load_mask
from adapters.catalog.importing import entry_id_from_name, import_folder
from adapters.catalog.sample import sample_png, seed_sample_catalog
from adapters.catalog.scan import read_catalog
from adapters.infra.storage import S3Store
from tasks.catalog_build import CatalogState
from tests.helpers import encode

# catalogs/sample/campaign.yaml is written by another part of the project; until it exists
# the seeding tests use this stand-in (read_catalog never parses campaigns).
_STAND_IN_CAMPAIGN = "name: stand-in\nmatrix:\n  template: a photo of {product}\n"


def _campaign_text() -> str | None:
    shipped = resources.files("catalogs").joinpath("sample/campaign.yaml")
    return None if shipped.is_file() else _STAND_IN_CAMPAIGN


def _snapshot(store: S3Store, prefix_uri: str) -> dict[str, bytes]:
    base = prefix_uri.rstrip("/") + "/"
    return {info.uri[len(base) :]: store.get(info.uri) for info in store.list(base)}


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
    sample_catalog.sample_png.cache_clear()  # encode again rather than reuse this process's bytes
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
        "import hashlib; from adapters.catalog.sample import sample_png; "
        "print(hashlib.sha256(sample_png('logo', 512, 'transparent')).hexdigest())"
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
    assert state.quarantine == [] and state.duplicates == {}
    products = {p.product_id: p for p in state.products}
    styles = {s.style_id: s for s in state.styles}
    assert {"coffee-cup", "rocket", "alarm-clock", "brand-logo"} <= set(products)
    assert {"space-age", "earthy-textures"} <= set(styles)
    assert [p.product_id for p in state.products] == sorted(products)

    logo = products["brand-logo"]
    assert logo.mask_source == "alpha" and logo.mode == "RGBA"
    assert logo.image_key == f"{sample}/products/brand-logo/image.png"  # keys are full URIs
    assert logo.title == "round brand logo" and "logo" in logo.tags
    assert products["coffee-cup"].mask_source == "none"  # a full-frame photo: no plain background
    assert (products["coffee-cup"].width, products["coffee-cup"].height) == (512, 341)
    assert products["alarm-clock"].category == "home"

    cup = products["coffee-cup"]
    assert cup.sha256 == hashlib.sha256(store.get(cup.image_key)).hexdigest()
    assert cup.mode == "RGB" and len(cup.phash) == 16 and cup.phash != products["rocket"].phash

    earthy = styles["earthy-textures"]
    assert [r.key.rsplit("/", 1)[1] for r in earthy.references] == ["brick.png", "grass.png", "gravel.png"]
    assert [r.weight for r in earthy.references] == [1.0, 0.6, 0.4]
    assert earthy.combine == "weighted" and styles["space-age"].combine == "concat"
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
    mask, source = load_mask(store, by_id["brand-logo"])
    assert source == "alpha" and mask.size == logo.size and mask.getpixel((0, 0)) == 0
    assert load_mask(store, by_id["coffee-cup"]) == (None, "none")


def test_entry_rules_quarantine_beside_good_entries(store: S3Store, sample: str) -> None:
    good_png = encode(Image.new("RGB", (96, 72), (200, 10, 10)))
    bad = {
        "products/two-images/image.png": good_png,
        "products/two-images/image.jpg": good_png,
        "products/wrong-name/photo.png": good_png,
        "products/Bad Name/image.png": good_png,
        "products/black-mask/image.png": good_png,
        "products/black-mask/mask.png": encode(Image.new("L", (96, 72), 0)),
        "products/stray.png": good_png,
        "products/deep/er/image.png": good_png,
        "products/yaml-alias/image.png": good_png,
        "products/yaml-alias/product.yaml": b"title: &t Mug\ncategory: *t\n",
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
        "products/masked/mask.png": encode(Image.new("L", (96, 72), 255)),
        "products/masked/notes.txt": b"shot on a Tuesday\n",
        "products/masked/.DS_Store": b"\0\0",
        "products/no-meta/image.png": good_png,
        "styles/solo/a.png": good_png,
    }
    for key, data in {**bad, **extra_good}.items():
        store.put(f"{sample}/{key}", data)

    state = read_catalog(store, sample)
    reasons = {entry.key.removeprefix(f"{sample}/"): entry.reason for entry in state.quarantine}
    expected = {
        "products/two-images/": "several product images (image.jpg, image.png)",
        "products/wrong-name/": "no product image (expected one of image.png, image.jpg, image.jpeg, image.webp, "
                                "image.gif); found photo.png: rename the product photo to image.<ext>",
        "products/wrong-name/photo.png": "products/wrong-name/photo.png: not a catalog file",
        "products/Bad Name/": "'Bad Name' is not a valid product id",
        "products/black-mask/": "products/black-mask/mask.png: mask marks no pixel as product (it is all black)",
        "products/stray.png": "products/stray.png: not read (expected products/<id>/<file>",
        "products/deep/er/image.png": "products/deep/er/image.png: not read (expected products/<id>/<file>",
        "products/yaml-alias/": "products/yaml-alias/product.yaml: YAML anchors and aliases (*name) are not supported",
        "products/masked/notes.txt": "products/masked/notes.txt: not a catalog file (a product folder holds image.<ext>, "
                                     "mask.png and product.yaml); ignored",
        "styles/typo-weights/": "styles/typo-weights/style.yaml: weights given for b.png, but no such reference image",
        "styles/broken-ref/": "styles/broken-ref/b.png: not an image: the content is not PNG, JPEG, WebP or GIF",
        "styles/no-refs/": "styles/no-refs/: no reference images",
        "styles/zero-weight/": "styles/zero-weight/style.yaml: weight of a.png: Input should be greater than 0",
    }
    assert set(reasons) == set(expected)
    for key, fragment in expected.items():
        assert fragment in reasons[key], (key, reasons[key])
    kinds = {entry.key.removeprefix(f"{sample}/"): (entry.kind, entry.entry_id) for entry in state.quarantine}
    assert kinds["products/two-images/"] == ("product", "two-images")
    assert kinds["styles/no-refs/"] == ("style", "no-refs")
    assert kinds["products/stray.png"] == ("object", "")

    products = {p.product_id: p for p in state.products}
    assert {"coffee-cup", "rocket", "alarm-clock", "brand-logo", "masked", "no-meta"} == set(products)
    assert products["masked"].mask_source == "file"  # an unknown file beside it does not matter
    assert products["masked"].mask_key == f"{sample}/products/masked/mask.png"
    assert products["no-meta"].title == "no meta"
    assert {s.style_id for s in state.styles} == {"space-age", "earthy-textures", "solo"}
    # The same red picture is a product twice and a reference once: flagged, not refused.
    assert state.duplicates[f"{sample}/products/no-meta/image.png"].of == f"{sample}/products/masked/image.png"
    assert state.duplicates[f"{sample}/styles/solo/a.png"].kind == "exact"


def test_oversized_image_is_quarantined(store: S3Store, fresh_bucket: str) -> None:
    # 10000 x 5000 bilevel pixels compress to a few kB but would decode to 50 MP.
    catalog = f"s3://{fresh_bucket}"
    store.put(f"{catalog}/products/huge/image.png", encode(Image.new("1", (10_000, 5_000))))
    state = read_catalog(store, catalog)
    assert state.products == []
    assert state.quarantine[0].reason == "products/huge/image.png: image is 10000x5000 (50 MP), over the 40 MP limit; not decoded"


def test_empty_catalog(store: S3Store, fresh_bucket: str) -> None:
    assert read_catalog(store, f"s3://{fresh_bucket}") == CatalogState([], [], [], f"s3://{fresh_bucket}")


# --------------------------------------------------------------------------- import


def _materials(root: Path) -> Path:
    """A local catalog tree: two products (one with a mask and metadata), a style set of two references."""
    (root / "products" / "cup").mkdir(parents=True)
    (root / "products" / "cup" / "image.png").write_bytes(sample_png("coffee", 256, "keep"))
    (root / "products" / "cup" / "product.yaml").write_text("title: cup of coffee\ntags: [drink]\n")
    (root / "products" / "clock").mkdir()
    (root / "products" / "clock" / "image.png").write_bytes(sample_png("clock", 256, "keep"))
    (root / "products" / "clock" / "mask.png").write_bytes(encode(Image.new("L", (256, 192), 255)))
    (root / "styles" / "rough").mkdir(parents=True)
    (root / "styles" / "rough" / "brick.png").write_bytes(sample_png("brick", 128, "keep"))
    (root / "styles" / "rough" / "gravel.png").write_bytes(sample_png("gravel", 128, "keep"))
    (root / "styles" / "rough" / "style.yaml").write_text("weights: {gravel.png: 0.5}\n")
    (root / "styles" / "rough" / ".DS_Store").write_bytes(b"\0")
    (root / "README.txt").write_text("materials for spring\n")
    return root


def test_import_is_idempotent(store: S3Store, fresh_bucket: str, tmp_path: Path) -> None:
    catalog = f"s3://{fresh_bucket}/team"
    source = _materials(tmp_path / "materials")
    first = import_folder(store, source, catalog)
    expected = {"products/cup/image.png", "products/cup/product.yaml", "products/clock/image.png",
                "products/clock/mask.png", "styles/rough/brick.png", "styles/rough/gravel.png", "styles/rough/style.yaml"}
    assert set(first.uploaded) == expected and first.unchanged == []
    assert (first.products, first.styles) == (2, 1)
    assert first.refused == ["README.txt: not imported (outside products/ and styles/)"]
    assert {o.key.removeprefix("team/") for o in store.list(f"{catalog}/")} == expected
    assert store.get(f"{catalog}/products/cup/image.png") == (source / "products/cup/image.png").read_bytes()

    etags = {o.key: o.etag for o in store.list(f"{catalog}/")}
    second = import_folder(store, source, catalog)
    assert second.uploaded == [] and set(second.unchanged) == expected
    assert {o.key: o.etag for o in store.list(f"{catalog}/")} == etags

    # One file edited: only that one goes up again.
    (source / "products/cup/product.yaml").write_text("title: cup of espresso\n")
    third = import_folder(store, source, catalog)
    assert third.uploaded == ["products/cup/product.yaml"]
    state = read_catalog(store, catalog)
    assert {p.product_id: p.title for p in state.products} == {"clock": "clock", "cup": "cup of espresso"}
    assert {p.product_id: p.mask_source for p in state.products}["clock"] == "file"


def test_import_refuses_what_a_refresh_would_quarantine(store: S3Store, fresh_bucket: str, tmp_path: Path) -> None:
    catalog = f"s3://{fresh_bucket}"
    source = _materials(tmp_path / "materials")
    (source / "products" / "broken").mkdir()
    (source / "products" / "broken" / "image.jpg").write_bytes(b"not a photo at all")
    (source / "products" / "broken" / "product.yaml").write_text("title: broken\n")
    (source / "products" / "cup" / "product.yaml").write_text("title: cup\ncolour: red\n")
    report = import_folder(store, source, catalog)
    refused = "\n".join(report.refused)
    assert f"{source / 'products/broken'}: products/broken/image.jpg: not an image" in refused
    assert f"{source / 'products/cup'}: products/cup/product.yaml: unknown field 'colour'" in refused
    uploaded = {o.key for o in store.list(f"{catalog}/")}
    assert not any(key.startswith(("products/broken/", "products/cup/")) for key in uploaded)
    assert "products/clock/image.png" in uploaded  # the rest goes on


def test_import_judges_an_entry_with_the_files_the_catalog_already_holds(store: S3Store, fresh_bucket: str,
                                                                         tmp_path: Path) -> None:
    catalog = f"s3://{fresh_bucket}"
    remote_jpg = io.BytesIO()
    Image.open(io.BytesIO(sample_png("coffee", 256, "keep"))).save(remote_jpg, format="JPEG")
    store.put(f"{catalog}/products/cup/image.jpg", remote_jpg.getvalue())
    store.put(f"{catalog}/products/clock/notes.txt", b"shot on a Tuesday\n")
    source = _materials(tmp_path / "materials")

    report = import_folder(store, source, catalog)
    # The refresh would see image.jpg and image.png side by side and quarantine the product.
    (cup,) = [line for line in report.refused if "products/cup" in line]
    assert cup.startswith(f"{source / 'products/cup'}: products/cup/: several product images (image.jpg, image.png)")
    assert "the catalog already holds products/cup/image.jpg" in cup
    keys = {o.key for o in store.list(f"{catalog}/")}
    assert "products/cup/image.png" not in keys and "products/clock/image.png" in keys
    # A remote file the entry merely ignores neither refuses it nor is reported as this import's.
    assert report.products == 1 and not any("notes.txt" in line for line in report.refused)
    # The catalog stays as it was: a usable cup, from its image.jpg.
    assert {p.product_id: p.image_key for p in read_catalog(store, catalog).products}["cup"].endswith("cup/image.jpg")


def test_import_loose_images(store: S3Store, fresh_bucket: str, tmp_path: Path) -> None:
    catalog = f"s3://{fresh_bucket}"
    loose = tmp_path / "shoot"
    loose.mkdir()
    (loose / "Red Mug (2).PNG").write_bytes(sample_png("coffee", 200, "keep"))
    (loose / "rocket.png").write_bytes(sample_png("rocket", 200, "keep"))
    (loose / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="holds 2 loose images: say whether each is a product or a style set"):
        import_folder(store, loose, catalog)
    report = import_folder(store, loose, catalog, as_kind="products")
    assert sorted(report.uploaded) == ["products/red-mug-2/image.png", "products/rocket/image.png"]
    assert report.refused == ["notes.txt: not imported (only loose images are read from a folder of loose images)"]
    report = import_folder(store, loose, catalog, as_kind="styles")
    assert sorted(report.uploaded) == ["styles/red-mug-2/red-mug-2.png", "styles/rocket/rocket.png"]
    state = read_catalog(store, catalog)
    assert [p.title for p in state.products] == ["red mug 2", "rocket"]
    assert [s.style_id for s in state.styles] == ["red-mug-2", "rocket"]

    (loose / "red mug 2.jpg").write_bytes(sample_png("coffee", 200, "keep"))
    with pytest.raises(ValueError, match=r"Red Mug \(2\).PNG and red mug 2.jpg would both become products id 'red-mug-2'"):
        import_folder(store, loose, catalog, as_kind="products")
    assert entry_id_from_name("Été_2026!.jpeg") == "ete_2026"
    with pytest.raises(ValueError, match="cannot make a catalog id"):
        entry_id_from_name("!!!.png")




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
    with pytest.raises(ValueError, match="x.png: not an image: the content is not PNG, JPEG, WebP or GIF"):
        load_image(store, uri)


class _Refusing:
    """The real store, except that reading one key fails as S3 would (refused, unreachable)."""

    def __init__(self, store: S3Store, key: str, error: Exception) -> None:
        self._store, self._key, self._error = store, key, error

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def get(self, uri: str) -> bytes:
        if uri.endswith(self._key):
            raise self._error
        return self._store.get(uri)


@pytest.mark.parametrize("error", [PermissionError("access refused: AccessDenied"),
                                   OSError("S3 error: NotImplemented: this server does not support it")])
def test_an_unreadable_object_quarantines_its_entry_and_is_read_again_next_time(store: S3Store, sample: str,
                                                                                error: Exception) -> None:
    from adapters.catalog.snapshots import refresh

    flaky = _Refusing(store, "products/rocket/image.png", error)
    first = refresh(flaky, sample)
    assert first.written and first.products == 3  # the rest of the catalog is read
    scan = catalog_scan.scan_catalog(flaky, sample)
    (entry,) = [q for q in scan.state.quarantine if q.entry_id == "rocket"]
    assert entry.reason == f"products/rocket/image.png: could not be read ({error}); it is read again at the next refresh"
    record = next(r for r in scan.records if r.key == "products/rocket/image.png")
    assert record.etag == "" and record.problem

    healed = refresh(store, sample)  # the empty ETag matches no listing: read again, not trusted
    assert healed.written and (healed.fetched, healed.products, healed.quarantined) == (1, 4, 0)


@pytest.mark.parametrize("error", [ConnectionError("S3 endpoint http://x is still busy after 30 attempts over 180 s (SlowDown)"),
                                   ConnectionError("cannot reach S3 endpoint: connection reset")])
def test_a_transient_error_stops_the_refresh_naming_the_object_and_never_becomes_data(store: S3Store, sample: str,
                                                                                      error: Exception) -> None:
    from adapters.catalog.snapshots import latest_snapshot_id, load_snapshot, refresh

    good = refresh(store, sample).snapshot_id
    store.put(f"{sample}/products/rocket/product.yaml", b"title: Rocket, again\n")  # a change to read
    flaky = _Refusing(store, "products/rocket/product.yaml", error)
    with pytest.raises(ConnectionError, match=r"catalog object s3://.*/products/rocket/product.yaml could not be read"):
        refresh(flaky, sample)
    assert latest_snapshot_id(store, sample) == good  # nothing committed, nothing quarantined
    assert load_snapshot(store, sample, good).quarantine == []
    with pytest.raises(ConnectionError, match="products/rocket/product.yaml"):
        catalog_scan.read_record(flaky, "products/rocket/product.yaml",
                                 store.head(f"{sample}/products/rocket/product.yaml"))


def test_an_object_deleted_while_being_read_is_read_again_next_time(store: S3Store, sample: str) -> None:
    gone = _Refusing(store, "products/rocket/product.yaml", FileNotFoundError("deleted"))
    scan = catalog_scan.scan_catalog(gone, sample)
    record = next(r for r in scan.records if r.key == "products/rocket/product.yaml")
    assert (record.etag, record.problem) == ("", "products/rocket/product.yaml: disappeared while the catalog was being read")


def test_a_refresh_fails_rather_than_quarantine_everything_when_the_endpoint_stops_answering(store: S3Store,
                                                                                          sample: str) -> None:
    down = _Refusing(store, "", ConnectionError("cannot reach S3 endpoint: connection refused"))
    with pytest.raises(ConnectionError, match="connection refused"):
        catalog_scan.scan_catalog(down, f"{sample}")
