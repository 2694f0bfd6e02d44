"""Prompt-matrix expansion: order, substitution, limits and clear errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from catalogs.models import Product, PromptMatrix
from tasks.matrix import expand_matrix, render_prompt

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
