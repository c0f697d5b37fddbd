"""``ringtape demo``: run ``ringtape.tools.demo.run.run_demo`` and print its summary."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ringtape import EventStoreError
from ringtape.tools.arguments import EXIT_FINDINGS, EXIT_OK
from ringtape.tools.commands.verify import describe_finding, verdict_line
from ringtape.tools.common import (
    CliError,
    console,
    emit,
    format_ratio,
    human_bytes,
    progress_wanted,
    table,
)
from ringtape.tools.demo.run import (
    DemoOptions,
    DemoResult,
    Percentiles,
    ProgressFn,
    run_demo,
)


@contextmanager
def _capture_bar(seconds: float, enabled: bool) -> Iterator[ProgressFn | None]:
    if not enabled:
        yield None
        return
    bar = Progress(
        TextColumn("capturing"),
        BarColumn(),
        TextColumn("{task.completed:.1f}/{task.total:.0f} s"),
        TextColumn("{task.fields[entries]:>10,} entries"),
        TimeElapsedColumn(),
        console=Console(file=sys.stderr),
        transient=True,
    )
    task = bar.add_task("capture", total=seconds, entries=0)

    def update(elapsed: float, entries: int) -> None:
        bar.update(task, completed=min(elapsed, seconds), entries=entries)

    with bar:
        yield update


def _us(ns: float | None) -> str:
    return "-" if ns is None else f"{ns / 1e3:,.1f} us"


def _ms(ns: float | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:,.2f} ms"


def _percentiles(p: Percentiles, unit: str) -> str:
    fmt = _us if unit == "us" else _ms
    if p.count == 0:
        return "-"
    return (
        f"p50 {fmt(p.p50)}  p90 {fmt(p.p90)}  p99 {fmt(p.p99)}  p99.9 {fmt(p.p99_9)}"
        f"  max {fmt(p.max)}  (n={p.count:,})"
    )


def summary_rows(result: DemoResult) -> list[list[str]]:
    """The summary as (what, value) rows."""
    cap = result.capture
    secs = cap.seconds or 1.0
    verify = verdict_line(result.verify)
    raw, seg = result.raw_bytes, result.segment_bytes
    return [
        ["run", result.run_dir],
        ["captured for", f"{cap.seconds:.2f} s" + (" (interrupted)" if cap.interrupted else "")],
        ["entries", f"{result.entries:,}  ({result.entries_per_s:,.0f} /s)"],
        ["market data observed", f"{cap.market_data:,}  ({cap.market_data / secs:,.0f} /s)"],
        ["marker records", f"{result.marker_records:,}"],
        ["snapshot anchors", _anchors(result)],
        [
            f"append latency (1 in {result.options.sample_every})",
            _percentiles(Percentiles.of(cap.append_ns), "us"),
        ],
        ["append -> durable lag", _percentiles(Percentiles.of(cap.durable_lag_ns), "ms")],
        [
            "compression",
            f"{format_ratio(result.compression_ratio)}  ({human_bytes(raw)} raw"
            f" -> {human_bytes(seg)} in segments)",
        ],
        ["disk bytes", f"{result.disk_bytes:,}  ({human_bytes(result.disk_bytes)}, run directory)"],
        ["verify", f"{verify}  ({result.verify_seconds:.2f} s, {result.verify_jobs} job(s))"],
        ["replay parity", ("OK" if result.replay_ok else "FAILED") + f"  ({result.replay_detail})"],
        ["halted", cap.halted or "no"],
        ["other load", _load(cap.other_cores)],
    ]


def _anchors(result: DemoResult) -> str:
    records = result.anchor_records
    durable = sum(r.state == "durable" for r in records)
    raw, stored = result.blob_bytes
    cost = Percentiles.of(result.capture.anchor_ns)
    blobs = (
        f"; blobs {format_ratio(result.blob_ratio)} ({human_bytes(raw)} -> {human_bytes(stored)})"
        if stored
        else ""
    )
    return (
        f"{len(records)} ({durable} durable); anchor() p50 {_ms(cost.p50)}, max {_ms(cost.max)}"
        + blobs
    )


def _load(cores: float | None) -> str:
    if cores is None:
        return "-"
    note = "  (busy machine: latency figures are pessimistic)" if cores > 0.2 else ""
    return f"other processes used {cores:.2f} cores during the capture{note}"


def print_summary(result: DemoResult) -> None:
    out = console()
    out.print()
    out.print("ringtape demo summary", markup=False)
    emit(out, table(["what", "value"], summary_rows(result), header=False))
    if result.verify.findings:
        out.print()
        for f in result.verify.findings:
            for line in describe_finding(f):
                out.print(line, markup=False)
    out.print()
    out.print(f"replay parity: {'OK' if result.replay_ok else 'FAILED'}", markup=False)


def run(args: argparse.Namespace) -> int:
    base = Path(args.base_dir)
    if base.exists() and not base.is_dir():
        raise CliError(f"{args.base_dir}: not a directory")
    if args.nautilus:
        return _run_nautilus(args, base)
    if args.quotes is not None:
        raise CliError("--quotes applies to --nautilus only")
    options = DemoOptions(
        base_dir=base,
        seconds=args.seconds,
        seed=args.seed,
        anchor_interval_s=args.anchor_every,
        jobs=args.jobs,
    )
    if not args.json:
        print(
            f"ringtape demo: capturing a simulated trading session for {args.seconds:g} s"
            f" into {base}/",
            file=sys.stderr,
        )
    try:
        with _capture_bar(args.seconds, progress_wanted(args.json)) as progress:
            result = run_demo(options, progress)
    except EventStoreError as exc:  # the pipeline could not start (a halt is a result)
        raise CliError(f"the event store failed: {exc}") from None
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_summary(result)
    return EXIT_OK if result.ok else EXIT_FINDINGS


def _run_nautilus(args: argparse.Namespace, base: Path) -> int:
    if importlib.util.find_spec("nautilus_trader") is None:
        raise CliError("--nautilus needs nautilus_trader: pip install 'ringtape[nautilus]'")
    from ringtape.tools.demo.nautilus import DEFAULT_QUOTES, run_nautilus_demo

    quotes = args.quotes or DEFAULT_QUOTES
    if not args.json:
        print(
            f"ringtape demo --nautilus: capturing a NautilusTrader backtest ({quotes:,} quotes)"
            f" into {base}/",
            file=sys.stderr,
        )
    try:
        result = run_nautilus_demo(base, quotes=quotes, seed=args.seed, jobs=args.jobs)
    except EventStoreError as exc:
        raise CliError(f"the event store failed: {exc}") from None
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK if result.ok else EXIT_FINDINGS
    stats = result.capture
    dropped = stats["dropped_before_open"] + stats["dropped_after_close"]
    rows = [
        ["run", result.run_dir],
        ["NautilusTrader", f"{result.nautilus_trader}: EMACross on {result.quotes:,} quotes"],
        ["backtest", f"{result.backtest_seconds:.2f} s (engine.run), {result.orders} orders,"
         f" {result.positions} position(s)"],
        ["entries", f"{result.entries:,}  ({result.bus_messages:,} bus messages, RunStarted,"
         f" RunEnded, {result.anchors} anchors, {stats['instruments']} instrument(s))"],
        ["marker records", f"{result.marker_records:,}"],
        ["snapshot anchors", str(result.anchors)],
        ["dropped / refused", f"{dropped} / {stats['refused']}"],
        ["compression", format_ratio(result.raw_bytes / result.segment_bytes)
         if result.segment_bytes else "-"],
        ["verify", verdict_line(result.verify)],
        ["replay parity", ("OK" if result.replay_ok else "FAILED") + f"  ({result.replay_detail})"],
        ["halted", stats["halt_reason"] or "no"],
    ]  # fmt: skip
    out = console()
    out.print()
    out.print("ringtape demo --nautilus summary", markup=False)
    emit(out, table(["what", "value"], rows, header=False))
    for f in result.verify.findings:
        for line in describe_finding(f):
            out.print(line, markup=False)
    out.print()
    out.print(f"replay parity: {'OK' if result.replay_ok else 'FAILED'}", markup=False)
    return EXIT_OK if result.ok else EXIT_FINDINGS
