"""Contact sheets: one labelled grid per product x style set, like AUTOMATIC1111's X/Y/Z plot.

Matrix axes become rows and columns (the first half of the axes down, the rest across, the
seeds side by side in each column); axes that advance together (a zip group) are one combined
axis, so each row or column is one of their pairs. A header strip shows the product, its canny
map and the style references; each image has its scores under it and a green frame when selected.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image, ImageDraw, ImageFont

from tasks.values import is_missing

BACKGROUND = (255, 255, 255)
INK = (34, 34, 34)
MUTED = (110, 110, 110)
SELECTED = (22, 150, 60)
STATUS_INK = {"ok": INK, "gated": (200, 40, 40), "duplicate": (205, 120, 0), "failed": (120, 120, 120)}
PAD = 8
FRAME = 4
FONT_SIZE = 12
LINE = FONT_SIZE + 3
MISSING = "?"  # drawn for a character the sheet's font has no glyph for
T = TypeVar("T")


@dataclass(frozen=True)
class Tile:
    """One image of a sheet, with what to print under it."""

    cell: tuple[tuple[str, str], ...]
    seed: int
    image: Image.Image | None
    lines: tuple[str, ...] = ()
    status: str = "ok"
    selected: bool = False


@dataclass(frozen=True)
class Layout:
    """Which axes run down and across, their label per row and column, and each tile's slot."""

    row_axes: tuple[str, ...]
    col_axes: tuple[str, ...]
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    slots: dict[tuple[tuple[tuple[str, str], ...], int], tuple[int, int]]


# A sheet's page: at most this many tiles across and down. JPEG stops at 65,535 pixels a side; far
# below that, a page of 32 x 16 tiles of 160 px (about 5,700 x 3,800 px) is still one readable picture,
# and a sheet of any size holds one page of images in memory at a time.
PAGE_COLUMNS = 32
PAGE_ROWS = 16


