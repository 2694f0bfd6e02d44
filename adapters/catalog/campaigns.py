"""Campaign specs: where a campaign named by a user lives, its YAML text, and the campaign a request runs."""

from __future__ import annotations

import re
from pathlib import Path

from adapters.infra.storage import ObjectStore
from catalogs import load_profiles, parse_campaign
from catalogs.models import ID_PATTERN, Campaign, ModelProfile, RunRequest
from tasks.channels import resolve_channels
from tasks.layout import CatalogLayout
from tasks.plan import check_control_scales
from tasks.request import apply_request

__all__ = ["campaign_uri", "read_campaign", "resolve_campaign"]


def campaign_uri(campaign: str, catalog_uri: str) -> str:
    """Where a campaign named by a user lives: an `s3://` URI or a local file as given,
    a bare name such as `sample` as `<catalog>/campaigns/sample.yaml`."""
    if campaign.startswith("s3://") or Path(campaign).expanduser().is_file():
        return campaign
    if re.fullmatch(ID_PATTERN, campaign):
        return CatalogLayout.at(catalog_uri).campaign(campaign)
    return campaign  # a path that does not exist: read_campaign says so


def read_campaign(store: ObjectStore | None, spec: str) -> str:
    """The YAML text of a campaign named by a local path or an `s3://` URI."""
    if spec.startswith("s3://"):
        if store is None:
            raise ValueError(f"campaign {spec!r} is on S3, but no object store was given to read it")
        try:
            data = store.get(spec)
        except FileNotFoundError:
            raise FileNotFoundError(f"campaign {spec!r} not found: no such object") from None
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"campaign {spec!r} not found: no such local file (or an s3:// URI)")
        data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"campaign {spec!r} is not UTF-8 text") from None


def resolve_campaign(store: ObjectStore, request: RunRequest, catalog: str,
                     default_profile: str) -> tuple[Campaign, ModelProfile]:
    """The campaign as a run executes it, and its model profile: every cheap check of a request.

    The campaign flow calls it first; the CLI calls it too before it imports torch or starts
    Prefect, so a bad spec fails in a fraction of a second. Plain calls, not tasks.

    Raises:
        ValueError: (one line, naming the campaign) a bad spec, override, profile, control scale or channel.
        FileNotFoundError: the campaign file does not exist.
    """
    text = read_campaign(store, campaign_uri(request.campaign, catalog))
    spec, profile = apply_request(parse_campaign(text, origin=request.campaign), request, default_profile,
                                  load_profiles())
    check_control_scales(spec, profile)
    resolve_channels(spec, profile)
    return spec, profile
