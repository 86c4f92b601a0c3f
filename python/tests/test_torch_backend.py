"""The torch.distributed backend "zccl" against gloo, on 2 and 4 ranks.

One launch of `progs/torch_vs_gloo.py` per world size runs every call
through a zccl default group and a gloo group over the same ranks on
identical inputs; each test below checks one area of its CHECK records (the
rules are in the program's docstring: bit-equal for integers, MIN/MAX, data
movement and exact half-precision inputs, 1e-6 relative for float32/64
reductions whose order differs). One launch of `progs/ddp_vs_gloo.py` trains
the same model with DDP over zccl and over gloo for 5 steps.
"""

import pytest

pytest.importorskip("torch", reason="torch is not installed (the torch backend tests need it)")

WORLD_SIZES = [2, 4]
AREAS = [
    "backend",
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "broadcast",
    "barrier",
    "all_to_all_single",
    "all_to_all",
    "p2p",
    "batch_isend_irecv",
    "subgroup",
    "async",
    "async_poll",
    "blocking",
]


def _failures(checks, limit=12):
    bad = [(r, d) for r, d in checks if not d["ok"]]
    lines = [f"  [rank {r}] {d['name']}: {d['detail'][:700]}" for r, d in bad[:limit]]
    more = f"\n  ... and {len(bad) - limit} more" if len(bad) > limit else ""
    return bad, "\n".join(lines) + more


def _check_area(launch, prefix, n):
    checks = launch.checks(prefix)
    assert checks, f"no `{prefix}*` checks ran (the program ended before them?){launch.tail()}"
    bad, text = _failures(checks)
    assert not bad, f"{len(bad)} of {len(checks)} `{prefix}*` checks failed:\n{text}"
    per_rank = {r: sum(1 for rr, _ in checks if rr == r) for r in range(n)}
    assert len(set(per_rank.values())) == 1 and min(per_rank.values()) > 0, \
        f"`{prefix}*` checks per rank differ: {per_rank}{launch.tail()}"


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_vs_gloo_program_completes(zccl_launch, n):
    """Every rank of the comparison program ran to the end and exited 0."""
    zccl_launch("torch_vs_gloo.py", n).assert_completed(n)


@pytest.mark.parametrize("area", AREAS)
@pytest.mark.parametrize("n", WORLD_SIZES)
def test_vs_gloo(zccl_launch, n, area):
    _check_area(zccl_launch("torch_vs_gloo.py", n), area + ".", n)


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_ddp_loss_equals_gloo(zccl_launch, n):
    """DDP over zccl: after 5 steps the loss (each step's, and the loss of
    the trained weights) and the weights equal DDP over gloo within 1e-6
    relative; the replicas are bit-equal."""
    launch = zccl_launch("ddp_vs_gloo.py", n)
    losses = launch.results(what="loss")
    for r, d in launch.checks("ddp."):
        assert d["ok"], f"[rank {r}] {d['name']}: {d['detail']}{launch.tail()}"
    steps = sorted({d["step"] for d in losses})
    assert steps == [1, 2, 3, 4, 5], f"loss records for steps {steps}, expected 1..5{launch.tail()}"
    names = {d["name"] for _, d in launch.checks("ddp.")}
    for want in ["ddp.init_broadcast", "ddp.step5.loss", "ddp.after5.loss", "ddp.final_params", "ddp.replicas_equal"]:
        assert want in names, f"check {want} did not run{launch.tail()}"
    launch.assert_completed(n)


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_functional_collectives_and_dtensor(zccl_launch, n):
    """torch 2.x's functional collectives (what DTensor, compiled collectives
    and context parallel call) over zccl, on the world and on a subgroup,
    and a DTensor shard/gather/replicate: exact against references. Skips,
    saying so, on a torch without them (Debian's 1.13)."""
    launch = zccl_launch("functional.py", n)
    skips = [d["skip"] for d in launch.results() if "skip" in d]
    if skips:
        pytest.skip(skips[0])
    launch.assert_completed(n)
    checks = launch.checks("functional.")
    bad, text = _failures(checks)
    assert not bad, f"{len(bad)} of {len(checks)} functional checks failed:\n{text}"
    names = {d["name"] for _, d in checks}
    for want in ("functional.world.all_gather_tensor", "functional.subgroup.reduce_scatter_tensor",
                 "functional.dtensor.shard_gather_replicate"):
        assert want in names, f"{want} did not run{launch.tail()}"
    # destroy_process_group closes every group in order (ProcessGroupZccl.shutdown),
    # also those a DeviceMesh still holds: no rank reports another lost at exit.
    assert "was lost" not in launch.err, f"a rank was reported lost at exit{launch.tail()}"


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_torch_context_parallel_attention(zccl_launch, n):
    """torch 2.x's own ring attention (`context_parallel`, what TorchTitan's
    context parallelism runs) over zccl: the gathered result equals full
    attention in float64 within 1e-5. Skips, saying so, where torch has no
    functional collectives or no context_parallel."""
    launch = zccl_launch("functional.py", n)
    skips = [d.get("skip") or d.get("cp_skip") for d in launch.results() if "skip" in d or "cp_skip" in d]
    if skips:
        pytest.skip(skips[0])
    checks = launch.checks("functional.context_parallel.")
    assert sorted(r for r, _ in checks) == list(range(n)), f"context_parallel checks: {checks}{launch.tail()}"
    bad, text = _failures(checks)
    assert not bad, text


def test_wait_timeouts_follow_torch():
    """`Work.wait(timeout)` and the group's timeout: 0 (torch's kNoTimeout)
    and -1 ms (kUnsetTimeout) mean the group's own timeout; any other
    negative, NaN or infinite one is an error, not "no timeout"."""
    import datetime

    zt = pytest.importorskip("zccl.torch")
    assert zt._secs(None) is None
    assert zt._secs(0) is None and zt._secs(datetime.timedelta(0)) is None
    assert zt._secs(datetime.timedelta(milliseconds=-1)) is None  # kUnsetTimeout
    assert zt._secs(2.5) == 2.5 and zt._secs(datetime.timedelta(seconds=3)) == 3.0
    for bad in (-1, float("nan"), float("inf"), datetime.timedelta(seconds=-1)):
        with pytest.raises(ValueError, match="timeout"):
            zt._secs(bad)
        # A Work whose operation already finished (ran inline) refuses it
        # too, as a pending one does.
        with pytest.raises(ValueError, match="timeout"):
            zt._done_work([]).wait(bad)
    assert zt._done_work([]).wait(datetime.timedelta(seconds=1))
