//! Hand-made frames, as an attacker inside a sandbox would write them, and a packet socket to
//! send them: the isolation tests need frames no ordinary socket sends (forged addresses, ARP
//! replies, IP options, overlapping fragments, IPv6, VLAN tags).
//!
//! Every frame carries [`MARKER`] (in its payload, or in the Ethernet trailer where the
//! protocol has no payload), so that an observer can count exactly the attacker's frames with
//! [`carries_marker`].

use super::netns::run_in;
use std::net::Ipv4Addr;

/// Bytes no ordinary traffic contains.
pub const MARKER: &[u8] = b"PORTISO-ATTACK-FRAME";

/// Whether a frame is one of the attacker's (for `netns::count_frames`).
pub fn carries_marker(f: &[u8]) -> bool {
    f.windows(MARKER.len()).any(|w| w == MARKER)
}

pub type Mac = [u8; 6];

/// Parses `02:00:00:00:00:01`.
pub fn mac(text: &str) -> Mac {
    let mut m = [0; 6];
    for (i, part) in text.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(part, 16).expect("a MAC in hex");
    }
    m
}

/// An Ethernet header, with an 802.1Q tag if `vlan` is given.
pub fn ethernet(dst: Mac, src: Mac, vlan: Option<u16>, ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(id) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&(id & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet around `payload`: `options` (a multiple of 4 bytes) after the fixed
/// header; `fragment` = (offset in 8-byte units, more fragments) for a piece of a datagram.
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub options: Vec<u8>,
    pub id: u16,
    pub fragment: Option<(u16, bool)>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8) -> Self {
        Ipv4 {
            src,
            dst,
            protocol,
            options: Vec::new(),
            id: 0x7150,
            fragment: None,
        }
    }

    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40);
        let ihl = 5 + self.options.len() / 4;
        let total = (ihl * 4 + payload.len()) as u16;
        let (offset, more) = self.fragment.unwrap_or((0, false));
        let flags_offset = (u16::from(more) << 13) | (offset & 0x1fff);
        let mut h = vec![(4 << 4) | ihl as u8, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&flags_offset.to_be_bytes());
        h.extend_from_slice(&[64, self.protocol, 0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }
}

/// A UDP datagram (header and data) from `src` to `dst` port, checksummed for the given
/// addresses.
pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let len = (8 + data.len()) as u16;
    let mut d = Vec::with_capacity(len as usize);
    d.extend_from_slice(&sport.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(data);
    let mut pseudo = Vec::with_capacity(12 + d.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&d);
    let sum = match checksum(&pseudo) {
        0 => 0xffff,
        s => s,
    };
    d[6..8].copy_from_slice(&sum.to_be_bytes());
    d
}

/// An ICMP message of `icmp_type`/`code` with `body` (for errors: the quoted packet).
pub fn icmp(icmp_type: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(body);
    let sum = checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// An ARP message (`op` 1 request, 2 reply) for IPv4 over Ethernet; the marker rides in the
/// Ethernet trailer after it.
pub fn arp(op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a.extend_from_slice(MARKER);
    a
}

/// A minimal IPv6 packet carrying UDP with the marker (checksum left 0: it need only be
/// recognisable, not accepted).
pub fn ipv6_udp(sport: u16, dport: u16) -> Vec<u8> {
    let len = (8 + MARKER.len()) as u16;
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(MARKER);
    p
}

/// Sends each frame as is out of interface `ifname` in namespace `ns`, through a packet socket.
pub fn send_frames(ns: &str, ifname: &str, frames: Vec<Vec<u8>>) -> std::io::Result<()> {
    let ifname = ifname.to_string();
    run_in(ns, move || -> std::io::Result<()> {
        let index = nix::net::if_::if_nametoindex(ifname.as_str()).map_err(std::io::Error::from)?;
        let sock = socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, None)?;
        for f in frames {
            // sockaddr_ll: family, protocol 0 (the frame carries its type), ifindex, the rest 0.
            let mut ll: nix::libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            ll.sll_family = nix::libc::AF_PACKET as u16;
            ll.sll_ifindex = index as i32;
            ll.sll_halen = 6;
            // SAFETY: sockaddr_ll is plain data and smaller than sockaddr_storage.
            let addr = unsafe {
                socket2::SockAddr::try_init(|storage, len| {
                    std::ptr::copy_nonoverlapping(
                        &ll as *const _ as *const u8,
                        storage as *mut u8,
                        std::mem::size_of::<nix::libc::sockaddr_ll>(),
                    );
                    *len = std::mem::size_of::<nix::libc::sockaddr_ll>() as u32;
                    Ok(())
                })?
                .1
            };
            sock.send_to(&f, &addr)?;
        }
        Ok(())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let a = Ipv4Addr::new(198, 51, 100, 1);
        let b = Ipv4Addr::new(198, 51, 100, 7);
        let mut ip = Ipv4::new(a, b, 17);
        ip.options = vec![1, 1, 1, 0];
        let p = ip.packet(&udp(a, b, 10000, 8080, MARKER));
        assert_eq!(checksum(&p[..24]), 0, "IP header");
        assert_eq!(p[0], 0x46);
        let mut pseudo = [a.octets(), b.octets()].concat();
        pseudo.extend_from_slice(&[0, 17, 0, (8 + MARKER.len()) as u8]);
        pseudo.extend_from_slice(&p[24..]);
        assert_eq!(checksum(&pseudo), 0, "UDP");
        assert!(carries_marker(&p));
    }

    #[test]
    fn fragment_fields_are_written() {
        let a = Ipv4Addr::new(198, 51, 100, 1);
        let mut ip = Ipv4::new(a, a, 17);
        ip.fragment = Some((3, true));
        let p = ip.packet(&[0; 8]);
        assert_eq!(u16::from_be_bytes([p[6], p[7]]), 0x2003);
    }
}
