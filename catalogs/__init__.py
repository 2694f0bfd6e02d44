"""The data model and the specs that ship with stylematrix."""

from __future__ import annotations

from importlib import resources

import yaml

from catalogs.models import Campaign, ModelProfile

__all__ = ["load_profiles", "parse_campaign", "sample_campaign_text"]


def load_profiles() -> dict[str, ModelProfile]:
    """The model profiles shipped in `catalogs/profiles.yaml`, by name."""
    raw = yaml.safe_load(resources.files("catalogs").joinpath("profiles.yaml").read_text())
    return {name: ModelProfile(name=name, **spec) for name, spec in raw.items()}


def parse_campaign(text: str, origin: str = "campaign") -> Campaign:
    """A Campaign from YAML text; raises ValueError naming `origin` and the problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{origin}: not valid YAML ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{origin}: expected a mapping of campaign fields, got {type(raw).__name__}")
    from pydantic import ValidationError

    try:
        return Campaign.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "campaign"
        name = raw.get("name", "?")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ValueError(f"{origin}: campaign {name!r}: {where}: {first['msg']}{more}") from None


def sample_campaign_text() -> str:
    """The YAML of the sample campaign that `make demo` runs."""
    return resources.files("catalogs").joinpath("sample/campaign.yaml").read_text()
