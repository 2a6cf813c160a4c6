#!/usr/bin/env bash
# A real, throw-away Kubernetes control plane on loopback: etcd + kube-apiserver
# + kube-controller-manager (v1.20.2, built once from Debian's source package).
#
#   scripts/control-plane.sh build   install packages and build the binaries (cached)
#   scripts/control-plane.sh up      build if needed, start everything, write a kubeconfig
#   scripts/control-plane.sh env     print `export KUBECONFIG=…` for the running plane
#   scripts/control-plane.sh down    stop exactly the processes `up` started
#   scripts/control-plane.sh restart-apiserver
#                                    stop kube-apiserver and start it again (same flags
#                                    and ports); etcd and the controller-manager keep running
#
# State lives in $KVSYNC_PLANE_DIR (default ~/.cache/kvsync/plane); binaries in
# $KVSYNC_CACHE (default ~/.cache/kvsync). Nothing is written into the checkout.
# $KVSYNC_PLANE_ADMISSION_PLUGINS (comma separated, e.g.
# OwnerReferencesPermissionEnforcement): admission plugins kube-apiserver
# enables besides its defaults; read by `up` (a plane already running keeps
# its own) and kept for `restart-apiserver`.
set -euo pipefail

K8S_VERSION=1.20.2
DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE=${KVSYNC_CACHE:-$HOME/.cache/kvsync}
# Bump BUILD_REV whenever the build recipe changes, so cached binaries are rebuilt.
BUILD_REV=2
BIN=$CACHE/k8s-v$K8S_VERSION-r$BUILD_REV/bin
PLANE=${KVSYNC_PLANE_DIR:-$CACHE/plane}

