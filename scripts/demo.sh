#!/usr/bin/env bash
# End-to-end demo on one machine: a local Kubernetes control plane, the Key
# Vault + Entra ID emulator, the operator, and an app whose password is
# rotated in "Key Vault" — you see the Secret change and the Deployment roll.
# Everything is stopped at the end (or on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${KVSYNC_CACHE:-$HOME/.cache/kvsync}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs), then rerun" >&2; exit 1; }
if ! command -v kubectl >/dev/null; then
  say "installing kubectl (Debian package kubernetes-client)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq kubernetes-client >/dev/null; fi
fi

say "building the control plane (first run only: ~10 minutes, progress below)"
scripts/control-plane.sh build
say "building kvsync and kvsync-emulator"
cargo build --locked -p kvsync -p kvsync-emulator 2>&1 | grep -E '^\s*(Compiling kvsync|Finished)' || true
KVSYNC=$CARGO_TARGET_DIR/debug/kvsync
EMULATOR=$CARGO_TARGET_DIR/debug/kvsync-emulator

work=$(mktemp -d)
export KVSYNC_PLANE_DIR=$work/plane
pids=()
cleanup() {
  say "tearing down"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  scripts/control-plane.sh down || true
  rm -rf "$work"
}
trap cleanup EXIT

say "starting etcd + kube-apiserver + kube-controller-manager"
scripts/control-plane.sh up
export KUBECONFIG=$KVSYNC_PLANE_DIR/kubeconfig

say "starting the Key Vault + Entra ID emulator"
issuer=$(kubectl get --raw /.well-known/openid-configuration | jq -r .issuer)
kubectl get --raw /openid/v1/jwks >"$work/jwks.json"
sed -e "s#ISSUER#$issuer#g" -e "s#JWKS_FILE#$work/jwks.json#g" examples/demo/seed.yaml >"$work/seed.yaml"
"$EMULATOR" --config "$work/seed.yaml" --state-dir "$work/emulator" >"$work/emulator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -f "$work/emulator/endpoints.json" ] && break; sleep 0.1; done
endpoints=$work/emulator/endpoints.json
vault=$(jq -r .vaults.shop "$endpoints"); control=$(jq -r .control_url "$endpoints")
echo "vault $vault, Entra $(jq -r .authority_host "$endpoints"), control API $control"

say "installing the CRD and starting the operator"
"$KVSYNC" crd --apply --wait
kubectl create namespace kvsync-system >/dev/null
"$KVSYNC" run --authority-host "$(jq -r .authority_host "$endpoints")" --allow-vault-host localhost \
  --extra-ca-file "$(jq -r .ca_file "$endpoints")" --operator-namespace kvsync-system \
  --metrics-addr 127.0.0.1:0 --min-reload-interval 1s --min-refresh-interval 5s >"$work/operator.log" 2>&1 &
pids+=($!)

say "applying examples/demo/app.yaml (ServiceAccount, KeyVaultSecret, Deployment)"
kubectl create namespace demo >/dev/null
sed "s#VAULT_URL#$vault#" examples/demo/app.yaml | kubectl apply -f -
kubectl -n demo wait --for=condition=Ready kvs/db --timeout=60s
kubectl -n demo get kvs db
password() { kubectl -n demo get secret db -o jsonpath='{.data.password}' | base64 -d; }
echo "Secret demo/db password = $(password)"
kubectl -n demo rollout status deployment/shop-api --timeout=5s >/dev/null 2>&1 || true
echo "ReplicaSets before the rotation:"; kubectl -n demo get rs -l app=shop-api

say "rotating db-password in the emulator's Key Vault"
curl -fsS -X PUT -H 'Content-Type: application/json' -d '{"value":"rotated-password-2"}' \
  "${control}vaults/shop/secrets/db-password" >/dev/null
start=$(date +%s)
until [ "$(password)" = rotated-password-2 ]; do sleep 0.5; done
echo "Secret demo/db password = $(password)   (after $(( $(date +%s) - start ))s)"
until [ "$(kubectl -n demo get rs -l app=shop-api -o name | wc -l)" -ge 2 ]; do sleep 0.5; done
echo "ReplicaSets after the rotation (a new one = a rolling restart):"; kubectl -n demo get rs -l app=shop-api
kubectl -n demo get events --field-selector reason=Reloaded -o custom-columns=OBJECT:.involvedObject.name,MESSAGE:.message 2>/dev/null || true

say "done: the rotation in Key Vault reached the Secret and rolled the Deployment once"
echo "(logs: operator and emulator output were in $work, removed on exit)"
