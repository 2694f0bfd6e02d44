"""Reading the S3 catalog into validated models, seeding the sample catalog, loading images.

Catalog layout under a catalog URI (paths below are relative to it):

    products/<product_id>/image.{png,jpg,jpeg,webp}  (+ mask.png, product.yaml)
    styles/<style_id>/*.{png,jpg,jpeg,webp}          (+ style.yaml)
    campaigns/<name>.yaml

Reading is defensive: an object that cannot be used puts its product or style set in
quarantine with a reason a person can act on, and the rest of the catalog is still read.
Every key the models carry (`Product.image_key`, `Reference.key`, ...) is a full `s3://`
URI, so later steps and the metadata tables need no catalog root to find an object;
quarantine reasons use catalog-relative paths, which read better.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import yaml
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.storage import ObjectInfo, ObjectStore, join_uri, split_uri
from catalogs import sample_campaign_text
from catalogs.models import ID_PATTERN, Product, ProductMeta, Reference, StyleMeta, StyleSet

__all__ = [
    "MAX_PIXELS",
    "CatalogState",
    "QuarantineEntry",
    "campaign_uri",
    "load_image",
    "read_campaign",
    "read_catalog",
    "seed_sample_catalog",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Only these decoders ever see catalog bytes: fewer parsers exposed to untrusted input.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
# 40 MP is far above any product photo and far below what would exhaust memory.
MAX_PIXELS = 40_000_000
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class QuarantineEntry:
    """A catalog entry left out: `key` is the URI of its product/style folder (or of a stray
    object); `reason` names the offending file, relative to the catalog, and the problem."""

    key: str
    reason: str


@dataclass
class CatalogState:
    """What `read_catalog` found under `catalog_uri`: usable products and style sets, and
    what it left out."""

    products: list[Product]
    styles: list[StyleSet]
    quarantine: list[QuarantineEntry]
    catalog_uri: str = ""


class _Rejected(Exception):
    """One catalog entry cannot be used; the message is the quarantine reason."""


# --------------------------------------------------------------------------- reading


def read_catalog(store: ObjectStore, catalog_uri: str, *, workers: int = 8) -> CatalogState:
    """Every product and style set under `catalog_uri`, validated and fingerprinted.

    Images are fetched and decoded in a small thread pool (S3 latency dominates);
    results keep a stable order: by product id, then by style id.
    """
    products: list[Product] = []
    styles: list[StyleSet] = []
    quarantine: list[QuarantineEntry] = []

    product_dirs, strays = _folders(store, catalog_uri, "products")
    quarantine += strays
    style_dirs, strays = _folders(store, catalog_uri, "styles")
    quarantine += strays

    read_product = functools.partial(_attempt, _read_product, "products", store, catalog_uri)
    read_style = functools.partial(_attempt, _read_style, "styles", store, catalog_uri)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="catalog-read") as pool:
        for product in pool.map(read_product, sorted(product_dirs.items())):
            if isinstance(product, QuarantineEntry):
                quarantine.append(product)
            else:
                products.append(product)
        for style in pool.map(read_style, sorted(style_dirs.items())):
            if isinstance(style, QuarantineEntry):
                quarantine.append(style)
            else:
                styles.append(style)
    return CatalogState(products=products, styles=styles, quarantine=quarantine, catalog_uri=catalog_uri)


def _attempt(
    reader: Callable[[ObjectStore, str, str, dict[str, ObjectInfo]], M],
    section: str,
    store: ObjectStore,
    catalog_uri: str,
    item: tuple[str, dict[str, ObjectInfo]],
) -> M | QuarantineEntry:
    """One entry read by `reader`, or its quarantine entry if it cannot be used."""
    entry_id, files = item
    try:
        return reader(store, catalog_uri, entry_id, files)
    except _Rejected as exc:
        return QuarantineEntry(key=join_uri(catalog_uri, f"{section}/{entry_id}/"), reason=str(exc))


def _folders(
    store: ObjectStore, catalog_uri: str, section: str
) -> tuple[dict[str, dict[str, ObjectInfo]], list[QuarantineEntry]]:
    """Objects under `<section>/`, grouped by entry folder; anything else is a stray."""
    _, root = split_uri(join_uri(catalog_uri, section + "/"))
    root = root[: -len(section) - 1]  # the catalog's own key prefix ("" or "some/prefix/")
    folders: dict[str, dict[str, ObjectInfo]] = {}
    strays: list[QuarantineEntry] = []
    for info in store.list(join_uri(catalog_uri, section + "/")):
        relative = info.key[len(root) :]
        if relative.endswith("/"):  # a "folder" marker written by consoles and sync tools
            continue
        parts = relative.split("/")
        if len(parts) == 3 and all(parts):
            folders.setdefault(parts[1], {})[parts[2]] = info
        else:
            reason = f"{relative}: not read (expected {section}/<id>/<file>, one folder per entry)"
            strays.append(QuarantineEntry(key=info.uri, reason=reason))
    return folders, strays


def _read_product(store: ObjectStore, catalog_uri: str, product_id: str, files: dict[str, ObjectInfo]) -> Product:
    folder = f"products/{product_id}/"
    _check_id(product_id, folder, "product")
    meta = _read_meta(store, catalog_uri, folder + "product.yaml", ProductMeta) if "product.yaml" in files else None
    meta = meta or ProductMeta()

    images = sorted(name for name in files if Path(name).stem == "image" and _is_image_name(name))
    if not images:
        raise _Rejected(f"{folder}: no product image (expected image.png, image.jpg, image.jpeg or image.webp)")
    if len(images) > 1:
        raise _Rejected(f"{folder}: several product images ({', '.join(images)}); keep exactly one")
    image_key = folder + images[0]
    data = _fetch(store, catalog_uri, image_key)
    width, height, has_alpha = _inspect(data, image_key)

    mask_key = None
    if "mask.png" in files:
        mask_key = folder + "mask.png"
        mask_w, mask_h, _ = _inspect(_fetch(store, catalog_uri, mask_key), mask_key)
        if (mask_w, mask_h) != (width, height):
            raise _Rejected(f"{mask_key}: mask is {mask_w}x{mask_h} but {image_key} is {width}x{height}")
    mask_source: Literal["file", "alpha", "none"] = "file" if mask_key else ("alpha" if has_alpha else "none")

    try:
        return Product(
            product_id=product_id,
            image_key=join_uri(catalog_uri, image_key),
            mask_key=join_uri(catalog_uri, mask_key) if mask_key else None,
            # A product without product.yaml is still usable: its folder name reads as a title.
            title=meta.title or re.sub(r"[-_]+", " ", product_id),
            category=meta.category,
            tags=meta.tags,
            sha256=hashlib.sha256(data).hexdigest(),
            width=width,
            height=height,
            mask_source=mask_source,
        )
    except ValidationError as exc:
        raise _Rejected(f"{folder}: {_first_error(exc)}") from None


def _read_style(store: ObjectStore, catalog_uri: str, style_id: str, files: dict[str, ObjectInfo]) -> StyleSet:
    folder = f"styles/{style_id}/"
    _check_id(style_id, folder, "style")
    meta = _read_meta(store, catalog_uri, folder + "style.yaml", StyleMeta) if "style.yaml" in files else None
    meta = meta or StyleMeta()

    names = sorted(name for name in files if _is_image_name(name))
    if not names:
        raise _Rejected(f"{folder}: no reference images (expected *.png, *.jpg, *.jpeg or *.webp)")
    # A weight for a file that is not there is almost always a typo: say so instead of
    # silently weighting the intended file 1.0.
    unknown = sorted(set(meta.weights) - set(names))
    if unknown:
        raise _Rejected(
            f"{folder}style.yaml: weights given for {', '.join(unknown)}, but no such reference image is in {folder}"
        )

    references = []
    for name in names:
        key = folder + name
        data = _fetch(store, catalog_uri, key)
        _inspect(data, key)
        try:
            references.append(
                Reference(
                    key=join_uri(catalog_uri, key),
                    weight=meta.weights.get(name, 1.0),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            )
        except ValidationError as exc:
            raise _Rejected(f"{folder}style.yaml: weight of {name}: {exc.errors()[0]['msg']}") from None
    try:
        return StyleSet(
            style_id=style_id,
            references=tuple(references),
            combine=meta.combine,
            tags=meta.tags,
            ip_scale=meta.ip_scale,
            preset=meta.preset,
        )
    except ValidationError as exc:
        raise _Rejected(f"{folder}: {_first_error(exc)}") from None


def _check_id(entry_id: str, folder: str, kind: str) -> None:
    if not re.fullmatch(ID_PATTERN, entry_id):
        raise _Rejected(
            f"{folder}: {entry_id!r} is not a valid {kind} id (lowercase letters, digits, '-' and '_', at most 64)"
        )


def _fetch(store: ObjectStore, catalog_uri: str, key: str) -> bytes:
    try:
        return store.get(join_uri(catalog_uri, key))
    except FileNotFoundError:  # deleted between the listing and the read
        raise _Rejected(f"{key}: disappeared while the catalog was being read") from None


def _read_meta(store: ObjectStore, catalog_uri: str, key: str, model: type[M]) -> M:
    """`product.yaml` / `style.yaml` parsed strictly: unknown fields are an error, not ignored."""
    try:
        raw = yaml.safe_load(_fetch(store, catalog_uri, key).decode("utf-8"))
    except UnicodeDecodeError:
        raise _Rejected(f"{key}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise _Rejected(f"{key}: invalid YAML ({_yaml_problem(exc)})") from None
    if raw is None:  # an empty file means "no metadata"
        raw = {}
    if not isinstance(raw, dict):
        raise _Rejected(f"{key}: expected a mapping of fields, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _Rejected(f"{key}: {_first_error(exc, model)}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or exc.__class__.__name__
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else str(problem)


def _first_error(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """The first pydantic error as one short clause, e.g. "unknown field 'colour' (allowed: ...)"."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        allowed = f" (allowed: {', '.join(model.model_fields)})" if model else ""
        text = f"unknown field {where!r}{allowed}"
    else:
        text = f"{where}: {first['msg']}" if where else first["msg"]
    more = exc.error_count() - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


