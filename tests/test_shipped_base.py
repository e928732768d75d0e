"""Shipped bases: `psec base train` trains a stream's base in pieces into a folder (the
same weights as one piece), and a stream whose base task names the folder takes that
base instead of fitting one; a folder of another spec, or none, is refused in one line."""

import textwrap

import pytest
import torch

from library.errors import SpecError, StoreError
from library.store import SkillStore
from pipeline.cli import main
from pipeline.driver import DriverOptions, run_stream_file
from pipeline.plan import plan_stream
from pipeline.shipped_base import train_base
from tasks.spec import load_stream

torch.set_num_threads(1)

STREAM = """\
name: shipped
continual: true
seed: 3
tasks:
  - name: stand
    suite: dmc
    env: walker-stand
    role: base
    {shipped}
    data: {{source: generate, policy: medium-expert, episodes: 2, seed: 0}}
    network: {{block_width: 1}}
    train: {{steps: 60, batch_size: 32}}
    eval: {{episodes: 1, seeds: [0], max_steps: 20}}
  - name: walk
    suite: dmc
    env: walker-walk
    role: skill
    base: stand
    data: {{source: generate, policy: expert, episodes: 1, seed: 1}}
    lora: {{rank: 2}}
    train: {{steps: 20, batch_size: 32}}
    composers:
      - {{name: s2w, skills: [base], steps: 10}}
    eval: {{episodes: 1, seeds: [0], max_steps: 20}}
scales:
  smoke: {{fit_shipped: true}}
  paper: {{}}
"""


def stream_file(tmp_path, shipped=None, name="stream.yaml", **replace):
    text = STREAM.format(shipped=f"shipped: {shipped}" if shipped else "")
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def quiet(*_):
    pass


def stored(folder, name="stand"):
    return SkillStore(str(folder)).load(name)[1]


def test_training_in_pieces_is_training_in_one(tmp_path):
    stream = stream_file(tmp_path)
    whole = train_base(stream, "stand", tmp_path / "whole", scale=None, threads=1,
                       checkpoint_every=25, log=quiet)
    assert whole.steps == 60 and len(whole.calls) == 1
    train_base(stream, "stand", tmp_path / "pieces", scale=None, until=25, threads=1,
               checkpoint_every=25, log=quiet)
    # The base as trained so far is in the folder after each piece, with its real steps.
    entry = SkillStore(str(tmp_path / "pieces")).entry("stand")
    assert entry.metrics["train_steps"] == 25 and entry.metrics["planned_steps"] == 60
    assert entry.task_spec["train"]["steps"] == 25
    # The cosine horizon stays the planned one (lr_decay × steps = 3 × 60).
    assert entry.task_spec["train"]["lr_decay"] * 25 == pytest.approx(3.0 * 60)
    pieces = train_base(stream, "stand", tmp_path / "pieces", scale=None, threads=1,
                        checkpoint_every=25, log=quiet)
    assert pieces.steps == 60 and [c["to"] for c in pieces.calls] == [25, 60]
    one, two = stored(tmp_path / "whole"), stored(tmp_path / "pieces")
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)
    # Done is done: another call trains nothing.
    again = train_base(stream, "stand", tmp_path / "pieces", scale=None, threads=1, log=quiet)
    assert again.calls == pieces.calls


def test_training_refuses_a_folder_of_another_plan(tmp_path):
    train_base(stream_file(tmp_path), "stand", tmp_path / "base", scale=None, until=10,
               threads=1, log=quiet)
    other = stream_file(tmp_path, name="other.yaml", **{"block_width: 1": "block_width: 2"})
    with pytest.raises(StoreError, match="training of another plan"):
        train_base(other, "stand", tmp_path / "base", scale=None, threads=1, log=quiet)
    with pytest.raises(SpecError, match="is a skill task, not a base"):
        train_base(other, "walk", tmp_path / "walk", scale=None, threads=1, log=quiet)


