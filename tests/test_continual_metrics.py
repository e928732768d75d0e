"""Continual World metrics on hand-built success matrices."""

import math

import numpy as np
import pytest

from library.errors import ShapeError
from tasks.continual import (
    average_success,
    continual_metrics,
    curve_auc,
    forgetting,
    missing_cells,
    task_forgetting,
    task_forward_transfer,
)

NAN = math.nan

# p[t, i]: task i after training task t. Task 0 drops from 1.0 to 0.5, task 1 from 0.8
# to 0.6, task 2 is only ever evaluated once.
FORGETFUL = np.array([[1.0, NAN, NAN],
                      [0.7, 0.8, NAN],
                      [0.5, 0.6, 0.9]])


def test_average_success_is_the_mean_of_the_last_row():
    assert average_success(FORGETFUL) == pytest.approx((0.5 + 0.6 + 0.9) / 3)


def test_a_matrix_missing_a_cell_has_no_average_success_or_forgetting():
    # Task 0 not re-evaluated after task 2 yet (a stream still running): a mean over the
    # two scores that exist would read 0.75 as if it were P(T).
    partial = FORGETFUL.copy()
    partial[2, 0] = NAN
    assert missing_cells(partial) == [(2, 0)] and missing_cells(FORGETFUL) == []
    assert math.isnan(average_success(partial)) and math.isnan(forgetting(partial))
    assert task_forgetting(partial)[1:] == pytest.approx([0.2, 0.0])


def test_forgetting_per_task_and_averaged_over_all_tasks():
    assert task_forgetting(FORGETFUL) == pytest.approx([0.5, 0.2, 0.0])
    # Continual World averages over every task, the last one (F = 0) included.
    assert forgetting(FORGETFUL) == pytest.approx(0.7 / 3)


def test_frozen_skills_forget_nothing():
    frozen = np.array([[0.4, NAN], [0.4, 1.0]])
    assert forgetting(frozen) == 0.0
    assert average_success(frozen) == pytest.approx(0.7)


def test_improving_old_tasks_is_negative_forgetting():
    assert forgetting(np.array([[0.2, NAN], [0.6, 1.0]])) == pytest.approx(-0.2)


def test_forward_transfer_normalises_by_the_reference_headroom():
    # (0.8 - 0.6) / 0.4 = 0.5; (0.2 - 0.5) / 0.5 = -0.6; a perfect reference leaves no
    # headroom and a missing one no comparison: both undefined.
    ft = task_forward_transfer([0.8, 0.2, 1.0, 0.3], [0.6, 0.5, 1.0, NAN])
    assert ft[:2] == pytest.approx([0.5, -0.6])
    assert math.isnan(ft[2]) and math.isnan(ft[3])


def test_auc_of_curves_gives_continual_worlds_forward_transfer():
    own = curve_auc([0.0, 1.0, 1.0])     # learns fast: area 0.75
    ref = curve_auc([0.0, 0.0, 1.0])     # learns late: area 0.25
    assert (own, ref) == pytest.approx((0.75, 0.25))
    assert task_forward_transfer([own], [ref]) == pytest.approx([(0.75 - 0.25) / 0.75])
    assert curve_auc([0.3]) == 0.3


def test_continual_metrics_bundle():
    metrics = continual_metrics(["a", "b", "c"], FORGETFUL, reference=[0.5, NAN, 0.9])
    assert metrics.average_success == pytest.approx(2.0 / 3)
    assert metrics.forgetting == pytest.approx(0.7 / 3)
    assert metrics.task_forward_transfer[0] == pytest.approx(1.0)
    assert metrics.task_forward_transfer[2] == pytest.approx(0.0)
    assert metrics.forward_transfer == pytest.approx(0.5)  # mean of the defined ones
    assert (metrics.referenced, metrics.transfer_is_partial) == (2, True)
    without = continual_metrics(["a", "b", "c"], FORGETFUL)
    assert math.isnan(without.forward_transfer)
    assert (without.referenced, without.transfer_is_partial) == (0, False)
    # A curve is a reference too; a perfect reference leaves FT_i undefined, not missing.
    curves = ([0.5, 0.5, 0.5], [0.2, 1.0, NAN])
    every = continual_metrics(["a", "b", "c"], FORGETFUL, reference=[0.5, 1.0, 0.9],
                              curves=curves)
    assert math.isnan(every.task_forward_transfer[1])
    assert (every.referenced, every.transfer_is_partial) == (3, False)


def test_malformed_inputs_name_the_shapes():
    with pytest.raises(ShapeError, match="square"):
        average_success(np.zeros((2, 3)))
    with pytest.raises(ShapeError, match="2 task names"):
        continual_metrics(["a", "b"], FORGETFUL)
    with pytest.raises(ShapeError, match="matching"):
        task_forward_transfer([0.1, 0.2], [0.1])
