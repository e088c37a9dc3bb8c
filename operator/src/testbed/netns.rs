//! Running code inside a named network namespace: a thread that joins the namespace and
//! opens its sockets there (a socket belongs to the namespace it was created in).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::io::Result<T> {
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
            Ok(Ok(())) => Ok(Self { handle: flatten(handle) }),
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

fn flatten(
    h: JoinHandle<std::io::Result<std::io::Result<Vec<String>>>>,
) -> JoinHandle<std::io::Result<Vec<String>>> {
    std::thread::spawn(move || {
        h.join()
            .map_err(|_| std::io::Error::other("listener thread panicked"))?
            .and_then(|r| r)
    })
}

fn collect_udp(sock: &UdpSocket, deadline: Instant) -> std::io::Result<Vec<String>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                // Answer, so that request/response checks see the way back too.
                let _ = sock.send_to(&buf[..n], from);
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
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
pub fn tcp_send(ns: &str, to: SocketAddr, from_port: Option<u16>, msg: &str) -> std::io::Result<String> {
    let msg = msg.to_string();
    run_in(ns, move || -> std::io::Result<String> {
        let s = match from_port {
            None => TcpStream::connect_timeout(&to, Duration::from_secs(3))?,
            Some(p) => {
                let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
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
pub fn udp_send(ns: &str, to: SocketAddr, from_port: Option<u16>, msg: &str) -> std::io::Result<Option<String>> {
    let msg = msg.to_string();
    run_in(ns, move || -> std::io::Result<Option<String>> {
        let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], from_port.unwrap_or(0))))?;
        sock.send_to(msg.as_bytes(), to)?;
        sock.set_read_timeout(Some(Duration::from_millis(1500)))?;
        let mut buf = [0u8; 2048];
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e),
        }
    })?
}

/// Counts ICMP packets of `icmp_type` that reach namespace `ns` during `window` (a raw socket
/// sees every ICMP packet the namespace's IP stack receives).
pub fn count_icmp(ns: &str, icmp_type: u8, window: Duration) -> std::io::Result<JoinHandle<std::io::Result<usize>>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = spawn_in(ns, move || -> std::io::Result<usize> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(socket2::Protocol::ICMPV4))?;
        let _ = ready_tx.send(());
        let deadline = Instant::now() + window;
        let mut n = 0;
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            sock.set_read_timeout(Some(left))?;
            match sock.recv(&mut buf) {
                Ok(len) if len > 20 => {
                    // SAFETY: recv initialised the first `len` bytes.
                    let ihl = (unsafe { buf[0].assume_init() } & 0x0f) as usize * 4;
                    if ihl < len && unsafe { buf[ihl].assume_init() } == icmp_type {
                        n += 1;
                    }
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| std::io::Error::other("ICMP counter did not start"))?;
    Ok(flatten_count(h))
}

fn flatten_count(h: JoinHandle<std::io::Result<std::io::Result<usize>>>) -> JoinHandle<std::io::Result<usize>> {
    std::thread::spawn(move || {
        h.join()
            .map_err(|_| std::io::Error::other("ICMP counter panicked"))?
            .and_then(|r| r)
    })
}
