"""Catalog snapshots as tables: their schemas and the rows written for a catalog state.

A snapshot is four parquet files under `<catalog>/_snapshots/<snapshot_id>/`; the column
lists below are their schema and `docs/metadata-tables.md` documents them (a test keeps
the two in step). `spec` columns hold the validated model as JSON: campaigns read entries
back from them exactly as they were catalogued.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime

from catalogs.models import Product, StyleSet
from tasks.catalog_build import CatalogState, ObjectRecord, QuarantineEntry
from tasks.catalog_rules import RULES_VERSION, Duplicate
from tasks.tables import Column
from tasks.values import first_line

__all__ = [
    "SNAPSHOT_TABLES",
    "counts",
    "inventory_digest",
    "new_snapshot_id",
    "records_from_rows",
    "snapshot_rows",
    "state_from_rows",
]

_IMAGE = (
    Column("sha256", "string", "sha256 of the image bytes"),
    Column("bytes", "int64", "size of the image file"),
    Column("etag", "string", "S3 ETag of the image when it was read"),
    Column("width", "int32", "width in pixels, upright (after EXIF rotation)"),
    Column("height", "int32", "height in pixels, upright (after EXIF rotation)"),
    Column("mode", "string", "stored pixel mode (RGB, RGBA, P, L, CMYK, I;16, ...); readers get RGB or RGBA"),
    Column("format", "string", "file format (PNG, JPEG, WEBP, GIF)"),
    Column("phash", "string", "64-bit perceptual hash (DCT), 16 hex digits"),
    Column("duplicate_of", "string", "URI of the catalog image this one repeats, or null"),
    Column("duplicate_kind", "string", "exact (same bytes) or near (same picture to the eye), or null"),
    Column("duplicate_distance", "int32", "bits between the two perceptual hashes (0 for exact), or null"),
)

PRODUCTS = (
    Column("product_id", "string", "catalog product id (its folder name)"),
    Column("title", "string", "title used in prompts as {product}"),
    Column("category", "string", "category used in prompts as {category}"),
    Column("tags", "list<string>", "tags campaigns select by"),
    Column("image_key", "string", "s3 URI of the product image"),
    Column("mask_key", "string", "s3 URI of mask.png, or null"),
    Column("mask_source", "string", "file, alpha, auto or none"),
    Column("mask_coverage", "float64", "share of the pixels the mask marks as product, or null without a mask"),
    *_IMAGE,
    Column("spec", "string", "the catalogued Product as JSON (what campaigns read)"),
)

STYLES = (
    Column("style_id", "string", "catalog style set id (its folder name)"),
    Column("reference_index", "int32", "position of the reference in the style set"),
    Column("key", "string", "s3 URI of the reference image"),
    Column("weight", "float64", "weight of the reference in the set"),
    Column("tags", "list<string>", "tags of the style set"),
    *_IMAGE,
    Column("spec", "string", "the catalogued StyleSet as JSON, the same on every row of the set"),
)

QUARANTINE = (
    Column("key", "string", "s3 URI of the refused product/style folder, or of the object"),
    Column("kind", "string", "product, style or object"),
    Column("entry_id", "string", "product or style id, empty for an object"),
    Column("reason", "string", "the offending file (catalog-relative) and the problem"),
)

OBJECTS = (
    Column("key", "string", "catalog-relative key"),
    Column("etag", "string", "S3 ETag when listed"),
    Column("size", "int64", "size in bytes when listed"),
    Column("role", "string", "image, mask, meta, or empty when the catalog does not use the object"),
    Column("sha256", "string", "sha256 of the bytes, empty when not downloaded"),
    Column("width", "int32", "upright width of an image"),
    Column("height", "int32", "upright height of an image"),
    Column("mode", "string", "stored pixel mode of an image"),
    Column("format", "string", "file format of an image"),
    Column("phash", "string", "perceptual hash of an image"),
    Column("has_alpha", "bool", "some pixel is not fully opaque"),
    Column("auto_mask", "bool", "a product image on a plain background that an automatic mask can cut out"),
    Column("coverage", "float64", "share of product pixels of a mask, alpha channel or automatic mask"),
    Column("meta", "string", "a product.yaml/style.yaml mapping as JSON"),
    Column("problem", "string", "why the object cannot be used, empty when it can"),
)

SNAPSHOT_TABLES = {"products": PRODUCTS, "styles": STYLES, "quarantine": QUARANTINE, "objects": OBJECTS}


def inventory_digest(records: Iterable[ObjectRecord]) -> str:
    """sha256 over every object's key, ETag and size, and the rules version: equal digests, equal catalogs."""
    lines = sorted(f"{r.key}\t{r.etag}\t{r.size}" for r in records)
    return hashlib.sha256("\n".join([f"rules={RULES_VERSION}", *lines]).encode()).hexdigest()


