"""The `sim` profile: a simulated GPU that makes images in a stated time through every real step of a run."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from adapters.model.draws import Draw
from adapters.model.sim_engine import SimEngine, sim_image
from adapters.steps import publish
from catalogs import load_profiles
from catalogs.models import RunRequest
from tasks.layout import AssetsLayout
from tests.helpers import product

SIM = (
    "name: simload\nproducts: {ids: [rocket, coffee-cup]}\nstyles: {ids: [space-age]}\n"
    "matrix: {template: '{product} on {surface}', axes: {surface: [sand, slate, marble]}, seeds: 6}\n"
    "generation: {profile: sim, width: 64, height: 64, steps: 2, batch_size: 6}\n"
)


def test_sim_profile_is_listed_as_a_load_test_tool():
    sim = load_profiles()["sim"]
    assert sim.pipeline == "sim" and "load-testing" in sim.description


def test_sim_images_are_deterministic_distinct_and_follow_the_control_map():
    control = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(control).rectangle((16, 16, 47, 47), outline=255, width=2)  # a canny map: white edges
    a, again, other_seed = sim_image(control, "a kettle", 1), sim_image(control, "a kettle", 1), sim_image(control, "a kettle", 2)
    assert a.tobytes() == again.tobytes() and a.tobytes() != other_seed.tobytes()
    assert a.size == (64, 64)
    edges = np.asarray(control) > 127
    assert 0 < edges.sum() < edges.size
    pixels = np.asarray(a)
    (tint,) = {tuple(p) for p in pixels[edges]}  # the control map drawn in one colour, drawn from the seed
    assert tint != tuple(np.asarray(other_seed)[edges][0])
    assert len({tuple(p) for p in pixels[~edges]}) > 16  # a background of its own, not a flat fill


def test_sim_engine_takes_its_stated_time_per_image_and_a_run_may_set_its_own():
    engine = SimEngine(profile="sim", seconds_per_image=0.05)
    canvases = {"canny": product(32).convert("RGB")}
    kw = dict(canvases=canvases, style=None, draws=[Draw("a", "", 1), Draw("b", "", 2), Draw("c", "", 3)])
    start = time.perf_counter()
    images = engine.generate(params={"width": 32, "height": 32}, **kw)
    assert time.perf_counter() - start >= 0.15 and len(images) == 3
    start = time.perf_counter()
    engine.generate(params={"width": 32, "height": 32, "sim_seconds": 0}, **kw)
    assert time.perf_counter() - start < 0.1
    with pytest.raises(ValueError, match="seconds per image must be 0 or more"):
        SimEngine(profile="sim", seconds_per_image=-1)


def test_a_sim_campaign_of_a_few_hundred_images_goes_through_every_step_of_a_run(campaign_env, store):
    from flows.campaign import run_campaign

    store.put(f"{campaign_env['catalog']}/campaigns/simload.yaml", SIM.replace("seeds: 6", "seeds: 100").encode())
    summary = run_campaign(RunRequest(campaign="simload", triggered_by="test", sim_seconds=0.0))
    assert summary.images_generated == 600 and summary.images_failed == 0
    manifest = json.loads(store.get(summary.manifest))
    gens = publish.read_table(store, manifest, "generations")
    assert len(gens) == 600 and gens["asset_id"].is_unique and set(gens["device"]) == {"sim"}
    assert gens["selected"].sum() == 2 * 4 and gens["edge_f1"].notna().all()  # top 4 of each product
    assert (gens["status"] == "duplicate").sum() < 60  # distinct pictures, as a model's would be
    for img in manifest["images"]:
        assert hashlib.sha256(store.get(img["uri"])).hexdigest() == img["sha256"]
    staged = AssetsLayout.at(campaign_env["assets"]).run(summary.run_id).uri("staging", "generations")
    assert len(list(store.list(staged + "/"))) == 10  # the rows staged one part per shard of 64
    # A gallery of more than 500 images is paged: its page, its index, its card pages beside it.
    assert summary.sheets and summary.gallery and store.exists(summary.gallery)
    assert store.exists(AssetsLayout.at(campaign_env["assets"]).run(summary.run_id).uri("gallery", "index.js"))
