#!/usr/bin/env bash
# A real, throw-away Kubernetes control plane on loopback: etcd + kube-apiserver
# + kube-controller-manager (v1.20.2, built once from Debian's source package).
#
#   scripts/control-plane.sh build   install packages and build the binaries (cached)
#   scripts/control-plane.sh up      build if needed, start everything, write a kubeconfig
#   scripts/control-plane.sh env     print `export KUBECONFIG=…` for the running plane
#   scripts/control-plane.sh down    stop exactly the processes `up` started
#
# State lives in $KVSYNC_PLANE_DIR (default ~/.cache/kvsync/plane); binaries in
# $KVSYNC_CACHE (default ~/.cache/kvsync). Nothing is written into the checkout.
set -euo pipefail

K8S_VERSION=1.20.2
DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE=${KVSYNC_CACHE:-$HOME/.cache/kvsync}
BIN=$CACHE/k8s-v$K8S_VERSION/bin
PLANE=${KVSYNC_PLANE_DIR:-$CACHE/plane}

log() { printf '[control-plane] %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_packages() {
  local missing=()
  command -v go >/dev/null || missing+=(golang-go)
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v rsync >/dev/null || missing+=(rsync)
  command -v jq >/dev/null || missing+=(jq)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v dpkg-source >/dev/null || missing+=(dpkg-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_deb_src() {
  if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/ /etc/apt/sources.list 2>/dev/null; then
    log "adding a deb-src entry for bookworm"
    as_root tee /etc/apt/sources.list.d/kvsync-src.sources >/dev/null <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    as_root apt-get update -qq
  fi
}

build() {
  if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ]; then
    return 0
  fi
  install_packages
  ensure_deb_src
  local work=$CACHE/k8s-src
  mkdir -p "$work" "$BIN"
  if [ ! -d "$work/tree" ]; then
    log "downloading Kubernetes $K8S_VERSION source from Debian (34 MB)"
    (cd "$work" && apt-get source --download-only -qq "kubernetes=$DEB_VERSION" >/dev/null)
    local orig
    orig=$(ls "$work"/kubernetes_*.orig.tar.* | head -n1)
    rm -rf "$work/tree.tmp" && mkdir -p "$work/tree.tmp"
    tar -xf "$orig" -C "$work/tree.tmp" --strip-components=1
    mv "$work/tree.tmp" "$work/tree"
  fi
  local tree=$work/tree
  mkdir -p "$tree/.go/src/k8s.io" "$work/home"
  ln -sfn ../../.. "$tree/.go/src/k8s.io/kubernetes"
  for what in kube-apiserver kube-controller-manager; do
    if [ ! -x "$BIN/$what" ]; then
      log "building $what $K8S_VERSION (about 4 minutes on 2 cores; only on the first run)"
      (cd "$tree/.go/src/k8s.io/kubernetes" && \
        GOPATH=$tree/.go CGO_ENABLED=0 HOME=$work/home GOFLAGS=-mod=vendor \
        make WHAT=cmd/$what >"$work/build-$what.log" 2>&1) || {
          tail -n 40 "$work/build-$what.log" >&2; exit 1; }
      cp "$tree/_output/local/bin/linux/amd64/$what" "$BIN/$what.tmp"
      mv "$BIN/$what.tmp" "$BIN/$what"
    fi
  done
  log "binaries ready in $BIN"
}

"$@"
