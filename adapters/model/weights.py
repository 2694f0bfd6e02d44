"""Model profiles: where their weights live, how they are loaded, and which exact weights they are.

A `WeightsRef.source` is one of:
- `builtin:tiny` / `builtin:tiny-sdxl`: the random-weight kits, built once into the model cache (adapters/model/kit.py);
- `s3://bucket/prefix`: mirrored into `<model_cache>/s3/bucket/prefix` (changed objects only);
- a local folder (absolute, `./`, `../`, `~`, `file://`, or any existing directory);
- otherwise a Hugging Face repo id, loaded through the HF cache (offline when HF_HUB_OFFLINE=1).

Loading goes through diffusers' own `from_pretrained` and `load_ip_adapter`, so the tiny kit
and the real checkpoints take the same code path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from adapters.infra.settings import Settings
from adapters.infra.storage import ObjectStore, S3Store
from adapters.model.kit import ensure_tiny_kit, kit_manifest, quiet_progress_bars
from catalogs.models import ControlNetRef, IPAdapterRef, ModelProfile, WeightsRef
from tasks.values import first_line

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

TINY_SOURCE = "builtin:tiny"
BUILTIN_KITS = {TINY_SOURCE: "sd15", "builtin:tiny-sdxl": "sdxl"}  # builtin source -> kit variant
S3_INDEX_NAME = ".stylematrix-s3-index.json"
_HF_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class S3Mirror:
    """A local copy of an s3:// prefix and what the last sync did."""

    folder: Path
    revision: str
    downloaded: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True)
class _Location:
    root: str  # a local folder, or an HF repo id
    local: bool


# --------------------------------------------------------------------------- public API


def resolve_weights(ref: WeightsRef, settings: Settings) -> str:
    """What to pass to `from_pretrained` for `ref`.

    A local folder (kit, mirror or directory) comes back with `ref.subfolder` joined on; an HF
    repo id comes back as is, to be loaded with `revision=` and `subfolder=`.
    """
    return _component_path(ref, _locate(ref, settings, f"weights {ref.source!r}", {}))


