"""Selection: gates, near-duplicates, ranking by weighted score, top k, and the per-cell metrics."""

from __future__ import annotations

import pytest

from catalogs import parse_campaign
from catalogs.models import Selection
from tasks.select import cell_metrics, select_images, weighted_scores

HASHES = iter(f"{(0x9E3779B97F4A7C15 * (i + 1)) % 2**64:016x}" for i in range(1000))  # well apart from each other


def row(asset_id: str, product: str = "mug", *, style: str = "s", cell: int = 0, seed: int = 0, **scores) -> dict:
    return {"asset_id": asset_id, "product_id": product, "style_id": style, "cell_index": cell,
            "cell": [("surface", f"v{cell}")], "seed": seed, "status": scores.pop("status", "ok"),
            "status_reason": scores.pop("status_reason", None),
            "background_hash": scores.pop("background_hash", next(HASHES)), **scores}


def outcome_of(rows, selection, asset_id):
    return dict(zip([r["asset_id"] for r in rows], select_images(rows, selection), strict=True))[asset_id]


def test_gates_drop_images_first_and_say_which_gate_failed():
    rows = [row("good", edge_f1=0.8, clipped_share=0.1), row("bent", edge_f1=0.1, clipped_share=0.1),
            row("burnt", edge_f1=0.05, clipped_share=0.9), row("unscored", edge_f1=None, clipped_share=0.2)]
    selection = Selection(gates=("edge_f1 >= 0.3", "clipped_share <= 0.5"), weights={"edge_f1": 1}, top_k=10)
    out = dict(zip([r["asset_id"] for r in rows], select_images(rows, selection), strict=True))
    assert out["good"]["status"] == "ok" and out["good"]["selected"]
    assert out["bent"] == {**out["bent"], "status": "gated", "gates_failed": ["edge_f1 >= 0.3"], "selected": False,
                           "score": None, "rank_in_product": None}
    assert out["bent"]["status_reason"] == "edge_f1 0.1 fails 'edge_f1 >= 0.3'"
    assert out["burnt"]["gates_failed"] == ["edge_f1 >= 0.3", "clipped_share <= 0.5"]
    # A gate on a score the image lacks (its scorer could not run) does not apply.
    assert out["unscored"]["status"] == "ok"


def test_ranking_follows_weights_and_directions_and_top_k_is_per_product():
    rows = [row("a1", edge_f1=0.9, product_delta_e=9.0), row("a2", edge_f1=0.5, product_delta_e=1.0),
            row("a3", edge_f1=0.7, product_delta_e=5.0),
            row("b1", "kettle", edge_f1=0.2, product_delta_e=3.0), row("b2", "kettle", edge_f1=0.3, product_delta_e=3.0)]
    by_edges = Selection(gates=(), weights={"edge_f1": 1}, top_k=1)
    assert [outcome_of(rows, by_edges, a)["rank_in_product"] for a in ("a1", "a3", "a2", "b2", "b1")] == [1, 2, 3, 1, 2]
    assert [a for a in ("a1", "a2", "a3", "b1", "b2") if outcome_of(rows, by_edges, a)["selected"]] == ["a1", "b2"]
    # Colour difference counts the other way round: the smallest wins.
    by_colour = Selection(gates=(), weights={"product_delta_e": 1}, top_k=1)
    assert outcome_of(rows, by_colour, "a2")["selected"] and outcome_of(rows, by_colour, "a2")["score"] == 1.0
    assert outcome_of(rows, by_colour, "a1")["score"] == 0.0


def test_weighted_scores_are_percentiles_and_missing_scores_rank_last():
    rows = [{"sharpness": 10.0, "luminance": 0.5}, {"sharpness": 1000.0, "luminance": 0.9},
            {"sharpness": None, "luminance": 0.45}]
    assert weighted_scores(rows, {"sharpness": 1}) == [0.0, 1.0, 0.0]
    # Luminance is best near the middle.
    assert weighted_scores(rows, {"luminance": 1}) == [1.0, 0.0, 0.5]
    assert weighted_scores(rows, {"sharpness": 1, "luminance": 3}) == [0.75, 0.25, 0.375]
    # A score no image has (CLIP off) drops out instead of dragging every image down.
    assert weighted_scores(rows, {"sharpness": 1, "clip_text": 5}) == [0.0, 1.0, 0.0]


def test_rank_in_cell_restarts_in_every_cell_and_style():
    rows = [row(f"{s}{c}{seed}", style=s, cell=c, seed=seed, edge_f1=0.1 * seed + 0.01 * c)
            for s in ("x", "y") for c in (0, 1) for seed in (1, 2, 3)]
    out = select_images(rows, Selection(gates=(), weights={"edge_f1": 1}, top_k=2))
    for s in ("x", "y"):
        for c in (0, 1):
            ranks = [o["rank_in_cell"] for r, o in zip(rows, out, strict=True) if (r["style_id"], r["cell_index"]) == (s, c)]
            assert ranks == [3, 2, 1]  # seed 3 scores best in each cell
    assert sorted(o["rank_in_product"] for o in out) == list(range(1, 13))
    assert sum(o["selected"] for o in out) == 2


