#!/usr/bin/env bash
# cachalot benchmark: cachalot mounts against the same data read and written
# natively, through rclone, and through direct NFS / S3 clients.
#
#   bash benches/bench.sh                 # everything, defaults below
#   bash benches/bench.sh --check         # exit 1 if a ratio is below its goal
#   BENCH_SIZE=64M BENCH_FILES=500 BENCH_ROUNDS=1 BENCH_RUNTIME=2 bash benches/bench.sh   # smoke run
#   BENCH_ONLY="read meta" bash benches/bench.sh
#
# Needs root (FUSE mounts, /proc/sys/vm/drop_caches), /dev/fuse, fio, python3.
# Optional, their rows are skipped with a note when missing: rclone (peer of
# the file rows), nfs-ganesha + rpcbind (scripts/install-nfs-deps.sh) for the
# nfs rows, SeaweedFS `weed` (scripts/install-s3-deps.sh) for the s3 rows.
# `bash scripts/test.sh` installs fio and rclone on Debian.
#
# Targets:
#   native        the backing directory itself (same disk as everything else)
#   cachalot      target/release/cachalot mount file://BACKING MNT --cache-dir C --foreground
#   rclone        rclone mount BACKING MNT --vfs-cache-mode full
#   cachalot nfs  cachalot mount nfs://127.0.0.1/export, vs examples/nfs_direct.rs
#                 (nfs3_client, no FUSE, no cache) on the same nfs-ganesha
#   cachalot s3   cachalot mount s3://test/bench on SeaweedFS (`weed mini`,
#                 SigV4), vs examples/s3_direct.rs (object_store; multipart
#                 put, 16 MiB parts, 4 in flight)
# Every measurement of a mount uses a fresh mount with an empty cache dir.
#
# Row groups (BENCH_ONLY) and what is measured, with fio job files in benches/fio/:
#   read   seq 1 MiB reads, 1 job (MiB/s): cold (empty cache, drop_caches),
#          page-store warm (whole file read once, then drop_caches), kernel-cache
#          warm (read again); seq 1 MiB reads, 4 jobs at 4 offsets: cold and
#          page-store warm; random 4 KiB reads for BENCH_RUNTIME s (IOPS): cold
#          and page-store warm. Native has cold and (kernel-cache) warm.
#   cached a --read-only mount (passthrough, the default there) whose cache
#          holds the whole file: read once, assembled into one whole file,
#          then unmounted and mounted again on the same cache dir; then seq
#          1 MiB reads, 1 job, from the first open (drop_caches first), again
#          (kernel-cache warm), and random 4 KiB reads (drop_caches first).
#          Native: cold, kernel-cache warm, random cold, in the same rounds.
#   write  sequential write of BENCH_SIZE in 1 MiB writes + fsync (MiB/s)
#   small  create BENCH_FILES files of 4 KiB (s, after sync + drop_caches); read them all cold (after
#          drop_caches, fresh mount) and warm (read again at once) (s)
#   meta   on BENCH_FILES files, after one warm-up pass: stat of every file,
#          `ls -l`, `find` (s)
#   nfs    seq write (1 MiB, zeros) + fsync/COMMIT and cold seq read of BENCH_SIZE,
#          cachalot nfs:// vs nfs_direct (MiB/s, wall clock of dd / the client)
#   s3     cold seq read and write of BENCH_SIZE, cachalot s3:// (dd) vs s3_direct
#          get / put (MiB/s, wall clock)
# Rounds are interleaved: round 1 runs every target of a row once, then round 2,
# ...; each cell is the median over the rounds. Ratios are cachalot throughput /
# other throughput, or other time / cachalot time: above 1 means cachalot is
# faster. The peak RSS (VmHWM) of the cachalot file:// daemons is printed too.
#
# Options:
#   --check        exit 1 when a ratio is below its goal (printed); rows that
#                  were skipped (tool missing) do not fail the check
#   -h, --help     this text
# Environment:
#   BENCH_SIZE     size of the big test file (default 1G; K/M/G/T, KiB/MiB/GiB = 1024-based,
#                  KB/MB/GB = 1000-based, or plain bytes; at least 4 MiB)
#   BENCH_FILES    number of small files (default 10000)
#   BENCH_ROUNDS   interleaved rounds, median taken (default 3)
#   BENCH_RUNTIME  seconds per random-read run (default 10)
#   BENCH_DIR      where the work dir goes (default target/bench); must be on a
#                  disk, not tmpfs, for the cold numbers to mean anything
#   BENCH_ONLY     row groups to run (default "read cached write small meta nfs s3")
#   BENCH_NO_BUILD=1     do not run cargo build (binaries must exist)
#   BENCH_CACHALOT_ARGS  extra `cachalot mount` arguments (e.g. "--page-size 4MiB")
#   BENCH_KEEP=1         keep the work dir (raw values, fio JSON, logs)
# Run it on a quiet machine: builds, tests (they drop the page cache) or
# anything else loading the CPU or disk distort the numbers.

set -euo pipefail
export LC_ALL=C

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

CHECK=0
for arg in "$@"; do
    case "$arg" in
        --check) CHECK=1 ;;
        -h | --help)
            sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *)
            echo "unknown argument '$arg' (see --help)" >&2
            exit 2
            ;;
    esac
done

BENCH_SIZE="${BENCH_SIZE:-1G}"
BENCH_FILES="${BENCH_FILES:-10000}"
BENCH_ROUNDS="${BENCH_ROUNDS:-3}"
BENCH_RUNTIME="${BENCH_RUNTIME:-10}"
BENCH_DIR="${BENCH_DIR:-$REPO_ROOT/target/bench}"
BENCH_ONLY="${BENCH_ONLY:-read cached write small meta nfs s3}"
BENCH_CACHALOT_ARGS="${BENCH_CACHALOT_ARGS:-}"
FIO_DIR="$REPO_ROOT/benches/fio"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"

