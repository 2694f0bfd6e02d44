"""What a style scan shows people: the curves with the threshold marked, and the probe grid per scale."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from PIL import Image

from tasks.sheets import Font, Tile, contact_sheet
from tasks.style_scan import MEASURES, Threshold

SCAN_TILE = 96  # pixels per probe tile on the scan's sheet: scales x probes tiles stay a readable page

# Plot colours and labels per measure: copying in reds, adherence and fidelity in blues, style in green.
_STYLE = {
    "clip_style": ("#2e8b57", "style similarity (CLIP)"),
    "clip_text": ("#1f5fbf", "prompt adherence (CLIP)"),
    "edge_f1": ("#5a9bd5", "product edges (edge F1)"),
    "product_ssim": ("#8fb8e8", "product SSIM"),
    "copy_ssim": ("#c0392b", "copying: SSIM to reference"),
    "copy_patch": ("#e67e22", "copying: patch pHash matches"),
}


def curves_plot(scales: Sequence[float], curves: Mapping[str, Sequence[float | None]], verdict: Threshold, *,
                title: str) -> bytes:
    """A PNG of every measure's per-scale mean against the IP-Adapter scale, the threshold and the
    recommended scale marked. CLIP measures on the left axis, the 0..1 measures on the right."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in threads

    fig = Figure(figsize=(8, 5.5), dpi=100)
    left = fig.add_subplot(1, 1, 1)
    right = left.twinx()
    for name in MEASURES:
        curve = curves.get(name)
        if curve is None or all(v is None for v in curve):
            continue
        colour, label = _STYLE[name]
        xs = [s for s, v in zip(scales, curve, strict=True) if v is not None]
        ys = [v for v in curve if v is not None]
        axis = left if name.startswith("clip_") else right
        axis.plot(xs, ys, marker="o", markersize=3, color=colour, label=label,
                  linestyle="-" if MEASURES[name] != "fall" or name == "clip_text" else "--")
    if verdict.threshold is not None:
        left.axvline(verdict.threshold, color="#c0392b", linewidth=2, label=f"threshold {verdict.threshold:g}")
    left.axvline(verdict.recommended, color="#2e8b57", linewidth=2, linestyle=":",
                 label=f"recommended {verdict.recommended:g}")
    left.set_xlabel("IP-Adapter scale")
    left.set_ylabel("CLIP cosine similarity")
    right.set_ylabel("edge F1, SSIM, patch share")
    left.set_title(title, fontsize=10)
    fig.text(0.01, 0.01, verdict.reason if len(verdict.reason) < 130 else verdict.reason[:127] + "...", fontsize=7,
             color="#555555")
    low = min([0.0, *(v for n, c in curves.items() if not n.startswith("clip_") for v in c if v is not None)])
    right.set_ylim(low - 0.05, 1.05)  # the 0..1 measures on their whole range: a small wobble looks small
    handles = left.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    left.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="upper center",
                bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    left.grid(alpha=0.3)
    fig.subplots_adjust(bottom=0.32, right=0.88)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def scan_sheet(rows: Sequence[Mapping], images: Sequence[Image.Image], verdict: Threshold, *, title: str,
               references: Sequence[Image.Image], font: Font | None = None) -> Image.Image:
    """The probe grid as a contact sheet: one row per scale, the probe images across, each with its
    copying (SSIM / patch share) and style scores; the recommended scale framed in green, scales from the
    threshold on labelled in red."""
    tiles = []
    prompts: dict[str, int] = {}
    for row, image in zip(rows, images, strict=True):
        scale = float(row["ip_scale"])
        number = prompts.setdefault(row["prompt"].replace(row["shape"], "{shape}"), len(prompts) + 1)
        past = verdict.threshold is not None and scale >= verdict.threshold
        tiles.append(Tile(
            cell=(("ip_scale", f"{scale:g}"), ("probe", f"{row['shape']}, prompt {number}")), seed=int(row["seed"]),
            image=image,
            lines=(f"copy {_fmt(row.get('copy_ssim'))} / {_fmt(row.get('copy_patch'))}",
                   f"style {_fmt(row.get('clip_style'))}"),
            status="gated" if past else "ok", selected=scale == verdict.recommended))
    subtitle = verdict.reason
    header = [(f"reference {i + 1}", ref) for i, ref in enumerate(references)]
    return contact_sheet(tiles, title=title, subtitle=subtitle, header=header, tile_size=SCAN_TILE, font=font)


def _fmt(value) -> str:
    return "-" if value is None else f"{float(value):.2f}"

