"""flows/ orchestrates: every function fits one screen, every Prefect task has a name of its own, the
runs row the campaign commits is a typed model with exactly the `runs` table's columns, and loading the flows
loads no model library."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.helpers import ROOT

SCREEN = 60  # lines: a reader sees a whole flow function at once


def long_functions(root: Path, limit: int = SCREEN) -> list[str]:
    """`file:function:length` of every function under `root` (methods and nested ones too) over `limit` lines,
    decorators included; files named relative to `root`'s parent."""
    found = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - min([node.lineno, *(d.lineno for d in node.decorator_list)]) + 1
                if length > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.name}:{length}")
    return found


def test_every_flows_function_fits_one_screen():
    assert long_functions(ROOT / "flows") == [], f"functions in flows/ over {SCREEN} lines (file:function:length)"


def test_the_screen_check_names_file_function_and_length(tmp_path):
    room = tmp_path / "flows"
    room.mkdir()
    body = "\n".join(f"        x{i} = {i}" for i in range(SCREEN - 1))
    (room / "steps.py").write_text(f"def short():\n    pass\n\n\nclass Run:\n    @property\n    def long(self):\n{body}\n")
    assert long_functions(room) == [f"flows/steps.py:long:{SCREEN + 1}"]  # the decorator's line counts
    assert long_functions(room, limit=SCREEN + 1) == []


def test_every_prefect_task_has_a_name_of_its_own():
    from prefect import Task

    named: dict[str, set[str]] = {}
    for path in sorted((ROOT / "flows").glob("*.py")):
        if path.stem.startswith("cli") or path.stem == "__init__":
            continue
        module = importlib.import_module(f"flows.{path.stem}")
        for value in vars(module).values():
            task = value if isinstance(value, Task) else getattr(value, "task", None)
            if isinstance(task, Task):
                named.setdefault(task.name, set()).add(f"{task.fn.__module__}.{task.fn.__qualname__}")
    assert {"generate-shard-in-process", "generate-shard-on-worker"} <= set(named)
    assert {name: fns for name, fns in named.items() if len(fns) > 1} == {}


def test_the_runs_row_model_has_exactly_the_runs_columns_in_order():
    from tasks.runs import RunRow
    from tasks.tables import RUNS, SCHEMA_VERSION

    assert list(RunRow.model_fields) == [c.name for c in RUNS]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    fields = {c.name: 0 for c in RUNS if c.type in ("int32", "float64")} | {
        c.name: "x" for c in RUNS if c.type == "string"} | {
        "started_at": now, "finished_at": now, "left_to_runs": ("other",), "left_out": (("product kettle", "why"),),
        "consistency_spreads": (), "title": None, "consistency_spread": None}
    fields.pop("schema_version")
    row = RunRow(**fields).row()
    assert row["schema_version"] == SCHEMA_VERSION and row["left_out"] == [("product kettle", "why")]
    with pytest.raises(ValueError, match="images_made"):
        RunRow(**fields, images_made=3)  # a column the table does not have
    with pytest.raises(ValueError, match="run_id"):
        RunRow(**{k: v for k, v in fields.items() if k != "run_id"})


def test_flows_load_without_torch_until_a_model_runs():
    """A review, a catalog refresh, `serve` and the CLI never run a model: loading the flows must not import torch
    (about 0.5 GB and 1.5 CPU seconds per process). Asking for the `sim` engine must not either, nor drawing a
    campaign's canny control maps (a fleet's campaign process draws them and runs no model)."""
    code = ("import sys; import flows.campaign, flows.review, flows.catalog, flows.style_scan, flows.gpu_worker, "
            "flows.serve, flows.cli, flows.fleet\n"
            "from PIL import Image\n"
            "from adapters.infra.settings import Settings\n"
            "from adapters.model.engine import get_engine, model_identity\n"
            "from tasks.canny import control_image\n"
            "assert model_identity('sim', Settings())[2] == 'sim' and get_engine('sim', Settings())\n"
            "assert control_image(Image.new('RGB', (40, 30), 'navy'), 64, 80, 100, 200).size == (64, 80)\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"loaded by importing the flows: {done.stdout.strip()}"
