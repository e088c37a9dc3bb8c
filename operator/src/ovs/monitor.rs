//! Packets the bridge sends to the controller, and sending packets back into the bridge.
//!
//! `ovs-ofctl monitor BRIDGE 65535 -m` connects to the bridge's management socket as an extra
//! OpenFlow connection (it is not a configured controller: the fail-mode and the flows decide
//! forwarding as before) and prints every packet-in on stderr, e.g. for ovs-ofctl 3.1:
//!
//! ```text
//! NXT_PACKET_IN2 (OF1.4) (xid=0x0): cookie=0x0 total_len=70 in_port=1 data_len=70 (unbuffered)
//! icmp,vlan_tci=0x0000,dl_src=02:00:00:00:00:02,...,icmp_type=3,icmp_code=3 icmp_csum:0
//! 00000000  02 00 00 00 00 01 02 00-00 00 00 02 08 00 45 00
//! 00000010  00 38 00 01 00 00 40 01-00 00 0a 00 00 07 0a 00
//! ...
//! ```
//!
//! A header line, the flow it matched, then a hex dump of the packet (`data_len` bytes).
//! More `-m` adds a dump of the whole OpenFlow message after it, which the parser skips.

use super::OvsError;
use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

/// One packet the bridge sent to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketIn {
    /// The OpenFlow port it came in on, when the header names one by number.
    pub in_port: Option<u32>,
    /// The packet's length on the wire; more than `data.len()` when the switch cut it.
    pub total_len: usize,
    pub data: Vec<u8>,
}

impl PacketIn {
    pub fn truncated(&self) -> bool {
        self.data.len() < self.total_len
    }
}

struct Pending {
    in_port: Option<u32>,
    total_len: usize,
    data_len: usize,
    data: Vec<u8>,
}

/// Reads `ovs-ofctl monitor -m` output line by line.
#[derive(Default)]
pub struct PacketInParser {
    pending: Option<Pending>,
}

/// What one line of monitor output amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Nothing yet (a header, a flow line, a dump line, or a line that is not ours).
    Nothing,
    Packet(PacketIn),
    /// A packet-in whose dump did not add up; the text says how.
    Garbled(String),
}

fn field(line: &str, key: &str) -> Option<String> {
    // After conntrack the header lists the packet's metadata comma-separated, in_port last:
    // `... total_len=1514 ct_state=new|trk,ct_zone=29009,...,ip,in_port=1 (via action) ...`.
    line.split([' ', ','])
        .find_map(|w| w.strip_prefix(key))
        .map(str::to_string)
}

/// `00000010  00 38 00 01 00 00 40 01-00 00 0a 00 00 07 0a 00 |..ascii..|`: (offset, bytes).
fn dump_line(line: &str) -> Option<(usize, Vec<u8>)> {
    let (offset, rest) = line.split_once("  ")?;
    if offset.len() != 8 || !offset.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let offset = usize::from_str_radix(offset, 16).ok()?;
    let hex = rest.split('|').next().unwrap_or("");
    let mut bytes = Vec::with_capacity(16);
    for tok in hex.split(|c: char| c.is_whitespace() || c == '-') {
        if tok.is_empty() {
            continue;
        }
        if tok.len() != 2 {
            return None;
        }
        bytes.push(u8::from_str_radix(tok, 16).ok()?);
    }
    Some((offset, bytes))
}

impl PacketInParser {
    pub fn feed(&mut self, line: &str) -> Parsed {
        let line = line.trim_end();
        if line.contains("PACKET_IN") && line.contains("data_len=") {
            let garbled = self.pending.take().map(|p| {
                format!(
                    "packet-in dump ended after {} of {} bytes",
                    p.data.len(),
                    p.data_len
                )
            });
            let data_len = field(line, "data_len=").and_then(|v| v.parse::<usize>().ok());
            let Some(data_len) = data_len else {
                return Parsed::Garbled(format!("packet-in header without a length: {line}"));
            };
            self.pending = Some(Pending {
                in_port: field(line, "in_port=").and_then(|v| v.parse().ok()),
                total_len: field(line, "total_len=")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(data_len),
                data_len,
                data: Vec::with_capacity(data_len),
            });
            return garbled.map_or(Parsed::Nothing, Parsed::Garbled);
        }
        let Some(p) = self.pending.as_mut() else {
            return Parsed::Nothing;
        };
        let Some((offset, bytes)) = dump_line(line) else {
            // The flow line between the header and the dump.
            return Parsed::Nothing;
        };
        if offset != p.data.len() {
            let p = self.pending.take().expect("pending");
            return Parsed::Garbled(format!(
                "packet-in dump jumped to offset {offset} after {} of {} bytes",
                p.data.len(),
                p.data_len
            ));
        }
        p.data.extend(bytes);
        if p.data.len() < p.data_len {
            return Parsed::Nothing;
        }
        let mut p = self.pending.take().expect("pending");
        p.data.truncate(p.data_len);
        Parsed::Packet(PacketIn {
            in_port: p.in_port,
            total_len: p.total_len,
            data: p.data,
        })
    }
}

