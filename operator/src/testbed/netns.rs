//! Running code inside a named network namespace: a thread that joins the namespace and
//! opens its sockets there (a socket belongs to the namespace it was created in).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Whether a socket error only means that its read timeout passed.
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Runs `f` on a new thread inside the network namespace /run/netns/NAME.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<std::io::Result<T>> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        Ok(f())
    })
}

/// Runs `f` inside the namespace and waits for it.
pub fn run_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    spawn_in(ns, f)
        .join()
        .map_err(|_| std::io::Error::other("thread in netns panicked"))?
}

/// TCP/UDP port listeners in one namespace, collecting whatever arrives until `deadline`.
pub struct Listener {
    handle: JoinHandle<std::io::Result<Vec<String>>>,
}

impl Listener {
    /// Listens on 0.0.0.0:port (TCP or UDP) in `ns`; returns once the socket is bound.
    pub fn start(ns: &str, udp: bool, port: u16, listen_for: Duration) -> std::io::Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<()>>();
        let handle = spawn_in(ns, move || -> std::io::Result<Vec<String>> {
            let addr: SocketAddr = ([0, 0, 0, 0], port).into();
            let deadline = Instant::now() + listen_for;
            if udp {
                let sock = match UdpSocket::bind(addr) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                        return Err(e);
                    }
                };
                let _ = ready_tx.send(Ok(()));
                collect_udp(&sock, deadline)
            } else {
                let l = match TcpListener::bind(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                        return Err(e);
                    }
                };
                let _ = ready_tx.send(Ok(()));
                collect_tcp(&l, deadline)
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Self {
                handle: flatten(handle),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::other("listener did not start within 5 s")),
        }
    }

    /// Waits for the listening time to end and returns every message received.
    pub fn received(self) -> std::io::Result<Vec<String>> {
        self.handle
            .join()
            .map_err(|_| std::io::Error::other("listener thread panicked"))?
    }
}

/// A thread that waits for `h` (a [`spawn_in`] thread) and passes on its result, so that
/// callers get one `io::Result` whether joining into the namespace or the work failed.
fn flatten<T: Send + 'static>(
    h: JoinHandle<std::io::Result<std::io::Result<T>>>,
) -> JoinHandle<std::io::Result<T>> {
    std::thread::spawn(move || {
        h.join()
            .map_err(|_| std::io::Error::other("thread in netns panicked"))?
            .and_then(|r| r)
    })
}

fn collect_udp(sock: &UdpSocket, deadline: Instant) -> std::io::Result<Vec<String>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(left) = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                // Answer, so that request/response checks see the way back too.
                let _ = sock.send_to(&buf[..n], from);
            }
            Err(e) if timed_out(&e) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn collect_tcp(l: &TcpListener, deadline: Instant) -> std::io::Result<Vec<String>> {
    l.set_nonblocking(true)?;
    let mut got = Vec::new();
    while Instant::now() < deadline {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut text = String::new();
                let _ = s.read_to_string(&mut text);
                // Echo back so the client knows who answered.
                let _ = s.write_all(text.as_bytes());
                got.push(text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Sends `msg` over a new TCP connection from namespace `ns` (optionally from a given local
/// port) and returns what the other side echoed, or the error.
pub fn tcp_send(
    ns: &str,
    to: SocketAddr,
    from_port: Option<u16>,
    msg: &str,
) -> std::io::Result<String> {
    let msg = msg.to_string();
    run_in(ns, move || -> std::io::Result<String> {
        let s = match from_port {
            None => TcpStream::connect_timeout(&to, Duration::from_secs(3))?,
            Some(p) => {
                let sock =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                sock.set_reuse_address(true)?;
                sock.bind(&SocketAddr::from(([0, 0, 0, 0], p)).into())?;
                sock.connect_timeout(&to.into(), Duration::from_secs(3))?;
                sock.into()
            }
        };
        let mut s: TcpStream = s;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(msg.as_bytes())?;
        s.shutdown(Shutdown::Write)?;
        let mut back = String::new();
        s.read_to_string(&mut back)?;
        Ok(back)
    })?
}

/// Sends one UDP datagram from `ns` (from `from_port`, or any) and waits briefly for an echo.
pub fn udp_send(
    ns: &str,
    to: SocketAddr,
    from_port: Option<u16>,
    msg: &str,
) -> std::io::Result<Option<String>> {
    let msg = msg.to_string();
    run_in(ns, move || -> std::io::Result<Option<String>> {
        let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], from_port.unwrap_or(0))))?;
        sock.send_to(msg.as_bytes(), to)?;
        sock.set_read_timeout(Some(Duration::from_millis(1500)))?;
        let mut buf = [0u8; 2048];
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
            Err(e) if timed_out(&e) => Ok(None),
            Err(e) => Err(e),
        }
    })?
}

