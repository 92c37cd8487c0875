#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Tests start every server they need themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLFLOW_DISABLE_TELEMETRY=true
export MODELYARD_TESTS_NEED_DETECTION=1  # the detection tests fail, not skip, when ultralytics is broken
exec .venv/bin/python -m pytest "$@"
