//! Which kind of OVS port the uplink and the sandboxes get (issue 10).
//!
//! The kernel datapath takes frames from its ports itself, so its ports are always ordinary
//! `system` ports. On the userspace datapath an ordinary port is a packet (AF_PACKET) socket,
//! slow and slower with every port attached; AF_XDP ports (`afxdp`, `afxdp-nonpmd`) are 2-3x
//! faster, but they take the device's XDP hook, which the eBPF fast path needs too.

use crate::config::PortTypeChoice;

/// A node with at least this many CPUs can give one whole core to OVS's poll-mode thread.
pub const PMD_MIN_CPUS: usize = 4;

/// Decides the port type. Pure: `datapath_type` is the bridges' (`system` or `netdev`),
/// `fast_path_active` whether the eBPF/XDP fast path runs on the devices, `cpus` the node's CPUs,
/// `iface_types` what this OVS can create (`Open_vSwitch.iface_types`). Returns the type and
/// why, in one sentence for the log and for status reports.
pub fn choose_port_type(
    choice: PortTypeChoice,
    datapath_type: &str,
    fast_path_active: bool,
    cpus: usize,
    iface_types: &[String],
) -> (PortTypeChoice, String) {
    use PortTypeChoice::*;
    let listed = |t: PortTypeChoice| iface_types.iter().any(|s| s == t.ovs_type());
    if datapath_type != "netdev" {
        return (
            System,
            format!("the {datapath_type} (kernel) datapath reads its ports itself: ordinary system ports"),
        );
    }
    match choice {
        System => (System, "userspacePorts: system was configured".into()),
        Afxdp | AfxdpNonpmd if listed(choice) => (
            choice,
            format!("userspacePorts: {} was configured", choice.ovs_type()),
        ),
        Afxdp | AfxdpNonpmd => (
            System,
            format!(
                "userspacePorts: {} was configured but this Open vSwitch does not offer that interface type (built without AF_XDP?): falling back to system ports",
                choice.ovs_type()
            ),
        ),
        Auto if fast_path_active => (
            System,
            "the XDP fast path is active and needs the devices' XDP hook, which AF_XDP ports would take: system ports".into(),
        ),
        Auto if cpus >= PMD_MIN_CPUS && listed(Afxdp) => (
            Afxdp,
            format!("userspace datapath, {cpus} CPUs (>= {PMD_MIN_CPUS}): afxdp ports with a poll-mode thread on a core of its own"),
        ),
        Auto if listed(AfxdpNonpmd) => (
            AfxdpNonpmd,
            if cpus >= PMD_MIN_CPUS {
                "userspace datapath: afxdp-nonpmd ports (this Open vSwitch offers no afxdp type)"
                    .into()
            } else {
                format!("userspace datapath, only {cpus} CPUs (< {PMD_MIN_CPUS}, no core to spare for a poll-mode thread): afxdp-nonpmd ports")
            },
        ),
        // Only `afxdp` on a small node: a poll-mode thread would take a whole core of few.
        Auto if listed(Afxdp) => (
            System,
            format!("userspace datapath, only {cpus} CPUs and this Open vSwitch offers afxdp (a poll-mode thread, a full core) but not afxdp-nonpmd: system ports"),
        ),
        Auto => (
            System,
            "userspace datapath, but this Open vSwitch offers no AF_XDP interface types: system ports".into(),
        ),
    }
}

/// The node's CPUs as the agent may use them (cgroup/affinity aware); 1 if unknown.
pub fn node_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use PortTypeChoice::*;

    fn types(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    fn all() -> Vec<String> {
        types(&["afxdp", "afxdp-nonpmd", "internal", "system", "tap"])
    }

    #[test]
    fn the_kernel_datapath_always_gets_system_ports() {
        for choice in [Auto, System, Afxdp, AfxdpNonpmd] {
            for fast in [false, true] {
                let (t, why) = choose_port_type(choice, "system", fast, 64, &all());
                assert_eq!(t, System, "{choice:?}");
                assert!(why.contains("kernel"), "{why}");
            }
        }
    }

    #[test]
    fn an_explicit_choice_wins_when_ovs_offers_it() {
        for choice in [System, Afxdp, AfxdpNonpmd] {
            // Even beside the fast path and on a small node: the operator said so.
            let (t, why) = choose_port_type(choice, "netdev", true, 1, &all());
            assert_eq!(t, choice);
            assert!(why.contains("configured"), "{why}");
        }
        let (t, why) = choose_port_type(Afxdp, "netdev", false, 8, &types(&["system", "tap"]));
        assert_eq!(t, System);
        assert!(
            why.contains("afxdp") && why.contains("falling back"),
            "{why}"
        );
        let (t, _) = choose_port_type(AfxdpNonpmd, "netdev", false, 8, &types(&["afxdp"]));
        assert_eq!(t, System);
    }

    #[test]
    fn auto_prefers_the_fast_path_then_a_pmd_thread_then_nonpmd() {
        let (t, why) = choose_port_type(Auto, "netdev", true, 64, &all());
        assert_eq!(t, System);
        assert!(why.contains("fast path"), "{why}");
        assert_eq!(choose_port_type(Auto, "netdev", false, 4, &all()).0, Afxdp);
        assert_eq!(choose_port_type(Auto, "netdev", false, 64, &all()).0, Afxdp);
        let (t, why) = choose_port_type(Auto, "netdev", false, 2, &all());
        assert_eq!(t, AfxdpNonpmd);
        assert!(why.contains("2 CPUs"), "{why}");
        assert_eq!(
            choose_port_type(Auto, "netdev", false, 1, &all()).0,
            AfxdpNonpmd
        );
    }

    #[test]
    fn auto_takes_what_ovs_offers() {
        let only = |t| types(&["system", t]);
        assert_eq!(
            choose_port_type(Auto, "netdev", false, 8, &only("afxdp-nonpmd")).0,
            AfxdpNonpmd
        );
        assert_eq!(
            choose_port_type(Auto, "netdev", false, 8, &only("afxdp")).0,
            Afxdp
        );
        let (t, why) = choose_port_type(Auto, "netdev", false, 2, &only("afxdp"));
        assert_eq!(t, System, "no core to spare for a PMD thread");
        assert!(why.contains("full core"), "{why}");
        let (t, why) = choose_port_type(Auto, "netdev", false, 8, &types(&["system"]));
        assert_eq!(t, System);
        assert!(why.contains("no AF_XDP"), "{why}");
        assert_eq!(choose_port_type(Auto, "netdev", false, 8, &[]).0, System);
    }
}
