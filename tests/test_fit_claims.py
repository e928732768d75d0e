"""Two drivers on one cluster and store fit a unit once (pipeline/fit_claims.py): the claim
table's rules, a second driver waiting for the first's fit, and a driver taking a unit over
when the fit it waited for is cancelled with its driver."""

import time

import pytest
import ray

from library.store import SkillStore
from pipeline import fit_claims
from pipeline.driver import DriverOptions, run_plan
from pipeline.fit_claims import ClaimTable, DriverClaims, claim_key
from pipeline.plan import plan_stream
from tasks.spec import load_stream
from tests.pipeline_builders import put_datasets, register_base, tiny_task, write_stream

TASKS = [tiny_task("stand", role="base"), tiny_task("walk", steps=300)]


def test_the_first_offer_holds_a_claim_until_its_holder_releases_it(monkeypatch):
    table, key = ClaimTable(), claim_key(["walk", "walk-critics"])
    assert key == claim_key(["walk-critics", "walk"])
    assert table.offer(key, "a") == (True, "a", None)
    assert table.offer(key, "b") == (False, "a", None)  # not published yet: ask again
    table.publish(key, "b", ["b's fit"])  # not b's claim: ignored
    table.publish(key, "a", ["a's fit"])
    assert table.offer(key, "b") == (False, "a", ["a's fit"])
    assert table.offer(key, "a") == (True, "a", None)  # its holder may offer again
    table.release(key, "b")  # not b's: kept
    assert table.held() == {key: "a"}
    table.release(key, "a")
    assert table.offer(key, "b") == (True, "b", None)
    # A holder that never publishes (its driver died between offer and publish) loses the
    # claim to the next offer after PUBLISH_S.
    later = time.time() + fit_claims.PUBLISH_S + 1
    monkeypatch.setattr(fit_claims.time, "time", lambda: later)
    assert table.offer(key, "c") == (True, "c", None)


def _store(tmp_path):
    """A store holding the synthetic datasets and an untrained base "stand"."""
    store_uri = str(tmp_path / "store")
    put_datasets(store_uri, TASKS)
    register_base(store_uri, "stand", "stand-data")
    return store_uri


def _plan(tmp_path, stream):
    """Stream `stream`: the base and the skill "walk" (300 steps, a few seconds)."""
    return plan_stream(load_stream(write_stream(tmp_path / f"{stream}.yaml", TASKS,
                                                name=stream, continual=False)))


@ray.remote(num_cpus=0)
def _drive(plan, store_uri):
    summary = run_plan(plan, store_uri, DriverOptions(progress=False))
    return summary.fitted, summary.skipped, sorted(summary.unit_seconds)


def test_two_drivers_fit_a_shared_skill_once(ray_cluster, tmp_path):
    store_uri = _store(tmp_path)
    plans = [_plan(tmp_path, name) for name in ("one", "two")]
    results = ray.get([_drive.remote(plan, store_uri) for plan in plans])
    assert [units for _, _, units in results].count(["walk"]) == 1, results  # one fit
    assert all("walk" in fitted + skipped for fitted, skipped, _ in results)
    # Each stream still rolls the skill out for its own rows.
    streams = {row["stream"] for row in SkillStore(store_uri).results().to_pylist()
               if row["name"] == "walk"}
    assert streams == {"one", "two"}


@ray.remote(num_cpus=0)
def _never_ends():
    time.sleep(600)


def test_a_driver_takes_a_unit_over_when_the_fit_it_waits_for_is_cancelled(ray_cluster,
                                                                          tmp_path):
    store_uri = _store(tmp_path)
    plan = _plan(tmp_path, "late")
    # Another driver holds the skill's claim and its "fit" never ends until cancelled (as
    # when that driver's trial is stopped: its pending fits are cancelled).
    other = DriverClaims(store_uri)
    key = claim_key(plan.units["walk"].produces())
    assert other.offer(key).granted
    fit = _never_ends.remote()
    other.publish(key, fit)
    driver = _drive.remote(plan, store_uri)
    time.sleep(3)
    ready, _ = ray.wait([driver], timeout=0)
    assert not ready  # waiting for the other driver's fit
    ray.cancel(fit, force=True)
    fitted, _, units = ray.get(driver)
    assert "walk" in fitted and "walk" in units
    with pytest.raises(ray.exceptions.RayError):
        ray.get(fit)


def test_a_driver_fits_the_unit_itself_when_the_claims_actor_is_gone(ray_cluster, tmp_path):
    claims = DriverClaims(str(tmp_path / "store"))
    ray.kill(claims.actor, no_restart=True)
    offer = claims.offer(claim_key(["walk"]))
    assert offer.granted and offer.fit is None
    claims.publish(claim_key(["walk"]), ray.put(1))  # nothing to publish to: no error
    claims.release_all()
