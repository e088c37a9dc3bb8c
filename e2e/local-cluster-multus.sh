#!/usr/bin/env bash
# A stand-in for Multus's thin plugin, for e2e/local-cluster.sh only.
#
# The Go module proxy does not serve github.com/k8snetworkplumbingwg/multus-cni (nor its
# gopkg.in path) and no Debian package ships Multus, so the local cluster cannot build the real
# one. This CNI meta-plugin does the part of Multus that portiso relies on, the same way:
#
#   - ADD: the cluster's primary network (its `delegate`, here bridge + host-local) on eth0;
#     then, for each network named in the pod's `k8s.v1.cni.cncf.io/networks` annotation
#     ("name", "ns/name", "name@ifname", comma-separated, or Multus's JSON list), the
#     NetworkAttachmentDefinition's spec.config on net1, net2, ... with the runtime's CNI_ARGS
#     (K8S_POD_NAMESPACE, K8S_POD_NAME, ...) passed on. The primary's result is returned.
#   - DEL: the secondaries in reverse order (from what ADD cached), then the primary; errors of
#     the secondaries are ignored (as Multus does), so a pod can always be deleted.
#   - CHECK: passes; VERSION: the versions the delegates speak.
#
# Netconf (written by local-cluster.sh):
#   {"cniVersion": "1.0.0", "name": "...", "type": "lc-multus",
#    "kubectl": "/path/kubectl", "kubeconfig": "/path/kubeconfig", "cacheDir": "/path",
#    "delegate": {<the primary plugin's config, without name/cniVersion>}}
# Needs bash and jq on the node.
set -euo pipefail

CONF=$(cat)

fail() {
    jq -cn --arg msg "$1" --arg ver "$(jq -r '.cniVersion // "1.0.0"' <<<"$CONF")" \
        '{cniVersion: $ver, code: 999, msg: ("lc-multus: " + $msg)}'
    exit 1
}

case "${CNI_COMMAND:-}" in
VERSION)
    echo '{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}'
    exit 0
    ;;
CHECK | STATUS | GC)
    exit 0
    ;;
ADD | DEL) ;;
*) fail "unknown CNI_COMMAND '${CNI_COMMAND:-}'" ;;
esac

VERSION=$(jq -r '.cniVersion' <<<"$CONF")
NAME=$(jq -r '.name' <<<"$CONF")
KUBECTL=$(jq -r '.kubectl' <<<"$CONF")
KUBECONFIG_FILE=$(jq -r '.kubeconfig' <<<"$CONF")
CACHE=$(jq -r '.cacheDir' <<<"$CONF")/${CNI_CONTAINERID:?}.json

# find_plugin TYPE: the plugin binary on CNI_PATH.
find_plugin() {
    local d
    local -a dirs
    IFS=: read -r -a dirs <<<"${CNI_PATH:?}"
    for d in "${dirs[@]}"; do
        if [[ -x "$d/$1" ]]; then
            echo "$d/$1"
            return 0
        fi
    done
    return 1
}

# delegate CMD IFNAME CONFIG: run the plugin CONFIG names; print its stdout.
delegate() {
    local plugin
    plugin=$(find_plugin "$(jq -r '.type' <<<"$3")") || fail "plugin $(jq -r '.type' <<<"$3") not found on CNI_PATH"
    CNI_COMMAND=$1 CNI_IFNAME=$2 "$plugin" <<<"$3"
}

cni_arg() {
    local kv
    local -a kvs
    IFS=';' read -r -a kvs <<<"${CNI_ARGS:-}"
    for kv in "${kvs[@]}"; do
        [[ "${kv%%=*}" == "$1" ]] && { echo "${kv#*=}"; return 0; }
    done
    return 0
}

PRIMARY=$(jq -c --arg name "$NAME" --arg ver "$VERSION" '.delegate + {name: $name, cniVersion: $ver}' <<<"$CONF")

if [[ $CNI_COMMAND == DEL ]]; then
    if [[ -f "$CACHE" ]]; then
        # Reverse order: last attached first.
        while IFS=$'\t' read -r ifname conf; do
            delegate DEL "$ifname" "$conf" >/dev/null 2>&1 || true
        done < <(jq -r '.secondaries | reverse | .[] | [.ifname, (.config | tojson)] | @tsv' "$CACHE")
    fi
    delegate DEL "${CNI_IFNAME:-eth0}" "$PRIMARY" >/dev/null
    rm -f "$CACHE"
    exit 0
