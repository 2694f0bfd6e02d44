"""The tiny model kit and profile loading, through the real diffusers APIs (CPU, offline, random weights)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from adapters.infra.local_s3 import LocalS3Server
from adapters.infra.settings import Settings
from adapters.model.kit import KIT_FORMAT_VERSION, build_tiny_kit, ensure_tiny_kit, kit_manifest
from adapters.model.weights import (
    library_versions,
    load_pipeline,
    mirror_s3_prefix,
    profile_revision,
    resolve_weights,
)
from catalogs import load_profiles
from catalogs.models import ControlNetRef, IPAdapterRef, ModelProfile, WeightsRef

if TYPE_CHECKING:
    from diffusers import StableDiffusionControlNetPipeline

SIZE = 64


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def kit(model_cache: Path) -> Path:
    """The kit, built once per session through the same entry point the engine uses."""
    return ensure_tiny_kit(model_cache)


@pytest.fixture(scope="session")
def tiny_profile() -> ModelProfile:
    return load_profiles()["tiny"]


@pytest.fixture(scope="session")
def pipe(kit: Path, model_cache: Path, tiny_profile: ModelProfile) -> StableDiffusionControlNetPipeline:
    return load_pipeline(tiny_profile, Settings(model_cache=model_cache), device="cpu", dtype=torch.float32)


@pytest.fixture
def hf_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, offline Hugging Face cache (the attributes huggingface_hub reads at call time)."""
    from huggingface_hub import constants

    hub = tmp_path / "hf-hub"
    hub.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    return hub


def _edges() -> Image.Image:
    """A canny-like control image: a white rectangle outline on black."""
    arr = np.zeros((SIZE, SIZE, 3), np.uint8)
    arr[16:48, [16, 47]] = 255
    arr[[16, 47], 16:48] = 255
    return Image.fromarray(arr)


