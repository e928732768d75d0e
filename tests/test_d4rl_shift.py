"""Dynamics shift (paper Table 8): the stream, its baselines as tune methods, the joint
source + target data, a real D4RL HDF5 target, and the Table 8 layout of the results."""

import copy

import numpy as np
import pytest
import yaml
from test_importers import _write_d4rl

from library.errors import DataError, SpecError
from pipeline.plan import plan_stream, plan_task
from tasks.dataset import dataset_meta, to_arrays, to_table, union
from tasks.spec import load_stream, parse_stream
from tune.spec import load_search
from tune.trials import alpha_label, enumerate_points, joint_datasets, skill_item, trial_task

STREAM = "configs/d4rl_shift.yaml"
SEARCH = "configs/search_d4rl_shift.yaml"
# The official code's source datasets: hc_0.25f, hc_2g, hc_2t, wk_0.5f, wk_2g, wk_2t.
SHIFTS = {"halfcheetah": {"friction": {"friction": 0.25}, "gravity": {"gravity": 2.0},
                          "thigh": {"thigh_size": 2.0}},
          "walker2d": {"friction": {"friction": 0.5}, "gravity": {"gravity": 2.0},
                       "thigh": {"thigh_size": 2.0}}}
KINDS = ("medium", "medium-replay", "medium-expert")


@pytest.mark.parametrize("scale", ["smoke", "small", "paper"])
def test_every_robot_shift_and_target_kind_is_in_the_stream(scale):
    stream = load_stream(STREAM, scale)
    bases = {t.name: t for t in stream.tasks if t.role == "base"}
    skills = [t for t in stream.tasks if t.role == "skill"]
    assert len(bases) == 6 and len(skills) == 18
    for robot, shifts in SHIFTS.items():
        for shift, dynamics in shifts.items():
            base = bases[f"{robot}-{shift}-src"]
            assert base.dynamics.model_dump(exclude_defaults=True) == dynamics
            assert base.objective == "bc" and base.data.policy == "medium-expert"
    data_by_target: dict[tuple[str, str], list[dict]] = {}
    for task in skills:
        robot, shift, kind = task.name.split("-", 2)
        assert kind in KINDS and task.base == f"{robot}-{shift}-src"
        assert task.dynamics.is_default, "targets run under the original dynamics"
        assert task.objective == "advantage" and task.data.max_transitions == 10_000
        assert [c.skills for c in task.composers] == [["base"]]
        assert task.composers[0].mode == "parameter"
        data_by_target.setdefault((robot, kind), []).append(task.data.model_dump())
    # Every shift of a target trains on the same data (same generator spec and seed).
    assert all(len(specs) == 3 and specs.count(specs[0]) == 3
               for specs in data_by_target.values())
    # At the paper scale the bases are shipped (trained in pieces, `psec base train`), at
    # the others fitted by the stream; the plan's units are the same either way.
    assert all((base.shipped is not None) == (scale == "paper") for base in bases.values())
    plan = plan_stream(stream, take_shipped=False)
    assert len(plan.units) == 24


def test_every_baseline_is_planned_on_the_target_data():
    search = load_search(SEARCH, "paper")
    stream = search.load_stream()
    points = enumerate_points(search)
    methods = [p.method for p in points]
    # PSEC (two α choices) and Joint on every target (18) and seed (3); BC and Scratch
    # once per dataset.
    assert methods.count("psec") == 2 * methods.count("joint") == 108
    assert methods.count("bc") == methods.count("scratch") == 18
    assert {p.target.rsplit("/", 1)[1] for p in points if p.method == "bc"} == {"friction"}
    seen = {}
    for point in points:
        if point.seed != 0 or point.target.split("/")[0] != "halfcheetah-medium":
            continue
        target = next(t for t in stream.tasks if t.name == point.task)
        task = trial_task(search, stream, point)
        plan = plan_task(task, [target.base], stream="t", seed=point.seed)
        kinds = [s.kind for u in plan.units.values() for s in u.stages]
        seen[(point.method, point.target)] = (task, kinds)
        assert task.name == skill_item(point.task, point)
    psec, kinds = seen[("psec", "halfcheetah-medium/gravity")]
    assert kinds == ["critics", "skill", "composer"] and psec.base == "halfcheetah-gravity-src"
    assert psec.data.dataset == "halfcheetah-gravity-medium"
    bc, kinds = seen[("bc", "halfcheetah-medium/friction")]
    assert kinds == ["base"] and bc.objective == "bc" and bc.base is None
    assert bc.data.dataset == "halfcheetah-friction-medium"
    scratch, kinds = seen[("scratch", "halfcheetah-medium/friction")]
    assert kinds == ["critics", "base"] and scratch.objective == "advantage"
    assert scratch.data.dataset == bc.data.dataset and scratch.train == psec.train
    joint, kinds = seen[("joint", "halfcheetah-medium/thigh")]
    assert kinds == ["critics", "base"] and joint.objective == "advantage"
    assert joint.data.dataset == "halfcheetah-thigh-medium-joint"
    assert joint.train.steps == stream.task("halfcheetah-thigh-src").train.steps
    assert joint_datasets(search, stream, points)["halfcheetah-thigh-medium-joint"] == (
        "halfcheetah-thigh-src", "halfcheetah-thigh-medium", None)


