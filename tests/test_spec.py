"""Task/stream specs: every bad field is a one-line SpecError that names its path."""

import copy
from pathlib import Path

import pytest
import yaml

from library.errors import SpecError
from tasks.spec import (
    StreamSpec,
    TaskSpec,
    dump,
    dump_yaml,
    load_stream,
    load_task,
    parse_stream,
    parse_task,
)

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
STREAM_CONFIGS = [path for path in CONFIGS if "tasks" in yaml.safe_load(path.read_text())]


def _stream() -> dict:
    """A small valid stream on the mujoco suite (env names are checked without building envs)."""
    return {
        "name": "shift",
        "tasks": [
            {
                "name": "src",
                "suite": "mujoco",
                "env": "Hopper-v5",
                "role": "base",
                "dynamics": {"gravity": 0.5},
                "data": {"source": "generate", "policy": "expert", "episodes": 5},
            },
            {
                "name": "tgt",
                "suite": "mujoco",
                "env": "Hopper-v5",
                "objective": "advantage",
                "data": {"source": "import", "format": "d4rl", "path": "hopper.hdf5"},
                "composers": [{"name": "mix", "skills": ["base"]}],
            },
            {
                "name": "tgt2",
                "suite": "mujoco",
                "env": "Walker2d-v5",
                "data": {"source": "store", "dataset": "walker-data"},
                "composers": [{"name": "mix2", "skills": ["base", "tgt"], "mode": "noise"}],
            },
        ],
        "scales": {
            "smoke": {"train_steps": 3, "composer_steps": 2, "data_episodes": {"src": 2}},
            "paper": {"base_steps": 1000, "eval_seeds": [0, 1], "eval_candidates": 64},
        },
    }


def _set(path: str, value):
    """A mutation setting `path` (dot/index path into the stream dict) to `value`."""

    def mutate(data: dict) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = data
        for part in parents:
            target = target[part]
        target[last] = value

    return mutate


def _drop(path: str):
    def mutate(data: dict) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = data
        for part in parents:
            target = target[part]
        del target[last]

    return mutate


