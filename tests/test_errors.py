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
