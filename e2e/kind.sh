#!/usr/bin/env bash
# End-to-end test of portiso on a kind cluster with Multus and KubeVirt.
#
#   bash e2e/kind.sh up     # cluster + uplink network + Multus + KubeVirt + portiso (Helm)
#   bash e2e/kind.sh test   # two PortRanges, a pod, a VM; probes from a peer on the uplink
#   bash e2e/kind.sh down   # delete the cluster, the peer and the uplink network
#
# Needs Docker (a running engine), kind, kubectl, helm, curl and internet access (node image,
# Multus and KubeVirt manifests and images, the guest disk, busybox). See e2e/README.md.
#
# The picture: a kind cluster (one control-plane, one worker) on kind's own Docker network,
# plus a second Docker network, 198.51.100.0/24, connected to the worker only. The worker's
# NIC on that network (normally eth1) is portiso's uplink: the agent builds br-<nic> around
# it. A "peer" container on the same Docker network plays the remote client: it reaches the
# worker's one uplink address, and portiso delivers by destination port to the pod, the VM or
# the node itself.
#
# Environment (all optional): PORTISO_KIND_CLUSTER, PORTISO_KIND_NODE_IMAGE, PORTISO_IMAGE,
# PORTISO_VM_IMAGE, PORTISO_VM_BOOT_TIMEOUT (seconds), PORTISO_SKIP_BUILD=1 (reuse an
# already built $PORTISO_IMAGE).
set -euo pipefail

# ---- pinned versions --------------------------------------------------------
KIND_VERSION=v0.33.0             # the kind release the node image below was built for
# Kubernetes v1.36.4 node image of kind v0.33.0 (by digest, as kind's release notes ask);
# v1.36 rather than kind's default v1.37 so that the pinned KubeVirt supports it.
KIND_NODE_IMAGE=${PORTISO_KIND_NODE_IMAGE:-kindest/node:v1.36.4@sha256:099e049362a1526b2db71494e1947aae99bd16290d7c895f2b7ea312e3cbfaed}
MULTUS_VERSION=v4.3.0            # thin plugin (multus-daemonset.yml)
KUBEVIRT_VERSION=v1.9.0
BUSYBOX_IMAGE=busybox:1.37       # test pod, node listener and peer
# The guest: a cloud-init image (python3 answers the UDP probe, netplan takes the address).
VM_IMAGE=${PORTISO_VM_IMAGE:-quay.io/containerdisks/ubuntu:24.04}
# ------------------------------------------------------------------------------

# Release URLs, as each project documents them.
MULTUS_MANIFEST_URL="https://raw.githubusercontent.com/k8snetworkplumbingwg/multus-cni/${MULTUS_VERSION}/deployments/multus-daemonset.yml"
KUBEVIRT_OPERATOR_URL="https://github.com/kubevirt/kubevirt/releases/download/${KUBEVIRT_VERSION}/kubevirt-operator.yaml"
KUBEVIRT_CR_URL="https://github.com/kubevirt/kubevirt/releases/download/${KUBEVIRT_VERSION}/kubevirt-cr.yaml"

CLUSTER=${PORTISO_KIND_CLUSTER:-portiso-e2e}
CONTEXT="kind-$CLUSTER"
WORKER="$CLUSTER-worker"
UPLINK_NET=portiso-uplink
UPLINK_SUBNET=198.51.100.0/24
PEER="$CLUSTER-peer"
PEER_IP=198.51.100.250
IMAGE=${PORTISO_IMAGE:-portiso:e2e}
RELEASE=portiso
RELEASE_NS=portiso-system
TEST_NS=default
# Worker label: marks the node that has the uplink; its value is the uplink NIC's name.
UPLINK_LABEL=portiso.io/uplink

