"""Ray Tune searches: the search file (every bad field named), trial points as stream
transformations, and a tiny search of two trials on a 2-CPU Ray that resumes and
produces the results table."""

import copy
import shutil
import time
from pathlib import Path

import pytest
import yaml

from library.errors import PsecError, SpecError
from pipeline.plan import plan_task
from tasks.spec_sections import AlphaSpec
from tune.spec import load_search
from tune.trials import (
    UNIFORM_ALPHA,
    alpha_file_tag,
    alpha_label,
    enumerate_points,
    library_tasks,
    start_order,
    stream_name,
    target_datasets,
    trial_task,
)

# Two DMC walker tasks with committed expert actors, 40-step episodes, a few steps each.
STREAM = {
    "name": "tiny", "continual": False, "seed": 0,
    "tasks": [
        {"name": "stand", "suite": "dmc", "env": "walker-stand", "role": "base",
         "horizon": 40, "data": {"source": "generate", "policy": "expert", "episodes": 3},
         "train": {"steps": 30, "batch_size": 32},
         "eval": {"episodes": 1, "seeds": [0], "max_steps": 15}},
        {"name": "walk", "suite": "dmc", "env": "walker-walk", "horizon": 40,
         "data": {"source": "generate", "policy": "expert", "episodes": 2, "seed": 1},
         "lora": {"rank": 2}, "train": {"steps": 20, "batch_size": 32},
         "composers": [{"name": "s2w", "skills": ["base"], "steps": 10}],
         "eval": {"episodes": 1, "seeds": [0], "max_steps": 15}},
        {"name": "run", "suite": "dmc", "env": "walker-walk", "horizon": 40,
         "data": {"source": "generate", "policy": "expert", "episodes": 2, "seed": 2},
         "lora": {"rank": 2}, "train": {"steps": 20, "batch_size": 32},
         "composers": [{"name": "s2r", "skills": ["base"], "steps": 10},
                       {"name": "sw2r", "skills": ["base", "walk"], "steps": 10}],
         "eval": {"episodes": 1, "seeds": [0], "max_steps": 15}},
    ],
    "scales": {"smoke": {}, "paper": {}},
}

SEARCH = {
    "name": "tiny_search", "stream": "stream.yaml",
    "targets": [{"label": "S→W", "composer": "s2w"}],
    "methods": ["psec", "nsec"], "ranks": [2], "seeds": [0],
    "controls": ["single"],
    "alpha_trace": {"target": "S→W", "method": "psec", "seed": 0},
    "scales": {"smoke": {"stream_scale": "smoke"}, "paper": {"stream_scale": "paper"}},
}


def write(tmp_path, search=None, stream=None):
    (tmp_path / "stream.yaml").write_text(yaml.safe_dump(stream or STREAM, sort_keys=False))
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(search or SEARCH, sort_keys=False, allow_unicode=True))
    return path


def changed(**edits):
    search = copy.deepcopy(SEARCH)
    search.update(edits)
    return search


# ------------------------------------------------------------------ the search file


@pytest.mark.parametrize(("edit", "field"), [
    ({"bogus": 1}, "bogus"),
    ({"methods": ["psec", "fancy"]}, "methods[1]"),
    ({"methods": ["psec", "psec"]}, "methods[1]"),
    ({"ranks": [4, 0]}, "ranks[1]"),
    ({"seeds": [0, 0]}, "seeds[1]"),
    ({"data_episodes": [10, 0]}, "data_episodes[1]"),
    ({"name": "has space"}, "name"),
    ({"name": "x" * 41}, "name"),
    ({"targets": []}, "targets"),
    ({"targets": [{"label": "A", "composer": "s2w"}, {"label": "A", "composer": "s2w"}]},
     "targets[1].label"),
    ({"alpha": [{"output": "tanh"}]}, "alpha[0].output"),
    ({"fixed_alpha": [{"output": "softmax", "init": "zero"}]}, "fixed_alpha[0].init"),
    ({"searcher": {"scheduler": "asha", "rungs": [0.5, 0.9]}}, "searcher.rungs"),
    ({"searcher": {"rungs": [0.5, 1.0]}}, "searcher.rungs"),
    ({"searcher": {"kind": "bayes"}}, "searcher.kind"),
    ({"resources": {"max_concurrent_trials": 0}}, "resources.max_concurrent_trials"),
    ({"metric": "speed"}, "metric"),
    ({"alpha_trace": {"target": "nowhere"}}, "alpha_trace.target"),
    ({"alpha_trace": {"target": "S→W", "method": "scratch"}}, "alpha_trace.method"),
    ({"alpha_trace": [{"target": "S→W"}, {"target": "nowhere"}]}, "alpha_trace[1].target"),
    ({"alpha_trace": {"target": "S→W", "alpha": {"init": "zero", "reg": 0}}},
     "alpha_trace.alpha"),
    ({"scales": {"smoke": {"stream_scale": "smoke"}}}, "scales"),
    ({"scales": {"smoke": {"stream_scale": "smoke", "ranks": [0]},
                 "paper": {"stream_scale": "paper"}}}, "scales.smoke.ranks[0]"),
    ({"scales": {"smoke": {"stream_scale": "smoke", "targets": ["S→W", "X"]},
                 "paper": {"stream_scale": "paper"}}}, "scales.smoke.targets[1]"),
])
def test_a_bad_field_is_a_spec_error_naming_it(tmp_path, edit, field):
    with pytest.raises(SpecError) as error:
        load_search(write(tmp_path, changed(**edit)))
    assert error.value.field == field, str(error.value)
    assert "\n" not in str(error.value)


