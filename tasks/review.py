"""A person's review of a run, and the delivery it leads to: decisions, which one wins, where files go.

Decisions are data: every submitted review appends rows to the `reviews` table, and the
latest decision on an image wins. A timeout is recorded too, but it is not a decision: it
never overrides one an image already has. Delivery is derived from the winning decisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from catalogs.models import ID_PATTERN, Campaign, DeliveryFormat, Review
from catalogs.uris import AssetsUri
from tasks.channels import channel_of
from tasks.finish import channel_plan
from tasks.layout import AssetsLayout, RunLayout
from tasks.tables import SCHEMA_VERSION

Decision = Literal["approve", "reject", "hold"]
TIMED_OUT = "timed-out"
DEFAULT_CHANNEL = "default"  # the channel path segment of a campaign's own `delivery:` format
# What the gallery shows for each decision; an image with none is `pending` once any exists.
REVIEW_STATES = {"approve": "approved", "reject": "rejected", "hold": "on hold", TIMED_OUT: "timed out"}
PENDING = "pending"


class ReviewRequest(BaseModel):
    """What a review of a committed run needs: where the run is, how long to wait, how to deliver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    campaign: str = Field(pattern=ID_PATTERN)
    title: str | None = None
    assets: AssetsUri
    run_date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    gallery: str | None = None
    review: Review = Review(required=True)
    delivery: DeliveryFormat = DeliveryFormat()
    # Each channel's format (its own `delivery:`, else the campaign's); empty for a campaign without channels.
    channel_delivery: dict[str, DeliveryFormat] = {}
    # The marketplace each marketplace channel's images are for ("amazon-main": "Amazon"), for the form.
    channel_marketplace: dict[str, str] = {}

    @property
    def layout(self) -> RunLayout:
        """Where the reviewed run lives (tasks/layout.py), with its table partition."""
        return AssetsLayout.at(self.assets).run(self.run_id, self.run_date)


class ImageReview(BaseModel):
    """One image's decision in the review form."""

    asset_id: str = Field(description="Image (asset id)")
    product_id: str = Field(default="", description="Product")
    decision: Decision = Field(default="approve", description="approve: deliver it; reject: never; hold: not yet")
    note: str = Field(default="", description="Note (optional)")


def decided_images(decisions: Sequence[ImageReview], approve_also: Iterable[str],
                   known: Mapping[str, Mapping]) -> tuple[list[ImageReview], list[str]]:
    """The form's decisions as one list (an image listed twice keeps its last entry), and the ids it names
    that are not images of the run (`known`: asset id -> its generations row), which decide nothing."""
    chosen: dict[str, ImageReview] = {}
    unknown: list[str] = []
    extra = [ImageReview(asset_id=a, decision="approve") for a in approve_also if a not in {d.asset_id for d in decisions}]
    for item in [*decisions, *extra]:
        if item.asset_id not in known:
            unknown.append(item.asset_id)
            continue
        chosen[item.asset_id] = item.model_copy(update={"product_id": str(known[item.asset_id]["product_id"])})
    return list(chosen.values()), unknown


def review_rows(request: ReviewRequest, review_id: str, decisions: Sequence[ImageReview], *, known: Mapping[str, Mapping],
                reviewer: str, reviewed_at: datetime) -> list[dict]:
    """The `reviews` rows of one submitted review."""
    return [{
        "schema_version": SCHEMA_VERSION, "review_id": review_id, "run_id": request.run_id,
        "campaign": request.campaign, "asset_id": d.asset_id, "product_id": d.product_id,
        "selected": bool(known[d.asset_id].get("selected")), "decision": d.decision, "note": d.note.strip() or None,
        "reviewer": reviewer.strip() or None, "reviewed_at": reviewed_at,
    } for d in decisions]


def timeout_rows(request: ReviewRequest, review_id: str, selected: Sequence[Mapping], *, at: datetime) -> list[dict]:
    """The `reviews` rows of a review nobody answered in time: one `timed-out` row per image it asked about."""
    return [{
        "schema_version": SCHEMA_VERSION, "review_id": review_id, "run_id": request.run_id,
        "campaign": request.campaign, "asset_id": r["asset_id"], "product_id": r["product_id"], "selected": True,
        "decision": TIMED_OUT, "note": None, "reviewer": None, "reviewed_at": at,
    } for r in selected]


def latest_decisions(rows: Iterable[Mapping]) -> dict[str, Mapping]:
    """Each image's winning `reviews` row: its latest decision (by `reviewed_at`, then `review_id`).

    A `timed-out` row wins only where the image has no decision at all.
    """
    latest: dict[str, Mapping] = {}
    for row in sorted(rows, key=lambda r: (r["decision"] != TIMED_OUT, r["reviewed_at"], r["review_id"])):
        latest[row["asset_id"]] = row
    return latest


def approved(latest: Mapping[str, Mapping]) -> list[str]:
    """The asset ids whose winning decision is approve, sorted."""
    return sorted(a for a, row in latest.items() if row["decision"] == "approve")


def review_states(latest: Mapping[str, Mapping], selected: Iterable[str]) -> dict[str, str]:
    """What the gallery shows per image: the winning decision's state, and `pending` for selected images
    without one. Empty while nothing was decided (a run under review shows no states until then)."""
    if not latest:
        return {}
    states = dict.fromkeys(selected, PENDING)
    states.update({a: REVIEW_STATES[row["decision"]] for a, row in latest.items()})
    return states


def channel_marketplaces(campaign: Campaign) -> dict[str, str]:
    """Each channel made to a marketplace preset, and the marketplace's main image it is (`Amazon main image`)."""
    plans = {name: channel_plan(campaign, name) for name in campaign.channels}
    return {name: f"{plan.marketplace.marketplace} {plan.marketplace.name.split('-', 1)[1]} image ({plan.marketplace.name})"
            for name, plan in plans.items() if plan.marketplace is not None}