# The test's ports: two PortRanges, and one port in no range (so it is the node's).
WEB_PORTS=(10000 10099)          # TCP, app=web (the pod)
VM_PORTS=(20000 20063)           # UDP, app=vm (the VM)
NODE_PORT=10100                  # TCP, in no range: must reach the node
VM_BOOT_TIMEOUT=${PORTISO_VM_BOOT_TIMEOUT:-1200}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf 'kind.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    cat >&2 <<EOF
usage: bash e2e/kind.sh up|test|down

  up    create kind cluster "$CLUSTER" (control-plane + worker), Docker network
        $UPLINK_NET ($UPLINK_SUBNET) attached to the worker as portiso's uplink, install
        Multus $MULTUS_VERSION, KubeVirt $KUBEVIRT_VERSION and portiso (image $IMAGE, Helm)
  test  PortRanges TCP ${WEB_PORTS[0]}-${WEB_PORTS[1]} (app=web) and UDP ${VM_PORTS[0]}-${VM_PORTS[1]} (app=vm),
        a pod and a VirtualMachineInstance on the uplink; probe them and the node from a
        peer container on $UPLINK_NET; print a table; exit 1 on any failure
  down  delete the cluster, the peer container and the Docker network
EOF
}

# ---- prerequisites ------------------------------------------------------------

