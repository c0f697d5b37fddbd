"""``ringtape bench``'s NautilusTrader section: what capturing a real engine costs it.

The same backtest (``ringtape.nautilus.example``: EMACross on synthetic AUD/USD quotes) runs
in five modes, interleaved round by round so that machine noise falls on every mode alike:

``none``
    no listener: NautilusTrader serialises nothing for listeners.
``null``
    a listener whose ``publish`` does nothing: the bus now serialises every message
    (``MsgSpecSerializer``), so ``null - none`` is NautilusTrader's own serialisation cost.
``list``
    a listener appending ``(topic, payload)`` to a list: the cheapest useful listener, the
    baseline the target is set against.
``ringtape``
    ``RingtapeCapture`` with entries only (no data markers).
``ringtape_markers``
    ``RingtapeCapture`` with data markers for all five classes (the sidecar running too).

Per run: CPU of the trading thread (``time.thread_time``) and wall time, both over the window
from the trader's RUNNING to its STOPPING (the store's open, which spawns the writer, falls
before it; the engine's build and dispose outside it), plus the whole ``engine.run()``; the
writer and sidecar CPU (``RUSAGE_CHILDREN``) and the messages published. Medians over the
rounds; ratios are of medians (judged) and of the least thread CPU of each mode (other
processes only ever add to it). Target: ``ringtape / list <= 1.10`` in thread CPU.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

MODES: Final = ("none", "null", "list", "ringtape", "ringtape_markers")
TARGET_RATIO: Final = 1.10


class NullListener:
    def is_closed(self) -> bool:
        return False

    def publish(self, topic: str, payload: bytes) -> None:
        return None


class ListListener:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def is_closed(self) -> bool:
        return False

    def publish(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _one_run(mode: str, n_quotes: int, work: Path) -> dict[str, Any]:
    from ringtape.capture.config import DataMarkerConfig, EventStoreConfig
    from ringtape.nautilus.capture import RingtapeCapture
    from ringtape.nautilus.example import TRADER_ID, ema_cross_backtest

    engine = ema_cross_backtest(n_quotes)
    kernel = engine.kernel
    capture: RingtapeCapture | None = None
    if mode == "null":
        kernel.msgbus.add_listener(NullListener())
    elif mode == "list":
        kernel.msgbus.add_listener(ListListener())
    elif mode.startswith("ringtape"):
        markers = DataMarkerConfig() if mode == "ringtape_markers" else None
        config = EventStoreConfig(base_dir=str(work), data_markers=markers)
        capture = RingtapeCapture(config).attach(kernel)
    window: dict[str, float] = {}

    def on_trader(event: Any) -> None:
        state = event.state.name
        if state in ("RUNNING", "STOPPING"):
            window[f"{state}_cpu"] = time.thread_time()
            window[f"{state}_wall"] = time.perf_counter()

    kernel.msgbus.subscribe(f"events.system.{TRADER_ID}", on_trader)
    gc.collect()
    children = _children_cpu()
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    engine.run()
    cpu1, wall1 = time.thread_time(), time.perf_counter()
    published = kernel.msgbus.pub_count
    engine.dispose()
    if capture is not None:
        capture.close()
        if capture.stats.refused or capture.stats.halt_reason:
            raise RuntimeError(f"{mode}: the capture failed: {capture.stats}")
    return {
        "thread_cpu_s": window["STOPPING_cpu"] - window["RUNNING_cpu"],
        "wall_s": window["STOPPING_wall"] - window["RUNNING_wall"],
        "run_thread_cpu_s": cpu1 - cpu0,
        "run_wall_s": wall1 - wall0,
        "children_cpu_s": _children_cpu() - children,
        "published": published,
        "entries": capture.entries if capture is not None else None,
    }


def _least(runs: list[dict[str, Any]]) -> float:
    return min(float(r["thread_cpu_s"]) for r in runs)


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(r[key]) for r in runs))


def run_nautilus_bench(
    *,
    quick: bool = False,
    scale: float = 1.0,
    rounds: int = 3,
    work_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the section (module docstring); returns its JSON-able result. ``scale`` multiplies
    the quotes per run (20,000; 2,000 when ``quick``)."""
    import nautilus_trader

    quotes = max(200, int((2_000 if quick else 20_000) * scale))
    root = work_dir or Path.cwd() / ".bench-tmp"
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nautilus-", dir=root))
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    try:
        for round_no in range(rounds):
            for mode in MODES:
                runs[mode].append(_one_run(mode, quotes, work / f"{mode}-{round_no}"))
            if log is not None:
                log(f"nautilus: round {round_no + 1}/{rounds} done")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            root.rmdir()  # only when empty: another bench may be using it
    medians = {
        mode: {
            key: _median(r, key)
            for key in (
                "thread_cpu_s",
                "wall_s",
                "run_thread_cpu_s",
                "run_wall_s",
                "children_cpu_s",
            )
        }
        | {"published": r[0]["published"], "entries": r[0]["entries"]}
        for mode, r in runs.items()
    }
    cpu = {mode: m["thread_cpu_s"] for mode, m in medians.items()}
    messages = medians["list"]["published"]
    ratio = cpu["ringtape"] / cpu["list"]
    return {
        "nautilus_trader": nautilus_trader.__version__,
        "quotes": quotes,
        "rounds": rounds,
        "messages_per_run": messages,
        "median": medians,
        "runs": runs,
        "nautilus_serialisation_us_per_message": (cpu["null"] - cpu["none"]) / messages * 1e6,
        "list_listener_us_per_message": (cpu["list"] - cpu["null"]) / messages * 1e6,
        "ringtape_us_per_message": (cpu["ringtape"] - cpu["list"]) / messages * 1e6,
        "ringtape_markers_us_per_message": (cpu["ringtape_markers"] - cpu["list"]) / messages * 1e6,
        "ratios_thread_cpu": {
            "ringtape/list": ratio,
            "ringtape_markers/list": cpu["ringtape_markers"] / cpu["list"],
            "list/none": cpu["list"] / cpu["none"],
        },
        # Interference from other processes only ever adds CPU time: the least of the rounds
        # is the least disturbed figure of each mode.
        "ratios_thread_cpu_min": {
            "ringtape/list": _least(runs["ringtape"]) / _least(runs["list"]),
            "ringtape_markers/list": _least(runs["ringtape_markers"]) / _least(runs["list"]),
        },
        "ratios_wall": {
            "ringtape/list": medians["ringtape"]["wall_s"] / medians["list"]["wall_s"],
            "ringtape_markers/list": medians["ringtape_markers"]["wall_s"]
            / medians["list"]["wall_s"],
        },
        "target": {"ringtape/list": TARGET_RATIO},
        "met": ratio <= TARGET_RATIO,
    }


