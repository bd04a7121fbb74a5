#!/usr/bin/env bash
# THE test command of cachalot (see README.md, "Set-up").
#
#   bash scripts/test.sh
#
# On a fresh Debian machine as root it installs what is missing (idempotent:
# nothing is downloaded when everything is already there), checks that FUSE is
# usable, then runs, in this order (all three run; the run fails if any failed):
#   cargo fmt --check
#   cargo clippy --all-targets --locked -- -D warnings
#   cargo test --locked --all-targets --no-fail-fast
# CI runs it through `.ci/run` (CI=true, no stdin).
#
# Structure: one function per prerequisite (ensure_*), one per server the tests
# need (start_*; NFS and S3 servers come with their issues). Everything a
# function starts is registered with register_pid / register_dir and undone by
# the EXIT trap, which also lazily unmounts fuse.cachalot mounts the run left
# (those whose daemon carries this run's CACHALOT_TEST_RUN_ID; under CI=true
# also dead ones), so a concurrent run on the same machine keeps its mounts.
#
# Environment:
#   CACHALOT_TEST_SKIP_LINT=1   skip fmt and clippy (quick local iterations)
#   CARGO_TEST_ARGS="..."       extra arguments for `cargo test` (e.g. a filter:
#                               CARGO_TEST_ARGS="-- --test-threads=1")

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

export DEBIAN_FRONTEND=noninteractive
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

log() { printf '[test.sh] %s\n' "$*" >&2; }
warn() { printf '[test.sh] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[test.sh] ERROR: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------
# Cleanup: everything started here is registered and undone on exit.
# ---------------------------------------------------------------------------
CLEANUP_PIDS=()
CLEANUP_DIRS=()
PREEXISTING_MOUNTS=""

register_pid() { CLEANUP_PIDS+=("$1"); }
register_dir() { CLEANUP_DIRS+=("$1"); }

# Mount points of type fuse.cachalot, one per line (octal escapes decoded).
cachalot_mounts() {
    # mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
    awk '{
        for (i = 7; i <= NF; i++) if ($i == "-") break;
        if ($(i + 1) == "fuse.cachalot") print $5
    }' /proc/self/mountinfo 2>/dev/null | while IFS= read -r mp; do
        mp="${mp//\\040/ }"
        mp="${mp//\\011/$'\t'}"
        mp="${mp//\\134/\\}"
        printf '%s\n' "$mp"
    done
}

# Every process started by this run inherits this marker, so the EXIT trap can
# tell our leftover daemons from those of another run on the same machine.
CACHALOT_TEST_RUN_ID="${CACHALOT_TEST_RUN_ID:-$$-$(date +%s%N)}"
export CACHALOT_TEST_RUN_ID

# PIDs of cachalot daemons started by this run (found by the marker).
our_daemons() {
    local dir pid
    for dir in /proc/[0-9]*; do
        pid="${dir#/proc/}"
        [ "$pid" != "$$" ] || continue
        [ "$(cat "$dir/comm" 2>/dev/null)" = cachalot ] || continue
        if grep -qzxF "CACHALOT_TEST_RUN_ID=$CACHALOT_TEST_RUN_ID" "$dir/environ" 2>/dev/null; then
            echo "$pid"
        fi
    done
}

# True when a leftover mount is ours: its daemon carries our marker. A dead
# mount (ENOTCONN: its daemon was killed) has no daemon left to ask: under CI
# (one run per machine) it is ours; elsewhere it may be another run's in the
# middle of a kill -9 test, so it is only reported.
mount_is_ours() {
    local mp="$1" pid
    for pid in $(our_daemons); do
        if grep -qzxF -- "$mp" "/proc/$pid/cmdline" 2>/dev/null; then
            return 0
        fi
    done
    if ! timeout 5 stat "$mp" >/dev/null 2>&1; then
        if [ "${CI:-}" = true ]; then
            return 0
        fi
        warn "dead cachalot mount $mp appeared during the run; not ours for sure, left alone (umount -l it if it is)"
    fi
    return 1
}

unmount_lazy() {
    local mp="$1"
    fusermount3 -u -z "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${CLEANUP_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${CLEANUP_PIDS[@]}"; do
        local _
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    # Leftover cachalot mounts made during this run (a test that crashed or
    # was killed before its guard ran). Mounts of other runs are left alone.
    local mp
    while IFS= read -r mp; do
        [ -n "$mp" ] || continue
        if ! grep -qxF -- "$mp" <<<"$PREEXISTING_MOUNTS" && mount_is_ours "$mp"; then
            warn "unmounting leftover cachalot mount $mp"
            unmount_lazy "$mp"
        fi
    done < <(cachalot_mounts)
    # Daemons of this run still alive (e.g. their mount was lazily detached).
    for pid in $(our_daemons); do
        kill -TERM "$pid" 2>/dev/null || true
    done
    local d
    for d in "${CLEANUP_DIRS[@]}"; do
        rm -rf -- "$d" 2>/dev/null || true
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------
APT_UPDATED=0

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root to run: $* (run this script as root)"
    fi
}

