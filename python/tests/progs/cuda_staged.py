"""CUDA tensors through the zccl backend (staged through host memory): each
call's result must equal the same call on CPU copies of the inputs."""

import sys

import torch
import torch.distributed as dist

import zccl.torch  # noqa: F401 - registers the backend
from _common import Checks, seed_of, watchdog

watchdog(100)
dist.init_process_group("zccl")
rank, n = dist.get_rank(), dist.get_world_size()
dev = torch.device("cuda", rank % torch.cuda.device_count())
checks = Checks(rank)
g = torch.Generator().manual_seed(seed_of("cuda", rank))


def same(name, on_gpu, on_cpu):
    checks.record(name, torch.equal(on_gpu.cpu(), on_cpu), f"{on_gpu.cpu()[:4]} vs {on_cpu[:4]}")


x = torch.randint(-100, 100, (1001,), generator=g).float()
a, b = x.to(dev), x.clone()
dist.all_reduce(a)
dist.all_reduce(b)
same("all_reduce", a, b)

out_g, out_c = torch.empty(n * 1001, device=dev), torch.empty(n * 1001)
dist.all_gather_into_tensor(out_g, x.to(dev))
dist.all_gather_into_tensor(out_c, x)
same("all_gather_into_tensor", out_g, out_c)

w = dist.all_reduce(a, async_op=True)
w.wait()
dist.all_reduce(b)
same("all_reduce async", a, b)

t = x.to(dev)[::2]  # non-contiguous on the device
c = x[::2].clone()
dist.broadcast(t, 0)
dist.broadcast(c, 0)
same("broadcast non-contiguous", t, c)
checks.finish()
