"""TokenRing attention with zccl's own `token_ring`.

Every rank holds one contiguous shard of the sequence (Q, K and V). Instead
of moving K/V around the ring, TokenRing moves Q: this rank's Q travels the
ring, every rank computes the attention of the visiting Q against its own
K/V, and the partial result (out, lse) goes straight back to the Q's owner,
which folds it in with the log-sum-exp merge (`zccl.attn_merge`). Both
transfers are in flight while the next block is computed. Causal: the block
of a Q against a later rank's K/V is empty (lse = -inf).

    torchrun --nproc-per-node 4 examples/token_ring_attention.py [--backend zccl|gloo]
    zccl run -n 4 -- python3 examples/token_ring_attention.py

Under `--backend zccl` the zccl calls run on the communicator of the process
group (`zccl.torch.communicator()`); under another backend on a communicator
of their own (`zccl.Communicator.from_env()`).

Check: the gathered output equals full attention computed in float64 on the
whole sequence (max abs error <= 1e-5).
"""

import argparse
import sys

import torch
import torch.distributed as dist

import zccl
import zccl.torch  # registers the "zccl" backend of torch.distributed

SEQ, HEADS, HEAD_DIM, TOL = 128, 4, 16, 1e-5


def attention_block(q, k, v, causal):
    """Attention of q [s, h, d] over k, v [t, h, d]: (out [s, h, d], lse [s, h])."""
    scores = torch.einsum("shd,thd->hst", q, k) * q.shape[-1] ** -0.5
    if causal:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # [h, s, 1]
    out = torch.einsum("hst,thd->shd", torch.exp(scores - lse), v)
    return out, lse.squeeze(-1).t()


def token_ring_attention(comm, q, k, v, causal=True):
    """q, k, v: this rank's shard [s_local, h, d]; returns out [s_local, h, d]."""
    s, h, d = q.shape
    rows = s * h
    # A block is (out, lse) of rows = s * h attention rows, packed flat so
    # that both parts are contiguous views for attn_merge.
    block_shape = (rows * (d + 1),)
    out = torch.zeros(rows, d)
    lse = torch.full((rows,), float("-inf"))

    def compute(step, origin, q_view):
        # Attention of rank `origin`'s Q against this rank's K/V.
        if causal and origin < comm.rank:  # every key comes after every query
            return torch.cat([torch.zeros(rows * d), torch.full((rows,), float("-inf"))])
        o, l = attention_block(q_view, k, v, causal=causal and origin == comm.rank)
        return torch.cat([o.reshape(-1), l.reshape(-1)])

    def merge(src, step, block):
        # A block computed by rank `src` for this rank's Q (own block at step 0).
        zccl.attn_merge(out, lse, block[: rows * d].view(rows, d), block[rows * d :])

    comm.token_ring(q.contiguous(), compute, merge, block_shape)
    return out.view(s, h, d)


def reference_attention(q, k, v, causal):
    """Full attention on the whole sequence, in float64."""
    return attention_block(q.double(), k.double(), v.double(), causal)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="zccl", choices=["zccl", "gloo"])
    args = parser.parse_args()
    dist.init_process_group(args.backend)
    # zccl's own calls: the communicator behind the zccl process group (its
    # operations are ordered with the group's), or one of its own otherwise.
    comm = zccl.torch.communicator() if args.backend == "zccl" else zccl.Communicator.from_env()
    rank, world = comm.rank, comm.size

    # The same full sequence on every rank; each rank keeps its shard.
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(SEQ, HEADS, HEAD_DIM, generator=gen) for _ in range(3))
    shard = slice(rank * SEQ // world, (rank + 1) * SEQ // world)

    max_err = 0.0
    for causal in (True, False):
        out = token_ring_attention(comm, q[shard], k[shard], v[shard], causal=causal)
        gathered = torch.empty(world, *out.shape)
        comm.all_gather(out, gathered)
        ref = reference_attention(q, k, v, causal)
        max_err = max(max_err, (gathered.view(SEQ, HEADS, HEAD_DIM).double() - ref).abs().max().item())

    ok = max_err <= TOL
    if rank == 0:
        status = "OK" if ok else "FAIL"
        print(f"token_ring_attention: {status} max_err={max_err:.1e} world_size={world} backend={args.backend}")
    dist.destroy_process_group()
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
