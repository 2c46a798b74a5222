"""_config.min_session_timeout and session_safety_problem, the runner's rule for a session timeout T that the
servers' tickTime makes safe: T >= (tickTime/2 + KILL_LANDING) / (1 - HEARTBEAT_SHARE - KILL_SHARE); and the
runner role's use of it (the zoolocked.cron.runner_session_problems filter, its tickTime default)."""

import importlib
import os
import sys

import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


@pytest.fixture(scope="module")
def config():
    sys.path.insert(0, os.path.join(ROOT, ".venv", "lib", "zoo-locked"))
    return importlib.import_module("zoo_locked._config")


@pytest.fixture(scope="module")
def runner_filter(tmp_path_factory):
    """plugins/filter/runner.py imported as the collection's module (it imports module_utils by that name)."""
    base = tmp_path_factory.mktemp("collections")
    (base / "ansible_collections" / "zoolocked").mkdir(parents=True)
    os.symlink(ROOT, str(base / "ansible_collections" / "zoolocked" / "cron"))
    sys.path.insert(0, str(base))
    try:
        return importlib.import_module("ansible_collections.zoolocked.cron.plugins.filter.runner")
    finally:
        sys.path.remove(str(base))


@pytest.mark.parametrize("tick_ms, seconds", [(2000, 8.333), (1000, 5.0), (3000, 11.667), (500, 3.333)])
def test_min_session_timeout(config, tick_ms, seconds):
    assert config.min_session_timeout(tick_ms) == pytest.approx(seconds, abs=0.001)


@pytest.mark.parametrize("tick_ms, safe, unsafe, shown", [(2000, 8.4, 8.3, "8.4s"), (1000, 5.0, 4.9, "5.0s"),
                                                          (3000, 11.7, 11.6, "11.7s")])
def test_session_safety_problem(config, tick_ms, safe, unsafe, shown):
    assert config.session_safety_problem(safe, tick_ms, "runner_session_timeout") is None
    assert config.session_safety_problem(str(safe), tick_ms) is None
    message = config.session_safety_problem(unsafe, tick_ms, "runner_session_timeout")
    assert message.startswith("runner_session_timeout: %gs is too short" % unsafe), message
    assert "tickTime %dms" % tick_ms in message and "use at least %s" % shown in message, message


def test_the_scenarios_figures(config):
    """molecule/faults and molecule/demo: 6 s sessions on 1000 ms ticks; the role's default 10 s on 2000 ms."""
    assert config.session_safety_problem(6, 1000) is None
    assert config.session_safety_problem(10, 2000) is None
    assert config.session_safety_problem(6, 2000) is not None


def test_filter_session_problems(runner_filter):
    problems = runner_filter.runner_session_problems(6, 2000, "runner_session_timeout", "runner_zookeeper_tick_time")
    assert len(problems) == 1
    assert problems[0].startswith("runner_session_timeout: 6s is too short for servers with tickTime 2000ms")
    assert "use at least 8.4s" in problems[0] and "runner_zookeeper_tick_time" in problems[0]
    # Forms Ansible may hand over: strings, whole floats.
    assert runner_filter.runner_session_problems("10", "2000") == []
    assert runner_filter.runner_session_problems(6, 1000.0) == []
    assert runner_filter.runner_session_problems(6.0, " 1000 ") == []
    # A session timeout the runner refuses anyway is runner_config_problems' business.
    assert runner_filter.runner_session_problems(-5, 2000) == []
    assert runner_filter.runner_session_problems("ten", 2000) == []


@pytest.mark.parametrize("tick", [0, -1, 60001, 1500.5, "soon", "", None, True, float("nan"), float("inf")])
def test_filter_bad_tick_time(runner_filter, tick):
    problems = runner_filter.runner_session_problems(10, tick, "runner_session_timeout", "runner_zookeeper_tick_time")
    assert problems == ["runner_zookeeper_tick_time must be a whole number of milliseconds from 1 to 60000 (the "
                        "tickTime of the ZooKeeper servers, their zookeeper_tick_time), not %s." % (tick,)]


@pytest.mark.parametrize("tick", [1, 60000, "60000"])
def test_filter_tick_time_bounds(runner_filter, tick):
    assert runner_filter.runner_session_problems(600, tick) == []


def test_runner_default_tick_time_is_the_zookeeper_roles():
    """The runner role falls back to 2000 ms: the zookeeper role's default, and ZooKeeper's own."""
    with open(os.path.join(ROOT, "roles", "zookeeper", "defaults", "main.yml")) as handle:
        assert yaml.safe_load(handle)["zookeeper_tick_time"] == 2000
    with open(os.path.join(ROOT, "roles", "runner", "defaults", "main.yml")) as handle:
        default = yaml.safe_load(handle)["runner_zookeeper_tick_time"]
    assert "attribute='zookeeper_tick_time', default=2000" in default and default.rstrip("} ").endswith("else 2000"), default
