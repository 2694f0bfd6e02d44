"""Contact sheets: axes become rows and columns, seeds sit side by side, selected images are framed.
The gallery page: every card says the generation parameters that differ between the run's images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from tasks.sheets import SELECTED, Tile, contact_sheet, sheet_layout, split_axes, tile_for


def test_axes_split_between_rows_and_columns():
    assert split_axes([]) == ((), ())
    assert split_axes(["surface"]) == (("surface",), ())
    assert split_axes(["surface", "light"]) == (("surface",), ("light",))
    assert split_axes(["surface", "light", "season"]) == (("surface", "light"), ("season",))
    assert split_axes(["a", "b", "c", "d"]) == (("a", "b"), ("c", "d"))


def _tiles(axes: dict[str, list[str]], seeds: list[int], size: int = 24) -> list[Tile]:
    """One solid-colour tile per cell and seed, each colour distinct."""
    tiles = []
    combos = itertools.product(*axes.values())
    for i, (combo, seed) in enumerate(itertools.product(combos, seeds)):
        colour = (20 + 37 * i % 200, 200 - 23 * i % 180, 60 + 51 * i % 190)
        tiles.append(Tile(cell=tuple(zip(axes, combo, strict=True)), seed=seed, image=Image.new("RGB", (size, size), colour),
                          lines=(f"#{i + 1}",)))
    return tiles


def test_layout_puts_the_first_axis_down_and_the_second_across_with_seeds_side_by_side():
    tiles = _tiles({"surface": ["marble", "beach"], "light": ["dawn", "dusk"]}, seeds=[11, 42])
    layout = sheet_layout(tiles)
    assert layout.rows == ("surface: marble", "surface: beach")
    assert layout.cols == ("light: dawn\nseed 11", "light: dawn\nseed 42", "light: dusk\nseed 11", "light: dusk\nseed 42")
    assert layout.slots[((("surface", "beach"), ("light", "dawn")), 42)] == (1, 1)
    assert len(set(layout.slots.values())) == len(tiles)


def test_three_axes_fold_two_into_rows_and_no_axes_make_one_row_of_seeds():
    tiles = _tiles({"a": ["1", "2"], "b": ["x", "y", "z"], "c": ["p", "q"]}, seeds=[0])
    layout = sheet_layout(tiles)
    assert len(layout.rows) == 6 and len(layout.cols) == 2
    assert layout.rows[1] == "a: 1\nb: y"
    single = sheet_layout(_tiles({}, seeds=[1, 2, 3]))
    assert single.rows == ("",) and single.cols == ("seed 1", "seed 2", "seed 3")
    with pytest.raises(ValueError, match="at least one image"):
        sheet_layout([])


def test_zipped_axes_make_one_row_per_pair_and_no_empty_rows():
    # surface and light are zipped (marble at dawn, beach at dusk); mode multiplies them.
    zipped = [(("surface", s), ("light", li), ("mode", m)) for s, li in (("marble", "dawn"), ("beach", "dusk"))
              for m in ("ip_adapter", "img2img")]
    tiles = [Tile(cell=c, seed=seed, image=None) for c in zipped for seed in (1, 2)]
    layout = sheet_layout(tiles)
    assert layout.row_axes == ("surface", "light") and layout.col_axes == ("mode",)
    assert layout.rows == ("surface: marble\nlight: dawn", "surface: beach\nlight: dusk")
    assert layout.cols == ("mode: ip_adapter\nseed 1", "mode: ip_adapter\nseed 2", "mode: img2img\nseed 1",
                           "mode: img2img\nseed 2")
    assert sorted(layout.slots.values()) == [(r, c) for r in range(2) for c in range(4)]  # every slot filled, once
    # Four zipped parameter axes and a word axis: still one row per zipped setting.
    four = [(("ip_scale", a), ("controlnet_scale", b), ("guidance", g), ("steps", n), ("surface", w))
            for a, b, g, n in (("0.4", "0.9", "5.0", "2"), ("0.8", "0.6", "7.5", "3")) for w in ("sand", "slate")]
    layout = sheet_layout([Tile(cell=c, seed=0, image=None) for c in four])
    assert len(layout.rows) == 2 and len(layout.cols) == 2 and len(set(layout.slots.values())) == 4
    assert layout.rows[1] == "ip_scale: 0.8\ncontrolnet_scale: 0.6\nguidance: 7.5\nsteps: 3"


def _centre(sheet: np.ndarray, colour: tuple[int, int, int]) -> tuple[float, float]:
    hits = np.argwhere((np.abs(sheet.astype(int) - colour) <= 2).all(axis=2))
    assert len(hits), f"colour {colour} not on the sheet"
    return tuple(hits.mean(axis=0))


def test_sheet_places_each_image_in_its_row_and_column_and_frames_the_selected():
    tiles = _tiles({"surface": ["marble", "beach"], "light": ["dawn", "dusk"]}, seeds=[11, 42], size=40)
    tiles[5] = Tile(**{**tiles[5].__dict__, "selected": True})
    product = Image.new("RGB", (30, 60), (250, 10, 250))
    sheet = contact_sheet(tiles, title="mug x spring", subtitle="run r1", header=[("mug", product)], tile_size=64)
    pixels = np.asarray(sheet)
    layout = sheet_layout(tiles)
    centres = {layout.slots[(t.cell, t.seed)]: _centre(pixels, t.image.getpixel((0, 0))) for t in tiles}
    for (r, c), (y, x) in centres.items():
        if c + 1 < len(layout.cols):
            assert centres[(r, c + 1)][1] > x + 60 and abs(centres[(r, c + 1)][0] - y) < 1
        if r + 1 < len(layout.rows):
            assert centres[(r + 1, c)][0] > y + 60 and abs(centres[(r + 1, c)][1] - x) < 1
    # The header strip (the product) sits above every image.
    assert _centre(pixels, (250, 10, 250))[0] < min(y for y, _ in centres.values()) - 32
    # Exactly one image has the green frame (4 px around its 64 px box), and it is the selected one.
    framed = {slot for slot, (y, x) in centres.items()
              if all((pixels[round(py), round(px)] == SELECTED).all()
                     for py, px in ((y - 34, x), (y + 34, x), (y, x - 34), (y, x + 34)))}
    assert framed == {layout.slots[(tiles[5].cell, tiles[5].seed)]}


def test_tiles_carry_status_and_scores_under_the_image():
    base = {"cell": [("surface", "marble")], "seed": 3, "edge_f1": 0.4231, "product_ssim": 0.5, "product_delta_e": 12.34,
            "clip_text": 0.21, "clip_style": float("nan"), "sharpness": 1500.2, "score": 0.75}
    chosen = tile_for({**base, "status": "ok", "selected": True, "rank_in_product": 2.0}, None)
    assert chosen.lines[0] == "selected  #2" and chosen.selected and chosen.seed == 3
    assert chosen.lines[1] == "F1 0.42  SSIM 0.50  dE 12.3" and chosen.lines[2] == "CLIP-T 0.21  CLIP-I -"
    gated = tile_for({**base, "status": "gated", "gates_failed": ["edge_f1 >= 0.5", "clipped_share <= 0.1"],
                      "selected": False, "rank_in_product": None}, None)
    assert gated.lines[0] == "gated: edge_f1, clipped_share" and gated.status == "gated" and not gated.selected
    # A tile without an image still renders (a grey box) with its lines.
    sheet = contact_sheet([gated, chosen.__class__(**{**chosen.__dict__, "seed": 4})], title="t", tile_size=48)
    assert sheet.width > 2 * 48 and sheet.mode == "RGB"


def _gallery_row(n: int, **params) -> dict:
    row = {
        "asset_id": f"{n:032x}", "product_id": "mug", "style_id": "dawn", "cell_index": n, "prompt": "a mug",
        "seed": 7, "output_key": f"s3://a/runs/r/images/{n:032x}.png", "status": "ok", "selected": False,
        "mode": "ip_adapter", "strength": 1.0, "steps": 4, "scheduler": "unipc", "guidance": 5.0, "ip_scale": 0.6,
        "ip_preset": "full", "ip_start": 0.0, "ip_end": 1.0, "product_ip_scale": 0.0, "controlnet_scale": 1.0,
        "control_scales": [("canny", "1.0")], "controlnet_start": 0.0, "controlnet_end": 1.0, "width": 64,
        "height": 64, "canny_low": 100, "canny_high": 200, "combine": "concat", "negative_reference_key": None,
        "profile": "tiny-multi",
    }
    row.update(params)
    return row


def test_gallery_cards_show_the_generation_parameters_that_vary():
    from tasks.gallery import Gallery, render_gallery

    rows = [
        _gallery_row(0, cell=[("mode", "ip_adapter")]),
        _gallery_row(1, cell=[("mode", "img2img")], mode="img2img", strength=0.75, ip_preset="style-only",
                     ip_end=0.8, control_scales=[("canny", "0.9"), ("depth", "0.4")]),
        _gallery_row(2, cell=[("mode", "preserve")], mode="preserve", strength=0.9, ip_start=0.2,
                     controlnet_end=0.5),
    ]
    page = render_gallery(Gallery("r1", "spring", rows))
    cards = {c.split('"', 1)[0]: c for c in page.split('<img loading="lazy" src="images/')[1:]}
    plain, img2img, preserve = (cards[f"{n:032x}.png"] for n in range(3))
    assert "mode: img2img · seed 7 · strength 0.75 · preset style-only · ip on 0–0.8 · cn canny 0.9, depth 0.4 · " \
           "cn on 0–1" in img2img
    assert "strength 0.9" in preserve and "ip on 0.2–1" in preserve and "cn on 0–0.5" in preserve
    assert "strength" not in plain and "preset full" in plain and "cn canny 1" in plain
    # The mode is the cell's axis, so the card does not repeat it; what every image shares is said once.
    assert "img2img · " not in img2img.replace("mode: img2img · ", "")
    (shared,) = [p for p in page.split("<p") if p.startswith(' class="shared"')]
    assert "every image: ip 0.6 · product ip 0 · cn 1 · cfg 5 · 4 steps · unipc · 64x64 · canny 100–200 · combine concat · tiny-multi" \
        in shared
    assert "steps" not in img2img.split("<table")[0].split("seed 7")[1]
    # A card with the few columns older rows carry still renders.
    assert "<figure" in render_gallery(Gallery("r2", "spring", [{k: v for k, v in rows[0].items()
                                                         if k in ("asset_id", "product_id", "style_id", "prompt",
                                                                  "seed", "cell", "status")}]))


def test_the_selection_frame_follows_a_wide_tile():
    """A banner's selected tile is framed around the banner itself, not by a square block behind it."""
    wide = Image.new("RGB", (128, 72), (20, 40, 200))
    tiles = [Tile(cell=(("surface", "marble"),), seed=1, image=wide, selected=True)]
    pixels = np.asarray(contact_sheet(tiles, title="banner", tile_size=64)).astype(int)
    blue = np.argwhere((np.abs(pixels - (20, 40, 200)) <= 8).all(axis=2))
    top, left = blue.min(axis=0)
    bottom, right = blue.max(axis=0)
    assert right - left + 1 == 64 and 34 <= bottom - top + 1 <= 38  # the banner, fitted to 64 px wide
    green = (np.abs(pixels - SELECTED) <= 8).all(axis=2)
    # The frame hugs the picture on all four sides ...
    for y, x in ((top - 2, (left + right) // 2), (bottom + 2, (left + right) // 2), ((top + bottom) // 2, left - 2),
                 ((top + bottom) // 2, right + 2)):
        assert green[y, x], (y, x)
    # ... and nothing green sits above or below it, where a square tile's frame would reach.
    assert not green[: top - 6].any() and not green[bottom + 6:].any()
