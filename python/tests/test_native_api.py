"""zccl's own Python API (`zccl.Communicator`) on 2 and 4 ranks, and
`zccl.attn_merge` in this process.

One launch of `progs/native_api.py` per world size checks every call over
numpy arrays and torch CPU tensors (bfloat16 included) against references
computed from every rank's input; each test checks one area of its records.
"""

import math

import pytest

np = pytest.importorskip("numpy", reason="numpy is not installed")
torch = pytest.importorskip("torch", reason="torch is not installed (the rank program uses torch tensors)")

WORLD_SIZES = [2, 4]
AREAS = [
    "identity",
    "all_reduce",
    "all_reduce_out",
    "all_gather",
    "reduce_scatter",
    "broadcast",
    "all_to_all",
    "p2p",
    "batch",
    "ring_shift",
    "ring_pass",
    "token_ring",
    "all_scan",
    "split",
    "async",
    "errors",
]


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_native_program_completes(zccl_launch, n):
    zccl_launch("native_api.py", n).assert_completed(n)


@pytest.mark.parametrize("area", AREAS)
@pytest.mark.parametrize("n", WORLD_SIZES)
def test_native(zccl_launch, n, area):
    launch = zccl_launch("native_api.py", n)
    prefix = f"native.{area}"
    checks = [(r, d) for r, d in launch.checks(prefix) if d["name"] == prefix or d["name"].startswith(prefix + ".")]
    assert checks, f"no `{prefix}` checks ran (the program ended before them?){launch.tail()}"
    bad = [(r, d) for r, d in checks if not d["ok"]]
    text = "\n".join(f"  [rank {r}] {d['name']}: {d['detail'][:700]}" for r, d in bad[:12])
    assert not bad, f"{len(bad)} of {len(checks)} `{prefix}` checks failed:\n{text}"
    ranks = sorted({r for r, _ in checks})
    assert ranks == list(range(n)), f"`{prefix}` checks came from ranks {ranks} only{launch.tail()}"


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_dropped_irecv_is_reported(zccl_launch, n):
    """An irecv dropped unwaited discards the message it matches
    (`native.p2p.dropped_irecv` checks the data); zccl says so on stderr,
    naming the receive, instead of losing it silently."""
    launch = zccl_launch("native_api.py", n)
    warned = launch.err.count("dropped before the receive completed")
    assert warned >= n, f"{warned} warnings for {n} dropped receives{launch.tail()}"


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_collective_from_inside_a_callback_raises(zccl_launch, n):
    """A ring_pass callback that calls a collective of the same communicator
    (which waits for the ring_pass it runs in) raises at once on every rank
    instead of hanging; the program still ends normally."""
    _every_rank_passed(zccl_launch("native_api.py", n, "reentry"), "native.reentry", n)


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_ranks_that_disagree_on_the_scan_direction_fail_at_once(zccl_launch, n):
    """One rank calls all_scan with reverse=True, the others without: every
    rank raises within seconds, naming all_scan (the scan's direction check,
    `zccl_primitives::scan`), instead of waiting out its timeout."""
    _every_rank_passed(zccl_launch("native_api.py", n, "scan_direction"), "native.scan_direction", n)


@pytest.mark.parametrize("kind", ["write_numpy", "write_torch", "keep", "autograd"])
def test_a_lent_block_written_or_kept_by_a_callback_fails_every_rank(zccl_launch, kind):
    """ring_pass forwards the block its callback gets while the callback
    runs, and reuses it afterwards: a callback that writes into it (numpy's
    view is read-only; torch's in-place writes move its version counter) or
    keeps it (a slice, a tensor autograd saves for backward) raises on every
    rank, instead of the next rank receiving the changed bytes or a view of
    freed memory staying behind."""
    _every_rank_passed(zccl_launch("native_api.py", 2, "lent_view", kind), "native.lent_view", 2)


@pytest.mark.parametrize("n", [1, 2])
def test_every_operation_fails_after_abort(zccl_launch, n):
    """After `abort()` every operation raises ZcclError naming it, with one
    rank too (whose collectives send nothing)."""
    _every_rank_passed(zccl_launch("native_api.py", n, "abort"), "native.after_abort", n)