def test_smoke_and_small_scales_narrow_the_search():
    smoke = enumerate_points(load_search(SEARCH, "smoke"))
    assert sorted(p.method for p in smoke) == ["bc", "joint", "psec", "scratch"]
    small = enumerate_points(load_search(SEARCH, "small"))
    # HalfCheetah: friction, 4 methods on 3 datasets; gravity and thigh: PSEC and Joint on
    # medium and medium-replay. Walker2d: friction, 4 methods on 3 datasets; gravity and
    # thigh: PSEC and Joint on all 3. 3 seeds each.
    assert len(small) == (3 * 4 + 4 * 2 + 3 * 4 + 6 * 2) * 3 == 132
    assert {p.seed for p in small} == {0, 1, 2}
    assert {p.task.split("-")[0] for p in small} == {"halfcheetah", "walker2d"}


def test_a_target_method_outside_the_search_is_refused(tmp_path):
    data = yaml.safe_load(open(SEARCH))
    data["stream"] = str(__import__("pathlib").Path(STREAM).resolve())
    data["targets"][1]["methods"] = ["psec", "nsec"]
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"targets\[1\]\.methods\[1\]: 'nsec' is not one"):
        load_search(path)


def _table(n, episode_length, env, seed, obs_dim=17, act_dim=6):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    arrays = dict(obs=obs, actions=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
                  rewards=rng.normal(size=n).astype(np.float32), next_obs=obs + 1,
                  terminals=np.zeros(n, bool), timeouts=np.arange(n) % episode_length
                  == episode_length - 1)
    arrays["timeouts"][-1] = True  # a last, shorter episode is cut by the end of the data
    return to_table(arrays, {"suite": "mujoco", "env": env, "source": "generate"})


def test_union_of_source_and_target_keeps_every_episode_apart():
    source = _table(30, 10, "HalfCheetah-v5", 0)
    target = _table(20, 8, "HalfCheetah-v5", 1)
    joint = union({"src": source, "tgt": target}, limits={"tgt": 12})
    arrays = to_arrays(joint)
    assert joint.num_rows == 42
    np.testing.assert_array_equal(arrays["obs"][30:], to_arrays(target)["obs"][:12])
    # 3 source episodes, then the target's 8-step episode and its 4 kept rows (cut: timeout)
    assert list(np.unique(arrays["episode"])) == [0, 1, 2, 3, 4]
    assert arrays["timeouts"][-1] and arrays["episode"][-1] == 4
    meta = dataset_meta(joint)
    assert meta["source"] == "union" and meta["env"] == "HalfCheetah-v5"
    assert {name: part["rows"] for name, part in meta["parts"].items()} == {"src": 30,
                                                                            "tgt": 12}
    with pytest.raises(DataError, match="not parts"):
        union({"src": source}, limits={"tgt": 5})
    with pytest.raises(DataError, match="obs dim"):
        union({"src": source, "other": _table(10, 5, "Hopper-v5", 2, obs_dim=11, act_dim=6)})


def _real_d4rl_file(path, n_obs=17, n_act=6):
    """A D4RL gym-mujoco file (the importer tests' writer) with HalfCheetah's dims."""
    rows = 12
    rng = np.random.default_rng(0)
    return _write_d4rl(path, observations=rng.normal(size=(rows, n_obs)).astype(np.float32),
                       actions=rng.uniform(-1, 1, (rows, n_act)).astype(np.float32))


