#!/bin/sh
# Test dependencies of the NFS backend: nfs-ganesha (userspace NFS server,
# VFS FSAL), rpcbind (ganesha registers its MOUNT/NFS programs there) and
# libnfs-utils (nfs-ls / nfs-cat for checks from outside). Idempotent:
# nothing is downloaded when everything is already installed.
set -eu

missing=""
for pkg in nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils fuse3; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done

if [ -n "$missing" ]; then
    echo "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi

# ganesha and rpcbind are started by the test harness, never as services.
mkdir -p /run/rpcbind
command -v ganesha.nfsd >/dev/null
command -v rpcbind >/dev/null
echo "nfs test dependencies present"
