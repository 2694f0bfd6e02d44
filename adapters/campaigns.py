"""Campaign specs: where a campaign named by a user lives, and its YAML text."""

from __future__ import annotations

import re
from pathlib import Path

from adapters.storage import ObjectStore, join_uri
from catalogs.models import ID_PATTERN

__all__ = ["campaign_uri", "read_campaign"]


def campaign_uri(campaign: str, catalog_uri: str) -> str:
    """Where a campaign named by a user lives: an `s3://` URI or a local file as given,
    a bare name such as `sample` as `<catalog>/campaigns/sample.yaml`."""
    if campaign.startswith("s3://") or Path(campaign).expanduser().is_file():
        return campaign
    if re.fullmatch(ID_PATTERN, campaign):
        return join_uri(catalog_uri, "campaigns", f"{campaign}.yaml")
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
