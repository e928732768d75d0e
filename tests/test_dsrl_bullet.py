"""configs/dsrl_bullet.yaml and configs/search_dsrl.yaml: the paper's Table 1 on
Bullet-Safety-Gym — a base, a reward skill and a safety skill on one dataset, a composer
on its safe subset, the baselines, and the Table-1 section from results rows."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from library.names import BASE
from library.store import SkillStore
from pipeline.checks import check_plan
from pipeline.plan import plan_stream
from tasks.dataset import dataset_meta, to_table
from tasks.spec import dump, load_stream, parse_stream
from tune.spec import load_search
from tune.trials import enumerate_points, stream_name, trial_task

torch.set_num_threads(1)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STREAM = CONFIGS / "dsrl_bullet.yaml"
SEARCH = CONFIGS / "search_dsrl.yaml"
ENVS = ("ballrun", "carrun", "ballcircle", "carcircle",
        "dronerun", "antrun", "dronecircle", "antcircle")


@pytest.mark.parametrize("scale", ["smoke", "small", "paper"])
def test_each_env_has_a_base_a_reward_skill_and_a_safety_skill_on_one_dataset(scale):
    stream = load_stream(STREAM, scale)
    # Drone and Ant come last: they were added after the others were measured, and a
    # task's position in the stream seeds its fits.
    # Ant Circle has no behaviour policies yet, so the small scale leaves it out.
    envs = {"paper": ENVS, "small": ENVS[:-1], "smoke": ENVS[:2]}[scale]
    assert [t.name for t in stream.tasks] == [
        f"{env}-{part}" for env in envs for part in ("base", "reward", "safety")]
    for env in envs:
        base, reward, safety = (stream.task(f"{env}-{p}") for p in ("base", "reward", "safety"))
        assert (base.role, base.objective) == ("base", "bc")
        assert (reward.role, reward.base, reward.objective) == ("skill", base.name, "advantage")
        assert (safety.role, safety.base, safety.objective) == ("skill", base.name,
                                                                "feasibility")
        # The same generator, episodes and seed: the same table for all three.
        assert dump(base.data) == dump(reward.data) == dump(safety.data)
        assert base.data.policy == "expert"  # the behaviour-policy mixture on bullet_safety
        (composer,) = safety.composers
        assert composer.skills == [BASE, reward.name]
        assert safety.composer_skills(composer) == [BASE, reward.name, safety.name]
        # The paper's near-expert subset (top-30 by reward with cost < 5), plain BC.
        assert (composer.data.top_episodes, composer.data.max_episode_cost) == (30, 4.0)
        assert composer.objective == "bc" and composer.alpha.init == "newest"
        assert reward.critic.beta == 1.0  # the official reward temperature on DSRL
        assert safety.eval.cost_threshold == 10.0
    if scale != "smoke":
        assert stream.tasks[2].eval.episodes == 20


def test_the_plan_fits_critics_skills_and_the_composer_on_the_safe_subset():
    plan = plan_stream(load_stream(STREAM, "smoke"))
    stages = {stage.name: stage for unit in plan.units.values() for stage in unit.stages}
    assert stages["ballrun-base"].kind == "base"
    assert stages["ballrun-reward-critics"].kind == "critics"
    assert stages["ballrun-safety-critics"].kind == "critics"
    assert stages["ballrun-reward"].kind == stages["ballrun-safety"].kind == "skill"
    composer = stages["ballrun-psec"]
    assert composer.kind == "composer" and composer.method == "psec"
    assert composer.skills == [BASE, "ballrun-reward", "ballrun-safety"]
    assert not composer.composer.data.selects_all
    # The reward and safety skills fit side by side; the composer waits for both.
    units = plan.units
    assert units["ballrun-reward"].after == units["ballrun-safety"].after == ["ballrun-base"]
    unit = next(u for u in units.values() if any(s.name == "ballrun-psec" for s in u.stages))
    assert {"ballrun-reward", "ballrun-safety"} <= set(unit.after) | {unit.name}


def test_the_search_runs_every_baseline_on_the_same_data():
    search = load_search(SEARCH, "smoke")
    stream = search.load_stream()
    points = enumerate_points(search)
    assert {p.method for p in points} == {"psec", "nsec", "asec", "fixed", "bc", "fisor"}
    assert search.controls == ["single"]  # BC-All (the base) and the reward skill alone
    assert len([p for p in points if p.method == "fixed"]) == 2
    for point in points:
        task = trial_task(search, stream, point)
        if point.method == "bc":
            # BC-Safe: a policy from scratch, plain BC, on the composer's safe subset.
            assert (task.role, task.objective, task.composers) == ("base", "bc", [])
            assert task.data.source == "store" and task.data.dataset.startswith(
                "ballrun-safety") and task.data.dataset != "ballrun-safety"
            assert not task.needs_critic
            continue
        if point.method == "fisor":
            # FISOR: a policy from scratch on the whole dataset, its reward (IQL) and
            # feasibility critics fitted first, at the safety skill's critic budget.
            assert (task.role, task.objective, task.composers) == (
                "base", "reward+feasibility", [])
            assert task.data.dataset == "ballrun-safety" and task.needs_critic
            assert task.critic == stream.task("ballrun-safety").critic
            assert task.train.steps == stream.task("ballrun-safety").train.steps
            continue
        (composer,) = task.composers
        assert composer.skills == [BASE, "ballrun-reward_lora8"]
        assert (composer.data.top_episodes, composer.data.max_episode_cost) == (30, 4.0)
        assert task.data.dataset == "ballrun-safety" and task.objective == "feasibility"


def _tiny_dsrl_file(path, episodes=6, steps=5, obs_dim=8, act_dim=2):
    """A DSRL-layout HDF5 file: episodes with increasing return, every other one costly."""
    n = episodes * steps
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    episode = np.repeat(np.arange(episodes), steps)
    with h5py.File(path, "w") as f:
        f["observations"] = obs
        f["next_observations"] = np.roll(obs, -1, axis=0)
        f["actions"] = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
        f["rewards"] = episode.astype(np.float32)
        f["costs"] = (episode % 2).astype(np.float32) * 5.0  # odd episodes cost 25
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = np.arange(n) % steps == steps - 1
    return path


def test_the_same_stream_runs_on_an_imported_dsrl_file(tmp_path):
    """Real DSRL data: import once, then all three tasks of an env read it from the store."""
    from tasks.importers import import_dsrl
    from tasks.subsets import composer_subset

    table = import_dsrl(_tiny_dsrl_file(tmp_path / "ballrun.hdf5"), suite="bullet_safety",
                        env="SafetyBallRun-v0")
    store = SkillStore(str(tmp_path / "store"))
    store.put_dataset("ballrun-dsrl", table)
    data = dump(load_stream(STREAM, "smoke"))
    data["tasks"] = [t for t in data["tasks"] if t["name"].startswith("ballrun-")]
    for task in data["tasks"]:
        task["data"] = {"source": "store", "dataset": "ballrun-dsrl"}
    stream = parse_stream(data)
    plan = plan_stream(stream)
    assert {unit.dataset for unit in plan.units.values()} == {"ballrun-dsrl"}
    check_plan(plan, store)  # dims, bases and datasets all check out; nothing is written
    composer = stream.task("ballrun-safety").composers[0]
    subset = composer_subset(table, composer.data, composer.name)
    # Episodes 0, 2, 4 cost 0; odd ones cost 25 > 10: the safe subset is the even ones.
    assert dataset_meta(subset)["composer_subset"]["episodes"] == 3
    assert set(np.unique(subset.column("rewards").to_numpy())) == {0.0, 2.0, 4.0}


def _ballrun_only(scale):
    """The search at `scale` with its Ball Run target alone."""
    from tune.spec import parse_search

    data = dump(load_search(SEARCH, scale))
    data["targets"] = [t for t in data["targets"] if t["label"] == "BallRun"]
    for named in data["scales"].values():
        named["targets"] = ["BallRun"]
    data["alpha_trace"] = None
    return parse_search(data)


def _rows(search, reward_of, cost_of):
    """Results rows of every trial point, as tune records them (tags search/trial)."""
    rows = []
    for point in enumerate_points(search):
        tag = point.tag()
        task = f"ballrun-safety_{point.skill_tag()}"
        scratch = point.method in ("bc", "fisor")
        item = task if scratch else f"ballrun-psec_{tag}"
        names = [item] if scratch else [item, task]
        for name in names:
            rows.append({"stream": stream_name(search, point), "search": search.name,
                         "trial": tag, "name": name, "eval_task": task, "seed": 0,
                         "score": reward_of(point, name == task and not scratch),
                         "cost": cost_of(point, name == task and not scratch)})
    controls = f"{search.name}_controls"
    for item, score, cost in (("ballrun-base", 0.9, 40.0), ("ballrun-reward_lora8", 1.1, 80.0)):
        rows.append({"stream": controls, "name": item, "eval_task": "ballrun-safety",
                     "seed": 0, "score": score, "cost": cost})
    return rows


def test_the_table_1_section_from_results_rows(tmp_path):
    from tasks.suites.bullet_safety import REFERENCE_RETURNS
    from tune.safe_table import COLUMNS, safe_section, safe_table

    search = _ballrun_only("small")
    rewards = {"psec": 0.6, "nsec": 0.5, "asec": 0.4, "bc": 0.3, "fisor": 0.35}

    def reward(point, is_skill):
        if is_skill:
            return 0.2
        if point.method == "fixed":  # the safe start point has the lower reward
            return 0.45 if point.alpha.init == "newest" else 0.8
        if point.alpha is not None and point.alpha.init == "zero":  # the official start
            return 0.7
        return rewards[point.method] + 0.01 * point.seed

    def cost(point, is_skill):
        if point.method == "fixed":
            return 2.0 if point.alpha.init == "newest" else 30.0
        if point.alpha is not None and point.alpha.init == "zero":
            return 20.0
        return {"asec": 15.0, "fisor": 1.0}.get(point.method, 5.0)

    # The BC-Safe subset as tune's prepare stores it: its size is reported.
    from tasks.importers import import_dsrl
    from tasks.subsets import composer_subset
    from tune.trials import subset_datasets

    store = SkillStore(str(tmp_path / "store"))
    (name, (_, selection, composer, _)), = subset_datasets(
        search, search.load_stream(), enumerate_points(search)).items()
    full = import_dsrl(_tiny_dsrl_file(tmp_path / "d.hdf5"), suite="bullet_safety",
                       env="SafetyBallRun-v0")
    store.put_dataset(name, composer_subset(full, selection, composer))
    table = safe_table(search, _rows(search, reward, cost), store)
    assert table.subsets == {"BallRun": (3, 6)}
    cells = table.cells["BallRun"]
    assert cells["psec"].reward == pytest.approx([0.6, 0.61, 0.62])
    assert cells["psec"].cost == pytest.approx([0.5] * 3)  # cost 5 / threshold 10
    # The second α choice (the official start) has columns of its own, not mixed in.
    official = "psec@raw/zero×0.0625+reg 1"
    assert cells[official].reward == pytest.approx([0.7] * 3)
    assert cells[official].cost == pytest.approx([2.0] * 3)
    # Fixed: the safe start point wins although the other earns more.
    assert table.fixed_choice == {"BallRun": "softmax/newest+reg 1"}
    assert cells["fixed"].mean_reward == pytest.approx(0.45)
    assert cells["bc-all"].reward == [0.9] and cells["bc-all"].cost == [4.0]
    assert cells["safety-skill"].reward == [0.2] * 3  # one skill per seed, not per method
    assert cells["fisor"].reward == pytest.approx([0.35, 0.36, 0.37])
    assert cells["fisor"].cost == pytest.approx([0.1] * 3)
    text = safe_section(table, [], "psec tune configs/search_dsrl.yaml", [], None)
    assert "### Search `dsrl` (Table 1 layout)" in text
    # Results without a search record: a store whose Tune folder was not kept, not "not run".
    assert "Not run in this store yet" not in text and "but no search record" in text
    # The subset's own level: episodes 0, 2 and 4 (returns 0, 10, 20; no cost).
    low, high = REFERENCE_RETURNS["SafetyBallRun-v0"]
    assert table.subset_levels["BallRun"] == pytest.approx(((10 - low) / (high - low), 0.0))
    assert (f"safe subset: BallRun: 3 of 6 episodes (their own level: "
            f"{(10 - low) / (high - low):.2f} / 0.00).") in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| task |"))
    marked = [f"{name} (raw/zero×0.0625+reg 1)" for name in ("NSEC", "ASEC", "PSEC")]
    assert header.split(" | ")[1:] == list(COLUMNS.values())[:-3] + [
        "NSEC", marked[0], "ASEC", marked[1], "PSEC", marked[2] + " |"]
    assert "NSEC, ASEC and PSEC unmarked: α raw/newest+reg 1;" in text
    ballrun = next(line for line in lines if line.startswith("| BallRun |"))
    assert "**0.61** / 0.50 |" in ballrun  # the best safe reward is bold
    assert "0.90 / 4.00 †" in ballrun and "0.41 / 1.50 †" in ballrun
    assert "| **average** | 0.90 / 4.00 † |" in text  # one target: its own values
    # The paper's figures beside ours: a row per target of ours, then the paper's average.
    paper_head = lines.index("| task | BC | CDT | CPQ | COptiDICE | FISOR | ASEC | NSEC | PSEC |")
    assert lines.index(ballrun) < paper_head
    assert lines[paper_head + 2] == ("| BallRun | 0.67 / 11.38 | 0.32 / 0.45 | 0.85 / 13.67 | "
                                     "0.55 / 11.32 | 0.18 / 0.00 | 0.35 / 4.35 | 0.58 / 7.46 | "
                                     "0.15 / 0.95 |")
    assert lines[paper_head + 3].startswith("| **average** (the paper's") and \
        lines[paper_head + 3].endswith("| 0.41 / 0.33 |")
    bare = safe_table(search.model_copy(update={"paper": {}}), _rows(search, reward, cost))
    assert "`paper:` is empty" in safe_section(bare, [], "cmd", [], None)
    # Unmeasured targets of another scale show dashes and no average.
    paper = safe_table(load_search(SEARCH, "paper"), [])
    assert all(not cell.measured for cells in paper.cells.values() for cell in cells.values())
    assert "| CarRun | " + " | ".join(["—"] * 8) + " |" in "\n".join(
        safe_section(paper, [], "cmd", [], None).splitlines())


def test_the_paper_scale_takes_the_shipped_car_run_base_and_the_table_says_how_far(tmp_path):
    """The Car Run base at the paper scale is the committed one (bases/carrun-base), and
    the section names the steps it had, not the plan's 1M."""
    from pipeline.shipped_base import install, take_shipped
    from tune.safe_table import safe_section, safe_table

    search = load_search(SEARCH, "paper-carrun")
    stream = search.load_stream()
    base = stream.task("carrun-base")
    assert base.shipped is not None and base.train.steps == 1_000_000
    store = SkillStore(str(tmp_path / "store"))
    assert install(take_shipped(base), store)  # as a stream takes it (pipeline.plan)
    steps = store.entry("carrun-base").task_spec["train"]["steps"]
    assert 0 < steps < 1_000_000
    table = safe_table(search, [], store)
    line = (f"Bases (BC-All), as trained for these trials: carrun-base {steps:,} of "
            "1,000,000 steps at batch 2048 (shipped: bases/carrun-base).")
    assert table.bases == line and line in safe_section(table, [], "cmd", [], None)
    assert safe_table(search, []).bases is None  # no store read: no line
    # Smaller scales fit their own base.
    assert load_search(SEARCH, "small").load_stream().task("carrun-base").train.steps == 2000