/// Counts the frames that arrive (not those sent) on any interface of namespace `ns` during
/// `window` and satisfy `want`. A packet socket sees every frame the interfaces receive, also
/// ones the IP stack would drop, so "0 arrived" is a real observation.
pub fn count_frames(
    ns: &str,
    window: Duration,
    want: fn(&[u8]) -> bool,
) -> std::io::Result<JoinHandle<std::io::Result<usize>>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = spawn_in(ns, move || -> std::io::Result<usize> {
        const ETH_P_ALL: i32 = 0x0003;
        const PACKET_OUTGOING: u8 = 4;
        let proto = socket2::Protocol::from((ETH_P_ALL as u16).to_be() as i32);
        let sock = socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, Some(proto))?;
        // Room for bursts of thousands of frames while this thread waits for a CPU (busy
        // daemons starting beside it on two cores), so that a count is never short because the
        // counter fell behind. FORCE: as root, past net.core.rmem_max (~200 KiB, ~250 frames).
        let _ = nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::RcvBufForce,
            &(32 << 20),
        )
        .or_else(|_| {
            sock.set_recv_buffer_size(16 << 20)
                .map_err(|_| nix::Error::EINVAL)
        });
        let _ = ready_tx.send(());
        let deadline = Instant::now() + window;
        let mut n = 0;
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        while let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            sock.set_read_timeout(Some(left))?;
            match sock.recv_from(&mut buf) {
                Ok((len, from)) => {
                    // sockaddr_ll: family(2) protocol(2) ifindex(4) hatype(2) pkttype(1)
                    // SAFETY: the kernel filled a sockaddr_ll of `from.len()` bytes.
                    let pkttype = unsafe { *(from.as_ptr() as *const u8).add(10) };
                    // SAFETY: recv_from initialised the first `len` bytes.
                    let frame: Vec<u8> = buf[..len]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    if pkttype != PACKET_OUTGOING && want(&frame) {
                        n += 1;
                    }
                }
                Err(e) if timed_out(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| std::io::Error::other("frame counter did not start"))?;
    Ok(flatten(h))
}

/// Frame matchers for [`count_frames`] (Ethernet + IPv4 without VLAN).
pub mod frame {
    fn ipv4(f: &[u8]) -> Option<&[u8]> {
        (f.len() > 34 && f[12] == 0x08 && f[13] == 0x00).then(|| &f[14..])
    }
    fn l4(ip: &[u8]) -> &[u8] {
        let ihl = (ip[0] & 0x0f) as usize * 4;
        ip.get(ihl..).unwrap_or(&[])
    }
    pub fn arp_request(f: &[u8]) -> bool {
        f.len() >= 22 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 1
    }
    pub fn arp_reply(f: &[u8]) -> bool {
        f.len() >= 22 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 2
    }
    pub fn icmp_type(f: &[u8], t: u8) -> bool {
        ipv4(f).is_some_and(|ip| ip[9] == 1 && l4(ip).first() == Some(&t))
    }
    pub fn echo_request(f: &[u8]) -> bool {
        icmp_type(f, 8)
    }
    pub fn echo_reply(f: &[u8]) -> bool {
        icmp_type(f, 0)
    }
    /// TCP or UDP with destination port in 10000-19999 (the tests' sandbox ports).
    pub fn to_sandbox_ports(f: &[u8]) -> bool {
        ipv4(f).is_some_and(|ip| {
            let p = l4(ip);
            (ip[9] == 6 || ip[9] == 17)
                && p.len() >= 4
                && (10000..20000).contains(&u16::from_be_bytes([p[2], p[3]]))
        })
    }
}
