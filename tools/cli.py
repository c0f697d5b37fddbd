"""``ringtape``: the command line (verify, inspect, dump, recover, prune, demo, bench).

The grammar (each subcommand's help, examples and arguments) is ``tools/arguments.py``; the work
of subcommand ``NAME`` is ``tools/commands/NAME.py``, which exposes ``run(args) -> int`` and is
imported only when that subcommand runs. This module builds the parser and turns expected
failures into one line on stderr (exit statuses: ``tools/arguments.py``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Final

import ringtape
from ringtape.tools.arguments import COMMANDS, EXIT_ERROR, EXIT_FINDINGS, EXIT_OK

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


def build_parser() -> argparse.ArgumentParser:
    """The ``ringtape`` parser with every subcommand (no subcommand's work is imported)."""
    parser = _Parser(
        prog="ringtape",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ringtape {ringtape.__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    for name, command in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=command.help,
            description=command.description,
            epilog=command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.arguments(p)
        p.set_defaults(command=name)
    return parser


def load_command(name: str) -> Callable[[argparse.Namespace], int]:
    """The ``run`` function of subcommand ``name`` (imports its module)."""
    module = importlib.import_module(f"ringtape.tools.commands.{name}")
    run: Callable[[argparse.Namespace], int] = module.run
    return run


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush does
    not complain (the recipe in the Python docs, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _dispatch(name: str, args: argparse.Namespace) -> int:
    run = load_command(name)
    # Imported with the command (every command reads runs); named here for the except clauses.
    from ringtape.storage.read.reader import CorruptionError
    from ringtape.storage.run.manifest import ManifestError
    from ringtape.tools.common import CliError

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
    except SystemExit as exc:  # --help, --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    name = getattr(args, "command", None)
    if name is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    return _dispatch(name, args)


if __name__ == "__main__":
    sys.exit(main())