log() { printf '[bench] %s\n' "$*" >&2; }
warn() { printf '[bench] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[bench] ERROR: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------
# Preconditions
# ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (needs FUSE mounts and /proc/sys/vm/drop_caches)"
command -v fio >/dev/null 2>&1 || die "fio not found (apt-get install fio, or run bash scripts/test.sh once)"
command -v python3 >/dev/null 2>&1 || die "python3 not found"
[ -c /dev/fuse ] || die "/dev/fuse does not exist: FUSE is not available on this machine"
for v in BENCH_FILES BENCH_ROUNDS BENCH_RUNTIME; do
    case "${!v}" in '' | *[!0-9]* | 0) die "$v must be a positive integer, got '${!v}'" ;; esac
done
for g in $BENCH_ONLY; do
    case "$g" in read | cached | write | small | meta | nfs | s3) ;; *) die "unknown group '$g' in BENCH_ONLY (have: read cached write small meta nfs s3)" ;; esac
done
want() { case " $BENCH_ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac }

BENCH_BYTES="$(python3 - "$BENCH_SIZE" <<'PY'
import re, sys
s = sys.argv[1].strip()
m = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?)(B?)", s, re.IGNORECASE)
if not m:
    sys.exit(f"bad BENCH_SIZE {s!r} (examples: 256M, 1G, 1GiB, 500MB, 1048576)")
n, unit, i, b = m.groups()
power = "KMGT".find(unit.upper()) + 1 if unit else 0
base = 1000 if (b and not i and unit) else 1024   # 1GB = 10^9, 1G = 1GiB = 2^30
v = int(n) * base ** power
if v < 4 << 20:
    sys.exit(f"BENCH_SIZE {s!r} is too small (at least 4 MiB)")
print(v - v % (4 << 20))   # whole MiB for dd and the NFS client, 4 equal parts for 4 jobs
PY
)" || die "bad BENCH_SIZE"
BENCH_MIB=$((BENCH_BYTES >> 20))

