#!/usr/bin/env bash
# S3 benchmark: sequential write/read of SIZE_MB (default 1024) and a listing
# of NKEYS (default 10000) keys, cachalot (cold and warm cache) against a
# direct object_store client, on a local SeaweedFS. Needs root (FUSE) and
# scripts/install-s3-deps.sh. Prints a table; numbers are only comparable
# within one run.
set -euo pipefail

SIZE_MB=${SIZE_MB:-1024}
NKEYS=${NKEYS:-10000}
HERE=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$HERE/target}
WORK=$(mktemp -d /tmp/cachalot-s3-bench-XXXXXX)
WEED_PID=""
BASE=0
MNT=$WORK/mnt
cleanup() {
    if grep -q " $MNT " /proc/self/mountinfo 2>/dev/null; then
        fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT" || true
    fi
    if [ -n "$WEED_PID" ]; then kill "$WEED_PID" 2>/dev/null || true; wait "$WEED_PID" 2>/dev/null || true; fi
    if [ "$BASE" != 0 ]; then
        # weed leaves its unix sockets in /tmp: remove ours.
        for p in $(seq "$BASE" $((BASE + 6))); do
            rm -f /tmp/seaweedfs-*-"$p".sock /tmp/seaweedfs-*-$((p + 10000)).sock
        done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
cargo build --quiet --release --manifest-path "$HERE/Cargo.toml" --bin cachalot --example s3_direct
# Private copies: a shared target dir may be rebuilt by another checkout meanwhile.
cp "$TARGET/release/cachalot" "$TARGET/release/examples/s3_direct" "$WORK/"
BIN=$WORK/cachalot
DIRECT=$WORK/s3_direct

port_free() { ! (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for b in $(seq 41000 20 44000); do
    ok=1
    for p in $(seq "$b" $((b + 6))); do port_free "$p" && port_free $((p + 10000)) || { ok=0; break; }; done
    if [ $ok = 1 ]; then BASE=$b; break; fi
done
[ "$BASE" != 0 ] || { echo "no free ports" >&2; exit 1; }
S3PORT=$((BASE + 3))
ENDPOINT=http://127.0.0.1:$S3PORT
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
mkdir -p "$WORK/weed" "$WORK/tmp" "$MNT"
TMPDIR=$WORK/tmp weed mini -dir="$WORK/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -admin.ui=false -bucket=test \
    -master.port=$BASE -volume.port=$((BASE + 1)) -filer.port=$((BASE + 2)) -s3.port=$S3PORT \
    -admin.port=$((BASE + 4)) -webdav.port=$((BASE + 5)) -debug.port=$((BASE + 6)) \
    -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false >"$WORK/weed.log" 2>&1 &
WEED_PID=$!
for _ in $(seq 1 300); do
    "$DIRECT" "$ENDPOINT" test list none >/dev/null 2>&1 && break
    sleep 0.2
done

now() { date +%s.%N; }
rate() { awk -v mb="$1" -v s="$2" 'BEGIN { printf "%8.1f MB/s  (%6.2f s)", mb / s, s }'; }
mount_fresh() { # $1 = cache dir
    "$BIN" mount s3://test/bench "$MNT" --cache-dir "$1" --endpoint "$ENDPOINT" --path-style \
        --cache-size 4GiB >/dev/null
}
unmount() {
    fusermount3 -u "$MNT"
    for _ in $(seq 1 100); do grep -q " $MNT " /proc/self/mountinfo || break; sleep 0.1; done
}

head -c $((SIZE_MB << 20)) /dev/urandom >"$WORK/data"

# Direct object_store.
read -r t _ < <("$DIRECT" "$ENDPOINT" test put "$WORK/data" bench/direct.bin)
D_WRITE=$t
read -r t _ < <("$DIRECT" "$ENDPOINT" test get bench/direct.bin)
D_READ=$t
"$DIRECT" "$ENDPOINT" test fill bench/many "$NKEYS" >/dev/null
read -r t n < <("$DIRECT" "$ENDPOINT" test list bench/many)
D_LIST=$t
[ "$n" = "$NKEYS" ] || { echo "direct list saw $n keys" >&2; exit 1; }

# cachalot: write (close includes the upload), cold read, warm read, list.
mount_fresh "$WORK/cache-w"
s=$(now); dd if="$WORK/data" of="$MNT/cachalot.bin" bs=4M status=none; e=$(now)
C_WRITE=$(awk -v a="$s" -v b="$e" 'BEGIN { print b - a }')
unmount
mount_fresh "$WORK/cache-r"
s=$(now); dd if="$MNT/direct.bin" of=/dev/null bs=4M status=none; e=$(now)
C_COLD=$(awk -v a="$s" -v b="$e" 'BEGIN { print b - a }')
unmount
mount_fresh "$WORK/cache-r" # same cache dir, new mount: no kernel page cache
s=$(now); dd if="$MNT/direct.bin" of=/dev/null bs=4M status=none; e=$(now)
C_WARM=$(awk -v a="$s" -v b="$e" 'BEGIN { print b - a }')
cmp -s "$WORK/data" "$MNT/cachalot.bin" || { echo "cachalot.bin differs" >&2; exit 1; }
unmount
mount_fresh "$WORK/cache-l"
s=$(now); n=$(ls -f "$MNT/many" | grep -vc '^\.\.\?$'); e=$(now)
C_LIST=$(awk -v a="$s" -v b="$e" 'BEGIN { print b - a }')
[ "$n" = "$NKEYS" ] || { echo "cachalot list saw $n entries" >&2; exit 1; }
unmount

printf '\nS3 benchmark on SeaweedFS at %s (%s MiB, %s keys)\n' "$ENDPOINT" "$SIZE_MB" "$NKEYS"
printf '%-34s %s\n' "operation" "throughput / time"
printf '%-34s %s\n' "sequential write, object_store" "$(rate "$SIZE_MB" "$D_WRITE")"
printf '%-34s %s\n' "sequential write, cachalot" "$(rate "$SIZE_MB" "$C_WRITE")"
printf '%-34s %s\n' "sequential read, object_store" "$(rate "$SIZE_MB" "$D_READ")"
printf '%-34s %s\n' "sequential read, cachalot cold" "$(rate "$SIZE_MB" "$C_COLD")"
printf '%-34s %s\n' "sequential read, cachalot warm" "$(rate "$SIZE_MB" "$C_WARM")"
printf '%-34s %8.2f s\n' "list $NKEYS keys, object_store" "$D_LIST"
printf '%-34s %8.2f s\n' "list $NKEYS keys, cachalot (ls -f)" "$C_LIST"