def test_the_subset_dataset_of_bc_safe_is_made_from_the_target_dataset(tmp_path):
    from tune.trials import subset_datasets

    search = load_search(SEARCH, "smoke")
    stream = search.load_stream()
    points = enumerate_points(search)
    (name, (source, data, composer, limit)), = subset_datasets(search, stream, points).items()
    bc = next(p for p in points if p.method == "bc")
    assert trial_task(search, stream, bc).data.dataset == name
    assert (source, composer, limit) == ("ballrun-safety", "ballrun-psec", None)
    assert (data.top_episodes, data.max_episode_cost) == (30, 4.0)


def test_the_alpha_trace_records_costs(tmp_path, monkeypatch):
    """α(s) over one episode on a safety env: one α row and one cost per step, the policy
    acting on one torch thread as in evaluation, the caller's thread count kept."""
    from pipeline_builders import register_base

    from library.composition import AlphaConfig, Composer
    from library.critics import FeasibilityConfig, FeasibilityCritic
    from library.lora import add_skill
    from library.serialization import dump_composer, dump_critics, dump_skill, load_base
    from tune.alpha_trace import hazard_line, trace

    store = SkillStore(str(tmp_path / "store"))
    rng = np.random.default_rng(0)
    n = 20
    arrays = dict(obs=rng.normal(size=(n, 7)).astype(np.float32),
                  actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                  rewards=np.ones(n, np.float32), costs=np.zeros(n, np.float32),
                  next_obs=rng.normal(size=(n, 7)).astype(np.float32),
                  terminals=np.zeros(n, bool), timeouts=np.arange(n) % 10 == 9)
    store.put_dataset("d", to_table(arrays, {"suite": "bullet_safety",
                                             "env": "SafetyBallRun-v0"}))
    register_base(store.uri, "b", "d")
    policy = load_base(*store.load("b"))
    add_skill(policy, "s", rank=2)
    store.register("s", "skill", *dump_skill(policy, "s", base_name="b"), parent="b")
    composer = Composer(policy, [BASE, "s"], "parameter", AlphaConfig(output="softmax"))
    store.register("c", "composer", *dump_composer(composer), parent="b")
    task = load_stream(STREAM, "smoke").task("ballrun-safety").model_copy(
        update={"eval": load_stream(STREAM, "smoke").task("ballrun-safety").eval.model_copy(
            update={"max_steps": 6})})
    import tune.alpha_trace

    threads = []

    def counting(*args, **kwargs):
        act = load_acting(*args, **kwargs)
        return lambda obs: threads.append(torch.get_num_threads()) or act(obs)

    load_acting = tune.alpha_trace.load_acting
    monkeypatch.setattr(tune.alpha_trace, "load_acting", counting)
    torch.set_num_threads(2)
    try:
        run = trace(store, "c", task)
        assert torch.get_num_threads() == 2 and threads == [1] * 6
    finally:
        torch.set_num_threads(1)
    assert run.skills == ["s"] and run.alphas.shape == (6, 1)  # W0 has no weight of its own
    assert np.allclose(run.alphas.sum(axis=1), 1.0)  # softmax weights
    assert run.rewards.shape == run.costs.shape == (6,) and (run.costs >= 0).all()
    assert run.states.shape == (6, 7)  # s_t, the state α(s_t) was read at
    assert run.hazard is None and hazard_line(run) is None  # its task stored no critic
    # A composer whose task item holds a feasibility critic: V_h(s) at every step, from
    # that critic (here V_h = 1 everywhere: every state is a hazard).
    feasibility = FeasibilityCritic(FeasibilityConfig(obs_dim=7, act_dim=2, hidden=8),
                                    policy.normalizer)
    with torch.no_grad():
        feasibility.value_net[-1].weight.zero_()
        feasibility.value_net[-1].bias.fill_(1.0)
    add_skill(policy, "t", rank=2)
    config, tensors = dump_skill(policy, "t", base_name="b")
    store.register("t", "skill", {**config, "critics": {
        "feasibility": feasibility.config.to_dict()}},
        {**tensors, **dump_critics(None, feasibility)}, parent="b")
    store.register("c2", "composer", *dump_composer(composer), parent="b",
                   task_spec={"name": "t"})
    run = trace(store, "c2", task)
    assert run.hazard is not None and np.allclose(run.hazard, 1.0) and len(run.hazard) == 6
    assert hazard_line(run) == ("α of `s` (the composer's own skill): 1.00 over the 6 steps "
                                "with V_h(s) > 0; no step with V_h(s) ≤ 0.")


