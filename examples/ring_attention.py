"""Ring attention over torch.distributed, in the style of ring-flash-attention.

Every rank holds one contiguous shard of the sequence (Q, K and V). The K/V
shards travel around the ring (`RingComm`: `dist.P2POp` + `batch_isend_irecv`,
the next block in flight while this one is computed) and every rank folds
the attention of its Q against each K/V block into its output with the
log-sum-exp merge. Causal: a rank skips the blocks of later ranks.

    torchrun --nproc-per-node 4 examples/ring_attention.py [--backend zccl|gloo]
    zccl run -n 4 -- python3 examples/ring_attention.py

Check: the gathered output equals full attention computed in float64 on the
whole sequence (max abs error <= 1e-5).
"""

import argparse
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

SEQ, HEADS, HEAD_DIM, TOL = 128, 4, 16, 1e-5


def _global_rank(group, rank):
    if group is None:
        return rank
    get = getattr(dist, "get_global_rank", None) or dist.distributed_c10d._get_global_rank
    return get(group, rank)


class RingComm:
    """Sends to the next rank and receives from the previous one, all posted
    at once (ring-flash-attention's RingComm)."""

    def __init__(self, process_group=None):
        self._process_group = process_group
        self._ops = []
        self._reqs = None
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.send_rank = _global_rank(process_group, (self.rank + 1) % self.world_size)
        self.recv_rank = _global_rank(process_group, (self.rank - 1) % self.world_size)

    def send_recv(self, to_send, recv_tensor=None):
        res = torch.empty_like(to_send) if recv_tensor is None else recv_tensor
        self._ops.append(dist.P2POp(dist.isend, to_send, self.send_rank, group=self._process_group))
        self._ops.append(dist.P2POp(dist.irecv, res, self.recv_rank, group=self._process_group))
        return res

    def commit(self):
        if self._reqs is not None:
            raise RuntimeError("commit called twice")
        self._reqs = dist.batch_isend_irecv(self._ops)

    def wait(self):
        if self._reqs is None:
            raise RuntimeError("wait called before commit")
        for req in self._reqs:
            req.wait()
        self._reqs = None
        self._ops = []


def attention_block(q, k, v, causal):
    """Attention of q [s, h, d] over k, v [t, h, d]: (out [s, h, d], lse [s, h, 1])."""
    scores = torch.einsum("shd,thd->hst", q, k) * q.shape[-1] ** -0.5
    if causal:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # [h, s, 1]
    out = torch.einsum("hst,thd->shd", torch.exp(scores - lse), v)
    return out, lse.permute(1, 0, 2)


def update_out_and_lse(out, lse, block_out, block_lse):
    """Log-sum-exp merge of one more block (FlashAttention-2's rescaling)."""
    if out is None:
        return block_out, block_lse
    out = out - torch.sigmoid(block_lse - lse) * (out - block_out)
    lse = lse - F.logsigmoid(lse - block_lse)
    return out, lse


def ring_attention_forward(process_group, q, k, v, causal=True):
    comm = RingComm(process_group)
    out = lse = None
    for step in range(comm.world_size):
        if step + 1 != comm.world_size:
            next_k = comm.send_recv(k)
            next_v = comm.send_recv(v)
            comm.commit()
        # the K/V block now held came from rank (rank - step) % world_size
        if not causal or step <= comm.rank:
            block_out, block_lse = attention_block(q, k, v, causal=causal and step == 0)
            out, lse = update_out_and_lse(out, lse, block_out, block_lse)
        if step + 1 != comm.world_size:
            comm.wait()
            k, v = next_k, next_v
    return out, lse


def reference_attention(q, k, v, causal):
    """Full attention on the whole sequence, in float64."""
    return attention_block(q.double(), k.double(), v.double(), causal)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="zccl", choices=["zccl", "gloo"])
    args = parser.parse_args()
    if args.backend == "zccl":
        import zccl.torch  # noqa: F401  registers the "zccl" backend
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()

    # The same full sequence on every rank (so the reference needs no data
    # movement); each rank keeps its contiguous shard.
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(SEQ, HEADS, HEAD_DIM, generator=gen) for _ in range(3))
    shard = slice(rank * SEQ // world, (rank + 1) * SEQ // world)

    max_err = 0.0
    for causal in (True, False):
        out, _ = ring_attention_forward(None, q[shard], k[shard], v[shard], causal=causal)
        gathered = [torch.empty_like(out) for _ in range(world)]
        dist.all_gather(gathered, out.contiguous())
        ref = reference_attention(q, k, v, causal)
        max_err = max(max_err, (torch.cat(gathered).double() - ref).abs().max().item())

    ok = max_err <= TOL
    if rank == 0:
        status = "OK" if ok else "FAIL"
        print(f"ring_attention: {status} max_err={max_err:.1e} world_size={world} backend={args.backend}")
    dist.destroy_process_group()
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
