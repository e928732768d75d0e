"""User mistakes found by probing every entry point: each is one line `psec: error: …`,
exit status 2, and the store (where there is one) is left as it was.

Complements tests/test_cli.py (malformed streams, dims, unwritable stores). All but the
last test fail before Ray would start, and a guard makes sure none reaches `ray.init`.
"""

import os

import pytest
import yaml
from pipeline_builders import put_datasets, register_base, snapshot, tiny_task, write_stream

from library.store import SkillStore
from pipeline.cli import main


def one_line_error(capsys, entry_point, argv, *needles):
    """Run `entry_point(argv)` in-process; assert exit 2 and one stderr line holding
    every needle; return that line."""
    code = entry_point(list(argv))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("psec: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(autouse=True)
def refusals_come_before_ray(no_ray):
    """Every refusal here comes before Ray; `ray.init` reached is a failure, not a hang or
    an attach to somebody else's instance on this machine (tests/conftest.py `no_ray`)."""


@pytest.fixture
def store(tmp_path):
    """A store with the dataset and untrained base of a tiny `stand` task."""
    uri = str(tmp_path / "store")
    put_datasets(uri, [tiny_task("stand", role="base")])
    register_base(uri, "stand", "stand-data")
    return SkillStore(uri)


@pytest.mark.parametrize("argv, needles", [
    ([], ["the following arguments are required: COMMAND", "see psec --help"]),
    (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    (["run", "s.yaml", "--concurrent-fits", "0"], ["run: argument --concurrent-fits", ">= 1"]),
    (["run", "s.yaml", "--max-failures", "-3"], ["--max-failures: must be >= 0, got -3"]),
    (["serve", "--poll", "-1"], ["--poll: must be > 0 seconds"]),
    (["serve", "--poll", "nan"], ["--poll: must be > 0 seconds"]),
    (["eval", "stand", "--seeds", "0", "-1"], ["--seeds: must be >= 0, got -1"]),
    (["eval", "stand", "--episodes", "zero"], ["--episodes: must be an integer"]),
    (["eval", "stand", "--candidates", "0"], ["eval: argument --candidates", ">= 1"]),
    (["data", "import", "xyz", "f.h5", "--name", "g"], ["data import: argument format"]),
    (["data", "import", "parquet", "f.parquet"], ["required: --name",
                                                  "see psec data import --help"]),
    (["skills"], ["skills: the following arguments are required: ACTION"]),
])
def test_a_bad_command_line_is_one_line(capsys, argv, needles):
    one_line_error(capsys, main, argv, *needles)


def test_help_is_still_argparse_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    assert "usage: psec run" in capsys.readouterr().out


def test_a_spec_that_is_not_text_names_the_file(tmp_path, store, capsys):
    binary = tmp_path / "spec.yaml"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    before = snapshot(store.local_path)
    for command in (["run"], ["submit"], ["data", "generate"], ["tune"]):
        one_line_error(capsys, main, [*command, str(binary), "--store", store.uri],
                       "spec.yaml: not a UTF-8 text file")
    assert snapshot(store.local_path) == before


def test_a_task_spec_where_a_stream_goes_and_back_says_so(tmp_path, store, capsys):
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump(tiny_task("walk", base="stand")))
    stream = write_stream(tmp_path / "stream.yaml", [tiny_task("stand", role="base")])
    before = snapshot(store.local_path)
    one_line_error(capsys, main, ["run", str(task), "--store", store.uri],
                   "task.yaml: holds one task spec", "`tasks:`")
    for command in (["submit"], ["data", "generate"]):
        one_line_error(capsys, main, [*command, stream, "--store", store.uri],
                       "stream.yaml: holds a stream", "one task spec")
    assert snapshot(store.local_path) == before


def test_negative_eval_seeds_in_a_stream_name_the_field(tmp_path, store, capsys):
    task = tiny_task("stand", role="base")
    task["eval"]["seeds"] = [0, -1]
    before = snapshot(store.local_path)
    one_line_error(capsys, main, ["run", write_stream(tmp_path / "s.yaml", [task]),
                                  "--store", store.uri],
                   "tasks[0].eval.seeds[1]: must be >= 0, got -1")
    assert snapshot(store.local_path) == before


def test_a_file_where_the_store_should_be_is_not_an_empty_store(tmp_path, capsys):
    blocker = tmp_path / "store"
    blocker.write_text("not a folder")
    for argv in (["skills", "list"], ["skills", "list", "--json"], ["skills", "show", "walk"],
                 ["eval", "walk"], ["report", "--out", str(tmp_path / "report")]):
        one_line_error(capsys, main, [*argv, "--store", str(blocker)],
                       "cannot be read", "is a file, not a folder")
    assert blocker.read_text() == "not a folder"


def test_data_import_refuses_folders_and_unknown_origins(tmp_path, store, capsys):
    from pipeline_builders import synthetic_table

    from tasks.dataset import write_dataset

    folder = tmp_path / "folder"
    folder.mkdir()
    parquet = tmp_path / "walker.parquet"
    write_dataset(synthetic_table(n=50), parquet)  # its metadata says suite dmc
    before = snapshot(store.local_path)
    cases = [
        (["parquet", str(folder)], [f"{folder} holds no Parquet data"]),
        (["d4rl", str(folder)], [f"{folder} is a folder, not an HDF5 file"]),
        (["dsrl", str(folder)], [f"{folder} is a folder, not an HDF5 file"]),
        (["parquet", str(parquet), "--suite", "nope"], ["suite: unknown suite 'nope'"]),
        (["parquet", str(parquet), "--env", "walker-fly"], ["env: unknown dmc env 'walker-fly'"]),
        (["parquet", str(parquet), "--suite", "dmc", "--env", "walker-fly"],
         ["env: unknown dmc env 'walker-fly'"]),
    ]
    for argv, needles in cases:
        one_line_error(capsys, main, ["data", "import", *argv, "--name", "imported",
                                      "--store", store.uri], *needles)
    assert snapshot(store.local_path) == before


def test_an_unknown_minari_id_does_not_suggest_an_option_psec_lacks(tmp_path, monkeypatch,
                                                                    store, capsys):
    pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    line = one_line_error(capsys, main, ["data", "import", "minari", "mujoco/hopper/none-v0",
                                         "--name", "hopper", "--store", store.uri],
                          "no Minari dataset 'mujoco/hopper/none-v0'", "minari download")
    assert "download=True" not in line


def test_eval_of_an_item_without_a_task_spec_is_refused_before_ray(store, capsys):
    # `stand` was registered without a task spec: nothing says where to roll it out.
    one_line_error(capsys, main, ["eval", "stand", "--store", store.uri],
                   "'stand' was stored without a task spec")


def test_an_address_where_no_cluster_listens_fails_fast(tmp_path, store, capsys):
    from tasks.spec import parse_task

    walk = tiny_task("walk", base="stand")
    put_datasets(store.uri, [walk])
    spec = tmp_path / "walk.yaml"
    spec.write_text(yaml.safe_dump(parse_task(walk).model_dump(mode="json")))
    before = snapshot(store.local_path)
    # Port 1 on this machine: nothing listens there, the connection is refused at once.
    one_line_error(capsys, main, ["submit", str(spec), "--store", store.uri,
                                  "--address", "127.0.0.1:1"],
                   "cannot reach a Ray cluster at '127.0.0.1:1'")
    one_line_error(capsys, main, ["submit", str(spec), "--store", store.uri,
                                  "--address", "headnode"],
                   "--address 'headnode' is not 'auto', 'host:port' or 'ray://host:port'")
    assert snapshot(store.local_path) == before


def test_output_paths_that_cannot_be_written_fail_before_any_work(tmp_path, store, capsys):
    from pipeline import unseen_report

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    folder = tmp_path / "folder"
    folder.mkdir()
    one_line_error(capsys, main, ["report", "--store", store.uri, "--out", str(blocker)],
                   f"--out {blocker} is a file, not a folder")
    one_line_error(capsys, main, ["report", "--store", store.uri,
                                  "--out", str(blocker / "report")],
                   f"{blocker} is a file")
    # Checked before the search runs (no search file is even read).
    one_line_error(capsys, main, ["tune", str(tmp_path / "search.yaml"), "--store", store.uri,
                                  "--results", str(folder)],
                   f"--results {folder} is a folder, not a file")
    stream = write_stream(tmp_path / "s.yaml", [tiny_task("stand", role="base")])
    one_line_error(capsys, unseen_report.main, [stream, "--store", store.uri,
                                                "--results", str(folder)],
                   f"--results {folder} is a folder, not a file")
    assert blocker.read_text() == "not a folder" and os.listdir(folder) == []


def test_the_module_entry_points_report_bad_command_lines_in_one_line(tmp_path, capsys):
    from pipeline import unseen_report
    from tasks.generators import experts

    one_line_error(capsys, unseen_report.main, [],
                   "python -m pipeline.unseen_report: the following arguments are required")
    one_line_error(capsys, experts.main, ["frob"], "invalid choice: 'frob'")
    # Read-only refusals: nothing under tasks/experts is touched.
    one_line_error(capsys, experts.main, ["export-snapshot", "--run-dir", str(tmp_path),
                                          "--step", "5"],
                   f"{tmp_path} is not a SAC run folder: it has no config.json")
    one_line_error(capsys, experts.main, ["export-medium", "--env", "walker-fly"],
                   "env: unknown dmc env 'walker-fly'")


@pytest.mark.slow  # starting the module's Ray takes 10-30 s here
@pytest.mark.usefixtures("ray_cluster")
def test_submit_says_when_no_server_serves_the_store(tmp_path, store, capsys, monkeypatch):
    import ray

    from pipeline import serving
    from pipeline.inbox import inbox_actor

    # Ray is the test's own (ray_cluster, started before the ray.init guard), so `connect`
    # attaches to nothing else.
    monkeypatch.setattr(serving, "SERVER_WAIT_S", 0.5)
    walk = tiny_task("walk", base="stand")
    put_datasets(store.uri, [walk])
    spec = tmp_path / "walk.yaml"
    spec.write_text(yaml.safe_dump(walk))

    # With an address (here the test's own instance) the cluster's inbox keeps the spec
    # for the next server; without one, submit needs a running serve (tests/test_submit.py).
    assert main(["submit", str(spec), "--store", store.uri, "--address", "auto"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("submitted ") and "no psec serve is running for this store" in out
    inbox = inbox_actor(store.uri)
    assert ray.get(inbox.pending.remote()) == 1  # queued for the next server, as designed

    # --wait would wait for ever: it gives up in one line, and queues nothing more.
    before = snapshot(store.local_path)
    one_line_error(capsys, main, ["submit", str(spec), "--store", store.uri, "--wait",
                                  "--address", "auto"],
                   "no psec serve is running for the store at", "nothing was queued")
    assert ray.get(inbox.pending.remote()) == 1
    assert snapshot(store.local_path) == before

    # A serving driver attaches; it counts until it detaches.
    token = ray.get(inbox.attach.remote())
    assert serving.serving(store.uri) == 1
    ray.get(inbox.detach.remote(token))
    assert serving.serving(store.uri) == 0
    ray.kill(inbox)


def test_the_sac_command_line_is_one_line_too(capsys):
    from tasks.generators.sac import main as sac_main

    one_line_error(capsys, sac_main, ["--steps", "many"], "--steps: invalid int value: 'many'")
