"""The skill store on S3: a local moto server stands in for the bucket.

The same `SkillStore` calls as tests/test_store.py, on `s3://…?endpoint_override=…`, plus
the pieces beside the store that open its URI themselves: TensorBoard runs (`RunLog`),
the checkpoint folder (`checkpoint_root`, `remove_run`) and Tune's records, without Ray.
One slow test runs a stream on the bucket on a 2-CPU Ray, a fit killed and resumed.
"""

import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import safetensors
import store_workers
import torch
from library_builders import add_trained_looking_skill, tiny_policy

from library.composition import AlphaConfig, Composer
from library.errors import StoreError
from library.serialization import dump_base, dump_composer, dump_skill
from library.store import CONFIG_FILE, WEIGHTS_FILE, SkillStore

pytest.importorskip(
    "moto", reason="moto is not installed: `pip install -e '.[dev]'` brings moto[server]"
)

BUCKET = "psec-test"
# Dummy credentials: pyarrow signs every request, moto accepts any key.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",  # never wait on an instance-metadata lookup
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(port: int) -> str:
    return f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A moto S3 server on a free port with bucket BUCKET; yields the port."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in AWS_ENV.items():
            patch.setenv(key, value)
        port = _free_port()
        # The server logs every request: to a file, since an unread pipe fills and stalls it.
        log = tmp_path_factory.mktemp("moto") / "server.log"
        with open(log, "wb") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=out, stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            while True:
                if server.poll() is not None:
                    pytest.fail(f"moto server exited: {log.read_text()[-500:]}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        pytest.fail("moto server did not listen within 30 s")
                    time.sleep(0.1)
            fs, _ = pafs.FileSystem.from_uri(
                f"s3://{BUCKET}?{_query(port)}&allow_bucket_creation=true"
            )
            fs.create_dir(BUCKET)
            yield port
        finally:
            server.kill()
            server.wait()


@pytest.fixture
def uri(endpoint: int) -> str:
    """A fresh store prefix in the bucket, per test."""
    return f"s3://{BUCKET}/store-{uuid.uuid4().hex[:8]}?{_query(endpoint)}"


@pytest.fixture
def store(uri: str) -> SkillStore:
    return SkillStore(uri)


def objects(uri: str, folder: str = "") -> dict[str, bytes]:
    """Every object under `<store>/<folder>`, by its key relative to the store."""
    fs, root = pafs.FileSystem.from_uri(uri)
    selector = pafs.FileSelector(f"{root}/{folder}".rstrip("/"), recursive=True,
                                 allow_not_found=True)
    out = {}
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path[len(root) + 1:]] = f.read()
    return out


def put_object(uri: str, key: str, data: bytes) -> None:
    fs, root = pafs.FileSystem.from_uri(uri)
    with fs.open_output_stream(f"{root}/{key}") as f:
        f.write(data)


def base_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "net.0.weight": torch.randn(64, 17, generator=g),  # [hidden, act + obs + t_emb]
        "normalizer.mean": torch.randn(8, generator=g).double(),
        "ln.weight": torch.randn(64, generator=g).half(),
        "steps": torch.arange(5),
        "mask": torch.tensor([True, False, True]),
    }


def test_items_round_trip_bit_for_bit_in_peft_layout(store: SkillStore, uri: str):
    entry = store.register("b0", "base", {"obs_dim": 8, "betas": [0.1, 10.0]}, base_tensors(),
                           task_spec={"env": "walker-walk"}, dataset_fingerprint="abc",
                           metrics={"score": 0.5})
    store.register("walk", "skill", {"rank": 8}, store_workers.skill_tensors(1), parent="b0")
    store.register("mix", "composer", {"skills": ["walk"]}, store_workers.skill_tensors(2),
                   parent="b0")

    config, tensors = store.load("b0")
    assert config == {"obs_dim": 8, "betas": [0.1, 10.0]}
    for key, t in base_tensors().items():
        assert tensors[key].dtype == t.dtype and torch.equal(tensors[key], t), key
    assert torch.equal(store.load("walk")[1]["net.0.lora_B.weight"],
                       store_workers.skill_tensors(1)["net.0.lora_B.weight"])

    stored = objects(uri)
    # The manifest entry, the config and the weights; no lock files, no temp files, no probe.
    assert sorted(stored) == sorted(
        [f"manifest/{n}.json" for n in ("b0", "walk", "mix")]
        + [f"items/{n}/{f}" for n in ("b0", "walk", "mix") for f in (CONFIG_FILE, WEIGHTS_FILE)]
    )
    weights = stored[f"items/b0/{WEIGHTS_FILE}"]
    assert entry.sha256 == hashlib.sha256(weights).hexdigest()
    assert entry.size_bytes == len(weights)
    assert safetensors.deserialize(weights)  # a plain safetensors file, readable without us
    assert json.loads(stored["manifest/b0.json"])["dataset_fingerprint"] == "abc"

    assert [e.name for e in store.list()] == ["b0", "walk", "mix"]
    assert [e.name for e in store.list("composer")] == ["mix"]
    assert store.entry("b0") == entry and store.manifest()[0]["metrics"] == {"score": 0.5}
    # Another process's view: a new object on the same URI reads the same store.
    again = pickle.loads(pickle.dumps(store))
    assert again.uri == uri and again.local_path is None
    assert [e.name for e in again.list()] == ["b0", "walk", "mix"]


