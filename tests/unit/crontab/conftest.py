"""Load plugins/module_utils/_crontab.py by path: it is standard library only, so no collection loader needed."""

import importlib.util
import os

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


@pytest.fixture(scope="session")
def crontab():
    spec = importlib.util.spec_from_file_location(
        "zoolocked_crontab_under_test", os.path.join(ROOT, "plugins", "module_utils", "_crontab.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