def test_the_stream_and_its_targets_are_checked_on_load(tmp_path):
    with pytest.raises(SpecError) as error:
        load_search(write(tmp_path, changed(targets=[{"label": "S→W", "composer": "nope"}])))
    assert error.value.field == "targets[0].composer" and "s2w, s2r, sw2r" in str(error.value)
    with pytest.raises(SpecError) as error:
        load_search(write(tmp_path, changed(stream="missing.yaml")))
    assert "no such file" in str(error.value)
    with pytest.raises(SpecError) as error:
        load_search(write(tmp_path), scale="huge")
    assert error.value.field == "scale"
    with pytest.raises(SpecError) as error:
        load_search(write(tmp_path, changed(scales={"smoke": {"stream_scale": "fast"},
                                                    "paper": {"stream_scale": "paper"}})),
                    scale="smoke")
    assert error.value.field == "scale" and "fast" in str(error.value)


def test_a_scale_narrows_the_axes(tmp_path):
    search = changed(
        ranks=[2, 4, 8], seeds=[0, 1, 2],
        targets=[{"label": "S→W", "composer": "s2w"}, {"label": "S+W→R", "composer": "sw2r"}],
        alpha_trace=[{"target": "S+W→R"}, {"target": "S→W", "seed": 1}],
        scales={"smoke": {"stream_scale": "smoke", "ranks": [2], "seeds": [0],
                          "targets": ["S→W"]},
                "paper": {"stream_scale": "paper"}})
    smoke = load_search(write(tmp_path, search), scale="smoke")
    assert smoke.ranks == [2] and smoke.seeds == [0] and smoke.stream_scale == "smoke"
    assert [t.label for t in smoke.targets] == ["S→W"]
    assert [(t.target, t.seed) for t in smoke.alpha_trace] == [("S→W", 1)]
    paper = load_search(write(tmp_path, search), scale="paper")
    assert paper.ranks == [2, 4, 8] and paper.seeds == [0, 1, 2] and len(paper.targets) == 2


def test_a_trace_follows_one_alpha_choice_and_goes_with_it(tmp_path):
    """A trace may name which of the search's α choices it follows; a scale that keeps
    only the others drops it, and its plot file is named by the choice."""
    zero = {"output": "raw", "init": "zero", "reg": 0}
    search = changed(
        alpha=[{"output": "raw", "init": "newest"}, zero],
        alpha_trace=[{"target": "S→W"}, {"target": "S→W", "alpha": zero}],
        scales={"smoke": {"stream_scale": "smoke", "alpha": [{"init": "newest"}]},
                "paper": {"stream_scale": "paper"}})
    paper = load_search(write(tmp_path, search), scale="paper")
    assert [t.alpha for t in paper.alpha_trace] == [None, AlphaSpec(**zero)]
    assert {alpha_label(p.alpha) for p in enumerate_points(paper)} == {
        "raw/newest+reg 1", "raw/zero"}
    smoke = load_search(write(tmp_path, search), scale="smoke")
    assert [t.alpha for t in smoke.alpha_trace] == [None]
    assert alpha_file_tag(AlphaSpec(**zero)) == "-raw-zero"
    assert alpha_file_tag(AlphaSpec()) == "-raw-newest-reg1" and alpha_file_tag(None) == ""


def test_every_trace_file_is_named_by_what_tells_it_apart(tmp_path):
    """No trace takes a generic `<search>-alpha.png` (two scales of a search written into
    one document would overwrite each other's): each is named by its target's composer,
    then its method, seed and α choice where they are not the defaults."""
    from tune.table import trace_file

    zero = {"output": "raw", "init": "zero", "reg": 0}
    search = load_search(write(tmp_path, changed(
        alpha=[{"output": "raw", "init": "newest"}, zero],
        targets=[{"label": "S→W", "composer": "s2w"}, {"label": "S+W→R", "composer": "sw2r"}],
        alpha_trace=[{"target": "S→W"}, {"target": "S+W→R"}, {"target": "S→W", "method": "nsec"},
                     {"target": "S→W", "seed": 1}, {"target": "S→W", "alpha": zero}])),
        scale="paper")
    names = [trace_file(search, trace) for trace in search.alpha_trace]
    assert names == ["tiny_search-alpha-s2w.png", "tiny_search-alpha-sw2r.png",
                     "tiny_search-alpha-s2w-nsec.png", "tiny_search-alpha-s2w-seed1.png",
                     "tiny_search-alpha-s2w-raw-zero.png"]



