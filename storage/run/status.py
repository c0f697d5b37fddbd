"""Run status: the one place that says which status a run may move to, and why.

Rules of this module:

1. Every status change of a run goes through :func:`check_transition`; nothing else in the
   code base compares statuses to decide whether a change is allowed.
2. ``running`` is the only status a live writer holds. ``ended`` is set by ``seal()``;
   ``crashed_recovered`` and ``quarantined`` only by the recovery sweep (or ``ended`` when the
   sweep finds a clean stream that ends with ``RunEnded``).
3. ``quarantined`` is terminal: a damaged run is evidence, never a replay source and never
   reclaimed automatically.
"""

from __future__ import annotations

import enum
from typing import Final


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    ENDED = "ended"
    CRASHED_RECOVERED = "crashed_recovered"
    QUARANTINED = "quarantined"

    @property
    def is_sealed(self) -> bool:
        """Sealed runs are complete records: replay sources and retention candidates."""
        return self in (RunStatus.ENDED, RunStatus.CRASHED_RECOVERED)


# (from, to) -> who may make the change.
TRANSITIONS: Final[dict[tuple[RunStatus, RunStatus], str]] = {
    (RunStatus.RUNNING, RunStatus.ENDED): "seal() or the recovery sweep (stream ends in RunEnded)",
    (RunStatus.RUNNING, RunStatus.CRASHED_RECOVERED): "the recovery sweep (clean, no RunEnded)",
    (RunStatus.RUNNING, RunStatus.QUARANTINED): "the recovery sweep (damage before the tail)",
}


class TransitionError(ValueError):
    pass


def check_transition(current: RunStatus, new: RunStatus) -> None:
    if current == new:
        return
    if (current, new) not in TRANSITIONS:
        raise TransitionError(f"a run cannot go from {current} to {new}")
