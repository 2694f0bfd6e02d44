"""Job planning: deterministic asset ids, selection, batching and sharding."""

from __future__ import annotations

import pytest

from catalogs import load_profiles, parse_campaign
from catalogs.models import Reference
from tasks.matrix import expand_matrix
from tasks.plan import (
    AssetInputs,
    ModelIdentity,
    asset_id,
    asset_ids,
    check_control_scales,
    choose_inputs,
    group_batches,
    maskless_products,
    plan_jobs,
    plan_shards,
)
from tests.helpers import PRODUCTS, ROOT, STYLES, campaign, plan


def test_one_job_per_product_style_cell_seed_with_unique_ids():
    spec = campaign()
    jobs = plan(spec)
    assert len(jobs) == 3 * 2 * spec.matrix.cell_count * len(spec.matrix.seed_list)
    assert len({j.asset_id for j in jobs}) == len(jobs)


def test_same_inputs_same_ids_and_every_input_changes_the_id():
    spec = campaign()
    base = [j.asset_id for j in plan(spec)]
    assert base == [j.asset_id for j in plan(campaign())]
    changed_product = [p.model_copy(update={"sha256": "f" * 64}) if p.product_id == "p0" else p for p in PRODUCTS]
    variants = {
        "model revision": plan(spec, revision="rev2"),
        "dtype": plan(spec, dtype="float16"),
        "product bytes": plan(spec, products=changed_product),
        "guidance": plan(spec.model_copy(update={"generation": spec.generation.model_copy(update={"guidance": 9.0})})),
        "negative": plan(spec.model_copy(update={"matrix": spec.matrix.model_copy(update={"negative": "ugly"})})),
    }
    for what, jobs in variants.items():
        ids = [j.asset_id for j in jobs]
        assert ids != base, f"changing the {what} did not change any asset id"
    # Only the product whose bytes changed gets new ids.
    moved = [a != b for a, b in zip(base, [j.asset_id for j in variants["product bytes"]], strict=True)]
    assert moved == [j.product_id == "p0" for j in plan(spec)]


def test_an_asset_id_never_changes_for_the_same_inputs():
    # Stored images are found by their asset id: if this id moves, every bucket's images are made again.
    inputs = AssetInputs(product_sha256="a" * 64, reference_sha256s=("b" * 64, "c" * 64), reference_weights=(1.0, 0.5),
                         prompt="a kettle on marble", negative_prompt="blurry",
                         params={"mode": "ip_adapter", "width": 64, "guidance": 5.0, "control_scales": {"canny": 0.8}},
                         profile="tiny", profile_revision="rev1", dtype="float32")
    assert asset_id(inputs, 7) == "b28679e171b79f80abe64623d28322b4"
    assert asset_ids(inputs, [7, 8]) == [asset_id(inputs, 7), asset_id(inputs, 8)]
    jobs = plan(campaign())
    assert jobs[0].asset_id == "59ea4b2b38b2a57b786b4c20266c45b2"
    assert jobs[-1].asset_id == "1b6b5326e9289c5f1d1c2151b2ea8c92"


def test_style_default_ip_scale_applies_unless_campaign_sets_one():
    spec = parse_campaign("name: c\nmatrix: {template: '{product}'}\ngeneration: {profile: tiny}\n")
    jobs = plan(spec)
    assert {j.params["ip_scale"] for j in jobs if j.style_id == "three"} == {0.3}
    assert {j.params["ip_scale"] for j in jobs if j.style_id == "one"} == {0.6}
    explicit = parse_campaign("name: c\nmatrix: {template: '{product}'}\ngeneration: {profile: tiny, ip_scale: 0.9}\n")
    assert {j.params["ip_scale"] for j in plan(explicit)} == {0.9}


def test_planning_needs_a_decided_profile():
    spec = parse_campaign("name: c\nmatrix: {template: '{product}'}\n")
    with pytest.raises(ValueError, match="no model profile"):
        plan(spec)


def test_batches_share_control_style_and_params_and_respect_size():
    spec = campaign()
    jobs = plan(spec)
    batches = group_batches(jobs, 3)
    assert [j for b in batches for j in b.jobs] == jobs  # planning order is kept
    assert sum(len(b.jobs) for b in batches) == len(jobs)
    for b in batches:
        assert 1 <= len(b.jobs) <= 3
        assert {(j.product_id, j.style_id) for j in b.jobs} == {(b.product_id, b.style_id)}
    # 8 jobs per (product, style) -> 3 + 3 + 2, for 6 pairs.
    assert len(batches) == 6 * 3
    assert [b.index for b in batches] == list(range(len(batches)))


