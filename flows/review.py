"""A person's review of a committed run in the Prefect UI, and the delivery of what they approve.

The campaign flow commits its run, then starts the `review` deployment for it and ends: the
GPU work and the campaign's process are done. The review flow run reads the run, emits
`stylematrix.review.requested` and suspends itself with a form (`suspend_flow_run` with
`wait_for_input`): its process exits and no worker slot is held while people take their time.
Submitting the form in the UI resumes the run; a worker starts it again from the top,
`suspend_flow_run` returns the decisions, and the flow records them, delivers the approved
images and emits `stylematrix.delivery.completed`.

Nobody answering before the deadline: Prefect's server fails the suspended run, and the
`review-timeout` deployment (triggered by that failure) records the review as timed out.
Nothing is delivered for it.

A suspended review has no process and sends no heartbeat: the server's zombie automation leaves it
alone however long it waits, and crashes a review only when its process dies while it runs; a
crashed review is scheduled again and finishes with the answer already submitted (flows/zombies.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID

import pydantic
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.events import emit_event
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput, read_flow_run_input
from prefect.input.run_input import keyset_from_base_key

from adapters.infra.settings import get_settings
from adapters.infra.storage import S3Store
from adapters.steps import delivery
from flows import steps
from flows.artifacts import artifact_key
from tasks.review import (
    ImageReview,
    ReviewRequest,
    approved,
    decided_images,
    delivery_groups,
    finished_sources,
    form_description,
    latest_decisions,
    review_rows,
    review_states,
    timeout_rows,
)

REVIEW_REQUESTED = "stylematrix.review.requested"
DELIVERY_COMPLETED = "stylematrix.delivery.completed"
PAUSE_KEY = "review"  # the review's one suspension: when it has fired, this attempt is the resumed one


class ReviewForm(RunInput):
    """The form the Prefect UI shows on a run waiting for review."""

    reviewer: str = pydantic.Field(min_length=1, description="Your name (recorded with every decision)")
    decisions: list[ImageReview] = pydantic.Field(default=[], description="The selected images: approve, reject or hold")


def run_resource(request: ReviewRequest) -> dict[str, str]:
    """The Prefect resource of a run: what the review and delivery events are about."""
    return {"prefect.resource.id": f"stylematrix.run.{request.run_id}", "prefect.resource.name": request.run_id,
            "stylematrix.campaign": request.campaign}


def review_form(run: delivery.ReviewedRun) -> type[ReviewForm]:
    """The form of this run: ReviewForm, plus a choice of the run's other images to approve as well."""
    others = sorted(set(run.known) - {r["asset_id"] for r in run.selected})
    if not others:
        return ReviewForm
    # The run's own ids, so the UI offers a list to pick from (an enum even for one id, not a constant).
    one = Annotated[Literal[tuple(others)], pydantic.WithJsonSchema({"type": "string", "enum": others})]  # type: ignore[valid-type]
    choice = list[one]  # type: ignore[valid-type]
    return pydantic.create_model(
        "ReviewForm", __base__=ReviewForm,
        approve_also=(choice, pydantic.Field(default=[], description="Approve these images too (not selected by the run)")),
    )


def start_review(request: ReviewRequest, deployment: str) -> str:
    """Start the review of a committed run on `deployment`; what to tell the person who started the run.

    Without a Prefect server that has the deployment (a local run on the ephemeral API), no review
    can wait for anyone: the answer says so, and the run's images stay undelivered.
    """
    try:
        run = run_deployment(name=deployment, parameters={"request": request.model_dump(mode="json")}, timeout=0,
                             as_subflow=False, flow_run_name=f"review-{request.run_id}")
    except Exception as exc:  # noqa: BLE001 - the run is committed; a review that cannot start is reported, not raised
        get_run_logger().warning("review of run %s not started: %s: %s", request.run_id, type(exc).__name__, exc)
        return (f"not started ({type(exc).__name__}: deployment {deployment!r} on a Prefect server is needed; "
                "see docs/operations.md)")
    return f"waiting for a decision in the Prefect UI (flow run {run.name}, {run.id})"