/// A running `ovs-ofctl monitor`, killed when dropped.
pub struct Monitor {
    child: Child,
    /// Its control socket (`--unixctl`).
    control: PathBuf,
}

impl Monitor {
    /// Starts `ovs-ofctl -O OpenFlow14 monitor BRIDGE 65535 -m`, with its control socket in
    /// `control_dir` (see [`control_dir`] and [`PacketSender`]). The child gets SIGKILL when
    /// the thread that started it ends, so an agent killed outright leaves no monitor behind.
    pub fn start(bridge: &str, control_dir: &Path) -> io::Result<(Monitor, ChildStderr)> {
        use std::os::unix::process::CommandExt;
        ensure_private_dir(control_dir)?;
        let control = control_dir.join(format!("{}-{bridge}.ctl", std::process::id()));
        // Left by a monitor of this process that ended without cleaning up.
        let _ = std::fs::remove_file(&control);
        let mut cmd = Command::new("ovs-ofctl");
        cmd.arg(format!("--unixctl={}", control.display()))
            .args(["-O", "OpenFlow14", "monitor", bridge, "65535", "-m"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(io::Error::from)
            });
        }
        let mut child = cmd.spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("ovs-ofctl monitor has no stderr pipe"))?;
        Ok((Monitor { child, control }, stderr))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What sends packets back into the bridge through this monitor.
    pub fn sender(&self) -> PacketSender {
        PacketSender {
            control: self.control.clone(),
            connection: None,
            next_id: 0,
        }
    }

    /// Waits for the monitor to end (after its output ended) and says how it did.
    pub fn finish(mut self) -> String {
        match self.child.wait() {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.control);
    }
}

/// Where the monitors' control sockets go: a directory `monitors` beside the agent's own
/// socket (its run directory, root's), never a shared and predictable path such as /tmp
/// where another user could put a socket or link first. Whoever can connect to a monitor's
/// control socket can send any packet into the bridge.
pub fn control_dir(agent_socket: &Path) -> PathBuf {
    agent_socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("monitors")
}

/// Creates `dir` with mode 0700 (its parents as usual), or makes an existing one 0700; refuses
/// a directory that is a symbolic link or belongs to another user.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    // This process's effective user owns its /proc entry.
    let euid = std::fs::metadata("/proc/self")?.uid();
    if !meta.is_dir() || meta.uid() != euid {
        return Err(io::Error::other(format!(
            "{} is not a directory of this user's: refusing to put control sockets there",
            dir.display()
        )));
    }
    if meta.mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Sends packets back into the bridge over the monitor's own OpenFlow connection: each is an
/// `ofctl/packet-out` call on the monitor's control socket (OVS's JSON-RPC), so a packet
/// costs neither a process nor an OpenFlow handshake, as `ovs-ofctl packet-out` would.
pub struct PacketSender {
    control: PathBuf,
    connection: Option<(UnixStream, BufReader<UnixStream>)>,
    next_id: u64,
}

/// How long the monitor may take to open its control socket after it started.
const CONTROL_SOCKET_WAIT: Duration = Duration::from_secs(5);

impl PacketSender {
    /// Sends `frame` through the bridge as if it had come in on `in_port`, with `actions`
    /// (e.g. `output:3` or `LOCAL`).
    pub fn send(&mut self, in_port: u32, frame: &[u8], actions: &str) -> Result<(), OvsError> {
        let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        let spec = format!("in_port={in_port} packet={hex} actions={actions}");
        self.next_id += 1;
        let request = serde_json::json!({
            "id": self.next_id,
            "method": "ofctl/packet-out",
            "params": [spec],
        });
        let reply = self.call(&request).map_err(|e| {
            // The next packet starts from a new connection.
            self.connection = None;
            self.error(&e.to_string())
        })?;
        match reply.get("error") {
            None | Some(serde_json::Value::Null) => Ok(()),
            Some(e) => Err(self.error(&format!("the monitor refused the packet-out: {e}"))),
        }
    }

    fn call(&mut self, request: &serde_json::Value) -> io::Result<serde_json::Value> {
        if self.connection.is_none() {
            let stream = connect_when_ready(&self.control)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.set_write_timeout(Some(Duration::from_secs(5)))?;
            let reader = BufReader::new(stream.try_clone()?);
            self.connection = Some((stream, reader));
        }
        let (stream, reader) = self.connection.as_mut().expect("connected above");
        stream.write_all(request.to_string().as_bytes())?;
        // One JSON value per reply; the deserializer stops at its end.
        let mut replies = serde_json::Deserializer::from_reader(reader);
        serde::Deserialize::deserialize(&mut replies).map_err(io::Error::other)
    }

