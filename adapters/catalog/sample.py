"""The sample catalog: a few products and style sets made from scikit-image's bundled photos.

What it holds is written down in `catalogs/sample/catalog.yaml`; the models below read that file.
"""

from __future__ import annotations

import functools
import io
from importlib import resources
from typing import Literal

import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from adapters.infra.storage import ObjectStore, join_uri, split_uri
from catalogs import sample_campaign_text
from tasks import layout
from tasks.layout import CatalogLayout
from tasks.masks import border_connected

__all__ = ["sample_png", "seed_sample_catalog"]


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
        folder = CatalogLayout.entry(layout.PRODUCTS, product_id)
        put(folder + "image.png", sample_png(product.source, spec.max_side, product.background), "image/png")
        meta = {"title": product.title, "category": product.category, "tags": list(product.tags)}
        put(folder + "product.yaml", _yaml_bytes(meta), "application/yaml")
        counts["products"] += 1

    for style_id, style in spec.styles.items():
        folder = CatalogLayout.entry(layout.STYLES, style_id)
        weights = {}
        for name, reference in style.references.items():
            put(f"{folder}{name}.png", sample_png(reference.source, spec.max_side, "keep"), "image/png")
            weights[f"{name}.png"] = reference.weight
            counts["references"] += 1
        meta = {"weights": weights, "tags": list(style.tags)}
        if style.combine is not None:
            meta["combine"] = style.combine
        if style.ip_scale is not None:
            meta["ip_scale"] = style.ip_scale
        put(folder + "style.yaml", _yaml_bytes(meta), "application/yaml")
        counts["styles"] += 1

    where = CatalogLayout.at(catalog_uri)
    put(where.key(where.campaign("sample")), campaign.encode("utf-8"), "application/yaml")
    counts["campaigns"] += 1
    return counts


def _yaml_bytes(data: dict[str, object]) -> bytes:
    return yaml.safe_dump(data, sort_keys=True, allow_unicode=True).encode("utf-8")


@functools.lru_cache(maxsize=32)  # pure and deterministic: reseeding in one process reuses the bytes
def sample_png(source: str, max_side: int, background: Literal["keep", "transparent"]) -> bytes:
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
    rgb = np.asarray(image.convert("RGB"))
    background = border_connected(rgb.min(axis=2) >= threshold)
    alpha = np.where(background, 0, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]))
