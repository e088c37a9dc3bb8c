// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
// (The kernel lets only GPL-compatible programs use some helpers; the rest of portiso is Apache-2.0.)
//
// portiso's kernel fast path: XDP programs beside the OVS bridge.
//
// OVS stays the bridge, the slow path and the reference semantics. These programs only take
// the bulk case the flow compiler also handles, straight from device to device:
//   - `xdp_uplink` (on the uplink NIC): a unicast IPv4 TCP/UDP frame to the shared MAC and
//     address whose destination port lies in a sandbox's range goes to that sandbox's
//     host-side interface;
//   - `xdp_sandbox` (on each sandbox's host-side interface): a TCP/UDP frame that passes the
//     egress checks (shared MAC and address, a source port the sandbox owns) goes to the uplink.
// Everything else - ARP, ICMP, IP fragments, IP options, VLAN tags, ports in no range, the
// host's traffic, whatever fails a check - is XDP_PASS: it continues to OVS exactly as without
// the fast path, and OVS (which holds the same rules as flows) decides, drops and counts it.
//
// XDP runs before packet sockets see the frame, so OVS (whose `system` ports read through
// AF_PACKET) never sees what the fast path took: no frame is delivered twice.
//
// The maps are filled by the agent from the same desired state it compiles into OpenFlow
// (operator/src/fastpath/maps.rs); their layout is shared with that file.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define LIBBPF_PIN_BY_NAME 1

// An uplink (key: its ifindex) or a sandbox's host-side interface (key: its ifindex): the
// shared address (network order) and MAC, and for a sandbox the uplink it sends to.
struct endpoint {
	__u32 ip;
	__u8 mac[6];
	__u16 pad;
	__u32 uplink_ifindex;
	__u32 pad2;
};

// LPM key: (interface, protocol, port). The port's high bits are the prefix, so one entry
// is one value/mask block of a range, exactly like the flow compiler's `tp_dst=V/M`.
struct port_key {
	__u32 prefixlen; // 32 (ifindex) + 8 (protocol) + the port bits that are fixed
	__u32 ifindex;   // network order, so that it is a prefix of the key
	__u8 proto;
	__u8 port[2]; // network order
	__u8 pad;
};

// Per interface, per CPU. Slow-path reasons say why a frame was left to OVS.
struct counters {
	__u64 fast_packets;
	__u64 fast_bytes;
	__u64 slow_not_ipv4_tcp_udp; // ARP, ICMP, IPv6, VLAN, other protocols
	__u64 slow_fragment_or_options;
	__u64 slow_not_shared_address; // wrong MAC or IP (the egress spoof checks)
	__u64 slow_port_not_owned;     // inbound: port in no range; egress: not the sandbox's port
	__u64 slow_redirect_failed;    // target not in the devmap (being attached or removed)
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} portiso_endpoints SEC(".maps");

// Inbound: (uplink, protocol, destination port) -> sandbox host-side ifindex.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__type(key, struct port_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} portiso_inbound SEC(".maps");

// Egress: (sandbox host-side interface, protocol, source port) -> 1 when it owns it.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__type(key, struct port_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} portiso_egress SEC(".maps");

// The interfaces the fast path may send to. A target missing here (a sandbox being attached
// or removed) makes bpf_redirect_map fall back to XDP_PASS: OVS handles the frame.
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} portiso_targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} portiso_counters SEC(".maps");

#define COUNT(c, field) \
	do { \
		if (c) \
			(c)->field++; \
	} while (0)

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

// The parsed headers of a frame the fast path may take.
struct l4 {
	struct ethhdr *eth;
	struct iphdr *ip;
	__u16 sport; // network order
	__u16 dport; // network order
};

// 0: a plain IPv4 TCP/UDP frame, parsed into `p`. Otherwise the counter to bump.
enum verdict { PARSED, NOT_TCP_UDP, FRAGMENT_OR_OPTIONS };

static __always_inline enum verdict parse(struct xdp_md *ctx, struct l4 *p)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return NOT_TCP_UDP;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->version != 4)
		return NOT_TCP_UDP;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return NOT_TCP_UDP;
	// Options and fragments are rare and easy to get wrong: OVS handles them.
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return FRAGMENT_OR_OPTIONS;
	// TCP and UDP both start with the two ports.
	__u16 *ports = (void *)(ip + 1);
	if ((void *)(ports + 2) > end)
		return FRAGMENT_OR_OPTIONS;
	p->eth = eth;
	p->ip = ip;
	p->sport = ports[0];
	p->dport = ports[1];
	return PARSED;
}

static __always_inline void count_slow(struct counters *c, enum verdict v)
{
	if (v == NOT_TCP_UDP)
		COUNT(c, slow_not_ipv4_tcp_udp);
	else
		COUNT(c, slow_fragment_or_options);
}

static __always_inline int redirect(struct xdp_md *ctx, struct counters *c, __u32 target)
{
	// XDP_PASS when the target is not (or no longer) in the devmap.
	int action = bpf_redirect_map(&portiso_targets, target, XDP_PASS);
	if (action == XDP_REDIRECT) {
		COUNT(c, fast_packets);
		if (c)
			c->fast_bytes += ctx->data_end - ctx->data;
	} else {
		COUNT(c, slow_redirect_failed);
	}
	return action;
}

// Both directions share one shape; `inbound` picks which addresses and port are checked,
// which map says who owns the port, and where the frame goes.
static __always_inline int steer(struct xdp_md *ctx, const int inbound)
{
	__u32 ifindex = ctx->ingress_ifindex;
	struct endpoint *me = bpf_map_lookup_elem(&portiso_endpoints, &ifindex);
	struct counters *c = bpf_map_lookup_elem(&portiso_counters, &ifindex);
	if (!me)
		return XDP_PASS;
	struct l4 p;
	enum verdict v = parse(ctx, &p);
	if (v != PARSED) {
		count_slow(c, v);
		return XDP_PASS;
	}
	// Inbound: to the shared MAC and address. Egress: the same checks as the egress flows,
	// from the shared MAC and address.
	const __u8 *mac = inbound ? p.eth->h_dest : p.eth->h_source;
	__u32 ip = inbound ? p.ip->daddr : p.ip->saddr;
	if (!mac_eq(mac, me->mac) || ip != me->ip) {
		COUNT(c, slow_not_shared_address);
		return XDP_PASS;
	}
	// Inbound: the destination port says which sandbox. Egress: the source port must be one
	// the sandbox owns.
	struct port_key key = {
		.prefixlen = 32 + 8 + 16,
		.ifindex = bpf_htonl(ifindex),
		.proto = p.ip->protocol,
	};
	__u16 port = inbound ? p.dport : p.sport;
	__builtin_memcpy(key.port, &port, 2);
	__u32 *owner = bpf_map_lookup_elem(inbound ? (void *)&portiso_inbound : (void *)&portiso_egress, &key);
	if (!owner) {
		COUNT(c, slow_port_not_owned);
		return XDP_PASS;
	}
	return redirect(ctx, c, inbound ? *owner : me->uplink_ifindex);
}

SEC("xdp")
int xdp_uplink(struct xdp_md *ctx)
{
	return steer(ctx, 1);
}

SEC("xdp")
int xdp_sandbox(struct xdp_md *ctx)
{
	return steer(ctx, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
