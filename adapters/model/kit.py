"""The `tiny` model kits: SD1.5- and SDXL-shaped pipelines, ControlNets and IP-Adapters with random weights.

A kit is built locally from a seed, in the same folder layout as the public checkpoints, so
that the engine loads it through exactly the code paths it uses for real weights
(`from_pretrained`, `load_ip_adapter`). Same seed and library versions, same bytes.

- variant `sd15` (`builtin:tiny`): base, a canny, a second ("depth") and a tile ControlNet, an SD x4
  upscaler pipeline (the upscale stage's `tile` and `x4` methods), two
  IP-Adapters sharing one image encoder (so multi-ControlNet and multi-adapter profiles are
  testable), and a tiny CLIP for scoring;
- variant `sdxl` (`builtin:tiny-sdxl`): two text encoders (the second with projection), a
  `text_time` UNet with SDXL's block layout, a canny ControlNet and an IP-Adapter.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

# 2: a tiny CLIP (text + vision with projections) under clip/ for scoring;
# 3: a second ControlNet and IP-Adapter, and the sdxl variant; 4: a tile ControlNet and an x4 upscaler (sd15).
KIT_FORMAT_VERSION = 4
KIT_MANIFEST = "KIT.json"
IP_ADAPTER_WEIGHT_NAME = "ip-adapter_tiny.safetensors"
IP_ADAPTER_2_WEIGHT_NAME = "ip-adapter_tiny_2.safetensors"
SDXL_IP_ADAPTER_WEIGHT_NAME = "ip-adapter_tiny_sdxl.safetensors"
VARIANTS = ("sd15", "sdxl")
SDXL_CROSS_ATTENTION_DIM = 64  # the two text encoders' hidden states side by side, as in SDXL
SDXL_TIME_EMBED_DIM = 8

# Toy sizes with SD1.5's structure: 4 VAE blocks (8x downscale), 3 cross-attention levels.
CROSS_ATTENTION_DIM = 32
IMAGE_EMBED_DIM = 32
IMAGE_ENCODER_SIZE = 32
VOCAB_SIZE = 49408
BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407

# Magnitudes of the weights that a fresh model would have at zero (ControlNet) or that training
# would set (IP-Adapter). Measured on the tiny pipeline, 128 px, 2 steps: a rectangle edge map
# vs a blank one moves pixels by ~15/255 on average, IP scale 0.6 vs 0 by ~20/255, with <1%
# of pixels clipped and no NaNs. Larger values push more pixels to 0/255; much smaller ones and
# "the control image matters" would only measure float noise.
CONTROLNET_ZERO_CONV_STD = 0.1
CONTROLNET_EMBED_GAIN = 1.7  # per-layer gain of the conditioning embedding (silu halves variance)
CONTROLNET_EMBED_STD = 0.5  # std of the embedded edge probe, near that of the latent after conv_in
IP_PROJ_STD = 0.5
IP_KV_STD = 0.5


def build_tiny_kit(dest: Path, *, seed: int = 0, variant: str = "sd15") -> Path:
    """Write the whole kit into `dest` (created, must not hold a kit already) and return it."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny kit variant {variant!r}; expected one of {VARIANTS}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise FileExistsError(f"tiny kit destination {dest} is not empty")

    import torch

    # fork_rng: the builders seed the global generator; the caller's random state is left as it was.
    with quiet_progress_bars(), torch.random.fork_rng(devices=[]):
        if variant == "sdxl":
            _build_sdxl(dest, seed)
        else:
            unet = _build_unet(seed)
            _save_base(dest / "base", unet, seed)
            _save_controlnet(dest / "controlnet", unet, seed)
            _save_controlnet(dest / "controlnet_depth", unet, seed + 100)
            # The tile ControlNet of the `tile` upscale: conditioned on the picture itself (a trained one
            # keeps the tile's content while img2img adds detail); random here, like the others.
            _save_controlnet(dest / "controlnet_tile", unet, seed + 200)
            _save_x4_upscaler(dest / "upscaler", seed + 300)
            ip_dir = dest / "ip_adapter" / "models"
            _save_image_encoder(ip_dir / "image_encoder", seed)
            _save_ip_adapter(ip_dir / IP_ADAPTER_WEIGHT_NAME, unet, seed)
            _save_ip_adapter(ip_dir / IP_ADAPTER_2_WEIGHT_NAME, unet, seed + 100)
            _save_clip(dest / "clip", seed)

    files = _kit_files(dest)
    manifest = {
        "format": KIT_FORMAT_VERSION,
        "variant": variant,
        "seed": seed,
        "revision": _files_sha256(dest, files),
        "files": {rel: (dest / rel).stat().st_size for rel in files},
    }
    # Written last: its presence marks the kit as complete.
    (dest / KIT_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return dest


def ensure_tiny_kit(cache_dir: Path, variant: str = "sd15") -> Path:
    """The kit under `cache_dir/tiny[-sdxl]-<format>/`, built once (atomically) and reused after."""
    cache_dir = Path(cache_dir)
    final = cache_dir / (f"tiny-{KIT_FORMAT_VERSION}" if variant == "sd15" else f"tiny-{variant}-{KIT_FORMAT_VERSION}")
    if kit_manifest(final) is not None:
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the final folder so the rename is atomic (same filesystem); a concurrent
    # builder either wins the rename or finds a complete kit afterwards.
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache_dir))
    try:
        build_tiny_kit(tmp, variant=variant)
        if kit_manifest(final) is not None:
            return final  # another builder finished first: its complete kit stays where readers find it
        if final.exists():
            # An incomplete leftover (a crash mid-copy, files deleted by hand): move it aside first.
            stale = Path(tempfile.mkdtemp(prefix=f".{final.name}-stale-", dir=cache_dir))
            try:
                final.rename(stale / "kit")
            except FileNotFoundError:
                pass  # someone else removed it meanwhile
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:
            if kit_manifest(final) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def kit_manifest(kit: Path) -> dict[str, Any] | None:
    """The parsed KIT.json of a complete kit of the current format, else None."""
    try:
        manifest = json.loads((Path(kit) / KIT_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != KIT_FORMAT_VERSION:
        return None
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return None
    # Sizes, not hashes: cheap enough to check on every load, and catches a truncated copy.
    for rel, size in files.items():
        try:
            if (Path(kit) / rel).stat().st_size != size:
                return None
        except OSError:
            return None
    return manifest


# --------------------------------------------------------------------------- components


def _build_unet(seed: int) -> UNet2DConditionModel:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        attention_head_dim=8,
        cross_attention_dim=CROSS_ATTENTION_DIM,
        norm_num_groups=32,
    )


def _build_vae(seed: int) -> AutoencoderKL:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 1)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=128,
        scaling_factor=0.18215,
    )


