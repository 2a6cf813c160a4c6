#!/usr/bin/env bash
# The whole test suite, from a fresh Debian/Ubuntu machine:
#   1. installs the Debian packages the local control plane needs and builds
#      kube-apiserver/kube-controller-manager 1.20.2 once (cached in ~/.cache/kvsync),
#   2. checks formatting and lints,
#   3. starts a private control plane (etcd + kube-apiserver + controller-manager),
#   4. runs every unit and integration test of the workspace (the operator, and
#      the emulator crate) against it and the in-process Key Vault emulator,
#   5. runs the scale benchmark at a smoke size (it times nothing),
#   6. stops exactly the processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs), then rerun" >&2
  exit 1
fi

CACHE=${KVSYNC_CACHE:-$HOME/.cache/kvsync}
# Build outside the checkout so a fresh clone reuses earlier builds.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
step() { printf '\n==> %s\n' "$*"; }

step "control plane binaries (first run: installs packages and builds for ~10 minutes)"
scripts/control-plane.sh build

step "promtool, prometheus, kubectl, python3-venv and npm (alert, dashboard, kubectl plugin, cross-SDK emulator and storage-queue event tests)"
packages=()
[ -x /usr/bin/promtool ] && [ -x /usr/bin/prometheus ] || packages+=(prometheus)
command -v kubectl >/dev/null || packages+=(kubernetes-client)
# The emulator's cross-SDK test installs the official Python SDKs into a venv.
python3 -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)
# The storage-queue event tests install Microsoft's Azurite from npm (scripts/azurite.sh).
command -v npm >/dev/null || packages+=(nodejs npm)
if [ ${#packages[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  # The prometheus package enables a system-wide server; the tests start their own.
  $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (the operator and the emulator crate)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo test --workspace --locked --no-run

plane=$(mktemp -d)
export KVSYNC_PLANE_DIR=$plane
trap 'scripts/control-plane.sh down; rm -rf "$plane"' EXIT
step "starting a private control plane in $plane"
scripts/control-plane.sh up
export KVSYNC_TEST_KUBECONFIG=$plane/kubeconfig

step "tests"
cargo test --workspace --locked --no-fail-fast -- --test-threads "${KVSYNC_TEST_THREADS:-4}"

# The scale benchmark at a smoke size, so that it keeps running end to end:
# it prints its table and asserts nothing about the numbers (docs/benchmark.md).
step "scale benchmark, smoke size"
cargo test --locked --bench scale -- --sizes 60 --deployments 60 --unrelated-secrets 100 \
  --fanout 20 --samples 2 --interval 10s