def test_shards_pack_whole_batches_and_carry_their_catalog_entries():
    spec = campaign()
    batches = group_batches(plan(spec), 8)
    shards = plan_shards(batches, PRODUCTS, STYLES, images_per_shard=20)
    assert [s.image_count for s in shards] == [16, 16, 16]
    assert [b for s in shards for b in s.batches] == batches
    for s in shards:
        assert set(s.products) == {b.product_id for b in s.batches}
        assert set(s.styles) == {b.style_id for b in s.batches}


def test_select_by_ids_and_tags_with_clear_errors():
    spec = parse_campaign("name: c\nproducts: {tags: [kitchen]}\nstyles: {ids: [three]}\nmatrix: {template: '{product}'}\n")
    products, styles, left_out = choose_inputs(spec, PRODUCTS, STYLES)
    assert [p.product_id for p in products] == ["p1"] and [s.style_id for s in styles] == ["three"] and left_out == {}
    missing = parse_campaign("name: c\nstyles: {ids: [three, nope]}\nmatrix: {template: '{product}'}\n")
    with pytest.raises(ValueError, match=r"style set ids \['nope'\] are not in the catalog"):
        choose_inputs(missing, PRODUCTS, STYLES, strict=True)
    none = parse_campaign("name: c\nproducts: {tags: [toys]}\nmatrix: {template: '{product}'}\n")
    with pytest.raises(ValueError, match="no product in the catalog matches"):
        choose_inputs(none, PRODUCTS, STYLES)