def _build_text_encoder(seed: int, *, offset: int = 2, projection: bool = False) -> CLIPTextModel:
    """SD1.5's text encoder at toy size, seeded with `seed + offset`; with `projection`, SDXL's second one."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed + offset)
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=CROSS_ATTENTION_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=CROSS_ATTENTION_DIM,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=EOS_TOKEN_ID,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def build_tokenizer() -> tuple[CLIPTokenizer, dict[str, int], list[tuple[str, ...]]]:
    """The exact SD1.5 CLIP tokenizer, rebuilt offline from open-clip-torch's BPE file."""
    from transformers import CLIPTokenizer

    raw = resources.files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    # Same slice as CLIP's SimpleTokenizer: 49152 - 256 - 2 merges after the version line.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    # transformers 5 takes merges as tuples; strings would be split differently.
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    return tokenizer, vocab, merges


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest above 255.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def sd15_scheduler() -> PNDMScheduler:
    """SD1.5's own PNDM scheduler, as its model repository configures it."""
    from diffusers import PNDMScheduler

    # SD1.5's shipped scheduler config; the engine swaps in others with from_config.
    return PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def _save_base(path: Path, unet: UNet2DConditionModel, seed: int) -> None:
    from diffusers import StableDiffusionPipeline

    tokenizer, vocab, merges = build_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=_build_vae(seed),
        text_encoder=_build_text_encoder(seed),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd15_scheduler(),
        safety_checker=None,
        # No feature extractor: a 224 px default would not fit the 32 px image encoder.
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    _write_slow_tokenizer_files(path / "tokenizer", vocab, merges)


