"""The unseen-task table (PSEC appendix F.2): success of composers on tasks they hold no
skill for, few-shot against zero-shot, per composition level (PSEC / NSEC / ASEC).

A stream's *composer tasks* define the settings: one without `eval.envs` is a few-shot
task (its composers train on a fraction of that task's data and are rolled out in its
env); one with `eval.envs` is a zero-shot task (its composers train on other tasks' data
and are rolled out in each listed env). The table has one row per unseen env and one
column per (setting, method); a cell is the mean ± std over evaluation seeds of the
normalised score (Meta-World: success rate) from the store's results table.

    python -m pipeline.unseen_report configs/metaworld_unseen.yaml --scale smoke \\
        --store ./psec-store --results docs/RESULTS.md

rewrites the section between `<!-- unseen:<stream> -->` and `<!-- /unseen:<stream> -->`
in the results file (appended at its end when the markers are absent), or prints it.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from library.errors import ArgumentParser, exit_status
from library.store import SkillStore
from pipeline.report import check_output
from tasks.spec import StreamSpec, load_stream

SETTINGS = ("few-shot", "zero-shot")
METHOD_LABELS = {"psec": "PSEC", "nsec": "NSEC", "asec": "ASEC", "fixed": "fixed",
                 "mlp": "PSEC (MLP)"}


@dataclass(frozen=True)
class Column:
    """One column of the table: a setting and a composition method."""

    setting: str
    """few-shot | zero-shot."""
    method: str
    """Method of the composers in it (results table name: psec, nsec, asec, ...)."""

    @property
    def label(self) -> str:
        return f"{self.setting} {METHOD_LABELS.get(self.method, self.method)}"


@dataclass
class UnseenTable:
    """Scores per (env, column) and what the table was made from."""

    stream: str
    """Stream name."""
    scale: str
    """Scale whose tasks define the settings."""
    envs: list[str]
    """Unseen envs, in stream order (few-shot tasks first, then zero-shot eval envs)."""
    columns: list[Column]
    """(setting, method) columns in the order they appear in the stream."""
    scores: dict[tuple[str, Column], list[float]]
    """Per (env, column): the normalised score of each evaluation seed."""
    episodes: list[int]
    """The distinct numbers of episodes per seed among the rows used."""

    def cell(self, env: str, column: Column) -> str:
        values = self.scores.get((env, column), [])
        if not values:
            return "—"
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return f"{mean:.2f} ± {std:.2f} (n={len(values)})"

    def markdown(self) -> str:
        header = "| unseen task | " + " | ".join(c.label for c in self.columns) + " |"
        lines = [header, "|" + " --- |" * (len(self.columns) + 1)]
        for env in self.envs:
            lines.append(f"| {env} | " + " | ".join(self.cell(env, c) for c in self.columns)
                         + " |")
        means = []
        for column in self.columns:
            per_env = [sum(v) / len(v) for (env, c), v in self.scores.items()
                       if c == column and v and env in self.envs]
            means.append(f"{sum(per_env) / len(per_env):.2f} over {len(per_env)}"
                         if per_env else "—")
        lines.append("| mean over envs | " + " | ".join(means) + " |")
        return "\n".join(lines)


def collect(stream: StreamSpec, rows: list[dict]) -> UnseenTable:
    """The unseen-task table of `stream` (scale applied) from result rows."""
    # composer name -> (setting, the envs its task rolls it out in, its task)
    composers: dict[str, tuple[str, list[str], str]] = {}
    envs: list[str] = []
    for task in stream.tasks:
        if task.role != "composer":
            continue
        setting = "zero-shot" if task.eval.envs else "few-shot"
        for composer in task.composers:
            composers[composer.name] = (setting, task.eval_envs, task.name)
        envs.extend(env for env in task.eval_envs if env not in envs)
    columns: list[Column] = []
    scores: dict[tuple[str, Column], list[float]] = defaultdict(list)
    episodes: set[int] = set()
    for row in rows:
        if row.get("stream") != stream.name or row.get("name") not in composers:
            continue
        setting, task_envs, task_name = composers[row["name"]]
        env = row.get("env") or task_envs[0]  # rows without env: the task's own env
        if row.get("eval_task") != task_name or env not in task_envs:
            continue
        column = Column(setting, str(row["method"]))
        if column not in columns:
            columns.append(column)
        scores[(env, column)].append(float(row["score"]))
        episodes.add(int(row["episodes"]))
    columns.sort(key=lambda c: (SETTINGS.index(c.setting), list(METHOD_LABELS).index(c.method)
                                if c.method in METHOD_LABELS else len(METHOD_LABELS)))
    return UnseenTable(stream.name, stream.applied_scale or "as-written", envs, columns,
                       dict(scores), sorted(episodes))


def section(stream_path: str, scale: str, store_uri: str, command: str) -> str:
    """The Markdown section (markers included) for `stream_path` at `scale`."""
    stream = load_stream(stream_path, scale)
    store = SkillStore(store_uri)
    table = collect(stream, store.results().to_pylist())
    body = (table.markdown() if table.columns else
            f"No composer results of stream `{stream.name}` in the store yet.")
    return "\n".join([
        f"<!-- unseen:{stream.name} -->",
        f"Generated by `{command}` (scale {table.scale}): mean ± std over evaluation seeds "
        f"of the normalised score (Meta-World: success rate), n seeds of "
        f"{' or '.join(map(str, table.episodes)) or 'no'} episode(s) each.",
        "",
        body,
        f"<!-- /unseen:{stream.name} -->",
    ])


def write_section(results_md: str, text: str, stream: str) -> None:
    """Replace the stream's marked section of `results_md` by `text` (append if absent)."""
    path = Path(results_md)
    current = path.read_text() if path.exists() else ""
    start, end = f"<!-- unseen:{stream} -->", f"<!-- /unseen:{stream} -->"
    if start in current and end in current:
        head, rest = current.split(start, 1)
        tail = rest.split(end, 1)[1]
        path.write_text(head + text + tail)
    else:
        path.write_text(current.rstrip("\n") + "\n\n" + text + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m pipeline.unseen_report",
                            description=__doc__.split("\n\n")[0])
    parser.add_argument("stream", help="stream file with composer tasks")
    parser.add_argument("--scale", default="smoke", help="scale whose tasks to tabulate")
    parser.add_argument("--store", default="./psec-store", help="skill store URI")
    parser.add_argument("--results", help="Markdown file whose section to rewrite")

    def run() -> None:
        # Parsed inside exit_status: a bad command line is a user error like any other.
        args = parser.parse_args(argv)
        command = (f"python -m pipeline.unseen_report {args.stream} --scale {args.scale} "
                   f"--store {args.store}"
                   + (f" --results {args.results}" if args.results else ""))
        if args.results:
            check_output(args.results, "--results")
        text = section(args.stream, args.scale, args.store, command)
        if args.results:
            write_section(args.results, text, load_stream(args.stream).name)
        else:
            print(text)

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
