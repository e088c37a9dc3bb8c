//! The flow compiler: one bridge's desired state in, its whole OpenFlow table out.
//!
//! The host and every sandbox share one IPv4 address and one MAC. Inbound, the destination
//! port decides who gets a TCP/UDP packet; ARP requests and everything unclaimed go to the
//! host; ARP replies go to everyone (any of them may have asked); echo replies go to the
//! sandbox whose request conntrack remembers; ICMP errors go to the agent, which reads whose
//! packet they quote and passes each on (see `agent::icmp_errors`). Outbound, a sandbox may only send what carries
//! the shared MAC and IP and, for TCP/UDP, a source port it owns — so it can never answer for,
//! or pose as, the host or a neighbour. TCP and UDP never touch conntrack: the port decides,
//! except for UDP fragments. Only a datagram's first fragment carries its ports, and OpenFlow
//! cannot tie the others to it, so every UDP fragment to the shared address or from a sandbox
//! first goes through conntrack (nothing committed): its reassembly drops overlapping, too
//! small and incomplete fragment sets (the kinds crafted to dodge a port match) and releases a
//! complete datagram's fragments in order. The bridge then hands them to the agent, which
//! steers the first by its port exactly as these flows steer a whole datagram, and the others
//! after it (`agent::fragments`): inbound, the whole datagram reaches the sandbox that owns its
//! port; outbound, only datagrams from the sandbox's own ports leave. TCP does not fragment in
//! practice (DF and MSS): its fragments get no such care; the first goes by its ports, the rest
//! to the host, which drops them unassembled.

use super::flow::{FlowTable, FlowTableBuilder, Span};
use super::meters::{icmp_error_meter, slow_path_meter, MeterRate};
use super::table;
use crate::model::ports::{cover_iter, PortBlock};
use crate::model::Protocol;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::ops::Range;

/// The conntrack zone that holds sandboxes' ICMP echo requests (and nothing else).
pub const CT_ZONE: u16 = 0x7150;

/// The conntrack zone in which fragmented UDP datagrams are reassembled, in and out. Nothing
/// is committed there: conntrack only lends its reassembly and the datagram's ports.
pub const FRAGMENT_ZONE: u16 = 0x7151;

/// A sandbox interface attached to the bridge and the ports it owns on this uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPorts {
    /// `namespace/name`, for people reading flows.
    pub sandbox: String,
    /// Its OVS port number; also the ct_mark of its echo requests.
    pub ofport: u32,
    /// Inclusive port spans it owns, by protocol.
    pub ports: Vec<(Protocol, u16, u16)>,
}

/// Everything the compiler needs to know about one uplink bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeState {
    pub uplink_ofport: u32,
    pub shared_ip: Ipv4Addr,
    pub shared_mac: String,
    pub sandboxes: Vec<SandboxPorts>,
    /// What a sandbox may send per second, through its own OpenFlow meter (numbered as its
    /// port) before the uplink: the agent config's `sandboxEgressLimit`. Honoured only where
    /// `meters_available`.
    pub egress_limit: Option<MeterRate>,
    /// Whether the bridge's datapath has OpenFlow meters (the agent probes it once per
    /// bridge). Without them the flows name no meter at all: OVS refuses every flow that
    /// names a missing meter, so the bridge would get no flows.
    pub meters_available: bool,
    /// The bridge's datapath: what its conntrack hands on after reassembling a fragmented
    /// datagram decides where fragments are metered.
    pub datapath: Datapath,
}

/// What conntrack hands on after it reassembled a fragmented UDP datagram, by datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datapath {
    /// The userspace datapath (`netdev`): the datagram's fragments, one by one, all of which
    /// go to the agent. Fragments are metered per in-port *before* conntrack, so that a flood
    /// never reaches its reassembly: OVS's userspace conntrack keeps at most 1000 fragments
    /// waiting for everyone, and a flood let through would fill it with the flooder's.
    Netdev,
    /// The kernel datapath (`system`): the whole datagram, which goes back through the port
    /// checks like any datagram and never to the agent. Metering before conntrack would cap
    /// all fragmented UDP of the node at the slow path's rate, so the meter comes after it,
    /// on what goes to the agent only (kept for a kernel that hands on fragments).
    System,
}

impl Datapath {
    /// From OVS's `datapath_type`: anything but `netdev` is a kernel datapath.
    pub fn of_type(datapath_type: &str) -> Self {
        if datapath_type == "netdev" {
            Datapath::Netdev
        } else {
            Datapath::System
        }
    }
}

