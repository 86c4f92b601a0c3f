#!/usr/bin/env bash
# Soak test (not in CI): mixed collectives over N ranks for a fixed time,
# random sizes (log-uniform, 0 B .. 16 MiB), injected stalls, every result
# checked (bench/examples/soak.rs), and each rank's memory sampled from
# outside every SAMPLE seconds into a CSV. See docs/reliability.md, "Soak".
#
# Usage: bench/soak.sh [--minutes 60] [--ranks 4] [--seed 1] [--out DIR]
#                      [--sample-secs 10] [--warmup-secs W] [-- SOAK_ARGS...]
#   SOAK_ARGS go to the rank program (--stall-prob 0.005 --stall-min 0.1
#   --stall-max 2 --max-bytes 16777216 --report-secs 30).
#   W (default min(120, 10% of the run)) is when "RSS at start" is taken:
#   the first sample at or after W seconds.
#   Long runs: nohup nice -n 10 bench/soak.sh --out /tmp/zccl-soak > /tmp/soak.out 2>&1 &
#
# Builds zccl and the soak example in release (unless ZCCL_SOAK_NO_BUILD=1)
# and copies both into OUT/bin, so that rebuilds during the run do not
# touch the binaries under test. Writes OUT/run.log (the ranks' output),
# OUT/rss.csv (t_s,rank,pid,rss_kib,hwm_kib,anon_kib,shmem_kib,threads,fds)
# and OUT/summary.txt (also printed). Exit code: 0 when the job succeeded
# with no wrong result, else non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=60
RANKS=4
SEED=1
OUT=/tmp/zccl-soak
SAMPLE=10
WARMUP=
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=$2; shift 2 ;;
    --ranks) RANKS=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --sample-secs) SAMPLE=$2; shift 2 ;;
    --warmup-secs) WARMUP=$2; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$WARMUP" ]; then
  WARMUP=$(awk -v m="$MINUTES" 'BEGIN { w = m * 6; if (w > 120) w = 120; print w }')
fi

TARGET=${CARGO_TARGET_DIR:-target}
if [ "${ZCCL_SOAK_NO_BUILD:-0}" != 1 ]; then
  cargo build --release -q --bin zccl
  cargo build --release -q -p zccl-bench --example soak
fi
mkdir -p "$OUT/bin"
cp "$TARGET/release/zccl" "$TARGET/release/examples/soak" "$OUT/bin/"
ZCCL="$OUT/bin/zccl"
SOAK="$OUT/bin/soak"
LOG="$OUT/run.log"
CSV="$OUT/rss.csv"
SUM="$OUT/summary.txt"

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD -- primitives runtime transports 2>/dev/null || echo ' (+ uncommitted changes in primitives/runtime/transports)')"
  echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load at start: $(cut -d' ' -f1-3 /proc/loadavg); nice: $(nice)"
  echo "command: zccl run -n $RANKS -- soak --minutes $MINUTES --seed $SEED --warmup-secs $WARMUP ${EXTRA[*]}"
  echo "ZCCL_TIMEOUT=${ZCCL_TIMEOUT:-(default)} ZCCL_PEER_TIMEOUT=${ZCCL_PEER_TIMEOUT:-(default)} ZCCL_SHM_DISABLE=${ZCCL_SHM_DISABLE:-(default)}"
} > "$OUT/meta.txt"
cat "$OUT/meta.txt"

echo "t_s,rank,pid,rss_kib,hwm_kib,anon_kib,shmem_kib,threads,fds" > "$CSV"
START=$(date +%s)
"$ZCCL" run -n "$RANKS" -- "$SOAK" --minutes "$MINUTES" --seed "$SEED" \
  --warmup-secs "$WARMUP" "${EXTRA[@]}" > "$LOG" 2>&1 &
LPID=$!
trap 'kill -TERM $LPID 2>/dev/null || true' INT TERM

# rank of a pid, from the environment zccl run gave it
rank_of() { tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | sed -n 's/^ZCCL_RANK=//p'; }
field() { awk -v k="$1:" '$1 == k { print $2; exit }' "$2" 2>/dev/null; }

sample() {
  local t pid r st fds
  t=$(( $(date +%s) - START ))
  for pid in $(ps -o pid= --ppid "$LPID" 2>/dev/null); do
    r=$(rank_of "$pid")
    [ -n "$r" ] || continue
    st=/proc/$pid/status
    fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
    echo "$t,$r,$pid,$(field VmRSS "$st"),$(field VmHWM "$st"),$(field RssAnon "$st"),$(field RssShmem "$st"),$(field Threads "$st"),$fds" >> "$CSV"
  done
}

NEXT=$START
while kill -0 "$LPID" 2>/dev/null; do
  if [ "$(date +%s)" -ge "$NEXT" ]; then
    sample
    NEXT=$(( NEXT + SAMPLE ))
  fi
  sleep 1
done
RC=0
wait "$LPID" || RC=$?
END=$(date +%s)