def test_a_real_composer_loads_back_and_acts_the_same(store: SkillStore):
    from pipeline.stages import load_composer

    torch.set_num_threads(1)
    policy = tiny_policy(seed=0)
    add_trained_looking_skill(policy, "walk", seed=1)
    composer = Composer(policy, ["base", "walk"], "parameter",
                        AlphaConfig(output="softmax"), generator=torch.Generator().manual_seed(2))
    store.register("b0", "base", *dump_base(policy))
    store.register("walk", "skill", *dump_skill(policy, "walk"), parent="b0")
    store.register("mix", "composer", *dump_composer(composer), parent="b0")

    loaded = load_composer(store, "mix")
    composer.eval()
    obs = torch.randn(16, policy.config.obs_dim, generator=torch.Generator().manual_seed(3))
    assert torch.equal(loaded.alpha(obs), composer.alpha(obs))
    actions = [c.sample(obs, torch.Generator().manual_seed(4)) for c in (composer, loaded)]
    assert torch.equal(*actions)


def test_duplicates_parents_and_overwrite(store: SkillStore, uri: str):
    lora = store_workers.skill_tensors(0)
    with pytest.raises(StoreError, match="parent base 'b0' of skill 'walk' is not in the store"):
        store.register("walk", "skill", {}, lora, parent="b0")
    store.register("b0", "base", {}, base_tensors())
    store.register("walk", "skill", {"v": 1}, lora, parent="b0")
    before = objects(uri)
    with pytest.raises(StoreError, match=r"^'walk' is already in the store \(pass overwrite"):
        store.register("walk", "skill", {"v": 2}, store_workers.skill_tensors(2), parent="b0")
    with pytest.raises(StoreError, match="'walk' .* is a skill, not a base"):
        store.register("mix", "composer", {}, lora, parent="walk")
    assert objects(uri) == before  # refusals write nothing

    store.register("walk", "skill", {"v": 2}, store_workers.skill_tensors(2), parent="b0",
                   overwrite=True)
    config, tensors = store.load("walk")
    assert config == {"v": 2}
    assert torch.equal(tensors["net.0.lora_A.weight"],
                       store_workers.skill_tensors(2)["net.0.lora_A.weight"])


def test_checksum_mismatch_refused(store: SkillStore, uri: str):
    store.register("b0", "base", {}, base_tensors())
    key = f"items/b0/{WEIGHTS_FILE}"
    data = bytearray(objects(uri)[key])
    data[-3] ^= 0x01  # one bit of one value: still a valid safetensors file
    put_object(uri, key, bytes(data))
    with pytest.raises(StoreError) as info:
        store.load("b0")
    assert str(info.value) == (
        "checksum mismatch for base 'b0': stored file was modified or corrupted"
    )


def test_crash_before_manifest_leaves_item_invisible_and_reregistrable(store: SkillStore,
                                                                      uri: str):
    store.register("b0", "base", {}, base_tensors())
    put_object(uri, f"items/walk/{WEIGHTS_FILE}", b"half a file")
    put_object(uri, f"items/walk/{CONFIG_FILE}", b"{")
    assert not store.exists("walk") and [e.name for e in store.list()] == ["b0"]
    with pytest.raises(StoreError, match=r"no item named 'walk' in the store \(it holds b0\)"):
        store.load("walk")
    store.register("walk", "skill", {"rank": 8}, store_workers.skill_tensors(3), parent="b0")
    assert store.load("walk")[0] == {"rank": 8}