def load_pipeline(profile: ModelProfile, settings: Settings, *, device: str, dtype: torch.dtype) -> DiffusionPipeline:
    """The profile's ControlNet pipeline (SD1.5 or SDXL) with its IP-Adapters loaded, on `device`, progress bars off.

    Several ControlNets become one MultiControlNetModel, in profile order; several IP-Adapters
    are loaded together and share the first one's image encoder.
    """
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

    refs = _refs(profile)
    if _source_kind(profile.base.source) == "hf" and profile.base.subfolder:
        raise ValueError(
            f"{refs[0][0]}: a pipeline loads from the root of a Hugging Face repo, not subfolder {profile.base.subfolder!r}"
        )
    for label, ref in refs:
        if isinstance(ref, IPAdapterRef) and not ref.weight_name:
            raise ValueError(f"{label}: weight_name is required (the adapter's weight file)")
    # Resolve and check every piece before loading any, so a missing one fails fast.
    mirrors: dict[str, S3Mirror] = {}
    where = {label: _locate(ref, settings, label, mirrors) for label, ref in refs}
    _check_local_files(refs, where)

    # One pipeline load prints half a dozen "Loading weights" bars; the engine logs instead.
    with quiet_progress_bars():
        nets = []
        for label, ref in refs:
            if isinstance(ref, ControlNetRef):
                with _friendly_load_errors(label, ref.source):
                    nets.append(ControlNetModel.from_pretrained(
                        _component_path(ref, where[label]), dtype=dtype, **_hub_kwargs(ref, where[label])
                    ))
        base_label = refs[0][0]
        if profile.pipeline == "sdxl":
            cls, extra = StableDiffusionXLControlNetPipeline, {"add_watermarker": False}
        else:
            cls, extra = StableDiffusionControlNetPipeline, {"safety_checker": None, "requires_safety_checker": False}
        with _friendly_load_errors(base_label, profile.base.source):
            pipe = cls.from_pretrained(
                _component_path(profile.base, where[base_label]),
                controlnet=nets[0] if len(nets) == 1 else nets,
                dtype=dtype,
                **extra,
                **_hub_kwargs(profile.base, where[base_label], subfolder=False),
            )
        adapters = [(label, ref) for label, ref in refs if isinstance(ref, IPAdapterRef)]
        first_label, first = adapters[0]
        hub = [ref.revision for label, ref in adapters if not where[label].local]
        with _friendly_load_errors(first_label, first.source):
            pipe.load_ip_adapter(
                [where[label].root for label, _ in adapters],
                subfolder=[ref.subfolder or "" for _, ref in adapters],
                weight_name=[str(ref.weight_name) for _, ref in adapters],
                image_encoder_folder=first.image_encoder_folder,
                **({"revision": hub[0]} if hub else {}),
            )
    _fit_feature_extractor(pipe)
    pipe.to(device)
    if str(device).startswith("cuda"):
        import torch

        # NHWC convolutions use the tensor cores' fast paths; attention is SDPA by default in torch 2.
        for module in (pipe.unet, pipe.controlnet, pipe.vae):
            module.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def profile_revision(profile: ModelProfile, settings: Settings) -> str:
    """A stable string naming the exact weights of `profile`; part of every asset id.

    A profile made only of one builtin kit is that kit's KIT.json revision. Otherwise
    `base=...;controlnet=...;ip_adapter=...` (extra ControlNets and adapters as `controlnet2=`,
    `ip_adapter2=` ...), each an HF repo (commit from the local cache, else the revision given,
    else `unpinned`), a local folder (hash of file names and sizes: hashing GBs of contents on
    every run is too slow, and mtimes change on copy) or an s3 prefix (hash of the objects' ETags).
    """
    if profile.pipeline == "sim":  # no weights: the simulated GPU's own revision
        from adapters.model.sim_engine import SIM_REVISION

        return SIM_REVISION
    refs = _refs(profile)
    sources = {ref.source for _, ref in refs}
    if len(sources) == 1 and next(iter(sources)) in BUILTIN_KITS:
        return _tiny_manifest(settings, BUILTIN_KITS[next(iter(sources))])["revision"]
    parts = [f"{_role_key(label)}={_ref_revision(ref, settings, label)}" for label, ref in refs]
    return ";".join(parts)


def load_tile_controlnet(profile: ModelProfile, settings: Settings, *, dtype: torch.dtype):
    """The profile's tile ControlNet (the `tile` upscale's), on the CPU; ValueError when the profile names none."""
    from diffusers import ControlNetModel

    ref = _upscale_ref(profile, "tile_controlnet")
    label = f"profile {profile.name!r}: tile ControlNet weights"
    where = _locate(ref, settings, label, {})
    with quiet_progress_bars(), _friendly_load_errors(label, ref.source):
        return ControlNetModel.from_pretrained(_component_path(ref, where), dtype=dtype, **_hub_kwargs(ref, where))


def load_x4_upscaler(profile: ModelProfile, settings: Settings, *, device: str, dtype: torch.dtype):
    """The profile's SD x4 upscaler pipeline on `device`, progress bars off; ValueError when the profile names none."""
    from diffusers import StableDiffusionUpscalePipeline

    ref = _upscale_ref(profile, "upscaler")
    label = f"profile {profile.name!r}: x4 upscaler weights"
    where = _locate(ref, settings, label, {})
    with quiet_progress_bars(), _friendly_load_errors(label, ref.source):
        pipe = StableDiffusionUpscalePipeline.from_pretrained(_component_path(ref, where), dtype=dtype,
                                                              **_hub_kwargs(ref, where, subfolder=False))
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def upscale_revision(profile: ModelProfile, settings: Settings, what: str) -> str:
    """The revision of the profile's `tile_controlnet` or `upscaler`: part of a finished image's id."""
    ref = _upscale_ref(profile, what)
    return _ref_revision(ref, settings, f"profile {profile.name!r}: {what} weights")


