"""The grammar of the ``ringtape`` command: every subcommand's help, description, examples and
arguments, and the argument types they share.

This module is all that ``ringtape --help`` and ``ringtape COMMAND --help`` import: the work of a
command lives in ``tools/commands/<name>.py`` and is imported only when that command runs, so
that no command pays for another's imports (the benchmark's above all).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, NamedTuple

# Exit statuses of every command.
EXIT_OK: Final = 0
EXIT_FINDINGS: Final = 1
EXIT_ERROR: Final = 2

DEFAULT_DEMO_DIR: Final = "ringtape-demo"
# Command-line names of the retention modes, and the RetentionMode kind each stands for.
RETENTION_MODES: Final = {"full": "Full", "bounded": "Bounded", "snapshot": "SnapshotAnchored"}
BENCH_SEED: Final = 20_240_611


class Command(NamedTuple):
    help: str
    description: str
    epilog: str
    arguments: Callable[[argparse.ArgumentParser], None]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def positive_number(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def default_jobs() -> int:
    """The number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# -- verify ------------------------------------------------------------------------------------
VERIFY_HELP: Final = "check checksums, chains, sequences, manifests, anchors and markers"
VERIFY_DESCRIPTION: Final = """\
Verify everything under PATH: a base directory, an instance directory, a run directory or
a single segment file. Every frame is checked (header and data checksums, the frame chain,
decompression, every entry record), then each run as a whole (seq continuity across frames
and segments, the manifest against the data, RunStarted/RunEnded, snapshot anchors, the
marker stream, leftover and unexpected files). Nothing is ever written.

A torn tail in a run whose writer is still running is an append in progress, not a finding.

exit status: 0 intact, 1 findings, 2 could not run (no such path, permission denied, usage)"""
VERIFY_EPILOG: Final = """\
examples:
  ringtape verify ./ringtape-demo
  ringtape verify ./ringtape-demo/<instance>/<run> --jobs 2
  ringtape verify events-000003.seg
  ringtape verify /data/ringtape --json | jq '.findings[] | .kind'"""


def verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="base dir, instance dir, run dir or segment")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--jobs",
        type=positive_int,
        metavar="N",
        help="segments verified in parallel (default: the number of cores, "
        f"{default_jobs()}, when there are 64 MiB or more to read, else 1)",
    )


# -- inspect -----------------------------------------------------------------------------------
INSPECT_HELP: Final = "list runs: status, times, entries, size, ratio, anchors, markers"
INSPECT_DESCRIPTION: Final = """\
Describe the runs under PATH (a base directory, an instance directory, a run directory or a
segment file): run id, parent run, status, start and end time (UTC), entries, segments,
bytes on disk, compression ratio, snapshot anchors and marker records by kind.

inspect reads frame headers only; it does not verify (use `ringtape verify` for that).
exit status: 0, or 2 when PATH cannot be read or holds no runs"""
INSPECT_EPILOG: Final = """\
examples:
  ringtape inspect ./ringtape-demo
  ringtape inspect ./ringtape-demo/<instance> --json | jq '.runs[] | {run_id, status, entries}'"""


def inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="base dir, instance dir, run dir or segment")
    parser.add_argument("--json", action="store_true", help='print {"runs": [...]} as JSON')


# -- dump --------------------------------------------------------------------------------------


def parse_time(text: str) -> int:
    """ns since the UNIX epoch, from an integer or an ISO 8601 time (naive means UTC)."""
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither ns since the epoch nor an ISO 8601 time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def seq_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a sequence number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"sequence numbers start at 1, got {value}")
    return value


DUMP_HELP: Final = "print a run's entries (or marker records) as JSON lines"
DUMP_DESCRIPTION: Final = """\
Print the entries of the run directory RUN as JSON lines, in seq order: seq, ts_init,
ts_publish, topic, payload_type, correlation_id, causation_id, encoding and payload (the JSON
value when the payload is UTF-8 JSON, else base64). Every frame is verified as it is read;
the dump stops at the first damage with exit status 1.

Times for --since/--until are ns since the UNIX epoch or ISO 8601 (UTC unless an offset is
given); both bounds are inclusive and apply to ts_init.
exit status: 0, 1 when the dump stopped at damage, 2 when it could not run"""
DUMP_EPILOG: Final = """\
examples:
  ringtape dump RUN | head -5
  ringtape dump RUN --topic 'events.order.*' --from-seq 1000 --to-seq 2000
  ringtape dump RUN --since 2026-11-25T09:30:00Z --until 2026-11-25T09:31:00Z
  ringtape dump RUN --markers | jq 'select(.kind == "gap")'"""


