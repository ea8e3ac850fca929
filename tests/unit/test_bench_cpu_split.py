"""The bench splits a server's CPU into user space and the kernel (bench/run.py
`cpu_times`, proc(5) utime and stime) and reports the kernel's part of the CPU per
operation: the datagrams' way through the kernel is the same work for every server, so
where two servers differ, their own code is what differs."""

from __future__ import annotations

import subprocess
import sys

from bench.run import cpu_per_operation, cpu_times

# One burns the CPU in its own code (process_time, itself a system call, read every
# million turns), the other in the kernel (reading /dev/zero into a
# megabyte); each says when it is done.
_USER = ("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6:\n"
         "    for _ in range(1_000_000): pass\n")
_KERNEL = ("import os, time\nfd = os.open('/dev/zero', os.O_RDONLY)\nbuf = bytearray(1 << 20)\n"
           "t = time.process_time()\nwhile time.process_time() - t < 0.6:\n"
           "    for _ in range(100): os.readv(fd, [buf])\n")


def _times_of(code: str) -> tuple[float, float]:
    """The CPU times of a process that ran `code`, read while it is still alive."""
    proc = subprocess.Popen([sys.executable, "-c", code + "print('done', flush=True)\ninput()\n"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "done\n"
        return cpu_times([proc.pid])
    finally:
        proc.kill()
        proc.wait()


def test_cpu_times_tell_user_space_from_the_kernel() -> None:
    user, system = _times_of(_USER)
    assert user >= 0.4 and system < user / 4, (user, system)
    user, system = _times_of(_KERNEL)
    assert system >= 0.4 and user < system / 4, (user, system)
    assert cpu_times([]) == (0.0, 0.0)


def test_the_cpu_per_operation_says_what_was_in_the_kernel() -> None:
    def run(cores: float, kernel: float | None) -> dict:
        step = {"rate": 500, "server_cpu_cores": cores}
        if kernel is not None:
            step["server_kernel_cores"] = kernel
        return {"figure": 500, "steps": [{"rate": 250, "server_cpu_cores": 9.0}, step]}

    notes = cpu_per_operation({"calls": {"appliance_1p": run(0.6, 0.2),
                                         "kamailio_1p": run(0.5, 0.19)},
                               "registrations": {"appliance_1p": run(0.4, None)}})
    assert notes == [
        "CPU per registration: appliance 1p 800 us at 500/s",
        "CPU per call: appliance 1p 1200 us (400 in the kernel) at 500/s, "
        "Kamailio 1p 1000 us (380 in the kernel) at 500/s",
    ]