def _upscale_ref(profile: ModelProfile, what: str) -> WeightsRef:
    ref = getattr(profile, what)
    if ref is None:
        method = "tile" if what == "tile_controlnet" else "x4"
        raise ValueError(f"profile {profile.name!r} names no {what}: upscale method {method!r} needs one "
                         "(catalogs/profiles.yaml), or use method lanczos")
    return ref


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose numerics shape the pixels."""
    return {name: metadata.version(name) for name in ("torch", "diffusers", "transformers")}


def mirror_s3_prefix(uri: str, settings: Settings) -> S3Mirror:
    """Bring `s3://bucket/prefix` into the model cache, downloading only objects whose ETag or size changed."""
    bucket, prefix = _split_s3(uri)
    folder = settings.model_cache / "s3" / bucket / prefix
    store = S3Store.from_settings(settings)
    listing = _s3_listing(store, bucket, prefix, uri)

    index_path = folder / S3_INDEX_NAME
    try:
        index: dict[str, dict[str, Any]] = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}

    downloaded: list[str] = []
    for rel, entry in sorted(listing.items()):
        target = folder / rel
        if index.get(rel) == entry and target.is_file() and target.stat().st_size == entry["size"]:
            continue
        key = f"{prefix}/{rel}" if prefix else rel
        # By ETag: the bytes we keep are those of the ETag we record, even if the object
        # is replaced between listing and download.
        with _atomic_file(target) as out:
            store.download(f"s3://{bucket}/{key}", out, etag=entry["etag"].strip('"'))
        index[rel] = entry
        downloaded.append(rel)

    # Only files this mirror downloaded are removed; anything else in the folder is left alone.
    removed = sorted(set(index) - set(listing))
    for rel in removed:
        (folder / rel).unlink(missing_ok=True)
        del index[rel]
    if downloaded or removed or not index_path.is_file():
        with _atomic_file(index_path) as out:
            out.write(json.dumps(index, indent=1, sort_keys=True).encode())
    return S3Mirror(
        folder=folder, revision=_listing_revision(listing), downloaded=tuple(downloaded), removed=tuple(removed)
    )


# --------------------------------------------------------------------------- resolving


def _refs(profile: ModelProfile) -> list[tuple[str, WeightsRef]]:
    """Every weights reference of a profile with the label errors name it by, base first."""
    name = f"profile {profile.name!r}"
    refs: list[tuple[str, WeightsRef]] = [(f"{name}: base weights", profile.base)]
    for i, ref in enumerate(profile.controlnets):
        refs.append((f"{name}: ControlNet{'' if i == 0 else f' {i + 1}'} weights", ref))
    for i, ref in enumerate(profile.ip_adapters):
        refs.append((f"{name}: IP-Adapter{'' if i == 0 else f' {i + 1}'} weights", ref))
    return refs


def _role_key(label: str) -> str:
    """`profile 'x': ControlNet 2 weights` -> `controlnet2`."""
    what = label.split(": ", 1)[1].removesuffix(" weights").lower().replace("-", "_").replace(" ", "")
    return what


def _source_kind(source: str) -> str:
    if source.startswith("builtin:"):
        return "builtin"
    if source.startswith("s3://"):
        return "s3"
    if source.startswith(("/", "./", "../", "~", "file://")) or os.path.isdir(source):
        # An existing directory wins over a same-named repo id, as in diffusers itself.
        return "local"
    return "hf"


def _locate(ref: WeightsRef, settings: Settings, label: str, mirrors: dict[str, S3Mirror]) -> _Location:
    kind = _source_kind(ref.source)
    if kind == "builtin":
        if ref.source not in BUILTIN_KITS:
            raise ValueError(f"{label}: unknown builtin {ref.source!r} (known: {sorted(BUILTIN_KITS)})")
        return _Location(str(ensure_tiny_kit(settings.model_cache, BUILTIN_KITS[ref.source])), local=True)
    if kind == "s3":
        if ref.source not in mirrors:
            mirrors[ref.source] = mirror_s3_prefix(ref.source, settings)
        return _Location(str(mirrors[ref.source].folder), local=True)
    if kind == "local":
        folder = Path(ref.source.removeprefix("file://")).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"{label}: folder {str(folder)!r} does not exist")
        return _Location(str(folder), local=True)
    if not _HF_REPO_ID.match(ref.source):
        raise ValueError(
            f"{label}: {ref.source!r} is not a Hugging Face repo id, a local folder, an s3:// prefix or {TINY_SOURCE!r}"
        )
    if _hf_offline() and _hf_cached_commit(ref.source, ref.revision) is None:
        revision = f" (revision {ref.revision!r})" if ref.revision else ""
        raise FileNotFoundError(
            f"{label} {ref.source!r}{revision} are not in the local Hugging Face cache and HF_HUB_OFFLINE=1"
        )
    return _Location(ref.source, local=False)


def _component_path(ref: WeightsRef, loc: _Location) -> str:
    if loc.local and ref.subfolder:
        return str(Path(loc.root) / ref.subfolder)
    return loc.root


def _hub_kwargs(ref: WeightsRef, loc: _Location, *, subfolder: bool = True) -> dict[str, Any]:
    """`revision`/`subfolder` for an HF repo; nothing for a local folder (already joined)."""
    if loc.local:
        return {}
    kwargs: dict[str, Any] = {"revision": ref.revision}
    if subfolder and ref.subfolder:
        kwargs["subfolder"] = ref.subfolder
    return kwargs


def _check_local_files(refs: list[tuple[str, WeightsRef]], where: dict[str, _Location]) -> None:
    """Name the missing file of a local kit, folder or mirror before diffusers does it obscurely."""
    needed: list[tuple[str, Path]] = []
    for i, (label, ref) in enumerate(refs):
        loc = where[label]
        if not loc.local:
            continue
        if isinstance(ref, IPAdapterRef):
            adapter_dir = Path(loc.root) / (ref.subfolder or "")
            needed.append((label, adapter_dir / str(ref.weight_name)))
            # Same rule as load_ip_adapter: a bare name sits inside the subfolder, a path is from the root.
            encoder = ref.image_encoder_folder
            encoder_dir = adapter_dir / encoder if "/" not in encoder else Path(loc.root) / encoder
            needed.append((f"{label} image encoder", encoder_dir / "config.json"))
        else:
            marker = "model_index.json" if i == 0 else "config.json"
            needed.append((label, Path(_component_path(ref, loc)) / marker))
    for what, path in needed:
        if not path.is_file():
            raise FileNotFoundError(f"{what}: {str(path)!r} is missing")


@contextmanager
def _friendly_load_errors(label: str, source: str) -> Iterator[None]:
    """Re-raise a loader's OSError as FileNotFoundError naming the profile and the weights."""
    try:
        yield
    except OSError as exc:
        raise FileNotFoundError(f"{label}: could not load {source!r}: {first_line(exc)}") from exc


