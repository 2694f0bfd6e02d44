"""The deployments of prefect.yaml as a fleet registers them: each flow run fetches the exact code it was deployed at.

    python -m flows.fleet_deploy --repository URL --commit SHA > fleet.prefect.yaml
    prefect --no-prompt deploy --all --prefect-file fleet.prefect.yaml

prefect.yaml stays the one list of deployments; this adds what a machine that shares nothing needs:
a `pull:` section that clones the repository at the commit (git, not a wheel in S3: the commit is
already the version workers and campaigns compare, nothing has to be built, uploaded or given its own
S3 rights, and `git log` says what ran) and sets the flow run's working directory to that clone, and
STYLEMATRIX_CODE_VERSION on every deployment, so a campaign asks for GPU workers at that commit.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]


def fleet_manifest(repository: str, commit: str, source: Path = ROOT / "prefect.yaml") -> dict:
    """prefect.yaml with a `pull:` of `repository` at `commit` and the code version on each deployment."""
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ValueError(f"fleet deploy: commit must be a full 40-hex git sha, got {commit!r}")
    spec = yaml.safe_load(source.read_text())
    spec["pull"] = [
        {"prefect.deployments.steps.git_clone": {"id": "clone", "repository": repository, "commit_sha": commit}},
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ clone.directory }}"}},
    ]
    for deployment in spec.get("deployments") or []:
        variables = deployment.setdefault("job_variables", {})
        variables.setdefault("env", {})["STYLEMATRIX_CODE_VERSION"] = commit[:12]
    return spec


def main(repository: Annotated[str, typer.Option(help="git URL the workers clone from")],
         commit: Annotated[str, typer.Option(help="the full commit sha to deploy")]) -> None:
    """Print prefect.yaml for a fleet: deployments that pull `repository` at `commit`."""
    typer.echo(yaml.safe_dump(fleet_manifest(repository, commit), sort_keys=False))


if __name__ == "__main__":
    typer.run(main)
