"""GPU throughput of the engine on full-size SD1.5 and SDXL, against a plain diffusers loop, with each switch off.

Speed does not depend on weight values, so the models are built from their published
configurations with random weights (no download). Side by side in one process, per model:

1. the plain loop: the pipeline called once per image, as loaded (diffusers' own SDPA
   attention), prompt text and reference images passed every call;
2. the engine at several batch sizes (one control image x one style embedding x many prompts
   and seeds) with its default switches (EngineOptions.defaults);
3. the engine at the best batch with each switch turned the other way in turn: SDPA,
   channels-last, fused QKV, embedding caches off; torch.compile and CUDA graphs on.

For each: images per second, ratio to the plain loop, peak GPU memory, model TFLOP/s and
model-FLOPs utilisation (MFU), and the largest pixel difference from the plain loop's images.
Also the largest batch that fits, and the MFU of the UNet + ControlNet part alone.

FLOPs are counted by `torch.utils.flop_counter` on one image with classic (bmm) attention, so
attention is counted too: the UNet + ControlNet cost of one denoising step (the difference of
a 2-step and a 1-step call, so the control image's embedding, done once per call, is left
out) and the VAE decode. Model FLOPs of an image = steps x step + decode. The UNet + ControlNet
time per step comes from two timed calls at the best batch (steps S and S/3): their
difference cancels the encoders, the VAE and per-call work. MFU is against the device's dense
fp16/bf16 peak (table below, or --peak-tflops).

    .venv/bin/python bench/gpu.py            # CUDA: SD1.5 at 512 px and SDXL at 1024 px, 30 steps; writes docs/benchmarks.md
    .venv/bin/python bench/gpu.py --tiny     # the same on the CPU with the tiny kits (what CI runs)
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from harness import (
    ROOT,
    Side,
    full_size_engine,
    references,
    run_engine,
    run_loop,
    sync,
    workload,
    write_section,
)

from adapters.infra.settings import Settings
from adapters.model.draws import Draw
from adapters.model.engine import Engine, EngineOptions, StyleInput, get_engine
from adapters.model.weights import library_versions
from tasks.canny import canvas_images
from tests.helpers import pixel_diffs, product

# Dense (no sparsity) fp16/bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
# Matched in order against torch.cuda.get_device_name(): the first substring found wins.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("H200", 989.4),
    ("H800", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
)
PLAIN = EngineOptions(sdpa=True, channels_last=False, fuse_qkv=False, compile=False, cuda_graphs=False)
SWITCHES = {  # field -> (label when turned off, label when turned on)
    "sdpa": "no SDPA (classic attention, so no fused QKV)",
    "channels_last": "no channels-last",
    "fuse_qkv": "no fused QKV",
    "cache_embeddings": "no embedding caches",
    "compile": "+ torch.compile",
    "cuda_graphs": "+ torch.compile with CUDA graphs",
}


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """The device's dense fp16/bf16 peak in FLOP/s, or None when unknown (MFU is then not reported)."""
    if override_tflops:
        return override_tflops * 1e12
    for part, tflops in PEAK_TFLOPS:
        if part.lower() in device_name.lower():
            return tflops * 1e12
    return None


@dataclass
class Workload:
    name: str
    engine: Engine
    params: dict
    refs: list
    style: StyleInput
    control: dict
    jobs: list[tuple[str, int]]

    def run(self, options: EngineOptions, batch: int, name: str, jobs=None, steps: int | None = None) -> Side:
        self.engine.set_options(options)
        params = self.params if steps is None else {**self.params, "steps": steps}
        reset_peak(self.engine.device_name)
        side = run_engine(self.engine, params, self.control, self.style, jobs or self.jobs, batch)
        side.name = name
        side.peak_bytes = peak_bytes(self.engine.device_name)
        side.extra.update(batch=batch, options=self.engine.options)
        return side

    def loop(self) -> Side:
        self.engine.set_options(PLAIN)
        reset_peak(self.engine.device_name)
        side = run_loop(self.engine, self.params, self.control, self.refs, self.jobs)
        side.peak_bytes = peak_bytes(self.engine.device_name)
        side.extra.update(batch=1, options=self.engine.options)
        return side