def new_snapshot_id(now: datetime, digest: str) -> str:
    """`YYYYMMDDTHHMMSSZ-<8 hex of the inventory digest>`: sorts by time, hints at content."""
    return f"{now:%Y%m%dT%H%M%SZ}-{digest[:8]}"


def snapshot_rows(state: CatalogState, records: Sequence[ObjectRecord]) -> dict[str, list[dict]]:
    """The rows of every snapshot table for a built catalog and the records it was built from."""
    root = state.catalog_uri.rstrip("/") + "/"
    by_uri = {root + r.key: r for r in records}
    products = []
    for p in state.products:
        image = by_uri[p.image_key]
        coverage = by_uri[p.mask_key].coverage if p.mask_key else (image.coverage if p.mask_source != "none" else None)
        products.append({
            "product_id": p.product_id, "title": p.title, "category": p.category, "tags": list(p.tags),
            "image_key": p.image_key, "mask_key": p.mask_key, "mask_source": p.mask_source, "mask_coverage": coverage,
            **_image_columns(image, state.duplicates.get(p.image_key)), "spec": p.model_dump_json(),
        })
    styles = []
    for s in state.styles:
        spec = s.model_dump_json()
        for index, ref in enumerate(s.references):
            styles.append({
                "style_id": s.style_id, "reference_index": index, "key": ref.key, "weight": ref.weight,
                "tags": list(s.tags), **_image_columns(by_uri[ref.key], state.duplicates.get(ref.key)), "spec": spec,
            })
    quarantine = [asdict(q) for q in state.quarantine]
    objects = [asdict(r) for r in sorted(records, key=lambda r: r.key)]
    return {"products": products, "styles": styles, "quarantine": quarantine, "objects": objects}


def state_from_rows(rows: Mapping[str, Sequence[Mapping]], catalog_uri: str, snapshot_id: str) -> CatalogState:
    """The catalog state a snapshot recorded. Raises ValueError when a row no longer fits the model."""
    try:
        products = [Product.model_validate_json(r["spec"]) for r in rows["products"]]
        specs: dict[str, str] = {}
        for r in sorted(rows["styles"], key=lambda r: (r["style_id"], r["reference_index"])):
            specs.setdefault(r["style_id"], r["spec"])
        styles = [StyleSet.model_validate_json(spec) for spec in specs.values()]
    except ValueError as exc:
        raise ValueError(
            f"snapshot {snapshot_id} of {catalog_uri} does not fit this version's catalog model "
            f"({first_line(exc)}); run `stylematrix catalog refresh --full`"
        ) from None
    quarantine = [QuarantineEntry(r["key"], r["reason"], r["kind"], r["entry_id"]) for r in rows["quarantine"]]
    duplicates = {}
    for r in [*rows["products"], *rows["styles"]]:
        if r["duplicate_of"]:
            key = r.get("image_key") or r["key"]
            duplicates[key] = Duplicate(key, r["duplicate_of"], r["duplicate_kind"], r["duplicate_distance"])
    return CatalogState(products, styles, quarantine, catalog_uri, snapshot_id, duplicates)


def records_from_rows(rows: Sequence[Mapping]) -> dict[str, ObjectRecord]:
    """The object records of a snapshot, by key: what the next refresh need not read again."""
    return {r["key"]: ObjectRecord(**{k: r[k] for k in ObjectRecord.__dataclass_fields__}) for r in rows}


def _image_columns(record: ObjectRecord, duplicate: Duplicate | None) -> dict:
    return {
        "sha256": record.sha256, "bytes": record.size, "etag": record.etag, "width": record.width,
        "height": record.height, "mode": record.mode, "format": record.format, "phash": record.phash,
        "duplicate_of": duplicate.of if duplicate else None,
        "duplicate_kind": duplicate.kind if duplicate else None,
        "duplicate_distance": duplicate.distance if duplicate else None,
    }


def counts(state: CatalogState) -> dict[str, int]:
    """What a person wants to know about a catalog state at a glance."""
    return {"products": len(state.products), "styles": len(state.styles), "quarantined": len(state.quarantine),
            "duplicates": len(state.duplicates)}

