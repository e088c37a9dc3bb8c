//! The traffic of `portiso bench`: servers in the sandboxes, generators in the peer, all as
//! threads of this process that join a network namespace (see `testbed::netns`).
//!
//! One TCP port per sandbox speaks two tiny protocols, told apart by the first byte:
//! `S` (sink: read until EOF, answer the byte count as 8 bytes, close) for throughput, and
//! `R` (one 64-byte request, one 64-byte response, the server closes) for the connection rate.
//! The same port number on UDP echoes every datagram (request/response rate).

use crate::testbed::netns::{run_in, spawn_in};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Size of a request and of a response of the connection-rate and UDP protocols.
pub const MSG: usize = 64;
/// How long a server blocks before it looks at the stop flag.
const POLL: Duration = Duration::from_millis(500);

/// The servers of every sandbox; stopped (and joined) on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Servers {
    /// Starts a TCP and a UDP server on `port` in each namespace of `at`; returns once all
    /// are bound.
    pub fn start(at: &[(String, u16)]) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut servers = Servers {
            stop: stop.clone(),
            handles: Vec::new(),
        };
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        for (ns, port) in at {
            let addr = SocketAddr::from(([0, 0, 0, 0], *port));
            let (tx, stop_tcp) = (ready_tx.clone(), stop.clone());
            servers.handles.push(flatten(spawn_in(ns, move || {
                let l = bind_tcp(addr).inspect_err(|e| {
                    let _ = tx.send(Err(format!("TCP {addr}: {e}")));
                })?;
                let _ = tx.send(Ok(()));
                tcp_server(l, stop_tcp)
            })));
            let (tx, stop_udp) = (ready_tx.clone(), stop.clone());
            servers.handles.push(flatten(spawn_in(ns, move || {
                let s = UdpSocket::bind(addr).inspect_err(|e| {
                    let _ = tx.send(Err(format!("UDP {addr}: {e}")));
                })?;
                let _ = tx.send(Ok(()));
                udp_server(s, stop_udp)
            })));
        }
        for _ in 0..at.len() * 2 {
            match ready_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => anyhow::bail!("a sandbox server did not start: {e}"),
                Err(_) => anyhow::bail!("the sandbox servers did not start within 10 s"),
            }
        }
        Ok(servers)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn flatten(h: JoinHandle<std::io::Result<std::io::Result<()>>>) -> JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || {
        h.join()
            .map_err(|_| std::io::Error::other("server thread panicked"))?
            .and_then(|r| r)
    })
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    // Linux honours SO_RCVTIMEO on accept(): the loop sees the stop flag without busy-waiting.
    sock.set_read_timeout(Some(POLL))?;
    Ok(sock.into())
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn tcp_server(l: TcpListener, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    let mut sinks: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut s = match l.accept() {
            Ok((s, _)) => s,
            Err(e) if is_timeout(&e) || e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_nodelay(true);
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).is_err() {
            continue;
        }
        if first[0] == b'S' {
            sinks.retain(|h| !h.is_finished());
            sinks.push(std::thread::spawn(move || sink(s)));
        } else {
            // One request, one response; the server closes first so that TIME_WAIT stays here
            // and the peer can reuse its ports at once.
            let mut req = [0u8; MSG - 1];
            if s.read_exact(&mut req).is_ok() {
                let _ = s.write_all(&[b'r'; MSG]);
            }
        }
    }
    for h in sinks {
        let _ = h.join();
    }
    Ok(())
}

fn sink(mut s: TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 1;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = s.write_all(&total.to_be_bytes());
}

fn udp_server(s: UdpSocket, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    s.set_read_timeout(Some(POLL))?;
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                let _ = s.send_to(&buf[..n], from);
            }
            Err(e) if is_timeout(&e) || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A rate with its latency distribution.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Rate {
    pub per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub completed: u64,
    pub failed: u64,
    /// Busy CPU time of the whole machine (all CPUs: client, server, switch, kernel) per
    /// completed operation while it ran; None where /proc/stat cannot be read.
    pub cpu_us_per_op: Option<f64>,
}

/// The machine's busy CPU time so far, over all CPUs (user, nice, system, irq, softirq,
/// steal: everything but idle and iowait), from the first line of /proc/stat.
fn busy_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    // SAFETY: sysconf only reads a constant of the C library.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    Some(Duration::from_secs_f64(busy as f64 / hz as f64))
}

/// `r` with the CPU time spent since `before` spread over its completed operations.
fn with_cpu(mut r: Rate, before: Option<Duration>) -> Rate {
    r.cpu_us_per_op = match (before, busy_cpu()) {
        (Some(b), Some(a)) if r.completed > 0 => {
            Some(a.saturating_sub(b).as_secs_f64() * 1e6 / r.completed as f64)
        }
        _ => None,
    };
    r
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

fn rate(mut lat_us: Vec<u32>, failed: u64, elapsed: Duration) -> Rate {
    lat_us.sort_unstable();
    Rate {
        per_second: lat_us.len() as f64 / elapsed.as_secs_f64(),
        p50_us: percentile(&lat_us, 0.50),
        p99_us: percentile(&lat_us, 0.99),
        completed: lat_us.len() as u64,
        failed,
        cpu_us_per_op: None,
    }
}

/// One connection: connect, send one request, read the response until the server closes.
fn one_connection(to: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let mut req = [b'q'; MSG];
    req[0] = b'R';
    s.write_all(&req)?;
    let mut resp = Vec::with_capacity(MSG);
    s.read_to_end(&mut resp)?;
    if resp.len() != MSG {
        return Err(std::io::Error::other(format!(
            "short response: {} bytes",
            resp.len()
        )));
    }
    Ok(())
}

/// One UDP request/response on `sock`, matching the answer by sequence number.
fn one_udp(sock: &UdpSocket, to: SocketAddr, seq: u64, timeout: Duration) -> std::io::Result<()> {
    let mut req = [0u8; MSG];
    req[..8].copy_from_slice(&seq.to_be_bytes());
    sock.send_to(&req, to)?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
        sock.set_read_timeout(Some(left))?;
        let (n, _) = sock.recv_from(&mut buf)?;
        if n >= 8 && buf[..8] == seq.to_be_bytes() {
            return Ok(());
        }
    }
}