def _fit_feature_extractor(pipe: DiffusionPipeline) -> None:
    """Make the image processor produce what the image encoder expects.

    `load_ip_adapter` only creates a processor when none is registered; a pipeline that ships a
    224 px one with a smaller encoder (the tiny kit's is 32 px) would fail at the first image.
    """
    from transformers import CLIPImageProcessor

    if pipe.image_encoder is None:
        return
    size = int(pipe.image_encoder.config.image_size)
    current = pipe.feature_extractor
    crop = getattr(current, "crop_size", None)
    crop_hw = (getattr(crop, "height", None), getattr(crop, "width", None)) if crop is not None else None
    if current is None or crop_hw != (size, size):
        pipe.register_modules(feature_extractor=CLIPImageProcessor(size=size, crop_size=size))


# --------------------------------------------------------------------------- Hugging Face cache


def _hf_offline() -> bool:
    from huggingface_hub import is_offline_mode

    return bool(is_offline_mode())


def _hf_cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a revision points to in the local HF cache, or None if it is not there."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    repo_dir = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    rev = revision or "main"
    commit = rev if _COMMIT.match(rev) else None
    if commit is None:
        try:
            commit = (repo_dir / "refs" / rev).read_text().strip()
        except OSError:
            return None
    return commit if (repo_dir / "snapshots" / commit).is_dir() else None


