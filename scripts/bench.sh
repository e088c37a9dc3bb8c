#!/usr/bin/env bash
# Runs the full `portiso bench` (release build, as root) and the criterion control-plane
# benches, and writes their results into docs/performance.md between the generated markers,
# and the plot to docs/bench.svg.
# Usage: bash scripts/bench.sh [extra portiso bench arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
out=target/bench
mkdir -p "$out"
./target/release/portiso bench --json "$out/bench.json" "$@" | tee "$out/table.md"
cp "$out/bench.svg" docs/bench.svg
cargo bench -p portiso --bench control_plane 2>/dev/null |
  awk '/^[a-zA-Z:_]+\/[^ ]*$/ {name=$1} /^[a-zA-Z:_]+\/[^ ]* +time:/ {name=$1}
       /time:/ {sub(/.*time: +/, ""); print "| " name " | " $0 " |"}' >"$out/criterion.md"
{
  echo "| bench | time [low median high] |"
  echo "| --- | --- |"
  cat "$out/criterion.md"
} >"$out/criterion-table.md"
# Replaces what lies between <!-- begin NAME --> and <!-- end NAME --> with a file's text.
put() {
  awk -v b="<!-- begin $1 -->" -v e="<!-- end $1 -->" -v f="$2" '
    $0 == b { print; while ((getline l < f) > 0) print l; skip = 1; next }
    $0 == e { skip = 0 }
    !skip { print }' docs/performance.md >docs/performance.md.tmp
  mv docs/performance.md.tmp docs/performance.md
}
put bench "$out/table.md"
put criterion "$out/criterion-table.md"
echo "updated docs/performance.md and docs/bench.svg"
