"""pytest fixtures for the real peers.  Enable them in a conftest.py with::

    pytest_plugins = ["tests.peers.fixtures"]

(or import the ones you need).  Every process a fixture starts is stopped at
teardown, also when the test failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .baresip import Baresip, baresip_available
from .sipp import SippProcess, sipp_available, start_sipp, start_uas

needs_sipp = pytest.mark.skipif(not sipp_available(), reason="sipp (Debian sip-tester) not installed")
needs_baresip = pytest.mark.skipif(not baresip_available(),
                                   reason="baresip (Debian baresip-core) not installed")


@pytest.fixture
def baresip_factory(tmp_path: Path) -> Iterator:
    """``make(name, **Baresip kwargs) -> Baresip``; all stopped at teardown."""
    made: list[Baresip] = []

    def make(name: str = "ua", **kw) -> Baresip:
        b = Baresip(tmp_path / f"baresip-{name}-{len(made)}", name=name, **kw)
        made.append(b)
        return b

    yield make
    for b in reversed(made):
        try:
            b.stop()
        except Exception:  # noqa: BLE001 - keep cleaning up
            pass


@pytest.fixture
def sipp_background(tmp_path: Path) -> Iterator:
    """``start(scenario_path, remote, **kw)`` / ``start.uas(role, remote, **kw)``
    for background SIPp instances (workdir under tmp_path); all stopped at
    teardown."""
    procs: list[SippProcess] = []

    def start(scenario_path, remote: str, **kw) -> SippProcess:
        kw.setdefault("workdir", tmp_path / "sipp")
        p = start_sipp(scenario_path, remote, **kw)
        procs.append(p)
        return p

    def uas(role: str, remote: str, **kw) -> SippProcess:
        kw.setdefault("workdir", tmp_path / "sipp")
        p = start_uas(role, remote, **kw)
        procs.append(p)
        return p

    start.uas = uas  # type: ignore[attr-defined]
    yield start
    for p in reversed(procs):
        try:
            p.stop(grace=1)
        except Exception:  # noqa: BLE001
            pass
