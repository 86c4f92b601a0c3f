"""ZeCO-style sequence-parallel gated linear attention with zccl's `all_scan`.

Gated linear attention (GLA) keeps a state S [d_k, d_v] per head that evolves
token by token as S_t = diag(a_t) S_{t-1} + k_t^T v_t and reads o_t = q_t S_t.
With the sequence split over ranks, each rank reduces its chunk to one pair
(decay = prod a_t, state = its chunk's S from zero), and one All-Scan gives
every rank the state entering its chunk (the combine of the ranks before it:
S = decay_p S + state_p). The rest is local chunked linear attention.

The backward pass needs the state gradient coming from the *later* tokens:
the same combine run in reverse (`all_scan(..., reverse=True)`).

    torchrun --nproc-per-node 4 examples/zeco_linear_attention.py [--backend zccl|gloo]
    zccl run -n 4 -- python3 examples/zeco_linear_attention.py

Under `--backend zccl` the zccl calls run on the communicator of the process
group (`zccl.torch.communicator()`); under another backend on a communicator
of their own (`zccl.Communicator.from_env()`).

Check: the output and the gradients of q, k and v equal the sequential
recurrence computed in float64 with autograd (max error <= 1e-5, relative to
the largest magnitude where that is above 1).
"""

import argparse
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

import zccl
import zccl.torch  # registers the "zccl" backend of torch.distributed

SEQ, HEADS, DK, DV, TOL = 128, 2, 16, 16, 1e-5


def chunk_terms(q, k, g):
    """Local pieces of one chunk. q, k, g (log decay) [h, s, dk]."""
    L = g.cumsum(dim=1)  # log of prod a_1..a_t inside the chunk
    diff = L[:, :, None, :] - L[:, None, :, :]  # [h, t, u, dk]: log prod a_{u+1..t}
    causal = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).tril()
    D = torch.exp(diff.masked_fill(~causal[None, :, :, None], float("-inf")))
    attn = torch.einsum("hti,hui,htui->htu", q, k, D)
    return L, D, attn


def gla_forward(comm, q, k, v, g):
    """This rank's chunk: q, k, g [h, s, dk], v [h, s, dv] -> o [h, s, dv]."""
    h, _, dk = q.shape
    q = q * dk**-0.5
    L, D, attn = chunk_terms(q, k, g)
    # This chunk as an All-Scan element: (decay, state from a zero start).
    decay = torch.exp(L[:, -1])  # [h, dk]
    state = torch.einsum("hui,huj->hij", k * torch.exp(L[:, -1:] - L), v)  # [h, dk, dv]
    s_in, _ = comm.all_scan(state.reshape(h * dk, -1), decay.reshape(-1), blocks=h)
    s_in = s_in.view(h, dk, -1)  # the state entering this chunk
    return attn @ v + (q * torch.exp(L)) @ s_in, s_in


def gla_backward(comm, q, k, v, g, s_in, do):
    """Gradients of q, k, v for this rank's chunk, given do [h, s, dv]."""
    h, _, dk = q.shape
    scale = dk**-0.5
    q = q * scale
    L, D, attn = chunk_terms(q, k, g)
    # dS_t = sum_{t' >= t} prod a_{t+1..t'} q_t'^T do_t': the gradient coming
    # from the later chunks is a reverse All-Scan of (decay, sum_t a_1..t q_t^T do_t).
    decay = torch.exp(L[:, -1])
    state = torch.einsum("hti,htj->hij", q * torch.exp(L), do)
    ds_out, _ = comm.all_scan(state.reshape(h * dk, -1), decay.reshape(-1), reverse=True, blocks=h)
    ds_out = ds_out.view(h, dk, -1)  # gradient of the state leaving this chunk
    to_end = torch.exp(L[:, -1:] - L)  # prod a_{t+1..end}
    dov = do @ v.transpose(1, 2)  # [h, t, u]
    dq = torch.einsum("htu,htui,hui->hti", dov, D, k) + torch.exp(L) * (do @ s_in.transpose(1, 2))
    dk_ = torch.einsum("htu,htui,hti->hui", dov, D, q) + to_end * (v @ ds_out.transpose(1, 2))
    dv = attn.transpose(1, 2) @ do + (k * to_end) @ ds_out
    return dq * scale, dk_, dv


def reference_gla(q, k, v, g):
    """The sequential recurrence over the whole sequence, in float64."""
    h, s, dk = q.shape
    S = torch.zeros(h, dk, v.shape[-1], dtype=torch.float64)
    out = []
    for t in range(s):
        S = torch.exp(g[:, t, :, None]) * S + k[:, t, :, None] * v[:, t, None, :]
        out.append(torch.einsum("hi,hij->hj", q[:, t] * dk**-0.5, S))
    return torch.stack(out, dim=1)


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
    q, k = (torch.randn(HEADS, SEQ, DK, generator=gen) for _ in range(2))
    v, do = (torch.randn(HEADS, SEQ, DV, generator=gen) for _ in range(2))
    g = F.logsigmoid(torch.randn(HEADS, SEQ, DK, generator=gen) + 3) / 4  # log decay in (-inf, 0)
    sh = slice(rank * SEQ // world, (rank + 1) * SEQ // world)

    o, s_in = gla_forward(comm, q[:, sh], k[:, sh], v[:, sh], g[:, sh])
    grads = gla_backward(comm, q[:, sh], k[:, sh], v[:, sh], g[:, sh], s_in, do[:, sh])

    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref_o = reference_gla(*ref_in, g.double())
    ref_o.backward(do.double())

    max_err = 0.0
    for mine, ref in zip((o, *grads), (ref_o.detach(), *(t.grad for t in ref_in))):  # o, dq, dk, dv
        gathered = torch.empty(world, *mine.shape)
        comm.all_gather(mine.contiguous(), gathered)
        full = torch.cat(list(gathered), dim=1).double()  # chunks back in sequence order
        err = ((full - ref).abs().max() / max(1.0, ref.abs().max().item())).item()
        max_err = max(max_err, err)

    ok = max_err <= TOL
    if rank == 0:
        status = "OK" if ok else "FAIL"
        print(f"zeco_linear_attention: {status} max_err={max_err:.1e} world_size={world} backend={args.backend}")
    dist.destroy_process_group()
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
