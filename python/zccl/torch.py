"""The `torch.distributed` backend of zccl.

    import torch.distributed as dist
    import zccl.torch                      # registers "zccl"
    dist.init_process_group("zccl")        # under torchrun or `zccl run -n N`

Every process group (the default one and each `new_group`) gets its own zccl
communicator; its bootstrap id travels through torch's store, as
ProcessGroupNCCL's unique id does. The group's `timeout` bounds start-up and
every operation: a rank that dies or stalls makes the operation fail on the
others with `ZcclError` (a `RuntimeError`) naming the rank.

Supported: all_reduce (SUM, AVG, PRODUCT, MIN, MAX natively; BAND, BOR, BXOR
and dtypes zccl does not reduce itself through an all-gather), all_gather,
all_gather_into_tensor, reduce_scatter, reduce_scatter_tensor, broadcast,
reduce, gather, scatter, barrier, all_to_all_single (even and uneven), all_to_all,
send/recv/isend/irecv, batch_isend_irecv, new_group, `async_op=True`
(`Work.wait`, `is_completed`, `get_future`). CPU tensors are used in place;
CUDA (and non-contiguous) tensors are staged through contiguous host copies
by the backend, which is correct anywhere but not fast (native device memory
comes later).
"""

import datetime
import functools
import inspect
import os
import socket
import sys
import threading

import torch
import torch.distributed as dist

from . import _buf
from ._core import Communicator, ZcclError
from ._zccl import Comm, Root

__all__ = ["ProcessGroupZccl", "communicator", "ZcclError"]

BACKEND = "zccl"
# Operations below this many bytes run on the calling thread even when
# async (a hand-off costs more than they do); larger async ones run on the
# group's executor thread, so that compute overlaps them (blocking ones run
# on the calling thread at every size: `_blocking_call`).
def _inline_bytes():
    v = os.environ.get("ZCCL_TORCH_INLINE_BYTES", "").strip()
    if not v:
        return 256 << 10
    try:
        n = int(v)
        if 0 <= n <= 1 << 40:
            return n
    except ValueError:
        pass
    raise ValueError(f"ZCCL_TORCH_INLINE_BYTES={v[:64]!r}: must be a whole number of bytes in 0..=2^40")


_INLINE_BYTES = _inline_bytes()

_NATIVE_OPS = {0: "sum", 1: "avg", 2: "prod", 3: "min", 4: "max"}
_BITWISE = {5: torch.bitwise_and, 6: torch.bitwise_or, 7: torch.bitwise_xor}
_OP_NAMES = {0: "SUM", 1: "AVG", 2: "PRODUCT", 3: "MIN", 4: "MAX", 5: "BAND", 6: "BOR", 7: "BXOR", 8: "PREMUL_SUM"}
_REDUCIBLE = {torch.uint8, torch.int32, torch.int64, torch.float16, torch.bfloat16, torch.float32, torch.float64}
# (dtype, op code) -> (dtype name, op name) of the all_reduce fast path.
_FAST_AR = {
    (d, c): (str(d).replace("torch.", ""), o, torch.empty((), dtype=d).element_size())
    for d in _REDUCIBLE
    for c, o in _NATIVE_OPS.items()
}


def _op_code_slow(opts_or_op):
    op = getattr(opts_or_op, "reduceOp", opts_or_op)
    op = getattr(op, "op", op)
    try:
        return int(op)
    except TypeError:
        return int(op.value)


def _hash_is_code():
    """Whether `hash(ReduceOp)` is the op's number for every plain op (torch
    1.13 and 2.x hash a ReduceOp by its RedOpType): then the op of an
    options object costs one attribute read and a hash."""
    try:
        for code in _OP_NAMES:
            if code == 8:
                continue
            red = dist.ReduceOp(dist.ReduceOp.RedOpType(code)) if hasattr(dist.ReduceOp, "RedOpType") else None
            if red is None or hash(red) != code or _op_code_slow(red) != code:
                return False
            o = dist.AllreduceOptions()
            o.reduceOp = red
            if hash(o.reduceOp) != code:
                return False
        return True
    except Exception:  # noqa: BLE001 - any surprise: the portable way
        return False


if _hash_is_code():

    def _op_code(opts_or_op):
        op = getattr(opts_or_op, "reduceOp", opts_or_op)
        # PREMUL_SUM carries a factor: its hash is not a plain code.
        c = hash(op)
        return c if 0 <= c < 8 else _op_code_slow(op)

else:
    _op_code = _op_code_slow


def _blocking_call():
    """Whether the `torch.distributed` function that called into this
    backend was called with `async_op=False` (it waits on the returned Work
    at once): then the operation runs on the calling thread, as a small one
    does, instead of being handed to the group's executor thread and waited
    for. torch passes the flag to a backend only from 2.8 on
    (`opts.asyncOp`), so it is read where every version has it: the
    `async_op` argument of the `torch.distributed` function below this
    backend on the stack. A call from anywhere else (DDP's reducer, a
    direct call) counts as async. A blocking `dist.all_reduce` handed to
    the executor thread waited for its wake-ups (and went the long way
    through this module): medians of 5 interleaved runs, 2 ranks, 256 KiB
    54.8 -> 42.7 us, 1 MiB 204 -> 174 us; 4 ranks on 2 vCPUs 256 KiB 275
    -> 180 us, 4 MiB 2.86 -> 2.34 ms (see docs/performance.md)."""
    f = sys._getframe(1)
    while f is not None and f.f_globals.get("__name__") == __name__:
        f = f.f_back
    if f is None or not f.f_globals.get("__name__", "").startswith("torch.distributed"):
        return False
    code = f.f_code
    if "async_op" not in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]:
        return False
    return f.f_locals.get("async_op") is False


