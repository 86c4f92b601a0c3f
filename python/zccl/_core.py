"""zccl's own Python API: a communicator over CPU tensors and numpy arrays.

Every operation works on the caller's memory in place (no copies on the
way in or out), releases the GIL while it waits, and raises `ZcclError`
with zccl's message (the rank, the peer, the timeout) when it fails. A
failed operation aborts the communicator on that rank, and its peers learn
it at once: a collective that failed on one rank fails on every rank.
"""

import functools

from . import _buf
from ._zccl import Comm as _Comm
from ._zccl import Root, ZcclError
from ._zccl import attn_merge as _attn_merge

__all__ = ["Communicator", "Root", "Work", "ZcclError", "attn_merge"]

_OPS = {"sum", "prod", "product", "min", "max", "avg", "mean", "band", "bor", "bxor"}


def _op_name(op):
    if isinstance(op, str):
        name = op.lower()
    else:  # torch's ReduceOp / RedOpType, or anything with a name
        op = getattr(op, "op", op)  # torch 1.13: ReduceOp.MAX is a ReduceOp whose .op is the RedOpType
        name = getattr(op, "name", None) or str(op).split(".")[-1]
        name = name.lower()
    if name not in _OPS:
        raise ValueError(f"zccl: unknown reduce op {op!r} (sum, prod, min, max, avg)")
    return name


class Work:
    """A pending operation: `wait()`, `is_completed()`, `exception()`.

    Holds the buffers of the operation until it is done. `wait(timeout)`
    raises `ZcclError` if the operation failed and `TimeoutError` if
    `timeout` seconds passed first; without a timeout (`None`, 0) it waits
    at most the communicator's own timeout. A negative or NaN `timeout`
    raises `ValueError`.
    """

    __slots__ = ("_w", "_keep", "_then")

    def __init__(self, native, keep=(), then=None):
        self._w = native
        self._keep = keep
        self._then = then

    def wait(self, timeout=None):
        self._w.wait(timeout)
        then, self._then = self._then, None
        if then is not None:
            then()
        self._keep = ()
        return True

    def is_completed(self):
        return self._w.is_completed()

    def is_success(self):
        return self._w.is_success()

    def exception(self):
        return self._w.exception()


def _done(native, keep=(), then=None, async_op=False):
    w = Work(native, keep, then)
    if async_op:
        return w
    w.wait()
    return None


