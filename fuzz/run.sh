#!/usr/bin/env bash
# Runs one fuzz target the way docs/reliability.md ("Fuzzing") records it:
#   fuzz/run.sh <target> [runs] [seconds]
# Targets: frame, handshake, router_wire, topology_xml. Defaults: 10 M runs
# or 30 minutes, whichever comes first. Needs cargo-fuzz (cargo install
# cargo-fuzz); RUSTC_BOOTSTRAP=1 lets libFuzzer's flags through on stable.
# New inputs go to fuzz/corpus/<target>/, crashes to fuzz/artifacts/<target>/;
# minimise the corpus afterwards with
#   RUSTC_BOOTSTRAP=1 cargo fuzz cmin -s none <target>
set -euo pipefail
target=${1:?usage: fuzz/run.sh <target> [runs] [seconds]}
runs=${2:-10000000}
secs=${3:-1800}
case $target in
  frame) max_len=1200 ;;
  handshake) max_len=128 ;;
  router_wire) max_len=256 ;;
  topology_xml) max_len=65536 ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
exec nice -n 10 cargo fuzz run -s none "$target" -- \
  -runs="$runs" -max_total_time="$secs" -max_len="$max_len" \
  -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
