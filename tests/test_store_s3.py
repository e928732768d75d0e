"""The skill store on S3, a local moto server standing in for the bucket: what only a
remote store has. The contract every backend keeps (round trips, validation, datasets,
results, interrupted writes) is tests/test_store_contract.py, run on a local folder and on
this server by the same code.

Here: a missing bucket and a dead endpoint as one-line errors, the URI query on derived
paths, and the pieces beside the store that open its URI themselves: TensorBoard runs
(`RunLog`), the checkpoint folder (`checkpoint_root`, `remove_run`) and Tune's records,
without Ray. One slow test runs a stream on the bucket on a 2-CPU Ray, a fit killed and
resumed.
"""

import pyarrow.fs as pafs
import pytest
import torch
from store_builders import BUCKET, base_tensors, files, free_port, put_object, s3_query

from library.errors import StoreError
from library.store import SkillStore

pytest.importorskip(
    "moto", reason="moto is not installed: `pip install -e '.[dev]'` brings moto[server]"
)

pytest_plugins = ["store_fixtures"]


def test_a_missing_bucket_is_a_one_line_store_error(moto_port: int, aws_env: None):
    missing = f"s3://no-such-bucket/store?{s3_query(moto_port)}"
    with pytest.raises(StoreError, match=f"^store at {missing} is not writable: .*no-such-bucket"
                       .replace("?", r"\?")) as info:
        SkillStore(missing).check_writable()
    assert "\n" not in str(info.value)
    with pytest.raises(StoreError, match="is not writable"):
        SkillStore(missing).register("b0", "base", {}, base_tensors())


def test_unreachable_endpoint_is_a_one_line_store_error(aws_env: None):
    # Nothing listens on this port; pyarrow retries a few times (about 6 s here) first.
    dead = f"s3://{BUCKET}/store?{s3_query(free_port())}"
    with pytest.raises(StoreError, match="^store at .* cannot be read: ") as info:
        SkillStore(dead).exists("b0")
    assert "\n" not in str(info.value)


def test_uri_of_keeps_the_query_and_there_is_no_local_path(s3_uri: str, moto_port: int):
    store = SkillStore(s3_uri)
    assert store.local_path is None
    runs = store.uri_of("runs", "walk__psec__0")
    prefix = s3_uri.split("?")[0]
    assert runs == f"{prefix}/runs/walk__psec__0?{s3_query(moto_port)}"
    fs, path = pafs.FileSystem.from_uri(runs)
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{prefix[5:]}/runs/walk__psec__0"


def test_tensorboard_runs_are_uploaded_on_close(s3_uri: str, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipeline.tblog import RUNS_FOLDER, RunLog

    with RunLog(s3_uri, "walk__psec__0") as log:
        for step in (1, 2):
            log.scalars({"loss": 1.0 / step}, step, prefix="train/")
    events = files(s3_uri, f"{RUNS_FOLDER}/walk__psec__0")
    assert len(events) == 1 and next(iter(events)).split("/")[-1].startswith("events.out.")
    local = tmp_path / "events.out.tfevents"
    local.write_bytes(next(iter(events.values())))
    accumulator = EventAccumulator(str(local))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("train/loss")] == [(1, 1.0), (2, 0.5)]


def test_checkpoint_folder_and_its_removal(s3_uri: str):
    from pipeline.checkpoints import checkpoint_root, remove_run

    root = checkpoint_root(s3_uri)
    assert root == SkillStore(s3_uri).uri_of("checkpoints")
    # What Ray Train writes under RunConfig(storage_path=root, name=run) on S3.
    put_object(s3_uri, "checkpoints/s__u/checkpoint_000000/state.pt", b"state")
    put_object(s3_uri, "checkpoints/other/checkpoint_000000/state.pt", b"state")
    remove_run(s3_uri, "s__u")
    assert sorted(files(s3_uri, "checkpoints")) == ["checkpoints/other/checkpoint_000000/state.pt"]
    remove_run(s3_uri, "never-ran")  # nothing there: nothing to do


def test_tune_records_live_under_the_store(s3_uri: str):
    from tune.search import (
        RECORD_FILE,
        TUNE_FOLDER,
        _experiment_exists,
        _write_record,
        experiment_path,
        read_record,
    )

    assert read_record(s3_uri, "s1") is None
    assert not _experiment_exists(experiment_path(s3_uri, "s1"))
    _write_record(s3_uri, "s1", {"search": "s1", "wall_seconds": 1.5})
    assert read_record(s3_uri, "s1") == {"search": "s1", "wall_seconds": 1.5}
    assert list(files(s3_uri)) == [f"{TUNE_FOLDER}/s1/{RECORD_FILE}"]
    # psec's own files beside the experiment are not one; what Tune writes is.
    assert not _experiment_exists(experiment_path(s3_uri, "s1"))
    SkillStore(s3_uri).put_file(f"{TUNE_FOLDER}/s1", "experiment_state.json", b"{}")
    assert _experiment_exists(experiment_path(s3_uri, "s1"))


def test_a_tune_experiment_is_stored_under_the_store(s3_uri: str, tmp_path):
    from test_tune import write

    from tune.search import (
        TUNE_FOLDER,
        SearchContext,
        _tuner,
        dump,
    )
    from tune.spec import load_search
    from tune.trials import enumerate_points

    search = load_search(str(write(tmp_path)), "smoke")
    context = SearchContext(search=dump(search), stream=dump(search.load_stream()),
                            store_uri=s3_uri, concurrent_fits=1)
    # Making the Tuner (no Ray needed) resolves its storage and writes its first record.
    _tuner(search, context, enumerate_points(search), f"{search.name}@smoke", False)
    assert f"{TUNE_FOLDER}/{search.name}@smoke/tuner.pkl" in files(s3_uri)


@pytest.mark.slow
@pytest.mark.parametrize("single_worker", ["task", "trainer"])
def test_a_stream_on_s3_resumes_a_killed_fit_from_its_s3_checkpoint(aws_env, ray_cluster, s3_uri,
                                                                    tmp_path, single_worker):
    """`psec run` on the bucket: the store actor, checkpoints on S3 (the plain Ray task's
    own, or Ray Train's storage_path) and the resume from them after a worker is killed,
    results, TensorBoard runs; no checkpoints left. The Ray workers have the credentials
    from `ray_cluster` (tests/conftest.py), the driver from `aws_env`."""
    from pipeline_builders import fit_base_killed_once

    torch.set_num_threads(1)
    _, summary = fit_base_killed_once(s3_uri, tmp_path / "s.yaml", steps=40, fail_step=25,
                                      single_worker=single_worker)

    assert summary.fitted == ["stand"]
    store = SkillStore(s3_uri)
    # The restarted worker found a checkpoint on S3 (step 10 or 20), not a fresh start.
    assert store.entry("stand").metrics["resumed_from"] in (10, 20)
    assert [row["name"] for row in store.results().to_pylist()] == ["stand"]
    keys = list(files(s3_uri))
    # The fault marker stays; the finished unit's checkpoints are gone.
    assert [k for k in keys if k.startswith("checkpoints/")] == [
        "checkpoints/tiny__stand-failed-once"]
    assert any(k.startswith("runs/stand__") and "events.out" in k for k in keys)


