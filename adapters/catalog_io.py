"""Reading the S3 catalog: listing it, inspecting objects, loading images and masks; campaigns; the sample catalog.

Catalog layout under a catalog URI (paths below are relative to it):

    products/<product_id>/image.{png,jpg,jpeg,webp,gif}  (+ mask.png, product.yaml)
    styles/<style_id>/*.{png,jpg,jpeg,webp,gif}          (+ style.yaml)
    campaigns/<name>.yaml
    _snapshots/<snapshot_id>/...                          (written by a refresh: adapters/snapshots.py)

A scan lists `products/` and `styles/`, turns every object into an `ObjectRecord` (reusing
the record of an unchanged object from the previous snapshot instead of downloading it
again) and builds the entries with the pure rules of `tasks/catalog_build.py`. Reading is
defensive: an object that cannot be used puts its product or style set in quarantine with
a reason a person can act on, and the rest of the catalog is still read. Every key the
models carry (`Product.image_key`, `Reference.key`, ...) is a full `s3://` URI; quarantine
reasons use catalog-relative paths, which read better.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from adapters.storage import ObjectInfo, ObjectStore, join_uri, split_uri
from catalogs import sample_campaign_text
from catalogs.models import ID_PATTERN, Product
from tasks.catalog_build import CatalogState, ObjectRecord, QuarantineEntry, build_catalog
from tasks.catalog_rules import (
    MAX_PIXELS,
    Rejected,
    decode_image,
    inspect_image,
    key_problem,
    normalize_image,
    object_role,
    size_problem,
)
from tasks.masks import MaskSource, product_mask
from tasks.snapshot_tables import inventory_digest

__all__ = [
    "MAX_PIXELS",
    "CatalogState",
    "QuarantineEntry",
    "Scan",
    "campaign_uri",
    "inspect_object",
    "list_catalog",
    "read_record",
    "load_image",
    "load_mask",
    "read_campaign",
    "read_catalog",
    "scan_catalog",
    "seed_sample_catalog",
]

SECTIONS = ("products", "styles")


@dataclass
class Scan:
    """One pass over a catalog: a record per listed object, the entries built from them, and
    how many objects were listed, downloaded (`fetched`), reused from the previous snapshot
    because unchanged (`skipped`), ruled out by key, name or size without downloading
    (`unread`), and gone since the previous snapshot (`removed`). `listed = fetched + skipped + unread`."""

    records: list[ObjectRecord]
    state: CatalogState
    listed: int
    fetched: int
    skipped: int
    unread: int
    removed: int
    digest: str
    changed: bool


# --------------------------------------------------------------------------- scanning


def list_catalog(store: ObjectStore, catalog_uri: str) -> list[tuple[str, ObjectInfo]]:
    """Every object under `products/` and `styles/` as (catalog-relative key, info), in key order.

    Empty "folder" markers written by consoles and sync tools are left out.
    """
    root = split_uri(catalog_uri)[1].strip("/")
    prefix = f"{root}/" if root else ""
    listing = []
    for section in SECTIONS:
        for info in store.list(join_uri(catalog_uri, section + "/")):
            relative = info.key[len(prefix) :]
            if not (relative.endswith("/") and info.size == 0):
                listing.append((relative, info))
    return listing


def scan_catalog(
    store: ObjectStore, catalog_uri: str, previous: Mapping[str, ObjectRecord] | None = None, *, workers: int = 8
) -> Scan:
    """List the catalog, download and inspect what is new or changed since `previous`, build the entries.

    `previous` holds the records of the last snapshot by key; an object whose ETag and size
    match its record is not downloaded again. Images are fetched and decoded in a small
    thread pool (S3 latency dominates).
    """
    listing = list_catalog(store, catalog_uri)
    old = previous or {}
    records: dict[str, ObjectRecord] = {}
    to_fetch: list[tuple[str, ObjectInfo]] = []
    skipped = unread = 0
    for key, info in listing:
        ruled_out = _unread_record(key, info)
        if ruled_out is not None:
            records[key], unread = ruled_out, unread + 1
        elif key in old and (old[key].etag, old[key].size) == (info.etag, info.size):
            records[key], skipped = old[key], skipped + 1
        else:
            to_fetch.append((key, info))
    if to_fetch:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="catalog-read") as pool:
            read = list(pool.map(functools.partial(_read_record, store), to_fetch))
        errors = [error for _, error in read if error is not None]
        if len(read) > 1 and len(errors) == len(read) and all(isinstance(e, ConnectionError) for e in errors):
            # The endpoint stopped answering: the store is down, not the objects bad. A snapshot
            # quarantining everything would hide the whole catalog from every run.
            raise errors[0]
        for record, _ in read:
            records[record.key] = record
    ordered = [records[key] for key, _ in listing]
    digest = inventory_digest(ordered)
    removed = len(set(old) - set(records))
    return Scan(
        records=ordered,
        state=build_catalog(ordered, catalog_uri),
        listed=len(listing),
        fetched=len(to_fetch),
        skipped=skipped,
        unread=unread,
        removed=removed,
        digest=digest,
        changed=previous is None or digest != inventory_digest(old.values()),
    )


def read_catalog(store: ObjectStore, catalog_uri: str, *, workers: int = 8) -> CatalogState:
    """Every product and style set under `catalog_uri`, read and validated now (no snapshot involved)."""
    return scan_catalog(store, catalog_uri, workers=workers).state


def inspect_object(key: str, data: bytes, etag: str = "") -> ObjectRecord:
    """The record of one catalog object from its catalog-relative key and bytes.

    Used on S3 objects by a refresh and on local files by an import, so both judge alike.
    """
    role = object_role(key)
    base = {"key": key, "etag": etag, "size": len(data), "role": role or "", "sha256": hashlib.sha256(data).hexdigest()}
    if role is None:
        return ObjectRecord(**base)
    problem = size_problem(role, len(data))
    if problem:
        return ObjectRecord(**base, problem=f"{key}: {problem}")
    if role == "meta":
        meta, problem = _parse_meta(key, data)
        return ObjectRecord(**base, meta=meta, problem=problem)
    try:
        facts = inspect_image(data, key, role=role, product=key.startswith("products/"))
    except Rejected as exc:
        return ObjectRecord(**base, problem=str(exc))
    return ObjectRecord(**base, **asdict(facts))


def _unread_record(key: str, info: ObjectInfo) -> ObjectRecord | None:
    """The record of an object that its key, name or size alone rules out, or None if it must be read."""
    role = object_role(key)
    if key_problem(key) or role is None:
        return ObjectRecord(key=key, etag=info.etag, size=info.size)
    problem = size_problem(role, info.size)
    if problem:
        return ObjectRecord(key=key, etag=info.etag, size=info.size, role=role, problem=f"{key}: {problem}")
    return None


def read_record(store: ObjectStore, key: str, info: ObjectInfo) -> ObjectRecord:
    """The record of one listed object: ruled out by its key, name or size, else downloaded and inspected."""
    return _unread_record(key, info) or _read_record(store, (key, info))[0]


def _read_record(store: ObjectStore, item: tuple[str, ObjectInfo]) -> tuple[ObjectRecord, Exception | None]:
    """The object's record, and the error when it could not be read.

    A failed read is a problem record with an empty ETag, which no listed ETag matches: the
    next refresh reads the object again instead of trusting the failure.
    """
    key, info = item
    role = object_role(key) or ""
    try:
        data = store.get(info.uri)
    except FileNotFoundError:  # deleted between the listing and the read
        return ObjectRecord(key=key, etag="", size=info.size, role=role,
                            problem=f"{key}: disappeared while the catalog was being read"), None
    except (OSError, ClientError, BotoCoreError) as exc:  # refused, unreachable, throttled: this object only
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ObjectRecord(key=key, etag="", size=info.size, role=role,
                            problem=f"{key}: could not be read ({reason}); it is read again at the next refresh"), exc
    # The listed ETag is kept: if the object changed after the listing, the next refresh
    # sees a new ETag and reads it again.
    return inspect_object(key, data, etag=info.etag), None


def _parse_meta(key: str, data: bytes) -> tuple[str, str]:
    """A metadata file's mapping as JSON, or the problem with it."""
    try:
        text = data.decode("utf-8")
        # Aliases let a few bytes of YAML expand to gigabytes once copied out: refuse them.
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            return "", f"{key}: YAML anchors and aliases (*name) are not supported; write the values out"
        raw = yaml.safe_load(text)
    except UnicodeDecodeError:
        return "", f"{key}: not UTF-8 text"
    except yaml.YAMLError as exc:
        return "", f"{key}: invalid YAML ({_yaml_problem(exc)})"
    if raw is None:  # an empty file means "no metadata"
        raw = {}
    if not isinstance(raw, dict):
        return "", f"{key}: expected a mapping of fields, got {type(raw).__name__}"
    return json.dumps(raw, sort_keys=True, default=str), ""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or exc.__class__.__name__
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else str(problem)