def test_update_metrics_and_remove(store: SkillStore, uri: str):
    store.register("b0", "base", {}, base_tensors(), metrics={"a": 1})
    store.register("walk", "skill", {}, store_workers.skill_tensors(0), parent="b0")
    assert store.update_metrics("b0", {"b": 2.5, "nan": float("nan")}).metrics == {
        "a": 1, "b": 2.5, "nan": None}
    assert store.entry("b0").metrics == {"a": 1, "b": 2.5, "nan": None}
    with pytest.raises(StoreError, match=r"cannot remove base 'b0': items built on it remain"):
        store.remove("b0")
    store.remove("walk")
    assert not store.exists("walk")
    assert not any(key.startswith("items/walk/") for key in objects(uri))
    store.remove("b0")
    assert store.list() == [] and objects(uri) == {}
    with pytest.raises(StoreError, match=r"no item named 'b0' in the store \(it is empty\)"):
        store.remove("b0")


def test_datasets(store: SkillStore):
    table = pa.table({"obs": [[0.5, 1.0], [2.0, 3.0]], "episode": [0, 0]}).replace_schema_metadata(
        {"suite": "dmc", "env": "walker-walk"})
    assert not store.has_dataset("walk")
    store.put_dataset("walk", table)
    assert store.has_dataset("walk")
    back = store.get_dataset("walk")
    assert back.equals(table) and back.schema.metadata == table.schema.metadata
    with pytest.raises(StoreError, match="dataset 'walk' is already in the store"):
        store.put_dataset("walk", table.slice(0, 1))
    store.put_dataset("walk", table.slice(0, 1), overwrite=True)
    assert store.get_dataset("walk").num_rows == 1
    with pytest.raises(StoreError, match=r"no dataset named 'run' in the store \(it holds walk\)"):
        store.get_dataset("run")


def test_results_keep_append_order(store: SkillStore):
    assert store.results().num_rows == 0
    store.append_results([{"task": "walk", "score": 1}])
    store.append_results([{"task": "run", "score": 0.5, "cost": 2.0}, {"task": "stand"}])
    store.append_results([])
    assert store.results().to_pylist() == [
        {"task": "walk", "score": 1.0, "cost": None},
        {"task": "run", "score": 0.5, "cost": 2.0},
        {"task": "stand", "score": None, "cost": None},
    ]


def test_check_writable_and_a_missing_bucket(store: SkillStore, uri: str, endpoint: int):
    store.check_writable()
    assert objects(uri) == {}  # the probe is gone

    missing = f"s3://no-such-bucket/store?{_query(endpoint)}"
    with pytest.raises(StoreError, match=f"^store at {missing} is not writable: .*no-such-bucket"
                       .replace("?", r"\?")) as info:
        SkillStore(missing).check_writable()
    assert "\n" not in str(info.value)
    with pytest.raises(StoreError, match="is not writable"):
        SkillStore(missing).register("b0", "base", {}, base_tensors())


def test_unreachable_endpoint_is_a_one_line_store_error():
    # Nothing listens on this port; pyarrow retries a few times (about 6 s here) first.
    dead = f"s3://{BUCKET}/store?{_query(_free_port())}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in AWS_ENV.items():
            patch.setenv(key, value)
        with pytest.raises(StoreError, match="^store at .* cannot be read: ") as info:
            SkillStore(dead).exists("b0")
    assert "\n" not in str(info.value)


def test_uri_of_keeps_the_query(store: SkillStore, uri: str, endpoint: int):
    runs = store.uri_of("runs", "walk__psec__0")
    prefix = uri.split("?")[0]
    assert runs == f"{prefix}/runs/walk__psec__0?{_query(endpoint)}"
    fs, path = pafs.FileSystem.from_uri(runs)
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{prefix[5:]}/runs/walk__psec__0"
    assert SkillStore("/tmp/s").uri_of("runs", "x") == os.path.join("/tmp/s", "runs", "x")


def test_tensorboard_runs_are_uploaded_on_close(uri: str, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipeline.tblog import RUNS_FOLDER, RunLog

    with RunLog(uri, "walk__psec__0") as log:
        for step in (1, 2):
            log.scalars({"loss": 1.0 / step}, step, prefix="train/")
    events = objects(uri, f"{RUNS_FOLDER}/walk__psec__0")
    assert len(events) == 1 and next(iter(events)).split("/")[-1].startswith("events.out.")
    local = tmp_path / "events.out.tfevents"
    local.write_bytes(next(iter(events.values())))
    accumulator = EventAccumulator(str(local))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("train/loss")] == [(1, 1.0), (2, 0.5)]


