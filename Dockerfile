# syntax=docker/dockerfile:1
#
# The portiso image: `portiso` (operator, node agent, tools) and `portiso-cni` (the CNI plugin,
# copied onto the nodes by the agent's init container), on Debian 12 with Open vSwitch and the
# network tools the agent runs (ip, nft, ethtool, sysctl, nsenter, mount).
#
#   docker build -t portiso:dev .
#
# The build stage is Debian 12 (bookworm) too, so the binaries link against the same glibc as
# the runtime stage.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# cmake and clang: native builds of crypto crates (aws-lc-sys) when their prebuilt path does not
# apply. clang, llvm and libbpf-dev (bpf/bpf_helpers.h, bpf_endian.h): operator/build.rs compiles
# the eBPF fast path (operator/bpf/fastpath.c) with `clang -target bpf` against the kernel UAPI
# headers (linux-libc-dev, already in the image), and the binary embeds the object.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake clang llvm libbpf-dev linux-libc-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY agent-api agent-api
COPY cni-plugin cni-plugin
COPY operator operator
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --workspace --locked \
 && install -D -m 0755 target/release/portiso /out/portiso \
 && install -D -m 0755 target/release/portiso-cni /out/portiso-cni

FROM debian:12-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="portiso" \
      org.opencontainers.image.description="Many sandboxes share one IPv4 address and MAC, isolated by port range on Open vSwitch" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# openvswitch-switch: ovs-vsctl/ovs-ofctl for the agent, ovsdb-server/ovs-vswitchd for the
# chart's optional OVS container; iproute2 (ip), nftables (nft), ethtool, procps (sysctl),
# util-linux (nsenter), mount (`mount -t bpf` for the fast path's bpffs; Priority: required, so
# already in debian:12-slim, listed to say so), kmod (modprobe openvswitch).
# Nothing else for BPF: the fast path's object is embedded in the binary and loaded through
# bpf(2) directly (aya), without libbpf or bpftool at run time.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      openvswitch-switch iproute2 nftables ethtool procps util-linux mount kmod ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/portiso /out/portiso-cni /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/portiso"]
CMD ["--help"]