    fn error(&self, why: &str) -> OvsError {
        OvsError {
            argv: format!("ofctl/packet-out on {}", self.control.display()),
            status: "no reply".into(),
            stderr: why.to_string(),
        }
    }
}

/// Connects to the monitor's control socket, waiting a bounded time for a monitor that has
/// just started to open it.
fn connect_when_ready(path: &Path) -> io::Result<UnixStream> {
    let deadline = std::time::Instant::now() + CONTROL_SOCKET_WAIT;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_sockets_go_beside_the_agent_socket_in_a_private_directory() {
        use std::os::unix::fs::PermissionsExt;
        let run = std::env::temp_dir().join(format!("portiso-ctl-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        let dir = super::control_dir(&run.join("agent.sock"));
        assert_eq!(dir, run.join("monitors"));
        super::ensure_private_dir(&dir).unwrap();
        let mode = |d: &std::path::Path| std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        // One made with other modes is made private again.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        super::ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // A link in its place is refused.
        let link = run.join("linked");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(super::ensure_private_dir(&link).is_err());
        std::fs::remove_dir_all(&run).unwrap();
    }

    use super::*;

    /// What ovs-ofctl 3.1 printed with `-m -m -m` for a 70-byte packet-in.
    const OUTPUT: &str = "\
NXT_PACKET_IN2 (OF1.4) (xid=0x0): cookie=0x0 total_len=70 in_port=1 (via packet_out) data_len=70 (unbuffered)
icmp,vlan_tci=0x0000,dl_src=02:00:00:00:00:02,dl_dst=02:00:00:00:00:01,nw_src=10.0.0.7,nw_dst=10.0.0.1,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=3,icmp_code=3 icmp_csum:0
00000000  02 00 00 00 00 01 02 00-00 00 00 02 08 00 45 00
00000010  00 38 00 01 00 00 40 01-00 00 0a 00 00 07 0a 00
00000020  00 01 03 03 00 00 00 00-00 00 45 00 00 20 00 02
00000030  00 00 40 11 00 00 0a 00-00 01 0a 00 00 07 27 15
00000040  00 09 00 0c 00 00
00000000  05 04 00 90 00 00 00 00-00 00 23 20 00 00 00 1e |..........# ....|
00000010  00 00 00 4a 02 00 00 00-00 01 02 00 00 00 00 02 |...J............|
00000020  08 00 45 00 00 38 00 01-00 00 40 01 00 00 0a 00 |..E..8....@.....|
";

    fn parse(text: &str) -> Vec<Parsed> {
        let mut p = PacketInParser::default();
        text.lines()
            .map(|l| p.feed(l))
            .filter(|r| *r != Parsed::Nothing)
            .collect()
    }

    #[test]
    fn reads_the_packet_and_skips_the_message_dump() {
        let got = parse(&(OUTPUT.to_string() + OUTPUT));
        assert_eq!(got.len(), 2, "{got:?}");
        let Parsed::Packet(p) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(p.in_port, Some(1));
        // After conntrack, the in-port closes a comma-separated list of metadata.
        let header = "NXT_PACKET_IN2 (OF1.4) (xid=0x0): table_id=12 cookie=0x7023f2d7ac3684d4 total_len=1514 ct_state=new|trk,ct_zone=29009,ct_nw_src=198.51.100.7,ct_nw_dst=198.51.100.1,ct_nw_proto=17,ct_tp_src=4020,ct_tp_dst=10020,ip,in_port=3 (via action) data_len=1514 (unbuffered)";
        assert_eq!(super::field(header, "in_port=").as_deref(), Some("3"));
        assert_eq!(super::field(header, "data_len=").as_deref(), Some("1514"));
        assert_eq!(p.total_len, 70);
        assert!(!p.truncated());
        assert_eq!(p.data.len(), 70);
        assert_eq!(&p.data[..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&p.data[64..], &[0x00, 0x09, 0x00, 0x0c, 0x00, 0x00]);
        assert_eq!(got[0], got[1]);
    }

    #[test]
    fn a_dump_cut_short_is_reported_and_the_next_packet_still_read() {
        let cut: String = OUTPUT.lines().take(4).map(|l| format!("{l}\n")).collect();
        let got = parse(&(cut + OUTPUT));
        assert!(
            matches!(&got[0], Parsed::Garbled(m) if m.contains("32 of 70")),
            "{got:?}"
        );
        assert!(matches!(&got[1], Parsed::Packet(p) if p.data.len() == 70));
        let jumped = OUTPUT.replace("00000010  00 38", "00000020  00 38");
        assert!(matches!(&parse(&jumped)[0], Parsed::Garbled(m) if m.contains("offset 32")));
        assert!(parse("ovs-ofctl: br0 is not a bridge or a socket\n").is_empty());
    }
}
