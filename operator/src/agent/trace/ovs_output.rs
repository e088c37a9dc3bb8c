//! What `ovs-appctl ofproto/trace` printed, read into hops and datapath actions.

/// The parts of `ovs-appctl ofproto/trace` output that portiso explains.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OvsTrace {
    /// Every table the packet visited, in order (after a recirculation, those of the resumed
    /// pipeline follow).
    pub hops: Vec<Hop>,
    /// Every "Datapath actions:" line, in order: one per pass through the pipeline.
    pub datapath_actions: Vec<String>,
    /// Whether OVS assumed a conntrack state it cannot know (it traces with `trk|new`).
    pub assumed_ct_state: bool,
}

/// One table lookup of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub table: u8,
    /// The flow that matched; None on a table miss.
    pub rule: Option<Rule>,
    /// The lines under it: its actions one per line, and OVS's notes about them.
    pub actions: Vec<String>,
}

/// A matched flow as OVS printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: String,
    pub priority: u16,
    pub cookie: u64,
}

/// Where a packet went out of the bridge, by OpenFlow action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Output {
    Port(u32),
    Local,
    Controller,
}

impl OvsTrace {
    /// The outputs of every action the trace executed, in order, without those OVS did not
    /// carry out (an output to the port the packet came in on, or to no port at all).
    pub fn outputs(&self) -> Vec<Output> {
        let mut out: Vec<Output> = Vec::new();
        for line in self.hops.iter().flat_map(|h| &h.actions) {
            if line.starts_with(">>")
                && (line.contains("skipping output to input port")
                    || line.contains("Nonexistent output port"))
            {
                out.pop();
            } else if let Some(o) = output_of(line) {
                out.push(o);
            }
        }
        let mut seen = Vec::new();
        out.retain(|o| {
            let new = !seen.contains(o);
            seen.push(*o);
            new
        });
        out
    }

    /// The last "Datapath actions:" line: what the datapath finally does with the packet.
    pub fn final_datapath_actions(&self) -> &str {
        self.datapath_actions.last().map_or("", String::as_str)
    }
}

/// The output of one action line ("output:2", "LOCAL", "CONTROLLER:65535").
pub(super) fn output_of(action: &str) -> Option<Output> {
    if action == "LOCAL" || action == "output:LOCAL" {
        return Some(Output::Local);
    }
    // OVS prints a plain controller action as "CONTROLLER:65535".
    if action.to_ascii_lowercase().starts_with("controller") {
        return Some(Output::Controller);
    }
    action
        .strip_prefix("output:")
        .and_then(|p| p.parse().ok())
        .map(Output::Port)
}

/// Reads `ovs-appctl ofproto/trace` output (OVS 2.8 and later; captured from 3.1 in the
/// tests). Lines it does not know are skipped.
pub fn parse_trace(text: &str) -> OvsTrace {
    let mut t = OvsTrace::default();
    // Whether the lines that follow still belong to the last hop.
    let mut in_hop = false;
    for line in text.lines() {
        let l = line.trim();
        if let Some(actions) = l.strip_prefix("Datapath actions:") {
            t.datapath_actions.push(actions.trim().to_string());
            in_hop = false;
        } else if let Some(hop) = parse_hop(l) {
            t.hops.push(hop);
            in_hop = true;
        } else if l.is_empty() || l.starts_with("Final flow:") || l.starts_with("Megaflow:") {
            in_hop = false;
        } else if l.contains("resume conntrack with default ct_state") {
            t.assumed_ct_state = true;
        } else if in_hop {
            if let Some(hop) = t.hops.last_mut() {
                hop.actions.push(l.to_string());
            }
        }
    }
    t
}

/// " 0. in_port=1, priority 100, cookie 0x70b5…", "10. No match.": a table lookup.
pub(super) fn parse_hop(line: &str) -> Option<Hop> {
    let (number, rest) = line.split_once(". ")?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let table = number.parse().ok()?;
    let rule = rest.rfind("priority ").and_then(|at| {
        let matches = rest[..at].trim_end().trim_end_matches(',').to_string();
        let mut fields = rest[at + "priority ".len()..].split(", ");
        let priority = fields.next()?.trim().parse().ok()?;
        let cookie = fields
            .find_map(|f| f.trim().strip_prefix("cookie 0x"))
            .and_then(|c| u64::from_str_radix(c, 16).ok())
            .unwrap_or(0);
        Some(Rule {
            matches,
            priority,
            cookie,
        })
    });
    Some(Hop {
        table,
        rule,
        actions: Vec::new(),
    })
}
