"""Prompt-matrix expansion: every cell of a matrix, in a stable order.

Order: the matrix's units (lone axes, or zip groups at their first axis) in declared order,
first unit slowest, then the optional-part combinations fastest. Optional parts follow
AUTOMATIC1111's prompt matrix: with `base|b|c`, combination k switches on the parts whose
bit is set in k (none, b, c, b+c), and the prompt is the base and those parts joined by ", ".
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from catalogs.models import OPTIONAL_KEY, PARAMETER_AXES, AxisValue, Product, PromptMatrix, split_optional


@dataclass(frozen=True)
class Cell:
    """One combination of axis values (declared axis order) and optional parts switched on."""

    index: int
    values: tuple[tuple[str, AxisValue], ...]
    parts: tuple[str, ...] = ()  # the optional parts switched on, template text, in template order

    def as_dict(self) -> dict[str, str]:
        """Axis name -> value as text (what the template is filled with)."""
        return {k: str(v) for k, v in self.values}

    @property
    def params(self) -> dict[str, AxisValue]:
        """The generation parameters this cell sets (parameter axes only), typed."""
        return {k: v for k, v in self.values if k in PARAMETER_AXES}

    @property
    def label(self) -> str:
        items = [f"{k}={v}" for k, v in self.values]
        if self.parts:
            items.append("+" + " +".join(self.parts))
        return ", ".join(items) or "(single cell)"


def cell_record(cell: Cell, matrix: PromptMatrix) -> dict[str, str]:
    """What the `cell` column holds: every axis value as text, and the optional parts when there are any."""
    record = cell.as_dict()
    if matrix.optional_parts:
        record[OPTIONAL_KEY] = " | ".join(cell.parts)
    return record


def expand_matrix(matrix: PromptMatrix) -> list[Cell]:
    """Every cell of the matrix, in a stable order.

    Raises:
        ValueError: the matrix makes more cells than its `max_cells` limit (checked
            before anything is expanded), naming how many it makes and why.
    """
    n = matrix.cell_count
    if n > matrix.max_cells:
        raise ValueError(f"prompt matrix makes {n} cells ({_sizes(matrix)}), over its limit of {matrix.max_cells} (max_cells)")
    units = matrix.axis_groups
    order = {name: i for i, name in enumerate(matrix.axes)}
    rows_per_unit = [list(zip(*(matrix.axes[name] for name in unit), strict=True)) for unit in units]
    optional = matrix.optional_parts
    subsets = [tuple(p for bit, p in enumerate(optional) if k & (1 << bit)) for k in range(2 ** len(optional))]
    cells = []
    for combo in itertools.product(*rows_per_unit):
        pairs = [(name, value) for unit, row in zip(units, combo, strict=True) for name, value in zip(unit, row, strict=True)]
        values = tuple(sorted(pairs, key=lambda kv: order[kv[0]]))
        for parts in subsets:
            cells.append(Cell(index=len(cells), values=values, parts=parts))
    return cells


def render_prompt(template: str, cell: Cell, product: Product) -> str:
    """The prompt of one cell: base and switched-on optional parts, with axis values and product filled in."""
    fields = {"product": product.title, "category": product.category or product.title, **cell.as_dict()}
    base, parts = split_optional(template)
    if not parts:
        return template.format_map(fields)
    chosen = [base] + [p for p in parts if p in cell.parts]
    return ", ".join(piece.format_map(fields) for piece in chosen)


def _sizes(matrix: PromptMatrix) -> str:
    sizes = []
    for unit in matrix.axis_groups:
        count = len(matrix.axes[unit[0]])
        sizes.append(f"{count} {unit[0]}" if len(unit) == 1 else f"{count} {'+'.join(unit)} (zipped)")
    if matrix.optional_parts:
        sizes.append(f"{2 ** len(matrix.optional_parts)} optional-part combinations")
    return " x ".join(sizes)
