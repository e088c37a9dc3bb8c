//! Control-plane benches (criterion): the functions the agent and the operator run on every
//! change. Targets from issue 5: flow compile for 10k ranges < 5 ms, overlap check of 100k
//! ranges < 50 ms. Run with `cargo bench -p portiso --bench control_plane`; the results and
//! the method are in docs/performance.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use portiso::bench::synthetic;
use std::hint::black_box;

/// Range → value/mask blocks: an aligned block, a small odd range, the worst case.
fn cover(c: &mut Criterion) {
    let mut g = c.benchmark_group("model::cover");
    for (name, start, end) in [
        ("aligned_1024", 16384u16, 17407u16),
        ("odd_100", 10001, 10100),
        ("worst_1_65534", 1, 65534),
    ] {
        g.bench_with_input(
            BenchmarkId::from_parameter(name),
            &(start, end),
            |b, &(s, e)| b.iter(|| portiso::model::cover(black_box(s), black_box(e))),
        );
    }
    // 10k ranges of 12 ports each, as the compile bench uses.
    let ranges: Vec<(u16, u16)> = (0..10_000u32)
        .map(|i| {
            let s = (1030 + (i % 5000) * 12) as u16;
            (s, s + 11)
        })
        .collect();
    g.throughput(Throughput::Elements(ranges.len() as u64));
    g.bench_function("10k_ranges_of_12", |b| {
        b.iter(|| {
            ranges
                .iter()
                .map(|&(s, e)| portiso::model::cover(s, e).len())
                .sum::<usize>()
        })
    });
    g.finish();
}

/// The overlap index and arbitration over 100k entries / PortRanges.
fn overlap(c: &mut Criterion) {
    let mut g = c.benchmark_group("model::overlap");
    g.sample_size(20);
    for n in [10_000usize, 100_000] {
        let entries = synthetic::port_entries(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(
            BenchmarkId::new("overlapping_pairs", n),
            &entries,
            |b, e| b.iter(|| portiso::model::overlapping_pairs(black_box(e)).len()),
        );
    }
    g.finish();
    let mut g = c.benchmark_group("model::arbitrate");
    g.sample_size(10);
    let uplinks = synthetic::uplinks();
    for n in [10_000usize, 100_000] {
        let ranges = synthetic::port_ranges(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &ranges, |b, r| {
            b.iter(|| portiso::model::arbitrate(black_box(r), &uplinks, &[(0, 1023)]).len())
        });
    }
    g.finish();
}

/// The whole flow table of one bridge.
fn compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("flows::compile_bridge");
    g.sample_size(20);
    for n in [1_000usize, 10_000] {
        let state = synthetic::bridge_state(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("ranges", n), &state, |b, s| {
            b.iter(|| portiso::flows::compile_bridge(black_box(s)))
        });
    }
    g.finish();
}

/// Diffing a 10k-range table against what a bridge holds: nothing yet (every flow is added),
/// and exactly it (nothing changes, the agent's steady state). Each needs every flow's cookie.
fn diff(c: &mut Criterion) {
    let mut g = c.benchmark_group("flows::diff");
    g.sample_size(20);
    let n = 10_000usize;
    let table = portiso::flows::compile_bridge(&synthetic::bridge_state(n));
    let installed: Vec<u64> = table.flows.iter().map(|f| f.cookie()).collect();
    g.throughput(Throughput::Elements(n as u64));
    for (name, installed) in [("from_empty", &[][..]), ("unchanged", &installed[..])] {
        g.bench_with_input(BenchmarkId::new(name, n), &table, |b, t| {
            b.iter(|| portiso::flows::diff(black_box(t), black_box(installed)))
        });
    }
    g.finish();
}

criterion_group!(benches, cover, overlap, compile, diff);
criterion_main!(benches);
