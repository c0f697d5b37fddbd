"""The control block at the start of every shared region (the entry ring's and the marker ring's).

A control block is ``CONTROL_WORDS`` u64 words, laid out the same way for both rings so that one
child bootstrap (``capture/child.py``) serves the writer and the sidecar::

    word  0..7    written once at start-up (the child checks them when it attaches)
          0 MAGIC             which ring this is
          1 SLOTS             ring slots (a power of two)
          2 SIZE              ring bytes (entry ring) or record capacity (marker ring)
          3 PRODUCER_PID      the kernel
          4 WAKE_SEQ          the seq at which the sleeping child wants its doorbell rung
                              (WAKE_NEVER while it is awake)
    word  8..15   the producer's line (the kernel writes, the child reads)
          8 CLOSE_REQUEST     non-zero: finish and exit (what it means is the ring's)
          9..15               the ring's own producer words
    word 16..31   the consumer's line (the child writes, the kernel reads)
         16 READ_SEQ          the last record taken (frees ring space)
         18 DURABLE           the last record fdatasync'd
         20 STATE             STARTING, RUNNING, CLOSED or FAILED
         21 ERRNO             the errno of a failure (0: none)
         22 CHILD_PID         the child process
         23 HEARTBEAT_NS      the child's monotonic clock when it last woke or committed
         31 FAILURE_KIND      which kind of failure STATE FAILED reports (FAILURE_KINDS)
         17, 19, 24..30       the ring's own consumer words
    word 32..63   ERROR_TEXT: why the child failed, NUL-padded UTF-8

WAKE_SEQ is read by the producer on every append, and written by the child only when it goes
to sleep or wakes: it shares the first line with words nobody writes after start-up, not the
consumer line that every take rewrites (that would cost the producer a cache miss). The
producer rings once per value (it remembers the last value it rang for), and the value moves on
whenever the child has taken what it was woken for, so a burst after an idle spell costs one
doorbell, not one per append.
"""

from __future__ import annotations

import subprocess
import time
from typing import Final

CONTROL_WORDS: Final = 64
CONTROL_BYTES: Final = CONTROL_WORDS * 8

MAGIC: Final = 0
SLOTS: Final = 1
SIZE: Final = 2
PRODUCER_PID: Final = 3
WAKE_SEQ: Final = 4
WAKE_NEVER: Final = (1 << 64) - 1
CLOSE_REQUEST: Final = 8
READ_SEQ: Final = 16
DURABLE: Final = 18
STATE: Final = 20
ERRNO: Final = 21
CHILD_PID: Final = 22
HEARTBEAT_NS: Final = 23
FAILURE_KIND: Final = 31
ERROR_TEXT_WORD: Final = 32
ERROR_TEXT_BYTES: Final = (CONTROL_WORDS - ERROR_TEXT_WORD) * 8

# Failure kinds (the FAILURE_KIND word): 0 is any failure the text describes; the others name a
# halt reason of their own (the exception class a child raises for it has the same name).
FAILURE_KINDS: Final = ("", "InvalidRecord")

# Child states (the STATE word).
STATE_STARTING: Final = 0
STATE_RUNNING: Final = 1
STATE_CLOSED: Final = 2
STATE_FAILED: Final = 3


def wait_for_state(
    words: memoryview, word: int, state: int, process: subprocess.Popen[bytes], timeout: float
) -> bool:
    """Wait until the child says ``state`` in ``word`` (True), or has exited or ``timeout``
    passed without saying it (False)."""
    deadline = time.monotonic() + timeout
    while int(words[word]) != state:
        if process.poll() is not None or time.monotonic() >= deadline:
            return int(words[word]) == state
        time.sleep(0.0002)
    return True


class ControlBlock:
    """Typed access to a control block: ``words`` is the u64 view every word is read through."""

    def __init__(self, buf: memoryview) -> None:
        self.words = buf[:CONTROL_BYTES].cast("Q")

    def init(self, magic: int, slots: int, size: int, producer_pid: int) -> None:
        """The producer's start-up writes; ``MAGIC`` last, once the rest is in place."""
        self.words[WAKE_SEQ] = WAKE_NEVER
        self.words[SLOTS] = slots
        self.words[SIZE] = size
        self.words[PRODUCER_PID] = producer_pid
        self.words[MAGIC] = magic

    def mismatch(self, magic: int, slots: int, size: int, producer_pid: int) -> str | None:
        """What in the start-up words differs from what the child was told (``None``: all is
        as expected); a child must not work on a region that is not the one it was given."""
        found = (self.words[MAGIC], self.words[SLOTS], self.words[SIZE], self.words[PRODUCER_PID])
        wanted = (magic, slots, size, producer_pid)
        if found == wanted:
            return None
        return f"control block says magic/slots/size/producer {found}, expected {wanted}"

    def error_text(self) -> str:
        start = ERROR_TEXT_WORD * 8
        raw = bytes(self.words.cast("B")[start : start + ERROR_TEXT_BYTES])
        return raw.rstrip(b"\0").decode("utf-8", "replace")

    def set_error_text(self, text: str) -> None:
        start = ERROR_TEXT_WORD * 8
        data = text.encode()[: ERROR_TEXT_BYTES - 1].ljust(ERROR_TEXT_BYTES, b"\0")
        self.words.cast("B")[start : start + ERROR_TEXT_BYTES] = data

    def report_failure(self, text: str, err: int, kind: str = "") -> None:
        """A child's last act: why it failed (text, errno, kind), then its state (what the
        kernel polls) — in that order, so the reason is there when the state says FAILED."""
        self.set_error_text(text)
        self.words[ERRNO] = err
        self.words[FAILURE_KIND] = FAILURE_KINDS.index(kind) if kind in FAILURE_KINDS else 0
        self.words[STATE] = STATE_FAILED

    def failure_kind(self) -> str:
        code = int(self.words[FAILURE_KIND])
        return FAILURE_KINDS[code] if code < len(FAILURE_KINDS) else ""

    def release(self) -> None:
        self.words.release()