def test_training_refuses_to_go_on_on_other_data(tmp_path, monkeypatch):
    # The folder's dataset is not committed: a checkout generates it again, from the actors
    # tasks/experts holds then. Other actors make another table, and the base must not go
    # on training on it.
    import shutil

    import pyarrow.compute as pc

    import tasks.generators.generator as generator

    stream = stream_file(tmp_path)
    train_base(stream, "stand", tmp_path / "base", scale=None, until=10, threads=1, log=quiet)
    shutil.rmtree(tmp_path / "base" / "datasets")
    real = generator.generate

    def other_actors(task, *args, **kwargs):
        table = real(task, *args, **kwargs)
        column = table.schema.get_field_index("rewards")
        return table.set_column(column, "rewards", pc.multiply(table["rewards"], 2.0))

    monkeypatch.setattr(generator, "generate", other_actors)
    with pytest.raises(StoreError, match="trained on another table .* move it away"):
        train_base(stream, "stand", tmp_path / "base", scale=None, threads=1, log=quiet)
    assert SkillStore(str(tmp_path / "base")).entry("stand").metrics["train_steps"] == 10
    # The same actors again: it goes on.
    monkeypatch.setattr(generator, "generate", real)
    shutil.rmtree(tmp_path / "base" / "datasets")
    assert train_base(stream, "stand", tmp_path / "base", scale=None, threads=1,
                      log=quiet).steps == 60


@pytest.mark.slow
def test_a_stream_takes_the_shipped_base(ray_cluster, tmp_path, capsys):
    folder = tmp_path / "bases" / "stand"
    train_base(stream_file(tmp_path), "stand", folder, scale=None, until=40,
               threads=1, log=quiet)
    stream = stream_file(tmp_path, shipped=folder, name="shipped.yaml")
    # Planned as what the folder holds: 40 steps, not the 60 the task asks.
    plan = plan_stream(load_stream(stream))
    assert plan.units["stand"].stages[0].steps == 40

    store_uri = str(tmp_path / "store")
    summary = run_stream_file(stream, store_uri, options=DriverOptions(progress=False))
    assert "stand" not in summary.fitted and {"walk", "s2w"} <= set(summary.fitted)
    store = SkillStore(store_uri)
    assert store.entry("stand").sha256 == SkillStore(str(folder)).entry("stand").sha256
    assert store.entry("stand").metrics["shipped_from"] == str(folder)
    assert not store.has_dataset("stand")  # never fitted here, so never generated
    # It is evaluated like a fitted base, and a rerun fits and copies nothing.
    assert {r["name"] for r in store.results().to_pylist()} >= {"stand", "walk", "s2w"}
    capsys.readouterr()
    assert main(["run", stream, "--store", store_uri]) == 0
    assert "fitted 0, already stored 3" in capsys.readouterr().out

    # A scale with fit_shipped fits the base itself.
    fitted = run_stream_file(stream, str(tmp_path / "fitted"), scale="smoke",
                             options=DriverOptions(progress=False))
    assert "stand" in fitted.fitted


def test_a_missing_or_different_shipped_base_is_refused(tmp_path, capsys):
    store_uri = str(tmp_path / "store")
    missing = stream_file(tmp_path, shipped=tmp_path / "nowhere", name="missing.yaml")
    assert main(["run", missing, "--store", store_uri]) == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere does not exist" in err and "psec base train" in err
    assert len(err.splitlines()) == 1

    folder = tmp_path / "base"
    train_base(stream_file(tmp_path), "stand", folder, scale=None, until=10, threads=1,
               log=quiet)
    other = stream_file(tmp_path, shipped=folder, name="other.yaml",
                        **{"block_width: 1": "block_width: 2"})
    assert main(["run", other, "--store", store_uri]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained with another network" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "store" / "manifest").exists()  # nothing written

    with pytest.raises(Exception, match="only a base task can be shipped"):
        load_stream(stream_file(tmp_path, name="bad.yaml",
                                **{"    lora: {rank: 2}": f"    lora: {{rank: 2}}\n    shipped: {folder}"}))