impl BridgeState {
    /// The sandboxes' egress meter rate, if there is a limit and meters to hold it.
    pub fn egress_meter(&self) -> Option<MeterRate> {
        self.egress_limit.filter(|_| self.meters_available)
    }
}

/// Matches a UDP datagram that conntrack reassembled without finding fault, handed on whole:
/// what the kernel datapath does (it refragments on output).
const REASSEMBLED_WHOLE: &str = "udp,ct_state=-inv+trk,nw_frag=no";
/// Matches the fragments of such a datagram, handed on one by one: what the userspace
/// datapath does (its conntrack reassembles a copy).
const REASSEMBLED_FRAGMENT: &str = "udp,ct_state=-inv+trk,nw_frag=yes";

/// Matches any frame with an 802.1Q tag (OVS's "tag present" bit).
const VLAN_TAGGED: &str = "vlan_tci=0x1000/0x1000";

/// Both protocols with their names in a match, in the order of those names ("tcp" < "udp").
const PROTOCOLS: [(Protocol, &str); 2] = [(Protocol::Tcp, "tcp"), (Protocol::Udp, "udp")];

fn protocol_index(p: Protocol) -> usize {
    match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
    }
}

/// ICMP error types (destination unreachable including fragmentation needed, time exceeded,
/// parameter problem). A sandbox may send them about traffic it received; inbound ones about
/// the shared address go to the agent, which steers each to whoever sent the offending packet.
const ICMP_ERRORS: [u8; 3] = [3, 11, 12];

/// The ICMP type of an echo request.
const ICMP_ECHO_REQUEST: u8 = 8;

/// How much of an inbound ICMP error the switch hands the agent: 65535 means all of it.
const ICMP_ERROR_PUNT_LEN: u16 = 65535;

/// Compiles the bridge's whole flow table. Pure: same state, same flows, same cookies.
///
/// A bridge with 10k port ranges has ~70k flows, so the flows are written as text pieces
/// into one buffer (`FlowTableBuilder`) instead of being formatted one by one: the address,
/// MAC and port numbers are turned into text once, and a port block without `fmt`.
///
/// The flows are added in table order (table, priority, match text, actions text), so that
/// the table need not sort ~70k strings, nor even check their order. That is why the
/// sandboxes are walked in the order of their port number's *text* (`in_port=10,` sorts
/// before `in_port=100,` and `in_port=9,`), ICMP types and port blocks in the order of theirs
/// too, and why inbound TCP/UDP flows of all sandboxes are sorted together. Where flows may
/// repeat (two sandboxes on one OVS port, overlapping spans) the table sorts them: the result
/// is the same, only slower.
pub fn compile_bridge(s: &BridgeState) -> FlowTable {
    let (w, repeats) = build(s);
    if repeats {
        w.finish()
    } else {
        w.finish_in_order()
    }
}

