#!/usr/bin/env bash
# The `test` step of e2e/local-cluster.sh (sourced by it; uses its functions and names).
# Every check sends real packets from the outside peer (namespace lc-out) to the node's
# shared addresses and prints one line; the step fails if any check fails.
# shellcheck disable=SC2154 # names come from local-cluster.sh

RELEASE=portiso
RELEASE_NS=portiso-system
FAILED=0
CHECKS=0

check() {
    local what=$1 got=$2 want=$3
    CHECKS=$((CHECKS + 1))
    if [[ "$got" == "$want" ]]; then
        printf '  ok    %-62s %s\n' "$what" "$got" >&2
    else
        printf '  FAIL  %-62s got %q, want %q\n' "$what" "$got" "$want" >&2
        FAILED=$((FAILED + 1))
    fi
}

# probe ADDR PORT [WAIT]: from the outside peer, a TCP connection; prints what the server
# said within WAIT seconds (default 3), "refused" (RST), or "timeout".
probe() {
    local out rc=0 wait=${3:-3}
    out=$(in_out timeout $((wait + 2)) bash -c "exec 3<>/dev/tcp/$1/$2 && timeout $wait cat <&3" 2>&1) || rc=$?
    if [[ "$out" == *"Connection refused"* ]]; then
        echo refused
    elif ((rc == 124)); then
        echo timeout
    else
        printf '%s' "${out%%$'\n'*}"
    fi
}

# probe_until ADDR PORT WANT SECONDS: repeat probe until it answers WANT (bounded).
probe_until() {
    local i got=""
    for ((i = 0; i < $4; i++)); do
        got=$(probe "$1" "$2")
        [[ "$got" == "$3" ]] && break
        sleep 1
    done
    echo "$got"
}

ovs_vsctl() { in_node ovs-vsctl --db "unix:$NODE/ovs/run/db.sock" --timeout 10 "$@"; }
ovs_flows() { in_node ovs-ofctl dump-flows "unix:$NODE/ovs/run/$1.mgmt" --no-stats; }

apply() { kc apply -f - >/dev/null; }

portrange() { # NAME APP START END UPLINK...
    local name=$1 app=$2 start=$3 end=$4 uplinks
    shift 4
    uplinks=$(printf '"%s",' "$@")
    cat <<EOF
apiVersion: portiso.io/v1alpha1
kind: PortRange
metadata: {name: $name, namespace: default}
spec:
  selector: {matchLabels: {app: $app}}
  ports: [{protocol: TCP, start: $start, end: $end}]
  uplinks: [${uplinks%,}]
EOF
}

# web_pod NAME NETWORKS PORT...: busybox answering NAME on each PORT (all addresses).
web_pod() {
    local name=$1 nets=$2 cmd="" p
    shift 2
    for p in "$@"; do cmd+="nc -ll -p $p -e echo $name & "; done
    cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $name
  namespace: default
  labels: {app: $name}
  annotations: {k8s.v1.cni.cncf.io/networks: "$nets"}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: $IMG_BUSYBOX
    imagePullPolicy: Never
    command: [sh, -c, "${cmd}wait"]
EOF
}

