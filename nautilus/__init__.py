"""ringtape for NautilusTrader: capture a kernel's MessageBus, read runs back as its objects.

``RingtapeCapture(config).attach(engine.kernel)`` records a run (``capture.py``);
``iter_objects(run_dir)`` reads one back as NautilusTrader objects (``read.py``);
``NautilusCache`` is the store's cache protocol on a NautilusTrader ``Cache`` (``cache.py``),
for ``EventStore.restore_parent_cache`` and ``replay_run``. Needs ``nautilus_trader``
(``pip install ringtape[nautilus]``).
"""

from __future__ import annotations

from ringtape.nautilus.cache import NautilusCache, NautilusReplayError
from ringtape.nautilus.capture import CaptureStats, RingtapeCapture
from ringtape.nautilus.encoding import PayloadEncoding
from ringtape.nautilus.identity import instance_id_for
from ringtape.nautilus.read import NautilusEntry, iter_objects, run_encoding

__all__ = [
    "CaptureStats",
    "NautilusCache",
    "NautilusEntry",
    "NautilusReplayError",
    "PayloadEncoding",
    "RingtapeCapture",
    "instance_id_for",
    "iter_objects",
    "run_encoding",
]
