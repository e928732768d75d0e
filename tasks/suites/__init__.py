"""Registry of benchmark suites, imported lazily.

Importing `tasks` or `tasks.suites` must not import mujoco, metaworld or pybullet (each
takes seconds and some need a GL context), so a suite's module is imported only when
`get_suite` is first asked for it.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

from library.errors import SpecError

if TYPE_CHECKING:
    from tasks.suites.base import Suite

# name -> "module:ClassName"
_REGISTRY: dict[str, str] = {
    "dmc": "tasks.suites.dmc:DMCSuite",
    "metaworld": "tasks.suites.metaworld:MetaWorldSuite",
    "mujoco": "tasks.suites.mujoco:MujocoSuite",
    "bullet_safety": "tasks.suites.bullet_safety:BulletSafetySuite",
}

SUITES: tuple[str, ...] = tuple(_REGISTRY)
"""Every suite name a task spec may use."""


@cache
def get_suite(name: str) -> Suite:
    """The (shared, stateless) suite called `name`; SpecError on field `suite` if unknown."""
    if name not in _REGISTRY:
        raise SpecError("suite", f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    module_name, class_name = _REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        # e.g. pybullet missing: `pip install -e .[safety]` (see pyproject.toml).
        raise SpecError(
            "suite", f"suite {name!r} needs module {error.name!r}, which is not installed"
        ) from None
    return getattr(module, class_name)()