def reset_peak(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_bytes(device: str) -> int | None:
    return torch.cuda.max_memory_allocated() if str(device).startswith("cuda") else None


# --------------------------------------------------------------------------- FLOPs


def _flops_by_model(counts: dict[str, dict]) -> dict[str, int]:
    """FlopCounterMode's per-module totals folded into unet / controlnet / vae / other."""
    out = {"unet": 0, "controlnet": 0, "vae": 0, "other": 0}
    for name, by_op in counts.items():
        if name == "Global" or "." in name:
            continue  # only top-level modules; their children are already inside them
        total = sum(by_op.values())
        if name.startswith("UNet"):
            out["unet"] += total
        elif "ControlNet" in name:
            out["controlnet"] += total
        elif name in ("Decoder", "Conv2d", "AutoencoderKL"):  # vae.decode runs post_quant_conv + decoder
            out["vae"] += total
        else:
            out["other"] += total
    return out


def count_flops(w: Workload) -> dict[str, float]:
    """Model FLOPs of one image: per denoising step (UNet + ControlNet, CFG included) and the VAE decode."""
    from torch.utils.flop_counter import FlopCounterMode

    engine, saved = w.engine, w.engine.options or PLAIN
    # Classic attention: its bmm calls are counted, SDPA kernels are not on every device.
    engine.set_options(replace(saved, sdpa=False, fuse_qkv=False, compile=False, cuda_graphs=False))
    counted = {}
    try:
        for steps in (1, 2):
            run_engine(engine, {**w.params, "steps": steps}, w.control, w.style, w.jobs[:1], 1)  # embeddings cached
            with FlopCounterMode(display=False, depth=1) as counter:
                run_engine(engine, {**w.params, "steps": steps}, w.control, w.style, w.jobs[:1], 1)
            counted[steps] = _flops_by_model(counter.get_flop_counts())
    finally:
        engine.set_options(saved)
    unet = counted[2]["unet"] - counted[1]["unet"]
    controlnet = counted[2]["controlnet"] - counted[1]["controlnet"]
    return {"unet_step": unet, "controlnet_step": controlnet, "step": unet + controlnet, "vae": counted[1]["vae"]}


def image_flops(flops: dict[str, float], steps: int) -> float:
    return steps * flops["step"] + flops["vae"]


def denoiser_step_seconds(w: Workload, options: EngineOptions, batch: int) -> float:
    """Seconds per denoising step of one call of `batch` images: two step counts, differenced."""
    long_steps = w.params["steps"]
    short_steps = max(1, long_steps // 3)
    jobs = w.jobs[:batch]
    best = {}
    for steps in (long_steps, short_steps) * 2:  # best of two each
        side = w.run(options, batch, "", jobs=jobs, steps=steps)
        best[steps] = min(best.get(steps, float("inf")), side.seconds)
    return (best[long_steps] - best[short_steps]) / (long_steps - short_steps)


def largest_batch(w: Workload, options: EngineOptions, start: int, limit: int) -> tuple[int, int | None]:
    """(largest batch that ran, smallest that ran out of memory or None) at one step: memory does not grow with steps."""
    w.engine.set_options(options)

    def fits(batch: int) -> bool:
        jobs = (w.jobs * (batch // len(w.jobs) + 1))[:batch]
        try:
            w.engine.generate(canvases=w.control, style=w.style, draws=[Draw(p, "blurry", s) for p, s in jobs],
                              params={**w.params, "steps": 1}, split_on_oom=False)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    ok, bad = 0, None
    batch = start
    while batch <= limit and fits(batch):
        ok, batch = batch, batch * 2
    if batch <= limit:
        bad = batch
        while bad - ok > max(1, ok // 8):  # bisect to within an eighth
            mid = (ok + bad) // 2
            ok, bad = (mid, bad) if fits(mid) else (ok, mid)
    return ok, bad


# --------------------------------------------------------------------------- one model


def bench_model(w: Workload, args: argparse.Namespace, peak: float | None) -> str:
    engine = w.engine
    cuda = str(engine.device_name).startswith("cuda")
    best_opts = EngineOptions.defaults(engine.device_name)
    steps = w.params["steps"]
    print(f"[{w.name}] warming up", flush=True)
    w.run(best_opts, max(args.batches), "warm-up", jobs=w.jobs[: max(args.batches)])
    w.run(best_opts, 1, "warm-up", jobs=w.jobs[:1])
    engine.set_options(PLAIN)
    run_loop(engine, w.params, w.control, w.refs, w.jobs[:1])

    # Phase 1: the plain loop and the batch sweep, rounds alternating, each side's best round kept.
    rounds = []
    for r in range(args.repeat):
        print(f"[{w.name}] round {r + 1}/{args.repeat}: plain loop and batches {args.batches}", flush=True)
        rounds.append([w.loop()] + [w.run(best_opts, b, f"engine, batch {b}") for b in args.batches])
    loop, *sweep = (min(attempts, key=lambda s: s.seconds) for attempts in zip(*rounds, strict=True))
    best = max(sweep, key=lambda s: s.rate)
    best_batch = best.extra["batch"]

    # Phase 2: each switch the other way, at the best batch.
    ablations: list[tuple[str, EngineOptions]] = []
    for field, label in SWITCHES.items():
        on = getattr(best_opts, field)
        if field in ("compile", "cuda_graphs"):
            if cuda and not on:
                ablations.append((label, replace(best_opts, compile=True, cuda_graphs=field == "cuda_graphs")))
        elif on:
            ablations.append((label, replace(best_opts, **{field: False}, **({"fuse_qkv": False} if field == "sdpa" else {}))))
    skipped = [label for label in SWITCHES.values() if label not in {a for a, _ in ablations}]
    rows = []
    for label, opts in ablations:
        name = f"engine, batch {best_batch}, {label}"
        print(f"[{w.name}] {name}", flush=True)
        try:
            if opts.compile:  # compilation happens on the first call of each shape: keep it out of the timing
                started = time.perf_counter()
                w.run(opts, best_batch, name, jobs=w.jobs[:best_batch])
                compile_s = time.perf_counter() - started
            sides = [w.run(opts, best_batch, name) for _ in range(args.repeat)]
            side = min(sides, key=lambda s: s.seconds)
            if opts.compile:
                side.extra["note"] = f"first call {compile_s:.0f} s (compilation)"
            rows.append(side)
        except Exception as exc:  # a switch that fails on this stack is a finding, not the end of the run
            rows.append(Side(name, float("nan"), [], extra={"batch": best_batch, "error": f"{type(exc).__name__}: {exc}"[:160]}))
    engine.set_options(best_opts)

    flops = count_flops(w)
    per_image = image_flops(flops, steps)
    step_s = denoiser_step_seconds(w, best_opts, best_batch)
    den_rate = best_batch * flops["step"] / step_s if step_s > 0 else float("nan")
    if cuda:
        fit, fail = largest_batch(w, best_opts, best_batch, args.max_batch)
        fit_text = f"{fit} images per call fit at {w.params['width']} px" + \
            (f"; {fail} ran out of memory" if fail else f" (searched up to {args.max_batch})")
    else:
        fit_text = "not searched: no device memory limit on the CPU"

    def row(side: Side) -> str:
        if "error" in side.extra:
            return f"| {side.name} | {side.extra['batch']} | failed: {side.extra['error']} | | | | | |"
        peak_mem = f"{side.peak_bytes / 2**30:.1f} GiB" if side.peak_bytes is not None else "n/a"
        achieved = per_image * side.rate
        mfu = f"{100 * achieved / peak:.1f}%" if peak else "n/a"
        largest, mean = pixel_diffs(side.images, loop.images)
        note = f" ({side.extra['note']})" if "note" in side.extra else ""
        return (f"| {side.name}{note} | {side.extra['batch']} | {side.rate:.3f} | {side.rate / loop.rate:.2f}x | "
                f"{peak_mem} | {achieved / 1e12:.3f} | {mfu} | {largest} / {mean:.2f} |")

    device = engine.device_name + (f" ({torch.cuda.get_device_name()})" if cuda else "")
    versions = library_versions()
    lines = [
        f"### {w.name}",
        "",
        f"Model: {w.name}, IP-Adapter (3 references) + canny ControlNet, {w.params['width']} px, {steps} steps, "
        f"UniPC, guidance {w.params['guidance']}, {engine.dtype_name} on {device}  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads; torch {versions['torch']}, "
        f"diffusers {versions['diffusers']}  ",
        f"Images per side: {len(w.jobs)}; timing: best of {args.repeat} rounds (plain loop and batch sweep alternating).  ",
        f"Model FLOPs per image: {per_image / 1e12:.3f} TFLOP ({steps} x {flops['step'] / 1e9:.1f} GFLOP UNet + "
        f"ControlNet step, of which ControlNet {flops['controlnet_step'] / 1e9:.1f}; VAE decode "
        f"{flops['vae'] / 1e9:.1f} GFLOP). Peak: " + (f"{peak / 1e12:.0f} TFLOP/s dense fp16/bf16." if peak else
                                                        "unknown for this device (pass --peak-tflops), so no MFU."),
        "",
        "| side | batch | images/s | vs plain loop | peak GPU memory | model TFLOP/s | MFU | pixel diff vs loop (max / mean, of 255) |",
        "|---|---|---|---|---|---|---|---|",
        row(loop), *(row(s) for s in sweep), *(row(s) for s in rows),
        "",
        f"Best: batch {best_batch} at {best.rate:.3f} images/s, {best.rate / loop.rate:.2f}x the plain loop.  ",
        f"UNet + ControlNet alone at batch {best_batch}: {step_s * 1e3:.1f} ms per step, {den_rate / 1e12:.3f} TFLOP/s"
        + (f", MFU {100 * den_rate / peak:.1f}%." if peak else ".") + "  ",
        f"Largest batch: {fit_text}.",
    ]
    if skipped:
        lines.append(f"Not measured here: {', '.join(skipped)} (already off, or needs CUDA).")
    return "\n".join(lines)


def workloads(args: argparse.Namespace) -> list[Workload]:
    out = []
    for model in args.models:
        if args.tiny:
            settings = Settings(device="cpu", dtype="float32")
            engine = get_engine("tiny" if model == "sd15" else "tiny-sdxl", settings)
            name = f"tiny kit ({model}-shaped, random weights)"
            size = args.size or 128
        else:
            if not torch.cuda.is_available():
                raise SystemExit("bench/gpu.py needs a CUDA device; use --tiny for the CPU run on the tiny kits")
            dtype = getattr(torch, args.dtype)
            print(f"[{model}] building the full-size architecture with random weights", flush=True)
            engine = full_size_engine("cuda", dtype, model)
            name = f"{'SD1.5' if model == 'sd15' else 'SDXL'} architecture, random weights"
            size = args.size or (512 if model == "sd15" else 1024)
        steps = args.steps or (4 if args.tiny else 30)
        params = {"width": size, "height": size, "steps": steps, "scheduler": "unipc", "guidance": 5.0,
                  "ip_scale": 0.6, "controlnet_scale": 1.0, "canny_low": 100, "canny_high": 200}
        refs = references()
        n_images = args.images or (max(args.batches) * 2 if model == "sd15" else max(args.batches))
        out.append(Workload(name, engine, params, refs, StyleInput.from_images(refs, ["r1", "r2", "r3"]),
                            canvas_images(product(size), None, params, ["canny"]), workload(n_images)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny kits on the CPU (no GPU needed)")
    parser.add_argument("--models", nargs="+", choices=["sd15", "sdxl"], default=["sd15", "sdxl"])
    parser.add_argument("--images", type=int, default=None, help="images per side (default: twice the largest batch, SDXL once)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="engine batch sizes (default 1 4 8 16; --tiny 1 4 8)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 30; --tiny 4)")
    parser.add_argument("--size", type=int, default=None, help="pixels (default 512 SD1.5, 1024 SDXL; --tiny 128)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    parser.add_argument("--repeat", type=int, default=2, help="rounds per side; each side keeps its fastest")
    parser.add_argument("--max-batch", type=int, default=128, help="where the largest-batch search stops")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense fp16/bf16 peak, if not in the table")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    args.batches = sorted(set(args.batches or ([1, 4, 8] if args.tiny else [1, 4, 8, 16])))

    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else platform.processor() or "cpu"
    peak = peak_flops(device_name, args.peak_tflops)
    command = "`.venv/bin/python bench/gpu.py" + "".join(
        f" {a}" for a in (sys.argv[1:] if argv is None else argv) if a not in ("--no-write",)) + "`"
    sections = [f"Command: {command}  "]
    for w in workloads(args):
        sections += ["", bench_model(w, args, peak)]
        sync(w.engine.device_name)
    text = "\n".join(sections)
    print(text)
    if not args.no_write:
        write_section(Path(args.doc), "gpu-tiny" if args.tiny else "gpu", text)
        print(f"\nwritten to {args.doc}")


if __name__ == "__main__":
    main()