helm_install() {
    log "test 1: helm install $RELEASE (image $IMG_PORTISO, pullPolicy Never)"
    kc apply -f - >/dev/null <<'EOF'
# Multus's CRD (Multus itself is replaced by local-cluster-multus.sh; see there).
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: network-attachment-definitions.k8s.cni.cncf.io
spec:
  group: k8s.cni.cncf.io
  scope: Namespaced
  names:
    plural: network-attachment-definitions
    singular: network-attachment-definition
    kind: NetworkAttachmentDefinition
    shortNames: [net-attach-def]
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              config: {type: string}
EOF
    local s=$SECONDS
    # The node's specifics: two uplinks, no kernel OVS module here (netdev), OVS from the
    # chart's own container, and the node's private paths.
    helm_ install "$RELEASE" "$REPO/charts/portiso" --namespace "$RELEASE_NS" --create-namespace \
        --set image.repository="${IMG_PORTISO%:*}" --set image.tag="${IMG_PORTISO##*:}" \
        --set image.pullPolicy=Never \
        --set "agent.uplinks[0].name=$UP1" --set "agent.uplinks[1].name=$UP2" \
        --set agent.datapath=netdev \
        --set ovs.deploy=true --set ovs.runDir="$NODE/ovs/run" --set ovs.dbDir="$NODE/ovs/db" \
        --set agent.socketDir="$NODE/agent" \
        --set cni.binDir="$NODE/cni/bin" --set cni.confDir="$NODE/cni/net.d" \
        --set operator.replicas=1 \
        --set "networkAttachmentDefinitions[0].name=portiso-$UP1" \
        --set "networkAttachmentDefinitions[0].namespace=default" \
        --set "networkAttachmentDefinitions[0].uplink=$UP1" \
        --set "networkAttachmentDefinitions[1].name=portiso-$UP2" \
        --set "networkAttachmentDefinitions[1].namespace=default" \
        --set "networkAttachmentDefinitions[1].uplink=$UP2" \
        --wait --timeout 180s >&2 || {
        kc get pods -A -o wide >&2 || true
        kc describe pods -n "$RELEASE_NS" >&2 || true
        return 1
    }
    log "helm install: Ready in $((SECONDS - s))s"
    kc get pods -n "$RELEASE_NS" -o wide >&2
    # The agent publishes what it programmed by patching its Node (an annotation the operator
    # sums into each PortRange's Programmed condition): the chart must let it.
    local sa="system:serviceaccount:$RELEASE_NS:$RELEASE-agent"
    check "the chart lets the agent patch its Node (Programmed reports)" \
        "$(kc auth can-i patch nodes --as "$sa" 2>/dev/null || true)" yes
    # On SIGTERM the agent reads its DaemonSet to tell helm uninstall from a restart.
    check "the chart lets the agent read its own DaemonSet" \
        "$(kc auth can-i get "daemonsets.apps/$RELEASE-agent" -n "$RELEASE_NS" --as "$sa" 2>/dev/null || true)" yes
    check "operator Deployment ready" \
        "$(kc get deploy -n "$RELEASE_NS" "$RELEASE-operator" -o jsonpath='{.status.readyReplicas}')" 1
    check "agent DaemonSet ready" \
        "$(kc get ds -n "$RELEASE_NS" "$RELEASE-agent" -o jsonpath='{.status.numberReady}')" 1
}

wait_pr_programmed() { # NAME
    local i st
    for ((i = 0; i < 60; i++)); do
        st=$(kc get pr "$1" -o jsonpath='{.status.conditions[?(@.type=="Accepted")].status}/{.status.conditions[?(@.type=="Programmed")].status}' 2>/dev/null || true)
        [[ "$st" == True/True ]] && break
        sleep 1
    done
    echo "$st"
}