def _write_slow_tokenizer_files(tok_dir: Path, vocab: dict[str, int], merges: list[tuple[str, ...]]) -> None:
    # transformers 5 saves tokenizer.json only; the HF layout also has the slow-tokenizer files.
    (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [" ".join(m) for m in merges]
    (tok_dir / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")


def _save_controlnet(path: Path, unet: UNet2DConditionModel, seed: int) -> None:
    import torch
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 16, 32, 32))
    # from_unet zero-initialises the output convolutions, so a fresh ControlNet ignores its
    # input; random values make the control image matter, as it does for a trained one.
    gen = torch.Generator().manual_seed(seed + 3)
    embedding = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        # PyTorch's default init shrinks the signal at every layer: through 7 convolutions a
        # sparse edge map fades to ~1e-4 of the output. Instead use a variance-keeping init
        # with zero biases (a blank map then embeds to 0), and scale the output convolution
        # so that a fixed edge probe embeds with a chosen std, whatever the seed.
        for conv in [embedding.conv_in, *embedding.blocks]:
            fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (CONTROLNET_EMBED_GAIN / fan_in**0.5))
            conv.bias.zero_()
        out = embedding.conv_out
        out.weight.copy_(torch.randn(out.weight.shape, generator=gen))
        out.bias.zero_()
        probe_std = embedding(_edge_probe()).std()
        out.weight.mul_(CONTROLNET_EMBED_STD / probe_std)
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * CONTROLNET_ZERO_CONV_STD)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * CONTROLNET_ZERO_CONV_STD)
    controlnet.save_pretrained(path, safe_serialization=True)


def _save_x4_upscaler(path: Path, seed: int) -> None:
    """The SD x4 upscaler's pipeline at toy size: a 7-channel UNet (latents + the low-res image) with noise-level
    class embeddings, a 4x VAE (three blocks) and the kit's text encoder, in the layout of
    stabilityai/stable-diffusion-x4-upscaler."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=7, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=CROSS_ATTENTION_DIM, num_class_embeds=1000, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 32, 32), layers_per_block=1,
                        latent_channels=4, norm_num_groups=32, scaling_factor=0.08333)
    tokenizer, vocab, merges = build_tokenizer()
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=_build_text_encoder(seed), tokenizer=tokenizer, unet=unet,
        low_res_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0001,
                                        beta_end=0.02),
        scheduler=DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                beta_end=0.012, prediction_type="v_prediction"),
        safety_checker=None, feature_extractor=None, watermarker=None, max_noise_level=350)
    pipe.save_pretrained(path, safe_serialization=True)
    _write_slow_tokenizer_files(path / "tokenizer", vocab, merges)


def _edge_probe() -> torch.Tensor:
    """A fixed 64 px edge map (white rectangle outline on black), the kind canny produces."""
    import torch

    probe = torch.zeros(1, 3, 64, 64)
    probe[..., 16:48, 16] = probe[..., 16:48, 47] = 1.0
    probe[..., 16, 16:48] = probe[..., 47, 16:48] = 1.0
    return probe


def _save_image_encoder(path: Path, seed: int) -> None:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed + 4)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_ENCODER_SIZE,
        patch_size=4,
        projection_dim=IMAGE_EMBED_DIM,
        hidden_act="quick_gelu",
    )
    CLIPVisionModelWithProjection(config).eval().save_pretrained(path, safe_serialization=True)


def _save_clip(path: Path, seed: int) -> None:
    """A CLIP model with both towers and projections, in the layout `CLIPModel.from_pretrained` reads:
    what the scorers use for prompt alignment and style similarity."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed + 6)
    config = CLIPConfig(
        text_config={
            "vocab_size": VOCAB_SIZE, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
            "bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID, "pad_token_id": EOS_TOKEN_ID,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "image_size": IMAGE_ENCODER_SIZE, "patch_size": 4, "hidden_act": "quick_gelu",
        },
        projection_dim=IMAGE_EMBED_DIM,
    )
    CLIPModel(config).eval().save_pretrained(path, safe_serialization=True)
    tokenizer, _, _ = build_tokenizer()
    size = {"shortest_edge": IMAGE_ENCODER_SIZE}
    crop = {"height": IMAGE_ENCODER_SIZE, "width": IMAGE_ENCODER_SIZE}
    CLIPProcessor(image_processor=CLIPImageProcessor(size=size, crop_size=crop), tokenizer=tokenizer).save_pretrained(path)


def _save_ip_adapter(path: Path, unet: UNet2DConditionModel, seed: int) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(ip_adapter_state(unet, seed=seed), str(path), metadata={"format": "pt"})


