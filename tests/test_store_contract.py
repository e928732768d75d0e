"""The skill store's contract (ARCHITECTURE.md, "Store"), checked on every backend by the
same test code: a local folder and S3 (a local moto server, one per session). What only one
backend has is tested beside it: tests/test_store.py (local: locks across processes, a file
where the folder should be, file:// and relative paths), tests/test_store_s3.py (S3: the
URI query, a missing bucket, a dead endpoint, the tools that open store paths themselves),
tests/test_store_gcs.py (gs://, offline)."""

import hashlib
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import safetensors
import store_workers
import torch
from library_builders import add_trained_looking_skill, tiny_policy
from store_builders import (
    add_base,
    base_tensors,
    files,
    listing,
    lock_files,
    put_object,
    untouched,
)

from library.composition import AlphaConfig, Composer
from library.errors import StoreError
from library.serialization import dump_base, dump_composer, dump_skill
from library.store import CONFIG_FILE, WEIGHTS_FILE, SkillStore

pytest_plugins = ["store_fixtures"]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path) -> SkillStore:
    """An empty store on each backend: a local folder, a fresh prefix in the moto bucket."""
    if request.param == "local":
        return SkillStore(str(tmp_path / "store"))
    return SkillStore(request.getfixturevalue("s3_uri"))


