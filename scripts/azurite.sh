#!/usr/bin/env bash
# Azurite, Microsoft's Azure Storage emulator (npm package `azurite`), for the
# storage-queue event source: the Key Vault emulator delivers events to an
# Azurite queue as Event Grid delivers them to a storage queue, and kvsync
# reads them from there.
#
#   scripts/azurite.sh install      installs it once into ~/.cache/kvsync/azurite
#                                   (KVSYNC_AZURITE_DIR overrides) and prints the
#                                   path of its queue service, `azurite-queue`
#   scripts/azurite.sh queue ARGS…  runs that queue service with ARGS (installing first)
#
# Needs Node.js ≥ 18 and npm. Idempotent, and safe for test binaries that call
# it at the same time: one installs under a lock, the others wait; a cache is
# reused only when it holds the pinned version. Tests start their own Azurite
# (kvsync_emulator::azurite), on a free port, serving the emulator's TLS
# certificate and accepting its tokens (`--oauth basic`).
set -euo pipefail

version=${KVSYNC_AZURITE_VERSION:-3.35.0}
dir=${KVSYNC_AZURITE_DIR:-$HOME/.cache/kvsync/azurite}
bin="$dir/node_modules/.bin/azurite-queue"

current() { [ -x "$bin" ] && [ "$(cat "$dir/.version" 2>/dev/null)" = "$version" ]; }

install() {
  if current; then return; fi
  command -v npm >/dev/null || { echo "azurite.sh: npm not found (install Node.js ≥ 18)" >&2; exit 1; }
  mkdir -p "$dir"
  exec 9>"$dir.lock"
  flock 9
  if ! current; then
    {
      rm -rf "$dir/node_modules" "$dir/.version" &&
        npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "azurite@$version" &&
        echo "$version" >"$dir/.version"
    } >&2 || { echo "azurite.sh: cannot install azurite@$version into $dir (npm registry needed)" >&2; exit 1; }
  fi
  flock -u 9
}

case "${1:-}" in
  install)
    install
    echo "$bin"
    ;;
  queue)
    shift
    install
    exec "$bin" "$@"
    ;;
  *)
    echo "usage: $0 install | queue [azurite-queue options]" >&2
    exit 2
    ;;
esac
