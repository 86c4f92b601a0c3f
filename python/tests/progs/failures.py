"""Rank program: failures under the torch backend ("zccl").

    zccl run [--grace 60] -n N -- python failures.py MODE

Every rank catches what its collective raises and prints one line per case

    RESULT {"case": ..., "rank": r, "raised": 0|1, "secs": t, "type": ..., "msg": ...}

(`secs`: from entering the call to its exception or return) and exits 0, so
that the test sees every rank's outcome (`zccl run` would otherwise stop the
others at the first failing rank). The victim is rank 1; T = 5 s is the
zccl group's timeout.

MODE
  die_exit   rank 1 calls os._exit(1) while the others are in an all_reduce
             on the default zccl group (init_process_group("zccl", timeout=T)).
  die_kill   the same with SIGKILL.
  stall      one fresh zccl group per case (new_group(backend="zccl",
             timeout=T); a gloo default group coordinates):
               sleep: rank 1 sleeps T + 3 s before a blocking all_reduce;
               stop:  rank 1 SIGSTOPs itself before an async 1 MiB all_reduce
                      (waited with wait()); rank 0 SIGCONTs it once every
                      other rank has reported.
  mismatch   one fresh zccl group per case; rank 1 passes a different size or
             dtype: all_reduce, all_gather (list and into-tensor), broadcast,
             reduce_scatter_tensor, all_to_all_single, send/recv.
"""

import datetime
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, watchdog  # noqa: E402

watchdog(110)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import zccl.torch  # noqa: E402,F401

T = 5.0
VICTIM = 1
MODE = sys.argv[1]
all_gather_into_tensor = getattr(dist, "all_gather_into_tensor", None) or dist._all_gather_base
reduce_scatter_tensor = getattr(dist, "reduce_scatter_tensor", None) or dist._reduce_scatter_base


def attempt(case, fn):
    """Runs fn (the collective), reports whether and how fast it raised."""
    t0 = time.monotonic()
    try:
        out = fn()
        raised, err = 0, None
    except Exception as e:  # noqa: BLE001 - reported
        out, raised, err = None, 1, e
    secs = time.monotonic() - t0
    emit("RESULT", case=case, rank=dist.get_rank(), raised=raised, secs=round(secs, 3),
         type=type(err).__name__ if err else None, msg=str(err) if err else None,
         returned=None if out is None else repr(out)[:300])
    return raised


# -- dying ranks ---------------------------------------------------------------


def die(how):
    dist.init_process_group("zccl", timeout=datetime.timedelta(seconds=T))
    r = dist.get_rank()
    t = torch.ones(1000)
    dist.all_reduce(t)  # everyone is connected and healthy
    if r == VICTIM:
        time.sleep(1.0)  # the others are inside the next all_reduce by now
        sys.stdout.flush()
        if how == "exit":
            os._exit(1)
        os.kill(os.getpid(), signal.SIGKILL)
    attempt(f"die_{how}", lambda: dist.all_reduce(t))
    # A failed communicator fails every later operation at once.
    attempt(f"die_{how}.after", lambda: dist.all_reduce(torch.ones(10)))
    sys.stdout.flush()
    os._exit(0)


# -- stalls and mismatches on fresh zccl groups -------------------------------


def fresh():
    return dist.new_group(backend="zccl", timeout=datetime.timedelta(seconds=T))


def stall():
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=100))
    r, w = dist.get_rank(), dist.get_world_size()
    store = dist.distributed_c10d._get_default_store()
    pids = [None] * w
    dist.all_gather_object(pids, os.getpid())

    # sleep: the victim enters T + 3 s late.
    g = fresh()
    dist.all_reduce(torch.ones(10), group=g)  # connected and healthy
    dist.barrier()
    if r == VICTIM:
        time.sleep(T + 3)
    attempt("stall_sleep", lambda: dist.all_reduce(torch.ones(1000), group=g))
    dist.barrier()

    # stop: the victim is SIGSTOPped; its peers are in an async all_reduce
    # large enough to run on the group's executor thread.
    g = fresh()
    dist.all_reduce(torch.ones(10), group=g)
    dist.barrier()
    if r == VICTIM:
        os.kill(os.getpid(), signal.SIGSTOP)  # resumed by rank 0
    big = torch.ones(1 << 18)
    attempt("stall_stop", lambda: dist.all_reduce(big, group=g, async_op=True).wait())
    if r != VICTIM:
        store.add("stall_stop_reported", 1)
    if r == 0:
        deadline = time.monotonic() + 60
        while store.add("stall_stop_reported", 0) < w - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(pids[VICTIM], signal.SIGCONT)
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)