fi

# ---- ADD ----------------------------------------------------------------------------------
RESULT=$(delegate ADD "${CNI_IFNAME:-eth0}" "$PRIMARY") || {
    printf '%s\n' "$RESULT"
    exit 1
}

POD_NS=$(cni_arg K8S_POD_NAMESPACE)
POD_NAME=$(cni_arg K8S_POD_NAME)
kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" --request-timeout 10s "$@"; }

ANNOTATION=""
if [[ -n "$POD_NS" && -n "$POD_NAME" ]]; then
    # A pod that is gone has no networks; any other error fails ADD (the kubelet retries) rather
    # than giving the pod fewer networks than it asked for.
    if ! ANNOTATION=$(kc get pod -n "$POD_NS" "$POD_NAME" \
        -o jsonpath='{.metadata.annotations.k8s\.v1\.cni\.cncf\.io/networks}' 2>&1); then
        if [[ "$ANNOTATION" == *NotFound* || "$ANNOTATION" == *"not found"* ]]; then
            ANNOTATION=""
        else
            delegate DEL "${CNI_IFNAME:-eth0}" "$PRIMARY" >/dev/null 2>&1 || true
            fail "reading pod $POD_NS/$POD_NAME: $ANNOTATION"
        fi
    fi
fi

# Normalise the annotation to lines "namespace<TAB>name<TAB>ifname".
if [[ -z "$ANNOTATION" ]]; then
    NETS=""
elif [[ "${ANNOTATION#"${ANNOTATION%%[![:space:]]*}"}" == \[* ]]; then
    NETS=$(jq -r --arg ns "$POD_NS" '.[] | [(.namespace // $ns), .name, (.interface // "")] | @tsv' <<<"$ANNOTATION") ||
        fail "bad k8s.v1.cni.cncf.io/networks annotation: $ANNOTATION"
else
    NETS=""
    IFS=',' read -r -a items <<<"$ANNOTATION"
    for item in "${items[@]}"; do
        item=${item//[[:space:]]/}
        [[ -n "$item" ]] || continue
        ifname=""
        if [[ "$item" == *@* ]]; then
            ifname=${item#*@}
            item=${item%@*}
        fi
        ns=$POD_NS
        if [[ "$item" == */* ]]; then
            ns=${item%%/*}
            item=${item#*/}
        fi
        NETS+="$ns"$'\t'"$item"$'\t'"$ifname"$'\n'
    done
fi

SECONDARIES="[]"
undo() {
    while IFS=$'\t' read -r ifname conf; do
        delegate DEL "$ifname" "$conf" >/dev/null 2>&1 || true
    done < <(jq -r 'reverse | .[] | [.ifname, (.config | tojson)] | @tsv' <<<"$SECONDARIES")
    delegate DEL "${CNI_IFNAME:-eth0}" "$PRIMARY" >/dev/null 2>&1 || true
}

i=0
while IFS=$'\t' read -r ns name ifname; do
    [[ -n "$name" ]] || continue
    i=$((i + 1))
    [[ -n "$ifname" ]] || ifname="net$i"
    config=$(kc get network-attachment-definitions.k8s.cni.cncf.io -n "$ns" "$name" \
        -o jsonpath='{.spec.config}' 2>&1) || {
        undo
        fail "NetworkAttachmentDefinition $ns/$name: $config"
    }
    config=$(jq -c '.' <<<"$config") || {
        undo
        fail "NetworkAttachmentDefinition $ns/$name: spec.config is not JSON"
    }
    if ! out=$(delegate ADD "$ifname" "$config"); then
        undo
        printf '%s\n' "$out"
        exit 1
    fi
    SECONDARIES=$(jq -c --arg ifname "$ifname" --argjson config "$config" '. + [{ifname: $ifname, config: $config}]' <<<"$SECONDARIES")
done <<<"$NETS"

mkdir -p "$(dirname "$CACHE")"
jq -cn --argjson s "$SECONDARIES" '{secondaries: $s}' >"$CACHE.tmp"
mv -f "$CACHE.tmp" "$CACHE"
printf '%s\n' "$RESULT"