def _secs(timeout):
    if timeout is None:
        return None
    if isinstance(timeout, datetime.timedelta):
        s = timeout.total_seconds()
    else:
        s = float(timeout)
    if s == 0 or s == -0.001:
        # torch's kNoTimeout (zero) and kUnsetTimeout (-1 ms): the group's
        # own timeout.
        return None
    if not s > 0 or s == float("inf"):
        raise ValueError(f"zccl: timeout must be a positive number of seconds (or 0 for the group's), got {timeout!r}")
    return s


# A real tensor can carry a lazy negation (`x.conj().imag`); complex ones
# never take the all_reduce fast path. (Absent before torch 1.10.)
_is_neg = torch.Tensor.is_neg if hasattr(torch.Tensor, "is_neg") else (lambda t: False)

# The short paths' dtypes (point-to-point, all-gather, all-to-all): those
# that are never lazily conjugated (not complex), by zccl's name for them.
_P2P_FAST = {
    d: str(d).replace("torch.", "")
    for d in (getattr(torch, n, None) for n in (
        "float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64",
        "uint8", "bool", "float8_e4m3fn", "float8_e5m2"))
    if d is not None
}


def _plain(t):
    """Whether `t` is used in place as it is: a contiguous CPU tensor that is
    not a lazy negation (the short paths; the general one stages the rest)."""
    return t.is_cpu and t.is_contiguous() and not _is_neg(t)


def _plain_pair(input, output):
    """Whether an input and an output tensor of one dtype are both `_plain`
    (the short paths of the collectives with an input and an output)."""
    return output.dtype == input.dtype and _plain(input) and _plain(output)


# The all_reduce made of an all_gather (`_allreduce_by_gather`): each
# rank's block starts with a header naming its reduction and element type.
_HEADER_BYTES = 8
_GATHER_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                  torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _gather_header(code, dtype):
    kind = _GATHER_DTYPES.index(dtype) if dtype in _GATHER_DTYPES else 255
    return bytes([ord("Z"), ord("A"), ord("R"), code & 0xFF, kind, 0, 0, 0])


def _header_text(head):
    b = bytes(head.tolist())
    if b[:3] != b"ZAR":
        return "a block without zccl's all_reduce header"
    kind = str(_GATHER_DTYPES[b[4]]).replace("torch.", "") if b[4] < len(_GATHER_DTYPES) else "another type"
    op = {**_NATIVE_OPS, 5: "band", 6: "bor", 7: "bxor"}.get(b[3], b[3])
    return f"all_reduce({op}) of {kind}"


class _Unsupported(Exception):
    """An operation and element type the backend does not run (the same on
    every rank that makes the call): raised without aborting the group, so
    a program may catch it and fall back, as with Gloo."""


class _UnsupportedType(_Unsupported, TypeError):
    pass


class _UnsupportedValue(_Unsupported, ValueError):
    pass


class _Staged:
    """A tensor as zccl can use it: itself when it is a contiguous CPU
    tensor, else a contiguous host copy that is written back after the
    operation (`back()`)."""

    __slots__ = ("orig", "host", "write")

    def __init__(self, t, write):
        self.orig = t
        self.write = write
        if write and any(st == 0 and sz > 1 for st, sz in zip(t.stride(), t.shape)):
            # An expanded tensor: several elements share one place, so no
            # result can be written into it (torch refuses the copy back
            # only after the operation ran).
            raise ValueError(
                f"zccl: an output tensor of shape {tuple(t.shape)} is expanded (stride 0 in "
                f"{tuple(t.stride())}): its elements share memory; pass a tensor of its own (.contiguous())"
            )
        if t.device.type == "cpu" and t.is_contiguous() and not _buf.lazy(t):
            self.host = t
        else:
            # A lazily conjugated or negated view (`x.conj()`,
            # `torch._neg_view`) holds x's bytes: its values are resolved
            # into the copy (and written back through the view).
            self.host = t.detach().to("cpu").resolve_conj().resolve_neg().contiguous()

    def back(self):
        if self.write and self.host is not self.orig:
            with torch.no_grad():
                self.orig.copy_(self.host)


# torch calls `wait()` / `get_future()` on the Works of a Python process
# group from C++ too (DDP's parameter checks, `_broadcast_coalesced`, the
# reducer), through a pybind11 trampoline that finds the Python methods only
# while the Python object lives: if it is collected first, C++ falls back to
# the base `Work::wait`, which never returns. So every Work stays referenced
# here until it was waited on (or its future completed), bounded: past
# `_LIVE_MAX` the oldest completed ones go.
_LIVE = {}
_LIVE_MAX = 1024
_LIVE_LOCK = threading.Lock()


_SCAN_AT = [_LIVE_MAX]


