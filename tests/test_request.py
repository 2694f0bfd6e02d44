"""Run requests: the overrides a UI form or the CLI may apply to a campaign."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from catalogs import load_profiles, parse_campaign, sample_campaign_text
from catalogs.models import Product, Reference, RunRequest, StyleSet
from tasks.request import apply_request, narrow

SPEC = parse_campaign(sample_campaign_text())
PROFILES = load_profiles()


def apply(campaign, request, default):
    return apply_request(campaign, request, default, PROFILES)[0]


def test_no_overrides_keeps_the_campaign():
    assert apply(SPEC, RunRequest(campaign="sample"), "sd15") == SPEC


def test_axes_and_seeds_are_replaced_and_validated():
    spec = apply(SPEC, RunRequest(campaign="sample", axes={"surface": ("slate",)}, seeds=(5, 6, 7)), "tiny")
    assert spec.matrix.axes["surface"] == ("slate",)
    assert spec.matrix.axes["lighting"] == SPEC.matrix.axes["lighting"]
    assert spec.matrix.seed_list == (5, 6, 7) and spec.matrix.cell_count == 2
    with pytest.raises(ValueError, match=r"axes \['colour'\] that the matrix does not have"):
        apply(SPEC, RunRequest(campaign="sample", axes={"colour": ("red",)}), "tiny")
    with pytest.raises(ValueError, match="invalid matrix.*axis 'surface' is empty"):
        apply(SPEC, RunRequest(campaign="sample", axes={"surface": ()}), "tiny")


def test_profile_override_then_campaign_then_setting():
    assert apply(SPEC, RunRequest(campaign="s", profile="sd15"), "x").generation.profile == "sd15"
    assert apply(SPEC, RunRequest(campaign="s"), "x").generation.profile == "tiny"
    spec, profile = apply_request(SPEC, RunRequest(campaign="s", profile="sdxl"), "tiny", PROFILES)
    assert spec.generation.profile == profile.name == "sdxl"
    bare = parse_campaign("name: c\nmatrix: {template: '{product}'}\n")
    assert apply(bare, RunRequest(campaign="c"), "sd15").generation.profile == "sd15"


def test_an_unknown_profile_is_refused_in_one_line_naming_the_campaign():
    # A UI or API run names the profile in its request; the flow resolves it here, before anything is read.
    with pytest.raises(ValueError, match=r"^campaign 'sample-spring': unknown model profile 'sd99'; known: \[.*'tiny'"):
        apply_request(SPEC, RunRequest(campaign="sample", profile="sd99"), "tiny", PROFILES)
    bare = parse_campaign("name: c\nmatrix: {template: '{product}'}\n")
    with pytest.raises(ValueError, match="unknown model profile 'nope'"):
        apply_request(bare, RunRequest(campaign="c"), "nope", PROFILES)


def test_narrow_to_requested_ids_only_within_the_selection():
    products = [Product(product_id=i, image_key=f"s3://c/{i}.png", title=i) for i in ("a", "b", "c")]
    styles = [StyleSet(style_id=i, references=(Reference(key=f"s3://c/{i}.png"),)) for i in ("x", "y")]
    p, s = narrow(RunRequest(campaign="c", products=("c", "a")), products, styles)
    assert [i.product_id for i in p] == ["a", "c"] and s == styles
    with pytest.raises(ValueError, match=r"product ids \['zz'\], which the campaign does not select"):
        narrow(RunRequest(campaign="c", products=("zz",)), products, styles)


def test_request_refuses_unknown_fields_and_triggers():
    with pytest.raises(ValidationError):
        RunRequest(campaign="c", topk=3)
    with pytest.raises(ValidationError):
        RunRequest(campaign="c", triggered_by="cron")
