"""The project's shape: rooms, import rules, deployments and documented tables."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import ROOT, documented_columns


def test_adapters_and_tasks_come_from_this_repository():
    # PyPI has packages named `adapters` and `tasks`; ours must win.
    for name in ("adapters", "tasks", "flows", "catalogs"):
        module = importlib.import_module(name)
        assert Path(module.__file__).resolve().parent == ROOT / name, f"{name} imported from {module.__file__}"


def test_room_rules_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_settings_reads_the_environment():
    offenders = []
    for path in ROOT.glob("[afct]*/**/*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] not in {"adapters", "flows", "catalogs", "tasks"} or rel == Path("adapters/infra/settings.py"):
            continue
        if re.search(r"os\.environ|os\.getenv", path.read_text()):
            offenders.append(str(rel))
    assert offenders == []


def test_prefect_yaml_entrypoints_are_flows():
    from prefect import Flow

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert spec["deployments"], "prefect.yaml has no deployments"
    for dep in spec["deployments"]:
        path, name = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert isinstance(getattr(module, name), Flow), dep["entrypoint"]


def test_metadata_tables_doc_lists_every_column_with_its_type():
    from tasks.tables import SCHEMA_VERSION, TABLES

    doc = (ROOT / "docs" / "metadata-tables.md").read_text()
    assert f"schema version {SCHEMA_VERSION}" in doc.lower()
    for table, columns in TABLES.items():
        documented = documented_columns(doc, f"## `{table}`", "\n## ")
        assert documented == [(c.name, c.type) for c in columns], f"{table}: doc and schema differ"


def test_adapters_is_only_its_rooms():
    # Infrastructure, model machinery, catalogs and a run's steps: a new module goes into one of them
    # (and the import contract of pyproject.toml says which room may import which).
    rooms = {"infra", "model", "catalog", "steps"}
    loose = sorted(p.name for p in (ROOT / "adapters").iterdir()
                   if p.name not in {"__init__.py", "__pycache__"} and p.name not in rooms)
    assert not loose, f"adapters/ holds {loose} outside its rooms {sorted(rooms)}"


# --------------------------------------------------------------------------- the buckets' layout

# A string that names a bucket key outside tasks/layout.py, allowed with the reason why it is no key.
NOT_KEYS = {
    ("flows/review.py", "/runs/flow-run/"): "a page of the Prefect UI, not an object in a bucket",
    ("flows/task_storage.py", "shards"): "the name of a Prefect storage block",
    ("tasks/gallery.py", "<details><summary>tables</summary><ul>"): "a heading of the gallery page",
}


def _joins(name: str | None) -> bool:
    """Whether a call of this name joins its arguments into a key, a URI or a path (`join_uri`, `run_uri`, `Path`)."""
    return bool(name) and (name.startswith("join") or name.lower().endswith(("uri", "path")))


def _segments() -> tuple[set[str], set[str]]:
    """Every key segment tasks/layout.py spells, split into file names (`_MANIFEST.json`, `LATEST`: a key
    wherever they appear) and plain words (`runs`, `tables`: a key where they are joined into one)."""
    from tasks.layout import SEGMENTS

    segments = {s for value in SEGMENTS for s in value.split("/") if s}
    files = {s for s in segments if "." in s or s.startswith("_") or s.isupper()}
    return files, segments - files


def key_literals(root: Path = ROOT) -> list[str]:
    """`file:line: literal` for every string in flows/, adapters/ and tasks/ (f-strings' parts included) that
    spells a bucket key segment outside tasks/layout.py. Docstrings and prose (text with spaces) are no keys."""
    import ast

    files, words = _segments()
    found = []
    for path in sorted(p for room in ("flows", "adapters", "tasks") for p in (root / room).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == "tasks/layout.py":
            continue
        tree = ast.parse(path.read_text(), rel)
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        joined = set()  # constants given to a join (a call, `/` or `+`) or standing as a module's constant
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if _joins(name):
                    joined |= {id(a) for a in node.args}
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div | ast.Add):
                joined |= {id(node.left), id(node.right)}
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets):
                joined.add(id(node.value))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docstrings:
                continue
            text = node.value
            if any(c.isspace() for c in text) or NOT_KEYS.get((rel, text)):
                continue
            # A path's pieces, regular expressions' included (`(?:^|/)runs/`).
            parts = set(re.split(r"[^\w.-]+", text)) if "/" in text else {text}
            if parts & files or ("/" in text and parts & words) or (text in words and id(node) in joined):
                found.append((rel, node.lineno, f"{rel}:{node.lineno}: {text!r}"))
    return [line for _, _, line in sorted(found)]


def test_no_module_but_the_layout_spells_a_bucket_key():
    assert key_literals() == [], "bucket keys spelled outside tasks/layout.py (ask the layout for them)"


def test_the_key_scan_finds_a_key_spelled_in_a_flow(tmp_path):
    # The scan itself must see the ways a key gets spelled: an f-string, a join, a module's constant.
    for room in ("flows", "adapters", "tasks"):
        (tmp_path / room).mkdir()
    (tmp_path / "tasks" / "layout.py").write_text('SEGMENTS = ("runs",)\n')
    (tmp_path / "flows" / "bad.py").write_text(
        'def where(assets, run_id):\n'
        '    """The run\'s folder, runs/<run_id>/ (a docstring is no key)."""\n'
        '    return f"{assets}/runs/{run_id}/x"\n'
        'def joined(assets, run_id):\n'
        '    return join_uri(assets, "runs", run_id)\n'
        'MANIFEST = "_MANIFEST.json"\n'
        'HELP = "outputs under <assets>/runs/"\n')
    assert key_literals(tmp_path) == ["flows/bad.py:3: '/runs/'", "flows/bad.py:5: 'runs'",
                                      "flows/bad.py:6: '_MANIFEST.json'"]