def test_items_round_trip_bit_for_bit_in_peft_layout(store: SkillStore, tmp_path):
    config = {
        "policy": {"obs_dim": 24, "act_dim": 6, "hidden": 256, "betas": [0.1, 10.0]},
        "rank": 8,
        "target": "lora",
    }
    entry = store.register("b0", "base", config, base_tensors(),
                           task_spec={"env": "walker-walk", "seed": 1},
                           dataset_fingerprint="abc123", metrics={"score": 0.5})
    store.register("walk", "skill", {"rank": 8}, store_workers.skill_tensors(1), parent="b0")
    store.register("mix", "composer", {"skills": ["walk"]}, store_workers.skill_tensors(2),
                   parent="b0")

    loaded_config, tensors = store.load("b0")
    assert loaded_config == config
    expected = base_tensors()
    assert tensors.keys() == expected.keys()
    for key, t in expected.items():
        assert tensors[key].dtype == t.dtype and torch.equal(tensors[key], t), key
    assert torch.equal(store.load("walk")[1]["net.0.lora_B.weight"],
                       store_workers.skill_tensors(1)["net.0.lora_B.weight"])

    stored = files(store.uri)
    # The entries, configs and weights (and a local store's lock files): no temp files.
    names = ("b0", "walk", "mix")
    assert sorted(stored) == sorted(
        [f"manifest/{n}.json" for n in names]
        + [f"items/{n}/{f}" for n in names for f in (CONFIG_FILE, WEIGHTS_FILE)]
        + lock_files(store, *names)
    )
    # peft's file names and format, readable without this class.
    assert json.loads(stored[f"items/b0/{CONFIG_FILE}"]) == config
    weights = stored[f"items/b0/{WEIGHTS_FILE}"]
    (tmp_path / "copy.safetensors").write_bytes(weights)
    with safetensors.safe_open(tmp_path / "copy.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == sorted(expected)  # keys without the item's name
    assert entry.sha256 == hashlib.sha256(weights).hexdigest()
    assert entry.size_bytes == len(weights)
    assert json.loads(stored["manifest/b0.json"])["dataset_fingerprint"] == "abc123"

    assert entry == store.entry("b0")
    assert entry.task_spec == {"env": "walker-walk", "seed": 1}
    assert entry.dataset_fingerprint == "abc123"
    assert entry.config_summary == {
        "policy.obs_dim": 24,
        "policy.act_dim": 6,
        "policy.hidden": 256,
        "policy.betas": [0.1, 10.0],
        "rank": 8,
        "target": "lora",
    }
    assert [e.name for e in store.list()] == ["b0", "walk", "mix"]
    assert [e.name for e in store.list("skill")] == ["walk"]
    assert [e.name for e in store.list("composer")] == ["mix"]
    assert store.manifest()[0]["metrics"] == {"score": 0.5}
    # Another process's view: a store unpickled from this one reads the same items.
    again = pickle.loads(pickle.dumps(store))
    assert again.uri == store.uri and again.local_path == store.local_path
    assert [e.name for e in again.list()] == ["b0", "walk", "mix"]


def test_a_real_composer_loads_back_and_acts_the_same(store: SkillStore):
    from pipeline.acting import load_composer

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


def test_parents_kinds_and_duplicates_are_checked_before_any_write(store: SkillStore):
    lora = store_workers.skill_tensors(0)
    with pytest.raises(StoreError, match="needs a parent base"):
        store.register("walk", "skill", {}, lora)
    with pytest.raises(StoreError, match="parent base 'b0' of skill 'walk' is not in the store"):
        store.register("walk", "skill", {}, lora, parent="b0")
    add_base(store)
    store.register("walk", "skill", {"v": 1}, store_workers.skill_tensors(1), parent="b0")
    before = listing(store.uri)
    with pytest.raises(StoreError, match=r"^'walk' is already in the store \(pass overwrite"):
        store.register("walk", "skill", {"v": 2}, store_workers.skill_tensors(2), parent="b0")
    with pytest.raises(StoreError, match="'walk' .* is a skill, not a base"):
        store.register("mix", "composer", {}, lora, parent="walk")
    with pytest.raises(StoreError, match="cannot have a parent"):
        store.register("b1", "base", {}, lora, parent="b0")
    with pytest.raises(StoreError, match="kind of 'x' must be one of base, skill, composer"):
        store.register("x", "adapter", {}, lora)
    assert listing(store.uri) == before  # refusals write nothing
    assert store.load("walk")[0] == {"v": 1}
    assert [e.name for e in store.list()] == ["b0", "walk"]
    assert [e.name for e in store.list("skill")] == ["walk"]

    store.register("walk", "skill", {"v": 2}, store_workers.skill_tensors(2), parent="b0",
                   overwrite=True)
    config, tensors = store.load("walk")
    assert config == {"v": 2}
    assert torch.equal(tensors["net.0.lora_A.weight"],
                       store_workers.skill_tensors(2)["net.0.lora_A.weight"])


def test_corrupted_weights_refused(store: SkillStore):
    add_base(store)
    store.register("walk", "skill", {}, store_workers.skill_tensors(0), parent="b0")
    for name in ("walk", "b0"):
        key = f"items/{name}/{WEIGHTS_FILE}"
        data = bytearray(files(store.uri)[key])
        data[-3] ^= 0x01  # one bit of one tensor value: still a valid safetensors file
        put_object(store.uri, key, bytes(data))
    with pytest.raises(StoreError) as info:
        store.load("walk")
    assert str(info.value) == (
        "checksum mismatch for skill 'walk': stored file was modified or corrupted"
    )
    with pytest.raises(StoreError) as info:
        store.load("b0")
    assert str(info.value) == (
        "checksum mismatch for base 'b0': stored file was modified or corrupted"
    )


@pytest.mark.parametrize("name", [".", "a/b", "base", "lora_A", "", "x" * 65, "../up", "1st"])
def test_bad_names_refused_and_nothing_written(store: SkillStore, name: str):
    with pytest.raises(StoreError, match="invalid name"):
        store.register(name, "base", {}, base_tensors())
    with pytest.raises(StoreError, match="invalid name"):
        store.put_dataset(name, pa.table({"x": [1]}))
    assert untouched(store.uri)


def test_non_finite_tensors_refused_and_nothing_written(store: SkillStore):
    add_base(store)
    before = listing(store.uri)
    for bad in (float("nan"), float("inf"), float("-inf")):
        tensors = store_workers.skill_tensors(0)
        tensors["net.0.lora_B.weight"][3, 1] = bad
        with pytest.raises(StoreError,
                           match="tensor 'net.0.lora_B.weight' of 'walk' holds NaN or inf"):
            store.register("walk", "skill", {}, tensors, parent="b0")
    assert listing(store.uri) == before


def test_unstorable_config_refused_and_nothing_written(store: SkillStore):
    with pytest.raises(StoreError, match=r"config\.policy\.act is a set"):
        store.register("b0", "base", {"policy": {"act": {1, 2}}}, base_tensors())
    with pytest.raises(StoreError, match="'b0' has no tensors"):
        store.register("b0", "base", {}, {})
    with pytest.raises(StoreError, match="tensor 'w' of 'b0' is a list"):
        store.register("b0", "base", {}, {"w": [1.0]})
    assert untouched(store.uri)


def test_crash_before_manifest_leaves_item_invisible_and_reregistrable(store: SkillStore):
    add_base(store)
    # What a crash between the weights and the manifest entry leaves behind.
    put_object(store.uri, f"items/walk/{WEIGHTS_FILE}", b"half a file")
    put_object(store.uri, f"items/walk/{CONFIG_FILE}", b"{")
    assert not store.exists("walk")
    assert [e.name for e in store.list()] == ["b0"]
    with pytest.raises(StoreError, match=r"no item named 'walk' in the store \(it holds b0\)"):
        store.load("walk")

    store.register("walk", "skill", {"rank": 8}, store_workers.skill_tensors(3), parent="b0")
    config, tensors = store.load("walk")
    assert config == {"rank": 8}
    assert torch.equal(
        tensors["net.0.lora_A.weight"], store_workers.skill_tensors(3)["net.0.lora_A.weight"]
    )


def test_remove(store: SkillStore):
    add_base(store)
    store.register("walk", "skill", {}, store_workers.skill_tensors(0), parent="b0")
    with pytest.raises(
        StoreError, match=r"cannot remove base 'b0': items built on it remain \(walk\)"
    ):
        store.remove("b0")
    store.remove("walk")
    assert not store.exists("walk")
    assert not [key for key in listing(store.uri) if key.startswith("items/walk")]
    with pytest.raises(StoreError, match=r"no item named 'walk' in the store \(it holds b0\)"):
        store.remove("walk")
    store.remove("b0")
    assert store.list() == []
    assert sorted(files(store.uri)) == lock_files(store, "b0", "walk")
    with pytest.raises(StoreError, match=r"no item named 'b0' in the store \(it is empty\)"):
        store.load("b0")
    with pytest.raises(StoreError, match=r"no item named 'b0' in the store \(it is empty\)"):
        store.remove("b0")


def test_unknown_name_lists_a_few_names(store: SkillStore):
    for i in range(7):
        add_base(store, f"b{i}")
    with pytest.raises(StoreError, match=r"\(it holds b0, b1, b2, b3, b4 and 2 more\)"):
        store.entry("nope")


def test_update_metrics_merges(store: SkillStore):
    add_base(store)
    store.register(
        "walk", "skill", {}, store_workers.skill_tensors(0), parent="b0", metrics={"a": 1, "b": 2}
    )
    entry = store.update_metrics(
        "walk", {"b": 3.5, "c": float("nan"), "d": torch.tensor(0.25), "e": np.float32(0.5)}
    )
    assert entry.metrics == {"a": 1, "b": 3.5, "c": None, "d": 0.25, "e": 0.5}  # no NaN in JSON
    assert store.entry("walk").metrics == entry.metrics
    store.load("walk")  # the weights are untouched


def test_manifest_is_json_sorted_by_created(store: SkillStore):
    add_base(store, "zz")
    add_base(store, "aa")
    manifest = store.manifest()
    assert [m["name"] for m in manifest] == ["zz", "aa"]
    assert json.loads(json.dumps(manifest)) == manifest
    assert manifest[0]["created"] <= manifest[1]["created"]


def test_datasets_keep_schema_metadata(store: SkillStore):
    table = pa.table(
        {"obs": [[0.5, 1.0], [2.0, 3.0]], "rewards": [1.0, 0.0], "episode": [0, 0]}
    ).replace_schema_metadata({"suite": "dmc", "env": "walker-walk"})
    assert not store.has_dataset("walk")
    store.put_dataset("walk", table)
    assert store.has_dataset("walk")
    got = store.get_dataset("walk")
    assert got.equals(table) and got.schema.metadata == table.schema.metadata
    schema = store.get_dataset_schema("walk")  # the footer alone: metadata without rows
    assert schema.metadata == table.schema.metadata and schema.names == table.schema.names
    schema, rows = store.dataset_footer("walk")  # the same footer, with the row count
    assert schema.metadata == table.schema.metadata and rows == 2
    with pytest.raises(StoreError, match="dataset 'walk' is already in the store"):
        store.put_dataset("walk", table.slice(0, 1))
    store.put_dataset("walk", table.slice(0, 1), overwrite=True)
    assert store.get_dataset("walk").num_rows == 1
    with pytest.raises(StoreError, match=r"no dataset named 'run' in the store \(it holds walk\)"):
        store.get_dataset("run")
    with pytest.raises(StoreError, match=r"no dataset named 'run' in the store \(it holds walk\)"):
        store.get_dataset_schema("run")
    with pytest.raises(StoreError, match=r"no dataset named 'run' in the store \(it holds walk\)"):
        store.dataset_footer("run")


def test_a_write_interrupted_midway_leaves_no_dataset(store: SkillStore, monkeypatch):
    table = pa.table({"x": list(range(100))})
    original = pq.ParquetWriter.write_table

    def half_then_interrupted(self, table, *args, **kwargs):
        original(self, table.slice(0, 50), *args, **kwargs)
        raise RuntimeError("interrupted")

    # Locally the half-written temp file must never be renamed into place; on S3 an upload
    # stream closed on the way out of an error still completes its upload, so written
    # straight to the bucket the first half would land as a valid 50-row dataset.
    monkeypatch.setattr(pq.ParquetWriter, "write_table", half_then_interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        store.put_dataset("walk", table)
    monkeypatch.undo()
    assert not store.has_dataset("walk")
    assert files(store.uri, "datasets") == {}  # no temp file left either
    store.put_dataset("walk", table)
    assert store.get_dataset("walk").equals(table)


def test_results_from_several_appends_concatenate_in_append_order(store: SkillStore):
    assert store.results().num_rows == 0
    store.append_results([{"task": "walk", "score": 1}])
    store.append_results(
        [{"task": "run", "score": 0.5, "cost": 2.0}, {"task": "stand", "score": 0.25}]
    )
    store.append_results([])
    store.append_results([{"task": "jump"}])
    assert store.results().to_pylist() == [
        {"task": "walk", "score": 1.0, "cost": None},
        {"task": "run", "score": 0.5, "cost": 2.0},
        {"task": "stand", "score": 0.25, "cost": None},
        {"task": "jump", "score": None, "cost": None},
    ]


def test_check_writable_leaves_nothing(store: SkillStore):
    store.check_writable()
    assert listing(store.uri) == {}  # the probe is gone


def test_uri_of_names_a_place_inside_the_store(store: SkillStore):
    """A tool that opens `uri_of(...)` itself (Ray Train, TensorBoard uploads) writes into
    the store, whatever the backend."""
    fs, path = pafs.FileSystem.from_uri(store.uri_of("runs", "walk__psec__0"))
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/events") as f:
        f.write(b"event")
    assert files(store.uri, "runs") == {"runs/walk__psec__0/events": b"event"}


def test_small_files_are_written_whole_listed_read_and_deleted(store: SkillStore):
    """The bookkeeping files beside the items (pipeline.inbox's serve records)."""
    assert store.file_names("serving", ".json") == [] and store.get_file("serving", "a.json") is None
    store.put_file("serving", "b.json", b'{"b": 1}')
    store.put_file("serving", "a.json", b"first")
    store.put_file("serving", "a.json", b"second")  # replaced whole
    store.put_file("serving", "c.txt", b"other")
    assert store.file_names("serving", ".json") == ["a.json", "b.json"]
    assert store.get_file("serving", "a.json") == b"second"
    assert files(store.uri, "serving") == {"serving/a.json": b"second",
                                           "serving/b.json": b'{"b": 1}',
                                           "serving/c.txt": b"other"}  # no temp file left
    store.delete_file("serving", "a.json")
    store.delete_file("serving", "a.json")  # gone already: nothing happens
    assert store.file_names("serving", ".json") == ["b.json"]