class Communicator:
    """A zccl communicator.

    >>> import zccl, numpy as np                      # doctest: +SKIP
    >>> comm = zccl.Communicator.from_env()           # under zccl run / torchrun
    >>> x = np.ones(4, dtype=np.float32)
    >>> comm.all_reduce(x)                            # in place: x == size
    """

    def __init__(self, native):
        self._c = native

    @classmethod
    def from_env(cls):
        """Joins the job from the launcher's variables (`zccl run`,
        torchrun, Slurm, Open MPI; `ZCCL_*` settings)."""
        return cls(_Comm.from_env())

    @classmethod
    def init(cls, unique_id, rank, size, timeout=None):
        """Joins job `unique_id` (from `Root(...).unique_id`) as `rank` of
        `size`; `timeout` in seconds bounds the start-up and every operation."""
        return cls(_Comm.init(str(unique_id), int(rank), int(size), timeout))

    rank = property(lambda self: self._c.rank, doc="This rank.")
    size = property(lambda self: self._c.size, doc="Number of ranks.")
    local_rank = property(lambda self: self._c.local_rank, doc="Rank among this host's ranks.")
    local_size = property(lambda self: self._c.local_size, doc="Ranks on this host.")
    timeout = property(lambda self: self._c.timeout, doc="Per-operation timeout (s).")

    def split(self, color, key=0):
        """`MPI_Comm_split`: a communicator of the ranks passing the same
        `color` (ordered by key, then rank); `None` for `color=None`."""
        c = self._c.split(color, key)
        return None if c is None else Communicator(c)

    def close(self):
        """Closes the connections now, in order: peers see a clean close,
        later operations fail. Dropping the communicator does the same."""
        self._c.close()

    def abort(self, reason=None):
        """Fails every pending and future operation; peers learn it (and
        `reason`, when given)."""
        self._c.abort(reason)

    # -- collectives -------------------------------------------------------

    def all_reduce(self, buf, op="sum", out=None, async_op=False):
        """Reduces `buf` over all ranks, in place (or into `out`)."""
        a, n, dt = _buf.reducible(buf, "all_reduce buffer", write=out is None)
        o = 0
        keep = [buf]
        if out is not None:
            _same_dtype(buf, out, "all_reduce")
            o, on = _buf.span(out, "all_reduce output", write=True)
            if on != n:
                raise ValueError(f"zccl: all_reduce output has {on} bytes, input {n}")
            keep.append(out)
        w = self._c.all_reduce(a, n, dt, _op_name(op), o, keep, async_op)
        return _done(w, keep, async_op=async_op)

    def all_gather(self, inp, out, async_op=False):
        """`out` (size × inp, flat or with a leading rank dimension) gets
        every rank's `inp`, in rank order."""
        a, n = _buf.span(inp, "all_gather input")
        o, on = _buf.span(out, "all_gather output", write=True)
        _same_dtype(inp, out, "all_gather")
        keep = [inp, out]
        w = self._c.all_gather(a, n, o, on, _buf.dtype_name(inp), keep, async_op)
        return _done(w, keep, async_op=async_op)

    def reduce_scatter(self, inp, out, op="sum", async_op=False):
        """Rank r's `out` gets block r of the reduction of every `inp`."""
        a, n, dt = _buf.reducible(inp, "reduce_scatter input")
        o, on = _buf.span(out, "reduce_scatter output", write=True)
        _same_dtype(inp, out, "reduce_scatter")
        keep = [inp, out]
        w = self._c.reduce_scatter(a, n, o, on, dt, _op_name(op), keep, async_op)
        return _done(w, keep, async_op=async_op)

    def broadcast(self, buf, root=0, async_op=False):
        """Copies `root`'s `buf` into every rank's `buf`."""
        a, n = _buf.span(buf, "broadcast buffer", write=int(root) != self.rank)
        w = self._c.broadcast(a, n, int(root), _buf.dtype_name(buf), [buf], async_op)
        return _done(w, [buf], async_op=async_op)

    def barrier(self, async_op=False):
        """Returns once every rank entered the barrier."""
        return _done(self._c.barrier(async_op), async_op=async_op)

    def all_to_all(self, inp, out, send_counts=None, recv_counts=None, async_op=False):
        """Block p of `inp` goes to rank p; block p of `out` comes from rank
        p. Equal blocks by default; `send_counts`/`recv_counts` (elements
        per rank) for all-to-all-v."""
        a, n = _buf.span(inp, "all_to_all input")
        o, on = _buf.span(out, "all_to_all output", write=True)
        _same_dtype(inp, out, "all_to_all")
        isz = _buf.itemsize(inp)
        send = [int(c) * isz for c in send_counts] if send_counts is not None else []
        recv = [int(c) * isz for c in recv_counts] if recv_counts is not None else []
        if (send == []) != (recv == []):
            raise ValueError("zccl: all_to_all needs both send_counts and recv_counts, or neither")
        keep = [inp, out]
        w = self._c.all_to_all(a, n, o, on, send, recv, _buf.dtype_name(inp), keep, async_op)
        return _done(w, keep, async_op=async_op)

    # -- point to point ----------------------------------------------------

    def isend(self, buf, peer, tag=0):
        """Posts a send of `buf` to `peer`; returns a `Work`."""
        a, n = _buf.span(buf, "send buffer")
        return Work(self._c.p2p([(True, a, n, int(peer), int(tag), _buf.dtype_name(buf))], [buf]), [buf])

    def irecv(self, buf, peer, tag=0):
        """Posts a receive into `buf` from `peer`; returns a `Work`."""
        a, n = _buf.span(buf, "recv buffer", write=True)
        return Work(self._c.p2p([(False, a, n, int(peer), int(tag), _buf.dtype_name(buf))], [buf]), [buf])

    def send(self, buf, peer, tag=0):
        self.isend(buf, peer, tag).wait()

    def recv(self, buf, peer, tag=0):
        self.irecv(buf, peer, tag).wait()

    def batch(self, ops):
        """Posts `("send"|"recv", buf, peer[, tag])` operations at once;
        returns one `Work` for all of them (ring-attention style)."""
        items, keep = [], []
        for op in ops:
            kind, buf, peer = op[0], op[1], op[2]
            if kind not in ("send", "recv"):
                raise ValueError(f"zccl: batch op kind must be \"send\" or \"recv\", not {kind!r}")
            tag = op[3] if len(op) > 3 else 0
            a, n = _buf.span(buf, f"{kind} buffer", write=kind == "recv")
            items.append((kind == "send", a, n, int(peer), int(tag), _buf.dtype_name(buf)))
            keep.append(buf)
        return Work(self._c.p2p(items, keep), keep)

    # -- sequence-parallel primitives -------------------------------------

    def ring_shift(self, inp, out, offset=1, async_op=False):
        """`out` gets the `inp` of rank `r - offset` (this rank's goes to
        `r + offset`): one step of ring attention."""
        a, n = _buf.span(inp, "ring_shift input")
        o, on = _buf.span(out, "ring_shift output", write=True)
        _same_dtype(inp, out, "ring_shift")
        keep = [inp, out]
        w = self._c.ring_shift(a, n, o, on, int(offset), keep, async_op, _buf.dtype_name(inp))
        return _done(w, keep, async_op=async_op)

    def ring_pass(self, block, fn, offset=1, shapes=None):
        """Ring attention's driver: every rank's `block` visits every rank.
        `fn(step, origin, blk)` is called once per block, own block first,
        while the next block is already moving. `blk` is a zero-copy view,
        lent (it is being forwarded) and valid only during the call: clone
        it to keep or change it (a write into it or a reference kept past
        the call raises on every rank; numpy views are read-only). `shapes[p]`: shape
        of rank p's block when they differ (default: all like `block`)."""
        a, n = _buf.span(block, "ring_pass block")
        size = self.size
        if shapes is None:
            shapes = [tuple(block.shape)] * size
        lens = [_numel(s) * _buf.itemsize(block) for s in shapes]

        def on_block(step, origin, addr, nbytes):
            _buf.with_view(lambda blk: fn(step, origin, blk), addr, nbytes, block, shapes[origin], "ring_pass")

        self._c.ring_pass(a, n, lens, on_block, int(offset))

    def token_ring(self, q, compute, merge, block_shape, block_dtype=None, q_offset=1):
        """TokenRing: this rank's `q` travels the ring while each partial
        result goes straight back to the owner of its Q, both in flight
        during compute. `compute(step, origin, q_view)` returns the block
        (a tensor of `block_shape`, `block_dtype`, default q's dtype) for the
        Q of `origin`; `merge(src, step, block_view)` folds a block computed
        by rank `src` for this rank's Q (own block at step 0). Views are
        valid only during the call. `q_offset`: +1 (Q forward) or -1."""
        import math

        a, n = _buf.span(q, "token_ring Q")
        size = self.size
        like = q if block_dtype is None else _empty_like(q, block_dtype)
        block_shape = tuple(block_shape)
        block_bytes = math.prod(block_shape) * _buf.itemsize(like)
        qshape = tuple(q.shape)

        def c(step, origin, addr, nbytes):
            blk = _buf.with_view(lambda qv: compute(step, origin, qv), addr, nbytes, q, qshape,
                                 "token_ring compute", keep=True)
            if _buf.dtype_name(blk) != _buf.dtype_name(like) or tuple(blk.shape) != block_shape:
                raise ValueError(
                    f"zccl: token_ring compute returned {_buf.dtype_name(blk)} {tuple(blk.shape)}, "
                    f"expected {_buf.dtype_name(like)} {block_shape}"
                )
            blk = blk.contiguous() if _buf._is_torch(blk) else _np_contig(blk)
            ba, bn = _buf.span(blk, "token_ring block")
            return (ba, bn, blk)

        def m(src, step, addr, nbytes):
            _buf.with_view(lambda blk: merge(src, step, blk), addr, nbytes, like, block_shape, "token_ring merge")

        self._c.token_ring(a, n, [n] * size, [block_bytes] * size, c, m, int(q_offset))

    def all_scan(self, state, decay, reverse=False, blocks=1, inclusive=False, on_block=None):
        """All-Scan (ZeCO) with the diagonal-decay combine of gated linear
        attention: rank p's element is `(decay_p, state_p)` (state `rows ×
        cols` float32, decay `rows` float32) and the prefix evolves as
        `S = decay_p[:, None] * S + state_p`. Returns `(exclusive,
        inclusive or None)`: the combine of ranks before this one (forward)
        or after it (`reverse=True`). Pipelined over `blocks` row blocks:
        `on_block(index, rows, exclusive_rows, inclusive_rows)` runs as soon
        as a block is final, while the next ones still move."""
        if _buf.dtype_name(state) != "float32" or _buf.dtype_name(decay) != "float32":
            raise TypeError("zccl: all_scan state and decay must be float32")
        if len(state.shape) != 2:
            raise ValueError("zccl: all_scan state must be 2-D (rows x cols)")
        rows, cols = int(state.shape[0]), int(state.shape[1])
        if _numel(decay.shape) != rows:
            raise ValueError(f"zccl: all_scan decay has {_numel(decay.shape)} values for {rows} rows")
        excl = _empty_like(state)
        incl = _empty_like(state) if inclusive else None
        sa, _ = _buf.span(state, "all_scan state")
        da, _ = _buf.span(decay, "all_scan decay")
        ea, _ = _buf.span(excl)
        ia = _buf.span(incl)[0] if incl is not None else 0
        cb = None
        if on_block is not None:

            def cb(index, r0, r1):
                on_block(index, range(r0, r1), excl[r0:r1], incl[r0:r1] if incl is not None else None)

        self._c.all_scan(sa, da, rows, cols, ea, ia, bool(reverse), int(blocks), cb)
        return excl, incl


