"""pipeline.driver.regenerated_note: a dataset generated again that differs from the one
stored items were fitted on is said, naming them (a store continued on another machine)."""

from pipeline_builders import tiny_task

from library.manifest import ManifestEntry
from pipeline.driver import regenerated_note
from pipeline.plan import dataset_name
from tasks.dataset import fingerprint
from tasks.generators.generator import generate
from tasks.spec import parse_task

SPEC = {**tiny_task("run"), "horizon": 20,
        "data": {"source": "generate", "policy": "random", "episodes": 1, "seed": 3}}


def entry(name, spec, seen):
    return ManifestEntry(name=name, kind="skill", parent="stand", task_spec=spec,
                         dataset_fingerprint=seen, sha256="0" * 64, size_bytes=1,
                         created="2026-12-06T00:00:00+00:00")


def test_items_fitted_on_other_data_of_the_same_name_are_named_and_no_others():
    task = parse_task(SPEC)
    name, table = dataset_name(task), generate(task)
    made = fingerprint(table)
    other_task = {**SPEC, "name": "walk"}                       # another dataset name
    imported = tiny_task("run")                                 # data: source store
    entries = [entry("same", SPEC, made), entry("unrecorded", SPEC, None),
               entry("elsewhere", other_task, "f" * 64), entry("imported", imported, "f" * 64)]
    assert dataset_name(parse_task(other_task)) != name
    assert regenerated_note(entries, name, table) is None
    entries += [entry(f"old-{i}", SPEC, "e" * 64) for i in range(4)]
    note = regenerated_note(entries, name, table)
    assert note.startswith(f"dataset {name} generated again differs from the data "
                           "old-0, old-1, old-2 and 1 more were fitted on")
    assert "\n" not in note


def test_items_taking_the_dataset_by_name_are_compared_on_the_rows_they_read():
    from tasks.dataset import limit_transitions

    task = parse_task(SPEC)
    name, table = dataset_name(task), generate(task)
    by_name = {**tiny_task("lib"), "data": {"source": "store", "dataset": name}}
    cut = {**tiny_task("cut"), "data": {"source": "store", "dataset": name,
                                        "max_transitions": 7}}
    cut_rows = fingerprint(limit_transitions(table, 7))
    entries = [entry("lib", by_name, fingerprint(table)), entry("cut", cut, cut_rows)]
    assert regenerated_note(entries, name, table) is None
    entries += [entry("lib-old", by_name, "e" * 64), entry("cut-old", cut, fingerprint(table))]
    assert regenerated_note(entries, name, table).startswith(
        f"dataset {name} generated again differs from the data cut-old, lib-old were fitted on")
    note = regenerated_note([entry("lib-old", by_name, "e" * 64)], name, table)
    assert "the data lib-old was fitted on" in note
