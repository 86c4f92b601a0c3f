#!/usr/bin/env bash
# zccl against Open MPI (vader, shared memory) and Gloo (torch.distributed)
# over the whole size range, interleaved in one session: ROUNDS rounds of
#   for n in RANKS: for each (op, size): zccl, Open MPI, Gloo
# then the median of the rounds per (library, op, ranks, size), and the
# ratios the progress-engine issue (#14) sets as targets (ratio of the
# medians); beside them, for information, the median of each round's own
# zccl / Open MPI ratio, steadier when the machine changes speed between
# rounds. See docs/performance.md.
#
#   all_reduce  at 8 B, 1 KiB, 4 KiB, 64 KiB, 256 KiB, 1 MiB, 64 MiB
#   alltoall    at 1 MiB, 64 MiB
#   sendrecv    at 8 B, 1 MiB, 64 MiB   (rank r -> r+1, from r-1)
#   pingpong    at 8 B                  (one-way time, half the round trip)
#
# Times are the slowest rank's (zccl -a 3, as the peers' scripts report
# them); zccl runs out of place (Open MPI's calls are out of place); float32.
# Every library is timed the same way: the same warm-up iterations, then 3
# windows of the same iteration count (the peers' --budget-bytes 1G lets
# their --max-iters set it; Gloo's is capped at 200), each window's time the slowest
# rank's mean, and the median window reported (zccl --repeats 3, the peers'
# --repeats default).
#
# Needs: `cargo build --release` (the `zccl` binary; or ZCCL_BIN), and the
# peers as ../shared/peers/setup.sh installs them (`setup.sh torch-apt`:
# Open MPI, /opt/peers-venv with mpi4py, Debian's python3-torch). A peer that
# is missing is skipped with a note; its columns stay empty.
#
# zccl's ranks run as `zccl bench -N` starts them, with
# GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (huge pages for their heap, as
# `zccl run` gives); the peers run with their own defaults. PEER_HUGETLB=1
# gives the peers' ranks the same tunable (a check that the difference is
# not the tunable's alone; Open MPI's buffers are numpy's, mapped apart).
#
# Usage: bench/sizes.sh [OUTDIR]
#   env: ROUNDS=3 RANKS="2 4" GLOO=1 (0: skip Gloo, it takes most of the time)
#        OPS="all_reduce alltoall sendrecv pingpong" ZCCL_BIN=target/release/zccl
#        PEERS=../shared/peers PY_TORCH=/usr/bin/python3 PY_MPI=/opt/peers-venv/bin/python
#        PEER_HUGETLB=0
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/zccl-sizes}
ROUNDS=${ROUNDS:-3}
RANKS=${RANKS:-"2 4"}
GLOO=${GLOO:-1}
OPS=${OPS:-"all_reduce alltoall sendrecv pingpong"}
ZCCL_BIN=${ZCCL_BIN:-${CARGO_TARGET_DIR:-target}/release/zccl}
PEERS=${PEERS:-../shared/peers}
PY_TORCH=${PY_TORCH:-/usr/bin/python3}
PY_MPI=${PY_MPI:-/opt/peers-venv/bin/python}
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --mca btl self,vader --mca oob_tcp_if_include lo)
PEER_HUGETLB=${PEER_HUGETLB:-0}
GLOO_ENV=(env)
if [ "$PEER_HUGETLB" = 1 ]; then
  # Appended to what the peers inherit, as zccl's launcher does.
  peer_tunables="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1"
  MPIRUN+=(-x "GLIBC_TUNABLES=$peer_tunables")
  GLOO_ENV=(env "GLIBC_TUNABLES=$peer_tunables")
fi

[ -x "$ZCCL_BIN" ] || { echo "no $ZCCL_BIN: cargo build --release first (or set ZCCL_BIN)" >&2; exit 2; }
have_mpi=1; command -v mpirun >/dev/null && [ -x "$PY_MPI" ] && [ -f "$PEERS/mpi_bench.py" ] || have_mpi=0
have_gloo=$GLOO; "$PY_TORCH" -c 'import torch.distributed' 2>/dev/null && [ -f "$PEERS/gloo_allreduce.py" ] || have_gloo=0
[ "$have_mpi" = 1 ] || echo "note: Open MPI / mpi4py / $PEERS/mpi_bench.py missing: Open MPI columns skipped (run ../shared/peers/setup.sh)"
[ "$have_gloo" = 1 ] || echo "note: Gloo columns skipped (GLOO=0, or no torch / $PEERS/gloo_allreduce.py)"

