#!/usr/bin/env bash
# Print (as the last line of stdout) a directory holding the node binaries of
# the local single-node cluster (e2e/local-cluster.sh), building any that are
# missing from source with Go through the Go module proxy configured in the
# environment (`go env GOPROXY`). Progress goes to stderr.
#
#   bin=$(bash e2e/cluster-bin.sh | tail -n1)
#
# It complements e2e/k8s-bin.sh (etcd, kube-apiserver, kubectl, helm; its own
# cache key, left untouched) with: kubelet, kube-controller-manager,
# kube-scheduler (the same Kubernetes release), containerd v2 with its runc
# shim and ctr, crictl, and the CNI reference plugins the cluster's primary
# network uses (bridge, host-local, loopback). runc comes from Debian's
# package (`runc`), as does busybox-static for the images.
#
# Multus is not built here: the Go module proxy does not serve
# github.com/k8snetworkplumbingwg/multus-cni (nor its gopkg.in path), and no
# Debian package ships it. local-cluster.sh says so and uses its own small
# stand-in (see there).
#
# Environment:
#   PORTISO_CLUSTER_BIN  directory that already holds all binaries: used
#                        as-is, nothing is built.
#   PORTISO_CACHE        cache root (default /var/cache/portiso). Binaries go
#                        to $PORTISO_CACHE/cluster/<key>/, throwaway Go modules
#                        to $PORTISO_CACHE/build/cluster-<key>/.
#   PORTISO_GO           go binary (default: `go` on PATH, else
#                        /usr/local/go/bin/go).
#   PORTISO_NICE         niceness of the Go builds (default 19: the builds
#                        take both cores for many minutes).
set -euo pipefail

# ---- pinned versions --------------------------------------------------------
K8S_VERSION=v1.37.2          # k8s.io/kubernetes (the release k8s-bin.sh pins)
K8S_STAGING_VERSION=v0.37.2  # every k8s.io/<staging> module
K8S_MAJOR=1
K8S_MINOR=37
CONTAINERD_VERSION=v2.4.2    # github.com/containerd/containerd/v2
CRICTL_VERSION=v1.37.0       # sigs.k8s.io/cri-tools
CNI_PLUGINS_VERSION=v1.10.0  # github.com/containernetworking/plugins
GO_DIRECTIVE=1.26.0
# ------------------------------------------------------------------------------

K8S_CMDS=(kubelet kube-controller-manager kube-scheduler)
CONTAINERD_CMDS=(containerd containerd-shim-runc-v2 ctr)
CNI_PLUGINS=(bridge host-local loopback)
BINARIES=("${K8S_CMDS[@]}" "${CONTAINERD_CMDS[@]}" crictl "${CNI_PLUGINS[@]/#/cni/}")

NAME=cluster-bin
# The builds take both cores for many minutes: in the background by default.
GOBIN_NICE=19

# shellcheck source=e2e/gobin-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/gobin-lib.sh"

KEY="${K8S_VERSION}-containerd${CONTAINERD_VERSION}-crictl${CRICTL_VERSION}-cni${CNI_PLUGINS_VERSION}"
CACHE_ROOT=${PORTISO_CACHE:-/var/cache/portiso}
BIN_DIR="$CACHE_ROOT/cluster/$KEY"
BUILD_DIR="$CACHE_ROOT/build/cluster-$KEY"

gobin_ready PORTISO_CLUSTER_BIN
gobin_begin
mkdir -p "$BIN_DIR/cni"

build_containerd() {
    local dir="$BUILD_DIR/containerd" start=$SECONDS cmd mod=github.com/containerd/containerd/v2
    local -a need=()
    for cmd in "${CONTAINERD_CMDS[@]}"; do
        [[ -x "$BIN_DIR/$cmd" ]] || need+=("$cmd")
    done
    ((${#need[@]})) || return 0
    simple_module containerd "$mod" "$CONTAINERD_VERSION"
    local ldflags="-s -w -X $mod/version.Version=$CONTAINERD_VERSION -X $mod/version.Package=$mod"
    (
        cd "$dir"
        local -a pkgs=()
        for cmd in "${need[@]}"; do
            pkgs+=("$mod/cmd/$cmd@$CONTAINERD_VERSION")
        done
        log "containerd: go get ${pkgs[*]}"
        go_ get "${pkgs[@]}" >&2
        for cmd in "${need[@]}"; do
            local s=$SECONDS
            log "containerd $CONTAINERD_VERSION: go build $cmd"
            # no_btrfs/no_devmapper: those snapshotters need cgo and are not used.
            go_ build -trimpath -tags 'no_btrfs no_devmapper' -ldflags "$ldflags" \
                -o "$TMP_OUT/$cmd" "$mod/cmd/$cmd" >&2
            install_bin "$cmd"
            log "$cmd compiled in $((SECONDS - s))s"
        done
    )
    log "containerd built in $((SECONDS - start))s"
}

build_crictl() {
    [[ -x "$BIN_DIR/crictl" ]] && return 0
    local dir="$BUILD_DIR/crictl" start=$SECONDS mod=sigs.k8s.io/cri-tools
    simple_module crictl "$mod" "$CRICTL_VERSION"
    (
        cd "$dir"
        log "crictl: go get $mod/cmd/crictl@$CRICTL_VERSION"
        go_ get "$mod/cmd/crictl@$CRICTL_VERSION" >&2
        go_ build -trimpath -ldflags "-s -w -X $mod/pkg/version.Version=$CRICTL_VERSION" \
            -o "$TMP_OUT/crictl" "$mod/cmd/crictl" >&2
    )
    install_bin crictl
    log "crictl built in $((SECONDS - start))s"
}

build_cni() {
    local dir="$BUILD_DIR/cni" start=$SECONDS p pkg mod=github.com/containernetworking/plugins
    local -a need=()
    for p in "${CNI_PLUGINS[@]}"; do
        [[ -x "$BIN_DIR/cni/$p" ]] || need+=("$p")
    done
    ((${#need[@]})) || return 0
    simple_module cni "$mod" "$CNI_PLUGINS_VERSION"
    pkg_of() {
        case $1 in
        host-local) echo "$mod/plugins/ipam/host-local" ;;
        *) echo "$mod/plugins/main/$1" ;;
        esac
    }
    (
        cd "$dir"
        local -a pkgs=()
        for p in "${need[@]}"; do
            pkgs+=("$(pkg_of "$p")@$CNI_PLUGINS_VERSION")
        done
        log "cni plugins: go get ${pkgs[*]}"
        go_ get "${pkgs[@]}" >&2
        for p in "${need[@]}"; do
            pkg=$(pkg_of "$p")
            go_ build -trimpath \
                -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
                -o "$TMP_OUT/$p" "$pkg" >&2
            install_bin "$p" "cni/$p"
        done
    )
    log "cni plugins built in $((SECONDS - start))s"
}

# Smallest first, so a partial cache is useful early.
build_cni
build_crictl
build_containerd
build_kubernetes "${K8S_CMDS[@]}"
gobin_done