# --------------------------------------------------------------------------- images


def _open(data: bytes, where: str) -> Image.Image:
    """Decode `data` fully, refusing empty, unknown, oversized and truncated images."""
    if not data:
        raise _Rejected(f"{where}: not a decodable image (empty file)")
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 MP; our own, lower bound below is the one that counts.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        if image.width * image.height > MAX_PIXELS:
            raise _Rejected(
                f"{where}: image is {image.width}x{image.height}, over the {MAX_PIXELS // 1_000_000} MP limit"
            )
        image.load()  # header-only opening would miss a truncated body
    except UnidentifiedImageError:
        raise _Rejected(f"{where}: not a decodable image (cannot identify image file)") from None
    except Image.DecompressionBombError as exc:
        raise _Rejected(f"{where}: image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _Rejected(f"{where}: not a decodable image ({exc})") from None
    return image


def _inspect(data: bytes, where: str) -> tuple[int, int, bool]:
    """Width and height as displayed (after EXIF rotation) and whether alpha is really used."""
    image = _open(data, where)
    width, height = image.size
    if image.getexif().get(ExifTags.Base.Orientation) in _ROTATING_ORIENTATIONS:
        width, height = height, width
    return width, height, _has_real_alpha(image)


def _has_real_alpha(image: Image.Image) -> bool:
    """True when some pixel is not fully opaque (an opaque alpha channel carries no mask)."""
    if image.mode in _ALPHA_MODES:
        alpha = image.getchannel("A")
    elif "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
    else:
        return False
    low, _ = alpha.getextrema()
    return bool(low < 255)


def load_image(store: ObjectStore, uri: str) -> Image.Image:
    """The image at `uri`, decoded, EXIF-rotated, as RGBA if it has real alpha, else RGB.

    Raises FileNotFoundError if missing, ValueError if not a usable image.
    """
    try:
        image = _open(store.get(uri), uri)
    except _Rejected as exc:
        raise ValueError(str(exc)) from None
    image = ImageOps.exif_transpose(image)
    return image.convert("RGBA" if _has_real_alpha(image) else "RGB")


# --------------------------------------------------------------------------- campaigns


def campaign_uri(campaign: str, catalog_uri: str) -> str:
    """Where a campaign named by a user lives: an `s3://` URI or a local file as given,
    a bare name such as `sample` as `<catalog>/campaigns/sample.yaml`."""
    if campaign.startswith("s3://") or Path(campaign).expanduser().is_file():
        return campaign
    if re.fullmatch(ID_PATTERN, campaign):
        return join_uri(catalog_uri, "campaigns", f"{campaign}.yaml")
    return campaign  # a path that does not exist: read_campaign says so


def read_campaign(store: ObjectStore | None, spec: str) -> str:
    """The YAML text of a campaign named by a local path or an `s3://` URI."""
    if spec.startswith("s3://"):
        if store is None:
            raise ValueError(f"campaign {spec!r} is on S3, but no object store was given to read it")
        try:
            data = store.get(spec)
        except FileNotFoundError:
            raise FileNotFoundError(f"campaign {spec!r} not found: no such object") from None
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"campaign {spec!r} not found: no such local file (or an s3:// URI)")
        data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"campaign {spec!r} is not UTF-8 text") from None


