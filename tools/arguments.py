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
Print the entries of a run as JSON lines, in seq order: seq, ts_init, ts_publish, topic,
payload_type, correlation_id, causation_id, encoding and payload (the JSON value, as recorded,
when the payload is UTF-8 JSON, else base64). Every frame is verified as it is read; the dump
stops at the first damage with exit status 1. RUN is a run directory, or a base directory
followed by a run id or 'latest'.

Times for --since/--until are ns since the UNIX epoch or ISO 8601 (UTC unless an offset is
given); both bounds are inclusive and apply to ts_init. Frames whose headers show they hold
no wanted entry are skipped unread. A progress bar is drawn on stderr when it is a terminal.
exit status: 0, 1 when the dump stopped at damage, 2 when it could not run"""
DUMP_EPILOG: Final = """\
examples:
  ringtape dump RUN | head -5
  ringtape dump ./ringtape-demo latest --topic 'ringtape.*'
  ringtape dump RUN --topic 'events.order.*' --from-seq 1000 --to-seq 2000
  ringtape dump RUN --since 2026-11-25T09:30:00Z --until 2026-11-25T09:31:00Z
  ringtape dump RUN --markers | jq 'select(.kind == "gap")'"""


RUN_HELP: Final = "a run directory, or a base or instance directory followed by RUN_ID"
RUN_ID_HELP: Final = "a run id, or 'latest' (the run that started last), when RUN is a base dir"


def run_arguments(parser: argparse.ArgumentParser) -> None:
    """``RUN [RUN_ID]``: what every command that reads one run takes."""
    parser.add_argument("run", metavar="RUN", help=RUN_HELP)
    parser.add_argument("run_id", metavar="RUN_ID", nargs="?", help=RUN_ID_HELP)


def topic_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--topic",
        metavar="GLOB",
        action="append",
        help="only topics matching GLOB (fnmatch: *, ?, [..]); repeat for several",
    )


def time_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=parse_time, metavar="TIME", help="ts_init >= TIME")
    parser.add_argument("--until", type=parse_time, metavar="TIME", help="ts_init <= TIME")


def dump_arguments(parser: argparse.ArgumentParser) -> None:
    run_arguments(parser)
    parser.add_argument(
        "--from-seq",
        type=seq_arg,
        default=None,
        metavar="SEQ",
        help="first seq (default: the first one the run still holds)",
    )
    parser.add_argument("--to-seq", type=seq_arg, metavar="SEQ", help="last seq (inclusive)")
    topic_argument(parser)
    time_arguments(parser)
    parser.add_argument(
        "--markers",
        action="store_true",
        help="dump the marker stream instead (seq filters apply to marker_seq)",
    )


# -- export ------------------------------------------------------------------------------------
EXPORT_HELP: Final = "write runs as Parquet, Arrow or CSV (a hive-partitioned dataset for a base)"
EXPORT_DESCRIPTION: Final = """\
Export the entries and the marker records of PATH: one run (a run directory, or a base
directory and a run id or 'latest') becomes OUT/<run id>.entries.<ext> and
OUT/<run id>.markers.<ext>; a base or instance directory becomes one hive-partitioned dataset
per stream, OUT/entries/instance=<id>/run=<id>/part-0.<ext> (and OUT/markers/...), which
DuckDB, Polars and Spark read as one table. Every frame is checked; a damaged run is left out
(exit status 1). Nothing is overwritten. Needs pyarrow (pip install 'ringtape[arrow]').

Columns: seq, ts_init, ts_publish (u64 ns), topic, payload_type (dictionary strings), payload
(binary; in CSV the UTF-8 text, or base64 as its encoding column says), correlation_id and
causation_id (16 bytes; UUID strings in CSV).
exit status: 0, 1 when a run was damaged, 2 when it could not run"""
EXPORT_EPILOG: Final = """\
examples:
  ringtape export ./ringtape-demo latest --out /tmp/out
  ringtape export /data/ringtape --format parquet --out /data/lake
  duckdb -c "SELECT topic, count(*) FROM read_parquet('/data/lake/entries/**/*.parquet',
             hive_partitioning=true) GROUP BY topic"""


def export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="a run directory, or a base or instance dir")
    parser.add_argument("run_id", metavar="RUN_ID", nargs="?", help=RUN_ID_HELP)
    parser.add_argument(
        "--format", choices=("parquet", "arrow", "csv"), default="parquet", help="(parquet)"
    )
    parser.add_argument("--out", metavar="DIR", required=True, help="where the files go")
    parser.add_argument("--no-markers", action="store_true", help="the entries only")


# -- tail --------------------------------------------------------------------------------------
TAIL_HELP: Final = "print a run's entries as they become durable (--follow a live run)"
TAIL_DESCRIPTION: Final = """\
Print the last --lines entries of a run as JSON lines (the format of dump), and with --follow
go on printing entries as the writer makes them durable, following segment rolls, until the run
is sealed. Only whole, checked frames are printed, and never past what is durable: the writer
reports its durable seq in writer.lock about once a second, so a followed run's output trails
the writer by up to about a second. If the writer dies without the run being sealed, tail stops
at the last seq it reported durable (exit status 1; `ringtape recover` seals the run).