BAD_FIELDS = [
    # (mutation, field path the message must start with, a word the message must contain)
    (_set("tasks.1.lora", {"rank": 0}), "tasks[1].lora.rank", "must be a positive integer, got 0"),
    (_set("tasks.1.lora", {"alpha": -1}), "tasks[1].lora.alpha", "must be a positive finite number"),
    (_set("tasks.1.lora", {"kind": "dora"}), "tasks[1].lora.kind", "'lora'"),
    (_set("tasks.1.foo", 1), "tasks[1].foo", "unknown field"),
    (_set("tasks.1.lora", {"rnk": 4}), "tasks[1].lora.rnk", "unknown field"),
    (_set("extra_top", 1), "extra_top", "unknown field"),
    (_set("tasks.1.suite", "atari"), "tasks[1].suite", "known: dmc"),
    (_set("tasks.1.env", "Hopper-v9"), "tasks[1].env", "known:"),
    (_set("tasks.1.name", "a>b"), "tasks[1].name", "invalid name"),
    (_set("tasks.1.name", "base"), "tasks[1].name", "reserved"),
    (_set("name", "my stream"), "name", "invalid name"),
    (_set("tasks.0.dynamics", {"friction": 0}), "tasks[0].dynamics.friction", "> 0"),
    (_set("tasks.0.dynamics", {"mass": 2.0}), "tasks[0].dynamics.mass", "unknown field"),
    (_set("tasks.0.role", "teacher"), "tasks[0].role", "'base'"),
    (_set("tasks.0.base", "src"), "tasks[0].base", "no base"),
    (_set("tasks.1.objective", "ppo"), "tasks[1].objective", "advantage"),
    (_set("tasks.1.critic", {"expectile": 1.5}), "tasks[1].critic.expectile", "strictly between 0 and 1"),
    (_set("tasks.1.critic", {"discount": 0}), "tasks[1].critic.discount", "strictly between 0 and 1"),
    (_set("tasks.1.train", {"workers": 0}), "tasks[1].train.workers", "'auto'"),
    (_set("tasks.1.train", {"workers": "many"}), "tasks[1].train.workers", "'auto'"),
    (_set("tasks.1.train", {"lr": 0}), "tasks[1].train.lr", "> 0"),
    (_set("tasks.1.train", {"batch_size": "big"}), "tasks[1].train.batch_size", "integer"),
    (_set("tasks.1.eval", {"seeds": []}), "tasks[1].eval.seeds", "at least 1"),
    (_set("tasks.1.eval", {"cost_threshold": 0}), "tasks[1].eval.cost_threshold", "> 0"),
    (_set("tasks.1.eval", {"n_candidates": 0}), "tasks[1].eval.n_candidates", ">= 1"),
    (_set("tasks.1.horizon", 0), "tasks[1].horizon", ">= 1"),
    (_drop("tasks.1.data"), "tasks[1].data", "required"),
    (_drop("tasks.1.data.path"), "tasks[1].data.path", "required when source is 'import'"),
    (_set("tasks.1.data.episodes", 3), "tasks[1].data.episodes", "only allowed when source"),
    (_set("tasks.1.data.format", "csv"), "tasks[1].data.format", "'d4rl'"),
    (_drop("tasks.0.data.policy"), "tasks[0].data.policy", "required when source"),
    (_set("tasks.0.data.policy", "oracle"), "tasks[0].data.policy", "'expert'"),
    (_set("tasks.0.data.episodes", 0), "tasks[0].data.episodes", ">= 1"),
    (_set("tasks.0.data.action_noise", -0.1), "tasks[0].data.action_noise", ">= 0"),
    (_set("tasks.0.data.envs", ["Ant-v5"]), "tasks[0].data.envs[0]", "known:"),
    (_set("tasks.0.data.source", "web"), "tasks[0].data.source", "'generate'"),
    (_set("tasks.2.data.dataset", "x/y"), "tasks[2].data.dataset", "invalid name"),
    (_set("tasks.0.data.max_transitions", 0), "tasks[0].data.max_transitions", ">= 1"),
    (_set("tasks.1.composers.0.name", "a.b"), "tasks[1].composers[0].name", "invalid name"),
    (_set("tasks.1.composers.0.skills", []), "tasks[1].composers[0].skills", "at least 1"),
    (_set("tasks.1.composers.0.skills", ["tgt2"]), "tasks[1].composers[0].skills[0]", "earlier"),
    (_set("tasks.1.composers.0.skills", ["src"]), "tasks[1].composers[0].skills[0]", "a base"),
    (
        _set("tasks.1.composers.0.skills", ["base", "base"]),
        "tasks[1].composers[0].skills[1]",
        "twice",
    ),
    (_set("tasks.1.composers.0.skills", ["tgt"]), "tasks[1].composers[0].skills", "own skill"),
    (_set("tasks.1.composers.0.mode", "mlp"), "tasks[1].composers[0].mode", "'parameter'"),
    (_set("tasks.1.composers.0.steps", -1), "tasks[1].composers[0].steps", ">= 0"),
    (
        _set("tasks.1.composers.0.alpha", {"output": "tanh"}),
        "tasks[1].composers[0].alpha.output",
        "'softmax'",
    ),
    (
        _set("tasks.1.composers.0.alpha", {"init": "best"}),
        "tasks[1].composers[0].alpha.init",
        "'uniform'",
    ),
    (_set("tasks.2.composers.0.name", "tgt"), "tasks[2].composers[0].name", "already produced"),
    (_set("tasks.2.name", "src"), "tasks[2].name", "already produced"),
    (_set("tasks.1.base", "tgt2"), "tasks[1].base", "not an earlier base"),
    (_set("tasks.0.role", "skill"), "tasks[0].base", "no earlier base"),
    (_set("tasks.0.composers", [{"name": "c", "skills": ["base"]}]), "tasks[0].composers", "only"),
    (_set("tasks", []), "tasks", "at least 1"),
    (_set("continual", "yes"), "continual", "boolean"),
    (_set("seed", -1), "seed", ">= 0"),
    (_drop("scales.paper"), "scales", "paper"),
    (_set("scales.smoke.train_steps", 0), "scales.smoke.train_steps", ">= 1"),
    (_set("scales.smoke.warp", 2), "scales.smoke.warp", "unknown field"),
    (_set("scales.smoke.data_episodes", {"nope": 2}), "scales.smoke.data_episodes.nope", "no task"),
    (_set("scales.smoke.data_episodes", {"tgt": 2}), "scales.smoke.data_episodes.tgt", "generate"),
    (_set("scales.smoke.data_episodes", {"src": 0}), "scales.smoke.data_episodes.src", ">= 1"),
    (_set("scales.smoke.data_episodes", "lots"), "scales.smoke.data_episodes", "integer >= 1"),
    (_set("scales.smoke.data_transitions", {"nope": 9}), "scales.smoke.data_transitions.nope",
     "no task"),
    (_set("scales.smoke.data_transitions", 0), "scales.smoke.data_transitions", "integer >= 1"),
    (_set("scales.smoke.eval_seeds", []), "scales.smoke.eval_seeds", "at least 1"),
]


