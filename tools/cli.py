"""``ringtape``: the command line (verify, inspect, dump, recover, prune, demo, bench).

Each subcommand lives in its own module (``tools/cli_<name>.py``) exposing ``HELP``,
``DESCRIPTION``, ``EPILOG``, ``add_arguments(parser)`` and ``run(args) -> int``; this module
only builds the parser from :data:`COMMANDS` and turns expected failures into one line on
stderr (see ``tools/cli_common.py`` for the exit statuses).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Final

from storage.manifest import ManifestError
from storage.reader import CorruptionError
from tools import (
    bench,
    cli_demo,
    cli_dump,
    cli_inspect,
    cli_prune,
    cli_recover,
    cli_verify,
)
from tools.cli_common import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, CliError

COMMANDS: Final[dict[str, ModuleType]] = {
    "verify": cli_verify,
    "inspect": cli_inspect,
    "dump": cli_dump,
    "recover": cli_recover,
    "prune": cli_prune,
    "demo": cli_demo,
}

DESCRIPTION: Final = """\
ringtape records what a trading kernel does, durably, and proves later that the record is
whole. These commands check, describe, read, recover and prune what it wrote.

exit status: 0 ok, 1 findings (damage found, a check failed), 2 could not run"""
EPILOG: Final = """\
examples:
  ringtape demo                         # a ~10 s simulated session, then verify and replay
  ringtape verify ./ringtape-demo       # check every run under a base directory
  ringtape inspect ./ringtape-demo      # list the runs
  ringtape dump RUN_DIR | head          # read entries as JSON lines
Run `ringtape COMMAND --help` for a command's options and examples."""


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error format of every other failure."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, like every other failure; `--help` shows the usage.
        print(f"{self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def _add_bench(sub: argparse._SubParsersAction[_Parser]) -> None:
    parser = sub.add_parser(
        "bench",
        help="ringtape against multiprocessing.Queue and faster-fifo, JSON out",
        description=(bench.__doc__ or "").split("\n\n")[0],
        epilog="examples:\n  ringtape bench --quick\n  ringtape bench --out bench.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_bench_arguments(parser)
    parser.set_defaults(handler=bench.bench_main)


def build_parser() -> argparse.ArgumentParser:
    """The ``ringtape`` parser with every subcommand."""
    parser = _Parser(
        prog="ringtape",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    for name, module in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.DESCRIPTION,
            epilog=module.EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(handler=module.run)
    _add_bench(sub)  # its options and its run function are tools/bench.py's
    return parser


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush does
    not complain (the recipe in the Python docs, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _dispatch(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        code = run(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # `ringtape dump RUN | head`: the reader has what it wanted
        _quiet_stdout()
        return EXIT_OK
    except CliError as exc:
        print(f"ringtape: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except CorruptionError as exc:
        print(f"ringtape: stopped at damage: {exc.finding}", file=sys.stderr)
        return EXIT_FINDINGS
    except ManifestError as exc:
        print(f"ringtape: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ringtape: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ringtape: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ringtape`` console script; returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="ringtape: %(name)s: %(message)s")
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not args_list:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    return _dispatch(handler, args)


if __name__ == "__main__":
    sys.exit(main())
