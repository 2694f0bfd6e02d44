"""First contact: every `--help`, the terminal progress bar, campaign titles, CJK text on sheets and the gallery."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

from tasks.layout import AssetsLayout


def _commands(command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    """Every command and group of the tree, with the arguments that reach it, found through click's group API.

    typer 0.29 carries its own copy of click (`typer._click`), so groups are told by their API, not by class.
    """
    yield path, command
    if hasattr(command, "list_commands"):
        ctx = command.context_class(command)
        for name in command.list_commands(ctx):
            yield from _commands(command.get_command(ctx, name), (*path, name))


def test_every_command_help_exits_0_and_shows_its_options_with_defaults():
    from flows.cli import app

    tree = list(_commands(typer.main.get_command(app)))
    names = {" ".join(path) for path, _ in tree}
    assert {"run", "demo", "seed", "serve", "catalog import", "catalog refresh", "catalog ls"} <= names
    runner = CliRunner()
    for path, command in tree:
        result = runner.invoke(app, [*path, "--help"], prog_name="stylematrix")
        where = f"stylematrix {' '.join(path)} --help"
        assert result.exit_code == 0, f"{where}: exit {result.exit_code}\n{result.output}{result.exception!r}"
        assert "Usage: stylematrix" in result.output, where
        for param in command.params:
            if param.param_type_name == "option":
                assert max(param.opts, key=len) in result.output, f"{where} does not show {param.opts}"
                if param.show_default and param.default is not None and not param.is_flag:
                    assert f"[default: {param.default}" in " ".join(result.output.split()), \
                        f"{where} does not show the default of {param.opts}"
            else:
                assert (param.metavar or param.name).upper() in result.output.upper(), f"{where}: {param.name}"


# --------------------------------------------------------------------------- a run you can watch


@pytest.fixture
def term(monkeypatch):
    """A console that is a terminal, writing to a string (rich reads TERM to spot a dumb terminal). Like
    Prefect's log console, which the bar draws on in a real terminal, it has a theme without rich's styles."""
    monkeypatch.setenv("TERM", "xterm-256color")
    from rich.console import Console
    from rich.theme import Theme

    return Console(force_terminal=True, file=io.StringIO(), width=120, theme=Theme({"log.level": "bold"}, inherit=False))


def test_bar_only_in_a_terminal_plain_lines_elsewhere(term):
    from rich.console import Console

    from flows import progress

    piped = Console(file=io.StringIO(), width=120)
    assert progress.wants_bar(term) and not progress.wants_bar(piped)
    with progress.terminal_progress(piped) as bar:
        assert bar is None
        progress.begin(4)
        progress.reach(4)
    assert piped.file.getvalue() == ""
    with progress.terminal_progress(term) as bar:
        assert isinstance(bar, progress.TerminalBar)


def test_listeners_hear_images_done_of_total_forward_only():
    from flows import progress

    heard: list[tuple[int, int]] = []

    class Recorder:
        def update(self, done: int, total: int) -> None:
            heard.append((done, total))

    progress.reach(3)  # nobody listens: nothing happens, nothing fails
    with progress.listening(Recorder()):
        progress.begin(0)  # a run with nothing to make: no bar
        progress.begin(8)  # shards in this process: a batch at a time
        progress.reach(3)
        progress.reach(7)
        progress.reach(5)  # a shard run again, or the pool's count: never moves the bar back
        progress.reach(8)
        progress.reach(10)  # never past the total
    progress.begin(2)
    assert heard == [(0, 8), (3, 8), (7, 8), (7, 8), (8, 8), (8, 8)]

    class Broken:
        def update(self, done: int, total: int) -> None:
            raise RuntimeError("terminal gone")

    with progress.listening(Broken()) as broken, progress.listening(Recorder()):
        progress.begin(3)  # a bar that fails is dropped; the run and the other listeners go on
        progress.reach(1)
        assert broken not in progress._listeners
    assert heard[-2:] == [(0, 3), (1, 3)]


def test_terminal_bar_shows_done_total_rate_and_time_left(term):
    from flows import progress

    bar = progress.TerminalBar(term)
    with progress.listening(bar):
        progress.begin(8)
        for done in (2, 4, 6):
            time.sleep(0.05)
            progress.reach(done)
        task = bar.progress.tasks[-1]
        assert (task.completed, task.total) == (6, 8) and task.speed and task.time_remaining is not None
        bar.progress.refresh()
        live = term.file.getvalue()
        time.sleep(0.05)
        progress.reach(8)  # all made: the bar stops, its last state stays on screen
    assert not bar.progress.live.is_started
    shown = term.file.getvalue()
    assert "6/8" in live and re.search(r"\d+\.\d\d images/s", live) and re.search(r"\d:\d\d:\d\d", live)
    assert "8/8" in shown


def test_pool_progress_tells_listeners_the_images_of_completed_and_running_shards():
    from adapters.steps.heartbeats import Beat
    from flows import progress
    from flows.dispatch import PoolProgress
    from tasks.plan import ShardContext

    # PoolProgress reads only each shard's index and its batches' jobs.
    shards = [SimpleNamespace(index=i, batches=[SimpleNamespace(jobs=[None] * size)])
              for i, size in enumerate((4, 4, 2))]
    ctx = ShardContext(run=AssetsLayout.at("s3://a").run("pool-run", "2026-01-01"), campaign="pool", controls={},
                       batch_total=3)
    heard: list[tuple[int, int]] = []

    class Recorder:
        def update(self, done: int, total: int) -> None:
            heard.append((done, total))

    def beat(images: int, state: str = "running") -> Beat:
        return Beat(worker="gpu-1", pid=1, task_run_id="t", shard=0, images_done=images, state=state)

    with progress.listening(Recorder()):
        progress.begin(10)
        tracker = PoolProgress(ctx, shards)
        tracker.completed(2)
        assert tracker.update([beat(3), None]) == pytest.approx(5 / 10)  # a running shard's worker has made 3
        tracker.completed(0)
        assert tracker.update([beat(1), beat(4, state="done")]) == pytest.approx(7 / 10)  # a done beat is not counted twice
        assert tracker.update([]) == pytest.approx(7 / 10)  # never moves back
    assert heard == [(0, 10), (5, 10), (7, 10), (7, 10)]


# --------------------------------------------------------------------------- campaign titles

TITLE = "秋季上新 · Café crème · 秋の新作"


def test_campaign_title_in_any_language_name_stays_a_slug():
    from catalogs import parse_campaign

    matrix = "matrix: {template: '{product}'}\n"
    assert parse_campaign(f"name: autumn\ntitle: '{TITLE}'\n{matrix}").title == TITLE
    assert parse_campaign(f"name: autumn\n{matrix}").title is None
    with pytest.raises(ValueError, match=r"name: .*must be a slug.*`title:`"):
        parse_campaign(f"name: 秋季上新\n{matrix}")
    with pytest.raises(ValueError, match="title: .*one line"):
        parse_campaign(f"name: autumn\ntitle: \"秋季\\n上新\"\n{matrix}")


def test_title_in_the_summary_the_artifacts_and_the_runs_schema(monkeypatch):
    from catalogs.models import RunSummary
    from flows import artifacts
    from tasks.tables import RUNS

    assert "title" in [c.name for c in RUNS]
    summary = RunSummary(run_id="autumn-1", campaign="autumn", title=TITLE, images_planned=1, images_skipped=0,
                         images_to_generate=1)
    assert TITLE in summary.lines()[0]
    made: dict[str, tuple] = {}
    monkeypatch.setattr(artifacts, "create_markdown_artifact", lambda text, **kw: made.setdefault("markdown", (text, kw)))
    monkeypatch.setattr(artifacts, "create_link_artifact", lambda link, **kw: made.setdefault("link", (link, kw)))
    artifacts.report_run("autumn", "autumn-1", [], gallery="s3://a/runs/autumn-1/index.html", sheets={}, tables=(),
                         manifest="s3://a/runs/autumn-1/_MANIFEST.json", title=TITLE)
    assert made["markdown"][0].startswith(f"# {TITLE} (autumn) · run autumn-1")
    assert TITLE in made["link"][1]["link_text"]
    assert made["markdown"][1]["key"] == "autumn-summary"  # keys stay slugs


def test_gallery_shows_the_title_as_utf8_with_cjk_fonts_in_its_font_stack():
    from tasks.gallery import render_gallery

    rows = [{"product_id": "mug", "style_id": "spring", "asset_id": "a1", "prompt": "马克杯 在 大理石台面",
             "cell": [("surface", "大理石台面")], "seed": 0, "status": "ok", "selected": True, "rank_in_product": 1,
             "rank_in_cell": 1, "output_key": "s3://a/runs/autumn-1/images/a1.png"}]
    page = render_gallery("autumn-1", "autumn", rows, title=TITLE)
    assert "<meta charset=utf-8>" in page and "马克杯 在 大理石台面" in page and "surface: 大理石台面" in page
    assert f"<title>{TITLE} · autumn-1</title>" in page and f"<h1>{TITLE}</h1>" in page
    assert "campaign autumn · run autumn-1" in page
    font = re.search(r"body\{font:([^;]+);", page).group(1)
    assert '"Noto Sans CJK SC"' in font and '"PingFang SC"' in font and font.endswith("sans-serif")
    assert "<h1>autumn</h1>" in render_gallery("autumn-1", "autumn", rows)


# --------------------------------------------------------------------------- CJK text on contact sheets


def _tiles(values=("大理石台面", "沙滩")) -> list:
    from PIL import Image

    from tasks.sheets import Tile

    return [Tile(cell=(("surface", v),), seed=seed, image=Image.new("RGB", (32, 32), (200, 120, 40)),
                 lines=(f"提示: 产品 在 {v}",)) for v in values for seed in (0, 1)]


def test_sheet_font_has_cjk_glyphs_and_is_noto_sans_cjk():
    from adapters.infra.fonts import sheet_font
    from tasks.sheets import Drawable

    font = sheet_font()
    assert font.getname() == ("Noto Sans CJK SC", "Regular")
    drawable = Drawable(font)
    text = f"{TITLE} surface: 大理石台面 한국어 Δ×é"
    assert drawable(text) == text and not drawable.missing and drawable.note() == ""


def test_a_font_without_cjk_draws_question_marks_and_says_so_never_boxes():
    from PIL import ImageFont

    from tasks.sheets import LINE, PAD, Drawable, contact_sheet

    default = ImageFont.load_default(size=12)
    drawable = Drawable(default)
    assert drawable("surface: 大理石台面") == "surface: ?????"
    assert drawable.note().startswith("? = no glyph in the sheet's font for U+53F0, U+5927")

    # The title strip of a sheet titled in CJK, in the default font, is the same pixels as one titled '?'.
    strip = (0, 0, 160, PAD + LINE)
    cjk = contact_sheet(_tiles(), title="大理石", font=default)
    marks = contact_sheet(_tiles(), title="???", font=default)
    assert cjk.crop(strip).tobytes() == marks.crop(strip).tobytes()
    # With the CJK font, the same title is drawn as glyphs, not as those marks.
    from adapters.infra.fonts import sheet_font

    drawn = contact_sheet(_tiles(), title="大理石", font=sheet_font())
    assert drawn.crop(strip).tobytes() != contact_sheet(_tiles(), title="???", font=sheet_font()).crop(strip).tobytes()


@pytest.mark.filterwarnings("ignore:Logger 'adapters.infra.fonts' attempted to send logs")  # no flow run here
def test_missing_font_package_falls_back_with_one_warning(monkeypatch, caplog):
    from PIL import ImageFont

    from adapters.infra import fonts

    monkeypatch.setattr(fonts, "cjk_font_path", lambda: None)
    fonts.sheet_font.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="adapters.infra.fonts"):
            first, again = fonts.sheet_font(), fonts.sheet_font()
    finally:
        fonts.sheet_font.cache_clear()
    assert first is again and first.getname() == ImageFont.load_default(size=12).getname()
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "noto-cjk-sans-otc" in caplog.records[0].getMessage()


def test_long_cjk_labels_wrap_at_characters_instead_of_being_cut():
    from PIL import Image, ImageDraw

    from adapters.infra.fonts import sheet_font
    from tasks.sheets import _wrap

    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), sheet_font()
    text = "surface: 一张放在大理石台面上的咖啡杯产品照片"
    lines = _wrap(draw, text, 80, font)
    assert len(lines) > 2 and "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert all(draw.textlength(line, font=font) <= 80 for line in lines)


# --------------------------------------------------------------------------- through the campaign flow

CJK_CAMPAIGN = f"""
name: autumn
title: '{TITLE}'
products: {{ids: [rocket, coffee-cup]}}
styles: {{ids: [space-age]}}
matrix: {{template: '{{product}} on {{surface}}', axes: {{surface: [大理石台面, 沙滩]}}, seeds: 1}}
generation: {{profile: tiny, width: 64, height: 64, steps: 2, batch_size: 2}}
"""


def test_a_titled_cjk_campaign_through_the_flow(campaign_env, store):
    from PIL import Image

    from adapters.steps import publish
    from catalogs.models import RunRequest
    from flows import progress
    from flows.campaign import run_campaign

    store.put(f"{campaign_env['catalog']}/campaigns/autumn.yaml", CJK_CAMPAIGN.encode())
    heard: list[tuple[int, int]] = []

    class Recorder:
        def update(self, done: int, total: int) -> None:
            heard.append((done, total))

    with progress.listening(Recorder()):
        summary = run_campaign(RunRequest(campaign="autumn", triggered_by="test"))
    assert heard == [(0, 4), (2, 4), (4, 4), (4, 4)]  # two batches of two, in this process
    assert summary.title == TITLE and TITLE in summary.lines()[0]
    manifest = json.loads(store.get(summary.manifest))
    (run,) = publish.read_table(store, manifest, "runs").to_dict("records")
    assert run["title"] == TITLE and run["campaign"] == "autumn"
    page = store.get(summary.gallery).decode("utf-8")
    assert f"<h1>{TITLE}</h1>" in page
    gens = publish.read_table(store, manifest, "generations")
    assert {dict(c)["surface"] for c in gens["cell"]} == {"大理石台面", "沙滩"}
    assert len(summary.sheets) == 3  # one per product x style set, and the campaign's overview
    sheet = Image.open(io.BytesIO(store.get(summary.sheets["rocket__space-age.jpg"])))
    assert sheet.mode == "RGB" and sheet.width > 200
    sheet.save(SHEET_OUT, quality=92)  # looked at by a person: the CJK title and axis values as glyphs


SHEET_OUT = "/tmp/cjk-sheet.jpg"
