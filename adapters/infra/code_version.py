"""The code version this process runs: what a campaign and its GPU workers must agree on.

A campaign hands its shards only to GPU workers on its own version (flows/fleet.py). The version
is, in order: STYLEMATRIX_CODE_VERSION where the deployment sets it (a wheel built for a release);
the git commit of the working copy (what a deployment's `pull:` step checks out), with `-dirty`
when tracked files differ from it; else the installed package's version.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from adapters.infra.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


@lru_cache(maxsize=1)
def code_version() -> str:
    """This process's code version (see the module docstring); read once."""
    configured = get_settings().code_version
    if configured:
        return configured
    commit = _git("rev-parse", "HEAD")
    if commit:
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return commit[:12] + ("-dirty" if dirty else "")
    try:
        return metadata.version("stylematrix")
    except metadata.PackageNotFoundError:
        return "unknown"
