"""End to end: a campaign whose review is required, on a worker stack of its own (tests/e2e_stack.py `review_stack`).

The run commits and starts a `review` flow run, which suspends with a form and holds no worker;
the test sees it waiting, opens the form in headless Chromium (screenshot kept), sends the
decisions through the API the UI's Resume button uses, and checks the `reviews` and `deliveries`
tables, the delivered files, the events and the gallery. A second review with the same approval
is recorded and delivers nothing new.

Then reviews that wait for people on a stack whose zombie window is `ZOMBIE` seconds: one waits
suspended for more than two windows and resumed, without a free worker, for more than one; one
is never answered and times out after more than a window; one loses its worker (SIGKILL of the
worker and its flow run) while it delivers, is crashed, handed out again and finishes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import signal
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
from PIL import Image

from adapters.infra.settings import FLOW_HEARTBEAT_SECONDS
from adapters.steps.delivery import read_parts
from tasks.layout import AssetsLayout
from tasks.review import approved, latest_decisions
from tests.e2e_stack import CPU_WORKER_ENV, WAIT, ZOMBIE, api, run_id_of, start_campaign, wait_final
from tests.helpers import ARTIFACTS, CHROMIUM, chromium_page
from tests.s3_faults import FaultyS3Proxy

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
def stack(review_stack):
    return review_stack.stack.result(timeout=WAIT)


def _review_runs(stack, run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with api(stack), get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"review-{run_id}"])))


def _wait_state(stack, flow_run_id, done, timeout=600, allow_final=False):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with api(stack), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state and done(run.state):
                return run
            if run.state and run.state.is_final() and not allow_final:
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


@pytest.fixture(scope="module")
def committed(review_stack):
    """A committed run of the `e2e-review` campaign, started with a review: its run id and first review run."""
    stack = review_stack.stack.result(timeout=WAIT)
    stack["store"].put(f"{stack['catalog']}/campaigns/e2e-review.yaml", CAMPAIGN.encode())
    # The spec says no review; the request switches it on (RunRequest.review).
    parent = start_campaign(stack, campaign="e2e-review", review=True, triggered_by="test")
    parent = wait_final(stack, parent.id, timeout=WAIT)
    assert parent.state.is_completed(), parent.state.message
    run_id = run_id_of(stack, parent.id)
    (review,) = _review_runs(stack, run_id)
    return {"run_id": run_id, "review": review}


@pytest.mark.early("review_stack")
def test_review_in_the_prefect_ui_delivers_what_is_approved_once(stack, committed):
    from prefect.deployments import run_deployment
    from prefect.flow_runs import resume_flow_run

    store, assets = stack["store"], stack["assets"]
    run_id, review = committed["run_id"], committed["review"]
    waiting = _wait_state(stack, review.id, lambda s: s.is_paused())
    assert waiting.state.name == "Suspended"  # the process exited: no worker is held while people decide
    (requested,) = _events(stack, "stylematrix.review.requested", run_id, 1)
    assert requested["resource"]["prefect.resource.id"] == f"stylematrix.run.{run_id}"
    assert requested["payload"]["selected"] == 2 and requested["payload"]["reviewers"] == ["brand team"]

    shot = _screenshot_form(stack, review.id)
    if shot is not None:
        assert shot.stat().st_size > 20_000

    from adapters.steps import publish

    manifest = publish.read_manifests(store, AssetsLayout.at(assets))
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
    reviews = read_parts(store, AssetsLayout.at(assets).run(run_id, run_date), "reviews")
    assert sorted((r["asset_id"], r["decision"], r["reviewer"], r["note"]) for r in reviews) == sorted([
        (keep, "approve", "Ana (brand)", None), (drop, "reject", "Ana (brand)", "too dark"),
        (other, "approve", "Ana (brand)", None)])
    deliveries = read_parts(store, AssetsLayout.at(assets).run(run_id, run_date), "deliveries")
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
    assert len(read_parts(store, AssetsLayout.at(assets).run(run_id, run_date), "reviews")) == 6
    assert read_parts(store, AssetsLayout.at(assets).run(run_id, run_date), "deliveries") == deliveries
    assert len(store.list(f"{assets}/delivery/")) == 2
    events = _events(stack, "stylematrix.delivery.completed", run_id, 2)
    assert sorted((e["payload"]["delivered"], e["payload"]["already_delivered"]) for e in events) == [(0, 2), (2, 0)]


@pytest.mark.early("review_stack")
def test_reviews_wait_for_people_and_one_whose_worker_died_is_redone(stack, committed, s3_server):
    from prefect.flow_runs import resume_flow_run

    store, assets, run_id = stack["store"], stack["assets"], committed["run_id"]
    request = committed["review"].parameters["request"]
    (keep, drop), (other, fourth) = _images(stack, run_id)
    first, last = sorted([drop, fourth])  # the order C delivers them in
    hurried = {"request": {**request, "review": {**request["review"], "wait_hours": (ZOMBIE + 20) / 3600}}}
    with FaultyS3Proxy(s3_server.endpoint, rules={f"/delivery/.*{last}": "hold"}) as proxy:
        try:
            a = _start_review(stack, {"request": request})
            b = _start_review(stack, hurried)  # nobody answers: it times out a window and more after it suspends
            c = _start_review(stack, {"request": request}, job_variables={"env": {"AWS_ENDPOINT_URL_S3": proxy.endpoint}})
            suspended = {r.id: _wait_state(stack, r.id, lambda s: s.is_paused()).state.timestamp for r in (a, b, c)}
            with api(stack):
                resume_flow_run(c.id, run_input={"reviewer": "Cy", "approve_also": [fourth], "decisions": [
                    {"asset_id": drop, "product_id": "rocket", "decision": "approve", "note": ""}]})
            _until(stack, "review C reaches its second delivery", lambda: proxy.counts["hold"], 300)
            stuck = time.monotonic()
            assert store.exists(f"{assets}/delivery/e2e-review/default/rocket/{first}.jpg")  # one file delivered
            # C runs slowly but its process lives: more than a window passes, it is not crashed. A waits, suspended.
            _sleep_until(max(stuck + ZOMBIE + 5, _monotonic(suspended[a.id]) + 2 * ZOMBIE + 5))
            assert _state(stack, c.id).is_running() and _state(stack, a.id).name == "Suspended"
            with api(stack):  # A is answered; the only cpu worker is busy with C
                resume_flow_run(a.id, run_input={"reviewer": "Late Lee", "decisions": [
                    {"asset_id": keep, "product_id": "rocket", "decision": "approve", "note": "worth the wait"}]})
            resumed = time.monotonic()
            _kill_cpu_worker(stack)
            killed = time.monotonic()
            crash = _until(stack, "review C crashed", lambda: next(
                (s for s in _states(stack, c.id) if s.is_crashed()), None), ZOMBIE + FLOW_HEARTBEAT_SECONDS + 60)
            assert "no heartbeat" in crash.message
            assert time.monotonic() - killed < ZOMBIE + FLOW_HEARTBEAT_SECONDS + 20  # its last beat, the window, a poll
            _sleep_until(resumed + ZOMBIE + 5)  # A, resumed, waits more than a window for a worker: left alone
            assert _state(stack, a.id).is_scheduled()
        finally:
            proxy.release()
            if stack["stack"].processes["cpu-1"].poll() is not None:  # a new machine takes the dead one's place
                stack["stack"].start_worker("cpu", "cpu-1", CPU_WORKER_ENV)
        # The new worker runs A, C again and B's timeout record, one after the other.
        done = {r.id: _wait_state(stack, r.id, ended, timeout=300, allow_final=True)
                for r, ended in ((a, lambda s: s.is_completed()), (b, lambda s: s.is_failed()),
                                 (c, lambda s: s.is_completed()))}

    run_date = _run_date(run_id)
    reviews = read_parts(store, AssetsLayout.at(assets).run(run_id, run_date), "reviews")
    deliveries = read_parts(store, AssetsLayout.at(assets).run(run_id, run_date), "deliveries")
    history = {r.id: _states(stack, r.id) for r in (a, b, c)}
    # A: suspended for more than two windows, then scheduled without a worker for more than one, never crashed.
    assert done[a.id].state.is_completed()
    assert _gap(history[a.id], "Suspended") >= 2 * ZOMBIE and _gap(history[a.id], "Resuming") >= ZOMBIE
    assert not any(s.is_crashed() for s in history[a.id])
    assert [(r["asset_id"], r["decision"], r["note"]) for r in reviews if r["review_id"] == str(a.id)] == [
        (keep, "approve", "worth the wait")]
    # B: failed at its deadline (not crashed by the silence before it), recorded as timed out, delivered nothing.
    assert done[b.id].state.is_failed() and "never resumed" in done[b.id].state.message
    assert not any(s.is_crashed() for s in history[b.id]) and _gap(history[b.id], "Suspended") >= ZOMBIE + 15
    timed_out = _until(stack, "review B recorded as timed out", lambda: [
        (r["asset_id"], r["decision"]) for r in read_parts(store, AssetsLayout.at(assets).run(run_id, run_date), "reviews")
        if r["review_id"] == str(b.id)], 300)
    assert sorted(timed_out) == sorted([(keep, "timed-out"), (drop, "timed-out")])
    # C: crashed once, handed out again, finished with the decisions submitted before the crash.
    assert done[c.id].state.is_completed() and [s.name for s in history[c.id]].count("Crashed") == 1
    names = [s.name for s in history[c.id]]
    assert names[names.index("Crashed") + 1] == "Rescheduled" and done[c.id].run_count == 2, names  # one run more
    assert sorted(r["asset_id"] for r in reviews if r["review_id"] == str(c.id)) == sorted([drop, fourth])
    # Every approved image is delivered, each once: one row and one file.
    latest = latest_decisions(read_parts(store, AssetsLayout.at(assets).run(run_id, run_date), "reviews"))
    keys = Counter(d["delivered_key"] for d in deliveries)
    assert sorted(d["asset_id"] for d in deliveries) == sorted(approved(latest)) and set(keys.values()) == {1}
    assert {drop, fourth, keep} <= set(approved(latest))
    assert sorted(o.uri for o in store.list(f"{assets}/delivery/e2e-review/")) == sorted(keys)
    gallery = store.get(f"{assets}/runs/{run_id}/index.html").decode()
    assert 'data-review="approved"' in gallery  # a timeout does not undo a decision


def _images(stack, run_id) -> tuple[list[str], list[str]]:
    """The run's selected images, best first, and the others, in the `generations` table's order."""
    from adapters.steps import publish

    manifest = next(m for m in publish.read_manifests(stack["store"], AssetsLayout.at(stack["assets"])) if m["run_id"] == run_id)
    gens = publish.read_table(stack["store"], manifest, "generations")
    return (gens[gens["selected"]].sort_values("rank_in_product")["asset_id"].tolist(),
            gens[~gens["selected"]]["asset_id"].tolist())


def _start_review(stack, parameters, **options):
    from prefect.deployments import run_deployment

    with api(stack):
        return run_deployment("review-run/review", parameters=parameters, timeout=0, as_subflow=False,
                              flow_run_name=f"review-{parameters['request']['run_id']}", **options)


def _state(stack, flow_run_id):
    from prefect.client.orchestration import get_client

    with api(stack), get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def _states(stack, flow_run_id):
    from prefect.client.orchestration import get_client

    with api(stack), get_client(sync_client=True) as client:
        return sorted(client.read_flow_run_states(flow_run_id), key=lambda s: s.timestamp)


def _gap(states, name: str) -> float:
    """Seconds from a run's first state named `name` until it left that state's type (Resuming -> Late is still
    waiting in Scheduled)."""
    i = next(i for i, s in enumerate(states) if s.name == name)
    left = next(s for s in states[i + 1:] if s.type != states[i].type)
    return (left.timestamp - states[i].timestamp).total_seconds()


def _until(stack, what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s; logs in {stack['stack'].log_dir}")


def _monotonic(at: datetime) -> float:
    """The monotonic clock's reading at wall-clock time `at`."""
    return time.monotonic() - (datetime.now(UTC) - at).total_seconds()


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def _kill_cpu_worker(stack) -> None:
    """The cpu worker's machine dies: the worker and the flow run it runs vanish at once, with no goodbye."""
    worker = stack["stack"].processes["cpu-1"]
    with contextlib.suppress(psutil.NoSuchProcess):
        for proc in [*psutil.Process(worker.pid).children(recursive=True), psutil.Process(worker.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)


def _run_date(run_id: str) -> str:
    """`<campaign>-YYYYMMDDTHHMMSSZ-<hex>` -> `YYYY-MM-DD`."""
    stamp = run_id.split("-")[-2]
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}"
