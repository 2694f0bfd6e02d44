"""What the tests and the benchmarks share: test images, the plain diffusers loop, the command
line in a subprocess, small campaign files, the docs-vs-schema reader and a headless browser.

One copy of each, imported by tests (`from tests.helpers import ...`) and by bench/harness.py.
Light at import time (PIL and numpy only): torch and diffusers are imported where they are used.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from catalogs import parse_campaign, sample_campaign_text
from catalogs.models import Product, Reference, StyleSet
from tasks.matrix import expand_matrix
from tasks.plan import ModelIdentity, plan_jobs

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "flows.cli"]

# --------------------------------------------------------------------------- the command line, campaigns


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`stylematrix ARGS` in a new process: this environment, offline, plus `env`."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(CLI + args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


class BackgroundCommand:
    """A command started now and awaited later, in its own process group. Its output goes to files
    (a pipe nobody reads would stall it); `result()` waits for it, `stop()` ends it and whatever it
    started (an embedded S3 server, Prefect's temporary server) if it still runs."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, timeout: float):
        self.args = args
        self.deadline = time.monotonic() + timeout
        self._out = tempfile.TemporaryFile("w+", encoding="utf-8")
        self._err = tempfile.TemporaryFile("w+", encoding="utf-8")
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._out, stderr=self._err, start_new_session=True)

    def result(self) -> subprocess.CompletedProcess:
        try:
            code = self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        self._out.seek(0)
        self._err.seek(0)
        return subprocess.CompletedProcess(self.args, code, self._out.read(), self._err.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of its group is left
        self.proc.wait(timeout=5)
        self._out.close()
        self._err.close()


def start_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> BackgroundCommand:
    """`stylematrix ARGS` started in the background, with `run_cli`'s environment."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **env}
    return BackgroundCommand(CLI + args, full_env, cwd, timeout)


def small_campaign(folder: Path, name: str, seed: int) -> Path:
    """A campaign file of one style set and one seed at 64 px, 2 steps: one image per product."""
    spec = folder / f"{name}.yaml"
    spec.write_text(f"name: {name}\nstyles: {{ids: [space-age]}}\n"
                    f"matrix: {{template: '{{product}} on sand', seeds: [{seed}]}}\n"
                    "generation: {profile: tiny, width: 64, height: 64, steps: 2}\n")
    return spec


def seed_campaign_buckets(store) -> tuple[str, str]:
    """A seeded catalog bucket (the sample catalog plus one broken product) and an empty assets bucket."""
    from adapters.catalog.sample import seed_sample_catalog

    suffix = uuid.uuid4().hex[:10]
    catalog, assets = f"s3://catalog-{suffix}", f"s3://assets-{suffix}/team-a"
    store.ensure_bucket(f"catalog-{suffix}")
    store.ensure_bucket(f"assets-{suffix}")
    seed_sample_catalog(store, catalog)
    # One broken product beside the good ones: it is quarantined, the run goes on.
    store.put(f"{catalog}/products/broken-mug/image.png", b"this is not a png", content_type="image/png")
    return catalog, assets


def campaign_settings_env(s3_server, catalog: str, assets: str, model_cache: Path) -> dict[str, str]:
    """The environment a campaign run in this process reads its settings from."""
    return {"AWS_ENDPOINT_URL_S3": s3_server.endpoint, "STYLEMATRIX_CATALOG": catalog, "STYLEMATRIX_ASSETS": assets,
            "STYLEMATRIX_MODEL_CACHE": str(model_cache), "STYLEMATRIX_DEVICE": "cpu"}


# --------------------------------------------------------------------------- planning inputs

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
    """The sample campaign's spec, with `overrides` applied."""
    text = sample_campaign_text()
    spec = parse_campaign(text)
    return spec.model_copy(update=overrides) if overrides else spec


def plan(spec, products=PRODUCTS, styles=STYLES, revision="rev1", dtype="float32"):
    """The jobs of `spec` over three products and two style sets (one and three references)."""
    return plan_jobs(spec, products, styles, expand_matrix(spec.matrix), ModelIdentity(revision=revision, dtype=dtype))


# --------------------------------------------------------------------------- images


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    """The image's bytes in `fmt`, mode kept (the project's publish.encode_png converts to RGB)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(name: str, side: int | None = None) -> Image.Image:
    """A real photo from scikit-image, RGB; shrunk to a long side of `side` when given."""
    from skimage import data
    from skimage.util import img_as_ubyte

    image = Image.fromarray(img_as_ubyte(getattr(data, name)())).convert("RGB")
    if side is not None:
        image.thumbnail((side, side))
    return image


def product(size: int = 64, shape: str = "circle", colour: tuple[int, int, int] = (200, 40, 40)) -> Image.Image:
    """A cut-out product: a filled circle (or a wide rectangle) on a transparent background."""
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse((size // 5, size // 5, size - size // 5, size - size // 5), fill=(*colour, 255))
    else:
        draw.rectangle((size // 8, size * 5 // 16, size - size // 8, size - size * 5 // 16), fill=(*colour, 255))
    return img


def noise_references(seed: int, sizes: Sequence[tuple[int, int]]) -> list[Image.Image]:
    """Style references of random pixels, (width, height) each, drawn in turn from one generator."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def reference(seed: int, size: tuple[int, int] = (48, 48)) -> Image.Image:
    """One noise reference: the first of `noise_references(seed, [size])`."""
    return noise_references(seed, [size])[0]


def max_diff(a: Image.Image, b: Image.Image) -> int:
    """The largest per-pixel difference of two images, in 1/255 steps."""
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


def pixel_diffs(a: Sequence[Image.Image], b: Sequence[Image.Image]) -> tuple[int, float]:
    """(largest, mean) absolute per-pixel difference in 1/255 steps over paired images."""
    diffs = [np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)) for x, y in zip(a, b, strict=True)]
    return max(int(d.max()) for d in diffs), float(np.mean([d.mean() for d in diffs]))