def test_psec_tune_results_writes_the_safe_composition_section(tmp_path):
    """`layout: safe`: the search's section of the results file is the Table-1 one."""
    from tune.table import write_section

    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n## Other\n\nkept\n")
    write_section(str(SEARCH), "small", str(tmp_path / "store"), str(results), "psec tune X")
    text = results.read_text()
    assert "## Other\n\nkept" in text and "<!-- tune:dsrl -->\n### Search `dsrl` (Table 1 layout)" in text
    assert "Not run in this store yet" in text and "| BallRun | " in text
    # No composer in an empty store: each listed trace says so.
    for target in ("CarRun", "BallCircle", "CarCircle"):
        assert f"α(s) over one episode on {target}: not plotted" in text


def test_psec_run_at_smoke_scale_passes_every_check_on_a_fresh_store(tmp_path):
    """Ball and Car Run have their behaviour policies in tasks/experts; nothing is written."""
    store = SkillStore(str(tmp_path / "store"))
    plan = plan_stream(load_stream(STREAM, "smoke"))
    checked = check_plan(plan, store)
    assert set(checked.dims) == {f"{env}-{part}" for env in ENVS[:2]
                                 for part in ("base", "reward", "safety")}
    assert store.list() == [] and not store.has_dataset("ballrun-base")


