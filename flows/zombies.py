"""The server automations that tell a dead worker from a flow run that waits on purpose.

Every place that sets up a Prefect server for stylematrix creates them through
`ensure_automations` (`stylematrix serve`, `python -m flows.zombies` against any server), so
the rule is written once:

- `crash-silent-flow-runs`: a flow run's process sends `prefect.flow-run.heartbeat` every
  `FLOW_HEARTBEAT_SECONDS` while it runs. Each heartbeat opens a window of `window` seconds, and
  the next heartbeat, or a state change out of running (`prefect.flow-run.<state name>` for each
  of `LEFT_RUNNING`: Completed, Failed, Cancelled, Crashed, and also Suspended, Paused,
  Scheduled, Resuming ...), closes it. A window that closes on nothing marks the run Crashed.
  Only a heartbeat opens a window, and only a running process sends one: a run suspended for a
  person's review (no process at all), paused, or resumed and waiting for a free worker is never
  crashed for its silence, however long it waits.
- `redo-crashed-reviews`: a `review-run` flow run that crashed (the automation above, or a
  worker that saw its process die) is scheduled again, up to `REVIEW_RUNS` runs in all. It
  starts from the top, reads the decisions already submitted for it and delivers what is not
  delivered yet (delivery never writes a file twice: adapters/steps/delivery.py).
- `redo-crashed-campaigns`: a `run-campaign` flow run of a deployment that crashed (its cpu worker or
  machine died: the automation above, or the worker saw its process die) is scheduled again, up to
  `CAMPAIGN_RUNS` runs in all, for the next cpu worker. It runs as the same run (its run id comes from
  the flow run, flows/campaign.run_began): the claims are its own, the images its shards wrote are reused,
  and its table commits land once. A `stylematrix run` in a terminal has no deployment and is left alone.

Why these event names: Prefect 3.9's server names a flow run's state-change event after the
state's *name* (`prefect.server.models.events.flow_run_state_change_event`), so a suspension is
`prefect.flow-run.Suspended` (type PAUSED) and a resume `prefect.flow-run.Resuming` (type
SCHEDULED). A proactive trigger whose `after` event is also expected rolls its window on each
heartbeat, and holds `expect`-only events (the state changes) for windows that open later over
them, so a suspension that races the run's last heartbeat still closes that heartbeat's window
(`prefect.server.events.triggers.evaluate`).
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from prefect.automations import Automation, AutomationCore
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from adapters.infra.settings import FLOW_HEARTBEAT_SECONDS

CRASH_SILENT = "crash-silent-flow-runs"
REDO_CRASHED_REVIEWS = "redo-crashed-reviews"
REVIEW_FLOW = "review-run"  # flows/review.py: review_run
# A review is one run when nothing goes wrong (Prefect does not count the resumption after the form as a new
# run); each crash adds one. A review that crashed on its REVIEW_RUNS-th run stays Crashed.
REVIEW_RUNS = 3
REDO_CRASHED_CAMPAIGNS = "redo-crashed-campaigns"
CAMPAIGN_FLOW = "run-campaign"  # flows/campaign.py: run_campaign
# A campaign rescheduled after a crash runs again as the same run (flows/campaign.run_began): what its shards made
# is kept. A campaign that crashed on its CAMPAIGN_RUNS-th run stays Crashed.
CAMPAIGN_RUNS = 3
HEARTBEAT = "prefect.flow-run.heartbeat"
# The state names (Prefect 3.9's, and this module's Rescheduled) a running flow run leaves running for: waiting
# (scheduled, paused, suspended, resumed) or ended. Not Running or Retrying (a run's first heartbeat follows them at
# once), nor Pending: with the clocks of two machines apart, those could land in the first heartbeat's window and
# close it, and a process that died in its first 30 s would never be crashed.
LEFT_RUNNING = ("Scheduled", "Late", "AwaitingRetry", "AwaitingConcurrencySlot", "Resuming", "Rescheduled", "Paused",
                "Suspended", "Cancelling", "Completed", "Failed", "Cancelled", "Crashed")


def crash_silent_runs(window_seconds: float) -> Automation:
    """Mark a running flow run Crashed when `window_seconds` pass after a heartbeat with neither another
    heartbeat nor a state change."""
    if window_seconds <= FLOW_HEARTBEAT_SECONDS:
        raise ValueError(f"zombie window {window_seconds:g} s must be longer than the flow-run heartbeat "
                         f"interval ({FLOW_HEARTBEAT_SECONDS} s): every live run would be crashed")
    return Automation(
        name=CRASH_SILENT,
        description="A flow run whose process stopped sending heartbeats while it ran is Crashed. Suspended, paused "
                    "and scheduled runs send none and are left alone.",
        trigger=EventTrigger(
            after={HEARTBEAT},
            expect={HEARTBEAT, *(f"prefect.flow-run.{name}" for name in LEFT_RUNNING)},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=window_seconds),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {window_seconds:g} s while running: its worker is gone")],
    )


def redo_crashed_reviews() -> Automation:
    """Schedule a crashed `review-run` flow run again, on its first `REVIEW_RUNS` runs."""
    return _redo_crashed(REDO_CRASHED_REVIEWS, REVIEW_FLOW, REVIEW_RUNS,
                         f"A crashed review is handed out again (up to {REVIEW_RUNS} runs): it keeps its submitted "
                         "decisions and delivers only what is not delivered yet.",
                         "crashed: handed out again to finish its review")


def redo_crashed_campaigns() -> Automation:
    """Schedule a crashed `run-campaign` flow run of a deployment again, on its first `CAMPAIGN_RUNS` runs."""
    return _redo_crashed(REDO_CRASHED_CAMPAIGNS, CAMPAIGN_FLOW, CAMPAIGN_RUNS,
                         f"A campaign whose worker died is handed out again (up to {CAMPAIGN_RUNS} runs): it runs as "
                         "the same run, keeps the images already made and commits once.",
                         "crashed: handed out again to finish its campaign", deployments_only=True)


def _redo_crashed(name: str, flow_name: str, runs: int, description: str, message: str, *,
                  deployments_only: bool = False) -> Automation:
    """Schedule a crashed flow run of `flow_name` again while its run count is under `runs`. `deployments_only`:
    only a deployment's runs (a worker picks them up again; a `stylematrix run` in a terminal has none)."""
    related = [ResourceSpecification({"prefect.resource.role": "flow", "prefect.resource.name": flow_name})]
    if deployments_only:
        related.append(ResourceSpecification({"prefect.resource.role": "deployment"}))
    return Automation(
        name=name,
        description=description,
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*",
                                         "prefect.run-count": [str(n) for n in range(1, runs)]}),
            match_related=related if len(related) > 1 else related[0],
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[ChangeFlowRunState(state=StateType.SCHEDULED, name="Rescheduled", message=message)],
    )


