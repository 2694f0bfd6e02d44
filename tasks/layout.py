"""Where everything lives in the two buckets: the one file that spells their keys.

`AssetsLayout` is the assets bucket (or a prefix of it): the Delta tables, the runs, the claims,
the deliveries, the style scans. `AssetsLayout.run(run_id, run_date)` is one run's `RunLayout`:
everything under `runs/<run_id>/`. `CatalogLayout` is the catalog bucket: products, style sets,
campaign specs, snapshots. Every other module asks these for a URI (or, where a caller names
objects relative to a folder, a key) and never spells one; `tests/test_layout.py` holds the code to
that, and `describe()` draws the tree that docs/architecture.md shows.

Pure: no S3, no filesystem. A root is checked once, where a layout is made (`catalogs.uris`): a
prefix with `.`, `..` or an empty segment is refused, so no key ever climbs out of its bucket.
"""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, field_validator

from catalogs.models import ID_PATTERN
from catalogs.uris import SCHEME, check_prefix

# The segments of the assets bucket, each spelled once.
TABLES = "tables"
RUNS = "runs"
CLAIMS = "claims"
DELIVERY = "delivery"
SCANS = "scans"
TASK_STORAGE = "_prefect/tasks"
# ... and of a run's folder.
IMAGES = "images"
CONTROLS = "controls"
SHARDS = "shards"
STAGING = "staging"
SHEETS = "sheets"
GALLERY = "index.html"
GALLERY_PAGES = "gallery"
WORKERS = "workers"
TAKEN = "taken"
MANIFEST = "_MANIFEST.json"
REPORTS = "_REPORTS.json"
# ... of a style scan's folder.
SCAN_COMMIT = "_SCAN.json"
SCAN_CURVES = "curves.png"
SCAN_SHEET = "sheet.jpg"
# ... and of the catalog bucket.
PRODUCTS = "products"
STYLES = "styles"
CAMPAIGNS = "campaigns"
SNAPSHOTS = "_snapshots"
LATEST = "LATEST"
SNAPSHOT_COMMIT = "_SNAPSHOT.json"
SECTIONS = (PRODUCTS, STYLES)  # the catalog's entries: one folder per product or style set

# Every segment above: what tests/test_layout.py looks for in the other modules.
SEGMENTS = (TABLES, RUNS, CLAIMS, DELIVERY, SCANS, TASK_STORAGE, IMAGES, CONTROLS, SHARDS, STAGING, SHEETS, GALLERY,
            GALLERY_PAGES, WORKERS, TAKEN, MANIFEST, REPORTS, SCAN_COMMIT, SCAN_CURVES, SCAN_SHEET, PRODUCTS, STYLES,
            CAMPAIGNS, SNAPSHOTS, LATEST, SNAPSHOT_COMMIT)

_SLUG = re.compile(ID_PATTERN)
_ASSET_ID = re.compile(r"^[0-9a-f]{8,64}$")


def join(root: str, *parts: str) -> str:
    """`root` with `parts` appended as key segments; a trailing "/" on the last part is kept (a listing prefix).

    Raises ValueError for an absolute part, or a `.`, `..` or empty segment inside a part: a name
    taken from content (an id, a file name) never climbs out of the folder it is joined under.
    """
    segments = [root.rstrip("/")]
    for n, part in enumerate(parts):
        inner = part[:-1] if n == len(parts) - 1 and part.endswith("/") else part
        for segment in inner.split("/"):
            if segment in ("", ".", ".."):
                raise ValueError(f"cannot join {part!r} to {root!r}: segment {segment!r} is not allowed")
        segments.append(part)
    return "/".join(segments)


def key_of(root: str, uri: str) -> str:
    """The part of `uri` below `root` (e.g. `products/p1/image.png`); ValueError when it is not below it."""
    prefix = root.rstrip("/") + "/"
    if not uri.startswith(prefix):
        raise ValueError(f"{uri!r} is not under {root!r}")
    return uri[len(prefix):]


