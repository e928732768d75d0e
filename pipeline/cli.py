"""`psec`: the command line (also `python -m pipeline`).

Every command takes `--store` (a folder or any pyarrow filesystem URI). Every failure a
user can cause is a `library.errors.PsecError`; it is printed as `psec: error: <one line>`
and the exit status is 2. Commands check their input before they write anything, so a
refused command leaves the store as it was.

Commands that only read or edit the store (`skills`, `data`, `report`) never start Ray;
`run`, `serve`, `submit`, `eval` and `tune` do (or attach to one with `--address`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence

from library.errors import ArgumentParser, PsecError, StoreError, exit_status
from library.store import DEFAULT_URI, SkillStore
from pipeline.runtime import add_cpus_option, use_cpus_option

IMPORT_FORMATS = ("d4rl", "dsrl", "minari", "parquet")


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=DEFAULT_URI, metavar="URI",
                        help=f"skill store: a folder or a pyarrow URI such as s3://bucket/prefix "
                             f"(default {DEFAULT_URI})")


def _add_address(parser: argparse.ArgumentParser, default_help: str) -> None:
    parser.add_argument("--address", default=None,
                        help=f"Ray cluster to use: 'auto', 'host:port' or 'ray://...' "
                             f"({default_help})")


def _integer_from(low: int):
    """An argparse `type`: an integer >= low (the message names the bound)."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return convert


_positive = _integer_from(1)
# Seeds become numpy seed sequences and Ray's retry counts; neither takes a negative.
_non_negative = _integer_from(0)


def _seconds(text: str) -> float:
    """An argparse `type`: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="psec",
        description="PSEC: skill expansion and composition in parameter space, on Ray.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_run, _add_serve, _add_submit, _add_skills, _add_data, _add_eval):
        add(commands)
    # `tune` sits above the pipeline (tune → pipeline); the CLI is the one place that
    # offers both, so it takes the subcommand from tune rather than knowing its options.
    from pipeline.shipped_base import add_parser as add_base_parser
    from tune.cli import add_parser as add_tune_parser

    add_tune_parser(commands)
    add_base_parser(commands)
    _add_report(commands)
    return parser


def _add_run(commands) -> None:
    run = commands.add_parser("run", help="run a stream end to end (resumes if run again)")
    run.add_argument("stream", metavar="STREAM.yaml")
    run.add_argument("--scale", default=None,
                     help="a scale defined by the stream, e.g. smoke or paper "
                          "(default: sizes as written)")
    _add_store(run)
    _add_address(run, "default: a private local instance, or RAY_ADDRESS under ray job submit")
    add_cpus_option(run)
    run.add_argument("--concurrent-fits", type=_positive, default=2,
                     help="fits sized to run side by side (default 2)")
    run.add_argument("--max-failures", type=_non_negative, default=2,
                     help="worker failures a fit recovers from (Ray Train FailureConfig)")
    run.add_argument("--single-worker", choices=("task", "trainer"), default="task",
                     help="a one-worker fit as a plain Ray task (default) or a TorchTrainer")
    run.add_argument("--seed", type=_non_negative, nargs="+", default=None, metavar="N",
                     help="the stream's root seed instead of its `seed:`; several: one run "
                          "per seed side by side, each into <store>/seed-N (a store holds "
                          "one seed's run), for `psec report --store <store>`")
    run.add_argument("--no-replay", dest="replay", action="store_false",
                     help="roll out every continual re-evaluation, even of a frozen item "
                          "already rolled out (default: copy that rollout's figures; "
                          "pipeline/replay.py)")
    run.set_defaults(handler=_run)


def _add_serve(commands) -> None:
    serve = commands.add_parser("serve", help="keep a driver running that fits submitted tasks")
    _add_store(serve)
    _add_address(serve, "default: a private local instance, or RAY_ADDRESS under ray job submit; "
                        "psec submit finds it through the store")
    add_cpus_option(serve)
    serve.add_argument("--max-tasks", type=_positive, default=None,
                       help="stop after this many submissions")
    serve.add_argument("--once", action="store_true",
                       help="fit what is in the inbox now, then stop")
    serve.add_argument("--poll", type=_seconds, default=1.0,
                       help="seconds between inbox polls (default 1)")
    serve.set_defaults(handler=_serve)


def _add_submit(commands) -> None:
    submit = commands.add_parser("submit", help="send a task spec to the serving driver")
    submit.add_argument("spec", metavar="SPEC.yaml")
    _add_store(submit)
    _add_address(submit, "default: the Ray instance of the psec serve serving the store, "
                         "or RAY_ADDRESS under ray job submit; with an address the spec "
                         "waits in that cluster's queue if no psec serve runs yet")
    submit.add_argument("--wait", action="store_true",
                        help="wait until the driver has fitted the task")
    submit.set_defaults(handler=_submit)


def _add_skills(commands) -> None:
    skills = commands.add_parser("skills", help="list, show or remove stored items")
    skill_commands = skills.add_subparsers(dest="skills_command", required=True,
                                           metavar="ACTION")
    listing = skill_commands.add_parser("list", help="every stored base, skill and composer")
    listing.add_argument("--json", action="store_true", help="the manifest as JSON")
    _add_store(listing)
    listing.set_defaults(handler=_skills_list)
    show = skill_commands.add_parser("show", help="one item's manifest entry")
    show.add_argument("name")
    _add_store(show)
    show.set_defaults(handler=_skills_show)
    remove = skill_commands.add_parser("remove", help="delete an item")
    remove.add_argument("name")
    _add_store(remove)
    remove.set_defaults(handler=_skills_remove)


def _default_cost_threshold() -> float:
    """A task's `eval.cost_threshold` when its spec does not give one."""
    from tasks.spec_sections import EvalSpec

    return EvalSpec.model_fields["cost_threshold"].default


