#!/usr/bin/env bash
# Creates .venv and installs textclf with training, export, tracing and test extras.
# Idempotent: re-runs pip only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "textclf needs Python >= 3.11 (found $("$PYTHON" --version))" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.textclf-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing textclf[train,dev,tracing] into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[train,dev,tracing]'
  "$VENV/bin/python" -m pip check
  touch "$stamp"
fi
