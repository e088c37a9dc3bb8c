#!/usr/bin/env bash
# Print (as the last line of stdout) a directory holding a bootable test guest
# for operator/tests/vm.rs: `vmlinuz` (Debian's own amd64 kernel) and
# `initramfs.gz` (busybox-static, the kernel's virtio-net modules and a small
# static helper that serves the test's ports). Builds it once per kernel
# package version and version of this script; progress goes to stderr.
#
#   dir=$(bash e2e/guest-image.sh | tail -n1)
#   qemu-system-x86_64 -kernel "$dir/vmlinuz" -initrd "$dir/initramfs.gz" \
#       -append "console=ttyS0 portiso_tcp=10000 portiso_udp=10001 portiso_ports=10000-10099"
#
# The guest's /init takes its settings from the kernel command line (the
# kernel hands unknown `name=value` words to init as environment variables):
#   portiso_ports=LO-HI    its net.ipv4.ip_local_port_range, which must lie in
#                          its PortRange (as e2e/cloud-init-portiso.yaml does
#                          for real guests)
#   portiso_tcp=PORT       TCP port that answers "guest <kernel release> <msg>"
#   portiso_udp=PORT       UDP port that echoes "guest <kernel release> <msg>"
#   portiso_hello=PORT     optional: at boot, connect to the DHCP router on
#                          this TCP port and say hello (an outbound client)
# It brings up eth0 with udhcpc, pings the router, and prints lines starting
# with "PORTISO-GUEST" on the serial console; "PORTISO-GUEST READY" once both
# ports are bound.
#
# Environment:
#   PORTISO_CACHE             cache root (default /var/cache/portiso); the
#                             image goes to $PORTISO_CACHE/guest/<key>/.
#   PORTISO_GUEST_KERNEL_PKG  Debian kernel package to use (default: what
#                             linux-image-amd64 depends on).
#
# Needs (scripts/install-deps.sh): apt-get and dpkg-deb (the kernel .deb is
# downloaded and unpacked, never installed on this machine), kmod (depmod and
# modprobe resolve the module order), busybox-static, and rustc with glibc's
# static libraries (libc6-dev) for the helper.
set -euo pipefail

