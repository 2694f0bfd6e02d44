"""End to end: a campaign whose review is required, on the worker stack (tests/e2e_stack.py).

The run commits and starts a `review` flow run, which suspends with a form and holds no worker;
the test sees it waiting, opens the form in headless Chromium (screenshot kept), sends the
decisions through the API the UI's Resume button uses, and checks the `reviews` and `deliveries`
tables, the delivered files, the events and the gallery. A second review with the same approval
is recorded and delivers nothing new."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import pytest
from PIL import Image

from adapters.delivery import read_parts
from tests.e2e_stack import WAIT, api, run_id_of, start_campaign, wait_final
from tests.helpers import ARTIFACTS, CHROMIUM, chromium_page

pytestmark = pytest.mark.e2e

MAX_BYTES = 3000
CAMPAIGN = (
    "name: e2e-review\ntitle: Review e2e\nproducts: {ids: [rocket]}\nstyles: {ids: [space-age]}\n"
    "matrix: {template: '{product} on {surface}', axes: {surface: [sand, slate]}, seeds: [11, 12]}\n"
    "generation: {profile: tiny, width: 64, height: 64, steps: 2, batch_size: 4}\n"
    "selection: {top_k: 2, gates: []}\n"
    "review: {required: false, reviewers: [brand team], wait_hours: 48}\n"
    f"delivery: {{format: jpeg, quality: 95, min_quality: 30, max_bytes: {MAX_BYTES}, metadata: strip}}\n"
)


@pytest.fixture
def stack(worker_campaigns):
    return worker_campaigns.stack.result(timeout=WAIT)


def _review_runs(stack, run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with api(stack), get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"review-{run_id}"])))


def _wait_state(stack, flow_run_id, done, timeout=600):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with api(stack), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state and done(run.state):
                return run
            if run.state and run.state.is_final():
                raise AssertionError(f"review {flow_run_id} ended {run.state.type}: {run.state.message}")
            time.sleep(1)
    raise AssertionError(f"review {flow_run_id} did not get there in {timeout} s; logs in {stack['stack'].log_dir}")


def _events(stack, name, run_id, count, timeout=90):
    """The `count` events `name` about run `run_id`, once the server has stored them (it persists in batches)."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        response = httpx.post(f"{stack['stack'].api_url}/events/filter",
                              json={"filter": {"event": {"name": [name]}}, "limit": 50}, timeout=30)
        response.raise_for_status()
        found = [e for e in response.json()["events"] if e["payload"].get("run_id") == run_id]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(1)


def _screenshot_form(stack, flow_run_id) -> Path | None:
    if not Path(CHROMIUM).exists():
        return None
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    base = stack["stack"].api_url.removesuffix("/api")
    shot = ARTIFACTS / "prefect-review-form.png"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium_page(sync_api, viewport={"width": 1280, "height": 1600}) as page:
        page.goto(f"{base}/runs/flow-run/{flow_run_id}", timeout=60_000)
        page.get_by_role("button", name="Resume").first.click(timeout=60_000)
        page.get_by_text("Your name", exact=False).first.wait_for(timeout=60_000)
        page.screenshot(path=str(shot), full_page=True)
        text = page.inner_text("body")
    for label in ("Review of Review e2e (e2e-review)", "For: brand team", "2 selected images", "Your name",
                  "approve: deliver it", "Approve these images too"):
        assert label in text, label
    return shot


