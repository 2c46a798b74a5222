# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters used by the zoolocked.cron.crontab role to validate and render /etc/cron.d/zoo-locked."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.zoolocked.cron.plugins.module_utils import _crontab


def crontab_jobs(jobs, defaults=None):
    """The jobs to install, validated and with every key filled in (state: absent jobs left out)."""
    try:
        return _crontab.normalize_jobs(jobs, defaults)
    except _crontab.CrontabError as exc:
        raise AnsibleFilterError("invalid crontab_jobs:\n" + str(exc)) from None


def crontab_file(jobs, runner="/usr/local/bin/zoo-locked", environment=None, defaults=None, metrics_dir=None):
    """The whole cron.d file for the jobs: the same bytes for the same input, on every host."""
    try:
        return _crontab.render(jobs, runner=runner, environment=environment, defaults=defaults,
                               metrics_dir=metrics_dir)
    except _crontab.CrontabError as exc:
        raise AnsibleFilterError("invalid crontab_jobs:\n" + str(exc)) from None


def crontab_problems(jobs, runner="/usr/local/bin/zoo-locked", environment=None, defaults=None, metrics_dir=None):
    """What is wrong with the jobs, one message per problem naming the job and the field; empty when nothing."""
    return _crontab.problems(jobs, runner=runner, environment=environment, defaults=defaults,
                             metrics_dir=metrics_dir)


class FilterModule:
    def filters(self):
        return {"crontab_jobs": crontab_jobs, "crontab_file": crontab_file, "crontab_problems": crontab_problems}
