"""The repository's scripts (scripts/*.py are files, not a package) as modules for tests."""

import importlib.util
import os
from types import ModuleType

SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "scripts")


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py, executed once as module `name`."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