def test_fisor_is_refused_on_a_target_without_a_feasibility_critic():
    """FISOR weighs by the HJ feasibility critic, which is fitted on costs: a target task
    that does not weigh by feasibility (here DMC's walker run) is refused when the search
    loads, naming the method and the task."""
    from library.errors import SpecError
    from tune.spec import parse_search

    data = dump(load_search(CONFIGS / "search_dmc_table.yaml"))
    data["methods"] = [*data["methods"], "fisor"]
    with pytest.raises(SpecError, match="method fisor weighs by a feasibility critic.*"
                                        "target task 'walker-"):
        parse_search(data).load_stream()
    # Where the target's own methods leave fisor out, the search stands.
    for target in data["targets"]:
        target["methods"] = [m for m in data["methods"] if m != "fisor"]
    parse_search(data).load_stream()


def test_a_fisor_trial_fits_both_critics_then_a_policy_ranked_by_the_safety_q(tmp_path):
    """A FISOR trial's one unit: critics (IQL on rewards and the HJ feasibility critic),
    then a policy from scratch weighted by `reward+feasibility` on the whole dataset; its
    item holds both critics, so evaluation samples the task's candidates and keeps the one
    with the lowest safety Q, as for the safety skill."""
    from pipeline_builders import PlainStore

    from pipeline.acting import load_acting
    from pipeline.plan import plan_task
    from pipeline.stages import UnitContext

    search = load_search(SEARCH, "smoke")
    point = next(p for p in enumerate_points(search) if p.method == "fisor")
    task = trial_task(search, search.load_stream(), point)
    store = PlainStore(str(tmp_path / "store"))
    rng = np.random.default_rng(0)
    n = 40
    arrays = dict(obs=rng.normal(size=(n, 7)).astype(np.float32),
                  actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                  rewards=rng.uniform(size=n).astype(np.float32),
                  costs=(np.arange(n) % 3 == 0).astype(np.float32),
                  next_obs=rng.normal(size=(n, 7)).astype(np.float32),
                  terminals=np.zeros(n, bool), timeouts=np.arange(n) % 10 == 9)
    store.put_dataset(task.data.dataset, to_table(arrays, {"suite": "bullet_safety",
                                                           "env": "SafetyBallRun-v0"}))
    (unit,) = plan_task(task, []).units.values()
    critics, base = unit.stages
    assert (critics.kind, base.kind, base.name) == ("critics", "base", task.name)
    context = UnitContext(store, unit, torch.device("cpu"))
    learner = context.build(critics)
    assert sorted(learner.critics) == ["feasibility", "iql"]
    context.finished(critics, learner)
    policy = context.build(base)
    assert policy.weighting == "reward+feasibility"
    assert all(critic is not None for critic in policy.critics)
    context.register(base, policy, {})
    config, _ = store.load(task.name)
    assert sorted(config["critics"]) == ["feasibility", "iql"]
    acting = load_acting(store, task.name, n_candidates=4)
    assert acting._rows_per_state == 4  # candidates ranked by a critic, not one sample