def dump_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run directory")
    parser.add_argument(
        "--from-seq",
        type=seq_arg,
        default=None,
        metavar="SEQ",
        help="first seq (default: the first one the run still holds)",
    )
    parser.add_argument("--to-seq", type=seq_arg, metavar="SEQ", help="last seq (inclusive)")
    parser.add_argument(
        "--topic", metavar="GLOB", help="only topics matching GLOB (fnmatch: *, ?, [..])"
    )
    parser.add_argument("--since", type=parse_time, metavar="TIME", help="ts_init >= TIME")
    parser.add_argument("--until", type=parse_time, metavar="TIME", help="ts_init <= TIME")
    parser.add_argument(
        "--markers",
        action="store_true",
        help="dump the marker stream instead (seq filters apply to marker_seq)",
    )


# -- recover -----------------------------------------------------------------------------------
RECOVER_HELP: Final = "seal or quarantine runs a dead writer left running"
RECOVER_DESCRIPTION: Final = """\
Run the recovery sweep over every instance under BASE_DIR (or only --instance ID): each run
whose manifest says running and whose writer is gone is sealed (its torn tail cut and kept
beside it as <segment>.torn) or, if it is damaged before its tail, quarantined and left
exactly as found. Runs with a live writer are not touched. Prints what it did.

exit status: 0 done, 1 a run was quarantined or could not be recovered, 2 could not run"""
RECOVER_EPILOG: Final = """\
examples:
  ringtape recover ./ringtape-demo
  ringtape recover /data/ringtape --instance 5b0f3c9e-8a51-4c1e-9d7a-2f6b1e0c4d3a --json"""


def recover_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base_dir", metavar="BASE_DIR", help="the store's base directory")
    parser.add_argument("--instance", metavar="ID", help="only this instance (a UUID)")
    parser.add_argument("--json", action="store_true", help="print what was done as JSON")


# -- prune -------------------------------------------------------------------------------------
PRUNE_HELP: Final = "reclaim sealed runs per the retention mode (--dry-run to preview)"
PRUNE_DESCRIPTION: Final = """\
Reclaim disk under BASE_DIR per a retention mode: full keeps everything; bounded keeps the
newest N sealed runs (--keep-last N) and the newest restore point; snapshot keeps the newest
restore point's anchor and what follows it. Running, quarantined and live-parent runs are never
touched. Without --mode the mode is the retention=... feature flag of each instance's newest
manifest. --dry-run prints the plan and changes nothing.

exit status: 0 done, 2 could not run (no mode, bounded without --keep-last, bad path)"""
PRUNE_EPILOG: Final = """\
examples:
  ringtape prune ./ringtape-demo --dry-run --mode bounded --keep-last 3
  ringtape prune /data/ringtape --instance 5b0f3c9e-8a51-4c1e-9d7a-2f6b1e0c4d3a
  ringtape prune /data/ringtape --mode snapshot --json"""


