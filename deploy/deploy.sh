#!/usr/bin/env bash
# Register a fleet's pools, shard storage block, server automations and deployments at one commit, against PREFECT_API_URL.
#   set -a; . /etc/stylematrix/stylematrix.env; set +a; deploy/deploy.sh <git URL> <40-hex commit>
set -euo pipefail
repository=$1 commit=$2
cd "$(dirname "$0")/.."
py=.venv/bin/python
"$py" -m prefect work-pool create cpu --type process --overwrite
"$py" -m prefect work-pool create gpu --type process --overwrite
"$py" -m prefect work-pool set-concurrency-limit gpu 1
"$py" -m flows.task_storage "${STYLEMATRIX_ASSETS:?}/_prefect/tasks"
# The zombie watch and the redo of crashed reviews and campaigns (flows/zombies.py), the automations serve creates.
"$py" -m flows.zombies
manifest=$(mktemp --suffix=.yaml)
trap 'rm -f "$manifest"' EXIT
"$py" -m flows.fleet_deploy --repository "$repository" --commit "$commit" > "$manifest"
"$py" -m prefect --no-prompt deploy --all --prefect-file "$manifest"
