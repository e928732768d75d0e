"""`psec` error paths and store commands: one line on stderr, exit 2, store unchanged.

Everything here fails (or finishes) before Ray would start, so no test starts Ray.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from pipeline_builders import snapshot

from library.store import SkillStore
from pipeline.cli import main
from tasks.dataset import to_table


def dataset(obs_dim=24, act_dim=6, n=60, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    arrays = dict(obs=obs, actions=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
                  rewards=rng.normal(size=n).astype(np.float32), next_obs=obs,
                  terminals=np.zeros(n, bool), timeouts=np.arange(n) % 20 == 19)
    return to_table(arrays, {"suite": "dmc", "env": "walker-walk"})


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def stream(tasks):
    return {"name": "cli", "tasks": tasks, "scales": {"smoke": {}, "paper": {}}}


def task(name, dataset_name, role="skill", **extra):
    return {"name": name, "suite": "dmc", "env": "walker-walk", "role": role,
            "data": {"source": "store", "dataset": dataset_name}, **extra}


@pytest.fixture
def store(tmp_path):
    store = SkillStore(str(tmp_path / "store"))
    store.put_dataset("d24", dataset(24))
    store.put_dataset("d17", dataset(17))
    return store


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("psec: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_malformed_stream_names_the_field_and_writes_nothing(tmp_path, store, capsys):
    bad = stream([task("stand", "d24", role="base", lora={"rank": 0})])
    before = snapshot(store.local_path)
    code, _, err = run_cli(capsys, "run", write_yaml(tmp_path / "s.yaml", bad),
                           "--store", store.uri)
    assert_one_line_error(code, err, "tasks[0].lora.rank", "must be a positive integer")
    assert snapshot(store.local_path) == before


def test_unknown_scale_and_missing_file_are_one_line_errors(tmp_path, store, capsys):
    path = write_yaml(tmp_path / "s.yaml", stream([task("stand", "d24", role="base")]))
    code, _, err = run_cli(capsys, "run", path, "--scale", "huge", "--store", store.uri)
    assert_one_line_error(code, err, "scale", "huge", "smoke")
    code, _, err = run_cli(capsys, "run", str(tmp_path / "none.yaml"), "--store", store.uri)
    assert_one_line_error(code, err, "none.yaml", "no such file")


def test_dims_mismatch_is_refused_before_any_fit(tmp_path, store, capsys):
    mismatched = stream([task("stand", "d24", role="base"), task("walk", "d17")])
    before = snapshot(store.local_path)
    code, _, err = run_cli(capsys, "run", write_yaml(tmp_path / "s.yaml", mismatched),
                           "--store", store.uri)
    assert_one_line_error(code, err, "'walk'", "17/6", "'stand'", "24/6")
    assert snapshot(store.local_path) == before
    assert not os.path.exists(os.path.join(store.local_path, "checkpoints"))


def test_unwritable_store_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = write_yaml(tmp_path / "s.yaml", stream([task("stand", "d24", role="base")]))
    code, _, err = run_cli(capsys, "run", path, "--store", str(blocker))
    assert_one_line_error(code, err, "not writable")
    assert blocker.read_text() == "not a folder"


def test_an_item_from_another_spec_is_not_silently_reused(tmp_path, store, capsys):
    from library.diffusion import DiffusionPolicy, PolicyConfig
    from library.serialization import dump_base

    config, tensors = dump_base(DiffusionPolicy(PolicyConfig(obs_dim=24, act_dim=6, hidden=8)))
    store.register("stand", "base", config, tensors,
                   task_spec={"name": "stand", "note": "an older spec"})
    path = write_yaml(tmp_path / "s.yaml", stream([task("stand", "d24", role="base")]))
    code, _, err = run_cli(capsys, "run", path, "--store", store.uri)
    assert_one_line_error(code, err, "'stand'", "different spec")


def test_a_dataset_generated_by_older_actors_is_not_silently_reused(tmp_path, store, capsys):
    from tasks.generators.generator import generation_key
    from tasks.spec import parse_task

    stand = {"name": "stand", "suite": "dmc", "env": "walker-stand", "role": "base",
             "data": {"source": "generate", "policy": "expert", "episodes": 2}}
    key = generation_key(parse_task(stand))
    key["actors"]["walker-stand/expert"] = "0123456789abcdef"  # as if retrained since
    store.put_dataset("stand", _with_meta(dataset(), generated_from=key))
    before = snapshot(store.local_path)
    path = write_yaml(tmp_path / "s.yaml", stream([stand]))
    code, _, err = run_cli(capsys, "run", path, "--store", store.uri)
    assert_one_line_error(code, err, "dataset 'stand'", "other actors",
                          "walker-stand/expert: 0123456789abcdef ->")
    assert snapshot(store.local_path) == before


def _with_meta(table, **meta):
    from tasks.dataset import dataset_meta, to_arrays

    return to_table(to_arrays(table), dataset_meta(table) | meta)


def test_submit_validates_the_spec_before_reaching_a_cluster(tmp_path, store, capsys):
    bad = task("walk", "d24", composers=[{"name": "walk", "skills": ["base"]}])
    code, _, err = run_cli(capsys, "submit", write_yaml(tmp_path / "t.yaml", bad),
                           "--store", store.uri)
    assert_one_line_error(code, err, "composers[0].name")
    # Valid on its own, but the store has no base to put the skill on.
    code, _, err = run_cli(capsys, "submit", write_yaml(tmp_path / "u.yaml", task("walk", "d24")),
                           "--store", store.uri)
    assert_one_line_error(code, err, "base", "no base")


def test_skills_commands(tmp_path, store, capsys):
    code, out, _ = run_cli(capsys, "skills", "list", "--store", store.uri)
    assert code == 0 and "empty" in out
    code, _, err = run_cli(capsys, "skills", "show", "walk", "--store", store.uri)
    assert_one_line_error(code, err, "no item named 'walk'")
    code, _, err = run_cli(capsys, "skills", "remove", "walk", "--store", store.uri)
    assert_one_line_error(code, err, "no item named 'walk'")

    from library.diffusion import DiffusionPolicy, PolicyConfig
    from library.serialization import dump_base

    config, tensors = dump_base(DiffusionPolicy(PolicyConfig(obs_dim=24, act_dim=6, hidden=8)))
    store.register("stand", "base", config, tensors, metrics={"score": 0.25})
    code, out, _ = run_cli(capsys, "skills", "list", "--store", store.uri)
    assert code == 0 and "stand" in out and "0.25" in out
    code, out, _ = run_cli(capsys, "skills", "list", "--json", "--store", store.uri)
    assert json.loads(out)[0]["name"] == "stand"
    code, out, _ = run_cli(capsys, "skills", "show", "stand", "--store", store.uri)
    assert json.loads(out)["config_summary"]["policy.obs_dim"] == 24
    code, out, _ = run_cli(capsys, "skills", "remove", "stand", "--store", store.uri)
    assert code == 0 and not store.exists("stand")


def test_data_commands_refuse_bad_input_without_writing(tmp_path, store, capsys):
    before = snapshot(store.local_path)
    code, _, err = run_cli(capsys, "data", "import", "parquet", str(tmp_path / "none.parquet"),
                           "--name", "x", "--store", store.uri)
    assert_one_line_error(code, err, "none.parquet")
    code, _, err = run_cli(capsys, "data", "import", "parquet", "p", "--name", "bad.name",
                           "--store", store.uri)
    assert_one_line_error(code, err, "invalid name")
    code, _, err = run_cli(capsys, "data", "generate", write_yaml(tmp_path / "t.yaml",
                                                                   task("walk", "d24")),
                           "--store", store.uri)
    assert_one_line_error(code, err, "only 'generate' datasets")
    assert snapshot(store.local_path) == before


def test_data_import_parquet_into_the_store(tmp_path, store, capsys):
    from tasks.dataset import write_dataset

    write_dataset(dataset(24, n=40), tmp_path / "x.parquet")
    code, out, _ = run_cli(capsys, "data", "import", "parquet", str(tmp_path / "x.parquet"),
                           "--name", "imported", "--store", store.uri)
    assert code == 0 and "40 transitions" in out
    assert store.get_dataset("imported").num_rows == 40
    code, _, err = run_cli(capsys, "data", "import", "parquet", str(tmp_path / "x.parquet"),
                           "--name", "imported", "--store", store.uri)
    assert_one_line_error(code, err, "already in the store")


def test_report_and_eval_of_an_empty_store_are_user_errors(tmp_path, store, capsys):
    code, _, err = run_cli(capsys, "report", "--store", store.uri, "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "no results")
    code, _, err = run_cli(capsys, "eval", "walk", "--store", store.uri)
    assert_one_line_error(code, err, "no item named 'walk'")


def test_eval_in_an_env_the_suite_lacks_is_refused_before_ray(tmp_path, store, capsys):
    from library.diffusion import DiffusionPolicy, PolicyConfig
    from library.serialization import dump_base
    from tasks.spec import parse_task

    config, tensors = dump_base(DiffusionPolicy(PolicyConfig(obs_dim=24, act_dim=6, hidden=8)))
    spec = parse_task(task("stand", "d24", role="base")).model_dump(mode="json")
    store.register("stand", "base", config, tensors, task_spec=spec)
    code, _, err = run_cli(capsys, "eval", "stand", "--env", "walker-fly", "--store", store.uri)
    assert_one_line_error(code, err, "--env", "walker-fly")


def test_eval_candidates_replace_the_tasks_own_and_nothing_else(store):
    from library.diffusion import DiffusionPolicy, PolicyConfig
    from library.serialization import dump_base
    from pipeline.evaluation import stored_task
    from tasks.spec import parse_task

    config, tensors = dump_base(DiffusionPolicy(PolicyConfig(obs_dim=24, act_dim=6, hidden=8)))
    spec = parse_task(task("stand", "d24", role="base")).model_dump(mode="json")
    store.register("stand", "base", config, tensors, task_spec=spec)
    entry = store.entry("stand")
    own, more = stored_task(entry, None), stored_task(entry, None, 64)
    assert own.eval.n_candidates == 1 and more.eval.n_candidates == 64
    assert more.model_copy(update={"eval": own.eval}) == own
    assert stored_task(entry, "walker-run", 8).eval.n_candidates == 8


def test_python_dash_m_pipeline_is_the_psec_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline", "skills", "show", "nothing",
                             "--store", str(tmp_path / "s")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("psec: error: no item named 'nothing'")


def test_run_passes_its_fit_flags_to_the_driver(tmp_path, monkeypatch):
    import pipeline.driver as driver
    from pipeline.cli import main

    seen = {}

    class Summary:
        def describe(self) -> str:
            return "nothing to do"

    def fake_run(stream, store, scale=None, address=None, options=None, seed=None):
        seen["fit"], seen["seed"] = options.fit_options(), seed
        return Summary()

    monkeypatch.setattr(driver, "run_stream_file", fake_run)
    assert main(["run", "s.yaml", "--store", str(tmp_path / "store")]) == 0
    assert seen["fit"].single_worker == "task" and seen["fit"].concurrent_fits == 2
    assert seen["seed"] is None  # the stream's own seed
    assert main(["run", "s.yaml", "--store", str(tmp_path / "store"), "--single-worker",
                 "trainer", "--concurrent-fits", "1", "--max-failures", "0", "--seed", "3"]) == 0
    assert (seen["fit"].single_worker, seen["fit"].concurrent_fits,
            seen["fit"].max_failures, seen["seed"]) == ("trainer", 1, 0, 3)


def test_report_writes_beside_the_store_by_default(tmp_path, capsys):
    from test_continual_report import cw_rows

    store = SkillStore(str(tmp_path / "store"))
    store.append_results(cw_rows())
    code, out, _ = run_cli(capsys, "report", "--store", store.uri)
    assert code == 0 and out.strip() == f"wrote {tmp_path / 'store-report' / 'results.md'}"
    assert "--out " + str(tmp_path / "store-report") in (tmp_path / "store-report" / "results.md").read_text()


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    from library.diffusion import DiffusionPolicy, PolicyConfig
    from library.serialization import dump_base

    store = SkillStore(str(tmp_path / "s"))
    config, tensors = dump_base(DiffusionPolicy(PolicyConfig(obs_dim=24, act_dim=6, hidden=8)))
    store.register("stand", "base", config, tensors)
    # `psec skills show stand | head -c 0`: the reader closes before the command writes.
    child = subprocess.Popen([sys.executable, "-m", "pipeline", "skills", "show", "stand",
                              "--store", store.uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_a_store_holds_one_seed_s_run(tmp_path, store, capsys):
    from library.diffusion import DiffusionPolicy, PolicyConfig
    from library.serialization import dump_base
    from tasks.spec import dump, parse_stream

    written = stream([task("stand", "d24", role="base")])
    config, tensors = dump_base(DiffusionPolicy(PolicyConfig(obs_dim=24, act_dim=6, hidden=8)))
    store.register("stand", "base", config, tensors,
                   task_spec=dump(parse_stream(written).tasks[0]), metrics={"stream_seed": 0})
    before = snapshot(store.local_path)
    path = write_yaml(tmp_path / "s.yaml", written)
    code, _, err = run_cli(capsys, "run", path, "--store", store.uri, "--seed", "1")
    assert_one_line_error(code, err, "'stand'", "seed 0", "seed is 1", "own --store")
    assert snapshot(store.local_path) == before


def test_cpus_with_a_cluster_address_is_refused_before_anything_runs(capsys, no_ray, tmp_path):
    code, _, err = run_cli(capsys, "run", str(tmp_path / "missing.yaml"), "--cpus", "2",
                           "--address", "10.0.0.1:6379", "--store", str(tmp_path / "s"))
    assert_one_line_error(code, err, "--cpus sizes a private local Ray instance")
    assert not (tmp_path / "s").exists()
