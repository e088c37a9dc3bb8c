#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, for portiso's end-to-end test:
#
#   bash e2e/local-cluster.sh up      # build/cached binaries, images, the node, the control plane
#   bash e2e/local-cluster.sh test    # helm install portiso, real packets from an outside peer
#   bash e2e/local-cluster.sh down    # leave the machine as it was (idempotent)
#   bash e2e/local-cluster.sh all     # up, test, down (down also when a step fails)
#   bash e2e/local-cluster.sh kubectl ARGS...   # run kubectl against the cluster
#   bash e2e/local-cluster.sh ci      # scripts/test.sh: `all` when the machine allows it, else
#                                     # names the missing prerequisite and skips (exit 0)
#
# Needs root, /dev/kvm for the VM check, and the Debian packages runc, busybox-static, jq,
# openvswitch-switch (its tools and libraries go into the portiso image), iproute2, nftables,
# ethtool, openssl, curl, clang with libc6-dev (the pause binary), qemu-system-x86 (the VM sandbox).
# Kubernetes, containerd, crictl and the CNI plugins come from e2e/k8s-bin.sh and
# e2e/cluster-bin.sh (built with Go once, cached under /var/cache/portiso).
#
# The node:
#   - network namespace lc-node: the node's own network. Its uplinks lc-u1 (198.51.100.1/25)
#     and lc-u2 (203.0.113.1/26) are veths whose other ends (lc-o1 198.51.100.7, lc-o2
#     203.0.113.7) are in the namespace lc-out, the remote peer. Its lo also holds
#     198.51.100.250/32, the address of the API server and kubelet (so that it stays put while
#     the portiso agent moves the uplinks' addresses onto its bridges). Pods' primary network is
#     the bridge lc-cni0 with 203.0.113.64/26, services 198.51.100.128/26. Nothing touches the
#     machine's own NICs, addresses or routes.
#   - a private mount namespace (held by one `sleep` process) in which every node process runs:
#     tmpfs over the node's state directory and over the fixed paths kubelet and containerd
#     write to (/var/lib/kubelet, /run/containerd, /run/netns, /var/log/pods, ...), and its own
#     shared bpffs at /sys/fs/bpf (the agent's Bidirectional mount needs a shared mount; the
#     machine's mounts are private and stay untouched). When `down` ends the processes the
#     namespace and everything mounted in it vanish.
#   - all processes (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
#     containerd, kubelet) run with `nsenter` in those two namespaces; kubectl and helm too.
#     Pods' cgroups live under /portiso-lc in every cgroup v1 hierarchy (kubelet cgroupRoot).
#   - no kube-proxy: one nftables DNAT rule in lc-node sends the `kubernetes` Service address to
#     the API server (all that pods here need); the API server reaches the webhook through its
#     endpoints (--enable-aggregator-routing).
#   - host-wide while it is up: kubelet sets vm.overcommit_memory=1, kernel.panic=10 and
#     kernel.panic_on_oops=1 (it cannot be told not to); `up` saves them, `down` restores them.
#     Pod cgroups /sys/fs/cgroup/*/portiso-lc are removed by `down`.
#
# Environment:
#   PORTISO_CACHE       cache root (default /var/cache/portiso)
#   PORTISO_LC_SKIP_VM=1  skip the VM sandbox check
#   PORTISO_LC_PROFILE  the cargo profile whose portiso binaries go into the image: release
#                       (default for up/all; target/release) or debug (default for ci, which runs
#                       after `cargo test --workspace`: target/debug, stripped of debug info
#                       when copied into the image)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE_ROOT=${PORTISO_CACHE:-/var/cache/portiso}

K8S_VERSION=v1.37.2   # the release e2e/k8s-bin.sh and e2e/cluster-bin.sh pin (pause.c is its own)

# ---- names and addresses (prefix lc-: nothing clashes with the test suite's testbeds) -------
NODE_NS=lc-node
OUT_NS=lc-out
NODE_NAME=lc-node
LC=/run/portiso-lc            # host-side state: pids, logs, credentials
NODE=$LC/node                 # a tmpfs inside the node's mount namespace
UP1=lc-u1 UP1_PEER=lc-o1 UP1_ADDR=198.51.100.1 UP1_PEER_ADDR=198.51.100.7 UP1_LEN=25
UP2=lc-u2 UP2_PEER=lc-o2 UP2_ADDR=203.0.113.1 UP2_PEER_ADDR=203.0.113.7 UP2_LEN=26
API_ADDR=198.51.100.250
POD_CIDR=203.0.113.64/26 POD_GW=203.0.113.65 POD_BRIDGE=lc-cni0
SVC_CIDR=198.51.100.128/26 SVC_API=198.51.100.129
API_PORT=6443 ETCD_PORT=2379 ETCD_PEER_PORT=2380
CGROUP_ROOT=portiso-lc
IMG_PORTISO=portiso.local/portiso:lc
IMG_PAUSE=portiso.local/pause:lc
IMG_BUSYBOX=portiso.local/busybox:lc
IMG_QEMU=portiso.local/qemu:lc
# Fixed paths kubelet/containerd/runc write to whatever their flags say; each gets a tmpfs in
# the node's mount namespace (the host directory is made if missing and removed by `down`).
PRIVATE_DIRS=(/var/lib/kubelet /run/containerd /run/netns /var/log/pods /var/log/containers /run/runc /var/lib/cni)
SAVED_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

