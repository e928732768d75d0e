"""library.errors.exit_status: the CLI contract every entry point shares."""

import pytest

from library.errors import SpecError, exit_status


def test_a_command_that_returns_gives_its_status_or_zero():
    assert exit_status(lambda: None) == 0
    assert exit_status(lambda: 3) == 3


def test_a_user_error_prints_one_line_and_gives_two(capsys):
    def broken() -> None:
        raise SpecError("train.steps", "must be a positive\n   integer, got 0")

    assert exit_status(broken) == 2
    assert capsys.readouterr().err == "psec: error: train.steps: must be a positive integer, got 0\n"


def test_other_errors_are_not_swallowed():
    def bug() -> None:
        raise KeyError("not a user error")

    with pytest.raises(KeyError):  # a bug, not a user error: it keeps its traceback
        exit_status(bug)


def test_the_user_error_under_a_ray_train_failure_is_found():
    """pipeline.fit.psec_cause: through Ray Train's public WorkerGroupError.worker_failures
    (no exception chain), through `cause` / `__cause__` chains, and None for a crash."""
    from ray.exceptions import RayTaskError
    from ray.train import WorkerGroupError

    from library.errors import DataError
    from pipeline.fit import psec_cause

    user = DataError("walk: training diverged at step 7")
    assert psec_cause(WorkerGroupError("worker 1 failed", {1: user})) is user
    try:
        try:
            raise user
        except DataError as inner:
            raise RuntimeError("the trainer stopped") from inner
    except RuntimeError as outer:
        assert psec_cause(outer) is user
    # Ray re-raises a task's error as a class deriving from both RayTaskError and DataError,
    # whose message is the whole remote traceback: the original, one-line error is wanted.
    remote = RayTaskError("fit", "remote traceback", user).as_instanceof_cause()
    assert isinstance(remote, DataError) and psec_cause(remote) is user
    assert psec_cause(WorkerGroupError("worker 0 died", {0: MemoryError()})) is None