def test_checkpoint_folder_and_its_removal(uri: str):
    from pipeline.fit import checkpoint_root, remove_run

    root = checkpoint_root(uri)
    assert root == SkillStore(uri).uri_of("checkpoints")
    # What Ray Train writes under RunConfig(storage_path=root, name=run) on S3.
    put_object(uri, "checkpoints/s__u/checkpoint_000000/state.pt", b"state")
    put_object(uri, "checkpoints/other/checkpoint_000000/state.pt", b"state")
    remove_run(uri, "s__u")
    assert sorted(objects(uri, "checkpoints")) == ["checkpoints/other/checkpoint_000000/state.pt"]
    remove_run(uri, "never-ran")  # nothing there: nothing to do


def test_tune_records_live_under_the_store(uri: str):
    from tune.search import (
        RECORD_FILE,
        TUNE_FOLDER,
        _experiment_exists,
        _write_record,
        experiment_path,
        read_record,
    )

    assert read_record(uri, "s1") is None
    assert not _experiment_exists(experiment_path(uri, "s1"))
    _write_record(uri, "s1", {"search": "s1", "wall_seconds": 1.5})
    assert read_record(uri, "s1") == {"search": "s1", "wall_seconds": 1.5}
    assert list(objects(uri)) == [f"{TUNE_FOLDER}/s1/{RECORD_FILE}"]
    assert _experiment_exists(experiment_path(uri, "s1"))


def test_a_tune_experiment_is_stored_under_the_store(uri: str, tmp_path):
    from test_tune import write

    from tune.search import (
        TUNE_FOLDER,
        SearchContext,
        _tuner,
        dump,
        experiment_path,
    )
    from tune.spec import load_search
    from tune.trials import enumerate_points

    search = load_search(str(write(tmp_path)), "smoke")
    context = SearchContext(search=dump(search), stream=dump(search.load_stream()),
                            store_uri=uri, concurrent_fits=1)
    # Making the Tuner (no Ray needed) resolves its storage and writes its first record.
    _tuner(search, context, enumerate_points(search), experiment_path(uri, search.name), False)
    assert f"{TUNE_FOLDER}/{search.name}/tuner.pkl" in objects(uri)


@pytest.mark.slow
@pytest.mark.parametrize("single_worker", ["task", "trainer"])
def test_a_stream_on_s3_resumes_a_killed_fit_from_its_s3_checkpoint(endpoint, ray_cluster, uri,
                                                                    tmp_path, single_worker):
    """`psec run` on the bucket: the store actor, checkpoints on S3 (the plain Ray task's
    own, or Ray Train's storage_path) and the resume from them after a worker is killed,
    results, TensorBoard runs; no checkpoints left."""
    from pipeline_builders import fit_base_killed_once

    torch.set_num_threads(1)
    _, summary = fit_base_killed_once(uri, tmp_path / "s.yaml", steps=40, fail_step=25,
                                      single_worker=single_worker)

    assert summary.fitted == ["stand"]
    store = SkillStore(uri)
    # The restarted worker found a checkpoint on S3 (step 10 or 20), not a fresh start.
    assert store.entry("stand").metrics["resumed_from"] in (10, 20)
    assert [row["name"] for row in store.results().to_pylist()] == ["stand"]
    keys = list(objects(uri))
    # The fault marker stays; the finished unit's checkpoints are gone.
    assert [k for k in keys if k.startswith("checkpoints/")] == [
        "checkpoints/tiny__stand-failed-once"]
    assert any(k.startswith("runs/stand__") and "events.out" in k for k in keys)


def test_a_write_interrupted_midway_leaves_no_dataset(store: SkillStore, monkeypatch):
    import pyarrow.parquet as pq

    table = pa.table({"x": list(range(100))})
    original = pq.ParquetWriter.write_table

    def half_then_interrupted(self, table, *args, **kwargs):
        original(self, table.slice(0, 50), *args, **kwargs)
        raise RuntimeError("interrupted")

    # An S3 upload stream closed on the way out of an error still completes the upload:
    # written straight to S3, the first half would land as a valid 50-row dataset.
    monkeypatch.setattr(pq.ParquetWriter, "write_table", half_then_interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        store.put_dataset("walk", table)
    monkeypatch.undo()
    assert not store.has_dataset("walk")
    store.put_dataset("walk", table)
    assert store.get_dataset("walk").equals(table)
