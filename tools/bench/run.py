"""ringtape bench: the store side by side with multiprocessing.Queue, faster_fifo.Queue and a
bare shared-memory ring (the floor: tools/bench/baselines.py), in one run; JSON out.

Every channel moves the same messages to another process: a fixed-seed pool of topics and
JSON-like payloads of 128–256 bytes. ringtape gets ``(topic, payload, ts_init)``; the queues get
the tuple ``(topic, ts_init, payload)``; the bare ring packs the same three fields.

Sections of the JSON (a ``target`` and a ``met`` wherever the design gives a target):

``append_latency``
    Each call timed with ``perf_counter_ns`` around it, at a paced 100k calls/s (busy-wait to
    the next slot; a slot missed by more than one period is counted in ``late_slots`` and the
    schedule restarts from now, so there is never a catch-up burst). ``timer_overhead`` is the
    same measurement around an empty function of the same call shape: subtract it to get the
    call alone. ringtape runs with its writer (and its data-marker sidecar, when the store has
    one), once with ``ts_init`` passed by the caller (the kernel's normal case) and once with
    the store's clock.
``producer_cpu``
    CPU time (user + system, every thread: ``getrusage(RUSAGE_SELF)``) of the producing process
    per entry, over unpaced runs small enough that nothing waits for space, measured until the
    consumer has taken everything (so the feeder thread of ``multiprocessing.Queue`` is
    counted). ``loop_overhead`` is the same loop around an empty function.
``durable_throughput``
    N entries as fast as possible, timed until ``durable_seq()`` reaches the last one (zstd,
    xxh3, write and ``fdatasync`` included); for the baselines until the consumer process has
    received all N (no disk).
``append_to_durable``
    At a paced 10k/s with the default config: between appends ``durable_seq()`` is polled and
    every entry it covers is stamped with the time it became visible.
``idle_cpu``
    CPU of the store's child processes (writer, sidecar) over an idle window after ``open``.
``compression``
    Raw entry bytes against the bytes the segment files grew by, over the throughput run.
``anchors``
    ``anchor()`` on the kernel's thread beside a copy of the same bytes, appends while a 20 MB
    blob is written, blob compression and read speed (``tools/bench/anchors.py``).
``paced``
    Writer and sidecar CPU per entry at a paced 10k/50k/100k entries/s with data markers on,
    the append-to-durable percentiles, and the floor: a bare loop doing the same commits
    (``tools/bench/paced.py``).
``lifecycle``
    ``open()`` and ``seal()`` of runs back to back on one store, markers on
    (``tools/bench/lifecycle.py``).

Temporary runs live under ``./.bench-tmp/`` (so ``fdatasync`` reaches the real disk) and are
removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from ringtape.tools.arguments import bench_arguments
from ringtape.tools.bench.anchors import section_anchors
from ringtape.tools.bench.common import (
    BASELINE_NAMES,
    SCHEMA,
    TARGET_APPEND_NS,
    BenchOptions,
    MachineCpu,
    Plan,
    Run,
    make_messages,
)
from ringtape.tools.bench.durability import section_append_to_durable, section_idle
from ringtape.tools.bench.latency import section_append_latency
from ringtape.tools.bench.lifecycle import section_lifecycle
from ringtape.tools.bench.paced import section_paced
from ringtape.tools.bench.readback import section_readback
from ringtape.tools.bench.throughput import section_unpaced


def meta(options: BenchOptions, plan: Plan, work: Path) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for dist in ("ringtape", "faster-fifo", "numpy", "zstandard"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": options.quick,
        "seconds_scale": options.seconds,
        "seed": options.seed,
        "plan": asdict(plan),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "versions": versions,
        "work_dir": str(work),
        "gc_enabled": gc.isenabled(),
        "switch_interval_s": sys.getswitchinterval(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every judged figure of ``result`` in one flat list."""
    out: list[dict[str, Any]] = []

    def add(name: str, section: Any, key: str) -> None:
        if isinstance(section, dict) and "met" in section:
            met = section.get("met_detail", {}).get(key, section["met"])
            out.append(
                {"name": name, "value": section[key], "target": section["target"][key], "met": met}
            )

    def get(*path: str) -> Any:
        node: Any = result
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    for mode in ("ts_init_passed", "default_clock", "producers_threads", "varied_shapes"):
        for key in TARGET_APPEND_NS:
            add(f"append {key} ({mode})", get("append_latency", "ringtape", mode), key)
    cliff = get("append_latency", "ringtape", "varied_over_fixed")
    for key in ("p50_ns", "p99_ns"):
        add(f"varied shapes / fixed {key[:-3]}", cliff, key)
    for rate, row in (get("paced", "rates") or {}).items():
        out.append(
            {
                "name": f"writer+sidecar CPU us/entry at {int(rate) // 1000}k/s",
                "value": row["background_us_per_entry"],
                "target": row["target"]["background_us_per_entry"],
                "met": row["background_us_per_entry"] <= row["target"]["background_us_per_entry"],
            }
        )
        out.append(
            {
                "name": f"append to durable p99 at {int(rate) // 1000}k/s",
                "value": row["durable_lag"]["p99_ns"],
                "target": row["target"]["durable_lag_p99_ns"],
                "met": row["durable_lag"]["p99_ns"] <= row["target"]["durable_lag_p99_ns"],
            }
        )
    add("open() ms", get("lifecycle"), "open_ms")
    add("seal() ms", get("lifecycle"), "seal_ms")
    add("producer cpu", get("producer_cpu", "ringtape"), "us_per_entry")
    add("durable throughput", get("durable_throughput", "ringtape"), "entries_per_s")
    add(
        "durable throughput (session stream)",
        get("durable_throughput", "ringtape_session_stream"),
        "entries_per_s",
    )
    add("append to durable", get("append_to_durable", "latency"), "p99_ns")
    add("idle cpu", get("idle_cpu"), "percent_of_core")
    for size, figures in (get("anchors", "sizes") or {}).items():
        for key in figures.get("target", {}):
            add(f"anchor() {int(size) / 1e6:g} MB {key[:-3]}", figures, key)
    blobs = get("anchors", "blobs")
    add("blob compression ratio", blobs, "min_ratio")
    add("blob read MB/s", blobs, "read_snapshot_mb_per_s")
    during = get("anchors", "append_during_blob")
    if isinstance(during, dict) and "during_blob_write" in during:
        out.append(
            {
                "name": "append p99.9 during a blob write",
                "value": during["during_blob_write"]["p99_9_ns"],
                "target": during["target"]["p99_9_ns"],
                "met": during["met"],
            }
        )
    add("verify raw MB/s on one core", get("readback", "verify"), "raw_mb_per_s")
    add("dump entries/s into a pipe", get("readback", "dump"), "entries_per_s")
    jobs = get("readback", "verify_jobs")
    if isinstance(jobs, dict) and "cli_s_by_jobs" in jobs:
        by_jobs = jobs["cli_s_by_jobs"]
        out.append(
            {
                "name": f"verify --jobs 2 faster than --jobs 1 ({jobs['runs']} runs)",
                "value": by_jobs["2"],
                "target": by_jobs["1"],
                "met": jobs["met"],
            }
        )
    return out


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run every section and return the JSON-able result. A section that fails holds
    ``{"error": ...}`` (also listed in ``errors``) and the others still run.

    The baselines' consumers are ``multiprocessing`` spawn processes: a script that calls this
    needs the usual ``if __name__ == "__main__":`` guard (the ``ringtape`` command has it).
    """
    plan = Plan.from_options(options)

    def log(message: str) -> None:
        if options.progress:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    root = options.work_dir or Path.cwd() / ".bench-tmp"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    run = Run(plan, tmp, make_messages(options.seed), log)
    machine = MachineCpu.now()
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "meta": meta(options, plan, tmp),
        "payloads": run.messages.describe(),
    }
    steps: list[tuple[tuple[str, ...], Callable[[Run], dict[str, Any]]]] = [
        (("append_latency",), section_append_latency),
        (("producer_cpu", "durable_throughput", "compression"), section_unpaced),
        (("append_to_durable",), section_append_to_durable),
        (("idle_cpu",), section_idle),
        (("anchors",), section_anchors),
        (("paced",), section_paced),
        (("lifecycle",), section_lifecycle),
        (("readback",), section_readback),
    ]
    errors = []
    try:
        for keys, step in steps:
            try:
                out = step(run)
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
                log(f"{'/'.join(keys)} failed: {text}")
                errors.append({"sections": list(keys), "error": text})
                result.update({k: {"error": text} for k in keys})
                continue
            result.update(out if len(keys) > 1 else {keys[0]: out})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            root.rmdir()  # only when empty: another bench may be using it
    result["checks"] = checks(result)
    result["errors"] = errors
    load = MachineCpu.now().since(machine)
    result["machine"] = {
        **load,
        "note": "other_processes_cores: CPU used by processes outside this benchmark during the"
        f" run, in cores of {os.cpu_count()}; above ~0.2 the figures are pessimistic",
    }
    if load["other_processes_cores"] > 0.2:
        log(f"warning: other processes used {load['other_processes_cores']:.2f} cores meanwhile")
    result["elapsed_s"] = load["wall_s"]
    return result


def _num(value: Any, scale: float, spec: str) -> str:
    return format(value / scale, spec) if isinstance(value, int | float) else "-"


def _met(value: Any) -> str:
    return "" if value is None else ("yes" if value else "NO")


def format_table(result: dict[str, Any]) -> str:
    """A short human summary: ringtape beside each baseline, the target and whether it is met."""
    lat = result.get("append_latency", {})
    passed = lat.get("ringtape", {}).get("ts_init_passed") or {}
    clock = lat.get("ringtape", {}).get("default_clock") or {}
    timer = lat.get("timer_overhead", {}).get("record_call") or {}
    cpu = result.get("producer_cpu", {})
    thr = result.get("durable_throughput", {})
    dur = result.get("append_to_durable", {}).get("latency") or {}
    idle = result.get("idle_cpu", {})
    comp = result.get("compression", {})
    units = {"us": (1e3, ".2f"), "ms": (1e6, ".2f"), "n": (1, ",.0f"), "x": (1, ".2f")}
    rows = [["", "ringtape", *BASELINE_NAMES, "target", "met"]]

    def add(label: str, own: Any, key: str, unit: str, section: Any = None) -> None:
        scale, spec = units[unit]
        own = own or {}
        base = (section or {}).get("baselines", {})
        values = [own, *(base.get(name) or {} for name in BASELINE_NAMES)]
        target = own.get("target", {}).get(key)
        met = own.get("met_detail", {}).get(key, own.get("met")) if target else None
        cells = [_num(v.get(key), scale, spec) for v in values]
        rows.append([label, *cells, _num(target, scale, spec) if target else "", _met(met)])

    for key in ("p50_ns", "p99_ns", "p99_9_ns", "max_ns"):
        add(f"append {key[:-3]} (us)", passed, key, "us", lat)
    add("  own clock p50 (us)", clock, "p50_ns", "us")
    add("  own clock p99 (us)", clock, "p99_ns", "us")
    add("  timer overhead p50 (us)", timer, "p50_ns", "us")
    add("producer CPU (us/entry)", cpu.get("ringtape"), "us_per_entry", "x", cpu)
    add("entries/s (ringtape durable)", thr.get("ringtape"), "entries_per_s", "n", thr)
    add("  on session stream", thr.get("ringtape_session_stream"), "entries_per_s", "n")
    add("append->durable p50 (ms)", dur, "p50_ns", "ms")
    add("append->durable p99 (ms)", dur, "p99_ns", "ms")
    add("idle writer+sidecar (% core)", idle, "percent_of_core", "x")
    add("compression ratio", comp, "ratio", "x")
    add("raw MB/s to disk", comp, "raw_mb_per_s", "x")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    machine = result.get("machine", {})
    if "other_processes_cores" in machine:
        lines.append(
            f"other processes used {machine['other_processes_cores']:.2f} cores during the"
            f" {machine['wall_s']:.0f} s run (above ~0.2 the figures are pessimistic)"
        )
    lines += _paced_lines(result.get("paced", {}))
    life = result.get("lifecycle", {})
    if "open_ms" in life:
        lines.append(
            f"open() median {life['open_ms']:.1f} ms, seal() median {life['seal_ms']:.1f} ms,"
            f" markers on [{_met(life['met'])}]; back to back (children still starting):"
            f" open() {life['back_to_back_open_ms']:.1f} ms, seal()"
            f" {life['back_to_back_seal_ms']:.1f} ms"
        )
    lines += _anchor_lines(result.get("anchors", {}))
    lines += _readback_lines(result.get("readback", {}))
    lines += [f"error in {'/'.join(e['sections'])}: {e['error']}" for e in result.get("errors", [])]
    return "\n".join(lines)


def _paced_lines(paced: dict[str, Any]) -> list[str]:
    lines = []
    for rate, r in paced.get("rates", {}).items():
        cpu = r["cpu_us_per_entry"]
        lines.append(
            f"paced {int(rate) // 1000}k/s: writer {cpu['writer']:.2f} + sidecar"
            f" {cpu.get('sidecar', 0.0):.2f} us/entry (floor {r['floor']['us_per_entry']:.2f},"
            f" back to back {r['floor']['us_per_entry_back_to_back']:.2f},"
            f" {r['entries_per_commit']:.0f} entries/commit); durable lag p50"
            f" {r['durable_lag']['p50_ns'] / 1e6:.2f} ms p99 {r['durable_lag']['p99_ns'] / 1e6:.2f}"
            f" ms (the disk's fdatasync alone p99"
            f" {r['floor']['fdatasync_wall']['p99_ns'] / 1e6:.2f} ms) [{_met(r['met'])}]"
        )
    return lines


def _readback_lines(readback: dict[str, Any]) -> list[str]:
    if "verify" not in readback:
        return []
    r, v, d = readback["run"], readback["verify"], readback["dump"]
    jobs = readback["verify_jobs"]["cli_s_by_jobs"]
    return [
        f"verify of a demo run ({r['entries']:,} entries, {r['marker_records']:,} marker records,"
        f" {r['raw_bytes'] / 1e6:.1f} MB raw): {v['in_process_s']:.3f} s in process,"
        f" {v['raw_mb_per_s']:.0f} MB/s [{_met(v['met'])}]; {v['cli_s']:.3f} s through the"
        f" command, start-up included ({v['cli_raw_mb_per_s']:.0f} MB/s)",
        f"verify of {readback['verify_jobs']['runs']} runs: --jobs 1 {jobs['1']:.2f} s,"
        f" --jobs 2 {jobs['2']:.2f} s [{_met(readback['verify_jobs']['met'])}]",
        f"dump into a pipe: {d['entries']:,} entries in {d['cli_s']:.2f} s,"
        f" {d['entries_per_s']:,.0f}/s [{_met(d['met'])}]; --since the last tenth:"
        f" {d['since_last_tenth_entries']:,} entries in {d['since_last_tenth_s']:.2f} s",
    ]


def _anchor_lines(anchors: dict[str, Any]) -> list[str]:
    lines = []
    for size, f in anchors.get("sizes", {}).items():
        lines.append(
            f"anchor() {int(size) / 1e6:g} MB: median {f['median_ns'] / 1e6:.3f} ms, max"
            f" {f['max_ns'] / 1e6:.3f} ms; copy of the same bytes {f['copy_median_ns'] / 1e6:.3f}"
            f" ms; first call unprepared {f['first_call_ns_default_reserve'] / 1e6:.2f} ms"
            f" [{_met(f['met'])}]"
        )
    blobs = anchors.get("blobs", {})
    if "min_ratio" in blobs:
        lines.append(
            f"blobs: >= {blobs['min_ratio']:.1f}x smaller; read back at"
            f" {blobs['read_snapshot_mb_per_s']:,.0f} MB/s [{_met(blobs['met'])}]"
        )
    during = anchors.get("append_during_blob", {})
    if "during_blob_write" in during:
        d, q = during["during_blob_write"], during["no_blob_in_progress"]
        lines.append(
            f"append during a 20 MB blob write: p99 {d['p99_ns'] / 1e3:.1f} us, p99.9"
            f" {d['p99_9_ns'] / 1e3:.1f} us (none in progress: p99 {q['p99_ns'] / 1e3:.1f} us,"
            f" p99.9 {q['p99_9_ns'] / 1e3:.1f} us) [{_met(during['met'])}]"
        )
    return lines


def bench_main(args: argparse.Namespace) -> int:
    """Run ``ringtape bench`` from parsed arguments: JSON to ``--out`` or stdout, a table to
    stderr. Exit 0, or 1 when a section could not run (targets missed are not an error)."""
    options = BenchOptions(quick=args.quick, seconds=args.seconds, seed=args.seed)
    out = None
    if args.out:  # opened first: a bad path must not cost a whole run's figures
        try:
            out = open(args.out, "w")  # noqa: SIM115 - closed below, after the run
        except OSError as exc:
            print(f"ringtape bench: --out {args.out}: {exc.strerror}", file=sys.stderr)
            return 2
    result = run_bench(options)
    if not args.no_markers:
        from ringtape.tools.bench.markers import run_marker_bench  # imports tools.bench itself

        try:
            result["data_markers"] = run_marker_bench(quick=args.quick)
        except Exception as exc:  # a failed section is reported, the rest still stands
            result["data_markers"] = {"error": f"{type(exc).__name__}: {exc}"}
            result["errors"].append({"sections": ["data_markers"], "error": str(exc)})
    if not args.no_nautilus:
        result["nautilus"] = _nautilus_section(args, result)
    text = json.dumps(result, indent=2)
    if out is not None:
        with out:
            out.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    print(format_table(result), file=sys.stderr)
    markers = result.get("data_markers", {}).get("paced", {})
    if "observe_data" in markers:
        lat = markers["observe_data"]
        print(
            f"observe_data at {markers.get('achieved_rate_per_s', 0):,.0f}/s with entries"
            f" running: p50 {lat['p50_ns'] / 1e3:.2f} us, p99 {lat['p99_ns'] / 1e3:.2f} us;"
            f" dropped {markers.get('dropped', '?')}",
            file=sys.stderr,
        )
    if "nautilus" in result:
        from ringtape.tools.bench.nautilus import format_nautilus

        print(format_nautilus(result["nautilus"]), file=sys.stderr)
    return 1 if result["errors"] else 0


def _nautilus_section(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """The NautilusTrader section (``tools/bench/nautilus.py``) when nautilus_trader is there."""
    if importlib.util.find_spec("nautilus_trader") is None:
        return {"skipped": "nautilus_trader is not installed (pip install ringtape[nautilus])"}
    from ringtape.tools.bench.nautilus import run_nautilus_bench

    def log(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    try:
        return run_nautilus_bench(quick=args.quick, scale=args.seconds, log=log)
    except Exception as exc:  # a failed section is reported, the rest still stands
        text = f"{type(exc).__name__}: {exc}"
        result["errors"].append({"sections": ["nautilus"], "error": text})
        return {"error": text}


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m ringtape.tools.bench.run [--quick] [--out FILE]``."""
    description = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="ringtape bench", description=description)
    bench_arguments(parser)
    return bench_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