def test_a_scale_can_try_fewer_fixed_weight_start_points(tmp_path):
    search = changed(
        methods=["psec", "fixed"],
        fixed_alpha=[{"init": "uniform"}, {"init": "newest"}, {"output": "softmax"}],
        scales={"smoke": {"stream_scale": "smoke", "fixed_alpha": [{"init": "newest"}]},
                "paper": {"stream_scale": "paper"}})
    smoke = load_search(write(tmp_path, search), scale="smoke")
    assert [choice.init for choice in smoke.fixed_alpha] == ["newest"]
    assert sum(p.method == "fixed" for p in enumerate_points(smoke)) == 1
    assert len(load_search(write(tmp_path, search), scale="paper").fixed_alpha) == 3
    bad = copy.deepcopy(search)
    bad["scales"]["smoke"]["fixed_alpha"] = [{"output": "softmax", "init": "zero"}]
    with pytest.raises(SpecError, match=r"scales\.smoke\.fixed_alpha\[0\]\.init.*zero"):
        load_search(write(tmp_path, bad), scale="paper")


def test_table_2_controls_reuse_the_table_s_psec_trials():
    """search_alpha's paper-controls scale: the default α only; its PSEC points are
    search_dmc_table's at the paper scale (same tags: the same stored items)."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    controls = load_search(str(configs / "search_alpha.yaml"), scale="paper-controls")
    table = load_search(str(configs / "search_dmc_table.yaml"), scale="paper")
    assert len(controls.alpha) == 1 and controls.alpha[0] == table.alpha[0]
    points = enumerate_points(controls)
    assert sorted({p.method for p in points}) == ["psec", "random", "uniform"]
    assert len(points) == 3 * 3 * 3  # targets × seeds × methods
    psec = {p.tag() for p in points if p.method == "psec"}
    assert psec == {p.tag() for p in enumerate_points(table) if p.method == "psec"}
    # Every control composes the same new skill as the table's PSEC trial of its seed.
    assert {p.skill_tag() for p in points} == \
        {p.skill_tag() for p in enumerate_points(table) if p.method == "psec"}


def test_trials_start_with_the_points_that_fit_a_new_skill():
    """Car Run at the paper's budgets: PSEC seeds 0-2 (each fits its seed's safety skill),
    BC-Safe and FISOR (policies of their own) start before the trials that compose a skill
    one of them fits; within each group the search file's order holds."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    points = enumerate_points(load_search(str(configs / "search_dsrl.yaml"), "paper-carrun"))
    order = start_order(points)
    assert sorted(p.tag() for p in order) == sorted(p.tag() for p in points)
    assert [(p.method, p.seed) for p in order[:9]] == [
        (method, seed) for method in ("psec", "bc", "fisor") for seed in (0, 1, 2)]
    fitted = {p.skill_tag() for p in order[:9]}
    assert all(p.skill_tag() in fitted for p in order[9:])
    assert order[9:] == [p for p in points if p not in order[:9]]


def test_the_composer_objective_is_a_search_axis_that_keeps_old_tags(tmp_path):
    search = load_search(write(tmp_path, changed(
        methods=["psec", "uniform", "scratch"], composer_objectives=[None, "advantage"])),
        scale="smoke")
    points = enumerate_points(search)
    # PSEC at both objectives; an untrained composer and a policy of its own at neither.
    assert sorted((p.method, p.objective or "") for p in points) == [
        ("psec", ""), ("psec", "advantage"), ("scratch", ""), ("uniform", "")]
    default, weighted = (p for p in points if p.method == "psec")
    # A point of the default objective is named as before the axis existed...
    before = load_search(write(tmp_path, changed(methods=["psec"])), scale="smoke")
    assert default.tag() == enumerate_points(before)[0].tag()
    # ...and the advantage one fits its skill into an item of its own, which holds the
    # critics its composer weighs with.
    assert weighted.tag() != default.tag() and weighted.skill_tag() != default.skill_tag()
    stream = search.load_stream()
    task = trial_task(search, stream, weighted)
    assert task.composers[0].objective == "advantage" and task.needs_critic
    unit = plan_task(task, bases=["stand"]).units[task.name]
    assert [s.kind for s in unit.stages] == ["critics", "skill", "composer"]
    assert trial_task(search, stream, default).composers[0].objective is None
    assert "composer advantage" in weighted.describe()


def test_composer_data_all_is_the_stream_s_choice_where_the_composer_trains_on_everything(
        tmp_path):
    """S→W's composer trains on all of its task's data already: `composer_data: all`
    adds no trial there (tests/test_dsrl_bullet.py has the composer whose choice it is)."""
    both = load_search(write(tmp_path, changed(methods=["psec"],
                                               composer_data=["stream", "all"])), scale="smoke")
    one = load_search(write(tmp_path, changed(methods=["psec"])), scale="smoke")
    assert enumerate_points(both) == enumerate_points(one)
    assert all(p.composer_data is None for p in enumerate_points(both))