# --------------------------------------------------------------------------- revisions


def _tiny_manifest(settings: Settings, variant: str = "sd15") -> dict[str, Any]:
    kit = ensure_tiny_kit(settings.model_cache, variant)
    manifest = kit_manifest(kit)
    if manifest is None:  # only if someone deletes files between the two calls
        raise FileNotFoundError(f"tiny kit at {str(kit)!r} is incomplete")
    return manifest


def _ref_revision(ref: WeightsRef, settings: Settings, label: str) -> str:
    where = "/".join(p for p in (ref.subfolder, ref.weight_name) if p)
    kind = _source_kind(ref.source)
    if kind == "builtin":
        _locate(ref, settings, label, {})  # validates the builtin name
        name, rev = ref.source, _tiny_manifest(settings, BUILTIN_KITS[ref.source])["revision"]
    elif kind == "s3":
        bucket, prefix = _split_s3(ref.source)
        name, rev = "s3", _listing_revision(_s3_listing(S3Store.from_settings(settings), bucket, prefix, ref.source))
    elif kind == "local":
        folder = Path(_component_path(ref, _locate(ref, settings, label, {})))
        name, rev = "local", _folder_fingerprint(folder)
    else:
        rev = ref.revision if ref.revision and _COMMIT.match(ref.revision) else None
        name, rev = ref.source, rev or _hf_cached_commit(ref.source, ref.revision) or ref.revision or "unpinned"
    return f"{name}{'/' + where if where else ''}@{rev}"


def _folder_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != S3_INDEX_NAME):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- S3


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    if not bucket:
        raise ValueError(f"expected s3://bucket[/prefix], got {uri!r}")
    return bucket, prefix


def _s3_listing(store: ObjectStore, bucket: str, prefix: str, uri: str) -> dict[str, dict[str, Any]]:
    """`{relative path: {"etag", "size"}}` of every object under the prefix.

    The ETag is kept quoted, as S3 sends it: the mirror's index and the revision were written
    that way, and an unquoted one would download every mirror again and change every asset id.
    """
    listing: dict[str, dict[str, Any]] = {}
    key_prefix = f"{prefix}/" if prefix else ""
    for info in store.list(f"s3://{bucket}/{key_prefix}"):
        rel = info.key[len(key_prefix) :]
        if not rel or rel.endswith("/"):
            continue  # folder markers some tools create
        parts = PurePosixPath(rel).parts
        if PurePosixPath(rel).is_absolute() or ".." in parts or S3_INDEX_NAME in parts:
            raise ValueError(f"{uri}: object key {info.key!r} cannot be mirrored to a local path")
        listing[rel] = {"etag": f'"{info.etag}"', "size": info.size}
    if not listing:
        raise FileNotFoundError(f"{uri}: no objects under this prefix")
    return listing


@contextmanager
def _atomic_file(target: Path) -> Iterator[BinaryIO]:
    """A file to write `target` through: a uniquely named temp file, renamed when the block ends.

    Workers sharing a model cache may mirror the same prefix at once, and a reader must never
    see half a file; a block that raises leaves `target` as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _listing_revision(listing: dict[str, dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(listing):
        digest.update(f"{rel}\0{listing[rel]['etag']}\0{listing[rel]['size']}\n".encode())
    return digest.hexdigest()


__all__ = ["S3Mirror", "library_versions", "load_pipeline", "load_tile_controlnet", "load_x4_upscaler", "mirror_s3_prefix",
           "profile_revision", "resolve_weights", "upscale_revision"]