def test_a_target_can_be_a_real_d4rl_file(tmp_path):
    from library.store import SkillStore
    from pipeline.checks import check_plan

    path = _real_d4rl_file(tmp_path / "halfcheetah-medium-v2.hdf5")
    data = copy.deepcopy(yaml.safe_load(open(STREAM)))
    data["tasks"] = [t for t in data["tasks"] if t["name"] in (
        "halfcheetah-gravity-src", "halfcheetah-gravity-medium")]
    data["tasks"][1]["data"] = {"source": "import", "format": "d4rl", "path": str(path),
                                "max_transitions": 6}
    # The small and paper scales name the source tasks left out here.
    data["scales"] = {"smoke": data["scales"]["smoke"], "paper": {}}
    stream = parse_stream(data).at_scale("smoke")
    checked = check_plan(plan_stream(stream), SkillStore(str(tmp_path / "store")))
    table = checked.imported["halfcheetah-gravity-medium"]
    # The file's 12 rows lose the timeout row and the unfinished last one; 6 are kept.
    assert table.num_rows == 6 and checked.dims["halfcheetah-gravity-medium"] == (17, 6)
    assert dataset_meta(table)["path"] == "halfcheetah-medium-v2.hdf5"
    assert checked.dims["halfcheetah-gravity-src"] == (17, 6)
    # The wrong robot's file is refused before anything is written: its widths are not
    # the env's it is imported for.
    wrong = _real_d4rl_file(tmp_path / "hopper.hdf5", n_obs=11, n_act=3)
    data["tasks"][1]["data"]["path"] = str(wrong)
    with pytest.raises(DataError, match="hopper.hdf5: column obs has width 11, but mujoco "
                                        "HalfCheetah-v5 has 17"):
        check_plan(plan_stream(parse_stream(data).at_scale("smoke")),
                   SkillStore(str(tmp_path / "store")))
    assert not (tmp_path / "store" / "manifest").exists()


def test_tune_reads_an_imported_target_from_the_store_with_its_cut(tmp_path):
    data = yaml.safe_load(open(STREAM))
    for task in data["tasks"]:
        if task["name"] == "halfcheetah-friction-medium":
            task["data"] = {"source": "store", "dataset": "halfcheetah-medium-v2",
                            "max_transitions": 10_000}
    stream_path = tmp_path / "d4rl_shift.yaml"
    stream_path.write_text(yaml.safe_dump(data))
    search_data = yaml.safe_load(open(SEARCH))
    search_data["stream"] = str(stream_path)
    search_path = tmp_path / "search.yaml"
    search_path.write_text(yaml.safe_dump(search_data))
    search = load_search(search_path, "smoke")
    stream = search.load_stream()
    points = enumerate_points(search)
    for point in points:
        task = trial_task(search, stream, point)
        if point.method != "joint":
            assert task.data.dataset == "halfcheetah-medium-v2"
            assert task.data.max_transitions == 10_000
    assert joint_datasets(search, stream, points) == {"halfcheetah-medium-v2-joint": (
        "halfcheetah-friction-src", "halfcheetah-medium-v2", 10_000)}