# ------------------------------------------------------ methods as stream transformations


def test_points_cover_the_axes_without_redundant_trials(tmp_path):
    search = load_search(write(tmp_path, changed(
        targets=[{"label": "S→W", "composer": "s2w"}, {"label": "S+W→R", "composer": "sw2r"}],
        methods=["psec", "mlp", "scratch", "fixed", "uniform"], ranks=[2, 4], seeds=[0, 1],
        fixed_alpha=[{"init": "uniform"}, {"init": "newest"}])), scale="smoke")
    points = enumerate_points(search)
    per_target = {m: sum(p.method == m and p.target == "S→W" for p in points)
                  for m in search.methods}
    # psec: 2 ranks x 2 seeds; mlp and scratch have no rank; fixed: 2 ranks x 2 starts x 2
    assert per_target == {"psec": 4, "mlp": 2, "scratch": 2, "fixed": 8, "uniform": 4}
    assert len({p.tag() for p in points}) == len(points)
    assert all(p.alpha == UNIFORM_ALPHA for p in points if p.method == "uniform")


def test_targets_on_one_task_share_their_scratch_policy(tmp_path):
    search = load_search(write(tmp_path, changed(
        targets=[{"label": "S→R", "composer": "s2r"}, {"label": "S+W→R", "composer": "sw2r"}],
        methods=["psec", "scratch"], alpha_trace=None)), scale="smoke")
    points = enumerate_points(search)
    scratch = {p.tag() for p in points if p.method == "scratch"}
    psec = {p.tag() for p in points if p.method == "psec"}
    assert len(scratch) == 1 and len(psec) == 2


def test_each_method_is_a_transformation_of_the_target_task(tmp_path):
    search = load_search(write(tmp_path, changed(
        targets=[{"label": "S+W→R", "composer": "sw2r"}],
        methods=["psec", "nsec", "asec", "mlp", "scratch", "fixed", "uniform", "random"],
        ranks=[4], data_episodes=[5], alpha_trace=None)), scale="smoke")
    stream = search.load_stream()
    by_method = {p.method: p for p in enumerate_points(search)}
    for method, mode in (("psec", "parameter"), ("nsec", "noise"), ("asec", "action"),
                         ("fixed", "fixed")):
        task = trial_task(search, stream, by_method[method])
        tag = by_method[method].tag()
        # Every composing method on one variant, data size and seed shares the new skill.
        assert task.name == f"run_{by_method['psec'].skill_tag()}"
        assert task.role == "skill" and task.base == "stand"
        assert task.lora.rank == 4 and task.lora.kind == "lora"
        assert task.data.source == "store" and task.data.dataset == "run_n5"
        (composer,) = task.composers
        assert composer.name == f"sw2r_{tag}" and composer.mode == mode
        assert composer.skills == ["base", "walk_lora4"] and composer.steps == 10
    mlp = trial_task(search, stream, by_method["mlp"])
    assert mlp.lora.kind == "full" and mlp.composers[0].skills == ["base", "walk_full"]
    assert mlp.composers[0].mode == "parameter"
    scratch = trial_task(search, stream, by_method["scratch"])
    assert scratch.role == "base" and scratch.base is None and not scratch.composers
    uniform = trial_task(search, stream, by_method["uniform"]).composers[0]
    assert uniform.steps == 0 and uniform.mode == "fixed" and uniform.alpha.init == "uniform"
    random_bank = trial_task(search, stream, by_method["random"]).composers[0]
    assert random_bank.bank == "random" and random_bank.mode == "parameter"
    assert random_bank.skills == ["base", "walk_lora4"] and random_bank.steps == 10
    assert mlp.name != task.name and scratch.name == f"run_{by_method['scratch'].tag()}"
    # An ASHA rung trains a fraction of the steps under names of its own.
    rung = trial_task(search, stream, by_method["psec"], fraction=0.5, rung=0)
    assert rung.train.steps == 10 and rung.composers[0].steps == 5
    assert rung.name.endswith("r0") and rung.name != trial_task(search, stream,
                                                                by_method["psec"]).name
    # Shared work: the stored skill once per variant, the datasets once per size.
    points = list(by_method.values())
    assert [t.name for t in library_tasks(search, stream, points)] == ["walk_full",
                                                                       "walk_lora4"]
    assert all(not t.composers and t.data.dataset == "walk"
               for t in library_tasks(search, stream, points))
    datasets = target_datasets(search, stream, points)
    assert set(datasets) == {"run_n5", "walk"} and datasets["run_n5"].data.episodes == 5
    assert stream_name(search, by_method["psec"]) == f"tiny_search_{by_method['psec'].tag()}"