def _every_rank_passed(launch, name, n):
    """The launch completed and each of its `n` ranks reported check `name`
    as passed."""
    launch.assert_completed(n)
    checks = launch.checks(name)
    assert sorted(r for r, _ in checks) == list(range(n)), f"ranks that reported: {checks}{launch.tail()}"
    bad = [f"[rank {r}] {d['detail'][:400]}" for r, d in checks if not d["ok"]]
    assert not bad, "\n".join(bad)


# -- attn_merge (local, no communication) -------------------------------------


def _merge_ref(out, lse, out2, lse2):
    o, l1, o2, l2 = (np.asarray(x, dtype=np.float64) for x in (out, lse, out2, lse2))
    m = np.logaddexp(l1, l2)
    return o * np.exp(l1 - m)[:, None] + o2 * np.exp(l2 - m)[:, None], m


def _inputs(rows=37, d=16, seed=0):
    g = np.random.default_rng(seed)
    return (g.standard_normal((rows, d)).astype(np.float32), (g.standard_normal(rows) * 3).astype(np.float32),
            g.standard_normal((rows, d)).astype(np.float32), (g.standard_normal(rows) * 3).astype(np.float32))


def _zccl():
    return pytest.importorskip("zccl", reason="the zccl package (python/zccl with its native module) does not import")


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_attn_merge_matches_numpy(lib):
    zccl = _zccl()
    out, lse, out2, lse2 = _inputs()
    ref_out, ref_lse = _merge_ref(out, lse, out2, lse2)
    if lib == "torch":
        t = [torch.from_numpy(x.copy()) for x in (out, lse, out2, lse2)]
        zccl.attn_merge(*t)
        got_out, got_lse = t[0].numpy(), t[1].numpy()
    else:
        got_out, got_lse = out.copy(), lse.copy()
        zccl.attn_merge(got_out, got_lse, out2, lse2)
    np.testing.assert_allclose(got_out, ref_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_lse, ref_lse, rtol=1e-6, atol=1e-6)


def test_attn_merge_empty_block():
    """A block with lse = -inf (no keys, e.g. fully masked) contributes
    nothing, on either side; no NaN."""
    zccl = _zccl()
    out, lse, out2, lse2 = _inputs(rows=4, d=8, seed=1)
    lse2[0] = -math.inf  # the incoming block is empty for row 0
    lse[1] = -math.inf   # the running block is empty for row 1
    ref_out, ref_lse = _merge_ref(out, lse, out2, lse2)
    got_out, got_lse = out.copy(), lse.copy()
    zccl.attn_merge(got_out, got_lse, out2, lse2)
    assert np.isfinite(got_out).all() and np.isfinite(got_lse).all(), f"NaN/inf in {got_out}, {got_lse}"
    np.testing.assert_allclose(got_out, ref_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_lse, ref_lse, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got_out[0], out[0])
    np.testing.assert_array_equal(got_out[1], out2[1])


def test_attn_merge_rejects_float64():
    zccl = _zccl()
    out, lse, out2, lse2 = _inputs(rows=3, d=4)
    with pytest.raises(TypeError):
        zccl.attn_merge(out.astype(np.float64), lse, out2, lse2)


def test_integer_arguments_out_of_range_name_the_call():
    """A negative rank, tag, color or count, or an offset past 2**63, is a
    ValueError naming the call and the integers it got, not the binding's
    bare OverflowError."""
    lib = _zccl()
    with pytest.raises(ValueError, match=r"zccl: init: .*out of range \(-1, 2\)"):
        lib.Communicator.init("x", -1, 2)
    root = lib.Root("127.0.0.1:0", None, 20.0)
    c = lib.Communicator.init(root.unique_id, 0, 1, 20.0)
    try:
        x = np.ones(4, np.float32)
        with pytest.raises(ValueError, match=r"zccl: isend: .*tag=-1"):
            c.isend(x, 0, tag=-1)
        with pytest.raises(ValueError, match=r"zccl: ring_shift: .*offset=9223372036854775808"):
            c.ring_shift(x, np.empty_like(x), offset=2**63)
        with pytest.raises(ValueError, match=r"zccl: all_to_all: .*\[-1\]"):
            c.all_to_all(x, np.empty_like(x), [-1], [4])
    finally:
        c.close()
