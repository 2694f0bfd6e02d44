"""The run's gallery page: one self-contained HTML file (no external assets), images linked relative to it.

Filterable by product, style set, channel and selection; a toggle draws each image's channel
safe zones (where the copy goes) and product box over it. Each image shows its status, prompt,
parameters and scores. A card shows its cell, its seed and every generation parameter that
differs between the run's images (mode, strength, preset, adapter window, ControlNet scales, ...);
what every image shares is said once, at the top. Cards come product by product, best first;
they can also be sorted by their distance to their group's look (`consistency_distance`), filtered
to a largest distance or to the outliers only, and an outlier carries a badge.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from tasks.channels import channel_of, params_box, row_layout
from tasks.layout import GALLERY, GALLERY_PAGES, RunLayout
from tasks.marketplace import check_words
from tasks.values import is_missing

_STYLE = """
body{font:14px system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK SC","Source Han Sans SC",
"PingFang SC","Hiragino Sans","Hiragino Kaku Gothic ProN","Microsoft YaHei","Yu Gothic","Malgun Gothic",sans-serif;
margin:1.5rem;background:#fafafa;color:#222}
h1{font-size:1.3rem;margin:0 0 .3rem}header p{color:#555;margin:.2rem 0}
a{color:#1456a0}
.filters{margin:1rem 0;display:flex;gap:1rem;flex-wrap:wrap}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:1rem}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5rem}
figure.selected{border:3px solid #16963c;padding:calc(.5rem - 2px)}
figure[hidden]{display:none}
figure img{width:100%;image-rendering:auto;border-radius:4px;background:#eee;display:block}
.missing{aspect-ratio:1;background:#e4e4e4;border-radius:4px;display:flex;align-items:center;justify-content:center;color:#777}
figcaption{font-size:12px;line-height:1.35;margin-top:.4rem}
figcaption .ids{font-weight:600}figcaption .params{color:#666}
header p.shared{color:#666;font-size:12px}
header p.warning{background:#fff3cd;border:2px solid #d9822b;color:#7a3d00;padding:6px 10px;font-weight:bold}
.badge{display:inline-block;border-radius:3px;padding:0 .35rem;margin-right:.3rem;font-size:11px;color:#fff;background:#777}
.badge.selected{background:#16963c}.badge.ok{background:#1456a0}.badge.gated{background:#c82828}
.badge.duplicate{background:#cd7800}.badge.failed{background:#777}
.reason{color:#a33}
.badge.outlier{background:#7b2cbf}
#f-distance{width:5em}
.badge.review-approved{background:#0b6b2e}.badge.review-rejected{background:#8b1a1a}
.badge.review-on-hold,.badge.review-pending,.badge.review-timed-out{background:#fff;color:#444;border:1px solid #999}
table.scores{border-collapse:collapse;margin-top:.3rem;width:100%}
table.scores td{padding:0 .3rem 0 0;font-variant-numeric:tabular-nums}
table.scores td:nth-child(odd){color:#666}
details{margin:.5rem 0}
.frame{position:relative}
svg.zones{position:absolute;inset:0;width:100%;height:100%;pointer-events:none;display:none}
body.show-zones svg.zones{display:block}
svg.zones rect.zone{fill:rgba(230,40,140,.18);stroke:#e6288c;stroke-width:2;stroke-dasharray:6 4}
svg.zones rect.box{fill:none;stroke:#16963c;stroke-width:2}
svg.zones rect{vector-effect:non-scaling-stroke}
"""

_SCRIPT = """
const f = {product: document.getElementById('f-product'), style: document.getElementById('f-style'),
           channel: document.getElementById('f-channel'), status: document.getElementById('f-status')};
const look = {sort: document.getElementById('f-sort'), outlier: document.getElementById('f-outlier'),
              distance: document.getElementById('f-distance')};
function distanceOf(fig){ return fig.dataset.distance === '' ? Infinity : parseFloat(fig.dataset.distance); }
function keep(fig){
  const s = f.status.value;
  const most = parseFloat(look.distance.value);
  return (!f.product.value || fig.dataset.product === f.product.value)
      && (!f.style.value || fig.dataset.style === f.style.value)
      && (!f.channel || !f.channel.value || fig.dataset.channel === f.channel.value)
      && (!s || (s === 'selected' ? fig.dataset.selected === '1' : fig.dataset.status === s))
      && (!look.outlier.checked || fig.dataset.outlier === '1')
      && (isNaN(most) || distanceOf(fig) <= most);
}
function order(){
  // Best first (the page's order), or by distance to the group's look; images without one go last.
  const main = document.querySelector('main'), by = look.sort.value;
  const figs = [...main.querySelectorAll('figure')];
  figs.sort((a, b) => {
    const da = distanceOf(a), db = distanceOf(b), first = a.dataset.order - b.dataset.order;
    if (!by) return first;
    if (da === Infinity || db === Infinity) return (da === Infinity) - (db === Infinity) || first;
    return (by === 'far' ? db - da : da - db) || first;
  });
  for (const fig of figs) main.appendChild(fig);
}
function apply(){
  let shown = 0;
  for (const fig of document.querySelectorAll('main figure')) { fig.hidden = !keep(fig); if (!fig.hidden) shown++; }
  document.getElementById('shown').textContent = shown;
}
for (const el of Object.values(f)) if (el) el.onchange = apply;
look.outlier.onchange = apply; look.distance.oninput = apply;
look.sort.onchange = () => { order(); apply(); };
const zones = document.getElementById('t-zones');
if (zones) { zones.onchange = () => document.body.classList.toggle('show-zones', zones.checked);
             document.body.classList.toggle('show-zones', zones.checked); }
apply();
"""

STATUSES = ("selected", "ok", "gated", "duplicate", "failed")
# Sorting and filtering by the distance to the group's look (tasks/consistency.py).
_LOOK_FILTERS = (
    '<label>sort <select id="f-sort"><option value="">best first</option>'
    '<option value="near">nearest the look first</option><option value="far">farthest from the look first</option>'
    '</select></label>'
    '<label>look distance at most <input id="f-distance" type="number" min="0" step="0.1" size="4"></label>'
    '<label><input type="checkbox" id="f-outlier"> outliers only</label>'
)
_SCORE_CELLS = (
    ("edge F1", "edge_f1", 2), ("SSIM", "product_ssim", 2), ("ΔE", "product_delta_e", 1),
    ("CLIP-T", "clip_text", 3), ("CLIP-I", "clip_style", 3), ("sharp", "sharpness", 0),
    ("lum", "luminance", 2), ("clipped", "clipped_share", 2), ("colour", "colourfulness", 0),
    ("score", "score", 3), ("look", "consistency_distance", 2),
)
# The channel checks, shown on the cards of images made for a channel (placements).
_CHANNEL_CELLS = (("in safe zone", "safe_zone_share", 2), ("share", "product_share", 2), ("cut", "product_cut", 2))


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: object, digits: int) -> str:
    return "–" if is_missing(value) else f"{float(value):.{digits}f}"


def _options(values: Sequence[str]) -> str:
    return "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)


def _order(row: Mapping) -> tuple:
    """Product by product: ranked images best first, then duplicates, gated and failed ones."""
    rank = row.get("rank_in_product")
    status_order = {"ok": 0, "duplicate": 1, "gated": 2, "failed": 3}.get(row.get("status") or "ok", 4)
    return (row["product_id"], status_order, math.inf if is_missing(rank) else float(rank), row["asset_id"])


def _g(value: object) -> str:
    return f"{float(value):g}" if isinstance(value, int | float) else str(value)


def _pairs(value: object) -> list[tuple[str, object]]:
    """A map column as (key, value) pairs, whether it arrives as a dict or as pairs (as parquet gives it)."""
    return list(value.items()) if isinstance(value, Mapping) else [tuple(kv) for kv in value or ()]


# How a card prints each generation parameter: (name, the row keys it needs, the text); the name
# is also the cell axis that, where the matrix has it, already shows the value.
_PARAMS = (
    ("mode", ("mode",), lambda r: str(r["mode"])),
    ("strength", ("strength",), lambda r: "" if r.get("mode") == "ip_adapter" else f"strength {_g(r['strength'])}"),
    ("ip_scale", ("ip_scale",), lambda r: f"ip {_g(r['ip_scale'])}"),
    ("ip_preset", ("ip_preset",), lambda r: f"preset {r['ip_preset']}"),
    ("ip_window", ("ip_start", "ip_end"), lambda r: f"ip on {_g(r['ip_start'])}–{_g(r['ip_end'])}"),
    ("product_ip_scale", ("product_ip_scale",), lambda r: f"product ip {_g(r['product_ip_scale'])}"),
    ("controlnet_scale", ("controlnet_scale",), lambda r: f"cn {_g(r['controlnet_scale'])}"),
    ("control_scales", ("control_scales",),
     lambda r: "cn " + ", ".join(f"{k} {_g(float(v))}" for k, v in _pairs(r["control_scales"]))),
    ("controlnet_window", ("controlnet_start", "controlnet_end"),
     lambda r: f"cn on {_g(r['controlnet_start'])}–{_g(r['controlnet_end'])}"),
    ("guidance", ("guidance",), lambda r: f"cfg {_g(r['guidance'])}"),
    ("steps", ("steps",), lambda r: f"{_g(r['steps'])} steps"),
    ("scheduler", ("scheduler",), lambda r: str(r["scheduler"])),
    ("size", ("width", "height"), lambda r: f"{_g(r['width'])}x{_g(r['height'])}"),
    ("canny", ("canny_low", "canny_high"), lambda r: f"canny {_g(r['canny_low'])}–{_g(r['canny_high'])}"),
    ("combine", ("combine",), lambda r: f"combine {r['combine']}"),
    ("negative_reference", ("negative_reference_key",),
     lambda r: f"negative ref {str(r['negative_reference_key']).rsplit('/', 1)[-1]}"),
    ("profile", ("profile",), lambda r: str(r["profile"])),
)
_AXES_OF = {"ip_window": ("ip_start", "ip_end"), "controlnet_window": ("controlnet_start", "controlnet_end")}


def generation_params(r: Mapping) -> dict[str, str]:
    """A row's generation parameters as the gallery prints them, by name (those the row has)."""
    out = {}
    for name, keys, text in _PARAMS:
        if all(not is_missing(r.get(k)) for k in keys):
            shown = text(r)
            if shown:
                out[name] = shown
    return out


def varying_params(rows: Sequence[Mapping]) -> tuple[list[str], dict[str, str]]:
    """The parameter names whose text differs between the rows, and the text of those every row shares."""
    seen: dict[str, set[str | None]] = {name: set() for name, _, _ in _PARAMS}
    for r in rows:  # a row's texts at a time: a run's rows' texts are never all held
        own = generation_params(r)
        for name, texts in seen.items():
            texts.add(own.get(name))
    varying, shared = [], {}
    for name, _, _ in _PARAMS:
        texts = seen[name]
        if len(texts) > 1:
            varying.append(name)
        elif texts and texts != {None}:
            shared[name] = texts.pop()
    return varying, shared


def _zones_svg(r: Mapping) -> str:
    """The channel's safe zones and product box over the image, in canvas pixels (shown by the toggle)."""
    if channel_of(r) is None:
        return ""
    layout = row_layout(r)
    rects = "".join(f'<rect class="zone" x="{a}" y="{b}" width="{c - a}" height="{d - b}"/>'
                    for a, b, c, d in layout["safe_zones"])
    box = params_box(layout)
    if box is not None:
        a, b, c, d = box
        rects += f'<rect class="box" x="{a}" y="{b}" width="{c - a}" height="{d - b}"/>'
    return (f'<svg class="zones" viewBox="0 0 {layout["width"]} {layout["height"]}" preserveAspectRatio="none" '
            f'aria-hidden="true">{rects}</svg>')


def _look_distance(r: Mapping) -> str:
    """The card's `data-distance`: its consistency distance, or empty without one."""
    value = r.get("consistency_distance")
    return "" if is_missing(value) else f"{float(value):.4f}"


def _distance(r: Mapping) -> float | None:
    """A paged card's distance to its group's look (None without one)."""
    value = r.get("consistency_distance")
    return None if is_missing(value) else round(float(value), 4)


def _card(r: Mapping, varying: Sequence[str] = (), review: str | None = None, order: int = 0) -> str:
    status = r.get("status") or "ok"
    selected = bool(r.get("selected"))
    cell = ", ".join(f"{k}: {v}" for k, v in r["cell"])
    badges = '<span class="badge selected">selected</span>' if selected else f'<span class="badge {_e(status)}">{_e(status)}</span>'
    if review:
        badges += f'<span class="badge review-{_e(review.replace(" ", "-"))}">{_e(review)}</span>'
    outlier = bool(r.get("consistency_outlier"))
    if outlier:
        badges += '<span class="badge outlier" title="far from its group\'s look">outlier</span>'
    rank = "" if is_missing(r.get("rank_in_product")) else \
        f' · #{int(r["rank_in_product"])} of product, #{int(r["rank_in_cell"])} of cell'
    cells = _SCORE_CELLS + (_CHANNEL_CELLS if channel_of(r) else ())
    scores = "".join(
        ("<tr>" if i % 2 == 0 else "") + f"<td>{label}</td><td>{_num(r.get(key), digits)}</td>" + ("</tr>" if i % 2 else "")
        for i, (label, key, digits) in enumerate(cells)
    )
    image = (f'<div class="frame"><img loading="lazy" src="{_e(RunLayout.image_link(r["asset_id"]))}" alt="{_e(r["prompt"])}">'
             f"{_zones_svg(r)}</div>" if r.get("output_key") else '<div class="missing">no image</div>')
    channel = channel_of(r) or ""
    reason = f'<div class="reason">{_e(r["status_reason"])}</div>' if r.get("status_reason") else ""
    reason += _finish_html(r["finish"]) if r.get("finish") else ""
    # What differs between the run's images, unless the cell already says it.
    axes = {k for k, _ in r["cell"]}
    own = generation_params(r)
    params = [own[n] for n in varying if n in own and not axes & {n, *_AXES_OF.get(n, ())}]
    line = " · ".join(filter(None, [cell, f"seed {r['seed']}", *params]))
    return (
        f'<figure class="{"selected" if selected else ""}" data-product="{_e(r["product_id"])}" '
        f'data-style="{_e(r["style_id"])}" data-channel="{_e(channel)}" data-status="{_e(status)}" data-selected="{int(selected)}"'
        + (f' data-review="{_e(review)}"' if review else "")
        + f' data-distance="{_look_distance(r)}" data-outlier="{int(outlier)}" data-order="{order}">'
        f'{image}<figcaption><div>{badges}<span class="ids">{_e(r["product_id"])} · {_e(r["style_id"])}</span>{rank}</div>'
        f"{reason}<div>{_e(r['prompt'])}</div>"
        f'<div class="params">{_e(line)}</div>'
        f'<table class="scores">{scores}</table>'
        f'<div class="params">{_e(r["asset_id"])}</div></figcaption></figure>'
    )


def _finish_html(f: Mapping) -> str:
    """A card's finished image: a link to it, its size and method, its marketplace checks and any note."""
    checks = check_words(f)
    failed = bool(f.get("marketplace")) and not f.get("checks_passed")
    return (f'<div class="finish{" reason" if failed else ""}"><a href="{_e(RunLayout.image_link(f["asset_id"]))}">finished '
            f'{f["width"]}x{f["height"]}</a> ({_e(f["method"])}){" · " + _e(checks) if checks else ""}'
            + (f" · {_e(f['note'])}" if f.get("note") else "") + "</div>")


@dataclass(frozen=True)
class Gallery:
    """What a run's gallery shows: its `generations` rows, and what the page says around them.

    Images are `images/<asset_id>.png` beside the page. `sheets` maps a contact sheet's label to its
    path relative to the page; `tables` lists the run's table parts (shown as text: they live
    outside the run's folder). `title` is the campaign's title in any language: the page is UTF-8
    and its font stack reaches CJK fonts. `left_out` (what the campaign names that the run left
    out, and why) is a warning at the top. `reviews` (asset id -> approved, rejected, on hold,
    pending, timed out) marks each image's review state.
    """

    run_id: str
    campaign: str
    rows: Sequence[Mapping]
    sheets: Mapping[str, str] = field(default_factory=dict)
    tables: Sequence[str] = ()
    title: str | None = None
    left_out: Mapping[str, str] = field(default_factory=dict)
    reviews: Mapping[str, str] = field(default_factory=dict)


def render_gallery(gallery: Gallery) -> str:
    """The gallery HTML of a run: one page with every card in it."""
    ordered = sorted(gallery.rows, key=_order)
    varying, _ = varying_params(gallery.rows)
    cards = "".join(_card(r, varying, gallery.reviews.get(r["asset_id"]), n) for n, r in enumerate(ordered))
    return _head(gallery) + f'<main class="grid">{cards}</main><script>{_SCRIPT}</script></body></html>'


def _head(gallery: Gallery) -> str:
    """The page up to its cards: the title, counts, warnings, links and the filters."""
    run_id, campaign, rows, title, reviews = gallery.run_id, gallery.campaign, gallery.rows, gallery.title, gallery.reviews
    products = sorted({r["product_id"] for r in rows})
    styles = sorted({r["style_id"] for r in rows})
    channels = list(dict.fromkeys(c for r in rows if (c := channel_of(r))))
    channel_filters = (
        f'<label>channel <select id="f-channel"><option value="">all</option>{_options(channels)}</select></label>'
        '<label><input type="checkbox" id="t-zones"> show safe zones</label>' if channels else "")
    selected = sum(bool(r.get("selected")) for r in rows)
    counts = " · ".join(f"{sum((r.get('status') or 'ok') == s for r in rows)} {s}" for s in STATUSES[1:])
    sheet_links = "".join(f'<li><a href="{_e(path)}">{_e(label)}</a></li>' for label, path in gallery.sheets.items())
    table_list = "".join(f"<li><code>{_e(t)}</code></li>" for t in gallery.tables)
    _, shared = varying_params(rows)
    heading, byline = _e(title or campaign), f"campaign {_e(campaign)} · " if title else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{heading} · {_e(run_id)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{heading}</h1><p>{byline}run {_e(run_id)} · {len(rows)} images · {selected} selected · {counts} · "
        '<span id="shown"></span> shown</p>'
        + "".join(f'<p class="warning" role="alert">left out {_e(what)}: {_e(why)}</p>'
                  for what, why in gallery.left_out.items())
        + (f'<p class="review">review: {_e(" · ".join(f"{n} {state}" for state, n in _tally(reviews)))}</p>'
           if reviews else "")
        + (f'<p class="shared">every image: {_e(" · ".join(shared.values()))}</p>' if shared else "")
        + (f"<details><summary>contact sheets ({len(gallery.sheets)})</summary><ul>{sheet_links}</ul></details>" if sheet_links else "")
        + (f"<details><summary>tables</summary><ul>{table_list}</ul></details>" if table_list else "")
        + "</header>"
        '<div class="filters">'
        f'<label>product <select id="f-product"><option value="">all</option>{_options(products)}</select></label>'
        f'<label>style <select id="f-style"><option value="">all</option>{_options(styles)}</select></label>'
        + channel_filters +
        f'<label>show <select id="f-status"><option value="">all</option>{_options(STATUSES)}</select></label>'
        + _LOOK_FILTERS +
        "</div>"
    )


# Up to this many images the gallery is one page with every card in it (nothing more to load). Above,
# the cards are split into pages of PAGE_CARDS, loaded as needed (`gallery_files`): measured in
# Chromium, a one-page gallery of 2,000 cards took about twice as long to show its first cards as a
# paged one of 100,000 (docs/benchmarks.md).
PAGE_CARDS = 500
INLINE_LIMIT = PAGE_CARDS
PAGES = GALLERY_PAGES  # the folder beside index.html that holds a paged gallery's index and card pages

_PAGED_SCRIPT = """
const idx = window.galleryIndex, main = document.querySelector('main'), more = document.getElementById('more');
const f = {product: document.getElementById('f-product'), style: document.getElementById('f-style'),
           channel: document.getElementById('f-channel'), status: document.getElementById('f-status')};
const loaded = {};  // page number -> its cards, once read
let queue = [], gen = 0, waiting = null;
function wanted(page){
  return (!f.product.value || page.product === f.product.value) && (!f.style.value || page.style === f.style.value)
      && (!f.channel || !f.channel.value || page.channel === f.channel.value)
      && (!f.status.value || (page.counts[f.status.value] || 0) > 0);
}
function keep(card){
  const s = f.status.value;
  return !s || (s === 'selected' ? card[1] === 1 : card[0] === s);
}
function show(n){
  let html = '';
  for (const card of loaded[n]) if (keep(card)) html += card[2];
  main.insertAdjacentHTML('beforeend', html);
}
function next(){
  while (queue.length && !waiting) {
    const n = queue.shift();
    if (loaded[n]) { show(n); if (!near()) return; continue; }
    waiting = {n: n, gen: gen};
    const s = document.createElement('script');
    s.src = '""" + PAGES + """/' + idx.pages[n].file;
    document.head.appendChild(s);
  }
  more.hidden = !queue.length && !waiting;
}
window.galleryPage = function(n, cards){
  loaded[n] = cards;
  if (waiting && waiting.n === n) { const same = waiting.gen === gen; waiting = null; if (same) show(n); }
  if (near()) next();
};
function near(){ return more.getBoundingClientRect().top < window.innerHeight * 2; }
function apply(){
  gen++; main.innerHTML = '';
  const pages = idx.pages.map((p, n) => n).filter(n => wanted(idx.pages[n]));
  document.getElementById('shown').textContent = pages.reduce(
    (t, n) => t + (f.status.value ? (idx.pages[n].counts[f.status.value] || 0) : idx.pages[n].rows), 0);
  queue = pages; if (waiting) waiting.gen = -1; waiting = null; next();
}
for (const el of Object.values(f)) if (el) el.onchange = apply;
new IntersectionObserver(entries => { if (entries.some(e => e.isIntersecting)) next(); }, {rootMargin: '100%'}).observe(more);
// The observer speaks only when `more` comes into view; a reader scrolling while it stays in view (a filter
// that shows few cards per page) reads the next pages from here.
window.addEventListener('scroll', () => { if (near()) next(); }, {passive: true});
const zones = document.getElementById('t-zones');
if (zones) { zones.onchange = () => document.body.classList.toggle('show-zones', zones.checked); }
apply();
// The look's sort and filters need every card at once: a paged gallery leaves them out (the tables have them).
for (const id of ['f-sort', 'f-distance', 'f-outlier']) document.getElementById(id).parentElement.hidden = true;
"""


def gallery_files(gallery: Gallery, *, inline_limit: int = INLINE_LIMIT, page_cards: int = PAGE_CARDS) -> dict[str, str]:
    """The gallery's files by path relative to the run's folder (`iter_gallery_files`, all at once)."""
    return dict(iter_gallery_files(gallery, inline_limit=inline_limit, page_cards=page_cards))


def iter_gallery_files(gallery: Gallery, *, inline_limit: int = INLINE_LIMIT,
                       page_cards: int = PAGE_CARDS) -> Iterator[tuple[str, str]]:
    """The gallery's files, (path relative to the run's folder, text), one at a time: `index.html`, and for a run of
    more than `inline_limit` images its card pages under `gallery/` first, `index.html` last (it names them), so a
    writer holds one page at a time, not the whole gallery (123 MB at 100,000 images).

    A paged gallery opens with its header and filters and an index of its pages (`gallery/index.js`:
    each page's product, style set, channel and counts per status), then reads the card pages the
    filters want, one at a time as the reader scrolls: opening it costs the same at 100,000 images as
    at 1,000. Pages are scripts (`galleryPage(n, cards)`), not JSON: a browser runs a script from a
    folder on disk (the run's local copy) where it refuses to fetch a file. Each page holds the cards
    of one product x style set (x channel), best first, at most `page_cards` of them; a card is the
    same HTML as on a one-page gallery, so whatever a card shows, both show.
    """
    rows = gallery.rows
    if len(rows) <= inline_limit:
        yield GALLERY, render_gallery(gallery)
        return
    varying, _ = varying_params(rows)
    groups: dict[tuple[str, str, str], list[Mapping]] = {}
    for r in sorted(rows, key=_order):
        groups.setdefault((r["product_id"], r["style_id"], channel_of(r) or ""), []).append(r)
    index = []
    for (product, style, channel), members in groups.items():
        for start in range(0, len(members), page_cards):
            chunk, name = members[start:start + page_cards], f"page-{len(index):05d}.js"
            cards = [[r.get("status") or "ok", int(bool(r.get("selected"))),
                      _card(r, varying, gallery.reviews.get(r["asset_id"]), start + n),
                      _distance(r), int(bool(r.get("consistency_outlier")))] for n, r in enumerate(chunk)]
            counts = {s: sum(c[0] == s for c in cards) for s in STATUSES[1:]} | {"selected": sum(c[1] for c in cards)}
            index.append({"file": name, "product": product, "style": style, "channel": channel, "rows": len(chunk),
                          "counts": counts})
            yield f"{PAGES}/{name}", f"galleryPage({len(index) - 1},{_json(cards)});\n"
    yield f"{PAGES}/index.js", f"window.galleryIndex={_json({'pages': index, 'rows': len(rows)})};\n"
    yield GALLERY, (_head(gallery) + '<main class="grid"></main><p id="more">loading…</p>'
                    f'<script src="{PAGES}/index.js"></script><script>{_PAGED_SCRIPT}</script></body></html>')


def _json(value: object) -> str:
    """JSON safe inside a script: no `</script>` can close it early."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")


def _tally(reviews: Mapping[str, str]) -> list[tuple[str, int]]:
    """(state, images) for each review state present, in a fixed order."""
    order = ("approved", "rejected", "on hold", "pending", "timed out")
    return [(state, n) for state in order if (n := sum(v == state for v in reviews.values()))]