log() { printf 'guest-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The modules the guest's NIC needs, with their dependencies resolved by kmod.
GUEST_MODULES=(virtio_pci virtio_net)

KPKG=${PORTISO_GUEST_KERNEL_PKG:-}
if [[ -z "$KPKG" ]]; then
    # linux-image-amd64 is a metapackage: "Depends: linux-image-6.1.0-56-amd64 (= ...)".
    KPKG=$(apt-cache show --no-all-versions linux-image-amd64 |
        sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -n1)
    [[ -n "$KPKG" ]] || die "cannot resolve linux-image-amd64 (run apt-get update)"
fi
KVER=$(apt-cache show --no-all-versions "$KPKG" | sed -n 's/^Version: //p' | head -n1)
[[ -n "$KVER" ]] || die "no version of $KPKG known to apt"

# A new kernel or an edit of this script (which holds /init and the helper)
# gives a new directory, so a stale image is never reused.
SCRIPT_HASH=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
KEY="${KPKG}_${KVER}-${SCRIPT_HASH}"
CACHE_ROOT=${PORTISO_CACHE:-/var/cache/portiso}
OUT="$CACHE_ROOT/guest/$KEY"

if [[ -f "$OUT/BUILT" ]]; then
    log "cached: $OUT"
    echo "$OUT"
    exit 0
fi

mkdir -p "$CACHE_ROOT/guest"
# One builder at a time per key (two test runs may start together).
exec 9>"$CACHE_ROOT/guest/.lock-$KEY"
flock 9
if [[ -f "$OUT/BUILT" ]]; then
    log "built meanwhile: $OUT"
    echo "$OUT"
    exit 0
fi

WORK=$(mktemp -d "$CACHE_ROOT/guest/.build-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
log "building $OUT"

# ---- the kernel -------------------------------------------------------------
log "downloading $KPKG=$KVER"
# Running as root into a root-owned directory: apt's _apt sandbox user could
# not write there, so say plainly that root downloads it.
(cd "$WORK" && apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KVER" >&2)
mkdir "$WORK/deb"
dpkg-deb -x "$WORK"/*.deb "$WORK/deb"
rm -f "$WORK"/*.deb
KREL=$(basename "$(find "$WORK/deb/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)")
[[ -n "$KREL" && -f "$WORK/deb/boot/vmlinuz-$KREL" ]] || die "no kernel in $KPKG"

# The .deb ships no modules.dep (dpkg's postinst runs depmod): make one in the
# unpacked tree and let modprobe print the load order (dependencies first).
depmod -b "$WORK/deb" "$KREL"
ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,dev,proc,sys,run,tmp,lib/modules}
: >"$ROOT/modules.order"
for m in "${GUEST_MODULES[@]}"; do
    modprobe -d "$WORK/deb" -S "$KREL" --show-depends "$m" |
        while read -r kind path _; do
            # "builtin virtio_foo" lines need nothing; "insmod /path" lines do.
            [[ "$kind" == insmod ]] || continue
            name=$(basename "$path")
            case "$name" in
                *.ko.xz) xz -dc "$path" >"$ROOT/lib/modules/${name%.xz}"; name=${name%.xz} ;;
                *.ko.zst) zstd -qdc "$path" >"$ROOT/lib/modules/${name%.zst}"; name=${name%.zst} ;;
                *.ko) cp "$path" "$ROOT/lib/modules/$name" ;;
                *) die "unexpected module file $path" ;;
            esac
            # busybox insmod cannot read compressed modules: they were unpacked above.
            grep -qx "$name" "$ROOT/modules.order" || echo "$name" >>"$ROOT/modules.order"
        done
done
[[ -s "$ROOT/modules.order" ]] || log "all of ${GUEST_MODULES[*]} are built in"

# ---- busybox ----------------------------------------------------------------
BUSYBOX=$(command -v busybox) || die "busybox not found (package busybox-static)"
[[ "$(ldd "$BUSYBOX" 2>&1 || true)" == *"not a dynamic executable"* ]] ||
    die "$BUSYBOX is not static (package busybox-static)"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [[ "$applet" == busybox ]] || ln -s busybox "$ROOT/bin/$applet"
done

# ---- the helper: the guest's own TCP and UDP services, and an outbound client
# busybox's nc has no UDP mode, so the services are a few lines of Rust (std
# only), linked statically so that the initramfs needs no libc.
cat >"$WORK/portiso-guest.rs" <<'RUST'
//! Userspace of the portiso VM test guest (see e2e/guest-image.sh).
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Every answer names this kernel, so the peer can tell the guest from the host.
fn answer(msg: &[u8]) -> Vec<u8> {
    format!("guest {} {}", release(), String::from_utf8_lossy(msg)).into_bytes()
}

fn serve(tcp: u16, udp: u16) {
    let u = UdpSocket::bind(("0.0.0.0", udp)).expect("bind udp");
    let l = TcpListener::bind(("0.0.0.0", tcp)).expect("bind tcp");
    println!("PORTISO-GUEST READY tcp/{tcp} udp/{udp}");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        loop {
            if let Ok((n, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(&answer(&buf[..n]), from);
            }
        }
    });
    for s in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut s = s;
            // Read the whole request first: closing with unread data would send a RST.
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut msg = Vec::new();
            let _ = s.read_to_end(&mut msg);
            let _ = s.write_all(&answer(&msg));
        });
    }
}

fn hello(to: &str) -> std::io::Result<()> {
    let addr = to.parse().map_err(std::io::Error::other)?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    let local = s.local_addr()?.port();
    s.write_all(&answer(format!("hello from port {local}").as_bytes()))?;
    s.shutdown(Shutdown::Write)?;
    println!("PORTISO-GUEST hello sent from port {local}");
    Ok(())
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let port = |i: usize| a.get(i).and_then(|p| p.parse().ok()).expect("port");
    match a.get(1).map(String::as_str) {
        Some("serve") => serve(port(2), port(3)),
        Some("hello") => {
            if let Err(e) = hello(a.get(2).expect("HOST:PORT")) {
                println!("PORTISO-GUEST hello failed: {e}");
            }
        }
        _ => {
            eprintln!("usage: portiso-guest serve TCP UDP | hello HOST:PORT");
            std::process::exit(2);
        }
    }
}
RUST
command -v rustc >/dev/null || die "rustc not found"
rustc --edition 2021 -O -C target-feature=+crt-static -C strip=symbols \
    -o "$ROOT/bin/portiso-guest" "$WORK/portiso-guest.rs"

# ---- udhcpc's event script: busybox ships none ------------------------------
cat >"$ROOT/bin/dhcp-event" <<'SH'
#!/bin/sh
# udhcpc calls this with the lease in the environment ($ip, $mask = prefix
# length, $router); it configures eth0 the way Debian's ifupdown would.
case "$1" in
    deconfig)
        ip addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/$mask" dev "$interface"
        gw=${router%% *}
        [ -n "$gw" ] && ip route replace default via "$gw" dev "$interface"
        echo "$ip/$mask $gw" >/run/lease
        ;;
esac
exit 0
SH
chmod +x "$ROOT/bin/dhcp-event"

# ---- /init --------------------------------------------------------------------
cat >"$ROOT/init" <<'SH'
#!/bin/sh
# PID 1 of the portiso test guest: network up by DHCP, then the services.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec >/dev/console 2>&1
say() { echo "PORTISO-GUEST $*"; }
say "kernel $(cat /proc/sys/kernel/osrelease)"

while read -r m; do
    insmod "/lib/modules/$m" || say "insmod $m failed"
done </modules.order
ip link set lo up

# Client ports inside the guest's PortRange, or portiso drops its connections.
if [ -n "$portiso_ports" ]; then
    sysctl -q -w net.ipv4.ip_local_port_range="${portiso_ports%-*} ${portiso_ports#*-}"
fi
say "ip_local_port_range $(cat /proc/sys/net/ipv4/ip_local_port_range)"

i=0
while ! ip link show eth0 >/dev/null 2>&1; do
    i=$((i + 1)); [ "$i" -gt 50 ] && break; sleep 0.1
done
if udhcpc -i eth0 -s /bin/dhcp-event -q -n -t 20 -T 1 >/dev/null 2>&1; then
    read -r addr gw </run/lease
    say "lease $addr router $gw"
    if ping -c 3 -W 2 "$gw" >/dev/null 2>&1; then
        say "ping $gw ok"
    else
        say "ping $gw failed"
    fi
    [ -n "$portiso_hello" ] && portiso-guest hello "$gw:$portiso_hello"
else
    say "dhcp failed"
fi

# PID 1 must not exit: the services run as PID 1 (their death panics the
# kernel, which ends qemu under -no-reboot: a visible failure, not a hang).
exec portiso-guest serve "${portiso_tcp:-10000}" "${portiso_udp:-10001}"
SH
chmod +x "$ROOT/init"

# ---- pack -------------------------------------------------------------------
mkdir -p "$WORK/out"
cp "$WORK/deb/boot/vmlinuz-$KREL" "$WORK/out/vmlinuz"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | busybox cpio -o -H newc 2>/dev/null) |
    gzip -9n >"$WORK/out/initramfs.gz"
echo "$KREL" >"$WORK/out/kernel-release"
echo "$KPKG=$KVER" >"$WORK/out/kernel-package"
date -u +%FT%TZ >"$WORK/out/BUILT"
rm -rf "$OUT"
mv "$WORK/out" "$OUT"
log "built: $OUT (kernel $KREL, initramfs $(du -h "$OUT/initramfs.gz" | cut -f1))"
echo "$OUT"