# --------------------------------------------------------------------------- images


def load_image(store: ObjectStore, uri: str, sha256: str = "") -> Image.Image:
    """The image at `uri`, decoded with the catalog's safety limits, upright, as RGBA if it
    has real alpha, else RGB (16-bit scaled to 8 bits, CMYK converted).

    `sha256` is the digest the catalog snapshot recorded for the object: bytes that differ
    (the object was overwritten since) are refused rather than used under the old digest.

    Raises FileNotFoundError if missing, ValueError if not a usable image or not the recorded one.
    """
    data = store.get(uri)
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{uri} changed since the catalog snapshot that recorded it "
                         f"(sha256 {hashlib.sha256(data).hexdigest()[:12]}, recorded {sha256[:12]}): refresh the catalog")
    try:
        return normalize_image(decode_image(data, uri))
    except Rejected as exc:
        raise ValueError(str(exc)) from None


def load_mask(store: ObjectStore, product: Product) -> tuple[Image.Image | None, MaskSource]:
    """The product's mask (8-bit gray, 255 = product) and where it came from; (None, "none") without one."""
    image = load_image(store, product.image_key, product.sha256)
    explicit = load_image(store, product.mask_key) if product.mask_key else None
    return product_mask(image, explicit)


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
    combine: Literal["concat", "average", "weighted"] | None = None
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
        if style.combine is not None:
            meta["combine"] = style.combine
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
