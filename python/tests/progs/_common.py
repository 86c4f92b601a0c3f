"""Shared helpers of the rank programs in this folder (not a test module).

Rank programs print one JSON record per line, which the tests parse from
`zccl run`'s `[rank] `-prefixed output:

    CHECK  {"name": ..., "ok": true|false, "detail": ...}   one comparison
    RESULT {...}                                            a measured outcome
    DONE   {"checks": n, "failed": k}                       the program ended
"""

import json
import os
import sys
import traceback
import zlib


def emit(kind, **fields):
    print(kind + " " + json.dumps(fields, default=str), flush=True)


def seed_of(*parts):
    """A seed from any tuple of ints/strings, the same on every rank."""
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


class Checks:
    """Collects named checks. A check function returns `(ok, detail)` (or a
    bool). An exception inside a check is reported with its traceback and
    ends the program with exit code 3 at once: a collective that raised on
    one rank would leave the others waiting, and the first failure is the
    one worth reading."""

    def __init__(self, rank):
        self.rank = rank
        self.count = 0
        self.failed = 0

    def record(self, name, ok, detail=""):
        self.count += 1
        if not ok:
            self.failed += 1
        emit("CHECK", name=name, ok=bool(ok), detail=str(detail)[:3000])

    def run(self, name, fn, *args, **kwargs):
        try:
            r = fn(*args, **kwargs)
        except BaseException:  # noqa: BLE001 - reported, then fatal
            self.record(name, False, "raised:\n" + traceback.format_exc())
            self.finish(exit_code=3)
        if isinstance(r, tuple):
            ok, detail = r
        else:
            ok, detail = bool(r), ""
        self.record(name, ok, detail)
        return ok

    def finish(self, exit_code=0):
        """Prints DONE and exits: normally (interpreter teardown included, so
        a hang at exit shows) for 0, at once otherwise."""
        emit("DONE", checks=self.count, failed=self.failed)
        sys.stdout.flush()
        sys.stderr.flush()
        if exit_code:
            os._exit(exit_code)
        sys.exit(0)


def watchdog(secs):
    """Dumps every thread's Python stack and exits (code 1) if the program is
    still running after `secs`: a hang then fails fast, showing where."""
    import faulthandler

    faulthandler.dump_traceback_later(secs, exit=True)


def short(msg, n=1500):
    msg = str(msg).replace("\n", " | ")
    return msg if len(msg) <= n else msg[:n] + "..."