DROP_OK=1
if ! { [ -w /proc/sys/vm/drop_caches ] && sync && echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
    DROP_OK=0
    warn "cannot write /proc/sys/vm/drop_caches: 'cold' runs will NOT be cold"
fi
drop_caches() {
    [ "$DROP_OK" -eq 1 ] || return 0
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# ---------------------------------------------------------------------------
# Work dir, process bookkeeping and cleanup
# ---------------------------------------------------------------------------
mkdir -p "$BENCH_DIR"
WORK="$(mktemp -d "$BENCH_DIR/run.XXXXXX")"
BACKING="$WORK/backing"
RESULTS="$WORK/results"
LOGS="$WORK/logs"
DATA=data.bin
VALUES="$RESULTS/values"
NOTES="$RESULTS/notes"
FAILURES="$RESULTS/failures"
mkdir -p "$BACKING" "$RESULTS" "$LOGS" "$WORK/bin"
: >"$VALUES"
: >"$NOTES"
: >"$FAILURES"
if [ "$(stat -f -c %T "$WORK")" = tmpfs ]; then
    warn "$WORK is on tmpfs: native cold numbers are RAM speed (set BENCH_DIR to a disk)"
fi

declare -A DAEMON_PID=() # mountpoint -> daemon pid
GANESHA_PID=""
RPCBIND_PID=""
WEED_PID=""
WEED_BASE=0

is_mounted() {
    # mountinfo field 5 is the mount point, octal-escaped (\040 for a space).
    awk -v mp="$1" '{ m = $5; gsub(/\\040/, " ", m); if (m == mp) { found = 1 } } END { exit !found }' \
        /proc/self/mountinfo
}

# wait_mount MOUNTPOINT PID LOGFILE: poll /proc/self/mountinfo until MOUNTPOINT is
# a mount; fail when the daemon exits or after 60 s.
wait_mount() {
    local mp="$1" pid="$2" logf="$3" i
    for i in $(seq 1 600); do
        is_mounted "$mp" && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logf" >&2 || true
            die "daemon for $mp exited before the mount was ready (log: $logf)"
        fi
        sleep 0.1
    done
    tail -n 20 "$logf" >&2 || true
    die "timed out waiting for the mount at $mp"
}

# stop_pid PID [SECONDS]: SIGTERM, wait, SIGKILL if it is still there, reap.
stop_pid() {
    local pid="$1" limit="${2:-10}" i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 $((limit * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# stop_mount MOUNTPOINT: umount (lazy as a fallback), wait for the daemon to exit.
stop_mount() {
    local mp="$1" pid="${DAEMON_PID[$1]:-}" i
    if is_mounted "$mp"; then
        umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
    fi
    if [ -n "$pid" ]; then
        for i in $(seq 1 300); do
            kill -0 "$pid" 2>/dev/null || break
            [ "$i" -eq 100 ] && kill -TERM "$pid" 2>/dev/null
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            warn "daemon $pid for $mp did not exit: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    fi
    if is_mounted "$mp"; then
        umount -l "$mp" 2>/dev/null || true
    fi
    unset "DAEMON_PID[$mp]"
}

stop_ganesha() {
    stop_pid "$GANESHA_PID" 10
    GANESHA_PID=""
    stop_pid "$RPCBIND_PID" 5
    RPCBIND_PID=""
}

stop_weed() {
    stop_pid "$WEED_PID" 10
    WEED_PID=""
    if [ "$WEED_BASE" != 0 ]; then
        # weed may leave unix sockets named by port in /tmp: remove ours.
        local p
        for p in $(seq "$WEED_BASE" $((WEED_BASE + 6))); do
            rm -f /tmp/seaweedfs-*-"$p".sock /tmp/seaweedfs-*-$((p + 10000)).sock
        done
        WEED_BASE=0
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    local mp
    for mp in "${!DAEMON_PID[@]}"; do
        stop_mount "$mp"
    done
    # Anything still mounted below the work dir (a daemon we lost track of).
    while IFS= read -r mp; do
        [ -n "$mp" ] && umount -l "$mp" 2>/dev/null
    done < <(awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo)
    stop_ganesha
    stop_weed
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf -- "$WORK"
        rmdir "$BENCH_DIR" 2>/dev/null
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# Helpers: timing, recording, I/O loops
# ---------------------------------------------------------------------------
note() {
    log "$*"
    echo "$*" >>"$NOTES"
}

# rec KEY VALUE: one measurement (KEY = row.target).
rec() { echo "$1 $2" >>"$VALUES"; }

HELPER="$WORK/bin/helper.py"
cat >"$HELPER" <<'PY'
"""I/O loops of benches/bench.sh; each prints the seconds it took (timed inside)."""
import json, os, sys, time

def names(d, n):
    return [os.path.join(d, "f%06d" % i) for i in range(n)]

def main():
    op, args = sys.argv[1], sys.argv[2:]
    if op == "fio":                      # fio JSON -> MiB/s or IOPS
        text = open(args[0]).read()
        rd = json.loads(text[text.index("{"):])["jobs"][0]["read"]
        print(rd["bw_bytes"] / 2**20 if args[1] == "bw" else rd["iops"])
        return
    if op == "mkset":                    # prepare N files of SIZE bytes (not timed)
        d, n, size = args[0], int(args[1]), int(args[2])
        os.makedirs(d, exist_ok=True)
        for p in names(d, n):
            with open(p, "wb") as f:
                f.write(os.urandom(size))
        return
    t0 = time.perf_counter()
    if op == "write":                    # PATH BYTES: 1 MiB writes, fsync, close
        path, total = args[0], int(args[1])
        buf = os.urandom(1 << 20)
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        left = total
        while left > 0:
            left -= os.write(fd, buf[:min(left, len(buf))])
        os.fsync(fd)
        os.close(fd)
    elif op == "create":                 # DIR N SIZE: mkdir, create + write + close each
        d, n, size = args[0], int(args[1]), int(args[2])
        buf = os.urandom(size)
        t0 = time.perf_counter()
        os.mkdir(d)
        for p in names(d, n):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, buf)
            os.close(fd)
    elif op == "readall":                # DIR N SIZE: open + read to EOF + close each
        d, n, size = args[0], int(args[1]), int(args[2])
        total = 0
        for p in names(d, n):
            fd = os.open(p, os.O_RDONLY)
            while True:
                b = os.read(fd, 65536)
                if not b:
                    break
                total += len(b)
            os.close(fd)
        if total != n * size:
            sys.exit(f"read {total} bytes from {d}, expected {n * size}")
    elif op == "stat":                   # DIR N: stat each
        d, n = args[0], int(args[1])
        for p in names(d, n):
            os.stat(p)
    else:
        sys.exit(f"unknown op {op}")
    print("%.6f" % (time.perf_counter() - t0))

main()
PY
helper() { python3 "$HELPER" "$@"; }

# failed KEY LOG|TEXT: a measured command failed; noted with the last line of
# its log (or TEXT) and counted by the report; the run goes on.
failed() {
    local why="$2"
    [ -f "$2" ] && why="$(grep -v '^+ ' "$2" | tail -n 1)"
    note "FAILED: $1 (round $ROUND): $why"
    echo "$1" >>"$FAILURES"
}

# timed CMD...: run CMD (stdout discarded, stderr to logs/commands.log); SECS =
# its wall-clock seconds; returns CMD's status.
SECS=0
timed() {
    local t0="$EPOCHREALTIME" t1 st=0
    echo "+ $*" >>"$LOGS/commands.log"
    "$@" >/dev/null 2>>"$LOGS/commands.log" || st=$?
    t1="$EPOCHREALTIME"
    SECS="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')"
    return "$st"
}
# mibps BYTES SECONDS
mibps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.3f", b / 1048576 / s }'; }

# helper_rec KEY OP ARGS...: run a helper.py loop, record its seconds as KEY.
helper_rec() {
    local key="$1" secs
    shift
    echo "+ helper $*" >>"$LOGS/commands.log"
    if secs="$(helper "$@" 2>>"$LOGS/commands.log")"; then
        rec "$key" "$secs"
    else
        failed "$key" "$LOGS/commands.log"
        return 1
    fi
}

# fio_rec JOB FILE KEY bw|iops: benches/fio/JOB.fio on FILE, record MiB/s or IOPS as KEY.
fio_rec() {
    local job="$1" file="$2" key="$3" metric="$4"
    local name="$key.r$ROUND"
    if BENCH_FILE="$file" BENCH_BYTES="$BENCH_BYTES" BENCH_PART=$((BENCH_BYTES / 4)) \
        BENCH_RUNTIME="$BENCH_RUNTIME" fio --readonly --output-format=json \
        --output="$RESULTS/fio-$name.json" "$FIO_DIR/$job.fio" >"$LOGS/fio-$name.log" 2>&1; then
        rec "$key" "$(helper fio "$RESULTS/fio-$name.json" "$metric")"
    else
        failed "$key" "$LOGS/fio-$name.log"
        return 1
    fi
}

# vm_hwm PID: peak resident set size in KiB.
vm_hwm() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

# ---------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------
MOUNT_SEQ=0

# start_cachalot KIND SOURCE [ARGS...]: fresh mount at $WORK/mnt-KIND with an
# empty cache dir (KEEP_CACHE=1: the cache dir as the last mount left it);
# TROOT = the mountpoint.
start_cachalot() {
    local kind="$1" source="$2"
    shift 2
    local mp="$WORK/mnt-$kind" cache="$WORK/cache-$kind"
    MOUNT_SEQ=$((MOUNT_SEQ + 1))
    local logf="$LOGS/cachalot-$kind-$MOUNT_SEQ.log"
    [ "${KEEP_CACHE:-0}" = 1 ] || rm -rf "$cache"
    mkdir -p "$mp" "$cache"
    # shellcheck disable=SC2086 # BENCH_CACHALOT_ARGS is a word list
    "$CACHALOT" mount "$source" "$mp" --cache-dir "$cache" --foreground "$@" $BENCH_CACHALOT_ARGS \
        >"$logf" 2>&1 </dev/null &
    DAEMON_PID[$mp]=$!
    wait_mount "$mp" "$!" "$logf"
    TROOT="$mp"
}

start_rclone() {
    local mp="$WORK/mnt-rclone" cache="$WORK/cache-rclone"
    MOUNT_SEQ=$((MOUNT_SEQ + 1))
    local logf="$LOGS/rclone-$MOUNT_SEQ.log"
    rm -rf "$cache"
    mkdir -p "$mp" "$cache"
    rclone mount "$BACKING" "$mp" --vfs-cache-mode full --cache-dir "$cache" --config /dev/null \
        >"$logf" 2>&1 </dev/null &
    DAEMON_PID[$mp]=$!
    wait_mount "$mp" "$!" "$logf"
    TROOT="$mp"
}

# open_target TARGET: mount it if it is a mount; TROOT = where the data is seen.
TROOT=""
open_target() {
    case "$1" in
        native) TROOT="$BACKING" ;;
        cachalot) start_cachalot file "file://$BACKING" ;;
        rclone) start_rclone ;;
        cachalot-nfs) start_cachalot nfs "nfs://127.0.0.1/export" ;;
        cachalot-s3) start_cachalot s3 "s3://$S3_BUCKET/bench" --endpoint "$S3_ENDPOINT" --path-style ;;
        *) die "open_target: $1" ;;
    esac
}

