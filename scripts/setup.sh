#!/usr/bin/env bash
# Create .venv and install modelyard with every extra, pinned by constraints.txt (a CPU-runnable torch).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
log=$(mktemp)
if ! .venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt -e ".[detection,s3,test]" >"$log" 2>&1; then
  grep -v "^WARNING: Location" "$log" >&2
  exit 1
fi
rm -f "$log"
.venv/bin/python -c "import modelyard, torch, mlflow, kfp; print('modelyard', modelyard.__version__, '| torch', torch.__version__, '| mlflow', mlflow.__version__)"
