"""Prompt-matrix expansion: order, substitution, limits and clear errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from catalogs.models import Product, PromptMatrix
from tasks.matrix import cell_record, expand_matrix, render_prompt

PRODUCT = Product(product_id="kettle", image_key="s3://c/products/kettle/image.png", title="a steel kettle", category="kitchen")


def test_cartesian_product_in_stable_order_first_axis_slowest():
    m = PromptMatrix(template="{product} on {surface}, {light}", axes={"surface": ("marble", "sand"), "light": ("dawn", "noon", "dusk")})
    cells = expand_matrix(m)
    assert [c.index for c in cells] == list(range(6))
    assert [c.as_dict() for c in cells[:4]] == [
        {"surface": "marble", "light": "dawn"},
        {"surface": "marble", "light": "noon"},
        {"surface": "marble", "light": "dusk"},
        {"surface": "sand", "light": "dawn"},
    ]
    assert expand_matrix(m) == cells  # same spec, same cells


def test_prompt_filled_from_cell_and_product():
    m = PromptMatrix(template="{product} ({category}) on {surface}", axes={"surface": ("marble",)})
    (cell,) = expand_matrix(m)
    assert render_prompt(m.template, cell, PRODUCT) == "a steel kettle (kitchen) on marble"


def test_no_axes_is_one_cell():
    cells = expand_matrix(PromptMatrix(template="{product} on white"))
    assert len(cells) == 1 and cells[0].as_dict() == {}


def test_limit_refuses_oversized_matrix_naming_the_count():
    m = PromptMatrix(template="{a} {b}", axes={"a": tuple("abcde"), "b": tuple("vwxyz")}, max_cells=10)
    with pytest.raises(ValueError, match=r"makes 25 cells \(5 a x 5 b\), over its limit of 10"):
        expand_matrix(m)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"template": "{product} on {surface}", "axes": {"surface": ()}}, "axis 'surface' is empty"),
        ({"template": "{product} on {surfce}", "axes": {"surface": ("x",)}}, "template uses \\['surfce'\\]"),
        ({"template": "{product}", "axes": {"surface": ("x",)}}, "not used in the template"),
        ({"template": "{product} {x}", "axes": {"x": ("a", "a")}}, "repeats a value"),
        ({"template": "{product}", "seeds": []}, "seeds list is empty"),
        ({"template": "{product}", "seeds": 0}, "seed count must be at least 1"),
        ({"template": "{product} {x!r}", "axes": {"x": ("a",)}}, "plain name"),
        ({"template": "{product}", "axes": {"product": ("a",)}}, "reserved"),
    ],
)
def test_bad_matrix_is_refused_with_a_reason(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        PromptMatrix(**kwargs)


def test_seed_count_expands_to_first_n_seeds():
    assert PromptMatrix(template="x", seeds=3).seed_list == (0, 1, 2)
    assert PromptMatrix(template="x", seeds=[7, 3]).seed_list == (7, 3)


# --------------------------------------------------------------------------- zip groups, parameter axes, optional parts


def test_zip_group_pairs_axes_instead_of_multiplying():
    m = PromptMatrix(
        template="{product} on {surface}, {lighting}, {season}",
        axes={"surface": ("marble", "sand", "snow"), "season": ("spring", "winter"), "lighting": ("dawn", "noon", "dusk")},
        zip=(("surface", "lighting"),),
    )
    cells = expand_matrix(m)
    assert m.cell_count == len(cells) == 3 * 2  # not 3 x 3 x 2
    pairs = {(c.as_dict()["surface"], c.as_dict()["lighting"]) for c in cells}
    assert pairs == {("marble", "dawn"), ("sand", "noon"), ("snow", "dusk")}
    # The group sits at its first axis: surface (with lighting) slowest, then season.
    assert [c.as_dict()["season"] for c in cells[:2]] == ["spring", "winter"]
    assert [list(c.as_dict()) for c in cells[:1]] == [["surface", "season", "lighting"]]


@pytest.mark.parametrize(
    ("zip_groups", "message"),
    [
        ((("surface", "light"),), r"zipped axes need the same number of values \(surface has 2, light has 3\)"),
        ((("surface", "colour"),), "names 'colour', which is not an axis"),
        ((("surface",),), "needs at least two axes"),
        ((("surface", "x"), ("x", "light")), "more than one zip group"),
    ],
)
def test_bad_zip_group_is_refused(zip_groups, message):
    with pytest.raises(ValidationError, match=message):
        PromptMatrix(template="{surface} {light} {x}", axes={"surface": ("a", "b"), "light": ("1", "2", "3"), "x": ("y", "z")},
                     zip=zip_groups)


def test_parameter_axes_set_parameters_and_need_no_placeholder():
    m = PromptMatrix(template="{product} on {surface}", axes={"surface": ("marble",), "ip_scale": (0.3, 0.9), "steps": (10, 20)})
    cells = expand_matrix(m)
    assert len(cells) == 4
    assert [c.params for c in cells] == [
        {"ip_scale": 0.3, "steps": 10}, {"ip_scale": 0.3, "steps": 20}, {"ip_scale": 0.9, "steps": 10}, {"ip_scale": 0.9, "steps": 20},
    ]
    assert render_prompt(m.template, cells[3], PRODUCT) == "a steel kettle on marble"  # words only
    assert cells[3].as_dict() == {"surface": "marble", "ip_scale": "0.9", "steps": "20"}  # the table's text form


def test_word_axes_are_text_even_when_yaml_reads_numbers():
    m = PromptMatrix(template="{product} in size {size}", axes={"size": (10, 12)})
    assert m.axes["size"] == ("10", "12")
    assert render_prompt(m.template, expand_matrix(m)[1], PRODUCT) == "a steel kettle in size 12"


def test_optional_parts_follow_automatic1111():
    """`a|b|c`: every subset of the optional parts, in A1111's order (the bit of part k counts in binary)."""
    m = PromptMatrix(template="{product} on {surface}|cinematic lighting|film grain, ", axes={"surface": ("marble", "sand")})
    cells = expand_matrix(m)
    assert m.cell_count == len(cells) == 2 * 4
    assert [render_prompt(m.template, c, PRODUCT) for c in cells[:4]] == [
        "a steel kettle on marble",
        "a steel kettle on marble, cinematic lighting",
        "a steel kettle on marble, film grain",
        "a steel kettle on marble, cinematic lighting, film grain",
    ]
    assert cell_record(cells[3], m) == {"surface": "marble", "optional": "cinematic lighting | film grain"}
    assert cell_record(cells[4], m) == {"surface": "sand", "optional": ""}
    with pytest.raises(ValidationError, match="empty optional part"):
        PromptMatrix(template="{product}||grain")
    with pytest.raises(ValidationError, match="repeats an optional part"):
        PromptMatrix(template="{product}|grain|grain")


def test_optional_parts_may_hold_placeholders():
    m = PromptMatrix(template="{product}|on {surface}", axes={"surface": ("marble",)})
    assert [render_prompt(m.template, c, PRODUCT) for c in expand_matrix(m)] == ["a steel kettle", "a steel kettle, on marble"]


def test_limit_counts_zip_groups_and_optional_parts():
    m = PromptMatrix(template="{a} {b} {c}|x|y|z", axes={"a": tuple("abcd"), "b": tuple("efgh"), "c": tuple("ijk")},
                     zip=(("a", "b"),), max_cells=64)
    with pytest.raises(ValueError, match=r"makes 96 cells \(4 a\+b \(zipped\) x 3 c x 8 optional-part combinations\), "
                                         r"over its limit of 64"):
        expand_matrix(m)
