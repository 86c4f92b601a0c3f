"""Rank program: every torch.distributed call through the "zccl" backend
against gloo (or, where gloo 1.13 has no such call or dtype, against a
reference computed from every rank's input, which each rank regenerates from
the same seeds) on identical inputs.

Run as `zccl run -n N -- python torch_vs_gloo.py`. Prints CHECK lines (see
_common.py) named `<area>.<case>`; areas: backend, all_reduce, all_gather,
all_gather_into_tensor, reduce_scatter, reduce_scatter_tensor, broadcast,
barrier, all_to_all_single, all_to_all, p2p, batch_isend_irecv, subgroup,
async, async_poll (outputs are there once is_completed() is True, without
wait(): torch documents that for CPU collectives).

Comparison rules (the issue's): integers, bool, MIN/MAX and data movement
are bit-equal; float16/bfloat16 reductions use inputs whose sums and
products are exact, so they are bit-equal too; float32/float64 SUM/AVG are
within 1e-6 of the magnitude sum_r |x_r| (relative error of a reduction
whose order differs between libraries), PRODUCT within 1e-6 relative.

Integer AVG (gloo 1.13 has no AVG at all): zccl gives the SUM wrapped in the
dtype, divided by the world size and truncated toward zero (NCCL's
semantics), for uint8/int32/int64; int8/int16/bool AVG raise TypeError on
every rank before any communication. The check accepts a raise for those
three, and requires the truncated quotient otherwise.
"""

import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Checks, seed_of, short, watchdog  # noqa: E402

watchdog(100)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import zccl.torch  # noqa: E402,F401  registers "zccl"

TIMEOUT = datetime.timedelta(seconds=60)
dist.init_process_group("zccl", timeout=TIMEOUT)
R, W = dist.get_rank(), dist.get_world_size()
GLOO = dist.new_group(backend="gloo", timeout=TIMEOUT)
C = Checks(R)

RO = dist.ReduceOp
OPS = {"SUM": RO.SUM, "PRODUCT": RO.PRODUCT, "MIN": RO.MIN, "MAX": RO.MAX,
       "BAND": RO.BAND, "BOR": RO.BOR, "BXOR": RO.BXOR, "AVG": RO.AVG}
INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HALF = (torch.float16, torch.bfloat16)
GLOO_NO_DTYPE = (torch.int16, torch.bfloat16, torch.bool)
BIG = 1 << 20

all_gather_into_tensor = getattr(dist, "all_gather_into_tensor", None) or dist._all_gather_base
reduce_scatter_tensor = getattr(dist, "reduce_scatter_tensor", None) or dist._reduce_scatter_base


def dname(dt):
    return str(dt).replace("torch.", "")


# -- inputs ---------------------------------------------------------------


def make(shape, dtype, kind, *key):
    """A tensor of `shape`, the same on every rank for the same key.
    kind: bits (full-range integers / bool), normal, prod (|x| in [0.5, 2),
    random sign), exact (small integers), exactprod (+-1, +-2)."""
    g = torch.Generator().manual_seed(seed_of(*key))
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    n = 1
    for s in shape:
        n *= s
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if kind == "bits":
        isz = torch.empty(0, dtype=dtype).element_size()
        raw = torch.randint(0, 256, (n * isz,), dtype=torch.uint8, generator=g)
        return raw.view(dtype).reshape(shape).clone()
    if kind == "normal":
        return (torch.randn(shape, generator=g, dtype=torch.float64) * 4).to(dtype)
    if kind == "prod":
        mag = torch.rand(shape, generator=g, dtype=torch.float64) * 1.5 + 0.5
        sign = torch.randint(0, 2, shape, generator=g) * 2 - 1
        return (mag * sign).to(dtype)
    if kind == "exact":
        return torch.randint(-8, 9, shape, generator=g).to(dtype)
    if kind == "exactprod":
        vals = torch.tensor([-2.0, -1.0, 1.0, 2.0], dtype=torch.float64)
        return vals[torch.randint(0, 4, shape, generator=g)].to(dtype)
    raise ValueError(kind)


def kind_for(dtype, op):
    if dtype == torch.bool or dtype in INTS:
        return "bits"
    if op in ("MIN", "MAX"):
        return "normal"
    if dtype in HALF:
        return "exactprod" if op == "PRODUCT" else "exact"
    return "prod" if op == "PRODUCT" else "normal"


# -- references -----------------------------------------------------------


def fold(xs, op):
    """Reduces tensors in rank order the way torch backends define it."""
    dt = xs[0].dtype
    if dt == torch.bool:
        fn = {"SUM": torch.logical_or, "MAX": torch.logical_or, "BOR": torch.logical_or,
              "PRODUCT": torch.logical_and, "MIN": torch.logical_and, "BAND": torch.logical_and,
              "BXOR": torch.logical_xor}[op]
    else:
        fn = {"SUM": torch.add, "AVG": torch.add, "PRODUCT": torch.mul, "MIN": torch.minimum,
              "MAX": torch.maximum, "BAND": torch.bitwise_and, "BOR": torch.bitwise_or,
              "BXOR": torch.bitwise_xor}[op]
    acc = xs[0].clone()
    for x in xs[1:]:
        acc = fn(acc, x).to(dt)
    if op == "AVG":
        acc = avg_of_sum(acc)
    return acc


def avg_of_sum(s):
    if s.is_floating_point():
        return (s.double() / W).to(s.dtype) if s.dtype in HALF else s / W
    return torch.div(s, W, rounding_mode="trunc")


def bits(t):
    """A tensor's bytes, for bit-equality (−0.0 vs 0.0, NaN payloads)."""
    t = t.contiguous()
    return t.reshape(-1).view(torch.uint8) if t.numel() else t.reshape(-1).to(torch.uint8)