# close_target TARGET ROW: unmount; for cachalot file:// record the daemon's VmHWM.
close_target() {
    local mp="" kib
    case "$1" in
        native) return 0 ;;
        cachalot)
            mp="$WORK/mnt-file"
            kib="$(vm_hwm "${DAEMON_PID[$mp]}")"
            [ -n "$kib" ] && rec "rss.$2" "$kib"
            ;;
        rclone) mp="$WORK/mnt-rclone" ;;
        cachalot-nfs) mp="$WORK/mnt-nfs" ;;
        cachalot-s3) mp="$WORK/mnt-s3" ;;
    esac
    stop_mount "$mp"
    rm -rf "$WORK/cache-${mp##*/mnt-}"
}

# populate FILE: read it whole through the mount (fills the cache); in round 1
# compare it with the backing file.
populate() {
    if [ "$ROUND" -eq 1 ]; then
        cmp -- "$BACKING/$DATA" "$1" >>"$LOGS/commands.log" 2>&1
    else
        cat -- "$1" >/dev/null 2>>"$LOGS/commands.log"
    fi
}

# rounds ROW TARGET...: BENCH_ROUNDS interleaved rounds of work_ROW over the
# targets (the order rotates by one each round).
ROUND=0
rounds() {
    local row="$1" i t
    shift
    local -a targets=("$@")
    local n=${#targets[@]}
    for ((ROUND = 1; ROUND <= BENCH_ROUNDS; ROUND++)); do
        for ((i = 0; i < n; i++)); do
            t="${targets[(i + ROUND - 1) % n]}"
            log "$row: round $ROUND/$BENCH_ROUNDS, $t"
            "work_$row" "$t"
        done
    done
}

# ---------------------------------------------------------------------------
# Rows: work_ROW TARGET records ROW.TARGET values (ROUND = the round). A failed
# measurement is noted and the run goes on.
# ---------------------------------------------------------------------------
# Big-file reads, ROW = seq1 (1 job), seq4 (4 jobs) or rand (4 KiB, IOPS).
# native: cold, then warm (kernel page cache) for the sequential rows. Mounts:
# cold; page-store warm (file read whole, then drop_caches); for seq1
# kernel-cache warm (read again).
big_reads() {
    local row="$1" job="$2" metric="$3" t="$4"
    open_target "$t"
    local f="$TROOT/$DATA"
    drop_caches
    fio_rec "$job" "$f" "$row.cold.$t" "$metric" || true
    if [ "$t" = native ]; then
        [ "$row" = rand ] || fio_rec "$job" "$f" "$row.kwarm.$t" "$metric" || true
    elif populate "$f"; then
        drop_caches
        fio_rec "$job" "$f" "$row.warm.$t" "$metric" || true
        [ "$row" != seq1 ] || fio_rec "$job" "$f" "$row.kwarm.$t" "$metric" || true
    else
        failed "$row.warm.$t" "reading the whole file through the mount failed or gave other bytes"
    fi
    close_target "$t" "$row"
}
work_seq1() { big_reads seq1 seq-read bw "$1"; }
work_seq4() { big_reads seq4 seq-read-4jobs bw "$1"; }
work_rand() { big_reads rand rand-read iops "$1"; }

# wait_whole CACHE_DIR: wait (up to 120 s) until the cache holds an assembled
# whole file (its .meta under files/).
wait_whole() {
    local i
    for i in $(seq 1 1200); do
        find "$1/files" -name '*.meta' 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    return 1
}

# cached_reads TARGET FILE: the reads of the cached group, cold first.
cached_reads() {
    drop_caches
    fio_rec seq-read "$2" "cached.cold.$1" bw || true
    fio_rec seq-read "$2" "cached.kwarm.$1" bw || true
    drop_caches
    fio_rec rand-read "$2" "cached.rand.$1" iops || true
}

# Reads of a fully cached file on a --read-only mount, from the first open
# after a remount (see the header).
work_cached() {
    local t="$1"
    if [ "$t" = native ]; then
        cached_reads "$t" "$BACKING/$DATA"
        return 0
    fi
    start_cachalot file "file://$BACKING" --read-only
    if ! populate "$TROOT/$DATA" || ! wait_whole "$WORK/cache-file"; then
        failed "cached.cold.$t" "the whole file was not read through the mount or not assembled within 120 s"
        close_target cachalot cached
        return 0
    fi
    stop_mount "$WORK/mnt-file"
    KEEP_CACHE=1 start_cachalot file "file://$BACKING" --read-only
    cached_reads "$t" "$TROOT/$DATA"
    close_target cachalot cached
}

work_write() {
    local t="$1" f="write-$1-$ROUND.bin" secs
    open_target "$t"
    echo "+ helper write $TROOT/$f" >>"$LOGS/commands.log"
    if secs="$(helper write "$TROOT/$f" "$BENCH_BYTES" 2>>"$LOGS/commands.log")"; then
        rec "write.$t" "$(mibps "$BENCH_BYTES" "$secs")"
    else
        failed "write.$t" "$LOGS/commands.log"
    fi
    close_target "$t" write
    rm -f "$BACKING/$f"
}

# sync and drop_caches first: ext4 skips inodes freed in the last minutes
# when it allocates one (recently_deleted), looking up each one's inode
# block while it is cached, so a create after any target's cleanup removed
# thousands of files cost up to 10x more, for whichever target came next.
work_create() {
    local t="$1" d="create-$1-$ROUND"
    open_target "$t"
    drop_caches
    helper_rec "create.$t" create "$TROOT/$d" "$BENCH_FILES" 4096 || true
    close_target "$t" create
    rm -rf "${BACKING:?}/$d"
}

work_smallread() {
    local t="$1"
    open_target "$t"
    drop_caches
    helper_rec "small_cold.$t" readall "$TROOT/small" "$BENCH_FILES" 4096 || true
    helper_rec "small_warm.$t" readall "$TROOT/small" "$BENCH_FILES" 4096 || true
    close_target "$t" small
}

work_meta() {
    local t="$1" d
    open_target "$t"
    d="$TROOT/small"
    # warm-up pass
    helper stat "$d" "$BENCH_FILES" >/dev/null 2>&1 || true
    ls -l "$d" >/dev/null 2>&1 || true
    find "$d" >/dev/null 2>&1 || true
    helper_rec "stat.$t" stat "$d" "$BENCH_FILES" || true
    if timed ls -l "$d"; then rec "ls.$t" "$SECS"; else failed "ls.$t" "$LOGS/commands.log"; fi
    if timed find "$d"; then rec "find.$t" "$SECS"; else failed "find.$t" "$LOGS/commands.log"; fi
    close_target "$t" meta
}

# timed_rec KEY BYTES CMD...: time CMD, record BYTES / seconds in MiB/s as KEY.
timed_rec() {
    local key="$1" bytes="$2"
    shift 2
    if timed "$@"; then
        rec "$key" "$(mibps "$bytes" "$SECS")"
    else
        failed "$key" "$LOGS/commands.log"
    fi
}

work_nfswrite() {
    local t="$1" bytes=$((BENCH_MIB << 20))
    case "$t" in
        cachalot-nfs)
            open_target "$t"
            timed_rec "nfswrite.$t" "$bytes" \
                dd if=/dev/zero of="$TROOT/w-cachalot-$ROUND" bs=1M count="$BENCH_MIB" conv=fsync status=none
            close_target "$t" nfswrite
            rm -f "$NFS_EXPORT/w-cachalot-$ROUND"
            ;;
        nfs-direct)
            timed_rec "nfswrite.$t" "$bytes" "$NFS_DIRECT" 127.0.0.1 /export / write "w-direct-$ROUND" "$BENCH_MIB"
            rm -f "$NFS_EXPORT/w-direct-$ROUND"
            ;;
    esac
}