sizes_of() {
  case "$1" in
    all_reduce) echo "8 1K 4K 64K 256K 1M 64M" ;;
    alltoall) echo "1M 64M" ;;
    sendrecv) echo "8 1M 64M" ;;
    pingpong) echo "8" ;;
    *) echo "unknown op $1" >&2; exit 2 ;;
  esac
}
peer_op() { case "$1" in all_reduce) echo allreduce ;; *) echo "$1" ;; esac; }
# zccl iterations: about a quarter second per size at the speeds measured.
iters_of() {
  case "$1" in
    8|1K|4K) echo 5000 ;; 64K) echo 1000 ;; 256K) echo 300 ;; 1M) echo 100 ;; *) echo 10 ;;
  esac
}

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD -- primitives runtime transports 2>/dev/null || echo ' (+ uncommitted changes in primitives/runtime/transports)')"
  echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "kernel: $(uname -r)"
  echo "zccl's ranks: GLIBC_TUNABLES=${GLIBC_TUNABLES:-} (glibc.malloc.hugetlb=1 added unless set there) ZCCL_MALLOC_TUNE=${ZCCL_MALLOC_TUNE:-1}"
  echo "peers' GLIBC_TUNABLES=glibc.malloc.hugetlb=1: $([ "$PEER_HUGETLB" = 1 ] && echo yes || echo no)"
  if [ "$have_mpi" = 1 ]; then echo "mpi: $(mpirun --version 2>&1 | head -1)"; fi
  if [ "$have_gloo" = 1 ]; then echo "torch: $("$PY_TORCH" -c 'import torch; print(torch.__version__)' 2>&1)"; fi
} | tee "$OUT/env.txt"

for round in $(seq 1 "$ROUNDS"); do
  for n in $RANKS; do
    for op in $OPS; do
      for s in $(sizes_of "$op"); do
        tag="${op}_${s}_np${n}_r${round}"
        it=$(iters_of "$s")
        warm=$((it / 10 + 2))
        timeout 300 "$ZCCL_BIN" bench "$op" -N "$n" -b "$s" -e "$s" -n "$it" -w "$warm" --repeats 3 -c 1 -a 3 \
          --no-progress --json "$OUT/zccl_$tag.json" > "$OUT/zccl_$tag.txt" 2>&1 \
          || echo "zccl $tag failed (see $OUT/zccl_$tag.txt)"
        if [ "$have_mpi" = 1 ]; then
          timeout 300 "${MPIRUN[@]}" -np "$n" "$PY_MPI" "$PEERS/mpi_bench.py" --ops "$(peer_op "$op")" \
            --min-bytes "$s" --max-bytes "$s" --max-iters "$it" --budget-bytes 1G --warmup "$warm" --repeats 3 > "$OUT/mpi_$tag.txt" 2>&1 \
            || echo "mpi $tag failed (see $OUT/mpi_$tag.txt)"
        fi
        if [ "$have_gloo" = 1 ] && [ "$op" != pingpong ]; then
          timeout 300 "${GLOO_ENV[@]}" "$PY_TORCH" "$PEERS/gloo_allreduce.py" --world-size "$n" --ops "$(peer_op "$op")" \
            --min-bytes "$s" --max-bytes "$s" --max-iters $((it < 200 ? it : 200)) --budget-bytes 1G --warmup "$warm" --repeats 3 --port $((29500 + RANDOM % 1000)) > "$OUT/gloo_$tag.txt" 2>&1 \
            || echo "gloo $tag failed (see $OUT/gloo_$tag.txt)"
        fi
      done
    done
    echo "== round $round, $n ranks done"
  done
done