/// Waits until every target answers a connection and a datagram (ARP, MAC learning, flows
/// set up), retrying each for up to `patience`.
pub fn warm_up(peer_ns: &str, targets: &[SocketAddr], patience: Duration) -> anyhow::Result<()> {
    let targets = targets.to_vec();
    run_in(peer_ns, move || -> anyhow::Result<()> {
        let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
        for (seq, to) in targets.iter().enumerate() {
            let deadline = Instant::now() + patience;
            loop {
                let tcp = one_connection(*to, Duration::from_millis(500));
                let udp = one_udp(&sock, *to, seq as u64, Duration::from_millis(500));
                match (tcp, udp) {
                    (Ok(()), Ok(())) => break,
                    (t, u) if Instant::now() > deadline => anyhow::bail!(
                        "{to} does not answer from {peer}: tcp {t:?}, udp {u:?}",
                        peer = "the peer"
                    ),
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        Ok(())
    })?
}

/// New TCP connections per second at concurrency 1, round robin over `targets`.
pub fn connection_rate(
    peer_ns: &str,
    targets: &[SocketAddr],
    dur: Duration,
    interrupted: &'static AtomicBool,
) -> anyhow::Result<Rate> {
    let targets = targets.to_vec();
    Ok(run_in(peer_ns, move || {
        let mut lat = Vec::new();
        let mut failed = 0;
        let cpu = busy_cpu();
        let start = Instant::now();
        let mut k = 0;
        while start.elapsed() < dur && !interrupted.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            match one_connection(targets[k % targets.len()], Duration::from_secs(1)) {
                Ok(()) => lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32),
                Err(_) => failed += 1,
            }
            k += 1;
        }
        with_cpu(rate(lat, failed, start.elapsed()), cpu)
    })?)
}

/// UDP requests/responses per second at concurrency 1, round robin over `targets`.
pub fn udp_rate(
    peer_ns: &str,
    targets: &[SocketAddr],
    dur: Duration,
    interrupted: &'static AtomicBool,
) -> anyhow::Result<Rate> {
    let targets = targets.to_vec();
    run_in(peer_ns, move || -> anyhow::Result<Rate> {
        let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
        let mut lat = Vec::new();
        let mut failed = 0;
        let cpu = busy_cpu();
        let start = Instant::now();
        let mut seq: u64 = 1 << 32;
        while start.elapsed() < dur && !interrupted.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            let to = targets[seq as usize % targets.len()];
            match one_udp(&sock, to, seq, Duration::from_millis(200)) {
                Ok(()) => lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32),
                Err(_) => failed += 1,
            }
            seq += 1;
        }
        Ok(with_cpu(rate(lat, failed, start.elapsed()), cpu))
    })?
}

/// TCP throughput in Gbit/s of parallel streams, stream `(ns, to)` connecting from namespace
/// `ns` to `to` and sending for `dur`; counted by the receivers.
pub fn throughput(
    streams: &[(String, SocketAddr)],
    dur: Duration,
    interrupted: &'static AtomicBool,
) -> anyhow::Result<f64> {
    anyhow::ensure!(!streams.is_empty(), "no throughput streams");
    let handles: Vec<_> = streams
        .iter()
        .map(|(ns, to)| {
            let to = *to;
            spawn_in(ns, move || -> std::io::Result<(u64, Duration)> {
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.set_write_timeout(Some(Duration::from_secs(10)))?;
                let start = Instant::now();
                s.write_all(b"S")?;
                let buf = vec![0x5au8; 128 * 1024];
                while start.elapsed() < dur && !interrupted.load(Ordering::Relaxed) {
                    s.write_all(&buf)?;
                }
                s.shutdown(Shutdown::Write)?;
                let mut count = [0u8; 8];
                s.read_exact(&mut count)?;
                Ok((u64::from_be_bytes(count), start.elapsed()))
            })
        })
        .collect();
    let mut bytes = 0u64;
    let mut longest = Duration::ZERO;
    for h in handles {
        let (b, d) = h
            .join()
            .map_err(|_| anyhow::anyhow!("throughput thread panicked"))???;
        bytes += b;
        longest = longest.max(d);
    }
    Ok(bytes as f64 * 8.0 / longest.as_secs_f64() / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_and_spread_over_completed_operations() {
        let before = busy_cpu().expect("/proc/stat");
        let r = with_cpu(rate(vec![10; 4], 0, Duration::from_secs(1)), Some(before));
        assert!(r.cpu_us_per_op.is_some_and(|us| us >= 0.0), "{r:?}");
        let none = with_cpu(rate(vec![], 0, Duration::from_secs(1)), Some(before));
        assert_eq!(none.cpu_us_per_op, None);
    }
}