def test_the_hazard_line_says_whether_alpha_follows_the_hazard_or_the_step():
    """α and V_h(s) that both drift over an episode correlate with each other and with the
    step alike: the line gives all three, so a reader can tell the two apart."""
    from tune.alpha_trace import Trace, hazard_line

    steps = np.arange(10, dtype=float)
    hazard = np.array([-1.0, -1.0, 0.5, 1.0, -0.5, 2.0, 3.0, 2.5, 4.0, 5.0])
    run = Trace(skills=["reward", "safety"],
                alphas=np.stack([np.zeros(10), 1.0 - 0.05 * steps], axis=1),
                rewards=np.ones(10), costs=np.zeros(10), hazard=hazard,
                states=np.zeros((10, 7), np.float32))
    line = hazard_line(run)
    assert line.startswith("α of `safety` (the composer's own skill): 0.71 over the 7 steps "
                           "with V_h(s) > 0; 0.92 over the 3 steps with V_h(s) ≤ 0.")
    r_hazard = np.corrcoef(run.alphas[:, 1], hazard)[0, 1]
    r_step = np.corrcoef(hazard, steps)[0, 1]
    assert (f"its correlation with V_h(s) is {r_hazard:+.2f}, with the step -1.00 "
            f"(V_h(s) with the step: {r_step:+.2f}).") in line