def test_sample_campaign_meets_the_demo_minimum():
    spec = campaign()
    assert len(spec.products.ids) >= 2 and len(spec.styles.ids) >= 2
    assert spec.matrix.cell_count >= 4 and len(spec.matrix.seed_list) >= 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("name: Bad Name\nmatrix: {template: x}\n", "campaign 'Bad Name': name"),
        ("name: c\nmatrix: {template: '{product} {s}', axes: {s: []}}\n", "axis 's' is empty"),
        ("name: c\nmatrix: {template: x}\ngeneration: {width: 100}\n", "generation.width"),
        ("name: c\nmatrix: {template: x}\ngeneration: {canny_low: 200, canny_high: 100}\n", "canny_low 200 is above"),
        ("name: c\nmatrix: {template: x}\ncolour: red\n", "colour: Extra inputs"),
    ],
)
def test_bad_campaign_file_gives_one_clear_line(text, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_campaign(text, origin="spring.yaml")
    assert str(err.value).startswith("spring.yaml: ")
    assert "\n" not in str(err.value).strip() or "YAML" in str(err.value)


# --------------------------------------------------------------------------- generation controls in the plan


def spec_of(text: str):
    return parse_campaign("name: c\n" + text)


def test_parameter_axes_set_each_cell_s_parameters_and_split_batches():
    spec = spec_of("matrix: {template: '{product}', axes: {ip_scale: [0.2, 0.9], guidance: [3, 8], steps: [4, 6]}}\n"
                   "generation: {profile: tiny}\n")
    jobs = plan(spec, products=PRODUCTS[:1], styles=STYLES[:1])
    assert [(j.params["ip_scale"], j.params["guidance"], j.params["steps"]) for j in jobs] == [
        (0.2, 3.0, 4), (0.2, 3.0, 6), (0.2, 8.0, 4), (0.2, 8.0, 6), (0.9, 3.0, 4), (0.9, 3.0, 6), (0.9, 8.0, 4), (0.9, 8.0, 6),
    ]
    assert len(group_batches(jobs, 8)) == 8  # a pipeline call shares its parameters
    assert jobs[0].cell == {"ip_scale": "0.2", "guidance": "3", "steps": "4"}


def test_parameter_axis_values_are_checked_when_the_spec_is_read():
    with pytest.raises(ValueError, match=r"matrix axis 'ip_scale': value 3: Input should be less than or equal to 2"):
        spec_of("matrix: {template: '{product}', axes: {ip_scale: [0.5, 3]}}\n")
    with pytest.raises(ValueError, match="matrix axis 'mode': value 'inpaint'"):
        spec_of("matrix: {template: '{product}', axes: {mode: [inpaint]}}\n")
    # Values that only clash with another setting are caught per cell when planning.
    clash = spec_of("matrix: {template: '{product}', axes: {ip_start: [0.1, 0.9]}}\ngeneration: {profile: tiny, ip_end: 0.5}\n")
    with pytest.raises(ValueError, match=r"cell ip_start=0.9: .*ip_start 0.9 is after ip_end 0.5"):
        plan(clash)


def test_style_axis_picks_the_style_set_per_cell_and_zips_with_words():
    spec = spec_of("matrix: {template: '{product}, {light}', axes: {style: [three, one], light: [dawn, dusk]}, "
                   "zip: [[style, light]]}\ngeneration: {profile: tiny}\n")
    products, styles, _ = choose_inputs(spec, PRODUCTS, STYLES)
    assert [s.style_id for s in styles] == ["three", "one"]
    jobs = plan(spec, products=products[:1], styles=styles)
    assert [(j.style_id, j.prompt) for j in jobs] == [("three", "product 0, dawn"), ("one", "product 0, dusk")]
    with pytest.raises(ValueError, match="matrix axis 'style' picks the style sets: leave `styles` empty"):
        spec_of("styles: {ids: [one]}\nmatrix: {template: '{product}', axes: {style: [one]}}\n")
    with pytest.raises(ValueError, match=r"style set ids \['gone'\] are not in the catalog"):
        choose_inputs(spec_of("matrix: {template: '{product}', axes: {style: [one, gone]}}\n"), PRODUCTS, STYLES,
                      strict=True)
    # Not strict: the axis keeps the style sets that exist, the cells of the missing one are not planned.
    products, styles, left_out = choose_inputs(
        spec_of("matrix: {template: '{product}', axes: {style: [one, gone]}}\ngeneration: {profile: tiny}\n"),
        PRODUCTS, STYLES)
    assert [s.style_id for s in styles] == ["one"] and left_out == {"style set gone": "not in the catalog"}


def test_a_named_entry_that_is_quarantined_is_left_out_with_its_reason_unless_strict():
    from tasks.catalog_build import QuarantineEntry

    spec = parse_campaign("name: c\nproducts: {ids: [p0, p9]}\nstyles: {ids: [three, bad]}\nmatrix: {template: '{product}'}\n")
    quarantine = [QuarantineEntry(key="s3://c/styles/bad/", reason="styles/bad/b.jpg: truncated JPEG", kind="style",
                                  entry_id="bad")]
    products, styles, left_out = choose_inputs(spec, PRODUCTS, STYLES, quarantine)
    assert [p.product_id for p in products] == ["p0"] and [s.style_id for s in styles] == ["three"]
    assert left_out == {"product p9": "not in the catalog",
                        "style set bad": "quarantined: styles/bad/b.jpg: truncated JPEG"}
    with pytest.raises(ValueError, match=r"product ids \['p9'\] are not in the catalog"):
        choose_inputs(spec, PRODUCTS, STYLES, quarantine, strict=True)
    only_bad = parse_campaign("name: c\nstyles: {ids: [bad]}\nmatrix: {template: '{product}'}\n")
    with pytest.raises(ValueError, match=r"no style set in the catalog .*left out: \['bad'\].*nothing left to generate"):
        choose_inputs(only_bad, PRODUCTS, STYLES, quarantine)


def test_style_set_controls_become_parameters_and_change_the_ids():
    spec = spec_of("matrix: {template: '{product}'}\ngeneration: {profile: tiny}\n")
    base = plan(spec, products=PRODUCTS[:1], styles=STYLES[1:])
    three = STYLES[1]
    variants = {
        "combine": three.model_copy(update={"combine": "weighted"}),
        "preset": three.model_copy(update={"preset": "style-only"}),
        "negative": three.model_copy(update={"negative": Reference(key="s3://c/neg.png", sha256="e" * 64)}),
    }
    for what, style in variants.items():
        (job,) = plan(spec, products=PRODUCTS[:1], styles=[style])
        assert job.asset_id != base[0].asset_id, what
    assert plan(spec, products=PRODUCTS[:1], styles=[variants["preset"]])[0].params["ip_preset"] == "style-only"
    assert plan(spec, products=PRODUCTS[:1], styles=[variants["negative"]])[0].params["negative_reference"] == "e" * 64
    explicit = spec_of("matrix: {template: '{product}'}\ngeneration: {profile: tiny, ip_preset: layout-only}\n")
    assert plan(explicit, products=PRODUCTS[:1], styles=[variants["preset"]])[0].params["ip_preset"] == "layout-only"


def test_modes_get_their_default_strength_and_preserve_skips_maskless_products():
    spec = spec_of("matrix: {template: '{product}', axes: {mode: [ip_adapter, img2img, preserve]}}\ngeneration: {profile: tiny}\n")
    masked = PRODUCTS[0].model_copy(update={"mask_source": "alpha"})
    jobs = plan(spec, products=[masked, PRODUCTS[1]], styles=STYLES[:1])
    assert [(j.product_id, j.params["mode"], j.params["strength"]) for j in jobs] == [
        ("p0", "ip_adapter", 1.0), ("p0", "img2img", 0.75), ("p0", "preserve", 1.0),
        ("p1", "ip_adapter", 1.0), ("p1", "img2img", 0.75),
    ]
    assert list(maskless_products(spec, [masked, PRODUCTS[1]])) == ["p1"]
    assert maskless_products(campaign(), PRODUCTS) == {}


def test_profile_decides_which_controlnet_and_adapter_scales_exist():
    profiles = load_profiles()
    spec = spec_of("matrix: {template: '{product}'}\n"
                   "generation: {profile: tiny-multi, controlnet_scale: 0.8, control_scales: {depth: 0.3}}\n")
    (job,) = plan_jobs(spec, PRODUCTS[:1], STYLES[:1], expand_matrix(spec.matrix),
                       ModelIdentity(revision="r", dtype="float32", profile=profiles["tiny-multi"]))
    assert job.params["control_scales"] == {"canny": 0.8, "depth": 0.3}
    assert job.params["product_ip_scale"] == job.params["ip_scale"] == 0.6
    with pytest.raises(ValueError, match=r"control_scales names \['depth'\], but the profile's ControlNets take \['canny'\]"):
        plan_jobs(spec, PRODUCTS[:1], STYLES[:1], expand_matrix(spec.matrix),
                  ModelIdentity(revision="r", dtype="float32", profile=profiles["tiny"]))


def test_controlnet_scale_axis_that_control_scales_overrides_everywhere_is_refused():
    profiles = load_profiles()
    axis = "matrix: {template: '{product}', axes: {controlnet_scale: [0.3, 1.2]}}\n"
    # One ControlNet, fixed by control_scales: both cells would be the same picture under two ids.
    fixed = spec_of(axis + "generation: {profile: tiny, control_scales: {canny: 0.5}}\n")
    message = r"campaign 'c': axis 'controlnet_scale' would change nothing: generation.control_scales sets .*\['canny'\]"
    with pytest.raises(ValueError, match=message):
        check_control_scales(fixed, profiles["tiny"])
    with pytest.raises(ValueError, match=message):
        plan_jobs(fixed, PRODUCTS[:1], STYLES[:1], expand_matrix(fixed.matrix),
                  ModelIdentity(revision="r", dtype="float32", profile=profiles["tiny"]))
    both = spec_of(axis + "generation: {profile: tiny-multi, control_scales: {canny: 0.5, depth: 0.3}}\n")
    with pytest.raises(ValueError, match=r"axis 'controlnet_scale' would change nothing.*\['canny', 'depth'\]"):
        check_control_scales(both, profiles["tiny-multi"])
    # control_scales naming some ControlNets wins for those; the axis scales the others.
    depth = spec_of(axis + "generation: {profile: tiny-multi, control_scales: {depth: 0.3}}\n")
    assert check_control_scales(depth, profiles["tiny-multi"]) == ("canny", "depth")
    jobs = plan_jobs(depth, PRODUCTS[:1], STYLES[:1], expand_matrix(depth.matrix),
                     ModelIdentity(revision="r", dtype="float32", profile=profiles["tiny-multi"]))
    assert [j.params["control_scales"] for j in jobs] == [{"canny": 0.3, "depth": 0.3}, {"canny": 1.2, "depth": 0.3}]
    # Without the axis, control_scales over every ControlNet is fine.
    check_control_scales(spec_of("matrix: {template: '{product}'}\ngeneration: {control_scales: {canny: 0.5}}\n"),
                         profiles["tiny"])


def test_example_spec_with_every_control_parses_and_plans():
    text = (ROOT / "catalogs" / "examples" / "every-control.yaml").read_text()
    assert f"```yaml\n{text}```" in (ROOT / "docs" / "campaign-spec.md").read_text(), "the doc shows the file as it is"
    spec = parse_campaign(text, origin="every-control.yaml")
    assert spec.matrix.cell_count == 96
    assert spec.matrix.zip == (("surface", "lighting"), ("ip_scale", "controlnet_scale", "guidance", "steps"))
    gen = spec.generation
    assert gen.negative_reference and gen.control_scales and gen.product_ip_scale is not None and gen.ip_end < 1
    products = [p.model_copy(update={"mask_source": "alpha" if i == 0 else "none"}) for i, p in enumerate(PRODUCTS[:2])]
    styles = [s.model_copy(update={"style_id": sid}) for s, sid in zip(STYLES, ("space-age", "earthy-textures"), strict=True)]
    jobs = plan_jobs(spec, products, styles, expand_matrix(spec.matrix),
                     ModelIdentity(revision="r", dtype="float32", profile=load_profiles()[gen.profile]))
    # 96 cells x 2 seeds for the masked product; the maskless one gets its ip_adapter and img2img two thirds.
    assert len(jobs) == 96 * 2 + 64 * 2
    assert {j.params["ip_preset"] for j in jobs} == {"style-only"}
    assert {j.cell["optional"] for j in jobs} == {"", "high detail", "film grain", "high detail | film grain"}