def attn_merge(out, lse, out2, lse2):
    """Merges the attention block `(out2, lse2)` into `(out, lse)` in place
    (FlashAttention-2's log-sum-exp merge; float32, `out` rows × head_dim,
    `lse` one value per row)."""
    for x, w in ((out, "out"), (lse, "lse"), (out2, "out2"), (lse2, "lse2")):
        if _buf.dtype_name(x) != "float32":
            raise TypeError(f"zccl: attn_merge {w} must be float32")
    _attn_merge(_buf.span(out, "out", write=True), _buf.span(lse, "lse", write=True), _buf.span(out2, "out2"), _buf.span(lse2, "lse2"))


def _same_dtype(inp, out, what):
    """An output of another dtype would get the input's bits reinterpreted."""
    if _buf.dtype_name(out) != _buf.dtype_name(inp):
        raise TypeError(
            f"zccl: {what} output is {_buf.dtype_name(out)}, the input {_buf.dtype_name(inp)}: they must match"
        )


def _numel(shape):
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _empty_like(x, dtype=None):
    if _buf._is_torch(x):
        import torch

        return torch.empty(tuple(x.shape), dtype=dtype or x.dtype)
    import numpy as np

    return np.empty(x.shape, dtype=dtype or x.dtype)


def _np_contig(a):
    import numpy as np

    return np.ascontiguousarray(a)


# The messages of the binding's integer conversions (a negative tag, rank,
# count or offset; one past 2**63): not an OverflowError naming nothing, but
# a ValueError naming the call and the integers it got.
_RANGE_MESSAGES = ("out of range integral type conversion", "can't convert negative int", "too big to convert",
                   "too large to convert")


def _an_integer(v):
    return isinstance(v, int) or (isinstance(v, (list, tuple)) and all(isinstance(x, int) for x in v))


def _range_errors(name, fn):
    @functools.wraps(fn)
    def checked(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OverflowError as e:
            if not any(m in str(e) for m in _RANGE_MESSAGES):
                raise
            ints = [repr(a) for a in args if _an_integer(a)]
            ints += [f"{k}={v!r}" for k, v in kwargs.items() if _an_integer(v)]
            raise ValueError(
                f"zccl: {name}: an integer argument is out of range ({', '.join(ints) or 'see the call'})"
            ) from None

    return checked


for _name, _attr in list(vars(Communicator).items()):
    if _name.startswith("_"):
        continue
    if isinstance(_attr, classmethod):
        setattr(Communicator, _name, classmethod(_range_errors(_name, _attr.__func__)))
    elif callable(_attr):
        setattr(Communicator, _name, _range_errors(_name, _attr))
