"""`python -m zccl.bench`: one small round of each operation it measures
runs to the end, with every rank's data checked (the bench exits 1 and
says so on a wrong result) and a row per size.

Speed is not asserted here: the bench's figures are read from its table
(docs/performance.md), as medians of interleaved rounds.
"""

import os
import subprocess
import sys

import pytest

from conftest import PKG_ROOT, rank_python

pytest.importorskip("torch", reason="torch is not installed (the bench runs torch.distributed)")


@pytest.mark.parametrize("op", ["all_reduce", "ring"])
def test_one_round_runs_and_checks_the_data(zccl_bin, op):
    env = dict(os.environ, ZCCL_BIN=str(zccl_bin))
    env["PYTHONPATH"] = str(PKG_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [rank_python(), "-m", "zccl.bench", "--ranks", "2", "--sizes", "1K,64K", "--rounds", "1", "--op", op]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, f"{cmd} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert "# wrong results: 0" in p.stdout, p.stdout
    rows = [line.split() for line in p.stdout.splitlines() if line.split()[:1] == ["2"]]
    assert [r[1] for r in rows] == ["1K", "64K"], p.stdout
    what = "ring step" if op == "ring" else "all_reduce"
    assert what in p.stdout, p.stdout


def test_a_wrong_op_is_refused():
    p = subprocess.run([sys.executable, "-m", "zccl.bench", "--op", "broadcast"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(PKG_ROOT)), timeout=60)
    assert p.returncode == 2 and "invalid choice" in p.stderr, p.stderr