def test_table_8_layout_from_results_rows():
    from tune.shift_table import shift_rows, shift_section
    from tune.table import collect

    search = load_search(SEARCH, "paper")
    stream = search.load_stream()
    rows = []
    for index, point in enumerate(enumerate_points(search)):
        task = trial_task(search, stream, point)
        item = task.name if not task.composers else task.composers[0].name
        value = float(index)
        for seed, score in ((0, value - 1), (1, value + 1)):  # eval seeds: mean = index
            rows.append({"search": "d4rl_shift", "trial": point.tag(), "stream": "x",
                         "name": item, "seed": seed, "score": score,
                         "eval_task": task.name})
            if task.composers:
                rows.append({"search": "d4rl_shift", "trial": point.tag(), "stream": "x",
                             "name": task.name, "seed": seed, "score": -score,
                             "eval_task": task.name})
    rows.append({"stream": "d4rl_shift_controls", "name": "walker2d-thigh-src", "seed": 0,
                 "score": 7.0, "eval_task": "walker2d-thigh-medium-expert"})
    results = collect(search, rows)
    columns, table, controls = shift_rows(results)
    assert columns == [f"{r}-{k}" for r in ("halfcheetah", "walker2d") for k in KINDS]
    # Two α choices at the paper scale: a PSEC row per shift and choice, named by it.
    ours, official = "α raw/newest+reg 1", "α raw/zero×0.0625"
    assert list(table) == [
        f"PSEC (friction) {ours}", f"PSEC (friction) {official}",
        f"PSEC (gravity) {ours}", f"PSEC (gravity) {official}",
        f"PSEC (thigh size) {ours}", f"PSEC (thigh size) {official}",
        "Joint (friction)", "Joint (gravity)", "Joint (thigh size)",
        "BC", "Scratch (IQL + diffusion actor)"]
    assert all(len(values) == 3 for cells in table.values() for values in cells.values())
    # Each choice's row holds its own trials' values (every value here is a point's index).
    by_choice = {"raw/newest+reg 1": [], "raw/zero×0.0625": []}
    for index, point in enumerate(enumerate_points(search)):
        if point.method == "psec" and point.target == "walker2d-medium/gravity":
            by_choice[alpha_label(point.alpha)].append(float(index))
    assert table[f"PSEC (gravity) {ours}"]["walker2d-medium"] == by_choice["raw/newest+reg 1"]
    assert table[f"PSEC (gravity) {official}"]["walker2d-medium"] == by_choice[
        "raw/zero×0.0625"]
    assert controls["source base alone (thigh size)"] == {
        "walker2d-medium-expert": [7.0]}
    assert all(len(v) == 3 for v in controls["new LoRA skill alone (gravity)"].values())
    text = shift_section(results, [], "psec tune configs/search_d4rl_shift.yaml")
    assert text.startswith("<!-- tune:d4rl_shift -->")
    # Results without a search record: a store whose Tune folder was not kept, not "not run".
    assert "Not run in this store yet" not in text and "but no search record" in text
    assert "| method | halfcheetah-medium | halfcheetah-medium-replay |" in text
    assert "198 of 198 trial points have results" in text and "(n=3)" in text
    assert "α choices of the composer rows: `raw/newest+reg 1` starts at the new skill " \
           "alone, regulariser ×1; `raw/zero×0.0625` starts at the base alone, no regulariser, " \
           "α = 0.0625 × the network's output." in text
    # A row is a kind of shift; its factor per robot is named under the table.
    assert "Shifts of the source bases: friction ×0.25 (halfcheetah), friction ×0.5 " \
           "(walker2d); gravity ×2; thigh size ×2." in text
    # Which rows rank 64 candidates by the target critic (the official evaluation) and
    # which sample once: the controls are not all measured alike.
    assert "Actions per state: PSEC, the new skill alone, Joint and Scratch (IQL + diffusion " \
           "actor) keep the best of 64 samples by the target critic's Q (the official " \
           "evaluation); BC and the source base alone, whose tasks train no critics, sample " \
           "one" in text
    # The paper's Table 8 beside ours, in the same columns.
    assert "| PSEC (friction) | 40.1 ± 1.2 | 31.1 ± 1.3 | 42.1 ± 1.0 | 61.7 ± 7.5 |" in text
    # Per target, every row by training seed beside its own skill alone at that seed (one
    # decimal: D4RL scores differ by a point or two). Here PSEC's value is its point's
    # index and its skill's the negative of it, so each gap is twice the index.
    gravity = [float(i) for i in by_choice["raw/newest+reg 1"]]
    assert "By training seed, walker2d-medium/gravity" in text
    assert ("| PSEC [raw/newest+reg 1] | " + " | ".join(f"{v:.1f}" for v in gravity) + " | "
            + ", ".join(f"{2 * v:+.1f}" for v in gravity) + " |") in text
    assert text.split("By training seed, walker2d-medium/gravity")[1].split(
        "By training seed")[0].count("| new skill alone (rank 8) | ") == 1
    # Then each method's gaps pooled over a column's shifts and seeds: 9 PSEC trials per
    # column and α choice (gaps twice the index here), std as in the cells.
    gaps = [2.0 * i for i, p in enumerate(enumerate_points(search)) if p.method == "psec"
            and p.target.startswith("walker2d-medium/") and alpha_label(p.alpha) == ours[2:]]
    mean = sum(gaps) / len(gaps)
    std = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5
    assert len(gaps) == 9 and (f"| walker2d-medium | PSEC [{ours[2:]}] | 9 | {mean:+.1f} | "
                               f"{std:.1f} | {min(gaps):+.1f} | {max(gaps):+.1f} |") in text
    pooled = text.split("every trial of a column pooled")[1]
    assert pooled.count("| halfcheetah-medium-replay | PSEC [") == 2 and "| BC |" not in pooled
    # The α(s) traces' plots and note close the section, before its end marker.
    traced = shift_section(results, [], "psec tune", None,
                           [("α(s) over one episode (walker2d-medium/gravity)", "a.png")],
                           "α(s) over one episode: composer x.")
    assert traced.endswith("![α(s) over one episode (walker2d-medium/gravity)](a.png)\n\n"
                           "α(s) over one episode: composer x.\n\n<!-- /tune:d4rl_shift -->\n")