def compare(got, ref, op, xs=None, dtype=None):
    """(ok, detail): bit-equal unless a float32/64 SUM/AVG/PRODUCT, which
    are checked within 1e-6 relative (see the module doc)."""
    if got.shape != ref.shape or got.dtype != ref.dtype:
        return False, f"shape/dtype {tuple(got.shape)} {got.dtype} != {tuple(ref.shape)} {ref.dtype}"
    exact = not got.is_floating_point() or op in ("MIN", "MAX", None) or got.dtype in HALF
    if exact:
        if torch.equal(bits(got), bits(ref)):
            return True, "bit-equal"
        bad = (bits(got) != bits(ref)).nonzero()
        return False, f"not bit-equal at byte {bad[:5].flatten().tolist()} of {got.numel()}: got {short(got.reshape(-1)[:8].tolist(), 300)} ref {short(ref.reshape(-1)[:8].tolist(), 300)}"
    g, r = got.double(), ref.double()
    if op == "PRODUCT":
        scale = r.abs()
    else:
        scale = sum(x.double().abs() for x in xs)
        if op == "AVG":
            scale = scale / W
    err = (g - r).abs()
    lim = 1e-6 * scale + 1e-300
    worst = float((err / lim).max()) if err.numel() else 0.0
    ok = bool((err <= lim).all())
    return ok, f"max err/(1e-6*scale) = {worst:.3g}, bit-equal={torch.equal(bits(got), bits(ref))}"


def gloo_supports(dtype, op):
    if dtype in GLOO_NO_DTYPE or op == "AVG":
        return False
    if op in ("BAND", "BOR", "BXOR") and dtype in FLOATS:
        return False
    return True


# -- checks ---------------------------------------------------------------


def backend_identity():
    names = (dist.get_backend(), dist.get_backend(GLOO))
    return names == ("zccl", "gloo") and dist.get_world_size() == int(os.environ["WORLD_SIZE"]), str(names)


def all_reduce_case(dtype, op, shape, tag=""):
    kind = kind_for(dtype, op)
    xs = [make(shape, dtype, kind, "ar", dname(dtype), op, str(shape), tag, r) for r in range(W)]
    z = xs[R].clone()
    integer_avg_unsupported = op == "AVG" and dtype in (torch.int8, torch.int16, torch.bool)
    float_bitwise = op in ("BAND", "BOR", "BXOR") and dtype in FLOATS
    try:
        dist.all_reduce(z, op=OPS[op])
    except (TypeError, ValueError, RuntimeError) as e:
        if float_bitwise or integer_avg_unsupported:
            return True, f"raised as expected: {type(e).__name__}: {short(e, 200)}"
        raise
    if float_bitwise:
        return False, "a bitwise op on a float tensor returned data instead of raising"
    if op == "AVG" and dtype == torch.bool:
        return False, f"AVG of bool returned data ({short(z[:8].tolist(), 200)}) instead of raising"
    if gloo_supports(dtype, op):
        ref = xs[R].clone()
        dist.all_reduce(ref, op=OPS[op], group=GLOO)
        how = "gloo"
    elif op == "AVG" and gloo_supports(dtype, "SUM"):
        s = xs[R].clone()
        dist.all_reduce(s, op=RO.SUM, group=GLOO)
        ref = avg_of_sum(s)
        how = "gloo SUM / W"
    else:
        ref = fold(xs, op)
        how = "rank-order fold"
    ok, detail = compare(z, ref, op, xs)
    return ok, f"vs {how}: {detail}"


def all_reduce_noncontiguous():
    xs = [make((6, 10), torch.float32, "exact", "arnc", r) for r in range(W)]
    base = xs[R].clone()
    view = base.t()  # non-contiguous, written back by the backend
    assert not view.is_contiguous()
    dist.all_reduce(view)
    ref = fold(xs, "SUM").t()
    return compare(view, ref, "SUM", [x.t() for x in xs])


def gloo_gather_list(t):
    """gloo's all_gather of `t` (through a byte view for dtypes gloo lacks);
    None for an empty tensor (gloo 1.13 dies of SIGFPE on those)."""
    if t.numel() == 0:
        return None
    if t.dtype in GLOO_NO_DTYPE:
        v = t.contiguous().view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)
        outs = [torch.empty_like(v) for _ in range(W)]
        dist.all_gather(outs, v, group=GLOO)
        return [o.view(t.dtype).reshape(t.shape) for o in outs]
    outs = [torch.empty_like(t) for _ in range(W)]
    dist.all_gather(outs, t, group=GLOO)
    return outs


def all_gather_case(dtype, shape):
    kind = "bits" if not dtype.is_floating_point else "normal"
    xs = [make(shape, dtype, kind, "ag", dname(dtype), str(shape), r) for r in range(W)]
    outs = [torch.full(xs[R].shape, 7, dtype=torch.int64).to(dtype) for _ in range(W)]
    dist.all_gather(outs, xs[R].clone())
    for r in range(W):
        ok, d = compare(outs[r], xs[r], None)
        if not ok:
            return False, f"block {r} vs its rank's input: {d}"
    g = gloo_gather_list(xs[R])
    if g is None:
        return True, "bit-equal to every rank's input (empty: gloo cannot gather it)"
    for r in range(W):
        ok, d = compare(outs[r], g[r], None)
        if not ok:
            return False, f"block {r} vs gloo: {d}"
    return True, "bit-equal to every rank's input and to gloo"