@flow(name="review-run")
def review_run(request: ReviewRequest) -> dict:
    """Wait for a person's decisions on a committed run's images, record them, deliver what is approved."""
    store = S3Store.from_settings(get_settings())
    run = steps.reviewed_run(store, request)
    context = FlowRunContext.get()
    flow_run = context.flow_run if context else None
    form = review_form(run)
    answer = submitted_answer(form, flow_run.id) if flow_run else None
    if answer is None:
        answer = wait_for_answer(store, request, run, form, flow_run)
    return record_review(store, request, run, str(flow_run.id) if flow_run else request.run_id, answer)


def wait_for_answer(store: S3Store, request: ReviewRequest, run: delivery.ReviewedRun, form: type[ReviewForm],
                    flow_run: FlowRun | None) -> ReviewForm:
    """Ask for the decisions (the first run only emits `stylematrix.review.requested`), then suspend with the form:
    the process exits, and the answer is returned when a worker runs the resumed flow again from the top."""
    logger = get_run_logger()
    asked = flow_run is not None and (PAUSE_KEY in (flow_run.empirical_policy.pause_keys or set())
                                      or flow_run.run_count > 1)
    wait_seconds = int(request.review.wait_hours * 3600)
    selected = run.selected
    if not asked:
        payload = {"run_id": request.run_id, "campaign": request.campaign, "selected": len(selected),
                   "reviewers": list(request.review.reviewers), "wait_hours": request.review.wait_hours,
                   "gallery": request.gallery, "flow_run_id": str(flow_run.id) if flow_run else None,
                   "ui_url": _ui_url(flow_run.id) if flow_run else None}
        emit_event(event=REVIEW_REQUESTED, resource=run_resource(request), payload=payload)
        logger.info("run %s: %d selected images wait for review (for %s, %g h)", request.run_id, len(selected),
                    ", ".join(request.review.reviewers) or "anyone", request.review.wait_hours)
    links, gallery = delivery.review_links(store, request, run)
    filled = form.with_initial_data(
        description=form_description(request, selected, gallery, links),
        decisions=[ImageReview(asset_id=r["asset_id"], product_id=r["product_id"]) for r in selected],
    )
    return suspend_flow_run(wait_for_input=filled, timeout=wait_seconds, key=PAUSE_KEY)


def submitted_answer(form: type[ReviewForm], flow_run_id: UUID) -> ReviewForm | None:
    """The decisions already submitted to this flow run's form, if any.

    A review that crashed after its form was submitted (its worker died mid-delivery) is scheduled
    again from Crashed (flows/zombies.py), and leaving a final state clears Prefect's record of the
    suspension: `suspend_flow_run` would suspend again and drop the answer. The answer itself is still
    stored under the suspension's keys, so the review reads it and goes on to deliver.
    """
    value = read_flow_run_input(keyset_from_base_key(f"suspended-{PAUSE_KEY}")["response"], flow_run_id=flow_run_id)
    return form.model_validate(value) if value else None


