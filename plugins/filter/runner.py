# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters used by the zoolocked.cron.runner role to check the runner's settings with the runner's own rules."""

from __future__ import annotations

from ansible_collections.zoolocked.cron.plugins.module_utils import _config


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


class FilterModule:
    def filters(self):
        return {"runner_config_problems": runner_config_problems}