def _keep(w):
    # A single dict operation is atomic under the GIL: no lock on this path
    # (it runs once per operation); the scan below takes one.
    _LIVE[id(w)] = w
    if len(_LIVE) > _SCAN_AT[0]:
        with _LIVE_LOCK:
            # Only Works already waited on may go (C++ may still call wait()
            # on the others), oldest first (dicts keep insertion order), down
            # to three quarters of the bound; the next scan comes a quarter
            # bound later, so a program that never waits its Works does not
            # pay a scan per call. (`list(...)` copies in one step, so other
            # threads' inserts do not disturb the walk.)
            drop = len(_LIVE) - _LIVE_MAX * 3 // 4
            for k in [k for k, v in list(_LIVE.items()) if v._done][:drop]:
                _LIVE.pop(k, None)
            _SCAN_AT[0] = max(_LIVE_MAX, len(_LIVE) + _LIVE_MAX // 4)
    return w


def _release(w):
    _LIVE.pop(id(w), None)


class _Answers:
    """What every Work of this backend answers alike, pending or finished."""

    def exception(self):
        return self._error

    def result(self):
        return self._result

    def source_rank(self):
        return -1


class _Work(_Answers, dist._Work):
    """torch's Work over a zccl operation: `wait`, `is_completed`,
    `is_success`, `exception`, `get_future` (DDP's communication hooks use
    it), `result`."""

    def __init__(self, zwork, result, post=None):
        super().__init__()
        self._z = zwork
        self._result = result
        self._post = post
        self._lock = threading.Lock()
        self._done = False
        self._error = None
        self._fut = None

    def _finish(self, secs):
        with self._lock:
            if not self._done:
                try:
                    if self._z is not None:
                        self._z.wait(secs)
                    if self._post is not None:
                        self._post()
                except TimeoutError:
                    raise
                except BaseException as e:  # noqa: BLE001 - kept for the future
                    self._error = e
                self._done = True
                self._z = None
                self._post = None
                if self._fut is not None:
                    self._complete_future()
        if self._error is not None:
            raise self._error

    def _complete_future(self):
        if self._error is not None:
            self._fut.set_exception(self._error)
        else:
            self._fut.set_result(self._result)

    def wait(self, timeout=None):
        if self._done and self._fut is None:
            # Completed (the common case of a small operation, which ran
            # inline): no lock, nothing to copy back. A bad timeout is
            # refused alike whether or not the operation finished.
            if timeout is not None:
                _secs(timeout)
            _LIVE.pop(id(self), None)
            if self._error is not None:
                raise self._error
            return True
        try:
            self._finish(_secs(timeout))
        finally:
            if self._done:
                _release(self)
        return True

    def is_completed(self):
        if self._done:
            return True
        z = self._z  # read once: a thread finishing it sets it to None
        if z is None or z.is_completed():
            # The copies into the caller's tensors (list outputs, staged
            # tensors) happen now, so that completed means readable.
            self._finish_quietly()
            return True
        return False

    def is_success(self):
        if not self.is_completed():
            return False
        if not self._done:
            try:
                self._finish(None)
            except BaseException:  # noqa: BLE001
                return False
        return self._error is None

    def get_future(self):
        with self._lock:
            if self._fut is not None:
                return self._fut
            self._fut = torch.futures.Future()
            if self._done:
                self._complete_future()
                return self._fut
        z = self._z
        if z is None or z.is_completed():
            self._finish_quietly()
            return self._fut
        # Complete it when the operation completes, whether or not anybody
        # calls wait(): DDP waits on the future only. Not a daemon: torch
        # aborts at exit if a thread that completed a future is still
        # being torn down (torch 1.13), and the op's own timeout bounds it.
        threading.Thread(target=self._finish_quietly, name="zccl-future").start()
        return self._fut

    def _finish_quietly(self):
        try:
            self._finish(None)
        except BaseException:  # noqa: BLE001 - delivered through the future
            pass
        _release(self)


class _DoneWork(_Answers, dist._Work):
    """A Work whose operation already ran (inline), successfully or with
    `error`: a small operation's handle, built with as little as a Work can
    be (it runs once per call, and a trainer's small all_reduces are mostly
    their calls' own cost)."""

    # No __init__ of its own (a Python-level __init__ costs as much again
    # as pybind's): `_done_work` sets the fields.
    _done = True
    _error = None
    _fut = None
    _result = None

    def wait(self, timeout=None):
        if timeout is not None:
            _secs(timeout)  # refused alike whether or not the operation finished
        _LIVE.pop(id(self), None)
        if self._error is not None:
            raise self._error
        return True

    def is_completed(self):
        return True

    def is_success(self):
        return self._error is None

    def get_future(self):
        # Two threads asking at once may each build one; both complete alike.
        if self._fut is None:
            fut = torch.futures.Future()
            if self._error is not None:
                fut.set_exception(self._error)
            else:
                fut.set_result(self._result)
            self._fut = fut
            _LIVE.pop(id(self), None)
        return self._fut


def _done_work(result, error=None):
    w = _DoneWork()
    w._result = result
    if error is not None:
        w._error = error
    return w


def _pairwise(what, outputs, inputs, run):
    """`run(output, input)` for each pair in order, each waited; one
    finished Work for all."""
    if len(outputs) != len(inputs):
        raise ValueError(f"zccl: {len(outputs)} {what} outputs for {len(inputs)} inputs")
    for o, i in zip(outputs, inputs):
        run(o, i).wait()
    return _done(outputs)


def _list_mismatch(tensors, size, like, what):
    """Why a root's gather/scatter list does not fit `size` ranks of tensors
    like `like` (same dtype and element count), or None."""
    if len(tensors) != size:
        return f"zccl: {what} has {len(tensors)} tensors for {size} ranks"
    for r, t in enumerate(tensors):
        if t.dtype != like.dtype or t.numel() != like.numel():
            return (
                f"zccl: {what}[{r}] is {t.dtype} with {t.numel()} elements, "
                f"the tensor of each rank is {like.dtype} with {like.numel()}"
            )
    return None


def _done(result, error=None):
    return _keep(_done_work(result, error))


def _local_host():
    """The address of this host as the job's other hosts reach it: the local
    address of the route to MASTER_ADDR (no packet is sent)."""
    host = os.environ.get("ZCCL_ROOT_HOST")
    if host:
        return host
    master = os.environ.get("MASTER_ADDR", "127.0.0.1")
    try:
        addr = socket.gethostbyname(master)
        if addr.startswith("127."):
            return "127.0.0.1"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((addr, int(os.environ.get("MASTER_PORT", "29500")) or 1))
            return s.getsockname()[0]
    except (OSError, ValueError, OverflowError):
        # Unresolvable host, or a MASTER_PORT that is no port number: the
        # address is only a hint here (torch's store reports a bad port).
        return "127.0.0.1"


def _store_id(store, rank, timeout):
    """Rank 0 starts the bootstrap root and publishes its id in the store;
    the others read it (the store waits for the key)."""
    key = "zccl/unique_id"
    if rank == 0:
        host = _local_host()
        try:
            root = Root(f"{host}:0", None, timeout)
        except Exception:  # noqa: BLE001 - fall back to every interface
            root = Root("0.0.0.0:0", host, timeout)
        store.set(key, root.unique_id)
        return root, root.unique_id
    return None, store.get(key).decode()


class ProcessGroupZccl(dist.ProcessGroup):
    """A torch process group backed by a zccl communicator."""

    def __init__(self, store, rank, size, timeout):
        super().__init__(rank, size)
        self._timeout = _secs(timeout)
        self._root, uid = _store_id(store, rank, self._timeout)
        self._comm = Comm.init(uid, rank, size, self._timeout)
        self._all_reduce_now = self._comm.all_reduce_now
        self._zc = Communicator(self._comm)
        self._rank = rank
        self._size = size

    # -- identity ----------------------------------------------------------

    def getBackendName(self):
        return BACKEND

    def _get_backend_name(self):
        return BACKEND

    def name(self):
        return BACKEND

    @property
    def group_name(self):
        """The name torch registered this group under. torch 2.x's functional
        collectives (`torch.distributed._functional_collectives`: DTensor,
        compiled collectives, context parallel) find a group by it; torch
        sets it on the ProcessGroup it builds, which a Python backend's group
        replaces, so it is taken from torch's registry on first use."""
        try:
            return super().group_name
        except RuntimeError:
            name = dist.distributed_c10d._world.pg_names.get(self)
            if name is None:
                raise
            self._set_group_name(name)
            return name

    def shutdown(self):
        """Closes the group's communicator in order (torch 2.x's
        destroy_process_group calls this): ranks that exit while another
        object, a DeviceMesh say, still holds the group no longer make their
        peers report them lost."""
        self._comm.close()

    def _get_backend(self, device=None):
        return self

    @property
    def supports_coalescing(self):
        return False

    def __repr__(self):
        return f"ProcessGroupZccl(rank={self._rank}, size={self._size})"

    # -- helpers -----------------------------------------------------------

    @staticmethod
    def _one(tensors, what):
        if len(tensors) != 1:
            raise ValueError(f"zccl: {what} takes exactly one tensor per process, got {len(tensors)}")
        return tensors[0]

    def _async(self, nbytes):
        return nbytes >= _INLINE_BYTES and not _blocking_call()

    def _finish(self, zwork, result, staged=(), post=None):
        def after():
            for s in staged:
                s.back()
            if post is not None:
                post()

        needs = post is not None or any(s.host is not s.orig and s.write for s in staged)
        return _keep(_Work(zwork, result, after if needs else None))

    def _run(self, method, nbytes, *args):
        """Calls a native collective, inline or queued by size."""
        return method(*args, async_op=self._async(nbytes))

    # -- collectives -------------------------------------------------------

    def allreduce(self, tensors, opts=None):
        # The common case first, in as few Python steps as possible (a
        # trainer's small all_reduces are mostly this call's own cost): one
        # contiguous CPU tensor of a natively reduced dtype and op, small
        # enough to run inline or called blocking (`_blocking_call`).
        if len(tensors) == 1:
            t = tensors[0]
            fast = _FAST_AR.get((t.dtype, _op_code(opts) if opts is not None else 0))
            if fast is not None and _plain(t):
                n = t.numel() * fast[2]
                if n < _INLINE_BYTES or _blocking_call():
                    try:
                        return _done(tensors, self._all_reduce_now(t.data_ptr(), n, fast[0], fast[1]))
                    except (ValueError, TypeError) as e:
                        # Refused before anything was sent (a misaligned
                        # tensor): the peers would wait for this rank.
                        if str(e).startswith("zccl:"):
                            self._comm.abort(f"rank {self._rank}: {e}")
                        raise
        t = self._one(tensors, "allreduce")
        code = _op_code(opts) if opts is not None else 0
        return self._allreduce(t, code, tensors)

    def _allreduce(self, t, code, result):
        if code in _NATIVE_OPS and t.dtype in _REDUCIBLE or t.is_complex() and code in (0, 1):
            s = _Staged(t, True)
            h = s.host if not t.is_complex() else torch.view_as_real(s.host)
            a, n, dt = _buf.reducible(h, "all_reduce tensor")
            w = self._run(self._comm.all_reduce, n, a, n, dt, _NATIVE_OPS[code], 0, [h])
            return self._finish(w, result, [s])
        return self._allreduce_by_gather(t, code, result)

    def _allreduce_by_gather(self, t, code, result):
        """Reductions zccl does not run natively (bitwise ops, int8/int16/bool
        ...): gather every rank's tensor and reduce in rank order, which is
        exact for these."""
        if code == 8:
            raise _UnsupportedValue("zccl: PREMUL_SUM is not supported (use SUM and scale)")
        name = _OP_NAMES.get(code, str(code))
        if code in _BITWISE:
            if t.is_floating_point() or t.is_complex():
                raise _UnsupportedType(f"zccl: {name} needs an integer or bool tensor, not {t.dtype}")
            fn = _BITWISE[code]
        elif t.dtype == torch.bool:
            fn = {0: torch.logical_or, 3: torch.logical_and, 4: torch.logical_or, 2: torch.logical_and}.get(code)
            if fn is None:
                raise _UnsupportedType(f"zccl: {name} is not defined for bool tensors")
        elif code in (0, 2, 3, 4) and not t.is_floating_point():
            fn = {0: torch.add, 2: torch.mul, 3: torch.minimum, 4: torch.maximum}[code]
        else:
            raise _UnsupportedType(f"zccl: all_reduce {name} of {t.dtype} is not supported")
        s = _Staged(t, True)
        # Each rank's block is a header naming its op and element type,
        # then its bytes: every rank sees every header, so ranks that ran
        # different reductions (BAND against BOR, int8 MAX against SUM) all
        # raise the same error instead of reducing differently. The
        # messages carry all_reduce's label, so a rank running a plain
        # all_gather meanwhile fails with an operation mismatch.
        data = s.host.reshape(-1).view(torch.uint8)
        mine = torch.tensor(list(_gather_header(code, s.host.dtype)), dtype=torch.uint8)
        block = torch.cat([mine, data])
        gathered = torch.empty((self._size, block.numel()), dtype=torch.uint8)
        a, n = _buf.span(block)
        o, on = _buf.span(gathered)
        label = f"all_reduce({_NATIVE_OPS.get(code, 'sum')})"
        w = self._comm.all_gather(a, n, o, on, "uint8", [block, gathered], False, label)
        w.wait()
        heads = gathered[:, : _HEADER_BYTES]
        if not bool((heads == mine).all()):
            ops = "; ".join(f"rank {r} {_header_text(heads[r])}" for r in range(self._size))
            raise ZcclError(f"zccl: ranks ran different all_reduce operations: {ops}")
        values = gathered[:, _HEADER_BYTES:].contiguous().view(s.host.dtype).reshape((self._size,) + tuple(s.host.shape))

        acc = values[0].clone()
        for r in range(1, self._size):
            acc = fn(acc, values[r])
        with torch.no_grad():
            s.host.copy_(acc.to(s.host.dtype))
        s.back()
        return _done(result)

    def allreduce_coalesced(self, tensors, opts=None):
        code = _op_code(opts) if opts is not None else 0
        for t in tensors:
            self._allreduce(t, code, tensors).wait()
        return _done(tensors)

    def broadcast(self, tensors, opts=None):
        t = self._one(tensors, "broadcast")
        root = opts.rootRank if opts is not None else 0
        s = _Staged(t, True)
        a, n = _buf.span(s.host, "broadcast tensor")
        w = self._run(self._comm.broadcast, n, a, n, root, _buf.dtype_name(s.host), [s.host])
        return self._finish(w, tensors, [s])

    def _gather_flat(self, inp, out_flat):
        """all-gather of `inp` into the contiguous host tensor `out_flat`."""
        a, n = _buf.span(inp, "all_gather input")
        o, on = _buf.span(out_flat, "all_gather output")
        if inp.dtype != out_flat.dtype:
            raise TypeError(f"zccl: all_gather output is {out_flat.dtype}, input {inp.dtype}")
        return self._run(self._comm.all_gather, on, a, n, o, on, _buf.dtype_name(inp), [inp, out_flat])

    def allgather(self, output_tensors, input_tensors, opts=None):
        inp = self._one(input_tensors, "allgather")
        outs = self._one(output_tensors, "allgather")
        if len(outs) != self._size:
            raise ValueError(f"zccl: allgather needs {self._size} output tensors, got {len(outs)}")
        for o in outs:
            if o.numel() != inp.numel():
                raise ValueError(
                    f"zccl: allgather output tensors must have the input's {inp.numel()} elements, got {o.numel()}"
                )
        s = _Staged(inp, False)
        flat = torch.empty((self._size * inp.numel(),), dtype=inp.dtype)
        w = self._gather_flat(s.host, flat)

        def post():
            with torch.no_grad():
                for r, o in enumerate(outs):
                    o.copy_(flat[r * inp.numel() : (r + 1) * inp.numel()].view(o.shape))

        return self._finish(w, output_tensors, [s], post)

    def _allgather_base(self, output, input, opts=None):
        if output.numel() != input.numel() * self._size:
            raise ValueError(
                f"zccl: all_gather_into_tensor output has {output.numel()} elements, "
                f"{self._size} ranks x {input.numel()} expected"
            )
        name = _P2P_FAST.get(input.dtype)
        if name is not None and _plain_pair(input, output):
            # The common case in as few Python steps as possible.
            on = output.numel() * output.element_size()
            w = self._run(self._comm.all_gather, on, input.data_ptr(), input.numel() * input.element_size(),
                          output.data_ptr(), on, name, [input, output])
            return _keep(_Work(w, output))
        si, so = _Staged(input, False), _Staged(output, True)
        w = self._gather_flat(si.host, so.host)
        return self._finish(w, output, [si, so])

    allgather_into_tensor = _allgather_base
    all_gather_single = _allgather_base

    def allgather_coalesced(self, output_lists, input_list, opts=None):
        if len(output_lists) != len(input_list):
            raise ValueError(
                f"zccl: all_gather_coalesced has {len(input_list)} input tensors "
                f"and {len(output_lists)} output lists"
            )
        for outs, inp in zip(output_lists, input_list):
            self.allgather([outs], [inp]).wait()
        return _done(output_lists)

    def _reduce_scatter_flat(self, inp, out, code):
        if code not in _NATIVE_OPS or inp.dtype not in _REDUCIBLE:
            raise _UnsupportedType(f"zccl: reduce_scatter {_OP_NAMES.get(code, code)} of {inp.dtype} is not supported")
        a, n, dt = _buf.reducible(inp, "reduce_scatter input")
        o, on = _buf.span(out, "reduce_scatter output")
        if out.dtype != inp.dtype:
            raise TypeError(f"zccl: reduce_scatter output is {out.dtype}, input {inp.dtype}")
        return self._run(self._comm.reduce_scatter, n, a, n, o, on, dt, _NATIVE_OPS[code], [inp, out])

    def reduce_scatter(self, output_tensors, input_tensors, opts=None):
        out = self._one(output_tensors, "reduce_scatter")
        ins = self._one(input_tensors, "reduce_scatter")
        if len(ins) != self._size:
            raise ValueError(f"zccl: reduce_scatter needs {self._size} input tensors, got {len(ins)}")
        for i in ins:
            if i.numel() != out.numel():
                raise ValueError("zccl: reduce_scatter input tensors must have the output's size")
        flat = torch.cat([i.detach().to("cpu").reshape(-1) for i in ins])
        so = _Staged(out, True)
        code = _op_code(opts) if opts is not None else 0
        w = self._reduce_scatter_flat(flat, so.host, code)
        return self._finish(w, output_tensors, [so])

    def _reduce_scatter_base(self, output, input, opts=None):
        if input.numel() != output.numel() * self._size:
            raise ValueError(
                f"zccl: reduce_scatter_tensor input has {input.numel()} elements, "
                f"{self._size} ranks x {output.numel()} expected"
            )
        code = _op_code(opts) if opts is not None else 0
        fast = _FAST_AR.get((input.dtype, code))
        if fast is not None and _plain_pair(input, output):
            # The common case in as few Python steps as possible.
            n = input.numel() * fast[2]
            w = self._run(self._comm.reduce_scatter, n, input.data_ptr(), n, output.data_ptr(),
                          output.numel() * fast[2], fast[0], fast[1], [input, output])
            return _keep(_Work(w, output))
        si, so = _Staged(input, False), _Staged(output, True)
        w = self._reduce_scatter_flat(si.host, so.host, code)
        return self._finish(w, output, [si, so])

    reduce_scatter_tensor = _reduce_scatter_base
    reduce_scatter_single = _reduce_scatter_base

    # torch 2.x's functional collectives (`_functional_collectives`, hence
    # DTensor and compiled code) and its coalescing manager call these for
    # all_gather_into_tensor / reduce_scatter_tensor: one operation per pair,
    # in order.
    def allgather_into_tensor_coalesced(self, outputs, inputs, opts=None):
        return _pairwise("all-gather", outputs, inputs, self._allgather_base)

    def reduce_scatter_tensor_coalesced(self, outputs, inputs, opts=None):
        return _pairwise("reduce-scatter", outputs, inputs, lambda o, i: self._reduce_scatter_base(o, i, opts))

    def alltoall_base(self, output, input, output_split_sizes, input_split_sizes, opts=None):
        if not (output_split_sizes or input_split_sizes):
            # Even blocks of contiguous CPU tensors (Ulysses' case) in as few
            # Python steps as possible: used in place, nothing to stage.
            name = _P2P_FAST.get(input.dtype)
            if name is not None and _plain_pair(input, output):
                n = input.numel() * input.element_size()
                on = output.numel() * output.element_size()
                a, o = input.data_ptr(), output.data_ptr()
                w = self._run(self._comm.all_to_all, on, a, n, o, on, [], [], name, [input, output])
                return _keep(_Work(w, output))
        si, so = _Staged(input, False), _Staged(output, True)
        if si.host.dtype != so.host.dtype:
            raise TypeError(f"zccl: all_to_all output is {output.dtype}, input {input.dtype}")
        a, n = _buf.span(si.host, "all_to_all input")
        o, on = _buf.span(so.host, "all_to_all output")
        send, recv = [], []
        if output_split_sizes or input_split_sizes:
            # (A bad split aborts the group: `_aborts_on_bad_arguments`.)
            self._check_splits(si.host, so.host, input_split_sizes, output_split_sizes)
            row_in = si.host[0].numel() * si.host.element_size() if si.host.dim() > 0 and si.host.shape[0] else 0
            row_out = so.host[0].numel() * so.host.element_size() if so.host.dim() > 0 and so.host.shape[0] else 0
            if input_split_sizes:
                send = [int(x) * row_in for x in input_split_sizes]
            else:
                send = [n // self._size] * self._size
            if output_split_sizes:
                recv = [int(x) * row_out for x in output_split_sizes]
            else:
                recv = [on // self._size] * self._size
            r = self._rank
            if send[r] != recv[r]:
                raise ValueError(
                    f"zccl: all_to_all_single: rank {r} sends {send[r]} B to itself "
                    f"(input_split_sizes {list(input_split_sizes or [])}) but expects {recv[r]} B from itself "
                    f"(output_split_sizes {list(output_split_sizes or [])})"
                )
        w = self._run(
            self._comm.all_to_all, on, a, n, o, on, send, recv, _buf.dtype_name(si.host), [si.host, so.host]
        )
        return self._finish(w, output, [si, so])

    all_to_all_single = alltoall_base

    def _check_splits(self, inp, out, input_split_sizes, output_split_sizes):
        """all_to_all_single's split sizes, in the caller's terms (rows along
        dim 0) before any byte moves: one entry per rank, none negative, and
        adding up to the tensor's rows."""
        for name, splits, t in (("input_split_sizes", input_split_sizes, inp),
                                ("output_split_sizes", output_split_sizes, out)):
            if not splits:
                continue
            splits = [int(x) for x in splits]
            if len(splits) != self._size:
                raise ValueError(
                    f"zccl: all_to_all_single {name} has {len(splits)} entries for {self._size} ranks: {splits}"
                )
            if any(x < 0 for x in splits):
                raise ValueError(f"zccl: all_to_all_single {name} has a negative entry: {splits}")
            rows = t.shape[0] if t.dim() > 0 else 1
            if sum(splits) != rows:
                raise ValueError(
                    f"zccl: all_to_all_single {name} {splits} add up to {sum(splits)} rows, "
                    f"the {'input' if t is inp else 'output'} has {rows} along dim 0"
                )

    def alltoall(self, output_tensors, input_tensors, opts=None):
        if len(output_tensors) != self._size or len(input_tensors) != self._size:
            raise ValueError(f"zccl: all_to_all needs {self._size} input and output tensors")
        dtype = input_tensors[0].dtype
        if any(t.dtype != dtype for t in list(input_tensors) + list(output_tensors)):
            raise TypeError("zccl: all_to_all tensors must share one dtype")
        flat_in = torch.cat([t.detach().to("cpu").reshape(-1) for t in input_tensors])
        flat_out = torch.empty(sum(t.numel() for t in output_tensors), dtype=dtype)
        isz = flat_in.element_size()
        send = [t.numel() * isz for t in input_tensors]
        recv = [t.numel() * isz for t in output_tensors]
        a, n = _buf.span(flat_in)
        o, on = _buf.span(flat_out)
        w = self._run(self._comm.all_to_all, on, a, n, o, on, send, recv, _buf.dtype_name(flat_in), [flat_in, flat_out])

        def post():
            off = 0
            with torch.no_grad():
                for t in output_tensors:
                    t.copy_(flat_out[off : off + t.numel()].view(t.shape))
                    off += t.numel()

        return self._finish(w, output_tensors, [], post)

    def barrier(self, opts=None):
        return self._finish(self._comm.barrier(False), [])

    def _root_rank(self, opts, what):
        """`opts.rootRank`, checked before anything moves (torch 1.13 does
        not check it for the default group): reduce and gather run on an
        all-reduce / all-gather, where a root outside the group would leave
        the result nowhere, without an error (broadcast and scatter pass the
        root to the binding's broadcast, which checks it)."""
        root = opts.rootRank if opts is not None else 0
        if not 0 <= root < self._size:
            raise ValueError(f"zccl: {what} root {root} is not a rank of this group of {self._size}")
        return root

    def reduce(self, tensors, opts=None):
        """Reduce to `rootRank` (an all-reduce; non-root tensors are left
        unchanged, as torch documents them undefined)."""
        t = self._one(tensors, "reduce")
        root = self._root_rank(opts, "reduce")
        tmp = t.detach().clone()
        self._allreduce(tmp, _op_code(opts), [tmp]).wait()
        if self._rank == root:
            with torch.no_grad():
                t.copy_(tmp)
        return _done(tensors)

    def gather(self, output_tensors, input_tensors, opts=None):
        inp = self._one(input_tensors, "gather")
        root = self._root_rank(opts, "gather")
        if self._rank == root:
            outs = self._one(output_tensors, "gather")
            # Checked before the exchange, as scatter's list: the other
            # ranks fail in this gather naming it (through the abort of
            # `_aborts_on_bad_arguments`), not at their next operation.
            bad = _list_mismatch(outs, self._size, inp, "gather_list")
            if bad:
                raise ValueError(bad)
        flat = torch.empty((self._size * inp.numel(),), dtype=inp.dtype)
        s = _Staged(inp, False)
        self._gather_flat(s.host, flat).wait()
        if self._rank == root:
            with torch.no_grad():
                for r, o in enumerate(outs):
                    o.copy_(flat[r * inp.numel() : (r + 1) * inp.numel()].view(o.shape))
        return _done(output_tensors)

    def scatter(self, output_tensors, input_tensors, opts=None):
        out = self._one(output_tensors, "scatter")
        root = opts.rootRank
        if self._rank == root:
            ins = self._one(input_tensors, "scatter")
            bad = _list_mismatch(ins, self._size, out, "scatter_list")
            if bad:
                # The ranks waiting for the root's data learn it through the
                # abort of `_aborts_on_bad_arguments`.
                raise ValueError(bad)
            flat = torch.cat([i.detach().to("cpu").reshape(-1) for i in ins])
        else:
            flat = torch.empty((self._size * out.numel(),), dtype=out.dtype)
        a, n = _buf.span(flat)
        self._comm.broadcast(a, n, root, _buf.dtype_name(flat), [flat], False).wait()
        with torch.no_grad():
            out.copy_(flat[self._rank * out.numel() : (self._rank + 1) * out.numel()].view(out.shape))
        return _done(output_tensors)

    # -- point to point ----------------------------------------------------

    def _p2p(self, tensors, peer, tag, is_send):
        if not 0 <= int(tag) < 2**32:
            raise ValueError(f"zccl: tag must be in 0..2**32, got {tag}")
        if len(tensors) == 1:
            # The common case in as few Python steps as possible (a ring
            # step is two of these and two waits): a contiguous CPU tensor
            # used in place, nothing to stage or copy back.
            t = tensors[0]
            name = _P2P_FAST.get(t.dtype)
            if name is not None and _plain(t):
                op = (is_send, t.data_ptr(), t.numel() * t.element_size(), int(peer), int(tag), name)
                return _keep(_Work(self._comm.p2p([op], [t]), tensors))
        t = self._one(tensors, "send" if is_send else "recv")
        s = _Staged(t, not is_send)
        a, n = _buf.span(s.host, "send tensor" if is_send else "recv tensor")
        w = self._comm.p2p([(is_send, a, n, int(peer), int(tag), _buf.dtype_name(s.host))], [s.host])
        return self._finish(w, tensors, [s])

    def send(self, tensors, dstRank, tag=0):
        return self._p2p(tensors, dstRank, tag, True)

    def recv(self, tensors, srcRank, tag=0):
        return self._p2p(tensors, srcRank, tag, False)

    def recv_anysource(self, tensors, tag=0):
        raise RuntimeError("zccl: recv from any source is not supported; name the source rank")

    # torch 2.x's coalescing manager (batch_isend_irecv) may call these.
    def _start_coalescing(self, device=None):
        pass

    def _end_coalescing(self, device=None):
        return _done([])

    start_coalescing = _start_coalescing
    end_coalescing = _end_coalescing


def _aborts_on_bad_arguments(method):
    """A collective whose arguments this rank finds wrong (its own checks
    or the binding's, before any byte moves: a wrong output size, an
    unsupported type, a list of the wrong length) aborts the group with the
    reason before raising: the other ranks are about to wait for this one,
    and fail at once naming it instead of waiting out the timeout and
    blaming a stall. (An operation the backend does not support for the
    type, which every rank making the same call hits alike, raises without
    aborting: `_Unsupported`.)"""

    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (ValueError, TypeError) as e:
            if str(e).startswith("zccl:") and not isinstance(e, _Unsupported):
                self._comm.abort(f"rank {self._rank}: {e}")
            raise

    return checked


# The collectives (every rank waits for every other); the all_reduce fast
# path (`allreduce`) aborts on its own refusals inline.
for _name in ("_allreduce", "broadcast", "allgather", "allgather_coalesced", "_allgather_base", "reduce_scatter",
              "_reduce_scatter_base", "alltoall_base", "alltoall", "reduce", "gather", "scatter"):
    setattr(ProcessGroupZccl, _name, _aborts_on_bad_arguments(getattr(ProcessGroupZccl, _name)))
for _alias, _name in (("allgather_into_tensor", "_allgather_base"), ("all_gather_single", "_allgather_base"),
                      ("reduce_scatter_tensor", "_reduce_scatter_base"),
                      ("reduce_scatter_single", "_reduce_scatter_base"), ("all_to_all_single", "alltoall_base")):
    setattr(ProcessGroupZccl, _alias, getattr(ProcessGroupZccl, _name))


def _create(store, rank, size, timeout, *args, **kwargs):
    return ProcessGroupZccl(store, rank, size, timeout)


def communicator(group=None):
    """zccl's own `Communicator` over the process group `group` (default: the
    world), for the calls torch has none for: `token_ring`, `all_scan`,
    `ring_pass`, `ring_shift`. Its operations are ordered with the group's."""
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    if not isinstance(pg, ProcessGroupZccl):
        pg = getattr(pg, "_get_backend", lambda d: None)(torch.device("cpu"))
    if not isinstance(pg, ProcessGroupZccl):
        raise ValueError("zccl: the process group does not use the zccl backend")
    return pg._zc


def _register():
    if hasattr(dist.Backend, "ZCCL") or "zccl" in getattr(dist.Backend, "backend_list", []):
        return
    params = inspect.signature(dist.Backend.register_backend).parameters
    if "devices" in params:
        dist.Backend.register_backend(BACKEND, _create, devices=["cpu", "cuda"])
    else:
        dist.Backend.register_backend(BACKEND, _create)


_register()