def mismatch():
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=100))
    r, w = dist.get_rank(), dist.get_world_size()
    odd = r == VICTIM

    def case(name, fn):
        g = fresh()
        dist.all_reduce(torch.ones(4), group=g)  # connected and healthy
        dist.barrier()
        attempt(name, lambda: fn(g))
        dist.barrier()

    def ar(n, dtype, n_odd=None, dtype_odd=None):
        def f(g):
            t = torch.ones(n_odd if odd and n_odd else n, dtype=dtype_odd if odd and dtype_odd else dtype)
            dist.all_reduce(t, group=g)
            return t[:4].tolist()
        return f

    case("all_reduce_size", ar(1000, torch.float32, n_odd=999))
    # Sizes on both sides of an algorithm boundary (recursive doubling /
    # halving at 64 KiB, halving / ring at 2 MiB with 4 ranks): ranks that
    # run different schedules still report the mismatch, not a timeout.
    case("all_reduce_size_tree_vs_halving", ar(1 << 14, torch.float32, n_odd=(1 << 14) + 1))
    case("all_reduce_size_halving_vs_ring", ar(1 << 19, torch.float32, n_odd=(1 << 19) + 1))
    case("all_reduce_size_async", lambda g: dist.all_reduce(
        torch.ones((1 << 18) + (1 if odd else 0)), group=g, async_op=True).wait())
    case("all_reduce_dtype_f32_i32", ar(1024, torch.float32, dtype_odd=torch.int32))
    case("all_reduce_dtype_f32_f64", ar(2048, torch.float32, n_odd=1024, dtype_odd=torch.float64))
    # Types zccl moves as bytes (int8 and bool are reduced by a gather in
    # Python): the same bytes read three ways.
    case("all_reduce_dtype_i8_bool", ar(1024, torch.int8, dtype_odd=torch.bool))

    def ag_list(g, n=10, n_odd=11, dtype=torch.float32, dtype_odd=torch.float32):
        inp = torch.ones(n_odd if odd else n, dtype=dtype_odd if odd else dtype)
        outs = [torch.empty_like(inp) for _ in range(w)]
        dist.all_gather(outs, inp, group=g)
        return [o[:2].tolist() for o in outs]

    def ag_tensor(g, n=10, n_odd=11, dtype=torch.float32, dtype_odd=torch.float32):
        inp = torch.ones(n_odd if odd else n, dtype=dtype_odd if odd else dtype)
        out = torch.empty(w * inp.numel(), dtype=inp.dtype)
        all_gather_into_tensor(out, inp, group=g)
        return out[:4].tolist()

    case("all_gather_size", ag_list)
    case("all_gather_into_tensor_size", ag_tensor)
    case("all_gather_dtype_f32_i32", lambda g: ag_list(g, 10, 10, torch.float32, torch.int32))
    case("all_gather_into_tensor_dtype_f32_f64", lambda g: ag_tensor(g, 20, 10, torch.float32, torch.float64))
    case("all_gather_dtype_i8_u8", lambda g: ag_list(g, 10, 10, torch.int8, torch.uint8))
    case("all_gather_dtype_i16_f16", lambda g: ag_list(g, 10, 10, torch.int16, torch.float16))

    def bc(g, dtype_odd=torch.float32, n_odd=101):
        t = torch.ones(n_odd if odd else 100, dtype=dtype_odd if odd else torch.float32)
        dist.broadcast(t, src=0, group=g)
        return t[:4].tolist()

    case("broadcast_size", bc)
    case("broadcast_dtype_f32_i32", lambda g: bc(g, torch.int32, 100))

    def rs(g):
        inp = torch.ones(w * (11 if odd else 10))
        out = torch.empty(11 if odd else 10)
        reduce_scatter_tensor(out, inp, group=g)
        return out[:4].tolist()

    case("reduce_scatter_tensor_size", rs)

    def rs_halving_vs_ring(g):
        # 4 ranks: inputs of 4 MiB, and 16 B more on the victim: recursive
        # halving up to the 4 MiB boundary, the ring above it. (2 ranks run
        # the ring at any size: a plain size mismatch there.)
        out = torch.empty(((1 << 20) // w if w == 4 else 1000) + (1 if odd else 0))
        inp = torch.ones(w * out.numel())
        reduce_scatter_tensor(out, inp, group=g)
        return out[:4].tolist()

    case("reduce_scatter_tensor_size_halving_vs_ring", rs_halving_vs_ring)

    # Ring chunks of exactly one 2 MiB piece against one piece and one more
    # element: every piece alike but the victim's extra one, which the ranks
    # whose pieces end first must not take for their last.
    def rs_whole_piece(g):
        out = torch.empty((1 << 19) + (1 if odd else 0))
        reduce_scatter_tensor(out, torch.ones(w * out.numel()), group=g)
        return out[:4].tolist()

    case("reduce_scatter_tensor_size_whole_piece", rs_whole_piece)
    case("all_gather_into_tensor_size_whole_piece", lambda g: ag_tensor(g, 1 << 19, (1 << 19) + 1))

    def a2a(g):
        k = 4 if odd else 3
        out = torch.empty(w * k)
        dist.all_to_all_single(out, torch.ones(w * k), group=g)
        return out[:4].tolist()

    case("all_to_all_single_size", a2a)

    def a2a_splits(g):
        # Every rank sends 2 rows to each; rank 1 expects 3 from rank 0 and
        # 1 from itself.
        outs = [3, 1] + [2] * (w - 2) if odd else [2] * w
        out = torch.empty(sum(outs))
        dist.all_to_all_single(out, torch.ones(2 * w), outs, [2] * w, group=g)
        return out[:4].tolist()

    def a2a_negative(g):
        ins = [3, -1] + [2] * (w - 2) if odd else [2] * w
        out = torch.empty(2 * w)
        dist.all_to_all_single(out, torch.ones(2 * w), [2] * w, ins, group=g)
        return out[:4].tolist()

    case("all_to_all_single_splits", a2a_splits)

    # Arguments only the victim's own checks refuse (before any byte moves):
    # it aborts with the reason, so the others fail at once.
    def ag_local(g):
        inp = torch.ones(4)
        out = torch.empty(w * 4 + (1 if odd else 0))
        all_gather_into_tensor(out, inp, group=g)
        return out[:4].tolist()

    def a2a_list_local(g):
        k = w + 1 if odd else w
        outs = [torch.empty(2) for _ in range(k)]
        dist.all_to_all(outs, [torch.ones(2) for _ in range(k)], group=g)
        return [o.tolist() for o in outs[:2]]

    case("all_gather_into_tensor_local_output", ag_local)

    def ar_expanded(g):
        t = torch.ones(1).expand(8) if odd else torch.ones(8)
        dist.all_reduce(t, group=g)
        return t[:4].tolist()

    case("all_reduce_expanded_output", ar_expanded)
    case("all_to_all_list_length", a2a_list_local)
    case("all_to_all_single_negative_split", a2a_negative)

    # Operation mismatches with equal sizes and types: another reduction, or
    # another collective moving the same bytes.
    def redop(g):
        t = torch.ones(1024)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if odd else dist.ReduceOp.SUM, group=g)
        return t[:4].tolist()

    case("all_reduce_op_sum_max", redop)

    def kind(g):
        if odd:
            out = torch.empty(w * 1024)
            all_gather_into_tensor(out, torch.ones(1024), group=g)
            return out[:4].tolist()
        t = torch.ones(w * 1024)
        dist.all_reduce(t, group=g)
        return t[:4].tolist()

    case("all_reduce_vs_all_gather", kind)

    # Reductions zccl runs by gathering (bitwise ops, int8/int16/bool):
    # another reduction, or a plain all_gather, on one rank.
    def gathered_op(dtype, op, op_odd):
        def f(g):
            t = torch.full((64,), 3 + r, dtype=dtype)
            dist.all_reduce(t, op=op_odd if odd else op, group=g)
            return t[:4].tolist()
        return f

    case("all_reduce_op_band_bor", gathered_op(torch.int32, dist.ReduceOp.BAND, dist.ReduceOp.BOR))
    case("all_reduce_op_i8_sum_max", gathered_op(torch.int8, dist.ReduceOp.SUM, dist.ReduceOp.MAX))

    def i16_kind(g):
        t = torch.full((4,), 3 + 2 * r, dtype=torch.int16)
        if odd:
            outs = [torch.zeros(4, dtype=torch.int16) for _ in range(w)]
            dist.all_gather(outs, t, group=g)
            return [o.tolist() for o in outs]
        dist.all_reduce(t, group=g)
        return t.tolist()

    case("all_reduce_i16_vs_all_gather", i16_kind)

    # Refused by the victim before anything is sent: the others fail at
    # once naming it, not by the timeout.
    def gather_list(g):
        lst = [torch.zeros(3) for _ in range(w)] if r == 0 else None
        dist.gather(torch.ones(2), lst, dst=0, group=g)
        return lst[0].tolist() if lst else "sent"

    case("gather_list_sizes", gather_list)

    def ag_coalesced(g):
        ins = [torch.ones(2) for _ in range(3 if odd else 2)]
        outs = [[torch.zeros(2) for _ in range(w)] for _ in range(2)]
        dist.all_gather_coalesced(outs, ins, group=g)
        return outs[0][0].tolist()

    case("all_gather_coalesced_lengths", ag_coalesced)

    def misaligned(g):
        # A float32 view one byte into its buffer, on the small all_reduce
        # path: zccl refuses it (Gloo would copy).
        t = torch.frombuffer(bytearray(17), dtype=torch.float32, offset=1, count=4) if odd else torch.ones(4)
        dist.all_reduce(t, group=g)
        return t.tolist()

    case("all_reduce_misaligned_small", misaligned)

    # Point to point: rank 0 sends 100 float32; rank 1 receives 99 float32 /
    # 100 int32. The receiver must raise (the sender may have finished).
    def p2p(g, n_recv, dtype_recv):
        if r == 0:
            dist.send(torch.ones(100), VICTIM, group=g)
            return "sent"
        if odd:
            t = torch.zeros(n_recv, dtype=dtype_recv)
            dist.recv(t, 0, group=g)
            return t[:4].tolist()
        return "not involved"

    def scatter_sizes(g):
        # The root's list adds up to the right total, but its pieces do not
        # fit (2 elements, then 0): without the check rank 1 got a piece of
        # rank 0's tensor and no error.
        out = torch.zeros(1)
        lst = [torch.ones(2), torch.ones(0)] + [torch.ones(1)] * (w - 2) if r == 0 else None
        dist.scatter(out, lst, src=0, group=g)
        return out.tolist()

    case("scatter_list_sizes", scatter_sizes)
    # A root outside the group (torch 1.13 does not check it for the
    # default group): nobody got the result, and nobody was told.
    case("reduce_root_out_of_range", lambda g: dist.reduce(torch.ones(4), dst=w + 3))
    case("gather_root_negative", lambda g: dist.gather(torch.ones(4), None, dst=-1))
    case("recv_size", lambda g: p2p(g, 99, torch.float32))
    case("recv_dtype_f32_i32", lambda g: p2p(g, 100, torch.int32))

    def p2p8(g):
        # int8 sent, uint8 expected: the same 100 bytes.
        if r == 0:
            dist.send(torch.full((100,), -1, dtype=torch.int8), VICTIM, group=g)
            return "sent"
        if odd:
            t = torch.zeros(100, dtype=torch.uint8)
            dist.recv(t, 0, group=g)
            return t[:4].tolist()
        return "not involved"

    case("recv_dtype_i8_u8", p2p8)
    sys.stdout.flush()
    os._exit(0)


if MODE == "die_exit":
    die("exit")
elif MODE == "die_kill":
    die("kill")
elif MODE == "stall":
    stall()
elif MODE == "mismatch":
    mismatch()
else:
    sys.exit(f"unknown mode {MODE}")
