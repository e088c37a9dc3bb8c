//! `portiso demo` as the README runs it: it must finish, report every check as landed where
//! expected, and leave nothing behind.

#[test]
fn the_demo_runs_end_to_end_and_cleans_up() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portiso"))
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("checks landed where expected"), "{stdout}");
    assert!(!stdout.contains("BAD"), "{stdout}");
    for row in ["10000/tcp", "10100/tcp", "22/tcp", "web1 pings", "refused"] {
        assert!(stdout.contains(row), "row {row} missing:\n{stdout}");
    }
    let left = portiso::exec::run("ip", &["netns", "list"]).unwrap();
    assert!(
        !left.contains("portiso-demo-"),
        "demo left namespaces: {left}"
    );
}
