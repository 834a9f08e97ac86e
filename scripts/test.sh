#!/usr/bin/env bash
# Set up a fresh virtual environment with every extra and run the whole test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${GRADIUM_TEST_VENV:-$root/.venv-test}"

# System packages of the offline engine (Apertium MT); prints the command when not root.
bash scripts/install-offline.sh

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[all]"

# Tests never reach the network: the real Gradium service is only used when a key is set.
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