/// The flows of the bridge, in table order unless some repeat: returns whether they may.
fn build(s: &BridgeState) -> (FlowTableBuilder, bool) {
    let up = s.uplink_ofport.to_string();
    let ip = s.shared_ip.to_string();
    let mac = s.shared_mac.as_str();
    let from_shared = format!(",dl_src={mac},nw_src={ip}");
    let mut by_port: Vec<(String, &SandboxPorts)> = s
        .sandboxes
        .iter()
        .map(|sb| (sb.ofport.to_string(), sb))
        .collect();
    by_port.sort_by(|a, b| a.0.cmp(&b.0));
    // Flows repeat only where two sandboxes share an OVS port or a sandbox owns one block
    // twice in a protocol (overlapping spans). Then the order below may break; otherwise it
    // cannot (tests check it), and the table need not check it either.
    let mut repeats = by_port.windows(2).any(|w| w[0].0 == w[1].0);
    // The port blocks of all sandboxes, by protocol (as in `PROTOCOLS`); each sandbox's, in
    // text order, are a range of them.
    let mut blocks: [Vec<BlockText>; 2] = Default::default();
    let sandboxes: Vec<Sandbox> = by_port
        .into_iter()
        .map(|(ofport, sb)| {
            let start = [blocks[0].len(), blocks[1].len()];
            for &(protocol, first, last) in &sb.ports {
                let k = protocol_index(protocol);
                blocks[k].extend(cover_iter(first, last).map(BlockText::new));
            }
            let range = |k: usize| start[k]..blocks[k].len();
            let ranges = [range(0), range(1)];
            for (k, r) in ranges.iter().enumerate() {
                let mine = &mut blocks[k][r.clone()];
                mine.sort_unstable();
                repeats |= mine.windows(2).any(|w| w[0] == w[1]);
            }
            Sandbox {
                ofport,
                slow_path_meter: if s.meters_available {
                    format!("meter:{},", slow_path_meter(sb.ofport))
                } else {
                    String::new()
                },
                blocks: ranges,
            }
        })
        .collect();
    let by_text = |types: &[u8]| {
        let mut t: Vec<String> = types.iter().map(u8::to_string).collect();
        t.sort();
        t
    };
    let icmp_errors = by_text(&ICMP_ERRORS);
    let echo_request = ICMP_ECHO_REQUEST.to_string();
    let sandbox_icmp = by_text(&[&ICMP_ERRORS[..], &[ICMP_ECHO_REQUEST]].concat());

    // Room for every flow and (roughly) its text: two flows per port block, nine per
    // sandbox, seventeen for the bridge. An estimate only spares reallocations.
    let block_count = blocks[0].len() + blocks[1].len();
    let mut w = FlowTableBuilder::with_capacity(
        2 * block_count + 9 * sandboxes.len() + 17,
        block_count * (90 + 2 * ip.len() + mac.len())
            + sandboxes.len() * (400 + 6 * mac.len() + 5 * ip.len())
            + 1024,
    );

    // Actions many flows share: their text is written once.
    let to_uplink = w.text(&["output:", &up]);
    let to_host = w.text(&["LOCAL"]);
    let drop = w.text(&["drop"]);
    let to_sandbox: Vec<Span> = sandboxes
        .iter()
        .map(|sb| w.text(&["output:", &sb.ofport]))
        .collect();

    // Classification by ingress port. Anything from a sandbox port goes to the egress
    // checks; the host's own traffic is the host's business.
    let to_egress = w.text(&[&format!("goto_table:{}", table::FROM_SANDBOX)]);
    w.flow(table::CLASSIFY, 0, &[], to_egress);
    let to_ingress = w.text(&[&format!("goto_table:{}", table::FROM_UPLINK)]);
    w.flow(table::CLASSIFY, 100, &["in_port=", &up], to_ingress);
    w.flow(table::CLASSIFY, 100, &["in_port=LOCAL"], to_uplink);

    // Inbound. Everything no sandbox claims is the host's.
    w.flow(table::FROM_UPLINK, 0, &[], to_host);
    // Echo replies: conntrack knows which sandbox (ct_mark = its ofport) sent the request.
    let to_conntrack = w.text(&[&format!("ct(zone={CT_ZONE},table={})", table::ECHO_REPLY)]);
    w.flow(
        table::FROM_UPLINK,
        150,
        &["icmp,nw_dst=", &ip, ",icmp_type=0"],
        to_conntrack,
    );
    // ICMP errors about traffic of the shared address: whose traffic it was is written in the
    // quoted inner header, which OpenFlow cannot match. The agent reads it (agent::icmp_errors)
    // and sends each error on to the sandbox that owns the inner packet's source port, or to
    // the host. The whole packet goes up (max_len=65535 is "no truncation"): the agent
    // re-injects what it gets, and Linux quotes up to 576 bytes of the offending datagram.
    // Everything handed up passes a meter of its in-port first, where the datapath has meters
    // (see `flows::meters`): ICMP errors one of their own, so that fragments cannot crowd them
    // out; fragments theirs before conntrack on the userspace datapath, after it (right before
    // `controller`) on the kernel's (see `Datapath`).
    let controller = format!("controller(max_len={ICMP_ERROR_PUNT_LEN})");
    let metered = |id: u32| {
        if s.meters_available {
            format!("meter:{id},")
        } else {
            String::new()
        }
    };
    let (before_ct, after_ct) = match s.datapath {
        Datapath::Netdev => (true, false),
        Datapath::System => (false, true),
    };
    let uplink_meter = metered(slow_path_meter(s.uplink_ofport));
    let pick = |meter: &String, here: bool| if here { meter.clone() } else { String::new() };
    let errors_to_agent = w.text(&[&metered(icmp_error_meter(s.uplink_ofport)), &controller]);
    let fragments_to_agent = w.text(&[&pick(&uplink_meter, after_ct), &controller]);
    for t in &icmp_errors {
        w.flow(
            table::FROM_UPLINK,
            160,
            &["icmp,nw_dst=", &ip, ",icmp_type=", t],
            errors_to_agent,
        );
    }
    // TCP/UDP by destination port, to the sandbox that owns it: all sandboxes' blocks of a
    // protocol in text order, then by sandbox (see `owned_blocks`).
    assert!(
        sandboxes.len() < 1 << 24,
        "over 16M sandboxes on one bridge"
    );
    let mut text = [0; 16];
    for (k, (_, name)) in PROTOCOLS.iter().enumerate() {
        let prefix = format!("{name},nw_dst={ip},tp_dst=");
        for key in owned_blocks(&sandboxes, &blocks, k) {
            let (block, i) = (BlockText(key & !0xff_ffff), (key & 0xff_ffff) as usize);
            let tp_dst = block.as_bytes(&mut text);
            w.flow_ascii(table::FROM_UPLINK, 200, &prefix, tp_dst, to_sandbox[i]);
        }
    }
    // Every fragment of a UDP datagram to the shared address is reassembled first: after the
    // uplink's slow-path meter on the userspace datapath only (see `Datapath`).
    let to_reassembly_in = w.text(&[
        &pick(&uplink_meter, before_ct),
        &format!("ct(zone={FRAGMENT_ZONE},table={})", table::FRAGMENT_IN),
    ]);
    w.flow(
        table::FROM_UPLINK,
        250,
        &["udp,nw_dst=", &ip, ",nw_frag=yes"],
        to_reassembly_in,
    );
    // The host answers ARP requests for the shared address (the peer must learn one MAC for
    // it, and it is the same MAC everywhere anyway).
    w.flow(table::FROM_UPLINK, 290, &["arp"], to_host);
    // ARP replies may answer a request of the host or of any sandbox: all of them get it.
    let mut everyone = String::from("LOCAL");
    for sb in &s.sandboxes {
        write!(everyone, ",output:{}", sb.ofport).expect("writing to a String");
    }
    let to_everyone = w.text(&[&everyone]);
    w.flow(table::FROM_UPLINK, 300, &["arp,arp_op=2"], to_everyone);
    // A VLAN-tagged frame belongs to another network than the shared address's: the host's
    // (its VLAN interfaces, if it has any), never a sandbox's.
    w.flow(table::FROM_UPLINK, 400, &[VLAN_TAGGED], to_host);

    // Echo replies after conntrack: to the sandbox whose request it was.
    w.flow(table::ECHO_REPLY, 0, &[], to_host);
    for (sb, &to_sb) in sandboxes.iter().zip(&to_sandbox) {
        w.flow(
            table::ECHO_REPLY,
            100,
            &["ct_state=+trk+est,ct_mark=", &sb.ofport, ",icmp"],
            to_sb,
        );
    }

    // Inbound UDP fragments of complete, well-formed datagrams (conntrack let them through):
    // the agent steers them (see the module comment); on the kernel datapath through the
    // uplink's slow-path meter here. A datapath that hands on the whole datagram instead (the
    // kernel's) has its ports: the inbound table steers it again, unmetered like any datagram.
    w.flow(table::FRAGMENT_IN, 0, &[], drop);
    let again_inbound = w.text(&[&format!("resubmit(,{})", table::FROM_UPLINK)]);
    w.flow(table::FRAGMENT_IN, 100, &[REASSEMBLED_WHOLE], again_inbound);
    w.flow(
        table::FRAGMENT_IN,
        100,
        &[REASSEMBLED_FRAGMENT],
        fragments_to_agent,
    );

    // Egress: whatever no rule below allows is dropped (and counted by this flow).
    w.flow(table::FROM_SANDBOX, 0, &[], drop);
    // Each sandbox's own drop rule, so drops are counted per sandbox.
    for sb in &sandboxes {
        w.flow(table::FROM_SANDBOX, 10, &["in_port=", &sb.ofport], drop);
    }
    // What a sandbox may send goes to the uplink through its meter, when there are meters.
    let from_sandbox: Vec<Span> = sandboxes
        .iter()
        .map(|sb| {
            if s.egress_meter().is_some() {
                w.text(&["meter:", &sb.ofport, ",output:", &up])
            } else {
                to_uplink
            }
        })
        .collect();
    let meter_of = |sb: &Sandbox| {
        if s.egress_meter().is_some() {
            format!("meter:{},", sb.ofport)
        } else {
            String::new()
        }
    };
    // A sandbox may ask (never answer) ARP, and only as the shared address.
    for (sb, &out) in sandboxes.iter().zip(&from_sandbox) {
        w.flow(
            table::FROM_SANDBOX,
            150,
            &[
                "arp,in_port=",
                &sb.ofport,
                ",dl_src=",
                mac,
                ",arp_op=1,arp_spa=",
                &ip,
                ",arp_sha=",
                mac,
            ],
            out,
        );
    }
    // ICMP errors, and echo requests through conntrack, which remembers the sender in ct_mark
    // for the reply.
    let commit = format!("ct(commit,zone={CT_ZONE},exec(set_field:");
    for (sb, &out) in sandboxes.iter().zip(&from_sandbox) {
        for t in &sandbox_icmp {
            let actions = if *t == echo_request {
                w.text(&[
                    &meter_of(sb),
                    &commit,
                    &sb.ofport,
                    "->ct_mark)),output:",
                    &up,
                ])
            } else {
                out
            };
            let m = ["icmp,in_port=", &sb.ofport, &from_shared, ",icmp_type=", t];
            w.flow(table::FROM_SANDBOX, 150, &m, actions);
        }
    }
    // TCP/UDP only from its own ports, with the shared addresses.
    let mut prefix = String::new();
    for (k, (_, name)) in PROTOCOLS.iter().enumerate() {
        for (sb, &out) in sandboxes.iter().zip(&from_sandbox) {
            prefix.clear();
            for part in [name, ",in_port=", &sb.ofport, &from_shared, ",tp_src="] {
                prefix.push_str(part);
            }
            for block in &blocks[k][sb.blocks[k].clone()] {
                let tp_src = block.as_bytes(&mut text);
                w.flow_ascii(table::FROM_SANDBOX, 200, &prefix, tp_src, out);
            }
        }
    }
    // Every fragment of a UDP datagram a sandbox sends with the shared addresses is
    // reassembled first; then only the sandbox's own source ports pass. Its slow-path meter
    // comes before conntrack on the userspace datapath, after it (on what goes to the agent
    // only, in `FRAGMENT_OUT` below) on the kernel's.
    // Each sandbox reassembles in a zone of its own (numbered as its port): in one shared zone
    // a neighbour could complete another's datagram with a fragment of the same IP id, and
    // on the kernel datapath the whole datagram would then carry the neighbour's in-port.
    let reassembly_out = format!(",table={})", table::FRAGMENT_OUT);
    for sb in &sandboxes {
        let m = ["udp,in_port=", &sb.ofport, &from_shared, ",nw_frag=yes"];
        let to_reassembly_out = w.text(&[
            &pick(&sb.slow_path_meter, before_ct),
            "ct(zone=",
            &sb.ofport,
            &reassembly_out,
        ]);
        w.flow(table::FROM_SANDBOX, 250, &m, to_reassembly_out);
    }
    // A sandbox sends untagged frames only: a tag would put its frames on another network of
    // the uplink, and the matches above ignore tags.
    w.flow(table::FROM_SANDBOX, 300, &[VLAN_TAGGED], drop);
    w.flow(table::FRAGMENT_OUT, 0, &[], drop);
    // A whole reassembled datagram (kernel datapath): the egress table checks its source
    // port again, as for any datagram (and its egress meter, if any, holds it there). Its
    // fragments (userspace datapath): the agent; on the kernel datapath through the slow-path
    // meter of the sandbox they came from (conntrack keeps the in-port), one flow each.
    let again_outbound = w.text(&[&format!("resubmit(,{})", table::FROM_SANDBOX)]);
    w.flow(
        table::FRAGMENT_OUT,
        100,
        &[REASSEMBLED_WHOLE],
        again_outbound,
    );
    if after_ct && s.meters_available {
        for sb in &sandboxes {
            let to_agent = w.text(&[&sb.slow_path_meter, &controller]);
            let m = [REASSEMBLED_FRAGMENT, ",in_port=", &sb.ofport];
            w.flow(table::FRAGMENT_OUT, 100, &m, to_agent);
        }
    } else {
        let to_agent = w.text(&[&controller]);
        w.flow(table::FRAGMENT_OUT, 100, &[REASSEMBLED_FRAGMENT], to_agent);
    }
    (w, repeats)
}