# --------------------------------------------------------------------------- sample catalog


class _SampleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SampleReference(_SampleSpec):
    source: str
    weight: float = Field(default=1.0, gt=0)


class _SampleProduct(_SampleSpec):
    source: str
    title: str
    category: str = ""
    tags: tuple[str, ...] = ()
    background: Literal["keep", "transparent"] = "keep"


class _SampleStyle(_SampleSpec):
    references: dict[str, _SampleReference] = Field(min_length=1)
    tags: tuple[str, ...] = ()
    ip_scale: float | None = None


class _SampleCatalog(_SampleSpec):
    max_side: int = Field(default=512, ge=16)
    products: dict[str, _SampleProduct]
    styles: dict[str, _SampleStyle]


def seed_sample_catalog(store: ObjectStore, catalog_uri: str, *, campaign_text: str | None = None) -> dict[str, int]:
    """Write the sample catalog (`catalogs/sample/catalog.yaml`) under `catalog_uri`.

    Images come from scikit-image's bundled photos and are PNG-encoded the same way
    each time, so reseeding rewrites identical bytes. `campaign_text` defaults to the
    shipped sample campaign. Returns counts of what was written.
    """
    spec = _SampleCatalog.model_validate(
        yaml.safe_load(resources.files("catalogs").joinpath("sample/catalog.yaml").read_text())
    )
    campaign = sample_campaign_text() if campaign_text is None else campaign_text  # fail before writing
    store.ensure_bucket(split_uri(catalog_uri)[0])
    counts = {"products": 0, "styles": 0, "references": 0, "campaigns": 0, "objects": 0}

    def put(key: str, data: bytes, content_type: str) -> None:
        store.put(join_uri(catalog_uri, key), data, content_type)
        counts["objects"] += 1

    for product_id, product in spec.products.items():
        folder = f"products/{product_id}/"
        put(folder + "image.png", _sample_png(product.source, spec.max_side, product.background), "image/png")
        meta = {"title": product.title, "category": product.category, "tags": list(product.tags)}
        put(folder + "product.yaml", _yaml_bytes(meta), "application/yaml")
        counts["products"] += 1

    for style_id, style in spec.styles.items():
        folder = f"styles/{style_id}/"
        weights = {}
        for name, reference in style.references.items():
            put(f"{folder}{name}.png", _sample_png(reference.source, spec.max_side, "keep"), "image/png")
            weights[f"{name}.png"] = reference.weight
            counts["references"] += 1
        meta = {"weights": weights, "tags": list(style.tags)}
        if style.ip_scale is not None:
            meta["ip_scale"] = style.ip_scale
        put(folder + "style.yaml", _yaml_bytes(meta), "application/yaml")
        counts["styles"] += 1

    put("campaigns/sample.yaml", campaign.encode("utf-8"), "application/yaml")
    counts["campaigns"] += 1
    return counts


