"""Reading the S3 catalog: listing it, inspecting its objects, building its entries.

Catalog layout under a catalog URI (paths below are relative to it):

    products/<product_id>/image.{png,jpg,jpeg,webp,gif}  (+ mask.png, product.yaml)
    styles/<style_id>/*.{png,jpg,jpeg,webp,gif}          (+ style.yaml)
    campaigns/<name>.yaml                                 (adapters/catalog/campaigns.py)
    _snapshots/<snapshot_id>/...                          (written by a refresh: adapters/catalog/snapshots.py)

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
import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import yaml
from botocore.exceptions import BotoCoreError, ClientError

from adapters.infra.storage import ObjectInfo, ObjectStore, join_uri, split_uri
from tasks import layout
from tasks.catalog_build import CatalogState, ObjectRecord, build_catalog
from tasks.catalog_rules import Rejected, inspect_image, key_problem, object_role, size_problem
from tasks.snapshot_tables import inventory_digest
from tasks.values import first_line

__all__ = ["Scan", "inspect_object", "list_catalog", "read_catalog", "read_record", "scan_catalog"]

SECTIONS = layout.SECTIONS


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
        transient = [error for _, error in read if isinstance(error, ConnectionError)]
        if transient:
            # Busy or down past the store's retries: a fault of the moment, not of the object. It
            # must never become data (a quarantined entry, a snapshot missing the object), so the
            # refresh stops here, naming the object, and the last good snapshot stays the latest.
            raise transient[0]
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
        facts = inspect_image(data, key, role=role, product=key.startswith(layout.PRODUCTS + "/"))
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
    """The record of one listed object: ruled out by its key, name or size, else downloaded and inspected.

    Raises ConnectionError when the store stayed busy or down past its retries.
    """
    ruled_out = _unread_record(key, info)
    if ruled_out is not None:
        return ruled_out
    record, error = _read_record(store, (key, info))
    if isinstance(error, ConnectionError):
        raise error
    return record


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
    except ConnectionError as exc:  # busy or down after the store's retries: stop the refresh, name the object
        return ObjectRecord(key=key, etag="", size=info.size, role=role, problem=""), ConnectionError(
            f"catalog object {info.uri} could not be read: {first_line(exc)}; the refresh stopped and "
            "committed nothing (the last snapshot stays the latest): run it again")
    except (OSError, ClientError, BotoCoreError) as exc:  # refused for this object (access denied, ...): this object only
        return ObjectRecord(key=key, etag="", size=info.size, role=role,
                            problem=f"{key}: could not be read ({first_line(exc)}); it is read again at the next refresh"), exc
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
