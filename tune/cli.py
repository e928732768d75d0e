"""The `psec tune` subcommand. `pipeline/cli.py` adds it with `add_parser(commands)`.

    psec tune SEARCH.yaml [--scale smoke|paper] [--store URI] [--resume] [--address A]
                          [--results docs/RESULTS.md] [--table-only] [--cpus N]

Runs (or, with --resume, continues) the search and prints a summary; with --results it
then rewrites the search's section of that Markdown file and its PNG plots from the
store's results table. --table-only skips the search and only rewrites the section (no
Ray is started unless the section has an α(s)-over-one-episode plot to roll out).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from library.store import DEFAULT_URI
from pipeline.runtime import add_cpus_option

SCALES_HELP = "a scale the search defines, e.g. smoke or paper (default smoke)"


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `tune` to psec's subcommands; its handler returns the exit status."""
    parser = commands.add_parser(
        "tune", help="Ray Tune search over methods, ranks, seeds, data sizes, alpha choices")
    parser.add_argument("search", metavar="SEARCH.yaml")
    parser.add_argument("--scale", default="smoke", help=SCALES_HELP)
    parser.add_argument("--store", default=DEFAULT_URI, metavar="URI",
                        help=f"skill store: a folder or a pyarrow URI (default {DEFAULT_URI})")
    parser.add_argument("--resume", action="store_true",
                        help="continue the search's Tune experiment in this store "
                             "(Tuner.restore: the grid it started with; an edited search "
                             "is refused)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster: 'auto', 'host:port' or 'ray://...' (default: a "
                             "private local instance, or RAY_ADDRESS under ray job submit)")
    parser.add_argument("--results", default=None, metavar="RESULTS.md",
                        help="rewrite this search's section of a results Markdown file "
                             "(plots go beside it)")
    parser.add_argument("--table-only", action="store_true",
                        help="do not search; only rewrite the --results section")
    add_cpus_option(parser)
    parser.set_defaults(handler=handle)
    return parser


def command_line(args: argparse.Namespace) -> str:
    """The command that regenerates a section from scratch (written into it, STYLE habit
    6): the search itself, without --resume or --table-only. A local store outside the
    working folder is written as ./store-<scale>: the command is for a fresh store on the
    reader's machine, and this machine's folder names mean nothing there."""
    parts = ["psec", "tune", args.search, "--scale", args.scale, "--store",
             portable_store(args.store, args.scale)]
    if args.results:
        parts += ["--results", args.results]
    return " ".join(shlex.quote(part) for part in parts)


def portable_store(store: str, scale: str) -> str:
    """store as a reader can type it: remote URIs and relative paths as given."""
    if "://" in store or not Path(store).is_absolute():
        return store
    try:
        return str(Path(store).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return f"./store-{scale}"


def handle(args: argparse.Namespace) -> int:
    from library.errors import PsecError

    if args.table_only and not args.results:
        raise PsecError("--table-only needs --results RESULTS.md (the file to rewrite)")
    if args.results:
        from pipeline.report import check_output

        check_output(args.results, "--results")  # before the search, not after it
    if not args.table_only:
        from tune.search import run_search

        summary = run_search(args.search, args.store, resume=args.resume, scale=args.scale,
                             address=args.address)
        print(summary.describe())
    if args.results:
        from tune.table import write_section

        path = write_section(args.search, args.scale, args.store, args.results,
                             command_line(args), address=args.address)
        print(f"wrote {path}")
    return 0