class _Layout(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    root: str

    @field_validator("root")
    @classmethod
    def _checked(cls, value: str) -> str:
        return check_prefix(value, cls.kind)

    kind: ClassVar[str] = "bucket"

    def uri(self, *parts: str) -> str:
        return join(self.root, *parts)


class AssetsLayout(_Layout):
    """The assets bucket: `s3://bucket[/prefix]` and every key under it."""

    kind: ClassVar[str] = "assets"

    @classmethod
    def at(cls, root: str) -> AssetsLayout:
        """The layout under `root`; ValueError (one line) for a root that is not a clean `s3://bucket[/prefix]`."""
        return cls(root=check_prefix(root, cls.kind))

    @property
    def tables(self) -> str:
        """The Delta tables' root (`tables/`)."""
        return self.uri(TABLES)

    def table(self, name: str) -> str:
        """One Delta table's folder (`tables/<name>`)."""
        return self.uri(TABLES, name)

    @property
    def runs(self) -> str:
        """The listing prefix of every run's folder (`runs/`)."""
        return self.uri(RUNS + "/")

    def run(self, run_id: str, run_date: str = "") -> RunLayout:
        """One run's folder; `run_date` is its table partition (`YYYY-MM-DD`), "" where a caller only reads files."""
        return RunLayout(assets=self, run_id=run_id, run_date=run_date)

    @property
    def claims(self) -> str:
        """The listing prefix of every asset's claim (`claims/`)."""
        return self.uri(CLAIMS + "/")

    def claim(self, asset_id: str) -> str:
        return self.uri(CLAIMS, f"{asset_id}.json")

    def delivery(self, campaign: str, channel: str, product_id: str, asset_id: str, extension: str) -> str:
        """`delivery/<campaign>/<channel>/<product_id>/<asset_id>.<ext>`: an approved image in its channel's format.

        Raises ValueError naming a segment that is not a slug (or an asset id).
        """
        for what, value in (("campaign", campaign), ("channel", channel), ("product", product_id)):
            if not _SLUG.fullmatch(value):
                raise ValueError(f"delivery of {asset_id}: {what} {value!r} is not a slug")
        if not _ASSET_ID.fullmatch(asset_id):
            raise ValueError(f"delivery: {asset_id!r} is not an asset id")
        return self.uri(DELIVERY, campaign, channel, product_id, f"{asset_id}.{extension}")

    def scans(self, style_id: str) -> str:
        """The listing prefix of one style set's scans (`scans/<style_id>/`)."""
        return self.uri(SCANS, style_id + "/")

    def scan(self, style_id: str, scan_id: str) -> ScanLayout:
        return ScanLayout(root=self.uri(SCANS, style_id, scan_id))

    @property
    def task_storage(self) -> str:
        """Where task runs handed to workers keep their parameters (Prefect's result storage for `.delay()`)."""
        return self.uri(TASK_STORAGE)


class ScanLayout(_Layout):
    """One style scan's folder: `scans/<style_id>/<scan_id>/`."""

    kind: ClassVar[str] = "scan"

    @property
    def curves(self) -> str:
        return self.uri(SCAN_CURVES)

    @property
    def sheet(self) -> str:
        return self.uri(SCAN_SHEET)

    @property
    def commit(self) -> str:
        """The scan's record, written last: the scan counts once it exists."""
        return self.uri(SCAN_COMMIT)


class RunLayout(BaseModel):
    """One run's folder, `runs/<run_id>/`, and the run's table partition."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    assets: AssetsLayout
    run_id: str
    run_date: str = ""

    @field_validator("run_id")
    @classmethod
    def _one_segment(cls, value: str) -> str:
        if not value or "/" in value or value in (".", ".."):
            raise ValueError(f"run id {value!r}: not one key segment")
        return value

    @property
    def root(self) -> str:
        return self.assets.uri(RUNS, self.run_id)

    def uri(self, *parts: str) -> str:
        return join(self.root, *parts)

    def image(self, asset_id: str) -> str:
        """A published (or finished) image: `images/<asset_id>.png`."""
        return self.uri(self.image_link(asset_id))

    @staticmethod
    def image_link(asset_id: str) -> str:
        """An image's key relative to the run's folder (how the gallery beside it links it)."""
        return f"{IMAGES}/{asset_id}.png"

    def control(self, name: str) -> str:
        """A canvas image the run's batches are conditioned on: `controls/<name>`."""
        return self.uri(CONTROLS, name)

    def shard_spec(self, index: int) -> str:
        """What a shard ran, stored before it runs: `shards/<index>.json`."""
        return self.uri(SHARDS, f"{index:05d}.json")

    def staged_part(self, table: str, name: str) -> str:
        """Rows the run has not committed: `staging/<table>/<name>.parquet`, where no table reader looks."""
        return self.uri(STAGING, table, f"{name}.parquet")

    def sheet(self, name: str) -> str:
        """A contact sheet: `sheets/<name>`."""
        return self.uri(SHEETS, name)

    @staticmethod
    def sheet_link(name: str) -> str:
        """A contact sheet's key relative to the run's folder (how the gallery links it)."""
        return f"{SHEETS}/{name}"

    @property
    def gallery(self) -> str:
        """The gallery page: `index.html`."""
        return self.uri(GALLERY)

    def gallery_file(self, path: str) -> str:
        """A file of the gallery by its path relative to the run's folder (`index.html`, `gallery/...`)."""
        return self.uri(path)

    @property
    def gallery_pages(self) -> str:
        """The listing prefix of a large gallery's pages: `gallery/`."""
        return self.uri(GALLERY_PAGES + "/")

    @property
    def manifest(self) -> str:
        """The run's record, written last: the commit."""
        return self.uri(MANIFEST)

    @property
    def reports(self) -> str:
        """Reports made again after the commit (`stylematrix reports`): `_REPORTS.json`."""
        return self.uri(REPORTS)

    @property
    def workers(self) -> str:
        """The listing prefix of the GPU workers' heartbeats: `workers/`."""
        return self.uri(WORKERS + "/")

    def beat(self, task_run_id: str) -> str:
        """The heartbeat of the worker running a shard's task run: `workers/<task_run_id>.json`."""
        return self.uri(WORKERS, f"{task_run_id}.json")

    @property
    def taken_notices(self) -> str:
        """The listing prefix of the notices other runs left as they took this run's claims over: `taken/`."""
        return self.uri(TAKEN + "/")

    def taken(self, asset_id: str) -> str:
        """The notice that another run took this run's claim of `asset_id` over: `taken/<asset_id>.json`."""
        return self.uri(TAKEN, f"{asset_id}.json")


class CatalogLayout(_Layout):
    """The catalog bucket: products, style sets, campaign specs and the snapshots a refresh commits."""

    kind: ClassVar[str] = "catalog"

    @classmethod
    def at(cls, root: str) -> CatalogLayout:
        """The layout under `root`; ValueError (one line) for a root that is not a clean `s3://bucket[/prefix]`."""
        return cls(root=check_prefix(root, cls.kind))

    def section(self, name: str) -> str:
        """The listing prefix of a section of entries (`products/`, `styles/`)."""
        if name not in SECTIONS:
            raise ValueError(f"catalog section {name!r}: not one of {', '.join(SECTIONS)}")
        return self.uri(name + "/")

    @staticmethod
    def entry(section: str, entry_id: str, name: str = "") -> str:
        """An entry's folder key (`products/<id>/`), or one of its files' keys (`products/<id>/image.png`)."""
        return f"{section}/{entry_id}/{name}"

    def key(self, uri: str) -> str:
        """A catalog object's key below the root (what snapshots record)."""
        return key_of(self.root, uri)

    def object(self, key: str) -> str:
        """The URI of a catalog key (`products/p1/image.png`)."""
        return self.uri(key)

    def campaign(self, name: str) -> str:
        """A campaign spec by name: `campaigns/<name>.yaml`."""
        return self.uri(CAMPAIGNS, f"{name}.yaml")

    @property
    def snapshots(self) -> str:
        """The listing prefix of every snapshot: `_snapshots/`."""
        return self.uri(SNAPSHOTS + "/")

    @property
    def latest(self) -> str:
        """`_snapshots/LATEST`: the id of the newest committed snapshot."""
        return self.uri(SNAPSHOTS, LATEST)

    def snapshot(self, snapshot_id: str, table: str) -> str:
        """One table of a snapshot: `_snapshots/<id>/<table>.parquet`."""
        return self.uri(SNAPSHOTS, snapshot_id, f"{table}.parquet")

    def snapshot_commit(self, snapshot_id: str) -> str:
        """A snapshot's record, written last: `_snapshots/<id>/_SNAPSHOT.json`."""
        return self.uri(SNAPSHOTS, snapshot_id, SNAPSHOT_COMMIT)


def describe() -> str:
    """The two buckets' trees, as docs/architecture.md shows them (drawn from the layout itself)."""
    assets = AssetsLayout(root=f"{SCHEME}<assets>")
    run = assets.run("<run_id>", "<run_date>")
    scan = assets.scan("<style_id>", "<scan_id>")
    catalog = CatalogLayout(root=f"{SCHEME}<catalog>")
    rows = [
        (assets.root + "/", ""),
        (assets.table("<table>") + "/", "a Delta table (generations, runs, cell_metrics, finishes, reviews, "
                                        "deliveries, style_scans), partitioned by run_date"),
        (run.image("<asset_id>"), "a published or finished image"),
        (run.control("<name>"), "a canvas image the batches are conditioned on"),
        (run.shard_spec(0).replace("00000", "<index>"), "what a shard ran, stored before it runs"),
        (run.staged_part("<table>", "<part>"), "rows not yet committed"),
        (run.beat("<task_run_id>"), "a GPU worker's heartbeat"),
        (run.taken("<asset_id>"), "notice that another run took this run's claim over"),
        (run.sheet("<product_id>__<style_id>.jpg"), "a contact sheet (and overview.jpg)"),
        (run.gallery, "the gallery page"),
        (run.gallery_pages + "<page>", "a large gallery's card pages"),
        (run.reports, "reports made again after the commit"),
        (run.manifest, "the commit: written last"),
        (assets.claim("<asset_id>"), "which run makes the asset"),
        (assets.uri(DELIVERY, "<campaign>", "<channel>", "<product_id>", "<asset_id>.<ext>"),
         "an approved image in its channel's format"),
        (scan.curves, "a style scan's curves"),
        (scan.sheet, "its probe sheet"),
        (scan.commit, "its record, written last"),
        (assets.task_storage + "/", "parameters of task runs handed to GPU workers"),
        (catalog.root + "/", ""),
        (catalog.uri(PRODUCTS, "<product_id>", "image.png"), "(+ mask.png, product.yaml)"),
        (catalog.uri(STYLES, "<style_id>", "*.png"), "(+ style.yaml)"),
        (catalog.campaign("<name>"), "a campaign spec"),
        (catalog.snapshot("<snapshot_id>", "<table>"), "products, styles, quarantine, objects"),
        (catalog.snapshot_commit("<snapshot_id>"), "the snapshot's record, written last"),
        (catalog.latest, "the newest snapshot's id"),
    ]
    width = max(len(path) for path, _ in rows)
    return "\n".join(f"{path:<{width}}  {note}".rstrip() if note else path for path, note in rows) + "\n"
