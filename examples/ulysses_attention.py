"""DeepSpeed-Ulysses attention over torch.distributed.

Every rank holds one contiguous shard of the sequence with all heads. One
`all_to_all_single` turns that into the whole sequence for a group of heads
(seq -> heads), each rank runs ordinary attention on its heads, and a second
all-to-all turns the output back (heads -> seq). When the head count does not
divide by the world size, ranks get uneven head groups and the all-to-alls
use `input_split_sizes` / `output_split_sizes`.

    torchrun --nproc-per-node 4 examples/ulysses_attention.py [--backend zccl|gloo]
    zccl run -n 4 -- python3 examples/ulysses_attention.py

Check: the gathered output equals full attention computed in float64 on the
whole sequence, for 8 heads (even) and 5 heads (uneven), max abs error <= 1e-5.
"""

import argparse
import sys

import torch
import torch.distributed as dist

SEQ, HEAD_DIM, TOL = 64, 16, 1e-5


def head_counts(heads, world):
    """Heads per rank: as even as possible, the first ranks get one more."""
    return [heads // world + (r < heads % world) for r in range(world)]


def seq_to_heads(x, counts, group=None):
    """[s_local, H, d] (my shard, all heads) -> [s, h_mine, d] (all of the
    sequence, my heads)."""
    world, rank = len(counts), dist.get_rank(group)
    s_local, _, d = x.shape
    even = len(set(counts)) == 1
    send = x.permute(1, 0, 2).contiguous()  # [H, s_local, d]: rank j's heads are rows of block j
    recv = torch.empty(world * counts[rank], s_local, d, dtype=x.dtype)
    dist.all_to_all_single(
        recv,
        send,
        output_split_sizes=None if even else [counts[rank]] * world,
        input_split_sizes=None if even else counts,
        group=group,
    )
    # block i came from rank i: my heads for sequence shard i
    recv = recv.view(world, counts[rank], s_local, d).permute(0, 2, 1, 3)
    return recv.reshape(world * s_local, counts[rank], d)


def heads_to_seq(x, counts, group=None):
    """[s, h_mine, d] -> [s_local, H, d]: the inverse of seq_to_heads."""
    world, rank = len(counts), dist.get_rank(group)
    s, h, d = x.shape
    s_local = s // world
    even = len(set(counts)) == 1
    send = x.view(world, s_local, h, d).permute(0, 2, 1, 3).contiguous()  # [world, h, s_local, d]
    recv = torch.empty(sum(counts), s_local, d, dtype=x.dtype)
    dist.all_to_all_single(
        recv,
        send.view(world * h, s_local, d),
        output_split_sizes=None if even else counts,
        input_split_sizes=None if even else [counts[rank]] * world,
        group=group,
    )
    return recv.permute(1, 0, 2).contiguous()  # block j: heads of rank j, in head order


def attention(q, k, v, causal=True):
    """Plain softmax attention, q, k, v [s, h, d] -> [s, h, d]."""
    scores = torch.einsum("shd,thd->hst", q, k) * q.shape[-1] ** -0.5
    if causal:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.einsum("hst,thd->shd", scores.softmax(dim=-1), v)


def ulysses_attention(q, k, v, counts, group=None):
    """q, k, v: my sequence shard [s_local, H, d]; returns the same shape."""
    q, k, v = (seq_to_heads(t, counts, group) for t in (q, k, v))
    return heads_to_seq(attention(q, k, v), counts, group)


def reference_attention(q, k, v):
    """Full attention on the whole sequence, in float64."""
    return attention(q.double(), k.double(), v.double())


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="zccl", choices=["zccl", "gloo"])
    args = parser.parse_args()
    if args.backend == "zccl":
        import zccl.torch  # noqa: F401  registers the "zccl" backend
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    shard = slice(rank * SEQ // world, (rank + 1) * SEQ // world)

    max_err = 0.0
    for heads in (8, 5):  # 5 heads: uneven head groups on 2 and 4 ranks
        gen = torch.Generator().manual_seed(heads)
        q, k, v = (torch.randn(SEQ, heads, HEAD_DIM, generator=gen) for _ in range(3))
        out = ulysses_attention(q[shard], k[shard], v[shard], head_counts(heads, world))
        gathered = [torch.empty_like(out) for _ in range(world)]
        dist.all_gather(gathered, out)
        ref = reference_attention(q, k, v)
        max_err = max(max_err, (torch.cat(gathered).double() - ref).abs().max().item())

    ok = max_err <= TOL
    if rank == 0:
        status = "OK" if ok else "FAIL"
        print(f"ulysses_attention: {status} max_err={max_err:.1e} world_size={world} backend={args.backend}")
    dist.destroy_process_group()
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