apt_install() {
    [ "$#" -gt 0 ] || return 0
    command -v apt-get >/dev/null 2>&1 || die "missing packages ($*) and no apt-get: install them by hand"
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        as_root apt-get update -qq </dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    as_root apt-get install -y -qq --no-install-recommends "$@" </dev/null ||
        die "apt-get install $* failed"
}

# Debian packages the tests and benchmarks use, keyed by a command each provides.
ensure_apt_packages() {
    local missing=() pair cmd pkg
    for pair in fusermount3:fuse3 fio:fio rclone:rclone getfattr:attr mkfs.xfs:xfsprogs; do
        cmd="${pair%%:*}"
        pkg="${pair##*:}"
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    else
        log "Debian packages present (fuse3, fio, rclone, attr, xfsprogs)"
    fi
}

ensure_fuse() {
    if [ ! -c /dev/fuse ]; then
        modprobe fuse 2>/dev/null || true
    fi
    [ -c /dev/fuse ] || die "/dev/fuse does not exist: FUSE is not available on this machine \
(load the fuse kernel module, or give the container --device /dev/fuse --cap-add SYS_ADMIN)"
    { [ -r /dev/fuse ] && [ -w /dev/fuse ]; } || die "/dev/fuse is not readable and writable by $(id -un)"
    if [ "$(id -u)" -ne 0 ]; then
        warn "not running as root: the FUSE integration tests need root and may fail"
    fi
    command -v fusermount3 >/dev/null 2>&1 || die "fusermount3 not found (package fuse3)"
    log "FUSE available (/dev/fuse)"
}

ensure_cargo() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (rustup) first"
    log "$(cargo --version)"
}

# rustfmt / clippy: install through rustup only if missing; if that is not
# possible (offline), the check is skipped with a warning instead of failing.
HAVE_FMT=0
HAVE_CLIPPY=0
ensure_rust_component() {
    local component="$1" probe="$2"
    if cargo "$probe" --version >/dev/null 2>&1; then
        return 0
    fi
    if command -v rustup >/dev/null 2>&1; then
        log "installing rustup component $component"
        if timeout 300 rustup component add "$component" </dev/null >&2 &&
            cargo "$probe" --version >/dev/null 2>&1; then
            return 0
        fi
    fi
    return 1
}

ensure_rust_components() {
    if [ "${CACHALOT_TEST_SKIP_LINT:-0}" = 1 ]; then
        warn "CACHALOT_TEST_SKIP_LINT=1: skipping cargo fmt and cargo clippy"
        return 0
    fi
    if ensure_rust_component rustfmt fmt; then
        HAVE_FMT=1
    else
        warn "rustfmt is not available and could not be installed: skipping cargo fmt --check"
    fi
    if ensure_rust_component clippy clippy; then
        HAVE_CLIPPY=1
    else
        warn "clippy is not available and could not be installed: skipping cargo clippy"
    fi
}

# Test servers and tools of each area, installed by its own idempotent script.
# The servers themselves (nfs-ganesha + rpcbind, SeaweedFS, moto) are started
# and stopped by the Rust test harnesses (tests/support_*), one per test binary.
ensure_area_dependencies() {
    local script
    for script in scripts/install-*-deps.sh; do
        [ -e "$script" ] || continue
        log "$script"
        as_root bash "$script" </dev/null >&2 || die "$script failed"
    done
    # pip console scripts (weed, moto_server) may live behind pyenv shims.
    if command -v pyenv >/dev/null 2>&1; then
        export PATH="$(pyenv root)/shims:$PATH"
    fi
}

# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------
FAILED_STEPS=()

run_fmt() {
    [ "$HAVE_FMT" -eq 1 ] || return 0
    log "cargo fmt --check"
    if ! cargo fmt --all --check; then
        warn "cargo fmt --check failed (fix with: cargo fmt --all)"
        FAILED_STEPS+=("cargo fmt --check")
    fi
}

run_clippy() {
    [ "$HAVE_CLIPPY" -eq 1 ] || return 0
    log "cargo clippy --all-targets --locked -- -D warnings"
    if ! cargo clippy --all-targets --locked -- -D warnings; then
        warn "cargo clippy found problems"
        FAILED_STEPS+=("cargo clippy")
    fi
}

run_tests() {
    log "cargo test --locked --all-targets --no-fail-fast"
    # shellcheck disable=SC2086
    if ! cargo test --locked --all-targets --no-fail-fast ${CARGO_TEST_ARGS:-}; then
        FAILED_STEPS+=("cargo test")
    fi
}

main() {
    log "repo: $REPO_ROOT${CI:+ (CI=$CI)}"
    PREEXISTING_MOUNTS="$(cachalot_mounts)"
    ensure_apt_packages
    ensure_fuse
    ensure_area_dependencies
    ensure_cargo
    ensure_rust_components
    run_fmt
    run_clippy
    run_tests
    if [ "${#FAILED_STEPS[@]}" -gt 0 ]; then
        die "failed: $(printf '%s, ' "${FAILED_STEPS[@]}" | sed 's/, $//')"
    fi
    log "all checks passed"
}

main "$@"
