"""Small checks on plain values that several steps share."""

from __future__ import annotations

import math

__all__ = ["first_line", "is_missing"]


def is_missing(value: object) -> bool:
    """True for None and for a float NaN (how pandas and parquet hand back an empty score)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty.

    Messages of boto3, pydantic and the model loaders run to several lines; one line is what
    a person reads in an error, a log line or a quarantine reason.
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
