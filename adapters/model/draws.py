"""What one pipeline call is asked for: per image a prompt, a negative prompt and a seed.

The three travel together (an image's pixels depend on its own three alone), so they are one
value: a call's lists can never disagree in length, and a batch split in two splits them alike.
Both engines (adapters/model/engine.py, sim_engine.py) and the upscalers take them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class Draw(NamedTuple):
    """One image to make: its prompt, its negative prompt ("" for none) and its seed."""

    prompt: str
    negative: str
    seed: int


def checked_draws(draws: Iterable[Draw]) -> list[Draw]:
    """The draws of one call as a list; raises ValueError when there is none."""
    out = list(draws)
    if not out:
        raise ValueError("a pipeline call needs at least one image to draw (a prompt, a negative prompt and a seed)")
    return out