@pytest.mark.early("worker_campaigns")
def test_review_in_the_prefect_ui_delivers_what_is_approved_once(stack):
    from prefect.deployments import run_deployment
    from prefect.flow_runs import resume_flow_run

    store, assets = stack["store"], stack["assets"]
    store.put(f"{stack['catalog']}/campaigns/e2e-review.yaml", CAMPAIGN.encode())
    # The spec says no review; the request switches it on (RunRequest.review).
    parent = start_campaign(stack, campaign="e2e-review", review=True, triggered_by="test")
    parent = wait_final(stack, parent.id, timeout=WAIT)
    assert parent.state.is_completed(), parent.state.message
    run_id = run_id_of(stack, parent.id)

    (review,) = _review_runs(stack, run_id)
    waiting = _wait_state(stack, review.id, lambda s: s.is_paused())
    assert waiting.state.name == "Suspended"  # the process exited: no worker is held while people decide
    (requested,) = _events(stack, "stylematrix.review.requested", run_id, 1)
    assert requested["resource"]["prefect.resource.id"] == f"stylematrix.run.{run_id}"
    assert requested["payload"]["selected"] == 2 and requested["payload"]["reviewers"] == ["brand team"]

    shot = _screenshot_form(stack, review.id)
    if shot is not None:
        assert shot.stat().st_size > 20_000

    from adapters import publish

    manifest = publish.read_manifests(store, assets)
    gens = next(publish.read_table(store, m, "generations") for m in manifest if m["run_id"] == run_id)
    chosen = gens[gens["selected"]].sort_values("rank_in_product")
    (keep, drop), other = chosen["asset_id"].tolist(), gens[~gens["selected"]]["asset_id"].iloc[0]
    decision = {"reviewer": "Ana (brand)", "approve_also": [other], "decisions": [
        {"asset_id": keep, "product_id": "rocket", "decision": "approve", "note": ""},
        {"asset_id": drop, "product_id": "rocket", "decision": "reject", "note": "too dark"}]}
    with api(stack):
        resume_flow_run(review.id, run_input=decision)
    done = _wait_state(stack, review.id, lambda s: s.is_completed())
    assert done.state.is_completed()

    run_date = _run_date(run_id)
    reviews = read_parts(store, assets, "reviews", run_date, run_id)
    assert sorted((r["asset_id"], r["decision"], r["reviewer"], r["note"]) for r in reviews) == sorted([
        (keep, "approve", "Ana (brand)", None), (drop, "reject", "Ana (brand)", "too dark"),
        (other, "approve", "Ana (brand)", None)])
    deliveries = read_parts(store, assets, "deliveries", run_date, run_id)
    assert sorted(d["asset_id"] for d in deliveries) == sorted([keep, other])
    for d in deliveries:
        data = store.get(d["delivered_key"])
        assert d["delivered_key"] == f"{assets}/delivery/e2e-review/default/rocket/{d['asset_id']}.jpg"
        assert hashlib.sha256(data).hexdigest() == d["sha256"] and len(data) == d["bytes"] <= MAX_BYTES
        assert Image.open(io.BytesIO(data)).format == "JPEG" and d["format"] == "jpeg"
    (completed,) = _events(stack, "stylematrix.delivery.completed", run_id, 1)
    assert completed["payload"]["delivered"] == 2 and completed["payload"]["rejected"] == 1
    gallery = store.get(f"{assets}/runs/{run_id}/index.html").decode()
    assert 'data-review="approved"' in gallery and 'data-review="rejected"' in gallery

    # The same approval again, in a second review of the run: recorded, nothing delivered twice.
    with api(stack):
        again = run_deployment("review-run/review", parameters=done.parameters, timeout=0, as_subflow=False,
                               flow_run_name=f"review-{run_id}")
    _wait_state(stack, again.id, lambda s: s.is_paused())
    with api(stack):
        resume_flow_run(again.id, run_input=decision)
    _wait_state(stack, again.id, lambda s: s.is_completed())
    assert len(read_parts(store, assets, "reviews", run_date, run_id)) == 6
    assert read_parts(store, assets, "deliveries", run_date, run_id) == deliveries
    assert len(store.list(f"{assets}/delivery/")) == 2
    events = _events(stack, "stylematrix.delivery.completed", run_id, 2)
    assert sorted((e["payload"]["delivered"], e["payload"]["already_delivered"]) for e in events) == [(0, 2), (2, 0)]

    # A third review nobody answers: the server fails it at its deadline, review-timeout records it.
    hurried = {"request": {**done.parameters["request"], "review": {**done.parameters["request"]["review"],
                                                                    "wait_hours": 0.004}}}  # about 15 s
    with api(stack):
        late = run_deployment("review-run/review", parameters=hurried, timeout=0, as_subflow=False,
                              flow_run_name=f"review-{run_id}")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        timed_out = [r for r in read_parts(store, assets, "reviews", run_date, run_id) if r["review_id"] == str(late.id)]
        if timed_out:
            break
        time.sleep(2)
    assert sorted((r["asset_id"], r["decision"]) for r in timed_out) == sorted([(keep, "timed-out"), (drop, "timed-out")])
    assert read_parts(store, assets, "deliveries", run_date, run_id) == deliveries  # a timeout delivers nothing
    gallery = store.get(f"{assets}/runs/{run_id}/index.html").decode()
    assert 'data-review="approved"' in gallery  # a timeout does not undo a decision


def _run_date(run_id: str) -> str:
    """`<campaign>-YYYYMMDDTHHMMSSZ-<hex>` -> `YYYY-MM-DD`."""
    stamp = run_id.split("-")[-2]
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}"