def _add_data(commands) -> None:
    data = commands.add_parser("data", help="datasets in the store")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    importing = data_commands.add_parser("import", help="convert a dataset file into the store")
    importing.add_argument("format", choices=IMPORT_FORMATS)
    importing.add_argument("path", metavar="PATH")
    importing.add_argument("--name", required=True, help="store name of the dataset")
    importing.add_argument("--suite", default=None,
                           help="suite the data comes from, when the file does not say")
    importing.add_argument("--env", default=None,
                           help="env the data comes from, when the file does not say")
    _add_store(importing)
    importing.set_defaults(handler=_data_import)
    generate = data_commands.add_parser("generate", help="make a task's dataset")
    generate.add_argument("spec", metavar="SPEC.yaml")
    _add_store(generate)
    generate.set_defaults(handler=_data_generate)
    listing = data_commands.add_parser("list", help="every stored dataset and its size")
    _add_store(listing)
    listing.set_defaults(handler=_data_list)
    show = data_commands.add_parser(
        "show", help="one dataset's episodes: lengths, returns, scores, costs by band")
    show.add_argument("name")
    show.add_argument("--cost-threshold", type=float, default=None,
                      help="cost per episode that separates safe from unsafe episodes "
                           f"(default {_default_cost_threshold():g}, a task's eval.cost_threshold)")
    show.add_argument("--json", action="store_true", help="the summary as JSON")
    _add_store(show)
    show.set_defaults(handler=_data_show)


def _add_eval(commands) -> None:
    evaluate = commands.add_parser("eval", help="roll out a stored policy, print its score")
    evaluate.add_argument("name")
    evaluate.add_argument("--episodes", type=_positive, default=None,
                          help="episodes per seed (default: the task's eval.episodes)")
    evaluate.add_argument("--seeds", type=_non_negative, nargs="+", default=None,
                          help="evaluation seeds (default: the task's eval.seeds)")
    evaluate.add_argument("--env", default=None,
                          help="roll out in this env of the task's suite instead of the task's "
                               "own (e.g. one of a zero-shot composer's eval.envs)")
    evaluate.add_argument("--candidates", type=_positive, default=None,
                          help="candidate actions per state, the one its task's critic ranks "
                               "best kept (default: the task's eval.n_candidates)")
    _add_store(evaluate)
    _add_address(evaluate, "default: a private local instance")
    add_cpus_option(evaluate)
    evaluate.set_defaults(handler=_eval)


def _add_report(commands) -> None:
    report = commands.add_parser("report", help="results tables (Markdown) and plots (PNG)")
    report.add_argument("--out", default=None,
                        help="folder to write into (default: <store>-report beside a local "
                             "store, ./<store name>-report for a remote one)")
    report.add_argument("--store", action="append", default=None, metavar="URI",
                        help=f"skill store: a folder or a pyarrow URI such as s3://bucket/prefix "
                             f"(default {DEFAULT_URI}); given several times, or a store whose "
                             f"runs are in seed-N folders (psec run --seed 0 1 2), one run "
                             f"(seed) of a stream per store, reported across runs with 95%% "
                             f"confidence intervals")
    report.set_defaults(handler=_report)