def prune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base_dir", metavar="BASE_DIR", help="the store's base directory")
    parser.add_argument("--instance", metavar="ID", help="only this instance (a UUID)")
    parser.add_argument(
        "--mode",
        choices=sorted(RETENTION_MODES),
        help="retention mode (default: the newest manifest's)",
    )
    parser.add_argument(
        "--keep-last", type=positive_int, metavar="N", help="sealed runs bounded mode keeps"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--json", action="store_true", help="print the plan and result as JSON")


# -- demo --------------------------------------------------------------------------------------


def seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 24 * 3600:
        raise argparse.ArgumentTypeError(f"seconds must be in (0, 86400], got {text}")
    return value


DEMO_HELP: Final = "simulated trading session through the whole pipeline, then verify and replay"
DEMO_DESCRIPTION: Final = """\
Run a simulated trading kernel for --seconds: quotes and trades for three instruments, a
strategy sending orders and receiving fills, a snapshot anchor every --anchor-every seconds.
It captures through the real pipeline (shared-memory ring, writer process, data-marker
sidecar with one high-fidelity instrument), seals the run, verifies it, replays it into a
fresh cache and checks it equals the live one, then prints a summary: entries, rate, append
latency percentiles, durable lag, compression ratio and disk bytes.

exit status: 0 verified and replayed equal, 1 verify findings or a replay mismatch or a halt,
2 could not run"""
DEMO_EPILOG: Final = """\
With --nautilus, it captures a NautilusTrader backtest instead (its EMACross example on
synthetic AUD/USD quotes, through ringtape.nautilus.RingtapeCapture), verifies the run and
replays it into a fresh NautilusTrader cache, which must equal the kernel's at the seal.

examples:
  ringtape demo
  ringtape demo --seconds 30 --base-dir /tmp/ringtape-demo
  ringtape demo --seconds 3 --json | jq .append_latency_ns
  ringtape demo --nautilus --quotes 50000"""


def demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=seconds_arg, default=10.0, metavar="N", help="capture for N s (10)"
    )
    parser.add_argument(
        "--base-dir",
        default=DEFAULT_DEMO_DIR,
        metavar="DIR",
        help=f"where runs go (default: ./{DEFAULT_DEMO_DIR})",
    )
    parser.add_argument("--seed", type=int, default=7, help="session seed (default 7)")
    parser.add_argument(
        "--anchor-every",
        type=seconds_arg,
        default=2.0,
        metavar="S",
        help="seconds between snapshot anchors (default 2)",
    )
    parser.add_argument(
        "--jobs", type=positive_int, metavar="N", help="verify jobs (default: as verify's)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--nautilus",
        action="store_true",
        help="capture a real NautilusTrader backtest instead (needs ringtape[nautilus])",
    )
    parser.add_argument(
        "--quotes",
        type=positive_int,
        metavar="N",
        help="with --nautilus: quotes in the backtest (default 20,000)",
    )


# -- bench ---------------------------------------------------------------------------------------
BENCH_HELP: Final = "ringtape against multiprocessing.Queue and faster-fifo, JSON out"
BENCH_DESCRIPTION: Final = """\
Measure the pipeline side by side with multiprocessing.Queue, faster_fifo.Queue and a bare
shared-memory ring (the floor of what Python can do), in one run: append latency, producer
CPU, durable throughput, append-to-durable lag, idle CPU, compression and the data-marker
lane; with nautilus_trader installed, what capturing a real NautilusTrader backtest costs
its trading thread. Writes JSON (to --out, or stdout) and a table to stderr."""
BENCH_EPILOG: Final = """\
examples:
  ringtape bench --quick
  ringtape bench --out bench.json"""


def bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a smoke run: small counts, ~10 s")
    parser.add_argument("--out", metavar="FILE", help="write the JSON here (default: stdout)")
    parser.add_argument(
        "--seconds",
        type=positive_number,
        default=1.0,
        metavar="SCALE",
        help="scale every duration and entry count by SCALE (default 1.0)",
    )
    parser.add_argument("--seed", type=int, default=BENCH_SEED, help="payload seed")
    parser.add_argument(
        "--no-markers",
        action="store_true",
        help="skip the data-marker benchmark (observe_data at 200k/s, the sidecar's top rate)",
    )
    parser.add_argument(
        "--no-nautilus",
        action="store_true",
        help="skip the NautilusTrader benchmark (run when nautilus_trader is installed)",
    )


# The subcommands in the order ``ringtape --help`` lists them.
COMMANDS: Final[dict[str, Command]] = {
    "verify": Command(VERIFY_HELP, VERIFY_DESCRIPTION, VERIFY_EPILOG, verify_arguments),
    "inspect": Command(INSPECT_HELP, INSPECT_DESCRIPTION, INSPECT_EPILOG, inspect_arguments),
    "dump": Command(DUMP_HELP, DUMP_DESCRIPTION, DUMP_EPILOG, dump_arguments),
    "recover": Command(RECOVER_HELP, RECOVER_DESCRIPTION, RECOVER_EPILOG, recover_arguments),
    "prune": Command(PRUNE_HELP, PRUNE_DESCRIPTION, PRUNE_EPILOG, prune_arguments),
    "demo": Command(DEMO_HELP, DEMO_DESCRIPTION, DEMO_EPILOG, demo_arguments),
    "bench": Command(BENCH_HELP, BENCH_DESCRIPTION, BENCH_EPILOG, bench_arguments),
}
