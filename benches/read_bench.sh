#!/usr/bin/env bash
# End-to-end read benchmark: native file vs cachalot (cold / warm) vs rclone.
#
#   bash benches/read_bench.sh                          # 1 GiB file, 20 s random runs
#   BENCH_SIZE=256M BENCH_RUNTIME=5 bash benches/read_bench.sh   # quick run
#
# Needs root (drop_caches, FUSE mounts), fio, python3, /dev/fuse; rclone is
# optional (its rows are skipped with a note when it is not installed).
# `bash scripts/test.sh` installs fio and rclone on Debian.
#
# What it does, with the fio jobs in benches/fio/ (psync, one job):
#   seq  = sequential 1 MiB reads of the whole file        -> MiB/s
#   rand = random 4 KiB reads, BENCH_RUNTIME seconds       -> IOPS
# for each of:
#   native       the backing file itself, cold (drop_caches) and warm (page cache)
#   cachalot     target/release/cachalot mount file://BACKING MNT --cache-dir C --foreground
#                cold : fresh mount, empty cache dir, drop_caches
#                warm : page store fully populated (whole file read and compared with
#                       the backing file), then drop_caches: measures the page store
#                warm+kcache : same, without drop_caches (kernel page cache may help)
#   rclone       rclone mount BACKING MNT --vfs-cache-mode full --cache-dir C,
#                same three temperatures.
# Ratios: "vs native" compares with the native run of the same kernel page-cache
# state (cold and warm rows run after drop_caches -> native cold; warm+kcache
# rows -> native warm); "vs rclone" compares with rclone's row of the same name.
#
# Environment:
#   BENCH_SIZE     size of the test file (default 1G; K/M/G/T, KiB/MiB/GiB = 1024-based,
#                  KB/MB/GB = 1000-based, or plain bytes)
#   BENCH_RUNTIME  seconds per random-read run (default 20)
#   BENCH_DIR      where temp dirs go (default target/bench; must not be tmpfs
#                  for the cold numbers to mean anything)
#   BENCH_JOBS     which jobs (default "seq rand")
#   BENCH_CACHALOT_ARGS  extra `cachalot mount` arguments (e.g. "--page-size 4MiB")
#   BENCH_CACHALOT_BIN   binary to benchmark (default target/release/cachalot)
#   BENCH_NO_BUILD=1     do not run `cargo build --release` first
#   BENCH_KEEP=1         keep the temp dir (fio JSON, daemon logs) after the run

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

BENCH_SIZE="${BENCH_SIZE:-1G}"
BENCH_RUNTIME="${BENCH_RUNTIME:-20}"
BENCH_DIR="${BENCH_DIR:-$REPO_ROOT/target/bench}"
BENCH_JOBS="${BENCH_JOBS:-seq rand}"
BENCH_CACHALOT_ARGS="${BENCH_CACHALOT_ARGS:-}"
FIO_DIR="$REPO_ROOT/benches/fio"
BIN="${BENCH_CACHALOT_BIN:-$REPO_ROOT/target/release/cachalot}"

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
case "$BENCH_RUNTIME" in '' | *[!0-9]*) die "BENCH_RUNTIME must be a number of seconds, got '$BENCH_RUNTIME'" ;; esac
for job in $BENCH_JOBS; do
    [ -f "$FIO_DIR/$job-read.fio" ] || die "unknown job '$job' (have: seq rand)"
done

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
if v < 1 << 20:
    sys.exit(f"BENCH_SIZE {s!r} is too small (at least 1 MiB)")
print(v)
PY
)" || die "bad BENCH_SIZE"

HAVE_RCLONE=1
command -v rclone >/dev/null 2>&1 || HAVE_RCLONE=0
command -v getfattr >/dev/null 2>&1 || warn "getfattr not found (package attr): cache stats will not be shown"

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
# Work dir and cleanup
# ---------------------------------------------------------------------------
mkdir -p "$BENCH_DIR"
WORK="$(mktemp -d "$BENCH_DIR/run.XXXXXX")"
BACKING="$WORK/backing"
RESULTS="$WORK/results"
LOGS="$WORK/logs"
DATA_NAME="data.bin"
mkdir -p "$BACKING" "$RESULTS" "$LOGS"
if [ "$(stat -f -c %T "$WORK")" = tmpfs ]; then
    warn "$WORK is on tmpfs: native cold numbers are RAM speed (set BENCH_DIR to a disk)"