def test_changing_the_data_size_of_an_imported_target_is_refused(tmp_path):
    stream = copy.deepcopy(STREAM)
    stream["tasks"][1]["data"] = {"source": "store", "dataset": "walk-data"}
    with pytest.raises(SpecError) as error:
        load_search(write(tmp_path, changed(data_episodes=[5]), stream))
    assert error.value.field == "data_episodes"


# -------------------------------------------------------------------- a tiny search


@pytest.mark.slow
def test_two_trials_run_on_two_cpus_resume_and_make_the_table(tmp_path, ray_cluster):
    import torch

    from library.store import SkillStore
    from tune.search import read_record, run_search
    from tune.table import write_section

    torch.set_num_threads(1)
    path = str(write(tmp_path))
    store = str(tmp_path / "store")
    started = time.perf_counter()
    summary = run_search(path, store, scale="smoke")
    first = time.perf_counter() - started
    assert summary.trials == 2 and summary.completed == 2, summary.describe()
    assert not summary.errored

    rows = SkillStore(store).results().to_pylist()
    points = enumerate_points(load_search(path, "smoke"))
    for point in points:
        trial = [r for r in rows if r["stream"] == stream_name(load_search(path, "smoke"),
                                                               point)]
        methods = {r["method"] for r in trial}
        assert methods == {point.method, "skill"}, methods
    controls = [r for r in rows if r["stream"] == "tiny_search_controls"]
    assert [(r["name"], r["eval_task"]) for r in controls] == [("stand", "walk")]
    assert (tmp_path / "store" / "runs").is_dir()
    record = read_record(store, "tiny_search@smoke")
    assert record["completed"] == 2 and "2 CPU" in record["machine"]

    # Running it again needs --resume; resuming a finished search refits nothing.
    with pytest.raises(PsecError, match="--resume"):
        run_search(path, store, scale="smoke")
    items = {e.name for e in SkillStore(store).list()}
    resumed = run_search(path, store, resume=True, scale="smoke")
    assert resumed.completed == 2 and {e.name for e in SkillStore(store).list()} == items
    after_resume = read_record(store, "tiny_search@smoke")
    assert after_resume["resumed"] and after_resume["wall_seconds"] > record["wall_seconds"]
    # A committed store keeps the record but not Tune's state (.gitignore): on another
    # machine the search continues without --resume, and its earlier time still counts.
    experiment = tmp_path / "store" / "tune" / "tiny_search@smoke"
    for path_in in experiment.iterdir():
        if path_in.name != "psec_search.json":
            shutil.rmtree(path_in) if path_in.is_dir() else path_in.unlink()
    run_search(path, store, scale="smoke")
    continued = read_record(store, "tiny_search@smoke")
    assert continued["wall_seconds"] > after_resume["wall_seconds"] and continued["completed"] == 2
    assert len(SkillStore(store).results().to_pylist()) == len(rows)

    results = tmp_path / "docs" / "RESULTS.md"
    results.parent.mkdir()
    results.write_text("# Results\n\nIntro kept.\n")
    write_section(path, "smoke", store, str(results), "psec tune search.yaml")
    text = results.read_text()
    assert text.startswith("# Results\n\nIntro kept.")
    assert "| PSEC | " in text and "| NSEC | " in text and "(n=1)" in text
    assert "base alone" in text and "new skill alone (rank 2)" in text
    assert (tmp_path / "docs" / "tiny_search-alpha-s2w.png").stat().st_size > 0
    write_section(path, "smoke", store, str(results), "psec tune search.yaml")
    assert results.read_text().count("<!-- tune:tiny_search -->") == 1
    print(f"first run {first:.0f} s, {summary.describe()}")


def test_resume_refuses_a_grid_edited_since_the_experiment_started(tmp_path):
    """Tune's restore runs the grid the experiment started with: extending the search
    and resuming would silently skip the new points. Checked before Ray starts."""
    import json

    from library.store import SkillStore
    from tune.search import POINTS_FILE, _experiment_exists, experiment_path, run_search

    store = str(tmp_path / "store")
    experiment = Path(experiment_path(store, "tiny_search@smoke"))
    # A run killed while preparing leaves only psec's points file: not an experiment yet.
    old = [p.tag() for p in enumerate_points(load_search(write(tmp_path), "smoke"))]
    SkillStore(store).put_file("tune/tiny_search@smoke", POINTS_FILE,
                               json.dumps({"scale": "smoke", "points": old}).encode())
    assert not _experiment_exists(str(experiment))
    (experiment / "experiment_state.json").write_text("{}")  # what Tune leaves
    assert _experiment_exists(str(experiment))
    path = write(tmp_path, changed(seeds=[0, 1]))  # the search extended since
    with pytest.raises(PsecError, match=r"^search 'tiny_search' has another grid now than "
                                        r"when its experiment started \(scale 'smoke' then, "
                                        r"'smoke' now; 2 point\(s\) added, 0 removed\): "
                                        r"--resume runs only the old grid; remove .*tiny_search@smoke "
                                        r"and run without --resume"):
        run_search(str(path), store, resume=True, scale="smoke")
    with pytest.raises(PsecError, match=r"already ran at scale 'smoke' in this store .*"
                                        r"\(trials stored already"):
        run_search(str(path), store, scale="smoke")


