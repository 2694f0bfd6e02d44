"""The run's gallery page: one self-contained HTML file, images linked relative to it."""

from __future__ import annotations

import html
from collections.abc import Sequence

_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222}
h1{font-size:1.3rem}header p{color:#555}
.filters{margin:1rem 0;display:flex;gap:1rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:1rem}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5rem}
figure img{width:100%;image-rendering:auto;border-radius:4px;background:#eee}
figcaption{font-size:12px;line-height:1.35;margin-top:.4rem}
figcaption .ids{font-weight:600}figcaption .params{color:#666}
"""

_SCRIPT = """
const sel = {product: document.getElementById('f-product'), style: document.getElementById('f-style')};
function apply(){
  let shown = 0;
  for (const fig of document.querySelectorAll('figure')) {
    const ok = (!sel.product.value || fig.dataset.product === sel.product.value)
            && (!sel.style.value || fig.dataset.style === sel.style.value);
    fig.hidden = !ok; if (ok) shown++;
  }
  document.getElementById('shown').textContent = shown;
}
sel.product.onchange = apply; sel.style.onchange = apply; apply();
"""


def _options(values: Sequence[str]) -> str:
    return "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values)


def render_gallery(run_id: str, campaign: str, rows: Sequence[dict]) -> str:
    """The gallery HTML for a run's `generations` rows; images are `images/<asset_id>.png`."""
    products = sorted({r["product_id"] for r in rows})
    styles = sorted({r["style_id"] for r in rows})
    cards = []
    for r in rows:
        cell = ", ".join(f"{k}: {v}" for k, v in r["cell"])
        cards.append(
            f'<figure data-product="{html.escape(r["product_id"])}" data-style="{html.escape(r["style_id"])}">'
            f'<img loading="lazy" src="images/{r["asset_id"]}.png" alt="{html.escape(r["prompt"])}">'
            f'<figcaption><div class="ids">{html.escape(r["product_id"])} · {html.escape(r["style_id"])}</div>'
            f"<div>{html.escape(r['prompt'])}</div>"
            f'<div class="params">{html.escape(cell)} · seed {r["seed"]} · {r["steps"]} steps · '
            f'cfg {r["guidance"]} · ip {r["ip_scale"]} · cn {r["controlnet_scale"]}</div>'
            f'<div class="params">{r["asset_id"]}</div></figcaption></figure>'
        )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(campaign)} · {html.escape(run_id)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{html.escape(campaign)}</h1><p>run {html.escape(run_id)} · {len(rows)} images · "
        '<span id="shown"></span> shown</p></header>'
        '<div class="filters">'
        f'<label>product <select id="f-product"><option value="">all</option>{_options(products)}</select></label>'
        f'<label>style <select id="f-style"><option value="">all</option>{_options(styles)}</select></label>'
        "</div>"
        f'<main class="grid">{"".join(cards)}</main><script>{_SCRIPT}</script></body></html>'
    )
