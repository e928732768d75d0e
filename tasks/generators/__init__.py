"""Dataset generators: SAC experts (`sac`), the committed actors (`experts`), rollouts and
`generate(task) -> pyarrow.Table`.

`generate` is imported on first use: `python -m tasks.generators.sac` imports this package
first, and importing the generators here would load the module it is about to run.
"""

from typing import Any

__all__ = ["generate"]


def __getattr__(name: str) -> Any:
    if name == "generate":
        from tasks.generators.generator import generate

        return generate
    raise AttributeError(f"module 'tasks.generators' has no attribute {name!r}")
