#!/usr/bin/env bash
# Renders charts/kvsync with the real Helm template engine, without a helm binary.
#
#   scripts/render-chart.sh [-f VALUES.yaml]... [--name RELEASE] [--namespace NS]
#                           [--kube-version v1.20.2] [--include-crds]
#
# No helm binary can be downloaded here, so the engine comes from PyPI:
# helm-python-sdk ships Helm v4's Go library (template engine, values
# coalescing, Capabilities) as a shared object. It is installed once into a
# private venv under ~/.cache/kvsync/. Output is what `helm template` prints:
# one `# Source:` document per non-empty manifest, CRDs first when asked.
#
# Exit status 3 means the engine could not be installed (no PyPI, no Python
# >= 3.10): callers may report "not verified" instead of failing.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${KVSYNC_HELM_VENV:-$HOME/.cache/kvsync/helm-venv}
sdk=helm-python-sdk==0.2.2

installed() { "$venv/bin/python" -c 'import helm_python' >/dev/null 2>&1; }
if ! installed; then
  # Tests render in parallel: one installs, the others wait for it.
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"
  flock 9
  if ! installed; then
    {
      python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' &&
        python3 -m venv "$venv" &&
        "$venv/bin/pip" install --quiet --disable-pip-version-check "$sdk"
    } >&2 || { echo "render-chart.sh: cannot install $sdk (the Helm engine)" >&2; exit 3; }
  fi
  flock -u 9
fi

# Run from / so that nothing in the caller's directory shadows a module.
cd /
exec "$venv/bin/python" - "$here/charts/kvsync" "$@" <<'PY'
import argparse
import json
import sys

import helm_python
from helm_python import Chart, _native

parser = argparse.ArgumentParser(prog="render-chart.sh")
parser.add_argument("chart")
parser.add_argument("-f", "--values", action="append", default=[])
parser.add_argument("--name", default="kvsync")
parser.add_argument("--namespace", default="kvsync-system")
parser.add_argument("--kube-version")
parser.add_argument("--include-crds", action="store_true")
args = parser.parse_args()


def merge(base, override):
    """Later -f files win, maps merge key by key (as `helm -f a -f b`)."""
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


values = {}
for path in args.values:
    with open(path) as f:
        merge(values, helm_python.values_from_yaml(f.read()))

opts = {"name": args.name, "namespace": args.namespace, "is_install": True}
if args.kube_version:
    opts["kube_version"] = args.kube_version

try:
    with Chart.load(args.chart) as chart:
        # Chart.render() has no kube_version parameter, but the library takes
        # it in the same options object, so call the library directly.
        rendered = json.loads(
            _native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts))
        )
        docs = []
        if args.include_crds:
            docs += [(c["filename"], c["data"]) for c in chart.crds]
        docs += sorted(rendered.items())
except helm_python.HelmError as e:
    print(f"render-chart.sh: {e}", file=sys.stderr)
    sys.exit(1)

for source, text in docs:
    # A template file may hold several documents; drop empty ones like helm does.
    for doc in text.split("\n---"):
        body = "\n".join(l for l in doc.splitlines() if l.strip() and not l.lstrip().startswith("#"))
        if body.strip() and body.strip() != "---":
            print(f"---\n# Source: {source}\n{doc.strip().removeprefix('---').strip()}")
PY