def sheet_pages(tiles: Sequence[Tile], *, columns: int = PAGE_COLUMNS, rows: int = PAGE_ROWS) -> list[list[int]]:
    """The tiles of one sheet split into pages of at most `columns` x `rows` tiles: indices into `tiles`, per page.

    Pages cut the sheet's own grid (`sheet_layout`) into windows: down the rows (the first half of the
    axes) and across the columns (the other axes, seeds innermost, so a wide sheet is split by seed).
    A page lays its tiles out again and keeps only its own rows and columns, so it never exceeds
    its window. One page when the sheet fits.
    """
    if columns < 1 or rows < 1:
        raise ValueError(f"a sheet page needs at least one column and one row, got {columns} x {rows}")
    layout = sheet_layout(tiles)
    pages: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(tiles):
        r, c = layout.slots[(t.cell, t.seed)]
        pages.setdefault((r // rows, c // columns), []).append(i)
    return [pages[k] for k in sorted(pages)]


def split_axes(axes: Sequence[T]) -> tuple[tuple[T, ...], tuple[T, ...]]:
    """The axes (or combined axes) that run down (the first half, rounded up) and across (the rest)."""
    down = math.ceil(len(axes) / 2)
    return tuple(axes[:down]), tuple(axes[down:])


def axis_units(cells: Sequence[dict[str, str]], axes: Sequence[str]) -> list[tuple[str, ...]]:
    """The axes as a sheet lays them out, in order: axes whose values pair one to one across the
    cells (a zip group, such as surface with lighting) become one combined axis at the first's place."""
    values = {a: {c[a] for c in cells} for a in axes}
    units: list[list[str]] = []
    for a in axes:
        for unit in units:
            b = unit[0]
            if len(values[a]) == len(values[b]) == len({(c[a], c[b]) for c in cells}):
                unit.append(a)
                break
        else:
            units.append([a])
    return [tuple(u) for u in units]


def sheet_layout(tiles: Sequence[Tile]) -> Layout:
    """Rows and columns for the tiles: values keep their first-seen order, seeds are innermost across.

    Zipped axes make one row (or column) per pair, and a row or column no tile falls in is left out.
    """
    if not tiles:
        raise ValueError("a contact sheet needs at least one image")
    axes = [name for name, _ in tiles[0].cell]
    for t in tiles:
        if [name for name, _ in t.cell] != axes:
            raise ValueError(f"tiles disagree on the matrix axes: {axes} vs {[name for name, _ in t.cell]}")
    cells = [dict(t.cell) for t in tiles]
    units = axis_units(cells, axes)
    row_units, col_units = split_axes(units)

    def key(cell: dict[str, str], chosen: Sequence[tuple[str, ...]]) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(cell[a] for a in unit) for unit in chosen)

    def keys(chosen: Sequence[tuple[str, ...]], seen: list) -> list:
        per_unit = [list(dict.fromkeys(k[i] for k in seen)) for i in range(len(chosen))]
        present = set(seen)
        return [k for k in itertools.product(*per_unit) if k in present]

    row_keys = keys(row_units, [key(c, row_units) for c in cells])
    col_keys = keys((*col_units, ("seed",)), [(*key(c, col_units), (t.seed,)) for c, t in zip(cells, tiles, strict=True)])

    def label(chosen: Sequence[tuple[str, ...]], combo: Sequence[tuple[str, ...]]) -> str:
        return "\n".join(f"{n}: {v}" for unit, vals in zip(chosen, combo, strict=False) for n, v in zip(unit, vals, strict=True))

    slots = {}
    for t, cell in zip(tiles, cells, strict=True):
        slots[(t.cell, t.seed)] = (row_keys.index(key(cell, row_units)),
                                   col_keys.index((*key(cell, col_units), (t.seed,))))
    return Layout(
        row_axes=tuple(a for unit in row_units for a in unit),
        col_axes=tuple(a for unit in col_units for a in unit),
        rows=tuple(label(row_units, k) for k in row_keys),
        cols=tuple("\n".join(filter(None, [label(col_units, k[:-1]), f"seed {k[-1][0]}"])) for k in col_keys),
        slots=slots,
    )


Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


class Drawable:
    """Text as a font can draw it: a character the font has no glyph for (which it would draw as an
    empty box, as PIL's default font does CJK) becomes MISSING, and is remembered so the sheet can say so.
    """

    def __init__(self, font: Font) -> None:
        self.font = font
        self._notdef = self._mask("\uffff")  # a noncharacter: every font draws its .notdef box for it
        self._known: dict[str, bool] = {}
        self.missing: set[str] = set()

    def _mask(self, char: str) -> tuple[tuple[int, int], bytes] | None:
        try:
            mask = self.font.getmask(char)
        except (UnicodeEncodeError, ValueError, OSError):  # a bitmap font past Latin-1
            return None
        return mask.size, bytes(mask)

    def has_glyph(self, char: str) -> bool:
        if char not in self._known:
            mask = None if char.isspace() else self._mask(char)
            self._known[char] = char.isspace() or (mask is not None and mask != self._notdef)
            if not self._known[char]:
                self.missing.add(char)
        return self._known[char]

    def __call__(self, text: str) -> str:
        return "".join(c if self.has_glyph(c) else MISSING for c in text)

    def note(self) -> str:
        """What the sheet says when characters were replaced; empty when none were."""
        if not self.missing:
            return ""
        shown = ", ".join(f"U+{ord(c):04X}" for c in sorted(self.missing)[:6])
        more = f" and {len(self.missing) - 6} more" if len(self.missing) > 6 else ""
        return f"{MISSING} = no glyph in the sheet's font for {shown}{more}"


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> list[str]:
    """Lines of `text` that fit in `width` pixels, broken at spaces, and inside a word too long for a
    line (CJK text has no spaces between words)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if draw.textlength(trial, font=font) <= width:
                line = trial
                continue
            if line:
                lines.append(line)
            line = ""
            for char in word:
                if line and draw.textlength(line + char, font=font) > width:
                    lines.append(line)
                    line = char
                else:
                    line += char
        lines.append(line)
    return lines


def _thumb(image: Image.Image, side: int) -> Image.Image:
    thumb = image.convert("RGB")
    thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
    return thumb


def contact_sheet(tiles: Sequence[Tile], *, title: str, subtitle: str = "",
                  header: Sequence[tuple[str, Image.Image]] = (), tile_size: int = 160,
                  font: Font | None = None) -> Image.Image:
    """The sheet as an RGB image.

    `header` is (label, image) pairs shown in a strip at the top: the product, its canny map,
    the references. Each tile shows its image (or a grey box when there is none), its lines,
    and a green frame when selected. `font` draws every text (`adapters/infra/fonts.sheet_font`: one
    with CJK glyphs); without one, PIL's default font. A character the font has no glyph for is
    drawn as MISSING, and the subtitle says which characters those were: never an empty box.
    """
    font = font if font is not None else ImageFont.load_default(size=FONT_SIZE)
    drawable = Drawable(font)
    layout = sheet_layout(tiles)
    title = drawable(title)
    header = [(drawable(label), image) for label, image in header]
    row_labels, col_labels = [drawable(r) for r in layout.rows], [drawable(c) for c in layout.cols]
    tile_lines = {(t.cell, t.seed): [drawable(line) for line in t.lines] for t in tiles}
    subtitle = "  ·  ".join(filter(None, [drawable(subtitle), drawable.note()]))
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_lines = max((len(t.lines) for t in tiles), default=0)
    cell_w, cell_h = tile_size + 2 * PAD, tile_size + 2 * PAD + text_lines * LINE
    label_w = tile_size if layout.row_axes else 0
    col_label_h = max(len(_wrap(scratch, c, tile_size, font)) for c in col_labels) * LINE + PAD
    thumb = max(80, tile_size // 2)
    header_h = PAD + 2 * LINE + (thumb + LINE + PAD if header else 0)
    width = max(label_w + len(layout.cols) * cell_w + PAD, PAD + len(header) * (thumb + PAD),
                *(int(scratch.textlength(text, font=font)) + 2 * PAD for text in (title, subtitle)))
    height = header_h + col_label_h + len(layout.rows) * cell_h + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)

    draw.text((PAD, PAD), title, fill=INK, font=font)
    draw.text((PAD, PAD + LINE), subtitle, fill=MUTED, font=font)
    x = PAD
    for label, image in header:
        small = _thumb(image, thumb)
        sheet.paste(small, (x, PAD + 2 * LINE))
        draw.text((x, PAD + 2 * LINE + thumb + 2), _wrap(draw, label, thumb, font)[0], fill=MUTED, font=font)
        x += thumb + PAD

    top = header_h
    for c, label in enumerate(col_labels):
        for i, line in enumerate(_wrap(draw, label, tile_size, font)):
            draw.text((label_w + c * cell_w + PAD, top + i * LINE), line, fill=INK, font=font)
    top += col_label_h
    for r, label in enumerate(row_labels):
        for i, line in enumerate(_wrap(draw, label, label_w - PAD, font)):
            draw.text((PAD, top + r * cell_h + PAD + i * LINE), line, fill=INK, font=font)

    for t in tiles:
        r, c = layout.slots[(t.cell, t.seed)]
        x0, y0 = label_w + c * cell_w, top + r * cell_h
        small = None
        if t.image is not None:
            small = t.image.convert("RGB").resize((tile_size, tile_size), Image.Resampling.LANCZOS) \
                if t.image.size[0] == t.image.size[1] else _thumb(t.image, tile_size)
        w, h = (small.width, small.height) if small is not None else (tile_size, tile_size)
        left, upper = x0 + PAD + (tile_size - w) // 2, y0 + PAD + (tile_size - h) // 2
        if t.selected:  # the frame follows the picture: a wide banner's frame is wide, not a square behind it
            draw.rectangle([left - FRAME, upper - FRAME, left + w + FRAME - 1, upper + h + FRAME - 1], fill=SELECTED)
        if small is None:
            draw.rectangle([left, upper, left + w - 1, upper + h - 1], fill=(225, 225, 225))
        else:
            sheet.paste(small, (left, upper))
        ink = SELECTED if t.selected else STATUS_INK.get(t.status, INK)
        for i, line in enumerate(tile_lines[(t.cell, t.seed)]):
            draw.text((x0 + PAD, y0 + 2 * PAD + tile_size + i * LINE), _wrap(draw, line, tile_size, font)[0],
                      fill=ink if i == 0 else INK, font=font)
    return sheet


def _fmt(value, digits: int = 2) -> str:
    if is_missing(value):
        return "-"
    return f"{value:.{digits}f}"


def tile_for(row: dict, image: Image.Image | None) -> Tile:
    """A `generations` row (scored and selected) as a sheet tile: its status first, then its scores."""
    status = row.get("status") or "ok"
    rank = row.get("rank_in_product")
    if row.get("selected"):
        head = f"selected  #{int(rank)}"
    elif status == "ok":
        head = f"#{int(rank)}" if not is_missing(rank) else "ok"
    elif status == "gated":
        head = "gated: " + ", ".join(g.split()[0] for g in (row.get("gates_failed") or ()))
    else:
        head = status
    lines = (
        head,
        f"F1 {_fmt(row.get('edge_f1'))}  SSIM {_fmt(row.get('product_ssim'))}  dE {_fmt(row.get('product_delta_e'), 1)}",
        f"CLIP-T {_fmt(row.get('clip_text'))}  CLIP-I {_fmt(row.get('clip_style'))}",
        f"sharp {_fmt(row.get('sharpness'), 0)}  score {_fmt(row.get('score'))}",
    ) + ((finish_line(row["finish"]),) if row.get("finish") else ())
    return Tile(cell=tuple(tuple(kv) for kv in row["cell"]), seed=int(row["seed"]), image=image, lines=lines,
                status=status, selected=bool(row.get("selected")))


# --------------------------------------------------------------------------- the campaign's overview

OUTLIER = (123, 44, 191)
SWATCH = 18


@dataclass(frozen=True)
class OverviewLine:
    """One style set (and channel) of the overview: its spread, its selection's palette, and per product
    the image shown (its best selected image; else its best ok one; else None)."""

    label: str
    spread: float | None
    swatches: tuple[tuple[int, int, int], ...]
    picks: tuple[tuple[str, dict | None], ...]


def overview_lines(rows: Sequence[dict]) -> list[OverviewLine]:
    """The overview's lines from a run's scored and selected rows: style sets in name order (channels in
    the order met), products in name order in every line, so each column is one product."""
    from tasks.consistency import STYLE_SET, centre_of, group_of, look_of, selected_spreads, spread_label, swatches

    products = sorted({r["product_id"] for r in rows})
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["style_id"]):
        groups.setdefault(group_of(r, STYLE_SET), []).append(r)
    spreads = selected_spreads(rows, STYLE_SET)
    lines = []
    for (style, channel), members in groups.items():
        label = spread_label(style, channel)
        picks = []
        for product in products:
            candidates = [r for r in members if r["product_id"] == product and r.get("status") == "ok"
                          and not is_missing(r.get("rank_in_product"))]
            best = min(candidates, key=lambda r: (not r.get("selected"), float(r["rank_in_product"]), r["asset_id"]),
                       default=None)
            picks.append((product, best))
        chosen = [look_of(r) for r in members if r.get("selected")]
        lines.append(OverviewLine(label=label, spread=spreads.get(label),
                                  swatches=tuple(swatches(centre_of(chosen))), picks=tuple(picks)))
    return lines


def overview_sheet(lines: Sequence[OverviewLine], images: dict[str, Image.Image | None], *, title: str,
                   subtitle: str = "", tile_size: int = 160, font: Font | None = None) -> Image.Image:
    """The campaign's overview as an RGB image: a line per style set, a column per product, the image each
    product shows there (`images` by asset id) framed green when selected and purple when an outlier,
    its look distance under it; the style set's spread and the palette of its selection at the left."""
    font = font if font is not None else ImageFont.load_default(size=FONT_SIZE)
    drawable = Drawable(font)
    products = [p for p, _ in lines[0].picks] if lines else []
    label_w = max(tile_size, SWATCH * 6)
    cell_w, cell_h = tile_size + 2 * PAD, tile_size + 2 * PAD + 2 * LINE
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title, texts = drawable(title), [drawable(p) for p in products]
    labels = [drawable(line.label) for line in lines]
    subtitle = "  ·  ".join(filter(None, [drawable(subtitle), drawable.note()]))
    top = PAD + 2 * LINE + PAD
    width = max(label_w + PAD + len(products) * cell_w,
                *(int(scratch.textlength(t, font=font)) + 2 * PAD for t in (title, subtitle)))
    sheet = Image.new("RGB", (width, top + LINE + len(lines) * cell_h + PAD), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD), title, fill=INK, font=font)
    draw.text((PAD, PAD + LINE), subtitle, fill=MUTED, font=font)
    for c, text in enumerate(texts):
        draw.text((label_w + PAD + c * cell_w + PAD, top), _wrap(draw, text, tile_size, font)[0], fill=INK, font=font)
    top += LINE
    for n, (line, label) in enumerate(zip(lines, labels, strict=True)):
        y0 = top + n * cell_h
        wrapped = _wrap(draw, label, label_w - PAD, font)[:2]
        for i, text in enumerate([*wrapped, f"spread {_fmt(line.spread)}"]):
            draw.text((PAD, y0 + PAD + i * LINE), text, fill=MUTED if i == len(wrapped) else INK, font=font)
        swatch_y = y0 + PAD + (len(wrapped) + 1) * LINE + 2
        for i, colour in enumerate(line.swatches):
            x = PAD + i * (SWATCH + 2)
            draw.rectangle([x, swatch_y, x + SWATCH - 1, swatch_y + SWATCH - 1], fill=colour, outline=MUTED)
        for c, (_, row) in enumerate(line.picks):
            x0 = label_w + PAD + c * cell_w
            image = images.get(row["asset_id"]) if row is not None else None
            outlier = row is not None and bool(row.get("consistency_outlier"))
            if row is not None and row.get("selected"):
                draw.rectangle([x0 + PAD - FRAME, y0 + PAD - FRAME, x0 + PAD + tile_size + FRAME - 1,
                                y0 + PAD + tile_size + FRAME - 1], fill=SELECTED)
            if outlier:  # a purple ring around the tile (and around its green frame)
                draw.rectangle([x0 + PAD - 2 * FRAME, y0 + PAD - 2 * FRAME, x0 + PAD + tile_size + 2 * FRAME - 1,
                                y0 + PAD + tile_size + 2 * FRAME - 1], outline=OUTLIER, width=FRAME)
            if image is None:
                draw.rectangle([x0 + PAD, y0 + PAD, x0 + PAD + tile_size - 1, y0 + PAD + tile_size - 1], fill=(225, 225, 225))
            else:
                scale = tile_size / max(image.size)
                small = image.convert("RGB").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                                    Image.Resampling.LANCZOS)
                sheet.paste(small, (x0 + PAD + (tile_size - small.width) // 2, y0 + PAD + (tile_size - small.height) // 2))
            if row is None:
                notes = ("no ok image", "")
            else:
                state = "selected" if row.get("selected") else "not selected"
                notes = (f"#{int(row['rank_in_product'])} {state}" + ("  outlier" if outlier else ""),
                         f"look {_fmt(row.get('consistency_distance'))}")
            for i, text in enumerate(notes):
                draw.text((x0 + PAD, y0 + 2 * PAD + tile_size + i * LINE), _wrap(draw, drawable(text), tile_size, font)[0],
                          fill=OUTLIER if outlier and i == 0 else INK, font=font)
    return sheet
def finish_line(finish: dict) -> str:
    """A finished image under its tile: its size and, for a marketplace, whether its checks pass."""
    size = f"{finish['width']}x{finish['height']}"
    if not finish.get("marketplace"):
        return f"finished {size} {finish['method']}"
    failed = [reason.split()[0] for reason in finish.get("check_reasons") or ()]
    return f"{size} " + ("checks pass" if not failed else "FAIL " + ", ".join(failed))
