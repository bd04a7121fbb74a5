#!/usr/bin/env bash
# Test dependencies of the CSI tests (tests/csi_*.rs). They need root and
# /dev/fuse only: the plugin mounts with fuser (no libfuse) and bind-mounts
# with mount(2). fuse3 is installed for fusermount3 when debugging by hand.
set -euo pipefail
if [ ! -e /dev/fuse ]; then
  echo "install-csi-deps: /dev/fuse is missing; the CSI tests need FUSE" >&2
  exit 1
fi
if ! command -v fusermount3 >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
fi