def test_each_scale_of_a_search_keeps_its_own_experiment_and_record(tmp_path):
    """A search run a scale (a table's column) at a time in one store: each scale has its
    experiment folder, so the next is not refused as 'already ran'; an experiment from
    before folders were per scale is found at its own scale; the section names every run."""
    import json

    from library.store import SkillStore
    from tune.search import (
        POINTS_FILE,
        SCALE_MARK,
        _write_record,
        experiment_folder,
        search_records,
    )
    from tune.table import measured_line

    store = str(tmp_path / "store")
    assert experiment_folder(store, "s", "paper-a") == f"s{SCALE_MARK}paper-a"
    assert search_records(store, "s") == []
    # The earlier layout: `tune/s` holds the experiment of the scale its points file names.
    SkillStore(store).put_file("tune/s", POINTS_FILE,
                               json.dumps({"scale": "paper-a", "points": []}).encode())
    assert experiment_folder(store, "s", "paper-a") == "s"
    assert experiment_folder(store, "s", "paper-b") == "s@paper-b"
    run = {"machine": "m", "completed": 1, "trials": 1, "wall_seconds": 5.0,
           "prepare_seconds": 1.0}
    _write_record(store, "s@paper-b", {**run, "scale": "paper-b", "finished": "2026-12-02"})
    _write_record(store, "s", {**run, "scale": "paper-a", "finished": "2026-12-01"})
    _write_record(store, "s_other@paper-a", {**run, "scale": "x", "finished": "2026-12-03"})
    records = search_records(store, "s")
    assert [r["scale"] for r in records] == ["paper-a", "paper-b"]  # oldest first, own only
    line = measured_line(records, "x", done=2)
    assert line.startswith("Measured at scale `paper-a` on m: 1 of 1 trials completed")
    assert "; at scale `paper-b` on m: 1 of 1" in line and line.endswith("2026-12-02.")


def test_tables_and_plots_from_results_rows(tmp_path):
    from tune.table import collect, method_table, plot_data, plot_ranks

    search = load_search(write(tmp_path, changed(
        methods=["psec", "mlp", "fixed"], ranks=[2, 4], seeds=[0, 1], data_episodes=[2, 3],
        fixed_alpha=[{"init": "uniform"}, {"init": "newest"}], alpha_trace=None)),
        scale="smoke")
    rows = []
    for index, point in enumerate(enumerate_points(search)):
        tag = point.tag()
        item = f"s2w_{tag}"
        # Rows are found by their result tags; untagged (older) rows by their stream.
        tags = ({"stream": "anything", "search": "tiny_search", "trial": tag} if index % 2
                else {"stream": stream_name(search, point)})
        for seed, score in ((0, index), (1, index + 2)):  # two eval seeds: mean index + 1
            rows.append({**tags, "name": item, "seed": seed, "score": float(score),
                         "eval_task": f"walk_{point.skill_tag()}"})
    results = collect(search, rows)
    assert all(m.value is not None for m in results.measured)
    table = "\n".join(method_table(results))
    # Rank and data size vary, so rows name them; each cell averages the two seeds.
    assert "| PSEC [rank 2, 2 traj.] | " in table and "(n=2)" in table
    assert "| PSEC (MLP) [2 traj.] | " in table
    # Fixed is the best of its start points, and the winner is named.
    assert table.count("| Fixed [") == 4 and "Fixed: best start point" in table
    assert plot_ranks(results, str(tmp_path / "ranks.png"))
    assert plot_data(results, str(tmp_path / "data.png"))
    assert (tmp_path / "ranks.png").stat().st_size > 0
    assert not plot_ranks(collect(search, []), str(tmp_path / "none.png"))


def test_a_store_without_its_search_record_is_not_called_unmeasured():
    from tune.table import measured_line

    assert measured_line([], "x", done=0).startswith("Not run in this store yet")
    kept = measured_line([], "x", done=21)
    assert "keeps results (21 measured) but no search record" in kept and "Not run" not in kept
    record = {"scale": "paper", "machine": "m", "completed": 3, "trials": 4,
              "wall_seconds": 10.0, "prepare_seconds": 1.0, "finished": "t"}
    assert measured_line([record], "x", done=3).startswith(
        "Measured at scale `paper` on m: 3 of 4")