def all_gather_into_tensor_case(dtype, n, stacked, async_op):
    kind = "bits" if not dtype.is_floating_point else "normal"
    xs = [make((n,), dtype, kind, "agt", dname(dtype), n, r) for r in range(W)]
    out = torch.zeros((W, n) if stacked else (W * n,), dtype=dtype)
    w = all_gather_into_tensor(out, xs[R].clone(), async_op=async_op)
    if async_op:
        w.wait()
    g = gloo_gather_list(xs[R])
    ref = torch.stack(g if g is not None else xs)
    if not stacked:
        ref = ref.reshape(-1)
    ok, d = compare(out, ref, None)
    return ok, f"vs gloo all_gather + cat: {d}"


def rs_inputs(dtype, op, block, tag):
    kind = kind_for(dtype, op)
    return [make((W * block,), dtype, kind, "rs", dname(dtype), op, block, tag, r) for r in range(W)]


def reduce_scatter_case(dtype, op, block, form):
    xs = rs_inputs(dtype, op, block, form)
    ref_full = fold(xs, op)
    ref = ref_full[R * block:(R + 1) * block]
    blocks = [x[R * block:(R + 1) * block] for x in xs]
    out = torch.zeros(block, dtype=dtype)
    if form == "list":
        dist.reduce_scatter(out, [c.clone() for c in xs[R].chunk(W)] if block else
                            [torch.empty(0, dtype=dtype) for _ in range(W)], op=OPS[op])
    elif form == "tensor":
        reduce_scatter_tensor(out, xs[R].clone(), op=OPS[op])
    else:  # async tensor form
        reduce_scatter_tensor(out, xs[R].clone(), op=OPS[op], async_op=True).wait()
    ok, d = compare(out, ref, op, blocks)
    return ok, f"vs rank-order fold of every rank's input (gloo 1.13 has no reduce_scatter): {d}"


def reduce_scatter_vs_gloo_allreduce():
    """The same thing checked through gloo: reduce_scatter_tensor equals block
    R of gloo's all_reduce of the same input (int64, exact)."""
    block = 1001
    xs = rs_inputs(torch.int64, "SUM", block, "vsgloo")
    out = torch.zeros(block, dtype=torch.int64)
    reduce_scatter_tensor(out, xs[R].clone())
    g = xs[R].clone()
    dist.all_reduce(g, group=GLOO)
    return compare(out, g[R * block:(R + 1) * block], "SUM")


def broadcast_case(dtype, n, root):
    kind = "bits" if not dtype.is_floating_point else "normal"
    src = make((n,), dtype, kind, "bc", dname(dtype), n, root)
    z = src.clone() if R == root else torch.zeros(n, dtype=torch.int64).to(dtype)
    dist.broadcast(z, src=root)
    ok, d = compare(z, src, None)
    if not ok:
        return False, f"vs root's tensor: {d}"
    if dtype not in GLOO_NO_DTYPE:
        g = src.clone() if R == root else torch.zeros(n, dtype=dtype)
        dist.broadcast(g, src=root, group=GLOO)
        ok, d = compare(z, g, None)
        return ok, f"vs gloo: {d}"
    return True, "bit-equal to root's tensor (gloo has no broadcast of this dtype)"


def lazy_views(kind):
    """Tensors whose memory holds other values than they read as (a lazy
    conjugate, a lazy negation: `x.conj()`, `x.conj().imag`): what moves
    is what they read as."""
    if not hasattr(torch.Tensor, "is_conj"):
        return True, "torch has no lazy conjugation"
    c = make((5,), torch.float32, "exact", "lazy", kind, 0) + 1j * make((5,), torch.float32, "exact", "lazy", kind, 1)
    if kind == "broadcast_conj":
        z = c.conj() if R == 0 else torch.zeros(5, dtype=torch.complex64)
        # Straight to the group: torch 2.x's `dist.broadcast` refuses an
        # unresolved conjugate itself (view_as_real), 1.13's hands it on.
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        dist.distributed_c10d._get_default_group().broadcast([z], opts).wait()
        return compare(torch.view_as_real(z.resolve_conj()), torch.view_as_real(c.conj().resolve_conj()), None)
    if kind == "send_conj":
        if W == 1:
            return True, "single rank"
        got = torch.zeros(5, dtype=torch.complex64)
        pg = dist.distributed_c10d._get_default_group()  # as for broadcast
        if R == 0:
            pg.send([c.conj()], 1, 0).wait()
            return True, "sent"
        if R == 1:
            pg.recv([got], 0, 0).wait()
            return compare(torch.view_as_real(got), torch.view_as_real(c.conj().resolve_conj()), None)
        return True, "not in the pair"
    # all_reduce of a real tensor with a lazy negation (the imaginary part
    # of a conjugate), in place through the view.
    xs = [make((5,), torch.float32, "exact", "lazyneg", r) for r in range(W)]
    v = (xs[R].clone() * 1j).conj().imag
    assert v.is_neg()
    dist.all_reduce(v)
    return compare(v.resolve_neg().clone(), -fold(xs, "SUM"), None)  # small integers: exact


def barrier_case(async_op):
    dist.barrier(group=GLOO)
    if R == 0:
        time.sleep(1.0)
    t0 = time.monotonic()
    if async_op:
        w = dist.barrier(async_op=True)
        w.wait()
    else:
        dist.barrier()
    dt = time.monotonic() - t0
    if R == 0:
        return True, f"{dt:.3f}s"
    return dt >= 0.5, f"rank {R} left the barrier after {dt:.3f}s; rank 0 entered it 1 s late"


def a2a_truth(src_inputs, in_splits_of, dtype):
    """Expected all_to_all_single output on this rank: from every rank s its
    block for R, in rank order."""
    parts = []
    for s in range(W):
        sp = in_splits_of(s)
        off = sum(sp[:R])
        parts.append(src_inputs[s][off:off + sp[R]])
    return torch.cat(parts)


