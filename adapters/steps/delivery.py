"""Delivery: approved images written in a channel's format (`AssetsLayout.delivery`), and the review tables.

Idempotent: a file that is already delivered is never written again (a conditional put, after a
check), and a file whose row was lost (the step died between the object and its table part) is
recorded from the object itself. The same image, format and settings always give the same bytes,
so a retried write that finds its own earlier bytes counts as written.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

from PIL import Image, ImageCms

from adapters.infra import lake
from adapters.infra.storage import ObjectStore
from adapters.steps import publish, run_outputs
from catalogs.models import DeliveryFormat
from tasks.finish import with_finishes
from tasks.layout import RunLayout
from tasks.review import DeliveredFile, ReviewRequest, delivery_row

logger = logging.getLogger(__name__)

_EXIF_DESCRIPTION, _EXIF_SOFTWARE = 0x010E, 0x0131
_MIME = {"jpeg": "image/jpeg", "webp": "image/webp"}


class TooLarge(ValueError):
    """No quality allowed by the format makes the file fit its `max_bytes`."""


@dataclass(frozen=True)
class Encoded:
    """A delivered file's bytes and what they were written with."""

    data: bytes
    quality: int
    width: int
    height: int


@lru_cache(maxsize=1)
def srgb_profile() -> bytes:
    """LittleCMS's sRGB ICC profile with its creation date and id zeroed: the same bytes on every call and machine."""
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[24:36] = bytes(12)  # dateTimeNumber
    profile[84:100] = bytes(16)  # profile id (an MD5 that is optional; zero means "not computed")
    return bytes(profile)


