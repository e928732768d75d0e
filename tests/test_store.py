"""The skill store: round trips, the manifest as commit point, validation, concurrency."""

import hashlib
import json
import multiprocessing
import os
import pickle
from pathlib import Path

import pyarrow as pa
import pytest
import safetensors.torch
import store_workers
import torch

from library.errors import StoreError
from library.store import CONFIG_FILE, WEIGHTS_FILE, SkillStore


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path) -> SkillStore:
    return SkillStore(str(root))


def base_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "net.0.weight": torch.randn(256, 33, generator=g),  # [hidden, act + obs + t_emb]
        "net.0.bias": torch.randn(256, generator=g),
        "normalizer.mean": torch.randn(24, generator=g).double(),
        "ln.weight": torch.randn(256, generator=g).half(),
        "steps": torch.arange(5),
        "mask": torch.tensor([True, False, True]),
    }


def add_base(store: SkillStore, name: str = "b0") -> None:
    store.register(name, "base", {"obs_dim": 24, "act_dim": 6}, base_tensors())


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_round_trip_keeps_config_tensors_and_peft_layout(store: SkillStore, root: Path):
    config = {
        "policy": {"obs_dim": 24, "act_dim": 6, "hidden": 256, "betas": [0.1, 10.0]},
        "rank": 8,
        "target": "lora",
    }
    entry = store.register(
        "b0",
        "base",
        config,
        base_tensors(),
        task_spec={"env": "walker-walk", "seed": 1},
        dataset_fingerprint="abc123",
        metrics={"score": 0.5},
    )
    loaded_config, tensors = store.load("b0")
    assert loaded_config == config
    expected = base_tensors()
    assert tensors.keys() == expected.keys()
    for key, t in expected.items():
        assert tensors[key].dtype == t.dtype and torch.equal(tensors[key], t), key

    # peft's file names and format, readable without this class.
    weights = root / "items" / "b0" / WEIGHTS_FILE
    assert json.loads((root / "items" / "b0" / CONFIG_FILE).read_text()) == config
    with safetensors.safe_open(weights, "pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert entry.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert entry.size_bytes == weights.stat().st_size
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


def test_skill_needs_an_existing_base_parent(store: SkillStore):
    lora = store_workers.skill_tensors(0)
    with pytest.raises(StoreError, match="needs a parent base"):
        store.register("walk", "skill", {}, lora)
    with pytest.raises(StoreError, match="parent base 'b0' of skill 'walk' is not in the store"):
        store.register("walk", "skill", {}, lora, parent="b0")
    add_base(store)
    store.register("walk", "skill", {}, lora, parent="b0")
    with pytest.raises(StoreError, match="'walk' .* is a skill, not a base"):
        store.register("mix", "composer", {}, lora, parent="walk")
    with pytest.raises(StoreError, match="cannot have a parent"):
        store.register("b1", "base", {}, lora, parent="b0")
    with pytest.raises(StoreError, match="kind of 'x' must be one of base, skill, composer"):
        store.register("x", "adapter", {}, lora)
    assert [e.name for e in store.list()] == ["b0", "walk"]
    assert [e.name for e in store.list("skill")] == ["walk"]


def test_duplicate_refused_unless_overwrite(store: SkillStore):
    add_base(store)
    store.register("walk", "skill", {"v": 1}, store_workers.skill_tensors(1), parent="b0")
    with pytest.raises(StoreError, match="'walk' is already in the store"):
        store.register("walk", "skill", {"v": 2}, store_workers.skill_tensors(2), parent="b0")
    assert store.load("walk")[0] == {"v": 1}
    store.register(
        "walk", "skill", {"v": 2}, store_workers.skill_tensors(2), parent="b0", overwrite=True
    )
    config, tensors = store.load("walk")
    assert config == {"v": 2}
    assert torch.equal(
        tensors["net.0.lora_A.weight"], store_workers.skill_tensors(2)["net.0.lora_A.weight"]
    )


def test_concurrent_registrations_from_processes(tmp_path: Path):
    """16 processes register 16 names while 4 more race for one name: exactly one racer wins."""
    store = SkillStore(str(tmp_path / "store"))
    add_base(store)
    # forkserver, not spawn: children are fresh processes forked from a clean server, never
    # copies of pytest, but the server imports torch once instead of 20 times (~40 s on
    # 2 busy cores). Preload library.store, not store_workers: Python 3.11's forkserver
    # does not give its server our sys.path, where tests/ is.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["library.store"])
    jobs = [(f"skill-{i}", i) for i in range(16)] + [("shared", 100 + i) for i in range(4)]
    start, results = ctx.Barrier(len(jobs)), ctx.Queue()
    procs = [
        ctx.Process(target=store_workers.register_together, args=(store.uri, n, s, start, results))
        for n, s in jobs
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    assert all(err is None for name, _, err in outcomes if name != "shared")
    racers = [(seed, err) for name, seed, err in outcomes if name == "shared"]
    winners = [seed for seed, err in racers if err is None]
    assert len(winners) == 1, racers
    for _, err in racers:
        assert err is None or "'shared'" in err

    entries = store.list()
    assert sorted(e.name for e in entries) == sorted(
        ["b0", "shared"] + [f"skill-{i}" for i in range(16)]
    )
    for e in entries:
        store.load(e.name)  # every entry's checksum matches its weights
    # The shared item's files are the winner's, not a loser's written over them.
    config, tensors = store.load("shared")
    assert config["seed"] == winners[0]
    assert torch.equal(
        tensors["net.0.lora_B.weight"],
        store_workers.skill_tensors(winners[0])["net.0.lora_B.weight"],
    )


def test_corrupted_weights_refused(store: SkillStore, root: Path):
    add_base(store)
    store.register("walk", "skill", {}, store_workers.skill_tensors(0), parent="b0")
    weights = root / "items" / "walk" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of one tensor value: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(StoreError) as info:
        store.load("walk")
    assert str(info.value) == (
        "checksum mismatch for skill 'walk': stored file was modified or corrupted"
    )


@pytest.mark.parametrize("name", [".", "a/b", "base", "lora_A", "", "x" * 65, "../up", "1st"])
def test_bad_names_refused_and_nothing_written(store: SkillStore, root: Path, name: str):
    with pytest.raises(StoreError, match="invalid name"):
        store.register(name, "base", {}, base_tensors())
    assert not root.exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_tensors_refused_and_nothing_written(store: SkillStore, root: Path, bad):
    add_base(store)
    before = files_under(root)
    tensors = store_workers.skill_tensors(0)
    tensors["net.0.lora_B.weight"][3, 1] = bad
    with pytest.raises(StoreError, match="tensor 'net.0.lora_B.weight' of 'walk' holds NaN or inf"):
        store.register("walk", "skill", {}, tensors, parent="b0")
    assert files_under(root) == before


def test_unstorable_config_refused_and_nothing_written(store: SkillStore, root: Path):
    with pytest.raises(StoreError, match=r"config\.policy\.act is a set"):
        store.register("b0", "base", {"policy": {"act": {1, 2}}}, base_tensors())
    with pytest.raises(StoreError, match="'b0' has no tensors"):
        store.register("b0", "base", {}, {})
    with pytest.raises(StoreError, match="tensor 'w' of 'b0' is a list"):
        store.register("b0", "base", {}, {"w": [1.0]})
    assert not root.exists()


def test_crash_before_manifest_leaves_item_invisible_and_reregistrable(
    store: SkillStore, root: Path
):
    add_base(store)
    # What a crash between the weights and the manifest entry leaves behind.
    item = root / "items" / "walk"
    item.mkdir(parents=True)
    (item / WEIGHTS_FILE).write_bytes(b"half a file")
    (item / CONFIG_FILE).write_text("{")
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


def test_remove(store: SkillStore, root: Path):
    add_base(store)
    store.register("walk", "skill", {}, store_workers.skill_tensors(0), parent="b0")
    with pytest.raises(
        StoreError, match=r"cannot remove base 'b0': items built on it remain \(walk\)"
    ):
        store.remove("b0")
    store.remove("walk")
    assert not store.exists("walk")
    assert not (root / "items" / "walk").exists()
    with pytest.raises(StoreError, match=r"no item named 'walk' in the store \(it holds b0\)"):
        store.remove("walk")
    store.remove("b0")
    assert store.list() == []
    with pytest.raises(StoreError, match=r"no item named 'b0' in the store \(it is empty\)"):
        store.load("b0")


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
    entry = store.update_metrics("walk", {"b": 3.5, "c": float("nan"), "d": torch.tensor(0.25)})
    assert entry.metrics == {"a": 1, "b": 3.5, "c": None, "d": 0.25}  # JSON has no NaN
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
    table = pa.table({"obs": [[0.0, 1.0]], "rewards": [1.0]}).replace_schema_metadata(
        {"suite": "dmc", "env": "walker-walk"}
    )
    assert not store.has_dataset("walk")
    store.put_dataset("walk", table)
    assert store.has_dataset("walk")
    got = store.get_dataset("walk")
    assert got.equals(table) and got.schema.metadata == table.schema.metadata
    with pytest.raises(StoreError, match="dataset 'walk' is already in the store"):
        store.put_dataset("walk", table)
    with pytest.raises(StoreError, match=r"no dataset named 'run' in the store \(it holds walk\)"):
        store.get_dataset("run")


def test_results_from_several_appends_concatenate(store: SkillStore):
    assert store.results().num_rows == 0
    store.append_results([{"task": "walk", "score": 1}])
    store.append_results(
        [{"task": "run", "score": 0.5, "cost": 2.0}, {"task": "stand", "score": 0.25}]
    )
    store.append_results([])
    results = store.results()
    assert results.to_pylist() == [
        {"task": "walk", "score": 1.0, "cost": None},
        {"task": "run", "score": 0.5, "cost": 2.0},
        {"task": "stand", "score": 0.25, "cost": None},
    ]


def test_unwritable_store_fails_check_writable_in_one_line(tmp_path: Path):
    # Tests run as root, which ignores permissions: a regular file where the folder should be.
    blocker = tmp_path / "store"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError) as info:
        SkillStore(str(blocker)).check_writable()
    assert (
        str(info.value) == f"store at {blocker} is not writable: {blocker} is a file, not a folder"
    )

    below = SkillStore(str(blocker / "sub"))
    with pytest.raises(StoreError, match=f"^store at {blocker / 'sub'} is not writable: ") as info:
        below.check_writable()
    assert "\n" not in str(info.value)
    with pytest.raises(StoreError, match="is not writable"):
        below.register("b0", "base", {}, base_tensors())
    SkillStore(str(tmp_path / "fresh")).check_writable()
    assert files_under(tmp_path / "fresh") == []  # the probe is gone


def test_file_uri_and_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = SkillStore(f"file://{tmp_path}/store")
    assert store.local_path == str(tmp_path / "store")
    add_base(store)
    assert (tmp_path / "store" / "manifest" / "b0.json").is_file()
    assert torch.equal(store.load("b0")[1]["net.0.bias"], base_tensors()["net.0.bias"])

    # A relative path is pinned to an absolute one, so a worker elsewhere finds the same store.
    monkeypatch.chdir(tmp_path)
    relative = SkillStore("store")
    assert relative.uri == str(tmp_path / "store")
    monkeypatch.chdir("/")
    clone = pickle.loads(pickle.dumps(relative))
    assert clone.uri == relative.uri and clone.exists("b0")


def test_object_store_code_path():
    """The non-local path (single PUTs, no locks) on pyarrow's in-memory filesystem."""
    store = SkillStore("mock://")
    assert store.local_path is None
    store.check_writable()
    add_base(store)
    store.register("walk", "skill", {"rank": 8}, store_workers.skill_tensors(0), parent="b0")
    with pytest.raises(StoreError, match="'walk' is already in the store"):
        store.register("walk", "skill", {}, store_workers.skill_tensors(1), parent="b0")
    assert store.load("walk")[0] == {"rank": 8}
    assert [e.name for e in store.list()] == ["b0", "walk"]
    store.put_dataset("walk", pa.table({"x": [1]}))
    assert store.get_dataset("walk").num_rows == 1
    store.append_results([{"a": 1}])
    store.append_results([{"a": 2}])
    assert store.results().column("a").to_pylist() == [1, 2]
    store.remove("walk")
    assert not store.exists("walk")


def test_bad_uri():
    with pytest.raises(StoreError, match="cannot open store at nosuch://x"):
        SkillStore("nosuch://x")
    assert os.path.isabs(SkillStore().uri)
