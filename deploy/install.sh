#!/usr/bin/env bash
# Install stylematrix at one commit into /opt/stylematrix: on the server, the cpu worker's host and every
# GPU host, so every process runs the same code version (the commit; adapters/infra/code_version.py).
#   deploy/install.sh https://git.example.com/acme/stylematrix.git <40-hex commit>
set -euo pipefail
repository=$1 commit=$2
target=${STYLEMATRIX_PREFIX:-/opt/stylematrix}
if [ ! -d "$target/.git" ]; then git clone --quiet "$repository" "$target"; fi
git -C "$target" fetch --quiet origin
git -C "$target" checkout --quiet --detach "$commit"
test -x "$target/.venv/bin/python" || python3.11 -m venv "$target/.venv"
"$target/.venv/bin/pip" install --quiet -e "$target"
echo "stylematrix at $(git -C "$target" rev-parse --short=12 HEAD) in $target"
