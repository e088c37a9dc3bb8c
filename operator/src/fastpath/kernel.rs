//! The only module that loads BPF programs, attaches them and writes their maps (through aya).
//!
//! Programs are attached with BPF links pinned under the agent's bpffs directory, and the maps
//! are pinned there by name: a restarted agent re-opens the same maps and swaps its programs
//! into the existing links atomically (bpf_link_update), so traffic never stops.

use super::maps::{Endpoint, FastPathMaps, PortKey};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{DevMapHash, HashMap as BpfHashMap, MapData, PerCpuHashMap, PerCpuValues};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{Xdp, XdpFlags};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The compiled programs (operator/bpf/fastpath.c, built by build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastpath.o"));

/// statfs(2)'s f_type of a bpffs.
const BPF_FS_MAGIC: nix::libc::c_long = 0xcafe_4a11;

/// Pinned links are `xdp-<ifindex>` in the pin directory.
pub const LINK_PIN_PREFIX: &str = "xdp-";

/// `struct counters`, per CPU.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub fast_packets: u64,
    pub fast_bytes: u64,
    pub slow_not_ipv4_tcp_udp: u64,
    pub slow_fragment_or_options: u64,
    pub slow_not_shared_address: u64,
    pub slow_port_not_owned: u64,
    pub slow_redirect_failed: u64,
}

// SAFETY: seven u64, no padding.
unsafe impl aya::Pod for Counters {}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Self) {
        self.fast_packets += o.fast_packets;
        self.fast_bytes += o.fast_bytes;
        self.slow_not_ipv4_tcp_udp += o.slow_not_ipv4_tcp_udp;
        self.slow_fragment_or_options += o.slow_fragment_or_options;
        self.slow_not_shared_address += o.slow_not_shared_address;
        self.slow_port_not_owned += o.slow_port_not_owned;
        self.slow_redirect_failed += o.slow_redirect_failed;
    }
}

/// Which program an interface gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Uplink,
    Sandbox,
}

impl Role {
    fn program(self) -> &'static str {
        match self {
            Role::Uplink => "xdp_uplink",
            Role::Sandbox => "xdp_sandbox",
        }
    }
}

pub struct Kernel {
    ebpf: aya::Ebpf,
    dir: PathBuf,
    flags: XdpFlags,
}

type Error = anyhow::Error;

/// Makes sure `dir` is on a bpffs, mounting one there if needed. A node without systemd's
/// bpffs has a plain sysfs directory at /sys/fs/bpf, where nothing can be created: a bpffs
/// is mounted there first.
fn ensure_bpffs(dir: &Path) -> Result<(), Error> {
    let is_bpffs =
        |d: &Path| nix::sys::statfs::statfs(d).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    let mount = |d: &Path| {
        let d = d.display().to_string();
        crate::exec::run("mount", &["-t", "bpf", "bpf", &d])
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{d} is not on a bpffs and mounting one failed: {e}"))
    };
    let sys_fs_bpf = Path::new("/sys/fs/bpf");
    if !dir.exists() && dir.starts_with(sys_fs_bpf) && sys_fs_bpf.is_dir() && !is_bpffs(sys_fs_bpf)
    {
        mount(sys_fs_bpf)?;
    }
    std::fs::create_dir_all(dir)?;
    if !is_bpffs(dir) {
        mount(dir)?;
    }
    anyhow::ensure!(is_bpffs(dir), "{} is not on a bpffs", dir.display());
    Ok(())
}

fn map<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut aya::maps::Map, Error> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow::anyhow!("map {name} missing from the BPF object"))
}

impl Kernel {
    /// Loads the programs (this is where a kernel without BPF, or a verifier that refuses them,
    /// shows) and opens or creates the pinned maps in `dir`.
    pub fn load(dir: &Path, flags: XdpFlags) -> Result<Self, Error> {
        ensure_bpffs(dir)?;
        let mut ebpf = aya::EbpfLoader::new().map_pin_path(dir).load(OBJECT)?;
        for role in [Role::Uplink, Role::Sandbox] {
            let prog: &mut Xdp = ebpf
                .program_mut(role.program())
                .ok_or_else(|| anyhow::anyhow!("program {} missing", role.program()))?
                .try_into()?;
            prog.load()?;
        }
        Ok(Kernel {
            ebpf,
            dir: dir.to_path_buf(),
            flags,
        })
    }

    fn link_pin(&self, ifindex: u32) -> PathBuf {
        self.dir.join(format!("{LINK_PIN_PREFIX}{ifindex}"))
    }

