"""Job planning: deterministic asset ids, selection, batching and sharding."""

from __future__ import annotations

import pytest

from catalogs import parse_campaign, sample_campaign_text
from catalogs.models import Product, Reference, StyleSet
from tasks.matrix import expand_matrix
from tasks.plan import group_batches, plan_jobs, plan_shards, select

PRODUCTS = [
    Product(product_id=f"p{i}", image_key=f"s3://c/products/p{i}/image.png", title=f"product {i}",
            sha256=f"{i:064x}", tags=("kitchen",) if i % 2 else ("garden",))
    for i in range(3)
]
STYLES = [
    StyleSet(style_id="one", references=(Reference(key="s3://c/styles/one/a.png", sha256="a" * 64),)),
    StyleSet(style_id="three", ip_scale=0.3, references=tuple(
        Reference(key=f"s3://c/styles/three/{n}.png", sha256=n * 64, weight=w) for n, w in (("b", 1.0), ("c", 0.5), ("d", 2.0)))),
]


def campaign(**overrides):
    text = sample_campaign_text()
    spec = parse_campaign(text)
    return spec.model_copy(update=overrides) if overrides else spec


def plan(spec, products=PRODUCTS, styles=STYLES, revision="rev1", dtype="float32"):
    return plan_jobs(spec, products, styles, expand_matrix(spec.matrix), profile_revision=revision, dtype=dtype)


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
    moved = [a != b for a, b in zip(base, [j.asset_id for j in variants["product bytes"]])]
    assert moved == [j.product_id == "p0" for j in plan(spec)]


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
    products, styles = select(spec, PRODUCTS, STYLES)
    assert [p.product_id for p in products] == ["p1"] and [s.style_id for s in styles] == ["three"]
    missing = parse_campaign("name: c\nstyles: {ids: [three, nope]}\nmatrix: {template: '{product}'}\n")
    with pytest.raises(ValueError, match=r"style set ids \['nope'\] are not in the catalog"):
        select(missing, PRODUCTS, STYLES)
    none = parse_campaign("name: c\nproducts: {tags: [toys]}\nmatrix: {template: '{product}'}\n")
    with pytest.raises(ValueError, match="no product in the catalog matches"):
        select(none, PRODUCTS, STYLES)


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
