//! Compiles the eBPF fast path (bpf/fastpath.c) with clang into the build's output directory;
//! the binary embeds the object (operator/src/fastpath/kernel.rs).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/fastpath.c";
    println!("cargo:rerun-if-changed={src}");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("fastpath.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // Debian keeps the kernel headers' asm/ directory under the multiarch include path.
    let multiarch = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new(&clang)
        .args([
            "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", &multiarch, "-c", src, "-o",
        ])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} could not compile {src} ({s}): see the errors above"),
        Err(e) => panic!(
            "cannot run {clang} ({e}): the eBPF fast path is compiled with clang; install Debian's \
             clang, llvm and libbpf-dev (scripts/install-deps.sh does), or set CLANG"
        ),
    }
}