/// All sandboxes' port blocks of protocol `k`, sorted by the block's text and then by the
/// sandbox: each as the packed text with the sandbox's index in the low three bytes (a block's
/// text takes at most 13 of the 16).
fn owned_blocks(sandboxes: &[Sandbox], blocks: &[Vec<BlockText>; 2], k: usize) -> Vec<u128> {
    let mut owned: Vec<u128> = Vec::with_capacity(blocks[k].len());
    for (i, sb) in sandboxes.iter().enumerate() {
        owned.extend(
            blocks[k][sb.blocks[k].clone()]
                .iter()
                .map(|b| b.0 | i as u128),
        );
    }
    owned.sort_unstable();
    owned
}

/// A sandbox as the compiler walks it: its OVS port number as text, and where its port
/// blocks are among all (by protocol, as in `PROTOCOLS`).
struct Sandbox {
    ofport: String,
    /// Its slow-path meter as actions begin with it (`meter:ID,`), or nothing where the
    /// datapath has no meters.
    slow_path_meter: String,
    blocks: [Range<usize>; 2],
}

/// A port block as it follows `tp_dst=` or `tp_src=`, exactly as `PortBlock`'s `Display`
/// writes it ("10000", "0x2710/0xfff0": at most 13 bytes), packed big-endian into a u128 and
/// padded with zero bytes. Comparing two packed texts as numbers compares them as strings,
/// so blocks sort in text order without any string; and it is written without `fmt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct BlockText(u128);

