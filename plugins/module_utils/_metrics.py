# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus text-format metrics of a job, for node_exporter's textfile collector.

One file per job and node, ``DIR/zoo_locked_<name>.prom``, written atomically by prometheus-client.
Values this run did not change (the last success when this run failed, the count of skips) are carried
over from the previous file.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

GAUGES = {
    "zoo_locked_last_start_timestamp_seconds": "When this node last started the job's COMMAND (Unix time).",
    "zoo_locked_last_success_timestamp_seconds": "When a run of the job on this node last ended with exit 0.",
    "zoo_locked_last_duration_seconds": "How long the last run of the job on this node took.",
    "zoo_locked_last_exit_code": "The runner's exit code for the last run of the job on this node.",
}
SKIPS = "zoo_locked_slot_done_skips"
SKIPS_HELP = "Runs of the job on this node that did not start COMMAND because the slot was already done."


def path_for(directory, name):
    return os.path.join(directory, "zoo_locked_%s.prom" % name.replace(".", "_").replace("-", "_"))


def _previous(path, name):
    try:
        with open(path) as handle:
            text = handle.read()
    except (IOError, OSError):
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("job") == name:
                    values[sample.name] = sample.value
    except ValueError:
        return {}
    return values


def write(directory, name, start=None, duration=None, exit_code=None, success=False, slot_done=False):
    """Update the job's metrics file; returns its path."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, write_to_textfile

    if not os.path.isdir(directory):
        raise IOError("metrics directory %s does not exist: create it (the crontab role does when "
                      "crontab_metrics_dir is set) or fix metrics_dir / --metrics-dir" % directory)
    disable_created_metrics()  # a *_created series per job is noise in a textfile
    path = path_for(directory, name)
    values = _previous(path, name)
    if start is not None:
        values["zoo_locked_last_start_timestamp_seconds"] = start
        values["zoo_locked_last_duration_seconds"] = duration
        values["zoo_locked_last_exit_code"] = exit_code
        if success:
            values["zoo_locked_last_success_timestamp_seconds"] = start + duration
    registry = CollectorRegistry()
    for metric, help_text in GAUGES.items():
        if values.get(metric) is not None:
            Gauge(metric, help_text, ["job"], registry=registry).labels(job=name).set(values[metric])
    skips = Counter(SKIPS, SKIPS_HELP, ["job"], registry=registry)
    skips.labels(job=name).inc(values.get(SKIPS + "_total", 0) + (1 if slot_done else 0))
    write_to_textfile(path, registry)
    return path
