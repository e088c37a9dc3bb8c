//! The `portiso-cni` binary: everything lives in the library so it can be tested in-process.

fn main() {
    std::process::exit(portiso_cni::skel::run_process());
}
