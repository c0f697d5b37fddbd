"""Run status, and every verdict about a run: the one place that says what a run may become and
what its findings mean.

Rules of this module:

1. Every status change of a run goes through :func:`check_transition`, whoever makes it: the
   store's ``seal()``, the recovery sweep. Nothing else in the code base compares statuses to
   decide whether a change is allowed.
2. Every verdict lives here, as a table where a table can say it: what a recovery scan's
   outcome seals a run as (:data:`RECOVERY_VERDICTS`), which finding kinds are not damage
   (:data:`NOT_DAMAGE_IN_RECOVERY`, :data:`INFORMATIONAL`), what a verification says of a run
   (:func:`verify_verdict`), which runs retention never reclaims (:data:`RETENTION_KEEPS`) and
   which runs are never a replay source (:data:`REPLAY_REFUSALS`). Other modules compute the
   facts (what a scan found, whether a writer holds its lock) and look the answer up here.
3. This module does no I/O and knows no processes.

Theory of operation
-------------------
``running`` is the only status a live writer holds. ``ended`` is set by ``seal()``, or by the
sweep when it finds a clean stream that ends with ``RunEnded``; ``crashed_recovered`` and
``quarantined`` are set only by the sweep. ``quarantined`` is terminal: a damaged run is
evidence, never a replay source and never reclaimed automatically. Sealed runs (``ended``,
``crashed_recovered``) are complete records: replay sources and retention candidates.

A torn tail (a stream ending inside an append) is what a crash leaves: in a ``running`` run it
is not damage, recovery cuts it (keeping the bytes aside) and seals the run. In a sealed run it
is damage, because recovery cuts torn tails before it seals.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple

from ringtape.storage.check.findings import Kind


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    ENDED = "ended"
    CRASHED_RECOVERED = "crashed_recovered"
    QUARANTINED = "quarantined"

    @property
    def is_sealed(self) -> bool:
        """Sealed runs are complete records: replay sources and retention candidates."""
        return self in (RunStatus.ENDED, RunStatus.CRASHED_RECOVERED)


# -- transitions ----------------------------------------------------------------------------------

# (from, to) -> who may make the change.
TRANSITIONS: Final[dict[tuple[RunStatus, RunStatus], str]] = {
    (RunStatus.RUNNING, RunStatus.ENDED): "seal() or the recovery sweep (stream ends in RunEnded)",
    (RunStatus.RUNNING, RunStatus.CRASHED_RECOVERED): "the recovery sweep (clean, no RunEnded)",
    (RunStatus.RUNNING, RunStatus.QUARANTINED): "the recovery sweep (damage before the tail)",
}


class TransitionError(ValueError):
    pass


def check_transition(current: RunStatus, new: RunStatus) -> None:
    """Raise ``TransitionError`` unless a run may go from ``current`` to ``new``."""
    if current == new:
        return
    if (current, new) not in TRANSITIONS:
        raise TransitionError(f"a run cannot go from {current} to {new}")


# -- recovery ------------------------------------------------------------------------------------


class Outcome(enum.Enum):
    """What the recovery scan of a run's events stream found."""

    DAMAGED = "damage before the tail"
    EMPTY = "no entries"
    CLEAN_ENDED = "clean, last entry is RunEnded"
    CLEAN_OPEN = "clean, no RunEnded"


# The verdict: what the scan found -> the status the run is sealed with.
RECOVERY_VERDICTS: Final[dict[Outcome, RunStatus]] = {
    Outcome.DAMAGED: RunStatus.QUARANTINED,
    Outcome.EMPTY: RunStatus.CRASHED_RECOVERED,
    Outcome.CLEAN_ENDED: RunStatus.ENDED,
    Outcome.CLEAN_OPEN: RunStatus.CRASHED_RECOVERED,
}

# Only these statuses are recovered; a settled run's recovery plan changes nothing (which is
# what makes a second recovery a no-op).
RECOVERABLE: Final = frozenset({RunStatus.RUNNING})