def automations(window_seconds: float) -> list[Automation]:
    """Every automation stylematrix needs on its Prefect server."""
    return [crash_silent_runs(window_seconds), redo_crashed_reviews(), redo_crashed_campaigns()]


def ensure_automations(api_url: str, window_seconds: float) -> list[UUID]:
    """Create the automations on the server at `api_url`, replacing any of the same name (a restart
    against the same database leaves one of each); their ids."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    wanted = automations(window_seconds)
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        for automation in wanted:
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
        return [client.create_automation(AutomationCore(**a.model_dump(exclude={"id"}))) for a in wanted]


def main() -> None:
    """`python -m flows.zombies`: the automations on the server of PREFECT_API_URL, with STYLEMATRIX_ZOMBIE_SECONDS."""
    from prefect.settings import PREFECT_API_URL
    from pydantic import ValidationError

    from adapters.infra.settings import get_settings

    if not PREFECT_API_URL.value():
        raise SystemExit("flows.zombies: PREFECT_API_URL names no Prefect server")
    try:
        window = get_settings().zombie_seconds
    except ValidationError as exc:
        raise SystemExit(f"flows.zombies: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
    ids = ensure_automations(PREFECT_API_URL.value(), window)
    print(f"automations {CRASH_SILENT} ({window:g} s), {REDO_CRASHED_REVIEWS}, {REDO_CRASHED_CAMPAIGNS}: "
          f"{', '.join(map(str, ids))}")


if __name__ == "__main__":
    main()