log() { printf '[control-plane] %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_packages() {
  local missing=()
  command -v go >/dev/null || missing+=(golang-go)
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v rsync >/dev/null || missing+=(rsync)
  command -v jq >/dev/null || missing+=(jq)
  command -v curl >/dev/null || missing+=(curl)
  command -v python3 >/dev/null || missing+=(python3)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v dpkg-source >/dev/null || missing+=(dpkg-dev)
  [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || missing+=(golang-github-modern-go-reflect2-dev)
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
  # Kubernetes 1.20 vendors reflect2 1.0.1, which crashes under Go >= 1.18 (the
  # apiserver panics decoding any JSON map). Debian ships the fixed 1.0.2.
  rsync -a --delete --exclude go.mod /usr/share/gocode/src/github.com/modern-go/reflect2/ \
    "$tree/vendor/github.com/modern-go/reflect2/"
  mkdir -p "$tree/.go/src/k8s.io" "$work/home"
  ln -sfn ../../.. "$tree/.go/src/k8s.io/kubernetes"
  for what in kube-apiserver kube-controller-manager; do
    if [ ! -x "$BIN/$what" ]; then
      log "building $what $K8S_VERSION (about 4 minutes on 2 cores; only on the first run)"
      (cd "$tree/.go/src/k8s.io/kubernetes" && \
        GOPATH=$tree/.go CGO_ENABLED=0 HOME=$work/home GOFLAGS=-mod=vendor \
        make WHAT=cmd/$what >"$work/build-$what.log" 2>&1) &
      local build=$! started=$SECONDS
      # Progress while the (silent) Go build runs.
      while kill -0 "$build" 2>/dev/null; do
        sleep 15
        kill -0 "$build" 2>/dev/null && log "  … still building $what ($((SECONDS - started))s)"
      done
      wait "$build" || { tail -n 40 "$work/build-$what.log" >&2; exit 1; }
      cp "$tree/_output/local/bin/linux/amd64/$what" "$BIN/$what.tmp"
      mv "$BIN/$what.tmp" "$BIN/$what"
    fi
  done
  log "binaries ready in $BIN"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# pid_alive FILE: the process whose PID is in FILE still runs.
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

running() {
  pid_alive "$PLANE/etcd.pid" && pid_alive "$PLANE/kube-apiserver.pid" &&
    pid_alive "$PLANE/kube-controller-manager.pid" && [ -f "$PLANE/kubeconfig" ]
}

# wait_for DESCRIPTION SECONDS COMMAND...: retry COMMAND until it succeeds or time runs out.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then log "timed out waiting for $what"; return 1; fi
    sleep 0.3
  done
}

make_certs() {
  local d=$PLANE/pki
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kvsync-test-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$d/apiserver.key" -out "$d/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$d/san.ext"
  openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -extfile "$d/san.ext" -out "$d/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  openssl rand -hex 24 >"$d/admin.token"
  printf '%s,admin,admin,system:masters\n' "$(cat "$d/admin.token")" >"$d/tokens.csv"
}

# start_apiserver: kube-apiserver on the ports recorded in $PLANE/ports; waits until ready.
start_apiserver() {
  local etcd_port api_port admission_plugins=""
  # shellcheck disable=SC1091
  . "$PLANE/ports"
  local issuer=https://127.0.0.1:$api_port pki=$PLANE/pki plugins=()
  if [ -n "$admission_plugins" ]; then plugins=(--enable-admission-plugins "$admission_plugins"); fi
  log "starting kube-apiserver $K8S_VERSION on $issuer${admission_plugins:+ (admission plugins: $admission_plugins)}"
  setsid "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --secure-port "$api_port" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer "$issuer" --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" --api-audiences "$issuer" \
    --service-cluster-ip-range 10.0.0.0/24 --insecure-port 0 "${plugins[@]}" \
    >>"$PLANE/logs/kube-apiserver.log" 2>&1 </dev/null &
  echo $! >"$PLANE/kube-apiserver.pid"
  wait_for kube-apiserver 90 curl --http1.1 -fsS --cacert "$pki/ca.crt" \
    -H "Authorization: Bearer $(cat "$pki/admin.token")" "$issuer/readyz"
}

# stop NAME: stop the process whose PID is in $PLANE/NAME.pid (TERM, then KILL after 5 s).
stop() {
  local name=$1 pid
  if pid_alive "$PLANE/$name.pid"; then
    pid=$(cat "$PLANE/$name.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $name (pid $pid)"
  fi
  rm -f "$PLANE/$name.pid"
}

restart_apiserver() {
  running || { log "not running; run: $0 up"; return 1; }
  stop kube-apiserver
  start_apiserver
}

up() {
  if running; then log "already running (KUBECONFIG=$PLANE/kubeconfig)"; return 0; fi
  build
  down >/dev/null 2>&1 || true
  rm -rf "$PLANE" && mkdir -p "$PLANE/logs"
  make_certs
  local etcd_port peer_port api_port
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  local issuer=https://127.0.0.1:$api_port pki=$PLANE/pki

  log "starting etcd on 127.0.0.1:$etcd_port"
  setsid etcd --data-dir "$PLANE/etcd" --name kvsync-test \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "kvsync-test=http://127.0.0.1:$peer_port" \
    >"$PLANE/logs/etcd.log" 2>&1 </dev/null &
  echo $! >"$PLANE/etcd.pid"
  wait_for etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

  printf 'etcd_port=%s\napi_port=%s\nadmission_plugins=%s\n' "$etcd_port" "$api_port" \
    "${KVSYNC_PLANE_ADMISSION_PLUGINS:-}" >"$PLANE/ports"
  start_apiserver
  local token; token=$(cat "$pki/admin.token")

  cat >"$PLANE/kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: kvsync-test
  cluster: {server: "$issuer", certificate-authority: "$pki/ca.crt"}
users:
- name: admin
  user: {token: "$token"}
contexts:
- name: kvsync-test
  context: {cluster: kvsync-test, user: admin, namespace: default}
current-context: kvsync-test
KCFG

  # Workload Identity federation needs the issuer's discovery document and JWKS
  # readable without credentials, as on AKS.
  curl --http1.1 -fsS --cacert "$pki/ca.crt" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -X POST "$issuer/apis/rbac.authorization.k8s.io/v1/clusterrolebindings" -d '{
      "apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding",
      "metadata":{"name":"kvsync-test-issuer-discovery"},
      "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"system:service-account-issuer-discovery"},
      "subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"Group","name":"system:unauthenticated"}]}' >/dev/null

  log "starting kube-controller-manager"
  setsid "$BIN/kube-controller-manager" --kubeconfig "$PLANE/kubeconfig" \
    --controllers deployment,replicaset,daemonset,statefulset,garbagecollector,namespace,serviceaccount,serviceaccount-token \
    --leader-elect=false --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --secure-port 0 --port 0 \
    >"$PLANE/logs/kube-controller-manager.log" 2>&1 </dev/null &
  echo $! >"$PLANE/kube-controller-manager.pid"
  wait_for "the default service account" 60 curl --http1.1 -fsS --cacert "$pki/ca.crt" -H "Authorization: Bearer $token" \
    "$issuer/api/v1/namespaces/default/serviceaccounts/default"
  log "ready: export KUBECONFIG=$PLANE/kubeconfig"
}

env() {
  running || { log "not running; run: $0 up"; return 1; }
  printf 'export KUBECONFIG=%s\n' "$PLANE/kubeconfig"
}

down() {
  local name
  for name in kube-controller-manager kube-apiserver etcd; do
    stop "$name"
  done
}

case "${1:-}" in
  build|up|env|down) "$1" ;;
  restart-apiserver) restart_apiserver ;;
  *) echo "usage: $0 build|up|env|down|restart-apiserver" >&2; exit 2 ;;
esac