def gloo_a2a(out_like, inp, out_splits, in_splits):
    if inp.dtype in GLOO_NO_DTYPE:
        o = torch.empty_like(out_like).view(torch.uint8)
        dist.all_to_all_single(o, inp.view(torch.uint8), out_splits, in_splits, group=GLOO)
        return o.view(inp.dtype)
    o = torch.empty_like(out_like)
    dist.all_to_all_single(o, inp, out_splits, in_splits, group=GLOO)
    return o


def a2a_single_case(dtype, mode, async_op=False):
    kind = "bits" if not dtype.is_floating_point else "normal"
    cols = 5
    if mode == "even":
        k = 3
        def sp(s):
            return [k] * W
    elif mode == "uneven":
        def sp(s):
            return [(s + 2 * d) % 3 for d in range(W)]  # includes zero-sized blocks
    elif mode == "uneven_big":
        def sp(s):
            return [1000 * (s + 1) + 7 * d for d in range(W)]
    elif mode == "empty":
        def sp(s):
            return [0] * W
    else:
        raise ValueError(mode)
    xs = [make((sum(sp(s)), cols), dtype, kind, "a2a", dname(dtype), mode, s) for s in range(W)]
    in_splits = sp(R)
    out_splits = [sp(s)[R] for s in range(W)]
    ref = a2a_truth(xs, sp, dtype)
    out = torch.zeros((sum(out_splits), cols), dtype=dtype)
    splits = (None, None) if mode in ("even",) else (out_splits, in_splits)
    w = dist.all_to_all_single(out, xs[R].clone(), splits[0], splits[1], async_op=async_op)
    if async_op:
        w.wait()
    ok, d = compare(out, ref, None)
    if not ok:
        return False, f"vs every rank's block: {d}"
    g = gloo_a2a(out, xs[R].clone(), splits[0], splits[1])
    ok, d = compare(out, g, None)
    return ok, f"vs gloo: {d}"


def a2a_single_1d():
    n = 4 * W
    xs = [make((W * n,), torch.int32, "bits", "a2a1d", s) for s in range(W)]
    out = torch.zeros(W * n, dtype=torch.int32)
    dist.all_to_all_single(out, xs[R].clone())
    ref = torch.cat([xs[s][R * n:(R + 1) * n] for s in range(W)])
    return compare(out, ref, None)


def a2a_list_case(dtype):
    kind = "bits" if not dtype.is_floating_point else "normal"

    def size(s, d):
        return (s + d) % 3 + (1 if d == 0 else 0)  # zero-sized pieces included

    def piece(s, d):
        return make((size(s, d), 2), dtype, kind, "a2al", dname(dtype), s, d)

    ins = [piece(R, d) for d in range(W)]
    outs = [torch.zeros((size(s, R), 2), dtype=dtype) for s in range(W)]
    dist.all_to_all(outs, ins)
    for s in range(W):
        ok, d = compare(outs[s], piece(s, R), None)
        if not ok:
            return False, f"piece from rank {s}: {d} (gloo 1.13 has no all_to_all list form; vs the sender's input)"
    return True, "every piece bit-equal to its sender's input"


def p2p_payload(s, d, n, dtype=torch.float32, tag=0):
    kind = "bits" if not dtype.is_floating_point else "normal"
    return make((n,), dtype, kind, "p2p", s, d, n, dname(dtype), tag)


def send_recv_blocking(n, group=None):
    nxt, prv = (R + 1) % W, (R - 1) % W
    got = torch.zeros(n)
    mine = p2p_payload(R, nxt, n)
    if R % 2 == 0:
        dist.send(mine, nxt, group=group)
        dist.recv(got, prv, group=group)
    else:
        dist.recv(got, prv, group=group)
        dist.send(mine, nxt, group=group)
    return got


def p2p_send_recv(n):
    if W == 1:
        return True, "single rank"
    got = send_recv_blocking(n)
    ok, d = compare(got, p2p_payload((R - 1) % W, R, n), None)
    if not ok:
        return False, f"vs sender's tensor: {d}"
    g = send_recv_blocking(n, GLOO)
    ok, d = compare(got, g, None)
    return ok, f"vs gloo: {d}"


def p2p_isend_irecv(n, dtype):
    nxt, prv = (R + 1) % W, (R - 1) % W
    a_next = p2p_payload(R, nxt, n, dtype, 1)
    a_prev = p2p_payload(R, prv, n, dtype, 2)
    from_prev = torch.zeros(n, dtype=dtype)
    from_next = torch.zeros(n, dtype=dtype)
    ws = [dist.isend(a_next, nxt, tag=1), dist.isend(a_prev, prv, tag=2),
          dist.irecv(from_prev, prv, tag=1), dist.irecv(from_next, nxt, tag=2)]
    for w in ws:
        w.wait()
    if not all(w.is_completed() for w in ws):
        return False, "is_completed() is False after wait()"
    for got, ref, what in ((from_prev, p2p_payload(prv, R, n, dtype, 1), "from prev"),
                           (from_next, p2p_payload(nxt, R, n, dtype, 2), "from next")):
        ok, d = compare(got, ref, None)
        if not ok:
            return False, f"{what}: {d}"
    return True, "both directions bit-equal"


def p2p_tags_out_of_order():
    """Two messages to the same peer with different tags, received in the
    opposite order: each lands by tag."""
    if W == 1:
        return True, "single rank"
    nxt, prv = (R + 1) % W, (R - 1) % W
    a, b = p2p_payload(R, nxt, 5, tag=11), p2p_payload(R, nxt, 9, tag=12)
    ga, gb = torch.zeros(5), torch.zeros(9)
    s1, s2 = dist.isend(a, nxt, tag=11), dist.isend(b, nxt, tag=12)
    r2 = dist.irecv(gb, prv, tag=12)
    r1 = dist.irecv(ga, prv, tag=11)
    for w in (r2, r1, s1, s2):
        w.wait()
    ok1, d1 = compare(ga, p2p_payload(prv, R, 5, tag=11), None)
    ok2, d2 = compare(gb, p2p_payload(prv, R, 9, tag=12), None)
    return ok1 and ok2, f"tag 11: {d1}; tag 12: {d2}"


