"""bench/instructions.py counts a server's instructions per operation on the wire: two
runs alike but for the rate, read from callgrind's dump files, their difference over
the difference of the successful operations."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.instructions import Count, dump_instructions, render

# The head and tail of a dump as callgrind 3.19 writes it at a process's exit
_DUMP = (b"# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\npid: 2453\n"
         b"cmd:  /work/main/.venv/bin/python bench/appliance_md5_first.py run\npart: 1\n\n"
         b"desc: I1 cache: \ndesc: D1 cache: \ndesc: LL cache: \n\n"
         b"desc: Timerange: Basic block 0 - 453028299\ndesc: Trigger: Program termination\n\n"
         b"positions: line\nevents: Ir\nsummary: 131635616\n\n\nob=(1) /usr/lib/libc.so.6\n"
         b"fl=(1) ???\nfn=(1) 0x0000000000027200\n0 3\n\ntotals: 131635616\n")


def test_the_dump_summary_is_the_count(tmp_path: Path) -> None:
    path = tmp_path / "callgrind.2453"
    path.write_bytes(_DUMP)
    assert dump_instructions(path) == 131_635_616
    path.write_bytes(_DUMP.split(b"summary:")[0])  # cut short
    with pytest.raises(ValueError):
        dump_instructions(path)


def test_the_second_runs_extra_operations_are_what_is_counted() -> None:
    # 100 and 200 calls; everything else in the runs alike
    c = Count("appliance", "calls", (100, 200), (2_000_000_000, 2_105_000_000))
    assert c.per_operation == pytest.approx(1_050_000)
    assert Count("appliance", "calls", (100, 100), (1, 2)).per_operation is None


def test_the_table_gives_the_ratio() -> None:
    counts = [Count("appliance", "calls", (10, 20), (0, 20_000_000)),
              Count("kamailio", "calls", (10, 20), (0, 5_000_000))]
    assert "| call | 2,000k | 500k | 4.00 | n/a |" in render(counts)