def test_a_cell_of_one_training_seed_shows_no_spread():
    """The std row of a method measured at one training seed says so instead of ± 0."""
    from tune.safe_table import safe_table, spread_lines

    search = _ballrun_only("small")
    seed_of = {p.tag(): p.seed for p in enumerate_points(search)}
    rows = [r for r in _rows(search, lambda p, skill: 0.5, lambda p, skill: 1.0)
            if not (r.get("trial") and r["name"].endswith(r["trial"]) and
                    r["name"].startswith("ballrun-safety_") and seed_of[r["trial"]] > 0)]
    lines = spread_lines(safe_table(search, rows))
    header = lines[0].split(" | ")
    ballrun = lines[2].split(" | ")
    assert ballrun[header.index("BC-Safe")] == "one seed"
    assert ballrun[header.index("FISOR")] == "one seed"
    assert ballrun[header.index("Safety skill")].startswith("± 0.00")


def test_a_composer_trained_on_all_the_data_has_trials_and_columns_of_its_own():
    """`composer_data: [stream, all]`: the composer of the second choice trains on every
    episode (the safe subset has no hazard to see), under its own tags and columns; with a
    weighting that needs critics its safety skill is fitted again, into a column too."""
    from tune.safe_table import safe_table, table_lines

    base = _ballrun_only("small")
    search = base.model_copy(update={"methods": ["psec", "fixed", "bc"],
                                     "composer_data": ["stream", "all"],
                                     "composer_objectives": [None, "reward+feasibility"],
                                     "alpha": base.alpha[:1]})
    stream = search.load_stream()
    points = enumerate_points(search)
    psec = [p for p in points if p.method == "psec" and p.seed == 0]
    assert sorted((p.objective or "", p.composer_data or "") for p in psec) == [
        ("", ""), ("", "all"), ("reward+feasibility", ""), ("reward+feasibility", "all")]
    # BC-Safe has no composer: one point per seed, as before.
    assert len([p for p in points if p.method == "bc"]) == len(search.seeds)
    stock, everything = (next(p for p in psec if p.objective is None and p.composer_data == d)
                         for d in (None, "all"))
    # The stream's own choice keeps the tag it had before the axis existed.
    assert stock.tag() in {p.tag() for p in enumerate_points(base)}
    assert everything.skill_tag() == stock.skill_tag()  # the same safety skill
    (subset,) = trial_task(search, stream, stock).composers
    (whole,) = trial_task(search, stream, everything).composers
    assert (subset.data.top_episodes, subset.data.max_episode_cost) == (30, 4.0)
    assert whole.data.selects_all and whole.objective == subset.objective
    assert everything.describe().endswith("composer on all data, seed 0")

    def reward(point, is_skill):
        if is_skill:
            return 0.3 if point.objective else 0.2
        return {None: 0.5, "all": 0.7}[point.composer_data] + (0.1 if point.objective else 0)

    table = safe_table(search, _rows(search, reward, lambda point, is_skill: 2.0))
    cells = table.cells["BallRun"]
    assert cells["psec"].reward == pytest.approx([0.5] * 3)
    assert cells["psec#on all data"].reward == pytest.approx([0.7] * 3)
    assert cells["psec#reward+feasibility on all data"].reward == pytest.approx([0.8] * 3)
    # Fixed is tuned per composer choice; its unmarked cell is the stream's.
    assert cells["fixed"].reward == pytest.approx([0.5] * 3)
    assert cells["fixed#on all data"].reward == pytest.approx([0.7] * 3)
    # The skill refitted with critics is a column of its own, not a fourth seed.
    assert cells["safety-skill"].reward == [0.2] * 3
    assert cells["safety-skill#for composer reward+feasibility"].reward == [0.3] * 3
    header = table_lines(table)[0]
    assert ("| Safety skill | Safety skill (for composer reward+feasibility) | Fixed | "
            "Fixed (composer on all data) |") in header
    assert header.endswith("| PSEC | PSEC (composer on all data) | "
                           "PSEC (composer reward+feasibility) | "
                           "PSEC (composer reward+feasibility on all data) |")