def test_the_results_command_rewrites_the_dynamics_shift_section_from_a_store(tmp_path):
    from library.store import SkillStore
    from tune.table import write_section

    search = load_search(SEARCH, "smoke")
    stream = search.load_stream()
    rows = []
    for point in enumerate_points(search):
        task = trial_task(search, stream, point)
        item = task.composers[0].name if task.composers else task.name
        rows.append({"stream": f"d4rl_shift_{point.tag()}", "task": task.name, "position": 0,
                     "name": item, "kind": "composer" if task.composers else "base",
                     "method": point.method, "composer": None, "skills": [], "seed": 0,
                     "eval_task": task.name, "episodes": 1, "return_mean": 0.0,
                     "return_std": 0.0, "score": {"psec": 4.0, "joint": 3.0, "bc": 2.0,
                                                  "scratch": 1.0}[point.method],
                     "success": 0.0, "cost": 0.0, "steps": 1, "wall_s": 0.0,
                     "scale": "smoke", "time": "2026-01-01T00:00:00+00:00",
                     "search": "d4rl_shift", "trial": point.tag()})
    store = SkillStore(str(tmp_path / "store"))
    store.append_results(rows)
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n## Dynamics shift\n\nKept.\n\n<!-- tune:d4rl_shift -->\n"
                       "old\n<!-- /tune:d4rl_shift -->\n\n## After\n")
    write_section(SEARCH, "smoke", store.uri, str(results), "psec tune x --results y")
    text = results.read_text()
    assert text.startswith("# Results\n\n## Dynamics shift\n\nKept.") and "\nold\n" not in text
    assert text.rstrip().endswith("## After") and text.count("<!-- tune:d4rl_shift -->") == 1
    assert "| PSEC (friction) | 4 ± 0 (n=1) |" in text
    assert "| Joint (friction) | 3 ± 0 (n=1) |" in text
    assert "| BC | 2 ± 0 (n=1) |" in text
    assert "| Scratch (IQL + diffusion actor) | 1 ± 0 (n=1) |" in text
    assert "Actions per state" not in text  # the smoke scale samples one everywhere


@pytest.mark.slow
def test_the_smoke_search_runs_every_baseline_and_writes_the_table(tmp_path, ray_cluster):
    """~2.5 min on 2 CPUs: data, a shifted base, PSEC, Joint, BC and Scratch, evaluated."""
    import torch

    from tune.search import run_search
    from tune.table import write_section

    torch.set_num_threads(1)
    store = str(tmp_path / "store")
    summary = run_search(SEARCH, store, scale="smoke")
    assert summary.completed == 4 and not summary.errored, summary.describe()
    results = tmp_path / "RESULTS.md"
    write_section(SEARCH, "smoke", store, str(results), "psec tune")
    text = results.read_text()
    # How far the source base was trained, read from the store (a shipped one holds fewer
    # steps than the plan).
    assert "Source bases, as trained for these trials: halfcheetah-friction-src 300 of 300 " \
           "steps at batch 64." in text
    for row in ("PSEC (friction)", "Joint (friction)", "BC",
                "Scratch (IQL + diffusion actor)", "source base alone (friction)",
                "new LoRA skill alone (friction)"):
        assert f"| {row} | " in text and "| — |" not in text.split(row)[1].split("\n")[0]
    assert "4 of 4 trials completed" in text


def test_target_critics_see_rewards_scaled_to_one_horizon_of_return_range():
    """IQL / the official code: D4RL rewards × 1000 / (max − min episode return)."""
    from pipeline.stages import _critic_configs

    task = load_stream(STREAM, "smoke").task("walker2d-gravity-medium")
    n = 40
    rewards = np.r_[np.full(20, 1.0), np.full(20, 3.5)].astype(np.float32)  # returns 20, 70
    arrays = dict(obs=np.zeros((n, 17), np.float32), actions=np.zeros((n, 6), np.float32),
                  rewards=rewards, next_obs=np.zeros((n, 17), np.float32),
                  terminals=np.zeros(n, bool), timeouts=np.arange(n) % 20 == 19)
    table = to_table(arrays, {"suite": "mujoco", "env": "Walker2d-v5"})
    config = _critic_configs(task, 17, 6, table)["iql"]
    assert config.reward_scale == pytest.approx(1000 / 50)
    raw = task.model_copy(update={"critic": task.critic.model_copy(update={"reward_norm": "none"})})
    assert _critic_configs(raw, 17, 6, table)["iql"].reward_scale == 1.0
