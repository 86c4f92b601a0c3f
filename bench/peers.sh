#!/usr/bin/env bash
# zccl-bench all_reduce against Gloo (torch.distributed) and Open MPI on this
# machine, interleaved in one session: ROUNDS rounds of
#   for n in RANKS: zccl, gloo, mpi
# at 1 MiB and 64 MiB (float32, sum), then the median of the rounds per
# (library, ranks, size). See docs/performance.md.
#
# Needs: zccl-bench built in release (the script builds it unless ZCCL_BENCH
# is given: `cargo build --release` alone builds only the root package, and
# a stale zccl-bench would be measured), and the peers as
# ../shared/peers/setup.sh installs them (`setup.sh torch-apt`: Open MPI,
# /opt/peers-venv with mpi4py, Debian's python3-torch).
#
# Usage: bench/peers.sh [OUTDIR]      (env: OP=all_reduce|all_gather|alltoall
#        ROUNDS=3 RANKS="2 4" ZCCL_ITERS=20
#        ZCCL_BENCH=target/release/zccl-bench PEERS=../shared/peers
#        PY_TORCH=/usr/bin/python3 PY_MPI=/opt/peers-venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/zccl-peers}
ROUNDS=${ROUNDS:-3}
RANKS=${RANKS:-"2 4"}
OP=${OP:-all_reduce}
case "$OP" in
  all_reduce) POP=allreduce ;;
  all_gather) POP=allgather ;;
  alltoall) POP=alltoall ;;
  *) echo "OP must be all_reduce, all_gather or alltoall" >&2; exit 2 ;;
esac
ZCCL_ITERS=${ZCCL_ITERS:-20}
if [ -z "${ZCCL_BENCH:-}" ]; then
  ZCCL_BENCH=${CARGO_TARGET_DIR:-target}/release/zccl-bench
  cargo build --release -q -p zccl-bench
fi
PEERS=${PEERS:-../shared/peers}
PY_TORCH=${PY_TORCH:-/usr/bin/python3}
PY_MPI=${PY_MPI:-/opt/peers-venv/bin/python}
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --mca btl self,vader --mca oob_tcp_if_include lo)
SIZES=(--min-bytes 1M --max-bytes 64M --factor 64)

[ -x "$ZCCL_BENCH" ] || { echo "no $ZCCL_BENCH: cargo build --release -p zccl-bench first" >&2; exit 2; }
mkdir -p "$OUT"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "op: $OP"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD -- primitives runtime transports 2>/dev/null || echo ' (+ uncommitted changes in primitives/runtime/transports)')"
  echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "kernel: $(uname -r)"
  echo "torch: $("$PY_TORCH" -c 'import torch; print(torch.__version__)' 2>&1)"
  echo "mpi: $(mpirun --version 2>&1 | head -1)"
} | tee "$OUT/env.txt"

for round in $(seq 1 "$ROUNDS"); do
  for n in $RANKS; do
    echo "== round $round, $n ranks"
    # -a 3: the slowest rank's time, as the peers' scripts report it.
    timeout 300 "$ZCCL_BENCH" "$OP" -N "$n" -b 1M -e 64M -f 64 -n "$ZCCL_ITERS" -w 2 -c 1 -a 3 \
      --no-progress --json "$OUT/zccl_np${n}_r${round}.json" > "$OUT/zccl_np${n}_r${round}.txt" 2>&1 \
      || echo "zccl failed (see $OUT/zccl_np${n}_r${round}.txt)"
    timeout 300 "$PY_TORCH" "$PEERS/gloo_allreduce.py" --world-size "$n" --ops "$POP" "${SIZES[@]}" \
      --port $((29500 + RANDOM % 1000)) > "$OUT/gloo_np${n}_r${round}.txt" 2>&1 \
      || echo "gloo failed (see $OUT/gloo_np${n}_r${round}.txt)"
    timeout 300 "${MPIRUN[@]}" -np "$n" "$PY_MPI" "$PEERS/mpi_bench.py" --ops "$POP" "${SIZES[@]}" \
      > "$OUT/mpi_np${n}_r${round}.txt" 2>&1 \
      || echo "mpi failed (see $OUT/mpi_np${n}_r${round}.txt)"
  done
done

python3 - "$OUT" "$POP" <<'EOF'
import glob, json, os, re, statistics, sys
out, pop = sys.argv[1], sys.argv[2]
res = {}  # (lib, n, size) -> list of (time_us, busbw)
def add(key, t, b):
    res.setdefault(key, []).append((t, b))
for f in glob.glob(os.path.join(out, "zccl_np*_r*.json")):
    n = int(re.search(r"np(\d+)", f).group(1))
    for r in json.load(open(f)):
        lib = "zccl in-place" if r["in_place"] else "zccl out-of-place"
        add((lib, n, r["size"]), r["time_us"], r["busbw"])
for lib in ("gloo", "mpi"):
    for f in glob.glob(os.path.join(out, f"{lib}_np*_r*.txt")):
        n = int(re.search(r"np(\d+)", f).group(1))
        for line in open(f):
            p = line.split()
            if len(p) == 6 and p[0] == pop:
                add(({"gloo": "Gloo", "mpi": "Open MPI"}[lib], n, int(p[1])), float(p[3]), float(p[5]))
libs = ["zccl out-of-place", "zccl in-place", "Gloo", "Open MPI"]
med = {k: (statistics.median(t for t, _ in v), statistics.median(b for _, b in v), len(v))
       for k, v in res.items()}
print("\n| ranks | size | " + " | ".join(f"{l} time (µs) / busbw (GB/s)" for l in libs) + " |")
print("|---:|---:|" + "---:|" * len(libs))
for n in sorted({k[1] for k in med}):
    for size in sorted({k[2] for k in med if k[1] == n}):
        cells = []
        for l in libs:
            m = med.get((l, n, size))
            cells.append(f"{m[0]:.1f} / {m[1]:.3f} (n={m[2]})" if m else "—")
        print(f"| {n} | {size >> 20} MiB | " + " | ".join(cells) + " |")
print("\nbusbw ratios (median zccl / median peer): in-place vs Gloo (both in place), "
      "out-of-place vs Open MPI (both out of place), and best zccl half vs each")
print("\n| ranks | size | zccl in-place / Gloo | zccl out-of-place / Open MPI | best zccl / Gloo | best zccl / Open MPI |")
print("|---:|---:|---:|---:|---:|---:|")
for n in sorted({k[1] for k in med}):
    for size in sorted({k[2] for k in med if k[1] == n}):
        g = lambda l: med.get((l, n, size), (0, 0))[1]
        best = max(g("zccl in-place"), g("zccl out-of-place"))
        r = lambda a, b: f"{a / b:.2f}×" if a and b else "—"
        print(f"| {n} | {size >> 20} MiB | {r(g('zccl in-place'), g('Gloo'))} | "
              f"{r(g('zccl out-of-place'), g('Open MPI'))} | {r(best, g('Gloo'))} | {r(best, g('Open MPI'))} |")
EOF
