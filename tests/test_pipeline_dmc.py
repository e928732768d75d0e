"""The DMC walker stream end to end at smoke scale on 2 CPUs: expert data, a base on
walker-stand, walk and run skills fitted side by side, composers S→W, S→R, S+W→R, the
continual matrix, TensorBoard runs, the report, and a rerun that fits nothing."""

import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from library.store import SkillStore
from pipeline.cli import main
from pipeline.driver import DriverOptions, run_stream_file
from tasks.dataset import fingerprint

STREAM = os.path.join(os.path.dirname(__file__), "..", "configs", "dmc_walker.yaml")

torch.set_num_threads(1)


def scalar_tags(folder):
    events = EventAccumulator(folder)
    events.Reload()
    return set(events.Tags()["scalars"])


@pytest.mark.slow
def test_dmc_walker_stream_at_smoke_scale(ray_cluster, tmp_path, capsys):
    store_uri = str(tmp_path / "store")
    # Every re-evaluation rolled out (not replayed, pipeline/replay.py): see below.
    summary = run_stream_file(STREAM, store_uri, scale="smoke",
                              options=DriverOptions(progress=False, replay=False))
    store = SkillStore(store_uri)

    items = {entry.name: entry for entry in store.list()}
    assert set(items) == {"walker-stand", "walker-walk", "walker-run", "s2w", "s2r", "sw2r"}
    assert items["walker-stand"].kind == "base"
    assert all(items[n].parent == "walker-stand" for n in items if n != "walker-stand")
    # A parameter-level composer weighs the LoRA skills only (W0 is always in).
    assert items["sw2r"].config_summary["skills"] == ["walker-walk", "walker-run"]
    # Every item records the fingerprint of the dataset it was fitted on.
    for name in ("walker-stand", "walker-walk", "walker-run"):
        assert items[name].dataset_fingerprint == fingerprint(store.get_dataset(name))
    assert items["s2r"].dataset_fingerprint == items["walker-run"].dataset_fingerprint

    # The two skills on the base fitted side by side; the S+W→R composer after both.
    walk, run, sw2r = (summary.unit_windows[u] for u in ("walker-walk", "walker-run", "sw2r"))
    assert walk[0] < run[1] and run[0] < walk[1], summary.unit_windows
    assert sw2r[0] >= max(walk[1], run[1])

    # 6 own evaluations + the continual matrix: stand after walk, stand and walk after run.
    rows = store.results().to_pylist()
    assert len(rows) == 9 and all(r["scale"] == "smoke" for r in rows)
    matrix = {(r["task"], r["name"]) for r in rows if r["name"] == r["eval_task"]}
    assert matrix == {("walker-stand", "walker-stand"), ("walker-walk", "walker-stand"),
                      ("walker-walk", "walker-walk"), ("walker-run", "walker-stand"),
                      ("walker-run", "walker-walk"), ("walker-run", "walker-run")}
    # Frozen items forget nothing: rolled out again after later tasks, the base and the
    # walk skill return what they returned first, bit for bit (what a replay copies).
    for name in ("walker-stand", "walker-walk"):
        assert len({r["return_mean"] for r in rows if r["name"] == name}) == 1, name
    assert summary.replayed == 0 and all(r["replay_of"] is None for r in rows)
    assert {r["method"] for r in rows} == {"base", "skill", "psec"}
    assert "score" in items["sw2r"].metrics

    # TensorBoard: losses per fit, α(s) statistics per composed skill, evaluation returns.
    runs = os.path.join(store_uri, "runs")
    composer = scalar_tags(os.path.join(runs, "sw2r__psec__0"))
    assert {"train/loss", "alpha/walker-walk/mean", "alpha/walker-run/std",
            "eval/walker-run/return"} <= composer
    assert "train/loss" in scalar_tags(os.path.join(runs, "walker-stand__base__0"))

    # The report turns the results into tables and plots.
    out = tmp_path / "report"
    assert main(["report", "--store", store_uri, "--out", str(out)]) == 0
    text = (out / "results.md").read_text()
    assert "| walker-run | sw2r | psec | base, walker-walk, walker-run |" in text
    assert (out / "dmc_walker-continual.png").exists()

    # Running the stream again resumes: everything is there, nothing is fitted.
    capsys.readouterr()
    assert main(["run", STREAM, "--scale", "smoke", "--store", store_uri]) == 0
    assert "fitted 0, already stored 6, 0 evaluation(s)" in capsys.readouterr().out
