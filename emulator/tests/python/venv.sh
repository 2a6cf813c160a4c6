#!/usr/bin/env bash
# Prints the path of a Python virtual environment holding the official Azure SDKs
# pinned in requirements.txt, creating it first if needed:
#   ~/.cache/kvsync/py-sdk-venv (KVSYNC_PY_SDK_VENV overrides).
# Idempotent, and safe for test binaries that call it at the same time: one
# installs under a lock, the others wait, and a venv is reused only when the
# requirements it was built from are the current ones.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
venv=${KVSYNC_PY_SDK_VENV:-$HOME/.cache/kvsync/py-sdk-venv}
wanted=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)

current() { [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" = "$wanted" ]; }
if ! current; then
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"
  flock 9
  if ! current; then
    {
      rm -rf "$venv" &&
        python3 -m venv "$venv" &&
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" &&
        echo "$wanted" >"$venv/.requirements.sha256"
    } >&2 || { echo "venv.sh: cannot install the Python SDKs into $venv (python3-venv and PyPI needed)" >&2; exit 1; }
  fi
  flock -u 9
fi
echo "$venv"
