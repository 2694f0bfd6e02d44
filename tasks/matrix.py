"""Prompt-matrix expansion: every cell of a matrix, in a stable order."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from catalogs.models import Product, PromptMatrix


@dataclass(frozen=True)
class Cell:
    """One combination of axis values; `values` keeps the axes' declared order."""

    index: int
    values: tuple[tuple[str, str], ...]

    def as_dict(self) -> dict[str, str]:
        return dict(self.values)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values) or "(single cell)"


def expand_matrix(matrix: PromptMatrix) -> list[Cell]:
    """Every cell of the matrix: the cartesian product of its axes, first axis slowest.

    Raises:
        ValueError: the matrix makes more cells than its `max_cells` limit (checked
            before anything is expanded).
    """
    n = matrix.cell_count
    if n > matrix.max_cells:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in matrix.axes.items())
        raise ValueError(f"prompt matrix makes {n} cells ({sizes}), over its limit of {matrix.max_cells} (max_cells)")
    names = list(matrix.axes)
    combos = itertools.product(*(matrix.axes[name] for name in names))
    return [Cell(index=i, values=tuple(zip(names, combo, strict=True))) for i, combo in enumerate(combos)]


def render_prompt(template: str, cell: Cell, product: Product) -> str:
    """The template with the cell's values and the product's title and category filled in."""
    fields = {"product": product.title, "category": product.category or product.title, **cell.as_dict()}
    return template.format_map(fields)
