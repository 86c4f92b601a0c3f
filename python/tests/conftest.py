"""Shared fixtures of the Python test suite.

Multi-rank tests launch a rank program from `progs/` under zccl's launcher,

    $ZCCL_BIN run -n N -- <python> progs/<prog>.py [args]

(`ZCCL_BIN` defaults to `target/debug/zccl` in the repository root), and
parse the JSON records the program prints (see `progs/_common.py`):

    [rank] CHECK {...}   [rank] RESULT {...}   [rank] DONE {...}

Each launch runs once per session (fixture `zccl_launch` caches it), so a
test per checked area costs no extra launch. Tests that need the launcher
are skipped, with the reason, when `ZCCL_BIN` does not exist.

Which `zccl` package: the one this interpreter imports as it is set up
(`PYTHONPATH`, e.g. the staged build of tests/python.rs, or an installed
wheel); else this checkout's `python/` (with the extension copied in as
`python/zccl/_zccl.abi3.so`). The ranks get the same one on `PYTHONPATH`.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PROGS = TESTS / "progs"
REPO = TESTS.parent.parent
PYDIR = REPO / "python"



def _package_root():
    """The folder holding the `zccl` package the tests use (see above)."""
    try:
        import zccl
    except ImportError:
        for name in [m for m in sys.modules if m == "zccl" or m.startswith("zccl.")]:
            del sys.modules[name]
        if str(PYDIR) not in sys.path:
            sys.path.insert(0, str(PYDIR))
        try:
            import zccl
        except ImportError:
            return PYDIR  # the ranks will say why; in-process tests skip
    return Path(zccl.__file__).resolve().parent.parent


PKG_ROOT = _package_root()

LAUNCH_TIMEOUT = float(os.environ.get("ZCCL_TEST_LAUNCH_TIMEOUT", "120"))
_LINE = re.compile(r"^\[(\d+)\] (CHECK|RESULT|DONE) (\{.*\})\s*$")


def zccl_bin_path():
    env = os.environ.get("ZCCL_BIN")
    if not env:
        return REPO / "target" / "debug" / "zccl"
    p = Path(env)
    if p.is_absolute():
        return p
    return (Path.cwd() / p) if (Path.cwd() / p).exists() else REPO / p


def rank_python():
    """The interpreter the ranks run: this one (`/usr/bin/python3` with
    Debian's torch here), or `ZCCL_TEST_PYTHON`."""
    return os.environ.get("ZCCL_TEST_PYTHON", sys.executable)


class Launch:
    """The outcome of one `zccl run`: exit code, output, parsed records."""

    def __init__(self, cmd, rc, out, err, secs, timed_out):
        self.cmd, self.rc, self.out, self.err = cmd, rc, out, err
        self.secs, self.timed_out = secs, timed_out
        self.records = []  # (kind, rank, dict)
        for line in out.splitlines():
            m = _LINE.match(line)
            if m:
                try:
                    self.records.append((m.group(2), int(m.group(1)), json.loads(m.group(3))))
                except ValueError:
                    pass

    def of(self, kind):
        return [(r, d) for k, r, d in self.records if k == kind]

    def checks(self, prefix=""):
        return [(r, d) for r, d in self.of("CHECK") if d["name"].startswith(prefix)]

    def results(self, **match):
        return [d for _, d in self.of("RESULT") if all(d.get(k) == v for k, v in match.items())]

    def done_ranks(self):
        return sorted(r for r, _ in self.of("DONE"))

    def tail(self, lines=40, width=600):
        def cut(text):
            ls = text.splitlines()[-lines:]
            return "\n".join(x if len(x) <= width else x[:width] + " ..." for x in ls)

        return (f"\n--- {' '.join(map(str, self.cmd))}\n--- rc={self.rc} timed_out={self.timed_out} "
                f"secs={self.secs:.1f}\n--- stdout (tail):\n{cut(self.out)}\n--- stderr (tail):\n{cut(self.err)}")

    def assert_completed(self, n):
        assert not self.timed_out, f"the launch timed out{self.tail()}"
        assert self.rc == 0, f"zccl run exited {self.rc}{self.tail()}"
        assert self.done_ranks() == list(range(n)), f"ranks that finished: {self.done_ranks()}{self.tail()}"


def launch(prog, n, *args, timeout=LAUNCH_TIMEOUT, grace=None, env=None):
    """Runs `zccl run -n n -- python progs/<prog> args` and returns a Launch."""
    cmd = [str(zccl_bin_path()), "run", "-n", str(n)]
    if grace is not None:
        cmd += ["--grace", str(grace)]
    cmd += ["--", rank_python(), "-u", str(PROGS / prog), *map(str, args)]
    e = dict(os.environ)
    e["PYTHONPATH"] = str(PKG_ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.setdefault("OMP_NUM_THREADS", "1")  # ranks share few cores
    if env:
        e.update(env)
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=str(REPO), env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, errors="replace", start_new_session=True)
    timed_out = False
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        p.send_signal(signal.SIGTERM)  # zccl run forwards it to the ranks
        try:
            out, err = p.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()  # the ranks die with it (they are killed if zccl run dies)
            out, err = p.communicate()
    return Launch(cmd, p.returncode, out, err, time.monotonic() - t0, timed_out)


@pytest.fixture(scope="session")
def zccl_bin():
    """The launcher binary; skips the test when it does not exist."""
    p = zccl_bin_path()
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.skip(f"zccl launcher not found at {p} (build it with `cargo build`, or set ZCCL_BIN)")
    return p


@pytest.fixture(scope="session")
def _launch_cache():
    return {}


@pytest.fixture
def zccl_launch(zccl_bin, _launch_cache):
    """`zccl_launch(prog, n, *args, timeout=..., grace=...)`: a Launch, run
    once per session for the same arguments."""

    def run(prog, n, *args, **kw):
        key = (prog, n, args, tuple(sorted(kw.items())))
        if key not in _launch_cache:
            _launch_cache[key] = launch(prog, n, *args, **kw)
        return _launch_cache[key]

    return run
