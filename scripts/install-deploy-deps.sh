#!/usr/bin/env bash
# Python packages for the offline deployment checks (tests/csi/deploy_manifests.rs
# runs deploy/tests/check_manifests.py). Idempotent: installs only what is
# missing.
#   pyyaml               YAML loading
#   kubernetes-validate  Kubernetes OpenAPI schemas, shipped in the package
#   helm-python-sdk      the Helm engine as a library (offline rendering and
#                        lint, no helm binary; ~75 MB wheel)
# Not installed: promtool (Debian package prometheus), with which the checker
# also parses the dashboard's queries when it is on PATH: with its
# dependencies (libjs-moment-timezone alone ~210 MB) it takes ~320 MB.
set -euo pipefail

if ! command -v python3 >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip
fi

pip_install() {
    # Debian's system python refuses plain pip installs (PEP 668).
    python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}

missing=()
python3 -c 'import yaml' 2>/dev/null || missing+=(pyyaml)
python3 -c 'import kubernetes_validate' 2>/dev/null || missing+=(kubernetes-validate)
python3 -c 'import helm_python.chart' 2>/dev/null || missing+=(helm-python-sdk)
if ((${#missing[@]})); then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip
    fi
    pip_install "${missing[@]}"
fi
python3 -c 'import yaml, kubernetes_validate, helm_python.chart'