need_tools() {
    local t missing=()
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    if ((${#missing[@]})); then
        die "missing on PATH: ${missing[*]} (this script needs docker, kind, kubectl, helm and curl; see e2e/README.md)"
    fi
}

need_docker_engine() {
    docker info >/dev/null 2>&1 ||
        die "docker is installed but no Docker engine answers (is the daemon running, may this user use it?)"
}

check_kind_version() {
    local have
    have=$(kind version 2>/dev/null | awk '{print $2}')
    if [[ "$have" != "$KIND_VERSION" ]]; then
        log "warning: kind $have, the node image is pinned for kind $KIND_VERSION"
    fi
}

k() { kubectl --context "$CONTEXT" "$@"; }

cluster_exists() { kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; }

# ---- the uplink ------------------------------------------------------------------

# docker inspect of the worker's endpoint on the uplink network: uplink_field MacAddress
uplink_field() {
    docker inspect -f "{{with index .NetworkSettings.Networks \"$UPLINK_NET\"}}{{.$1}}{{end}}" "$WORKER"
}

# The worker's NIC on the uplink network, found by the MAC Docker gave it.
uplink_ifname_by_mac() {
    local mac
    mac=$(uplink_field MacAddress)
    [[ -n "$mac" ]] || die "$WORKER is not connected to $UPLINK_NET"
    docker exec "$WORKER" ip -o link show |
        awk -v mac="$mac" 'index($0, "link/ether " mac " ") {
            name = $2; sub(/:$/, "", name); sub(/@.*/, "", name); print name; exit }'
}

# The uplink NIC's name, as recorded on the worker's label by `up`.
uplink_name() {
    local name
    name=$(k get node "$WORKER" -o "jsonpath={.metadata.labels.portiso\\.io/uplink}")
    [[ -n "$name" ]] || die "node $WORKER has no $UPLINK_LABEL label: run 'bash e2e/kind.sh up' first"
    echo "$name"
}

uplink_ip() { uplink_field IPAddress; }
uplink_prefix() { uplink_field IPPrefixLen; }
uplink_mac() { uplink_field MacAddress; }

# ---- up ----------------------------------------------------------------------------

create_uplink_network() {
    if docker network inspect "$UPLINK_NET" >/dev/null 2>&1; then
        log "Docker network $UPLINK_NET exists"
    else
        log "creating Docker network $UPLINK_NET ($UPLINK_SUBNET)"
        docker network create "$UPLINK_NET" --subnet "$UPLINK_SUBNET" >/dev/null
    fi
}

create_cluster() {
    if cluster_exists; then
        log "kind cluster $CLUSTER exists"
        return
    fi
    log "creating kind cluster $CLUSTER ($KIND_NODE_IMAGE)"
    kind create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" --wait 5m --config - <<'EOF'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
EOF
}

attach_uplink() {
    if [[ -z "$(uplink_field MacAddress)" ]]; then
        log "connecting $WORKER to $UPLINK_NET"
        docker network connect "$UPLINK_NET" "$WORKER"
    fi
    local ifname
    ifname=$(uplink_ifname_by_mac)
    [[ -n "$ifname" ]] || die "no NIC with the $UPLINK_NET MAC inside $WORKER"
    log "uplink: $WORKER $ifname $(uplink_ip)/$(uplink_prefix) $(uplink_mac)"
    k label node "$WORKER" --overwrite "$UPLINK_LABEL=$ifname" >/dev/null
}

install_multus() {
    log "installing Multus $MULTUS_VERSION (thin plugin)"
    # The release's manifest names a floating image tag (snapshot); pin it to the release.
    curl -fsSL "$MULTUS_MANIFEST_URL" |
        sed -E "s#(multus-cni):snapshot([\"'[:space:]]|\$)#\\1:${MULTUS_VERSION}\\2#" |
        k apply -f - >/dev/null
    k -n kube-system rollout status ds/kube-multus-ds --timeout=5m
}

install_kubevirt() {
    log "installing KubeVirt $KUBEVIRT_VERSION"
    k apply -f "$KUBEVIRT_OPERATOR_URL" >/dev/null
    k -n kubevirt rollout status deploy/virt-operator --timeout=10m
    k apply -f "$KUBEVIRT_CR_URL" >/dev/null
    # kind nodes are privileged containers: they see the host's /dev/kvm if it has one.
    if docker exec "$WORKER" test -c /dev/kvm; then
        log "KubeVirt: /dev/kvm present, hardware virtualization"
    else
        log "KubeVirt: no /dev/kvm on $WORKER, software emulation (slow guests)"
        k -n kubevirt patch kubevirt kubevirt --type=merge \
            -p '{"spec":{"configuration":{"developerConfiguration":{"useEmulation":true}}}}' >/dev/null
    fi
    k -n kubevirt wait kubevirt/kubevirt --for=condition=Available --timeout=15m
}

build_and_load_image() {
    if [[ "${PORTISO_SKIP_BUILD:-}" == 1 ]]; then
        log "PORTISO_SKIP_BUILD=1: using the local image $IMAGE"
    else
        log "building $IMAGE from $ROOT/Dockerfile"
        DOCKER_BUILDKIT=1 docker build -t "$IMAGE" "$ROOT"
    fi
    log "loading $IMAGE into $CLUSTER"
    kind load docker-image "$IMAGE" --name "$CLUSTER"
}

install_portiso() {
    local ifname values repo tag
    ifname=$(uplink_name)
    repo=${IMAGE%:*}
    tag=${IMAGE##*:}
    values="$WORK/values.yaml"
    cat >"$values" <<EOF
image:
  repository: $repo
  tag: "$tag"
  pullPolicy: IfNotPresent
agent:
  # The address is left out: the agent reads it from the NIC.
  uplinks:
    - name: $ifname
  # Only the worker has the uplink NIC.
  nodeSelector:
    kubernetes.io/os: linux
    $UPLINK_LABEL: $ifname
# kind nodes have no Open vSwitch: run it in the agent pod.
ovs:
  deploy: true
networkAttachmentDefinitions:
  - name: portiso-$ifname
    namespace: $TEST_NS
    uplink: $ifname
EOF
    log "helm upgrade --install $RELEASE charts/portiso (uplink $ifname)"
    helm --kube-context "$CONTEXT" upgrade --install "$RELEASE" "$ROOT/charts/portiso" \
        -n "$RELEASE_NS" --create-namespace -f "$values" --wait --timeout 10m
}

cmd_up() {
    need_tools docker kind kubectl helm curl
    need_docker_engine
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    check_kind_version
    create_uplink_network
    create_cluster
    attach_uplink
    install_multus
    install_kubevirt
    build_and_load_image
    install_portiso
    log "up: done; next: bash e2e/kind.sh test"
}

# ---- test ---------------------------------------------------------------------------

# apply_retry: kubectl apply of stdin, retried while the admission webhook is not ready yet.
apply_retry() {
    local manifest i
    manifest=$(cat)
    for i in $(seq 1 30); do
        if k apply -f - <<<"$manifest"; then
            return 0
        fi
        log "apply failed (attempt $i), retrying in 5s"
        sleep 5
    done
    die "kubectl apply kept failing"
}

apply_portranges() {
    local ifname=$1
    log "PortRanges: TCP ${WEB_PORTS[0]}-${WEB_PORTS[1]} app=web, UDP ${VM_PORTS[0]}-${VM_PORTS[1]} app=vm"
    apply_retry <<EOF
apiVersion: portiso.io/v1alpha1
kind: PortRange
metadata:
  name: e2e-web
  namespace: $TEST_NS
spec:
  selector:
    matchLabels: {app: web}
  ports:
    - {protocol: TCP, start: ${WEB_PORTS[0]}, end: ${WEB_PORTS[1]}}
  uplinks: [$ifname]
---
apiVersion: portiso.io/v1alpha1
kind: PortRange
metadata:
  name: e2e-vm
  namespace: $TEST_NS
spec:
  selector:
    matchLabels: {app: vm}
  ports:
    - {protocol: UDP, start: ${VM_PORTS[0]}, end: ${VM_PORTS[1]}}
  uplinks: [$ifname]
EOF
    k -n "$TEST_NS" wait portrange/e2e-web portrange/e2e-vm --for=condition=Accepted --timeout=2m
}

apply_workloads() {
    local ifname=$1 addr=$2 prefix=$3 mac=$4 nad="portiso-$1"
    log "pod e2e-web, node listener e2e-node, VirtualMachineInstance e2e-vm ($VM_IMAGE)"
    apply_retry <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: e2e-web
  namespace: $TEST_NS
  labels: {app: web}
  annotations:
    k8s.v1.cni.cncf.io/networks: $nad
spec:
  nodeSelector: {$UPLINK_LABEL: $ifname}
  terminationGracePeriodSeconds: 0
  containers:
    - name: listener
      image: $BUSYBOX_IMAGE
      imagePullPolicy: IfNotPresent
      command: [sh, -c, 'while true; do echo pod | nc -l -p ${WEB_PORTS[0]}; done']
---
# A port in no range belongs to the node: a listener in the node's own network namespace.
apiVersion: v1
kind: Pod
metadata:
  name: e2e-node
  namespace: $TEST_NS
spec:
  nodeSelector: {$UPLINK_LABEL: $ifname}
  hostNetwork: true
  terminationGracePeriodSeconds: 0
  containers:
    - name: listener
      image: $BUSYBOX_IMAGE
      imagePullPolicy: IfNotPresent
      command: [sh, -c, 'while true; do echo node | nc -l -p $NODE_PORT; done']
---
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: e2e-vm
  namespace: $TEST_NS
  # Copied onto the virt-launcher pod, which is the sandbox the PortRange selects.
  labels: {app: vm}
spec:
  nodeSelector: {$UPLINK_LABEL: $ifname}
  terminationGracePeriodSeconds: 0
  domain:
    resources:
      requests: {memory: 1Gi}
    devices:
      disks:
        - {name: containerdisk, disk: {bus: virtio}}
        - {name: cloudinitdisk, disk: {bus: virtio}}
      interfaces:
        # The guest carries the node's shared MAC and address, like every portiso sandbox.
        - {name: portiso, bridge: {}, macAddress: "$mac"}
  networks:
    - {name: portiso, multus: {networkName: $nad}}
  volumes:
    - name: containerdisk
      containerDisk: {image: $VM_IMAGE}
    - name: cloudinitdisk
      cloudInitNoCloud:
        networkData: |
          version: 2
          ethernets:
            uplink:
              match: {macaddress: "$mac"}
              addresses: [$addr/$prefix]
        # As in e2e/cloud-init-portiso.yaml, plus a UDP responder on ${VM_PORTS[0]}.
        userData: |
          #cloud-config
          write_files:
            - path: /etc/sysctl.d/60-portiso.conf
              content: |
                net.ipv4.ip_local_port_range = ${VM_PORTS[0]} ${VM_PORTS[1]}
            - path: /usr/local/bin/portiso-udp-answer
              permissions: "0755"
              content: |
                #!/usr/bin/python3
                import socket
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("0.0.0.0", ${VM_PORTS[0]}))
                while True:
                    _, peer = s.recvfrom(2048)
                    s.sendto(b"vm\n", peer)
          runcmd:
            - [sysctl, --system]
            - [systemd-run, --unit=portiso-udp-answer, /usr/local/bin/portiso-udp-answer]
EOF
    k -n "$TEST_NS" wait pod/e2e-web pod/e2e-node --for=condition=Ready --timeout=5m
    k -n "$TEST_NS" wait vmi/e2e-vm --for=condition=Ready --timeout=15m
}

start_peer() {
    docker rm -f "$PEER" >/dev/null 2>&1 || true
    log "peer container $PEER ($PEER_IP on $UPLINK_NET)"
    docker run -d --name "$PEER" --network "$UPLINK_NET" --ip "$PEER_IP" \
        "$BUSYBOX_IMAGE" sleep 86400 >/dev/null
}

# probe tcp|udp ADDR PORT: what the peer gets back (first line), or nothing.
probe() {
    local proto=$1 addr=$2 port=$3 flag=""
    [[ "$proto" == udp ]] && flag="-u"
    docker exec "$PEER" sh -c "echo probe | nc $flag -w 3 $addr $port 2>/dev/null | head -n1" 2>/dev/null |
        tr -d '\r' || true
}

# probe_until EXPECT TIMEOUT tcp|udp ADDR PORT: probes until the answer is EXPECT or TIMEOUT
# seconds have passed; prints the last answer.
probe_until() {
    local expect=$1 timeout=$2 got deadline
    shift 2
    deadline=$((SECONDS + timeout))
    while :; do
        got=$(probe "$@")
        if [[ "$got" == "$expect" ]] || ((SECONDS >= deadline)); then
            printf '%s\n' "$got"
            return
        fi
        sleep 5
    done
}

cmd_test() {
    need_tools docker kind kubectl
    need_docker_engine
    cluster_exists || die "no kind cluster $CLUSTER: run 'bash e2e/kind.sh up' first"
    local ifname addr prefix mac
    ifname=$(uplink_name)
    addr=$(uplink_ip)
    prefix=$(uplink_prefix)
    mac=$(uplink_mac)
    [[ -n "$addr" && -n "$prefix" && -n "$mac" ]] || die "$WORKER has no address on $UPLINK_NET"
    log "uplink $ifname on $WORKER: $addr/$prefix $mac"

    # Preloaded so the node does not pull it (best effort: the node can still pull it).
    docker pull -q "$BUSYBOX_IMAGE" >/dev/null
    kind load docker-image "$BUSYBOX_IMAGE" --name "$CLUSTER" >/dev/null 2>&1 ||
        log "warning: kind load of $BUSYBOX_IMAGE failed; the node will pull it"

    apply_portranges "$ifname"
    apply_workloads "$ifname" "$addr" "$prefix" "$mac"
    start_peer
    k -n "$TEST_NS" get portranges

    # what | proto | port | expected answer | how long to keep trying (the guest boots slowly)
    local checks=(
        "pod e2e-web (app=web)|tcp|${WEB_PORTS[0]}|pod|120"
        "VM e2e-vm (app=vm)|udp|${VM_PORTS[0]}|vm|$VM_BOOT_TIMEOUT"
        "node (port in no range)|tcp|$NODE_PORT|node|120"
    )
    local line target proto port expect timeout got result failed=0 rows=()
    for line in "${checks[@]}"; do
        IFS='|' read -r target proto port expect timeout <<<"$line"
        log "probing ${proto^^} $addr:$port, expecting \"$expect\" (up to ${timeout}s)"
        got=$(probe_until "$expect" "$timeout" "$proto" "$addr" "$port")
        if [[ "$got" == "$expect" ]]; then
            result=PASS
        else
            result=FAIL
            failed=1
        fi
        rows+=("$(printf '%-4s %-22s %-26s %-8s %-8s %s' \
            "${proto^^}" "$addr:$port" "$target" "$expect" "${got:-(none)}" "$result")")
    done

    echo
    printf '%-4s %-22s %-26s %-8s %-8s %s\n' PROTO DESTINATION "SHOULD REACH" EXPECTED GOT RESULT
    printf '%s\n' "${rows[@]}"
    echo
    if ((failed)); then
        log "FAILED; state for a look: kubectl --context $CONTEXT get pr,pods,vmi -n $TEST_NS; kubectl --context $CONTEXT -n $RELEASE_NS logs ds/$RELEASE-agent"
        exit 1
    fi
    log "all checks passed"
}

# ---- down ------------------------------------------------------------------------

cmd_down() {
    need_tools docker kind
    docker rm -f "$PEER" >/dev/null 2>&1 || true
    if cluster_exists; then
        log "deleting kind cluster $CLUSTER"
        kind delete cluster --name "$CLUSTER"
    fi
    if docker network inspect "$UPLINK_NET" >/dev/null 2>&1; then
        log "removing Docker network $UPLINK_NET"
        docker network rm "$UPLINK_NET" >/dev/null
    fi
}

case "${1:-}" in
up) cmd_up ;;
test) cmd_test ;;
down) cmd_down ;;
-h | --help | help)
    usage
    ;;
*)
    usage
    exit 2
    ;;
esac