def test_the_regenerate_line_names_a_store_a_reader_can_use(tmp_path, monkeypatch):
    from tune.cli import portable_store

    monkeypatch.chdir(tmp_path)
    assert portable_store("s3://bucket/store?endpoint_override=x", "small") == \
        "s3://bucket/store?endpoint_override=x"
    assert portable_store("./store-smoke", "smoke") == "./store-smoke"
    assert portable_store(str(tmp_path / "stores" / "a"), "small") == "stores/a"
    assert portable_store("/elsewhere/store-dmc-small", "small") == "./store-small"


def test_a_search_record_is_a_store_file_and_a_broken_one_a_one_line_error(tmp_path):
    from library.errors import StoreError
    from tune.search import RECORD_FILE, TUNE_FOLDER, _write_record, read_record

    store = str(tmp_path / "store")
    assert read_record(store, "s1") is None
    _write_record(store, "s1", {"search": "s1", "wall_seconds": 1.5})
    path = tmp_path / "store" / TUNE_FOLDER / "s1" / RECORD_FILE
    assert read_record(store, "s1") == {"search": "s1", "wall_seconds": 1.5}
    path.write_text('{"search": "s1", "wall_')   # cut off mid-write by hand
    with pytest.raises(StoreError, match=f"{RECORD_FILE} .* is not valid JSON") as raised:
        read_record(store, "s1")
    assert "\n" not in str(raised.value)
    assert path.read_text() == '{"search": "s1", "wall_'   # left for the user to look at


def test_sample_efficiency_steps_grow_with_the_data_as_in_the_paper():
    """Fig. 6(a): 10 / 30 / 50 / 100 trajectories train 10K / 30K / 50K / 100K skill steps."""
    search = load_search("configs/search_sample_efficiency.yaml", "paper")
    stream = search.load_stream()
    steps = {}
    for point in enumerate_points(search):
        if point.method in ("psec", "scratch") and point.seed == 0 and point.target == "S→W":
            task = trial_task(search, stream, point)
            steps[(point.method, point.episodes)] = task.train.steps
            if point.method == "psec":
                assert task.composers[0].steps == 1000  # the composer keeps its 1K
    assert steps == {(m, n): 1000 * n for m in ("psec", "scratch") for n in (10, 30, 50, 100)}


def test_a_composer_s_own_objective_reaches_its_trials():
    """The safe-composition composer trains by plain BC (the paper) in every trial."""
    search = load_search("configs/search_dsrl.yaml", "paper")
    stream = search.load_stream()
    point = next(p for p in enumerate_points(search) if p.method == "psec")
    task = trial_task(search, stream, point)
    assert task.objective == "feasibility" and task.composers[0].objective == "bc"
    assert task.composers[0].data.max_episode_cost == 4 and task.composers[0].steps == 1000


def test_an_interrupted_trial_is_not_counted_as_completed(tmp_path):
    """After Ctrl-C, Tune's grid holds trials with neither metrics nor an error."""
    from types import SimpleNamespace

    from tune.search import SearchSummary, _summarise

    search = load_search(write(tmp_path), "smoke")
    point = enumerate_points(search)[0].model_dump(mode="json")
    grid = [SimpleNamespace(config={"point": point}, error=None, metrics=metrics)
            for metrics in ({"score": 2.0}, {}, None)]
    summary = SearchSummary(search="s", scale="smoke", store="x", experiment="y", trials=3)
    _summarise(grid, search, summary)
    assert (summary.completed, summary.unfinished) == (1, 2)
    assert "2 trial(s) interrupted before they reported: continue with --resume" in (
        summary.describe())


def test_an_interrupted_resume_counts_restored_and_uncreated_trials_as_unfinished(tmp_path):
    """A `--resume` stopped before a restored trial starts again leaves results without a
    config (this crashed the summary, so no record was written); trials Tune never
    created are not in the grid at all. Both are unfinished out of the search's points."""
    from types import SimpleNamespace

    from tune.search import SearchSummary, _summarise

    search = load_search(write(tmp_path), "smoke")
    point = enumerate_points(search)[0].model_dump(mode="json")
    grid = [SimpleNamespace(config={"point": point}, error=None, metrics={"score": 1.5}),
            SimpleNamespace(config={"point": point}, error=RuntimeError("boom"), metrics={}),
            SimpleNamespace(config=None, error=None, metrics=None)]
    summary = SearchSummary(search="s", scale="smoke", store="x", experiment="y", trials=5)
    _summarise(grid, search, summary)
    assert (summary.completed, len(summary.errored), summary.unfinished) == (1, 1, 3)
    assert summary.describe().startswith("search s (smoke) into x: 1 of 5 trial(s) completed")


def test_the_new_skill_alone_counts_each_training_seed_once():
    """Trials with the advantage objective refit the new skill with critics (another
    item, the same skill for its seed): the control is one value per seed, not per item."""
    from tune.table import Measured, SearchResults, controls_table

    configs = Path(__file__).resolve().parent.parent / "configs"
    search = load_search(configs / "search_alpha.yaml", scale="paper-advantage")
    points = enumerate_points(search)
    psec = [p for p in points if p.method == "psec"]
    assert len({p.skill_tag() for p in psec}) == 6 and len({p.seed for p in psec}) == 3
    measured = [Measured(p, 1.0, 100.0 * (p.seed + 1)) for p in psec]
    lines = controls_table(SearchResults(search, search.load_stream(), measured))
    [row] = [line for line in lines if line.startswith("| new skill alone (rank 8)")]
    assert "200 ± 82 (n=3)" in row


