"""The crash soak in ``make test``: 150 random SIGKILLs of the kernel, the writer, the marker
sidecar, or the kernel and its writer together, during open, appends, anchors and seal, each
followed by a boot of the store or ``ringtape recover``; every run then checked entry by entry
(``ringtape.tools.soak``; ``python -m ringtape.tools.soak --kills 1000`` runs the long one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringtape.tools.soak import PHASES, VICTIMS, soak

KILLS = 150


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_random_kills_lose_no_durable_entry(tmp_path: Path) -> None:
    figures = soak(KILLS, tmp_path, seed=15)
    report = figures.to_dict()
    assert figures.total_kills >= KILLS, report
    assert set(figures.kills) == set(VICTIMS) and set(figures.phases) == set(PHASES), report
    assert set(figures.recoveries) == {"boot", "ringtape recover"}, report
    assert figures.lost == 0 and figures.wrong_status == 0, report
    assert figures.verify_failures == 0 and not figures.problems, report
    assert figures.orphans == 0 and figures.rings_left == 0, report
    assert figures.entries_checked > 50_000 and figures.anchors_checked > 0, report
    assert figures.runs >= KILLS // 2, report
