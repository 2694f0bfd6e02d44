"""The engine's speed switches change the speed, never the picture; bench/gpu.py runs on the tiny kits.

The reference is the plain diffusers pipeline called once per image with the prompt text and
the reference images, as a script without the engine does. The CPU tests use float32, where
batching and kernel choice move a pixel by at most 1/255; the CUDA test (marked `gpu`) checks
the fp16 engine with its CUDA defaults against the same plain pipeline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from PIL import Image

from adapters.infra.settings import Settings
from adapters.model.draws import Draw
from adapters.model.engine import EngineOptions, StyleInput, apply_options, get_engine
from tasks.canny import canvas_images
from tests.helpers import ROOT, noise_references, pixel_diffs, plain_pipeline_images, product

PARAMS = {"width": 64, "height": 64, "steps": 3, "scheduler": "unipc", "guidance": 5.0,
          "ip_scale": 0.8, "controlnet_scale": 1.0, "canny_low": 100, "canny_high": 200}
PROMPTS = ["a red kettle on marble", "a red kettle on sand, dusk", "a red kettle in snow"]
SEEDS = [11, 12, 13]
PLAIN = EngineOptions(sdpa=True, channels_last=False, fuse_qkv=False)


def refs() -> list[Image.Image]:
    return noise_references(3, ((48, 32), (40, 40)))


def plain_images(engine, params=PARAMS) -> list[Image.Image]:
    """What a script without the engine makes: one pipeline call per image, engine switches off."""
    apply_options(engine.pipe, PLAIN)
    control = canvas_images(product(), None, params, ["canny"])["canny"]
    return plain_pipeline_images(engine.pipe, control, refs(), list(zip(PROMPTS, SEEDS, strict=True)), params, "blurry")


def engine_images(engine, options: EngineOptions, params=PARAMS) -> list[Image.Image]:
    engine.set_options(options)
    style = StyleInput.from_images(refs(), ["r1", "r2"])
    control = canvas_images(product(), None, params, ["canny"])
    return engine.generate(canvases=control, style=style, params=params,
                           draws=[Draw(p, "blurry", s) for p, s in zip(PROMPTS, SEEDS, strict=True)])


@pytest.fixture(scope="module")
def engine(private_model_cache):
    engine = get_engine("tiny", Settings(model_cache=private_model_cache, device="cpu", dtype="float32"))
    yield engine
    engine.set_options(EngineOptions.defaults("cpu"))


@pytest.fixture(scope="module")
def plain(engine) -> list[Image.Image]:
    return plain_images(engine)


@pytest.mark.parametrize("options", [
    EngineOptions.defaults("cpu"),
    EngineOptions(),  # the CUDA defaults: SDPA, channels-last, fused QKV
    EngineOptions(sdpa=False, fuse_qkv=False, channels_last=False),
    EngineOptions(channels_last=False, fuse_qkv=False, cache_embeddings=False),
], ids=["cpu-defaults", "cuda-defaults", "classic-attention", "no-caches"])
def test_every_switch_setting_makes_the_plain_pipelines_images(engine, plain, options):
    largest, mean = pixel_diffs(engine_images(engine, options), plain)
    assert largest <= 1 and mean < 0.05, (options, largest, mean)


def test_fused_qkv_keeps_the_ip_adapter_working(engine):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    def adapter_layers():
        return sum(isinstance(p, IPAdapterAttnProcessor2_0) for p in engine.pipe.unet.attn_processors.values())

    before = adapter_layers()
    fused = replace(EngineOptions(), channels_last=False)
    with_style = engine_images(engine, fused)
    without = engine_images(engine, fused, {**PARAMS, "ip_scale": 0.0})
    assert adapter_layers() == before > 0  # diffusers' own fuse_qkv_projections would have replaced them
    assert pixel_diffs(with_style, without)[0] > 10  # the reference still steers the picture
    assert any(getattr(m, "fused_projections", False) for m in engine.pipe.unet.modules())


def test_switches_are_reversible(engine, plain):
    engine.set_options(EngineOptions())
    engine.set_options(PLAIN)
    processors = {type(p).__name__ for p in engine.pipe.unet.attn_processors.values()}
    assert processors == {"AttnProcessor2_0", "IPAdapterAttnProcessor2_0"}
    assert engine.pipe.unet.conv_in.weight.is_contiguous()
    assert pixel_diffs(engine_images(engine, PLAIN), plain)[0] <= 1


def test_out_of_memory_is_raised_when_splitting_is_off(engine, monkeypatch):
    def no_memory(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(engine, "_call", no_memory)
    style = StyleInput.from_images(refs(), ["r1", "r2"])
    control = canvas_images(product(), None, PARAMS, ["canny"])
    with pytest.raises(torch.cuda.OutOfMemoryError):
        draws = [Draw(p, "", s) for p, s in zip(PROMPTS[:2], SEEDS[:2], strict=True)]
        engine.generate(canvases=control, style=style, draws=draws, params=PARAMS, split_on_oom=False)


def test_peak_table_knows_the_data_centre_gpus():
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu import peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H100 PCIe") == pytest.approx(756e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB") == pytest.approx(312e12)
    assert peak_flops("some cpu") is None
    assert peak_flops("some cpu", 2.0) == pytest.approx(2e12)


@pytest.mark.slow
def test_gpu_benchmark_runs_on_the_tiny_kits(tmp_path, model_cache):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nkept\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STYLEMATRIX_MODEL_CACHE": str(model_cache)}
    result = subprocess.run(
        [sys.executable, "bench/gpu.py", "--tiny", "--images", "2", "--batches", "1", "2", "--steps", "2",
         "--size", "64", "--repeat", "1", "--doc", str(doc)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n") and "<!-- bench:gpu-tiny -->" in text
    for model in ("sd15-shaped", "sdxl-shaped"):
        assert f"### tiny kit ({model}" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| side")]
    names = [r.split(" | ")[0] for r in rows]
    assert names.count("| plain loop, 1 image per call") == 2
    assert sum("no SDPA" in n for n in names) == 2 and sum("no embedding caches" in n for n in names) == 2
    for r in rows:  # same pictures on every side: the last column is "max / mean" difference from the loop
        assert int(r.rstrip(" |").split(" | ")[-1].split(" / ")[0]) <= 1, r
    assert text.count("Model FLOPs per image:") == 2 and "UNet + ControlNet alone at batch" in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_engine_on_cuda_matches_the_plain_pipeline(tmp_path):
    engine = get_engine("tiny", Settings(model_cache=tmp_path / "models", device="cuda", dtype="float16"))
    plain = plain_images(engine)
    largest, mean = pixel_diffs(engine_images(engine, EngineOptions.defaults("cuda")), plain)
    # fp16 kernels differ with batch size and layout; the pictures must still be the same pictures.
    assert mean < 1.0 and largest <= 16, (largest, mean)