def p2p_pairwise_receives_first(n):
    """A pairwise exchange as torch code writes it: every receive posted
    first, then each send waited before the next one is issued. Gloo and
    MPI complete it; a backend that held a send back behind the receives
    from other peers would wait for its timeout on every rank."""
    if W == 1:
        return True, "single rank"
    got = [torch.zeros(n) for _ in range(W)]
    recvs = [dist.irecv(got[s], (R - s) % W, tag=21) for s in range(1, W)]
    for s in range(1, W):
        dist.isend(p2p_payload(R, (R + s) % W, n, tag=21), (R + s) % W, tag=21).wait()
    for q in recvs:
        q.wait()
    for s in range(1, W):
        ok, d = compare(got[s], p2p_payload((R - s) % W, R, n, tag=21), None)
        if not ok:
            return False, f"from rank {(R - s) % W}: {d}"
    return True, f"{W - 1} peers bit-equal"


def p2p_negative_tag():
    """A negative tag is refused naming the tag (Gloo: "Tag must be
    nonnegative"), on this rank only; the group stays usable."""
    if W == 1:
        return True, "single rank"
    nxt, prv = (R + 1) % W, (R - 1) % W
    try:
        dist.isend(torch.ones(2), nxt, tag=-1).wait()
        return False, "isend with tag -1 completed"
    except Exception as e:  # noqa: BLE001 - the message is checked
        msg = str(e)
    a, got = p2p_payload(R, nxt, 3, tag=4), torch.zeros(3)
    works = [dist.isend(a, nxt, tag=4), dist.irecv(got, prv, tag=4)]
    for w in works:
        w.wait()
    ok, d = compare(got, p2p_payload(prv, R, 3, tag=4), None)
    return "tag" in msg and "-1" in msg and ok, f"refused: {msg!r}; then {d}"


def batch_ring(n, dtype, group):
    nxt, prv = (R + 1) % W, (R - 1) % W
    to_next = p2p_payload(R, nxt, n, dtype, 100)
    to_prev = p2p_payload(R, prv, n, dtype, 200)
    from_prev = torch.zeros(n, dtype=dtype)
    from_next = torch.zeros(n, dtype=dtype)
    ops = [dist.P2POp(dist.isend, to_next, nxt, group), dist.P2POp(dist.isend, to_prev, prv, group),
           dist.P2POp(dist.irecv, from_prev, prv, group), dist.P2POp(dist.irecv, from_next, nxt, group)]
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    return from_prev, from_next


def batch_case(n, dtype):
    nxt, prv = (R + 1) % W, (R - 1) % W
    zp, zn = batch_ring(n, dtype, None)
    # With two ranks prev == next: messages to one peer match in posting
    # order, so the first receive gets the first send ("to next").
    ok1, d1 = compare(zp, p2p_payload(prv, R, n, dtype, 100), None)
    ok2, d2 = compare(zn, p2p_payload(nxt, R, n, dtype, 200), None)
    if not (ok1 and ok2):
        return False, f"vs senders: from prev {d1}; from next {d2}"
    if dtype in GLOO_NO_DTYPE:
        return True, "bit-equal to the senders' tensors"
    gp, gn = batch_ring(n, dtype, GLOO)
    ok1, d1 = compare(zp, gp, None)
    ok2, d2 = compare(zn, gn, None)
    return ok1 and ok2, f"vs gloo: from prev {d1}; from next {d2}"


# -- subgroups --------------------------------------------------------------

