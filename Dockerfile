# cachalot container image: one image for the three workloads.
#
#   docker build -t cachalot:0.1.0 .
#
# The controller runs `cachalot csi --controller ...`, the node plugin
# `cachalot csi --node --mounter-socket=...`, the mounter `cachalot mounter
# ...` (see deploy/kubernetes/). The entrypoint is `cachalot csi`, so the
# controller and node manifests pass only the role and its flags; the
# mounter's sets `command` to the binary.
#
# Why the node plugin and the mounter cannot run as non-root: every volume is
# a FUSE mount (mount(2) of a fuse.cachalot filesystem on /dev/fuse at the
# kubelet's staging path, done by the mounter) followed by a bind mount of it
# into the pod's directory under /var/lib/kubelet (done by the node plugin).
# Both need CAP_SYS_ADMIN in the host's mount namespace, and the mounts must
# propagate back to the host (mountPropagation: Bidirectional), which
# Kubernetes only allows for privileged containers. The controller role
# mounts nothing (it talks to NFS/S3 from userspace) and needs no privileges.

# --- build stage -------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# build.rs compiles proto/csi.proto with protox (pure Rust): no protoc needed.
COPY . .
RUN cargo build --release --locked

# --- runtime stage -----------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# fuse3: fusermount3 and /etc/fuse.conf (allow_other for mounts served to
# pods). ca-certificates: TLS to S3 endpoints.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /src/target/release/cachalot /usr/local/bin/cachalot
ENTRYPOINT ["/usr/local/bin/cachalot", "csi"]