def _yaml_bytes(data: dict[str, object]) -> bytes:
    return yaml.safe_dump(data, sort_keys=True, allow_unicode=True).encode("utf-8")


@functools.lru_cache(maxsize=32)  # pure and deterministic: reseeding in one process reuses the bytes
def _sample_png(source: str, max_side: int, background: Literal["keep", "transparent"]) -> bytes:
    """One skimage photo as deterministic PNG bytes: RGB (or RGBA), long side <= max_side."""
    from skimage import data as skdata  # only seeding needs scikit-image
    from skimage.util import img_as_ubyte

    loader = getattr(skdata, source, None)
    if source.startswith("_") or not callable(loader):
        raise ValueError(f"sample image source {source!r} is not a loader in skimage.data")
    array = img_as_ubyte(np.asarray(loader()))
    image = Image.fromarray(array)
    if background == "transparent":
        image = _transparent_background(image.convert("RGB"))
    else:
        image = image.convert("RGB")
    scale = max_side / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    # No metadata chunks and a fixed compression level: the same pixels give the same bytes.
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _transparent_background(image: Image.Image, threshold: int = 235) -> Image.Image:
    """RGBA where the near-white region touching the border is fully transparent."""
    from scipy import ndimage

    rgb = np.asarray(image.convert("RGB"))
    labels, _ = ndimage.label(rgb.min(axis=2) >= threshold)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, edge[edge > 0])
    alpha = np.where(background, 0, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]))