python3 - "$OUT" <<'EOF'
import glob, json, os, re, statistics, sys
out = sys.argv[1]
res = {}  # (lib, op, n, size) -> [time_us]
by_round = {}  # (lib, op, n, size) -> {round: time_us}
def add(k, t, rnd):
    res.setdefault(k, []).append(t)
    by_round.setdefault(k, {})[rnd] = t
for f in glob.glob(os.path.join(out, "zccl_*.json")):
    m = re.search(r"zccl_(\w+?)_[0-9KM]+_np(\d+)_r(\d+)", os.path.basename(f))
    op, n, rnd = m.group(1), int(m.group(2)), int(m.group(3))
    for r in json.load(open(f)):
        if not r["in_place"]:
            add(("zccl", op, n, r["size"]), r["time_us"], rnd)
peer_name = {"allreduce": "all_reduce", "alltoall": "alltoall", "sendrecv": "sendrecv", "pingpong": "pingpong"}
for lib in ("mpi", "gloo"):
    for f in glob.glob(os.path.join(out, f"{lib}_*.txt")):
        m = re.search(r"_np(\d+)_r(\d+)", f)
        n, rnd = int(m.group(1)), int(m.group(2))
        for line in open(f):
            p = line.split()
            if len(p) == 6 and p[0] in peer_name:
                add((lib, peer_name[p[0]], n, int(p[1])), float(p[3]), rnd)
med = {k: statistics.median(v) for k, v in res.items()}
cnt = {k: len(v) for k, v in res.items()}
def human(b):
    for u, m in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= m:
            return f"{b // m} {u}"
    return f"{b} B"
# zccl's sizes are the rows; the peers report the same sizes (all_to_all:
# nccl-tests' size = the per-rank buffer, as mpi_bench.py's).
print("\n| op | ranks | size | zccl (µs) | Open MPI (µs) | Gloo (µs) | zccl / Open MPI time | target | met | per-round ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|---:|")
def target(op, n, size):
    if op == "all_reduce":
        return ("≥ 1.5× busbw", 1 / 1.5) if size >= 64 << 20 else ("≤ 1.0×", 1.0)
    if op in ("alltoall", "sendrecv") and size >= 1 << 20:
        return ("≤ 1.0×", 1.0) if size >= 64 << 20 else ("≤ 1.25× (busbw ≥ 0.8×)", 1.25)
    if op in ("sendrecv", "pingpong") and size <= 8 and n == 2:
        return ("≤ 1.5×", 1.5)
    return ("—", None)
met_all = True
keys = sorted({k[1:] for k in med if k[0] == "zccl"}, key=lambda k: (["all_reduce", "alltoall", "sendrecv", "pingpong"].index(k[0]), k[1], k[2]))
for op, n, size in keys:
    z, m, g = (med.get((lib, op, n, size)) for lib in ("zccl", "mpi", "gloo"))
    ratio = z / m if z and m else None
    tname, bound = target(op, n, size)
    ok = "—" if bound is None or ratio is None else ("yes" if ratio <= bound else "**no**")
    if ok == "**no**":
        met_all = False
    f = lambda v: f"{v:.1f}" if v else "—"
    # The median of each round's own ratio (the two libraries' runs of one
    # round are minutes apart at most): information beside the target's
    # ratio of medians, steadier when the machine changes speed between
    # rounds.
    zr, mr = by_round.get(("zccl", op, n, size), {}), by_round.get(("mpi", op, n, size), {})
    pr = [zr[k] / mr[k] for k in zr if k in mr and mr[k]]
    prs = f"{statistics.median(pr):.2f}×" if pr else "—"
    print(f"| {op} | {n} | {human(size)} | {f(z)} | {f(m)} | {f(g)} | {f'{ratio:.2f}×' if ratio else '—'} | {tname} | {ok} | {prs} |")
rounds = sorted(set(cnt.values()))
print(f"\nmedians of {rounds} rounds per cell; time = the slowest rank's, µs per operation (pingpong: one way);")
print("met: the ratio of the medians against the target; per-round ratio: the median of each round's zccl / Open MPI (information)")
print("all targets met" if met_all else "some targets missed")
EOF
