#!/usr/bin/env bash
# One command from a fresh clone to translated speech: installs everything (Debian packages when run
# as root, else prints the exact command), then translates the bundled English sample.
#   bash scripts/quickstart.sh [LANG] [INPUT.wav]      LANG: es (default), fr, en
# Uses the Gradium cloud when GRADIUM_API_KEY is set, else the embedded offline engine (no network).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
lang="${1:-es}"
input="${2:-examples/audio/meeting_en.wav}"
venv="${GRADIUM_VENV:-$root/.venv}"

if ! bash scripts/install-offline.sh --check >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    bash scripts/install-offline.sh
  else
    echo "The offline engine needs Apertium from Debian/Ubuntu packages. Run once, then re-run this script:" >&2
    bash scripts/install-offline.sh --print >&2
    exit 1
  fi
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[local]"

mkdir -p out
stem="$(basename "${input%.*}")"
"$venv/bin/gradium-plugins" translate "$input" --to "$lang" -o "out/${stem}.${lang}.wav"
