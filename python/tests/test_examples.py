"""The trainer examples (examples/*.py) run under `zccl run -n N` and pass
their own checks against single-process float64 references.

Each example prints `<name>: OK max_err=...` on rank 0 and exits non-zero
when its check fails. sp_transformer_ddp also prints its training losses,
which must agree between the zccl and the gloo backends.
"""

import functools
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import torch  # noqa: F401
except ImportError:
    pytest.skip("torch is not importable (apt-get install python3-torch)", allow_module_level=True)
try:
    import zccl
except ImportError:
    pytest.skip("zccl is not importable (build the extension; see tests/python.rs)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [
    "ring_attention",
    "ulysses_attention",
    "token_ring_attention",
    "zeco_linear_attention",
    "sp_transformer_ddp",
]
TIMEOUT = 120


def _zccl_bin():
    path = os.environ.get("ZCCL_BIN") or str(REPO / "target" / "debug" / "zccl")
    if not os.access(path, os.X_OK):
        pytest.skip(f"no zccl launcher at {path} (cargo build, or set ZCCL_BIN)")
    return path


@functools.lru_cache(maxsize=None)
def run_example(name, n, backend="zccl"):
    """Runs examples/<name>.py on n ranks; returns (exit code, output), exit
    code None if it did not finish in time (each run once: tests share it)."""
    script = f"examples/{name}.py"
    cmd = [_zccl_bin(), "run", "-n", str(n), "--", sys.executable, script, "--backend", backend]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The ranks import the zccl this test imported.
    pkg_root = str(Path(zccl.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so that a hung run can be stopped whole
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the launcher forwards it to the ranks
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        return None, out
    return proc.returncode, out


def ok_line(name, n, backend="zccl"):
    rc, out = run_example(name, n, backend)
    assert rc is not None, f"{name} on {n} ranks ({backend}) did not finish in {TIMEOUT} s; output:\n{out}"
    assert rc == 0, f"{name} on {n} ranks ({backend}) exited with {rc}; output:\n{out}"
    m = re.search(rf"^\[0\] ({name}: OK max_err=\S+.*)$", out, re.M)
    assert m, f"{name} on {n} ranks ({backend}) printed no OK line; output:\n{out}"
    return m.group(1)


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("name", EXAMPLES)
def test_example(name, n):
    print(ok_line(name, n))


@pytest.mark.parametrize("n", [2, 4])
def test_sp_transformer_losses_equal_gloo(n):
    losses = {}
    for backend in ("zccl", "gloo"):
        line = ok_line("sp_transformer_ddp", n, backend)
        m = re.search(r"losses=(\S+)", line)
        assert m, f"no losses in {line!r}"
        losses[backend] = [float(x) for x in m.group(1).split(",")]
    assert len(losses["zccl"]) == len(losses["gloo"]) == 5
    for step, (z, g) in enumerate(zip(losses["zccl"], losses["gloo"])):
        assert abs(z - g) <= 1e-6 * abs(g), f"step {step}: zccl loss {z} != gloo loss {g} ({losses})"
