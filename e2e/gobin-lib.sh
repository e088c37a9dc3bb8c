# shellcheck shell=bash
# What e2e/k8s-bin.sh and e2e/cluster-bin.sh share: a cache directory of third-party test
# binaries built with Go through the Go module proxy, taken as it is when complete and built
# into atomically (each binary renamed into place when whole) otherwise. Sourced, not run.
#
# The caller sets NAME (its log prefix), BINARIES (paths inside the cache directory),
# BIN_DIR, BUILD_DIR, GO_DIRECTIVE and, for Kubernetes, K8S_VERSION, K8S_STAGING_VERSION,
# K8S_MAJOR and K8S_MINOR; then:
#   gobin_ready OVERRIDE_VAR   prints a ready directory and exits: the one OVERRIDE_VAR names
#                              (it must hold every binary), or a complete BIN_DIR
#   gobin_begin                finds Go (GO_BIN, `go_` runs it at PORTISO_NICE, default
#                              GOBIN_NICE or 0), takes BIN_DIR's lock, makes TMP_OUT
#   install_bin NAME [DEST]    moves a finished binary from TMP_OUT into BIN_DIR
#   gobin_done                 checks BIN_DIR is complete and prints it

log() { printf '%s: %s\n' "$NAME" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

has_all() {
    local dir=$1 b
    for b in "${BINARIES[@]}"; do
        [[ -x "$dir/$b" ]] || return 1
    done
}

gobin_ready() {
    local var=$1
    local ready=${!var:-}
    if [[ -n "$ready" ]]; then
        has_all "$ready" || die "$var=$ready lacks one of: ${BINARIES[*]}"
        log "using $var=$ready"
        (cd "$ready" && pwd)
        exit 0
    fi
    if has_all "$BIN_DIR"; then
        log "cached: $BIN_DIR"
        echo "$BIN_DIR"
        exit 0
    fi
}

go_() { nice -n "$GO_NICE" "$GO_BIN" "$@"; }

gobin_begin() {
    GO_BIN=${PORTISO_GO:-}
    if [[ -z "$GO_BIN" ]]; then
        if command -v go >/dev/null 2>&1; then
            GO_BIN=$(command -v go)
        elif [[ -x /usr/local/go/bin/go ]]; then
            GO_BIN=/usr/local/go/bin/go
        else
            die "no Go toolchain found (set PORTISO_GO)"
        fi
    fi
    GO_NICE=${PORTISO_NICE:-${GOBIN_NICE:-0}}
    # The generated modules live outside any repository; never let a go.work of the
    # caller's tree leak in.
    export GOWORK=off CGO_ENABLED=0
    mkdir -p "$BIN_DIR" "$BUILD_DIR"
    # One builder at a time per cache directory.
    exec 9>"$BIN_DIR/.lock"
    if ! flock -n 9; then
        log "another $NAME is building into $BIN_DIR; waiting"
        flock 9
    fi
    if has_all "$BIN_DIR"; then
        log "cached: $BIN_DIR"
        echo "$BIN_DIR"
        exit 0
    fi
    # Leftovers of an interrupted build (we hold the lock, so none is live).
    rm -rf "$BIN_DIR"/.tmp.*
    TMP_OUT=$(mktemp -d "$BIN_DIR/.tmp.XXXXXX")
    trap 'rm -rf "$TMP_OUT"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    log "$("$GO_BIN" version) ; GOPROXY=$("$GO_BIN" env GOPROXY)"
    log "building into $BIN_DIR (build modules in $BUILD_DIR)"
    START_ALL=$SECONDS
}

# install_bin NAME [DEST]: rename on one filesystem, so the cache never holds half a binary.
install_bin() {
    local dest=${2:-$1}
    chmod 0755 "$TMP_OUT/$1"
    mv -f "$TMP_OUT/$1" "$BIN_DIR/$dest"
    log "ready: $BIN_DIR/$dest"
}

gobin_done() {
    has_all "$BIN_DIR" || die "build finished but $BIN_DIR is incomplete"
    log "all binaries ready in $((SECONDS - START_ALL))s: $BIN_DIR"
    echo "$BIN_DIR"
}

# fresh_module DIR: empty DIR for a generated throwaway module.
fresh_module() {
    rm -rf "$1"
    mkdir -p "$1"
}

# simple_module NAME MODULE VERSION: a throwaway module in BUILD_DIR/NAME requiring MODULE.
simple_module() {
    local dir="$BUILD_DIR/$1"
    fresh_module "$dir"
    cat >"$dir/go.mod" <<MOD
module portiso.invalid/e2e/$1

go $GO_DIRECTIVE

require $2 $3
MOD
}

# build_kubernetes CMD...: the commands of k8s.io/kubernetes (cmd/CMD) missing from BIN_DIR.
# k8s.io/kubernetes is not meant to be used as a module (its go.mod requires every staging
# module at v0.0.0 and replaces them with ./staging/...), so a throwaway module requires it
# and replaces each staging module its go.mod names with that module's release.
build_kubernetes() {
    local dir="$BUILD_DIR/kubernetes" start=$SECONDS gomod staging m cmd
    local -a need=()
    for cmd in "$@"; do
        [[ -x "$BIN_DIR/$cmd" ]] || need+=("$cmd")
    done
    ((${#need[@]})) || return 0

    log "kubernetes $K8S_VERSION: reading its go.mod for the staging modules"
    gomod=$(cd "$BUILD_DIR" &&
        "$GO_BIN" mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
        sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
    [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
    # Every `k8s.io/<x> => ./staging/src/k8s.io/<x>` replace of the real repo.
    staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/src/.*#\1#p' "$gomod")
    [[ -n "$staging" ]] || die "no staging modules found in $gomod"
    log "kubernetes: $(wc -w <<<"$staging") staging modules -> $K8S_STAGING_VERSION"

    fresh_module "$dir"
    {
        echo "module portiso.invalid/e2e/kubernetes"
        echo
        echo "go $GO_DIRECTIVE"
        echo
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo
        echo "replace ("
        for m in $staging; do
            echo "	$m => $m $K8S_STAGING_VERSION"
        done
        echo ")"
    } >"$dir/go.mod"

    # So that clients see a real version (`kubectl version`).
    local ldflags="-s -w" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$K8S_VERSION"
        ldflags+=" -X $pkg.gitMajor=$K8S_MAJOR"
        ldflags+=" -X $pkg.gitMinor=$K8S_MINOR"
        ldflags+=" -X $pkg.gitTreeState=clean"
    done

    (
        cd "$dir" || exit
        local -a pkgs=()
        for cmd in "${need[@]}"; do
            pkgs+=("k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION")
        done
        log "kubernetes: go get ${pkgs[*]}"
        go_ get "${pkgs[@]}" >&2
        for cmd in "${need[@]}"; do
            log "kubernetes $K8S_VERSION: go build $cmd"
            local s=$SECONDS
            go_ build -trimpath -ldflags "$ldflags" -o "$TMP_OUT/$cmd" "k8s.io/kubernetes/cmd/$cmd" >&2
            install_bin "$cmd"
            log "$cmd compiled in $((SECONDS - s))s"
        done
    )
    log "kubernetes built in $((SECONDS - start))s"
}
