"""Publishing a run: images, parquet table parts, the gallery, and the manifest written last."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from adapters.infra import lake
from adapters.infra.parquet_io import arrow_schema, parquet_bytes, parquet_row_count, read_parquet_bytes
from adapters.infra.storage import ObjectStore, parallel_map
from tasks import layout
from tasks.layout import AssetsLayout, RunLayout
from tasks.tables import TABLES, Published, to_frame

STAGED_CHUNK = 64  # staged parts joined into one chunk as they are read


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


def local_image_path(local_copy: str | Path, run_id: str, asset_id: str) -> Path:
    """Where a run's local copy (`copy_run`) keeps one of its images: as in the bucket, under `<run_id>/`."""
    return Path(local_copy) / run_id / layout.IMAGES / f"{asset_id}.png"


def _copy_locally(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def put_image(store: ObjectStore, run: RunLayout, asset_id: str, image: Image.Image,
              copy_to: str | None = None) -> Published:
    """The image's PNG under the run's `images/`, its sha256 stored beside it (metadata) so a later run can verify it.

    With `copy_to` (the run's local copy), the same bytes are written there too.
    """
    data = encode_png(image)
    uri = run.image(asset_id)
    sha = hashlib.sha256(data).hexdigest()
    store.put(uri, data, content_type="image/png", metadata={"sha256": sha, "asset-id": asset_id})
    if copy_to:
        _copy_locally(local_image_path(copy_to, run.run_id, asset_id), data)
    return Published(asset_id=asset_id, uri=uri, sha256=sha, size=len(data))


def existing_image(store: ObjectStore, maker: RunLayout, asset_id: str, recorder: str = "",
                   copy_to: str | None = None) -> tuple[Published, Image.Image] | None:
    """An image the run `maker` already wrote, verified: its bytes hash to the sha256 written with them and it decodes.

    None when there is none or it does not verify (cut short, overwritten, written before sha256s were
    stored). A retried shard reuses its own images this way; with `recorder` (another run), the image
    is taken over: recorded by `recorder`, made by `maker`. With `copy_to`, a verified image is
    written into the local copy of the run that records it.
    """
    run_id = maker.run_id
    uri = maker.image(asset_id)
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


def stage_part(store: ObjectStore, run: RunLayout, table: str, name: str, rows: Sequence[dict]) -> dict:
    """Write one staged parquet part of `table` (a shard's rows) where no table reader looks; returns its entry
    (`table`, `uri`, `rows`, ...)."""
    data = table_bytes(table, rows)
    uri = run.staged_part(table, name)
    store.put(uri, data, content_type="application/vnd.apache.parquet")
    return _entry(table, uri, data)


def part_entry(store: ObjectStore, table: str, uri: str) -> dict:
    """The entry of a staged part another process wrote."""
    return _entry(table, uri, store.get(uri))


def _entry(table: str, uri: str, data: bytes) -> dict:
    rows = parquet_row_count(data)
    return {"table": table, "uri": uri, "rows": rows, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def read_staged(store: ObjectStore, parts: Sequence[dict], table: str,
                columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows of `table` in staged parts (not yet committed): only `columns`, where named."""
    return read_staged_arrow(store, parts, table, columns).to_pandas()


def read_staged_arrow(store: ObjectStore, parts: Sequence[dict], table: str, columns: Sequence[str] | None = None,
                      keep: Callable[[pa.Table], pa.Table] | None = None) -> pa.Table:
    """`read_staged` in Arrow, in `table`'s schema (a column a part lacks is null); `keep` narrows each part as
    it is read. The parts are joined STAGED_CHUNK at a time: a run's parts are never all held as read (a
    shard's part is a few dozen rows: as many small chunks cost more than the rows)."""
    schema = arrow_schema(TABLES[table])
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    wanted = [p for p in parts if p["table"] == table]
    chunks = []
    for start in range(0, len(wanted), STAGED_CHUNK):
        read = [_conform(read_parquet_bytes(store.get(p["uri"]), columns), schema)
                for p in wanted[start:start + STAGED_CHUNK]]
        chunk = pa.concat_tables(read).combine_chunks()
        chunks.append(keep(chunk) if keep is not None else chunk)
    return pa.concat_tables(chunks) if chunks else schema.empty_table()


def _conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """A part in `schema`: its columns in order and type, a column it lacks null."""
    for field in schema:
        if field.name not in data.column_names:
            data = data.append_column(field, pa.nulls(data.num_rows, field.type))
    return data.select(schema.names).cast(schema)


def put_text(store: ObjectStore, uri: str, text: str, content_type: str) -> None:
    store.put(uri, text.encode(), content_type=content_type)


def write_manifest(store: ObjectStore, run: RunLayout, manifest: dict) -> str:
    """The run's record, written once after its tables committed: its files and the table versions it made."""
    uri = run.manifest
    store.put(uri, json.dumps(manifest, indent=2, sort_keys=True, default=str).encode(),
              content_type="application/json", if_absent=True)
    return uri


def read_manifests(store: ObjectStore, assets: AssetsLayout) -> list[dict]:
    """Every committed run's manifest under the assets prefix."""
    return [json.loads(store.get(o.uri)) for o in store.list(assets.runs) if o.key.endswith("/" + layout.MANIFEST)]


def read_manifest(store: ObjectStore, run: RunLayout) -> dict:
    """A committed run's manifest; FileNotFoundError when the run never committed (or lives elsewhere)."""
    return json.loads(store.get(run.manifest))


def published_asset_ids(store: ObjectStore, assets: AssetsLayout) -> set[str]:
    """Asset ids whose row some run committed to the `generations` table."""
    return set(lake.column(lake.Lake.of(store, assets), "generations", "asset_id"))


def read_table(store: ObjectStore, manifest: dict, table: str) -> pd.DataFrame:
    """A committed run's rows of one table, as of the version its commit made (the newest for a migrated run)."""
    return read_table_arrow(store, manifest, table).to_pandas()


def read_table_arrow(store: ObjectStore, manifest: dict, table: str) -> pa.Table:
    """`read_table` in Arrow."""
    assets = AssetsLayout.at(manifest.get("assets") or _assets_of(manifest))
    committed = {t["table"]: t for t in manifest.get("tables", [])}
    version = committed[table]["version"] if table in committed else None
    if table in committed and version is None:  # the run had no rows for it
        return arrow_schema(TABLES[table]).empty_table()
    rows = lake.read(lake.Lake.of(store, assets), table, version=version, where=("run_id", manifest["run_id"]))
    return rows.drop_columns([lake.PARTITION])


def _assets_of(manifest: dict) -> str:
    """The assets prefix of a manifest written before manifests named it: from its gallery's or an image's URI."""
    runs = f"/{layout.RUNS}/"
    for uri in [manifest.get("gallery") or "", *(i["uri"] for i in manifest.get("images", []))]:
        if runs in uri:
            return uri.split(runs, 1)[0]
    raise ValueError(f"manifest of run {manifest.get('run_id')!r}: no `assets` and no URI to find it from")


def run_history(store: ObjectStore, assets: AssetsLayout) -> list[dict]:
    """Every committed `runs` row under the assets prefix."""
    rows = lake.read(lake.Lake.of(store, assets), "runs")
    return rows.drop_columns([lake.PARTITION]).to_pylist()


def copy_run(store: ObjectStore, run: RunLayout, out_dir: Path) -> Path:
    """Copy a committed run to `out_dir/<run_id>/` and point `out_dir/latest` at it.

    Images its shards already wrote there as they published them (`put_image`'s `copy_to`) are
    kept when their bytes are the manifest's; only the others are read from S3. An image there
    that the run does not record (another run took its claim over) is removed.
    """
    run_id = run.run_id
    manifest = read_manifest(store, run)
    target = out_dir / run_id  # the run's folder as in the bucket (tasks/layout.py), its tables beside it
    images = {local_image_path(out_dir, run_id, img["asset_id"]): img for img in manifest["images"]}
    for path in (target / layout.IMAGES).glob("*.png"):
        if path not in images:
            path.unlink()
    copies = {img["uri"]: path for path, img in images.items()
              if not (path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == img["sha256"])}
    copies |= {uri: target / layout.key_of(run.root, run.sheet(name)) for name, uri in manifest.get("sheets", {}).items()}
    if manifest.get("gallery"):
        copies[manifest["gallery"]] = target / layout.key_of(run.root, run.gallery)
        # A large run's gallery pages (tasks.gallery.gallery_files), beside its index.html.
        copies |= {o.uri: target / layout.key_of(run.root, o.uri) for o in store.list(run.gallery_pages)}
    for local in {path.parent for path in copies.values()}:
        local.mkdir(parents=True, exist_ok=True)
    parallel_map(lambda uri: copies[uri].write_bytes(store.get(uri)), list(copies))
    # The run's committed rows of each table, one parquet file per table in a Hive layout (`run_date=`),
    # so a local DuckDB reads the mirror with `read_parquet(..., hive_partitioning = true)`.
    for entry in manifest.get("tables", []):
        frame = read_table(store, manifest, entry["table"])
        data = pa.Table.from_pandas(frame, schema=arrow_schema(TABLES[entry["table"]]), preserve_index=False)
        folder = target / layout.TABLES / entry["table"] / f"{lake.PARTITION}={manifest['run_date']}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(data, folder / f"{run_id}.parquet")
        if entry["table"] == "generations":
            pq.write_table(data, target / "generations.parquet")
    (target / layout.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    latest = out_dir / "latest"
    tmp = out_dir / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_id)
    tmp.replace(latest)
    return target
