"""The style scan's pure parts: the threshold rule on synthetic curves, the copying measure, the
probe, and how `ip_scale: auto` resolves from a scan."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from catalogs import parse_campaign
from catalogs.models import Reference, StyleSet
from tasks.matrix import expand_matrix
from tasks.plan import ModelIdentity, plan_jobs
from tasks.style_scan import (
    DEFAULT_SCALES,
    TOLERANCES,
    Probe,
    ScanChoice,
    apply_auto_scales,
    auto_style_ids,
    copy_scores,
    find_threshold,
    probe_shape,
    references_key,
    scale_means,
    scan_id,
    smooth,
    sweep,
)
from tests.helpers import PRODUCTS, photo

SCALES = list(DEFAULT_SCALES)  # 0.0 .. 1.2, 13 points


def flat(value: float) -> list[float]:
    return [value] * len(SCALES)


def curves(**overrides) -> dict[str, list[float | None]]:
    """Healthy curves (style rises, nothing else moves) with some replaced."""
    base = {"clip_style": [0.5 + 0.02 * i for i in range(len(SCALES))], "clip_text": flat(0.3),
            "edge_f1": flat(0.6), "product_ssim": flat(0.5), "copy_ssim": flat(0.1), "copy_patch": flat(0.05)}
    return {**base, **overrides}


def test_flat_curves_have_no_threshold_and_recommend_the_most_style():
    verdict = find_threshold(SCALES, curves())
    assert verdict.threshold is None and verdict.measure is None
    assert "no threshold found in the range 0..1.2" in verdict.reason
    assert verdict.recommended == 1.2  # style similarity rises all the way


def test_a_knee_in_copying_sets_the_threshold_there_and_recommends_the_scale_below():
    copy = [0.1] * 7 + [0.3, 0.5, 0.6, 0.65, 0.7, 0.7]  # flat to 0.6, then a knee at 0.7
    verdict = find_threshold(SCALES, curves(copy_ssim=copy))
    assert verdict.threshold == 0.7 and verdict.recommended == 0.6
    assert verdict.measure == "copy_ssim" and "copy_ssim rose" in verdict.reason


def test_a_monotone_rise_crosses_at_the_stated_tolerance():
    copy = [0.1 + 0.04 * i for i in range(len(SCALES))]  # +0.04 per step: past 0.10 at the third step
    verdict = find_threshold(SCALES, curves(copy_patch=copy))
    first_over = next(s for s, c in zip(SCALES, copy, strict=True) if c - copy[0] > TOLERANCES["copy_patch"])
    assert verdict.threshold == first_over == 0.4 and verdict.recommended == 0.3


def test_falling_prompt_adherence_or_fidelity_is_a_threshold_too():
    text = [0.3] * 9 + [0.25, 0.22, 0.2, 0.2]
    assert find_threshold(SCALES, curves(clip_text=text)).threshold == 0.9
    edges = [0.6] * 5 + [0.4, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
    verdict = find_threshold(SCALES, curves(edge_f1=edges))
    assert verdict.threshold == 0.5 and verdict.measure == "edge_f1" and "fell" in verdict.reason


def test_noise_and_a_single_spike_make_no_threshold():
    rng = np.random.default_rng(3)
    noisy = list(0.1 + rng.uniform(-0.04, 0.04, len(SCALES)))
    noisy[6] = 0.6  # one wild scale, back down after
    verdict = find_threshold(SCALES, curves(copy_ssim=noisy, clip_text=list(0.3 + rng.uniform(-0.01, 0.01, len(SCALES)))))
    assert verdict.threshold is None


def test_noisy_knee_is_still_found():
    rng = np.random.default_rng(5)
    copy = [0.1 + rng.uniform(-0.03, 0.03) if i < 8 else 0.45 + rng.uniform(-0.03, 0.03) for i in range(len(SCALES))]
    verdict = find_threshold(SCALES, curves(copy_ssim=copy))
    assert verdict.threshold == 0.8 and verdict.recommended == 0.7


def test_a_breach_at_the_first_step_recommends_the_lowest_scale():
    verdict = find_threshold(SCALES, curves(copy_ssim=[0.1] + [0.9] * 12))
    assert verdict.threshold == 0.1 and verdict.recommended == 0.0


def test_missing_measures_are_left_out_and_without_style_the_top_is_recommended():
    none = [None] * len(SCALES)
    verdict = find_threshold(SCALES, curves(clip_style=none, clip_text=none))
    assert verdict.threshold is None and verdict.recommended == 1.2
    with pytest.raises(ValueError, match="rising"):
        find_threshold([0.5, 0.2], curves())
    with pytest.raises(ValueError, match="'copy_ssim' has 2 points for 13 scales"):
        find_threshold(SCALES, curves(copy_ssim=[0.1, 0.2]))


def test_smoothing_keeps_ends_and_drops_single_spikes():
    assert smooth([0.0, 1.0, 0.0, 0.0]) == [0.0, 0.0, 0.0, 0.0]
    assert smooth([0.0, 0.0, 1.0, 1.0]) == [0.0, 0.0, 1.0, 1.0]
    assert smooth([None, 0.2, None]) == [None, 0.2, None]


def test_scale_means_average_each_measure_per_scale():
    rows = [{"ip_scale": 0.0, "copy_ssim": 0.2, "clip_style": None}, {"ip_scale": 0.0, "copy_ssim": 0.4, "clip_style": None},
            {"ip_scale": 0.5, "copy_ssim": 0.9, "clip_style": 0.3}]
    means = scale_means(rows, [0.0, 0.5])
    assert means["copy_ssim"] == pytest.approx([0.3, 0.9])
    assert means["clip_style"] == [None, 0.3]


# --------------------------------------------------------------------------- copying


def test_a_copy_of_the_reference_scores_high_and_an_unrelated_picture_low():
    reference = photo("astronaut", 128)
    copy = reference.resize((64, 64))
    unrelated = photo("coffee", 128).resize((64, 64))
    shifted = Image.fromarray(np.roll(np.asarray(reference.resize((64, 64))), 16, axis=1))
    high = copy_scores(copy, [reference])
    low = copy_scores(unrelated, [reference])
    assert high["copy_ssim"] > 0.9 and high["copy_patch"] > 0.9
    assert low["copy_ssim"] < 0.3 and low["copy_patch"] < 0.3
    # The patch match finds copied content where it moved; the global SSIM does not.
    moved = copy_scores(shifted, [reference])
    assert moved["copy_patch"] > 0.5 > moved["copy_ssim"]
    # The closest of several references counts.
    assert copy_scores(copy, [photo("coffee", 128), reference])["copy_ssim"] > 0.9


def test_flat_pictures_are_not_copies_of_each_other():
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    assert copy_scores(grey, [Image.new("RGB", (90, 60), (120, 120, 120))])["copy_patch"] == 0.0
    with pytest.raises(ValueError, match="at least one reference"):
        copy_scores(grey, [])


# --------------------------------------------------------------------------- probe and keys


def test_probe_checks_its_settings_and_sweeps():
    assert sweep(0.0, 1.2, 0.1) == DEFAULT_SCALES and len(DEFAULT_SCALES) == 13
    assert sweep(0.0, 1.0, 0.5) == (0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="at least two"):
        Probe(scales=(0.5,))
    with pytest.raises(ValueError, match="rise"):
        Probe(scales=(0.5, 0.2))
    with pytest.raises(ValueError, match="unknown probe shapes"):
        Probe(shapes=("teapot",))
    assert Probe().images_per_scale == 12
    for name in ("bottle", "box", "ball"):
        shape = probe_shape(name)
        alpha = np.asarray(shape)[..., 3]
        assert 0.1 < (alpha > 0).mean() < 0.6  # a cut-out with a background around it


def style(shas=("a",), weights=(1.0,), ip_scale=None, style_id="s") -> StyleSet:
    return StyleSet(style_id=style_id, ip_scale=ip_scale, references=tuple(
        Reference(key=f"s3://c/styles/{style_id}/{h}.png", sha256=h * 64, weight=w) for h, w in zip(shas, weights, strict=True)))


def test_scan_id_changes_with_the_references_profile_and_probe_only():
    probe = Probe(scales=(0.0, 0.5), width=64, height=64, steps=2)
    one = scan_id(style(), "tiny", "r1", probe)
    assert one == scan_id(style(), "tiny", "r1", probe)
    assert one == scan_id(style(ip_scale=0.3), "tiny", "r1", probe)  # the scale it is used at is not an input
    assert one != scan_id(style(shas=("b",)), "tiny", "r1", probe)  # a changed reference scans again
    assert one != scan_id(style(weights=(2.0,)), "tiny", "r1", probe)
    assert one != scan_id(style(), "sd15", "r1", probe)
    assert one != scan_id(style(), "tiny", "r2", probe)
    assert one != scan_id(style(), "tiny", "r1", Probe(scales=(0.0, 0.6), width=64, height=64, steps=2))
    assert references_key(style()) != references_key(style(shas=("b",)))


# --------------------------------------------------------------------------- ip_scale: auto

CAMPAIGN = "name: c\nmatrix: {template: '{product} on sand'}\ngeneration: {profile: tiny%s}\n"


def test_campaign_auto_takes_every_style_sets_scan():
    spec = parse_campaign(CAMPAIGN % ", ip_scale: auto")
    styles = [style(style_id="a"), style(style_id="b", ip_scale=0.9)]
    assert auto_style_ids(spec, styles) == ["a", "b"]
    chosen = apply_auto_scales(spec, styles, {"a": ScanChoice("scan-a", 0.4), "b": ScanChoice("scan-b", 0.7)}, "tiny")
    assert [(s.ip_scale, s.ip_scale_scan) for s in chosen] == [(0.4, "scan-a"), (0.7, "scan-b")]
    # Planned with those scales, each job naming its scan; an ip_scale axis would set its own.
    jobs = plan_jobs(spec, PRODUCTS[:1], chosen, expand_matrix(spec.matrix),
                     ModelIdentity(revision="r", dtype="float32"))
    assert [(j.params["ip_scale"], j.ip_scale_scan) for j in jobs] == [(0.4, "scan-a"), (0.7, "scan-b")]
    with pytest.raises(ValueError, match="ip_scale auto was not resolved"):
        plan_jobs(spec, PRODUCTS[:1], styles[:1], expand_matrix(spec.matrix),
                  ModelIdentity(revision="r", dtype="float32"))


def test_style_yaml_auto_applies_only_where_the_campaign_sets_no_scale():
    styles = [style(style_id="a", ip_scale="auto"), style(style_id="b", ip_scale=0.5)]
    plain = parse_campaign(CAMPAIGN % "")
    assert auto_style_ids(plain, styles) == ["a"]
    chosen = apply_auto_scales(plain, styles, {"a": ScanChoice("scan-a", 0.3)}, "tiny")
    assert [(s.ip_scale, s.ip_scale_scan) for s in chosen] == [(0.3, "scan-a"), (0.5, None)]
    fixed = parse_campaign(CAMPAIGN % ", ip_scale: 0.8")
    assert auto_style_ids(fixed, styles) == []
    chosen = apply_auto_scales(fixed, styles, {}, "tiny")
    assert chosen[0].ip_scale is None  # the campaign's 0.8 decides


def test_auto_without_a_scan_fails_naming_the_command():
    spec = parse_campaign(CAMPAIGN % ", ip_scale: auto")
    with pytest.raises(ValueError, match=r"run `stylematrix style scan a --profile tiny` first"):
        apply_auto_scales(spec, [style(style_id="a")], {"a": None}, "tiny")


def test_auto_is_refused_in_a_matrix_axis():
    with pytest.raises(ValueError, match="'auto' belongs in generation.ip_scale"):
        parse_campaign("name: c\nmatrix: {template: '{product}', axes: {ip_scale: [auto, 0.5]}}\n")


# --------------------------------------------------------------------------- the command line


def test_scan_command_reads_sweeps_and_refuses_bad_input_in_one_line(tmp_path):
    from flows.cli_style import parse_scales
    from tests.helpers import run_cli

    assert parse_scales("0:1.2:0.1") == list(DEFAULT_SCALES)
    assert parse_scales("0,0.4,0.8") == [0.0, 0.4, 0.8]
    with pytest.raises(ValueError, match="--scales 'lots': expected start:stop:step or a comma list"):
        parse_scales("lots")
    for args, message in ((["style", "scan"], "style scan: name one or more style set ids, or pass --all"),
                          (["style", "scan", "--all", "--scales", "0:x:1"], "--scales '0:x:1': expected"),
                          (["style", "scan", "a", "--all"], "style scan: name style set ids or pass --all, not both")):
        result = run_cli(args, {}, tmp_path, timeout=120)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"stylematrix: error: {message}"), result.stderr


def test_probe_follows_the_profile_and_the_request():
    from catalogs import load_profiles
    from tasks.style_scan import probe_for

    profiles = load_profiles()
    tiny, sd15 = probe_for(profiles["tiny"]), probe_for(profiles["sd15"])
    assert (tiny.width, tiny.steps) == (64, 2) and (sd15.width, sd15.steps) == (512, 20)
    assert tiny.scales == DEFAULT_SCALES and tiny.images_per_scale == 12
    asked = probe_for(profiles["sd15"], scales=[0.0, 0.5], seeds=[7], size=256, steps=4)
    assert (asked.scales, asked.seeds, asked.width, asked.height, asked.steps) == ((0.0, 0.5), (7,), 256, 256, 4)


def test_pick_styles_names_quarantined_and_missing_ids():
    from tasks.catalog_build import QuarantineEntry
    from tasks.style_scan import pick_styles

    styles = [style(style_id="a"), style(style_id="b")]
    assert [s.style_id for s in pick_styles(styles, [], ["b", "a"])] == ["b", "a"]
    quarantine = [QuarantineEntry(key="s3://c/styles/bad/", reason="styles/bad/x.png: not an image", kind="style",
                                  entry_id="bad")]
    with pytest.raises(ValueError, match=r"\['bad', 'gone'\] cannot be scanned \(bad: quarantined: styles/bad/x.png: "
                                         r"not an image; gone: not in the catalog\)"):
        pick_styles(styles, quarantine, ["a", "bad", "gone"])


def test_ip_scale_is_a_number_from_0_to_2_or_auto():
    from catalogs.models import StyleMeta

    assert parse_campaign(CAMPAIGN % ", ip_scale: auto").generation.ip_scale == "auto"
    assert StyleMeta.model_validate({"ip_scale": "auto"}).ip_scale == "auto"
    assert style(ip_scale="auto").model_dump(mode="json")["ip_scale"] == "auto"
    for bad in ("5", "lots", "true"):
        with pytest.raises(ValueError, match=r"generation.ip_scale: Value error, must be a number from 0 to 2, or auto"):
            parse_campaign(CAMPAIGN % f", ip_scale: {bad}")
