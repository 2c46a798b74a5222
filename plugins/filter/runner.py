# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters used by the zoolocked.cron.runner role to check the runner's settings with the runner's own rules."""

from __future__ import annotations

import math

from ansible_collections.zoolocked.cron.plugins.module_utils import _config

# The servers' tickTime (milliseconds) the role accepts: ZooKeeper's own default is 2000, and a tickTime of
# 60000 already asks for sessions of more than 200 s.
TICK_TIME_BOUNDS = (1, 60000)


def runner_config_problems(settings, names=None):
    """What the runner would refuse in ``settings`` (config key -> value), one message per setting.

    ``names`` maps config keys to the role variables they come from, so that each message names the variable
    the user sets. Empty when everything is fine. Credentials are left to the role (their values are secret).
    """
    names = dict(names or {})
    problems = []
    for key in sorted(settings):
        if key not in _config.DEFAULTS:
            problems.append("%s: not a runner setting (known: %s)" % (key, ", ".join(sorted(_config.DEFAULTS))))
            continue
        try:
            _config.check_setting(key, settings[key], names.get(key, key))
        except _config.ConfigError as exc:
            problems.append(str(exc))
    return problems


def _whole_milliseconds(value):
    """``value`` as an int when it is a whole number (int, float or a string of one) within TICK_TIME_BOUNDS."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    else:
        try:
            figure = float(str(value).strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(figure) or not figure.is_integer():
            return None
        number = int(figure)
    low, high = TICK_TIME_BOUNDS
    return number if low <= number <= high else None


def runner_session_problems(session_timeout, tick_time, session_name="session_timeout", tick_name="tick_time"):
    """What makes the runner's session timeout (seconds) unsafe with the servers' tickTime (milliseconds).

    A tickTime that is not a whole number of milliseconds within TICK_TIME_BOUNDS is a problem of its own. A
    session timeout the runner would refuse anyway is left to runner_config_problems. Otherwise the message of
    _config.session_safety_problem, when the servers could expire the session before the runner has killed its
    command. Empty when everything is fine.
    """
    tick = _whole_milliseconds(tick_time)
    if tick is None:
        return ["%s must be a whole number of milliseconds from %d to %d (the tickTime of the ZooKeeper servers, "
                "their zookeeper_tick_time), not %s." % ((tick_name,) + TICK_TIME_BOUNDS + (tick_time,))]
    try:
        _config.check_setting("session_timeout", session_timeout, session_name)
    except _config.ConfigError:
        return []
    problem = _config.session_safety_problem(session_timeout, tick, session_name)
    if problem is None:
        return []
    return ["%s (the tickTime is %s: set it to the servers' zookeeper_tick_time if they use another)."
            % (problem, tick_name)]


class FilterModule:
    def filters(self):
        return {"runner_config_problems": runner_config_problems, "runner_session_problems": runner_session_problems}
