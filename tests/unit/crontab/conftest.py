"""_crontab from plugins/module_utils, imported as the runner's package zoo_locked (make venv links it), so its
relative import of _config (the one lock-name rule) works as it does in the collection."""

import importlib
import os
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


@pytest.fixture(scope="session")
def crontab():
    sys.path.insert(0, os.path.join(ROOT, ".venv", "lib", "zoo-locked"))
    return importlib.import_module("zoo_locked._crontab")