work_nfsread() {
    local t="$1"
    case "$t" in
        cachalot-nfs)
            open_target "$t"
            drop_caches
            timed_rec "nfsread.$t" "$BENCH_BYTES" dd if="$TROOT/read.bin" of=/dev/null bs=1M status=none
            close_target "$t" nfsread
            ;;
        nfs-direct)
            drop_caches
            timed_rec "nfsread.$t" "$BENCH_BYTES" "$NFS_DIRECT" 127.0.0.1 /export / read read.bin
            ;;
    esac
}

work_s3write() {
    local t="$1"
    cat -- "$BACKING/$DATA" >/dev/null # the source, in the page cache for both
    case "$t" in
        cachalot-s3)
            open_target "$t"
            timed_rec "s3write.$t" "$BENCH_BYTES" \
                dd if="$BACKING/$DATA" of="$TROOT/w-cachalot-$ROUND" bs=1M conv=fsync status=none
            rm -f "$TROOT"/w-* 2>/dev/null || true # this one and the direct client's earlier ones
            close_target "$t" s3write
            ;;
        s3-direct)
            timed_rec "s3write.$t" "$BENCH_BYTES" \
                "$S3_DIRECT" "$S3_ENDPOINT" "$S3_BUCKET" put "$BACKING/$DATA" "bench/w-direct-$ROUND"
            ;;
    esac
}

work_s3read() {
    local t="$1"
    case "$t" in
        cachalot-s3)
            open_target "$t"
            drop_caches
            timed_rec "s3read.$t" "$BENCH_BYTES" dd if="$TROOT/read.bin" of=/dev/null bs=1M status=none
            close_target "$t" s3read
            ;;
        s3-direct)
            drop_caches
            timed_rec "s3read.$t" "$BENCH_BYTES" "$S3_DIRECT" "$S3_ENDPOINT" "$S3_BUCKET" get bench/read.bin
            ;;
    esac
}

# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------
port_open() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

NFS_EXPORT="$WORK/export"
# start_ganesha: nfs-ganesha (and rpcbind if none runs) on 127.0.0.1 exporting
# $NFS_EXPORT as /export; returns 1 (with a note) when it cannot run here.
start_ganesha() {
    if ! command -v ganesha.nfsd >/dev/null 2>&1 || ! command -v rpcbind >/dev/null 2>&1; then
        note "nfs rows skipped: nfs-ganesha or rpcbind not installed (bash scripts/install-nfs-deps.sh)"
        return 1
    fi
    if port_open 2049; then
        note "nfs rows skipped: something already listens on 127.0.0.1:2049 (a test's nfs-ganesha?)"
        return 1
    fi
    mkdir -p "$NFS_EXPORT/probe" "$WORK/ganesha/recovery" /run/rpcbind
    cat >"$WORK/ganesha/ganesha.conf" <<CONF
NFS_CORE_PARAM { Bind_addr=127.0.0.1; NFS_Port=2049; MNT_Port=20048; Enable_NLM=false; Enable_RQUOTA=false; Enable_UDP=false; Protocols=3,4; mount_path_pseudo=true; }
NFSV4 { RecoveryBackend=fs; RecoveryRoot=$WORK/ganesha/recovery; Graceless=true; }
EXPORT { Export_Id=1; Path=$NFS_EXPORT; Pseudo=/export; Access_Type=RW; Squash=No_Root_Squash; Protocols=3,4; Transports=TCP; SecType=sys; FSAL { Name=VFS; } }
CONF
    if ! port_open 111; then
        rpcbind -f -w >"$LOGS/rpcbind.log" 2>&1 </dev/null &
        RPCBIND_PID=$!
        local i
        for i in $(seq 1 50); do
            port_open 111 && break
            sleep 0.1
        done
    fi
    ganesha.nfsd -F -f "$WORK/ganesha/ganesha.conf" -L "$LOGS/ganesha.log" -p "$WORK/ganesha/ganesha.pid" \
        >/dev/null 2>&1 </dev/null &
    GANESHA_PID=$!
    local i
    for i in $(seq 1 300); do
        kill -0 "$GANESHA_PID" 2>/dev/null || {
            tail -n 20 "$LOGS/ganesha.log" >&2
            die "ganesha.nfsd exited at start"
        }
        if "$NFS_DIRECT" 127.0.0.1 /export / ls probe >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$LOGS/ganesha.log" >&2
    die "nfs-ganesha did not answer within 30 s"
}