def test_a_trace_can_follow_the_composer_trained_on_all_the_data(tmp_path):
    """An α(s) trace names the composer weighting and data it follows; a scale that
    leaves that choice out drops the trace."""
    from tune.spec import parse_search

    data = dump(load_search(SEARCH, "small"))
    data.update(composer_objectives=[None, "reward+feasibility"], composer_data=["stream", "all"],
                alpha_trace=[{"target": "CarRun"},
                             {"target": "CarRun", "objective": "reward+feasibility",
                              "composer_data": "all"}])
    data["scales"]["small"]["composer_data"] = ["stream"]
    search = parse_search(data)
    assert [t.composer_data for t in search.at_scale("paper").alpha_trace] == [None, "all"]
    assert [t.composer_data for t in search.at_scale("small").alpha_trace] == [None]
    from library.errors import SpecError
    from tune.alpha_trace import trace_point

    paper = search.at_scale("paper")
    first, chosen = (trace_point(paper, trace) for trace in paper.alpha_trace)
    assert (first.method, first.objective, first.composer_data) == ("psec", None, None)
    assert (chosen.objective, chosen.composer_data) == ("reward+feasibility", "all")
    assert chosen.alpha == first.alpha == paper.alpha[0] and chosen.seed == 0
    with pytest.raises(SpecError, match="composer_data"):
        parse_search({**data, "composer_data": ["all", "all"]})