def to_srgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit sRGB: converted from its own ICC profile when it has one, transparency flattened on white."""
    icc = image.info.get("icc_profile")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    if icc and image.mode in ("RGB", "CMYK", "L"):
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        target = ImageCms.ImageCmsProfile(io.BytesIO(srgb_profile()))
        return ImageCms.profileToProfile(image, source, target, outputMode="RGB")
    return image.convert("RGB")


def encode_delivery(image: Image.Image, fmt: DeliveryFormat, *, asset_id: str) -> Encoded:
    """The image in the delivery format: quality stepped down from `fmt.quality` until it fits `fmt.max_bytes`.

    Raises TooLarge (naming the asset, the limit and the smallest size reached) when even
    `fmt.min_quality` does not fit.
    """
    pixels = to_srgb(image) if fmt.srgb else image.convert("RGB")
    options: dict = {}
    if fmt.metadata == "keep":
        exif = image.getexif()
        exif[_EXIF_SOFTWARE] = "stylematrix"
        exif[_EXIF_DESCRIPTION] = f"stylematrix asset {asset_id}"
        options["exif"] = exif.tobytes()
        options["icc_profile"] = srgb_profile() if fmt.srgb else image.info.get("icc_profile", srgb_profile())
    qualities = list(range(fmt.quality, fmt.min_quality, -fmt.quality_step)) + [fmt.min_quality]
    smallest = None
    for quality in dict.fromkeys(qualities):
        data = _encode(pixels, fmt.format, quality, options)
        if fmt.max_bytes is None or len(data) <= fmt.max_bytes:
            return Encoded(data=data, quality=quality, width=pixels.width, height=pixels.height)
        smallest = len(data) if smallest is None else min(smallest, len(data))
    raise TooLarge(f"image {asset_id}: {fmt.format} does not fit max_bytes {fmt.max_bytes} at any quality down to "
                   f"{fmt.min_quality} (smallest {smallest} bytes)")


def _encode(image: Image.Image, fmt: str, quality: int, options: dict) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.save(buf, format="JPEG", quality=quality, optimize=True, **options)
    else:
        image.save(buf, format="WEBP", quality=quality, method=4, **options)
    return buf.getvalue()


# --------------------------------------------------------------------------- review and delivery tables


def part_name(run_id: str, review_id: str) -> str:
    """The table part of one review of a run: `<run_id>--<review_id>` (the separator no run id contains)."""
    return f"{run_id}--{review_id}"


def read_parts(store: ObjectStore, run: RunLayout, table: str) -> list[dict]:
    """Every committed row of `table` (reviews or deliveries) about the run (in its partition `run_date`)."""
    rows = lake.read(lake.Lake.of(store, run.assets), table, where=("run_id", run.run_id))
    return [r for r in rows.to_pylist() if str(r.pop(lake.PARTITION)) == run.run_date]


def write_part_once(store: ObjectStore, request: ReviewRequest, table: str, review_id: str,
                    rows: Sequence[dict]) -> str | None:
    """Commit one review's rows of `table`, unless that review's commit already landed; the table's URI, None
    without rows. The commit is named `review:<run_id>--<review_id>`: a retry finds it and writes nothing."""
    if not rows:
        return None
    done = lake.commit(lake.Lake.of(store, request.layout.assets), table, rows, run_date=request.run_date,
                       txn=f"review:{part_name(request.run_id, review_id)}")
    return done.uri


@dataclass
class Delivered:
    """What one delivery did: the new `deliveries` rows, the files already there, those that do not fit."""

    rows: list[dict] = field(default_factory=list)
    already: list[str] = field(default_factory=list)  # delivered keys written before, by this or an earlier review
    too_large: dict[str, str] = field(default_factory=dict)  # asset id -> why
    checks_failed: dict[str, str] = field(default_factory=dict)  # asset id -> the marketplace checks it fails

    def extend(self, other: Delivered) -> Delivered:
        """This delivery and another (one channel's), together."""
        return Delivered(self.rows + other.rows, self.already + other.already, {**self.too_large, **other.too_large},
                         {**self.checks_failed, **other.checks_failed})


def deliver(store: ObjectStore, request: ReviewRequest, review_id: str,
            group: tuple[str, DeliveryFormat, Sequence[Mapping]], recorded: set[str]) -> Delivered:
    """Write each approved image of a group (`tasks.review.delivery_groups`: the channel, its format, and the
    images' generations rows) in the channel's format under `AssetsLayout.delivery`.

    `recorded` holds the delivered keys some `deliveries` row already names: those are skipped
    without a read. A key that exists but is not recorded (a delivery cut short before its part)
    gets its row from the stored object.
    """
    channel, fmt, sources = group
    assets = request.layout.assets
    out = Delivered()
    for source in sources:
        key = assets.delivery(request.campaign, channel, source["product_id"], source["asset_id"], fmt.extension)
        if key in recorded:
            out.already.append(key)
            continue
        existing = store.head(key)
        if existing is None:
            data = store.get(source["output_key"])
            if hashlib.sha256(data).hexdigest() != source["sha256"]:
                raise ValueError(f"image {source['asset_id']}: {source['output_key']} no longer has the sha256 its "
                                 "run recorded; not delivered")
            try:
                encoded = encode_delivery(Image.open(io.BytesIO(data)), fmt, asset_id=source["asset_id"])
            except TooLarge as exc:
                out.too_large[source["asset_id"]] = str(exc)
                logger.warning("%s", exc)
                continue
            store.put(key, encoded.data, content_type=_MIME[fmt.format], if_absent=True,
                      metadata={"asset-id": source["asset_id"], "quality": str(encoded.quality)})
            data, quality, width, height = encoded.data, encoded.quality, encoded.width, encoded.height
        else:
            data, meta = store.read(key)
            if meta.get("asset-id") != source["asset_id"] or not meta.get("quality", "").isdigit():
                raise ValueError(f"{key} exists but was not written by a delivery of image {source['asset_id']}")
            with Image.open(io.BytesIO(data)) as stored:
                width, height = stored.size
            quality = int(meta["quality"])
        written = DeliveredFile(channel=channel, key=key, fmt=fmt, quality=quality, width=width, height=height,
                                size=len(data), sha256=hashlib.sha256(data).hexdigest())
        out.rows.append(delivery_row(request, review_id, source, written, at=datetime.now(UTC)))
    return out



# --------------------------------------------------------------------------- the reviewed run


@dataclass(frozen=True)
class ReviewedRun:
    """A committed run as its review sees it: the manifest and the `generations` rows of its images."""

    manifest: dict
    images: tuple[dict, ...]
    finishes: tuple[dict, ...] = ()  # the run's finished images (upscaled, on white, checked), by source

    @property
    def selected(self) -> list[dict]:
        """The run's selected images, product by product, best first."""
        return sorted((r for r in self.images if r.get("selected")),
                      key=lambda r: (r["product_id"], float(r.get("rank_in_product") or 0), r["asset_id"]))

    @property
    def known(self) -> dict[str, dict]:
        """Asset id -> row, for every image that can be delivered (published and not failed)."""
        return {r["asset_id"]: r for r in self.images if r.get("output_key") and r.get("status") != "failed"}


def reviewed_run(store: ObjectStore, request: ReviewRequest) -> ReviewedRun:
    """The committed run a review is about; FileNotFoundError (one line) when it has no manifest."""
    uri = request.layout.manifest
    try:
        manifest = publish.read_manifest(store, request.layout)
    except FileNotFoundError:
        raise FileNotFoundError(f"review of run {request.run_id}: the run is not committed ({uri} is missing)") from None
    rows = publish.read_table(store, manifest, "generations").to_dict("records")
    finishes = publish.read_table(store, manifest, "finishes").to_dict("records")
    return ReviewedRun(manifest=manifest, images=tuple(rows), finishes=tuple(finishes))


def review_links(store: ObjectStore, request: ReviewRequest, run: ReviewedRun) -> tuple[dict[str, str], str | None]:
    """Links a reviewer can open for as long as the review waits: each selected image's (asset id -> URL) and the
    gallery's (None without one)."""
    seconds = int(request.review.wait_hours * 3600)
    links = {r["asset_id"]: store.presigned_url(r["output_key"], seconds) for r in run.selected}
    return links, store.presigned_url(request.gallery, seconds) if request.gallery else None


def mark_gallery(store: ObjectStore, request: ReviewRequest, run: ReviewedRun, states: dict[str, str]) -> str | None:
    """Write the run's gallery again with each image's review state; its URI (None for a run without a gallery).

    What the gallery shows besides the images comes with the review (its title) and the manifest (what the
    run left out), so no table is read again for it."""
    if not run.manifest.get("gallery") or not states:
        return None
    reports = run_outputs.Reports(run=request.layout, campaign=request.campaign, title=request.title)
    return run_outputs.write_gallery(store, reports, with_finishes(run.images, run.finishes),
                                     run.manifest.get("sheets", {}), left_out=dict(run.manifest.get("left_out") or {}),
                                     reviews=states)