def finished_sources(sources: Sequence[Mapping], finishes: Sequence[Mapping]) -> tuple[list[dict], dict[str, str]]:
    """Approved images as delivery takes them: a finished image's file in place of its source, and the
    marketplace images whose checks failed, with why (asset id -> reason): those are not delivered."""
    by_source = {f["source_asset_id"]: f for f in finishes}
    out: list[dict] = []
    refused: dict[str, str] = {}
    for source in sources:
        finish = by_source.get(source["asset_id"])
        if finish is None:
            out.append(dict(source))
        elif finish.get("marketplace") and not finish.get("checks_passed"):
            reasons = "; ".join(finish.get("check_reasons") or ()) or "checks not passed"
            refused[source["asset_id"]] = f"image {source['asset_id']}: {finish['marketplace']} checks fail: {reasons}"
        else:
            out.append({**source, "output_key": finish["output_key"], "sha256": finish["sha256"]})
    return out, refused


def channel_formats(campaign: Campaign) -> dict[str, DeliveryFormat]:
    """Each channel's delivery format: the channel's own `delivery:`, else the campaign's (as sRGB JPEG for a
    marketplace preset's channel, whatever the campaign's format)."""
    markets = channel_marketplaces(campaign)
    return {name: spec.delivery or (campaign.delivery.model_copy(update={"format": "jpeg", "srgb": True})
                                    if name in markets else campaign.delivery)
            for name, spec in campaign.channels.items()}


def delivery_groups(request: ReviewRequest, sources: Sequence[Mapping]) -> list[tuple[str, DeliveryFormat, list[Mapping]]]:
    """Approved images (their generations rows) by where and how they go: (channel path segment, format, rows).

    An image made for a channel goes under that channel's name in its format; an image without one
    (a campaign without `channels:`) under `default` in the campaign's format.
    """
    groups: dict[str, tuple[DeliveryFormat, list[Mapping]]] = {}
    for source in sources:
        channel = channel_of(source)
        fmt = request.channel_delivery.get(channel, request.delivery) if channel else request.delivery
        groups.setdefault(channel or DEFAULT_CHANNEL, (fmt, []))[1].append(source)
    return [(segment, fmt, rows) for segment, (fmt, rows) in groups.items()]


def format_words(fmt: DeliveryFormat) -> str:
    """`JPEG of at most 200,000 bytes`: a format as the review form says it."""
    return fmt.format.upper() + (f" of at most {fmt.max_bytes:,} bytes" if fmt.max_bytes else "")


@dataclass(frozen=True)
class DeliveredFile:
    """One file a delivery wrote (or found written): where, in which format, and what it holds."""

    channel: str  # the channel path segment (`DEFAULT_CHANNEL` for a campaign without channels)
    key: str
    fmt: DeliveryFormat
    quality: int
    width: int
    height: int
    size: int  # bytes
    sha256: str


def delivery_row(request: ReviewRequest, review_id: str, source: Mapping, file: DeliveredFile, *,
                 at: datetime) -> dict:
    """The `deliveries` row of one written file (`source`: the image's generations row)."""
    return {
        "schema_version": SCHEMA_VERSION, "review_id": review_id, "run_id": request.run_id,
        "campaign": request.campaign, "asset_id": source["asset_id"], "product_id": source["product_id"],
        "channel": file.channel, "source_key": source["output_key"], "source_sha256": source["sha256"],
        "delivered_key": file.key, "format": file.fmt.format, "quality": file.quality, "max_bytes": file.fmt.max_bytes,
        "metadata": file.fmt.metadata, "width": file.width, "height": file.height, "bytes": file.size,
        "sha256": file.sha256, "delivered_at": at,
    }


def form_description(request: ReviewRequest, selected: Sequence[Mapping], gallery_url: str | None,
                     image_urls: Mapping[str, str]) -> str:
    """The markdown above the review form: what is asked, of whom, until when, and the selected images."""
    named = f"{request.title} ({request.campaign})" if request.title else request.campaign
    lines = [f"**Review of {named}** · run `{request.run_id}`", ""]
    if request.review.reviewers:
        lines += [f"For: {', '.join(request.review.reviewers)}.", ""]
    delivered_as = ("; ".join(f"{name}: {format_words(fmt)}" for name, fmt in request.channel_delivery.items())
                    if request.channel_delivery else format_words(request.delivery))
    lines += [f"{len(selected)} selected images. Each is set to **approve**: change those that should not go out "
              "to *reject* or *hold*, add a note where it helps, and approve any other image of the run by its id "
              f"below. Approved images are delivered as {delivered_as}; without a decision within {request.review.wait_hours:g} h nothing is delivered.", ""]
    if gallery_url:
        lines += [f"[Open the gallery]({gallery_url})" if gallery_url.startswith("http") else f"Gallery: `{gallery_url}`",
                  ""]
    markets = request.channel_marketplace
    if markets:
        lines += ["Marketplace images are delivered only when their checks pass (long side, white background, "
                  "product fill, no added text).", ""]
    lines += ["| # | product | " + ("for | " if markets else "") + "image | asset id |",
              "|---|---|" + ("---|" if markets else "") + "---|---|"]
    for n, r in enumerate(selected, 1):
        url = image_urls.get(r["asset_id"])
        picture = f"![{r['asset_id']}]({url})" if url else f"`{r['output_key']}`"
        target = (markets.get(channel_of(r) or "", channel_of(r) or "any") + " | ") if markets else ""
        lines.append(f"| {n} | {r['product_id']} | {target}{picture} | `{r['asset_id']}` |")
    return "\n".join(lines) + "\n"