EVEN_RANKS = list(range(0, W, 2))
ODD_RANKS = list(range(1, W, 2))
HALF_RANKS = list(range(max(1, W // 2)))
EVEN = dist.new_group(EVEN_RANKS)
ODD = dist.new_group(ODD_RANKS) if ODD_RANKS else None
HALF_G = dist.new_group(HALF_RANKS)
EVEN_G = dist.new_group(EVEN_RANKS, backend="gloo")
ODD_G = dist.new_group(ODD_RANKS, backend="gloo") if ODD_RANKS else None
MYRANKS = EVEN_RANKS if R % 2 == 0 else ODD_RANKS
MYG = EVEN if R % 2 == 0 else ODD
MYG_G = EVEN_G if R % 2 == 0 else ODD_G


def subgroup_identity():
    got = (dist.get_backend(MYG), dist.get_world_size(MYG), dist.get_rank(MYG))
    want = ("zccl", len(MYRANKS), MYRANKS.index(R))
    return got == want, f"(backend, size, rank) = {got}, expected {want}"


def subgroup_all_reduce(dtype, op):
    kind = kind_for(dtype, op)
    xs = {r: make((1003,), dtype, kind, "sgar", dname(dtype), op, r) for r in MYRANKS}
    z = xs[R].clone()
    dist.all_reduce(z, op=OPS[op], group=MYG)
    g = xs[R].clone()
    dist.all_reduce(g, op=OPS[op], group=MYG_G)
    ok, d = compare(z, g, op, [xs[r] for r in MYRANKS])
    if not ok:
        return False, f"vs gloo subgroup: {d}"
    return compare(z, fold([xs[r] for r in MYRANKS], op), op, [xs[r] for r in MYRANKS])


def subgroup_collectives():
    n = len(MYRANKS)
    xs = {r: make((7, 3), torch.float32, "normal", "sg", r) for r in MYRANKS}
    outs = [torch.zeros(7, 3) for _ in range(n)]
    dist.all_gather(outs, xs[R].clone(), group=MYG)
    for i, r in enumerate(MYRANKS):
        ok, d = compare(outs[i], xs[r], None)
        if not ok:
            return False, f"all_gather block {i} (global rank {r}): {d}"
    root = MYRANKS[-1]  # torch 1.13: src is a global rank
    b = xs[R].clone() if R == root else torch.zeros(7, 3)
    dist.broadcast(b, src=root, group=MYG)
    ok, d = compare(b, xs[root], None)
    if not ok:
        return False, f"broadcast from global rank {root}: {d}"
    ys = {r: make((n * 4,), torch.int64, "bits", "sga2a", r) for r in MYRANKS}
    out = torch.zeros(n * 4, dtype=torch.int64)
    dist.all_to_all_single(out, ys[R].clone(), group=MYG)
    me = MYRANKS.index(R)
    ref = torch.cat([ys[r][me * 4:(me + 1) * 4] for r in MYRANKS])
    ok, d = compare(out, ref, None)
    if not ok:
        return False, f"all_to_all_single: {d}"
    zs = {r: make((n * 5,), torch.int32, "bits", "sgrs", r) for r in MYRANKS}
    o = torch.zeros(5, dtype=torch.int32)
    reduce_scatter_tensor(o, zs[R].clone(), group=MYG)
    ok, d = compare(o, fold([zs[r] for r in MYRANKS], "SUM")[me * 5:(me + 1) * 5], None)
    if not ok:
        return False, f"reduce_scatter_tensor: {d}"
    dist.barrier(group=MYG)
    if n > 1:  # point to point inside the group, peers named by global rank
        nxt, prv = MYRANKS[(me + 1) % n], MYRANKS[(me - 1) % n]
        got = torch.zeros(11)
        ws = [dist.isend(p2p_payload(R, nxt, 11, tag=5), nxt, group=MYG, tag=5),
              dist.irecv(got, prv, group=MYG, tag=5)]
        for w in ws:
            w.wait()
        ok, d = compare(got, p2p_payload(prv, R, 11, tag=5), None)
        if not ok:
            return False, f"isend/irecv inside the group: {d}"
    return True, f"group {MYRANKS}: all_gather, broadcast, all_to_all_single, reduce_scatter_tensor, barrier, p2p"


def subgroup_interleaved():
    """Ops on overlapping groups and the world, interleaved, stay in order."""
    a = torch.full((5,), float(R + 1))
    b = torch.full((5,), float(R + 1))
    c = torch.full((5,), float(R + 1))
    w1 = dist.all_reduce(a, group=MYG, async_op=True)
    w2 = dist.all_reduce(b, async_op=True)
    if R in HALF_RANKS:
        dist.all_reduce(c, group=HALF_G)
        want_c = float(sum(r + 1 for r in HALF_RANKS))
    else:
        want_c = float(R + 1)
    w1.wait()
    w2.wait()
    want_a = float(sum(r + 1 for r in MYRANKS))
    want_b = float(sum(r + 1 for r in range(W)))
    ok = bool((a == want_a).all() and (b == want_b).all() and (c == want_c).all())
    return ok, f"group {a[0].item()} (want {want_a}), world {b[0].item()} (want {want_b}), half {c[0].item()} (want {want_c})"


# -- async ----------------------------------------------------------------


def async_all_reduce(n):
    xs = [make((n,), torch.float32, "normal", "async", n, r) for r in range(W)]
    z = xs[R].clone()
    w = dist.all_reduce(z, async_op=True)
    w.wait()
    if not w.is_completed():
        return False, "is_completed() False after wait()"
    ref = xs[R].clone()
    dist.all_reduce(ref, group=GLOO)
    ok, d = compare(z, ref, "SUM", xs)
    if not ok:
        return False, f"wait(): {d}"
    z2 = xs[R].clone()
    fut = dist.all_reduce(z2, async_op=True).get_future()
    res = fut.wait()
    got = res[0] if isinstance(res, (list, tuple)) else res
    ok, d = compare(got, ref, "SUM", xs)
    if not ok:
        return False, f"get_future().wait() value: {d}"
    ok, d = compare(z2, ref, "SUM", xs)
    if not ok:
        return False, f"tensor after get_future().wait(): {d}"
    z3 = xs[R].clone()
    doubled = dist.all_reduce(z3, async_op=True).get_future().then(
        lambda f: (f.value()[0] if isinstance(f.value(), (list, tuple)) else f.value()) * 2).wait()
    ok, d = compare(doubled, ref * 2, "SUM", [x * 2 for x in xs])
    return ok, f"wait, is_completed, get_future().wait(), then(): {d}"


def _executor_wakeups():
    """{thread id: voluntary context switches} of this process's zccl
    executor threads (one per communicator that queued an operation; each
    sleeps between the jobs it runs)."""
    got = {}
    for t in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{t}/status") as f:
                st = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:  # the thread ended meanwhile
            continue
        if st.get("Name", "").strip().startswith("zccl-py-"):
            got[t] = int(st["voluntary_ctxt_switches"])
    return got


def blocking_runs_on_the_calling_thread():
    """Blocking collectives of tensors large enough to be queued when async
    run on the thread that calls them (torch waits on their Work at once):
    no executor thread wakes up for them, while one does for an async one
    (so the check can fail), and every result is right."""
    g = dist.new_group(list(range(W)))
    blk = BIG // 4  # float32 elements per rank's block: 1 MiB
    n = W * blk
    bad = []
    # An executor thread goes back to sleep (a switch counted) just after
    # its last job completed: let earlier async checks' threads settle.
    time.sleep(0.1)
    before = _executor_wakeups()
    x = torch.full((n,), float(R + 1))
    dist.all_reduce(x, group=g)
    if not bool((x == W * (W + 1) / 2).all()):
        bad.append("all_reduce")
    inp = torch.arange(n, dtype=torch.float32) + R * n
    out = torch.empty(n)
    dist.all_to_all_single(out, inp, group=g)
    want = torch.cat([torch.arange(R * blk, (R + 1) * blk, dtype=torch.float32) + j * n for j in range(W)])
    if not torch.equal(out, want):
        bad.append("all_to_all_single")
    ag = torch.empty(n)
    all_gather_into_tensor(ag, torch.full((blk,), float(R)), group=g)
    if not torch.equal(ag, torch.arange(W, dtype=torch.float32).repeat_interleave(blk)):
        bad.append("all_gather_into_tensor")
    rs = torch.empty(blk)
    reduce_scatter_tensor(rs, torch.full((n,), float(R + 1)), group=g)
    if not bool((rs == W * (W + 1) / 2).all()):
        bad.append("reduce_scatter_tensor")
    bc = torch.full((blk,), float(R))
    dist.broadcast(bc, src=W - 1, group=g)
    if not bool((bc == W - 1).all()):
        bad.append("broadcast")
    during = _executor_wakeups()
    dist.all_reduce(torch.ones(blk), group=g, async_op=True).wait()
    # (Counted once the thread that ran it sleeps again.)
    end = time.monotonic() + 5
    after = _executor_wakeups()
    while after == during and time.monotonic() < end:
        time.sleep(0.01)
        after = _executor_wakeups()
    woke_blocking = {t: during[t] - before.get(t, 0) for t in during if during[t] != before.get(t)}
    woke_async = {t: after[t] - during.get(t, 0) for t in after if after[t] != during.get(t)}
    ok = not bad and not woke_blocking and bool(woke_async)
    return ok, (f"wrong: {bad or 'none'}; executor threads woken (thread: times) by the blocking calls: "
                f"{woke_blocking or 'none'}, by the async one: {woke_async or 'none'}")


def async_many_in_flight():
    """Several different async collectives issued back to back, waited in
    reverse order."""
    n = 70001
    xs = [make((n,), torch.int64, "bits", "many", r) for r in range(W)]
    ar = xs[R].clone()
    ag = torch.zeros(W * n, dtype=torch.int64)
    bc = xs[R].clone()
    a2 = torch.zeros(W * (n // W), dtype=torch.int64)
    rs = torch.zeros(n // W, dtype=torch.int64)
    ws = [dist.all_reduce(ar, op=RO.MAX, async_op=True),
          all_gather_into_tensor(ag, xs[R].clone(), async_op=True),
          dist.broadcast(bc, src=W - 1, async_op=True),
          dist.all_to_all_single(a2, xs[R][:W * (n // W)].clone(), async_op=True),
          reduce_scatter_tensor(rs, xs[R][:W * (n // W)].clone(), async_op=True),
          dist.barrier(async_op=True)]
    for w in reversed(ws):
        w.wait()
    k = n // W
    checks = [
        ("all_reduce MAX", ar, fold(xs, "MAX")),
        ("all_gather_into_tensor", ag, torch.cat(xs)),
        ("broadcast", bc, xs[W - 1]),
        ("all_to_all_single", a2, torch.cat([xs[s][R * k:(R + 1) * k] for s in range(W)])),
        ("reduce_scatter_tensor", rs, fold([x[:W * k] for x in xs], "SUM")[R * k:(R + 1) * k]),
    ]
    for name, got, ref in checks:
        ok, d = compare(got, ref, None)
        if not ok:
            return False, f"{name}: {d}"
    return True, "6 ops in flight, all bit-equal"


def async_poll_is_completed(kind, n):
    """For CPU collectives torch documents is_completed() == True as 'the
    result is there': poll it without wait(), then read the output."""
    xs = [make((n,), torch.float32, "exact", "poll", kind, n, r) for r in range(W)]
    if kind == "all_gather_list":
        outs = [torch.zeros(n) for _ in range(W)]
        w = dist.all_gather(outs, xs[R].clone(), async_op=True)
        got, ref = (lambda: torch.stack(outs)), torch.stack(xs)
    elif kind == "all_reduce_noncontiguous":
        base = torch.stack([xs[R].clone(), xs[R].clone()], 1)  # (n, 2)
        view = base[:, 0]  # stride 2
        w = dist.all_reduce(view, async_op=True)
        got, ref = (lambda: view), fold(xs, "SUM")
    elif kind == "all_reduce":
        t = xs[R].clone()
        w = dist.all_reduce(t, async_op=True)
        got, ref = (lambda: t), fold(xs, "SUM")
    else:
        raise ValueError(kind)
    deadline = time.monotonic() + 30
    while not w.is_completed():
        if time.monotonic() > deadline:
            return False, "is_completed() still False after 30 s"
        time.sleep(0.001)
    ok, d = compare(got(), ref, None)
    w.wait()
    ok2, d2 = compare(got(), ref, None)
    return ok, f"read right after is_completed(): {d}; after wait(): {d2}"


# -- the run ----------------------------------------------------------------

SIZES = [0, 1, 1000 * W + 3]
DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool,
          torch.float16, torch.bfloat16, torch.float32, torch.float64]

C.run("backend.identity", backend_identity)

for dt in DTYPES:
    for op in OPS:
        for n in SIZES:
            C.run(f"all_reduce.{dname(dt)}.{op}.n{n}", all_reduce_case, dt, op, (n,))
for dt, op in ((torch.float32, "SUM"), (torch.int64, "MAX"), (torch.bfloat16, "SUM"),
               (torch.uint8, "BXOR"), (torch.float64, "AVG"), (torch.int32, "PRODUCT")):
    C.run(f"all_reduce.{dname(dt)}.{op}.n{BIG + 1}", all_reduce_case, dt, op, (BIG + 1,), "big")
C.run("all_reduce.float32.SUM.shape3x5x7", all_reduce_case, torch.float32, "SUM", (3, 5, 7))
C.run("all_reduce.int32.MIN.shape4x1x6", all_reduce_case, torch.int32, "MIN", (4, 1, 6))
C.run("all_reduce.float32.SUM.noncontiguous", all_reduce_noncontiguous)

for dt in (torch.float32, torch.int64, torch.bfloat16, torch.bool, torch.uint8, torch.float16, torch.int16):
    for n in SIZES:
        C.run(f"all_gather.{dname(dt)}.n{n}", all_gather_case, dt, (n,))
C.run("all_gather.float32.shape2x3x5", all_gather_case, torch.float32, (2, 3, 5))
C.run("all_gather.float32.n262147", all_gather_case, torch.float32, (BIG // 4 + 3,))

for dt in (torch.float32, torch.int64, torch.bfloat16, torch.bool):
    for n in SIZES:
        for stacked in (False, True):
            C.run(f"all_gather_into_tensor.{dname(dt)}.n{n}.{'stacked' if stacked else 'flat'}",
                  all_gather_into_tensor_case, dt, n, stacked, False)
C.run("all_gather_into_tensor.float32.n262147.async", all_gather_into_tensor_case, torch.float32, BIG // 4 + 3, False, True)

for dt in (torch.float32, torch.float64, torch.int32, torch.int64, torch.uint8, torch.bfloat16, torch.float16):
    for op in ("SUM", "PRODUCT", "MIN", "MAX", "AVG"):
        for block in (0, 1, 1001):
            for form in ("list", "tensor"):
                name = "reduce_scatter" if form == "list" else "reduce_scatter_tensor"
                C.run(f"{name}.{dname(dt)}.{op}.block{block}", reduce_scatter_case, dt, op, block, form)
C.run("reduce_scatter_tensor.float32.SUM.block262147.async", reduce_scatter_case, torch.float32, "SUM", BIG // 4 + 3, "async")
C.run("reduce_scatter_tensor.int64.SUM.block1001.vs_gloo_all_reduce", reduce_scatter_vs_gloo_allreduce)

for root in range(W):
    for dt in (torch.float32, torch.int64, torch.bfloat16, torch.bool, torch.float16):
        for n in (0, 1, 1001):
            C.run(f"broadcast.{dname(dt)}.n{n}.root{root}", broadcast_case, dt, n, root)
C.run(f"broadcast.float32.n{BIG}.root{W - 1}", broadcast_case, torch.float32, BIG, W - 1)
C.run("broadcast.complex64.lazy_conjugate", lazy_views, "broadcast_conj")
C.run("p2p.complex64.lazy_conjugate", lazy_views, "send_conj")
C.run("all_reduce.float32.SUM.lazy_negation", lazy_views, "all_reduce_neg")

C.run("barrier.sync", barrier_case, False)
C.run("barrier.async", barrier_case, True)

for dt in (torch.float32, torch.int64, torch.bfloat16):
    for mode in ("even", "uneven", "uneven_big", "empty"):
        C.run(f"all_to_all_single.{dname(dt)}.{mode}", a2a_single_case, dt, mode)
C.run("all_to_all_single.float32.uneven.async", a2a_single_case, torch.float32, "uneven_big", True)
C.run("all_to_all_single.int32.1d", a2a_single_1d)

for dt in (torch.float32, torch.int64, torch.bfloat16):
    C.run(f"all_to_all.{dname(dt)}", a2a_list_case, dt)

for n in (1, 1001, BIG // 4):
    C.run(f"p2p.send_recv.n{n}", p2p_send_recv, n)
for dt in (torch.float32, torch.int64, torch.bfloat16):
    for n in (1, 10007):
        C.run(f"p2p.isend_irecv.{dname(dt)}.n{n}", p2p_isend_irecv, n, dt)
C.run("p2p.tags_out_of_order", p2p_tags_out_of_order)
C.run("p2p.negative_tag", p2p_negative_tag)
for n in (1, BIG // 4):
    C.run(f"p2p.pairwise_receives_first.n{n}", p2p_pairwise_receives_first, n)
for dt in (torch.float32, torch.int64, torch.bfloat16):
    for n in (1, 100003):
        C.run(f"batch_isend_irecv.{dname(dt)}.n{n}", batch_case, n, dt)

C.run("subgroup.identity", subgroup_identity)
for dt, op in ((torch.float32, "SUM"), (torch.int64, "SUM"), (torch.int32, "MAX"), (torch.float64, "MIN"),
               (torch.uint8, "BOR")):
    C.run(f"subgroup.all_reduce.{dname(dt)}.{op}", subgroup_all_reduce, dt, op)
C.run("subgroup.collectives", subgroup_collectives)
C.run("subgroup.interleaved", subgroup_interleaved)

for n in (1001, BIG // 4 + 1):
    C.run(f"async.all_reduce.n{n}", async_all_reduce, n)
C.run("async.many_in_flight", async_many_in_flight)
C.run("blocking.runs_on_the_calling_thread", blocking_runs_on_the_calling_thread)
for kind in ("all_reduce", "all_gather_list", "all_reduce_noncontiguous"):
    for n in (1001, BIG // 4 + 1):
        C.run(f"async_poll.is_completed.{kind}.n{n}", async_poll_is_completed, kind, n)

dist.barrier(group=GLOO)
C.finish()