def test_the_new_skill_alone_is_one_control_per_data_size():
    """A search that varies the data size fits a new skill per size: each is its own
    control row, not one mean over every size."""
    from tune.table import Measured, SearchResults, controls_table

    configs = Path(__file__).resolve().parent.parent / "configs"
    search = load_search(configs / "search_sample_efficiency.yaml", scale="small")
    measured = [Measured(p, 1.0, float(p.episodes + p.seed))
                for p in enumerate_points(search) if p.method == "psec"]
    lines = controls_table(SearchResults(search, search.load_stream(), measured))
    rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| new skill")}
    assert sorted(rows) == [f"new skill alone (rank 8, {n} traj.)" for n in (10, 30, 50)]
    assert "| 31 ± 0.82 (n=3) |" in rows["new skill alone (rank 8, 30 traj.)"]


def test_the_seed_table_shows_each_trial_against_its_own_skill_seed_by_seed():
    """Every configuration (each fixed start point too) gets a row of per-seed values and
    its gap to the new skill alone at the same seed; a target with nothing measured has no
    table."""
    from tune.table import Measured, SearchResults, seed_table

    configs = Path(__file__).resolve().parent.parent / "configs"
    search = load_search(configs / "search_dmc_table.yaml", scale="paper")
    measured = []
    for p in enumerate_points(search):
        if p.target != "S→W":
            measured.append(Measured(p, None, None))
            continue
        skill = 900.0 + 10 * p.seed if p.method != "mlp" else 800.0
        value = skill + (5.0 if p.method == "psec" else -5.0) * (1 if p.seed != 2 else -1)
        if p.method == "scratch":
            value, skill = 300.0 + p.seed, None
        measured.append(Measured(p, None if (p.method == "asec" and p.seed == 1) else value,
                                 skill))
    lines = seed_table(SearchResults(search, search.load_stream(), measured))
    text = "\n".join(lines)
    assert text.count("By training seed") == 1 and "By training seed, S→W" in text
    row = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}
    assert row["new skill alone (rank 8)"] == "| new skill alone (rank 8) | 900.0 | 910.0 | 920.0 | — |"
    assert row["new skill alone (full)"].startswith("| new skill alone (full) | 800.0 | 800.0 |")
    assert row["PSEC"] == "| PSEC | 905.0 | 915.0 | 915.0 | +5, +5, -5 |"
    assert row["PSEC (MLP)"].endswith("| -5, -5, +5 |")
    assert row["ASEC"] == "| ASEC | 895.0 | — | 925.0 | -5, +5 |"
    assert row["Scratch"] == "| Scratch | 300.0 | 301.0 | 302.0 | — |"
    fixed = [label for label in row if label.startswith("Fixed [")]
    assert len(fixed) == len(search.fixed_alpha) == 2


def test_a_scale_can_leave_out_methods_and_the_targets_left_with_none(tmp_path):
    """E.g. no Joint at a scale that cannot afford the base's budget: the method goes
    from the search, from each target's own list, and a target with no method left goes."""
    search = changed(
        methods=["psec", "nsec", "scratch"],
        targets=[{"label": "S→W", "composer": "s2w"},
                 {"label": "S+W→R", "composer": "sw2r", "methods": ["scratch"]}],
        alpha_trace=[{"target": "S→W", "method": "nsec"}, {"target": "S→W"}],
        scales={"smoke": {"stream_scale": "smoke", "methods": ["psec", "nsec"]},
                "paper": {"stream_scale": "paper", "targets": ["S+W→R"]}})
    smoke = load_search(write(tmp_path, search), scale="smoke")
    assert smoke.methods == ["psec", "nsec"]
    assert [t.label for t in smoke.targets] == ["S→W"]
    assert {p.method for p in enumerate_points(smoke)} == {"psec", "nsec"}
    assert [t.method for t in smoke.alpha_trace] == ["nsec", "psec"]
    psec_only = copy.deepcopy(search)
    psec_only["scales"]["smoke"]["methods"] = ["psec"]
    assert [t.method for t in load_search(write(tmp_path, psec_only),
                                          scale="smoke").alpha_trace] == ["psec"]
    assert load_search(write(tmp_path, search), scale="paper").methods == [
        "psec", "nsec", "scratch"]
    bad = copy.deepcopy(search)
    bad["scales"]["smoke"]["methods"] = ["psec", "joint"]
    with pytest.raises(SpecError, match=r"scales\.smoke\.methods\[1\].*joint"):
        load_search(write(tmp_path, bad), scale="paper")
