"""A run's table rows held as columns: `Rows`, a sequence of read-only row mappings over one Arrow table.

What a run's rows cost, per image, in the campaign's process: a `generations` row as a Python dict of its
99 columns is about 9 KB; the same row in Arrow is about 2 KB. Selection, the reports and the commit read
the run's rows after generation, every row at once, so at 100,000 images the dicts were about 1 GB. Here
the rows stay in Arrow and each row is a view (`Row`: the table and an index, 56 bytes). A column is made
into Python values the first time any row reads it, once for every row, and kept: strings and lists
that repeat (a product id, a prompt, a matrix cell) are one object however many rows share them.

A row reads as `pandas.DataFrame.to_dict("records")` would give it (what the run's code was written
against): a missing float, or any value of an integer column that has a missing one, is NaN; other
missing values are None; a map is a list of (key, value) pairs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar, overload

import pyarrow as pa
import pyarrow.compute as pc

T = TypeVar("T")
REPEATS = 4  # a string column whose values repeat this many times on average is stored once per value


def compact(table: pa.Table) -> pa.Table:
    """`table` with each string column whose values mostly repeat (a prompt, a product's key, a run id) stored
    once per distinct value (Arrow's dictionary encoding); `Rows.table.cast(schema)` gives the plain columns back."""
    for i, field in enumerate(table.schema):
        column = table.column(i)
        if pa.types.is_string(field.type) and len(column) and pc.count_distinct(column).as_py() * REPEATS <= len(column):
            table = table.set_column(i, field.name, pc.dictionary_encode(column).combine_chunks())
    return table


class Indexed(Sequence[T]):
    """A sequence whose items are made as they are read, from an index (`_item(i)`, 0 <= i < len): the indexing,
    negative indices, slices and iteration of `Rows`, `Columns` and `tasks.consistency.Looks` in one place."""

    __slots__ = ()

    def _item(self, i: int) -> T:
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> T: ...

    @overload
    def __getitem__(self, i: slice) -> list[T]: ...

    def __getitem__(self, i: int | slice) -> T | list[T]:
        n = len(self)
        if isinstance(i, slice):
            return [self._item(j) for j in range(*i.indices(n))]
        if not -n <= i < n:
            raise IndexError(f"{i} of {n}")
        return self._item(i % n)

    def __iter__(self) -> Iterator[T]:
        return (self._item(i) for i in range(len(self)))


class Rows(Indexed["Row"]):
    """Rows of one Arrow table, each a read-only `Row`; a column's values are made once, on first read."""

    __slots__ = ("_columns", "_index", "table")

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self._index = {name: i for i, name in enumerate(table.column_names)}
        self._columns: dict[str, Sequence[Any]] = {}

    def __len__(self) -> int:
        return self.table.num_rows

    def _item(self, i: int) -> Row:
        return Row(self, i)

    def has(self, name: str) -> bool:
        return name in self._index

    @property
    def names(self) -> list[str]:
        return self.table.column_names

    def column(self, name: str) -> Sequence[Any]:
        """Every row's value of column `name`, as Python values (made on first read, then kept)."""
        values = self._columns.get(name)
        if values is None:
            if name not in self._index:
                raise KeyError(name)
            values = self._columns[name] = python_values(self.table.column(name))
        return values

    def with_columns(self, values: Mapping[str, Sequence[Any]]) -> Rows:
        """These rows with the named columns replaced (or added) by `values`, one per row, in the table's types.

        The columns already made into Python values and left alone are kept.
        """
        table = self.table
        for name, column in values.items():
            if len(column) != len(self):
                raise ValueError(f"column {name!r}: {len(column)} values for {len(self)} rows")
            if name in self._index:
                field = table.schema.field(name)
                table = table.set_column(self._index[name], field, pa.array(column, type=field.type))
            else:
                table = table.append_column(name, pa.array(column))
        out = Rows(table)
        out._columns = {k: v for k, v in self._columns.items() if k not in values}
        return out


class Row(Mapping[str, Any]):
    """One row of `Rows`: a read-only mapping of column name to value (its lists are shared with other rows:
    never change one in place)."""

    __slots__ = ("_i", "_rows")

    def __init__(self, rows: Rows, i: int) -> None:
        self._rows, self._i = rows, i

    def __getitem__(self, name: str) -> Any:
        return self._rows.column(name)[self._i]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._rows.has(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows.names)

    def __len__(self) -> int:
        return len(self._rows.names)

    # A row is one row of one run: equal to itself only, and usable as a key. (A mapping's own equality would
    # compare every column, and an embedding's array has no single truth value.)
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Row) and other._rows is self._rows and other._i == self._i

    def __hash__(self) -> int:
        return hash((id(self._rows), self._i))

    def __repr__(self) -> str:
        return f"Row({dict(self)!r})"


class Columns(Indexed[dict]):
    """Values that a step decides for each of `n` rows (selection's outcome, say), held as one Python list per
    column: 8 bytes a row per column, and values that repeat (a status, an empty list) are one object. A row
    reads as a new dict of its values; `set` changes a row's values in place; `lists` hands the columns on
    whole (to `Rows.with_columns`), never as a dict per row."""

    __slots__ = ("_n", "lists")

    def __init__(self, n: int, defaults: Mapping[str, Any]) -> None:
        self._n = n
        self.lists: dict[str, list[Any]] = {name: [value] * n for name, value in defaults.items()}

    def __len__(self) -> int:
        return self._n

    def _item(self, i: int) -> dict:
        return {name: values[i] for name, values in self.lists.items()}

    def set(self, i: int, **values: Any) -> None:
        """Row `i`'s values of the named columns."""
        for name, value in values.items():
            self.lists[name][i] = value


def python_values(column: pa.ChunkedArray | pa.Array) -> Sequence[Any]:
    """A column as Python values, as pandas' `to_dict("records")` hands them back; repeats are one object.

    Floats stay in one numpy array (8 bytes a row; an element reads as `numpy.float64`, a `float`), and a
    list of floats (an embedding) is a numpy view into the column's one buffer, as pandas gives it.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_floating(kind) or (pa.types.is_integer(kind) and column.null_count):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls as NaN
    if pa.types.is_integer(kind) or (pa.types.is_boolean(kind) and not column.null_count):
        return column.to_numpy(zero_copy_only=False).tolist()
    if pa.types.is_list(kind) and pa.types.is_floating(kind.value_type):
        values, offsets = list_layout(column)
        flat = values.to_numpy(zero_copy_only=False)
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        return [flat[offsets[i]:offsets[i + 1]] if valid[i] else None for i in range(len(column))]
    return _shared(column.to_pylist())


def list_layout(column: pa.ListArray) -> tuple[pa.Array, Any]:
    """A list column's values and offsets, row i's values at `values[offsets[i]:offsets[i + 1]]` (no copy), for any
    list array: one sliced out of a larger one, or one whose null rows still span values."""
    offsets = column.offsets.to_numpy()
    start = int(offsets[0]) if len(offsets) else 0
    values = column.values.slice(start, int(offsets[-1]) - start if len(offsets) else 0)
    return values, offsets - start


def _shared(values: list) -> list:
    """`values` with equal strings, and equal lists of strings or pairs, made one object."""
    seen: dict[Any, Any] = {}
    out = []
    for value in values:
        if isinstance(value, str):
            value = seen.setdefault(value, value)
        elif isinstance(value, list):
            try:
                value = seen.setdefault((list, tuple(value)), value)
            except TypeError:  # elements that do not hash (nested lists): kept as they are
                pass
        out.append(value)
    return out
