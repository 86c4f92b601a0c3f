"""Rank program: zccl's own Python API, `zccl.Communicator.from_env()`, over
numpy arrays and torch CPU tensors (bfloat16 included), against references
each rank computes from every rank's input (regenerated from shared seeds).

Run as `zccl run -n N -- python native_api.py`. CHECK names start with
`native.<area>.`; areas: identity, all_reduce, all_reduce_out, all_gather,
reduce_scatter, broadcast, all_to_all, p2p, batch, ring_shift, ring_pass,
token_ring, all_scan, split, async, errors.

Integers and min/max bit-equal; float32/float64 sum/avg within 1e-6 of
sum_r |x_r| (the reduction order may differ), prod within 1e-6 relative;
float16/bfloat16 on exact small-integer inputs, bit-equal. All-Scan (float32)
against a sequential float64 recurrence within 1e-5 of its magnitude.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Checks, seed_of, short, watchdog  # noqa: E402

watchdog(100)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import zccl  # noqa: E402

comm = zccl.Communicator.from_env()
R, W = comm.rank, comm.size
C = Checks(R)


def rng(*key):
    return np.random.default_rng(seed_of(*key))


def arr(n, dtype, kind, *key):
    g = rng(*key)
    dtype = np.dtype(dtype)
    if kind == "bits":
        return g.integers(0, 256, size=n * dtype.itemsize, dtype=np.uint8).view(dtype).copy()
    if kind == "normal":
        return (g.standard_normal(n) * 4).astype(dtype)
    if kind == "prod":
        return ((g.random(n) * 1.5 + 0.5) * g.choice([-1.0, 1.0], n)).astype(dtype)
    if kind == "exact":
        return g.integers(-8, 9, n).astype(dtype)
    raise ValueError(kind)


def kind_for(dtype, op):
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        return "bits"
    if op in ("min", "max"):
        return "normal"
    if dtype == np.float16:
        return "exact"
    return "prod" if op == "prod" else "normal"


def fold(xs, op):
    fn = {"sum": np.add, "avg": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}[op]
    acc = xs[0].copy()
    with np.errstate(over="ignore"):
        for x in xs[1:]:
            acc = fn(acc, x).astype(xs[0].dtype)
    if op == "avg":
        assert acc.dtype.kind == "f", "integer avg: see trunc_div"
        acc = (acc / W).astype(acc.dtype)
    return acc


def close(got, ref, op, xs):
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape or got.dtype != ref.dtype:
        return False, f"shape/dtype {got.shape} {got.dtype} != {ref.shape} {ref.dtype}"
    exact = got.dtype.kind in "iub" or op in ("min", "max", None) or got.dtype == np.float16
    if exact:
        ok = got.tobytes() == ref.tobytes()
        if ok:
            return True, "bit-equal"
        bad = np.nonzero(got.reshape(-1) != ref.reshape(-1))[0][:5]
        return False, f"not bit-equal at {bad.tolist()} of {got.size}: got {got.reshape(-1)[bad].tolist()} ref {ref.reshape(-1)[bad].tolist()}"
    g, r = got.astype(np.float64), ref.astype(np.float64)
    scale = np.abs(r) if op == "prod" else sum(np.abs(x.astype(np.float64)) for x in xs) / (W if op == "avg" else 1)
    err = np.abs(g - r)
    lim = 1e-6 * scale + 1e-300
    return bool((err <= lim).all()), f"max err/(1e-6*scale) = {float((err / lim).max()) if err.size else 0:.3g}"


def trunc_div(v):
    """C's integer division toward zero (zccl's integer avg)."""
    q = abs(v) // W
    return q if v >= 0 else -q


# -- collectives -----------------------------------------------------------

NP_DTYPES = [np.uint8, np.int32, np.int64, np.float16, np.float32, np.float64]
OPS = ["sum", "prod", "min", "max", "avg"]


def all_reduce_np(dtype, op, n, inplace=True):
    dtype = np.dtype(dtype)
    xs = [arr(n, dtype, kind_for(dtype, op), "nar", dtype.name, op, n, r) for r in range(W)]
    if dtype.kind in "iu" and op == "avg":
        s = fold(xs, "sum")
        ref = np.array([trunc_div(int(v)) for v in s.tolist()], dtype=dtype)
    else:
        ref = fold(xs, op)
    x = xs[R].copy()
    if inplace:
        assert comm.all_reduce(x, op) is None
        return close(x, ref, op, xs)
    out = np.full_like(x, 3)
    comm.all_reduce(x, op, out=out)
    if x.tobytes() != xs[R].tobytes():
        return False, "out-of-place all_reduce modified its input"
    return close(out, ref, op, xs)


def t_exact(n, dtype, *key):
    g = torch.Generator().manual_seed(seed_of(*key))
    return torch.randint(-8, 9, (n,), generator=g).to(dtype)


def all_reduce_torch(dtype, op, n, inplace=True):
    if op in ("min", "max"):
        g = [torch.Generator().manual_seed(seed_of("tar", str(dtype), op, n, r)) for r in range(W)]
        xs = [torch.randn(n, generator=g[r]).to(dtype) for r in range(W)]
    elif op == "prod":
        xs = [torch.tensor([-2.0, -1.0, 1.0, 2.0])[torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(seed_of("tarp", r)))].to(dtype)
              for r in range(W)]
    else:
        xs = [t_exact(n, dtype, "tar", str(dtype), op, n, r) for r in range(W)]
    fn = {"sum": torch.add, "avg": torch.add, "prod": torch.mul, "min": torch.minimum, "max": torch.maximum}[op]
    ref = xs[0].clone()
    for x in xs[1:]:
        ref = fn(ref, x)
    if op == "avg":
        ref = (ref.double() / W).to(dtype)
    x = xs[R].clone()
    if inplace:
        comm.all_reduce(x, op)
        got = x
    else:
        got = torch.zeros_like(x)
        comm.all_reduce(x, op, out=got)
        if not torch.equal(x, xs[R]):
            return False, "out-of-place all_reduce modified its input"
    ok = torch.equal(got.view(torch.int16) if dtype == torch.bfloat16 else got, ref.view(torch.int16) if dtype == torch.bfloat16 else ref)
    return ok, "bit-equal" if ok else f"got {short(got[:8].tolist(), 200)} ref {short(ref[:8].tolist(), 200)}"


def all_reduce_torch_op_enum():
    """torch's ReduceOp (as `dist.ReduceOp.MAX` is in torch 1.13: an object
    whose `.op` is the RedOpType) is accepted as the op. The argument is
    checked before any communication, so a refusal is the same on every rank
    and the program can go on."""
    x = torch.full((5,), float(R + 1))
    try:
        comm.all_reduce(x, torch.distributed.ReduceOp.MAX)
    except ValueError as e:
        return False, f"refused: {short(e, 300)}"
    return bool((x == W).all()), str(x.tolist())


def all_gather_case(lib, n, shaped):
    xs = [arr(n, np.float32, "normal", "nag", n, r) for r in range(W)]
    if lib == "torch":
        inp = torch.from_numpy(xs[R].copy())
        out = torch.zeros((W, n) if shaped else (W * n,))
        comm.all_gather(inp, out)
        got = out.numpy()
    else:
        inp = xs[R].copy()
        out = np.zeros((W, n) if shaped else (W * n,), np.float32)
        comm.all_gather(inp, out)
        got = out
    return close(got.reshape(-1), np.concatenate(xs), None, xs)


def all_gather_bf16(n):
    xs = [t_exact(n, torch.bfloat16, "nagb", n, r) for r in range(W)]
    out = torch.zeros(W * n, dtype=torch.bfloat16)
    comm.all_gather(xs[R].clone(), out)
    return torch.equal(out, torch.cat(xs)), "bf16 all_gather"


def reduce_scatter_case(dtype, op, block):
    dtype = np.dtype(dtype)
    xs = [arr(W * block, dtype, kind_for(dtype, op), "nrs", dtype.name, op, block, r) for r in range(W)]
    if dtype.kind in "iu" and op == "avg":
        s = fold(xs, "sum")
        full = np.array([trunc_div(int(v)) for v in s.tolist()], dtype=dtype)
    else:
        full = fold(xs, op)
    out = np.zeros(block, dtype)
    comm.reduce_scatter(xs[R].copy(), out, op)
    return close(out, full[R * block:(R + 1) * block], op, [x[R * block:(R + 1) * block] for x in xs])


def reduce_scatter_bf16(block):
    xs = [t_exact(W * block, torch.bfloat16, "nrsb", block, r) for r in range(W)]
    ref = xs[0].clone()
    for x in xs[1:]:
        ref = ref + x
    out = torch.zeros(block, dtype=torch.bfloat16)
    comm.reduce_scatter(xs[R].clone(), out)
    return torch.equal(out, ref[R * block:(R + 1) * block]), "bf16 reduce_scatter sum"


def broadcast_case(lib, n, root):
    src = arr(n, np.int64, "bits", "nbc", n, root)
    if lib == "torch":
        b = torch.from_numpy(src.copy()) if R == root else torch.zeros(n, dtype=torch.int64)
        comm.broadcast(b, root)
        got = b.numpy()
    else:
        b = src.copy() if R == root else np.zeros(n, np.int64)
        comm.broadcast(b, root=root)
        got = b
    return close(got, src, None, None)


def all_to_all_even(lib):
    k = 3
    xs = [arr(W * k, np.float32, "normal", "na2a", s) for s in range(W)]
    ref = np.concatenate([xs[s][R * k:(R + 1) * k] for s in range(W)])
    if lib == "torch":
        out = torch.zeros(W * k)
        comm.all_to_all(torch.from_numpy(xs[R].copy()), out)
        got = out.numpy()
    else:
        out = np.zeros(W * k, np.float32)
        comm.all_to_all(xs[R].copy(), out)
        got = out
    return close(got, ref, None, None)


def all_to_all_counts():
    def cnt(s, d):
        return (s + 2 * d) % 3 + (5 if s == d else 0)  # zeros included

    xs = [arr(sum(cnt(s, d) for d in range(W)), np.int32, "bits", "na2av", s) for s in range(W)]
    send = [cnt(R, d) for d in range(W)]
    recv = [cnt(s, R) for s in range(W)]
    out = np.zeros(sum(recv), np.int32)
    comm.all_to_all(xs[R].copy(), out, send_counts=send, recv_counts=recv)
    parts = []
    for s in range(W):
        off = sum(cnt(s, d) for d in range(R))
        parts.append(xs[s][off:off + cnt(s, R)])
    return close(out, np.concatenate(parts), None, None)


# -- point to point and rings -------------------------------------------------


def payload(s, d, n, tag=0):
    return arr(n, np.float64, "normal", "np2p", s, d, n, tag)


def p2p_ring(n):
    nxt, prv = (R + 1) % W, (R - 1) % W
    got_p = np.zeros(n)
    got_n = torch.zeros(n, dtype=torch.float64)
    ws = [comm.isend(payload(R, nxt, n, 1), nxt, tag=1), comm.isend(torch.from_numpy(payload(R, prv, n, 2)), prv, tag=2),
          comm.irecv(got_p, prv, tag=1), comm.irecv(got_n, nxt, tag=2)]
    for w in ws:
        w.wait()
    ok1, d1 = close(got_p, payload(prv, R, n, 1), None, None)
    ok2, d2 = close(got_n.numpy(), payload(nxt, R, n, 2), None, None)
    return ok1 and ok2, f"from prev (numpy): {d1}; from next (torch): {d2}"


def p2p_blocking():
    nxt, prv = (R + 1) % W, (R - 1) % W
    got = np.zeros(17)
    if R % 2 == 0:
        comm.send(payload(R, nxt, 17, 3), nxt, tag=3)
        comm.recv(got, prv, tag=3)
    else:
        comm.recv(got, prv, tag=3)
        comm.send(payload(R, nxt, 17, 3), nxt, tag=3)
    return close(got, payload(prv, R, 17, 3), None, None)


def dropped_irecv():
    # An irecv whose Work is dropped unwaited gives its buffer back: the
    # message it matches is discarded (both sides report success) and zccl
    # warns about it on stderr (the test reads the warning); the next
    # receive gets the next message.
    nxt, prv = (R + 1) % W, (R - 1) % W
    lost = np.zeros(4, np.float32)
    w = comm.irecv(lost, prv, tag=11)
    del w
    comm.barrier()
    s1 = comm.isend(np.full(4, 1.0, np.float32), nxt, tag=11)
    s2 = comm.isend(np.full(4, 2.0, np.float32), nxt, tag=11)
    got = np.zeros(4, np.float32)
    comm.recv(got, prv, tag=11)
    s1.wait()
    s2.wait()
    return got.tolist() == [2.0] * 4 and lost.tolist() == [0.0] * 4, f"dropped buffer {lost.tolist()}, next {got.tolist()}"


def batch_ring(n):
    nxt, prv = (R + 1) % W, (R - 1) % W
    fp, fn = np.zeros(n), np.zeros(n)
    w = comm.batch([("send", payload(R, nxt, n, 7), nxt, 7), ("send", payload(R, prv, n, 8), prv, 8),
                    ("recv", fp, prv, 7), ("recv", fn, nxt, 8)])
    w.wait()
    ok1, d1 = close(fp, payload(prv, R, n, 7), None, None)
    ok2, d2 = close(fn, payload(nxt, R, n, 8), None, None)
    return ok1 and ok2, f"from prev: {d1}; from next: {d2}"


def ring_shift_case(offset, lib):
    xs = [arr(1001, np.float32, "normal", "nrsh", r) for r in range(W)]
    if lib == "torch":
        out = torch.zeros(1001)
        comm.ring_shift(torch.from_numpy(xs[R].copy()), out, offset)
        got = out.numpy()
    else:
        out = np.zeros(1001, np.float32)
        comm.ring_shift(xs[R].copy(), out, offset=offset)
        got = out
    return close(got, xs[(R - offset) % W], None, None)


def ring_pass_case(offset, varied):
    def shape(p):
        return (2 + (p % 3 if varied else 0), 5)

    blocks = [arr(shape(p)[0] * shape(p)[1], np.float32, "normal", "nrp", p).reshape(shape(p)) for p in range(W)]
    seen = []

    def fn(step, origin, blk):
        seen.append((step, origin, np.array(blk, copy=True)))

    comm.ring_pass(blocks[R].copy(), fn, offset=offset, shapes=[shape(p) for p in range(W)] if varied else None)
    if [s for s, _, _ in seen] != list(range(W)):
        return False, f"steps {[s for s, _, _ in seen]}"
    origins = [o for _, o, _ in seen]
    want = [(R - s * offset) % W for s in range(W)]
    if origins != want:
        return False, f"origins {origins}, expected {want}"
    for s, o, b in seen:
        ok, d = close(b, blocks[o], None, None)
        if not ok:
            return False, f"step {s} block of rank {o}: {d}"
    return True, f"origins {origins}, every block bit-equal"


def token_ring_case(lib, q_offset):
    qs = [arr(12, np.float32, "exact", "ntr", p).reshape(3, 4) for p in range(W)]
    computed, merged = [], []

    def compute(step, origin, qv):
        computed.append((step, origin, np.array(qv, copy=True)))
        return qv * (R + 1)

    def merge(src, step, blk):
        merged.append((src, step, np.array(blk, copy=True)))

    q = torch.from_numpy(qs[R].copy()) if lib == "torch" else qs[R].copy()
    comm.token_ring(q, compute, merge, block_shape=(3, 4), q_offset=q_offset)
    if sorted(o for _, o, _ in computed) != list(range(W)):
        return False, f"compute saw origins {[o for _, o, _ in computed]}"
    for step, origin, qv in computed:
        ok, d = close(qv, qs[origin], None, None)
        if not ok:
            return False, f"compute step {step}: Q of rank {origin}: {d}"
    if sorted(s for s, _, _ in merged) != list(range(W)):
        return False, f"merge saw sources {[s for s, _, _ in merged]}"
    if merged[0][0] != R or merged[0][1] != 0:
        return False, f"first merge is (src {merged[0][0]}, step {merged[0][1]}), expected own block at step 0"
    for src, step, blk in merged:
        ok, d = close(blk, qs[R] * (src + 1), None, None)
        if not ok:
            return False, f"merge of rank {src}'s block at step {step}: {d}"
    return True, f"computed origins {[o for _, o, _ in computed]}, merged sources {[s for s, _, _ in merged]}"


def scan_inputs(p, rows, cols):
    g = rng("nscan", p, rows, cols)
    return g.standard_normal((rows, cols)).astype(np.float32), (g.random(rows) * 0.5 + 0.5).astype(np.float32)


def scan_ref(rows, cols, reverse):
    """(exclusive, inclusive, magnitude) for this rank, sequential float64."""
    order = list(range(W)) if not reverse else list(range(W - 1, -1, -1))
    S = np.zeros((rows, cols))
    mag = np.zeros((rows, cols))
    excl = incl = None
    for p in order:
        st, dc = scan_inputs(p, rows, cols)
        if p == R:
            excl = S.copy()
        S = dc.astype(np.float64)[:, None] * S + st.astype(np.float64)
        mag = dc.astype(np.float64)[:, None] * mag + np.abs(st.astype(np.float64))
        if p == R:
            incl = S.copy()
    return excl, incl, mag


def all_scan_case(reverse, blocks, lib):
    rows, cols = 6, 5
    st, dc = scan_inputs(R, rows, cols)
    if lib == "torch":
        st, dc = torch.from_numpy(st), torch.from_numpy(dc)
    calls = []

    def on_block(index, rws, ex, inc):
        calls.append((index, (rws.start, rws.stop), np.array(ex, copy=True), np.array(inc, copy=True)))

    excl, incl = comm.all_scan(st, dc, reverse=reverse, blocks=blocks, inclusive=True,
                               on_block=on_block if blocks > 1 else None)
    excl, incl = np.asarray(excl), np.asarray(incl)
    rex, rin, mag = scan_ref(rows, cols, reverse)
    lim = 1e-5 * (mag + 1e-30)
    for name, got, ref in (("exclusive", excl, rex), ("inclusive", incl, rin)):
        if got.shape != ref.shape or not (np.abs(got.astype(np.float64) - ref) <= lim).all():
            return False, f"{name}: got {short(got.tolist(), 300)} ref {short(ref.tolist(), 300)}"
    if blocks > 1:
        if sorted(c[0] for c in calls) != list(range(blocks)):
            return False, f"on_block indices {[c[0] for c in calls]}"
        covered = sorted(c[1] for c in calls)
        if covered[0][0] != 0 or covered[-1][1] != rows or any(a[1] != b[0] for a, b in zip(covered, covered[1:])):
            return False, f"on_block row ranges {covered} do not partition {rows} rows"
        for index, (r0, r1), ex, inc in calls:
            if ex.tobytes() != excl[r0:r1].tobytes() or inc.tobytes() != incl[r0:r1].tobytes():
                return False, f"on_block {index} rows {r0}:{r1} differ from the result"
    return True, f"within 1e-5 of the f64 recurrence ({'reverse' if reverse else 'forward'}, {blocks} block(s))"


def split_case():
    sub = comm.split(R % 2, key=-R)  # reverse order inside each color
    members = [r for r in range(W) if r % 2 == R % 2]
    want_rank = sorted(members, reverse=True).index(R)
    if (sub.size, sub.rank) != (len(members), want_rank):
        return False, f"(size, rank) = {(sub.size, sub.rank)}, expected {(len(members), want_rank)}"
    x = np.array([R + 1], np.int64)
    sub.all_reduce(x)
    none = comm.split(None if R == 0 else 1)
    if R == 0 and none is not None:
        return False, "split(color=None) returned a communicator"
    return int(x[0]) == sum(m + 1 for m in members), f"sum over {members} = {int(x[0])}"


def async_case():
    xs = [arr(300001, np.float32, "exact", "nasync", r) for r in range(W)]
    a = xs[R].copy()
    b = np.zeros(W * 300001, np.float32)
    w1 = comm.all_reduce(a, async_op=True)
    w2 = comm.all_gather(xs[R].copy(), b, async_op=True)
    w3 = comm.barrier(async_op=True)
    for w in (w3, w2, w1):
        w.wait()
    if not all(w.is_completed() for w in (w1, w2, w3)):
        return False, "is_completed() False after wait()"
    ok1, d1 = close(a, fold(xs, "sum"), None, None)
    ok2, d2 = close(b, np.concatenate(xs), None, None)
    return ok1 and ok2, f"all_reduce: {d1}; all_gather: {d2}"


def is_completed_while_another_thread_waits():
    # A thread waits on a receive its peer answers only later; meanwhile
    # is_completed() must answer at once (it used to wait with the waiter,
    # holding the GIL: every Python thread stopped, up to the timeout).
    import threading

    buf = np.zeros(4, np.float32)
    w = comm.irecv(buf, (R - 1) % W, tag=9)
    waiter = threading.Thread(target=w.wait)
    waiter.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    early = w.is_completed()
    secs = time.monotonic() - t0
    comm.barrier()  # every rank looked before any rank sends
    comm.send(np.full(4, R + 1, np.float32), (R + 1) % W, tag=9)
    waiter.join(30)
    got = buf.tolist() == [float((R - 1) % W + 1)] * 4
    return (not early and secs < 0.1 and got and w.is_completed(),
            f"is_completed() said {early} in {secs * 1e3:.1f} ms while waited on; received {buf.tolist()}")


# -- argument errors (raised locally, before any communication) ---------------


def raises(exc, fn, *words):
    try:
        fn()
    except exc as e:
        msg = str(e)
        missing = [w for w in words if w not in msg]
        return not missing, f"{type(e).__name__}: {short(msg, 300)}" + (f" (missing {missing})" if missing else "")
    except Exception as e:  # noqa: BLE001
        return False, f"raised {type(e).__name__} instead of {exc.__name__}: {short(e, 300)}"
    return False, f"did not raise {exc.__name__}"


def wait_bad_timeouts():
    """A negative or NaN wait timeout is refused (it used to mean "no
    timeout"); the operation is still there to wait on."""
    w = comm.all_reduce(np.ones(2, np.float32), async_op=True)
    results = [raises(ValueError, lambda t=t: w.wait(t), "timeout") for t in (-1.0, float("nan"))]
    w.wait()
    return all(ok for ok, _ in results), "; ".join(d for _, d in results)


def read_only_untouched():
    raw = bytes(16)
    ok, detail = raises(ValueError, lambda: comm.all_reduce(np.frombuffer(raw, np.float32)), "read-only")
    return ok and raw == bytes(16), detail


ERRORS = {
    "int8_all_reduce_numpy": lambda: raises(TypeError, lambda: comm.all_reduce(np.ones(4, np.int8)), "int8"),
    "int8_all_reduce_torch": lambda: raises(TypeError, lambda: comm.all_reduce(torch.ones(4, dtype=torch.int8)), "int8"),
    "bool_reduce_scatter": lambda: raises(TypeError, lambda: comm.reduce_scatter(np.ones(2 * W, bool), np.ones(2, bool)), "bool"),
    "noncontiguous_numpy": lambda: raises(ValueError, lambda: comm.all_reduce(np.ones(8, np.float32)[::2]), "contiguous"),
    "noncontiguous_torch": lambda: raises(ValueError, lambda: comm.all_reduce(torch.ones(4, 3).t()), "contiguous"),
    "noncontiguous_all_gather_out": lambda: raises(
        ValueError, lambda: comm.all_gather(np.ones(2, np.float32), np.ones((2 * W, 2), np.float32)[:, 0]), "contiguous"),
    "out_dtype_differs": lambda: raises(TypeError, lambda: comm.all_reduce(np.ones(4, np.float32), out=np.ones(4, np.float64))),
    "unknown_op": lambda: raises(ValueError, lambda: comm.all_reduce(np.ones(4, np.float32), "median"), "median"),
    "not_an_array": lambda: raises(TypeError, lambda: comm.all_reduce([1.0, 2.0])),
    "bad_peer": lambda: raises(ValueError, lambda: comm.isend(np.ones(2), W + 3), str(W + 3)),
    "all_scan_dtype": lambda: raises(TypeError, lambda: comm.all_scan(np.ones((2, 2)), np.ones(2))),
    "all_gather_out_dtype": lambda: raises(
        TypeError, lambda: comm.all_gather(np.ones(2, np.float32), np.ones(2 * W, np.int32)), "int32", "float32"),
    "all_to_all_out_dtype": lambda: raises(
        TypeError, lambda: comm.all_to_all(np.ones(W, np.float32), np.ones(W, np.int32)), "int32"),
    "ring_shift_out_dtype": lambda: raises(
        TypeError, lambda: comm.ring_shift(np.ones(2, np.float32), np.ones(2, np.int32)), "int32"),
    # Counts whose byte sum wraps around 2^64 to the buffer's size.
    "all_to_all_wrapping_splits": lambda: raises(
        ValueError,
        lambda: comm.all_to_all(np.ones(1, np.uint8), np.ones(1, np.uint8),
                                [2**64 - 1, 2] + [0] * (W - 2), [2**64 - 1, 2] + [0] * (W - 2)),
        "2^64"),
    "batch_unknown_kind": lambda: raises(
        ValueError, lambda: comm.batch([("isend", np.ones(2), (R + 1) % W)]), "isend"),
    "read_only_all_reduce": read_only_untouched,
    "wait_bad_timeouts": wait_bad_timeouts,
    "read_only_recv": lambda: raises(
        ValueError, lambda: comm.irecv(np.frombuffer(bytes(8), np.float32), (R + 1) % W), "read-only"),
    "read_only_all_gather_out": lambda: raises(
        ValueError,
        lambda: comm.all_gather(np.ones(2, np.float32), np.frombuffer(bytes(8 * W), np.float32)), "read-only"),
    # Pointers to Python objects: copied without references they crashed
    # the interpreter when freed.
    "object_array": lambda: raises(
        TypeError, lambda: comm.all_gather(np.array([object()] * 2, dtype=object), np.empty(2 * W, dtype=object)),
        "Python objects"),
    # An unaligned view (numpy allows them): raised here, before anything is
    # submitted, so the communicator stays usable (`communicator_still_works`).
    "unaligned_all_reduce": lambda: raises(
        ValueError, lambda: comm.all_reduce(np.zeros(20, np.uint8)[1:17].view(np.float32)), "aligned"),
    # One buffer sent and received into in the same batch: what it ends up
    # holding would depend on timing.
    "batch_recv_overlaps_send": lambda: raises(
        ValueError, lambda: (lambda x: comm.batch([("send", x, (R + 1) % W), ("recv", x, (R - 1) % W)]))(
            np.ones(4, np.float32)), "overlap"),
}


def still_works():
    x = np.full(3, R + 1, np.int64)
    comm.all_reduce(x)
    return bool((x == W * (W + 1) // 2).all()), f"all_reduce after the argument errors: {x.tolist()}"


def callback_reentry():
    # A collective of the same communicator from inside a callback of one
    # of its operations waited for itself, forever. Now it raises at once
    # (and, like any failed operation, aborts the communicator).
    t0 = time.monotonic()
    ok, detail = raises(zccl.ZcclError, lambda: comm.ring_pass(np.ones(4, np.float32), lambda s, o, b: comm.barrier()),
                        "inside a callback")
    secs = time.monotonic() - t0
    return ok and secs < 10, f"{detail} after {secs:.1f} s"


def after_abort():
    # Every operation fails once the communicator was aborted, also where it
    # sends nothing (a 1-rank communicator's collectives returned as if
    # nothing had happened).
    comm.abort()
    x = np.ones(8, np.float32)
    results = []
    for name, call in (("all_reduce", lambda: comm.all_reduce(x)), ("barrier", comm.barrier),
                       ("broadcast", lambda: comm.broadcast(x, 0)), ("all_gather", lambda: comm.all_gather(x, np.empty(8 * W, np.float32)))):
        ok, detail = raises(zccl.ZcclError, call, "abort() called")
        results.append((ok, f"{name}: {detail}"))
    return all(ok for ok, _ in results), "; ".join(d for _, d in results)


def lent_view(kind):
    # The block a ring_pass callback gets is lent: forwarded to the next
    # rank meanwhile, and reused after the call. Writing into it (numpy: a
    # read-only view; torch: its version counter moves) or keeping it fails
    # the operation on every rank instead of sending changed bytes to the
    # next rank or leaving a view of freed memory behind.
    n = 1 << 20  # 4 MiB of float32: lent by CMA between ranks of one host
    block = np.full(n, R + 1, np.float32) if kind == "write_numpy" else torch.full((n,), float(R + 1))
    kept = []

    def fn(step, origin, blk):
        if kind.startswith("write") and step == 0:
            blk *= -1
        if kind == "keep":
            kept.append(blk[:4])
        if kind == "autograd":
            # Saved for backward: the view would be read after the call.
            w = torch.ones(n, requires_grad=True)
            kept.append((w * blk).sum())

    want = {"write_numpy": "read-only", "write_torch": "wrote into the block",
            "keep": "kept a reference", "autograd": "kept a reference"}[kind]
    ok, detail = raises(Exception, lambda: comm.ring_pass(block, fn), want)
    kept.clear()
    return ok, detail


def scan_direction():
    # Rank 1 scans in reverse, the others forward. Each rank then either
    # sent to a rank that does not receive from it or waited for one that
    # waits for it: every rank waited out its timeout, then blamed a stalled
    # rank. Now every rank raises within moments, naming the scan: in the
    # scan, or at its next operation where its own part had nothing to wait
    # for (rank 0 forward: it only sends).
    # Rank 1 must fail in the scan itself (its check meets rank 0's block;
    # with 2 ranks the barrier would catch the stray blocks anyway).
    st = np.full((8, 4), R + 1, np.float32)
    dc = np.full(8, 0.5, np.float32)
    t0 = time.monotonic()
    where = "all_scan"
    try:
        comm.all_scan(st, dc, reverse=(R == 1), blocks=2)
        where = "barrier"
        comm.barrier()
    except Exception as e:  # noqa: BLE001 - the check is on its text
        secs = time.monotonic() - t0
        ok = secs < 5 and "all_scan" in str(e) and (R != 1 or where == "all_scan")
        return ok, f"{type(e).__name__} in {where} after {secs:.2f} s: {str(e)[:400]}"
    return False, "the scan and the barrier after it returned"


# -- the run ----------------------------------------------------------------

if len(sys.argv) == 3 and sys.argv[1] == "lent_view":
    # Its own launch per kind: the failed operation aborts the communicator.
    C.run("native.lent_view", lent_view, sys.argv[2])
    C.finish()

if sys.argv[1:] == ["abort"]:
    C.run("native.after_abort", after_abort)
    C.finish()

if sys.argv[1:] == ["scan_direction"]:
    # Its own launch: the failed scan aborts the communicator.
    C.run("native.scan_direction", scan_direction)
    C.finish()

if sys.argv[1:] == ["reentry"]:
    # Its own launch: the failed operation aborts the communicator, which
    # the other checks' ranks would see mid-collective.
    C.run("native.reentry", callback_reentry)
    C.finish()


C.run("native.identity", lambda: ((comm.rank, comm.size, comm.local_rank, comm.local_size) ==
                                  (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]), W),
                                  f"rank {comm.rank} size {comm.size} local {comm.local_rank}/{comm.local_size} timeout {comm.timeout}"))
for dt in NP_DTYPES:
    for op in OPS:
        for n in (0, 1, 1000 * W + 3):
            C.run(f"native.all_reduce.{np.dtype(dt).name}.{op}.n{n}", all_reduce_np, dt, op, n)
C.run("native.all_reduce.float32.sum.n1048577", all_reduce_np, np.float32, "sum", 1048577)
for dt in (torch.bfloat16, torch.float32, torch.float16):
    for op in OPS:
        C.run(f"native.all_reduce.torch_{str(dt)[6:]}.{op}", all_reduce_torch, dt, op, 1003)
C.run("native.all_reduce.torch_reduce_op", all_reduce_torch_op_enum)
for dt in (np.float32, np.int64, np.uint8):
    for op in ("sum", "max", "avg"):
        C.run(f"native.all_reduce_out.{np.dtype(dt).name}.{op}", all_reduce_np, dt, op, 1001, False)
for dt in (torch.bfloat16, torch.float32):
    C.run(f"native.all_reduce_out.torch_{str(dt)[6:]}.sum", all_reduce_torch, dt, "sum", 1001, False)

for lib in ("numpy", "torch"):
    for n in (0, 1, 1001):
        for shaped in (False, True):
            C.run(f"native.all_gather.{lib}.n{n}.{'shaped' if shaped else 'flat'}", all_gather_case, lib, n, shaped)
C.run("native.all_gather.torch_bfloat16", all_gather_bf16, 1001)
for dt in (np.float32, np.float64, np.int32, np.int64, np.uint8):
    for op in OPS:
        for block in (0, 1, 1001):
            C.run(f"native.reduce_scatter.{np.dtype(dt).name}.{op}.block{block}", reduce_scatter_case, dt, op, block)
C.run("native.reduce_scatter.torch_bfloat16", reduce_scatter_bf16, 1001)
for root in range(W):
    for lib in ("numpy", "torch"):
        C.run(f"native.broadcast.{lib}.root{root}", broadcast_case, lib, 1001, root)
C.run("native.broadcast.numpy.n0", broadcast_case, "numpy", 0, 0)
for lib in ("numpy", "torch"):
    C.run(f"native.all_to_all.{lib}.even", all_to_all_even, lib)
C.run("native.all_to_all.counts", all_to_all_counts)

for n in (1, 10007):
    C.run(f"native.p2p.isend_irecv.n{n}", p2p_ring, n)
C.run("native.p2p.send_recv", p2p_blocking)
C.run("native.p2p.dropped_irecv", dropped_irecv)
for n in (1, 100003):
    C.run(f"native.batch.ring.n{n}", batch_ring, n)
for off in sorted({1, -1, 2 % W if W > 2 else 1}):
    for lib in ("numpy", "torch"):
        C.run(f"native.ring_shift.{lib}.offset{off}", ring_shift_case, off, lib)
for off in (1, -1):
    for varied in (False, True):
        C.run(f"native.ring_pass.offset{off}.{'varied' if varied else 'equal'}", ring_pass_case, off, varied)
for lib in ("numpy", "torch"):
    for qo in (1, -1):
        C.run(f"native.token_ring.{lib}.q_offset{qo}", token_ring_case, lib, qo)
for reverse in (False, True):
    for blocks in (1, 3):
        C.run(f"native.all_scan.{'reverse' if reverse else 'forward'}.blocks{blocks}", all_scan_case, reverse, blocks, "numpy")
C.run("native.all_scan.forward.torch", all_scan_case, False, 1, "torch")
C.run("native.split", split_case)
C.run("native.async", async_case)
C.run("native.async.is_completed_while_waited_on", is_completed_while_another_thread_waits)
for name, fn in ERRORS.items():
    C.run(f"native.errors.{name}", fn)

C.run("native.errors.communicator_still_works", still_works)
comm.barrier()
C.finish()
