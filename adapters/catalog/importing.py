"""Importing a local folder of materials into an S3 catalog.

Two layouts are accepted:

- a catalog tree: `products/<id>/` (image.<ext>, optional mask.png and product.yaml) and
  `styles/<id>/` (reference images, optional style.yaml), uploaded to the same keys;
- a folder of loose images, each one product (`products/<id>/image.<ext>`) or one style set
  (`styles/<id>/<id>.<ext>`), the id made from the file name; the caller says which.

Files are judged by the same rules as a catalog refresh before anything is uploaded, each entry
together with the files its remote folder already holds (the refresh will see both): an entry
the refresh would quarantine is refused here, with the same reason, and the rest goes on.
A file whose remote copy has the same size and MD5 (the ETag of a single-part upload) is not
uploaded again, so importing the same folder twice uploads nothing the second time. An import
adds and replaces files; it never deletes anything from the catalog.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from adapters.catalog.scan import inspect_object, list_catalog, read_record
from adapters.infra.storage import ObjectInfo, ObjectStore, join_uri
from tasks import layout
from tasks.catalog_build import QuarantineEntry, build_catalog
from tasks.catalog_rules import IMAGE_SUFFIXES
from tasks.layout import CatalogLayout

__all__ = ["ImportReport", "entry_id_from_name", "import_folder", "local_layout"]

EntryKind = Literal["products", "styles"]
SECTIONS: tuple[EntryKind, ...] = layout.SECTIONS
_CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                  ".gif": "image/gif", ".yaml": "application/yaml"}


@dataclass
class ImportReport:
    """What an import did, by catalog-relative key; `refused` are entries or files left out, with reasons."""

    catalog: str
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    products: int = 0
    styles: int = 0


def entry_id_from_name(name: str) -> str:
    """A catalog id from a file name: `Red Mug (2).JPG` -> `red-mug-2`, `Été.png` -> `ete`."""
    ascii_name = unicodedata.normalize("NFKD", PurePosixPath(name).stem).encode("ascii", "ignore").decode()
    entry = re.sub(r"[^a-z0-9_-]+", "-", ascii_name.lower()).strip("-_")[:64].rstrip("-_")
    if not entry:
        raise ValueError(f"{name}: cannot make a catalog id from this file name; rename it (letters and digits)")
    return entry


def local_layout(source: Path, as_kind: EntryKind | None = None) -> tuple[dict[str, Path], list[str]]:
    """Catalog-relative key -> local file for everything to import, and the files left out, with reasons.

    Raises FileNotFoundError for a missing folder and ValueError when the layout is ambiguous.
    """
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such folder")
    root = source.resolve()
    if any((source / s).is_dir() for s in SECTIONS):
        if as_kind is not None:
            raise ValueError(f"{source} has products/ or styles/ folders; --as is only for a folder of loose images")
        return _tree(source, root)
    images = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"{source}: nothing to import (no products/ or styles/ folder and no images)")
    if as_kind is None:
        raise ValueError(f"{source} holds {len(images)} loose images: say whether each is a product or a style set "
                         "(--as products or --as styles)")
    files: dict[str, Path] = {}
    left_out = [f"{p.name}: not imported (only loose images are read from a folder of loose images)"
                for p in sorted(source.iterdir()) if p not in images and not p.name.startswith(".")]
    for path in images:
        entry, suffix = entry_id_from_name(path.name), path.suffix.lower()
        key = CatalogLayout.entry(as_kind, entry, f"image{suffix}" if as_kind == layout.PRODUCTS else f"{entry}{suffix}")
        clash = next((other for k, other in files.items() if k.split("/")[1] == entry), None)
        if clash is not None:
            raise ValueError(f"{clash.name} and {path.name} would both become {as_kind} id {entry!r}; rename one")
        files[key] = path
    return files, left_out


def import_folder(store: ObjectStore, source: Path, catalog: str, *, as_kind: EntryKind | None = None) -> ImportReport:
    """Upload the usable entries of a local folder to `catalog`, skipping files already there unchanged.

    Each entry is judged as the catalog will hold it after the import: its local files over
    the files already in its remote folder (an import never deletes), so a local `image.png`
    meeting a remote `image.jpg` is refused, as the refresh would quarantine the pair.
    """
    files, left_out = local_layout(source, as_kind)
    records, md5s = [], {}
    for key, path in files.items():  # one file in memory at a time: a shoot can be gigabytes
        data = path.read_bytes()
        records.append(inspect_object(key, data))
        md5s[key] = hashlib.md5(data).hexdigest()
    remote = {key: info for key, info in list_catalog(store, catalog)}
    folders = {_folder(key) for key in files}
    kept = {key: info for key, info in remote.items()
            if key not in files and len(key.split("/")) == 3 and _folder(key) in folders}
    records += [read_record(store, key, info) for key, info in sorted(kept.items())]
    state = build_catalog(records, catalog)
    local = {join_uri(catalog, key) for key in files}  # a remote file the entry ignores is not this import's
    refused = [_refusal(q, catalog, files, kept) for q in state.quarantine if q.kind != "object" or q.key in local]
    report = ImportReport(catalog=catalog, refused=[*left_out, *refused],
                          products=len(state.products), styles=len(state.styles))
    accepted = {CatalogLayout.entry(layout.PRODUCTS, p.product_id) for p in state.products} | \
        {CatalogLayout.entry(layout.STYLES, s.style_id) for s in state.styles}
    ignored = {q.key for q in state.quarantine if q.kind == "object"}  # extra files beside an entry
    wanted = [key for key in sorted(files) if _folder(key) in accepted and join_uri(catalog, key) not in ignored]
    for key in wanted:
        there = remote.get(key)
        if there is not None and there.size == files[key].stat().st_size and there.etag == md5s[key]:
            report.unchanged.append(key)
            continue
        store.put(join_uri(catalog, key), files[key].read_bytes(), _CONTENT_TYPES.get(PurePosixPath(key).suffix.lower()))
        report.uploaded.append(key)
    return report


def _folder(key: str) -> str:
    """`products/cup/` of `products/cup/image.png`."""
    return key.rsplit("/", 1)[0] + "/"


def _refusal(entry: QuarantineEntry, catalog: str, files: dict[str, Path], remote: dict[str, ObjectInfo]) -> str:
    """A quarantine reason, led by the local path it concerns, naming any file already in the catalog it met."""
    relative = entry.key[len(catalog.rstrip("/")) + 1 :]
    inside = [path for key, path in files.items() if key == relative or key.startswith(relative)]
    met = sorted(key for key in remote if key.startswith(relative))
    also = f" (the catalog already holds {', '.join(met)}; an import never deletes)" if met else ""
    if len(inside) == 1:  # a file, or an entry made of one file (a loose image)
        return f"{inside[0]}: {entry.reason}{also}"
    return f"{inside[0].parent if inside else relative}: {entry.reason}{also}"


def _tree(source: Path, root: Path) -> tuple[dict[str, Path], list[str]]:
    files: dict[str, Path] = {}
    left_out: list[str] = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source).as_posix()
        if any(part.startswith(".") for part in relative.split("/")) or path.is_dir():
            continue  # .DS_Store, .git and friends
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            left_out.append(f"{relative}: not imported (a link to a file outside {source})")
        elif relative.split("/")[0] not in SECTIONS:
            left_out.append(f"{relative}: not imported (outside products/ and styles/)")
        elif len(relative.split("/")) != 3:
            left_out.append(f"{relative}: not imported (expected {relative.split('/')[0]}/<id>/<file>)")
        else:
            files[relative] = path
    return files, left_out
