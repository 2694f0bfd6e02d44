"""The images a batch is conditioned on, read from the store: canvas images, style references, negative reference."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence

from PIL import Image

from adapters.catalog.images import load_image, load_mask
from adapters.infra.storage import ObjectStore
from adapters.model.engine import StyleInput
from adapters.steps import publish
from catalogs.models import Product, Reference, StyleSet
from tasks.canny import canvas_images, canvas_kinds, canvas_name
from tasks.catalog_rules import decode_image
from tasks.layout import CatalogLayout, RunLayout
from tasks.plan import Batch

# Canvas images drawn from the product's mask rather than its pixels.
_MASKED_KINDS = frozenset({"depth", "mask", "keep"})


def product_canvases(store: ObjectStore, product: Product, params: Mapping, kinds: Sequence[str]) -> dict:
    """The canvas images of one product for one batch's parameters (control images, canvas, keep-mask).

    Raises:
        ValueError: `keep` (preserve mode) is asked for and the product has no mask at all, or the
            product photo is no longer the one its snapshot recorded.
    """
    photo = load_image(store, product.image_key, product.sha256)
    mask = load_mask(store, product, photo)[0] if _MASKED_KINDS & set(kinds) else None
    try:
        return canvas_images(photo, mask, params, kinds)
    except ValueError as exc:
        raise ValueError(f"product {product.product_id!r}: {exc}") from None


def load_canvases(store: ObjectStore, uris: Mapping[str, str], product_id: str, params: Mapping,
                  kinds: Sequence[str]) -> dict[str, Image.Image]:
    """The stored canvas images of a batch by kind (`uris` maps canvas file names to their URIs)."""
    return {kind: _canvas(store, uris[canvas_name(product_id, params, kind)], kind) for kind in kinds}


@functools.lru_cache(maxsize=64)
def _canvas(store: ObjectStore, uri: str, kind: str) -> Image.Image:
    """One stored canvas, read once per process: a run writes each once, under its own URI, before any shard reads it."""
    image = load_image(store, uri)
    return image.convert("L") if kind == "keep" else image.convert("RGB")


@functools.lru_cache(maxsize=16)
def style_input(store: ObjectStore, style: StyleSet) -> StyleInput:
    """A style set's references (and negative reference) decoded, with their weights and combine rule.

    Each image must still be the one its sha256 names (the embedding cache key and the asset
    ids are built from those digests): ValueError naming the image when it is not. Read once per
    style set in a process (the shards a GPU worker serves share it); read-only.
    """
    refs = style.references
    negative = load_image(store, style.negative.key, style.negative.sha256) if style.negative else None
    return StyleInput.from_images(
        [load_image(store, r.key, r.sha256) for r in refs],
        [r.sha256 for r in refs],
        weights=[r.weight for r in refs],
        combine=style.combine,
        negative=negative,
        negative_sha=style.negative.sha256 if style.negative else "",
    )


def read_reference(store: ObjectStore, key: str, catalog: CatalogLayout) -> Reference:
    """A reference image named by a catalog key or an s3:// URI, checked to decode, with its sha256.

    Raises FileNotFoundError if it is missing, ValueError if it is not a usable image.
    """
    uri = key if key.startswith("s3://") else catalog.object(key)
    data = store.get(uri)
    decode_image(data, uri)  # Rejected (a ValueError) names the object and the problem
    return Reference(key=uri, sha256=hashlib.sha256(data).hexdigest())


def with_negative_reference(styles: Sequence[StyleSet], negative: Reference | None) -> list[StyleSet]:
    """The style sets with the campaign's negative reference, where they have none of their own."""
    if negative is None:
        return list(styles)
    return [s if s.negative else s.model_copy(update={"negative": negative}) for s in styles]


def write_controls(store: ObjectStore, run: RunLayout, products: Sequence[Product], batches: Sequence[Batch],
                   control_types: Sequence[str], adapter_images: Sequence[str]) -> dict[str, str]:
    """Compute and store the canvas images of every batch, once per product and canvas: control images
    (one per ControlNet) and preserve mode's canvas and keep-mask. Returns canvas file name -> URI,
    the map `load_canvases` reads them back with."""
    by_id = {p.product_id: p for p in products}
    controls: dict[str, str] = {}
    for b in batches:
        kinds = [k for k in canvas_kinds(b.params, control_types, adapter_images)
                 if canvas_name(b.product_id, b.params, k) not in controls]
        if not kinds:
            continue
        for kind, image in product_canvases(store, by_id[b.product_id], b.params, kinds).items():
            name = canvas_name(b.product_id, b.params, kind)
            controls[name] = run.control(name)
            store.put(controls[name], publish.encode_png(image), content_type="image/png")
    return controls