def test_the_weighted_search_reuses_the_main_search_s_psec_and_refits_only_for_critics():
    """configs/search_dsrl_weighted.yaml: its stock point is the main search's PSEC trial
    (the same tag: found in the store); BC on all the data composes the same safety skill;
    FISOR's weighting fits the skill again with reward and feasibility critics."""
    from pipeline.plan import plan_task

    weighted = load_search(CONFIGS / "search_dsrl_weighted.yaml", "paper")
    main = load_search(SEARCH, "paper-carrun")
    stream = weighted.load_stream()
    points = {p.composer_label(): p for p in enumerate_points(weighted)}
    assert set(points) == {None, "on all data", "reward+feasibility",
                           "reward+feasibility on all data"}
    assert points[None].tag() in {p.tag() for p in enumerate_points(main)}
    assert points["on all data"].skill_tag() == points[None].skill_tag()
    fisor = points["reward+feasibility on all data"]
    assert fisor.skill_tag() == points["reward+feasibility"].skill_tag() != points[None].skill_tag()
    task = trial_task(weighted, stream, fisor)
    (composer,) = task.composers
    assert composer.objective == "reward+feasibility" and composer.data.selects_all
    unit = plan_task(task, bases=["carrun-base"]).units[task.name]
    assert [s.kind for s in unit.stages] == ["critics", "skill", "composer"]
    assert task.objectives == {"feasibility", "reward+feasibility"}
