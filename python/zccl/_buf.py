"""Tensors and arrays as (address, bytes, dtype), without copies.

zccl reads and writes the memory of CPU tensors (torch) and numpy arrays in
place. A buffer must be contiguous; CUDA tensors are refused here (the
torch backend stages them through host memory itself).
"""

import ctypes
import sys

# torch / numpy dtype names -> the names the native module knows for
# reductions; every other dtype moves as bytes only.
_REDUCIBLE = {
    "uint8": "uint8",
    "int32": "int32",
    "int64": "int64",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "float32": "float32",
    "float64": "float64",
}


def _is_torch(x):
    return type(x).__module__.startswith("torch")


def dtype_name(x):
    """The element type of a tensor or array, as a bare name ("float32")."""
    if _is_torch(x):
        return str(x.dtype).replace("torch.", "")
    if not hasattr(x, "dtype"):
        raise TypeError(f"zccl: expected a torch tensor or a numpy array, not {type(x).__name__}")
    return str(x.dtype)


def lazy(t):
    """Whether torch tensor `t`'s memory holds other values than it reads
    as: a lazy conjugate or negation (`x.conj()`, `x.conj().imag`; torch >=
    1.10, never on older ones)."""
    return (hasattr(t, "is_conj") and t.is_conj()) or (hasattr(t, "is_neg") and t.is_neg())


def span(x, what="buffer", write=False):
    """(address, nbytes) of a contiguous CPU tensor or numpy array."""
    if _is_torch(x):
        if x.device.type != "cpu":
            raise ValueError(
                f"zccl: {what} is on {x.device}; zccl works on CPU memory "
                "(the torch backend stages device tensors through the host)"
            )
        if not x.is_contiguous():
            raise ValueError(f"zccl: {what} is not contiguous (call .contiguous())")
        if lazy(x):
            raise ValueError(
                f"zccl: {what} is a lazy conjugate or negation of another tensor "
                "(call .resolve_conj() / .resolve_neg() first)"
            )
        return x.data_ptr(), x.numel() * x.element_size()
    ai = getattr(x, "__array_interface__", None)
    if ai is None:
        raise TypeError(f"zccl: {what} must be a torch tensor or a numpy array, not {type(x).__name__}")
    if getattr(x.dtype, "hasobject", False):
        # Its bytes are pointers to Python objects: copied without their
        # references, or overwritten by another process's pointers.
        raise TypeError(f"zccl: {what} holds Python objects (dtype {x.dtype}); zccl moves plain data only")
    if not x.flags["C_CONTIGUOUS"]:
        raise ValueError(f"zccl: {what} is not C-contiguous (use numpy.ascontiguousarray)")
    if write and not x.flags["WRITEABLE"]:
        # Writing would change an immutable object (numpy.frombuffer of
        # bytes) or fault on a read-only mapping (numpy.load(mmap_mode="r")).
        raise ValueError(f"zccl: {what} is read-only, and zccl writes into it (pass a writeable copy)")
    return ai["data"][0] or 0, x.nbytes


def reducible(x, what="buffer", write=False):
    """(address, nbytes, dtype) of a buffer a reduction can combine."""
    name = dtype_name(x)
    dt = _REDUCIBLE.get(name)
    if dt is None:
        raise TypeError(
            f"zccl: {what} has dtype {name}; reductions support uint8, int32, int64, "
            "float16, bfloat16, float32 and float64"
        )
    a, n = span(x, what, write)
    return a, n, dt


def itemsize(x):
    return x.element_size() if _is_torch(x) else x.itemsize


def view(addr, nbytes, like, shape=None):
    """A tensor (or array, as `like` is) over `nbytes` at `addr`, typed like
    `like`, without a copy. Valid only while zccl says so (during a callback)."""
    n = nbytes // itemsize(like)
    if _is_torch(like):
        import torch

        if n == 0:
            t = torch.empty(0, dtype=like.dtype)
        else:
            raw = (ctypes.c_char * nbytes).from_address(addr)
            t = torch.frombuffer(raw, dtype=like.dtype, count=n)
        return t.view(shape) if shape is not None else t
    import numpy as np

    if n == 0:
        a = np.empty(0, dtype=like.dtype)
    else:
        raw = (ctypes.c_char * nbytes).from_address(addr)
        a = np.frombuffer(raw, dtype=like.dtype, count=n)
    return a.reshape(shape) if shape is not None else a


def with_view(fn, addr, nbytes, like, shape, what, keep=False):
    """`fn(view)` over `nbytes` at `addr` (zccl's memory, lent to the call;
    see `view`), returning what `fn` returns. That memory may be on its
    way to another rank meanwhile (a ring pass forwards the block it hands
    to the callback) and is reused once the call returns, so a numpy view
    is read-only, and a torch view (torch has no read-only tensors) that
    was written in place, or that something still references after the
    call (unless `keep`: the result may be made from it), makes this raise:
    the operation then fails on every rank instead of sending changed
    bytes or leaving a view of freed memory behind."""
    n = nbytes // itemsize(like)
    if n == 0:
        return fn(view(addr, nbytes, like, shape))
    raw = (ctypes.c_char * nbytes).from_address(addr)
    base = sys.getrefcount(raw)
    if _is_torch(like):
        import torch

        v = torch.frombuffer(raw, dtype=like.dtype, count=n)
        v0 = v._version
        v = v.view(shape) if shape is not None else v
    else:
        import numpy as np

        v = np.frombuffer(raw, dtype=like.dtype, count=n)
        v.flags.writeable = False
        v0 = None
        v = v.reshape(shape) if shape is not None else v
    try:
        out = fn(v)
    finally:
        wrote = v0 is not None and v._version != v0
        del v
    if wrote:
        raise RuntimeError(
            f"zccl: {what}: the callback wrote into the block it was given (it is lent: "
            "other ranks may be reading it); clone() it and change the copy"
        )
    if not keep and sys.getrefcount(raw) > base:
        del out
        raise RuntimeError(
            f"zccl: {what}: the callback kept a reference to the block it was given, which is "
            "only valid during the call; clone() it to keep it"
        )
    return out