def ip_adapter_state(unet: UNet2DConditionModel, *, seed: int, image_embed_dim: int = IMAGE_EMBED_DIM) -> dict[str, torch.Tensor]:
    """Random IP-Adapter weights for `unet` in the original h94 key layout that `load_ip_adapter` converts.

    `image_proj.proj` maps the image embedding to 4 tokens; `ip_adapter.<n>.to_{k,v}_ip` are the
    extra key/value projections, numbered like the h94 checkpoints: every attention processor
    counts, self-attention takes the even numbers, so cross-attention layers get 1, 3, 5, ...
    """
    import torch

    gen = torch.Generator().manual_seed(seed + 5)
    cross = int(unet.config.cross_attention_dim)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(shape, generator=gen) * std).contiguous()

    num_tokens = 4
    state = {
        "image_proj.proj.weight": randn(num_tokens * cross, image_embed_dim, std=IP_PROJ_STD),
        "image_proj.proj.bias": randn(num_tokens * cross, std=IP_PROJ_STD),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = _hidden_size(unet, name)
        state[f"ip_adapter.{key_id}.to_k_ip.weight"] = randn(hidden, cross, std=IP_KV_STD)
        state[f"ip_adapter.{key_id}.to_v_ip.weight"] = randn(hidden, cross, std=IP_KV_STD)
        key_id += 2
    return state


# --------------------------------------------------------------------------- the sdxl variant


def _build_sdxl(dest: Path, seed: int) -> None:
    """SDXL's layout at toy size: blocks (plain, cross-attn, cross-attn) down and mirrored up, two
    transformers per down block and three per up block (so InstantStyle's SDXL block scales apply)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
        # 6 time ids (original size, crop, target size) plus the pooled text embedding.
        projection_class_embeddings_input_dim=6 * SDXL_TIME_EMBED_DIM + CROSS_ATTENTION_DIM,
        cross_attention_dim=SDXL_CROSS_ATTENTION_DIM,
        norm_num_groups=32,
    )

    tokenizer, vocab, merges = build_tokenizer()
    text_encoder = _build_text_encoder(seed)
    text_encoder_2 = _build_text_encoder(seed, offset=6, projection=True)
    pipe = StableDiffusionXLPipeline(
        vae=_build_vae(seed),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        # SDXL base's shipped scheduler config.
        scheduler=EulerDiscreteScheduler(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
        ),
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    base = dest / "base"
    pipe.save_pretrained(base, safe_serialization=True)
    for folder in ("tokenizer", "tokenizer_2"):
        _write_slow_tokenizer_files(base / folder, vocab, merges)
    _save_controlnet(dest / "controlnet", unet, seed)
    ip_dir = dest / "ip_adapter" / "sdxl_models"
    _save_image_encoder(ip_dir / "image_encoder", seed)
    _save_ip_adapter(ip_dir / SDXL_IP_ADAPTER_WEIGHT_NAME, unet, seed)


def _hidden_size(unet: UNet2DConditionModel, processor_name: str) -> int:
    # Mirrors diffusers' _convert_ip_adapter_attn_to_diffusers so the shapes line up.
    channels = list(unet.config.block_out_channels)
    if processor_name.startswith("mid_block"):
        return channels[-1]
    block_id = int(processor_name.split(".")[1])
    if processor_name.startswith("up_blocks"):
        return list(reversed(channels))[block_id]
    return channels[block_id]


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' and diffusers' load/save progress bars, restoring their settings after."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    enabled = [(lib, lib.is_progress_bar_enabled()) for lib in (transformers_logging, diffusers_logging)]
    for lib, _ in enabled:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was_enabled in enabled:
            if was_enabled:
                lib.enable_progress_bar()


# --------------------------------------------------------------------------- hashing


def _kit_files(root: Path) -> list[str]:
    """Every file of the kit except the manifest, as sorted POSIX relative paths."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != KIT_MANIFEST)


def _files_sha256(root: Path, rel_paths: list[str]) -> str:
    digest = hashlib.sha256()
    for rel in rel_paths:
        # Path and length framing, so moving bytes between files changes the revision.
        data = (root / rel).read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


__all__ = [
    "KIT_FORMAT_VERSION", "build_tiny_kit", "build_tokenizer", "ensure_tiny_kit", "ip_adapter_state", "kit_manifest",
    "quiet_progress_bars", "sd15_scheduler",
]
