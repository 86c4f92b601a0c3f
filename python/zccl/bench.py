"""all_reduce (or a ring step) through zccl's torch backend, beside zccl native and gloo.

    python -m zccl.bench                       # 2 and 4 ranks, 1 KiB, 1 MiB, 64 MiB
    python -m zccl.bench --ranks 2 --sizes 1K,64M --rounds 5 --json out.json
    python -m zccl.bench --op ring             # ring-flash-attention's step

Each round runs, one after the other on the same machine, (1) the operation through
`torch.distributed` with the "zccl" backend, (2) the same with "gloo", (3) `zccl bench`
(the native Rust path; for all_reduce nccl-tests' in-place column); rounds are
interleaved and the table shows medians. Times are the slowest rank's (like nccl-tests'
`-a 3` and the peers' scripts). Ranks run under `zccl run` (set ZCCL_BIN, or have
`zccl` on PATH).

`--op all_reduce` (default): `dist.all_reduce` of float32, sum, in place; busbw is
nccl-tests' (2(n-1)/n x bytes / time). `--op ring`: one step of a ring as
ring-flash-attention's `RingComm` runs it, `dist.batch_isend_irecv` of an isend to the
next rank and an irecv from the previous one, then a wait on both; the native column is
`zccl bench sendrecv` (the same ring shift, nccl-tests' sendrecv), and busbw is bytes /
time.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(s):
    s = s.strip().upper().rstrip("B")
    if s and s[-1] in _UNITS:
        return int(float(s[:-1]) * _UNITS[s[-1]])
    return int(s)


def _human(n):
    for u, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m}{u}"
    return str(n)


def _iters(nbytes):
    """Iterations for a size: ~0.2-1 s per size on a small machine."""
    if nbytes <= 64 << 10:
        return 2000, 200
    if nbytes <= 4 << 20:
        return 100, 10
    return 10, 2


def _worker(args):
    """One rank: time all_reduce of each size through torch.distributed."""
    import numpy
    import torch
    import torch.distributed as dist

    if args.backend == "zccl":
        import zccl.torch  # noqa: F401 - registers the backend

    dist.init_process_group(args.backend)
    rank, n = dist.get_rank(), dist.get_world_size()
    out = []
    for nbytes in [_size(s) for s in args.sizes.split(",")]:
        # On numpy's memory, as the native bench's buffers (`zccl bench`
        # advises buffers of 4 MiB or more for huge pages, as numpy does):
        # the same kind of memory for the three columns.
        t = torch.from_numpy(numpy.ones(max(nbytes // 4, 1), dtype=numpy.float32))
        iters, warm = _iters(nbytes)
        if args.op == "ring":
            got = torch.from_numpy(numpy.zeros(t.numel(), dtype=numpy.float32))
            t.fill_(float(rank))
            nxt, prv = (rank + 1) % n, (rank - 1) % n

            def step():
                ops = [dist.P2POp(dist.isend, t, nxt), dist.P2POp(dist.irecv, got, prv)]
                for req in dist.batch_isend_irecv(ops):
                    req.wait()
        else:
            def step():
                dist.all_reduce(t)
        for _ in range(warm):
            step()
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        dt = torch.tensor([(time.perf_counter() - t0) / iters])
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)
        if args.op == "ring":
            # Every step received the previous rank's block.
            wrong = int((got != float(prv)).sum())
        else:
            # Check the data: iters + warm sums of n-fold growth would
            # overflow; one more sum of ones instead.
            t.fill_(1.0)
            dist.all_reduce(t)
            wrong = int((t != n).sum())
        out.append({"size": nbytes, "time_us": dt.item() * 1e6, "wrong": wrong})
    if rank == 0:
        print("ZCCL_BENCH " + json.dumps(out), flush=True)
    dist.destroy_process_group()


def _zccl_bin():
    b = os.environ.get("ZCCL_BIN") or shutil.which("zccl")
    if not b:
        sys.exit("zccl.bench: set ZCCL_BIN to the zccl binary (cargo build --release) or put zccl on PATH")
    return b


def _run_torch(zbin, n, backend, sizes, op):
    cmd = [zbin, "run", "-n", str(n), "--", sys.executable, "-m", "zccl.bench", "--worker", "--backend", backend]
    cmd += ["--sizes", sizes, "--op", op]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    for line in p.stdout.splitlines():
        if "ZCCL_BENCH " in line:
            return {r["size"]: r for r in json.loads(line.split("ZCCL_BENCH ", 1)[1])}
    raise RuntimeError(f"{backend} run with {n} ranks failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


def _run_native(zbin, n, sizes, op):
    res = {}
    for nbytes in sizes:
        iters, warm = _iters(nbytes)
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            # Unbound, like the torch ranks under `zccl run` (as torchrun).
            what = "sendrecv" if op == "ring" else "all_reduce"
            cmd = [zbin, "bench", what, "-N", str(n), "--bind-to", "none", "-b", str(nbytes), "-e", str(nbytes)]
            cmd += ["-n", str(iters), "-w", str(warm), "-a", "3", "--json", f.name]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if p.returncode != 0:
                raise RuntimeError(f"zccl bench failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
            rows = json.load(open(f.name))
        row = next(r for r in rows if r["in_place"] and r["size"] == nbytes)
        res[nbytes] = {"size": nbytes, "time_us": row["time_us"], "wrong": row["wrong"]}
    return res


def _busbw(nbytes, n, us, op="all_reduce"):
    factor = 1.0 if op == "ring" else 2 * (n - 1) / n
    return nbytes / (us * 1e-6) / 1e9 * factor if us > 0 else 0.0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m zccl.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", default="2,4", help="rank counts (default 2,4)")
    ap.add_argument("--sizes", default="1K,1M,64M", help="message sizes (default 1K,1M,64M)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are shown (default 3)")
    ap.add_argument("--op", default="all_reduce", choices=["all_reduce", "ring"],
                    help="all_reduce (default), or ring: a batch_isend_irecv ring step")
    ap.add_argument("--json", help="write every measurement and the medians here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="zccl", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)

    zbin = _zccl_bin()
    sizes = [_size(s) for s in args.sizes.split(",")]
    ranks = [int(r) for r in args.ranks.split(",")]
    runs = {(n, who): [] for n in ranks for who in ("torch-zccl", "gloo", "native")}
    for rnd in range(args.rounds):
        for n in ranks:
            runs[(n, "torch-zccl")].append(_run_torch(zbin, n, "zccl", args.sizes, args.op))
            runs[(n, "gloo")].append(_run_torch(zbin, n, "gloo", args.sizes, args.op))
            runs[(n, "native")].append(_run_native(zbin, n, sizes, args.op))
        print(f"# round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    wrong = sum(r[s]["wrong"] for v in runs.values() for r in v for s in sizes)
    what = ("ring step (batch_isend_irecv to the next rank, from the previous), float32" if args.op == "ring"
            else "all_reduce float32 sum, in place")
    print(f"# {what}; medians of {args.rounds} interleaved rounds; slowest rank's time")
    hdr = (
        f"{'ranks':>5} {'size':>6} | {'torch-zccl us':>13} {'native us':>10} {'gloo us':>10} | "
        f"{'zccl busbw':>10} {'native':>8} {'gloo':>8} | {'vs native':>9} {'vs gloo':>8} {'+us':>7}"
    )
    print(hdr)
    summary = []
    for n in ranks:
        for s in sizes:
            med = {w: statistics.median(r[s]["time_us"] for r in runs[(n, w)]) for w in ("torch-zccl", "gloo", "native")}
            bw = {w: _busbw(s, n, t, args.op) for w, t in med.items()}
            row = {
                "op": args.op,
                "ranks": n,
                "size": s,
                "time_us": med,
                "busbw": bw,
                "vs_native": bw["torch-zccl"] / bw["native"] if bw["native"] else 0.0,
                "vs_gloo": bw["torch-zccl"] / bw["gloo"] if bw["gloo"] else 0.0,
                "extra_us": med["torch-zccl"] - med["native"],
            }
            summary.append(row)
            print(
                f"{n:>5} {_human(s):>6} | {med['torch-zccl']:>13.1f} {med['native']:>10.1f} {med['gloo']:>10.1f} | "
                f"{bw['torch-zccl']:>10.3f} {bw['native']:>8.3f} {bw['gloo']:>8.3f} | "
                f"{row['vs_native']:>8.2f}x {row['vs_gloo']:>7.2f}x {row['extra_us']:>7.1f}"
            )
    print(f"# wrong results: {wrong}")
    if args.json:
        with open(args.json, "w") as f:
            raw = {f"{n}:{w}": v for (n, w), v in runs.items()}
            json.dump({"rounds": raw, "summary": summary}, f, indent=1)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