    /// Attaches `role`'s program to the interface: into its pinned link if there is one
    /// (atomic replacement: a restarted or upgraded agent never leaves a gap), else with a new
    /// link, pinned.
    pub fn attach(&mut self, ifindex: u32, role: Role) -> Result<(), Error> {
        let pin = self.link_pin(ifindex);
        let flags = self.flags;
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(role.program())
            .expect("loaded in Kernel::load")
            .try_into()?;
        if pin.exists() {
            let replaced = PinnedLink::from_pin(&pin)
                .map_err(Error::from)
                .and_then(|p| Ok(aya::programs::xdp::XdpLink::try_from(FdLink::from(p))?))
                .and_then(|link| Ok(prog.attach_to_link(link)?));
            match replaced {
                Ok(id) => {
                    // The pin keeps the link; dropping ours only closes a descriptor.
                    drop(prog.take_link(id)?);
                    return Ok(());
                }
                Err(e) => {
                    // The interface it was on is gone (the index was reused): start afresh.
                    tracing::debug!(ifindex, error = %e, "stale fast-path link replaced");
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let id = prog.attach_to_if_index(ifindex, flags)?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        link.pin(&pin)?;
        Ok(())
    }

    /// Takes the program off the interface (if it still exists) by removing the pinned link.
    pub fn detach(&mut self, ifindex: u32) {
        let _ = std::fs::remove_file(self.link_pin(ifindex));
    }

    /// Interfaces that have a pinned link.
    pub fn attached(&self) -> BTreeSet<u32> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix(LINK_PIN_PREFIX)?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// What the maps hold now for the uplink `uplink`: its endpoints (the uplink and the
    /// sandboxes that send to it) and the entries keyed by them.
    pub fn read(&mut self, uplink: u32) -> Result<FastPathMaps, Error> {
        let mut m = FastPathMaps::default();
        let endpoints: BpfHashMap<&MapData, u32, Endpoint> =
            BpfHashMap::try_from(&*map(&mut self.ebpf, "portiso_endpoints")?)?;
        for e in endpoints.iter() {
            let (k, v) = e?;
            if v.uplink_ifindex == uplink {
                m.endpoints.insert(k, v);
            }
        }
        let ours: BTreeSet<u32> = m.endpoints.keys().copied().collect();
        let inbound: LpmTrie<&MapData, PortKey, u32> =
            LpmTrie::try_from(&*map(&mut self.ebpf, "portiso_inbound")?)?;
        for e in inbound.iter() {
            let (k, v) = e?;
            if k.data().ifindex() == uplink {
                m.inbound.insert((k.prefix_len(), k.data()), v);
            }
        }
        let egress: LpmTrie<&MapData, PortKey, u32> =
            LpmTrie::try_from(&*map(&mut self.ebpf, "portiso_egress")?)?;
        for e in egress.iter() {
            let (k, _) = e?;
            if ours.contains(&k.data().ifindex()) {
                m.egress.insert((k.prefix_len(), k.data()));
            }
        }
        let targets: DevMapHash<&MapData> =
            DevMapHash::try_from(&*map(&mut self.ebpf, "portiso_targets")?)?;
        for k in targets.keys() {
            let k = k?;
            if ours.contains(&k) {
                m.targets.insert(k);
            }
        }
        Ok(m)
    }

    /// Removes what `desired` no longer holds, or holds differently: before OVS's flows
    /// change, so that no frame is steered by an entry OVS would no longer agree with.
    /// Sandbox interfaces that lost their endpoint are detached.
    pub fn remove_stale(
        &mut self,
        current: &FastPathMaps,
        desired: &FastPathMaps,
    ) -> Result<(), Error> {
        let mut inbound: LpmTrie<&mut MapData, PortKey, u32> =
            LpmTrie::try_from(map(&mut self.ebpf, "portiso_inbound")?)?;
        for (k, v) in &current.inbound {
            if desired.inbound.get(k) != Some(v) {
                ignore_missing(inbound.remove(&Key::new(k.0, k.1)))?;
            }
        }
        let mut egress: LpmTrie<&mut MapData, PortKey, u32> =
            LpmTrie::try_from(map(&mut self.ebpf, "portiso_egress")?)?;
        for k in current.egress.difference(&desired.egress) {
            ignore_missing(egress.remove(&Key::new(k.0, k.1)))?;
        }
        let gone: Vec<u32> = current
            .endpoints
            .iter()
            .filter(|(k, v)| desired.endpoints.get(k) != Some(v))
            .map(|(k, _)| *k)
            .collect();
        let mut endpoints: BpfHashMap<&mut MapData, u32, Endpoint> =
            BpfHashMap::try_from(map(&mut self.ebpf, "portiso_endpoints")?)?;
        for k in &gone {
            ignore_missing(endpoints.remove(k))?;
        }
        let mut targets: DevMapHash<&mut MapData> =
            DevMapHash::try_from(map(&mut self.ebpf, "portiso_targets")?)?;
        for k in current.targets.difference(&desired.targets) {
            ignore_missing(targets.remove(*k))?;
        }
        let mut counters: PerCpuHashMap<&mut MapData, u32, Counters> =
            PerCpuHashMap::try_from(map(&mut self.ebpf, "portiso_counters")?)?;
        let removed: Vec<u32> = gone
            .into_iter()
            .filter(|k| !desired.endpoints.contains_key(k))
            .collect();
        for k in &removed {
            let _ = counters.remove(k);
        }
        for k in removed {
            self.detach(k);
        }
        Ok(())
    }

    /// Adds what `desired` holds and the maps lack: after OVS's flows are in place. Targets
    /// and endpoints first, the steering entries last.
    pub fn add_missing(
        &mut self,
        current: &FastPathMaps,
        desired: &FastPathMaps,
    ) -> Result<(), Error> {
        let mut targets: DevMapHash<&mut MapData> =
            DevMapHash::try_from(map(&mut self.ebpf, "portiso_targets")?)?;
        for k in desired.targets.difference(&current.targets) {
            targets.insert(*k, *k, None, 0)?;
        }
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut counters: PerCpuHashMap<&mut MapData, u32, Counters> =
            PerCpuHashMap::try_from(map(&mut self.ebpf, "portiso_counters")?)?;
        // BPF_NOEXIST keeps the counts of interfaces that already have some. (aya 0.13's
        // per-CPU `get` cannot tell a missing key from a zeroed one, so no lookup first.)
        const BPF_NOEXIST: u64 = 1;
        for k in desired.endpoints.keys() {
            let zeros = PerCpuValues::try_from(vec![Counters::default(); nr_cpus])?;
            match counters.insert(k, zeros, BPF_NOEXIST) {
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(nix::libc::EEXIST) => {}
                r => r?,
            }
        }
        let mut endpoints: BpfHashMap<&mut MapData, u32, Endpoint> =
            BpfHashMap::try_from(map(&mut self.ebpf, "portiso_endpoints")?)?;
        for (k, v) in &desired.endpoints {
            if current.endpoints.get(k) != Some(v) {
                endpoints.insert(k, v, 0)?;
            }
        }
        let mut egress: LpmTrie<&mut MapData, PortKey, u32> =
            LpmTrie::try_from(map(&mut self.ebpf, "portiso_egress")?)?;
        for k in desired.egress.difference(&current.egress) {
            egress.insert(&Key::new(k.0, k.1), 1, 0)?;
        }
        let mut inbound: LpmTrie<&mut MapData, PortKey, u32> =
            LpmTrie::try_from(map(&mut self.ebpf, "portiso_inbound")?)?;
        for (k, v) in &desired.inbound {
            if current.inbound.get(k) != Some(v) {
                inbound.insert(&Key::new(k.0, k.1), v, 0)?;
            }
        }
        Ok(())
    }

    /// Every interface's counters, summed over the CPUs.
    pub fn counters(&mut self) -> Result<BTreeMap<u32, Counters>, Error> {
        let counters: PerCpuHashMap<&MapData, u32, Counters> =
            PerCpuHashMap::try_from(&*map(&mut self.ebpf, "portiso_counters")?)?;
        sum_counters(&counters)
    }
}

/// Reads the counters pinned in `dir` without loading anything: `portiso status` and the
/// tests look in from outside the agent this way.
pub fn pinned_counters(dir: &Path) -> Result<BTreeMap<u32, Counters>, Error> {
    let data = MapData::from_pin(dir.join("portiso_counters"))?;
    let counters: PerCpuHashMap<MapData, u32, Counters> =
        PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(data))?;
    sum_counters(&counters)
}

fn sum_counters<T: std::borrow::Borrow<MapData>>(
    counters: &PerCpuHashMap<T, u32, Counters>,
) -> Result<BTreeMap<u32, Counters>, Error> {
    let mut out = BTreeMap::new();
    for e in counters.iter() {
        let (k, per_cpu) = e?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            sum += *c;
        }
        out.insert(k, sum);
    }
    Ok(out)
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), Error> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(2) => Ok(()),
        r => Ok(r?),
    }
}
