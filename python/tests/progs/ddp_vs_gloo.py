"""Rank program: DistributedDataParallel over the "zccl" backend against DDP
over gloo, same model, same data, same optimizer, in one program.

Each rank builds the model from a rank-dependent seed, so DDP's start-up
broadcast (rank 0's parameters to every rank) is exercised too; the two
copies (zccl, gloo) start from the same weights. Small buckets make several
gradient all-reduces per step (in flight together). 5 SGD+momentum steps on
per-rank data; CHECK lines:

  ddp.init_broadcast    after DDP(...) every rank holds rank 0's weights (zccl)
  ddp.step<k>.loss      this rank's loss at step k, zccl vs gloo, 1e-6 relative
  ddp.final_params      parameters after 5 steps, zccl vs gloo, 1e-6 relative
  ddp.replicas_equal    the zccl-trained parameters are bit-equal across ranks
"""

import copy
import datetime
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Checks, emit, seed_of, watchdog  # noqa: E402

watchdog(40)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

import zccl.torch  # noqa: E402,F401

TIMEOUT = datetime.timedelta(seconds=60)
dist.init_process_group("zccl", timeout=TIMEOUT)
R, W = dist.get_rank(), dist.get_world_size()
GLOO = dist.new_group(backend="gloo", timeout=TIMEOUT)
C = Checks(R)
STEPS = 5


def build(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 4))


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def rel_close(a, b, tol=1e-6):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    err = (a - b).abs().max().item() if a.numel() else 0.0
    scale = max(b.abs().max().item() if b.numel() else 0.0, 1e-30)
    return err <= tol * scale, f"max |zccl - gloo| = {err:.3g}, relative {err / scale:.3g}, bit-equal={torch.equal(a, b)}"


base = build(1000 + R)          # differs per rank: DDP must broadcast rank 0's
rank0_init = flat(build(1000))  # what every rank should start from
mz, mg = copy.deepcopy(base), copy.deepcopy(base)
dz = DDP(mz, bucket_cap_mb=0.004)                   # default group: zccl
dg = DDP(mg, process_group=GLOO, bucket_cap_mb=0.004)
C.run("ddp.init_broadcast", lambda: (torch.equal(flat(mz), rank0_init) and torch.equal(flat(mg), rank0_init),
                                     "zccl and gloo replicas hold rank 0's initial weights"))

oz = torch.optim.SGD(dz.parameters(), lr=0.05, momentum=0.9)
og = torch.optim.SGD(dg.parameters(), lr=0.05, momentum=0.9)
loss_fn = nn.MSELoss()
for step in range(1, STEPS + 1):
    g = torch.Generator().manual_seed(seed_of("ddp", R, step))
    x = torch.randn(32, 16, generator=g)
    y = torch.randn(32, 4, generator=g)
    losses = []
    for model, opt in ((dz, oz), (dg, og)):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    emit("RESULT", what="loss", step=step, zccl=losses[0], gloo=losses[1])
    C.run(f"ddp.step{step}.loss", rel_close, losses[0], losses[1])

# The loss of step 6 is computed with the weights after 5 steps.
g = torch.Generator().manual_seed(seed_of("ddp", R, "final"))
x, y = torch.randn(32, 16, generator=g), torch.randn(32, 4, generator=g)
with torch.no_grad():
    C.run("ddp.after5.loss", rel_close, loss_fn(mz(x), y).item(), loss_fn(mg(x), y).item())
C.run("ddp.final_params", rel_close, flat(mz), flat(mg))


def replicas_equal():
    mine = flat(mz)
    outs = [torch.empty_like(mine) for _ in range(W)]
    dist.all_gather(outs, mine, group=GLOO)
    return all(torch.equal(o, mine) for o in outs), "zccl-trained weights of every rank vs this rank's"


C.run("ddp.replicas_equal", replicas_equal)
dist.barrier(group=GLOO)
C.finish()
