"""`psec run STREAM --seed 0 1 ...`: one run per seed side by side, each into <store>/seed-N,
and `psec report --store <store>` across them."""

import pytest
import torch
from pipeline_builders import put_datasets, tiny_task, write_stream
from test_continual_seeds import run_store

from library.store import SkillStore
from pipeline.cli import main
from pipeline.driver import DriverOptions
from pipeline.seed_runs import run_seeds, seed_store, seed_stores


def test_seed_stores_are_the_seed_folders_under_a_store(tmp_path):
    root = str(tmp_path / "runs")
    assert seed_stores(root) == []
    for seed in (10, 2):
        run_store(seed_store(root, seed), seed, (0.5, 0.5))
    (tmp_path / "runs" / "seed-x").mkdir()  # not a seed's store
    (tmp_path / "runs" / "notes.txt").write_text("")
    assert seed_stores(root) == [f"{root}/seed-2", f"{root}/seed-10"]
    assert SkillStore("s3://bucket/cw10?region=x").uri_of("seed-1") == \
        "s3://bucket/cw10/seed-1?region=x"  # what seed_store builds for a remote store


def test_report_on_the_store_of_a_multi_seed_run_covers_its_seeds(tmp_path, capsys):
    root = str(tmp_path / "runs")
    for seed, scores in enumerate([(1.0, 0.2), (0.6, 0.4)]):
        run_store(seed_store(root, seed), seed, scores)
    assert main(["report", "--store", root, "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "results.md").read_text()
    assert "over 2 run(s)" in text and f"| {root}/seed-1 | 1 |" in text


def test_a_seed_given_twice_is_refused(tmp_path, capsys):
    stream = write_stream(tmp_path / "s.yaml", [tiny_task("stand", role="base")])
    assert main(["run", stream, "--store", str(tmp_path / "store"), "--seed", "1", "1"]) == 2
    assert "seed given twice" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_two_seeds_run_side_by_side_into_their_own_stores(ray_cluster, tmp_path):
    tasks = [tiny_task("stand", role="base", steps=20)]
    root = str(tmp_path / "runs")
    for seed in (0, 1):
        put_datasets(seed_store(root, seed), tasks)
    stream = write_stream(tmp_path / "s.yaml", tasks)
    outcomes = run_seeds(stream, root, [0, 1], options=DriverOptions(progress=False))
    assert [(o.seed, o.failed) for o in outcomes] == [(0, False), (1, False)], outcomes
    stores = [SkillStore(seed_store(root, seed)) for seed in (0, 1)]
    for seed, store in enumerate(stores):
        assert [(entry.name, entry.metrics["stream_seed"]) for entry in store.list()] == \
            [("stand", seed)]
        assert [row["name"] for row in store.results().to_pylist()] == ["stand"]
    # Another seed is another fit: different initial weights and batches.
    first, second = (store.load("stand")[1] for store in stores)
    assert any(not torch.equal(first[key], second[key]) for key in first)