cmd_test() {
    local s=$SECONDS
    FAILED=0
    CHECKS=0
    helm_install

    log "test 2: PortRanges and pods"
    {
        portrange lc-web1 lc-web1 10000 10099 "$UP1"
        echo ---
        portrange lc-web2 lc-web2 10100 10199 "$UP1"
        echo ---
        portrange lc-multi lc-multi 10200 10299 "$UP1" "$UP2"
    } | apply
    {
        web_pod lc-web1 "portiso-$UP1" 10000
        echo ---
        web_pod lc-web2 "portiso-$UP1" 10100 10300
        echo ---
        web_pod lc-multi "portiso-$UP1,portiso-$UP2" 10200
        echo ---
        cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: lc-node-echo, namespace: default}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: $IMG_BUSYBOX
    imagePullPolicy: Never
    command: [sh, -c, "nc -ll -p 8080 -e echo lc-node & wait"]
EOF
    } | apply
    kc wait --for=condition=Ready pod/lc-web1 pod/lc-web2 pod/lc-multi pod/lc-node-echo --timeout 120s >&2 || {
        kc describe pods -n default >&2
        return 1
    }
    local pr
    for pr in lc-web1 lc-web2 lc-multi; do
        check "PortRange $pr Accepted/Programmed" "$(wait_pr_programmed "$pr")" True/True
    done
    kc get pr -A >&2

    check "$UP1_ADDR:10000 (lc-web1's range)" "$(probe_until "$UP1_ADDR" 10000 lc-web1 20)" lc-web1
    check "$UP1_ADDR:10100 (lc-web2's range)" "$(probe_until "$UP1_ADDR" 10100 lc-web2 20)" lc-web2
    check "$UP1_ADDR:10200 (lc-multi, uplink 1)" "$(probe_until "$UP1_ADDR" 10200 lc-multi 20)" lc-multi
    check "$UP2_ADDR:10200 (lc-multi, uplink 2)" "$(probe_until "$UP2_ADDR" 10200 lc-multi 20)" lc-multi
    check "$UP2_ADDR:10000 (lc-web1 is not on uplink 2: node)" "$(probe "$UP2_ADDR" 10000)" refused
    check "$UP1_ADDR:10050 (lc-web1's range, nothing listens)" "$(probe "$UP1_ADDR" 10050)" refused
    check "$UP1_ADDR:8080 (the node's own port)" "$(probe "$UP1_ADDR" 8080)" lc-node
    check "$UP2_ADDR:8080 (the node's own port)" "$(probe "$UP2_ADDR" 8080)" lc-node
    check "$UP1_ADDR:10500 (in no range: the node refuses)" "$(probe "$UP1_ADDR" 10500)" refused
    check "$UP1_ADDR:10300 (not yet lc-web2's)" "$(probe "$UP1_ADDR" 10300)" refused

    if [[ "${PORTISO_LC_SKIP_VM:-}" == 1 ]]; then
        log "test 3: VM sandbox skipped (PORTISO_LC_SKIP_VM=1)"
    elif [[ ! -c /dev/kvm ]]; then
        log "test 3: VM sandbox SKIPPED: no /dev/kvm"
    else
        test_vm
    fi

    log "test 4: edits, deletions, overlaps"
    local uid_before restarts
    uid_before=$(kc get pod lc-web2 -o jsonpath='{.metadata.uid}/{.status.containerStatuses[0].containerID}')
    kc patch pr lc-web2 --type merge -p '{"spec":{"ports":[{"protocol":"TCP","start":10300,"end":10399}]}}' >/dev/null
    check "after the edit: $UP1_ADDR:10300 reaches lc-web2" "$(probe_until "$UP1_ADDR" 10300 lc-web2 30)" lc-web2
    check "after the edit: $UP1_ADDR:10100 is the node's (refused)" "$(probe_until "$UP1_ADDR" 10100 refused 30)" refused
    restarts=$(kc get pod lc-web2 -o jsonpath='{.metadata.uid}/{.status.containerStatuses[0].containerID}')
    check "lc-web2 not restarted (same pod and container)" "$restarts" "$uid_before"

    local out
    out=$(portrange lc-overlap lc-web2 10050 10060 "$UP1" | kc apply -f - 2>&1) && out="accepted: $out"
    log "the webhook said: $out"
    check "overlapping PortRange refused, naming lc-web1" \
        "$([[ "$out" == *denied* && "$out" == *lc-web1* ]] && echo refused || echo "$out")" refused

    local ports_before ports_after gone ofport flows
    ports_before=$(ovs_vsctl list-ports "br-$UP1" | sort)
    declare -A ofports=()
    local p
    for p in $ports_before; do ofports[$p]=$(ovs_vsctl get Interface "$p" ofport); done
    kc delete pod lc-web1 --wait --timeout 60s >/dev/null
    local i
    for ((i = 0; i < 30; i++)); do
        ports_after=$(ovs_vsctl list-ports "br-$UP1" | sort)
        [[ $(wc -w <<<"$ports_after") -lt $(wc -w <<<"$ports_before") ]] && break
        sleep 1
    done
    gone=$(comm -23 <(tr ' ' '\n' <<<"$ports_before") <(tr ' ' '\n' <<<"$ports_after") | xargs)
    check "deleting pod lc-web1 removes one OVS port" "$(wc -w <<<"$gone" | tr -d ' ')" 1
    if [[ -n "$gone" ]]; then
        ofport=${ofports[$gone]}
        flows=$(ovs_flows "br-$UP1" | grep -cE "(in_port=|output:)$ofport([,; ]|$)" || true)
        check "no flow left for its OVS port $gone (ofport $ofport)" "$flows" 0
    fi
    check "$UP1_ADDR:10000 after lc-web1 is gone (refused)" "$(probe_until "$UP1_ADDR" 10000 refused 20)" refused
    check "$UP1_ADDR:10200 still reaches lc-multi" "$(probe "$UP1_ADDR" 10200)" lc-multi

    log "test 4b: an agent restart (rollout restart) keeps the bridges, flows and traffic"
    local old_pod restart_pid
    old_pod=$(kc get pods -n "$RELEASE_NS" -l app.kubernetes.io/component=agent -o name | head -n1)
    kc logs -f -n "$RELEASE_NS" "$old_pod" -c agent --tail 1 >"$LC/log/agent-restart.log" 2>&1 &
    restart_pid=$!
    sleep 1
    kc rollout restart -n "$RELEASE_NS" "ds/$RELEASE-agent" >/dev/null
    # The old pod gone (it waited for nothing: its agent kept the node), its successor Ready.
    kc wait -n "$RELEASE_NS" --for=delete "$old_pod" --timeout 90s >/dev/null 2>&1 || true
    kc rollout status -n "$RELEASE_NS" "ds/$RELEASE-agent" --timeout 120s >/dev/null 2>&1 || true
    kc wait -n "$RELEASE_NS" --for=condition=Ready pod -l app.kubernetes.io/component=agent --timeout 120s >/dev/null 2>&1 || true
    # Ready shows early (the socket file of the old agent is still there): wait for the new
    # agent's own word that it serves.
    local new_pod i
    for ((i = 0; i < 60; i++)); do
        new_pod=$(kc get pods -n "$RELEASE_NS" -l app.kubernetes.io/component=agent -o name | grep -v "^$old_pod$" | head -n1)
        [[ -n "$new_pod" ]] && kc logs -n "$RELEASE_NS" "$new_pod" -c agent 2>/dev/null | grep -q 'agent ready' && break
        sleep 1
    done
    kill "$restart_pid" 2>/dev/null || true
    wait "$restart_pid" 2>/dev/null || true
    grep -E 'SIGTERM' "$LC/log/agent-restart.log" | sed 's/^/    agent: /' >&2 || true
    check "a restarted agent keeps the node (SIGTERM, its DaemonSet still there)" \
        "$(grep -c 'SIGTERM uninstall=false' "$LC/log/agent-restart.log" | tr -d ' ')" 1
    # Both containers' readiness probes may report a few seconds after the agent's own word.
    local ready_new=0
    for ((i = 0; i < 30; i++)); do
        ready_new=$(kc get pods -n "$RELEASE_NS" -l app.kubernetes.io/component=agent \
            -o jsonpath='{range .items[*]}{.metadata.name}={.status.containerStatuses[*].ready}{"\n"}{end}' |
            grep -v "^${old_pod#pod/}=" | grep -c '=true true$' | tr -d ' ')
        [[ "$ready_new" == 1 ]] && break
        sleep 1
    done
    check "a new agent pod, Ready, after the restart" "$ready_new" 1
    check "br-$UP1 kept the shared address across the restart" \
        "$(ip -n "$NODE_NS" -4 -o addr show dev "br-$UP1" | awk '{print $4}')" "$UP1_ADDR/$UP1_LEN"
    check "$UP1_ADDR:10200 still reaches lc-multi after the agent restart" \
        "$(probe_until "$UP1_ADDR" 10200 lc-multi 20)" lc-multi

    log "test 4c: the agent DaemonSet deleted without the uninstall mark and applied again keeps the node"
    # kubectl delete + apply (as kubectl replace --force, or a rename, would): no pre-delete hook
    # marked the DaemonSet, so its agent keeps the node as on any restart.
    local ds_json=$LC/agent-ds.json del_pod del_pid
    kc get ds -n "$RELEASE_NS" "$RELEASE-agent" -o json |
        jq 'del(.status, .metadata.uid, .metadata.resourceVersion, .metadata.creationTimestamp,
                .metadata.generation, .metadata.managedFields, .metadata.annotations["deprecated.daemonset.template.generation"])' >"$ds_json"
    del_pod=$(kc get pods -n "$RELEASE_NS" -l app.kubernetes.io/component=agent -o name | head -n1)
    kc logs -f -n "$RELEASE_NS" "$del_pod" -c agent --tail 1 >"$LC/log/agent-ds-delete.log" 2>&1 &
    del_pid=$!
    sleep 1
    kc delete ds -n "$RELEASE_NS" "$RELEASE-agent" --wait --timeout 60s >/dev/null
    kc wait -n "$RELEASE_NS" --for=delete "$del_pod" --timeout 90s >/dev/null 2>&1 || true
    kill "$del_pid" 2>/dev/null || true
    wait "$del_pid" 2>/dev/null || true
    grep -E 'SIGTERM' "$LC/log/agent-ds-delete.log" | sed 's/^/    agent: /' >&2 || true
    check "an agent whose DaemonSet is deleted unmarked keeps the node" \
        "$(grep -c 'SIGTERM uninstall=false' "$LC/log/agent-ds-delete.log" | tr -d ' ')" 1
    check "br-$UP1 kept the shared address while the DaemonSet was gone" \
        "$(ip -n "$NODE_NS" -4 -o addr show dev "br-$UP1" | awk '{print $4}')" "$UP1_ADDR/$UP1_LEN"
    kc create -f "$ds_json" >/dev/null
    kc rollout status -n "$RELEASE_NS" "ds/$RELEASE-agent" --timeout 120s >/dev/null 2>&1 || true
    for ((i = 0; i < 60; i++)); do
        new_pod=$(kc get pods -n "$RELEASE_NS" -l app.kubernetes.io/component=agent -o name | grep -v "^$del_pod$" | head -n1)
        [[ -n "$new_pod" ]] && kc logs -n "$RELEASE_NS" "$new_pod" -c agent 2>/dev/null | grep -q 'agent ready' && break
        sleep 1
    done
    check "a new agent pod serves after the DaemonSet is applied again" \
        "$(kc logs -n "$RELEASE_NS" "$new_pod" -c agent 2>/dev/null | grep -c 'agent ready' | tr -d ' ')" 1
    check "$UP1_ADDR:10200 reaches lc-multi after the DaemonSet is applied again" \
        "$(probe_until "$UP1_ADDR" 10200 lc-multi 30)" lc-multi
    check "$UP2_ADDR:10200 reaches lc-multi after the DaemonSet is applied again" \
        "$(probe_until "$UP2_ADDR" 10200 lc-multi 30)" lc-multi

    log "test 5: helm uninstall"
    kc delete pod lc-web2 lc-multi lc-node-echo lc-vm --ignore-not-found --wait --timeout 60s >/dev/null
    kc delete pr --all --wait --timeout 60s >/dev/null
    # The agent's log through its termination: it says what it did on SIGTERM.
    local agent_pod
    agent_pod=$(kc get pods -n "$RELEASE_NS" -l app.kubernetes.io/component=agent -o name | head -n1)
    kc logs -f -n "$RELEASE_NS" "$agent_pod" -c agent --tail 5 >"$LC/log/agent-uninstall.log" 2>&1 &
    local logs_pid=$!
    kc logs -f -n "$RELEASE_NS" "$agent_pod" -c openvswitch --tail 1 >"$LC/log/ovs-uninstall.log" 2>&1 &
    local ovs_logs_pid=$!
    sleep 1
    helm_ uninstall "$RELEASE" --namespace "$RELEASE_NS" --wait --timeout 120s >&2
    for ((i = 0; i < 60; i++)); do
        [[ -z "$(kc get pods -n "$RELEASE_NS" -o name 2>/dev/null)" ]] && break
        sleep 1
    done
    check "no portiso pod left" "$(kc get pods -n "$RELEASE_NS" -o name | wc -l | tr -d ' ')" 0
    kill "$logs_pid" "$ovs_logs_pid" 2>/dev/null || true
    wait "$logs_pid" "$ovs_logs_pid" 2>/dev/null || true
    grep -E 'SIGTERM|uninstall' "$LC/log/agent-uninstall.log" | sed 's/^/    agent: /' | tail -n 12 >&2 || true
    grep -E 'openvswitch:' "$LC/log/ovs-uninstall.log" | sed 's/^/    ovs:   /' >&2 || true
    # The chart's pre-delete hook Job (portiso uninstall-mark) marked the DaemonSet first, and
    # the agent's watch saw it: only then does its SIGTERM give the node back.
    check "the agent saw the uninstall mark of the pre-delete hook" \
        "$(grep -c "the agent's DaemonSet is marked for uninstall" "$LC/log/agent-uninstall.log" | tr -d ' ')" 1
    check "the agent gave the node back on SIGTERM (helm uninstall)" \
        "$(grep -c 'uninstall: done, nothing of portiso left' "$LC/log/agent-uninstall.log" | tr -d ' ')" 1
    grep -q 'uninstall: done' "$LC/log/agent-uninstall.log" ||
        sed 's/^/    agent log: /' "$LC/log/agent-uninstall.log" | tail -n 30 >&2
    check "no OVS daemon left" "$(node_ovs_procs)" 0
    check "no sandbox veth left in $NODE_NS" \
        "$(ip -n "$NODE_NS" -o link show | awk -F': ' '{print $2}' |
            grep -vcE "^(lo|$UP1|$UP2|$POD_BRIDGE|br-$UP1|br-$UP2|ovs-netdev)(@|$)" || true)" 0
    # The agent's uninstall cleanup (on SIGTERM, its DaemonSet gone) deleted the bridges while
    # the OVS container waited for it: no internal port (tap on the userspace datapath) is
    # left holding an uplink's address or the default route.
    check "no OVS bridge device left in $NODE_NS after helm uninstall" \
        "$(ip -n "$NODE_NS" -o link show | grep -cE ' (br-lc-u[12]|ovs-netdev)[:@]' || true)" 0
    # ovs.deploy keeps the database on the node (ovs.dbDir) so that bridges survive restarts of
    # the OVS container; the uninstall deleted them from it.
    local db_bridges
    db_bridges=$(in_node ovsdb-tool query "$NODE/ovs/db/conf.db" \
        '["Open_vSwitch",{"op":"select","table":"Bridge","where":[],"columns":["name"]}]' 2>/dev/null |
        jq -r '[.[0].rows[].name] | join(",")' 2>/dev/null || true)
    check "no bridge left in the OVS database (ovs.dbDir) after helm uninstall" "$db_bridges" ""
    check "$UP1 has its address back after helm uninstall" \
        "$(ip -n "$NODE_NS" -4 -o addr show dev "$UP1" | awk '{print $4}')" "$UP1_ADDR/$UP1_LEN"
    check "$UP2 has its address back after helm uninstall" \
        "$(ip -n "$NODE_NS" -4 -o addr show dev "$UP2" | awk '{print $4}')" "$UP2_ADDR/$UP2_LEN"
    check "the default route is back on $UP1 after helm uninstall" \
        "$(ip -n "$NODE_NS" -4 route show default | xargs)" "default via $UP1_PEER_ADDR dev $UP1"
    check "no portiso nftables table left in $NODE_NS" \
        "$(ip netns exec "$NODE_NS" nft list tables netdev 2>/dev/null | grep -c portiso || true)" 0
    check "no fast-path pin left (bpffs)" \
        "$(in_node bash -c 'ls /sys/fs/bpf/portiso 2>/dev/null | wc -l' | tr -d ' ')" 0
    # The node answers on its own address again, through the NIC: nothing of portiso is in the way.
    check "$UP1_ADDR:10500 after helm uninstall (the node refuses, through $UP1)" "$(probe "$UP1_ADDR" 10500)" refused

    log "test: $CHECKS checks, $FAILED failed, in $((SECONDS - s))s"
    ((FAILED == 0))
}