fi

# Active daemons: mountpoint -> pid.
declare -A DAEMON_PID=()

is_mounted() {
    # mountinfo field 5 is the mount point, octal-escaped (\040 for a space).
    local mp="$1"
    awk -v mp="$mp" '{ m = $5; gsub(/\\040/, " ", m); if (m == mp) { found = 1 } } END { exit !found }' \
        /proc/self/mountinfo
}

# wait_mount MOUNTPOINT PID LOGFILE: poll /proc/self/mountinfo until MOUNTPOINT is a
# mount, failing when the daemon exits or after 60 s.
wait_mount() {
    local mp="$1" pid="$2" logf="$3" i
    for i in $(seq 1 600); do
        if is_mounted "$mp"; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logf" >&2 || true
            die "daemon for $mp exited before the mount was ready (log above: $logf)"
        fi
        sleep 0.1
    done
    tail -n 20 "$logf" >&2 || true
    die "timed out waiting for the mount at $mp"
}

# stop_daemon MOUNTPOINT: unmount, wait for the daemon to exit, force if needed.
stop_daemon() {
    local mp="$1" pid="${DAEMON_PID[$1]:-}" i
    if is_mounted "$mp"; then
        umount "$mp" 2>/dev/null || fusermount3 -u "$mp" 2>/dev/null || true
    fi
    if [ -n "$pid" ]; then
        for i in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            [ "$i" -eq 20 ] && kill -TERM "$pid" 2>/dev/null
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            warn "daemon $pid for $mp did not exit: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    fi
    if is_mounted "$mp"; then
        umount -l "$mp" 2>/dev/null || fusermount3 -u -z "$mp" 2>/dev/null || true
    fi
    unset "DAEMON_PID[$mp]"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local mp
    for mp in "${!DAEMON_PID[@]}"; do
        stop_daemon "$mp"
    done
    # Anything still mounted below the work dir (a daemon we lost track of).
    while IFS= read -r mp; do
        if [ -n "$mp" ]; then umount -l "$mp" 2>/dev/null || true; fi
    done < <(awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo)
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf -- "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# vm_hwm PID: peak resident set size in KiB (VmHWM from /proc/PID/status).
vm_hwm() {
    awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true
}

# record_rss NAME MOUNTPOINT: store the daemon's VmHWM (KiB) in results/NAME.rss.
record_rss() {
    local pid="${DAEMON_PID[$2]:-}" kib=""
    [ -n "$pid" ] && kib="$(vm_hwm "$pid")"
    [ -n "$kib" ] && echo "$kib" >>"$RESULTS/$1.rss"
    return 0
}

# ---------------------------------------------------------------------------
# Mounts
# ---------------------------------------------------------------------------
CACHALOT_MNT="$WORK/mnt-cachalot"
CACHALOT_CACHE="$WORK/cache-cachalot"
RCLONE_MNT="$WORK/mnt-rclone"
RCLONE_CACHE="$WORK/cache-rclone"

mount_cachalot() {
    local tag="$1"
    rm -rf "$CACHALOT_CACHE"
    mkdir -p "$CACHALOT_MNT" "$CACHALOT_CACHE"
    local logf="$LOGS/cachalot-$tag.log"
    # shellcheck disable=SC2086
    "$BIN" mount "file://$BACKING" "$CACHALOT_MNT" --cache-dir "$CACHALOT_CACHE" --foreground \
        $BENCH_CACHALOT_ARGS >"$logf" 2>&1 </dev/null &
    DAEMON_PID[$CACHALOT_MNT]=$!
    wait_mount "$CACHALOT_MNT" "$!" "$logf"
}

mount_rclone() {
    local tag="$1"
    rm -rf "$RCLONE_CACHE"
    mkdir -p "$RCLONE_MNT" "$RCLONE_CACHE"
    local logf="$LOGS/rclone-$tag.log"
    rclone mount "$BACKING" "$RCLONE_MNT" --vfs-cache-mode full --cache-dir "$RCLONE_CACHE" \
        --config /dev/null >"$logf" 2>&1 </dev/null &
    DAEMON_PID[$RCLONE_MNT]=$!
    wait_mount "$RCLONE_MNT" "$!" "$logf"
}

cachalot_stats() {
    getfattr --only-values -n user.cachalot.stats "$CACHALOT_MNT" 2>/dev/null || echo '{}'
}

# ---------------------------------------------------------------------------
# fio
# ---------------------------------------------------------------------------
# run_fio JOB FILE NAME: run benches/fio/JOB-read.fio on FILE, JSON to results/NAME.json.
run_fio() {
    local job="$1" file="$2" name="$3"
    log "fio $job: $name"
    BENCH_FILE="$file" BENCH_BYTES="$BENCH_BYTES" BENCH_RUNTIME="$BENCH_RUNTIME" \
        fio --readonly --output-format=json --output="$RESULTS/$name.json" "$FIO_DIR/$job-read.fio" \
        >"$LOGS/fio-$name.log" 2>&1 || {
        cat "$LOGS/fio-$name.log" >&2
        die "fio failed for $name"
    }
}

# populate MOUNTED_FILE: read the whole file through the mount and compare it
# with the backing file (fills the cache and checks the bytes).
populate() {
    log "populate + verify $1"
    cmp -- "$BACKING/$DATA_NAME" "$1" || die "content read through $1 differs from the backing file"
}

bench_native() {
    local job="$1" f="$BACKING/$DATA_NAME"
    drop_caches
    run_fio "$job" "$f" "native-cold-$job"
    cat -- "$f" >/dev/null
    run_fio "$job" "$f" "native-warm-$job"
}

bench_cachalot() {
    local job="$1" f="$CACHALOT_MNT/$DATA_NAME"
    mount_cachalot "$job"
    drop_caches
    run_fio "$job" "$f" "cachalot-cold-$job"
    cachalot_stats >"$RESULTS/cachalot-stats-after-cold-$job.json"
    populate "$f"
    cachalot_stats >"$RESULTS/cachalot-stats-before-warm-$job.json"
    drop_caches
    run_fio "$job" "$f" "cachalot-warm-$job"
    cat -- "$f" >/dev/null
    run_fio "$job" "$f" "cachalot-warmk-$job"
    cachalot_stats >"$RESULTS/cachalot-stats-after-warm-$job.json"
    record_rss cachalot "$CACHALOT_MNT"
    stop_daemon "$CACHALOT_MNT"
}

bench_rclone() {
    local job="$1" f="$RCLONE_MNT/$DATA_NAME"
    mount_rclone "$job"
    drop_caches
    run_fio "$job" "$f" "rclone-cold-$job"
    populate "$f"
    drop_caches
    run_fio "$job" "$f" "rclone-warm-$job"
    cat -- "$f" >/dev/null
    run_fio "$job" "$f" "rclone-warmk-$job"
    record_rss rclone "$RCLONE_MNT"
    stop_daemon "$RCLONE_MNT"
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    log "cargo build --release"
    cargo build --release >&2 || die "cargo build --release failed"
fi
[ -x "$BIN" ] || die "$BIN not found (cargo build --release)"

log "creating $BENCH_SIZE ($BENCH_BYTES bytes) test file in $BACKING"
head -c "$BENCH_BYTES" /dev/urandom >"$BACKING/$DATA_NAME"
sync

for job in $BENCH_JOBS; do
    bench_native "$job"
    bench_cachalot "$job"
    if [ "$HAVE_RCLONE" -eq 1 ]; then
        bench_rclone "$job"
    fi
done

[ "$HAVE_RCLONE" -eq 1 ] || log "rclone not installed: peer rows skipped (apt-get install rclone)"

python3 - "$RESULTS" "$BENCH_SIZE" "$BENCH_BYTES" "$BENCH_RUNTIME" "$DROP_OK" "$HAVE_RCLONE" "$BENCH_JOBS" <<'PY'
import json, os, sys

results, size, nbytes, runtime, drop_ok, have_rclone, jobs = sys.argv[1:8]
jobs = jobs.split()


def load(name):
    path = os.path.join(results, name + ".json")
    if not os.path.exists(path):
        return None
    text = open(path).read()
    # fio may print notes before the JSON document
    return json.loads(text[text.index("{"):])


def metric(job, name):
    data = load(f"{name}-{job}")
    if data is None:
        return None, None
    rd = data["jobs"][0]["read"]
    value = rd["bw_bytes"] / 2**20 if job == "seq" else rd["iops"]
    pct = rd.get("clat_ns", {}).get("percentile", {})
    p99 = pct.get("99.000000")
    return value, (p99 / 1000.0 if p99 is not None else None)


ROWS = [
    # label, result name, native reference (same kernel page-cache state), rclone reference
    ("native cold", "native-cold", "native-cold", None),
    ("native warm", "native-warm", "native-warm", None),
    ("cachalot cold", "cachalot-cold", "native-cold", "rclone-cold"),
    ("cachalot warm (page store)", "cachalot-warm", "native-cold", "rclone-warm"),
    ("cachalot warm+kcache", "cachalot-warmk", "native-warm", "rclone-warmk"),
    ("rclone cold", "rclone-cold", "native-cold", None),
    ("rclone warm (vfs cache)", "rclone-warm", "native-cold", None),
    ("rclone warm+kcache", "rclone-warmk", "native-warm", None),
]


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    r = a / b
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.4f}x"


print()
print(f"cachalot read benchmark: file {size} ({int(nbytes)} bytes), random runs {runtime} s, "
      f"fio psync, 1 job")
if drop_ok != "1":
    print("WARNING: drop_caches was not possible: 'cold' rows are not cold")
hdr = f"{'job':<16} {'row':<28} {'value':>14} {'p99 clat':>11} {'vs native':>10} {'vs rclone':>10}"
print(hdr)
print("-" * len(hdr))
for job in jobs:
    jlabel = "seq read 1MiB" if job == "seq" else "rand read 4KiB"
    unit = "MiB/s" if job == "seq" else "IOPS"
    for label, name, nref, rref in ROWS:
        value, p99 = metric(job, name)
        if value is None:
            continue
        nval, _ = metric(job, nref)
        rval, _ = metric(job, rref) if rref else (None, None)
        vs_native = ratio(value, nval)
        vs_rclone = ratio(value, rval) if rref else "-"
        p99s = f"{p99:,.0f} us" if p99 is not None else "-"
        print(f"{jlabel:<16} {label:<28} {value:>8,.0f} {unit:<5} {p99s:>11} {vs_native:>10} {vs_rclone:>10}")
    print()
print("vs native: same kernel page-cache state (cold and warm rows ran after drop_caches -> native cold;")
print("           warm+kcache rows -> native warm). vs rclone: rclone's row of the same temperature.")
if have_rclone != "1":
    print("rclone is not installed: peer rows skipped.")


def rss_line(name):
    path = os.path.join(results, name + ".rss")
    if not os.path.exists(path):
        return None
    vals = [int(x) for x in open(path).read().split()]
    return "peak RSS (VmHWM) of the %s daemon: max %.1f MiB over %d mounts (%s)" % (
        name, max(vals) / 1024.0, len(vals), ", ".join("%.1f MiB" % (v / 1024.0) for v in vals))


for name in ("cachalot", "rclone"):
    line = rss_line(name)
    if line:
        print(line)

def stats(job, which):
    path = os.path.join(results, f"cachalot-stats-{which}-{job}.json")
    try:
        return json.load(open(path))
    except Exception:
        return {}


KEYS = ("backend_reads", "backend_read_bytes", "cache_hits", "cache_misses", "cache_pages")
for job in jobs:
    cold, before, after = (stats(job, w) for w in ("after-cold", "before-warm", "after-warm"))
    if all("backend_read_bytes" in d for d in (cold, before, after)):
        print(f"cachalot {job}: cold run read {cold['backend_read_bytes']} bytes from the backend "
              f"in {cold['backend_reads']} reads (file: {int(nbytes)} bytes); warm runs read "
              f"{after['backend_read_bytes'] - before['backend_read_bytes']} bytes")
        print(f"cachalot {job}: stats at unmount: "
              + ", ".join(f"{k}={after.get(k)}" for k in KEYS))
    else:
        print(f"cachalot {job}: no stats (getfattr -n user.cachalot.stats failed)")
PY
