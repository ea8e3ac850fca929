"""The bench's Kamailio runs with its fast memory manager: Debian's build defaults to qm,
kept for troubleshooting memory, whose free-block search took 40% of Kamailio's CPU per
call (docs/performance.md). A reference slowed so would flatter every ratio."""

from __future__ import annotations

from pathlib import Path

from bench.run import FULL, Kamailio, Users


def test_kamailio_is_started_with_fm(tmp_path: Path) -> None:
    argv = Kamailio(tmp_path, Users.numbered(1000, 2), "t", FULL, workers=1).argv()
    assert argv[argv.index("-x") + 1] == "fm"
    # shared and private memory alike: -X (private) is not given, so it follows -x
    assert "-X" not in argv
