"""CUDA tensors under the torch backend: staged through host memory by the
backend, results equal to the same calls on CPU tensors. Needs a GPU: where
torch sees none (this project's CI machines), the test skips and says so."""

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CUDA staging not exercised here")
@pytest.mark.parametrize("n", [2])
def test_cuda_tensors_equal_cpu_results(zccl_launch, n):
    launch = zccl_launch("cuda_staged.py", n)
    launch.assert_completed(n)
    bad = [(r, d) for r, d in launch.checks() if not d["ok"]]
    assert not bad, f"{bad}{launch.tail()}"
