"""scripts/alpha_weights.py and pipeline.tblog's readers: a composer's final α read back
from the TensorBoard run its fit logged under the store."""

import importlib.util
import os

import pytest

from pipeline.tblog import RunLog, item_runs, last_scalars, run_name

_PATH = os.path.join(os.path.dirname(__file__), "..", "scripts", "alpha_weights.py")
_spec = importlib.util.spec_from_file_location("alpha_weights", _PATH)
alpha_weights = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(alpha_weights)


def test_the_last_logged_alpha_of_each_skill_is_read_back(tmp_path, capsys):
    store = str(tmp_path / "store")
    with RunLog(store, run_name("mix", "psec", 0)) as log:
        log.scalars({"a/mean": 0.5, "a/std": 0.2, "b/mean": 0.5, "b/std": 0.0}, 0,
                    prefix="alpha/")
        log.scalars({"a/mean": 0.9, "a/std": 0.1, "b/mean": -0.3, "b/std": 0.3}, 100,
                    prefix="alpha/")
        log.scalars({"loss": 1.0}, 100, prefix="train/")
    # Another item whose name starts like it is not its run.
    with RunLog(store, run_name("mix-2", "psec", 0)) as log:
        log.scalars({"a/mean": 0.0}, 0, prefix="alpha/")
    assert item_runs(store, "mix") == ["mix__psec__0"]
    values = last_scalars(store, "mix__psec__0", prefix="alpha/")
    assert values == pytest.approx({"a/mean": 0.9, "a/std": 0.1, "b/mean": -0.3, "b/std": 0.3})
    assert alpha_weights.main(["--store", store, "mix", "absent"]) == 0
    out = capsys.readouterr().out
    # Σα 0.6, Σ|α| 1.2, mean spread 0.2, the largest |α| first with its sign.
    assert "| mix | 0.60 | 1.20 | 0.20 | a +0.90, b -0.30 |" in out
    assert "| absent | — | — | — | no α logged |" in out