{
  echo "== soak: $RANKS ranks, $MINUTES min requested, $(( END - START )) s wall, zccl run exit code $RC"
  cat "$OUT/meta.txt"
  echo
  echo "-- per rank (from the ranks' own summaries)"
  grep -h 'soak-summary' "$LOG" | sed 's/^\[[0-9]*\] //' || echo "(no soak-summary lines: see $LOG)"
  echo
  echo "-- operations by kind (rank 0; every rank runs the same sequence)"
  grep -h 'soak-kind rank=0 ' "$LOG" | sed 's/^\[[0-9]*\] //' | awk '{ printf "%-40s %s %s %s\n", $3, $4, $5, $6 }' || true
  grep -h 'soak-sizes rank=0 ' "$LOG" | sed 's/^\[[0-9]*\] //' || true
  echo
  echo "-- totals"
  awk '/soak-summary/ {
         for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
         ops += v["ops"]; wrong += v["wrong"]; err += v["errors"]; st = v["stalls_injected"]; ranks++ }
       END { printf "ranks reporting: %d; ops per rank: %d; wrong results (all ranks): %d; errors (all ranks): %d; stalls injected: %d\n",
             ranks, (ranks ? ops / ranks : 0), wrong, err, st }' "$LOG"
  echo "lines with WRONG: $(grep -c 'WRONG' "$LOG" || true); lines with ERROR or error: $(grep -c 'ERROR\|error:' "$LOG" || true)"
  echo
  echo "-- memory sampled from outside every ${SAMPLE}s ($CSV); start = first sample at t >= ${WARMUP}s"
  awk -F, -v w="$WARMUP" 'NR > 1 {
         r = $2
         if (!(r in first0)) { first0[r] = $4 }
         if ($1 >= w && !(r in start)) { start[r] = $4; st_t[r] = $1; fd0[r] = $9; th0[r] = $8 }
         if ($4 > max[r]) max[r] = $4
         end[r] = $4; end_t[r] = $1; fd1[r] = $9; th1[r] = $8; anon[r] = $6; shm[r] = $7; n[r]++
       }
       END {
         printf "%-5s %8s %12s %12s %12s %12s %8s %12s %12s %10s %10s\n", "rank", "samples", "first_kib", "start_kib", "max_kib", "end_kib", "growth", "end_anon", "end_shmem", "fds s->e", "thr s->e"
         for (r = 0; r in n; r++) {
           if (!(r in start)) { start[r] = first0[r]; fd0[r] = fd1[r]; th0[r] = th1[r] }
           g = end[r] - start[r]
           printf "%-5s %8d %12d %12d %12d %12d %+7.1f%% %12d %12d %4d->%-4d %4d->%-4d\n", r, n[r], first0[r], start[r], max[r], end[r],
                  (start[r] ? 100 * g / start[r] : 0), anon[r], shm[r], fd0[r], fd1[r], th0[r], th1[r]
         }
       }' "$CSV"
  echo
  echo "-- RSS trend after warm-up (RSS swings with the buffer sizes in flight, so compare medians, not single samples)"
  awk -F, -v w="$WARMUP" '
       function median(a, k,    i, j, x, b) {
         for (i = 1; i <= k; i++) b[i] = a[i]
         for (i = 2; i <= k; i++) { x = b[i]; for (j = i - 1; j >= 1 && b[j] > x; j--) b[j + 1] = b[j]; b[j + 1] = x }
         return (k % 2) ? b[(k + 1) / 2] : (b[k / 2] + b[k / 2 + 1]) / 2
       }
       NR > 1 && $1 >= w { r = $2; k = ++n[r]; t[r, k] = $1; v[r, k] = $4 }
       END {
         printf "%-5s %8s %16s %16s %10s %18s\n", "rank", "samples", "median_first_kib", "median_last_kib", "change", "slope_kib_per_h"
         for (r = 0; r in n; r++) {
           k = n[r]; m = int(k / 10); if (m < 3) m = (k < 3 ? k : 3)
           for (i = 1; i <= m; i++) { a[i] = v[r, i]; b[i] = v[r, k - m + i] }
           sx = sy = sxy = sxx = 0
           for (i = 1; i <= k; i++) { x = t[r, i] / 3600; y = v[r, i]; sx += x; sy += y; sxy += x * y; sxx += x * x }
           d = k * sxx - sx * sx; slope = d ? (k * sxy - sx * sy) / d : 0
           m1 = median(a, m); m2 = median(b, m)
           printf "%-5s %8d %16d %16d %+9.1f%% %+18.0f\n", r, k, m1, m2, (m1 ? 100 * (m2 - m1) / m1 : 0), slope
         }
       }' "$CSV"
} | tee "$SUM"

WRONG=$(awk '/soak-summary/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "wrong") w += kv[2] } } END { print w + 0 }' "$LOG")
[ "$RC" = 0 ] && [ "$WRONG" = 0 ]
