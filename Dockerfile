# kvsync operator image.
#
# Build:  docker build -t kvsync:dev .
# The builder compiles the operator's release binary from the locked dependency
# graph, package kvsync only: the workspace's emulator crate is neither built
# nor shipped. The runtime is distroless "cc" (glibc + libgcc, which the Rust
# binary links against) running as the image's built-in non-root user (65532).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p kvsync --bin kvsync \
 && cp target/release/kvsync /kvsync

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /kvsync /kvsync
USER nonroot:nonroot
# Health (/healthz, /readyz) and Prometheus metrics (/metrics).
EXPOSE 8080
ENTRYPOINT ["/kvsync"]
CMD ["run"]
