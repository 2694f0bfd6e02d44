"""A simulated GPU: the `sim` profile's engine, for load-testing the orchestration, never for real images.

It makes no model call. Each image is the batch's control map tinted by a colour drawn from its
seed and prompt, over a coarse background of noise from the same draw (so near-duplicate folding
sees distinct images, as it would with a real model), and the engine waits a stated time per
image first: what a GPU would take, without using a CPU core. Everything around it is the real
path: claims, S3 writes, scores, table parts, selection, sheets, gallery and the manifest.

The time per image is the worker's `STYLEMATRIX_SIM_SECONDS_PER_IMAGE`, or a run's own
(`RunRequest.sim_seconds`, handed to `generate` as the `sim_seconds` parameter). It is not part
of an image's asset id: it changes how long an image takes, never its pixels.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy as np
from PIL import Image

from adapters.model.draws import Draw, checked_draws

SIM_REVISION = "sim-1"  # bump when the pixels a job gets change
SIM_PARAM = "sim_seconds"


class SimEngine:
    """The engine surface the shards use (`generate`, `device_name`, `versions`, ...), with no model behind it."""

    def __init__(self, *, profile: str, seconds_per_image: float, control_types: Sequence[str] = ("canny",),
                 adapter_images: Sequence[str] = ("style",)):
        if seconds_per_image < 0:
            raise ValueError(f"sim engine: seconds per image must be 0 or more, got {seconds_per_image}")
        self.profile = profile
        self.revision = SIM_REVISION
        self.seconds_per_image = seconds_per_image
        self.control_types = tuple(control_types)
        self.adapter_images = tuple(adapter_images)
        self.versions = {"stylematrix-sim": SIM_REVISION, "numpy": metadata.version("numpy")}
        self.dtype_name = "none"
        self.device_name = "sim"
        self._lock = threading.Lock()  # one "GPU" per process, as with the real engine

    def generate(self, *, canvases: Mapping[str, Image.Image], style: Any, draws: Sequence[Draw],
                 params: Mapping[str, Any], split_on_oom: bool = True) -> list[Image.Image]:
        """One image per draw (its prompt and seed), after `len(draws)` x the time per image."""
        draws = checked_draws(draws)
        control = canvases[self.control_types[0]].convert("L")
        if control.size != (params["width"], params["height"]):
            raise ValueError(f"control image is {control.size}, expected {(params['width'], params['height'])}")
        seconds = params.get(SIM_PARAM)
        seconds = self.seconds_per_image if seconds is None else float(seconds)
        with self._lock:
            if seconds > 0:
                time.sleep(seconds * len(draws))
            return [sim_image(control, d.prompt, int(d.seed)) for d in draws]


def sim_image(control: Image.Image, prompt: str, seed: int) -> Image.Image:
    """The control map's edges in a colour drawn from (prompt, seed) over an 8 x 8 noise background of the same draw."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    width, height = control.size
    coarse = rng.integers(40, 216, size=(8, 8, 3), dtype=np.uint8)
    background = np.asarray(Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BILINEAR))
    edges = (np.asarray(control) > 127)[..., None]
    tint = np.frombuffer(digest[8:11], dtype=np.uint8)
    return Image.fromarray(np.where(edges, tint, background).astype(np.uint8), "RGB")
