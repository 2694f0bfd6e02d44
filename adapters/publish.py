"""Publishing a run: images, parquet table parts, the gallery, and the manifest written last."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from adapters.parquet_io import arrow_schema, parquet_bytes, parquet_row_count, read_parquet_bytes
from adapters.storage import ObjectStore, join_uri, parallel_map
from tasks.tables import TABLES, Published, to_frame

MANIFEST = "_MANIFEST.json"

def run_uri(assets: str, run_id: str, *parts: str) -> str:
    return join_uri(assets, "runs", run_id, *parts)


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes that depend only on the pixels (no timestamps or text chunks)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def encode_jpeg(image: Image.Image, quality: int = 88) -> bytes:
    """JPEG bytes for pictures people look at (contact sheets), not for published images."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def image_uri(assets: str, run_id: str, asset_id: str) -> str:
    return run_uri(assets, run_id, "images", f"{asset_id}.png")


def local_image_path(local_copy: str | Path, run_id: str, asset_id: str) -> Path:
    """Where a run's local copy (`copy_run`) keeps one of its images."""
    return Path(local_copy) / run_id / "images" / f"{asset_id}.png"


def _copy_locally(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def put_image(store: ObjectStore, assets: str, run_id: str, asset_id: str, image: Image.Image,
              copy_to: str | None = None) -> Published:
    """The image's PNG under the run's `images/`, its sha256 stored beside it (metadata) so a later run can verify it.

    With `copy_to` (the run's local copy), the same bytes are written there too.
    """
    data = encode_png(image)
    uri = image_uri(assets, run_id, asset_id)
    sha = hashlib.sha256(data).hexdigest()
    store.put(uri, data, content_type="image/png", metadata={"sha256": sha, "asset-id": asset_id})
    if copy_to:
        _copy_locally(local_image_path(copy_to, run_id, asset_id), data)
    return Published(asset_id=asset_id, uri=uri, sha256=sha, size=len(data))


def existing_image(store: ObjectStore, assets: str, run_id: str, asset_id: str, recorder: str = "",
                   copy_to: str | None = None) -> tuple[Published, Image.Image] | None:
    """An image `run_id` already wrote, verified: its bytes hash to the sha256 written with them and it decodes.

    None when there is none or it does not verify (cut short, overwritten, written before sha256s were
    stored). A retried shard reuses its own images this way; with `recorder` (another run), the image
    is taken over: recorded by `recorder`, made by `run_id`. With `copy_to`, a verified image is
    written into the local copy of the run that records it.
    """
    uri = image_uri(assets, run_id, asset_id)
    try:
        data, meta = store.read(uri)
    except FileNotFoundError:
        return None
    sha = hashlib.sha256(data).hexdigest()
    if meta.get("sha256") != sha or meta.get("asset-id", asset_id) != asset_id:
        return None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError):
        return None
    made_by = run_id if recorder and recorder != run_id else ""
    if copy_to:
        _copy_locally(local_image_path(copy_to, recorder or run_id, asset_id), data)
    return Published(asset_id=asset_id, uri=uri, sha256=sha, size=len(data), made_by_run=made_by), image


def table_bytes(table: str, rows: Sequence[dict]) -> bytes:
    frame = to_frame(table, rows)
    arrow = pa.Table.from_pandas(frame, schema=arrow_schema(TABLES[table]), preserve_index=False)
    return parquet_bytes(arrow)


def table_part_uri(assets: str, table: str, run_date: str, name: str) -> str:
    return join_uri(assets, "tables", table, f"run_date={run_date}", f"{name}.parquet")


def put_table_part(store: ObjectStore, assets: str, table: str, run_date: str, name: str, rows: Sequence[dict]) -> dict:
    """Write one Hive-partitioned parquet part; returns its manifest entry."""
    data = table_bytes(table, rows)
    uri = table_part_uri(assets, table, run_date, name)
    store.put(uri, data, content_type="application/vnd.apache.parquet")
    return _entry(table, uri, data)


def rewrite_table_part(store: ObjectStore, part: dict, rows: Sequence[dict]) -> dict:
    """Write `rows` over an uncommitted part (same URI); returns its new manifest entry."""
    data = table_bytes(part["table"], rows)
    store.put(part["uri"], data, content_type="application/vnd.apache.parquet")
    return _entry(part["table"], part["uri"], data)


