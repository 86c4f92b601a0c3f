"""Rank program: torch 2.x's functional collectives
(`torch.distributed._functional_collectives`, what DTensor, compiled
collectives and context parallel call) and DTensor redistributions over the
"zccl" backend, on the world group and on a subgroup, against references
every rank computes from the same seeds (all exact: integer-valued floats),
and, with 4 ranks, a 2-D DeviceMesh whose row and column groups the mesh
still holds when the program destroys the default group.

Run as `zccl run -n N -- python functional.py`. Prints CHECK lines named
`functional.<case>` (see _common.py), or, where the installed torch has no
functional collectives (torch 1.13), one RESULT {"skip": reason} and exits.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Checks, emit, seed_of, watchdog  # noqa: E402

watchdog(100)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import zccl.torch  # noqa: E402,F401  registers "zccl"

dist.init_process_group("zccl")
R, W = dist.get_rank(), dist.get_world_size()
try:
    import torch.distributed._functional_collectives as ft_c

    ft_c.all_reduce  # noqa: B018 - present from torch 2.0
except (ImportError, AttributeError) as e:
    emit("RESULT", skip=f"torch {torch.__version__} has no functional collectives ({e})")
    dist.destroy_process_group()
    sys.exit(0)

C = Checks(R)


def x_of(r, n, *key):
    g = torch.Generator().manual_seed(seed_of("functional", r, n, *key))
    return torch.randint(-1000, 1000, (n,), generator=g).to(torch.float32)


def same(got, want, what):
    ok = torch.equal(got, want)  # waits for the functional collective's result
    return ok, f"{what}: got {got[:6].tolist()} want {want[:6].tolist()}"


def cases(group, ranks, tag):
    me = ranks.index(R)
    n = len(ranks)
    xs = [x_of(r, 12, tag) for r in ranks]
    C.run(f"functional.{tag}.all_reduce_sum",
          lambda: same(ft_c.all_reduce(xs[me].clone(), "sum", group), sum(xs), "sum"))
    C.run(f"functional.{tag}.all_reduce_max",
          lambda: same(ft_c.all_reduce(xs[me].clone(), "max", group), torch.stack(xs).max(0).values, "max"))
    C.run(f"functional.{tag}.all_gather_tensor",
          lambda: same(ft_c.all_gather_tensor(xs[me], 0, group), torch.cat(xs), "all_gather"))
    C.run(f"functional.{tag}.reduce_scatter_tensor",
          lambda: same(ft_c.reduce_scatter_tensor(xs[me].repeat(n), "sum", 0, group),
                       sum(xs), "reduce_scatter"))
    C.run(f"functional.{tag}.all_to_all_single",
          lambda: same(ft_c.all_to_all_single(torch.cat([xs[me][:2]] * n), None, None, group),
                       torch.cat([x[:2] for x in xs]), "all_to_all_single"))
    # Uneven: rank i sends i+1 elements to every rank.
    C.run(f"functional.{tag}.all_to_all_single_uneven",
          lambda: same(ft_c.all_to_all_single(torch.cat([xs[me][: me + 1]] * n), [i + 1 for i in range(n)],
                                              [me + 1] * n, group),
                       torch.cat([xs[i][: i + 1] for i in range(n)]), "all_to_all_single uneven"))
    C.run(f"functional.{tag}.permute_tensor",
          lambda: same(ft_c.permute_tensor(xs[me].clone(), [(i + 1) % n for i in range(n)], group),
                       xs[(me - 1) % n], "permute"))
    C.run(f"functional.{tag}.broadcast",
          lambda: same(ft_c.broadcast(xs[me].clone(), n - 1, group), xs[-1], "broadcast"))  # group rank
    C.run(f"functional.{tag}.all_reduce_coalesced",
          lambda: all(torch.equal(g, w) for g, w in zip(
              ft_c.all_reduce_coalesced([xs[me].clone(), 2 * xs[me]], "sum", group), [sum(xs), 2 * sum(xs)])))


cases(dist.group.WORLD, list(range(W)), "world")
sub_ranks = list(range(W - 1, -1, -2))  # every other rank, descending
sub = dist.new_group(sub_ranks)
if R in sub_ranks:
    cases(sub, sorted(sub_ranks), "subgroup")


def dtensor():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (W,))
    full = x_of(0, 4 * W, "dtensor")  # the same on every rank
    d = distribute_tensor(full, mesh, [Shard(0)])
    ok_local = torch.equal(d.to_local(), full[4 * R : 4 * R + 4])
    ok_full = torch.equal(d.full_tensor(), full)
    ok_rep = torch.equal(d.redistribute(mesh, [Replicate()]).to_local(), full)
    return ok_local and ok_full and ok_rep, f"local {ok_local} full_tensor {ok_full} replicate {ok_rep}"


def mesh_2d():
    # A 2-D mesh makes a subgroup per row and column; the mesh holds them
    # past destroy_process_group, which must still close them in order (the
    # test checks that no rank reports another lost at exit).
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (2, W // 2), mesh_dim_names=("dp", "cp"))
    full = torch.arange(4.0 * W).reshape(4, W)
    ok_full = torch.equal(distribute_tensor(full, mesh, [Shard(0), Shard(1)]).full_tensor(), full)
    t = torch.full((2,), float(R))
    dist.all_reduce(t, group=mesh["cp"].get_group())
    row = [R - R % (W // 2) + i for i in range(W // 2)]
    ok_cp = torch.equal(t, torch.full((2,), float(sum(row))))
    MESHES.append(mesh)
    return ok_full and ok_cp, f"full_tensor {ok_full}, cp all_reduce {t.tolist()} (row {row})"


MESHES = []


def context_parallel_attention():
    # torch's own ring attention for sequence parallelism: each rank keeps a
    # shard of Q, K, V along the sequence; the result, gathered back, equals
    # full attention in float64 within 1e-5. (Non-causal: torch has no CPU
    # sharding rule for causal flash attention.)
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import context_parallel_unshard

    mesh = init_device_mesh("cpu", (W,))
    g = torch.Generator().manual_seed(seed_of("context_parallel"))
    q, k, v = (torch.randn(1, 2, 16 * W, 8, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    qs, ks, vs = q.clone(), k.clone(), v.clone()
    with context_parallel(mesh, buffers=[qs, ks, vs], buffer_seq_dims=[2, 2, 2]):
        out = F.scaled_dot_product_attention(qs, ks, vs)
    (full,) = context_parallel_unshard(mesh, [out], [2])
    err = (full.double() - ref).abs().max().item()
    MESHES.append(mesh)
    return err <= 1e-5, f"max |error| against float64 full attention {err:.2e} (shard {tuple(out.shape)})"

try:
    import torch.distributed.tensor  # noqa: F401
    from torch.distributed.device_mesh import init_device_mesh  # noqa: F401
except ImportError:
    pass
else:
    C.run("functional.dtensor.shard_gather_replicate", dtensor)
    if W % 2 == 0 and W >= 4:
        C.run("functional.dtensor.mesh_2d", mesh_2d)
    try:
        from torch.distributed.tensor.experimental import context_parallel  # noqa: F401
        from torch.distributed.tensor.experimental._attention import context_parallel_unshard  # noqa: F401
    except ImportError as e:
        emit("RESULT", cp_skip=f"torch {torch.__version__} has no context_parallel ({e})")
    else:
        C.run("functional.context_parallel.sdpa", context_parallel_attention)

dist.barrier()
dist.destroy_process_group()
C.finish()