def _reference(color: tuple[int, int, int] = (200, 40, 40)) -> Image.Image:
    rng = np.random.default_rng(7)
    arr = np.clip(rng.normal(color, 30, (48, 48, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _generate(
    pipe: StableDiffusionControlNetPipeline,
    *,
    control: Image.Image,
    ip_scale: float = 0.6,
    reference: Image.Image | None = None,
) -> np.ndarray:
    """Two images (seeds 0 and 1) at 64 px, 2 steps, with classifier-free guidance."""
    pipe.set_ip_adapter_scale(ip_scale)
    out = pipe(
        ["a photo of a red mug on a table"] * 2,
        image=control,
        ip_adapter_image=reference or _reference(),
        height=SIZE,
        width=SIZE,
        num_inference_steps=2,
        generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
        output_type="np",
    )
    return out.images


def _mean_abs_255(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean() * 255)


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- the kit


def test_kit_layout_matches_the_tiny_profile(kit: Path, tiny_profile: ModelProfile) -> None:
    manifest = json.loads((kit / "KIT.json").read_text())
    assert manifest["format"] == KIT_FORMAT_VERSION and manifest["seed"] == 0
    assert len(manifest["revision"]) == 64
    for rel in (
        "base/model_index.json",
        "base/unet/diffusion_pytorch_model.safetensors",
        "base/vae/diffusion_pytorch_model.safetensors",
        "base/text_encoder/model.safetensors",
        "base/tokenizer/tokenizer.json",
        "base/tokenizer/vocab.json",
        "base/tokenizer/merges.txt",
        "base/scheduler/scheduler_config.json",
        "controlnet/config.json",
        "controlnet/diffusion_pytorch_model.safetensors",
        "controlnet_depth/diffusion_pytorch_model.safetensors",
        "controlnet_tile/diffusion_pytorch_model.safetensors",
        "upscaler/model_index.json",
        "upscaler/unet/diffusion_pytorch_model.safetensors",
        "ip_adapter/models/ip-adapter_tiny.safetensors",
        "ip_adapter/models/ip-adapter_tiny_2.safetensors",
        "ip_adapter/models/image_encoder/config.json",
        "ip_adapter/models/image_encoder/model.safetensors",
    ):
        assert (kit / rel).is_file(), rel
    assert not list(kit.rglob("*.bin")), "safetensors only"
    index = json.loads((kit / "base/model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    ip = tiny_profile.ip_adapter
    assert (kit / str(ip.subfolder) / str(ip.weight_name)).is_file()
    size_mb = sum(p.stat().st_size for p in kit.rglob("*") if p.is_file()) / 2**20
    assert 10 < size_mb < 60  # the x4 upscaler carries its own text encoder and tokenizer (about 15 MB)


def test_ip_adapter_file_uses_the_h94_key_layout(kit: Path) -> None:
    with safe_open(kit / "ip_adapter/models/ip-adapter_tiny.safetensors", framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    assert shapes["image_proj.proj.weight"] == (4 * 32, 32)  # 4 image tokens x cross_attention_dim
    assert shapes["image_proj.norm.weight"] == (32,)
    kv = sorted(int(k.split(".")[1]) for k in shapes if k.endswith("to_k_ip.weight"))
    # Odd numbers only: the h94 numbering counts self-attention processors too.
    assert kv == list(range(1, 2 * len(kv), 2)) and len(kv) == 10
    assert all(f"ip_adapter.{n}.to_v_ip.weight" in shapes for n in kv)


def test_same_seed_same_bytes_other_seed_other_weights(kit: Path, tmp_path: Path) -> None:
    again = build_tiny_kit(tmp_path / "again", seed=0)
    assert _file_hashes(again) == _file_hashes(kit)
    other = build_tiny_kit(tmp_path / "other", seed=1)
    assert kit_manifest(other)["revision"] != kit_manifest(kit)["revision"]
    a, b = _file_hashes(kit), _file_hashes(other)
    assert a["base/unet/diffusion_pytorch_model.safetensors"] != b["base/unet/diffusion_pytorch_model.safetensors"]
    assert a["base/unet/config.json"] == b["base/unet/config.json"]


def test_build_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(FileExistsError):
        build_tiny_kit(tmp_path)


def test_ensure_reuses_a_complete_kit_and_rebuilds_a_damaged_one(kit: Path, model_cache: Path, tmp_path: Path) -> None:
    unet = kit / "base/unet/diffusion_pytorch_model.safetensors"
    before = unet.stat().st_mtime_ns
    assert ensure_tiny_kit(model_cache) == kit
    assert unet.stat().st_mtime_ns == before

    cache = tmp_path / "cache"
    shutil.copytree(kit, cache / kit.name)
    damaged = cache / kit.name / "controlnet/diffusion_pytorch_model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert kit_manifest(cache / kit.name) is None
    rebuilt = ensure_tiny_kit(cache)
    assert rebuilt == cache / kit.name
    assert kit_manifest(rebuilt)["revision"] == kit_manifest(kit)["revision"]
    assert sorted(p.name for p in cache.iterdir()) == [kit.name], "temp folders are cleaned up"


def test_tokenizer_is_the_sd15_clip_tokenizer(kit: Path) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(kit / "base/tokenizer")
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.model_max_length == 77 and tokenizer.pad_token_id == 49407


def test_tokenizer_loads_from_vocab_and_merges_alone(kit: Path, tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(kit / "base/tokenizer" / name, tmp_path / name)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


# --------------------------------------------------------------------------- loading the tiny profile


def test_tiny_profile_resolves_into_the_kit(kit: Path, model_cache: Path, tiny_profile: ModelProfile) -> None:
    settings = Settings(model_cache=model_cache)
    assert resolve_weights(tiny_profile.base, settings) == str(kit / "base")
    assert resolve_weights(tiny_profile.controlnet, settings) == str(kit / "controlnet")
    assert profile_revision(tiny_profile, settings) == kit_manifest(kit)["revision"]
    assert set(library_versions()) == {"torch", "diffusers", "transformers"}


def test_pipeline_generates_with_control_and_ip_images(pipe: StableDiffusionControlNetPipeline) -> None:
    assert pipe.feature_extractor.crop_size.height == pipe.image_encoder.config.image_size == 32
    images = _generate(pipe, control=_edges())
    assert images.shape == (2, SIZE, SIZE, 3)
    assert np.isfinite(images).all()
    saturated = ((images <= 0.0) | (images >= 1.0)).mean()
    assert saturated < 0.05 and images.std() > 0.02
    assert _mean_abs_255(images[0], images[1]) > 1, "each seed gives its own image"


def test_control_image_changes_the_output(pipe: StableDiffusionControlNetPipeline) -> None:
    edges = _generate(pipe, control=_edges())
    blank = _generate(pipe, control=Image.new("RGB", (SIZE, SIZE)))
    assert _mean_abs_255(edges, blank) > 3


def test_ip_adapter_scale_and_reference_change_the_output(pipe: StableDiffusionControlNetPipeline) -> None:
    off = _generate(pipe, control=_edges(), ip_scale=0.0)
    on = _generate(pipe, control=_edges(), ip_scale=0.8)
    assert _mean_abs_255(off, on) > 3
    other = _generate(pipe, control=_edges(), ip_scale=0.8, reference=_reference((30, 60, 220)))
    assert _mean_abs_255(on, other) > 1
    again = _generate(pipe, control=_edges(), ip_scale=0.8)
    np.testing.assert_array_equal(on, again)


def test_multi_profile_loads_two_controlnets_and_two_adapters(kit: Path, model_cache: Path) -> None:
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    profile = load_profiles()["tiny-multi"]
    assert profile.control_types == ("canny", "depth") and profile.adapter_images == ("style", "product")
    pipe = load_pipeline(profile, Settings(model_cache=model_cache), device="cpu", dtype=torch.float32)
    assert isinstance(pipe.controlnet, MultiControlNetModel) and len(pipe.controlnet.nets) == 2
    assert len(pipe.unet.encoder_hid_proj.image_projection_layers) == 2
    # The two ControlNets and the two adapters are different weights, not one loaded twice.
    a, b = (net.controlnet_mid_block.weight for net in pipe.controlnet.nets)
    assert not torch.equal(a, b)
    assert profile_revision(profile, Settings(model_cache=model_cache)) == kit_manifest(kit)["revision"]


def test_sdxl_kit_has_the_sdxl_layout_and_loads_as_an_sdxl_pipeline(model_cache: Path) -> None:
    from diffusers import StableDiffusionXLControlNetPipeline

    sdxl = ensure_tiny_kit(model_cache, "sdxl")
    assert sdxl.name == f"tiny-sdxl-{KIT_FORMAT_VERSION}" and kit_manifest(sdxl)["variant"] == "sdxl"
    for rel in ("base/text_encoder_2/model.safetensors", "base/tokenizer_2/vocab.json", "controlnet/config.json",
                "ip_adapter/sdxl_models/ip-adapter_tiny_sdxl.safetensors", "ip_adapter/sdxl_models/image_encoder/config.json"):
        assert (sdxl / rel).is_file(), rel
    profile = load_profiles()["tiny-sdxl"]
    pipe = load_pipeline(profile, Settings(model_cache=model_cache), device="cpu", dtype=torch.float32)
    assert isinstance(pipe, StableDiffusionXLControlNetPipeline)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.text_encoder_2.config.projection_dim == 32 and pipe.unet.config.cross_attention_dim == 64
    # SDXL's block layout, so InstantStyle's block names exist: 2 transformers per down block, 3 per up block.
    assert pipe.unet.config.down_block_types[2] == "CrossAttnDownBlock2D" and pipe.unet.config.layers_per_block == 2
    assert profile_revision(profile, Settings(model_cache=model_cache)) == kit_manifest(sdxl)["revision"]


def test_profiles_refuse_ambiguous_controlnets_and_adapters() -> None:
    base = WeightsRef(source="builtin:tiny", subfolder="base")
    ip = IPAdapterRef(source="builtin:tiny", weight_name="a.safetensors")
    canny = ControlNetRef(source="builtin:tiny", subfolder="controlnet")
    with pytest.raises(ValueError, match="two ControlNets take the same control type"):
        ModelProfile(name="x", base=base, controlnet=(canny, canny), ip_adapter=ip)
    with pytest.raises(ValueError, match="first IP-Adapter must take the style references"):
        ModelProfile(name="x", base=base, controlnet=canny, ip_adapter=ip.model_copy(update={"image": "product"}))


# --------------------------------------------------------------------------- other sources and errors


def _profile(name: str, base: WeightsRef, controlnet: ControlNetRef, ip: IPAdapterRef) -> ModelProfile:
    return ModelProfile(name=name, base=base, controlnet=controlnet, ip_adapter=ip)


def _kit_profile(name: str, source: str) -> ModelProfile:
    """The tiny profile's layout, read from another source holding a copy of the kit."""
    return _profile(
        name,
        WeightsRef(source=source, subfolder="base"),
        ControlNetRef(source=source, subfolder="controlnet"),
        IPAdapterRef(source=source, subfolder="ip_adapter/models", weight_name="ip-adapter_tiny.safetensors"),
    )


def test_hf_profile_not_in_an_offline_cache_names_profile_and_repo(hf_offline: Path, tmp_path: Path) -> None:
    settings = Settings(model_cache=tmp_path / "models")
    with pytest.raises(FileNotFoundError) as err:
        load_pipeline(load_profiles()["sd15"], settings, device="cpu", dtype=torch.float32)
    message = str(err.value)
    assert "profile 'sd15': base weights 'stable-diffusion-v1-5/stable-diffusion-v1-5'" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_hf_profile_loads_from_the_local_cache_and_pins_the_commit(hf_offline: Path, kit: Path, tmp_path: Path) -> None:
    # A hand-made HF cache (refs/main -> snapshots/<commit>) holding the kit's pieces as three repos.
    commit = "c0ffee" * 6 + "c0ff"
    for repo, src, dst in (
        ("base", kit / "base", ""),
        ("controlnet", kit / "controlnet", ""),
        ("ip", kit / "ip_adapter/models", "models"),
    ):
        repo_dir = hf_offline / f"models--stylematrix-test--tiny-{repo}"
        (repo_dir / "refs").mkdir(parents=True)
        (repo_dir / "refs/main").write_text(commit)
        shutil.copytree(src, repo_dir / "snapshots" / commit / dst)
    profile = _profile(
        "hf-tiny",
        WeightsRef(source="stylematrix-test/tiny-base", revision="main"),
        ControlNetRef(source="stylematrix-test/tiny-controlnet", revision="main"),
        IPAdapterRef(
            source="stylematrix-test/tiny-ip",
            revision="main",
            subfolder="models",
            weight_name="ip-adapter_tiny.safetensors",
        ),
    )
    settings = Settings(model_cache=tmp_path / "models")
    pipe = load_pipeline(profile, settings, device="cpu", dtype=torch.float32)
    assert pipe.image_encoder is not None
    assert resolve_weights(profile.base, settings) == "stylematrix-test/tiny-base"
    revision = profile_revision(profile, settings)
    assert (
        revision.count(commit) == 3
        and "ip_adapter=stylematrix-test/tiny-ip/models/ip-adapter_tiny.safetensors@" in revision
    )
    assert not (tmp_path / "models").exists(), "HF weights stay in the HF cache"


def test_local_folder_profile_and_its_errors(kit: Path, tmp_path: Path) -> None:
    copy = tmp_path / "weights"
    shutil.copytree(kit, copy)
    settings = Settings(model_cache=tmp_path / "models")
    profile = _kit_profile("local", str(copy))
    assert resolve_weights(profile.base, settings) == str(copy / "base")
    pipe = load_pipeline(profile, settings, device="cpu", dtype=torch.float32)
    assert pipe.unet.config.cross_attention_dim == 32
    first = profile_revision(profile, settings)
    assert first == profile_revision(profile, settings) and "base=local/base@" in first

    (copy / "ip_adapter/models/ip-adapter_tiny.safetensors").unlink()
    assert profile_revision(profile, settings) != first
    with pytest.raises(FileNotFoundError, match=r"profile 'local': IP-Adapter weights: .*ip-adapter_tiny.safetensors"):
        load_pipeline(profile, settings, device="cpu", dtype=torch.float32)
    with pytest.raises(FileNotFoundError, match=r"profile 'gone': base weights: folder .* does not exist"):
        load_pipeline(_kit_profile("gone", str(tmp_path / "nowhere")), settings, device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="unknown builtin 'builtin:huge'"):
        load_pipeline(_kit_profile("huge", "builtin:huge"), settings, device="cpu", dtype=torch.float32)


# --------------------------------------------------------------------------- S3 model mirror


@pytest.fixture
def s3_kit(s3_server: LocalS3Server, kit: Path) -> Iterator[tuple[str, str]]:
    """(endpoint, bucket) of the local S3 server holding the kit under `s3://<bucket>/kit/`."""
    import boto3

    endpoint = s3_server.endpoint
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = "kit-mirror-test"
    client.create_bucket(Bucket=bucket)
    for path in sorted(p for p in kit.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"kit/{path.relative_to(kit).as_posix()}")
    yield endpoint, bucket
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)


def test_s3_profile_mirrors_once_then_only_changes(s3_kit: tuple[str, str], kit: Path, tmp_path: Path) -> None:
    import boto3

    endpoint, bucket = s3_kit
    settings = Settings(model_cache=tmp_path / "models", s3_endpoint=endpoint, s3_region="us-east-1")
    source = f"s3://{bucket}/kit"
    profile = _kit_profile("s3-tiny", source)

    pipe = load_pipeline(profile, settings, device="cpu", dtype=torch.float32)
    assert pipe.controlnet is not None
    folder = tmp_path / "models" / "s3" / bucket / "kit"
    assert resolve_weights(profile.base, settings) == str(folder / "base")
    assert _file_hashes(kit) == {k: v for k, v in _file_hashes(folder).items() if not k.startswith(".")}

    again = mirror_s3_prefix(source, settings)
    assert again.downloaded == () and again.removed == ()
    revision = profile_revision(profile, settings)
    assert again.revision in revision

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.put_object(Bucket=bucket, Key="kit/base/scheduler/scheduler_config.json", Body=b'{"changed": true}')
    client.delete_object(Bucket=bucket, Key="kit/KIT.json")
    changed = mirror_s3_prefix(source, settings)
    assert changed.downloaded == ("base/scheduler/scheduler_config.json",)
    assert changed.removed == ("KIT.json",) and not (folder / "KIT.json").exists()
    assert (folder / "base/scheduler/scheduler_config.json").read_bytes() == b'{"changed": true}'
    assert profile_revision(profile, settings) != revision

    with pytest.raises(FileNotFoundError, match="no objects under this prefix"):
        mirror_s3_prefix(f"s3://{bucket}/nothing-here", settings)


def test_a_builder_that_finishes_second_leaves_the_first_builders_kit_in_place(tmp_path, monkeypatch):
    # Two processes build the kit at once; the slower one must not move the complete kit aside
    # while the other is already reading it.
    import adapters.model.kit as kit

    final = tmp_path / f"tiny-{KIT_FORMAT_VERSION}"

    def slower(out, variant="sd15"):
        build_tiny_kit(final, variant=variant)  # the other builder finishes first, in place
        build_tiny_kit(out, variant=variant)

    monkeypatch.setattr(kit, "build_tiny_kit", slower)
    first_inode = None

    real_manifest = kit.kit_manifest

    def watching(path):
        nonlocal first_inode
        if Path(path) == final and final.exists() and first_inode is None:
            first_inode = (final / "KIT.json").stat().st_ino
        return real_manifest(path)

    monkeypatch.setattr(kit, "kit_manifest", watching)
    assert ensure_tiny_kit(tmp_path) == final
    assert (final / "KIT.json").stat().st_ino == first_inode and real_manifest(final) is not None
    assert [p.name for p in tmp_path.iterdir()] == [final.name]  # no leftovers beside it