def format_nautilus(section: dict[str, Any]) -> str:
    """A few lines for the table ``ringtape bench`` prints."""
    if "error" in section:
        return f"nautilus: error: {section['error']}"
    med = section["median"]
    rows = [
        f"NautilusTrader {section['nautilus_trader']}: EMACross, {section['quotes']:,} quotes,"
        f" {section['messages_per_run']:,} messages per run, {section['rounds']} rounds"
        " (medians, trader RUNNING to STOPPING)"
    ]
    for mode in MODES:
        rows.append(
            f"  {mode:<17} thread CPU {med[mode]['thread_cpu_s'] * 1e3:8.1f} ms"
            f"   wall {med[mode]['wall_s'] * 1e3:8.1f} ms"
            f"   writer+sidecar {med[mode]['children_cpu_s'] * 1e3:7.1f} ms"
        )
    ratios = section["ratios_thread_cpu"]
    rows.append(
        f"  NautilusTrader's serialisation {section['nautilus_serialisation_us_per_message']:.2f}"
        f" us/message; ringtape over a list listener"
        f" {section['ringtape_us_per_message']:.2f} us/message"
        f" ({section['ringtape_markers_us_per_message']:.2f} with markers)"
    )
    least = section["ratios_thread_cpu_min"]
    rows.append(
        f"  ringtape/list {ratios['ringtape/list']:.3f}"
        f" (markers {ratios['ringtape_markers/list']:.3f}),"
        f" target <= {TARGET_RATIO}: {'met' if section['met'] else 'NOT met'};"
        f" least of the rounds {least['ringtape/list']:.3f}"
        f" (markers {least['ringtape_markers/list']:.3f})"
    )
    return "\n".join(rows)
