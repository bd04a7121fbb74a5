# cachalot container image.
# PLACEHOLDER: the deploy issue finishes this (CSI sidecars, node plugin
# privileges, /dev/fuse, health checks). It builds and packages the binary only.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /src/target/release/cachalot /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/cachalot"]