RUN is a run directory, or a base directory followed by a run id or 'latest' (with --follow and
no RUN_ID, a base directory means the run that started last).
exit status: 0, 1 at damage or when the writer died unsealed, 2 when it could not run"""
TAIL_EPILOG: Final = """\
examples:
  ringtape tail ./ringtape-demo latest
  ringtape tail /data/ringtape latest --follow --topic 'events.order.*' | jq .payload"""


def tail_arguments(parser: argparse.ArgumentParser) -> None:
    run_arguments(parser)
    parser.add_argument("-f", "--follow", action="store_true", help="wait for new entries")
    parser.add_argument(
        "-n", "--lines", type=int, default=10, metavar="N", help="entries to start with (10)"
    )
    topic_argument(parser)
    parser.add_argument(
        "--poll", type=positive_number, default=0.1, metavar="S", help="seconds between looks (0.1)"
    )


# -- stats -------------------------------------------------------------------------------------
STATS_HELP: Final = "per-topic counts, bytes and rates, ts_publish - ts_init percentiles"
STATS_DESCRIPTION: Final = """\
Summarise a run's entries: per topic the entries, payload bytes, share and rate (entries per
second of the run's ts_init span), and the percentiles of ts_publish - ts_init (how long an
entry waited between the kernel's clock and the writer taking it). --plot FILE.png draws the
latency histogram and the entry rate over time (needs matplotlib: pip install
'ringtape[plot]'). Filters as for dump.
exit status: 0, 1 when the run is damaged (the stats cover what came before), 2 could not run"""
STATS_EPILOG: Final = """\
examples:
  ringtape stats ./ringtape-demo latest
  ringtape stats RUN --topic 'events.*' --json | jq .topics
  ringtape stats RUN --plot run.png"""


def stats_arguments(parser: argparse.ArgumentParser) -> None:
    run_arguments(parser)
    topic_argument(parser)
    time_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the stats as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="draw histogram and rate to FILE.png")


# -- replay ------------------------------------------------------------------------------------
REPLAY_HELP: Final = "replay a sealed run into the reference cache and show what it rebuilt"
REPLAY_DESCRIPTION: Final = """\
Replay a sealed run the way a restarting kernel does: restore the newest valid snapshot anchor
at or before --to-seq (default: the whole run), then apply the entries after it in seq order,
into the reference cache (orders, positions, accounts). Prints the anchor used, the entries
applied and what the cache holds. Every frame is checked on the way.
exit status: 0, 1 when the run is damaged, 2 when it cannot be replayed (running, quarantined)"""
REPLAY_EPILOG: Final = """\
examples:
  ringtape replay ./ringtape-demo latest
  ringtape replay RUN --to-seq 5000 --json | jq .cache"""


def replay_arguments(parser: argparse.ArgumentParser) -> None:
    run_arguments(parser)
    parser.add_argument("--to-seq", type=seq_arg, metavar="SEQ", help="replay up to SEQ")
    parser.add_argument("--json", action="store_true", help="print what was rebuilt as JSON")


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
    "tail": Command(TAIL_HELP, TAIL_DESCRIPTION, TAIL_EPILOG, tail_arguments),
    "stats": Command(STATS_HELP, STATS_DESCRIPTION, STATS_EPILOG, stats_arguments),
    "export": Command(EXPORT_HELP, EXPORT_DESCRIPTION, EXPORT_EPILOG, export_arguments),
    "replay": Command(REPLAY_HELP, REPLAY_DESCRIPTION, REPLAY_EPILOG, replay_arguments),
    "recover": Command(RECOVER_HELP, RECOVER_DESCRIPTION, RECOVER_EPILOG, recover_arguments),
    "prune": Command(PRUNE_HELP, PRUNE_DESCRIPTION, PRUNE_EPILOG, prune_arguments),
    "demo": Command(DEMO_HELP, DEMO_DESCRIPTION, DEMO_EPILOG, demo_arguments),
    "bench": Command(BENCH_HELP, BENCH_DESCRIPTION, BENCH_EPILOG, bench_arguments),
}