impl BlockText {
    fn new(b: PortBlock) -> Self {
        let mut t = Ascii::default();
        if b.mask == u16::MAX {
            t.decimal(b.value);
        } else {
            t.push(b"0x");
            t.hex(b.value);
            t.push(b"/0x");
            t.hex(b.mask);
        }
        BlockText(t.packed())
    }

    /// The text, with `buf` to hold it.
    fn as_bytes(self, buf: &mut [u8; 16]) -> &[u8] {
        *buf = self.0.to_be_bytes();
        // The text is digits, 'x' and '/': the zero bytes after it are only padding.
        let len = 16 - (self.0.trailing_zeros() / 8) as usize;
        &buf[..len]
    }
}

/// One port block's text being written into a `BlockText`: each byte is shifted in at the
/// bottom (a constant shift; a variable one per byte costs more than all the rest), and
/// `packed` moves the text to the top.
#[derive(Default)]
struct Ascii {
    text: u128,
    len: u32,
}

impl Ascii {
    fn push(&mut self, s: &[u8]) {
        for &c in s {
            self.text = (self.text << 8) | u128::from(c);
            self.len += 1;
        }
    }

    fn packed(&self) -> u128 {
        self.text << (8 * (16 - self.len))
    }

    /// `n` in lower-case hex without leading zeros (0 is "0"), as `{:x}` writes it.
    fn hex(&mut self, n: u16) {
        let digits = (16 - n.leading_zeros()).div_ceil(4).max(1);
        for d in (0..digits).rev() {
            self.push(&[b"0123456789abcdef"[usize::from((n >> (4 * d)) & 0xf)]]);
        }
    }