S3_BUCKET="test"
S3_ENDPOINT=""
# start_weed: SeaweedFS `weed mini` on free 127.0.0.1 ports, SigV4 with one
# identity; returns 1 (with a note) when weed is not installed.
start_weed() {
    local weed
    weed="$(command -v weed 2>/dev/null)" || {
        note "s3 rows skipped: SeaweedFS weed not installed (bash scripts/install-s3-deps.sh)"
        return 1
    }
    local b p ok
    for b in $(seq 41000 20 44000); do
        ok=1
        for p in $(seq "$b" $((b + 6))); do
            if port_open "$p" || port_open $((p + 10000)); then
                ok=0
                break
            fi
        done
        if [ "$ok" = 1 ]; then
            WEED_BASE=$b
            break
        fi
    done
    [ "$WEED_BASE" != 0 ] || die "no free port block for weed mini"
    S3_ENDPOINT="http://127.0.0.1:$((WEED_BASE + 3))"
    export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
    mkdir -p "$WORK/weed/data" "$WORK/weed/tmp"
    cat >"$WORK/weed/s3.json" <<JSON
{"identities":[{"name":"bench","credentials":[{"accessKey":"$AWS_ACCESS_KEY_ID","secretKey":"$AWS_SECRET_ACCESS_KEY"}],
  "actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
    # Identities come from -s3.config (with AWS_* set, weed mini would use those);
    # weed puts sockets and scratch files in $TMPDIR: keep them in the work dir.
    (
        cd "$WORK/weed"
        exec env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY TMPDIR="$WORK/weed/tmp" "$weed" mini \
            -dir="$WORK/weed/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -admin.ui=false -bucket="$S3_BUCKET" \
            -master.port="$WEED_BASE" -volume.port=$((WEED_BASE + 1)) -filer.port=$((WEED_BASE + 2)) \
            -s3.port=$((WEED_BASE + 3)) -admin.port=$((WEED_BASE + 4)) -webdav.port=$((WEED_BASE + 5)) \
            -debug.port=$((WEED_BASE + 6)) -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
            -s3.config="$WORK/weed/s3.json"
    ) >"$LOGS/weed.log" 2>&1 </dev/null &
    WEED_PID=$!
    local i
    for i in $(seq 1 300); do
        kill -0 "$WEED_PID" 2>/dev/null || {
            tail -n 20 "$LOGS/weed.log" >&2
            die "weed mini exited at start"
        }
        "$S3_DIRECT" "$S3_ENDPOINT" "$S3_BUCKET" list none >/dev/null 2>&1 && break
        sleep 0.2
    done
    [ "$i" -lt 300 ] || die "weed mini: bucket $S3_BUCKET not ready within 60 s (log: $LOGS/weed.log)"
    # Signatures must be checked before we measure anything.
    for i in $(seq 1 300); do
        AWS_SECRET_ACCESS_KEY=not-the-secret "$S3_DIRECT" "$S3_ENDPOINT" "$S3_BUCKET" list none \
            >/dev/null 2>&1 || return 0
        sleep 0.2
    done
    die "weed mini never enforced SigV4"
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    log "cargo build --release --locked (cachalot, examples nfs_direct and s3_direct)"
    cargo build --release --locked --bin cachalot --example nfs_direct --example s3_direct >&2 ||
        die "cargo build --release failed"
fi
# What was built (for the report), taken now: the checkout may change meanwhile.
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    COMMIT="$COMMIT + uncommitted changes"
fi
# Private copies: the shared target dir may be rebuilt while we measure.
[ -x "$TARGET_DIR/release/cachalot" ] || die "$TARGET_DIR/release/cachalot not found (cargo build --release)"
cp "$TARGET_DIR/release/cachalot" "$WORK/bin/"
CACHALOT="$WORK/bin/cachalot"
NFS_DIRECT="$WORK/bin/nfs_direct"
S3_DIRECT="$WORK/bin/s3_direct"
for ex in nfs_direct s3_direct; do
    if [ -x "$TARGET_DIR/release/examples/$ex" ]; then
        cp "$TARGET_DIR/release/examples/$ex" "$WORK/bin/"
    fi
done

FILE_TARGETS=(native cachalot)
if command -v rclone >/dev/null 2>&1; then
    FILE_TARGETS+=(rclone)
elif want read || want write || want small || want meta; then
    note "rclone rows skipped: rclone not installed (apt-get install rclone)"
fi

log "work dir $WORK; creating the $BENCH_SIZE ($BENCH_BYTES bytes) test file"
head -c "$BENCH_BYTES" /dev/urandom >"$BACKING/$DATA"
if want small || want meta; then
    log "creating $BENCH_FILES files of 4 KiB"
    helper mkset "$BACKING/small" "$BENCH_FILES" 4096
fi
sync

if want read; then
    rounds seq1 "${FILE_TARGETS[@]}"
    rounds seq4 "${FILE_TARGETS[@]}"
    rounds rand "${FILE_TARGETS[@]}"
fi
if want cached; then
    rounds cached native cachalot
fi
if want write; then
    rounds write "${FILE_TARGETS[@]}"
fi
if want small; then
    rounds create "${FILE_TARGETS[@]}"
    rounds smallread "${FILE_TARGETS[@]}"
fi
if want meta; then
    rounds meta "${FILE_TARGETS[@]}"
fi
if want nfs; then
    if [ ! -x "$NFS_DIRECT" ]; then
        note "nfs rows skipped: examples/nfs_direct not built (cargo build --release --example nfs_direct)"
    elif start_ganesha; then
        ln "$BACKING/$DATA" "$NFS_EXPORT/read.bin" 2>/dev/null || cp "$BACKING/$DATA" "$NFS_EXPORT/read.bin"
        sync
        rounds nfswrite cachalot-nfs nfs-direct
        rounds nfsread cachalot-nfs nfs-direct
        stop_ganesha
    fi
fi
if want s3; then
    if [ ! -x "$S3_DIRECT" ]; then
        note "s3 rows skipped: examples/s3_direct not built (cargo build --release --example s3_direct)"
    elif start_weed; then
        log "uploading the test file to s3://$S3_BUCKET/bench/read.bin"
        "$S3_DIRECT" "$S3_ENDPOINT" "$S3_BUCKET" put "$BACKING/$DATA" bench/read.bin >/dev/null
        rounds s3write cachalot-s3 s3-direct
        rounds s3read cachalot-s3 s3-direct
        stop_weed
    fi
fi

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
# The report is the last command: its exit status (1 = below goal with --check)
# is the script's.
R_CHECK="$CHECK" R_DROP_OK="$DROP_OK" R_FILES="$BENCH_FILES" R_ARGS="$BENCH_CACHALOT_ARGS" \
    R_SETTINGS="BENCH_SIZE=$BENCH_SIZE ($BENCH_BYTES bytes), BENCH_FILES=$BENCH_FILES, BENCH_ROUNDS=$BENCH_ROUNDS, BENCH_RUNTIME=${BENCH_RUNTIME}s, BENCH_ONLY=\"$BENCH_ONLY\"" \
    R_HEADER="cachalot $COMMIT; Linux $(uname -r), $(nproc) CPUs; $(date -u '+%Y-%m-%d %H:%M UTC')" \
    python3 - "$VALUES" "$NOTES" "$FAILURES" <<'PY'
import os, statistics, sys

values_path, notes_path, failures_path = sys.argv[1:4]
failures = set(l.strip() for l in open(failures_path) if l.strip())
env = os.environ
check = env["R_CHECK"] == "1"
n = env["R_FILES"]

vals = {}
for line in open(values_path):
    k, v = line.split()
    vals.setdefault(k, []).append(float(v))


def med(key):
    l = vals.get(key)
    return statistics.median(l) if l else None


MED_ROWS = [  # key, label, unit
    ("seq1.cold", "seq read 1 MiB, 1 job: cold", "MiB/s"),
    ("seq1.warm", "seq read 1 MiB, 1 job: page-store warm", "MiB/s"),
    ("seq1.kwarm", "seq read 1 MiB, 1 job: kernel-cache warm", "MiB/s"),
    ("seq4.cold", "seq read 1 MiB, 4 jobs: cold", "MiB/s"),
    ("seq4.warm", "seq read 1 MiB, 4 jobs: page-store warm", "MiB/s"),
    ("rand.cold", "rand read 4 KiB: cold", "IOPS"),
    ("rand.warm", "rand read 4 KiB: page-store warm", "IOPS"),
    ("cached.cold", "read-only mount, whole file cached: seq 1 job, first open after remount", "MiB/s"),
    ("cached.kwarm", "read-only mount, whole file cached: seq 1 job, kernel-cache warm", "MiB/s"),
    ("cached.rand", "read-only mount, whole file cached: rand 4 KiB", "IOPS"),
    ("write", "seq write 1 MiB + fsync", "MiB/s"),
    ("create", f"create {n} files of 4 KiB", "s"),
    ("small_cold", f"read {n} small files: cold", "s"),
    ("small_warm", f"read {n} small files: warm", "s"),
    ("stat", f"stat {n} files: warm", "s"),
    ("ls", f"ls -l of {n} files: warm", "s"),
    ("find", f"find over {n} files: warm", "s"),
    ("nfswrite", "NFS seq write + fsync (cachalot nfs:// vs nfs_direct)", "MiB/s"),
    ("nfsread", "NFS seq read: cold (cachalot nfs:// vs nfs_direct)", "MiB/s"),
    ("s3write", "S3 seq write (cachalot s3:// vs s3_direct put)", "MiB/s"),
    ("s3read", "S3 seq read: cold (cachalot s3:// vs s3_direct get)", "MiB/s"),
]
COLS = [
    ("native", ["native"]),
    ("cachalot", ["cachalot", "cachalot-nfs", "cachalot-s3"]),
    ("rclone", ["rclone"]),
    ("direct", ["nfs-direct", "s3-direct"]),
]
TP, TIME = "tp", "time"
RATIOS = [  # label, cachalot key, other key, kind, goal (throughput ratio, or time factor)
    ("seq 1 job: cold vs native cold", "seq1.cold.cachalot", "seq1.cold.native", TP, None),
    ("seq 1 job: page-store warm vs native cold", "seq1.warm.cachalot", "seq1.cold.native", TP, 0.9),
    ("seq 1 job: kernel-cache warm vs native warm", "seq1.kwarm.cachalot", "seq1.kwarm.native", TP, 0.95),
    ("seq 1 job: cold vs rclone cold", "seq1.cold.cachalot", "seq1.cold.rclone", TP, None),
    ("seq 1 job: page-store warm vs rclone warm", "seq1.warm.cachalot", "seq1.warm.rclone", TP, None),
    ("seq 4 jobs: cold vs native cold", "seq4.cold.cachalot", "seq4.cold.native", TP, None),
    ("seq 4 jobs: page-store warm vs native cold", "seq4.warm.cachalot", "seq4.cold.native", TP, 0.8),
    ("seq 4 jobs: page-store warm vs rclone warm", "seq4.warm.cachalot", "seq4.warm.rclone", TP, None),
    ("rand 4 KiB: cold vs native cold", "rand.cold.cachalot", "rand.cold.native", TP, 0.7),
    ("rand 4 KiB: page-store warm vs native cold", "rand.warm.cachalot", "rand.cold.native", TP, 0.8),
    ("rand 4 KiB: page-store warm vs rclone warm", "rand.warm.cachalot", "rand.warm.rclone", TP, 3.0),
    ("cached, seq 1 job: first open after remount vs native cold", "cached.cold.cachalot", "cached.cold.native", TP, 0.9),
    ("cached, seq 1 job: kernel-cache warm vs native warm", "cached.kwarm.cachalot", "cached.kwarm.native", TP, 0.95),
    ("cached, rand 4 KiB vs native cold", "cached.rand.cachalot", "cached.rand.native", TP, 0.8),
    ("seq write + fsync vs native", "write.cachalot", "write.native", TP, 0.7),
    ("seq write + fsync vs rclone", "write.cachalot", "write.rclone", TP, None),
    (f"create {n} files vs native", "create.cachalot", "create.native", TIME, 3.0),
    (f"read {n} small files cold vs native", "small_cold.cachalot", "small_cold.native", TIME, 3.0),
    (f"read {n} small files warm vs native", "small_warm.cachalot", "small_warm.native", TIME, 2.0),
    (f"stat {n} files warm vs native", "stat.cachalot", "stat.native", TIME, 1.5),
    (f"ls -l of {n} files warm vs native", "ls.cachalot", "ls.native", TIME, 1.5),
    (f"find over {n} files warm vs native", "find.cachalot", "find.native", TIME, 1.5),
    ("NFS seq write + fsync vs nfs_direct", "nfswrite.cachalot-nfs", "nfswrite.nfs-direct", TP, 0.9),
    ("NFS seq read cold vs nfs_direct", "nfsread.cachalot-nfs", "nfsread.nfs-direct", TP, 1.0),
    ("S3 seq read cold vs s3_direct get", "s3read.cachalot-s3", "s3read.s3-direct", TP, 0.9),
    ("S3 seq write vs s3_direct multipart put", "s3write.cachalot-s3", "s3write.s3-direct", TP, 1.0),
]
RSS_GOAL_MIB = 64 + 64  # 64 MiB + the 64 MiB memory tier of a mount


def fmt(v, unit):
    if unit == "s":
        return f"{v:.3f}"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def cell(key, unit):
    l = vals.get(key)
    if not l:
        return "FAILED" if key in failures else "-"
    m = statistics.median(l)
    s = fmt(m, unit)
    if len(l) > 1 and m > 0:
        s += f" ±{(max(l) - min(l)) / 2 / m * 100:.0f}%"
    return s


print()
print("## cachalot benchmark")
print()
print(env["R_HEADER"])
print(env["R_SETTINGS"] + (f"; cachalot mount args: {env['R_ARGS']}" if env["R_ARGS"] else ""))
if env["R_DROP_OK"] != "1":
    print("WARNING: drop_caches was not possible: 'cold' rows are not cold")
print()
print("Medians over the rounds (± = half the min-max spread, relative to the median).")
print("In the nfs and s3 rows, the cachalot column is the nfs:// or s3:// mount.")
print()
print("| row | unit | " + " | ".join(c for c, _ in COLS) + " |")
print("|---|---|" + "---:|" * len(COLS))
for key, label, unit in MED_ROWS:
    cells = []
    for _, targets in COLS:
        c = "-"
        for t in targets:
            if f"{key}.{t}" in vals or f"{key}.{t}" in failures:
                c = cell(f"{key}.{t}", unit)
        cells.append(c)
    if all(c == "-" for c in cells):
        continue
    print(f"| {label} | {unit} | " + " | ".join(cells) + " |")

print()
print("Ratios: cachalot throughput / other, or other time / cachalot time (> 1: cachalot faster).")
print()
print("| comparison | ratio | goal | result |")
print("|---|---:|---|---|")
below = []
for label, a, b, kind, goal in RATIOS:
    if kind == TP:
        need = goal
        gtext = f"≥ {goal:.2f}" if goal is not None else ""
    else:
        need = 1 / goal if goal is not None else None
        gtext = f"≥ {need:.2f} (time ≤ {goal:g}×)" if goal is not None else ""
    va, vb = med(a), med(b)
    if va is None or vb is None:
        if a in failures or b in failures:
            if need is not None:
                below.append(f"{label}: a measurement failed")
            print(f"| {label} | - | {gtext} | **failed** |")
        continue
    if kind == TP:
        ratio = va / vb if vb > 0 else float("inf")
    else:
        ratio = vb / va if va > 0 else float("inf")
    if need is None:
        result = ""
    elif ratio + 1e-9 >= need:
        result = "ok"
    else:
        result = "**below**"
        below.append(f"{label}: {ratio:.2f} < {need:.2f}")
    print(f"| {label} | {ratio:.2f} | {gtext} | {result} |")

rss = {k[4:]: v for k, v in vals.items() if k.startswith("rss.")}
if rss:
    peak = max(max(v) for v in rss.values()) / 1024
    mounts = sum(len(v) for v in rss.values())
    res = "ok" if peak <= RSS_GOAL_MIB else "above"
    print(f"| cachalot file:// daemon peak RSS (VmHWM), max of {mounts} mounts | {peak:.1f} MiB "
          f"| ≤ {RSS_GOAL_MIB} MiB (64 MiB + 64 MiB memory tier) | {res} (not checked) |")
    print()
    print("Peak RSS by row: " + ", ".join(f"{k} {max(v) / 1024:.1f} MiB" for k, v in rss.items()))

notes = [l.strip() for l in open(notes_path) if l.strip()]
if notes:
    print()
    for l in notes:
        print(f"- {l}")
print()
if failures:
    print(f"Failed measurements (see the notes above; BENCH_KEEP=1 keeps the daemon logs): "
          f"{', '.join(sorted(failures))}")
if below:
    print(f"{len(below)} ratio(s) below goal:")
    for l in below:
        print(f"  {l}")
else:
    print("All measured ratios meet their goals.")
sys.exit(1 if (check and (below or failures)) else 0)
PY
