"""Selection: gates drop images, near-duplicates fold, a weighted score ranks the rest, top k are chosen.

Works on `generations` rows that carry their scores; returns each row's outcome (status,
reason, score, ranks, selected) and the per-cell set metrics. Scores are made comparable by
ranking each one within its product (a percentile), so a sharpness variance in the
thousands and a cosine near 0.2 weigh only by their weights.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from catalogs.models import SCORES, Selection, parse_gate
from tasks import consistency
from tasks.channels import channel_of
from tasks.phash import HASH_BITS, hamming
from tasks.rows import Columns
from tasks.scores import duplicate_groups
from tasks.tables import SCHEMA_VERSION
from tasks.values import is_missing

OUTCOME = ("status", "status_reason", "duplicate_of", "gates_failed", "score", "rank_in_cell", "rank_in_product",
           "selected", *consistency.COLUMNS)
CONSISTENCY_ROUNDS = 8  # picks settle in two or three rounds; the cap stops a cycle
AGREEMENT_SPAN = 2.0  # consistency distance at which an image no longer agrees at all (two clear differences)
_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def _value(row: dict, name: str) -> float | None:
    value = row.get(name)
    return None if is_missing(value) else float(value)


def failed_gates(row: dict, gates: Sequence[str]) -> list[tuple[str, str]]:
    """(gate, explanation) for every gate the row fails. A gate on a score the row lacks does not apply."""
    failed = []
    for gate in gates:
        name, op, threshold = parse_gate(gate)
        value = _value(row, name)
        if value is not None and not _OPS[op](value, threshold):
            failed.append((gate, f"{name} {value:.3g} fails '{gate}'"))
    return failed


def weighted_scores(rows: Sequence[dict], weights: dict[str, float]) -> list[float]:
    """Each row's weighted score in 0..1 from percentile ranks among `rows`.

    Every weighted score is ranked with its direction (lower is better for colour difference
    and clipping; luminance is best near 0.5); a row missing a score ranks last on it; a score
    no row has drops out of the weighting.
    """
    total = np.zeros(len(rows))
    weight_sum = 0.0
    for name, weight in weights.items():
        values = pd.Series([_value(r, name) for r in rows], dtype="float64")
        if weight <= 0 or values.isna().all():
            continue
        direction = SCORES[name]
        if direction == "lower":
            values = -values
        elif direction == "mid":
            values = -(values - 0.5).abs()
        ranked = values.rank(method="average")
        count = int(values.notna().sum())
        share = (ranked - 1) / (count - 1) if count > 1 else ranked.notna().astype(float)
        total += weight * share.fillna(0.0).to_numpy()
        weight_sum += weight
    return list(total / weight_sum) if weight_sum else [0.0] * len(rows)


def select_images(rows: Sequence[dict], selection: Selection) -> Columns:
    """The outcome of every row, in order: the columns named in `OUTCOME`, held as columns (`outcomes[i]` reads
    row i's as a dict; `outcomes.lists` hands them on whole).

    Failed rows stay failed; gates come first, then, within each product, near-duplicates
    (background hashes within `duplicate_distance`) fold into their best-scored member; the
    remaining images are ranked within their cell and their product, and the top k of each
    product are selected (with channels: of each product and channel). With `selection.consistency`,
    the score also weighs each image's agreement with the other products' picks (`consistent_scores`).
    Last, every image's distance to its group's centre is measured (`tasks.consistency.measure`).
    """
    outcomes = Columns(len(rows), {"status": "ok", "status_reason": None, "duplicate_of": None, "gates_failed": [],
                                   "score": None, "rank_in_cell": None, "rank_in_product": None, "selected": False})
    status, score = outcomes.lists["status"], outcomes.lists["score"]
    # A campaign's channels are placements of their own: each product x channel is ranked and selected apart.
    placements: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        live = placements.setdefault(_placement(row), [])
        if row.get("status") == "failed":
            outcomes.set(i, status="failed", status_reason=row.get("status_reason"))
        elif failed := failed_gates(row, selection.gates):
            outcomes.set(i, status="gated", gates_failed=[g for g, _ in failed], status_reason="; ".join(e for _, e in failed))
        else:
            live.append(i)
    for live in placements.values():
        for i, weighted in zip(live, weighted_scores([rows[i] for i in live], selection.weights), strict=True):
            score[i] = float(weighted)
        _fold_duplicates(rows, outcomes, live, selection.duplicate_distance)
    looks = consistency.looks_of(rows, skip=[s == "failed" for s in status])
    if selection.consistency is not None:
        consistent_scores(rows, outcomes, placements, looks, selection)
    for live in placements.values():
        ok = _ranked_ok(rows, outcomes, live)
        for rank, i in enumerate(ok, start=1):
            outcomes.set(i, rank_in_product=rank, selected=rank <= selection.top_k)
        cells: dict[tuple, int] = {}
        for i in ok:
            key = (rows[i]["style_id"], rows[i]["cell_index"])
            cells[key] = cells.get(key, 0) + 1
            outcomes.set(i, rank_in_cell=cells[key])
    within = selection.consistency.within if selection.consistency is not None else consistency.STYLE_SET
    outcomes.lists.update(consistency.measure(rows, looks, status, within).lists)
    return outcomes


def consistent_scores(rows: Sequence[dict], outcomes: Columns, placements: dict[tuple, list[int]],
                      looks: Sequence[consistency.Look], selection: Selection) -> None:
    """Rescore the live images of every placement for quality and agreement, in rounds (in place).

    Iterative, not greedy: round one takes each product's top k by quality alone; each round then
    measures every image against the centre of the *other* products' picks in its group (its style
    set or the campaign, per channel), turns that distance into an agreement (1 at the centre, falling
    linearly to 0 at AGREEMENT_SPAN), weighs it against the quality score (`consistency.weight`
    beside the sum of the quality weights in use), and picks again; it stops when no pick changes
    (or after CONSISTENCY_ROUNDS). The agreement is absolute, not a rank within the product: two
    images that both agree pick by quality, and only a visible difference of look moves a pick.
    A greedy choice, product after product, would let the first product's best image set the look
    for all; here no product goes first, and the result does not depend on their order. Ties break
    by asset id, so the same rows always give the same picks.
    """
    assert selection.consistency is not None
    within, weight = selection.consistency.within, selection.consistency.weight
    score = outcomes.lists["score"]
    live = [i for members in placements.values() for i in members]
    home = {i: (rows[i]["product_id"], consistency.group_of(rows[i], within)) for i in live}
    quality = {i: score[i] for i in live}
    in_use = {key: _weight_in_use([rows[i] for i in members], selection.weights) for key, members in placements.items()}

    def picks() -> set[int]:
        return {i for members in placements.values() for i in _ranked_ok(rows, outcomes, members)[:selection.top_k]}

    chosen = picks()
    for _ in range(CONSISTENCY_ROUNDS):
        agreement = _distances_to_the_others(looks, home, chosen)
        for key, members in placements.items():
            if all(agreement[i] is None for i in members):
                continue  # nothing to agree with (one product, no looks): quality alone, as without the key
            for i in members:
                agrees = 0.0 if agreement[i] is None else max(0.0, 1.0 - agreement[i] / AGREEMENT_SPAN)
                score[i] = (in_use[key] * quality[i] + weight * agrees) / (in_use[key] + weight)
        again = picks()
        if again == chosen:
            break
        chosen = again


def _distances_to_the_others(looks: Sequence[consistency.Look], home: dict[int, tuple],
                             chosen: set[int]) -> dict[int, float | None]:
    """Each live image's combined distance to the centre of the picks of the other products of its group."""
    by_group: dict[tuple, dict[str, list[int]]] = {}
    for i, (product, group) in home.items():
        by_group.setdefault(group, {}).setdefault(product, []).append(i)
    out: dict[int, float | None] = {}
    for group, products in by_group.items():
        picked = sorted(j for j in chosen if home[j][1] == group)
        centres = consistency.centres_without([looks[j] for j in picked], [home[j][0] for j in picked], list(products))
        for product, mine in products.items():
            for i, d in zip(mine, consistency.distances([looks[i] for i in mine], centres[product]), strict=True):
                out[i] = d.combined
    return out


