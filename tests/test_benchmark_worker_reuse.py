"""benchmarks/worker_reuse.py's stream cut (the runs themselves take minutes: see
docs/BENCHMARKS.md for its figures)."""

import yaml

from benchmarks.worker_reuse import cut_stream
from tasks.spec import load_stream


def test_the_cut_stream_keeps_the_first_tasks_and_their_per_task_sizes(tmp_path):
    out = cut_stream("configs/cw10.yaml", 3, str(tmp_path / "cut.yaml"))
    stream = load_stream(out, "smoke")
    assert [task.name for task in stream.tasks] == ["mw-base", "hammer-v3", "push-wall-v3"]
    with open(out) as f:
        scales = yaml.safe_load(f)["scales"]
    for scale in scales.values():
        for value in scale.values():
            if isinstance(value, dict):  # sizes by task name name only kept tasks
                assert set(value) <= {"mw-base", "hammer-v3", "push-wall-v3"}
    whole = cut_stream("configs/dmc_walker.yaml", None, str(tmp_path / "whole.yaml"))
    assert len(load_stream(whole, "smoke").tasks) == 3