def record_review(store: S3Store, request: ReviewRequest, run: delivery.ReviewedRun, review_id: str,
                  answer: ReviewForm) -> dict:
    """Record one submitted review, deliver every image whose latest decision is approve, tell Prefect."""
    logger = get_run_logger()
    decisions, unknown = decided_images(answer.decisions, getattr(answer, "approve_also", []), run.known)
    for asset_id in unknown:
        logger.warning("review %s: %r is not a deliverable image of run %s; ignored", review_id, asset_id, request.run_id)
    rows = review_rows(request, review_id, decisions, known=run.known, reviewer=answer.reviewer,
                       reviewed_at=datetime.now(UTC))
    steps.write_review_part(store, request, "reviews", review_id, rows)
    latest = latest_decisions(steps.read_review_parts(store, request.layout, "reviews"))
    recorded = {r["delivered_key"] for r in steps.read_review_parts(store, request.layout, "deliveries")}
    # A finished image goes out in place of its source; a marketplace image only when its checks pass.
    sources, refused = finished_sources([run.known[a] for a in approved(latest) if a in run.known], run.finishes)
    for why in refused.values():
        logger.warning("not delivered: %s", why)
    done = delivery.Delivered(checks_failed=refused)
    for group in delivery_groups(request, sources):  # each channel in its own format and folder
        done = done.extend(steps.deliver(store, request, review_id, group, recorded))
    part = steps.write_review_part(store, request, "deliveries", review_id, done.rows)
    gallery = steps.mark_gallery(store, request, run, review_states(latest, [r["asset_id"] for r in run.selected]))
    counts = {d: sum(r["decision"] == d for r in latest.values()) for d in ("approve", "reject", "hold")}
    payload = {"run_id": request.run_id, "campaign": request.campaign, "review_id": review_id,
               "reviewer": answer.reviewer, "approved": counts["approve"], "rejected": counts["reject"],
               "held": counts["hold"], "delivered": len(done.rows), "already_delivered": len(done.already),
               "too_large": sorted(done.too_large), "checks_failed": sorted(done.checks_failed),
               "deliveries_table": part, "gallery": gallery,
               "keys": [r["delivered_key"] for r in done.rows][:100]}
    emit_event(event=DELIVERY_COMPLETED, resource=run_resource(request), payload=payload)
    logger.info("review %s of run %s by %s: %d approved, %d rejected, %d held; %d files delivered, %d already there, "
                "%d too large, %d failing their marketplace checks", review_id, request.run_id, answer.reviewer,
                counts["approve"], counts["reject"], counts["hold"], len(done.rows), len(done.already),
                len(done.too_large), len(done.checks_failed))
    create_markdown_artifact(_summary(payload, done), key=artifact_key(request.campaign, "review"),
                             description=f"review of run {request.run_id}")
    return payload


@flow(name="review-timeout")
def record_review_timeout(flow_run: str) -> dict:
    """Record a review nobody answered before its deadline (`flow_run`: the failed review's flow run, an id or
    its Prefect resource id); nothing is delivered. A review that failed for another reason is left alone."""
    logger = get_run_logger()
    review_id = UUID(flow_run.rsplit(".", 1)[-1])
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(review_id)
        states = client.read_flow_run_states(review_id)
    suspended = [s for s in states if s.type == StateType.PAUSED and s.state_details.pause_timeout]
    if not (run.state and run.state.is_failed() and suspended
            and suspended[-1].state_details.pause_timeout <= run.state.timestamp):
        logger.info("flow run %s is not a review that timed out; nothing recorded", review_id)
        return {"recorded": 0}
    request = ReviewRequest.model_validate(run.parameters["request"])
    store = S3Store.from_settings(get_settings())
    reviewed = steps.reviewed_run(store, request)
    rows = timeout_rows(request, str(review_id), reviewed.selected, at=run.state.timestamp)
    steps.write_review_part(store, request, "reviews", str(review_id), rows)
    latest = latest_decisions(steps.read_review_parts(store, request.layout, "reviews"))
    steps.mark_gallery(store, request, reviewed, review_states(latest, [r["asset_id"] for r in reviewed.selected]))
    logger.warning("review of run %s timed out after %g h: %d images recorded as timed-out, nothing delivered",
                   request.run_id, request.review.wait_hours, len(rows))
    return {"recorded": len(rows), "run_id": request.run_id}


def _ui_url(flow_run_id: UUID) -> str | None:
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


def _summary(payload: dict, done: delivery.Delivered) -> str:
    lines = [f"# Review of run {payload['run_id']} by {payload['reviewer']}", "",
             f"{payload['approved']} approved, {payload['rejected']} rejected, {payload['held']} on hold.", "",
             f"{payload['delivered']} files delivered, {payload['already_delivered']} were already delivered.", ""]
    lines += [f"- not delivered: {why}" for why in [*done.too_large.values(), *done.checks_failed.values()]]
    lines += [f"- `{r['delivered_key']}` ({r['bytes']:,} bytes, quality {r['quality']})" for r in done.rows[:50]]
    return "\n".join(lines) + "\n"