def _weight_in_use(rows: Sequence[dict], weights: dict[str, float]) -> float:
    """The sum of the weights `weighted_scores` counts for these rows (of the scores some row has)."""
    return sum(w for name, w in weights.items() if w > 0 and any(_value(r, name) is not None for r in rows))


def _ranked_ok(rows: Sequence[dict], outcomes: Columns, members: Sequence[int]) -> list[int]:
    status = outcomes.lists["status"]
    return sorted((i for i in members if status[i] == "ok"), key=lambda i: _best_first(rows, outcomes, i))


def _placement(row: dict) -> tuple[str, str | None]:
    return row["product_id"], channel_of(row)


def _best_first(rows: Sequence[dict], outcomes: Columns, i: int) -> tuple[float, str]:
    return (-outcomes.lists["score"][i], rows[i]["asset_id"])


def _fold_duplicates(rows: Sequence[dict], outcomes: Columns, members: list[int], max_distance: int) -> None:
    groups = duplicate_groups([rows[i].get("background_hash") for i in members], max_distance)
    by_group: dict[int, list[int]] = {}
    for i, group in zip(members, groups, strict=True):
        if group is not None:
            by_group.setdefault(group, []).append(i)
    for group in by_group.values():
        keep, *repeats = sorted(group, key=lambda i: _best_first(rows, outcomes, i))
        for i in repeats:
            distance = hamming(rows[i]["background_hash"], rows[keep]["background_hash"])
            outcomes.set(i, status="duplicate", duplicate_of=rows[keep]["asset_id"],
                         status_reason=f"near-duplicate of {rows[keep]['asset_id']} (background hash distance {distance})")


