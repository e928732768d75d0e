"""Errors a user can cause. Each renders as one line; the CLI prints it and exits 2."""

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


class PsecError(Exception):
    """Any failure caused by user input or state: bad spec, bad file, bad store."""

    def __str__(self) -> str:
        return " ".join(super().__str__().split())


class SpecError(PsecError):
    """A spec, stream or search file has a bad field; the message names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class StoreError(PsecError):
    """Unknown or duplicate name, checksum mismatch, or a store that cannot be written."""


class ShapeError(PsecError):
    """Dimensions of a dataset, skill or composer do not match the base they belong to."""


class DataError(PsecError):
    """A dataset file is truncated, inconsistent or in an unknown layout."""


class TrainingDiverged(DataError):
    """The loss or the weights of a fit became non-finite at `step`; no checkpoint was
    taken from that step on."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def exit_status(command: Callable[[], int | None]) -> int:
    """Run a command-line entry point's body under the CLI contract: its status (0 when it
    returns None), or, when it raises a PsecError, the error's one line on stderr as
    `psec: error: …` and status 2."""
    try:
        status = command()
    except PsecError as error:
        print(f"psec: error: {error}", file=sys.stderr)
        return 2
    return 0 if status is None else status


class ArgumentParser(argparse.ArgumentParser):
    """argparse under the same contract: a bad command line (a missing argument, an unknown
    choice, a value its `type` refuses) raises PsecError in one line instead of printing the
    usage block, so `exit_status` reports it like any other user error. `--help` is as
    argparse makes it. Subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        # "psec run" -> "run: ..."; the psec prefix is already in "psec: error:".
        where = self.prog.removeprefix("psec").strip()
        raise PsecError(f"{where + ': ' if where else ''}{message} (see {self.prog} --help)")