def test_the_architecture_doc_shows_the_buckets_from_the_layout():
    from tasks.layout import describe

    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("## The assets bucket", 1)[1].split("\n## ", 1)[0]
    assert f"```\n{describe()}```" in section, "docs/architecture.md: the bucket tree differs from tasks.layout.describe()"


def test_a_layout_keeps_every_key_where_it_was():
    from tasks.layout import AssetsLayout, CatalogLayout

    assets = AssetsLayout.at("s3://bucket/team/")
    run = assets.run("spring-20261207T000000Z-abc123", "2026-12-07")
    root = "s3://bucket/team/runs/spring-20261207T000000Z-abc123"
    assert (run.image("a1"), run.control("p__canny.png"), run.shard_spec(3)) == (
        f"{root}/images/a1.png", f"{root}/controls/p__canny.png", f"{root}/shards/00003.json")
    assert (run.staged_part("generations", "x-00001"), run.sheet("p__s.jpg"), run.gallery, run.manifest) == (
        f"{root}/staging/generations/x-00001.parquet", f"{root}/sheets/p__s.jpg", f"{root}/index.html",
        f"{root}/_MANIFEST.json")
    assert (run.beat("t1"), run.workers, run.gallery_pages, run.reports) == (
        f"{root}/workers/t1.json", f"{root}/workers/", f"{root}/gallery/", f"{root}/_REPORTS.json")
    assert (assets.table("runs"), assets.claim("a1"), assets.runs, assets.task_storage) == (
        "s3://bucket/team/tables/runs", "s3://bucket/team/claims/a1.json", "s3://bucket/team/runs/",
        "s3://bucket/team/_prefect/tasks")
    assert assets.scan("s1", "k").commit == "s3://bucket/team/scans/s1/k/_SCAN.json"
    catalog = CatalogLayout.at("s3://cat")
    assert (catalog.campaign("sample"), catalog.latest, catalog.snapshot("x", "products")) == (
        "s3://cat/campaigns/sample.yaml", "s3://cat/_snapshots/LATEST", "s3://cat/_snapshots/x/products.parquet")


def test_a_root_that_climbs_out_of_its_prefix_is_refused_in_one_line():
    import pytest
    from pydantic import ValidationError

    from adapters.infra.settings import Settings
    from catalogs.models import RunRequest
    from tasks.layout import AssetsLayout, CatalogLayout
    from tasks.review import ReviewRequest

    for uri, bad in (("s3://bucket/../x", "'..'"), ("s3://bucket/a//b", "empty segment"), ("s3://bucket/./x", "'.'")):
        with pytest.raises(ValueError, match=re.escape(f"assets URI {uri!r}: ") + ".*" + re.escape(bad)) as caught:
            AssetsLayout.at(uri)
        assert "\n" not in str(caught.value)
        with pytest.raises(ValueError, match=re.escape(f"catalog URI {uri!r}")):
            CatalogLayout.at(uri)
        with pytest.raises(ValidationError, match=re.escape(f"assets URI {uri!r}")):
            RunRequest(campaign="sample", assets=uri)
        with pytest.raises(ValidationError, match=re.escape(f"catalog URI {uri!r}")):
            RunRequest(campaign="sample", catalog=uri)
        with pytest.raises(ValidationError, match=re.escape(f"assets URI {uri!r}")):
            ReviewRequest(run_id="r", campaign="c", assets=uri, run_date="2026-12-07")
        with pytest.raises(ValidationError, match=re.escape(f"STYLEMATRIX_ASSETS URI {uri!r}")):
            Settings(assets=uri)
        with pytest.raises(ValidationError, match=re.escape(f"STYLEMATRIX_CATALOG URI {uri!r}")):
            Settings(catalog=uri)
    assert AssetsLayout.at("s3://bucket/team/").root == "s3://bucket/team"  # a trailing "/" is no segment
    assert Settings(assets="s3://bucket/team/").assets == "s3://bucket/team"


def test_no_function_takes_more_than_six_parameters():
    # What travels together is one typed value. Exempt (pyproject's per-file-ignores, and a noqa for PLR0913 on
    # its line): the CLI's commands and the flows whose parameters are the UI's form.
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", "--select", "PLR0913", "flows", "adapters", "tasks", "catalogs"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # A noqa is for a flow whose parameters are the UI's form, and nowhere else: not a way around the rule.
    waived = [f"{path.relative_to(ROOT)}:{n}" for room in ("adapters", "tasks", "catalogs", "flows")
              for path in (ROOT / room).rglob("*.py") for n, line in enumerate(path.read_text().splitlines(), 1)
              if "noqa: PLR0913" in line and not (room == "flows" and "@flow" in _decorators_above(path, n))]
    assert not waived, f"PLR0913 waived off the flows' forms: {waived}"


def _decorators_above(path: Path, line: int) -> str:
    """The lines just above `line` of `path` (1-based), back to the first blank one: the function's decorators."""
    lines = path.read_text().splitlines()[:line - 1]
    above = []
    for text in reversed(lines):
        if not text.strip():
            break
        above.append(text)
    return "\n".join(above)