def test_valid_stream_fills_defaults_and_bases():
    stream = parse_stream(_stream())
    assert [task.base for task in stream.tasks] == [None, "src", "src"]
    assert stream.tasks[0].data.action_noise == 0.0 and stream.tasks[0].data.seed == 0
    assert stream.tasks[1].data.seed is None  # generate-only fields stay unset elsewhere
    assert stream.tasks[1].lora.rank == 8 and stream.tasks[1].train.workers == "auto"
    assert stream.tasks[2].composer_skills(stream.tasks[2].composers[0]) == ["base", "tgt", "tgt2"]
    assert stream.tasks[1].needs_critic and not stream.tasks[0].needs_critic


@pytest.mark.parametrize(("mutate", "field", "word"), BAD_FIELDS, ids=[b[1] for b in BAD_FIELDS])
def test_bad_field_names_its_path(mutate, field, word):
    data = copy.deepcopy(_stream())
    mutate(data)
    with pytest.raises(SpecError) as caught:
        parse_stream(data)
    message = str(caught.value)
    assert message.startswith(f"{field}: "), message
    assert word in message, message
    assert "\n" not in message
    assert caught.value.field == field


def test_several_errors_are_counted_on_one_line():
    data = _stream()
    data["tasks"][1]["lora"] = {"rank": 0}
    data["tasks"][1]["critic"] = {"discount": 0}
    message = str(pytest.raises(SpecError, parse_stream, data).value)
    assert message.startswith("tasks[1].critic.discount: ") and "(and 1 more error)" in message


def test_at_scale_applies_overrides_and_keeps_the_original():
    stream = parse_stream(_stream())
    smoke = stream.at_scale("smoke")
    assert smoke.applied_scale == "smoke" and stream.applied_scale is None
    assert smoke.tasks[0].train.steps == stream.tasks[0].train.steps  # no base_steps in smoke
    assert [t.train.steps for t in smoke.tasks[1:]] == [3, 3]
    assert smoke.tasks[1].composers[0].steps == 2
    assert smoke.tasks[0].data.episodes == 2
    assert [t.data.max_transitions for t in smoke.tasks] == [None, None, None]
    paper = stream.at_scale("paper")
    assert paper.tasks[0].train.steps == 1000
    assert all(task.eval.seeds == [0, 1] for task in paper.tasks)
    assert [task.eval.n_candidates for task in paper.tasks] == [64, 64, 64]
    assert [task.eval.n_candidates for task in smoke.tasks] == [1, 1, 1]
    with pytest.raises(SpecError, match=r"^scale: unknown scale 'huge'; defined: smoke, paper$"):
        stream.at_scale("huge")


def test_a_scale_sizes_data_in_transitions_per_task_or_for_all():
    data = _stream()
    data["scales"]["smoke"]["data_transitions"] = {"src": 500, "tgt2": 40}
    smoke = parse_stream(data).at_scale("smoke")
    assert [t.data.max_transitions for t in smoke.tasks] == [500, None, 40]
    data["scales"]["paper"]["data_transitions"] = 7
    paper = parse_stream(data).at_scale("paper")
    assert [t.data.max_transitions for t in paper.tasks] == [7, 7, 7]


