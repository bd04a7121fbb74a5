#!/bin/bash
# cachalot-on-NFS vs direct NFSv3 (nfs3_client): sequential read/write of
# SIZE_MIB (default 1024) and `ls -l` of 10 000 files, cold and warm.
# Starts its own rpcbind (if none runs) and nfs-ganesha on 127.0.0.1 and
# removes everything on exit. Needs root, FUSE and scripts/install-nfs-deps.sh.
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-1024}
FILES=${FILES:-10000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d /tmp/cachalot-nfs-bench-XXXXXX)
EXPORT=$WORK/export
MNT=$WORK/mnt
GANESHA_PID=""
RPCBIND_PID=""

cleanup() {
    set +e
    if grep -q " $MNT " /proc/self/mountinfo; then
        umount "$MNT" 2>/dev/null || umount -l "$MNT"
    fi
    [ -n "$GANESHA_PID" ] && kill "$GANESHA_PID" && wait "$GANESHA_PID" 2>/dev/null
    [ -n "$RPCBIND_PID" ] && kill "$RPCBIND_PID" && wait "$RPCBIND_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
rate() { awk -v s="$1" -v m="$SIZE_MIB" 'BEGIN { printf "%.0f", m / s }'; }

if (echo > /dev/tcp/127.0.0.1/2049) 2>/dev/null; then
    echo "something already listens on 127.0.0.1:2049; stop it first" >&2
    exit 1
fi

echo "building (release)..."
cargo build --release --quiet --bin cachalot --manifest-path "$ROOT/Cargo.toml"
cargo build --release --quiet --example nfs_direct --manifest-path "$ROOT/Cargo.toml"
CACHALOT=$CARGO_TARGET_DIR/release/cachalot
DIRECT=$CARGO_TARGET_DIR/release/examples/nfs_direct

mkdir -p "$EXPORT/many" "$MNT" "$WORK/recovery" /run/rpcbind
cat > "$WORK/ganesha.conf" <<CONF
NFS_CORE_PARAM { Bind_addr=127.0.0.1; NFS_Port=2049; MNT_Port=20048; Enable_NLM=false; Enable_RQUOTA=false; Enable_UDP=false; Protocols=3,4; mount_path_pseudo=true; }
NFSV4 { RecoveryBackend=fs; RecoveryRoot=$WORK/recovery; Graceless=true; }
EXPORT { Export_Id=1; Path=$EXPORT; Pseudo=/export; Access_Type=RW; Squash=No_Root_Squash; Protocols=3,4; Transports=TCP; SecType=sys; FSAL { Name=VFS; } }
CONF
if ! (echo > /dev/tcp/127.0.0.1/111) 2>/dev/null; then
    rpcbind -f -w & RPCBIND_PID=$!
    sleep 0.5
fi
ganesha.nfsd -F -f "$WORK/ganesha.conf" -L "$WORK/ganesha.log" -p "$WORK/ganesha.pid" & GANESHA_PID=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/20048) 2>/dev/null && break; sleep 0.1; done
sleep 0.5

echo "preparing $SIZE_MIB MiB and $FILES files..."
head -c $((SIZE_MIB << 20)) /dev/urandom > "$EXPORT/read.bin"
(cd "$EXPORT/many" && seq -f "file-%05g" 1 "$FILES" | xargs touch)
sync

mount_cachalot() {
    "$CACHALOT" mount nfs://127.0.0.1/export "$MNT" --cache-dir "$WORK/cache" \
        --cache-size 8GiB --metadata-ttl 60s --log-file "$WORK/cachalot.log" > /dev/null
}
unmount_cachalot() {
    umount "$MNT"
    for _ in $(seq 100); do grep -q " $MNT " /proc/self/mountinfo || break; sleep 0.1; done
}
drop_page_cache() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

declare -A R
mount_cachalot
drop_page_cache
t0=$(now); cat "$MNT/read.bin" > /dev/null; t1=$(now)
R[read_cold]=$(secs "$t0" "$t1")
unmount_cachalot; mount_cachalot   # kernel page cache gone, cachalot's pages kept
t0=$(now); cat "$MNT/read.bin" > /dev/null; t1=$(now)
R[read_warm]=$(secs "$t0" "$t1")
t0=$(now); dd if=/dev/zero of="$MNT/write.bin" bs=1M count="$SIZE_MIB" conv=fsync status=none; t1=$(now)
R[write]=$(secs "$t0" "$t1")
cmp -n $((SIZE_MIB << 20)) /dev/zero "$EXPORT/write.bin"
unmount_cachalot; mount_cachalot
t0=$(now); ls -l "$MNT/many" > /dev/null; t1=$(now)
R[ls_cold]=$(secs "$t0" "$t1")
t0=$(now); ls -l "$MNT/many" > /dev/null; t1=$(now)
R[ls_warm]=$(secs "$t0" "$t1")
unmount_cachalot

drop_page_cache
t0=$(now); "$DIRECT" 127.0.0.1 /export / read read.bin > /dev/null; t1=$(now)
R[direct_read]=$(secs "$t0" "$t1")
t0=$(now); "$DIRECT" 127.0.0.1 /export / write direct.bin "$SIZE_MIB" > /dev/null; t1=$(now)
R[direct_write]=$(secs "$t0" "$t1")
t0=$(now); "$DIRECT" 127.0.0.1 /export / ls many > /dev/null; t1=$(now)
R[direct_ls]=$(secs "$t0" "$t1")

printf '\n%-34s %10s %10s\n' "workload ($SIZE_MIB MiB, $FILES files)" seconds MiB/s
printf '%-34s %10s %10s\n' "read, cachalot cold" "${R[read_cold]}" "$(rate "${R[read_cold]}")"
printf '%-34s %10s %10s\n' "read, cachalot warm (page cache)" "${R[read_warm]}" "$(rate "${R[read_warm]}")"
printf '%-34s %10s %10s\n' "read, direct nfs3_client" "${R[direct_read]}" "$(rate "${R[direct_read]}")"
printf '%-34s %10s %10s\n' "write+fsync, cachalot" "${R[write]}" "$(rate "${R[write]}")"
printf '%-34s %10s %10s\n' "write+commit, direct nfs3_client" "${R[direct_write]}" "$(rate "${R[direct_write]}")"
printf '%-34s %10s\n' "ls -l, cachalot cold" "${R[ls_cold]}"
printf '%-34s %10s\n' "ls -l, cachalot warm" "${R[ls_warm]}"
printf '%-34s %10s\n' "readdirplus, direct nfs3_client" "${R[direct_ls]}"