    /// `n` in decimal, as `{}` writes it.
    fn decimal(&mut self, n: u16) {
        let mut place = 1;
        while n / place >= 10 {
            place *= 10;
        }
        while place > 0 {
            self.push(&[b'0' + (n / place % 10) as u8]);
            place /= 10;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::{Flow, FlowRef};

    fn state() -> BridgeState {
        BridgeState {
            uplink_ofport: 1,
            shared_ip: Ipv4Addr::new(198, 51, 100, 1),
            shared_mac: "02:00:00:00:00:01".into(),
            sandboxes: vec![SandboxPorts {
                sandbox: "default/web1".into(),
                ofport: 2,
                ports: vec![(Protocol::Udp, 10000, 10099)],
            }],
            egress_limit: None,
            meters_available: true,
            datapath: crate::flows::Datapath::Netdev,
        }
    }

    #[test]
    fn inbound_icmp_errors_for_the_shared_address_go_to_the_agent() {
        let t = compile_bridge(&state());
        for ty in ICMP_ERRORS {
            let punt: Vec<FlowRef> = t
                .flows
                .iter()
                .filter(|f| {
                    f.table == table::FROM_UPLINK
                        && f.matches == format!("icmp,nw_dst=198.51.100.1,icmp_type={ty}")
                })
                .collect();
            assert_eq!(punt.len(), 1, "type {ty}: {}", t.render());
            // Through the uplink's ICMP error meter, not the one its fragments pass.
            assert_eq!(punt[0].actions, "meter:131073,controller(max_len=65535)");
            // Above the catch-all to the host and the echo replies; TCP/UDP never match it.
            assert!(punt[0].priority > 150);
        }
        // Echo replies keep their own path.
        assert!(t
            .flows
            .iter()
            .all(|f| !(f.actions.contains("controller") && f.matches.contains("icmp_type=0"))));
    }

    #[test]
    fn with_meters_everything_a_sandbox_may_send_passes_its_own_meter_first() {
        let mut s = state();
        s.egress_limit = Some(MeterRate {
            packets_per_second: 1000,
            burst: 100,
        });
        let t = compile_bridge(&s);
        let allowed: Vec<FlowRef> = t
            .flows
            .iter()
            .filter(|f| f.table == table::FROM_SANDBOX && f.actions.contains("output:1"))
            .collect();
        assert!(allowed.len() >= 5, "{}", t.render());
        for f in allowed {
            assert!(f.actions.starts_with("meter:2,"), "{f:?}");
        }
        // Without meters the same flows, without the meter.
        let plain = compile_bridge(&state());
        assert_eq!(plain.flows.len(), t.flows.len());
        assert!(plain
            .flows
            .iter()
            .all(|f| !f.actions.starts_with("meter:2,")));
    }

    /// The userspace datapath hands on a reassembled datagram's fragments; the kernel's hands
    /// on the whole datagram, whose ports the tables can match again. Both are provided for.
    #[test]
    fn a_reassembled_datagram_goes_back_through_the_port_checks_and_its_fragments_to_the_agent() {
        let t = compile_bridge(&state());
        let after_conntrack = |table: u8| -> Vec<(String, String)> {
            t.flows
                .iter()
                .filter(|f| f.table == table && f.priority == 100)
                .map(|f| (f.matches.to_string(), f.actions.to_string()))
                .collect()
        };
        assert_eq!(
            after_conntrack(table::FRAGMENT_IN),
            [
                (REASSEMBLED_WHOLE.into(), "resubmit(,10)".into()),
                (
                    REASSEMBLED_FRAGMENT.into(),
                    "controller(max_len=65535)".into()
                )
            ]
        );
        assert_eq!(after_conntrack(table::FRAGMENT_OUT)[0].1, "resubmit(,20)");
        // Going back cannot loop: only fragments go to reassembly, and these are whole.
        let reassembly: Vec<_> = t
            .flows
            .iter()
            .filter(|f| f.actions.contains("ct(zone=") && !f.actions.contains("commit"))
            .filter(|f| !f.matches.contains("icmp"))
            .collect();
        assert!(reassembly.iter().all(|f| f.matches.contains("nw_frag=yes")));
        // On the userspace datapath, fragments are metered per in-port before conntrack (the
        // uplink's, the sandbox's), so that a flood never fills its reassembly; and the
        // sandbox reassembles in a zone of its own, not the inbound one.
        let actions: Vec<&str> = reassembly.iter().map(|f| f.actions).collect();
        assert_eq!(
            actions,
            [
                "meter:65537,ct(zone=29009,table=12)",
                "meter:65538,ct(zone=2,table=21)"
            ]
        );
    }

    /// On the kernel datapath conntrack hands on the whole datagram, which must not pass the
    /// slow path's meter: only what goes to the agent does, after conntrack.
    #[test]
    fn on_the_kernel_datapath_only_what_goes_to_the_agent_is_metered() {
        let mut s = state();
        s.datapath = Datapath::System;
        let t = compile_bridge(&s);
        let of = |table: u8| -> Vec<(String, String)> {
            t.flows
                .iter()
                .filter(|f| f.table == table && f.priority >= 100)
                .filter(|f| f.matches.contains("nw_frag") || f.actions.contains("ct(zone=2"))
                .map(|f| (f.matches.to_string(), f.actions.to_string()))
                .collect()
        };
        assert_eq!(
            of(table::FRAGMENT_IN),
            [
                (REASSEMBLED_WHOLE.into(), "resubmit(,10)".into()),
                (
                    REASSEMBLED_FRAGMENT.into(),
                    "meter:65537,controller(max_len=65535)".into()
                )
            ]
        );
        assert_eq!(
            of(table::FRAGMENT_OUT),
            [
                (REASSEMBLED_WHOLE.into(), "resubmit(,20)".into()),
                (
                    format!("{REASSEMBLED_FRAGMENT},in_port=2"),
                    "meter:65538,controller(max_len=65535)".into()
                )
            ]
        );
        // Fragments go to conntrack unmetered, each way.
        let to_conntrack: Vec<&str> = t
            .flows
            .iter()
            .filter(|f| f.matches.contains("nw_frag=yes") && f.actions.contains("ct(zone="))
            .map(|f| f.actions)
            .collect();
        assert_eq!(
            to_conntrack,
            ["ct(zone=29009,table=12)", "ct(zone=2,table=21)"]
        );
        // Every slow-path meter is right before `controller`; the meters are the same.
        for f in t.flows.iter().filter(|f| f.actions.contains("meter:655")) {
            assert!(f.actions.ends_with("controller(max_len=65535)"), "{f:?}");
        }
        assert_eq!(
            crate::flows::bridge_meters(&s),
            crate::flows::bridge_meters(&state())
        );
    }

    #[test]
    fn what_the_bridge_hands_the_agent_does_not_depend_on_the_sandboxes() {
        let mut empty = state();
        empty.sandboxes.clear();
        let punted = |s: &BridgeState| -> Vec<Flow> {
            compile_bridge(s)
                .flows
                .iter()
                .filter(|f| f.actions.contains("controller"))
                .map(|f| f.to_flow())
                .collect()
        };
        assert_eq!(punted(&state()), punted(&empty));
        // The ICMP error types, and the reassembled UDP fragments each way.
        assert_eq!(punted(&empty).len(), ICMP_ERRORS.len() + 2);
        // The agent steers exactly the types the bridge hands it.
        assert_eq!(ICMP_ERRORS, crate::agent::icmp_errors::ERROR_TYPES);
        // On the kernel datapath, outbound fragments go up through each sandbox's own meter.
        let kernel = |mut s: BridgeState| {
            s.datapath = Datapath::System;
            punted(&s).len()
        };
        assert_eq!(kernel(empty.clone()), ICMP_ERRORS.len() + 1);
        assert_eq!(kernel(state()), ICMP_ERRORS.len() + 2);
    }

    #[test]
    fn block_text_is_the_display_text_and_sorts_like_it() {
        // Every block there is: each prefix length, each value aligned to it.
        let mut blocks = Vec::new();
        for bits in 0..=16u32 {
            let mask = (u32::MAX << (16 - bits)) as u16;
            let step = 1u32 << (16 - bits);
            blocks.extend((0..1u32 << 16).step_by(step as usize).map(|v| PortBlock {
                value: v as u16,
                mask,
            }));
        }
        let mut buf = [0; 16];
        let mut texts: Vec<(BlockText, String)> = blocks
            .iter()
            .map(|&b| {
                let t = BlockText::new(b);
                assert_eq!(t.as_bytes(&mut buf), b.to_string().as_bytes());
                (t, b.to_string())
            })
            .collect();
        texts.sort();
        assert!(texts.windows(2).all(|w| w[0].1 < w[1].1));
    }

    /// The compiler adds flows in table order, so that the table need not sort them: for
    /// port numbers of different lengths, single ports and odd spans, many sandboxes.
    #[test]
    fn flows_are_added_in_table_order() {
        let mut s = state();
        s.uplink_ofport = 10;
        for (ofport, ports) in [
            (
                9,
                vec![(Protocol::Tcp, 80, 80), (Protocol::Udp, 5060, 5061)],
            ),
            (
                100,
                vec![(Protocol::Udp, 1, 65534), (Protocol::Tcp, 443, 443)],
            ),
            (11, vec![]),
            (1000, vec![(Protocol::Tcp, 0, 79), (Protocol::Tcp, 81, 442)]),
        ] {
            s.sandboxes.push(SandboxPorts {
                sandbox: format!("t/{ofport}"),
                ofport,
                ports,
            });
        }
        for state in [s, state(), crate::bench::synthetic::bridge_state(300)] {
            let (w, repeats) = build(&state);
            assert!(w.in_table_order() && !repeats);
            // ...and the result is the same as from flows sorted the slow way.
            let t = compile_bridge(&state);
            let mut flows: Vec<Flow> = t.flows.iter().map(|f| f.to_flow()).collect();
            flows.reverse();
            assert_eq!(FlowTable::new(flows), t);
        }
    }

    #[test]
    fn two_sandboxes_on_one_port_still_make_a_sorted_table() {
        let mut s = state();
        let mut twin = s.sandboxes[0].clone();
        twin.sandbox = "default/twin".into();
        twin.ports.push((Protocol::Tcp, 22, 22));
        s.sandboxes.push(twin);
        let (w, repeats) = build(&s);
        assert!(repeats && !w.in_table_order());
        let t = compile_bridge(&s);
        let flows: Vec<FlowRef> = t.flows.iter().collect();
        assert!(flows.windows(2).all(|w| w[0] < w[1]));
        // The twin's copies of the same flows are gone; only its own port 22 is added.
        assert_eq!(t.flows.len(), compile_bridge(&state()).flows.len() + 2);
    }
}
