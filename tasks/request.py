"""Applying a run request's overrides to a campaign spec and its selection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import ValidationError

from catalogs.models import Campaign, ModelProfile, Product, PromptMatrix, RunRequest, StyleSet


def apply_request(campaign: Campaign, request: RunRequest, default_profile: str,
                  profiles: Mapping[str, ModelProfile]) -> tuple[Campaign, ModelProfile]:
    """The campaign as this run will execute it (replaced axes and seeds, a decided model profile) and its profile.

    The one place a run's model profile is resolved and checked: the request's, else the
    campaign's, else the worker's default.

    Raises:
        ValueError: an override names an axis the campaign does not have, makes an invalid matrix,
            or the profile is not one of `profiles`.
    """
    updates: dict = {}
    if request.axes or request.seeds:
        unknown = sorted(set(request.axes) - set(campaign.matrix.axes))
        if unknown:
            raise ValueError(f"campaign {campaign.name!r}: override names axes {unknown} that the matrix does not have "
                             f"(it has {sorted(campaign.matrix.axes)})")
        raw = campaign.matrix.model_dump()
        raw["axes"] = {**raw["axes"], **{k: tuple(v) for k, v in request.axes.items()}}
        if request.seeds:
            raw["seeds"] = tuple(request.seeds)
        try:
            updates["matrix"] = PromptMatrix.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(f"campaign {campaign.name!r}: overrides make an invalid matrix: {exc.errors()[0]['msg']}") from None
    profile = request.profile or campaign.generation.profile or default_profile
    if profile not in profiles:
        raise ValueError(f"campaign {campaign.name!r}: unknown model profile {profile!r}; known: {sorted(profiles)}")
    if profile != campaign.generation.profile:
        updates["generation"] = campaign.generation.model_copy(update={"profile": profile})
    if request.review is not None and request.review != campaign.review.required:
        updates["review"] = campaign.review.model_copy(update={"required": request.review})
    return (campaign.model_copy(update=updates) if updates else campaign), profiles[profile]


def narrow(
    request: RunRequest, products: Sequence[Product], styles: Sequence[StyleSet]
) -> tuple[list[Product], list[StyleSet]]:
    """The campaign's selection cut down to the request's product and style ids, when it names any.

    Raises:
        ValueError: the request names an id the campaign did not select.
    """
    chosen = []
    for kind, wanted, items, key in (
        ("product", request.products, products, "product_id"),
        ("style set", request.styles, styles, "style_id"),
    ):
        have = {getattr(i, key) for i in items}
        missing = [w for w in wanted if w not in have]
        if missing:
            raise ValueError(f"run asks for {kind} ids {missing}, which the campaign does not select (it selects {sorted(have)})")
        chosen.append([i for i in items if not wanted or getattr(i, key) in wanted])
    return chosen[0], chosen[1]
