"""`appliance` CLI for the bench: the unmodified daemon, with MD5 first among its challenges.

The shipped default (`sip.auth_algorithms: [MD5]`) sends one MD5 challenge, which SIPp 3.6.1
(Debian bookworm's sip-tester) can answer, so for the bench's configuration this launcher
changes nothing. It stays as a safeguard for a configuration that lists SHA-256 first:
SIPp answers only the first challenge and cannot compute SHA-256, so it puts MD5 first,
touching only the order (same nonce, same code, same work per message).

Usage: python bench/appliance_md5_first.py run --data DIR ... (same arguments as `appliance`)
With BENCH_GC_REPORT=FILE in the environment it also times the garbage collector and writes
the totals to FILE at exit (bench/hotspots.py uses that).
"""

from __future__ import annotations

import sys

from appliance.sip import digest

_original_init = digest.DigestServer.__init__


def _md5_first_init(self, realm, secret=None, nonce_ttl=300.0,
                    algorithms=("SHA-256", "MD5"), **kwargs):
    algorithms = sorted(algorithms, key=lambda a: digest.normalize_algorithm(a) != "MD5")
    _original_init(self, realm, secret, nonce_ttl, algorithms, **kwargs)


digest.DigestServer.__init__ = _md5_first_init


def _gc_report(path: str) -> None:
    """BENCH_GC_REPORT=FILE: time every garbage collection; write the totals at exit (JSON)."""
    import atexit
    import gc
    import json
    import time

    totals = {g: [0, 0.0, 0.0] for g in range(3)}
    started: list[float] = [0.0]
    cpu0 = time.process_time()

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            t = totals[info["generation"]]
            pause = time.perf_counter() - started[0]
            t[0] += 1
            t[1] += pause
            t[2] = max(t[2], pause)

    def write() -> None:
        cpu = time.process_time() - cpu0
        report = {"cpu_s": round(cpu, 3), "tracked_objects": len(gc.get_objects()),
                  "generations": {str(g): {"collections": n, "seconds": round(s, 3),
                                           "longest_s": round(m, 4),
                                           "share_of_cpu": round(s / cpu, 4) if cpu else None}
                                  for g, (n, s, m) in totals.items()}}
        with open(path, "w") as f:
            json.dump(report, f, indent=1)

    gc.callbacks.append(callback)
    atexit.register(write)


if __name__ == "__main__":
    import os

    if os.environ.get("BENCH_GC_REPORT"):
        _gc_report(os.environ["BENCH_GC_REPORT"])
    from appliance.cli import main

    sys.exit(main())