log() { printf '[local-cluster %s] %s\n' "$(date +%T)" "$*" >&2; }

# The portiso binaries that go into the image (see PORTISO_LC_PROFILE).
PROFILE=${PORTISO_LC_PROFILE:-release}
case "$PROFILE" in
release | debug) ;;
*) echo "PORTISO_LC_PROFILE=$PROFILE: release or debug" >&2 && exit 2 ;;
esac
BIN_DIR=$REPO/target/$PROFILE
build_portiso() {
    if [[ "$PROFILE" == release ]]; then
        (cd "$REPO" && cargo build --release --workspace --locked)
    else
        (cd "$REPO" && cargo build --workspace --bins --locked)
    fi
}
die() { log "error: $*"; exit 1; }

# ---- prerequisites ------------------------------------------------------------------------
need_cmds() {
    local c missing=()
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    ((${#missing[@]} == 0)) || die "missing: ${missing[*]} (Debian packages: see the top of $0)"
}

# Why this machine's cgroups cannot hold the node's pods (empty when they can): the node is
# built for cgroup v1 hierarchies (kubelet's cgroupRoot in each, failCgroupV1: false), with
# at least the memory controller.
cgroup_unsupported() {
    if [[ -e /sys/fs/cgroup/cgroup.controllers ]]; then
        echo "a pure cgroup v2 host (cgroup2 mounted at /sys/fs/cgroup): this script sets the node up on cgroup v1 hierarchies only"
    elif [[ ! -d /sys/fs/cgroup/memory ]]; then
        echo "no memory cgroup (no cgroup v1 hierarchy at /sys/fs/cgroup/memory)"
    elif [[ ! -d /sys/fs/cgroup/pids ]]; then
        echo "no pids cgroup (no cgroup v1 hierarchy at /sys/fs/cgroup/pids; the test looks for OVS daemons there)"
    fi
}

# ---- the node's namespaces ----------------------------------------------------------------
holder_pid() { cat "$LC/holder.pid" 2>/dev/null || true; }

# in_node CMD...: run CMD in the node's network and mount namespaces.
in_node() {
    local h
    h=$(holder_pid)
    [[ -n "$h" && -d /proc/$h ]] || die "the node is not up (run: $0 up)"
    nsenter --mount="/proc/$h/ns/mnt" --net="/run/netns/$NODE_NS" -- "$@"
}
in_out() { ip netns exec "$OUT_NS" "$@"; }

# start_daemon NAME CMD...: run CMD in the node, logging to $LC/log/NAME.log.
start_daemon() {
    local name=$1
    shift
    local h
    h=$(holder_pid)
    setsid nsenter --mount="/proc/$h/ns/mnt" --net="/run/netns/$NODE_NS" -- "$@" \
        >"$LC/log/$name.log" 2>&1 </dev/null &
    echo $! >"$LC/pids/$name"
    log "started $name (pid $!)"
}

# wait_for WHAT SECONDS CMD...: retry CMD every second, bounded.
wait_for() {
    local what=$1 secs=$2 i
    shift 2
    for ((i = 0; i < secs; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    log "timed out after ${secs}s waiting for $what"
    return 1
}

# alive NAME: the daemon still runs, else its log's tail and fail.
alive() {
    kill -0 "$(cat "$LC/pids/$1")" 2>/dev/null && return 0
    tail -n 20 "$LC/log/$1.log" >&2
    die "$1 exited (log: $LC/log/$1.log)"
}

# alive_and NAME CMD...: fail at once if the daemon died, else run CMD.
alive_and() {
    alive "$1"
    shift
    "$@"
}

bins() {
    K8S_BIN=$(bash "$HERE/k8s-bin.sh" | tail -n1)
    CLUSTER_BIN=$(bash "$HERE/cluster-bin.sh" | tail -n1)
}

kc() { in_node "$K8S_BIN/kubectl" --kubeconfig "$NODE/pki/admin.kubeconfig" "$@"; }
helm_() {
    in_node env HOME="$NODE/helm-home" XDG_CACHE_HOME="$NODE/helm-home/cache" \
        XDG_CONFIG_HOME="$NODE/helm-home/config" XDG_DATA_HOME="$NODE/helm-home/data" \
        KUBECONFIG="$NODE/pki/admin.kubeconfig" "$K8S_BIN/helm" "$@"
}

setup_network() {
    log "network namespaces $NODE_NS, $OUT_NS"
    ip netns add "$NODE_NS"
    ip netns add "$OUT_NS"
    ip link add "$UP1" netns "$NODE_NS" type veth peer name "$UP1_PEER" netns "$OUT_NS"
    ip link add "$UP2" netns "$NODE_NS" type veth peer name "$UP2_PEER" netns "$OUT_NS"
    ip -n "$NODE_NS" link set lo up
    ip -n "$OUT_NS" link set lo up
    ip -n "$NODE_NS" addr add "$UP1_ADDR/$UP1_LEN" dev "$UP1"
    ip -n "$NODE_NS" addr add "$UP2_ADDR/$UP2_LEN" dev "$UP2"
    ip -n "$OUT_NS" addr add "$UP1_PEER_ADDR/$UP1_LEN" dev "$UP1_PEER"
    ip -n "$OUT_NS" addr add "$UP2_PEER_ADDR/$UP2_LEN" dev "$UP2_PEER"
    # On lo: this kernel has no dummy interfaces.
    ip -n "$NODE_NS" addr add "$API_ADDR/32" dev lo
    local d
    for d in "$UP1" "$UP2"; do ip -n "$NODE_NS" link set "$d" up; done
    # The node's default route goes through the outside peer, as a real node's through its
    # gateway (the agent moves it onto its bridge with the address). Host-network pods need a
    # route to the Service address before the DNAT below can apply.
    ip -n "$NODE_NS" route add default via "$UP1_PEER_ADDR" dev "$UP1"
    for d in "$UP1_PEER" "$UP2_PEER"; do ip -n "$OUT_NS" link set "$d" up; done
    # The userspace OVS datapath leaves TCP/UDP checksums to offload: off on the peer's ends
    # (the agent does its own side).
    ip netns exec "$OUT_NS" ethtool -K "$UP1_PEER" tx off >/dev/null
    ip netns exec "$OUT_NS" ethtool -K "$UP2_PEER" tx off >/dev/null
    # No kube-proxy: the `kubernetes` Service (the first address of the service range) is the
    # API server, for pods (prerouting) and host-network pods (output).
    ip netns exec "$NODE_NS" nft -f - <<EOF
table ip portiso-lc-svc {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr $SVC_API tcp dport 443 dnat to $API_ADDR:$API_PORT
    }
    chain out {
        type nat hook output priority -100; policy accept;
        ip daddr $SVC_API tcp dport 443 dnat to $API_ADDR:$API_PORT
    }
}
EOF
}

setup_mounts() {
    log "mount namespace (holder process)"
    unshare --mount --propagation private -- sleep infinity </dev/null >/dev/null 2>&1 &
    local h=$!
    echo "$h" >"$LC/holder.pid"
    wait_for "the mount namespace" 10 \
        bash -c "[[ \$(readlink /proc/$h/ns/mnt) != \$(readlink /proc/self/ns/mnt) ]]"
    local d
    for d in "${PRIVATE_DIRS[@]}" "$NODE"; do
        if [[ ! -e "$d" ]]; then
            mkdir -p "$d"
            echo "$d" >>"$LC/created-dirs"
        fi
    done
    nsenter --mount="/proc/$h/ns/mnt" -- bash -euc "
        mount --make-rshared /
        for d in $NODE ${PRIVATE_DIRS[*]}; do mount -t tmpfs -o mode=0755 portiso-lc \"\$d\"; done
        mount -t bpf bpf /sys/fs/bpf
        mount --make-shared /sys/fs/bpf
    "
}

save_sysctls() {
    # kubelet sets these host-wide kernel tunables (its protectKernelDefaults=false path);
    # `down` puts the values found here back.
    [[ -f "$LC/sysctls" ]] && return 0
    local s
    for s in "${SAVED_SYSCTLS[@]}"; do
        printf '%s=%s\n' "$s" "$(sysctl -n "$s")"
    done >"$LC/sysctls"
}

make_pki() {
    local p=$NODE/pki
    in_node mkdir -p "$p"
    in_node bash -euc "
        cd $p
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=portiso-lc-ca 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
        printf 'subjectAltName=IP:$API_ADDR,IP:$SVC_API,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' >ext.cnf
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 2 -extfile ext.cnf 2>/dev/null
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        TOKEN=\$(openssl rand -hex 16)
        NODE_TOKEN=\$(openssl rand -hex 16)
        # Test-only credentials: the admin (also the controllers) and the node, both masters.
        echo \"\$TOKEN,portiso-admin,portiso-admin,\\\"system:masters\\\"\" >tokens.csv
        echo \"\$NODE_TOKEN,system:node:$NODE_NAME,$NODE_NAME,\\\"system:nodes,system:masters\\\"\" >>tokens.csv
        for who in admin:\$TOKEN node:\$NODE_TOKEN; do
            cat >\${who%%:*}.kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters:
- name: lc
  cluster: {server: https://$API_ADDR:$API_PORT, certificate-authority: $p/ca.crt}
users:
- name: u
  user: {token: \${who#*:}}
contexts:
- name: lc
  context: {cluster: lc, user: u}
current-context: lc
EOF
        done
    "
}

start_control_plane() {
    in_node mkdir -p -m 0700 "$NODE/etcd"
    start_daemon etcd "$K8S_BIN/etcd" --name lc --data-dir "$NODE/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "lc=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn
    wait_for etcd 30 alive_and etcd in_node curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
    local p=$NODE/pki
    # --enable-aggregator-routing: reach webhooks through their Service's endpoints (no
    # kube-proxy here); --endpoint-reconciler-type none: the `kubernetes` Service is DNATed.
    start_daemon kube-apiserver "$K8S_BIN/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address 0.0.0.0 --advertise-address "$API_ADDR" --secure-port "$API_PORT" \
        --cert-dir "$p" --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
        --client-ca-file "$p/ca.crt" \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
        --authorization-mode Node,RBAC --token-auth-file "$p/tokens.csv" \
        --service-cluster-ip-range "$SVC_CIDR" --endpoint-reconciler-type none \
        --enable-aggregator-routing=true --allow-privileged=true \
        --kubelet-preferred-address-types InternalIP
    wait_for kube-apiserver 90 alive_and kube-apiserver in_node curl -fsS --cacert "$p/ca.crt" "https://$API_ADDR:$API_PORT/readyz"
    start_daemon kube-controller-manager "$CLUSTER_BIN/kube-controller-manager" \
        --kubeconfig "$p/admin.kubeconfig" --authentication-kubeconfig "$p/admin.kubeconfig" \
        --authorization-kubeconfig "$p/admin.kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false \
        --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
        --service-cluster-ip-range "$SVC_CIDR" --allocate-node-cidrs=false \
        --controllers '*,-nodeipam'
    start_daemon kube-scheduler "$CLUSTER_BIN/kube-scheduler" \
        --kubeconfig "$p/admin.kubeconfig" --authentication-kubeconfig "$p/admin.kubeconfig" \
        --authorization-kubeconfig "$p/admin.kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false
    wait_for kube-controller-manager 60 alive_and kube-controller-manager \
        in_node curl -fsSk https://127.0.0.1:10257/healthz
    wait_for kube-scheduler 60 alive_and kube-scheduler \
        in_node curl -fsSk https://127.0.0.1:10259/healthz
}

start_runtime() {
    local cni=$NODE/cni
    in_node mkdir -p "$cni/bin" "$cni/net.d" "$cni/multus-cache" "$NODE/containerd" "$NODE/kubelet"
    in_node cp "$CLUSTER_BIN"/cni/* "$cni/bin/"
    in_node install -m 0755 "$HERE/local-cluster-multus.sh" "$cni/bin/lc-multus"
    # The primary network: bridge + host-local, under the Multus stand-in that adds the pod's
    # NetworkAttachmentDefinitions (see local-cluster-multus.sh for why not Multus itself).
    in_node bash -c "cat >$cni/net.d/10-lc.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "lc-pods",
  "plugins": [{
    "type": "lc-multus",
    "kubectl": "$K8S_BIN/kubectl",
    "kubeconfig": "$NODE/pki/admin.kubeconfig",
    "cacheDir": "$cni/multus-cache",
    "delegate": {
      "type": "bridge", "bridge": "$POD_BRIDGE", "isGateway": true, "ipMasq": false,
      "ipam": {"type": "host-local", "dataDir": "$cni/ipam",
               "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]],
               "routes": [{"dst": "0.0.0.0/0"}]}
    }
  }]
}
EOF
    in_node bash -c "cat >$NODE/containerd/config.toml" <<EOF
version = 3
root = "$NODE/containerd/root"
state = "$NODE/containerd/state"
[grpc]
  address = "$NODE/containerd/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$IMG_PAUSE"
[plugins.'io.containerd.cri.v1.runtime']
  # No CAP_SYS_RESOURCE on this machine: a negative oom_score_adj (kubelet asks -998 for
  # sandboxes) cannot be set, and runc would fail every container. Clamp to containerd's own.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        # Debian's runc: crun refuses this machine's hybrid cgroups.
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$cni/bin"]
    conf_dir = "$cni/net.d"
    max_conf_num = 1
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
EOF
    start_daemon containerd env PATH="$CLUSTER_BIN:$PATH" "$CLUSTER_BIN/containerd" \
        --config "$NODE/containerd/config.toml"
    wait_for containerd 30 alive_and containerd in_node "$CLUSTER_BIN/ctr" --address "$NODE/containerd/containerd.sock" version
}

ctr_() { in_node "$CLUSTER_BIN/ctr" --address "$NODE/containerd/containerd.sock" -n k8s.io "$@"; }
crictl_() { in_node "$CLUSTER_BIN/crictl" --runtime-endpoint "unix://$NODE/containerd/containerd.sock" "$@"; }

node_ready() {
    alive kubelet
    [[ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

start_kubelet() {
    local k=$NODE/kubelet c
    # kubelet wants its cgroupRoot to exist in every hierarchy (cgroupfs is not namespaced:
    # `down` removes them). cpuset needs its cpus and mems before it can hold anything.
    for c in /sys/fs/cgroup/*/; do
        [[ -e "$c/cgroup.procs" && ! -e "$c/cgroup.subtree_control" ]] || continue
        mkdir -p "$c$CGROUP_ROOT"
        if [[ -e "$c/cpuset.cpus" ]]; then
            cat "$c/cpuset.cpus" >"$c$CGROUP_ROOT/cpuset.cpus"
            cat "$c/cpuset.mems" >"$c$CGROUP_ROOT/cpuset.mems"
        fi
    done
    in_node bash -c "cat >$k/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$NODE/containerd/containerd.sock
# No systemd on this machine: cgroupfs, as containerd's runc (SystemdCgroup = false).
cgroupDriver: cgroupfs
# Every pod cgroup under /$CGROUP_ROOT in each hierarchy, so that \`down\` finds them all.
cgroupRoot: /$CGROUP_ROOT
# This machine mounts the cgroup v1 hierarchies (hybrid: cgroup2 only at
# /sys/fs/cgroup/unified, without controllers); kubelet refuses v1 unless told.
failCgroupV1: false
# The machine has no swap; say so rather than rely on the default.
failSwapOn: false
# The machine's disk is shared and often over 70% full: the default nodefs/imagefs
# thresholds (10%/15%) would evict our pods for space that is not ours to free.
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Test-only: the API server's calls (logs, exec) are allowed without credentials.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
address: $API_ADDR
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# No DNS server: pods get no resolv.conf entries (nothing here resolves names).
resolvConf: ""
podLogsDir: /var/log/pods
# kubelet writes these kernel tunables host-wide; \`up\` saved them, \`down\` restores them.
protectKernelDefaults: false
registerNode: true
serializeImagePulls: false
EOF
    start_daemon kubelet "$CLUSTER_BIN/kubelet" --config "$k/config.yaml" \
        --kubeconfig "$NODE/pki/node.kubeconfig" --root-dir /var/lib/kubelet \
        --cert-dir "$k/pki" --hostname-override "$NODE_NAME" --node-ip "$API_ADDR" \
        --v 1
    wait_for "node $NODE_NAME Ready" 120 node_ready
}

# ---- images: a root filesystem made here -> OCI archive -> containerd ---------------------
# oci_archive ROOTFS NAME CONFIG_JSON OUT.tar: one uncompressed layer, config (CONFIG_JSON
# merged into its `config`: Entrypoint, Cmd), manifest.
oci_archive() {
    local rootfs=$1 name=$2 entry=$3 out=$4 d layer ldig lsize cfg cdig csize man mdig msize
    d=$(mktemp -d "$LC/oci.XXXXXX")
    mkdir -p "$d/blobs/sha256"
    layer=$d/layer.tar
    tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -cf "$layer" .
    ldig=$(sha256sum "$layer" | cut -d' ' -f1)
    lsize=$(stat -c %s "$layer")
    mv "$layer" "$d/blobs/sha256/$ldig"
    cfg=$(jq -cn --argjson e "$entry" --arg l "sha256:$ldig" '{architecture: "amd64", os: "linux",
        config: ({Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]} + $e),
        rootfs: {type: "layers", diff_ids: [$l]}}')
    cdig=$(printf '%s' "$cfg" | sha256sum | cut -d' ' -f1)
    csize=$(printf '%s' "$cfg" | wc -c)
    printf '%s' "$cfg" >"$d/blobs/sha256/$cdig"
    man=$(jq -cn --arg c "sha256:$cdig" --argjson cs "$csize" --arg l "sha256:$ldig" --argjson ls "$lsize" \
        '{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
          config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
          layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $l, size: $ls}]}')
    mdig=$(printf '%s' "$man" | sha256sum | cut -d' ' -f1)
    msize=$(printf '%s' "$man" | wc -c)
    printf '%s' "$man" >"$d/blobs/sha256/$mdig"
    jq -cn --arg m "sha256:$mdig" --argjson ms "$msize" --arg n "$name" \
        '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
          manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $m, size: $ms,
                       annotations: {"io.containerd.image.name": $n, "org.opencontainers.image.ref.name": ($n | split(":") | last)}}]}' \
        >"$d/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$d/oci-layout"
    tar -C "$d" -cf "$out" oci-layout index.json blobs
    rm -rf "$d"
}

# rootfs_add ROOT FILE...: copy FILEs and the shared libraries they load into ROOT (a
# merged-/usr layout like Debian's).
rootfs_add() {
    local root=$1 f
    shift
    for f in "$@"; do
        mkdir -p "$root$(dirname "$f")"
        cp -L "$f" "$root$f"
        rootfs_libs "$root" "$f"
    done
}

# rootfs_libs ROOT FILE: copy the shared libraries FILE loads into ROOT.
rootfs_libs() {
    local root=$1 lib
    while read -r lib; do
        [[ -e "$root$lib" ]] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done < <(ldd "$2" 2>/dev/null | grep -o '/[^ ]*' || true)
}

rootfs_base() {
    local root=$1 a
    mkdir -p "$root"/usr/{bin,sbin,lib,lib64} "$root"/{etc,tmp,run,proc,sys,dev,root,var/log,var/lib}
    chmod 1777 "$root/tmp"
    ln -s usr/bin "$root/bin"
    ln -s usr/sbin "$root/sbin"
    ln -s usr/lib "$root/lib"
    ln -s usr/lib64 "$root/lib64"
    ln -s ../run "$root/var/run"
    cp /bin/busybox "$root/usr/bin/busybox"
    for a in sh awk cat cp chmod echo env grep head hostname id kill ls mkdir mv nc ps rm sed seq sleep \
        tail test timeout tr true false wc udhcpc; do
        [[ -e "$root/usr/bin/$a" ]] || ln -s busybox "$root/usr/bin/$a"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65532:65532:nobody:/:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnobody:x:65532:\n' >"$root/etc/group"
    : >"$root/etc/resolv.conf"
}

image_key() {
    # Inputs of the images: this script, the portiso binaries (of the chosen profile), the host
    # tools' packages (binutils: objcopy strips the binaries).
    {
        echo "profile $PROFILE"
        sha256sum "$HERE/local-cluster.sh" "$BIN_DIR/portiso" "$BIN_DIR/portiso-cni"
        dpkg-query -W openvswitch-switch busybox-static iproute2 nftables qemu-system-x86 binutils 2>/dev/null || true
    } | sha256sum | cut -c1-16
}

build_images() {
    local dir
    dir="$CACHE_ROOT/lc-images/$(image_key)"
    if [[ ! -f "$dir/DONE" ]]; then
        log "building images into $dir"
        rm -rf "$dir"
        mkdir -p "$dir"
        local r
        r=$(mktemp -d "$LC/rootfs.XXXXXX")

        # pause: Kubernetes' own pause.c (in the k8s.io/kubernetes module), static.
        local pausec
        pausec=$(cd "$CACHE_ROOT" && GOWORK=off "${PORTISO_GO:-$(command -v go || echo /usr/local/go/bin/go)}" \
            mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
            jq -r .Dir)/build/pause/linux/pause.c
        mkdir -p "$r/pause/usr/bin"
        "$(command -v clang || command -v gcc)" -Os -static -o "$r/pause/pause" "$pausec" -DVERSION=lc
        oci_archive "$r/pause" "$IMG_PAUSE" '{"Entrypoint": ["/pause"]}' "$dir/pause.tar"

        # busybox: the test workload.
        rootfs_base "$r/busybox"
        oci_archive "$r/busybox" "$IMG_BUSYBOX" '{"Cmd": ["/bin/sh"]}' "$dir/busybox.tar"

        # portiso: the binaries of $PROFILE without their debug info (a debug build's are
        # hundreds of MB), plus what the Dockerfile's runtime stage installs.
        rootfs_base "$r/portiso"
        mkdir -p "$r/portiso/usr/local/bin"
        local b
        for b in portiso portiso-cni; do
            objcopy --strip-debug "$BIN_DIR/$b" "$r/portiso/usr/local/bin/$b"
            rootfs_libs "$r/portiso" "$BIN_DIR/$b"
        done
        local t tools=()
        for t in bash ovs-vsctl ovs-ofctl ovs-appctl ovs-dpctl ovsdb-server ovsdb-tool ovs-vswitchd \
            ip nft ethtool sysctl nsenter mount umount tc; do
            tools+=("$(command -v "$t")")
        done
        rootfs_add "$r/portiso" "${tools[@]}"
        mkdir -p "$r/portiso/usr/share/openvswitch" "$r/portiso/etc/openvswitch" \
            "$r/portiso/var/log/openvswitch" "$r/portiso/var/lib/openvswitch"
        cp /usr/share/openvswitch/vswitch.ovsschema "$r/portiso/usr/share/openvswitch/"
        oci_archive "$r/portiso" "$IMG_PORTISO" '{"Entrypoint": ["/usr/local/bin/portiso"], "Cmd": ["--help"]}' "$dir/portiso.tar"

        # qemu: the VM sandbox's launcher (like KubeVirt's virt-launcher, much smaller).
        if command -v qemu-system-x86_64 >/dev/null 2>&1; then
            rootfs_base "$r/qemu"
            rootfs_add "$r/qemu" "$(command -v qemu-system-x86_64)" "$(command -v ip)" "$(command -v bash)" \
                "$(command -v ethtool)" "$(command -v sysctl)"
            # TCG is a loadable module of Debian's qemu (used where /dev/kvm is PVM).
            local m
            for m in /usr/lib/x86_64-linux-gnu/qemu/accel-*.so; do
                [[ -e "$m" ]] && rootfs_add "$r/qemu" "$m"
            done
            mkdir -p "$r/qemu/usr/share/qemu"
            local f
            for f in /usr/share/qemu/{bios-256k.bin,kvmvapic.bin,linuxboot_dma.bin,vgabios-stdvga.bin,efi-virtio.rom,pxe-virtio.rom}; do
                [[ -e "$f" ]] && cp -L "$f" "$r/qemu/usr/share/qemu/"
            done
            # Firmware where Debian's qemu looks (-L help): SeaBIOS, and the virtio NIC's option ROM.
            cp -rL /usr/share/seabios "$r/qemu/usr/share/"
            mkdir -p "$r/qemu/usr/lib/ipxe/qemu"
            cp -L /usr/lib/ipxe/qemu/efi-virtio.rom "$r/qemu/usr/lib/ipxe/qemu/"
            oci_archive "$r/qemu" "$IMG_QEMU" '{"Cmd": ["/bin/sh"]}' "$dir/qemu.tar"
        fi
        rm -rf "$r"
        touch "$dir/DONE"
        # Images of earlier inputs are never used again.
        local old
        for old in "$CACHE_ROOT"/lc-images/*/; do
            [[ "${old%/}" == "$dir" ]] || rm -rf "$old"
        done
    fi
    local t
    for t in "$dir"/*.tar; do
        log "importing $(basename "$t")"
        ctr_ images import "$t" 2> >(grep -v DEPRECATION >&2) >/dev/null
    done
}

# ---- up / down ----------------------------------------------------------------------------
cmd_up() {
    [[ $EUID -eq 0 ]] || die "needs root"
    need_cmds nsenter unshare ip nft ethtool openssl jq curl runc busybox clang ovs-vsctl setsid flock objcopy
    local why
    why=$(cgroup_unsupported)
    [[ -z "$why" ]] || die "$why"
    if [[ -e "$LC/holder.pid" ]] || ip netns list | grep -qw "$NODE_NS"; then
        die "a local cluster is already up (run: $0 down)"
    fi
    local start=$SECONDS
    bins
    if [[ ! -x "$BIN_DIR/portiso" || ! -x "$BIN_DIR/portiso-cni" ]]; then
        log "no $PROFILE binaries of portiso: building them"
        build_portiso
    fi
    mkdir -p "$LC/log" "$LC/pids"
    save_sysctls
    setup_network
    setup_mounts
    make_pki
    start_control_plane
    start_runtime
    build_images
    start_kubelet
    log "up in $((SECONDS - start))s; kubectl: $0 kubectl get pods -A"
}

kill_pids() {
    local sig=$1 p
    shift
    for p in "$@"; do kill "-$sig" "$p" 2>/dev/null || true; done
}

# Processes in the node's mount namespace (daemons, shims) and in its pods' cgroups.
node_pids() {
    local h=$1 ns p
    if [[ -n "$h" && -e /proc/$h/ns/mnt ]]; then
        ns=$(readlink "/proc/$h/ns/mnt")
        for p in /proc/[0-9]*; do
            [[ "$(readlink "$p/ns/mnt" 2>/dev/null)" == "$ns" && ${p#/proc/} != "$h" ]] && echo "${p#/proc/}"
        done
    fi
    local c
    for c in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do
        [[ -d "$c" ]] && find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null
    done
    return 0
}

cmd_down() {
    local h i pids
    h=$(holder_pid)
    log "down"
    # Gracefully first: kubelet, then the control plane and containerd, then anything left.
    for d in kubelet kube-scheduler kube-controller-manager kube-apiserver containerd etcd; do
        [[ -f "$LC/pids/$d" ]] && kill_pids TERM "$(cat "$LC/pids/$d")"
    done
    # Containers' PID 1 (sh) ignores TERM: TERM once, up to 5 s, then KILL.
    mapfile -t pids < <(node_pids "$h" | sort -u)
    ((${#pids[@]} == 0)) || kill_pids TERM "${pids[@]}"
    for ((i = 0; i < 5; i++)); do
        mapfile -t pids < <(node_pids "$h" | sort -u)
        ((${#pids[@]})) || break
        sleep 1
    done
    for ((i = 0; i < 10; i++)); do
        mapfile -t pids < <(node_pids "$h" | sort -u)
        ((${#pids[@]})) || break
        kill_pids KILL "${pids[@]}"
        sleep 1
    done
    ((${#pids[@]} == 0)) || log "warning: processes left: ${pids[*]}"
    if [[ -n "$h" ]]; then
        kill "$h" 2>/dev/null || true
        wait_for "the mount namespace holder to exit" 10 bash -c "! kill -0 $h" || true
    fi
    # Pod cgroups, deepest first.
    local c
    for c in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do
        [[ -d "$c" ]] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    for c in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do
        [[ -d "$c" ]] && log "warning: cgroup left: $c"
    done
    ip netns del "$NODE_NS" 2>/dev/null || true
    ip netns del "$OUT_NS" 2>/dev/null || true
    local dirty=()
    if [[ -f "$LC/sysctls" ]]; then
        while IFS= read -r kv; do
            sysctl -qw "$kv" || true
            [[ "$(sysctl -n "${kv%%=*}")" == "${kv#*=}" ]] || dirty+=("sysctl ${kv%%=*}")
        done <"$LC/sysctls"
    fi
    if [[ -f "$LC/created-dirs" ]]; then
        while IFS= read -r d; do
            rmdir "$d" 2>/dev/null || true
            [[ -e "$d" ]] && dirty+=("directory $d")
        done < <(sort -r "$LC/created-dirs")
    fi
    rm -rf "$LC"
    # What must be gone now.
    ip netns list | grep -qwE "$NODE_NS|$OUT_NS" && dirty+=("netns")
    [[ -e "$LC" ]] && dirty+=("$LC")
    for c in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do [[ -e "$c" ]] && dirty+=("cgroup $c"); done
    ip -o link show | grep -qE ': (lc-|br-lc-)' && dirty+=("links named lc-* in the host's namespace")
    local p
    for p in /proc/[0-9]*; do
        [[ "$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" == *"$LC/"* ]] && dirty+=("process ${p#/proc/}")
    done
    if ((${#dirty[@]})); then
        log "down: left behind: ${dirty[*]}"
        return 1
    fi
    log "down done: no namespace, process, mount, cgroup, link or directory of the cluster left"
}

# ---- test ---------------------------------------------------------------------------------
# shellcheck source=e2e/local-cluster-test.sh
source "$HERE/local-cluster-test.sh"

case "${1:-}" in
up)
    trap 'rc=$?; if ((rc)); then log "up failed; cleaning up"; cmd_down; fi' EXIT
    cmd_up
    trap - EXIT
    ;;
test)
    bins
    cmd_test
    ;;
down) cmd_down ;;
all)
    s=$SECONDS
    trap 'cmd_down || true' EXIT
    cmd_up
    u=$((SECONDS - s))
    bins
    cmd_test
    t=$((SECONDS - s - u))
    trap - EXIT
    cmd_down
    log "up ${u}s, test ${t}s, down $((SECONDS - s - u - t))s"
    ;;
ci)
    # Prerequisites that make the whole step impossible: skip visibly (exit 0).
    why=""
    if [[ $EUID -ne 0 ]]; then
        why="not root"
    elif ! command -v nsenter >/dev/null || ! command -v unshare >/dev/null; then
        why="no nsenter/unshare (util-linux)"
    elif ! command -v runc >/dev/null; then
        why="no runc (Debian package runc)"
    elif ! command -v ovs-vsctl >/dev/null; then
        why="no Open vSwitch tools (openvswitch-switch) for the portiso image"
    elif ! command -v jq >/dev/null; then
        why="no jq"
    elif ! command -v objcopy >/dev/null; then
        why="no objcopy (binutils) to strip the image's binaries"
    else
        why=$(cgroup_unsupported)
    fi
    if [[ -n "$why" ]]; then
        log "SKIPPED: the local Kubernetes cluster needs what this machine lacks: $why"
        exit 0
    fi
    [[ -c /dev/kvm ]] || log "no /dev/kvm: the VM sandbox check will be SKIPPED"
    # The debug binaries by default: scripts/test.sh has just built them (cargo test
    # --workspace); a release build would cost minutes more in a fresh clone.
    export PORTISO_LC_PROFILE=${PORTISO_LC_PROFILE:-debug}
    PROFILE=$PORTISO_LC_PROFILE BIN_DIR=$REPO/target/$PORTISO_LC_PROFILE
    log "building the $PROFILE binaries for the image"
    build_portiso
    bash "$0" down >/dev/null 2>&1 || true
    exec bash "$0" all
    ;;
kubectl)
    shift
    bins
    kc "$@"
    ;;
*)
    echo "usage: $0 up|test|down|all|ci|kubectl ARGS..." >&2
    exit 2
    ;;
esac