# ---------------------------------------------------------------------------- commands


def _run(args: argparse.Namespace) -> int:
    from pipeline.driver import DriverOptions, run_stream_file
    from pipeline.seed_runs import run_seeds

    options = DriverOptions(concurrent_fits=args.concurrent_fits,
                            max_failures=args.max_failures, single_worker=args.single_worker,
                            replay=args.replay)
    if args.seed is not None and len(args.seed) > 1:
        outcomes = run_seeds(args.stream, args.store, args.seed, scale=args.scale,
                             address=args.address, options=options)
        for outcome in outcomes:
            print(f"seed {outcome.seed}: {outcome.text}")
        failed = [outcome for outcome in outcomes if outcome.failed]
        if failed:
            print(f"psec: error: {len(failed)} of {len(outcomes)} seed run(s) failed (above); "
                  "run the same command again to resume them", file=sys.stderr)
            return 2
        return 0
    summary = run_stream_file(args.stream, args.store, scale=args.scale, address=args.address,
                              options=options, seed=None if args.seed is None else args.seed[0])
    print(summary.describe())
    return 0


def _serve(args: argparse.Namespace) -> int:
    from pipeline.driver import DriverOptions
    from pipeline.serving import serve

    served = serve(args.store, address=args.address, max_tasks=args.max_tasks,
                   once=args.once, poll=args.poll, options=DriverOptions())
    print(f"served {served} task(s)")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from pipeline.serving import serving, submit

    submission = submit(args.spec, args.store, address=args.address, wait=args.wait)
    if args.wait:
        print(f"{submission.id}: {submission.status}: {submission.message}")
        return 0 if submission.status == "done" else 1
    # Only with an address (or RAY_ADDRESS) can nobody be serving: the spec waits there.
    address = f" --address {args.address}" if args.address else ""
    note = "" if serving(args.store) else (
        f"; no psec serve is running for this store on the cluster yet: it waits in the "
        f"queue for `psec serve --store {args.store}{address}`")
    print(f"submitted {submission.id}{note}")
    return 0


def _skills_list(args: argparse.Namespace) -> int:
    store = SkillStore(args.store)
    if args.json:
        print(json.dumps(store.manifest(), indent=2))
        return 0
    entries = store.list()
    if not entries:
        print(f"the store at {store.uri} is empty")
        return 0
    rows = [("NAME", "KIND", "PARENT", "SCORE", "CREATED")]
    for entry in entries:
        score = entry.metrics.get("score")
        rows.append((entry.name, entry.kind, entry.parent or "-",
                     "-" if score is None else f"{score:.3g}", entry.created[:19]))
    _print_columns(rows)
    return 0


