"""The run's gallery page: one self-contained HTML file (no external assets), images linked relative to it.

Filterable by product, style set and selection; each image shows its status, prompt,
parameters and scores. Cards come product by product, best first.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222}
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
.badge{display:inline-block;border-radius:3px;padding:0 .35rem;margin-right:.3rem;font-size:11px;color:#fff;background:#777}
.badge.selected{background:#16963c}.badge.ok{background:#1456a0}.badge.gated{background:#c82828}
.badge.duplicate{background:#cd7800}.badge.failed{background:#777}
.reason{color:#a33}
table.scores{border-collapse:collapse;margin-top:.3rem;width:100%}
table.scores td{padding:0 .3rem 0 0;font-variant-numeric:tabular-nums}
table.scores td:nth-child(odd){color:#666}
details{margin:.5rem 0}
"""

_SCRIPT = """
const f = {product: document.getElementById('f-product'), style: document.getElementById('f-style'),
           status: document.getElementById('f-status')};
function keep(fig){
  const s = f.status.value;
  return (!f.product.value || fig.dataset.product === f.product.value)
      && (!f.style.value || fig.dataset.style === f.style.value)
      && (!s || (s === 'selected' ? fig.dataset.selected === '1' : fig.dataset.status === s));
}
function apply(){
  let shown = 0;
  for (const fig of document.querySelectorAll('main figure')) { fig.hidden = !keep(fig); if (!fig.hidden) shown++; }
  document.getElementById('shown').textContent = shown;
}
for (const el of Object.values(f)) el.onchange = apply;
apply();
"""

STATUSES = ("selected", "ok", "gated", "duplicate", "failed")
_SCORE_CELLS = (
    ("edge F1", "edge_f1", 2), ("SSIM", "product_ssim", 2), ("ΔE", "product_delta_e", 1),
    ("CLIP-T", "clip_text", 3), ("CLIP-I", "clip_style", 3), ("sharp", "sharpness", 0),
    ("lum", "luminance", 2), ("clipped", "clipped_share", 2), ("colour", "colourfulness", 0),
    ("score", "score", 3),
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value: object, digits: int) -> str:
    return "–" if _missing(value) else f"{float(value):.{digits}f}"


def _options(values: Sequence[str]) -> str:
    return "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)


def _order(row: Mapping) -> tuple:
    """Product by product: ranked images best first, then duplicates, gated and failed ones."""
    rank = row.get("rank_in_product")
    status_order = {"ok": 0, "duplicate": 1, "gated": 2, "failed": 3}.get(row.get("status") or "ok", 4)
    return (row["product_id"], status_order, math.inf if _missing(rank) else float(rank), row["asset_id"])


def _card(r: Mapping) -> str:
    status = r.get("status") or "ok"
    selected = bool(r.get("selected"))
    cell = ", ".join(f"{k}: {v}" for k, v in r["cell"])
    badges = '<span class="badge selected">selected</span>' if selected else f'<span class="badge {_e(status)}">{_e(status)}</span>'
    rank = "" if _missing(r.get("rank_in_product")) else \
        f' · #{int(r["rank_in_product"])} of product, #{int(r["rank_in_cell"])} of cell'
    scores = "".join(
        ("<tr>" if i % 2 == 0 else "") + f"<td>{label}</td><td>{_num(r.get(key), digits)}</td>" + ("</tr>" if i % 2 else "")
        for i, (label, key, digits) in enumerate(_SCORE_CELLS)
    )
    image = (f'<img loading="lazy" src="images/{_e(r["asset_id"])}.png" alt="{_e(r["prompt"])}">'
             if r.get("output_key") else '<div class="missing">no image</div>')
    reason = f'<div class="reason">{_e(r["status_reason"])}</div>' if r.get("status_reason") else ""
    return (
        f'<figure class="{"selected" if selected else ""}" data-product="{_e(r["product_id"])}" '
        f'data-style="{_e(r["style_id"])}" data-status="{_e(status)}" data-selected="{int(selected)}">'
        f'{image}<figcaption><div>{badges}<span class="ids">{_e(r["product_id"])} · {_e(r["style_id"])}</span>{rank}</div>'
        f"{reason}<div>{_e(r['prompt'])}</div>"
        f'<div class="params">{_e(cell)} · seed {_e(r["seed"])} · {_e(r["steps"])} steps · {_e(r["scheduler"])} · '
        f'cfg {_e(r["guidance"])} · ip {_e(r["ip_scale"])} · cn {_e(r["controlnet_scale"])} · '
        f'{_e(r["width"])}x{_e(r["height"])} · {_e(r["profile"])}</div>'
        f'<table class="scores">{scores}</table>'
        f'<div class="params">{_e(r["asset_id"])}</div></figcaption></figure>'
    )


def render_gallery(run_id: str, campaign: str, rows: Sequence[Mapping], *, sheets: Mapping[str, str] | None = None,
                   tables: Sequence[str] = ()) -> str:
    """The gallery HTML for a run's `generations` rows; images are `images/<asset_id>.png` beside it.

    `sheets` maps a contact sheet's label to its path relative to the page; `tables` lists the
    run's table parts (shown as text: they live outside the run's folder).
    """
    ordered = sorted(rows, key=_order)
    products = sorted({r["product_id"] for r in rows})
    styles = sorted({r["style_id"] for r in rows})
    selected = sum(bool(r.get("selected")) for r in rows)
    counts = " · ".join(f"{sum((r.get('status') or 'ok') == s for r in rows)} {s}" for s in STATUSES[1:])
    sheet_links = "".join(f'<li><a href="{_e(path)}">{_e(label)}</a></li>' for label, path in (sheets or {}).items())
    table_list = "".join(f"<li><code>{_e(t)}</code></li>" for t in tables)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(campaign)} · {_e(run_id)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{_e(campaign)}</h1><p>run {_e(run_id)} · {len(rows)} images · {selected} selected · {counts} · "
        '<span id="shown"></span> shown</p>'
        + (f"<details><summary>contact sheets ({len(sheets or {})})</summary><ul>{sheet_links}</ul></details>" if sheet_links else "")
        + (f"<details><summary>tables</summary><ul>{table_list}</ul></details>" if table_list else "")
        + "</header>"
        '<div class="filters">'
        f'<label>product <select id="f-product"><option value="">all</option>{_options(products)}</select></label>'
        f'<label>style <select id="f-style"><option value="">all</option>{_options(styles)}</select></label>'
        f'<label>show <select id="f-status"><option value="">all</option>{_options(STATUSES)}</select></label>'
        "</div>"
        f'<main class="grid">{"".join(_card(r) for r in ordered)}</main><script>{_SCRIPT}</script></body></html>'
    )
