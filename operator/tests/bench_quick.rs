//! `portiso bench --quick` as the test suite runs it, so that the harness never rots: it must
//! build and measure every system (OVS ct(nat) included), time the CNI bridge plugin, write a
//! JSON report with every metric positive (no thresholds: machines are noisy) and an SVG plot,
//! and leave nothing behind. Needs root, Open vSwitch and the CNI reference plugins.

#[test]
fn the_quick_bench_measures_every_system_and_cleans_up() {
    let dir = std::env::temp_dir().join(format!("portiso-bench-quick-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portiso"))
        .args(["bench", "--quick", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let svg = std::fs::read_to_string(json.with_extension("svg")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        svg.starts_with("<svg") && svg.contains("OVS ct(nat)") && svg.contains("<circle"),
        "no plot: {svg}"
    );

    let results = report["results"].as_array().expect("results");
    for system in [
        "raw-veth",
        "plain-ovs",
        "linux-nat",
        "ovs-ct-nat",
        "portiso",
    ] {
        let m = results
            .iter()
            .find(|m| m["system"] == system)
            .unwrap_or_else(|| panic!("{system} missing from {report:#}"));
        assert_eq!(m["sandboxes"], 1, "{m:#}");
        for metric in [
            "/tcp_throughput_gbps",
            "/tcp_throughput_out_gbps",
            "/tcp_connections/per_second",
            "/tcp_connections/p50_us",
            "/tcp_connections/p99_us",
            "/udp_request_response/per_second",
            "/udp_request_response/p50_us",
            "/udp_request_response/p99_us",
        ] {
            let v = m.pointer(metric).and_then(|v| v.as_f64());
            assert!(v.is_some_and(|v| v > 0.0), "{system}{metric} = {v:?}");
        }
        if system == "portiso" {
            for extra in [
                "/attach_ms_p50",
                "/next_attach_ms_p50",
                "/flow_update/total_ms",
                "/agent_rss_mib",
            ] {
                let v = m.pointer(extra).and_then(|v| v.as_f64());
                assert!(v.is_some_and(|v| v > 0.0), "portiso{extra} = {v:?}");
            }
        }
    }
    let ratios = report["ratios"].as_array().expect("ratios");
    for what in [
        "portiso / plain-ovs",
        "portiso / linux-nat",
        "portiso / ovs-ct-nat",
        "portiso / raw-veth",
        "plain-ovs / raw-veth",
        "linux-nat / raw-veth",
        "ovs-ct-nat / raw-veth",
    ] {
        let n = ratios
            .iter()
            .filter(|r| r["what"] == what && r["ratio"].as_f64().is_some_and(|x| x > 0.0))
            .count();
        assert_eq!(n, 4, "ratios {what}: {ratios:#?}");
    }
    for cp in [
        "compile_10k_ranges_ms",
        "overlap_100k_entries_ms",
        "arbitrate_100k_ranges_ms",
    ] {
        let v = report["control_plane"][cp].as_f64();
        assert!(v.is_some_and(|v| v > 0.0), "{cp} = {v:?}");
    }
    for key in [
        "/attach/bridge_plugin/next_add_ms_p50",
        "/attach/portiso_next_add_ms_p50",
        "/attach/ratio",
    ] {
        let v = report.pointer(key).and_then(|v| v.as_f64());
        assert!(v.is_some_and(|v| v > 0.0), "{key} = {v:?}");
    }
    let targets = report["targets"].as_array().expect("targets");
    assert!(targets.len() >= 8, "{targets:#?}");
    assert!(
        targets.iter().any(
            |t| t["target"].as_str().unwrap_or("").contains("OVS ct(nat)")
                && t["status"] != "not measured"
        ),
        "{targets:#?}"
    );
    assert!(
        targets
            .iter()
            .all(|t| ["met", "not met", "not measured"]
                .contains(&t["status"].as_str().unwrap_or(""))),
        "{targets:#?}"
    );
    assert!(stdout.contains("| portiso |"), "no table:\n{stdout}");

    let left = portiso::exec::run("ip", &["netns", "list"]).unwrap();
    for prefix in ["pbv-", "pbo-", "pbn-", "pbc-", "pbp-", "pbb-"] {
        assert!(
            !left.lines().any(|l| l.starts_with(prefix)),
            "bench left namespaces: {left}"
        );
    }
    for dir in [
        "portiso-bench-ovs-pbo",
        "portiso-bench-ovs-pbc",
        "portiso-bench-cni",
        "portiso-testbed-pbp",
    ] {
        let d = std::env::temp_dir().join(dir);
        assert!(!d.exists(), "bench left {}", d.display());
    }
}