def test_near_duplicates_fold_into_the_best_of_them_within_a_product():
    same = "00ff00ff00ff00ff"
    near = "00ff00ff00ff00fe"  # one bit away
    rows = [row("weak", edge_f1=0.4, background_hash=same), row("strong", edge_f1=0.9, background_hash=near),
            row("other", edge_f1=0.1),
            row("kettle", "kettle", edge_f1=0.5, background_hash=same)]  # another product: never its duplicate
    selection = Selection(gates=(), weights={"edge_f1": 1}, top_k=5, duplicate_distance=2)
    out = dict(zip([r["asset_id"] for r in rows], select_images(rows, selection), strict=True))
    assert out["weak"]["status"] == "duplicate" and out["weak"]["duplicate_of"] == "strong"
    assert out["weak"]["status_reason"] == "near-duplicate of strong (background hash distance 1)"
    assert not out["weak"]["selected"] and out["weak"]["rank_in_product"] is None
    assert out["strong"]["status"] == "ok" and out["strong"]["rank_in_product"] == 1
    assert out["other"]["rank_in_product"] == 2
    assert out["kettle"]["status"] == "ok"
    # Distance 0 keeps the two apart.
    strict = Selection(gates=(), weights={"edge_f1": 1}, duplicate_distance=0)
    assert outcome_of(rows, strict, "weak")["status"] == "ok"


def test_failed_images_stay_failed_and_are_never_ranked():
    rows = [row("blank", edge_f1=None, status="failed", status_reason="blank image"), row("fine", edge_f1=0.5)]
    out = select_images(rows, Selection(gates=("edge_f1 >= 0.3",), weights={"edge_f1": 1}))
    assert out[0] == {**out[0], "status": "failed", "status_reason": "blank image", "selected": False, "score": None}
    assert out[1]["selected"] and out[1]["rank_in_product"] == 1


def test_cell_metrics_count_statuses_and_measure_diversity():
    rows = [row("a", cell=0, background_hash="0000000000000000"), row("b", cell=0, background_hash="000000000000ffff"),
            row("c", cell=0, background_hash="0000000000000001"), row("d", cell=1, edge_f1=0.1)]
    for r, o in zip(rows, select_images(rows, Selection(gates=("edge_f1 >= 0.3",), weights={"edge_f1": 1},
                                                         duplicate_distance=2)), strict=True):
        r.update(o)
    first, second = cell_metrics(rows, run_id="r1", campaign="spring")
    assert first == {**first, "run_id": "r1", "campaign": "spring", "product_id": "mug", "cell_index": 0,
                     "images": 3, "ok": 2, "duplicates": 1, "gated": 0, "selected": 2}
    assert first["duplicate_rate"] == pytest.approx(1 / 3)
    assert first["diversity"] == pytest.approx((16 + 1 + 15) / 3 / 64)
    assert first["best_asset_id"] in {"a", "b", "c"} and first["best_score"] is not None
    assert second == {**second, "images": 1, "gated": 1, "ok": 0, "best_score": None, "best_asset_id": None,
                      "diversity": None, "mean_edge_f1": 0.1}


def test_diversity_is_the_mean_distance_of_every_pair_without_listing_the_pairs():
    import itertools
    import random

    from tasks.phash import hamming
    from tasks.select import diversity

    draw = random.Random(7)
    hashes = [f"{draw.getrandbits(64):016x}" for _ in range(300)] + [None, "", "ffffffffffffffff", "0000000000000000"]
    present = [h for h in hashes if h]
    pairs = list(itertools.combinations(present, 2))
    assert diversity(hashes) == sum(hamming(a, b) for a, b in pairs) / len(pairs) / 64  # the same figure, exactly
    assert diversity(["00000000000000ff", None]) is None and diversity(["00000000000000ff"] * 2) == 0.0


@pytest.mark.parametrize(("selection", "message"), [
    ("{gates: ['fidelity >= 0.3']}", "selection.gates: Value error, gate 'fidelity >= 0.3' names unknown score 'fidelity'"),
    ("{gates: ['edge_f1 at least 0.3']}", "must look like 'edge_f1 >= 0.3'"),
    ("{weights: {clip: 1}}", "weights name unknown scores ['clip']"),
    ("{weights: {edge_f1: -1}}", "weights ['edge_f1'] are negative"),
    ("{top_k: -1}", "selection.top_k"),
])
def test_campaign_rejects_unknown_gates_and_weights_with_a_clear_error(selection, message):
    text = f"name: spring\nmatrix: {{template: '{{product}}'}}\nselection: {selection}\n"
    with pytest.raises(ValueError, match="campaign 'spring'") as err:
        parse_campaign(text, origin="spring.yaml")
    assert message in str(err.value)


def test_sample_campaign_selection_is_valid():
    from catalogs import sample_campaign_text

    selection = parse_campaign(sample_campaign_text()).selection
    assert selection.top_k >= 1 and selection.gates and selection.weights