# OVS daemons among the node's processes (the agent pod's container); says so (and the check
# fails) when it cannot look.
node_ovs_procs() {
    local n=0 p c=/sys/fs/cgroup/pids/$CGROUP_ROOT
    if [[ ! -d "$c" ]]; then
        echo "cannot look: no $c"
        return
    fi
    while read -r p; do
        case "$(cat "/proc/$p/comm" 2>/dev/null)" in ovs-vswitchd | ovsdb-server) n=$((n + 1)) ;; esac
    done < <(find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null)
    echo "$n"
}

# ---- test 3: a VM sandbox -----------------------------------------------------------------
test_vm() {
    log "test 3: a KVM guest in a pod, bridged like KubeVirt's bridge binding"
    local guest accel="kvm"
    guest=$(bash "$HERE/guest-image.sh" | tail -n1)
    # /dev/kvm through PVM emulates non-PVM guests far slower than TCG (see operator/tests/vm.rs).
    if [[ ! -d /sys/module/kvm_intel && ! -d /sys/module/kvm_amd && -d /sys/module/kvm_pvm ]]; then
        accel="tcg"
        log "test 3: /dev/kvm is PVM (kvm_pvm), which runs a Debian kernel far slower than TCG: qemu uses TCG"
    fi
    portrange lc-vm lc-vm 10400 10499 "$UP1" |
        sed 's/ports: \[{protocol: TCP, start: 10400, end: 10499}\]/ports: [{protocol: TCP, start: 10400, end: 10499}, {protocol: UDP, start: 10400, end: 10499}]/' |
        apply
    kc create configmap lc-vm-launcher --from-file=launch.sh=/dev/stdin --dry-run=client -o yaml <<'EOF' | apply
#!/bin/bash
# What virt-launcher does for a bridge-bound interface: net1 (portiso's, with the node's shared
# address and MAC) loses both and becomes a bridge port beside the VM's tap; a DHCP server on
# the bridge hands the guest (which gets net1's MAC) the shared address and route.
set -euo pipefail
IP=$(ip -4 -o addr show dev net1 | awk '{print $4}')
MAC=$(cat /sys/class/net/net1/address)
GW=$(ip -4 route show dev net1 default | awk '{print $3}' | head -n1)
MASK=$(ipcalc_mask() { local l=$1 m=$((0xffffffff ^ ((1 << (32 - $1)) - 1))); echo "$((m >> 24 & 255)).$((m >> 16 & 255)).$((m >> 8 & 255)).$((m & 255))"; }; ipcalc_mask "${IP#*/}")
sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip addr flush dev net1
ip link set net1 down
ip link set net1 address 02:00:00:$(printf '%02x:%02x:%02x' $((RANDOM % 256)) $((RANDOM % 256)) $((RANDOM % 256)))
ip link add k6t-net1 type bridge
ip link set net1 master k6t-net1
ip tuntap add dev tap0 mode tap
ip link set tap0 master k6t-net1
ip addr add 169.254.75.10/32 dev k6t-net1
for d in net1 tap0 k6t-net1; do ethtool -K "$d" tx off >/dev/null; ip link set "$d" up; done
mkdir -p /run/vm
cat >/run/vm/udhcpd.conf <<CONF
interface k6t-net1
start ${IP%/*}
end ${IP%/*}
max_leases 1
static_lease $MAC ${IP%/*}
lease_file /run/vm/leases
pidfile /run/vm/udhcpd.pid
auto_time 0
option subnet $MASK
option router ${GW:-${PEER}}
option lease 86400
CONF
: >/run/vm/leases
busybox udhcpd -f /run/vm/udhcpd.conf &
exec qemu-system-x86_64 -accel "$ACCEL" -m 256 -smp 1 -nodefaults -display none -monitor none -no-reboot \
  -serial stdio -kernel /guest/vmlinuz -initrd /guest/initramfs.gz \
  -append "console=ttyS0 quiet panic=-1 ipv6.disable=1 portiso_ports=10400-10499 portiso_tcp=10400 portiso_udp=10401" \
  -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
  -device "virtio-net-pci,netdev=n0,mac=$MAC,csum=off,guest_csum=off"
EOF
    kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: lc-vm
  namespace: default
  labels: {app: lc-vm}
  annotations: {k8s.v1.cni.cncf.io/networks: "portiso-$UP1"}
spec:
  terminationGracePeriodSeconds: 1
  # The launcher rewires the pod's interface once; a restarted container would find it done.
  restartPolicy: Never
  containers:
  - name: compute
    image: $IMG_QEMU
    imagePullPolicy: Never
    command: [bash, /launcher/launch.sh]
    env:
    - {name: ACCEL, value: "$accel"}
    - {name: PEER, value: "$UP1_PEER_ADDR"}
    # /dev/kvm, /dev/net/tun, a bridge and a tap in the pod's own network namespace.
    securityContext: {privileged: true}
    volumeMounts:
    - {name: launcher, mountPath: /launcher}
    - {name: guest, mountPath: /guest, readOnly: true}
  volumes:
  - name: launcher
    configMap: {name: lc-vm-launcher}
  - name: guest
    hostPath: {path: "$guest", type: Directory}
EOF
    kc wait --for=condition=Ready pod/lc-vm --timeout 60s >/dev/null || true
    check "PortRange lc-vm Accepted/Programmed" "$(wait_pr_programmed lc-vm)" True/True
    local i
    for ((i = 0; i < 90; i++)); do
        kc logs lc-vm 2>/dev/null | grep -q 'PORTISO-GUEST READY' && break
        [[ "$(kc get pod lc-vm -o jsonpath='{.status.phase}')" == Failed ]] && break
        sleep 2
    done
    local kr
    kr=$(cat "$guest/kernel-release")
    check "guest booted (PORTISO-GUEST READY on its console)" \
        "$(kc logs lc-vm 2>/dev/null | grep -c 'PORTISO-GUEST READY' | tr -d ' ')" 1
    # The guest's server reads until EOF or 5 s, then answers "guest <its kernel release> <what
    # it read>".
    local got=""
    for ((i = 0; i < 10; i++)); do
        got=$(probe "$UP1_ADDR" 10400 8)
        [[ "$got" == "guest $kr"* ]] && break
        sleep 1
    done
    check "$UP1_ADDR:10400 answered by the guest's own kernel" "${got% }" "guest $kr"
    # UDP: the guest echoes "guest <release> <datagram>".
    got=$(in_out timeout 5 bash -c "exec 3<>/dev/udp/$UP1_ADDR/10401; echo ping >&3; timeout 3 dd bs=512 count=1 status=none <&3" 2>&1 || true)
    check "$UP1_ADDR:10401/udp echoed by the guest" "${got%%$'\n'*}" "guest $kr ping"
    check "$UP1_ADDR:10500 (outside lc-vm's range: node)" "$(probe "$UP1_ADDR" 10500)" refused
    kc logs lc-vm 2>/dev/null | grep PORTISO-GUEST | tail -n 5 >&2 || true
}
