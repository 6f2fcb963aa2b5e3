# syntax=docker/dockerfile:1
# onehop image for linux/amd64 and linux/arm64 (Raspberry Pi 4/5). For this
# machine's platform, as the manifests name it: `cargo xtask image`
# (docker build -t localhost/onehop:<version> .). For both platforms, into a
# registry (then set it in kustomization.yaml):
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/onehop:0.1.0 --push .
# The builder runs on the build machine's platform and cross-compiles the
# userspace for the target; the eBPF object (bpfel) is the same for both.

FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS build
ARG TARGETARCH
# The nightly that rust-toolchain-ebpf pins (the one place it is named), with
# rust-src for the eBPF crate (-Z build-std=core), and bpf-linker linked
# against that nightly's own LLVM (see xtask/src/setup.rs). lb-userspace's
# build script finds the toolchain under its dated name.
COPY rust-toolchain-ebpf /rust-toolchain-ebpf
RUN EBPF_NIGHTLY="$(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' /rust-toolchain-ebpf | head -n 1)" \
 && rustup toolchain install "$EBPF_NIGHTLY" --profile minimal --component rust-src \
 && LLVM_MAJOR="$(rustc +"$EBPF_NIGHTLY" -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')" \
 && mkdir -p /opt/llvm/lib \
 && LLVM="$(ls "$(rustc +"$EBPF_NIGHTLY" --print sysroot)"/lib/libLLVM.so.*)" \
 && ln -s "$LLVM" /opt/llvm/lib/libLLVM.so \
 && ln -s "$LLVM" "/opt/llvm/lib/$(basename "$LLVM")" \
 && LLVM_PREFIX=/opt/llvm cargo install bpf-linker --locked --no-default-features --features "llvm-$LLVM_MAJOR"
RUN case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-gnu > /rust-target ;; \
      arm64) echo aarch64-unknown-linux-gnu > /rust-target \
             && apt-get update && apt-get install -y --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH" >&2 && exit 1 ;; \
    esac \
 && rustup target add "$(cat /rust-target)"
ENV CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p lb-userspace --bin onehop --target "$(cat /rust-target)" \
 && cp "target/$(cat /rust-target)/release/onehop" /onehop

# glibc, no shell, non-root filesystem; capabilities come from the pod spec.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /onehop /usr/local/bin/onehop
ENTRYPOINT ["/usr/local/bin/onehop"]