def test_dump_round_trips(tmp_path):
    stream = parse_stream(_stream()).at_scale("smoke")
    assert parse_stream(dump(stream)) == stream
    path = tmp_path / "stream.yaml"
    path.write_text(dump_yaml(stream))
    assert load_stream(path) == stream
    task = stream.tasks[2]
    assert parse_task(dump(task)) == task


def test_load_task_file(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(_stream()["tasks"][1]))
    task = load_task(path)
    assert isinstance(task, TaskSpec) and task.base is None  # the driver picks the base
    path.write_text("name: t\nsuite: mujoco\nenv: Hopper-v5\ndata: {source: store}\n")
    with pytest.raises(SpecError, match=r"^data\.dataset: required when source is 'store'$"):
        load_task(path)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (None, "no such file"),
        ("name: [unclosed\n", "invalid YAML at line"),
        ("- just\n- a list\n", "must hold a mapping, got list"),
    ],
)
def test_unreadable_files_are_one_line_errors(tmp_path, text, pattern):
    path = tmp_path / "stream.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_stream(path)
    assert str(caught.value).startswith(str(path)) and pattern in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("path", STREAM_CONFIGS, ids=[p.name for p in STREAM_CONFIGS])
@pytest.mark.parametrize("scale", ["smoke", "paper"])
def test_configs_load_at_both_scales(path, scale):
    stream = load_stream(path, scale)
    assert isinstance(stream, StreamSpec) and stream.applied_scale == scale
    assert stream.tasks[0].role == "base"
    if scale == "smoke":  # minutes on 2 CPUs
        for task in stream.tasks:
            assert task.train.steps <= 1000 and task.eval.episodes <= 2
            assert all(composer.steps <= 1000 for composer in task.composers)


def test_shipped_configs_are_present():
    assert {"dmc_walker.yaml", "cw10.yaml", "d4rl_shift.yaml"} <= {p.name for p in STREAM_CONFIGS}


def test_cw10_is_the_continual_world_sequence():
    from tasks.suites.metaworld import CW10

    stream = load_stream(Path(__file__).parent.parent / "configs" / "cw10.yaml")
    base, *skills = stream.tasks
    assert [task.env for task in skills] == list(CW10)
    assert not set(base.data.envs) & set(CW10)  # the base never sees a CW10 task
    for index, task in enumerate(skills):
        assert task.composers[0].skills == ["base", *CW10[:index]]


def test_alpha_and_lora_defaults_are_the_library_s():
    """One source: the spec's α defaults are AlphaConfig's; its LoRA alpha defaults to the
    library's (16·rank, the official multiplier)."""
    from library.composition import AlphaConfig
    from tasks.spec import AlphaSpec, LoraSpec

    library = AlphaConfig().to_dict()
    assert AlphaSpec().model_dump() == {k: library[k] for k in ("output", "scale", "init", "reg")}
    assert LoraSpec().alpha is None


def test_a_composer_task_s_composers_start_uniform_without_the_pull():
    """A composer task has no new skill: "newest" would mean its last stored skill."""
    from tasks.spec import load_stream

    stream = load_stream("configs/metaworld_unseen.yaml", "smoke")
    for task in stream.tasks:
        for composer in task.composers:
            expected = ("uniform", 0.0) if task.role == "composer" else ("newest", 1.0)
            assert (composer.alpha.init, composer.alpha.reg) == expected, composer.name
    explicit = stream.task("plate-slide-v3").model_dump(mode="json")
    explicit["composers"][0]["alpha"] = {"init": "newest"}
    from tasks.spec import parse_task

    assert parse_task(explicit).composers[0].alpha.init == "newest"


def test_only_a_base_task_sets_the_network():
    from tasks.spec import load_stream, parse_task

    stream = load_stream("configs/dmc_walker.yaml", "smoke")
    base = stream.task("walker-stand").model_dump(mode="json")
    base["network"] = {"block_width": 4, "time_embedding": "learned"}
    assert parse_task(base).network.block_width == 4
    walk = stream.task("walker-walk").model_dump(mode="json")
    walk["network"] = {"block_width": 4}
    with pytest.raises(SpecError, match="network: only a base task"):
        parse_task(walk)