def part_entry(store: ObjectStore, table: str, uri: str) -> dict:
    """The manifest entry of a part another process wrote."""
    return _entry(table, uri, store.get(uri))


def _entry(table: str, uri: str, data: bytes) -> dict:
    rows = parquet_row_count(data)
    return {"table": table, "uri": uri, "rows": rows, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def put_text(store: ObjectStore, uri: str, text: str, content_type: str) -> None:
    store.put(uri, text.encode(), content_type=content_type)


def write_manifest(store: ObjectStore, assets: str, run_id: str, manifest: dict) -> str:
    """The run's commit record; readers trust only parts and images a manifest lists."""
    uri = run_uri(assets, run_id, MANIFEST)
    store.put(uri, json.dumps(manifest, indent=2, sort_keys=True, default=str).encode(),
              content_type="application/json", if_absent=True)
    return uri


def read_manifests(store: ObjectStore, assets: str) -> list[dict]:
    """Every committed run's manifest under the assets prefix."""
    prefix = join_uri(assets, "runs") + "/"
    return [json.loads(store.get(o.uri)) for o in store.list(prefix) if o.key.endswith("/" + MANIFEST)]


def published_asset_ids(store: ObjectStore, assets: str) -> set[str]:
    """Asset ids some committed run already published."""
    return {img["asset_id"] for m in read_manifests(store, assets) for img in m.get("images", [])}


def read_table(store: ObjectStore, manifest: dict, table: str) -> pd.DataFrame:
    """One table's rows from the parts a manifest lists."""
    frames = [read_parquet_bytes(store.get(p["uri"])).to_pandas()
              for p in manifest["parts"] if p["table"] == table]
    if not frames:
        return arrow_schema(TABLES[table]).empty_table().to_pandas()
    return pd.concat(frames, ignore_index=True)


def run_history(store: ObjectStore, assets: str) -> list[dict]:
    """The `runs` rows of every committed run under the assets prefix."""
    return [row for m in read_manifests(store, assets) for row in read_table(store, m, "runs").to_dict("records")]


def copy_run(store: ObjectStore, assets: str, run_id: str, out_dir: Path) -> Path:
    """Copy a committed run to `out_dir/<run_id>/` and point `out_dir/latest` at it.

    Images its shards already wrote there as they published them (`put_image`'s `copy_to`) are
    kept when their bytes are the manifest's; only the others are read from S3. An image there
    that the run does not record (another run took its claim over) is removed.
    """
    manifest = json.loads(store.get(run_uri(assets, run_id, MANIFEST)))
    target = out_dir / run_id
    images = {local_image_path(out_dir, run_id, img["asset_id"]): img for img in manifest["images"]}
    for path in (target / "images").glob("*.png"):
        if path not in images:
            path.unlink()
    copies = {img["uri"]: path for path, img in images.items()
              if not (path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == img["sha256"])}
    copies |= {uri: target / "sheets" / name for name, uri in manifest.get("sheets", {}).items()}
    # Every part in its Hive layout too, so DuckDB reads the mirror as it reads the bucket.
    copies |= {p["uri"]: target / "tables" / p["uri"].removeprefix(join_uri(assets, "tables") + "/")
               for p in manifest["parts"]}
    if manifest.get("gallery"):
        copies[manifest["gallery"]] = target / "index.html"
        # A large run's gallery pages (tasks.gallery.gallery_files), beside its index.html.
        pages = run_uri(assets, run_id, "gallery") + "/"
        copies |= {o.uri: target / "gallery" / o.uri.removeprefix(pages) for o in store.list(pages)}
    for local in {path.parent for path in copies.values()}:
        local.mkdir(parents=True, exist_ok=True)
    parallel_map(lambda uri: copies[uri].write_bytes(store.get(uri)), list(copies))
    gens = read_table(store, manifest, "generations")
    pq.write_table(pa.Table.from_pandas(gens, schema=arrow_schema(TABLES["generations"]), preserve_index=False),
                   target / "generations.parquet")
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    latest = out_dir / "latest"
    tmp = out_dir / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_id)
    tmp.replace(latest)
    return target