# --------------------------------------------------------------------------- the plain diffusers loop


def plain_pipeline_images(pipe, control: Image.Image, references: Sequence[Image.Image], jobs: Sequence[tuple[str, int]],
                          params: dict, negative: str) -> list[Image.Image]:
    """What a script without the engine makes: one `pipe(...)` call per (prompt, seed), the prompt
    text and the padded references passed every time, UniPC, one CPU generator per image."""
    import diffusers
    import torch

    from tasks.canny import pad_to_square

    pipe.scheduler = diffusers.UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_ip_adapter_scale(params["ip_scale"])
    padded = [pad_to_square(r) for r in references]
    images = []
    for prompt, seed in jobs:
        with torch.inference_mode():
            images += pipe(prompt, negative_prompt=negative, image=control, ip_adapter_image=[padded],
                           num_inference_steps=params["steps"], guidance_scale=params["guidance"],
                           controlnet_conditioning_scale=params["controlnet_scale"], width=params["width"],
                           height=params["height"], generator=[torch.Generator("cpu").manual_seed(seed)]).images
    return images


# --------------------------------------------------------------------------- docs


def documented_columns(doc: str, heading: str, end: str) -> list[tuple[str, str]]:
    """(column, type) rows of the markdown table between `heading` and the next `end` in `doc`."""
    section = doc.split(heading, 1)
    assert len(section) == 2, f"the doc has no section {heading!r}"
    body = section[1].split(end, 1)[0]
    return re.findall(r"^\| `([a-z0-9_]+)` \| `([^`]+)` \|", body, flags=re.M)


# --------------------------------------------------------------------------- a headless browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "out" / "test-artifacts"


@contextlib.contextmanager
def chromium_page(sync_api, viewport: dict[str, int]) -> Iterator:
    """A page of Debian's headless Chromium driven by playwright, in a fresh profile; closed after."""
    with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                        args=CHROMIUM_FLAGS, viewport=viewport)
        try:
            yield browser.new_page()
        finally:
            browser.close()


class ReadLog:
    """A store that logs the URIs it reads (`get`) and passes everything else on."""

    def __init__(self, store) -> None:
        self.store, self.reads = store, []

    def get(self, uri: str) -> bytes:
        self.reads.append(uri)
        return self.store.get(uri)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def check_api_auth(api_url: str, secret: str) -> None:
    """The API refuses a request without the auth string, and a wrong one; it takes the right one."""
    def status(headers: dict[str, str]) -> int:
        request = urllib.request.Request(f"{api_url}/flows/filter", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def basic(value: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(value.encode()).decode()}

    assert status({}) == 401
    assert status(basic("fleet:wrong")) == 401
    assert status(basic(secret)) == 200
