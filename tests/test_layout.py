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
