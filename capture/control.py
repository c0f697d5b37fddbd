"""What the writer's and the sidecar's control blocks share: the size of the block and the
error text a failing child leaves there for the kernel to report.

A control block is ``CONTROL_WORDS`` u64 words at the start of a shared region; words
``ERROR_TEXT_WORD ..`` hold a NUL-padded UTF-8 message (at most ``ERROR_TEXT_BYTES - 1`` bytes).
"""

from __future__ import annotations

from typing import Final

CONTROL_WORDS: Final = 64
CONTROL_BYTES: Final = CONTROL_WORDS * 8
ERROR_TEXT_WORD: Final = 32
ERROR_TEXT_BYTES: Final = 256


def error_text(ctrl: memoryview) -> str:
    start = ERROR_TEXT_WORD * 8
    raw = bytes(ctrl.cast("B")[start : start + ERROR_TEXT_BYTES])
    return raw.rstrip(b"\0").decode("utf-8", "replace")


def set_error_text(ctrl: memoryview, text: str) -> None:
    start = ERROR_TEXT_WORD * 8
    data = text.encode()[: ERROR_TEXT_BYTES - 1].ljust(ERROR_TEXT_BYTES, b"\0")
    ctrl.cast("B")[start : start + ERROR_TEXT_BYTES] = data


def report_failure(
    ctrl: memoryview, text: str, err: int, *, errno_word: int, state_word: int, failed: int
) -> None:
    """A child's last act: why it failed (text, errno), then its state (what the kernel
    polls) — in that order, so the reason is there when the state says FAILED."""
    set_error_text(ctrl, text)
    ctrl[errno_word] = err
    ctrl[state_word] = failed