def diversity(hashes: Sequence[str | None]) -> float | None:
    """Mean pairwise Hamming distance of the hashes, as a share of 64 bits; None under two hashes.

    Counted bit by bit, not pair by pair: a bit that is set in `c` of `n` hashes differs in `c * (n - c)`
    pairs. The same sum as every pair compared, in time and memory linear in the hashes (a cell of a large
    run has thousands of images: millions of pairs).
    """
    present = [int(h, 16) for h in hashes if h]
    n = len(present)
    if n < 2:
        return None
    bits = np.array(present, dtype=np.uint64)
    ones = np.array([int(np.count_nonzero((bits >> np.uint64(b)) & np.uint64(1))) for b in range(HASH_BITS)])
    return int((ones * (n - ones)).sum()) / (n * (n - 1) // 2) / HASH_BITS


def cell_metrics(rows: Sequence[dict], *, run_id: str, campaign: str) -> list[dict]:
    """One `cell_metrics` row per (product, style set, cell) of selected-and-scored `generations` rows."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["product_id"], r["style_id"], r["cell_index"]), []).append(r)

    def mean(members: list[dict], name: str) -> float | None:
        values = [v for v in (_value(m, name) for m in members) if v is not None]
        return float(np.mean(values)) if values else None

    metrics = []
    for (product, style, cell_index), members in groups.items():
        status = [m["status"] for m in members]
        ok = [m for m in members if m["status"] == "ok"]
        best = min(ok, key=lambda m: (-m["score"], m["asset_id"])) if ok else None
        metrics.append({
            "schema_version": SCHEMA_VERSION, "run_id": run_id, "campaign": campaign,
            "product_id": product, "style_id": style, "cell_index": cell_index, "cell": list(members[0]["cell"]),
            "images": len(members), "ok": status.count("ok"), "gated": status.count("gated"),
            "duplicates": status.count("duplicate"), "failed": status.count("failed"),
            "selected": sum(bool(m["selected"]) for m in members),
            "duplicate_rate": status.count("duplicate") / len(members),
            "diversity": diversity([m.get("background_hash") for m in members if m["status"] != "failed"]),
            "mean_edge_f1": mean(members, "edge_f1"), "mean_clip_text": mean(members, "clip_text"),
            "mean_clip_style": mean(members, "clip_style"),
            "best_score": best["score"] if best else None, "best_asset_id": best["asset_id"] if best else None,
            "mean_consistency_distance": mean(members, "consistency_distance"),
            "consistency_outliers": sum(bool(m.get("consistency_outlier")) for m in members),
        })
    return metrics