def _print_columns(rows: list[tuple[str, ...]]) -> None:
    """Rows as left-aligned columns, the first row their heading."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _skills_show(args: argparse.Namespace) -> int:
    entry = SkillStore(args.store).entry(args.name)
    print(json.dumps(entry.model_dump(mode="json"), indent=2))
    return 0


def _skills_remove(args: argparse.Namespace) -> int:
    store = SkillStore(args.store)
    store.check_writable()
    store.remove(args.name)
    print(f"removed {args.name}")
    return 0


def _data_import(args: argparse.Namespace) -> int:
    from library.names import check_name
    from tasks.importers import import_dataset

    store = SkillStore(args.store)
    check_name(args.name)
    store.check_writable()
    if store.has_dataset(args.name):
        raise StoreError(f"dataset {args.name!r} is already in the store")
    table = import_dataset(args.format, args.path, suite=args.suite, env=args.env)
    store.put_dataset(args.name, table)
    print(f"imported {table.num_rows} transitions as dataset {args.name!r}")
    return 0


def _data_list(args: argparse.Namespace) -> int:
    from tasks.dataset import dataset_meta

    store = SkillStore(args.store)
    names = store.dataset_names()
    if not names:
        print(f"the store at {store.uri} holds no dataset")
        return 0
    rows = [("NAME", "TRANSITIONS", "SUITE", "ENV", "SOURCE")]
    for name in names:
        schema, transitions = store.dataset_footer(name)
        meta = dataset_meta(schema)
        rows.append((name, f"{transitions:,}", str(meta.get("suite", "-")),
                     str(meta.get("env", "-")), str(meta.get("source", "-"))))
    _print_columns(rows)
    return 0


def _data_show(args: argparse.Namespace) -> int:
    from tasks.dataset_summary import COLUMNS, describe, summarise

    threshold = _default_cost_threshold() if args.cost_threshold is None else args.cost_threshold
    if not threshold > 0:
        raise PsecError(f"--cost-threshold must be > 0, got {threshold:g}")
    store = SkillStore(args.store)
    stored = store.get_dataset_schema(args.name).names
    table = store.get_dataset(args.name, columns=[key for key in COLUMNS if key in stored])
    summary = summarise(table, threshold)
    print(json.dumps(summary.as_dict(), indent=2) if args.json else describe(args.name, summary))
    return 0


def _data_generate(args: argparse.Namespace) -> int:
    from pipeline.plan import dataset_name
    from tasks.generators import generate
    from tasks.spec import load_task

    task = load_task(args.spec)
    store = SkillStore(args.store)
    store.check_writable()
    if task.data.source != "generate":
        raise PsecError(f"{args.spec}: data.source is {task.data.source!r}; "
                        "only 'generate' datasets are made by this command")
    name = dataset_name(task)
    if store.has_dataset(name):
        raise StoreError(f"dataset {name!r} is already in the store")
    table = generate(task)
    store.put_dataset(name, table)
    print(f"generated {table.num_rows} transitions as dataset {name!r}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pipeline.evaluation import evaluate_stored, stored_task
    from pipeline.runtime import connect

    store = SkillStore(args.store)
    # An unknown name or env, or an item with no task to roll out on, fails before Ray starts.
    stored_task(store.entry(args.name), args.env)
    connect(args.address)
    summary = evaluate_stored(store.uri, args.name, episodes=args.episodes, seeds=args.seeds,
                              env=args.env, n_candidates=args.candidates)
    print(summary.describe())
    return 0


def _report(args: argparse.Namespace) -> int:
    from pipeline.continual_seeds import write_runs_report
    from pipeline.report import check_output, learning_curves, write_report
    from pipeline.seed_runs import seed_stores

    given = args.store or [DEFAULT_URI]
    stores = [SkillStore(uri) for uri in given]
    if len({store.uri for store in stores}) < len(stores):
        raise PsecError("--store: a store given twice would count its run twice")
    if len(stores) > 1 and args.out is None:
        raise PsecError("--out: several stores have no folder of their own to report "
                        "beside; give --out")
    out = args.out or default_report_folder(stores[0])
    results = stores[0].results() if len(stores) == 1 else None
    if results is not None and results.num_rows == 0 and (found := seed_stores(stores[0].uri)):
        # `psec run --seed 0 1 2 --store URI` wrote its runs into URI/seed-N.
        stores = [SkillStore(uri) for uri in found]
        results = stores[0].results() if len(stores) == 1 else None
    check_output(out, "--out", kind="folder")
    command = " ".join(["psec", "report", *(part for uri in given
                                            for part in ("--store", shlex.quote(uri))),
                        "--out", shlex.quote(out)])
    if results is None:
        path = write_runs_report(stores, out, command)
    else:
        path = write_report(results, out, command, learning_curves(stores[0]))
    print(f"wrote {path}")
    return 0


def default_report_folder(store: SkillStore) -> str:
    """Where `psec report` writes without --out: beside a local store (`<store>-report`),
    or `./<last part of the URI>-report` for a remote one; never into the repository's docs/."""
    if store.local_path is not None:
        return store.local_path.rstrip("/") + "-report"
    return os.path.abspath(store.uri.split("?")[0].rstrip("/").rsplit("/", 1)[-1] + "-report")


def main(argv: Sequence[str] | None = None) -> int:
    def command() -> int:
        # Parsed inside exit_status: a bad command line is a user error like any other.
        args = build_parser().parse_args(argv)
        use_cpus_option(args)
        return args.handler(args)

    try:
        return exit_status(command)
    except KeyboardInterrupt:
        print("psec: interrupted (what was registered stays; run again to resume)",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`psec skills show X | head`): it has what it wanted. Point
        # stdout at /dev/null so the flush at exit does not raise again, and exit as a
        # program killed by SIGPIPE would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
