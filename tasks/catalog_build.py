"""Catalog entries from per-object records: products, style sets, quarantine and duplicates.

The adapters list the catalog and turn each object into an `ObjectRecord` (fetching and
inspecting only what changed); everything decided from those records lives here, so the
same rules judge a refresh of the bucket and a local folder before it is imported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal, TypeVar

from pydantic import BaseModel, ValidationError

from catalogs.models import ID_PATTERN, Product, ProductMeta, Reference, StyleMeta, StyleSet
from tasks.catalog_rules import IMAGE_SUFFIXES, Duplicate, Rejected, find_duplicates, key_problem
from tasks.layout import PRODUCTS, SECTIONS, STYLES, CatalogLayout
from tasks.masks import choose_mask_source

__all__ = ["CatalogState", "ObjectRecord", "QuarantineEntry", "build_catalog", "first_error", "without_changed"]

M = TypeVar("M", bound=BaseModel)
_IMAGE_NAMES = ", ".join(f"image{s}" for s in IMAGE_SUFFIXES)


@dataclass(frozen=True)
class ObjectRecord:
    """One listed catalog object and what inspecting it found. `key` is catalog-relative;
    `problem` is why the object cannot be used ("" when it can)."""

    key: str
    etag: str
    size: int
    role: str = ""  # image | mask | meta | "" (the catalog does not use the object)
    sha256: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    phash: str = ""
    has_alpha: bool = False
    auto_mask: bool = False
    coverage: float = 0.0
    meta: str = ""  # a product.yaml / style.yaml mapping, as JSON
    problem: str = ""


@dataclass(frozen=True)
class QuarantineEntry:
    """A catalog entry or object left out. `key` is the URI of the product/style folder, or
    of the object itself for `kind="object"`; `reason` names the offending file, relative to
    the catalog, and the problem."""

    key: str
    reason: str
    kind: Literal["product", "style", "object"] = "object"
    entry_id: str = ""


@dataclass
class CatalogState:
    """Usable products and style sets of a catalog, what was left out, and which images repeat
    others (by image URI). `snapshot_id` names the snapshot it was read from, if any."""

    products: list[Product]
    styles: list[StyleSet]
    quarantine: list[QuarantineEntry]
    catalog_uri: str = ""
    snapshot_id: str = ""
    duplicates: dict[str, Duplicate] = field(default_factory=dict)


def build_catalog(records: Sequence[ObjectRecord], catalog_uri: str) -> CatalogState:
    """Products, style sets and quarantine from the records of every listed object.

    One bad object quarantines its product or style set (a style set without one of its
    references would silently be another style); unused files are listed as ignored.
    Results are sorted by id; duplicates are flagged across products and references.
    """
    quarantine: list[QuarantineEntry] = []
    folders: dict[str, dict[str, dict[str, ObjectRecord]]] = {PRODUCTS: {}, STYLES: {}}
    for record in sorted(records, key=lambda r: r.key):
        problem = key_problem(record.key)
        parts = record.key.split("/")
        if problem:
            reason = f"{record.key}: unsafe key ({problem}); not read"
            quarantine.append(QuarantineEntry(_uri(catalog_uri, record.key), reason))
        elif len(parts) != 3 or parts[0] not in folders:
            section = parts[0] if parts[0] in folders else "|".join(SECTIONS)
            reason = f"{record.key}: not read (expected {section}/<id>/<file>, one folder per entry)"
            quarantine.append(QuarantineEntry(_uri(catalog_uri, record.key), reason))
        elif not parts[2].startswith("."):  # .DS_Store and friends are noise, not content
            folders[parts[0]].setdefault(parts[1], {})[parts[2]] = record

    products: list[Product] = []
    for product_id, files in sorted(folders[PRODUCTS].items()):
        quarantine += _ignored(catalog_uri, files, "a product folder holds image.<ext>, mask.png and product.yaml")
        try:
            products.append(_product(catalog_uri, product_id, files))
        except Rejected as exc:
            key = _uri(catalog_uri, CatalogLayout.entry(PRODUCTS, product_id))
            quarantine.append(QuarantineEntry(key, str(exc), "product", product_id))

    styles: list[StyleSet] = []
    for style_id, files in sorted(folders[STYLES].items()):
        quarantine += _ignored(catalog_uri, files, "a style folder holds reference images and style.yaml")
        try:
            styles.append(_style(catalog_uri, style_id, files))
        except Rejected as exc:
            quarantine.append(QuarantineEntry(_uri(catalog_uri, CatalogLayout.entry(STYLES, style_id)), str(exc), "style",
                                              style_id))

    by_uri = {_uri(catalog_uri, r.key): r for r in records}
    images = [p.image_key for p in products] + [r.key for s in styles for r in s.references]
    duplicates = find_duplicates([(uri, by_uri[uri].sha256, by_uri[uri].phash) for uri in images])
    return CatalogState(products, styles, quarantine, catalog_uri, duplicates=duplicates)


def without_changed(state: CatalogState, changed: Mapping[str, str]) -> CatalogState:
    """The state with every product and style set that uses a changed image moved to quarantine.

    `changed` maps image URIs (product photo, mask or reference) to the reason, e.g. that the
    object was overwritten since the snapshot. Like any bad input, it costs only its own entry.
    """
    if not changed:
        return state
    root = state.catalog_uri.rstrip("/") + "/"
    products, styles, quarantine = [], [], list(state.quarantine)
    for p in state.products:
        hit = next((changed[k] for k in (p.image_key, p.mask_key) if k in changed), None)
        if hit is None:
            products.append(p)
        else:
            quarantine.append(QuarantineEntry(root + CatalogLayout.entry(PRODUCTS, p.product_id), hit, "product",
                                              p.product_id))
    for s in state.styles:
        hit = next((changed[r.key] for r in s.references if r.key in changed), None)
        if hit is None:
            styles.append(s)
        else:
            quarantine.append(QuarantineEntry(root + CatalogLayout.entry(STYLES, s.style_id), hit, "style", s.style_id))
    kept = {p.image_key for p in products} | {r.key for s in styles for r in s.references}
    duplicates = {k: d for k, d in state.duplicates.items() if k in kept}
    return CatalogState(products, styles, quarantine, state.catalog_uri, state.snapshot_id, duplicates)


def _product(catalog_uri: str, product_id: str, files: dict[str, ObjectRecord]) -> Product:
    folder = CatalogLayout.entry(PRODUCTS, product_id)
    _check_id(product_id, folder, "product")
    meta = _meta(files.get("product.yaml"), ProductMeta)
    images = sorted(name for name, r in files.items() if r.role == "image")
    if not images:
        others = sorted(n for n in files if PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES)
        found = f"; found {', '.join(others)}: rename the product photo to image.<ext>" if others else ""
        raise Rejected(f"{folder}: no product image (expected one of {_IMAGE_NAMES}){found}")
    if len(images) > 1:
        raise Rejected(f"{folder}: several product images ({', '.join(images)}); keep exactly one")
    image = files[images[0]]
    _usable(image)
    mask = files.get("mask.png")
    if mask is not None:
        _usable(mask)
        if (mask.width, mask.height) != (image.width, image.height):
            raise Rejected(f"{mask.key}: mask is {mask.width}x{mask.height} but {image.key} is {image.width}x{image.height}")
        if mask.coverage == 0:
            raise Rejected(f"{mask.key}: mask marks no pixel as product (it is all black)")
    fields = _shared_fields(meta, Product, exclude=())
    # A product without product.yaml is still usable: its folder name reads as a title.
    fields["title"] = fields.get("title") or re.sub(r"[-_]+", " ", product_id)
    try:
        return Product(
            **fields,
            product_id=product_id,
            image_key=_uri(catalog_uri, image.key),
            mask_key=_uri(catalog_uri, mask.key) if mask else None,
            sha256=image.sha256,
            width=image.width,
            height=image.height,
            mode=image.mode,
            phash=image.phash,
            mask_source=choose_mask_source(has_file=mask is not None, has_alpha=image.has_alpha, has_auto=image.auto_mask),
        )
    except ValidationError as exc:
        raise Rejected(f"{folder}: {first_error(exc)}") from None


def _style(catalog_uri: str, style_id: str, files: dict[str, ObjectRecord]) -> StyleSet:
    folder = CatalogLayout.entry(STYLES, style_id)
    _check_id(style_id, folder, "style")
    meta = _meta(files.get("style.yaml"), StyleMeta)
    names = sorted(name for name, r in files.items() if r.role == "image")
    if not names:
        raise Rejected(f"{folder}: no reference images (expected *{', *'.join(IMAGE_SUFFIXES)})")
    # A weight for a file that is not there is almost always a typo: say so instead of
    # silently weighting the intended file 1.0.
    unknown = sorted(set(meta.weights) - set(names))
    if unknown:
        raise Rejected(f"{folder}style.yaml: weights given for {', '.join(unknown)}, but no such reference image is in {folder}")
    bad = [files[name] for name in names if files[name].problem]
    if bad:
        more = f" (and {len(bad) - 1} more bad reference{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
        raise Rejected(bad[0].problem + more)
    references = []
    for name in names:
        try:
            references.append(Reference(key=_uri(catalog_uri, files[name].key), weight=meta.weights.get(name, 1.0),
                                        sha256=files[name].sha256))
        except ValidationError as exc:
            raise Rejected(f"{folder}style.yaml: weight of {name}: {exc.errors()[0]['msg']}") from None
    try:
        return StyleSet(**_shared_fields(meta, StyleSet, exclude=("weights",)), style_id=style_id,
                        references=tuple(references))
    except ValidationError as exc:
        raise Rejected(f"{folder}: {first_error(exc)}") from None


def _meta(record: ObjectRecord | None, model: type[M]) -> M:
    """`product.yaml` / `style.yaml` validated strictly: unknown fields are an error, not ignored."""
    if record is None:
        return model()
    _usable(record)
    try:
        return model.model_validate(json.loads(record.meta or "{}"))
    except ValidationError as exc:
        raise Rejected(f"{record.key}: {first_error(exc, model)}") from None


def _shared_fields(meta: BaseModel, target: type[BaseModel], exclude: tuple[str, ...]) -> dict[str, object]:
    """The metadata fields that the catalog model also has (both models grow over time)."""
    return {k: v for k, v in meta.model_dump().items() if k in target.model_fields and k not in exclude}


def _ignored(catalog_uri: str, files: dict[str, ObjectRecord], expected: str) -> list[QuarantineEntry]:
    rows = []
    for _, record in sorted(files.items()):
        if not record.role:
            rows.append(QuarantineEntry(_uri(catalog_uri, record.key), f"{record.key}: not a catalog file ({expected}); ignored"))
    return rows


def _usable(record: ObjectRecord) -> None:
    if record.problem:
        raise Rejected(record.problem)


def _check_id(entry_id: str, folder: str, kind: str) -> None:
    if not re.fullmatch(ID_PATTERN, entry_id):
        raise Rejected(f"{folder}: {entry_id!r} is not a valid {kind} id (lowercase letters, digits, '-' and '_', at most 64)")


def first_error(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
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


def _uri(catalog_uri: str, key: str) -> str:
    return f"{catalog_uri.rstrip('/')}/{key}"
