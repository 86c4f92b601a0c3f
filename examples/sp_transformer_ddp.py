"""A tiny transformer trained with sequence parallelism (Ulysses) and DDP.

Every rank holds one contiguous shard of each training sequence. Inside
attention, a differentiable all-to-all (DeepSpeed's `_SeqAllToAll`) gives
every rank the whole sequence for its group of heads and back; everything
else is per token. The parameters are replicated, so DDP averages the
gradients over the ranks: with equal shards that is exactly the gradient of
the mean loss over the whole sequence.

    torchrun --nproc-per-node 4 examples/sp_transformer_ddp.py [--backend zccl|gloo]
    zccl run -n 4 -- python3 examples/sp_transformer_ddp.py

Check: the losses of 5 SGD steps and the final parameters equal the same
model trained in one process on whole sequences in float64 (within 1e-5).
Rank 0 prints the losses, so runs with different backends can be compared.
"""

import argparse
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

VOCAB, DIM, HEADS, LAYERS, SEQ, STEPS, LR, TOL = 64, 32, 4, 2, 64, 5, 0.5, 1e-5


def _all_to_all(x, group, seq_to_heads):
    """seq_to_heads: [s_local, H, d] -> [s, H/P, d]; else the inverse."""
    world = dist.get_world_size(group)
    if seq_to_heads:
        s, H, d = x.shape
        send = x.reshape(s, world, H // world, d).transpose(0, 1).contiguous()  # block j: heads of rank j
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=group)
        return recv.reshape(world * s, H // world, d)  # block i: sequence shard of rank i
    s, h, d = x.shape
    send = x.reshape(world, s // world, h, d).contiguous()  # block j: sequence shard of rank j
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv.transpose(0, 1).reshape(s // world, world * h, d)  # block i: heads of rank i


class SeqAllToAll(torch.autograd.Function):
    """The Ulysses all-to-all; its gradient is the all-to-all the other way."""

    @staticmethod
    def forward(ctx, x, group, seq_to_heads):
        ctx.group, ctx.seq_to_heads = group, seq_to_heads
        return _all_to_all(x, group, seq_to_heads)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad.contiguous(), ctx.group, not ctx.seq_to_heads), None, None


class Attention(nn.Module):
    def __init__(self, sequence_parallel, group=None):
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.sp, self.group = sequence_parallel, group

    def forward(self, x):  # x [s_local, DIM]
        s = x.shape[0]
        q, k, v = self.qkv(x).view(s, 3, HEADS, DIM // HEADS).unbind(1)
        if self.sp:
            q, k, v = (SeqAllToAll.apply(t, self.group, True) for t in (q, k, v))
        scores = torch.einsum("shd,thd->hst", q, k) * q.shape[-1] ** -0.5
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
        out = torch.einsum("hst,thd->shd", scores.masked_fill(mask, float("-inf")).softmax(-1), v)
        if self.sp:
            out = SeqAllToAll.apply(out, self.group, False)
        return self.proj(out.reshape(s, DIM))


class Block(nn.Module):
    def __init__(self, sequence_parallel, group=None):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.attn = Attention(sequence_parallel, group)
        self.mlp = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, sequence_parallel, group=None):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Embedding(SEQ, DIM)
        self.blocks = nn.ModuleList(Block(sequence_parallel, group) for _ in range(LAYERS))
        self.ln = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, tokens, positions):
        x = self.tok(tokens) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def reference_losses(model, batches):
    """The same training in one process on whole sequences, in float64."""
    model = model.double()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for tokens in batches:
        loss = F.cross_entropy(model(tokens[:-1], torch.arange(SEQ)), tokens[1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, model


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="zccl", choices=["zccl", "gloo"])
    args = parser.parse_args()
    if args.backend == "zccl":
        import zccl.torch  # noqa: F401  registers the "zccl" backend
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(0)
    model = TinyGPT(sequence_parallel=True)  # the whole world is the SP group
    reference = TinyGPT(sequence_parallel=False)
    reference.load_state_dict(model.state_dict())
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)

    # A learnable toy task: counting up (mod VOCAB) from a random start.
    gen = torch.Generator().manual_seed(1)
    starts = torch.randint(VOCAB, (STEPS, 1), generator=gen)
    batches = list((starts + torch.arange(SEQ + 1)) % VOCAB)
    shard = slice(rank * SEQ // world, (rank + 1) * SEQ // world)
    positions = torch.arange(SEQ)[shard]

    losses = []
    for tokens in batches:
        inputs, targets = tokens[:-1][shard], tokens[1:][shard]
        loss = F.cross_entropy(ddp(inputs, positions), targets)  # mean over this shard
        opt.zero_grad()
        loss.backward()  # DDP averages the gradients over the ranks
        opt.step()
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        losses.append(global_loss.item() / world)

    ref_losses, reference = reference_losses(reference, batches)
    loss_err = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses))
    pairs = zip(model.parameters(), reference.parameters())
    param_err = max((p.double() - r).abs().max().item() for p, r in pairs)
    max_err = max(loss_err, param_err)

    ok = max_err <= TOL
    if rank == 0:
        status, shown = "OK" if ok else "FAIL", ",".join(f"{x:.9g}" for x in losses)
        print(f"sp_transformer_ddp: {status} max_err={max_err:.1e} world_size={world} backend={args.backend} losses={shown}")
    dist.destroy_process_group()
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