# Kinds that describe what is kept around a run rather than damage to the record itself: they
# are reported as notes, but they never make a verification fail nor quarantine a run. A file
# ringtape did not write (``notes.txt``) is one; something that is not a regular file where a
# ringtape file or run directory should be (``wrong_file_type``) is not.
INFORMATIONAL: Final[frozenset[Kind]] = frozenset(
    {Kind.LEFTOVER_TORN, Kind.UNEXPECTED_FILE, Kind.TS_INIT_BACKWARDS, Kind.ANCHOR_INCOMPLETE}
)

# Kinds the recovery of a running run does not count as damage: the torn tail at the very end
# of a stream is the crash itself, and bytes an interrupted recovery kept aside are a record of
# one.
NOT_DAMAGE_IN_RECOVERY: Final[frozenset[Kind]] = INFORMATIONAL | {Kind.TORN_TAIL}


# -- verification --------------------------------------------------------------------------------


class RunFacts(NamedTuple):
    """What a verification found out about one run, for :func:`verify_verdict`."""

    live: bool  # the manifest says running and the writer holds its lock
    status: RunStatus | None  # None: the manifest could not be read
    serious: int  # findings that are not informational (a torn tail included)
    damage: int  # serious findings other than a torn tail


def verify_verdict(facts: RunFacts) -> str:
    """The one-line verdict ``ringtape verify`` gives a run. The first rule that applies wins:

    ==================  ====================================================
    live                ``live: being written`` (a torn tail is an append in progress)
    quarantined         ``quarantined: N findings``
    any damage          ``DAMAGED: N findings``
    running, writer     ``not sealed: writer gone, needs recovery`` (``(torn tail)``:
    gone                what the crash left, cut by recovery)
    torn tail, sealed   ``DAMAGED: torn tail in a sealed run``
    otherwise           ``intact``
    ==================  ====================================================
    """
    if facts.live:
        return "live: being written" + (f", {facts.serious} findings" if facts.serious else "")
    if facts.status is RunStatus.QUARANTINED:
        return f"quarantined: {facts.serious} findings"
    if facts.damage:
        return f"DAMAGED: {facts.serious} findings"
    if facts.status is RunStatus.RUNNING:
        return "not sealed: writer gone, needs recovery" + (" (torn tail)" if facts.serious else "")
    if facts.serious:
        return "DAMAGED: torn tail in a sealed run"
    return "intact"


def entries_complete(status: RunStatus | None, damaged: bool, live: bool) -> bool:
    """Are a run's entries all on disk, so that other records (markers) may be checked against
    its high watermark? Only in an ``ended``, undamaged run nobody writes: a live run has entries
    in flight, a crashed one lost its writer's last batch while the marker lane went on, and
    entries behind damage cannot be counted."""
    return status is RunStatus.ENDED and not damaged and not live


# -- retention and replay ------------------------------------------------------------------------

# Runs retention never reclaims, whatever the mode: status -> why. (Also kept: a run whose writer
# lock is held, a run whose manifest cannot be read, and the parent of a running run.)
RETENTION_KEEPS: Final[dict[RunStatus, str]] = {
    RunStatus.RUNNING: "running",
    RunStatus.QUARANTINED: "quarantined: kept as evidence",
}


def retention_keeps(status: RunStatus | None, live: bool, parent_of_running: bool) -> str | None:
    """Why retention must keep a run (``None``: the mode decides)."""
    if status is None:
        return "manifest unreadable"
    if live:
        return "running"
    if status in RETENTION_KEEPS:
        return RETENTION_KEEPS[status]
    if parent_of_running:
        return "parent of a running run"
    return None


# Runs that are never a replay source: status -> why.
REPLAY_REFUSALS: Final[dict[RunStatus, str]] = {
    RunStatus.RUNNING: "running, not sealed; run `ringtape recover` first if its writer is gone",
    RunStatus.QUARANTINED: "quarantined (damaged); it is never replayed",
}
