"""The runner role installs the pins of requirements/runner.txt; its default list must not drift from them."""

import os
import re

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def test_runner_role_pins_match_requirements():
    with open(os.path.join(ROOT, "requirements", "runner.txt")) as handle:
        wanted = [re.sub(r"\s+#.*$", "", line).strip() for line in handle]
    wanted = [line for line in wanted if line and not line.startswith("#")]
    with open(os.path.join(ROOT, "roles", "runner", "defaults", "main.yml")) as handle:
        defaults = yaml.safe_load(handle)
    assert defaults["runner_packages"] == wanted, (
        "roles/runner/defaults/main.yml runner_packages differs from requirements/runner.txt; "
        "copy the pins over (and the default in roles/runner/meta/argument_specs.yml)")
    with open(os.path.join(ROOT, "roles", "runner", "meta", "argument_specs.yml")) as handle:
        spec = yaml.safe_load(handle)
    assert spec["argument_specs"]["main"]["options"]["runner_packages"]["default"] == wanted
